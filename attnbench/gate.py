"""The regression gate: compare a run with a committed baseline; counts exactly, then work or wall time.

Two gate metrics:
- "instructions" (noise-immune): Callgrind instructions per forward, within INSTRUCTIONS_TOLERANCE. Counts
  from another CPU, torch, Python, valgrind or allocator are not comparable: such a baseline is refused.
- "wall": median latency, tolerance by case length, a suspected regression re-measured. A regression seen
  only in timings taken while other processes used the CPU is "inconclusive (machine busy)" and does not
  fail the gate, unless `strict`.
Counts (params, MACs) and cases that stopped working fail the gate under either metric.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench import fmt
from attnbench import results as R
from attnbench.backends import get_backend
from attnbench.errors import BackendUnavailableError, BaselineError, UsageError
from attnbench.instructions import INSTRUCTION_ENV_KEYS
from attnbench.metrics import gated_exactly
from attnbench.results import Case, Result
from attnbench.store import LoadedResults, load

#: Counts are exact: any difference in these columns is a change.
COUNT_FIELDS = gated_exactly()
#: Default latency tolerance by the baseline's median: a few-ms case on a shared 2-core VM swings by
#: 10-25% between processes (shared/reference/measurement.md); tens-of-ms cases hold within 5%.
FAST_CASE_S = 0.010
TOLERANCE_FAST = 0.25
TOLERANCE_SLOW = 0.10
#: A suspected latency regression is measured again this many times; the best median is what counts.
REMEASURES = 2
#: Environment keys that must match for latency to be comparable.
HARDWARE_KEYS = ("cpu_model", "logical_cores", "gpu", "torch", "onnxruntime", "allocator")
GATE_METRICS = ("wall", "instructions")
#: Instruction counts repeat exactly on one machine (results/gate_stability.md); 1% leaves room for
#: allocator and Python-level jitter while a real change of work shows as several percent.
INSTRUCTIONS_TOLERANCE = 0.01
#: Change kinds that do not fail the gate unless it is strict: a latency regression seen only while busy.
BUSY = "latency-busy"


@dataclass(frozen=True)
class GateSettings:
    """The regression gate of a run: a baseline file and how it judges (travels whole into run_sweep)."""

    baseline: Path
    #: Latency or instructions tolerance (fraction); None: the metric's default.
    tolerance: float | None = None
    #: Compare latency with a baseline from other hardware.
    force_latency: bool = False
    metric: str = "wall"  # "wall" (latency) or "instructions" (work, immune to load)
    #: Fail latency regressions measured on a busy machine too.
    strict: bool = False
    #: Pass although a row the instruction gate should judge has no count (in the baseline or in this run).
    allow_uncounted: bool = False

    def check(self) -> None:
        """Refuse values no gate could use (UsageError naming the option)."""
        if self.metric not in GATE_METRICS:
            raise UsageError(f"--gate-metric {self.metric!r}: allowed: {', '.join(GATE_METRICS)}")
        if self.tolerance is not None and not 0 <= self.tolerance < 10:
            raise UsageError("--tolerance must be a fraction in [0, 10), e.g. 0.1 for 10%")

    def load(self) -> LoadedResults:
        """The baseline's rows and environment (BaselineError for a missing, empty or corrupt file)."""
        self.check()
        return load_baseline(self.baseline)

    def check_baseline(self, baseline: LoadedResults, env: Mapping[str, Any]) -> None:
        """Refuse, before anything is measured, a baseline this gate cannot use on this machine."""
        if self.metric == "instructions":
            check_instruction_baseline(baseline, env, self.baseline)

    def judge(
        self,
        rows: Sequence[Result],
        baseline: LoadedResults,
        env: Mapping[str, Any],
        remeasure: Callable[[Case], Sequence[Result]] | None = None,
    ) -> Verdict:
        """The verdict on a run's rows; one that compared nothing is refused (the settings differ)."""
        verdict = compare_to_baseline(rows, baseline, self, env, remeasure)
        if verdict.compared_cases == 0:
            held = sorted({f"C={r.dim} {r.height}x{r.width} B={r.batch}" for r in baseline.results})
            raise BaselineError(
                f"gate: no case of this run is in the baseline {self.baseline} (it holds {', '.join(held[:6])}"
                f"{', ...' if len(held) > 6 else ''}); run with the baseline's settings"
            )
        return verdict


@dataclass(frozen=True)
class Change:
    """One difference between the run and the baseline."""

    case: str  # which case, as text
    kind: str  # "count", "instructions", "latency", "latency-busy", "status", "missing", "new", "latency-ok", "source"
    detail: str
    failing: bool


@dataclass(frozen=True)
class Gated:
    """One row the gate judged by its metric, passing or not: the baseline's value, this run's, the change."""

    case: str
    metric: str  # "instructions" or "latency"
    before: float
    after: float | None  # None: not counted in this run
    limit: float
    failing: bool

    @property
    def change(self) -> float | None:
        """This run's value over the baseline's, minus one (None when there is no value)."""
        return None if self.after is None or not self.before else self.after / self.before - 1


@dataclass
class Verdict:
    """All differences, every row judged by the gate metric, whether latency was compared, and the outcome."""

    changes: list[Change] = field(default_factory=list)
    #: Every row judged by the gate metric (instructions or latency), passing or not.
    gated: list[Gated] = field(default_factory=list)
    latency_compared: bool = True
    latency_note: str = ""
    compared_cases: int = 0
    metric: str = "wall"
    #: Rows whose instruction counts were compared (metric "instructions").
    compared_instructions: int = 0

    @property
    def passed(self) -> bool:
        """True when no change fails the gate."""
        return not any(c.failing for c in self.changes)

    @property
    def inconclusive(self) -> bool:
        """True when the gate passed only because latency regressions were measured on a busy machine."""
        return self.passed and any(c.kind == BUSY for c in self.changes)


def load_baseline(path: str | Path) -> LoadedResults:
    """Read a baseline report; a missing, empty, corrupt or other-schema file raises BaselineError."""
    loaded = load(path)
    if not loaded.results:
        raise BaselineError(f"{path}: has no result rows")
    return loaded


def _canonical(value: Any) -> str:
    # A record read back from a file has its dict keys in another order than a live one.
    return json.dumps(value, sort_keys=True, default=str)


def _env_diffs(base_env: Mapping[str, Any], env: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """Each of `keys` whose value differs between the two environment records, with both values."""
    return [
        f"{k}: baseline {base_env.get(k)!r} vs here {env.get(k)!r}"
        for k in keys
        if _canonical(base_env.get(k)) != _canonical(env.get(k))
    ]


def comparable_hardware(base_env: Mapping[str, Any], env: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether latency from `base_env` can be compared with `env`; the reason when not."""
    diffs = _env_diffs(base_env, env, HARDWARE_KEYS)
    if diffs:
        return False, "baseline is from other hardware or versions (" + "; ".join(diffs) + ")"
    return True, ""


def _label(row: Result) -> str:
    return row.label


def default_tolerance(base_median_s: float) -> float:
    """Latency tolerance for a case, from how long it takes (few-ms cases are noisier)."""
    return TOLERANCE_FAST if base_median_s < FAST_CASE_S else TOLERANCE_SLOW


def _spread(row: Result) -> float:
    if row.latency_median_s and row.latency_iqr_s is not None:
        return row.latency_iqr_s / row.latency_median_s
    return 0.0


def _geometry(row: Result) -> tuple[Any, ...]:
    # Counts depend on the geometry and mode only: a counts-only run (backend "none") is gated against any backend.
    scenario = row.scenario
    return (row.module, row.dim, row.height, row.width, row.batch, row.kwargs, scenario.layout, scenario.mode)


def _by_geometry(rows: Sequence[Result]) -> dict[tuple[Any, ...], Result]:
    # One row per geometry, preferring a row that carries counts.
    out: dict[tuple[Any, ...], Result] = {}
    for row in rows:
        held = out.get(_geometry(row))
        if held is None or (held.params is None and row.params is not None):
            out[_geometry(row)] = row
    return out


def comparable_instructions(base_env: Mapping[str, Any], env: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether instruction counts from `base_env` can be compared with `env`; the reason when not."""

    if not base_env:
        return False, "the baseline has no environment record (a CSV's .meta.json sidecar is missing)"
    diffs = _env_diffs(base_env, env, INSTRUCTION_ENV_KEYS)
    if diffs:
        return False, "instruction counts depend on the CPU and versions, and these differ (" + "; ".join(diffs) + ")"
    return True, ""


def check_instruction_baseline(baseline: LoadedResults, env: Mapping[str, Any], path: str | Path = "") -> None:
    """Refuse (BaselineError) a baseline whose instruction counts cannot gate this run, saying why."""
    where = f"{path}: " if path else ""
    if not any(r.instructions is not None for r in baseline.results):
        raise BaselineError(
            f"{where}holds no instruction counts; write it with `compare ... --gate-metric instructions -o FILE`"
        )
    ok, why = comparable_instructions(baseline.env, env)
    if not ok:
        raise BaselineError(f"{where}cannot gate on instructions: {why}; regenerate the baseline on this machine")


def compare_to_baseline(
    rows: Sequence[Result],
    baseline: LoadedResults | str | Path | Sequence[Result],
    settings: GateSettings | None = None,
    env: Mapping[str, Any] | None = None,
    remeasure: Callable[[Case], Sequence[Result]] | None = None,
) -> Verdict:
    """Compare `rows` with the baseline: count changes, cases that now fail and work or latency regressions fail it.

    `baseline` is a loaded report, a report's path, or rows (from attnbench.profile(); their environment is
    taken as this machine's). `settings.metric` "instructions" gates on instruction counts (the baseline must
    hold comparable ones, else BaselineError) and leaves latency alone; "wall" gates on latency, where a
    regression measured only on a busy machine is inconclusive unless `settings.strict`. `remeasure` measures a
    case again (the wall gate re-measures a suspected regression).
    """
    settings = settings or GateSettings(Path(str(baseline)) if isinstance(baseline, str | Path) else Path("rows"))
    if settings.metric not in GATE_METRICS:
        raise ValueError(f"gate metric {settings.metric!r}: allowed: {', '.join(GATE_METRICS)}")
    if env is None:
        from attnbench.env import environment  # torch: a gate on saved rows may run without a measurement

        env = environment(threads=rows[0].scenario.threads if rows else 1)
    baseline = _as_loaded(baseline, env)
    if settings.metric == "instructions":
        check_instruction_baseline(baseline, env)
    verdict = _verdict(settings, baseline.env, env)
    verdict.changes.extend(_source_changes(rows, baseline.results))
    verdict.changes.extend(_geometry_changes(rows, baseline.results, verdict))
    # Status and latency belong to one backend: compare rows that match exactly.
    base = {r.key: r for r in baseline.results}
    for now in rows:
        then = base.get(now.key)
        if then is not None:
            verdict.changes.extend(_row_changes(now, then, settings, verdict, remeasure))
    return verdict


def _verdict(settings: GateSettings, base_env: Mapping[str, Any], env: Mapping[str, Any]) -> Verdict:
    """An empty verdict that knows whether latency is compared, and why not."""
    verdict = Verdict(metric=settings.metric)
    same_hw, why = comparable_hardware(base_env, env)
    verdict.latency_compared = settings.metric == "wall" and (same_hw or settings.force_latency)
    if settings.metric == "instructions":
        verdict.latency_note = "latency not gated (--gate-metric instructions gates the work measure)"
    elif not same_hw:
        verdict.latency_note = why + (
            "; compared anyway (--force-latency)"
            if settings.force_latency
            else "; latency not compared (use --force-latency), counts still are"
        )
    return verdict


def _geometry_changes(rows: Sequence[Result], baseline: Sequence[Result], verdict: Verdict) -> list[Change]:
    """Geometries missing or new, and count changes of those in both (counted as compared cases)."""
    changes = []
    base_geo, cur_geo = _by_geometry(baseline), _by_geometry(rows)
    for geo in base_geo.keys() - cur_geo.keys():
        changes.append(Change(_label(base_geo[geo]), "missing", "in the baseline, not in this run", False))
    for geo in cur_geo.keys() - base_geo.keys():
        changes.append(Change(_label(cur_geo[geo]), "new", "in this run, not in the baseline", False))
    for geo in [g for g in cur_geo if g in base_geo]:
        now, then = cur_geo[geo], base_geo[geo]
        verdict.compared_cases += 1
        for name in COUNT_FIELDS:
            a, b = getattr(then, name), getattr(now, name)
            if a is not None and b is not None and a != b:
                changes.append(Change(_label(now), "count", f"{name} {a:,} -> {b:,} ({b - a:+,})", True))
    return changes


def _row_changes(
    now: Result,
    then: Result,
    settings: GateSettings,
    verdict: Verdict,
    remeasure: Callable[[Case], Sequence[Result]] | None,
) -> list[Change]:
    """One backend's row against the baseline's: a case that stopped working, then work or latency."""
    if then.status == R.OK and now.status != R.OK:
        return [Change(_label(now), "status", f"was ok, now {now.status}: {now.reason}", True)]
    if settings.metric == "instructions":
        return _instruction_changes(now, then, settings, verdict)
    if verdict.latency_compared and then.latency_median_s and now.latency_median_s:
        changes, gated = _latency(now, then, settings.tolerance, remeasure, settings.strict)
        verdict.gated.append(gated)
        return changes
    return []


def _instruction_changes(now: Result, then: Result, settings: GateSettings, verdict: Verdict) -> list[Change]:
    """The instruction gate on one row; a row it should judge but that has no count fails, unless allowed."""
    if then.instructions is None or now.instructions is None:
        if not _countable(now):
            return []
        where = "the baseline" if then.instructions is None else "this run"
        why = (then if then.instructions is None else now).extra_dict.get("instructions_error", "")
        detail = f"instructions not counted in {where}{': ' + why if why else ''}" + (
            " (--allow-uncounted: not failed)" if settings.allow_uncounted else " (--allow-uncounted passes it)"
        )
        if then.instructions is not None:
            tol = _instruction_tolerance(settings.tolerance)
            failing = not settings.allow_uncounted
            verdict.gated.append(Gated(_label(now), "instructions", then.instructions, None, tol, failing))
        return [Change(_label(now), "uncounted", detail, not settings.allow_uncounted)]
    verdict.compared_instructions += 1
    changes = _instructions(now, then, settings.tolerance)
    tol = _instruction_tolerance(settings.tolerance)
    failing = any(c.failing for c in changes)
    verdict.gated.append(Gated(_label(now), "instructions", then.instructions, now.instructions, tol, failing))
    return changes


def _countable(row: Result) -> bool:
    """Whether the valgrind pass counts this row's case (its backend says so)."""
    try:
        return get_backend(row.backend).counts_instructions(row.case)
    except BackendUnavailableError:  # the counts-only placeholder, or a backend not installed here
        return False


def _instruction_tolerance(tolerance: float | None) -> float:
    return INSTRUCTIONS_TOLERANCE if tolerance is None else tolerance


def _as_loaded(baseline: LoadedResults | str | Path | Sequence[Result], env: Mapping[str, Any]) -> LoadedResults:
    if isinstance(baseline, LoadedResults):
        return baseline
    if isinstance(baseline, (str, Path)):
        return load_baseline(baseline)
    return LoadedResults(list(baseline), dict(env), "rows")


def _source_changes(rows: Sequence[Result], baseline: Sequence[Result]) -> list[Change]:
    """One note per module whose source hash differs from the baseline's (code changed; not a failure alone)."""
    then = {r.module: r.source_hash for r in baseline if r.source_hash}
    now = {r.module: r.source_hash for r in rows if r.source_hash}
    return [
        Change(module, "source", f"source hash {then[module]} -> {digest}: the module's code changed", False)
        for module, digest in now.items()
        if module in then and then[module] != digest
    ]


def _instructions(now: Result, then: Result, tolerance: float | None) -> list[Change]:
    """A change of work beyond the tolerance fails (more) or is reported (less)."""
    base, counted = int(then.instructions), int(now.instructions)  # type: ignore[arg-type]
    tol = _instruction_tolerance(tolerance)
    change = counted / base - 1 if base else 0.0
    detail = f"instructions {fmt.si(base)} -> {fmt.si(counted)} per call ({change:+.2%}, limit {tol:.0%})"
    if change > tol:
        return [Change(_label(now), "instructions", detail, True)]
    if change < -tol:
        return [Change(_label(now), "instructions-less", detail + "; update the baseline to keep it", False)]
    return []


def _latency(
    now: Result,
    then: Result,
    tolerance: float | None,
    remeasure: Callable[[Case], Sequence[Result]] | None,
    strict: bool = False,
) -> tuple[list[Change], Gated]:
    base_s = float(then.latency_median_s)  # type: ignore[arg-type]
    tol = default_tolerance(base_s) if tolerance is None else tolerance
    limit = max(tol, _spread(now), _spread(then))
    best = float(now.latency_median_s)  # type: ignore[arg-type]
    clean = not now.latency_contended  # some measurement was taken with the machine to itself
    tries = 0
    # A suspected regression is measured again: only a slowdown that survives re-measurement fails.
    while best / base_s - 1 > limit and remeasure is not None and tries < REMEASURES:
        tries += 1
        # Same identity as the row, through the planner so that list kwargs become hashable tuples.
        case = now.case
        again = [r for r in remeasure(case) if r.latency_median_s]
        if again:
            best = min(best, float(again[0].latency_median_s))  # type: ignore[arg-type]
            clean = clean or not again[0].latency_contended
    change = best / base_s - 1
    detail = (
        f"latency {fmt.seconds(base_s)} -> {fmt.seconds(best)} ({change:+.1%}, limit {limit:.0%}"
        + (f", after {tries} re-measurement(s)" if tries else "")
        + ")"
    )
    changes = _latency_changes(now, change, limit, detail, tries, clean, strict)
    return changes, Gated(_label(now), "latency", base_s, best, limit, any(c.failing for c in changes))


def _latency_changes(
    now: Result, change: float, limit: float, detail: str, tries: int, clean: bool, strict: bool
) -> list[Change]:
    if change > limit and not clean:
        # Every measurement that shows the slowdown shared the CPU with other processes: no evidence either way.
        detail += "; inconclusive (machine busy): other processes used the CPU during every measurement"
        return [Change(_label(now), BUSY, detail + ("; --strict: fails" if strict else ""), strict)]
    if change > limit:
        return [Change(_label(now), "latency", detail, True)]
    if tries:
        return [Change(_label(now), "latency-ok", detail, False)]
    return []
