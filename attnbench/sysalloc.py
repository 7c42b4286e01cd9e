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

import torch

from attnbench.measurement import latency_values, measure
from attnbench.memory import ALLOCATOR_ENV
from attnbench.results import OK, Case, Scenario, frozen_kwargs
from attnbench.timing import TimingBudget
from attnbench.zoo.build import build_module

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

    def measure(self, case: Case, budget: TimingBudget, seed: int) -> dict[str, Any]:
        """Time `case` in the system state: {"status", "reason", "values": {latency columns}, "allocator": {...}}."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        request = {"case": dataclasses.asdict(case), "budget": dataclasses.asdict(budget), "seed": seed}
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

    key = (*case.geometry, seed)
    if key not in _LAST_BUILT:
        _LAST_BUILT.clear()
        torch.manual_seed(seed)
        hw = (case.height, case.width)
        _LAST_BUILT[key] = build_module(case.module, case.dim, hw, case.kwargs_dict, case.scenario.layout)
    return _LAST_BUILT[key]


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    """Build and time one case in this (unpinned) process."""

    values = dict(request["case"])
    case = Case(
        **{**values, "kwargs": frozen_kwargs(dict(values["kwargs"])), "scenario": Scenario(**values["scenario"])}
    )
    module = _built(case, request["seed"])
    budget = TimingBudget(**request["budget"])
    m = measure(module, case.input_shape, case.backend, case.scenario, budget, ("latency",), seed=request["seed"])
    timing = latency_values(m.timing, case.batch) if m.timing is not None else None
    return {"status": m.status, "reason": m.reason, "values": timing, "allocator": m.allocator}


# ---------------------------------------------------------------- a CPU row in both allocator states


#: The worker's fault count: 2 warm-up calls, then the fewest timed blocks (6, of ~20 ms or one call).
FAULT_PROBE_BUDGET = TimingBudget(min_run_time=0.0, max_run_time=1e-9, precision=None, warmup_s=0.0, warmup_calls=2)


def secondary_budget(budget: TimingBudget) -> TimingBudget:
    """The budget of the state that is not the headline: it only has to show a gap above 10%, so no floor, a
    short cap, a looser precision."""
    precision = None if budget.precision is None else max(budget.precision, SECONDARY_PRECISION)
    cap = min(budget.max_run_time, SECONDARY_MAX_RUN_TIME)
    return dataclasses.replace(budget, min_run_time=0.0, max_run_time=cap, precision=precision)


def headline_budget(case: Case, budget: TimingBudget) -> TimingBudget:
    """The budget of the in-process (pinned) timing: the run's, or the secondary one when the system state is
    the headline."""
    return secondary_budget(budget) if case.scenario.allocator == "system" else budget


def other_state(
    worker: SystemAllocatorWorker,
    case: Case,
    pinned: tuple[dict[str, Any], dict[str, Any]],
    budget: TimingBudget,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row's values with the system state added (the case's `allocator` picks which state is the headline).

    The pinned state is this process (`pinned`: its row values and extra); the system state is the worker. With
    the pinned headline, the worker first counts the system state's page faults over a few calls, and times it
    (with secondary_budget) only where those extra faults could make a call 10% slower.
    """
    values, extra = pinned
    system_headline = case.scenario.allocator == "system"
    started, startup = time.perf_counter(), worker.startup_s
    try:
        answer = _system_answer(worker, case, values, extra, budget, seed)
    except WorkerError as exc:
        answer = {"status": "failed", "reason": str(exc), "values": None}
    # What the system state cost this row, without the worker's one start per sweep (recorded apart).
    extra["system_allocator_s"] = time.perf_counter() - started - (worker.startup_s - startup)
    if worker.startup_s > startup:
        extra["system_worker_start_s"] = worker.startup_s - startup
    system = answer.get("values")
    if answer.get("status") != OK or not system:
        why = f"system allocator state: {answer.get('status')}: {answer.get('reason')}"
        if system_headline:  # the row's headline could not be measured
            return {**values, "status": answer.get("status") or "failed", "reason": why}, extra
        extra["system_allocator_note"] = why
        return values, extra
    extra["system_allocator"] = answer.get("allocator")
    if "system_allocator_max_run_time" not in extra and not system_headline:
        # Faults counted, not timed: too few extra faults to cost 10% of a call, so no latency to show.
        values.update(
            other_allocator_faults_per_call=system.get("minor_faults_per_call"), system_allocator_slower=False
        )
        return values, extra
    return combine_states(values, extra, system, system_headline)


class SystemAllocators:
    """The allocator states of a run's CPU rows: probes submitted in phase 1, timed and combined in phase 2."""

    def __init__(self) -> None:
        self.worker = SystemAllocatorWorker()

    @property
    def startup_s(self) -> float:
        """Seconds spent starting the worker."""
        return self.worker.startup_s

    def submit(self, case: Case, seed: int) -> None:
        """Queue the case's probe (the one worker probes when the case is finished)."""

    def finish(
        self, case: Case, values: dict[str, Any], extra: dict[str, Any], budget: TimingBudget, seed: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The row's values with the other allocator state (see other_state)."""
        return other_state(self.worker, case, (values, extra), budget, seed)

    def __enter__(self) -> SystemAllocators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.close()


def _system_answer(
    worker: SystemAllocatorWorker,
    case: Case,
    values: dict[str, Any],
    extra: dict[str, Any],
    budget: TimingBudget,
    seed: int,
) -> dict[str, Any]:
    """The worker's answer for the system state: a full timing (system headline), a fault probe, or both."""
    if case.scenario.allocator == "system":
        return worker.measure(case, budget, seed)
    answer = worker.measure(case, FAULT_PROBE_BUDGET, seed)
    probe = answer.get("values") or {}
    extra["system_allocator_probe_calls"] = probe.get("latency_calls")
    secondary = secondary_budget(budget)
    if answer.get("status") == OK and faults_could_slow(values, probe):
        extra["system_allocator_max_run_time"] = secondary.max_run_time
        # A slow call spends the short budget within the probe's 6 blocks: the probe is that timing.
        # A fast one goes on, warm already.
        if probe["latency_median_s"] * probe["latency_calls"] < secondary.max_run_time:
            answer = worker.measure(case, dataclasses.replace(secondary, warmup_s=0.0, warmup_calls=1), seed)
    return answer


def faults_could_slow(pinned: dict[str, Any], system: dict[str, Any]) -> bool:
    """Whether the system state's extra minor faults could cost 10% of the pinned median (each at most
    FAULT_COST_BOUND_S): the only way it is slower, so the only case worth timing."""
    extra_faults = (system.get("minor_faults_per_call") or 0.0) - (pinned.get("minor_faults_per_call") or 0.0)
    return extra_faults * FAULT_COST_BOUND_S >= (SLOWDOWN_MARK - 1) * pinned["latency_median_s"]


def combine_states(
    values: dict[str, Any], extra: dict[str, Any], system: dict[str, Any], system_headline: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row's values with the system state's latency as the headline or as the other state."""
    pinned = {k: values[k] for k in ("latency_median_s", "latency_iqr_s", "latency_min_s", "minor_faults_per_call")}
    if system_headline:
        extra["pinned_latency_iqr_s"] = pinned["latency_iqr_s"]
        values.update(system)
        other = pinned
    else:
        extra["system_latency_iqr_s"] = system["latency_iqr_s"]
        other = system
    values["other_allocator_latency_s"] = other["latency_median_s"]
    values["other_allocator_faults_per_call"] = other["minor_faults_per_call"]
    if pinned["latency_median_s"] and pinned["latency_min_s"]:
        values["system_allocator_slowdown"] = system["latency_median_s"] / pinned["latency_median_s"]
        # Noise on a shared machine moves medians by 10-30% either way, for seconds at a time. A gap the
        # allocator causes has a mechanism, page faults on every call, and slows the fastest call too: a row is
        # marked slower only when the median and the fastest call both are, and the extra faults could cost that.
        min_ratio = system["latency_min_s"] / pinned["latency_min_s"]
        extra["system_allocator_min_ratio"] = min_ratio
        slower = min(values["system_allocator_slowdown"], min_ratio) > SLOWDOWN_MARK
        values["system_allocator_slower"] = slower and faults_could_slow(pinned, system)
    return values, extra


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
                answer = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500], "values": None}
            answer["seconds"] = time.perf_counter() - started
        answers.write(json.dumps(answer, default=str) + "\n")


if __name__ == "__main__":
    serve()
