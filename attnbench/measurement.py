"""measure(): latency and peak memory of one module on one backend, as one frozen Measurement.

Conventions: 1 intra-op thread unless asked; inputs are standard normal from a fixed seed; the allocator is
pinned once per process (attnbench.memory.pin_allocator) and recorded; a case a backend cannot run (OOM,
failed export or compile, failed parity, a dtype or mode it does not run) is a Measurement with a status and
a reason, not an exception. Asking for a backend this machine lacks raises BackendUnavailableError.
A scenario beyond dtype and threads: `mode` "infer" (eval, no grad) or "train" (forward + backward of
output.sum(), see attnbench.backends._torch), `channels_last`, and `compile` (torch.compile, inductor; its
compile time is `compile_s`, apart from the timing).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnbench.backends import get_backend
from attnbench.backends.base import MODES, STATUS_OK, STATUS_OOM, STATUS_SKIPPED, CaseFailed, Scenario, torch_dtype
from attnbench.errors import BackendUnavailableError, InvalidCaseError
from attnbench.memory import PeakMemory, pin_allocator
from attnbench.timing import (
    DEFAULT_MAX_RUN_TIME,
    DEFAULT_MIN_RUN_TIME,
    DEFAULT_PRECISION,
    WARMUP_MIN_CALLS,
    WARMUP_MIN_S,
    Clock,
    TimingStats,
)

#: Default intra-op thread count: 1 is what a shared 2-core CI machine measures reproducibly.
DEFAULT_THREADS = 1


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
    #: ORT: max |ORT - PyTorch| over parity_checked_shapes; None when not checked.
    parity_max_abs: float | None
    parity_checked_shapes: tuple[tuple[int, ...], ...]
    #: ORT: "dynamo" or "legacy" (torch.onnx.export dynamo=False); None for eager backends.
    exporter: str | None
    threads: int
    dtype: str
    input_shape: tuple[int, ...]
    allocator: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    scenario: Scenario = field(default_factory=Scenario)
    #: torch.compile: wall time of the first (compiling) call, not part of the timing; None when not compiled.
    compile_s: float | None = None

    @property
    def ok(self) -> bool:
        """True when the case was measured."""
        return self.status == STATUS_OK


_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate memory")


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error from any allocator (torch, CUDA, the OS)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)


def _check_args(
    module: nn.Module,
    input_shape: Sequence[int],
    threads: int,
    min_run_time: float,
    mode: str,
    precision: float | None = None,
    max_run_time: float = DEFAULT_MAX_RUN_TIME,
) -> tuple[int, ...]:
    name = type(module).__name__
    if mode not in MODES:
        raise InvalidCaseError(name, "mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise InvalidCaseError(name, "input_shape", f"must be positive ints, got {input_shape!r}")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InvalidCaseError(name, "threads", f"must be an int >= 1, got {threads!r}")
    if not min_run_time >= 0:
        raise InvalidCaseError(name, "min_run_time", f"must be >= 0 seconds, got {min_run_time!r}")
    if not max_run_time > 0:
        raise InvalidCaseError(name, "max_run_time", f"must be > 0 seconds, got {max_run_time!r}")
    if precision is not None and not 0 < precision < 1:
        raise InvalidCaseError(name, "precision", f"must be a fraction in (0, 1) or None, got {precision!r}")
    return shape


def measure(
    module: nn.Module,
    input_shape: Sequence[int],
    backend: str = "cpu",
    threads: int = DEFAULT_THREADS,
    dtype: str = "float32",
    min_run_time: float = DEFAULT_MIN_RUN_TIME,
    warmup: float = WARMUP_MIN_S,
    memory: bool = True,
    clock: Clock | None = None,
    seed: int = 0,
    warmup_calls: int = WARMUP_MIN_CALLS,
    latency: bool = True,
    precision: float | None = DEFAULT_PRECISION,
    max_run_time: float = DEFAULT_MAX_RUN_TIME,
    mode: str = "infer",
    channels_last: bool = False,
    compile: bool = False,
) -> Measurement:
    """Time one step of `module` on `input_shape` (and read its peak memory) on `backend`.

    A step is a forward (`mode="infer"`) or a forward + backward (`mode="train"`). `warmup` is the minimum
    warm-up in seconds (and at least `warmup_calls` calls). Timing then stops once the 95% CI on the median
    is within +-`precision` of it, after at least `min_run_time` timed seconds, or when `max_run_time` timed
    seconds are spent (`precision=None`: exactly the `min_run_time` budget). `clock` replaces
    time.perf_counter (tests). Raises BackendUnavailableError for a backend this machine cannot run; a
    combination the backend cannot run is status "skipped", other failures a status with a reason.
    """
    shape = _check_args(module, input_shape, threads, min_run_time, mode, precision, max_run_time)
    scenario = Scenario(mode, channels_last, compile)
    torch_dtype(dtype, type(module).__name__)  # an unknown dtype name is a usage error, not a status
    allocator = pin_allocator()
    be = get_backend(backend)
    ok, why = be.available()
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {why}")

    def failed(status: str, reason: str, details: dict[str, Any] | None = None) -> Measurement:
        details = details or {}
        return Measurement(
            backend=backend,
            status=status,
            reason=reason,
            timing=None,
            peak_bytes=None,
            peak_method="",
            reserved_bytes=None,
            parity_max_abs=details.get("parity_max_abs"),
            parity_checked_shapes=tuple(details.get("parity_checked_shapes", ())),
            exporter=details.get("exporter"),
            threads=threads,
            dtype=dtype,
            input_shape=shape,
            allocator=allocator,
            extra=dict(details.get("extra", {})),
            scenario=scenario,
        )

    refusal = be.refusal(dtype, scenario)
    if refusal is not None:
        return failed(STATUS_SKIPPED, refusal)
    t0 = time.perf_counter()
    try:
        prepared = be.prepare(module, shape, dtype=dtype, threads=threads, seed=seed, scenario=scenario)
    except CaseFailed as exc:
        be.cleanup_after_failure()
        return failed(exc.status, exc.reason, exc.details)
    except Exception as exc:
        if not is_oom(exc):
            raise
        be.cleanup_after_failure()
        return failed(STATUS_OOM, f"out of memory while preparing: {' '.join(str(exc).split())[:300]}")
    prepare_s = time.perf_counter() - t0
    try:
        with prepared:
            timing = (
                prepared.time(min_run_time, warmup, warmup_calls, clock, precision, max_run_time) if latency else None
            )
            t_mem = time.perf_counter()
            mem = prepared.peak_memory() if memory else PeakMemory(None, "not requested")
            memory_s = time.perf_counter() - t_mem
    except CaseFailed as exc:
        be.cleanup_after_failure()
        return failed(exc.status, exc.reason, {**exc.details, "exporter": prepared.exporter})
    except Exception as exc:
        if not is_oom(exc):
            raise
        be.cleanup_after_failure()
        return failed(STATUS_OOM, f"out of memory while running: {' '.join(str(exc).split())[:300]}")
    return Measurement(
        backend=backend,
        status=STATUS_OK,
        reason="",
        timing=timing,
        peak_bytes=mem.peak_bytes,
        peak_method=mem.method,
        reserved_bytes=mem.reserved_bytes,
        parity_max_abs=prepared.parity_max_abs,
        parity_checked_shapes=prepared.parity_checked_shapes,
        exporter=prepared.exporter,
        threads=threads,
        dtype=dtype,
        input_shape=shape,
        allocator=allocator,
        extra={"prepare_s": prepare_s, "memory_s": memory_s, "seed": seed, **prepared.extra},
        scenario=scenario,
        compile_s=getattr(prepared, "compile_s", None),
    )
