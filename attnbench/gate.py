"""The regression gate: compare a run with a committed baseline; counts exactly, latency noise-aware."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from attnbench import results as R
from attnbench.errors import BaselineError
from attnbench.results import Case, LoadedResults, Result

#: Counts are exact: any difference in these columns is a change.
COUNT_FIELDS = ("params", "macs_attnbench")
#: Default latency tolerance by the baseline's median: a few-ms case on a shared 2-core VM swings by
#: 10-25% between processes (shared/reference/measurement.md); tens-of-ms cases hold within 5%.
FAST_CASE_S = 0.010
TOLERANCE_FAST = 0.25
TOLERANCE_SLOW = 0.10
#: A suspected latency regression is measured again this many times; the best median is what counts.
REMEASURES = 2
#: Environment keys that must match for latency to be comparable.
HARDWARE_KEYS = ("cpu_model", "logical_cores", "gpu", "torch", "onnxruntime", "allocator")


@dataclass(frozen=True)
class Change:
    """One difference between the run and the baseline."""

    key: tuple[Any, ...]
    kind: str  # "count", "latency", "status", "missing", "new", "latency-ok"
    detail: str
    failing: bool


@dataclass
class Verdict:
    """All differences, whether latency was compared, and the outcome."""

    changes: list[Change] = field(default_factory=list)
    latency_compared: bool = True
    latency_note: str = ""
    compared_cases: int = 0

    @property
    def passed(self) -> bool:
        """True when no change fails the gate."""
        return not any(c.failing for c in self.changes)


def load_baseline(path: str | Path) -> LoadedResults:
    """Read a baseline report; a missing, empty, corrupt or other-schema file raises BaselineError."""
    loaded = R.load(path)
    if not loaded.results:
        raise BaselineError(f"{path}: has no result rows")
    return loaded


def _canonical(value: Any) -> str:
    # A record read back from a file has its dict keys in another order than a live one.
    return json.dumps(value, sort_keys=True, default=str)


def comparable_hardware(base_env: Mapping[str, Any], env: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether latency from `base_env` can be compared with `env`; the reason when not."""
    diffs = [
        f"{k}: baseline {base_env.get(k)!r} vs here {env.get(k)!r}"
        for k in HARDWARE_KEYS
        if _canonical(base_env.get(k)) != _canonical(env.get(k))
    ]
    if diffs:
        return False, "baseline is from other hardware or versions (" + "; ".join(diffs) + ")"
    return True, ""


def _key_text(key: tuple[Any, ...]) -> str:
    module, dim, h, w, batch, backend, _dtype, threads, kwargs = key
    return f"{module} C={dim} {h}x{w} B={batch} {backend} t={threads}" + (f" {kwargs}" if kwargs else "")


def default_tolerance(base_median_s: float) -> float:
    """Latency tolerance for a case, from how long it takes (few-ms cases are noisier)."""
    return TOLERANCE_FAST if base_median_s < FAST_CASE_S else TOLERANCE_SLOW


def _spread(row: Result) -> float:
    if row.latency_median_s and row.latency_iqr_s is not None:
        return row.latency_iqr_s / row.latency_median_s
    return 0.0


def compare_to_baseline(
    rows: Sequence[Result],
    baseline: LoadedResults,
    tolerance: float | None = None,
    force_latency: bool = False,
    remeasure: Callable[[Case], Sequence[Result]] | None = None,
    env: Mapping[str, Any] | None = None,
) -> Verdict:
    """Compare `rows` with the baseline: exit-worthy changes are count changes, lost cases, latency regressions."""
    if env is None:
        from attnbench.env import environment

        env = environment(threads=rows[0].threads if rows else 1)
    verdict = Verdict()
    same_hw, why = comparable_hardware(baseline.env, env)
    verdict.latency_compared = same_hw or force_latency
    if not same_hw:
        verdict.latency_note = why + (
            "; compared anyway (--force-latency)"
            if force_latency
            else "; latency not compared (use --force-latency), counts still are"
        )
    base = {r.key: r for r in baseline.results}
    current = {r.key: r for r in rows}
    for key in base.keys() - current.keys():
        verdict.changes.append(Change(key, "missing", "in the baseline, not in this run", False))
    for key in current.keys() - base.keys():
        verdict.changes.append(Change(key, "new", "in this run, not in the baseline", False))
    for key in [k for k in current if k in base]:
        now, then = current[key], base[key]
        verdict.compared_cases += 1
        if then.status == R.OK and now.status != R.OK:
            verdict.changes.append(Change(key, "status", f"was ok, now {now.status}: {now.reason}", True))
            continue
        for name in COUNT_FIELDS:
            a, b = getattr(then, name), getattr(now, name)
            if a is not None and b is not None and a != b:
                verdict.changes.append(Change(key, "count", f"{name} {a:,} -> {b:,} ({b - a:+,})", True))
        if verdict.latency_compared and then.latency_median_s and now.latency_median_s:
            verdict.changes.extend(_latency(key, now, then, tolerance, remeasure))
    return verdict


def _latency(
    key: tuple[Any, ...],
    now: Result,
    then: Result,
    tolerance: float | None,
    remeasure: Callable[[Case], Sequence[Result]] | None,
) -> list[Change]:
    base_s = float(then.latency_median_s)  # type: ignore[arg-type]
    tol = default_tolerance(base_s) if tolerance is None else tolerance
    limit = max(tol, _spread(now), _spread(then))
    best = float(now.latency_median_s)  # type: ignore[arg-type]
    tries = 0
    # A suspected regression is measured again: only a slowdown that survives re-measurement fails.
    while best / base_s - 1 > limit and remeasure is not None and tries < REMEASURES:
        tries += 1
        case = Case(
            now.module,
            now.dim,
            now.height,
            now.width,
            now.batch,
            now.backend,
            now.dtype,
            now.threads,
            tuple(sorted(_kwargs(now).items())),
        )
        again = [r for r in remeasure(case) if r.latency_median_s]
        if again:
            best = min(best, float(again[0].latency_median_s))  # type: ignore[arg-type]
    change = best / base_s - 1
    detail = (
        f"latency {base_s * 1e3:.3g} -> {best * 1e3:.3g} ms ({change:+.1%}, limit {limit:.0%}"
        + (f", after {tries} re-measurement(s)" if tries else "")
        + ")"
    )
    if change > limit:
        return [Change(key, "latency", detail, True)]
    if tries:
        return [Change(key, "latency-ok", detail, False)]
    return []


def _kwargs(row: Result) -> dict[str, Any]:
    return json.loads(row.kwargs) if row.kwargs else {}


def print_gate(verdict: Verdict, console: Console) -> None:
    """Print what changed and the outcome of the gate."""
    if verdict.latency_note:
        console.print(f"[yellow]gate: {verdict.latency_note}[/yellow]", highlight=False)
    if verdict.changes:
        table = Table(title="Changes against the baseline", header_style="bold", title_justify="left")
        for header in ("Case", "Kind", "Change", "Fails"):
            table.add_column(header)
        for c in verdict.changes:
            table.add_row(
                _key_text(c.key),
                c.kind,
                c.detail,
                "yes" if c.failing else "no",
                style="red" if c.failing else None,
            )
        console.print(table)
    outcome = "[green]PASSED[/green]" if verdict.passed else "[red]FAILED[/red]"
    console.print(
        f"gate: {outcome}: {verdict.compared_cases} case(s) compared, "
        f"{sum(c.failing for c in verdict.changes)} failing change(s)"
    )
