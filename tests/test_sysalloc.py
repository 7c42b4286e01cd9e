"""The default-allocator ("system") state: timed in a worker that leaves glibc alone, reported beside the pinned one."""

from __future__ import annotations

import json

import pytest

import attnbench.runner as runner
from attnbench import report
from attnbench import results as R
from attnbench.sysalloc import SystemAllocatorWorker, WorkerError

FAST = runner.RunOptions(min_run_time=0.05, max_run_time=0.1)
SHORT = {"min_run_time": 0.01, "max_run_time": 0.01}
#: mhsa at 32x32: 8 heads x 1024 x 1024 float32 scores = 32 MiB per map, above glibc's largest dynamic mmap
#: threshold, so a process that does not pin the allocator maps and unmaps it on every call (8192 pages).
BIG_MAP = R.Case("mhsa", 16, 32, 32)
MAP_PAGES = 8 * 1024 * 1024 * 4 // 4096


@pytest.fixture(scope="module")
def big_map_rows() -> dict[str, R.Result]:
    """The big-map case with each allocator as the headline, and an ort row asking for the system one: one sweep."""
    cases = [
        BIG_MAP,
        R.Case("mhsa", 16, 32, 32, allocator="system"),
        R.Case("mhsa", 16, 32, 32, backend="ort", allocator="system"),
    ]
    outcome = runner.run(cases, FAST)
    assert outcome.system_worker_startup_s > 0  # one worker served both cpu rows
    return {f"{r.backend} {r.allocator}": r for r in outcome.results}


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
    outcome = runner.run([R.Case("lka", 16, 8, 8)], FAST)
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
    outcome = runner.run([R.Case("lka", 16, 8, 8)], runner.RunOptions(metrics=("params", "memory")))
    assert outcome.results[0].ok and outcome.system_worker_startup_s == 0.0
    assert outcome.results[0].other_allocator_latency_s is None


def test_a_case_the_worker_cannot_build_fails_there_and_the_worker_goes_on() -> None:
    with SystemAllocatorWorker() as worker:
        answer = worker.measure(R.Case("no-such-module", 16, 8, 8), SHORT, 0)
        assert answer["status"] == "failed" and "no-such-module" in answer["reason"]
        assert worker.measure(R.Case("lka", 16, 8, 8), SHORT, 0)["status"] == "ok"
        assert worker.starts == 1


def test_a_worker_that_does_not_answer_in_time_is_stopped() -> None:
    with SystemAllocatorWorker(timeout_s=0.001) as worker, pytest.raises(WorkerError, match="no answer within"):
        worker.measure(R.Case("lka", 16, 8, 8), SHORT, 0)
    assert worker._proc is None


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
    table = report.summary([row])
    cols = {c.header: c.cell for c in report._columns(table, ["cpu"])}
    first = table.iloc[0]
    assert cols["cpu [ms] med±IQR"](first).endswith(report.ALLOC_MARK)
    assert cols["cpu [ms] system"](first) == "30"
    [note] = report.allocator_notes([row])
    assert "takes 30 ms per call, 3x the 10 ms" in note and "24,600 minor page faults" in note
    md = report.markdown([row], {})
    assert "## Allocator" in md and report.ALLOC_MARK in md


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
    values, extra = runner._combine_states(dict(pinned), {}, other, system_headline=False)
    assert values["system_allocator_slower"] is expected
    assert values["system_allocator_slowdown"] == pytest.approx(median / 10e-3)
    assert values["other_allocator_latency_s"] == median and values["other_allocator_faults_per_call"] == faults
    assert extra["system_allocator_min_ratio"] == pytest.approx(fastest / 9e-3)
