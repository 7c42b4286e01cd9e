"""The ONNX Runtime backends (attnbench.backends.ort): export, parity against PyTorch, the session's settings,
the refusals, the memory estimate; parity over the whole zoo."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import attnbench
from attnbench.backends import get_backend
from attnbench.backends import ort as ort_backend
from attnbench.backends.base import CaseFailed
from attnbench.backends.ort import (
    OPT_LEVELS,
    ORT_CUDA_SYNC,
    ORT_MEMORY_FACTOR,
    ORT_PEAK_REASON,
    ORT_WARMUP_MIN_CALLS,
    OrtCpuBackend,
    OrtCudaBackend,
    cuda_provider_options,
    open_session,
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
    assert cpu.facts() == {
        "device": "cpu",
        "marker": "s",
        "parity": "ORT",
        "ignores": ["compile_mode", "tf32"],
        "sync": "",
    }
    assert cuda.facts() == {
        "device": "cuda",
        "marker": "D",
        "parity": "ORT",
        "ignores": ["compile_mode"],
        "sync": ORT_CUDA_SYNC,
    }
    assert ORT_CUDA_SYNC.startswith("per call: ") and "disable_synchronize_execution_providers not set" in ORT_CUDA_SYNC
    assert (cpu.memory_name, cuda.memory_name) == ("RAM", "GPU memory")
    assert cpu.dtypes == ("float32",) and cpu.modes == ("infer",) and cpu.ignores == ("compile_mode", "tf32")
    assert not (cpu.compiles or cpu.channels_last or cpu.autocasts or cpu.allocator_states)
    assert cpu.provider == "CPUExecutionProvider" and cuda.provider == "CUDAExecutionProvider"
    assert not cpu.counts_instructions(Case("lka", 16, 8, 8, backend="ort"))
    # TF32 is the CUDA provider's: the CPU one ignores it (one row), the CUDA one runs each value.
    assert cpu.settle(Scenario(tf32=True)) == Scenario() and cuda.settle(Scenario(tf32=True)) == Scenario(tf32=True)
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


def _checker(outputs: list[object], tf32: bool = False) -> ort_backend.OrtPrepared:
    """An OrtPrepared with no graph: its 'session' returns `outputs` one call after another (or raises one).

    The inputs it was run on are kept in `prepared.inputs`.
    """
    prepared = ort_backend.OrtPrepared.__new__(ort_backend.OrtPrepared)
    ort_backend.Prepared.__init__(prepared)
    prepared.exporter, prepared.tf32 = "dynamo", tf32
    queue = list(outputs)
    prepared.inputs = []  # type: ignore[attr-defined]

    def run(x: torch.Tensor) -> object:
        prepared.inputs.append(x)  # type: ignore[attr-defined]
        out = queue.pop(0)
        if isinstance(out, Exception):
            raise out
        return out if isinstance(out, list) else [out]  # the session gives a list, one array per graph output

    # One graph output; a test's single reference array is that output's.
    prepared.output_names = [ort_backend.OUTPUT_NAME]
    real_check = prepared._check_parity

    def check(x: torch.Tensor, ref: object, x_alt: torch.Tensor, ref_alt: object, dims: list[int | str]) -> None:
        def listed(r: object) -> Any:
            return r if isinstance(r, list) else [r]

        real_check(x, listed(ref), x_alt, listed(ref_alt), dims)

    prepared._run_numpy = run  # type: ignore[method-assign]
    prepared._check_parity = check  # type: ignore[method-assign]
    return prepared


X1, X2 = torch.zeros(1, 2, 1, 1), torch.zeros(2, 2, 1, 1)


def _raised(prepared: ort_backend.OrtPrepared, refs: tuple[object, object], dims: list[int | str]) -> CaseFailed:
    with pytest.raises(CaseFailed) as info:
        prepared._check_parity(X1, refs[0], X2, refs[1], dims)
    assert info.value.status == "parity_failed"
    return info.value


@pytest.mark.parametrize("first", [0.5, 0.25])
def test_parity_checks_both_batches_of_a_symbolic_graph_and_keeps_the_worst_and_the_tightest(first: float) -> None:
    # Float64 values, so the differences are exact: 1e-5 at the first batch, 2e-6 at the second; |output| 0.5
    # at one and 0.25 at the other, in either order.
    ref1, ref2 = np.array([[first], [0.0]]), np.array([[0.75 - first], [0.0], [0.0], [0.0]])
    out1, out2 = ref1 + np.array([[0.0], [1e-5]]), ref2 + np.array([[0.0], [0.0], [-2e-6], [0.0]])
    prepared = _checker([out1, out2])
    prepared._check_parity(X1, ref1, X2, ref2, ["batch", 2, "h", "w"])
    assert len(prepared.inputs) == 2 and prepared.inputs[0] is X1 and prepared.inputs[1] is X2
    assert prepared.parity_max_abs == 1e-5 and prepared.parity_checked_shapes == ((1, 2, 1, 1), (2, 2, 1, 1))
    # The largest |output| met, and the tightest bound applied (relative below 1: 1e-4 x 0.25).
    assert prepared.extra == {"parity_ref_max_abs": 0.5, "parity_limit": 0.25 * 1e-4}


def test_parity_of_a_fixed_batch_graph_checks_that_batch_only_and_says_so() -> None:
    ref = np.array([[0.5, -0.25]])
    prepared = _checker([ref.copy(), "never run"])
    prepared._check_parity(X1, ref, X2, np.zeros(3), [1, 2, 1, 1])
    assert len(prepared.inputs) == 1 and prepared.inputs[0] is X1
    assert prepared.parity_max_abs == 0.0 and prepared.parity_checked_shapes == ((1, 2, 1, 1),)
    assert prepared.extra == {
        "dynamic_batch_note": "exporter fixed the batch to 1; checked that batch only",
        "parity_ref_max_abs": 0.5,
        "parity_limit": 0.5 * 1e-4,
    }


def test_parity_passes_a_difference_exactly_at_the_bound_and_fails_one_above() -> None:
    ref = np.array([0.0, 1.0])  # |output| 1: the absolute bound, 1e-4
    _checker([np.array([1e-4, 1.0])])._check_parity(X1, ref, X2, ref, [1])
    failed = _raised(_checker([np.array([2e-4, 1.0])]), (ref, ref), [1])
    assert failed.reason == "max |ORT - PyTorch| = 0.0002 > 0.0001 (max |output| 1) at input (1, 2, 1, 1)"
    assert failed.details["parity_max_abs"] == 2e-4 and failed.details["exporter"] == "dynamo"
    assert failed.details["parity_checked_shapes"] == ((1, 2, 1, 1),)
    assert failed.details["extra"]["parity_limit"] == 1e-4


def test_parity_failing_at_the_second_batch_reports_the_worst_over_both() -> None:
    ref1, ref2 = np.array([2.0]), np.array([3.0, 0.0])
    prepared = _checker([np.array([2.0 - 5e-5]), np.array([3.0, 0.5])])
    failed = _raised(prepared, (ref1, ref2), ["batch", 2])
    assert failed.reason == "max |ORT - PyTorch| = 0.5 > 0.0001 (max |output| 3) at input (2, 2, 1, 1)"
    assert failed.details["parity_max_abs"] == 0.5  # the worst over both batches, on the failure
    assert failed.details["parity_checked_shapes"] == ((1, 2, 1, 1), (2, 2, 1, 1))
    assert failed.details["extra"] is prepared.extra and prepared.extra["parity_ref_max_abs"] == 3.0


def test_parity_under_tf32_allows_a_share_of_the_output() -> None:
    ref = np.array([4.0])  # TF32: 1e-2 x 4 = 0.04, far above the 1e-4 of full precision
    prepared = _checker([np.array([4.03])], tf32=True)
    prepared._check_parity(X1, ref, X2, ref, [1])
    assert prepared.extra["parity_limit"] == pytest.approx(0.04) and prepared.parity_max_abs == pytest.approx(0.03)
    assert "> 0.04 (max |output| 4)" in _raised(_checker([np.array([4.05])], tf32=True), (ref, ref), [1]).reason


def test_parity_fails_a_nan_output_as_an_infinite_difference() -> None:
    ref = np.array([1.0, 2.0])
    failed = _raised(_checker([np.array([1.0, np.nan])]), (ref, ref), [1])
    assert failed.details["parity_max_abs"] == float("inf") and "= inf > 0.0001" in failed.reason


def test_parity_of_an_empty_output_is_exact_and_judged_absolutely() -> None:
    prepared = _checker([np.zeros((1, 0)), np.zeros((2, 0))])
    prepared._check_parity(X1, np.zeros((1, 0)), X2, np.zeros((2, 0)), ["batch"])
    assert prepared.parity_max_abs == 0.0 and prepared.parity_checked_shapes == ((1, 2, 1, 1), (2, 2, 1, 1))
    assert prepared.extra == {"parity_ref_max_abs": 0.0, "parity_limit": ort_backend.PARITY_ATOL}


def test_parity_fails_an_output_of_another_shape() -> None:
    ref = np.zeros((1, 2, 3))
    failed = _raised(_checker([np.zeros((1, 3, 2))]), (ref, ref), ["batch", 2])
    assert failed.reason == "ORT output shape (1, 3, 2) != PyTorch (1, 2, 3) at input (1, 2, 1, 1)"
    assert failed.details == {"exporter": "dynamo", "parity_checked_shapes": (), "extra": {}}


def test_parity_run_that_fails_at_the_second_batch_is_a_parity_failure_with_the_first_checked() -> None:
    ref = np.array([1.0])
    prepared = _checker([ref.copy(), ValueError("Got invalid dimensions for input")])
    failed = _raised(prepared, (ref, ref), ["batch", 2])
    assert failed.reason == (
        "ORT run at input (2, 2, 1, 1) failed (graph input dims ['batch', 2]): "
        "ValueError: Got invalid dimensions for input"
    )
    assert failed.details["exporter"] == "dynamo" and failed.details["parity_checked_shapes"] == ((1, 2, 1, 1),)
    assert failed.details["extra"] == {"parity_ref_max_abs": 1.0, "parity_limit": 1e-4}


def test_parity_run_out_of_memory_is_raised_as_it_is() -> None:
    oom = RuntimeError("Failed to allocate memory for requested buffer")
    with pytest.raises(RuntimeError) as info:
        _checker([oom])._check_parity(X1, np.zeros(1), X2, np.zeros(1), [1])
    assert info.value is oom


def test_reset_parity_forgets_the_checks_figures_and_keeps_the_rest() -> None:
    prepared = _checker([])
    prepared.parity_max_abs, prepared.parity_checked_shapes = 0.5, ((1, 2, 1, 1),)
    prepared.extra.update(parity_ref_max_abs=1.0, parity_limit=1e-4, dynamic_batch_note="fixed", onnx_opset=18)
    prepared._reset_parity()
    assert prepared.parity_max_abs is None and prepared.parity_checked_shapes == ()
    assert prepared.extra == {"onnx_opset": 18}
    prepared._reset_parity()  # nothing left to forget (a check that failed before any figure): no error
    assert prepared.extra == {"onnx_opset": 18}


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


class UnitScale(nn.Module):
    """Outputs whose largest magnitude is exactly 1: the input over its largest |value|."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.abs().amax()


@pytest.mark.onnx
def test_an_error_of_1e_3_on_outputs_of_size_1_fails_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bound itself, pinned: 1e-4 absolute from |output| 1 up, relative below (issue 25: x1000 passed).
    assert (parity_limit(1.0), parity_limit(5.0), parity_limit(0.5)) == (1e-4, 1e-4, pytest.approx(5e-5))
    real = ort_backend.OrtPrepared._run_numpy
    # _run_numpy gives every output of the graph (a list): the fault goes into each.
    monkeypatch.setattr(ort_backend.OrtPrepared, "_run_numpy", lambda self, x: [o + 1e-3 for o in real(self, x)])
    m = measure(UnitScale(), (1, 4, 4, 4), backend="ort", metrics=())
    # The difference is the fault's to 1e-6: ORT itself agrees with PyTorch far inside the bound.
    assert m.status == "parity_failed" and m.parity_max_abs == pytest.approx(1e-3, rel=1e-3)
    assert "max |ORT - PyTorch| = 0.001 > 0.0001 (max |output| 1)" in m.reason
    assert m.extra["parity_ref_max_abs"] == pytest.approx(1.0) and m.extra["parity_limit"] == 1e-4


@pytest.mark.onnx
def test_parity_fails_for_a_wrong_graph_even_when_outputs_are_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    # mhsa's upstream init gives outputs ~1e-5: an absolute 1e-4 bound alone would pass an all-zero graph.
    import numpy as np

    real = ort_backend.OrtPrepared._run_numpy
    monkeypatch.setattr(
        ort_backend.OrtPrepared, "_run_numpy", lambda self, x: [np.zeros_like(o) for o in real(self, x)]
    )
    m = measure(attnbench.build("mhsa", 16, 4), (1, 16, 4, 4), backend="ort", metrics=())
    assert m.status == "parity_failed" and "max |output|" in m.reason
    assert ort_backend.parity_limit(5.0) == ort_backend.PARITY_ATOL and ort_backend.parity_limit(2e-5) < 1e-8


@pytest.mark.onnx
@pytest.mark.parametrize("where", ["session", "parity"])
def test_ort_out_of_memory_is_an_oom_not_a_session_or_parity_failure(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Fail(Exception):  # ONNX Runtime's exceptions derive from Exception, as this one
        pass

    def allocation_failed(*args: object, **kwargs: object) -> None:
        raise Fail("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer")

    if where == "session":
        monkeypatch.setattr(ort.InferenceSession, "__init__", allocation_failed)
    else:
        monkeypatch.setattr(ort_backend.OrtPrepared, "_run_numpy", allocation_failed)
    m = measure(ConvMatmul(), (1, 8, 4, 4), backend="ort", budget=FAST)
    assert m.status == "oom" and "Failed to allocate memory" in m.reason


# ---------------------------------------------------------------- the CUDA provider's session, without a GPU


def test_the_cuda_providers_options_pin_the_device_and_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cuda_provider_options(0, tf32=False) == {"device_id": "0", "use_tf32": "0"}
    assert cuda_provider_options(3, tf32=True) == {"device_id": "3", "use_tf32": "1"}
    # The session runs on torch's current device, with the scenario's TF32 (ORT's own default is on).
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    cuda = OrtCudaBackend()
    assert cuda.provider_options(Scenario()) == {"device_id": "1", "use_tf32": "0"}
    assert cuda.provider_options(Scenario(tf32=True)) == {"device_id": "1", "use_tf32": "1"}
    assert OrtCpuBackend().provider_options(Scenario(tf32=True)) is None


class RecordingSession:
    """Stands in for ort.InferenceSession: records what it was handed; starts on CUDA with use_tf32 0."""

    made: ClassVar[list[dict]] = []

    def __init__(self, model: object, sess_options: object = None, providers: object = None, **kwargs: object) -> None:
        self.fallback = True
        RecordingSession.made.append({"providers": providers, **kwargs, "session": self})

    def disable_fallback(self) -> None:
        self.fallback = False

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {"CUDAExecutionProvider": {"device_id": "0", "use_tf32": "0", "arena_extend_strategy": "x"}}


def test_a_cuda_session_is_opened_on_the_provider_alone_with_both_fallbacks_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    RecordingSession.made = []
    monkeypatch.setattr(ort, "InferenceSession", RecordingSession)
    options = cuda_provider_options(0, tf32=False)
    session, _ = open_session(b"graph", session_options(1), "CUDAExecutionProvider", options)
    made = RecordingSession.made[0]
    # No CPU provider named: ORT adds its own and warns when it places nodes there (kept in the row).
    assert made["providers"] == [("CUDAExecutionProvider", options)]
    # Fallback at creation (enable_fallback=0) and at run time (disable_fallback()) both off.
    assert made["enable_fallback"] == 0 and session is made["session"] and session.fallback is False


def test_a_session_that_did_not_take_the_options_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "InferenceSession", RecordingSession)
    with pytest.raises(CaseFailed) as info:
        open_session(b"graph", session_options(1), "CUDAExecutionProvider", {"device_id": "0", "use_tf32": "1"})
    assert info.value.status == "session_failed"
    assert info.value.reason == (
        "CUDAExecutionProvider did not take {'device_id': '0', 'use_tf32': '1'} (it has {'use_tf32': '0'})"
    )


def test_a_real_cpu_session_has_run_time_fallback_off() -> None:
    session, _ = open_session(ort_backend._probe_model(), session_options(1), "CPUExecutionProvider", None)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert getattr(session, "_enable_fallback", False) is False  # ORT's own flag, read by Session.run


class ProviderThatDidNotLoad(RecordingSession):
    """What ORT does when the CUDA provider's library does not load: it logs why and starts on the CPU."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        os.write(2, ORT_LOAD_ERROR.encode() + b"\n")
        super().__init__(*args, **kwargs)

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


#: ORT's log line when libcublasLt is missing (provider_bridge_ort.cc), time stamp and all.
ORT_LOAD_ERROR = (
    "2026-11-30 10:00:00.123456789 [E:onnxruntime:Default, provider_bridge_ort.cc:2195 TryGetProviderInfo_CUDA] "
    "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: cannot open shared "
    "object file: No such file or directory"
)


def test_a_provider_that_fails_to_load_is_a_session_failure_with_orts_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort, "InferenceSession", ProviderThatDidNotLoad)
    with pytest.raises(CaseFailed) as info:
        open_session(b"graph", session_options(1), "CUDAExecutionProvider", cuda_provider_options(0, False))
    assert info.value.status == "session_failed"
    assert info.value.reason == (
        "CUDAExecutionProvider did not start (the session runs on ['CPUExecutionProvider']); onnxruntime said: "
        + ORT_LOAD_ERROR.split(" ", 2)[2]
    )


@pytest.fixture
def listed_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORT lists the CUDA provider (as a package built with it always does) and torch sees a GPU."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(ort_backend, "_PROBED", {})


def test_a_listed_provider_that_cannot_run_is_unavailable_with_orts_reason(listed_cuda: None) -> None:
    # The real ORT of this machine (a CPU build) is asked for a CUDA session: it says why it starts on the CPU.
    ok, reason = OrtCudaBackend().available()
    assert not ok
    assert reason.startswith(f"onnxruntime {ort.__version__} lists CUDAExecutionProvider, but it cannot run here: ")
    assert "CUDAExecutionProvider did not start (the session runs on ['CPUExecutionProvider']); onnxruntime said: " in (
        reason
    )
    assert "is not in available provider names" in reason


def test_the_provider_probe_runs_once_per_device(listed_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    probes: list[tuple[str, dict | None]] = []

    def probe(provider: str, options: dict | None) -> str | None:
        probes.append((provider, options))
        return None

    monkeypatch.setattr(ort_backend, "probe_provider", probe)
    cuda = OrtCudaBackend()
    assert cuda.available()[0] and cuda.available()[1].endswith("on GPU 0")
    assert probes == [("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"})]


def test_ort_cuda_guards_the_gpus_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (123 * 2**20, 456 * 2**20))
    cuda = OrtCudaBackend()
    assert cuda.free_memory() == 123 * 2**20 and cuda.memory_name == "GPU memory"


def test_orts_placement_warnings_are_kept_and_the_rest_left_out() -> None:
    console = (
        "2026-11-30 10:00:00.1 [W:onnxruntime:, transformer_memcpy.cc:111 ApplyImpl] 4 Memcpy nodes are added to "
        "the graph main_graph for CUDAExecutionProvider. It might have negative impact on performance.\n"
        "2026-11-30 10:00:00.2 [W:onnxruntime:, session_state.cc:1316 VerifyEachNodeIsAssignedToAnEp] Some nodes "
        "were not assigned to the preferred execution providers which may or may not have an negative impact on "
        "performance. e.g. ORT explicitly assigns shape related ops to CPU to improve perf.\n"
        "2026-11-30 10:00:00.3 [W:onnxruntime:, graph.cc:1 X] Removing initializer 'w'. It is not used.\n"
    )
    notes = ort_backend._placement_notes(console)
    assert [n[:40] for n in notes] == [
        "4 Memcpy nodes are added to the graph ma",
        "Some nodes were not assigned to the pref",
    ]


def test_tf32_parity_allows_tf32s_rounding_and_no_more() -> None:
    assert parity_limit(5.0, tf32=True) == pytest.approx(5.0 * ort_backend.TF32_PARITY_RTOL) == pytest.approx(0.05)
    assert parity_limit(2e-5, tf32=True) == pytest.approx(2e-7)  # still relative for tiny outputs
    assert parity_limit(0.0, tf32=True) == ort_backend.PARITY_ATOL
    assert parity_limit(5.0, tf32=False) == ort_backend.PARITY_ATOL


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
