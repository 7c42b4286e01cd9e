"""The timing protocol against a fake clock: exact statistics, warm-up rules, block sizing, noise flag."""

from __future__ import annotations

import math

import pytest

from attnbench import timing
from attnbench.timing import TimingStats, calls_for_block, quantile, summarize, time_callable, warm_up


class FakeClock:
    """A clock that only moves when the fake workload says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


class Workload:
    """A callable that advances the fake clock by scripted per-call durations (the last one repeats)."""

    def __init__(self, clock: FakeClock, durations: list[float]) -> None:
        self.clock = clock
        self.durations = durations
        self.calls = 0

    def __call__(self) -> None:
        d = self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1
        self.clock.now += d


def test_quantile_is_linear_interpolation() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.25) == 2.0
    assert quantile(values, 0.75) == 4.0
    assert quantile(values, 0.10) == pytest.approx(1.4)
    assert quantile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_summarize_exact_stats_and_noise_flag() -> None:
    stats = summarize([4.0, 1.0, 10.0, 2.0, 3.0], calls_per_block=2, warmup_calls=7, warmup_s=0.5)
    assert (stats.median_s, stats.iqr_s, stats.min_s, stats.mean_s) == (3.0, 2.0, 1.0, 4.0)
    assert stats.p10_s == pytest.approx(1.4)
    assert stats.n_blocks == 5 and stats.n_calls == 10 and stats.calls_per_block == 2
    assert stats.iqr_over_median == pytest.approx(2 / 3)
    assert stats.noisy
    assert stats.times_s == (4.0, 1.0, 10.0, 2.0, 3.0)
    quiet = summarize([1.0, 1.01, 0.99, 1.0, 1.02])
    assert not quiet.noisy and quiet.iqr_over_median < timing.NOISE_THRESHOLD


def test_noise_threshold() -> None:
    # Binary-exact values: IQR / median = 0.0625 is quiet, 0.125 is noisy (threshold 0.10).
    assert not summarize([0.9375, 0.96875, 1.0, 1.03125, 1.0625]).noisy
    assert summarize([0.875, 0.9375, 1.0, 1.0625, 1.125]).noisy


def test_warm_up_needs_calls_and_seconds() -> None:
    clock = FakeClock()
    # Seconds bind: 0.25 s per call, 1 s minimum -> 4 calls even though 2 calls are asked for.
    calls, elapsed, estimate = warm_up(Workload(clock, [0.25]), min_calls=2, min_s=1.0, clock=clock)
    assert (calls, elapsed, estimate) == (4, 1.0, 0.25)
    # Calls bind: 10 calls even though 1 s passes after 2.
    clock = FakeClock()
    calls, elapsed, _ = warm_up(Workload(clock, [0.5]), min_calls=10, min_s=1.0, clock=clock)
    assert (calls, elapsed) == (10, 5.0)


def test_warm_up_estimate_ignores_slow_first_calls() -> None:
    clock = FakeClock()
    calls, elapsed, estimate = warm_up(Workload(clock, [8.0, 4.0, 1.0, 1.0]), min_calls=4, min_s=0, clock=clock)
    assert (calls, elapsed) == (4, 14.0)
    assert estimate == 1.0  # mean of the second half, not 14 / 4


def test_calls_for_block() -> None:
    assert calls_for_block(0.001, 0.02) == 20
    assert calls_for_block(0.5, 0.02) == 1
    assert calls_for_block(0.0, 0.02) == 1000


def test_time_callable_exact_blocks() -> None:
    clock = FakeClock()
    # Warm-up: 4 calls of 0.25 s (1 s); then 2 calls per block (0.5 s target / 0.25 s estimate).
    # Blocks run at 1, 2, 3, 4 and 10 s per call: 2 + 4 + 6 + 8 = 20 s < 30 s, so a fifth block runs.
    per_call = [0.25] * 4 + [1.0] * 2 + [2.0] * 2 + [3.0] * 2 + [4.0] * 2 + [10.0] * 2 + [99.0]
    work = Workload(clock, per_call)
    stats = time_callable(
        work, min_run_time=30.0, warmup_s=1.0, warmup_calls=2, block_target_s=0.5, min_blocks=5, clock=clock
    )
    assert isinstance(stats, TimingStats)
    assert stats.warmup_calls == 4 and stats.warmup_s == 1.0
    assert stats.calls_per_block == 2 and stats.n_blocks == 5 and stats.n_calls == 10
    assert stats.times_s == (1.0, 2.0, 3.0, 4.0, 10.0)
    assert (stats.median_s, stats.iqr_s, stats.min_s, stats.mean_s) == (3.0, 2.0, 1.0, 4.0)
    assert stats.p10_s == pytest.approx(1.4)
    assert stats.noisy
    assert work.calls == 14  # nothing ran after the last block


def test_min_blocks_hold_when_budget_is_spent() -> None:
    clock = FakeClock()
    stats = time_callable(
        Workload(clock, [1.0]), min_run_time=0.001, warmup_s=0, warmup_calls=1, min_blocks=7, clock=clock
    )
    assert stats.n_blocks == 7 and stats.calls_per_block == 1
    assert stats.median_s == 1.0 and stats.iqr_s == 0.0 and not stats.noisy


def test_run_time_budget_sets_block_count() -> None:
    clock = FakeClock()
    stats = time_callable(
        Workload(clock, [0.125]), min_run_time=4.0, warmup_s=1.0, block_target_s=0.5, min_blocks=1, clock=clock
    )
    assert stats.calls_per_block == 4
    assert stats.n_blocks == 8  # 8 blocks of 0.5 s reach the 4 s budget
    assert stats.median_s == 0.125


def test_sync_hook_brackets_every_block() -> None:
    clock = FakeClock()
    events: list[str] = []
    work = Workload(clock, [1.0])

    def fn() -> None:
        events.append("call")
        work()

    def sync() -> None:
        events.append("sync")

    stats = time_callable(fn, min_run_time=0.001, warmup_s=0, warmup_calls=2, min_blocks=3, clock=clock, sync=sync)
    # Warm-up: a sync before starting and after each call; each block: sync, calls, sync.
    assert events[:5] == ["sync", "call", "sync", "call", "sync"]
    timed = events[5:]
    assert timed == ["sync", "call", "sync"] * stats.n_blocks


def test_default_budget_is_small_and_named() -> None:
    assert timing.WARMUP_MIN_CALLS >= 10 and timing.WARMUP_MIN_S > 0
    assert 0 < timing.DEFAULT_MIN_RUN_TIME <= 1.0
    assert math.isclose(timing.NOISE_THRESHOLD, 0.10)


def test_as_dict_has_summary_fields() -> None:
    d = summarize([1.0, 2.0]).as_dict()
    for key in ("median_s", "iqr_s", "p10_s", "min_s", "mean_s", "n_calls", "n_blocks", "noisy", "warmup_calls"):
        assert key in d
    assert "times_s" not in d
