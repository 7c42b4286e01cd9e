"""The default-allocator ("system") state (attnbench.sysalloc): timed in a worker that leaves glibc alone, reported
beside the pinned one; the budgets it gets and how the two states combine into one row."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

import attnbench.runner as runner
from attnbench import results as R
from attnbench.report import summary
from attnbench.report.columns import ALLOC_MARK, summary_columns
from attnbench.report.markdown import allocator_notes, markdown
from attnbench.results import Case, Scenario
from attnbench.settings import RunOptions
from attnbench.sysalloc import (
    FAULT_COST_BOUND_S,
    FAULT_PROBE_BUDGET,
    SECONDARY_MAX_RUN_TIME,
    SECONDARY_PRECISION,
    SystemAllocatorWorker,
    WorkerError,
    combine_states,
    faults_could_slow,
    headline_budget,
    other_state,
    secondary_budget,
)
from attnbench.timing import TimingBudget

FAST = RunOptions(budget=TimingBudget(min_run_time=0.05, max_run_time=0.1))
SHORT = TimingBudget(min_run_time=0.01, max_run_time=0.01)
#: mhsa at 32x32: 8 heads x 1024 x 1024 float32 scores = 32 MiB per map, above glibc's largest dynamic mmap
#: threshold, so a process that does not pin the allocator maps and unmaps it on every call (8192 pages).
BIG_MAP = Case("mhsa", 16, 32, 32)
MAP_PAGES = 8 * 1024 * 1024 * 4 // 4096
SYSTEM = Scenario(allocator="system")


@pytest.fixture(scope="module")
def big_map_rows() -> dict[str, R.Result]:
    """The big-map case with each allocator as the headline, and an ort row asking for the system one: one sweep."""
    cases = [
        BIG_MAP,
        Case("mhsa", 16, 32, 32, scenario=SYSTEM),
        Case("mhsa", 16, 32, 32, backend="ort", scenario=SYSTEM),
    ]
    outcome = runner.run(cases, FAST)
    assert outcome.system_worker_startup_s > 0  # one worker served both cpu rows
    return {f"{r.backend} {r.scenario.allocator}": r for r in outcome.results}


def test_big_attention_maps_fault_on_every_call_only_without_pinning(big_map_rows: dict[str, R.Result]) -> None:
    row = big_map_rows["cpu pinned"]
    extra = json.loads(row.extra)
    assert row.ok, row.reason
    # Pinned: the map's pages stay mapped between calls (a heap that grows once in the timed region is a
    # one-off, spread over its calls); system: at least one 32 MiB map is mapped again on every call.
    assert row.minor_faults_per_call < MAP_PAGES < row.other_allocator_faults_per_call
    # The worker left glibc alone (ATTNBENCH_ALLOCATOR=system); this process pinned it.
    assert extra["system_allocator"]["pinned"] is False and "not pinned" in extra["system_allocator"]["note"]
    assert extra["allocator"]["pinned"] is True
    assert row.system_allocator_slowdown == pytest.approx(row.other_allocator_latency_s / row.latency_median_s)
    # The other state is timed with no floor and the shorter of its cap and the headline's.
    assert extra["system_allocator_max_run_time"] == 0.1


def test_system_allocator_as_the_headline_swaps_the_two_states(big_map_rows: dict[str, R.Result]) -> None:
    swapped = big_map_rows["cpu system"]
    assert swapped.ok and swapped.other_allocator_faults_per_call < MAP_PAGES < swapped.minor_faults_per_call
    slowdown = swapped.latency_median_s / swapped.other_allocator_latency_s
    assert swapped.system_allocator_slowdown == pytest.approx(slowdown)
    ort = big_map_rows["ort system"]
    assert ort.status == R.SKIPPED and "glibc setting of the PyTorch CPU process" in ort.reason


def test_a_case_with_few_faults_gets_its_faults_counted_but_no_second_timing() -> None:
    outcome = runner.run([Case("lka", 16, 8, 8)], FAST)
    row = outcome.results[0]
    extra = json.loads(row.extra)
    assert row.ok, row.reason
    # Counted in the system state (a handful of calls: 2 warm-up, then 6 blocks), but a few faults cannot
    # cost 10% of a call, so that state was not timed and the row shows no second latency.
    assert row.other_allocator_faults_per_call is not None and row.other_allocator_faults_per_call < 100
    assert extra["system_allocator_probe_calls"] >= 6 and "system_allocator_max_run_time" not in extra
    assert row.other_allocator_latency_s is None and row.system_allocator_slowdown is None
    assert row.system_allocator_slower is False


def test_memory_only_and_non_cpu_rows_do_not_start_the_worker() -> None:
    outcome = runner.run([Case("lka", 16, 8, 8)], RunOptions(metrics=("params", "memory")))
    assert outcome.results[0].ok and outcome.system_worker_startup_s == 0.0
    assert outcome.results[0].other_allocator_latency_s is None


def test_a_case_the_worker_cannot_build_fails_there_and_the_worker_goes_on() -> None:
    with SystemAllocatorWorker() as worker:
        answer = worker.measure(Case("no-such-module", 16, 8, 8), SHORT, 0)
        assert answer["status"] == "failed" and "no-such-module" in answer["reason"]
        ok = worker.measure(Case("lka", 16, 8, 8), SHORT, 0)
        assert ok["status"] == "ok" and ok["values"]["latency_median_s"] > 0
        assert ok["allocator"]["pinned"] is False
        assert worker.starts == 1


def test_a_worker_that_does_not_answer_in_time_is_stopped() -> None:
    with SystemAllocatorWorker(timeout_s=0.001) as worker, pytest.raises(WorkerError, match="no answer within"):
        worker.measure(Case("lka", 16, 8, 8), SHORT, 0)
    assert worker._proc is None


# ---------------------------------------------------------------- budgets


def test_the_fault_probe_is_a_handful_of_calls() -> None:
    assert FAULT_PROBE_BUDGET.problem() is None
    assert FAULT_PROBE_BUDGET.precision is None and FAULT_PROBE_BUDGET.min_run_time == 0.0
    assert FAULT_PROBE_BUDGET.warmup_calls == 2 and FAULT_PROBE_BUDGET.warmup_s == 0.0


def test_the_secondary_budget_has_no_floor_a_short_cap_and_a_looser_precision() -> None:
    run = TimingBudget(min_run_time=1.0, max_run_time=2.0, precision=0.01, warmup_s=0.5, warmup_calls=20)
    expected = TimingBudget(0.0, SECONDARY_MAX_RUN_TIME, SECONDARY_PRECISION, warmup_s=0.5, warmup_calls=20)
    assert secondary_budget(run) == expected
    # A shorter cap and a looser precision of the run are kept; a fixed budget stays fixed.
    assert secondary_budget(TimingBudget(max_run_time=0.1, precision=0.05)).max_run_time == 0.1
    assert secondary_budget(TimingBudget(max_run_time=0.1, precision=0.05)).precision == 0.05
    assert secondary_budget(TimingBudget(precision=None)).precision is None


def test_the_headline_budget_is_the_runs_unless_the_system_state_is_the_headline() -> None:
    run = TimingBudget(min_run_time=1.0, max_run_time=2.0)
    assert headline_budget(BIG_MAP, run) == run
    assert headline_budget(Case("mhsa", 16, 32, 32, scenario=SYSTEM), run) == secondary_budget(run)


def test_faults_could_slow_only_when_they_could_cost_ten_percent() -> None:
    pinned = {"latency_median_s": 10e-3, "minor_faults_per_call": 5.0}
    # 10% of 10 ms = 1 ms = 10 extra faults at FAULT_COST_BOUND_S (100 us) each: 12 could, 8 could not.
    assert FAULT_COST_BOUND_S == 100e-6
    assert faults_could_slow(pinned, {"minor_faults_per_call": 17.0})
    assert not faults_could_slow(pinned, {"minor_faults_per_call": 13.0})
    assert not faults_could_slow(pinned, {"minor_faults_per_call": None})


# ---------------------------------------------------------------- the two states in one row


class FakeWorker:
    """Answers the system-state requests from a script, and records them (no process started)."""

    def __init__(self, *answers: dict[str, Any] | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[Case, TimingBudget, int]] = []
        self.startup_s = 0.0

    def measure(self, case: Case, budget: TimingBudget, seed: int) -> dict[str, Any]:
        """The next scripted answer (or error)."""
        self.asked.append((case, budget, seed))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _latency(median: float, fastest: float, faults: float, calls: int = 6) -> dict[str, Any]:
    """Latency columns as a timing makes them."""
    return {
        "latency_median_s": median,
        "latency_iqr_s": median / 100,
        "latency_min_s": fastest,
        "latency_calls": calls,
        "minor_faults_per_call": faults,
    }


def _ok(values: dict[str, Any]) -> dict[str, Any]:
    """The worker's answer for a measured case."""
    return {"status": R.OK, "reason": "", "values": values, "allocator": {"pinned": False}}


PINNED = _latency(10e-3, 9e-3, 0.0)
RUN = TimingBudget(min_run_time=0.5, max_run_time=1.0, precision=0.01)


def test_few_faults_are_counted_and_not_timed() -> None:
    worker = FakeWorker(_ok(_latency(10.2e-3, 9e-3, 3.0, calls=8)))
    values, extra = other_state(worker, BIG_MAP, (dict(PINNED), {}), RUN, 5)  # type: ignore[arg-type]
    assert [(budget, seed) for _, budget, seed in worker.asked] == [(FAULT_PROBE_BUDGET, 5)]
    assert values == {**PINNED, "other_allocator_faults_per_call": 3.0, "system_allocator_slower": False}
    assert extra["system_allocator_probe_calls"] == 8 and "system_allocator_max_run_time" not in extra
    assert extra["system_allocator"] == {"pinned": False} and extra["system_allocator_s"] >= 0


def test_many_faults_on_a_fast_call_get_a_second_timing_with_the_secondary_budget() -> None:
    probe, timed = _latency(30e-3, 29e-3, 5000.0), _latency(31e-3, 28e-3, 4900.0, calls=12)
    worker = FakeWorker(_ok(probe), _ok(timed))
    values, extra = other_state(worker, BIG_MAP, (dict(PINNED), {}), RUN, 0)  # type: ignore[arg-type]
    # The probe's 6 calls took 0.18 s, short of the 0.25 s cap: timed again, warm already.
    second = dataclasses.replace(secondary_budget(RUN), warmup_s=0.0, warmup_calls=1)
    assert [budget for _, budget, _ in worker.asked] == [FAULT_PROBE_BUDGET, second]
    assert extra["system_allocator_max_run_time"] == SECONDARY_MAX_RUN_TIME
    assert values["other_allocator_latency_s"] == 31e-3 and values["other_allocator_faults_per_call"] == 4900.0
    assert values["system_allocator_slowdown"] == pytest.approx(3.1) and values["system_allocator_slower"] is True
    assert values["latency_median_s"] == 10e-3  # the pinned state stays the headline


def test_a_slow_call_is_timed_by_its_probe_alone() -> None:
    probe = _latency(50e-3, 45e-3, 20000.0)  # 6 calls of 50 ms: past the 0.25 s cap already
    worker = FakeWorker(_ok(probe))
    values, extra = other_state(worker, BIG_MAP, (dict(PINNED), {}), RUN, 0)  # type: ignore[arg-type]
    assert len(worker.asked) == 1 and values["other_allocator_latency_s"] == 50e-3
    assert values["system_allocator_slower"] is True and extra["system_allocator_min_ratio"] == pytest.approx(5.0)


def test_the_system_headline_is_timed_with_the_runs_budget_and_swapped_in() -> None:
    case = Case("mhsa", 16, 32, 32, scenario=SYSTEM)
    worker = FakeWorker(_ok(_latency(30e-3, 28e-3, 5000.0)))
    values, extra = other_state(worker, case, (dict(PINNED), {}), RUN, 0)  # type: ignore[arg-type]
    assert [budget for _, budget, _ in worker.asked] == [RUN]
    assert values["latency_median_s"] == 30e-3 and values["other_allocator_latency_s"] == 10e-3
    assert extra["pinned_latency_iqr_s"] == PINNED["latency_iqr_s"]


def test_a_failed_system_state_is_a_note_or_the_rows_status() -> None:
    failed = {"status": "failed", "reason": "RuntimeError: boom", "values": None}
    values, extra = other_state(FakeWorker(failed), BIG_MAP, (dict(PINNED), {}), RUN, 0)  # type: ignore[arg-type]
    assert values == PINNED and extra["system_allocator_note"] == "system allocator state: failed: RuntimeError: boom"
    # The system state as the headline: the row itself could not be measured.
    case = Case("mhsa", 16, 32, 32, scenario=SYSTEM)
    worker = FakeWorker(WorkerError("system-allocator worker died: (no output)"))
    values, extra = other_state(worker, case, (dict(PINNED), {}), RUN, 0)  # type: ignore[arg-type]
    assert values["status"] == "failed"
    assert values["reason"] == "system allocator state: failed: system-allocator worker died: (no output)"


def test_a_slower_system_state_is_marked_and_said() -> None:
    row = R.Result.for_case(
        BIG_MAP,
        latency_median_s=0.010,
        latency_iqr_s=0.001,
        other_allocator_latency_s=0.030,
        other_allocator_faults_per_call=24_600.0,
        system_allocator_slowdown=3.0,
        system_allocator_slower=True,
    )
    table = summary.summary([row])
    cols = {c.header: c.cell for c in summary_columns(table, ["cpu"])}
    first = table.iloc[0]
    assert cols["cpu [ms] med±IQR"](first).endswith(ALLOC_MARK)
    assert cols["cpu [ms] system"](first) == "30"
    [note] = allocator_notes([row])
    assert "30 ms with glibc's default allocator, 3x the pinned 10 ms" in note and "24,600 page faults" in note
    md = markdown([row], {})
    assert "## Allocator" in md and ALLOC_MARK in md


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ((30e-3, 28e-3, 24_600.0), True),  # mhsa's maps: 3x, the fastest call too, faults enough for it
        ((13e-3, 11e-3, 4.0), False),  # 30% slower, but 4 faults cannot cost 1 ms: noise
        ((10.5e-3, 9.5e-3, 24_600.0), False),  # faults, but within 10%
        ((13e-3, 9e-3, 24_600.0), False),  # a slower median whose fastest call is not slower: noise
    ],
)
def test_a_row_is_marked_slower_only_for_a_gap_the_faults_can_explain(
    system: tuple[float, float, float], expected: bool
) -> None:
    pinned = {"latency_median_s": 10e-3, "latency_iqr_s": 1e-4, "latency_min_s": 9e-3, "minor_faults_per_call": 0.0}
    median, fastest, faults = system
    other = {
        "latency_median_s": median,
        "latency_iqr_s": 1e-4,
        "latency_min_s": fastest,
        "minor_faults_per_call": faults,
    }
    values, extra = combine_states(dict(pinned), {}, other, system_headline=False)
    assert values["system_allocator_slower"] is expected
    assert values["system_allocator_slowdown"] == pytest.approx(median / 10e-3)
    assert values["other_allocator_latency_s"] == median and values["other_allocator_faults_per_call"] == faults
    assert extra["system_allocator_min_ratio"] == pytest.approx(fastest / 9e-3)
    assert extra["system_latency_iqr_s"] == 1e-4
