"""The ONNX Runtime backends (attnbench.backends.ort): export, parity against PyTorch, the session's settings,
the refusals, the memory estimate; parity over the whole zoo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnbench
from attnbench.backends import get_backend
from attnbench.backends import ort as ort_backend
from attnbench.backends.ort import (
    OPT_LEVELS,
    ORT_MEMORY_FACTOR,
    ORT_PEAK_REASON,
    ORT_WARMUP_MIN_CALLS,
    OrtCpuBackend,
    OrtCudaBackend,
    parity_limit,
    session_options,
)
from attnbench.errors import InvalidCaseError
from attnbench.measurement import measure
from attnbench.results import ORT_OPT_LEVELS, SKIPPED, Case, Scenario
from attnbench.timing import TimingBudget

FAST = TimingBudget(min_run_time=0.01, max_run_time=0.05, warmup_s=0.0)

ort = pytest.importorskip("onnxruntime")


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


class StepClock:
    """A fake clock that advances `step` seconds on every read."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


# ---------------------------------------------------------------- facts, refusals, estimates (no export)


def test_facts() -> None:
    cpu, cuda = get_backend("ort"), get_backend("ort-cuda")
    assert isinstance(cpu, OrtCpuBackend) and isinstance(cuda, OrtCudaBackend)
    assert cpu.facts() == {"device": "cpu", "marker": "s", "parity": "ORT", "ignores": ["compile_mode"]}
    assert cuda.facts() == {"device": "cuda", "marker": "D", "parity": "ORT", "ignores": ["compile_mode"]}
    assert (cpu.memory_name, cuda.memory_name) == ("RAM", "GPU memory")
    assert cpu.dtypes == ("float32",) and cpu.modes == ("infer",) and cpu.ignores == ("compile_mode",)
    assert not (cpu.compiles or cpu.channels_last or cpu.autocasts or cpu.allocator_states)
    assert cpu.provider == "CPUExecutionProvider" and cuda.provider == "CUDAExecutionProvider"
    assert not cpu.counts_instructions(Case("lka", 16, 8, 8, backend="ort"))
    assert cpu.available()[0] and cpu.available()[1].startswith(f"onnxruntime {ort.__version__} CPUExecutionProvider")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_ort_cuda_without_a_gpu_is_unavailable() -> None:
    ok, reason = get_backend("ort-cuda").available()
    assert not ok and ("CUDAExecutionProvider" in reason or "no CUDA device" in reason)


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        (Scenario(mode="train"), "ONNX Runtime runs inference here: no training (no backward graph is exported)"),
        (Scenario(compile=True), "ONNX Runtime runs the exported graph: torch.compile applies to the PyTorch backends"),
        (Scenario(channels_last=True), "ONNX Runtime chooses its own layouts: channels_last applies to the PyTorch"),
        (Scenario(autocast="bfloat16"), "ONNX Runtime runs the exported float32 graph: torch.autocast applies to"),
        (Scenario(dtype="bfloat16"), "backend 'ort' runs float32, not bfloat16"),
        (Scenario(allocator="system"), "the allocator state is a glibc setting of the PyTorch CPU process; ort"),
    ],
    ids=["train", "compile", "channels_last", "autocast", "dtype", "allocator"],
)
def test_refusals_say_why(scenario: Scenario, reason: str) -> None:
    refusal = OrtCpuBackend().refusal(scenario)
    assert refusal is not None and refusal.startswith(reason)


def test_every_opt_level_and_thread_count_runs() -> None:
    for level in ORT_OPT_LEVELS:
        assert OrtCpuBackend().refusal(Scenario(ort_opt_level=level, threads=2)) is None


def test_ort_train_rows_are_skipped_with_the_reason() -> None:
    m = measure(nn.Linear(4, 4), (2, 4), backend="ort", scenario=Scenario(mode="train"))
    assert m.status == SKIPPED and "no training" in m.reason


def test_ort_float16_is_skipped() -> None:
    m = measure(nn.Identity(), (1, 4), backend="ort", scenario=Scenario(dtype="float16"))
    assert m.status == SKIPPED and "float32" in m.reason


def test_autocast_is_skipped_with_the_reason() -> None:
    m = measure(nn.Linear(4, 4), (2, 4), backend="ort", scenario=Scenario(autocast="bfloat16"))
    assert m.status == SKIPPED and "torch.autocast applies to the PyTorch backends" in m.reason and m.timing is None


def test_memory_estimate_covers_the_second_batch_and_the_arena() -> None:
    backend = OrtCpuBackend()

    def estimate(batch: int) -> int | None:
        return backend.memory_estimate(1000, Case("lka", 16, 8, 8, batch=batch, backend="ort"))

    # Export and parity also run PyTorch at batch 2 when the case's batch is 1: twice the batch-1 estimate.
    assert ORT_MEMORY_FACTOR == 2.0
    assert estimate(1) == 1000 * ORT_MEMORY_FACTOR * 2 == 4000
    assert estimate(2) == estimate(8) == 1000 * ORT_MEMORY_FACTOR == 2000
    assert backend.memory_estimate(None, Case("lka", 16, 8, 8, backend="ort")) is None


def test_the_session_options_follow_the_scenario() -> None:
    assert list(OPT_LEVELS) == list(ORT_OPT_LEVELS)
    for level, name in OPT_LEVELS.items():
        opts = session_options(3, level)
        assert opts.graph_optimization_level == getattr(ort.GraphOptimizationLevel, name)
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
        assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL and opts.log_severity_level == 3
    assert session_options(1).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_parity_limit_is_relative_below_one() -> None:
    assert parity_limit(5.0) == parity_limit(1.0) == ort_backend.PARITY_ATOL == 1e-4
    assert parity_limit(0.5) == pytest.approx(0.5 * ort_backend.PARITY_RTOL)
    assert parity_limit(2e-5) < 1e-8
    assert parity_limit(0.0) == ort_backend.PARITY_ATOL  # an all-zero output: the absolute bound


# ---------------------------------------------------------------- export, session, parity


@pytest.mark.onnx
def test_ort_parity_conv_matmul() -> None:
    module = ConvMatmul()
    module.train()
    m = measure(module, (1, 8, 12, 10), backend="ort", budget=TimingBudget(min_run_time=0.05, warmup_s=0.01))
    assert m.ok, m.reason
    assert m.parity_max_abs is not None and m.parity_max_abs <= 1e-4
    assert m.parity_checked_shapes == ((1, 8, 12, 10), (2, 8, 12, 10))
    assert m.exporter == "dynamo" and m.extra["dynamic_batch"] is True
    # Batch, H and W symbolic (one graph for every resolution), channels fixed by the weights.
    dims = m.extra["onnx_input_dims"]
    assert [isinstance(d, str) for d in dims] == [True, False, True, True] and dims[1] == 8
    assert m.extra["onnx_graph"] == "exported" and m.extra["onnx_dynamic_spatial"] is True
    assert m.extra["ort_intra_op_num_threads"] == 1
    assert m.extra["ort_graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert m.timing is not None and m.timing.warmup_calls >= 10 and m.timing.median_s > 0
    assert m.peak_bytes is None and "not measured" in m.peak_method and m.peak_method == ORT_PEAK_REASON
    assert module.training


@pytest.mark.onnx
def test_the_sessions_optimisation_level_follows_ort_opt_level() -> None:
    module = ConvMatmul()
    for level, name in OPT_LEVELS.items():
        # The first level exports; the others reuse the graph and open their own session on it.
        with OrtCpuBackend().prepare(module, (1, 8, 6, 6), Scenario(ort_opt_level=level, threads=2)) as prepared:
            options = prepared.session.get_session_options()
            assert options.graph_optimization_level == getattr(ort.GraphOptimizationLevel, name), level
            assert options.intra_op_num_threads == 2 and prepared.extra["ort_intra_op_num_threads"] == 2
            assert prepared.extra["ort_graph_optimization_level"] == name
            assert prepared.parity_max_abs is not None and prepared.parity_max_abs <= 1e-4
            assert prepared.extra["onnx_graph"] == ("exported" if level == "disable" else "reused")
        assert not hasattr(prepared, "session")  # close() dropped it, and ORT's arena with it


@pytest.mark.onnx
def test_ort_warms_up_at_least_its_minimum_whatever_the_budget() -> None:
    budget = TimingBudget(min_run_time=0.0, max_run_time=1e-9, precision=None, warmup_s=0.0, warmup_calls=1)
    with OrtCpuBackend().prepare(nn.Conv2d(4, 4, 1), (1, 4, 4, 4), Scenario()) as prepared:
        stats = prepared.time(budget, clock=StepClock(0.25))
        assert stats.warmup_calls == ORT_WARMUP_MIN_CALLS and stats.n_blocks == 6
        assert stats.median_s == 0.25 and stats.calls_per_block == 1
        assert prepared.peak_memory().peak_bytes is None


@pytest.mark.onnx
def test_ort_fixed_batch_is_reexported_and_checked_at_that_batch() -> None:
    m = measure(FixedBatch(), (1, 4, 3, 3), backend="ort", budget=FAST, metrics=("latency",))
    assert m.ok, m.reason
    assert m.extra["dynamic_batch"] is False and m.extra["onnx_input_dims"][0] == 1
    assert m.parity_checked_shapes == ((1, 4, 3, 3),)
    # The dynamic H, W graph baked the batch (a symbolic name over a fixed Reshape): caught at batch 1.
    assert m.extra["onnx_graph"] == "exported per resolution"
    assert "dynamic H, W export: parity_failed" in m.extra["onnx_per_resolution_reason"]


@pytest.mark.onnx
def test_ort_export_failure_is_a_status() -> None:
    m = measure(NotExportable(), (1, 2, 4, 4), backend="ort", budget=FAST)
    assert m.status == "export_failed" and m.timing is None
    assert "dynamo:" in m.reason and "legacy:" in m.reason and "eigvalsh" in m.reason


@pytest.mark.onnx
def test_ort_parity_failure_is_a_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_backend, "PARITY_ATOL", -1.0)  # any difference, even 0, now fails
    m = measure(ConvMatmul(), (1, 8, 4, 4), backend="ort", budget=FAST)
    assert m.status == "parity_failed" and "max |ORT - PyTorch|" in m.reason
    assert m.parity_max_abs is not None and m.parity_checked_shapes == ((1, 8, 4, 4),)


@pytest.mark.onnx
def test_parity_fails_for_a_wrong_graph_even_when_outputs_are_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    # mhsa's upstream init gives outputs ~1e-5: an absolute 1e-4 bound alone would pass an all-zero graph.
    import numpy as np

    real = ort_backend.OrtPrepared._run_numpy
    monkeypatch.setattr(ort_backend.OrtPrepared, "_run_numpy", lambda self, x: np.zeros_like(real(self, x)))
    m = measure(attnbench.build("mhsa", 16, 4), (1, 16, 4, 4), backend="ort", metrics=())
    assert m.status == "parity_failed" and "max |output|" in m.reason
    assert ort_backend.parity_limit(5.0) == ort_backend.PARITY_ATOL and ort_backend.parity_limit(2e-5) < 1e-8


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
    m = measure(module, (1, dim, res, res), backend="ort", metrics=())
    assert m.ok, f"{name}: {m.status}: {m.reason}"
    assert m.parity_max_abs is not None and m.parity_max_abs <= 1e-4
    assert len(m.parity_checked_shapes) >= 1


class Pair(nn.Module):
    """Returns (a 1x1 conv of x, the channel mean of x): two outputs, each with a batch axis."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), x.mean(1)


def test_every_output_of_a_tuple_is_exported_checked_and_timed() -> None:
    m = measure(Pair().eval(), (1, 4, 4, 4), "ort", budget=TimingBudget(max_run_time=0.05, min_run_time=0.01))
    assert m.status == "ok", m.reason
    assert m.parity_checked_shapes and m.parity_max_abs is not None and m.parity_max_abs < 1e-5
    assert ort_backend.output_names(2) == ["y", "y1"]


def test_a_wrong_second_output_fails_parity_and_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ort_backend.OrtPrepared._run_numpy

    def off_second(self: ort_backend.OrtPrepared, x: torch.Tensor) -> list:
        first, second = real(self, x)
        return [first, second + 1.0]

    monkeypatch.setattr(ort_backend.OrtPrepared, "_run_numpy", off_second)
    m = measure(Pair().eval(), (1, 4, 4, 4), "ort", budget=TimingBudget(max_run_time=0.05, min_run_time=0.01))
    assert m.status == "parity_failed" and "max |ORT - PyTorch| y1 (output 1) = 1 >" in m.reason
