"""Latency ratios (attnbench.ratios): paired by round with a distribution-free interval, unpaired from two medians,
the reference per setting, and the flag on a wide interval."""

from __future__ import annotations

import json
import math

import pytest

from attnbench import results as R
from attnbench.errors import UsageError
from attnbench.ratios import Ratio, check_reference, paired, ratio_of, unpaired, with_ratios
from attnbench.results import Result, Scenario


def _row(module: str, median: float, blocks: list[float] | None = None, rotation: str = "1", **kw: object) -> Result:
    extra = {"timing_rotation": rotation, "block_times_s": blocks} if blocks is not None else {}
    values = {"kwargs": "", "dim": 64, "height": 14, "width": 14, "batch": 1, "backend": "cpu", "status": R.OK, **kw}
    return Result(module=module, latency_median_s=median, extra=json.dumps(extra), **values)  # type: ignore[arg-type]


def test_paired_ratio_is_the_median_of_per_round_ratios_with_its_order_statistics() -> None:
    # Rounds 1-6: the machine slows down 2x in rounds 3-4 for both; each round's ratio stays near 3.
    a = [3.0, 3.3, 6.0, 6.6, 2.97, 3.03]
    b = [1.0, 1.1, 2.0, 2.0, 1.0, 1.0]
    ratio = paired(a, b)
    per_round = sorted([3.0, 3.0, 3.0, 3.3, 2.97, 3.03])
    assert ratio.value == pytest.approx((per_round[2] + per_round[3]) / 2)
    # Six rounds: the 95% interval is [min, max] of the per-round ratios (1 - 2/64 = 96.9% coverage).
    assert (ratio.lo, ratio.hi, ratio.rounds) == (pytest.approx(2.97), pytest.approx(3.3), 6)
    assert ratio.half_width == pytest.approx(0.3 / ratio.value) and ratio.wide
    # The medians alone would say 4.5 / 1.5 = 3.0, but only pairing keeps the slow phase out of the spread.
    steady = paired([3.0] * 5 + [3.06], [1.0] * 6)
    assert (steady.value, steady.lo, steady.hi) == (3.0, 3.0, 3.06) and not steady.wide


def test_a_paired_ratio_uses_the_rounds_both_ran_and_needs_six() -> None:
    assert paired([2.0] * 9, [1.0] * 6).rounds == 6  # the longer row's extra blocks have no partner
    few = paired([2.0] * 5, [1.0] * 5)
    assert few.value == 2.0 and math.isinf(few.half_width) and few.wide
    assert math.isnan(paired([], []).value)


def test_unpaired_ratio_adds_the_medians_intervals_in_quadrature() -> None:
    ratio = unpaired(3.0, 0.03, 1.0, 0.039)
    assert ratio.value == 3.0 and ratio.rounds == 0
    assert ratio.half_width == pytest.approx(math.hypot(0.03, 0.039)) and not ratio.wide
    assert unpaired(3.0, 0.03, 1.0, 0.041).wide
    assert unpaired(3.0, None, 1.0, 0.01).wide  # an unknown interval is not a narrow one


def test_rows_of_one_rotation_are_paired_others_are_not() -> None:
    ref = _row("lka", 1.0, [1.0] * 6)
    together = _row("mhsa", 3.0, [3.0] * 6)
    apart = _row("sk", 2.0, [2.0] * 6, rotation="2", latency_ci_rel=0.01)
    assert ratio_of(together, ref) == Ratio(3.0, 3.0, 3.0, 6)
    ref_ci = dataclass_replace(ref, latency_ci_rel=0.02)
    unpaired_ratio = ratio_of(apart, ref_ci)
    assert unpaired_ratio.rounds == 0 and unpaired_ratio.half_width == pytest.approx(math.hypot(0.01, 0.02))


def dataclass_replace(row: Result, **values: object) -> Result:
    import dataclasses

    return dataclasses.replace(row, **values)  # type: ignore[arg-type]


def test_with_ratios_takes_the_fastest_module_of_each_setting_or_the_one_named() -> None:
    rows = [
        _row("mhsa", 3.0, [3.0] * 6),
        _row("lka", 1.0, [1.0] * 6),
        _row("sk", 2.0, [2.0, 2.0, 2.0, 2.2, 2.0, 2.0]),
        _row("lka", 1.0, [1.0] * 6, height=28, width=28),  # alone at its setting: no ratio
        _row("mhsa", 9.0, [9.0] * 6, scenario=Scenario(threads=2)),  # another setting
        _row("sk", None, status=R.FAILED),  # type: ignore[arg-type]
    ]
    out = with_ratios(rows)
    assert [(r.latency_ratio, r.ratio_reference) for r in out[:3]] == [(3.0, "lka"), (1.0, "lka"), (2.0, "lka")]
    assert out[1].ratio_rounds is None and out[1].latency_ratio_lo is None  # the reference itself
    assert (out[2].latency_ratio_lo, out[2].latency_ratio_hi, out[2].latency_ratio_wide) == (2.0, 2.2, True)
    assert (out[0].latency_ratio_wide, out[0].ratio_rounds) == (False, 6)
    assert all(r.latency_ratio is None and r.ratio_reference == "" for r in out[3:])
    named = with_ratios(rows, reference="mhsa")
    assert [r.latency_ratio for r in named[:3]] == [1.0, pytest.approx(1 / 3), pytest.approx(2 / 3)]


def test_check_reference_names_the_runs_modules() -> None:
    assert check_reference(None, ["lka"]) is None
    assert check_reference("lka", ["lka", "mhsa"]) == "lka"
    assert check_reference("LinAttn", ["lka", "my/attn.py:LinAttn"]) == "my/attn.py:LinAttn"
    with pytest.raises(UsageError, match=r"^--reference 'sk': not a module of this run; its modules: lka, mhsa$"):
        check_reference("sk", ["lka", "mhsa"])
