"""Latency ratios: each row's latency over a reference module's at the same setting, with a 95% interval.

"mhsa is 3x lka" is the question `compare` answers. On a shared machine the two medians may come from different
phases of the machine; the ratio of two rows timed in one rotation (attnbench.timing.time_lanes) does not: block r
of both ran within one round, so the per-round ratio a_r / b_r cancels what the machine did meanwhile. The ratio
is the median of the per-round ratios over the rounds both ran, and its 95% interval is read off their order
statistics, as the median's is (attnbench.timing.median_ci_ranks: distribution-free). Rows not timed together
(`--no-interleave`, other runs) get the ratio of their medians and an interval from the two medians' intervals
(their relative half-widths added in quadrature), and say so (`ratio_rounds` 0).

A ratio whose interval is wider than +-RATIO_PRECISION of it is flagged, like a noisy median.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attnbench.errors import UsageError
from attnbench.results import OK, Result
from attnbench.timing import median_ci_ranks, quantile

#: A ratio's 95% interval must lie within +-5% of it, or the ratio is flagged.
RATIO_PRECISION = 0.05


@dataclass(frozen=True)
class Ratio:
    """A latency over its reference's: the value, its 95% interval, how many paired rounds it rests on."""

    value: float
    lo: float
    hi: float
    #: Rounds both rows were timed in (0: not timed together; the interval comes from the two medians').
    rounds: int

    @property
    def half_width(self) -> float:
        """The interval's larger side over the ratio (inf when there is no interval)."""
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.value <= 0:
            return math.inf
        return max(self.value - self.lo, self.hi - self.value) / self.value

    @property
    def wide(self) -> bool:
        """True when the interval is wider than +-RATIO_PRECISION."""
        return self.half_width > RATIO_PRECISION


def paired(times: Sequence[float], ref_times: Sequence[float]) -> Ratio:
    """The ratio from per-block times of two rows timed in one rotation (block r of each in round r)."""
    n = min(len(times), len(ref_times))
    per_round = sorted(a / b for a, b in zip(times[:n], ref_times[:n], strict=True) if b > 0)
    if not per_round:
        return Ratio(math.nan, math.nan, math.nan, 0)
    value = quantile(per_round, 0.5)
    ranks = median_ci_ranks(len(per_round))
    if ranks is None:
        return Ratio(value, -math.inf, math.inf, len(per_round))
    return Ratio(value, per_round[ranks[0]], per_round[ranks[1]], len(per_round))


def unpaired(median: float, ci_rel: float | None, ref_median: float, ref_ci_rel: float | None) -> Ratio:
    """The ratio of two medians timed apart; its interval from theirs, added in quadrature (inf if unknown)."""
    value = median / ref_median
    if ci_rel is None or ref_ci_rel is None:
        return Ratio(value, -math.inf, math.inf, 0)
    half = math.hypot(ci_rel, ref_ci_rel)
    return Ratio(value, value * (1 - half), value * (1 + half), 0)


def setting_of(row: Result) -> tuple[Any, ...]:
    """What must be equal for two rows' latencies to be compared: all but the module and its kwargs."""
    return (row.machine, row.dim, row.height, row.width, row.batch, row.backend, row.scenario)


def _timed(row: Result) -> bool:
    return row.status == OK and row.latency_median_s is not None and row.latency_median_s > 0


def ratio_of(row: Result, ref: Result) -> Ratio:
    """`row`'s latency over `ref`'s: paired when both were timed in one rotation, else from their medians."""
    extra, ref_extra = row.extra_dict, ref.extra_dict
    rotation = extra.get("timing_rotation")
    if rotation and rotation == ref_extra.get("timing_rotation"):
        return paired(extra.get("block_times_s") or [], ref_extra.get("block_times_s") or [])
    assert row.latency_median_s is not None and ref.latency_median_s is not None
    return unpaired(row.latency_median_s, row.latency_ci_rel, ref.latency_median_s, ref.latency_ci_rel)


def check_reference(reference: str | None, modules: Sequence[str]) -> str | None:
    """The run's module a --reference names (a file spec by its class name too); UsageError naming them if none."""
    if reference is None or reference in modules:
        return reference
    named = [m for m in modules if m.rpartition(":")[2] == reference]
    if len(named) == 1:
        return named[0]
    raise UsageError(f"--reference {reference!r}: not a module of this run; its modules: {', '.join(modules)}")


def with_ratios(rows: Sequence[Result], reference: str | None = None) -> list[Result]:
    """The rows with `latency_ratio` and its interval filled in, per setting with at least two timed modules.

    The reference is the module named `reference` where it was timed at that setting, else the fastest there.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, row in enumerate(rows):
        if _timed(row):
            groups.setdefault(setting_of(row), []).append(i)
    out = list(rows)
    for members in groups.values():
        if len({rows[i].module for i in members}) < 2:
            continue
        named = [i for i in members if rows[i].module == reference]
        ref = rows[named[0] if named else min(members, key=lambda i: rows[i].latency_median_s or math.inf)]
        for i in members:
            out[i] = _filled(rows[i], ref)
    return out


def _filled(row: Result, ref: Result) -> Result:
    if row is ref:
        return dataclasses.replace(row, latency_ratio=1.0, ratio_reference=ref.module, ratio_rounds=None)
    ratio = ratio_of(row, ref)
    finite = math.isfinite(ratio.half_width)
    return dataclasses.replace(
        row,
        latency_ratio=ratio.value if math.isfinite(ratio.value) else None,
        latency_ratio_lo=ratio.lo if finite else None,
        latency_ratio_hi=ratio.hi if finite else None,
        latency_ratio_wide=ratio.wide,
        ratio_reference=ref.module,
        ratio_rounds=ratio.rounds,
    )
