"""`profile` and `compare`: measure modules over a sweep; one request builder, one library path, one renderer."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar

from attnbench import report
from attnbench import results as R
from attnbench.cli.app import app, consoles, stopped_by
from attnbench.cli.options import (
    BREAKDOWN_DEPTH,
    COMPARE,
    COUNTERS_DEFAULT,
    METRICS_DEFAULT,
    PROFILE,
    AllocatorProcessesOpt,
    AllOpt,
    BatchOpt,
    CacheDirOpt,
    CompareBackendOpt,
    CompareDimOpt,
    CompareResOpt,
    CompareSortOpt,
    CountersOpt,
    Defaults,
    ForceOpt,
    KwOpt,
    LabelOpt,
    MaxRunOpt,
    MetricsOpt,
    MinRunOpt,
    ModulesArg,
    NoCacheOpt,
    NoInterleaveOpt,
    OutputOpt,
    PlotsOpt,
    PrecisionOpt,
    ProfileBackendOpt,
    ProfileDimOpt,
    ProfileResOpt,
    ProfileSortOpt,
    QuietOpt,
    ReferenceOpt,
    Request,
    ShardOpt,
    TimeLimitOpt,
    WarmupOpt,
    WorkersOpt,
    build_request,
    scenario_options,
)
from attnbench.errors import AttnbenchError
from attnbench.gate import FAST_CASE_S, INSTRUCTIONS_TOLERANCE, TOLERANCE_FAST, TOLERANCE_SLOW
from attnbench.sink import PREPARE, TIME
from attnbench.timing import DEFAULT_MAX_RUN_TIME, DEFAULT_MIN_RUN_TIME, DEFAULT_PRECISION, WARMUP_MIN_S

if TYPE_CHECKING:
    from attnbench.runner import RunOutcome


@app.command("profile")
@scenario_options
def profile_cmd(
    modules: ModulesArg = None,
    all_: AllOpt = False,
    dim: ProfileDimOpt = None,
    res: ProfileResOpt = None,
    batch: BatchOpt = None,
    backend: ProfileBackendOpt = None,
    kw: KwOpt = None,
    metrics: MetricsOpt = METRICS_DEFAULT,
    counters: CountersOpt = COUNTERS_DEFAULT,
    output: OutputOpt = None,
    plots: PlotsOpt = None,
    min_run_time: MinRunOpt = DEFAULT_MIN_RUN_TIME,
    max_run_time: MaxRunOpt = DEFAULT_MAX_RUN_TIME,
    precision: PrecisionOpt = DEFAULT_PRECISION,
    warmup: WarmupOpt = WARMUP_MIN_S,
    time_limit: TimeLimitOpt = None,
    force: ForceOpt = False,
    sort: ProfileSortOpt = None,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    label: LabelOpt = None,
    cache_dir: CacheDirOpt = None,
    workers: WorkersOpt = None,
    allocator_processes: AllocatorProcessesOpt = None,
    no_interleave: NoInterleaveOpt = False,
    reference: ReferenceOpt = None,
    no_cache: NoCacheOpt = False,
    breakdown: Annotated[
        bool,
        typer.Option(
            "--breakdown",
            help="Also print params, MACs and FLOPs per nested submodule (or --by type), MACs per operator, and on "
            "a measured cpu row each submodule's share of the latency and the aten operators' times.",
        ),
    ] = False,
    depth: Annotated[
        int | None,
        typer.Option("--depth", help=f"Submodule levels --breakdown shows (default {BREAKDOWN_DEPTH}; 0: the whole)."),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            help="What --breakdown groups by: module (nested submodules, the default) or type (module classes, "
            "with their share of the whole).",
        ),
    ] = None,
    scenario: Mapping[str, Any] | None = None,
) -> None:
    """Measure modules over every dim, resolution, batch, backend and scenario given; one table, optional reports."""
    measure_and_render(build_request(PROFILE, locals()), PROFILE)


@app.command("compare")
@scenario_options
def compare_cmd(
    modules: ModulesArg = None,
    all_: AllOpt = False,
    dim: CompareDimOpt = None,
    res: CompareResOpt = None,
    batch: BatchOpt = None,
    backend: CompareBackendOpt = None,
    kw: KwOpt = None,
    metrics: MetricsOpt = METRICS_DEFAULT,
    counters: CountersOpt = COUNTERS_DEFAULT,
    output: OutputOpt = None,
    plots: PlotsOpt = None,
    min_run_time: MinRunOpt = DEFAULT_MIN_RUN_TIME,
    max_run_time: MaxRunOpt = DEFAULT_MAX_RUN_TIME,
    precision: PrecisionOpt = DEFAULT_PRECISION,
    warmup: WarmupOpt = WARMUP_MIN_S,
    time_limit: TimeLimitOpt = None,
    force: ForceOpt = False,
    sort: CompareSortOpt = None,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    label: LabelOpt = None,
    cache_dir: CacheDirOpt = None,
    workers: WorkersOpt = None,
    allocator_processes: AllocatorProcessesOpt = None,
    no_interleave: NoInterleaveOpt = False,
    reference: ReferenceOpt = None,
    no_cache: NoCacheOpt = False,
    baseline: Annotated[Path | None, typer.Option("--baseline", help="Gate against this CSV/JSON report.")] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance",
            help=f"Latency (or instructions) regression tolerance (fraction). [default: {TOLERANCE_FAST} below "
            f"{FAST_CASE_S * 1e3:g} ms, {TOLERANCE_SLOW} above; instructions: {INSTRUCTIONS_TOLERANCE}]",
        ),
    ] = None,
    force_latency: Annotated[
        bool, typer.Option("--force-latency", help="Compare latency with a baseline from other hardware.")
    ] = False,
    gate_metric: Annotated[
        str,
        typer.Option(
            "--gate-metric",
            help="wall: latency; instructions: Callgrind instructions per forward (needs valgrind; immune to "
            "load). With -o, instructions also writes them into the baseline.",
        ),
    ] = "wall",
    strict: Annotated[
        bool, typer.Option("--strict", help="Wall gate: fail latency regressions measured on a busy machine too.")
    ] = False,
    allow_uncounted: Annotated[
        bool,
        typer.Option("--allow-uncounted", help="Instruction gate: pass although a row it should judge has no count."),
    ] = False,
    scenario: Mapping[str, Any] | None = None,
) -> None:
    """Compare modules side by side (defaults: C=64 at 14, 28, 56 on cpu and ort), best per column in bold."""
    measure_and_render(build_request(COMPARE, locals()), COMPARE)


# ---------------------------------------------------------------- run the request, then render


def measure_and_render(request: Request, defaults: Defaults) -> None:
    """Check the outputs, run the sweep with the outputs locked, render; exit 0 / 1 / 2 / 130 / 143."""
    from attnbench.report import ReportFiles  # pandas and torch: list, info and env share this module's imports
    from attnbench.runner import run_sweep  # torch: as above

    sweep, options, outputs = request.sweep, request.options, request.outputs
    outputs.check(sweep.backends)
    if options.measures:
        for warning in sweep.warnings():
            consoles.err.print(f"attnbench: warning: {warning}", style="yellow", highlight=False)
    with outputs.locked():
        sinks = Sinks(
            [ReportFiles(outputs.files, outputs.title, outputs.sort), Progress(options.measures, outputs.quiet)]
        )
        outcome = run_sweep(sweep, options, sinks, request.gate)
    render(request, outcome)


def render(request: Request, outcome: RunOutcome) -> None:
    """Tables on stdout, notes on stderr, plots and the gate's verdict; the exit code the outcome deserves."""

    outputs, rows, env, err = request.outputs, outcome.results, outcome.env, consoles.err
    if request.sweep.shard is not None and not rows and not outcome.interrupted:
        _empty_shard(request, env)
        return
    if outputs.plots is not None and rows:
        from attnbench.report.plots import plot_scaling  # matplotlib: only when plots are asked for

        for path in plot_scaling(rows, outputs.plots, env):
            err.print(f"wrote {path}", highlight=False)
    report.show(rows, consoles.out, err, outputs.title, outputs.sort, outputs.highlight_best, env)
    if outputs.breakdown:
        from attnbench.cli.breakdown import print_breakdowns  # torch: only with --breakdown

        print_breakdowns(rows, consoles.out, outputs.depth, outputs.by, request.options.seed)
    for path in outputs.files:
        err.print(f"wrote {path}", highlight=False)
    if outcome.interrupted:
        how, code = stopped_by()
        err.print(f"attnbench: {how}: {len(rows)} completed row(s) kept", highlight=False)
        raise typer.Exit(code)
    _refuse_all_refused(request, rows)
    if outcome.verdict is not None:
        report.show_gate(outcome.verdict, consoles.out, len(outcome.failed))
    if outcome.failed or (outcome.verdict is not None and not outcome.verdict.passed):
        raise typer.Exit(1)


def _refuse_all_refused(request: Request, rows: Sequence[R.Result]) -> None:
    # Nothing ran because every case was refused (guarded, skipped, invalid): the input asked for nothing
    # this machine will run, so it ends like bad input, with the first refusal's reason. A shard of only
    # invalid cases is not bad input: the sweep as a whole has valid cases (Sweep.check), other shards run them.
    only_invalid_shard = request.sweep.shard is not None and all(row.status == R.INVALID for row in rows)
    if rows and all(row.status in R.REFUSED for row in rows) and not only_invalid_shard:
        first = rows[0]
        raise AttnbenchError(f"every case was refused; first: {first.label}: {first.status}: {first.reason}")


def _empty_shard(request: Request, env: Mapping[str, Any]) -> None:
    """A shard the partition left without cases: say so (its empty reports are written), exit 0."""

    sweep = request.sweep
    geometries = len({c.geometry for c in dataclasses.replace(sweep, shard=None).cases()})
    consoles.err.print(
        f"attnbench: shard {env.get('shard')} has no cases: the sweep has {geometries} geometr"
        f"{'y' if geometries == 1 else 'ies'}, fewer than {sweep.shard[1]} shards; wrote empty reports",
        highlight=False,
    )
    for path in request.outputs.files:
        consoles.err.print(f"wrote {path}", highlight=False)


# ---------------------------------------------------------------- where the run reports


class Sinks:
    """Several sinks as one: each hears everything, in order."""

    def __init__(self, sinks: Sequence[Any]) -> None:
        self.sinks = list(sinks)

    def start(self, env: Mapping[str, Any], cases: Sequence[R.Case]) -> None:
        """Every sink's start."""
        for sink in self.sinks:
            sink.start(env, cases)

    def phase(self, phase: str, cases: Sequence[R.Case], note: str = "") -> None:
        """Every sink's phase."""
        for sink in self.sinks:
            getattr(sink, "phase", lambda *a: None)(phase, cases, note)

    def stage(self, case: R.Case, stage: str) -> None:
        """Every sink's stage."""
        for sink in self.sinks:
            sink.stage(case, stage)

    def rotation(self, round_: int, timing: int) -> None:
        """Every sink's rotation."""
        for sink in self.sinks:
            getattr(sink, "rotation", lambda *a: None)(round_, timing)

    def row(self, row: R.Result) -> None:
        """Every sink's row."""
        for sink in self.sinks:
            sink.row(row)

    def status(self, message: str) -> None:
        """Every sink's status."""
        for sink in self.sinks:
            sink.status(message)

    def finish(self, outcome: RunOutcome) -> None:
        """Every sink's finish."""
        for sink in self.sinks:
            sink.finish(outcome)


#: What each phase does, for the progress line.
PHASE_WORDS = {
    PREPARE: "counting, building, exporting and probing {n} case(s)",
    TIME: "timing {n} case(s) alone",
}


class Progress:
    """Progress on stderr, naming each case's stage: a bar on a terminal ("acmix C=64 56x56 B=1 ort: exporting"),
    one plain line per finished case in a log, with the seconds its slow stages took (a bar would be redrawn
    into it)."""

    #: Stages shorter than this go unsaid in a log line.
    SAY_STAGE_S = 0.1

    def __init__(self, measures: bool, quiet: bool) -> None:
        self.measures, self.quiet = measures, quiet
        self.done, self.total = 0, 0
        self._bar: Any = None
        self._task: Any = None
        self._phase = ""
        #: The stage under way: (case label, stage, when it began); seconds per stage of each case not yet a row.
        self._current: tuple[str, str, float] | None = None
        self._spent: dict[str, dict[str, float]] = {}
        self.clock = time.perf_counter  # tests replace it

    def start(self, env: Mapping[str, Any], cases: Sequence[R.Case]) -> None:
        """Count the steps (cases, or geometries and modes when only counting) and open the bar."""
        steps = cases if self.measures else list({(_geometry_text(c), c.scenario.mode): c for c in cases}.values())
        self.total = len(steps)
        if self.quiet or not consoles.err.is_terminal or not steps:
            return

        self._bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=consoles.err,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(_geometry_text(steps[0]), total=self.total)

    def phase(self, phase: str, cases: Sequence[R.Case], note: str = "") -> None:
        """Say which phase begins: on the bar as a prefix, in a log as a line."""
        number = 1 if phase == PREPARE else 2
        self._phase = f"{number}/2 {phase}"
        what = PHASE_WORDS[phase].format(n=len(cases))
        if self._bar is not None:
            self._bar.update(self._task, description=f"[{self._phase}] {what}")
        elif not self.quiet and self.measures:
            print(f"attnbench: phase {self._phase}: {what} ({note})", file=sys.stderr, flush=True)

    def stage(self, case: R.Case, stage: str) -> None:
        """Name the case and what it is doing on the bar; note when the stage began (a case's stages interleave
        with other cases' in the phases, so each is kept for its own case)."""
        self._close_stage()
        self._current = (case.label, stage, self.clock())
        if self._bar is not None:
            # Counting and building are the geometry's (every backend shares them); the rest, the backend's.
            where = "" if stage in ("counting", "building") else f" {case.backend}"
            prefix = f"[{self._phase}] " if self._phase else ""
            self._bar.update(self._task, description=f"{prefix}{_geometry_text(case)}{where}: {stage}")

    def rotation(self, round_: int, timing: int) -> None:
        """On the bar: the timing rotation's round and how many cases are still timed."""
        self._close_stage()  # the rotation's time is every case's: each row says its own
        if self._bar is not None:
            text = f"[{self._phase}] round {round_ + 1}: {timing} case(s) taking turns"
            self._bar.update(self._task, description=text)

    def _close_stage(self) -> None:
        if self._current is not None:
            label, name, began = self._current
            spent = self._spent.setdefault(label, {})
            spent[name] = spent.get(name, 0.0) + self.clock() - began
            self._current = None

    def row(self, row: R.Result) -> None:
        """Advance; in a log, one line for the finished case with its slow stages."""
        self._close_stage()
        spent = self._spent.pop(row.label, {})
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1)
        elif not self.quiet:
            print(f"attnbench: {progress_line(row, self.done, self.total, spent)}", file=sys.stderr, flush=True)

    def status(self, message: str) -> None:
        """A line about the run as a whole, whole and at once."""
        if not self.quiet:
            print(f"attnbench: {message}", file=sys.stderr, flush=True)

    def finish(self, outcome: RunOutcome) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def progress_line(row: R.Result, done: int, total: int, stages: Mapping[str, float] | None = None) -> str:
    """One finished case for a log: '[3/58] sk C=64 28x28 B=1 ort: ok in 9.2 s (preparing 8.1 s, timing 0.9 s)'.

    The time is the row's own seconds (its staging, its timing and its allocator states, not the time it waited
    for other cases) and its geometry's counting and building (they go to its first case); its slow `stages` are
    named.
    """
    stages = stages or {}
    shared = sum(stages.get(name, 0.0) for name in ("counting", "building"))
    took = row.seconds + shared if row.seconds is not None else (sum(stages.values()) if stages else None)
    seconds = f" in {took:.1f} s" if took is not None else ""
    slow = ", ".join(f"{name} {s:.1f} s" for name, s in stages.items() if s >= Progress.SAY_STAGE_S)
    return f"[{done}/{total}] {row.label}: {row.status}{seconds}" + (f" ({slow})" if slow else "")


def _geometry_text(case: R.Case) -> str:
    return f"{case.module} C={case.dim} {case.height}x{case.width} B={case.batch}"
