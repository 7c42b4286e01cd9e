"""The CUDA backend (attnbench.backends.cuda): its facts and refusals everywhere; measurements on a GPU only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from attnbench.backends import cuda as cuda_backend
from attnbench.backends import get_backend
from attnbench.backends.base import Prepared
from attnbench.backends.cuda import (
    TORCH_SYNC,
    CudaBackend,
    CudaPrepared,
    busy_ns,
    gpu_free_bytes,
    restore_tf32,
    set_tf32,
    synchronised,
    tf32_flags,
)
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
    assert cuda.facts() == {
        "device": "cuda",
        "marker": "^",
        "parity": "compiled",
        "ignores": ["ort_opt_level"],
        "sync": TORCH_SYNC,
    }
    assert TORCH_SYNC.startswith("per call: ") and "torch.cuda.synchronize(device) after each call" in TORCH_SYNC
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


def test_tf32_settles_off_for_a_module_with_no_float32_matmul() -> None:
    cuda = CudaBackend()
    assert cuda.settle(Scenario(tf32=True)) == Scenario(tf32=True)
    assert cuda.settle(Scenario(tf32=True, dtype="bfloat16")) == Scenario(dtype="bfloat16")
    # Autocast runs a float32 module: what autocast leaves in float32 still follows the switch.
    assert cuda.settle(Scenario(tf32=True, autocast="float16")) == Scenario(tf32=True, autocast="float16")
    assert cuda.refusal(Scenario(tf32=True)) is None


@pytest.fixture
def torch_tf32_defaults() -> Iterator[None]:
    """Leave torch's TF32 switches at its defaults (matmul off, cuDNN on) after the test, whatever it did."""
    yield
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True


@pytest.mark.parametrize("on", [False, True])
def test_tf32_is_set_for_a_case_and_restored_after_it(on: bool, torch_tf32_defaults: None) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # torch's defaults
    before = set_tf32(on)
    assert before == {"api": "allow_tf32", "matmul": False, "cudnn": True}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (on, on)
    restore_tf32(before)
    assert tf32_flags() == before


def test_tf32_set_through_the_fp32_precision_api_is_restored_through_it(torch_tf32_defaults: None) -> None:
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision API")
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    before = set_tf32(False)
    assert before["api"] == "fp32_precision" and (before["matmul"], before["conv"]) == ("tf32", "ieee")
    assert torch.backends.cuda.matmul.allow_tf32 is False  # the legacy names are readable again
    restore_tf32(before)
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32", "ieee")


def test_busy_time_is_the_union_of_the_devices_intervals() -> None:
    assert busy_ns([]) == 0
    assert busy_ns([(0, 10), (20, 25)]) == 15  # an idle gap between two kernels is not busy
    assert busy_ns([(0, 10), (5, 12), (11, 13), (30, 31)]) == 14  # overlapping streams count once
    assert busy_ns([(20, 25), (0, 30)]) == 30  # in any order, one inside another


def _prepared_without_a_gpu(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> CudaPrepared:
    """A CudaPrepared of a Linear on the CPU whose torch.cuda.synchronize only records that it ran."""
    prepared = CudaPrepared.__new__(CudaPrepared)
    Prepared.__init__(prepared)
    prepared.device = torch.device("cpu")
    prepared.scenario, prepared.train = Scenario(), False
    layer = nn.Linear(4, 4)

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append("forward")
        return layer(x)

    prepared.module, prepared.x = forward, torch.ones(2, 4)  # type: ignore[assignment]
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    return prepared


def test_every_timed_call_is_synchronised_with_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    prepared = _prepared_without_a_gpu(monkeypatch, calls)
    fn, sync = prepared.timed_callable()
    assert sync is not None
    fn()
    fn()
    assert calls == ["forward", "sync", "forward", "sync"]
    # Through the timing loop too: no forward is followed by another before the GPU finished it.
    calls.clear()
    stats = prepared.time(TimingBudget(min_run_time=0.0, max_run_time=1e-3, warmup_s=0.0, warmup_calls=2))
    pairs = [calls[i : i + 2] for i, c in enumerate(calls) if c == "forward"]
    assert stats.n_calls >= 1 and all(pair == ["forward", "sync"] for pair in pairs)


def test_synchronised_returns_the_calls_output() -> None:
    seen: list[str] = []
    call = synchronised(lambda: seen.append("fn") or 42, lambda: seen.append("sync"))
    assert call() == 42 and seen == ["fn", "sync"]


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


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_tf32_is_the_scenarios_and_restored(tf32: bool, torch_tf32_defaults: None) -> None:
    before = tf32_flags()
    m = measure(ConvMatmul(), (2, 8, 16, 16), backend="cuda", scenario=Scenario(tf32=tf32), budget=FAST)
    assert m.ok, m.reason
    assert (m.extra["torch_allow_tf32_matmul"], m.extra["torch_allow_tf32_cudnn"]) == (tf32, tf32)
    assert tf32_flags() == before


@pytest.mark.cuda
@needs_gpu
def test_cuda_rows_carry_the_gpus_busy_time_and_say_whether_launches_set_it() -> None:
    m = measure(ConvMatmul(), (2, 8, 16, 16), backend="cuda", budget=FAST)
    assert m.ok, m.reason
    assert m.device_busy_s is not None and m.device_busy_s > 0
    values = m.row_values(batch=2)
    assert isinstance(values["latency_launch_bound"], bool)
    assert m.extra_values()["device_busy_share"] == pytest.approx(m.device_busy_s / m.timing.median_s)
    assert m.extra["timing_sync"] == TORCH_SYNC


@pytest.mark.cuda
@needs_gpu
def test_ort_cuda_runs_without_tf32_and_without_fallback() -> None:
    ok, why = get_backend("ort-cuda").available()
    if not ok:
        pytest.skip(f"ort-cuda unavailable: {why}")
    m = measure(ConvMatmul(), (2, 8, 16, 16), backend="ort-cuda", budget=FAST)
    assert m.ok, m.reason
    options = m.extra["ort_cuda_options"]
    assert options["use_tf32"] == "0" and options["device_id"] == str(torch.cuda.current_device())
    assert m.device_busy_s is not None and m.parity_max_abs is not None and m.parity_max_abs <= 1e-4


def test_a_profiler_that_cannot_run_leaves_the_row_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(call: object, calls: int = 5) -> float:
        raise RuntimeError("Can't profile: another profiler is running")

    monkeypatch.setattr(cuda_backend, "device_busy_per_call", refused)
    extra: dict[str, object] = {}
    assert cuda_backend.busy_or_note(lambda: None, extra) is None
    assert extra == {"device_busy_error": "RuntimeError: Can't profile: another profiler is running"}


def test_cleanup_survives_a_cuda_context_broken_by_the_failed_case(monkeypatch: pytest.MonkeyPatch) -> None:
    def sticky(device: object = None) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", sticky)
    CudaBackend().cleanup_after_failure()  # the next case reports the broken context; the sweep goes on
