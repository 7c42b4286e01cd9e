"""The timing protocol (attnbench.timing) against a fake clock: the budget, exact statistics, warm-up rules, block
sizing, the adaptive stop, noise."""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator

import pytest

from attnbench import timing
from attnbench.timing import (
    Lane,
    TimingBudget,
    TimingStats,
    calls_for_block,
    median_ci_ranks,
    median_ci_rel,
    quantile,
    stop_reason,
    summarize,
    time_callable,
    time_lanes,
    warm_up,
)


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


def budget(min_run_time: float, max_run_time: float, precision: float | None) -> TimingBudget:
    """A budget of timed seconds (floor, cap) and a precision, warm-up left at its defaults."""
    return TimingBudget(min_run_time=min_run_time, max_run_time=max_run_time, precision=precision)


# ---------------------------------------------------------------- the budget


def test_the_default_budget_is_the_named_constants() -> None:
    assert TimingBudget() == TimingBudget(
        min_run_time=timing.DEFAULT_MIN_RUN_TIME,
        max_run_time=timing.DEFAULT_MAX_RUN_TIME,
        precision=timing.DEFAULT_PRECISION,
        warmup_s=timing.WARMUP_MIN_S,
        warmup_calls=timing.WARMUP_MIN_CALLS,
    )
    assert TimingBudget().problem() is None
    assert TimingBudget(precision=None, min_run_time=2.0, max_run_time=1.0, warmup_s=0.0).problem() is None
    assert TimingBudget(warmup_calls=1).problem() is None  # one warm-up call is enough


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"min_run_time": -1.0}, "--min-run-time -1.0: must be >= 0 seconds"),
        ({"min_run_time": math.nan}, "--min-run-time nan: must be >= 0 seconds"),
        ({"max_run_time": 0.0}, "--max-run-time 0.0: must be > 0 seconds"),
        ({"precision": 0.0}, "--precision 0.0: must be a fraction in (0, 1), e.g. 0.01 for +-1%"),
        ({"precision": 1.0}, "--precision 1.0: must be a fraction in (0, 1), e.g. 0.01 for +-1%"),
        ({"warmup_s": -0.5}, "--warmup -0.5: must be >= 0 seconds"),
        ({"warmup_calls": 0}, "warm-up calls 0: must be >= 1"),
    ],
)
def test_budget_problem_names_the_option(values: dict[str, float], problem: str) -> None:
    assert TimingBudget(**values).problem() == problem


def test_default_budget_is_small_and_named() -> None:
    assert timing.WARMUP_MIN_CALLS >= 10 and timing.WARMUP_MIN_S > 0
    assert 0 <= timing.DEFAULT_MIN_RUN_TIME < timing.DEFAULT_MAX_RUN_TIME <= 5.0
    assert 0 < timing.DEFAULT_PRECISION <= 0.02
    assert math.isclose(timing.NOISE_THRESHOLD, 0.10)
    # The fewest blocks must be enough for a 95% interval on the median.
    assert median_ci_ranks(timing.MIN_BLOCKS) is not None


# ---------------------------------------------------------------- statistics


def test_quantile_is_linear_interpolation() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.25) == 2.0
    assert quantile(values, 0.75) == 4.0
    assert quantile(values, 0.10) == pytest.approx(1.4)
    assert quantile([7.0], 0.9) == 7.0
    with pytest.raises(ValueError, match=r"^quantile of an empty sequence$"):
        quantile([], 0.5)


def test_summarize_exact_stats_and_noise_flag() -> None:
    stats = summarize([4.0, 1.0, 10.0, 2.0, 3.0], calls_per_block=2, warmup_calls=7, warmup_s=0.5)
    assert (stats.median_s, stats.iqr_s, stats.min_s, stats.mean_s) == (3.0, 2.0, 1.0, 4.0)
    assert stats.p10_s == pytest.approx(1.4)
    assert stats.n_blocks == 5 and stats.n_calls == 10 and stats.calls_per_block == 2
    assert (stats.warmup_calls, stats.warmup_s) == (7, 0.5)
    assert stats.iqr_over_median == pytest.approx(2 / 3)
    assert stats.noisy
    assert stats.times_s == (4.0, 1.0, 10.0, 2.0, 3.0)
    # Five blocks cannot bound the median with 95% confidence; no target was asked for.
    assert stats.median_ci_rel == math.inf and stats.precision_met is None and stats.precision_target is None
    quiet = summarize([1.0, 1.01, 0.99, 1.0, 1.02])
    assert not quiet.noisy and quiet.iqr_over_median < timing.NOISE_THRESHOLD


def test_noise_threshold() -> None:
    # Binary-exact values: IQR / median = 0.0625 is quiet, 0.125 is noisy (threshold 0.10).
    assert not summarize([0.9375, 0.96875, 1.0, 1.03125, 1.0625]).noisy
    assert summarize([0.875, 0.9375, 1.0, 1.0625, 1.125]).noisy
    # At the threshold itself, not noisy: "above 10%", as torch.utils.benchmark says.
    at = TimingStats(**{**summarize([1.0] * 6).__dict__, "iqr_s": timing.NOISE_THRESHOLD})
    assert at.iqr_over_median == timing.NOISE_THRESHOLD and not at.noisy


def test_a_missed_precision_target_is_noisy_and_contention_is_flagged() -> None:
    steady = [1.0] * 5 + [1.5]
    assert summarize(steady).noisy is False
    missed = summarize(steady, precision_target=0.01)
    # Ranks (0, 5) of six: the interval reaches 1.5, a 50% half-width, far from +-1%.
    assert missed.median_ci_rel == pytest.approx(0.5) and missed.precision_met is False and missed.noisy
    assert summarize([1.0] * 6, precision_target=0.01).precision_met is True
    stats = summarize([1.0] * 6)
    assert not stats.contended
    assert TimingStats(**{**stats.__dict__, "other_cpu_cores": timing.CONTENTION_THRESHOLD * 2}).contended
    assert TimingStats(**{**stats.__dict__, "median_s": 0.0}).iqr_over_median == math.inf


def test_as_dict_has_summary_fields() -> None:
    d = summarize([1.0, 2.0]).as_dict()
    keys = ("median_s", "iqr_s", "p10_s", "min_s", "mean_s", "n_calls", "n_blocks", "noisy", "warmup_calls")
    for key in (*keys, "median_ci_rel", "precision_target", "precision_met"):
        assert key in d
    assert "times_s" not in d
    assert d["median_s"] == 1.5 and d["n_blocks"] == 2 and d["stop"] == ""
    assert (d["n_calls"], d["calls_per_block"], d["warmup_calls"], d["warmup_s"]) == (2, 1, 0, 0.0)  # the defaults


def test_as_dict_is_every_summary_field_by_its_name() -> None:
    names = ("median_s", "iqr_s", "p10_s", "p90_s", "p99_s", "first_call_s", "min_s", "mean_s", "iqr_over_median")
    names += ("n_calls", "n_blocks", "calls_per_block", "noisy", "warmup_calls", "warmup_s", "minor_faults_per_call")
    names += ("other_cpu_cores", "contended", "median_ci_rel", "precision_target", "precision_met", "stop")
    stats = summarize([1.0, 2.0, 4.0, 8.0, 16.0, 32.0], 3, 5, 0.25, precision_target=0.5)
    known = {"first_call_s": 7.0, "minor_faults_per_call": 1.5, "other_cpu_cores": 0.75, "stop": "budget"}
    stats = TimingStats(**{**stats.__dict__, **known})
    assert stats.as_dict() == {name: getattr(stats, name) for name in names}
    assert None not in stats.as_dict().values()


def test_median_ci_ranks_match_binomial_tables() -> None:
    # P(Bin(5, 1/2) = 0) = 1/32 > 2.5%: five samples cannot bound the median with 95% confidence.
    assert median_ci_ranks(5) is None
    # n = 6: the extremes, coverage 1 - 2/64 = 96.9%.
    assert median_ci_ranks(6) == (0, 5)
    # n = 10: P(X <= 1) = 11/1024 <= 2.5% < P(X <= 2) = 56/1024, so x_(2)..x_(9) (1-based).
    assert median_ci_ranks(10) == (1, 8)
    # n = 20: x_(6)..x_(15), the textbook interval.
    assert median_ci_ranks(20) == (5, 14)
    # A lower confidence narrows it: n = 10 at 80% -> P(X <= 2) = 5.5% <= 10% < P(X <= 3) = 17.2%.
    assert median_ci_ranks(10, 0.80) == (2, 7)


def test_median_ci_rel_takes_the_wider_side() -> None:
    values = sorted([0.98, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0, 1.01, 1.015, 1.03])
    # Ranks (1, 8): 0.99 and 1.015 around a median of 1.0 -> the upper side, 1.5%.
    assert median_ci_rel(values, 1.0) == pytest.approx(0.015)
    assert median_ci_rel(values[:5], 1.0) == math.inf  # too few for a 95% interval
    assert median_ci_rel(values, 0.0) == math.inf  # no relative width around a zero median


# ---------------------------------------------------------------- warm-up and blocks


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
    # One call: its own time is the estimate.
    clock = FakeClock()
    assert warm_up(Workload(clock, [3.0]), min_calls=1, min_s=0, clock=clock) == (1, 3.0, 3.0)


def test_calls_for_block() -> None:
    assert calls_for_block(0.001, 0.02) == 20
    assert calls_for_block(0.5, 0.02) == 1
    assert calls_for_block(0.0, 0.02) == 1000


def test_one_lane_runs_blocks_until_the_stop_rule_with_gc_held_off() -> None:
    clock = FakeClock()
    work = Workload(clock, [0.25])
    gc_during: list[bool] = []

    def fn() -> None:
        gc_during.append(gc.isenabled())
        work()

    assert gc.isenabled()
    lane = Lane(fn, TimingBudget(min_run_time=2.0, max_run_time=10.0, precision=None, warmup_s=0, warmup_calls=1))
    time_lanes([lane], clock=clock, block_target_s=1.0, min_blocks=3)
    # One warm-up call (0.25 s) sets 4 calls per block (1 s); the 2 s floor wants 2 blocks, min_blocks 3.
    assert lane.times == [0.25, 0.25, 0.25] and lane.stop == timing.STOP_FIXED and work.calls == 1 + 12
    assert gc_during[1:] == [False] * 12 and gc.isenabled()  # like timeit: no collection lands in a block


def test_lanes_take_turns_one_block_per_round_each_with_its_own_stop_rule() -> None:
    clock = FakeClock()
    order: list[str] = []

    def lane_of(name: str, per_call: float, min_run_time: float) -> Lane:
        def fn() -> None:
            order.append(name)
            clock.now += per_call

        budget = TimingBudget(min_run_time=min_run_time, max_run_time=99.0, precision=None, warmup_s=0, warmup_calls=1)
        return Lane(fn, budget)

    a, b = lane_of("a", 1.0, 0.0), lane_of("b", 1.0, 5.0)
    rounds: list[tuple[int, int]] = []
    time_lanes([a, b], clock=clock, block_target_s=1.0, min_blocks=2, on_round=lambda r, n: rounds.append((r, n)))
    # Warm-ups one after the other, then alternating blocks; a stops after its 2 blocks, b runs to its 5 s floor.
    assert order == ["a", "b"] + ["a", "b"] * 2 + ["b"] * 3
    assert len(a.times) == 2 and len(b.times) == 5
    assert rounds == [(0, 2), (1, 2), (2, 1), (3, 1), (4, 1)]


def test_a_lane_that_raises_leaves_the_rotation_and_the_others_finish() -> None:
    clock = FakeClock()
    calls = {"n": 0}

    def bad() -> None:
        calls["n"] += 1
        clock.now += 1.0
        if calls["n"] == 3:
            raise RuntimeError("boom in block 2")

    budget = TimingBudget(min_run_time=0.0, max_run_time=99.0, precision=None, warmup_s=0, warmup_calls=1)
    good, broken = Lane(Workload(clock, [1.0]), budget), Lane(bad, budget)
    entered: list[str] = []

    @contextlib.contextmanager
    def settings() -> Iterator[None]:
        entered.append("in")
        yield
        entered.append("out")

    good.context = settings
    time_lanes([broken, good], clock=clock, block_target_s=1.0, min_blocks=3)
    assert isinstance(broken.error, RuntimeError) and len(broken.times) == 1
    assert good.error is None and len(good.times) == 3 and good.stats().n_blocks == 3
    assert entered == ["in", "out"] * 4  # around its warm-up and each of its blocks


def test_time_callable_exact_blocks() -> None:
    clock = FakeClock()
    # Warm-up: 4 calls of 0.25 s (1 s); then 2 calls per block (0.5 s target / 0.25 s estimate).
    # Blocks run at 1, 2, 3, 4 and 10 s per call: 2 + 4 + 6 + 8 = 20 s < 30 s, so a fifth block runs.
    per_call = [0.25] * 4 + [1.0] * 2 + [2.0] * 2 + [3.0] * 2 + [4.0] * 2 + [10.0] * 2 + [99.0]
    work = Workload(clock, per_call)
    stats = time_callable(
        work,
        TimingBudget(min_run_time=30.0, warmup_s=1.0, warmup_calls=2, precision=None),
        block_target_s=0.5,
        min_blocks=5,
        clock=clock,
    )
    assert isinstance(stats, TimingStats)
    assert stats.warmup_calls == 4 and stats.warmup_s == 1.0
    assert stats.calls_per_block == 2 and stats.n_blocks == 5 and stats.n_calls == 10
    assert stats.times_s == (1.0, 2.0, 3.0, 4.0, 10.0)
    assert (stats.median_s, stats.iqr_s, stats.min_s, stats.mean_s) == (3.0, 2.0, 1.0, 4.0)
    assert stats.p10_s == pytest.approx(1.4)
    assert stats.noisy
    assert stats.stop == timing.STOP_FIXED and stats.precision_target is None
    assert work.calls == 14  # nothing ran after the last block


def test_min_blocks_hold_when_budget_is_spent() -> None:
    clock = FakeClock()
    stats = time_callable(
        Workload(clock, [1.0]),
        TimingBudget(min_run_time=0.001, warmup_s=0, warmup_calls=1, precision=None),
        min_blocks=7,
        clock=clock,
    )
    assert stats.n_blocks == 7 and stats.calls_per_block == 1
    assert stats.median_s == 1.0 and stats.iqr_s == 0.0 and not stats.noisy


def test_run_time_budget_sets_block_count() -> None:
    clock = FakeClock()
    stats = time_callable(
        Workload(clock, [0.125]),
        TimingBudget(min_run_time=4.0, warmup_s=1.0, precision=None),
        block_target_s=0.5,
        min_blocks=1,
        clock=clock,
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

    stats = time_callable(
        fn,
        TimingBudget(min_run_time=0.001, warmup_s=0, warmup_calls=2, precision=None),
        min_blocks=3,
        clock=clock,
        sync=sync,
    )
    # The first (cold) call bracketed by syncs, then the rest of the warm-up: a sync before starting and after
    # each call; each block: sync, calls, sync.
    assert events[:6] == ["sync", "call", "sync", "sync", "call", "sync"]
    assert stats.first_call_s == 1.0 and stats.warmup_calls == 2
    timed = events[6:]
    assert timed == ["sync", "call", "sync"] * stats.n_blocks


def test_no_budget_means_the_default_one() -> None:
    clock = FakeClock()
    work = Workload(clock, [0.0625])
    stats = time_callable(work, clock=clock)
    # Default warm-up: >= 10 calls and >= 0.25 s (4 calls of 1/16 s reach it: the calls bind). Identical blocks
    # of 0.02 s / 0.0625 s -> 1 call each: precise at the fewest blocks.
    assert stats.warmup_calls == timing.WARMUP_MIN_CALLS and stats.warmup_s == 10 * 0.0625
    assert stats.n_blocks == timing.MIN_BLOCKS and stats.stop == timing.STOP_PRECISION
    assert stats.precision_target == timing.DEFAULT_PRECISION


# ---------------------------------------------------------------- the adaptive stop


def test_the_stop_rules_at_their_boundaries() -> None:
    # Six blocks, median 1, 95% interval [1, 1.5]: the width is 0.5 exactly; at 0.125 the projection is 4**2 = 16.
    blocks, t = [1.0] * 5 + [1.5], timing.FUTILITY_AFTER_S
    assert stop_reason(blocks, t, budget(0.0, 99.0, 0.5)) == timing.STOP_PRECISION  # the width at the target
    assert stop_reason(blocks, t, budget(0.0, t * 12, 0.125)) == timing.STOP_FUTILE  # 16 t > 12 t, from t on
    assert stop_reason(blocks, t, budget(0.0, t * 16, 0.125)) is None  # 16 t fits a 16 t budget: go on


def test_median_ci_rel_at_another_confidence() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # 50%: ranks (1, 4) of six, [2, 5] around 3.5; 95%: ranks (0, 5), [1, 6].
    assert median_ci_rel(values, 3.5, 0.5) == pytest.approx(1.5 / 3.5)
    assert median_ci_rel(values, 3.5) == pytest.approx(2.5 / 3.5)


def test_stop_reasons_and_the_futility_projection() -> None:
    stable, noisy = [1.0] * 6, [1.0, 2.0] * 3
    assert stop_reason(stable[:5], 5.0, budget(0.0, 10.0, 0.01)) is None
    assert stop_reason(stable, 6.0, budget(0.0, 10.0, 0.01)) == timing.STOP_PRECISION
    assert stop_reason(stable, 6.0, budget(7.0, 10.0, 0.01)) is None  # below the floor
    assert stop_reason(noisy, 10.0, budget(0.0, 10.0, 0.01)) == timing.STOP_BUDGET
    assert stop_reason(noisy, 9.0, budget(0.0, 10.0, None)) == timing.STOP_FIXED
    # Half-width 0.5 / 1.5 = 33%: 1% would take ~1100x the time spent, far past the budget.
    assert stop_reason(noisy, 9.0, budget(0.0, 10.0, 0.01)) == timing.STOP_FUTILE
    # ...but not before FUTILITY_AFTER_S of timed calls: too early to judge.
    assert stop_reason(noisy, timing.FUTILITY_AFTER_S / 2, budget(0.0, 10.0, 0.01)) is None
    # Half-width 1.2% (ranks 0 and 5 of six around a median of 1.0): 1% takes about 1.44x the time spent.
    close = [0.988, 1.0, 1.0, 1.0, 1.0, 1.012]
    assert median_ci_rel(sorted(close), 1.0) == pytest.approx(0.012)
    assert stop_reason(close, 1.0, budget(0.0, 10.0, 0.01)) is None  # 1.44 s projected: within the budget, go on
    assert stop_reason(close, 8.0, budget(0.0, 10.0, 0.01)) == timing.STOP_FUTILE  # 11.5 s projected: give up


def test_stop_reason_counts_blocks_against_its_own_minimum() -> None:
    assert stop_reason([1.0] * 3, 3.0, budget(0.0, 10.0, None), min_blocks=3) == timing.STOP_FIXED
    assert stop_reason([1.0] * 3, 3.0, budget(0.0, 10.0, None)) is None  # MIN_BLOCKS (6) by default


def test_adaptive_stops_early_on_stable_data() -> None:
    clock = FakeClock()
    work = Workload(clock, [0.0625])  # binary-exact, so block sums are exact
    stats = time_callable(
        work,
        TimingBudget(min_run_time=0.0, max_run_time=100.0, warmup_s=0, warmup_calls=1),
        block_target_s=0.5,
        clock=clock,
    )
    # 8 calls per block; identical blocks are precise at once, so the fewest blocks are taken.
    assert stats.calls_per_block == 8 and stats.n_blocks == timing.MIN_BLOCKS
    assert stats.median_ci_rel == 0.0 and stats.precision_met is True and not stats.noisy
    assert stats.precision_target == timing.DEFAULT_PRECISION
    assert work.calls == 1 + 8 * timing.MIN_BLOCKS
    assert stats.first_call_s == 0.0625 and stats.warmup_calls == 1  # the one warm-up call is the cold one


def test_percentiles_and_the_first_call() -> None:
    clock = FakeClock()
    # A slow first call (lazy initialisation), then blocks of one call each: 1, 2, ... 10 s.
    work = Workload(clock, [5.0, *[float(s) for s in range(1, 11)]])
    stats = time_callable(
        work, TimingBudget(min_run_time=0.0, warmup_s=0, warmup_calls=1, precision=None), min_blocks=10, clock=clock
    )
    assert stats.first_call_s == 5.0 and stats.n_blocks == 10
    assert stats.p90_s == pytest.approx(9.1) and stats.p99_s == pytest.approx(9.91) and stats.median_s == 5.5


def test_adaptive_gives_up_early_on_hopeless_data() -> None:
    clock = FakeClock()
    # Calls alternate 1 s and 2 s, one call per block: the median is never known to 1%.
    work = Workload(clock, [1.0, 2.0] * 1000)
    stats = time_callable(
        work,
        TimingBudget(min_run_time=0.0, max_run_time=30.0, warmup_s=0, warmup_calls=2),
        block_target_s=0.5,
        clock=clock,
    )
    assert stats.calls_per_block == 1
    timed = sum(t * stats.calls_per_block for t in stats.times_s)
    # The first judgement (6 blocks, 9 s) projects far past the 30 s budget: stop there, flagged.
    assert timed == 9.0 and stats.n_blocks == timing.MIN_BLOCKS and stats.stop == timing.STOP_FUTILE
    assert stats.precision_met is False and stats.noisy and stats.median_ci_rel > 0.01


def test_adaptive_stops_at_the_budget_when_blocks_are_long() -> None:
    clock = FakeClock()
    # 0.4 s calls and a 1 s budget: the six blocks the interval needs overrun it; the budget is the reason.
    stats = time_callable(
        Workload(clock, [0.4, 0.6] * 100),
        TimingBudget(max_run_time=1.0, warmup_s=0, warmup_calls=2),
        block_target_s=0.1,
        clock=clock,
    )
    assert stats.n_blocks == timing.MIN_BLOCKS and stats.stop == timing.STOP_BUDGET and stats.noisy


def test_adaptive_stops_once_the_interval_narrows() -> None:
    clock = FakeClock()
    # Six scattered blocks (a 4% half-width: within reach of the budget), then steady 1.0 s blocks: the
    # interval on the median shrinks as they pile up.
    work = Workload(clock, [1.0, 0.97, 1.03, 0.98, 1.02, 0.975, 1.0])
    stats = time_callable(
        work,
        TimingBudget(min_run_time=0.0, max_run_time=1000.0, warmup_s=0, warmup_calls=1),
        block_target_s=0.1,
        clock=clock,
    )
    times = sorted(stats.times_s)
    lo, hi = median_ci_ranks(len(times))  # type: ignore[misc]
    assert times[lo] == times[hi] == 1.0 and stats.precision_met is True and stats.stop == timing.STOP_PRECISION
    # One block fewer and the interval would still reach a scattered block.
    shorter = sorted(stats.times_s[:-1])
    assert median_ci_rel(shorter, quantile(shorter, 0.5)) > 0.01


def test_adaptive_honours_the_floor() -> None:
    clock = FakeClock()
    stats = time_callable(
        Workload(clock, [0.25]),
        TimingBudget(min_run_time=5.0, max_run_time=10.0, warmup_s=0, warmup_calls=1),
        block_target_s=0.5,
        clock=clock,
    )
    # Precise after 6 blocks (3 s), but the 5 s floor holds: 10 blocks of 0.5 s.
    assert stats.calls_per_block == 2 and stats.n_blocks == 10 and stats.precision_met is True


def test_floor_above_the_budget_wins() -> None:
    clock = FakeClock()
    work = Workload(clock, [1.0, 2.0] * 100)
    stats = time_callable(
        work, TimingBudget(min_run_time=12.0, max_run_time=3.0, warmup_s=0, warmup_calls=2), clock=clock
    )
    assert sum(stats.times_s) == 12.0 and stats.precision_met is False and stats.stop == timing.STOP_BUDGET
