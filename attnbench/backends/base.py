"""The backend interface: a Backend knows its facts and prepares a module for one case; Prepared runs and times it.

Everything the rest of attnbench needs to know about a backend is a fact of the Backend (its device, which
scenarios it runs and why not, which scenario fields it ignores, its free memory for the guard, whether the
allocator states and instruction counts apply, the name of its parity check, its plot marker), so no code
outside backends/ asks for a backend by name. A new backend is a subclass registered in attnbench.backends (or
through the `attnbench.backends` entry point group, value "module:Class").
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from attnbench.errors import InvalidCaseError
from attnbench.memory import PeakMemory
from attnbench.results import (
    COMPILE_FAILED,
    DTYPES,
    EXPORT_FAILED,
    OK,
    OOM,
    PARITY_FAILED,
    SCENARIO_DEFAULTS,
    SESSION_FAILED,
    SKIPPED,
    Case,
    Scenario,
)
from attnbench.timing import Clock, Lane, Sync, TimingBudget, TimingStats, time_lanes

# Statuses a backend reports, under the names its code has always used (the vocabulary is attnbench.results).
STATUS_OK, STATUS_OOM, STATUS_SKIPPED = OK, OOM, SKIPPED
STATUS_EXPORT_FAILED, STATUS_SESSION_FAILED = EXPORT_FAILED, SESSION_FAILED
STATUS_PARITY_FAILED, STATUS_COMPILE_FAILED = PARITY_FAILED, COMPILE_FAILED

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
#: The one free-memory reading of the host (MemAvailable), for backends that allocate in RAM.
MEMINFO = "/proc/meminfo"
#: Words in an error message that mean memory ran out, from any allocator (torch, CUDA, ONNX Runtime, the OS).
OOM_MARKERS = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",  # the OS's own words (ENOMEM): "[Errno 12] Cannot allocate memory"
    "not enough memory",
    "failed to allocate memory",
)
#: How a host-timed call is synchronised, for backends that compute where the host clock cannot see.
SYNC_PER_CALL = "per call: the host clock reads after the device finished each call"


class CaseFailed(Exception):
    """A case that a backend could not measure; measure() turns it into a Measurement with this status."""

    def __init__(self, status: str, reason: str, **details: Any) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        #: Partial results worth keeping in the row (exporter, parity_max_abs, extra, ...).
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:  # travels back from a worker process whole
        return _case_failed, (type(self), self.status, self.reason, self.details)


def _case_failed(cls: type[CaseFailed], status: str, reason: str, details: dict[str, Any]) -> CaseFailed:
    return cls(status, reason, **details)


def out_of_memory(exc: BaseException) -> bool:
    """True for an out-of-memory error, or one raised from it: torch's or Python's type, or a message that says so.

    ONNX Runtime's exceptions derive from Exception, not RuntimeError, so its OOM is known by its message; dynamo
    wraps an error of a compiled call in its own type, naming the original in the message and `inner_exception`.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError | torch.OutOfMemoryError):
            return True
        if any(marker in str(current).lower() for marker in OOM_MARKERS):
            return True
        inner = getattr(current, "inner_exception", None)
        current = current.__cause__ or (inner if isinstance(inner, BaseException) else None)
    return False


def torch_dtype(dtype: str, module_name: str = "measure") -> torch.dtype:
    """The torch dtype for a dtype name; unknown names raise InvalidCaseError listing the valid ones."""
    try:
        return TORCH_DTYPES[dtype]
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


def host_available_bytes() -> int | None:
    """Free RAM the next case can use (MemAvailable), None where the kernel does not say."""
    try:
        with open(MEMINFO, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class Job:
    """Work that cases need before prepare() and a worker process can do: `fn(module, *args)` there.

    `fn` is named "package.module:function"; the worker builds the module again from the case's name and the
    run's seed and passes it first. Jobs with equal `key` are one job: cases at several resolutions may share it.
    """

    key: str
    fn: str
    args: tuple[Any, ...]


class Prepared(ABC):
    """A module made ready for one backend and input shape: run it, time it, read its peak memory."""

    backend: str = ""
    threads: int = 1
    dtype: str = "float32"

    def __init__(self) -> None:
        #: Which ONNX exporter produced the graph ("dynamo" or "legacy"); None for eager backends.
        self.exporter: str | None = None
        #: Largest |backend - PyTorch| over the checked shapes (ORT, torch.compile); None when not checked.
        self.parity_max_abs: float | None = None
        self.parity_checked_shapes: tuple[tuple[int, ...], ...] = ()
        #: Backend-specific facts for the record (threads actually set, providers, exporter notes, ...).
        self.extra: dict[str, Any] = {}
        #: torch.compile: wall time of the first (compiling) call, apart from the timing; None when not compiled.
        self.compile_s: float | None = None

    @abstractmethod
    def run_once(self) -> Any:
        """One forward on the prepared input (outside any timing)."""

    @abstractmethod
    def timed_callable(self) -> tuple[Callable[[], Any], Sync | None]:
        """The zero-argument callable to time, with its sync hook (None on the host)."""

    def timing_context(self) -> Any:
        """Context the timed calls run in (inference_mode for PyTorch backends)."""
        return torch.inference_mode()

    def active(self) -> contextlib.AbstractContextManager[Any]:
        """The process-wide settings this case runs under (torch's threads...), set for a block and restored after.

        Many prepared cases live at once while their timings take turns (attnbench.timing.time_lanes): none may
        leave its settings behind for the next one.
        """
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Its settings and its timing context: what every call of this case runs under."""
        with self.active(), self.timing_context():
            yield

    def lane(self, budget: TimingBudget) -> Lane:
        """This case as a lane of a timing rotation."""
        fn, sync = self.timed_callable()
        return Lane(fn, budget, sync, self.running)

    def time(self, budget: TimingBudget | None = None, clock: Clock | None = None) -> TimingStats:
        """Latency of one step with the shared protocol (warm-up, then blocks until the median is known)."""
        lane = self.lane(budget or TimingBudget())
        time_lanes([lane], clock)
        if lane.error is not None:
            raise lane.error
        return lane.stats()

    @abstractmethod
    def peak_memory(self) -> PeakMemory:
        """Peak bytes allocated during one warmed-up step, with what the number counts."""

    def device_busy_s(self) -> float | None:
        """Seconds per call the device was busy (kernels, copies) on a warmed-up call; None on the host."""
        return None

    def close(self) -> None:
        """Undo process-wide settings (threads, cudnn flags) and free resources."""
        return None

    def __enter__(self) -> Prepared:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(ABC):
    """One way to run a module (PyTorch CPU, PyTorch CUDA, ONNX Runtime) and every fact the rest of attnbench needs."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: The hardware it computes on ("cpu" or "cuda"): whose roof its rows sit under.
    device: ClassVar[str] = "cpu"
    #: dtypes this backend runs; others give a "skipped" result with the reason.
    dtypes: ClassVar[tuple[str, ...]] = DTYPES
    #: Modes, and whether torch.compile and channels_last apply; a backend opts in to each.
    modes: ClassVar[tuple[str, ...]] = ("infer",)
    compiles: ClassVar[bool] = False
    channels_last: ClassVar[bool] = False
    #: What the memory guard calls the memory free_memory() reads.
    memory_name: ClassVar[str] = "RAM"
    #: Whether torch.autocast applies (a PyTorch backend).
    autocasts: ClassVar[bool] = False
    #: One line per refusal, saying why this backend cannot run it ("train", "compile", ...).
    why_not: ClassVar[dict[str, str]] = {}
    #: Scenario fields that do not concern this backend: its cases take their defaults (no duplicate rows).
    ignores: ClassVar[tuple[str, ...]] = ()
    #: Whether the allocator axis applies (glibc pinned or at its defaults, jemalloc, tcmalloc): a PyTorch process
    #: on the host allocates through malloc on every call.
    allocator_states: ClassVar[bool] = False
    #: What the row's parity figure compares ("" when the backend checks none); the report names its column so.
    parity: ClassVar[str] = ""
    #: Marker of its points in plots.
    marker: ClassVar[str] = "x"
    #: Whether torch.profiler sees its operators' times (a timed --breakdown reads them).
    profiles_operators: ClassVar[bool] = False
    #: How a timed call is synchronised with the device it computes on ("" on the host: nothing to wait for).
    sync: ClassVar[str] = ""

    def settle(self, scenario: Scenario) -> Scenario:
        """The scenario as this backend runs it: fields it ignores at their defaults, idle dependants too, and TF32
        off for a bfloat16 or float16 module (it has no float32 matmul to round)."""
        idle = {name: SCENARIO_DEFAULTS[name] for name in self.ignores}
        if scenario.dtype != "float32":
            idle["tf32"] = SCENARIO_DEFAULTS["tf32"]
        return dataclasses.replace(scenario, **idle).settled() if idle else scenario.settled()

    def refusal(self, scenario: Scenario) -> str | None:
        """Why this backend cannot run `scenario` (None when it can); the case becomes a skipped row."""
        if scenario.dtype not in self.dtypes:
            return f"backend {self.name!r} runs {', '.join(self.dtypes)}, not {scenario.dtype}"
        if scenario.mode not in self.modes:
            return self.why_not.get("train", f"backend {self.name!r} runs {', '.join(self.modes)} only")
        if scenario.compile and not self.compiles:
            return self.why_not.get("compile", f"backend {self.name!r} does not run torch.compile")
        if scenario.channels_last and not self.channels_last:
            return self.why_not.get("channels_last", f"backend {self.name!r} has no channels_last memory format")
        if scenario.autocast != "off" and not self.autocasts:
            return self.why_not.get("autocast", f"backend {self.name!r} does not run torch.autocast")
        if scenario.allocator != SCENARIO_DEFAULTS["allocator"] and not self.allocator_states:
            where = (
                "the allocator state is a glibc setting of the PyTorch CPU process"
                if scenario.allocator == "system"
                else f"{scenario.allocator} is loaded with LD_PRELOAD into the PyTorch CPU process"
            )
            return f"{where}; {self.name} does not allocate through it per call"
        return None

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, what will run) or (False, why not) on this machine."""

    def preparing(self, scenario: Scenario) -> str:
        """What prepare() does for `scenario`, in a word a progress bar shows ("exporting", "compiling")."""
        return "preparing"

    @abstractmethod
    def prepare(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int = 0) -> Prepared:
        """Make `module` ready to run on `input_shape` in `scenario`; a case it cannot run raises CaseFailed."""

    def cached(self, cache: Any) -> contextlib.AbstractContextManager[Any]:
        """For the block, keep what this backend prepares slowly (ONNX exports) in `cache` across runs too (an
        attnbench.cache.Cache; None: no cache); nothing by default."""
        return contextlib.nullcontext()

    def offload(self, module: nn.Module, cases: Sequence[Case], seed: int) -> list[Job]:
        """Jobs that would make preparing `cases` (one module setting, at one or more resolutions) quicker, for
        worker processes while this one prepares others (ONNX Runtime: the exports); none by default."""
        return []

    def receive(self, job: Job, answer: Any) -> None:
        """A job's answer, or the exception it ended with, handed back in this process before prepare()."""
        return None

    def free_memory(self) -> int | None:
        """Bytes the next case can allocate where this backend computes (None: unknown); the memory guard reads it."""
        return host_available_bytes()

    def memory_estimate(self, eager_bytes: int | None, case: Case) -> int | None:
        """The case's estimated peak on this backend, from the eager PyTorch estimate at the case's batch."""
        return eager_bytes

    def counts_instructions(self, case: Case) -> bool:
        """Whether the valgrind pass counts this case's instructions (PyTorch eager, float32, 1 thread, defaults)."""
        return False

    def is_oom(self, exc: BaseException) -> bool:
        """True when `exc` is this backend's out-of-memory error."""
        return False

    def cleanup_after_failure(self) -> None:
        """Release what a failed case may have left behind (CUDA: the caching allocator's blocks)."""
        return None

    def facts(self) -> dict[str, Any]:
        """What a report needs to know of this backend without it installed: recorded in the environment."""
        return {
            "device": self.device,
            "marker": self.marker,
            "parity": self.parity,
            "ignores": list(self.ignores),
            "sync": self.sync,
        }
