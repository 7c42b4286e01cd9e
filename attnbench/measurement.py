"""measure(): latency and peak memory of one module on one backend, in one scenario, as one frozen Measurement.

Conventions: 1 intra-op thread unless the scenario asks for more; inputs are standard normal from a fixed seed;
the allocator is pinned once per process (attnbench.memory.pin_allocator) and recorded; a case a backend cannot
run (OOM, failed export or compile, failed parity, a scenario it does not run) is a Measurement with a status and
a reason, not an exception. Asking for a backend this machine lacks raises BackendUnavailableError.
A Measurement makes its own row (`row_values`): the runner adds the counts and the case's identity.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from attnbench.backends import get_backend
from attnbench.backends.base import Backend, CaseFailed, out_of_memory
from attnbench.errors import BackendUnavailableError, InvalidCaseError
from attnbench.memory import PeakMemory, pin_allocator
from attnbench.results import OK, OOM, SKIPPED, Scenario
from attnbench.timing import CONTENTION_THRESHOLD, LAUNCH_BOUND_FRACTION, Clock, TimingBudget, TimingStats

#: What measure() measures unless told otherwise.
MEASURES = ("latency", "memory")


@dataclass(frozen=True)
class Measurement:
    """What one backend measured for one module and input shape (raw units: seconds, bytes)."""

    backend: str
    status: str
    reason: str
    timing: TimingStats | None
    peak_bytes: int | None
    #: What peak_bytes counts (or why it is None).
    peak_method: str
    #: CUDA caching-allocator max_memory_reserved() (footprint incl. cached blocks); None elsewhere.
    reserved_bytes: int | None
    #: Largest |backend - PyTorch eager| over parity_checked_shapes (ORT, torch.compile); None when not checked.
    parity_max_abs: float | None
    parity_checked_shapes: tuple[tuple[int, ...], ...]
    #: ORT: "dynamo" or "legacy" (torch.onnx.export dynamo=False); None for eager backends.
    exporter: str | None
    input_shape: tuple[int, ...]
    allocator: dict[str, Any]
    scenario: Scenario = field(default_factory=Scenario)
    extra: dict[str, Any] = field(default_factory=dict)
    #: torch.compile: wall time of the first (compiling) call, not part of the timing; None when not compiled.
    compile_s: float | None = None
    #: Seconds per call the device was busy (kernels, copies) on a warmed-up call; None on the host, or untimed.
    device_busy_s: float | None = None

    @property
    def ok(self) -> bool:
        """True when the case was measured."""
        return self.status == OK

    def row_values(self, batch: int) -> dict[str, Any]:
        """The columns of a Result this measurement fills (extra as a dict, the runner serialises it)."""
        values: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "compile_s": self.compile_s,
            "peak_mem_bytes": self.peak_bytes,
            "peak_mem_method": self.peak_method,
            "reserved_mem_bytes": self.reserved_bytes,
            "parity_max_abs": self.parity_max_abs,
            "exporter": self.exporter or "",
        }
        if self.timing is not None:
            values.update(latency_values(self.timing, batch))
            share = self.busy_share
            values["latency_launch_bound"] = None if share is None else share < LAUNCH_BOUND_FRACTION
        return values

    @property
    def busy_share(self) -> float | None:
        """The device's busy time over the median call (None without both): well under 1, the launches set the time."""
        if self.device_busy_s is None or self.timing is None or not self.timing.median_s > 0:
            return None
        return self.device_busy_s / self.timing.median_s

    def extra_values(self) -> dict[str, Any]:
        """The row's `extra`: the allocator settings, the backend's details and how the timing went."""
        extra = {"allocator": self.allocator, **self.extra}
        if self.timing is not None:
            t = self.timing
            # Seconds inside the timing protocol (warm-up + timed blocks): the rest of a row's time is overhead.
            extra.update(
                timing_loop_s=t.warmup_s + t.mean_s * t.n_calls,
                other_cpu_cores=t.other_cpu_cores,
                precision_target=t.precision_target,
                timing_blocks=t.n_blocks,
                timing_stop=t.stop,
            )
        if self.device_busy_s is not None:
            extra.update(device_busy_s=self.device_busy_s, device_busy_share=self.busy_share)
        return extra


def latency_values(timing: TimingStats, batch: int) -> dict[str, Any]:
    """The latency columns of a row from a TimingStats."""
    median, ci = timing.median_s, timing.median_ci_rel
    return {
        "latency_median_s": median,
        "latency_iqr_s": timing.iqr_s,
        "latency_p10_s": timing.p10_s,
        "latency_min_s": timing.min_s,
        "latency_calls": timing.n_calls,
        "latency_noisy": timing.noisy,
        "latency_contended": (timing.other_cpu_cores or 0.0) > CONTENTION_THRESHOLD,
        "throughput_per_s": batch / median if median and median > 0 else None,
        "minor_faults_per_call": timing.minor_faults_per_call,
        "latency_ci_rel": ci if ci is not None and math.isfinite(ci) else None,
    }


def is_oom(exc: BaseException, backend: Backend | None = None) -> bool:
    """True for an out-of-memory error: the backend's own type, torch's or Python's, or one that says so."""
    return out_of_memory(exc) or (backend is not None and backend.is_oom(exc))


#: Who hears the stages of a measure() call ("exporting", "timing", "memory"): the runner's sink, set by `stages`.
_LISTENER: ContextVar[Callable[[str], None] | None] = ContextVar("attnbench_stage_listener", default=None)


@contextmanager
def stages(listener: Callable[[str], None]) -> Iterator[None]:
    """Within this block, measure() names each stage it enters to `listener` (a progress bar names it)."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def _stage(name: str) -> None:
    listener = _LISTENER.get()
    if listener is not None:
        listener(name)


def _check_args(module: nn.Module, input_shape: Sequence[int], budget: TimingBudget) -> tuple[int, ...]:
    name = type(module).__name__
    shape = tuple(input_shape)
    if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise InvalidCaseError(name, "input_shape", f"must be positive ints, got {input_shape!r}")
    problem = budget.problem()
    if problem:
        raise InvalidCaseError(name, "budget", problem)
    return shape


def measure(
    module: nn.Module,
    input_shape: Sequence[int],
    backend: str = "cpu",
    scenario: Scenario | None = None,
    budget: TimingBudget | None = None,
    metrics: Collection[str] = MEASURES,
    clock: Clock | None = None,
    seed: int = 0,
) -> Measurement:
    """Time one step of `module` on `input_shape` (and read its peak memory) on `backend`, in `scenario`.

    A step is a forward (mode "infer") or a forward + backward (mode "train"). Timing follows `budget`
    (attnbench.timing): a warm-up, then blocks until the 95% CI on the median is within its precision or its
    time is spent. `metrics` picks "latency" and/or "memory"; `clock` replaces time.perf_counter (tests).
    Raises BackendUnavailableError for a backend this machine cannot run; a scenario the backend cannot run is
    status "skipped", other failures a status with a reason.
    """
    scenario, budget = scenario or Scenario(), budget or TimingBudget()
    shape = _check_args(module, input_shape, budget)
    allocator = pin_allocator()
    be = get_backend(backend)
    ok, why = be.available()
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {why}")
    base = Measurement(
        backend=backend,
        status=SKIPPED,
        reason="",
        timing=None,
        peak_bytes=None,
        peak_method="",
        reserved_bytes=None,
        parity_max_abs=None,
        parity_checked_shapes=(),
        exporter=None,
        input_shape=shape,
        allocator=allocator,
        scenario=scenario,
    )
    refusal = be.refusal(scenario)
    if refusal is not None:
        return _failed(base, SKIPPED, refusal)
    failure = _prepare_and_run(be, module, base, budget, metrics, clock, seed)
    if isinstance(failure, Measurement):
        return failure
    # Outside the handler: its traceback no longer holds the failed step's tensors, so they can be freed.
    be.cleanup_after_failure()
    return _failed(base, *failure)


def _failed(base: Measurement, status: str, reason: str, details: dict[str, Any] | None = None) -> Measurement:
    """The measurement of a case that did not run through: its status, reason and what it got as far as."""
    details = details or {}
    return dataclasses.replace(
        base,
        status=status,
        reason=reason,
        parity_max_abs=details.get("parity_max_abs"),
        parity_checked_shapes=tuple(details.get("parity_checked_shapes", ())),
        exporter=details.get("exporter"),
        extra=dict(details.get("extra", {})),
    )


def _prepare_and_run(
    be: Backend,
    module: nn.Module,
    base: Measurement,
    budget: TimingBudget,
    metrics: Collection[str],
    clock: Clock | None,
    seed: int,
) -> Measurement | tuple[str, str, dict[str, Any]]:
    """The measurement, or (status, reason, details) of the failure: the caller cleans up outside the handler."""
    t0 = time.perf_counter()
    _stage(be.preparing(base.scenario))
    try:
        prepared = be.prepare(module, base.input_shape, base.scenario, seed)
    except CaseFailed as exc:
        return exc.status, exc.reason, exc.details
    except Exception as exc:
        if not is_oom(exc, be):
            raise
        return OOM, f"out of memory while preparing: {' '.join(str(exc).split())[:300]}", {}
    prepare_s = time.perf_counter() - t0
    try:
        with prepared:
            if "latency" in metrics:
                _stage("timing")
            timing = prepared.time(budget, clock) if "latency" in metrics else None
            # Right after the timed calls, so the device is as warm as the timing found it.
            busy = prepared.device_busy_s() if timing is not None else None
            t_mem = time.perf_counter()
            if "memory" in metrics:
                _stage("memory")
            mem = prepared.peak_memory() if "memory" in metrics else PeakMemory(None, "not requested")
            memory_s = time.perf_counter() - t_mem
    except CaseFailed as exc:
        return exc.status, exc.reason, {**exc.details, "exporter": prepared.exporter}
    except Exception as exc:
        if not is_oom(exc, be):
            raise
        return OOM, f"out of memory while running: {' '.join(str(exc).split())[:300]}", {}
    return dataclasses.replace(
        base,
        status=OK,
        timing=timing,
        peak_bytes=mem.peak_bytes,
        peak_method=mem.method,
        reserved_bytes=mem.reserved_bytes,
        parity_max_abs=prepared.parity_max_abs,
        parity_checked_shapes=prepared.parity_checked_shapes,
        exporter=prepared.exporter,
        extra={"prepare_s": prepare_s, "memory_s": memory_s, "seed": seed, **prepared.extra},
        compile_s=prepared.compile_s,
        device_busy_s=busy,
    )
