"""The regression gate: exact counts, noise-aware latency with re-measurement, refusals of other hardware."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from attnbench import gate
from attnbench.errors import BaselineError, UsageError
from attnbench.gate import GateSettings
from attnbench.report.terminal import show_gate
from attnbench.results import Case, Result
from attnbench.store import LoadedResults

#: Where the tests' baselines would live (nothing reads it: the baselines are given loaded).
BASE = Path("baseline.csv")
INSTRUCTIONS = GateSettings(BASE, metric="instructions")
ENV = {
    "cpu_model": "cpu A",
    "logical_cores": 2,
    "gpu": None,
    "torch": "2.13.0",
    "onnxruntime": "1.31",
    "allocator": "glibc",
    "cpu_isa": "avx,avx2,fma",
    "python": "3.11.7",
    "valgrind": "3.19.0",
}


def row(
    module: str = "mhsa",
    median: float = 0.050,
    iqr: float = 0.001,
    macs: int = 1000,
    params: int = 10,
    status: str = "ok",
    instructions: int | None = None,
    contended: bool = False,
) -> Result:
    return Result.for_case(
        Case(module, 64, 28, 28),
        params=params,
        macs_attnbench=macs,
        latency_median_s=median,
        latency_iqr_s=iqr,
        status=status,
        instructions=instructions,
        latency_contended=contended,
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
    forced = gate.compare_to_baseline(
        [row(median=0.5)], base(row(), env=other), settings=GateSettings(BASE, force_latency=True), env=ENV
    )
    assert not forced.passed


def test_missing_and_new_cases_are_reported_not_failed() -> None:
    verdict = gate.compare_to_baseline([row("lka")], base(row("mhsa")), env=ENV)
    assert verdict.passed
    assert sorted(c.kind for c in verdict.changes) == ["missing", "new"]


def test_case_that_now_fails_fails_the_gate() -> None:
    assert not gate.compare_to_baseline([row(status="failed")], base(row()), env=ENV).passed


def test_a_case_that_stopped_working_says_how() -> None:
    failed = dataclasses.replace(row(), status="failed", reason="boom")
    (change,) = gate.compare_to_baseline([failed], base(row()), env=ENV).changes
    assert change == gate.Change(LABEL, "status", "was ok, now failed: boom", True)


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


# ---------------------------------------------------------------- the work measure


def test_instructions_gate_fails_more_work_and_names_the_case() -> None:
    verdict = gate.compare_to_baseline(
        [row("sk", instructions=1_250_000), row("lka", instructions=1_004_000, median=9.0)],
        base(row("sk", instructions=1_000_000), row("lka", instructions=1_000_000)),
        settings=INSTRUCTIONS,
        env=ENV,
    )
    assert not verdict.passed and verdict.compared_instructions == 2
    (change,) = verdict.changes  # lka: +0.4% is inside 1%; its 180x latency is not gated on instructions
    assert change.kind == "instructions" and change.case.startswith("sk ") and "+25.00%" in change.detail
    assert not verdict.latency_compared and "latency not gated" in verdict.latency_note


def test_instructions_gate_reports_less_work_without_failing() -> None:
    verdict = gate.compare_to_baseline(
        [row(instructions=900)], base(row(instructions=1000)), settings=INSTRUCTIONS, env=ENV
    )
    assert verdict.passed and [c.kind for c in verdict.changes] == ["instructions-less"]


def test_instructions_gate_fails_a_row_that_was_not_counted() -> None:
    now = row(instructions=None)
    verdict = gate.compare_to_baseline([now], base(row(instructions=1000)), settings=INSTRUCTIONS, env=ENV)
    assert not verdict.passed and "not counted" in verdict.changes[0].detail


def test_what_an_instruction_change_says() -> None:
    def changes(now: Result, then: Result, **given: Any) -> list[gate.Change]:
        settings = GateSettings(BASE, metric="instructions", **given)
        return gate.compare_to_baseline([now], base(then), settings, ENV).changes

    then = row(instructions=1024)
    detail = "instructions 1.02 K -> 2.05 K per call (+100.00%, limit 1%)"
    assert changes(row(instructions=2048), then) == [gate.Change(LABEL, "instructions", detail, True)]
    settings = GateSettings(BASE, metric="instructions", tolerance=0.5)
    verdict = gate.compare_to_baseline([row(instructions=2048)], base(then), settings, ENV)
    assert verdict.gated == [gate.Gated(LABEL, "instructions", 1024, 2048, 0.5, True)]
    less = "instructions 1.02 K -> 512 per call (-50.00%, limit 1%); update the baseline to keep it"
    assert changes(row(instructions=512), then) == [gate.Change(LABEL, "instructions-less", less, False)]
    # Binary-exact: 1032 / 1024 - 1 = 2**-7, at the limit either way; a baseline of 0 has no relative change.
    for now in (1016, 1032):
        assert changes(row(instructions=now), then, tolerance=2**-7) == []
    assert changes(row(instructions=5), row(instructions=0)) == []


def test_an_uncounted_row_says_where_and_why() -> None:
    def uncounted(row: Result, why: str) -> Result:
        return dataclasses.replace(row, instructions=None, extra=json.dumps({"instructions_error": why}))

    counted, lost = row(instructions=1024), uncounted(row(), "valgrind died")
    fails, passes = " (--allow-uncounted passes it)", " (--allow-uncounted: not failed)"
    for allow, suffix in ((False, fails), (True, passes)):
        settings = GateSettings(BASE, metric="instructions", allow_uncounted=allow, tolerance=0.5)
        verdict = gate.compare_to_baseline([lost], base(counted), settings, ENV)
        assert verdict.gated == [gate.Gated(LABEL, "instructions", 1024, None, 0.5, not allow)]
        (change,) = verdict.changes
        assert change == gate.Change(
            LABEL, "uncounted", "instructions not counted in this run: valgrind died" + suffix, not allow
        )
    settings = GateSettings(BASE, metric="instructions")
    other = row("lka", instructions=100)  # a baseline without a single count is refused before any row is judged
    then = base(uncounted(row(), "no valgrind"), other)
    verdict = gate.compare_to_baseline([counted, other], then, settings, ENV)
    assert [g.case for g in verdict.gated] == [_label("lka")]  # nothing to judge this run's count against
    (change,) = verdict.changes
    assert change.detail == "instructions not counted in the baseline: no valgrind" + fails
    (change,) = gate.compare_to_baseline([row(instructions=None)], base(counted), settings, ENV).changes
    assert change.detail == "instructions not counted in this run" + fails


@pytest.mark.parametrize("key", ["cpu_model", "torch", "python", "valgrind", "cpu_isa", "allocator"])
def test_instructions_from_another_machine_or_version_are_refused(key: str) -> None:
    other = {**ENV, key: "something else"}
    with pytest.raises(BaselineError, match=f"instruction counts depend on the CPU and versions.*{key}"):
        gate.compare_to_baseline(
            [row(instructions=1)], base(row(instructions=1), env=other), settings=INSTRUCTIONS, env=ENV
        )


def test_instructions_gate_needs_counts_and_an_environment() -> None:
    with pytest.raises(BaselineError, match="holds no instruction counts"):
        gate.check_instruction_baseline(base(row()), ENV, "b.csv")
    with pytest.raises(BaselineError, match="no environment record"):
        gate.check_instruction_baseline(LoadedResults([row(instructions=5)], {}), ENV)


# ---------------------------------------------------------------- wall time on a busy machine


def test_regression_seen_only_while_busy_is_inconclusive() -> None:
    busy = row(median=0.1, contended=True)
    verdict = gate.compare_to_baseline([busy], base(row()), env=ENV, remeasure=lambda case: [busy])
    assert verdict.passed and verdict.inconclusive
    (change,) = verdict.changes
    assert change.kind == gate.BUSY and not change.failing and "inconclusive (machine busy)" in change.detail
    console = Console(file=io.StringIO(), width=200)
    show_gate(verdict, console)
    assert "gate: INCONCLUSIVE (machine busy)" in console.file.getvalue()  # type: ignore[attr-defined]


def test_strict_fails_a_busy_regression() -> None:
    busy = row(median=0.1, contended=True)
    verdict = gate.compare_to_baseline(
        [busy], base(row()), env=ENV, settings=GateSettings(BASE, strict=True), remeasure=lambda case: [busy]
    )
    assert not verdict.passed and not verdict.inconclusive and verdict.changes[0].failing


def test_a_quiet_remeasurement_that_is_still_slow_fails() -> None:
    verdict = gate.compare_to_baseline(
        [row(median=0.1, contended=True)], base(row()), env=ENV, remeasure=lambda case: [row(median=0.1)]
    )
    assert not verdict.passed and verdict.changes[0].kind == "latency"
    console = Console(file=io.StringIO(), width=200)
    show_gate(verdict, console)
    assert "gate: FAILED" in console.file.getvalue()  # type: ignore[attr-defined]


LABEL = "mhsa C=64 28x28 B=1 cpu"


def _label(module: str) -> str:
    return LABEL.replace("mhsa", module)


def test_default_tolerance_and_its_boundary() -> None:
    assert gate.default_tolerance(0.009) == gate.TOLERANCE_FAST == 0.25
    assert gate.default_tolerance(gate.FAST_CASE_S) == gate.TOLERANCE_SLOW == 0.10  # 10 ms is not a few-ms case


def test_a_change_exactly_at_the_limit_passes_and_is_not_remeasured() -> None:
    calls: list[Case] = []

    def remeasure(case: Case) -> Sequence[Result]:
        calls.append(case)
        return [row(median=0.625, iqr=0.0)]

    # Binary-exact: 0.625 / 0.5 - 1 = 0.25, the tolerance; busy, so a change above it would be inconclusive.
    for contended in (False, True):
        now, then = row(median=0.625, iqr=0.0, contended=contended), row(median=0.5, iqr=0.0)
        settings = GateSettings(BASE, tolerance=0.25)
        verdict = gate.compare_to_baseline([now], base(then), settings=settings, env=ENV, remeasure=remeasure)
        assert verdict.passed and verdict.changes == [] and calls == []
        assert verdict.gated == [gate.Gated(LABEL, "latency", 0.5, 0.625, 0.25, False)]


def test_the_limit_is_the_widest_of_the_tolerance_and_both_spreads() -> None:
    slower = row(median=0.5625, iqr=0.0)  # +12.5%, past the 10% default
    assert gate.compare_to_baseline([slower], base(row(median=0.5, iqr=0.125)), env=ENV).passed  # IQR/median 25%
    assert not gate.compare_to_baseline([slower], base(row(median=0.5, iqr=None)), env=ENV).passed  # no spread


def test_what_a_latency_change_says() -> None:
    then = base(row(median=0.5, iqr=0.0))
    still = row(median=0.75, iqr=0.0)
    slow = gate.compare_to_baseline([still], then, env=ENV, remeasure=lambda case: [still])
    detail = "latency 500 ms -> 750 ms (+50.0%, limit 10%"
    assert slow.changes == [gate.Change(LABEL, "latency", detail + ", after 2 re-measurement(s))", True)]
    assert slow.gated == [gate.Gated(LABEL, "latency", 0.5, 0.75, 0.10, True)]
    same = row(median=0.5, iqr=0.0)
    recovered = gate.compare_to_baseline([still], then, env=ENV, remeasure=lambda case: [same]).changes
    assert recovered == [
        gate.Change(
            LABEL, "latency-ok", "latency 500 ms -> 500 ms (+0.0%, limit 10%, after 1 re-measurement(s))", False
        )
    ]
    busy = row(median=0.75, iqr=0.0, contended=True)
    because = "); inconclusive (machine busy): other processes used the CPU during every measurement"
    for strict, suffix in ((False, ""), (True, "; --strict: fails")):
        verdict = gate.compare_to_baseline([busy], then, settings=GateSettings(BASE, strict=strict), env=ENV)
        assert verdict.changes == [gate.Change(LABEL, gate.BUSY, detail + because + suffix, strict)]


def test_unknown_gate_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed: wall, instructions"):
        gate.compare_to_baseline([row()], base(row()), settings=GateSettings(BASE, metric="cycles"), env=ENV)


# ---------------------------------------------------------------- the settings


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (GateSettings(BASE, tolerance=-1), "--tolerance must be a fraction in [0, 10), e.g. 0.1 for 10%"),
        (GateSettings(BASE, tolerance=10), "--tolerance must be a fraction in [0, 10), e.g. 0.1 for 10%"),
        (GateSettings(BASE, metric="x"), "--gate-metric 'x': allowed: wall, instructions"),
    ],
)
def test_settings_no_gate_could_use_are_refused(settings: GateSettings, message: str) -> None:
    with pytest.raises(UsageError) as info:
        settings.check()
    assert str(info.value) == message


@pytest.mark.parametrize("tolerance", [None, 0.0, 0.5, 9.99])
def test_settings_a_gate_can_use(tolerance: float | None) -> None:
    GateSettings(BASE, tolerance=tolerance).check()
    GateSettings(BASE, tolerance=tolerance, metric="instructions").check()


def test_tolerance_zero_gates_at_zero() -> None:
    then, now = row(median=0.0500, iqr=0.0), row(median=0.0505, iqr=0.0)  # 1% slower, no spread
    assert gate.compare_to_baseline([now], base(then), env=ENV).passed  # the default for a 50 ms case: 10%
    zero = gate.compare_to_baseline([now], base(then), settings=GateSettings(BASE, tolerance=0), env=ENV)
    assert not zero.passed  # 0 is a tolerance, not "no tolerance given"
    (change,) = zero.changes
    assert change.kind == "latency" and "(+1.0%, limit 0%)" in change.detail
    fewer = row(instructions=1_000_001)
    counted = gate.compare_to_baseline(
        [fewer],
        base(row(instructions=1_000_000)),
        settings=GateSettings(BASE, tolerance=0, metric="instructions"),
        env=ENV,
    )
    assert not counted.passed and counted.changes[0].kind == "instructions"


def test_judge_refuses_a_gate_that_compared_nothing() -> None:
    settings = GateSettings(Path("base.csv"))
    with pytest.raises(BaselineError) as info:
        settings.judge([row("lka")], base(row("mhsa")), ENV)
    assert str(info.value) == (
        "gate: no case of this run is in the baseline base.csv (it holds C=64 28x28 B=1); run with the baseline's "
        "settings"
    )
    assert settings.judge([row(median=0.05)], base(row()), ENV).passed


def test_load_refuses_a_missing_or_empty_baseline(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="no such file"):
        GateSettings(tmp_path / "none.csv").load()
    from attnbench import store

    store.write_csv(tmp_path / "empty.csv", [], ENV)
    with pytest.raises(BaselineError, match="has no result rows"):
        GateSettings(tmp_path / "empty.csv").load()
    store.write_csv(tmp_path / "one.csv", [row()], ENV)
    assert GateSettings(tmp_path / "one.csv").load().results == [row()]
    with pytest.raises(UsageError, match="--gate-metric"):
        GateSettings(tmp_path / "one.csv", metric="cycles").load()  # checked before reading


def test_check_baseline_refuses_instructions_from_another_machine_before_measuring() -> None:
    other = base(row(instructions=5), env={**ENV, "cpu_model": "cpu B"})
    GateSettings(BASE).check_baseline(other, ENV)  # the wall gate compares counts anyway
    with pytest.raises(BaselineError, match=r"baseline.csv: cannot gate on instructions: .*cpu_model"):
        INSTRUCTIONS.check_baseline(other, ENV)


def test_rows_as_the_baseline_are_taken_as_this_machine_s() -> None:
    assert gate.compare_to_baseline([row(median=0.05)], [row()], env=ENV).passed
    assert not gate.compare_to_baseline([row(params=11)], [row()], env=ENV).passed


def test_a_changed_source_hash_is_reported_not_failed() -> None:
    import dataclasses

    then, now = dataclasses.replace(row(), source_hash="aaa"), dataclasses.replace(row(), source_hash="bbb")
    verdict = gate.compare_to_baseline([now], base(then), env=ENV)
    assert verdict.passed
    assert [(c.case, c.kind, c.detail) for c in verdict.changes] == [
        ("mhsa", "source", "source hash aaa -> bbb: the module's code changed")
    ]


MEANING = (
    "(a case: one module at one geometry and mode, its params and MACs compared once; a row: a case on one backend "
    "in one scenario)"
)


def test_the_gate_s_verdict_on_the_terminal() -> None:
    verdict = gate.compare_to_baseline([row(params=11)], base(row()), env=ENV)
    console = Console(file=io.StringIO(), width=200)
    show_gate(verdict, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Changes against the baseline" in text and "params 10 -> 11 (+1)" in text
    # The outcome counts cases and rows, and says what each is.
    assert text.rstrip().splitlines()[-2:] == [
        "gate: FAILED: 1 case(s) compared, 1 row(s) judged on wall, 1 failing change(s)",
        MEANING,
    ]
    console = Console(file=io.StringIO(), width=200)
    show_gate(gate.compare_to_baseline([row()], base(row()), env=ENV), console, failed_cases=2)
    lines = console.file.getvalue().strip().splitlines()  # type: ignore[attr-defined]
    failed = "gate: FAILED: 1 case(s) compared, 1 row(s) judged on wall, 0 failing change(s), 2 case(s) of this run"
    assert lines[-2] == failed + " failed"
    console = Console(file=io.StringIO(), width=200)
    show_gate(gate.compare_to_baseline([row()], base(row(), env={**ENV, "gpu": "H100"}), env=ENV), console)
    lines = console.file.getvalue().strip().splitlines()  # type: ignore[attr-defined]
    assert lines[0].startswith("gate: baseline is from other hardware or versions (gpu: baseline 'H100' vs here None)")
    assert lines[-2] == "gate: PASSED: 1 case(s) compared, 0 row(s) judged on wall, 0 failing change(s)"


def test_every_gated_row_is_listed_largest_change_first() -> None:
    rows = [row("lka", instructions=1_009_000), row("mhsa", instructions=950_000), row("sk", instructions=1_030_000)]
    baseline = [
        row("lka", instructions=1_000_000),
        row("mhsa", instructions=1_000_000),
        row("sk", instructions=1_000_000),
    ]
    verdict = gate.compare_to_baseline(rows, base(*baseline), GateSettings(BASE, metric="instructions"), ENV)
    assert [(g.case.split()[0], round(g.change, 3), g.failing) for g in verdict.gated] == [
        ("lka", 0.009, False),
        ("mhsa", -0.05, False),
        ("sk", 0.03, True),
    ]
    console = Console(file=io.StringIO(), width=200)
    show_gate(verdict, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    listed = [line.split()[1] for line in text.splitlines() if line.startswith("│ ")]
    assert listed[:3] == ["sk", "lka", "mhsa"], text  # passing rows are listed too
    assert "Gated on instructions: every row, the largest change first" in text


def test_a_row_the_instruction_gate_should_judge_but_has_no_count_fails_unless_allowed() -> None:
    # Neither the baseline nor this run counted the row (a module the valgrind worker could not load): not silent.
    settings = GateSettings(BASE, metric="instructions")
    rows, baseline = [row("lka", instructions=100), row()], base(row("lka", instructions=100), row())
    verdict = gate.compare_to_baseline(rows, baseline, settings, ENV)
    (uncounted,) = [c for c in verdict.changes if c.kind == "uncounted"]
    assert not verdict.passed and uncounted.case.startswith("mhsa") and uncounted.failing
    assert "instructions not counted in the baseline" in uncounted.detail and "--allow-uncounted" in uncounted.detail
    allowed = dataclasses.replace(settings, allow_uncounted=True)
    assert gate.compare_to_baseline(rows, baseline, allowed, ENV).passed
    # A backend whose rows are never counted (ONNX Runtime) is not "uncounted".
    ort = dataclasses.replace(row(), backend="ort")
    assert gate.compare_to_baseline(
        [row("lka", instructions=100), ort], base(row("lka", instructions=100), ort), settings, ENV
    ).passed
