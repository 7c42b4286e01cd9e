"""The CUDA backend (attnbench.backends.cuda): its facts and refusals everywhere; measurements on a GPU only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench.backends import get_backend
from attnbench.backends.cuda import CudaBackend, gpu_free_bytes
from attnbench.errors import BackendUnavailableError
from attnbench.measurement import measure
from attnbench.results import Case, Scenario
from attnbench.timing import TimingBudget

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
FAST = TimingBudget(min_run_time=0.1, warmup_s=0.05)


class ConvMatmul(nn.Module):
    """A small conv + token self-attention block: conv, linear, matmul, softmax, reshape."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.conv(x).flatten(2).transpose(1, 2)).chunk(3, dim=-1)
        attn = (q @ k.transpose(1, 2) * c**-0.5).softmax(-1)
        return (attn @ v).transpose(1, 2).reshape(b, c, h, w)


# ---------------------------------------------------------------- everywhere


def test_facts() -> None:
    cuda = get_backend("cuda")
    assert isinstance(cuda, CudaBackend)
    assert cuda.facts() == {"device": "cuda", "marker": "^", "parity": "compiled", "ignores": ["ort_opt_level"]}
    assert cuda.memory_name == "GPU memory" and cuda.ignores == ("ort_opt_level",)
    assert cuda.autocasts and cuda.compiles and cuda.channels_last and cuda.modes == ("infer", "train")
    # The glibc allocator states are the host process's: CUDA tensors are not allocated through it.
    assert not cuda.allocator_states
    assert cuda.memory_estimate(1000, Case("lka", 16, 8, 8, backend="cuda")) == 1000
    assert not cuda.counts_instructions(Case("lka", 16, 8, 8, backend="cuda"))


def test_refusals() -> None:
    cuda = CudaBackend()
    for scenario in (
        Scenario(dtype="float16", mode="train"),
        Scenario(compile=True, compile_mode="reduce-overhead"),
        Scenario(channels_last=True, autocast="float16"),
    ):
        assert cuda.refusal(scenario) is None, scenario
    assert cuda.refusal(Scenario(dtype="bfloat16", autocast="float16")) == (
        "autocast runs a float32 module in mixed precision; --dtype bfloat16 already converts it"
    )
    assert cuda.refusal(Scenario(allocator="system")) == (
        "the allocator state is a glibc setting of the PyTorch CPU process; cuda does not allocate through it per call"
    )


def test_is_oom_is_the_caching_allocators_error() -> None:
    cuda = CudaBackend()
    assert cuda.is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert not cuda.is_oom(MemoryError()) and not cuda.is_oom(RuntimeError("boom"))


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU path")
def test_cuda_alone_raises_unavailable() -> None:
    with pytest.raises(BackendUnavailableError, match=r"backend 'cuda' is unavailable: .*CUDA"):
        measure(nn.Linear(4, 4), (2, 4), backend="cuda")
    ok, reason = get_backend("cuda").available()
    assert not ok and "CUDA" in reason


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU path")
def test_without_a_gpu_free_memory_is_unknown_and_cleanup_does_nothing() -> None:
    assert gpu_free_bytes() is None and CudaBackend().free_memory() is None
    assert get_backend("ort-cuda").free_memory() is None
    CudaBackend().cleanup_after_failure()  # no GPU to synchronise: returns quietly


# ---------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@needs_gpu
def test_free_memory_of_the_gpu() -> None:
    free = CudaBackend().free_memory()
    assert isinstance(free, int) and 0 < free <= torch.cuda.get_device_properties(0).total_memory
    assert CudaBackend().available()[0]


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_measure(dtype: str) -> None:
    module = ConvMatmul()
    benchmark_before = torch.backends.cudnn.benchmark
    m = measure(module, (2, 8, 16, 16), backend="cuda", scenario=Scenario(dtype=dtype), budget=FAST)
    assert m.ok, m.reason
    assert m.timing is not None and m.timing.median_s > 0
    assert m.peak_bytes is not None and m.peak_bytes > 0 and m.reserved_bytes is not None
    assert next(module.parameters()).device.type == "cpu"
    assert torch.backends.cudnn.benchmark == benchmark_before and m.extra["cudnn_benchmark"] is True


@pytest.mark.cuda
@needs_gpu
def test_cuda_train_step_and_autocast() -> None:
    module = ConvMatmul()
    m = measure(module, (2, 8, 16, 16), backend="cuda", scenario=Scenario(mode="train"), budget=FAST)
    assert m.ok, m.reason
    assert "training step" in m.peak_method and all(p.grad is None for p in module.parameters())
    with CudaBackend().prepare(nn.Linear(16, 16), (4, 16), Scenario(autocast="float16")) as prepared:
        out = prepared.run_once()
        assert out.device.type == "cuda" and out.dtype == torch.float16
        assert prepared.module.weight.dtype == torch.float32
