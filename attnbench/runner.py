"""run_sweep: the one path from a Sweep to rows, for the command line and the Python API alike.

It checks the sweep, records the environment (machine, versions, the roofs the timed cases run under, the sweep
itself, the shard), then counts once per geometry (on the meta device), builds once, and measures each case on
its backend; every failing case becomes a row with a status and a reason, and Ctrl-C ends the sweep with the rows
measured so far. Rows go to a Sink as they finish (attnbench.report.files streams them into the output files),
the valgrind pass fills in instruction counts at the end, and a gate, when asked, judges the rows against its
baseline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from attnbench import results as R
from attnbench.backends import get_backend
from attnbench.backends.base import host_available_bytes
from attnbench.counting import count_all, count_params
from attnbench.counting.rules import VIEW
from attnbench.env import command_line, environment, machine_label
from attnbench.errors import (
    AttnbenchError,
    BackendUnavailableError,
    CaseTimeoutError,
    ForwardError,
    InvalidCaseError,
    ResourceGuardError,
)
from attnbench.guards import guard, time_limit
from attnbench.instructions import InstructionBatch, check_available
from attnbench.measurement import is_oom, measure, stages
from attnbench.results import Case, Result
from attnbench.roofline import key_of
from attnbench.settings import RunOptions
from attnbench.sysalloc import SystemAllocatorWorker, headline_budget, other_state
from attnbench.zoo.adapters import forward_failure, layouts_that_run
from attnbench.zoo.build import CountingBuild, build_for_counting, build_module, check_case
from attnbench.zoo.registry import source_hash
from attnbench.zoo.spec import ModuleSpec, Setting

if TYPE_CHECKING:
    from attnbench.gate import GateSettings, Verdict
    from attnbench.instructions import InstructionBatch
    from attnbench.sweep import Sweep

#: Why channels_last does not apply to a token module (a skipped row with this reason).
TOKENS_CHANNELS_LAST = (
    "channels_last is a memory format for image-layout (B, C, H, W) modules; {module} works on tokens (B, N, C), "
    "whose memory order is already channel-last"
)
#: Set to show full tracebacks of failing cases.
DEBUG_ENV = "ATTNBENCH_DEBUG"


class Sink:
    """Where a run reports: its environment and plan, each finished row, its stages and its end. Override what
    you need; every method does nothing here."""

    def start(self, env: Mapping[str, Any], cases: Sequence[Case]) -> None:
        """The run begins: its environment record and the cases it plans."""

    def stage(self, case: Case, stage: str) -> None:
        """`case` enters a stage: "counting", "building", "measuring", then the measurement's own ("exporting",
        "compiling", "preparing", "timing", "memory", "timing the other allocator")."""

    def row(self, row: Result) -> None:
        """A case finished (ok or not): its row."""

    def status(self, message: str) -> None:
        """A line about the run as a whole (the valgrind pass)."""

    def finish(self, outcome: RunOutcome) -> None:
        """The run ended (completed, failed cases, or interrupted): every row, final, and the gate's verdict."""


@dataclass
class RunOutcome:
    """What a sweep produced: the rows, its environment, whether Ctrl-C cut it short, and the gate's verdict."""

    results: list[Result] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    #: Seconds spent starting the system-allocator worker (0 when no CPU case was timed).
    system_worker_startup_s: float = 0.0
    verdict: Verdict | None = None

    @property
    def failed(self) -> list[Result]:
        """Rows that failed: anything but ok and the deliberate refusals (invalid, skipped, guarded)."""
        return [r for r in self.results if r.status not in (R.OK, *R.REFUSED)]


def debug() -> bool:
    """True when ATTNBENCH_DEBUG is set: print full tracebacks of failing cases."""
    return bool(os.environ.get(DEBUG_ENV))


# ---------------------------------------------------------------- the sweep


def run_sweep(
    sweep: Sweep, options: RunOptions | None = None, sink: Sink | None = None, gate: GateSettings | None = None
) -> RunOutcome:
    """Check the sweep, record the environment, measure every case (rows streamed to `sink`), gate if asked."""

    options, sink = options or RunOptions(), sink or Sink()
    options.check()
    threads = max(sweep.values("threads"))
    with torch_threads(threads):  # the constructor checks build with the run's threads, as counting does
        sweep.check(options.measures)
    baseline = gate.load() if gate is not None else None
    cases = sweep.cases()
    roofs = [_roof_key(c) for c in cases] if "latency" in options.metrics else []
    env = environment(threads=threads, peaks=roofs)
    env["machine"] = options.machine or machine_label(env)
    env["command"] = command_line()  # what a report's reader would type to measure again
    env["sweep"] = sweep.record()  # so `report` can put merged shards back in plan order
    if sweep.shard is not None:
        env["shard"] = f"{sweep.shard[0]}/{sweep.shard[1]}"
    if gate is not None and baseline is not None:
        gate.check_baseline(baseline, env)  # before minutes are spent measuring
    options = dataclasses.replace(options, machine=env["machine"])
    sink.start(env, cases)
    with torch_threads(threads):
        outcome = run(cases, options, sink)
    outcome.env = env
    try:
        if gate is not None and baseline is not None and outcome.results and not outcome.interrupted:
            again = options.without_instructions()
            outcome.verdict = gate.judge(outcome.results, baseline, env, lambda case: run([case], again).results)
    finally:
        # After the gate, so a report can carry its verdict; whatever the gate does, the sink hears the end.
        sink.finish(outcome)
    return outcome


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to the run's while building and counting (a timed case sets its own)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _roof_key(case: Case) -> tuple[str, str, int]:

    return key_of(get_backend(case.backend).device, case.scenario.dtype, case.scenario.threads)


def run(cases: Iterable[Case], options: RunOptions | None = None, sink: Sink | None = None) -> RunOutcome:
    """Measure every case (no environment record: run_sweep's job); each failure is a row, Ctrl-C stops with
    what was finished.

    With "instructions" in the metrics, valgrind must be installed (else ValgrindUnavailableError before
    anything runs); the modules of eligible cases are queued as they are built and counted after the sweep
    in one valgrind process, and their rows then carry `instructions`.
    """

    options, sink = options or RunOptions(), sink or Sink()
    counting = "instructions" in options.metrics
    if counting:
        check_available()
    machine = options.machine if options.machine is not None else machine_label()
    run_ = _Run(options, sink, RunOutcome(), machine)
    groups: dict[tuple[Any, ...], list[Case]] = {}
    for case in cases:
        groups.setdefault(case.geometry, []).append(case)
    # One system-allocator worker for the whole sweep, started at its first timed CPU case; the modules of
    # cases whose instructions are counted are queued as they are built, for one valgrind pass at the end.
    with SystemAllocatorWorker() as worker, InstructionBatch() as batch:
        run_.worker, run_.batch = worker, (batch if counting else None)
        try:
            for group in groups.values():
                _run_geometry(group, run_)
            if run_.queued:
                _count_instructions(run_)
        except KeyboardInterrupt:
            run_.outcome.interrupted = True
        run_.outcome.system_worker_startup_s = worker.startup_s
    return run_.outcome


@dataclass
class _Run:
    """The state one run shares between its geometries: options, where rows go, the workers."""

    options: RunOptions
    sink: Sink
    outcome: RunOutcome
    machine: str
    worker: SystemAllocatorWorker | None = None
    batch: InstructionBatch | None = None
    #: Outcome row index of each module queued for the valgrind pass, in queue order.
    queued: list[int] = field(default_factory=list)

    def emit(self, row: Result) -> None:
        """A finished row: labelled with the machine (merged reports keep runs apart), kept, and handed on."""
        row = dataclasses.replace(row, machine=self.machine)
        self.outcome.results.append(row)
        self.sink.row(row)

    def fail(self, targets: Sequence[Case], exc: Exception, values: Mapping[str, Any]) -> None:
        """Each target case's row, failed with `exc`."""
        if debug():
            traceback.print_exc()
        for case in targets:
            self.emit(failure_row(case, exc, values))


# ---------------------------------------------------------------- one geometry: count once, build once


@dataclass
class _Counted:
    """What counting one geometry produced, shared by all its backend rows."""

    values: dict[str, Any]
    estimate_bytes: int | None


def _run_geometry(group: list[Case], run_: _Run) -> None:
    """Count once per mode, build once, then measure every case of one geometry (each failure a row)."""
    options = run_.options
    started = time.perf_counter()
    first = group[0]
    # Counting only: one row per mode (backend "none"), in the scenario of that mode's first case (counts depend
    # on the geometry and the mode alone); measuring: one row per case.
    cases = group if options.measures else _counts_only(group)
    prepared = _count_geometry(first, cases, run_)
    if prepared is None:
        return
    spec, counted, built = prepared
    cases = [c for c in cases if c.scenario.mode in counted]
    if not options.measures:
        for case in cases:
            values = counted[case.scenario.mode].values
            run_.emit(Result.for_case(case, **values, seconds=time.perf_counter() - started))
        return
    if not cases:
        return
    module = _build(first, cases, counted, built, run_)
    if module is None:
        return
    for case in cases:
        run_.sink.stage(case, "measuring")
        row = _run_case(module, case, spec, counted[case.scenario.mode], run_)
        run_.emit(row)
        if run_.batch is not None and row.status == R.OK and get_backend(case.backend).counts_instructions(case):
            run_.batch.add(module, case.input_shape, options.seed)
            run_.queued.append(len(run_.outcome.results) - 1)


def _count_geometry(
    first: Case, cases: list[Case], run_: _Run
) -> tuple[ModuleSpec, dict[str, _Counted], CountingBuild] | None:
    """The spec, each mode's counts and the module counted of a geometry; None (its rows failed) when it cannot
    even be built."""
    options = run_.options
    run_.sink.stage(first, "counting")
    base: dict[str, Any] = {}
    try:
        base = {"source_hash": source_hash(first.module)}
        hw = (first.height, first.width)
        spec, setting = check_case(first.module, first.dim, hw, first.batch, first.kwargs_dict, first.scenario.layout)
        with time_limit(options.time_limit_s):
            # Count on a meta-device build where the constructor allows: no weights exist, so counting allocates
            # nothing (da at 512x512 holds a 256 GiB Linear) and the guard knows the case's peak before anything
            # real is built. A constructor that needs data is built once on the CPU (its check's build if any).
            built = _build_for_counting(first, options)
        base.update(built_on=built.where, build_s=built.seconds)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        run_.fail(cases, exc, base)
        return None
    counted: dict[str, _Counted] = {}
    for mode in dict.fromkeys(c.scenario.mode for c in cases):
        try:
            with time_limit(options.time_limit_s):
                result = count(built.module, first, setting, spec, options, mode)
            # Only now: the limit may bite as its block ends.
            counted[mode] = _Counted({**base, **result.values}, result.estimate_bytes)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # this mode's cases fail; the other mode's still run
            run_.fail([c for c in cases if c.scenario.mode == mode], exc, base)
    return spec, counted, built


def _build(
    first: Case, cases: list[Case], counted: dict[str, _Counted], built: CountingBuild, run_: _Run
) -> torch.nn.Module | None:
    """The geometry's module, built for real once the host's memory guard let it (None: its rows failed); a
    module already built for real to be counted, from the run's seed, is measured as it is (built once)."""
    options = run_.options
    if built.real and built.seed == options.seed:
        return built.module.eval()
    estimates = [c.estimate_bytes for c in counted.values() if c.estimate_bytes is not None]
    run_.sink.stage(first, "building")
    try:
        # The module is built in RAM whatever the backend: guard its whole estimated peak there first.
        guard(max(estimates, default=None), host_available_bytes(), "RAM", options.force)
        torch.manual_seed(options.seed)
        hw = (first.height, first.width)
        with time_limit(options.time_limit_s):
            module = build_module(first.module, first.dim, hw, first.kwargs_dict, first.scenario.layout)
        return module.eval()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        run_.fail(cases, exc, counted[cases[0].scenario.mode].values)
        return None


def _uncounted_summary(report: Any) -> str:
    """What a counter saw but did not count, most output elements first; pure views (no data moved) left out."""
    items = sorted(report.uncounted.items(), key=lambda kv: -kv[1].elements)
    listed = [f"{op} x{u.calls} ({u.elements} el)" for op, u in items if u.category != VIEW]
    views = sum(u.calls for u in report.uncounted.values() if u.category == VIEW)
    return "; ".join(listed + ([f"{views} view call(s) left out (no data moved)"] if views else []))


def count(
    module: torch.nn.Module, case: Case, setting: Setting, spec: ModuleSpec, options: RunOptions, mode: str
) -> _Counted:
    """Params, and every counter's MACs in `mode` (train: forward + backward), for one geometry."""

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
        if report.counter == "attnbench":
            if report.status == "failed":  # the module's own forward raised: no backend will run it either
                raise ForwardError(_forward_failure(module, case, report.reason))
            estimate = report.peak_live_bytes_estimate
            values.update(output_values(report.output_shapes, report.first_output_shape, case))
            if "macs" not in options.metrics:
                continue
        _counter_values(report, values, notes)
    # The registry's formulas are of one forward.
    if "macs" in options.metrics and spec.macs_formula is not None and mode == R.MODES[0]:
        values["macs_formula"] = spec.macs_formula(setting)
    values["counter_notes"] = "; ".join(notes)
    weights = 4 * sum(p.numel() for p in module.parameters())
    if estimate is not None:
        # Weights and input (plus an output of the same size) are resident too.
        estimate += weights + 4 * 2 * case.batch * case.dim * case.tokens
    # Without the counter's estimate, the weights are the least a build holds.
    return _Counted(values, estimate if estimate is not None else weights)


def _forward_failure(module: torch.nn.Module, case: Case, reason: str) -> str:
    """The line of a forward that raised; for a user's module, the other layouts are tried on meta first."""
    layout = case.scenario.layout
    runs_with = layouts_that_run(module, layout, case.input_shape) if layout in R.USER_LAYOUTS else []
    return forward_failure(layout, case.input_shape, reason, runs_with)


def output_values(shapes: str, first: tuple[int, ...] | None, case: Case) -> dict[str, Any]:
    """The output columns of a row, and the note an output deserves (its `reason`; the status stays ok)."""
    if not shapes:
        return {}
    notes = []
    differs = first is not None and tuple(first) != case.input_shape
    if differs:
        notes.append(
            f"output {tuple(first)} differs from the input {case.input_shape}: normal for a network, a mistake for "
            "a block"
        )
    if ";" in shapes or ":" in shapes:
        adapter = (
            "; the tokens adapter converted the first back to (B, C, H, W)"
            if case.scenario.layout in R.TOKEN_LAYOUTS
            else ""
        )
        notes.append(f"the module returns several tensors ({shapes}): each is counted, timed and checked{adapter}")
    return {"output_shapes": shapes, "output_differs": differs, "reason": "; ".join(notes)}


def _counter_values(report: Any, values: dict[str, Any], notes: list[str]) -> None:
    """One counter's columns of a row (MACs, FLOPs, what it left uncounted, where it ran and how long), or a
    note saying why it has none."""
    counter = report.counter
    values[f"counted_on_{counter}"] = report.device
    values[f"count_s_{counter}"] = report.seconds
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


def _build_for_counting(case: Case, options: RunOptions) -> CountingBuild:
    """The module built on the meta device (no weights allocated); a real build if a constructor needs data."""

    def before_cpu(spec: ModuleSpec, setting: Setting) -> None:
        # Only the weights are known before counting: guard them before allocating (a user's module has no
        # formula; its constructor check's CPU build, if it made one, was taken over instead).
        if spec.params_formula is not None:
            guard(4 * spec.params_formula(setting), host_available_bytes(), "RAM", options.force)

    hw = (case.height, case.width)
    return build_for_counting(
        case.module, case.dim, hw, case.kwargs_dict, case.scenario.layout, options.seed, before_cpu
    )


def _counts_only(group: list[Case]) -> list[Case]:
    """One case per mode, its first, on no backend: what a counts-only run makes rows of."""
    first: dict[str, Case] = {}
    for case in group:
        first.setdefault(case.scenario.mode, dataclasses.replace(case, backend=R.NO_BACKEND))
    return list(first.values())


# ---------------------------------------------------------------- one case on its backend


def _not_applicable(case: Case, spec: ModuleSpec) -> str | None:
    """Why a scenario field of `case` does not apply to its module, or None."""
    layout = case.scenario.layout or spec.layout
    if case.scenario.channels_last and layout in R.TOKEN_LAYOUTS:
        return TOKENS_CHANNELS_LAST.format(module=case.module)
    return None


def _run_case(module: torch.nn.Module, case: Case, spec: ModuleSpec, counted: _Counted, run_: _Run) -> Result:
    """One row: the case measured, skipped, or failed with its reason."""
    options = run_.options
    started = time.perf_counter()
    base = counted.values
    why_not = _not_applicable(case, spec)
    if why_not is not None:
        return Result.for_case(case, **{**base, "status": R.SKIPPED, "reason": why_not})
    backend = get_backend(case.backend)
    try:
        estimate = backend.memory_estimate(counted.estimate_bytes, case)
        guard(estimate, backend.free_memory(), backend.memory_name, options.force)
        with time_limit(options.time_limit_s), stages(lambda stage: run_.sink.stage(case, stage)):
            values, extra = _measure(module, case, options)
            timed = values.get("status") == R.OK and values.get("latency_median_s") is not None
            if backend.allocator_states and timed and run_.worker is not None:
                run_.sink.stage(case, "timing the other allocator")
                values, extra = other_state(run_.worker, case, (values, extra), options.budget, options.seed)
        values["extra"] = json.dumps(extra, sort_keys=True, default=str)
        # The output's note (counted once) stays beside the backend's own reason.
        values["reason"] = "; ".join(r for r in (values.get("reason"), base.get("reason")) if r)
        return Result.for_case(case, **{**base, **values, "seconds": time.perf_counter() - started})
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if debug():
            traceback.print_exc()
        row = failure_row(case, exc, base)
    # Outside the handler: its traceback no longer holds the failed step's frames and tensors, so the backend can
    # really give their memory back before the next case's guard reads what is free (PyTorch's FAQ on OOM). A case
    # refused before it ran (unavailable backend, the guard) left nothing to give back.
    if row.status not in R.REFUSED:
        backend.cleanup_after_failure()
    return row


def _measure(module: torch.nn.Module, case: Case, options: RunOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measure one case in this (pinned) process: (row values, extra)."""
    metrics = [m for m in ("latency", "memory") if m in options.metrics]
    budget = headline_budget(case, options.budget)
    m = measure(module, case.input_shape, case.backend, case.scenario, budget, metrics, seed=options.seed)
    values = m.row_values(case.batch)
    if "memory" not in options.metrics:
        for name in ("peak_mem_bytes", "peak_mem_method", "reserved_mem_bytes"):
            values.pop(name)
    return values, m.extra_values()


def failure_row(case: Case, exc: BaseException, base: Mapping[str, Any]) -> Result:
    """The row of a case that raised: its status from the error's type, its reason from the message."""
    backend = _backend_or_none(case.backend)
    if isinstance(exc, InvalidCaseError):
        status = R.INVALID
    elif isinstance(exc, BackendUnavailableError):
        status = R.SKIPPED
    elif isinstance(exc, ResourceGuardError):
        status = R.GUARDED
    elif isinstance(exc, CaseTimeoutError):
        status = R.TIMEOUT
    elif is_oom(exc, backend):
        status = R.OOM
    else:
        status = R.FAILED
    reason = str(exc) if isinstance(exc, AttnbenchError) else f"{type(exc).__name__}: {exc}"
    line = reason.splitlines()[0][:500] if reason else type(exc).__name__
    return Result.for_case(case, **{**base, "status": status, "reason": line})


def _backend_or_none(name: str) -> Any:
    try:
        return get_backend(name)
    except BackendUnavailableError:
        return None


# ---------------------------------------------------------------- the valgrind pass


def _count_instructions(run_: _Run) -> None:
    """Run the one valgrind pass and put each count into its row (a failed count is noted in `extra`)."""
    assert run_.batch is not None
    outcome, queued, options = run_.outcome, run_.queued, run_.options
    started = time.perf_counter()
    run_.sink.status(f"counting instructions of {len(queued)} case(s) under valgrind (one process)")
    limit = options.time_limit_s * len(queued) if options.time_limit_s else None
    counts = run_.batch.run(timeout_s=limit)
    for index, count_ in zip(queued, counts, strict=True):
        row = outcome.results[index]
        if count_.ok:
            outcome.results[index] = dataclasses.replace(row, instructions=count_.instructions)
        else:
            extra = {**row.extra_dict, "instructions_error": count_.reason}
            outcome.results[index] = dataclasses.replace(row, extra=json.dumps(extra, sort_keys=True, default=str))
    run_.sink.status(f"counted instructions in {time.perf_counter() - started:.1f} s")
