"""Backends: the registry, the CPU backend's measurement, ONNX Runtime export and parity, CUDA skipped cleanly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnbench
from attnbench.backends import UnknownBackendError, get_backend, list_backends
from attnbench.backends.base import make_input
from attnbench.errors import BackendUnavailableError, InvalidCaseError
from attnbench.measurement import Measurement, measure
from attnbench.timing import MIN_BLOCKS

HAS_CUDA = torch.cuda.is_available()


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


class FixedBatch(nn.Module):
    """Bakes the traced batch size into the graph (int() of a shape), so the batch cannot stay dynamic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(int(x.shape[0]) * x.shape[1], -1).sum(0, keepdim=True)


class NotExportable(nn.Module):
    """Uses an operator neither ONNX exporter supports."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvalsh(x @ x.transpose(-1, -2))


class SteppingClock:
    """A fake clock that advances a fixed step on every read (so measure() is deterministic)."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_registry_names_and_unknown_backend() -> None:
    names = list_backends()
    assert {"cpu", "cuda", "ort"} <= set(names)
    with pytest.raises(UnknownBackendError, match="valid backends are cpu, cuda, ort"):
        get_backend("tensorrt")
    with pytest.raises(BackendUnavailableError, match="unknown backend 'tpu'"):
        measure(nn.Identity(), (1, 4, 8, 8), backend="tpu")


def test_every_backend_says_whether_it_is_available() -> None:
    for name in list_backends():
        ok, reason = get_backend(name).available()
        assert isinstance(ok, bool) and reason


def test_inputs_are_seeded() -> None:
    assert torch.equal(make_input((2, 3), seed=5), make_input((2, 3), seed=5))
    assert not torch.equal(make_input((2, 3), seed=5), make_input((2, 3), seed=6))


def test_cpu_measure_sane() -> None:
    module = nn.Linear(64, 128)
    module.train()
    before = torch.get_num_threads()
    m = measure(module, (32, 64), min_run_time=0.05, warmup=0.01)
    assert isinstance(m, Measurement) and m.ok and m.status == "ok" and m.reason == ""
    t = m.timing
    assert t is not None
    assert 0 < t.min_s <= t.p10_s <= t.median_s and t.iqr_s >= 0 and t.mean_s > 0
    assert t.n_blocks >= 5 and t.n_calls >= t.n_blocks and t.warmup_calls >= 10
    assert m.peak_bytes == 32 * 128 * 4 and "weights and input excluded" in m.peak_method
    assert m.threads == 1 and m.extra["torch_num_threads"] == 1 and m.dtype == "float32"
    assert m.allocator["allocator"]
    # Process-wide and module state are restored.
    assert torch.get_num_threads() == before and module.training


def test_cpu_threads_are_set_and_restored() -> None:
    before = torch.get_num_threads()
    m = measure(nn.Linear(8, 8), (4, 8), threads=2, min_run_time=0.01, warmup=0.0, memory=False)
    assert m.extra["torch_num_threads"] == 2 and m.threads == 2 and m.peak_bytes is None
    assert torch.get_num_threads() == before


def test_measure_with_injected_clock_is_deterministic() -> None:
    # Each clock read moves 10 ms: a block reads twice, so each block "takes" 10 ms whatever it runs.
    m = measure(nn.Linear(8, 8), (4, 8), min_run_time=0.05, warmup=0.25, clock=SteppingClock(0.01), memory=False)
    t = m.timing
    assert t is not None
    # Every block equal: the median is known at once, so the floor (0.05 s = 5 blocks) and MIN_BLOCKS (6) rule.
    assert t.calls_per_block == 2 and t.n_blocks == MIN_BLOCKS
    assert t.median_s == pytest.approx(0.005) and t.iqr_s == pytest.approx(0.0) and not t.noisy
    assert t.precision_met is True and t.median_ci_rel == pytest.approx(0.0, abs=1e-9)


def test_public_alias_stays_callable() -> None:
    m = attnbench.measure(nn.Identity(), (1, 2), min_run_time=0.01, warmup=0.0, memory=False)
    assert m.ok


def test_bad_arguments_raise() -> None:
    with pytest.raises(InvalidCaseError, match="dtype"):
        measure(nn.Identity(), (1, 4), dtype="float64")
    with pytest.raises(InvalidCaseError, match="threads"):
        measure(nn.Identity(), (1, 4), threads=0)
    with pytest.raises(InvalidCaseError, match="input_shape"):
        measure(nn.Identity(), (1, 0))
    with pytest.raises(InvalidCaseError, match="precision"):
        measure(nn.Identity(), (1, 4), precision=0.0)
    with pytest.raises(InvalidCaseError, match="max_run_time"):
        measure(nn.Identity(), (1, 4), max_run_time=0.0)
    with pytest.raises(InvalidCaseError, match="min_run_time"):
        measure(nn.Identity(), (1, 4), min_run_time=-1.0)


def test_cpu_bfloat16_leaves_the_module_float32() -> None:
    module = nn.Linear(16, 16)
    m = measure(module, (4, 16), dtype="bfloat16", min_run_time=0.01, warmup=0.0)
    assert m.ok and m.peak_bytes == 4 * 16 * 2
    assert module.weight.dtype == torch.float32


@pytest.mark.onnx
def test_ort_parity_conv_matmul() -> None:
    module = ConvMatmul()
    module.train()
    m = measure(module, (1, 8, 12, 10), backend="ort", min_run_time=0.05, warmup=0.01)
    assert m.ok, m.reason
    assert m.parity_max_abs is not None and m.parity_max_abs <= 1e-4
    assert m.parity_checked_shapes == ((1, 8, 12, 10), (2, 8, 12, 10))
    assert m.exporter == "dynamo" and m.extra["dynamic_batch"] is True
    # Batch, H and W symbolic (one graph for every resolution), channels fixed by the weights.
    dims = m.extra["onnx_input_dims"]
    assert [isinstance(d, str) for d in dims] == [True, False, True, True] and dims[1] == 8
    assert m.extra["onnx_graph"] == "exported" and m.extra["onnx_dynamic_spatial"] is True
    assert m.extra["ort_intra_op_num_threads"] == 1
    assert m.timing is not None and m.timing.warmup_calls >= 10 and m.timing.median_s > 0
    assert m.peak_bytes is None and "not measured" in m.peak_method
    assert module.training


@pytest.mark.onnx
def test_ort_fixed_batch_is_reexported_and_checked_at_that_batch() -> None:
    m = measure(FixedBatch(), (1, 4, 3, 3), backend="ort", min_run_time=0.01, warmup=0.0, memory=False)
    assert m.ok, m.reason
    assert m.extra["dynamic_batch"] is False and m.extra["onnx_input_dims"][0] == 1
    assert m.parity_checked_shapes == ((1, 4, 3, 3),)
    # The dynamic H, W graph baked the batch (a symbolic name over a fixed Reshape): caught at batch 1.
    assert m.extra["onnx_graph"] == "exported per resolution"
    assert "dynamic H, W export: parity_failed" in m.extra["onnx_per_resolution_reason"]


@pytest.mark.onnx
def test_ort_export_failure_is_a_status() -> None:
    m = measure(NotExportable(), (1, 2, 4, 4), backend="ort", min_run_time=0.01)
    assert m.status == "export_failed" and m.timing is None
    assert "dynamo:" in m.reason and "legacy:" in m.reason and "eigvalsh" in m.reason


@pytest.mark.onnx
def test_ort_parity_failure_is_a_status(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnbench.backends.ort as ort_backend

    monkeypatch.setattr(ort_backend, "PARITY_ATOL", -1.0)  # any difference, even 0, now fails
    m = measure(ConvMatmul(), (1, 8, 4, 4), backend="ort", min_run_time=0.01)
    assert m.status == "parity_failed" and "max |ORT - PyTorch|" in m.reason
    assert m.parity_max_abs is not None and m.parity_checked_shapes == ((1, 8, 4, 4),)


@pytest.mark.onnx
def test_ort_float16_is_skipped() -> None:
    m = measure(nn.Identity(), (1, 4), backend="ort", dtype="float16")
    assert m.status == "skipped" and "float32" in m.reason


def _zoo_case(name: str) -> tuple[int, int]:
    """Dim 32 at res 16, or the smallest dim the module accepts at res 16."""
    spec = attnbench.get_spec(name)
    for dim in [32, *sorted({e.dim for e in spec.examples}), 64, 128]:
        try:
            attnbench.validate(name, dim, 16)
        except InvalidCaseError:
            continue
        return dim, 16
    pytest.skip(f"{name}: no valid dim at res 16")


@pytest.mark.onnx
@pytest.mark.parametrize("name", attnbench.list_modules())
def test_zoo_ort_parity(name: str) -> None:
    dim, res = _zoo_case(name)
    module = attnbench.build(name, dim, res)
    m = measure(module, (1, dim, res, res), backend="ort", latency=False, memory=False)
    assert m.ok, f"{name}: {m.status}: {m.reason}"
    assert m.parity_max_abs is not None and m.parity_max_abs <= 1e-4
    assert len(m.parity_checked_shapes) >= 1


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-GPU path")
def test_cuda_alone_raises_unavailable() -> None:
    with pytest.raises(BackendUnavailableError, match=r"backend 'cuda' is unavailable: .*CUDA"):
        measure(nn.Linear(4, 4), (2, 4), backend="cuda")
    ok, reason = get_backend("cuda").available()
    assert not ok and "CUDA" in reason


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_measure(dtype: str) -> None:
    module = ConvMatmul()
    benchmark_before = torch.backends.cudnn.benchmark
    m = measure(module, (2, 8, 16, 16), backend="cuda", dtype=dtype, min_run_time=0.1, warmup=0.05)
    assert m.ok, m.reason
    assert m.timing is not None and m.timing.median_s > 0
    assert m.peak_bytes is not None and m.peak_bytes > 0 and m.reserved_bytes is not None
    assert next(module.parameters()).device.type == "cpu"
    assert torch.backends.cudnn.benchmark == benchmark_before and m.extra["cudnn_benchmark"] is True


@pytest.mark.onnx
def test_parity_fails_for_a_wrong_graph_even_when_outputs_are_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    # mhsa's upstream init gives outputs ~1e-5: an absolute 1e-4 bound alone would pass an all-zero graph.
    import numpy as np

    from attnbench.backends import ort

    real = ort.OrtPrepared._run_numpy
    monkeypatch.setattr(ort.OrtPrepared, "_run_numpy", lambda self, x: np.zeros_like(real(self, x)))
    m = measure(attnbench.build("mhsa", 16, 4), (1, 16, 4, 4), backend="ort", latency=False, memory=False)
    assert m.status == "parity_failed" and "max |output|" in m.reason
    assert ort.parity_limit(5.0) == ort.PARITY_ATOL and ort.parity_limit(2e-5) < 1e-8
