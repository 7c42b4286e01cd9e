"""The regression gate: exact counts, noise-aware latency with re-measurement, refusals of other hardware."""

from __future__ import annotations

from collections.abc import Sequence

from attnbench import gate
from attnbench.results import Case, LoadedResults, Result

ENV = {
    "cpu_model": "cpu A",
    "logical_cores": 2,
    "gpu": None,
    "torch": "2.13.0",
    "onnxruntime": "1.31",
    "allocator": "glibc",
}


def row(
    module: str = "mhsa",
    median: float = 0.050,
    iqr: float = 0.001,
    macs: int = 1000,
    params: int = 10,
    status: str = "ok",
) -> Result:
    return Result.for_case(
        Case(module, 64, 28, 28),
        params=params,
        macs_attnbench=macs,
        latency_median_s=median,
        latency_iqr_s=iqr,
        status=status,
    )


def base(*rows: Result, env: dict | None = None) -> LoadedResults:
    return LoadedResults(list(rows), dict(env or ENV))


def test_unchanged_run_passes() -> None:
    assert gate.compare_to_baseline([row(median=0.052)], base(row()), env=ENV).passed


def test_count_change_fails_even_with_identical_latency() -> None:
    verdict = gate.compare_to_baseline([row(macs=1001)], base(row()), env=ENV)
    assert not verdict.passed
    assert any(c.kind == "count" and "+1" in c.detail for c in verdict.changes)


def test_latency_regression_fails_after_remeasurement() -> None:
    calls: list[Case] = []

    def remeasure(case: Case) -> Sequence[Result]:
        calls.append(case)
        return [row(median=0.066)]

    verdict = gate.compare_to_baseline([row(median=0.065)], base(row()), env=ENV, remeasure=remeasure)
    assert not verdict.passed and len(calls) == gate.REMEASURES
    assert calls[0].module == "mhsa" and calls[0].height == 28


def test_transient_slowdown_recovers_on_remeasurement() -> None:
    verdict = gate.compare_to_baseline(
        [row(median=0.070)], base(row()), env=ENV, remeasure=lambda case: [row(median=0.051)]
    )
    assert verdict.passed
    assert [c.kind for c in verdict.changes] == ["latency-ok"]


def test_measured_spread_widens_the_limit() -> None:
    # +20% with a 30% IQR/median is within noise.
    assert gate.compare_to_baseline([row(median=0.060, iqr=0.018)], base(row()), env=ENV).passed


def test_other_hardware_refuses_latency_but_compares_counts() -> None:
    other = {**ENV, "cpu_model": "cpu B"}
    slow = gate.compare_to_baseline([row(median=0.5)], base(row(), env=other), env=ENV)
    assert slow.passed and not slow.latency_compared and "cpu_model" in slow.latency_note
    counts = gate.compare_to_baseline([row(params=11)], base(row(), env=other), env=ENV)
    assert not counts.passed
    forced = gate.compare_to_baseline([row(median=0.5)], base(row(), env=other), env=ENV, force_latency=True)
    assert not forced.passed


def test_missing_and_new_cases_are_reported_not_failed() -> None:
    verdict = gate.compare_to_baseline([row("lka")], base(row("mhsa")), env=ENV)
    assert verdict.passed
    assert sorted(c.kind for c in verdict.changes) == ["missing", "new"]


def test_case_that_now_fails_fails_the_gate() -> None:
    assert not gate.compare_to_baseline([row(status="failed")], base(row()), env=ENV).passed


def test_same_hardware_with_keys_in_another_order_is_comparable() -> None:
    live = {**ENV, "allocator": {"allocator": "glibc", "pinned": True, "mmap_threshold_bytes": 1 << 30}}
    read_back = {**ENV, "allocator": {"mmap_threshold_bytes": 1 << 30, "allocator": "glibc", "pinned": True}}
    assert gate.comparable_hardware(read_back, live) == (True, "")


def test_counts_only_run_is_gated_on_geometry_whatever_the_backend() -> None:
    counts = Result.for_case(Case("mhsa", 64, 28, 28, backend="none"), params=11, macs_attnbench=1000)
    verdict = gate.compare_to_baseline([counts], base(row()), env=ENV)
    assert verdict.compared_cases == 1 and not verdict.passed
    assert [c.kind for c in verdict.changes] == ["count"]


def test_remeasured_case_with_list_kwargs_is_hashable() -> None:
    seen: list[Case] = []

    def remeasure(case: Case) -> Sequence[Result]:
        seen.append(case)
        hash(case)
        return [row(median=0.050)]

    slow = Result.for_case(
        Case("sk", 64, 28, 28, kwargs=(("kernels", (3, 5)),)),
        params=10,
        macs_attnbench=1000,
        latency_median_s=0.090,
        latency_iqr_s=0.001,
    )
    then = Result.for_case(
        Case("sk", 64, 28, 28, kwargs=(("kernels", (3, 5)),)),
        params=10,
        macs_attnbench=1000,
        latency_median_s=0.050,
        latency_iqr_s=0.001,
    )
    assert gate.compare_to_baseline([slow], base(then), env=ENV, remeasure=remeasure).passed
    assert seen and seen[0].kwargs == (("kernels", (3, 5)),)


def test_latency_change_is_printed_in_its_own_unit() -> None:
    # A 10 s case printed as '1.02e+04 ms' before the one formatter.
    verdict = gate.compare_to_baseline([row(median=12.0, iqr=0.01)], base(row(median=10.2, iqr=0.01)), env=ENV)
    (change,) = [c for c in verdict.changes if c.kind == "latency"]
    assert change.detail.startswith("latency 10.2 s -> 12 s (+17.6%")
