"""The backend interface: a Backend prepares a module for one input shape; Prepared runs and times it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from attnbench.errors import InvalidCaseError
from attnbench.memory import PeakMemory
from attnbench.timing import (
    DEFAULT_MAX_RUN_TIME,
    DEFAULT_MIN_RUN_TIME,
    DEFAULT_PRECISION,
    WARMUP_MIN_CALLS,
    WARMUP_MIN_S,
    Clock,
    Sync,
    TimingStats,
    time_callable,
)

#: Result status codes other than "ok"; each comes with a one-line reason.
STATUS_OK = "ok"
STATUS_OOM = "oom"
#: A combination the backend cannot run (a dtype, training, torch.compile, channels_last), with the reason.
STATUS_SKIPPED = "skipped"
STATUS_EXPORT_FAILED = "export_failed"
STATUS_SESSION_FAILED = "session_failed"
STATUS_PARITY_FAILED = "parity_failed"
STATUS_COMPILE_FAILED = "compile_failed"

#: The modes a case runs in: "infer" (eval, no grad) and "train" (train mode, forward + backward of output.sum()).
MODES = ("infer", "train")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class Scenario:
    """How the module runs beyond dtype and threads: mode, memory format, and whether it is compiled."""

    mode: str = "infer"
    channels_last: bool = False
    compile: bool = False


class CaseFailed(Exception):
    """A case that a backend could not measure; measure() turns it into a Measurement with this status."""

    def __init__(self, status: str, reason: str, **details: Any) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        #: Partial results worth keeping in the row (exporter, parity_max_abs, extra, ...).
        self.details = details


def torch_dtype(dtype: str, module_name: str = "measure") -> torch.dtype:
    """The torch dtype for a dtype name; unknown names raise InvalidCaseError listing the valid ones."""
    try:
        return DTYPES[dtype]
    except KeyError:
        raise InvalidCaseError(module_name, "dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}") from None


def make_input(
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A standard-normal input from a fixed seed, drawn in float32 on the CPU so all backends see the same."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    return x.to(device=device, dtype=dtype)


class Prepared(ABC):
    """A module made ready for one backend and input shape: run it, time it, read its peak memory."""

    backend: str = ""
    threads: int = 1
    dtype: str = "float32"

    def __init__(self) -> None:
        #: Which ONNX exporter produced the graph ("dynamo" or "legacy"); None for eager backends.
        self.exporter: str | None = None
        #: Largest |backend - PyTorch| over the checked shapes (ORT); None when not checked.
        self.parity_max_abs: float | None = None
        self.parity_checked_shapes: tuple[tuple[int, ...], ...] = ()
        #: Backend-specific facts for the record (threads actually set, providers, exporter notes, ...).
        self.extra: dict[str, Any] = {}

    @abstractmethod
    def run_once(self) -> Any:
        """One forward on the prepared input (outside any timing)."""

    @abstractmethod
    def _timed_callable(self) -> tuple[Callable[[], Any], Sync | None]:
        """The zero-argument callable to time, with its sync hook (None on the host)."""

    def _timing_context(self) -> Any:
        """Context the timed calls run in (inference_mode for PyTorch backends)."""
        return torch.inference_mode()

    def time(
        self,
        min_run_time: float = DEFAULT_MIN_RUN_TIME,
        warmup_s: float = WARMUP_MIN_S,
        warmup_calls: int = WARMUP_MIN_CALLS,
        clock: Clock | None = None,
        precision: float | None = DEFAULT_PRECISION,
        max_run_time: float = DEFAULT_MAX_RUN_TIME,
    ) -> TimingStats:
        """Latency of one forward with the shared protocol (warm-up, then blocks until the median is known)."""
        fn, sync = self._timed_callable()
        with self._timing_context():
            return time_callable(
                fn,
                min_run_time=min_run_time,
                warmup_s=warmup_s,
                warmup_calls=warmup_calls,
                clock=clock,
                sync=sync,
                precision=precision,
                max_run_time=max_run_time,
            )

    @abstractmethod
    def peak_memory(self) -> PeakMemory:
        """Peak bytes allocated during one warmed-up forward, with what the number counts."""

    def close(self) -> None:
        """Undo process-wide settings (threads, cudnn flags) and free resources."""
        return None

    def __enter__(self) -> Prepared:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(ABC):
    """One way to run a module (PyTorch CPU, PyTorch CUDA, ONNX Runtime); registered by name."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: dtypes this backend runs; others give a "skipped" result with the reason.
    dtypes: ClassVar[tuple[str, ...]] = tuple(DTYPES)
    #: Modes, and whether torch.compile and channels_last apply; a backend opts in to each.
    modes: ClassVar[tuple[str, ...]] = ("infer",)
    compiles: ClassVar[bool] = False
    channels_last: ClassVar[bool] = False
    #: One line per refusal, saying why this backend cannot run it.
    why_not: ClassVar[dict[str, str]] = {}

    def refusal(self, dtype: str, scenario: Scenario) -> str | None:
        """Why this backend cannot run `dtype` in `scenario` (None when it can)."""
        if dtype not in self.dtypes:
            return f"backend {self.name!r} runs {', '.join(self.dtypes)}, not {dtype}"
        if scenario.mode not in self.modes:
            return self.why_not.get("train", f"backend {self.name!r} runs {', '.join(self.modes)} only")
        if scenario.compile and not self.compiles:
            return self.why_not.get("compile", f"backend {self.name!r} does not run torch.compile")
        if scenario.channels_last and not self.channels_last:
            return self.why_not.get("channels_last", f"backend {self.name!r} has no channels_last memory format")
        return None

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, what will run) or (False, why not) on this machine."""

    @abstractmethod
    def prepare(
        self,
        module: nn.Module,
        input_shape: Sequence[int],
        dtype: str = "float32",
        threads: int = 1,
        seed: int = 0,
        scenario: Scenario | None = None,
    ) -> Prepared:
        """Make `module` ready to run on `input_shape` in `scenario`; a case it cannot run raises CaseFailed."""

    def cleanup_after_failure(self) -> None:
        """Release what a failed case may have left behind (CUDA: the caching allocator's blocks)."""
        return None
