"""An allocator server: a process that imports torch and attnbench, touches nothing, and forks one child per request.

attnbench.sysalloc starts each server with the allocator it serves in its environment: ATTNBENCH_ALLOCATOR=system
(glibc at its defaults; attnbench.memory.pin_allocator leaves it alone) or jemalloc / tcmalloc loaded with
LD_PRELOAD, and its own PYTHONHASHSEED. The server imports what a case needs and runs no torch op: an OpenMP pool
started before fork() would not survive into the child. For each request it forks a child that builds the module
by name, probes or times it, writes one JSON answer to a pipe and exits, so every child's allocation history is
"the imports + this module", as in a user's fresh process, and no case inherits another's heap.

The server waits for its child (killing it past the request's deadline) and answers whatever became of it: a
child that raised, crashed, was killed or exited without a word gives that request a failed answer, and the server
goes on with the next one. One JSON line per request on stdin, one JSON line per answer on stdout, in order:
  {"op": "ping"}                                    -> {"status": "ok", "threads", "library", "pid", "time"}
  {"op": "probe", "id", "case", "seed", "timeout_s"} -> {"id", "status", "reason", "values", "allocator",
                                                        "library", "seconds"}
  {"op": "time", ... as probe, "budget"}             -> the same, its values the latency columns of a timing.
A probe counts the minor page faults per call of a few calls (at least PROBE_MIN_CALLS calls and PROBE_MIN_S
seconds) after a warm-up that lets glibc's dynamic thresholds settle (PROBE_SETTLE_CALLS calls, or the timing's
warm-up seconds for a slow module, and at least PROBE_WARMUP_CALLS): cheap, and what decides whether the state is
worth timing.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import resource
import select
import signal
import sys
import time
from typing import Any

import torch

from attnbench.backends import get_backend
from attnbench.backends.base import CaseFailed
from attnbench.measurement import latency_values, measure
from attnbench.memory import ALLOCATOR_ENV, mapped_library, pin_allocator
from attnbench.results import FAILED, OK, Case, Scenario, frozen_kwargs
from attnbench.timing import WARMUP_MIN_S, TimingBudget
from attnbench.zoo.build import build_module

#: The probe's warm-up: at least this many calls (the first builds lazy state)...
PROBE_WARMUP_CALLS = 2
#: ...and this many, or WARMUP_MIN_S of calls for a slow module: a fresh process's first calls map and grow its
#: heap (lka at 28x28: 458 and 197 faults, then none; mhsa at 28x28 settles at 9,719 from its third call).
PROBE_SETTLE_CALLS = 10
#: ...then at least this many calls and this many seconds, so a fast module's rare fault averages out.
PROBE_MIN_CALLS = 3
PROBE_MIN_S = 0.05
#: A child that has not answered within its request's timeout is killed (SIGKILL) and the request fails.
DEFAULT_CHILD_TIMEOUT_S = 900.0
#: Environment variables that configure a preloaded allocator (recorded with its rows): jemalloc's; tcmalloc's
#: all start with TCMALLOC_.
PRELOAD_SETTINGS_ENV = ("MALLOC_CONF",)
#: prctl(2): the signal a child gets when its parent (the server) dies.
PR_SET_PDEATHSIG = 1


def case_of(values: dict[str, Any]) -> Case:
    """A Case from its JSON form (dataclasses.asdict of a Case)."""
    values = dict(values)
    return Case(
        **{**values, "kwargs": frozen_kwargs(dict(values["kwargs"])), "scenario": Scenario(**values["scenario"])}
    )


def _built(case: Case, seed: int) -> torch.nn.Module:
    """The case's module, built by name as the runner builds it (a zoo name or a file/import spec)."""
    torch.manual_seed(seed)
    hw = (case.height, case.width)
    return build_module(case.module, case.dim, hw, case.kwargs_dict, case.scenario.layout).eval()


def probe(case: Case, seed: int) -> dict[str, Any]:
    """The minor page faults per call of the case's step in this process (a few calls after a short warm-up)."""
    module = _built(case, seed)
    prepared = get_backend(case.backend).prepare(module, case.input_shape, case.scenario, seed)
    with prepared:
        fn, sync = prepared.timed_callable()
        with prepared.timing_context():
            start, calls = time.perf_counter(), 0
            while calls < PROBE_WARMUP_CALLS or (
                calls < PROBE_SETTLE_CALLS and time.perf_counter() - start < WARMUP_MIN_S
            ):
                fn()
                calls += 1
            if sync is not None:
                sync()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start, calls = time.perf_counter(), 0
            while calls < PROBE_MIN_CALLS or time.perf_counter() - start < PROBE_MIN_S:
                fn()
                calls += 1
            if sync is not None:
                sync()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            seconds = time.perf_counter() - start
    # Not a timing (probes run side by side with other work): the seconds are for the record only.
    return {"minor_faults_per_call": faults / calls, "probe_calls": calls, "probe_s": seconds}


def timed(case: Case, seed: int, budget: TimingBudget) -> tuple[str, str, dict[str, Any] | None]:
    """(status, reason, latency columns) of the case timed in this process with the shared protocol."""
    module = _built(case, seed)
    m = measure(module, case.input_shape, case.backend, case.scenario, budget, ("latency",), seed=seed)
    values = latency_values(m.timing, case.batch) if m.timing is not None else None
    return m.status, m.reason, values


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """What a child answers for one request: the probe's or the timing's values, and the allocator it ran under."""
    allocator = os.environ.get(ALLOCATOR_ENV, "system")
    library = mapped_library(allocator)
    out: dict[str, Any] = {"allocator": pin_allocator(), "library": library}
    # The preloaded allocators' own settings, as the user's environment gave them (jemalloc's MALLOC_CONF).
    settings = {k: v for k, v in os.environ.items() if k in PRELOAD_SETTINGS_ENV or k.startswith("TCMALLOC_")}
    if settings and library:
        out["allocator"] = {**out["allocator"], "env": settings}
    if allocator != "system" and library is None:
        reason = f"{allocator} is not loaded in the server process (LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r})"
        return {**out, "status": FAILED, "reason": reason, "values": None}
    case = case_of(request["case"])
    try:
        if request["op"] == "probe":
            return {**out, "status": OK, "reason": "", "values": probe(case, request["seed"])}
        status, reason, values = timed(case, request["seed"], TimingBudget(**request["budget"]))
        return {**out, "status": status, "reason": reason, "values": values}
    except CaseFailed as exc:
        return {**out, "status": exc.status, "reason": exc.reason, "values": None}
    except Exception as exc:  # the case fails here; the server goes on to the next one
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        return {**out, "status": FAILED, "reason": reason, "values": None}


def _child(request: dict[str, Any], out_fd: int) -> None:
    """The forked child: die with the server, answer one request into `out_fd`, exit without cleaning up."""
    code = 0
    try:
        # Not Linux (no prctl): a dead server's child finishes its case and exits.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        data = json.dumps(answer(request), default=str).encode()
        while data:
            data = data[os.write(out_fd, data) :]
    except BaseException:  # nothing may escape a forked child: the server reports its death
        code = 70
    finally:
        # os._exit: no atexit handlers, no buffers flushed twice, no return into the server's loop.
        os._exit(code)


def _read_answer(fd: int, pid: int, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the child writes to `fd` until it closes it, and whether it ran past `timeout_s` (then killed)."""
    deadline = time.monotonic() + timeout_s
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            return b"".join(chunks), True
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)


def death(status: int, timed_out: bool, timeout_s: float) -> str:
    """Why a child gave no answer, from its wait status."""
    if timed_out:
        return f"no answer within {timeout_s:g} s: the process was killed"
    if os.WIFSIGNALED(status):
        return f"the process was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"the process exited with code {os.waitstatus_to_exitcode(status)} without answering"


def fork_and_wait(request: dict[str, Any]) -> dict[str, Any]:
    """Fork a child for one request, wait for its answer (or its death), and return the request's answer."""
    timeout_s = float(request.get("timeout_s") or DEFAULT_CHILD_TIMEOUT_S)
    started = time.perf_counter()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(request, write_fd)
    os.close(write_fd)
    try:
        data, timed_out = _read_answer(read_fd, pid, timeout_s)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    try:
        result = json.loads(data) if data and not timed_out else None
    except ValueError:  # cut short by a crash mid-write
        result = None
    if result is None:
        result = {"status": FAILED, "reason": death(status, timed_out, timeout_s), "values": None}
    return {**result, "id": request.get("id"), "seconds": time.perf_counter() - started}


def ping() -> dict[str, Any]:
    """The server is ready: its threads (no OpenMP pool may run before fork), the library it preloaded, its pid."""
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
    library = mapped_library(os.environ.get(ALLOCATOR_ENV, "system"))
    return {"status": OK, "threads": threads, "library": library, "pid": os.getpid(), "time": time.time()}


def serve() -> None:
    """The server's loop: one JSON request per stdin line, one JSON answer per stdout line, until stdin closes."""
    # Answers go to a private copy of stdout; whatever else prints (inductor, warnings, children) goes to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Ctrl-C is the main process's to handle: it closes the servers (their children die with them).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin:
        request = json.loads(line)
        result = ping() if request.get("op") == "ping" else fork_and_wait(request)
        answers.write(json.dumps(result, default=str) + "\n")


def request_for(op: str, case: Case, seed: int, budget: TimingBudget | None = None, **more: Any) -> dict[str, Any]:
    """A request's JSON form (the client's side of the protocol)."""
    request = {"op": op, "case": dataclasses.asdict(case), "seed": seed, **more}
    if budget is not None:
        request["budget"] = dataclasses.asdict(budget)
    return request


if __name__ == "__main__":
    serve()
