"""PyTorch eager on one CUDA GPU: cudnn.benchmark autotuning in the warm-up, synchronised host timing.

Written from the PyTorch docs and measurement.md; not yet run on a GPU (the CI machine has none). Training,
dtypes, channels_last and torch.compile come from attnbench.backends._torch, shared with the CPU backend.
Timing: each block is bracketed by torch.cuda.synchronize() (the shared protocol's `sync` hook) and read
with the host clock, so a block's time covers all the kernels it queued; blocks of many calls amortise the
synchronisation. Peak memory: synchronize / memory_allocated base / reset_peak_memory_stats / forward /
synchronize / max_memory_allocated - base, with max_memory_reserved reported separately.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from attnbench.backends._torch import TorchBackend, TorchPrepared
from attnbench.backends.base import Prepared
from attnbench.memory import CUDA_TRAIN_PEAK_METHOD, PeakMemory, cuda_peak
from attnbench.results import Scenario
from attnbench.timing import Sync


def _device_facts(device: torch.device) -> dict[str, Any]:
    """GPU name, capability, memory and driver facts for the record."""
    props = torch.cuda.get_device_properties(device)
    facts: dict[str, Any] = {
        "gpu_name": props.name,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_total_memory_bytes": int(props.total_memory),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
    try:
        facts["gpu_clock_mhz"] = torch.cuda.clock_rate(device)
        facts["gpu_power_draw_mw"] = torch.cuda.power_draw(device)
    except Exception:  # needs pynvml; optional facts
        pass
    return facts


def gpu_free_bytes() -> int | None:
    """Free memory of the current GPU (every process and allocator counted), None without one."""
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


class CudaPrepared(TorchPrepared):
    """A copy of the module on the GPU for the scenario, run with cudnn.benchmark on."""

    backend = "cuda"

    def __init__(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int) -> None:
        super().__init__()
        threads = self.threads = scenario.threads
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.extra = {
            "cudnn_benchmark": True,
            "host_threads": threads,
            "graph_mode": "torch.compile (inductor)" if scenario.compile else "eager",
            **_device_facts(self.device),
        }
        try:
            # Always a copy (see TorchPrepared._setup), so the caller's CPU float32 module stays where it was.
            with self.active():
                self._setup(module, input_shape, seed, scenario)
        except BaseException:
            # An OOM while copying or a failed compile: measure() never gets a Prepared to close.
            self.close()
            raise

    @contextlib.contextmanager
    def _settings(self) -> Iterator[None]:
        """cudnn.benchmark on and the case's host threads for the block, then back to what they were."""
        before = torch.backends.cudnn.benchmark
        # cudnn.benchmark autotunes convolution algorithms on the first calls of each shape: the warm-up
        # pays for it, the timed blocks do not.
        torch.backends.cudnn.benchmark = True
        try:
            with self._threads():
                yield
        finally:
            torch.backends.cudnn.benchmark = before

    def active(self) -> contextlib.AbstractContextManager[Any]:
        return self._settings()

    def _sync(self) -> Sync | None:
        return functools.partial(torch.cuda.synchronize, self.device)

    def peak_memory(self) -> PeakMemory:
        """Caching-allocator peak of one warmed-up step (the timing warm-up made the workspaces)."""
        mem = self._profiled_step(functools.partial(cuda_peak, device=self.device))
        if self.train:
            mem = dataclasses.replace(mem, method=CUDA_TRAIN_PEAK_METHOD)
        return mem

    def close(self) -> None:
        """Drop the GPU copy and return its cached blocks."""
        self._restore_module()
        torch.cuda.empty_cache()


class CudaBackend(TorchBackend):
    """PyTorch eager on the current CUDA device."""

    name = "cuda"
    description = "PyTorch on a CUDA GPU (cudnn.benchmark, synchronised timing, fp32/fp16/bf16, train, compile)"
    device = "cuda"
    memory_name = "GPU memory"
    marker = "^"

    def available(self) -> tuple[bool, str]:
        """True with the GPU's name, or False with why there is no usable GPU."""
        if not torch.backends.cuda.is_built():
            return False, f"this torch build ({torch.__version__}) has no CUDA support"
        if not torch.cuda.is_available():
            return False, f"no CUDA device visible (torch {torch.__version__}, CUDA {torch.version.cuda})"
        return True, torch.cuda.get_device_name(torch.cuda.current_device())

    def prepare(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int = 0) -> Prepared:
        """Copy `module` to the GPU for the scenario; an OOM here comes back to measure() as status "oom"."""
        return CudaPrepared(module, input_shape, scenario, seed)

    def free_memory(self) -> int | None:
        """Free memory of the current GPU."""
        return gpu_free_bytes()

    def is_oom(self, exc: BaseException) -> bool:
        """The caching allocator's out-of-memory error."""
        return isinstance(exc, torch.OutOfMemoryError)

    def cleanup_after_failure(self) -> None:
        """Return cached blocks after an OOM so the next case starts from a clean allocator."""
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
