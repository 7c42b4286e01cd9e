"""The default-allocator ("system") state: latency and page faults of a CPU case in a process whose glibc is NOT pinned.

attnbench pins glibc's malloc (attnbench.memory.pin_allocator) so timings are stable, but a user's own
PyTorch process does not: there, every block above glibc's dynamic mmap threshold (at most 32 MiB) is mapped
and unmapped on every call, and a module with large attention maps pays tens of thousands of minor page
faults per call. mallopt(M_MMAP_THRESHOLD) turns the dynamic threshold off for good, so the pinned process
cannot go back to that state: it is measured in a separate worker process started with
ATTNBENCH_ALLOCATOR=system. One worker serves every CPU case of a sweep, in order (one interpreter start per
sweep, then one build and one timing per case); it speaks one JSON line per request and per answer.

A long-lived worker is close to, not identical with, a fresh process per case: glibc raises its dynamic
threshold as mmapped blocks are freed, so a block of at most 32 MiB stops faulting after the first calls in
either, and blocks above 32 MiB fault on every call in both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from attnbench.memory import ALLOCATOR_ENV
from attnbench.results import Case

#: Timed budget of the allocator state that is not the headline: enough blocks to see a > 10% gap...
SECONDARY_MAX_RUN_TIME = 0.25
#: ...and the precision at which it stops early: a +-2% CI on its median cannot hide a 10% gap.
SECONDARY_PRECISION = 0.02
#: The system state is called slower (a marker in the table, a sentence in the report) when its median and its
#: fastest call are both above this ratio of the pinned ones...
SLOWDOWN_MARK = 1.10
#: ...and its extra minor page faults could account for that 10%: each costs at most this (zeroing a 2 MiB
#: huge page at 20 GB/s plus the kernel's fault path; a 4 KiB fault costs ~1-2 us here). A gap that the faults
#: cannot explain is noise, which moves medians by 10-30% on a shared machine.
FAULT_COST_BOUND_S = 100e-6
#: A worker that has not answered within this many seconds is stopped (a --time-limit bites first).
WORKER_TIMEOUT_S = 900.0
#: The TimingStats fields a worker sends back.
TIMING_FIELDS = (
    "median_s",
    "iqr_s",
    "p10_s",
    "min_s",
    "n_calls",
    "noisy",
    "minor_faults_per_call",
    "other_cpu_cores",
    "median_ci_rel",
)


class WorkerError(RuntimeError):
    """The system-allocator worker died, timed out, or answered nonsense."""


class SystemAllocatorWorker:
    """A lazily started worker process in the system allocator state; measure() one CPU case at a time."""

    def __init__(self, timeout_s: float = WORKER_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[bytes] | None = None
        #: Seconds spent starting workers (interpreter, torch and attnbench imports), for the record.
        self.startup_s = 0.0
        self.starts = 0

    def _start(self) -> subprocess.Popen[str]:
        started = time.perf_counter()
        env = dict(os.environ)
        env[ALLOCATOR_ENV] = "system"
        # The worker imports the same attnbench as this process, wherever it was imported from.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker; closed in close())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "attnbench.sysalloc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        self._ask({"ping": True}, self.timeout_s)
        self.startup_s += time.perf_counter() - started
        self.starts += 1
        return self._proc

    def measure(
        self,
        case: Case,
        budget: dict[str, Any],
        seed: int,
        warmup_s: float | None = None,
        warmup_calls: int | None = None,
    ) -> dict[str, Any]:
        """Time `case` (cpu) in the system state: {"status", "reason", "timing": {...}, "allocator": {...}}.

        `budget` holds measure()'s min_run_time, max_run_time and precision (those given)."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        request = {
            "case": dataclasses.asdict(case),
            "budget": budget,
            "seed": seed,
            "warmup_s": warmup_s,
            "warmup_calls": warmup_calls,
        }
        return self._ask(request, self.timeout_s)

    def _ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                if not sel.select(timeout_s):
                    raise WorkerError(f"system-allocator worker gave no answer within {timeout_s:g} s")
            line = proc.stdout.readline()
            if not line:
                raise WorkerError(f"system-allocator worker died: {self._log_tail()}")
            return json.loads(line)
        except BaseException:
            # A timeout, Ctrl-C or a dead pipe: the worker may be mid-case, so its next answer would be stale.
            self.close()
            raise

    def _log_tail(self, limit: int = 300) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace")
        return " ".join(text.split())[-limit:] or "(no output)"

    def close(self) -> None:
        """Stop the worker (end of input, then a kill if it does not exit)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SystemAllocatorWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LAST_BUILT: dict[tuple[Any, ...], Any] = {}


def _built(case: Case, seed: int) -> Any:
    """The case's module, built by name as the runner builds it (the last one is kept: a fault probe is often
    followed by a timing of the same case).

    A zoo name or a file/import spec: a module object given to the Python API in another process cannot be
    rebuilt here, so that case fails here, and the row says so.
    """
    import torch

    from attnbench.zoo.build import build_module

    key = (case.module, case.dim, case.height, case.width, case.kwargs, case.layout, seed)
    if key not in _LAST_BUILT:
        _LAST_BUILT.clear()
        torch.manual_seed(seed)
        _LAST_BUILT[key] = build_module(case.module, case.dim, (case.height, case.width), case.kwargs_dict, case.layout)
    return _LAST_BUILT[key]


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    """Build and time one case in this (unpinned) process."""
    from attnbench.measurement import measure
    from attnbench.sweep import frozen_kwargs

    values = dict(request["case"])
    values["kwargs"] = frozen_kwargs(dict(values["kwargs"]))
    case = Case(**values)
    module = _built(case, request["seed"])
    kwargs: dict[str, Any] = {} if request.get("warmup_s") is None else {"warmup": request["warmup_s"]}
    if request.get("warmup_calls") is not None:
        kwargs["warmup_calls"] = request["warmup_calls"]
    m = measure(
        module,
        case.input_shape,
        backend="cpu",
        threads=case.threads,
        dtype=case.dtype,
        **request["budget"],
        memory=False,
        seed=request["seed"],
        mode=case.mode,
        channels_last=case.channels_last,
        compile=case.compile,
        **kwargs,
    )
    timing = {name: getattr(m.timing, name) for name in TIMING_FIELDS} if m.timing is not None else None
    return {"status": m.status, "reason": m.reason, "timing": timing, "allocator": m.allocator}


def serve() -> None:
    """The worker's loop: one JSON request per stdin line, one JSON answer per stdout line."""
    # Answers go to a private copy of stdout; whatever else prints (inductor, warnings) goes to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("ping"):
            import attnbench.measurement  # noqa: F401  (the imports are the start-up cost; pay them here)

            answer: dict[str, Any] = {"status": "ok"}
        else:
            started = time.perf_counter()
            try:
                answer = _answer(request)
            except Exception as exc:  # the case fails, the worker goes on to the next one
                answer = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500], "timing": None}
            answer["seconds"] = time.perf_counter() - started
        answers.write(json.dumps(answer, default=str) + "\n")


if __name__ == "__main__":
    serve()
