"""Cases to Results: plan a sweep, build and count once per geometry, measure per backend, never die half-way.

Every failing case becomes a row with a status and a reason; completed rows are handed to `on_result`
as they finish (the CLI streams them to the output files), and Ctrl-C ends the sweep with the rows
measured so far.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from attnbench import results as R
from attnbench.errors import (
    AttnbenchError,
    BackendUnavailableError,
    CaseTimeoutError,
    ForwardError,
    InvalidCaseError,
    ResourceGuardError,
)
from attnbench.fmt import nbytes
from attnbench.results import Case, Result
from attnbench.sysalloc import (
    FAULT_COST_BOUND_S,
    SECONDARY_MAX_RUN_TIME,
    SECONDARY_PRECISION,
    SLOWDOWN_MARK,
    SystemAllocatorWorker,
    WorkerError,
)
from attnbench.timing import CONTENTION_THRESHOLD, DEFAULT_MAX_RUN_TIME, DEFAULT_PRECISION
from attnbench.zoo.adapters import forward_failure
from attnbench.zoo.build import build_module, check_case
from attnbench.zoo.registry import source_hash
from attnbench.zoo.spec import Setting

if TYPE_CHECKING:
    from attnbench.instructions import InstructionBatch

#: Every metric the runner knows; `params` and `macs` are counted, `memory` and `latency` measured, and
#: `instructions` counted under valgrind after the sweep (all cases in one process; see attnbench.instructions).
METRICS = ("params", "macs", "memory", "latency", "instructions")
#: What a run measures unless told otherwise: instruction counts cost a valgrind pass, so they are asked for.
DEFAULT_METRICS = ("params", "macs", "memory", "latency")
COUNTERS = ("attnbench", "fvcore", "thop")
#: The memory guard refuses a case whose estimate, times this margin, exceeds the free memory.
GUARD_MARGIN = 1.5
#: After a case's time limit, the alarm repeats this often until the case gives up (see time_limit).
TIME_LIMIT_REFIRE_S = 0.25
DEFAULT_SEED = 0


@dataclass(frozen=True)
class RunOptions:
    """How to measure: which metrics and counters, timing budget, guards."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    counters: tuple[str, ...] = COUNTERS
    min_run_time: float | None = None  # floor on timed seconds per case; None: the timing module's default
    max_run_time: float | None = None  # budget of timed seconds per case; None: the timing module's default
    precision: float | None = DEFAULT_PRECISION  # stop once the 95% CI on the median is within +-this; None: fixed
    time_limit_s: float | None = None  # per case (one backend of one geometry); None: no limit
    force: bool = False  # run cases the memory guard would refuse
    seed: int = DEFAULT_SEED
    #: Label every row with this machine name; None: attnbench.env.machine_label() of this machine.
    machine: str | None = None

    @property
    def measures(self) -> bool:
        """True when a backend has to run the module (latency, memory or instructions asked for)."""
        return any(m in self.metrics for m in ("latency", "memory", "instructions"))

    def without_instructions(self) -> RunOptions:
        """The same options minus the valgrind pass (to re-measure one case's latency)."""
        return dataclasses.replace(self, metrics=tuple(m for m in self.metrics if m != "instructions"))


@dataclass
class RunOutcome:
    """What a sweep produced: the rows, and whether Ctrl-C cut it short."""

    results: list[Result] = field(default_factory=list)
    interrupted: bool = False
    #: Seconds spent starting the system-allocator worker (0 when no CPU case was timed).
    system_worker_startup_s: float = 0.0

    @property
    def failed(self) -> list[Result]:
        """Rows that failed: anything but ok and the deliberate refusals (invalid, skipped, guarded)."""
        return [r for r in self.results if r.status not in (R.OK, *R.REFUSED)]


def plan(
    modules: Sequence[str],
    dims: Sequence[int],
    resolutions: Sequence[tuple[int, int]],
    batches: Sequence[int] = (1,),
    backends: Sequence[str] = ("cpu",),
    threads: int = 1,
    dtype: str = "float32",
    kwargs: Mapping[str, Any] | None = None,
    modes: Sequence[str] = (R.DEFAULT_MODE,),
    channels_last: bool = False,
    compile: bool = False,
    allocator: str = R.DEFAULT_ALLOCATOR,
) -> list[Case]:
    """Every combination as a Case, ordered so the cases of one geometry are adjacent (see attnbench.sweep)."""
    from attnbench.sweep import Sweep

    return Sweep(
        tuple(modules),
        tuple(dims),
        tuple(resolutions),
        tuple(batches),
        tuple(backends),
        (dtype,),
        (threads,),
        dict(kwargs or {}),
        modes=tuple(modes),
        channels_last=(channels_last,),
        compile=(compile,),
        allocators=(allocator,),
    ).cases()


def _geometry(case: Case) -> tuple[Any, ...]:
    # The layout decides what is built (a user's tokens module sits in the adapter): part of the geometry.
    return (case.module, case.dim, case.height, case.width, case.batch, case.kwargs, case.layout)


def available_bytes(backend: str) -> int | None:
    """Free memory the case can use: MemAvailable for CPU/ORT, free device memory for CUDA."""
    if backend == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def guard(estimate_bytes: int | None, backend: str, force: bool) -> None:
    """Raise ResourceGuardError when the estimated peak (with margin) exceeds the free memory."""
    if force or estimate_bytes is None:
        return
    free = available_bytes(backend)
    if free is None:
        return
    need = estimate_bytes * GUARD_MARGIN
    if need > free:
        where = "GPU memory" if backend == "cuda" else "RAM"
        raise ResourceGuardError(
            f"estimated peak {nbytes(estimate_bytes)} (x{GUARD_MARGIN} margin = {nbytes(need)}) exceeds the "
            f"{nbytes(free)} of free {where}; use --force to run it anyway"
        )


def _importing(frame: Any) -> bool:
    """True when the interrupted stack is inside the import machinery."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise CaseTimeoutError in the main thread once `seconds` have passed (checked between Python steps).

    A single long kernel finishes before the limit bites: the limit stops loops, not one op. An import in
    progress is not interrupted, and a timeout that the block swallowed is raised again when it ends.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    message = f"ran past its time limit of {seconds:g} s"
    state = {"active": True, "fired": False}

    def _expire(signum: int, frame: Any) -> None:
        # Not while the limit is being cleared, and never inside an import: an import interrupted half-way
        # leaves a broken module in sys.modules for every later case. The next alarm tries again.
        if not state["active"] or _importing(frame):
            return
        state["fired"] = True
        raise CaseTimeoutError(message)

    previous = signal.signal(signal.SIGALRM, _expire)
    # The alarm fires again every TIME_LIMIT_REFIRE_S: counters and exporters catch `Exception` to turn a
    # failure into a status, so one alarm could be swallowed and the case go on past its limit.
    signal.setitimer(signal.ITIMER_REAL, seconds, TIME_LIMIT_REFIRE_S)
    try:
        yield
    except CaseTimeoutError:
        raise
    except Exception as exc:
        # A timeout caught inside and turned into another error (a counter's "failed" report, then a failed
        # forward) is still the timeout.
        if state["fired"]:
            raise CaseTimeoutError(message) from exc
        raise
    finally:
        state["active"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if state["fired"]:  # swallowed inside, and the block then finished: it still ran past its limit
        raise CaseTimeoutError(message)


def _uncounted_summary(report: Any) -> str:
    items = sorted(report.uncounted.items(), key=lambda kv: -kv[1].elements)
    return "; ".join(f"{op} x{u.calls} ({u.elements} el)" for op, u in items)


@dataclass
class _Counted:
    """What counting one geometry produced, shared by all its backend rows."""

    values: dict[str, Any]
    estimate_bytes: int | None


def _count(
    module: torch.nn.Module, case: Case, setting: Setting, spec: Any, options: RunOptions, mode: str
) -> _Counted:
    """Params, and every counter's MACs in `mode` (train: forward + backward), for one geometry."""
    from attnbench.counting import count_all, count_params

    values: dict[str, Any] = {}
    notes: list[str] = []
    if "params" in options.metrics:
        values["params"] = count_params(module).total
    counters = list(options.counters) if "macs" in options.metrics else []
    # The guard needs the attnbench counter's activation estimate even when MACs were not asked for;
    # count_all runs it first and hands its estimate to fvcore and thop (their CPU-fallback limit).
    if options.measures and "attnbench" not in counters:
        counters.insert(0, "attnbench")
    estimate = None
    for report in count_all(module, case.input_shape, counters=counters, mode=mode):
        counter = report.counter
        if counter == "attnbench":
            if report.status == "failed":  # the module's own forward raised: no backend will run it either
                raise ForwardError(forward_failure(case.layout, case.input_shape, report.reason))
            estimate = report.peak_live_bytes_estimate
            if "macs" not in options.metrics:
                continue
        if report.status == "ok":
            values[f"macs_{counter}"] = report.macs
            if counter == "attnbench":
                values["flops_attnbench"] = report.flops
        else:
            notes.append(f"{counter}: {report.status} ({report.reason})")
        if counter == "attnbench":
            values["uncounted_attnbench"] = _uncounted_summary(report)
            if report.device != "meta":
                notes.append(f"attnbench counted on {report.device}")
        elif counter == "fvcore" and report.status == "ok":
            values["uncounted_fvcore"] = _uncounted_summary(report)
    # The registry's formulas are of one forward.
    if "macs" in options.metrics and spec.macs_formula is not None and mode == R.DEFAULT_MODE:
        values["macs_formula"] = spec.macs_formula(setting)
    values["counter_notes"] = "; ".join(notes)
    weights = 4 * sum(p.numel() for p in module.parameters())
    if estimate is not None:
        # Weights and input (plus an output of the same size) are resident too.
        estimate += weights + 4 * 2 * case.batch * case.dim * case.tokens
    # Without the counter's estimate, the weights are the least a build holds.
    return _Counted(values, estimate if estimate is not None else weights)


def _timing_values(timing: Any, batch: int) -> dict[str, Any]:
    """The latency columns of a row from TimingStats (or the same fields as a dict, from the worker)."""
    get = timing.get if isinstance(timing, dict) else lambda name: getattr(timing, name)
    median, ci = get("median_s"), get("median_ci_rel")
    return {
        "latency_median_s": median,
        "latency_iqr_s": get("iqr_s"),
        "latency_p10_s": get("p10_s"),
        "latency_min_s": get("min_s"),
        "latency_calls": get("n_calls"),
        "latency_noisy": get("noisy"),
        "latency_contended": (get("other_cpu_cores") or 0.0) > CONTENTION_THRESHOLD,
        "throughput_per_s": batch / median if median and median > 0 else None,
        "minor_faults_per_call": get("minor_faults_per_call"),
        "latency_ci_rel": ci if ci is not None and math.isfinite(ci) else None,
    }


def _budget(options: RunOptions) -> dict[str, Any]:
    """The timing budget of a row's headline measurement (measure()'s keyword arguments)."""
    budget: dict[str, Any] = {"precision": options.precision}
    if options.min_run_time is not None:
        budget["min_run_time"] = options.min_run_time
    if options.max_run_time is not None:
        budget["max_run_time"] = options.max_run_time
    return budget


def _secondary_budget(options: RunOptions) -> dict[str, Any]:
    """The budget of the other allocator state: it only has to show a gap above 10%, so no floor, a short cap."""
    full = options.max_run_time if options.max_run_time is not None else DEFAULT_MAX_RUN_TIME
    precision = None if options.precision is None else max(options.precision, SECONDARY_PRECISION)
    return {"min_run_time": 0.0, "max_run_time": min(full, SECONDARY_MAX_RUN_TIME), "precision": precision}


def _measure(
    module: torch.nn.Module, case: Case, options: RunOptions, budget: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measure one case in this (pinned) process: (row values, extra)."""
    from attnbench.measurement import measure

    kwargs: dict[str, Any] = {
        "memory": "memory" in options.metrics,
        "latency": "latency" in options.metrics,
        "seed": options.seed,
        "mode": case.mode,
        "channels_last": case.channels_last,
        "compile": case.compile,
    }
    kwargs.update(budget or _budget(options))
    m = measure(module, case.input_shape, backend=case.backend, threads=case.threads, dtype=case.dtype, **kwargs)
    values: dict[str, Any] = {"status": m.status, "reason": m.reason, "compile_s": m.compile_s}
    if m.timing is not None and "latency" in options.metrics:
        values.update(_timing_values(m.timing, case.batch))
    if "memory" in options.metrics:
        values.update(
            peak_mem_bytes=m.peak_bytes,
            peak_mem_method=m.peak_method or "",
            reserved_mem_bytes=m.reserved_bytes,
        )
    values.update(parity_max_abs=m.parity_max_abs, exporter=m.exporter or "")
    extra = {"allocator": m.allocator, **(m.extra or {})}
    if m.timing is not None:
        # Seconds inside the timing protocol (warm-up + timed blocks): the rest of a row's time is overhead.
        extra["timing_loop_s"] = m.timing.warmup_s + m.timing.mean_s * m.timing.n_calls
        extra["other_cpu_cores"] = m.timing.other_cpu_cores
        extra["precision_target"] = m.timing.precision_target
        extra["timing_blocks"] = m.timing.n_blocks
        extra["timing_stop"] = m.timing.stop
    return values, extra


def _with_system_state(
    module: torch.nn.Module, case: Case, options: RunOptions, worker: SystemAllocatorWorker
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A CPU case measured in both allocator states; the case's `allocator` picks which one is the headline.

    The pinned state is this process; the system state is the worker (see attnbench.sysalloc). With the
    pinned headline, the worker first counts the system state's page faults over a few calls, and times it
    (with the shorter _secondary_budget) only where those extra faults could make a call 10% slower.
    """
    system_headline = case.allocator == "system"
    headline, secondary = _budget(options), _secondary_budget(options)
    values, extra = _measure(module, case, options, secondary if system_headline else headline)
    if values["status"] != R.OK or values.get("latency_median_s") is None:
        return values, extra
    started, startup = time.perf_counter(), worker.startup_s
    try:
        if system_headline:
            answer = worker.measure(case, headline, options.seed)
        else:
            answer = worker.measure(case, FAULT_PROBE_BUDGET, options.seed, warmup_s=0.0, warmup_calls=2)
            probe = answer.get("timing") or {}
            extra["system_allocator_probe_calls"] = probe.get("n_calls")
            if answer.get("status") == R.OK and _faults_could_slow(values, probe):
                extra["system_allocator_max_run_time"] = secondary.get("max_run_time")
                # A slow call spends the short budget within the probe's 6 blocks: the probe is that timing.
                # A fast one goes on, warm already.
                if probe["median_s"] * probe["n_calls"] < secondary["max_run_time"]:
                    answer = worker.measure(case, secondary, options.seed, warmup_s=0.0, warmup_calls=1)
    except WorkerError as exc:
        answer = {"status": R.FAILED, "reason": str(exc), "timing": None}
    # What the system state cost this row, without the worker's one start per sweep (recorded apart).
    extra["system_allocator_s"] = time.perf_counter() - started - (worker.startup_s - startup)
    if worker.startup_s > startup:
        extra["system_worker_start_s"] = worker.startup_s - startup
    timing = answer.get("timing")
    if answer.get("status") != R.OK or not timing:
        why = f"system allocator state: {answer.get('status')}: {answer.get('reason')}"
        if system_headline:  # the row's headline could not be measured
            return {**values, "status": answer.get("status") or R.FAILED, "reason": why}, extra
        extra["system_allocator_note"] = why
        return values, extra
    extra["system_allocator"] = answer.get("allocator")
    if "system_allocator_max_run_time" not in extra and not system_headline:
        # Faults counted, not timed: too few extra faults to cost 10% of a call, so no latency to show.
        values["other_allocator_faults_per_call"] = timing.get("minor_faults_per_call")
        values["system_allocator_slower"] = False
        return values, extra
    return _combine_states(values, extra, _timing_values(timing, case.batch), system_headline)


#: The worker's fault count: 2 warm-up calls, then the fewest timed blocks (6, of ~20 ms or one call).
FAULT_PROBE_BUDGET = {"min_run_time": 0.0, "max_run_time": 1e-9, "precision": None}


def _faults_could_slow(pinned: Mapping[str, Any], system: Mapping[str, Any]) -> bool:
    """Whether the system state's extra minor faults could cost 10% of the pinned median (each at most
    FAULT_COST_BOUND_S): the only way it is slower, so the only case worth timing."""
    extra_faults = (system.get("minor_faults_per_call") or 0.0) - (pinned.get("minor_faults_per_call") or 0.0)
    return extra_faults * FAULT_COST_BOUND_S >= (SLOWDOWN_MARK - 1) * pinned["latency_median_s"]


def _combine_states(
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
        explainable = _faults_could_slow(pinned, system)
        extra["system_allocator_min_ratio"] = min_ratio
        values["system_allocator_slower"] = (
            min(values["system_allocator_slowdown"], min_ratio) > SLOWDOWN_MARK and explainable
        )
    return values, extra


def _failure_row(case: Case, exc: BaseException, base: Mapping[str, Any]) -> Result:
    from attnbench.measurement import is_oom

    if isinstance(exc, InvalidCaseError):
        status = R.INVALID
    elif isinstance(exc, BackendUnavailableError):
        status = R.SKIPPED
    elif isinstance(exc, ResourceGuardError):
        status = R.GUARDED
    elif isinstance(exc, CaseTimeoutError):
        status = R.TIMEOUT
    elif is_oom(exc):
        status = R.OOM
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    else:
        status = R.FAILED
    reason = str(exc) if isinstance(exc, AttnbenchError) else f"{type(exc).__name__}: {exc}"
    return Result.for_case(
        case,
        **{
            **base,
            "status": status,
            "reason": reason.splitlines()[0][:500] if reason else type(exc).__name__,
        },
    )


def run(
    cases: Iterable[Case],
    options: RunOptions | None = None,
    on_result: Callable[[Result], None] | None = None,
    on_progress: Callable[[Case], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Measure every case; each failure is a row, Ctrl-C stops with what was finished.

    With "instructions" in the metrics, valgrind must be installed (else ValgrindUnavailableError before
    anything runs); the modules of eligible cases are queued as they are built and counted after the sweep
    in one valgrind process, and their rows in the outcome then carry `instructions`. `on_status` hears
    about that pass (it takes minutes).
    """
    from attnbench.env import machine_label
    from attnbench.instructions import InstructionBatch, check_available

    options = options or RunOptions()
    outcome = RunOutcome()
    cases = list(cases)
    machine = options.machine if options.machine is not None else machine_label()
    counting = "instructions" in options.metrics
    if counting:
        check_available()

    def emit(row: Result) -> None:
        # Every row names the machine that measured it, so merged reports keep runs apart.
        row = dataclasses.replace(row, machine=machine)
        outcome.results.append(row)
        if on_result is not None:
            on_result(row)

    groups: dict[tuple[Any, ...], list[Case]] = {}
    for case in cases:
        groups.setdefault(_geometry(case), []).append(case)
    # One system-allocator worker for the whole sweep, started at its first timed CPU case; the modules of
    # cases whose instructions are counted are queued as they are built, for one valgrind pass at the end.
    with SystemAllocatorWorker() as worker, InstructionBatch() as batch:
        queued: list[int] = []  # outcome row index of each queued module, in queue order

        def queue(module: torch.nn.Module, case: Case) -> None:
            if counting and instructions_eligible(case):
                batch.add(module, case.input_shape, options.seed)
                queued.append(len(outcome.results) - 1)

        try:
            for group in groups.values():
                _run_geometry(group, options, emit, on_progress, worker, queue)
            if queued:
                _count_instructions(outcome, batch, queued, options, on_status)
        except KeyboardInterrupt:
            outcome.interrupted = True
        outcome.system_worker_startup_s = worker.startup_s
    return outcome


def instructions_eligible(case: Case) -> bool:
    """Cases whose instructions are counted: PyTorch eager on the CPU, float32 inference at 1 thread, default
    memory format and allocator (the valgrind worker runs exactly that)."""
    return (
        case.backend == "cpu"
        and case.threads == 1
        and case.dtype == R.DEFAULT_DTYPE
        and case.mode == R.DEFAULT_MODE
        and not case.compile
        and not case.channels_last
        and case.allocator == R.DEFAULT_ALLOCATOR
    )


def _count_instructions(
    outcome: RunOutcome,
    batch: InstructionBatch,
    queued: list[int],
    options: RunOptions,
    on_status: Callable[[str], None] | None,
) -> None:
    """Run the one valgrind pass and put each count into its row (a failed count is noted in `extra`)."""
    started = time.perf_counter()
    if on_status:
        on_status(f"counting instructions of {len(queued)} case(s) under valgrind (one process)")
    limit = options.time_limit_s * len(queued) if options.time_limit_s else None
    counts = batch.run(timeout_s=limit)
    for index, count in zip(queued, counts, strict=True):
        row = outcome.results[index]
        if count.ok:
            outcome.results[index] = dataclasses.replace(row, instructions=count.instructions)
        else:
            extra = json.loads(row.extra) if row.extra else {}
            extra["instructions_error"] = count.reason
            outcome.results[index] = dataclasses.replace(row, extra=json.dumps(extra, sort_keys=True, default=str))
    if on_status:
        on_status(f"counted instructions in {time.perf_counter() - started:.1f} s")


def _run_geometry(
    group: list[Case],
    options: RunOptions,
    emit: Callable[[Result], None],
    on_progress: Callable[[Case], None] | None,
    worker: SystemAllocatorWorker,
    queue: Callable[[torch.nn.Module, Case], None] | None = None,
) -> None:
    """Count once per mode, build once, then measure every case of one geometry (each failure a row)."""
    first = group[0]
    started = time.perf_counter()
    hw = (first.height, first.width)
    # Counting only: one row per mode (backend "none"); measuring: one row per case.
    cases = group if options.measures else list({c.mode: _no_backend(c) for c in group}.values())

    def done(case: Case, row: Result) -> None:
        emit(row)
        if on_progress:
            on_progress(case)

    def fail(targets: Sequence[Case], exc: Exception, values: Mapping[str, Any]) -> None:
        if std_debug():
            traceback.print_exc()
        for case in targets:
            done(case, _failure_row(case, exc, values))

    base: dict[str, Any] = {}
    try:
        base = {"source_hash": source_hash(first.module)}
        spec, setting = check_case(first.module, first.dim, hw, first.batch, first.kwargs_dict, first.layout)
        with time_limit(options.time_limit_s):
            # Count on a meta-device build: no weights exist, so counting allocates nothing (da at 512x512
            # holds a 256 GiB Linear) and the guard knows the case's peak before anything real is built.
            meta = _build_for_counting(first, spec, setting, options)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        fail(cases, exc, base)
        return
    counted: dict[str, _Counted] = {}
    for mode in dict.fromkeys(c.mode for c in cases):
        try:
            with time_limit(options.time_limit_s):
                result = _count(meta, first, setting, spec, options, mode)
            # Only now: the limit may bite as its block ends.
            counted[mode] = _Counted({**base, **result.values}, result.estimate_bytes)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # this mode's cases fail; the other mode's still run
            fail([c for c in cases if c.mode == mode], exc, base)
    cases = [c for c in cases if c.mode in counted]
    if not options.measures:
        for case in cases:
            done(case, Result.for_case(case, **counted[case.mode].values, seconds=time.perf_counter() - started))
        return
    if not cases:
        return
    estimates = [c.estimate_bytes for c in counted.values() if c.estimate_bytes is not None]
    try:
        # The module is built in RAM whatever the backend: guard its whole estimated peak there first.
        guard(max(estimates, default=None), "cpu", options.force)
        torch.manual_seed(options.seed)
        with time_limit(options.time_limit_s):
            module = build_module(first.module, first.dim, hw, first.kwargs_dict, first.layout).eval()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        fail(cases, exc, counted[cases[0].mode].values)
        return
    for case in cases:
        row = _run_case(module, case, spec, counted[case.mode], options, worker)
        done(case, row)
        if queue is not None and row.status == R.OK:
            queue(module, case)


#: Why a scenario field does not apply to a case (a skipped row with this reason).
TOKENS_CHANNELS_LAST = (
    "channels_last is a memory format for image-layout (B, C, H, W) modules; {module} works on tokens (B, N, C), "
    "whose memory order is already channel-last"
)
SYSTEM_ALLOCATOR_CPU_ONLY = (
    "the allocator state is a glibc setting of the PyTorch CPU process; {backend} does not allocate through it "
    "per call (ONNX Runtime serves tensors from its own arena, CUDA from its caching allocator)"
)


def _not_applicable(case: Case, spec: Any) -> str | None:
    """Why a scenario field of `case` does not apply to it, or None."""
    layout = case.layout or spec.layout
    if case.channels_last and layout == "tokens":
        return TOKENS_CHANNELS_LAST.format(module=case.module)
    if case.allocator != R.DEFAULT_ALLOCATOR and case.backend != "cpu":
        return SYSTEM_ALLOCATOR_CPU_ONLY.format(backend=case.backend)
    return None


def _run_case(
    module: torch.nn.Module,
    case: Case,
    spec: Any,
    counted: _Counted,
    options: RunOptions,
    worker: SystemAllocatorWorker,
) -> Result:
    """One row: the case measured, skipped, or failed with its reason."""
    started = time.perf_counter()
    base = counted.values
    why_not = _not_applicable(case, spec)
    if why_not is not None:
        return Result.for_case(case, **base, status=R.SKIPPED, reason=why_not)
    try:
        guard(_backend_estimate(counted.estimate_bytes, case), case.backend, options.force)
        with time_limit(options.time_limit_s):
            if case.backend == "cpu" and "latency" in options.metrics:
                values, extra = _with_system_state(module, case, options, worker)
            else:
                values, extra = _measure(module, case, options)
        values["extra"] = json.dumps(extra, sort_keys=True, default=str)
        return Result.for_case(case, **{**base, **values, "seconds": time.perf_counter() - started})
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if std_debug():
            traceback.print_exc()
        return _failure_row(case, exc, base)


#: ORT prepares by running PyTorch at a second batch size (export and parity) and keeps its own arena: its
#: peak is a multiple of the eager estimate at the measured batch.
ORT_MEMORY_FACTOR = 2.0


def _backend_estimate(estimate: int | None, case: Case) -> int | None:
    """The estimated peak for this backend: the eager estimate, scaled for ORT's extra batch and arena."""
    if estimate is None or not case.backend.startswith("ort"):
        return estimate
    return int(estimate * ORT_MEMORY_FACTOR * max(1.0, 2 / case.batch))


def _build_for_counting(case: Case, spec: Any, setting: Setting, options: RunOptions) -> torch.nn.Module:
    """The module built on the meta device (no weights allocated); a real build if a constructor needs data."""
    hw = (case.height, case.width)
    try:
        with torch.device("meta"):
            return build_module(case.module, case.dim, hw, case.kwargs_dict, case.layout).eval()
    except (NotImplementedError, RuntimeError):
        # Only the weights are known before counting: guard them before allocating (a user's module has no
        # formula; its constructor already ran once, on the CPU, when the sweep was checked).
        if spec.params_formula is not None:
            guard(4 * spec.params_formula(setting), "cpu", options.force)
        torch.manual_seed(options.seed)
        return build_module(case.module, case.dim, hw, case.kwargs_dict, case.layout).eval()


def _no_backend(case: Case) -> Case:
    return dataclasses.replace(case, backend="none")


def std_debug() -> bool:
    """True when ATTNBENCH_DEBUG is set: print full tracebacks of failing cases."""
    import os

    return bool(os.environ.get("ATTNBENCH_DEBUG"))


#: Channels the Python API measures when `dim` is not given (a module instance needs it given).
DEFAULT_DIM = 64


def profile(
    modules: Any,
    dim: int | Sequence[int] | None = None,
    res: int | tuple[int, int] | Sequence[int | tuple[int, int]] = 28,
    batch: int | Sequence[int] = 1,
    backend: str | Sequence[str] = "cpu",
    threads: int = 1,
    dtype: str = "float32",
    options: RunOptions | None = None,
    layout: str = "",
    module_kwargs: Mapping[Any, Mapping[str, Any]] | None = None,
    mode: str | Sequence[str] = R.DEFAULT_MODE,
    channels_last: bool = False,
    compile: bool = False,
    allocator: str = R.DEFAULT_ALLOCATOR,
    **kwargs: Any,
) -> list[Result]:
    """Library entry point: measure modules over dims, resolutions, batches, backends and modes; one Result per case.

    `modules` is one or a list of: zoo names, specs ('path/to/file.py:Name', 'package.module:Name'), nn.Module
    classes or factory functions (built as `Name(dim, **kwargs)`), or nn.Module instances, measured as built:
    an instance needs `dim` (its input channels, one value) and takes no kwargs. `layout` ("image" or
    "tokens") is what a user's module takes; `kwargs` go to every module, `module_kwargs` to one each (keyed
    by the module as given). Bad input raises the CLI's errors; the rows are the CLI's rows.
    """
    from attnbench.sweep import Sweep

    options = options or RunOptions()
    names, by_object, instances = _api_modules(modules)
    own = {_api_key(m, by_object): dict(kw) for m, kw in (module_kwargs or {}).items()}
    dims = _as_list(dim) if dim is not None else [DEFAULT_DIM]
    _check_instances(instances, dim, dims, kwargs, own)
    resolutions = [(r, r) if isinstance(r, int) else (int(r[0]), int(r[1])) for r in _as_list(res)]
    sweep = Sweep(
        tuple(names),
        tuple(dims),
        tuple(resolutions),
        tuple(_as_list(batch)),
        tuple(dict.fromkeys(_as_list(backend))),
        (dtype,),
        (threads,),
        dict(kwargs),
        module_kwargs=own,
        layout=layout,
        modes=tuple(dict.fromkeys(_as_list(mode))),
        channels_last=(channels_last,),
        compile=(compile,),
        allocators=(allocator,),
    )
    sweep.check(options.measures)
    outcome = run(sweep.cases(), options)
    if outcome.interrupted:
        raise KeyboardInterrupt
    return outcome.results


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) and not _is_hw(v) else [v]


def _api_modules(modules: Any) -> tuple[list[str], dict[int, str], list[str]]:
    """Module names for the sweep (objects become cached ad-hoc specs), names by object id, instance names."""
    from torch import nn

    from attnbench.zoo.registry import add_spec, get_spec
    from attnbench.zoo.user import spec_for_object

    items = list(modules) if isinstance(modules, (list, tuple)) else [modules]
    names: list[str] = []
    by_object: dict[int, str] = {}
    instances: list[str] = []
    for item in items:
        if isinstance(item, str):
            names.append(get_spec(item).name)
            continue
        spec = add_spec(spec_for_object(item, set(names)))
        names.append(spec.name)
        by_object[id(item)] = spec.name
        if isinstance(item, nn.Module):
            instances.append(spec.name)
    return names, by_object, instances


def _api_key(module: Any, by_object: Mapping[int, str]) -> str:
    """The sweep's name for a key of module_kwargs: an object given in `modules`, or a name or spec."""
    from attnbench.errors import UsageError

    if isinstance(module, str):
        return module
    if id(module) not in by_object:
        raise UsageError(f"module_kwargs key {module!r} is not one of the modules given")
    return by_object[id(module)]


def _check_instances(
    instances: Sequence[str],
    dim: Any,
    dims: Sequence[int],
    kwargs: Mapping[str, Any],
    own: Mapping[str, Mapping[str, Any]],
) -> None:
    """Refuse what contradicts a module that is already built: no dim, several dims, constructor kwargs."""
    from attnbench.errors import UsageError

    if not instances:
        return
    if dim is None or len(dims) != 1:
        raise UsageError(
            f"{instances[0]} is an nn.Module instance, measured as built: pass dim= its input channels (one value)"
        )
    for name in instances:
        given = {**kwargs, **own.get(name, {})}
        if given:
            raise UsageError(
                f"{name} is already built, so constructor kwargs ({', '.join(sorted(given))}) cannot apply: pass "
                "its class to have it built with them, or give them to other modules only with module_kwargs"
            )


def _is_hw(v: Any) -> bool:
    # A (H, W) pair given directly as `res` is one resolution, not a list of two.
    return isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v)
