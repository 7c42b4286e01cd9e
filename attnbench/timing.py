"""Latency: one timing protocol for every backend (warm-up, adaptive blocked runs, median and its CI, noise flag).

After an explicit warm-up of at least WARMUP_MIN_CALLS calls *and* WARMUP_MIN_S seconds, the callable
runs in blocks of `calls_per_block` calls, each block lasting about `block_target_s`. Each block is timed
once with an injectable clock (default time.perf_counter), so the clock's own cost is amortised over the
block; per-call time = block time / calls per block. Statistics are taken over the per-block per-call times.

Adaptive stop (the idea of torch.utils.benchmark's adaptive_autorange, with a different criterion): after
each block, the distribution-free 95% confidence interval on the median is read off two order statistics
of the block times (ranks from the Binomial(n, 1/2) distribution, no normality assumed). Timing stops as
soon as that interval lies within +-`precision` of the median, once at least MIN_BLOCKS blocks and
`min_run_time` seconds (a floor) are spent; otherwise it stops when `max_run_time` seconds of timed calls
are spent, and the result says the target was missed (and counts as noisy). Futility stop: from
FUTILITY_AFTER_S of timed calls on, the interval's width is projected forward (it shrinks as 1/sqrt(blocks));
when reaching `precision` would take more than the whole budget, timing stops there, with the same verdict
the budget would have given (target missed, noisy), and the time is not spent. `precision=None` restores a
fixed budget: blocks until `min_run_time` and MIN_BLOCKS, as blocked_autorange does. The stats say which rule
stopped (`stop`).

An accelerator backend passes a `sync` hook, called before each clock read, so that the host clock never
reads while work is still queued.

Threads are not touched here: backends set them (1 intra-op thread unless asked) and record them.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

try:
    import resource
except ImportError:  # pragma: no cover - no getrusage (Windows): no faults or load reading
    resource = None  # type: ignore[assignment]

#: Warm-up runs until both of these hold (measurement.md: the conv-heavy module needed ~30 calls to settle).
WARMUP_MIN_CALLS = 10
WARMUP_MIN_S = 0.25
#: Adaptive stop: the 95% CI on the median within +-1% of the median (a relative half-width of 0.01).
DEFAULT_PRECISION = 0.01
#: Coverage of that confidence interval.
CONFIDENCE = 0.95
#: Floor on the timed seconds per case; a case whose median is known sooner still runs this long.
DEFAULT_MIN_RUN_TIME = 0.0
#: Budget of timed seconds per case: timing stops here even if the precision was not reached (and says so).
#: results/timing_defaults.md: on the shared 2-core VM, longer budgets mostly turned "flagged noisy" into
#: "precise but off", as the machine's slow and fast phases last seconds; 0.5 s kept compare --all fast.
DEFAULT_MAX_RUN_TIME = 0.5
#: A block lasts at least this long, so clock resolution and overhead vanish in the per-call figure.
BLOCK_TARGET_S = 0.02
#: Fewest blocks taken: 6 is the smallest count whose extreme order statistics bound the median with 95%
#: confidence (1 - 2 / 2**6 = 96.9%), so even a slow module gets a confidence interval.
MIN_BLOCKS = 6
#: Futility stop: judged from this many timed seconds on. results/timing_defaults.md (replayed on recorded
#: blocks): stopping where the projected time to +-1% exceeds the budget cut the timing loops of compare --all
#: from 51 s to 35 s, and left 2 unflagged misses of 41 cases instead of 5.
FUTILITY_AFTER_S = 0.1
#: Why timing stopped: the precision was reached, the budget was spent, the precision was out of reach within
#: the budget (futility), or a fixed budget (precision=None) ran out.
STOP_PRECISION, STOP_BUDGET, STOP_FUTILE, STOP_FIXED = "precision", "budget", "futile", "fixed"
#: IQR / median above this flags the run as noisy (torch.utils.benchmark uses the same 10%).
NOISE_THRESHOLD = 0.10
#: Other processes using more than this many cores during timing flag the run as contended.
CONTENTION_THRESHOLD = 0.05
#: A device busy (kernels and copies, from the profiler) for less than this share of the median call marks the
#: row launch-bound: the host's kernel launches and synchronisation, not the device's work, set its latency.
LAUNCH_BOUND_FRACTION = 0.5

Clock = Callable[[], float]
Sync = Callable[[], None]


@dataclasses.dataclass(frozen=True)
class TimingBudget:
    """How long one case is timed: a warm-up, then blocks until its median is known to `precision`.

    `min_run_time` is a floor of timed seconds, `max_run_time` the budget; `precision=None` times exactly the
    floor (and MIN_BLOCKS), as torch.utils.benchmark's blocked_autorange does. It travels whole, like
    torch.utils.benchmark's TaskSpec.
    """

    min_run_time: float = DEFAULT_MIN_RUN_TIME
    max_run_time: float = DEFAULT_MAX_RUN_TIME
    precision: float | None = DEFAULT_PRECISION
    warmup_s: float = WARMUP_MIN_S
    warmup_calls: int = WARMUP_MIN_CALLS

    def problem(self) -> str | None:
        """What makes this budget unusable (None when it is fine), naming the CLI option."""
        if not self.min_run_time >= 0:
            return f"--min-run-time {self.min_run_time!r}: must be >= 0 seconds"
        if not self.max_run_time > 0:
            return f"--max-run-time {self.max_run_time!r}: must be > 0 seconds"
        if self.precision is not None and not 0 < self.precision < 1:
            return f"--precision {self.precision!r}: must be a fraction in (0, 1), e.g. 0.01 for +-1%"
        if not self.warmup_s >= 0:
            return f"--warmup {self.warmup_s!r}: must be >= 0 seconds"
        if self.warmup_calls < 1:
            return f"warm-up calls {self.warmup_calls!r}: must be >= 1"
        return None


def _no_sync() -> None:
    return None


@dataclasses.dataclass(frozen=True)
class TimingStats:
    """Per-call latency statistics in seconds, over blocks; times_s holds each block's per-call time."""

    median_s: float
    iqr_s: float
    p10_s: float
    min_s: float
    mean_s: float
    n_calls: int
    n_blocks: int
    warmup_calls: int
    warmup_s: float
    calls_per_block: int = 1
    times_s: tuple[float, ...] = ()
    #: Minor page faults per call during the timed blocks (allocator churn shows here); None if unknown.
    minor_faults_per_call: float | None = None
    #: CPU other processes used during the timed blocks, in cores (0.05 = 5% of one core); None if unknown.
    other_cpu_cores: float | None = None
    #: Achieved precision: half-width of the 95% CI on the median over the median (the larger side); inf when
    #: there are too few blocks for a 95% interval.
    median_ci_rel: float = math.inf
    #: The precision asked for (None: a fixed budget, no target).
    precision_target: float | None = None
    #: Which rule stopped the timing (a STOP_* value); "" when not recorded.
    stop: str = ""

    @property
    def precision_met(self) -> bool | None:
        """Whether the median is known to the asked precision; None when none was asked for."""
        if self.precision_target is None:
            return None
        return self.median_ci_rel <= self.precision_target

    @property
    def contended(self) -> bool:
        """True when other processes used more than CONTENTION_THRESHOLD of a core while timing."""
        return self.other_cpu_cores is not None and self.other_cpu_cores > CONTENTION_THRESHOLD

    @property
    def noisy(self) -> bool:
        """True when IQR / median > NOISE_THRESHOLD, or the precision target was missed within the budget."""
        spread = self.median_s > 0 and self.iqr_s / self.median_s > NOISE_THRESHOLD
        return spread or self.precision_met is False

    @property
    def iqr_over_median(self) -> float:
        """Relative spread: IQR / median (inf for a zero median)."""
        return self.iqr_s / self.median_s if self.median_s > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        """Flat dict of the summary fields (no per-block times), for result rows."""
        return {
            "median_s": self.median_s,
            "iqr_s": self.iqr_s,
            "p10_s": self.p10_s,
            "min_s": self.min_s,
            "mean_s": self.mean_s,
            "iqr_over_median": self.iqr_over_median,
            "n_calls": self.n_calls,
            "n_blocks": self.n_blocks,
            "calls_per_block": self.calls_per_block,
            "noisy": self.noisy,
            "warmup_calls": self.warmup_calls,
            "warmup_s": self.warmup_s,
            "minor_faults_per_call": self.minor_faults_per_call,
            "other_cpu_cores": self.other_cpu_cores,
            "contended": self.contended,
            "median_ci_rel": self.median_ci_rel,
            "precision_target": self.precision_target,
            "precision_met": self.precision_met,
            "stop": self.stop,
        }


class SystemProbe:
    """Reads page faults and other processes' CPU time around a timed region (Linux; None elsewhere)."""

    def __init__(self) -> None:
        self._start: tuple[int, float, float, float] | None = None

    @staticmethod
    def _read() -> tuple[int, float, float, float] | None:
        if resource is None:
            return None
        try:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            with open("/proc/stat") as f:
                fields = f.readline().split()[1:]
            hz = float(os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy time.
        ticks = [float(v) for v in fields[:8]]
        busy_s = (sum(ticks) - ticks[3] - ticks[4]) / hz
        return usage.ru_minflt, usage.ru_utime + usage.ru_stime, busy_s, time.monotonic()

    def start(self) -> None:
        """Take the first reading."""
        self._start = self._read()

    def stop(self, n_calls: int) -> tuple[float | None, float | None]:
        """(minor faults per call, other processes' CPU in cores) since start()."""
        end = self._read()
        if self._start is None or end is None or n_calls <= 0:
            return None, None
        faults = (end[0] - self._start[0]) / n_calls
        wall = end[3] - self._start[3]
        other = (end[2] - self._start[2]) - (end[1] - self._start[1])
        # /proc/stat ticks are 10 ms: over a short run the estimate is coarse, so clamp at zero.
        return faults, max(0.0, other / wall) if wall > 0 else None


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (numpy's default 'linear' method)."""
    if not sorted_values:
        raise ValueError("quantile of an empty sequence")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@functools.lru_cache(maxsize=4096)
def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """0-based ranks (lo, hi) of the sorted sample that bound its median with >= `confidence`; None if n is too small.

    The number of samples below the true median is Binomial(n, 1/2), whatever the distribution: with k the
    largest count such that P(X < k) <= (1 - confidence) / 2, the interval [x_(k), x_(n-k+1)] (1-based)
    covers the median with at least `confidence`. Exact integer arithmetic, cached per n.
    """
    tail = (1 - confidence) / 2
    total = 1 << n
    below = 0  # sum of comb(n, i) for i < k: P(X < k) * 2**n
    k = 0
    while k <= n // 2 and (below + math.comb(n, k)) / total <= tail:
        below += math.comb(n, k)
        k += 1
    if k == 0:
        return None
    return k - 1, n - k


def median_ci_rel(sorted_values: Sequence[float], median: float, confidence: float = CONFIDENCE) -> float:
    """Half-width of the distribution-free CI on the median over the median (larger side); inf if undefined."""
    ranks = median_ci_ranks(len(sorted_values), confidence)
    if ranks is None or median <= 0:
        return math.inf
    lo, hi = ranks
    return max(median - sorted_values[lo], sorted_values[hi] - median) / median


def summarize(
    per_call_times: Sequence[float],
    calls_per_block: int = 1,
    warmup_calls: int = 0,
    warmup_s: float = 0.0,
    precision_target: float | None = None,
) -> TimingStats:
    """Statistics over per-block per-call times (one value per block)."""
    values = sorted(per_call_times)
    median = quantile(values, 0.5)
    iqr = quantile(values, 0.75) - quantile(values, 0.25)
    return TimingStats(
        median_s=median,
        iqr_s=iqr,
        p10_s=quantile(values, 0.10),
        min_s=values[0],
        mean_s=sum(values) / len(values),
        n_calls=len(values) * calls_per_block,
        n_blocks=len(values),
        warmup_calls=warmup_calls,
        warmup_s=warmup_s,
        calls_per_block=calls_per_block,
        times_s=tuple(per_call_times),
        median_ci_rel=median_ci_rel(values, median),
        precision_target=precision_target,
    )


def warm_up(
    fn: Callable[[], Any],
    min_calls: int = WARMUP_MIN_CALLS,
    min_s: float = WARMUP_MIN_S,
    clock: Clock = time.perf_counter,
    sync: Sync = _no_sync,
) -> tuple[int, float, float]:
    """Call `fn` for >= `min_calls` calls and >= `min_s` s; return (calls, seconds, steady per-call estimate).

    The estimate is the mean of the second half of the warm-up calls: the first calls are the slow ones.
    """
    sync()
    start = clock()
    stamps: list[float] = []
    while len(stamps) < max(1, min_calls) or stamps[-1] - start < min_s:
        fn()
        sync()
        stamps.append(clock())
    calls = len(stamps)
    half = calls // 2
    estimate = stamps[-1] - start if half == 0 else (stamps[-1] - stamps[half - 1]) / (calls - half)
    return calls, stamps[-1] - start, estimate


def calls_for_block(per_call_s: float, block_target_s: float = BLOCK_TARGET_S) -> int:
    """Calls per block so that one block lasts at least `block_target_s` (at least one call)."""
    if per_call_s <= 0:
        # A clock too coarse to see one call: fall back to a large block.
        return 1000
    return max(1, math.ceil(block_target_s / per_call_s))


def stop_reason(
    per_call: Sequence[float], total_s: float, budget: TimingBudget, min_blocks: int = MIN_BLOCKS
) -> str | None:
    """Why timing stops after this block (a STOP_* value), or None to go on: floor and block count first."""
    precision = budget.precision
    if len(per_call) < min_blocks or total_s < budget.min_run_time:
        return None
    if precision is None:
        return STOP_FIXED
    if total_s >= budget.max_run_time:
        return STOP_BUDGET
    values = sorted(per_call)
    width = median_ci_rel(values, quantile(values, 0.5))
    if width <= precision:
        return STOP_PRECISION
    # The CI's width falls as 1/sqrt(blocks): reaching `precision` takes about total * (width / precision)^2.
    if total_s >= FUTILITY_AFTER_S and total_s * (width / precision) ** 2 > budget.max_run_time:
        return STOP_FUTILE
    return None


def time_blocks(
    fn: Callable[[], Any],
    calls_per_block: int,
    budget: TimingBudget,
    min_blocks: int = MIN_BLOCKS,
    clock: Clock = time.perf_counter,
    sync: Sync = _no_sync,
) -> tuple[list[float], str]:
    """Time blocks of `calls_per_block` calls until stop_reason() says why; (per-call time of each block, why)."""
    per_call: list[float] = []
    total = 0.0
    reason: str | None = None
    # Like timeit, keep the cyclic GC out of the timed region: a collection lands in one block at random.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while (reason := stop_reason(per_call, total, budget, min_blocks)) is None:
            sync()
            t0 = clock()
            for _ in range(calls_per_block):
                fn()
            sync()
            block = clock() - t0
            total += block
            per_call.append(block / calls_per_block)
    finally:
        if gc_was_enabled:
            gc.enable()
    return per_call, reason or ""


def time_callable(
    fn: Callable[[], Any],
    budget: TimingBudget | None = None,
    clock: Clock | None = None,
    sync: Sync | None = None,
    block_target_s: float = BLOCK_TARGET_S,
    min_blocks: int = MIN_BLOCKS,
) -> TimingStats:
    """Warm up `fn`, then time it in blocks until its median is known to the budget's precision (or it is spent).

    The one timing protocol every backend uses; see the module docstring for the stop rule.
    """
    budget = budget or TimingBudget()
    clock = clock or time.perf_counter
    sync = sync or _no_sync
    n_warm, warm_elapsed, per_call_estimate = warm_up(fn, budget.warmup_calls, budget.warmup_s, clock, sync)
    cpb = calls_for_block(per_call_estimate, block_target_s)
    probe = SystemProbe()
    probe.start()
    times, stop = time_blocks(fn, cpb, budget, min_blocks, clock, sync)
    faults, other = probe.stop(len(times) * cpb)
    stats = summarize(times, cpb, n_warm, warm_elapsed, budget.precision)
    return dataclasses.replace(stats, minor_faults_per_call=faults, other_cpu_cores=other, stop=stop)
