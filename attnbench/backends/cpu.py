"""PyTorch eager on the CPU: eval mode, inference_mode, an explicit intra-op thread count (1 unless asked)."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from attnbench.backends.base import DTYPES, Backend, Prepared, make_input, torch_dtype
from attnbench.memory import CPU_PEAK_METHOD, PeakMemory, cpu_peak_bytes
from attnbench.timing import Sync


class CpuPrepared(Prepared):
    """A module in eval mode on the CPU with torch's intra-op threads set; close() restores both."""

    backend = "cpu"

    def __init__(self, module: nn.Module, input_shape: Sequence[int], dtype: str, threads: int, seed: int) -> None:
        super().__init__()
        tdtype = torch_dtype(dtype, type(module).__name__)
        self.dtype = dtype
        self.threads = threads
        self._prev_threads = torch.get_num_threads()
        self._original = module
        self._was_training = module.training
        # A reduced-precision run works on a copy, so the caller's float32 module is left as it was.
        self.module = module if tdtype == torch.float32 else copy.deepcopy(module).to(tdtype)
        self.module.eval()
        self.x = make_input(input_shape, tdtype, seed)
        torch.set_num_threads(threads)
        self.extra = {
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "mkl_num_threads_env": os.environ.get("MKL_NUM_THREADS"),
            "grad_mode": "inference_mode",
        }

    def run_once(self) -> Any:
        """One forward under inference_mode."""
        with torch.inference_mode():
            return self.module(self.x)

    def _timed_callable(self) -> tuple[Callable[[], Any], Sync | None]:
        # functools.partial keeps the per-call Python overhead to the module call itself.
        return functools.partial(self.module, self.x), None

    def peak_memory(self) -> PeakMemory:
        """Profiler-counted peak of one forward, after one untimed forward so lazy state is already built."""
        with torch.inference_mode():
            self.module(self.x)
            peak = cpu_peak_bytes(functools.partial(self.module, self.x))
        return PeakMemory(peak_bytes=peak, method=CPU_PEAK_METHOD)

    def close(self) -> None:
        """Restore the thread count and the caller's module mode."""
        torch.set_num_threads(self._prev_threads)
        self._original.train(self._was_training)


class CpuBackend(Backend):
    """PyTorch eager on the host CPU."""

    name = "cpu"
    description = "PyTorch eager on the CPU (inference_mode, explicit intra-op threads)"
    dtypes = tuple(DTYPES)

    def available(self) -> tuple[bool, str]:
        """Always available."""
        return True, f"torch {torch.__version__} on the CPU"

    def prepare(
        self,
        module: nn.Module,
        input_shape: Sequence[int],
        dtype: str = "float32",
        threads: int = 1,
        seed: int = 0,
    ) -> Prepared:
        """Put `module` in eval mode, set threads, and draw the input."""
        return CpuPrepared(module, input_shape, dtype, threads, seed)
