"""PyTorch eager (or torch.compile'd) on the CPU: an explicit intra-op thread count (1 unless asked).

Infer: eval mode, inference_mode. Train: train mode, forward + backward (see attnbench.backends._torch).
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from attnbench.backends._torch import TorchBackend, TorchPrepared
from attnbench.backends.base import Prepared
from attnbench.memory import CPU_PEAK_METHOD, CPU_TRAIN_PEAK_METHOD, PeakMemory, cpu_peak_bytes, preload_missing
from attnbench.results import Case, Scenario


class CpuPrepared(TorchPrepared):
    """A module on the CPU run at the scenario's intra-op threads; close() gives the caller's module back."""

    backend = "cpu"

    def __init__(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int) -> None:
        super().__init__()
        self.threads = scenario.threads
        self.device = torch.device("cpu")
        try:
            # Set up (and compile) at the case's threads; they are set again around every block it runs.
            with self._threads():
                self.extra = {
                    "torch_num_threads": torch.get_num_threads(),
                    "torch_num_interop_threads": torch.get_num_interop_threads(),
                    "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
                    "mkl_num_threads_env": os.environ.get("MKL_NUM_THREADS"),
                    "grad_mode": "enable_grad" if scenario.mode == "train" else "inference_mode",
                }
                self._setup(module, input_shape, seed, scenario)
        except BaseException:
            # A failed compile never reaches measure()'s `with prepared:`: restore the module here.
            self.close()
            raise

    def peak_memory(self) -> PeakMemory:
        """Profiler-counted peak of one step, after one untimed step so lazy state is already built."""
        peak = self._profiled_step(cpu_peak_bytes)
        return PeakMemory(peak_bytes=peak, method=CPU_TRAIN_PEAK_METHOD if self.train else CPU_PEAK_METHOD)

    def close(self) -> None:
        """Give the caller's module back (mode, no grads)."""
        self._restore_module()


class CpuBackend(TorchBackend):
    """PyTorch on the host CPU."""

    name = "cpu"
    description = "PyTorch on the CPU (eager or torch.compile; inference or training; explicit intra-op threads)"
    allocator_states = True
    marker = "o"
    profiles_operators = True
    # TF32 is a CUDA setting of cuBLAS and cuDNN: a CPU row ignores it (one row, not one per value).
    ignores = (*TorchBackend.ignores, "tf32")

    def available(self) -> tuple[bool, str]:
        """Always available."""
        return True, f"torch {torch.__version__} on the CPU"

    def refusal(self, scenario: Scenario) -> str | None:
        """As TorchBackend.refusal; torch.compile only where inductor can build its C++ kernels, and jemalloc or
        tcmalloc only where the library is installed (it is loaded with LD_PRELOAD in a server process)."""
        return (
            super().refusal(scenario)
            or preload_missing(scenario.allocator)
            or (inductor_missing() if scenario.compile else None)
        )

    def prepare(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int = 0) -> Prepared:
        """Set threads, set up the module for the scenario (copying it if it must change), draw the input."""
        return CpuPrepared(module, input_shape, scenario, seed)

    def counts_instructions(self, case: Case) -> bool:
        """PyTorch eager, float32 inference at 1 thread, default memory format and allocator: what valgrind runs."""
        return case.scenario == Scenario(layout=case.scenario.layout)

    def is_oom(self, exc: BaseException) -> bool:
        """An allocation the host refused."""
        return isinstance(exc, MemoryError | torch.OutOfMemoryError)


def inductor_missing() -> str | None:
    """What torch.compile's CPU backend (inductor) lacks on this machine to build kernels, or None."""
    compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    if not any(c and shutil.which(c) for c in compilers):
        return "torch.compile on the CPU builds C++ kernels: no C++ compiler here (install g++, or set CXX)"
    headers = Path(sysconfig.get_path("include"))
    if not (headers / "Python.h").exists():
        return f"torch.compile on the CPU builds C++ kernels against Python.h, which is not in {headers} (python3-dev)"
    return None
