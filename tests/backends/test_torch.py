"""What the PyTorch backends share (attnbench.backends._torch): modes, dtypes, channels_last, autocast, torch.compile
and its parity against eager, and the training step. Run through the CPU backend, which every machine has."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

import attnbench
from attnbench.backends._torch import (
    COMPILE_PARITY_RTOL,
    INFER_STEP,
    TRAIN_STEP,
    TorchPrepared,
    short_error,
    timed_out,
)
from attnbench.backends.cpu import CpuBackend
from attnbench.errors import CaseTimeoutError
from attnbench.measurement import measure
from attnbench.results import COMPILE_FAILED, COMPILE_MODES, OK, OOM, PARITY_FAILED, Scenario
from attnbench.timing import TimingBudget

#: A short timing: no warm-up to speak of, a 10 ms floor, a 50 ms cap.
FAST = TimingBudget(min_run_time=0.01, max_run_time=0.05, warmup_s=0.0, warmup_calls=1)
F32 = 4  # bytes per float32 element


class _Shifted(nn.Module):
    """What a miscompiled module looks like: the right shape, wrong numbers."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * (1 + 1e-3)


class _Upcast(nn.Module):
    """What inductor often does in bfloat16: compute in float32 inside, round once at the end."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.f32 = copy.deepcopy(inner).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f32(x.float()).to(x.dtype)


class AutocastProbe(nn.Module):
    """A linear layer that notes, on every call, whether CPU autocast is on and in which dtype."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return self.linear(x)


def _fake_compile(monkeypatch: pytest.MonkeyPatch, fn: Any) -> None:
    """Replace torch.compile (the backends call it as torch.compile(module, mode=...))."""
    monkeypatch.setattr(torch, "compile", fn)


def _identity_compile(module: nn.Module, **kwargs: Any) -> nn.Module:
    """A compiler that changes nothing."""
    return module


# ---------------------------------------------------------------- modes and the training step


def test_train_memory_of_a_linear_layer_is_exact_to_the_byte() -> None:
    """Linear(64 -> 32) on (16, 64), forward + backward of out.sum(), grads None before the step.

    Allocated during the step, in order, while everything before stays alive:
      out = x W^T + b            16 x 32 x 4 = 2048
      loss = out.sum()                          4
      d loss (the seed, ones)                   4
      grad_input = g W           16 x 64 x 4 = 4096
      g made dense for g^T x     16 x 32 x 4 = 2048  (the seed expanded to out's shape has stride 0)
      grad_weight = g^T x        32 x 64 x 4 = 8192  -> the peak: 16392, then the dense copy is freed
      grad_bias = g.sum(0)            32 x 4 =  128  (after the copy is freed: below the peak)
    """
    n, fan_in, fan_out = 16, 64, 32
    lin = nn.Linear(fan_in, fan_out)
    m = measure(lin, (n, fan_in), scenario=Scenario(mode="train"), metrics=("memory",))
    out = n * fan_out * F32
    expected = out + F32 + F32 + n * fan_in * F32 + out + fan_out * fan_in * F32
    assert m.ok and m.peak_bytes == expected == 16392
    assert "training step" in m.peak_method and "gradients" in m.peak_method
    # The caller's module is left as it came: its mode, and no gradients on it.
    assert lin.training and lin.weight.grad is None and lin.bias.grad is None


def test_infer_memory_of_the_same_layer_is_its_output_only() -> None:
    m = measure(nn.Linear(64, 32), (16, 64), scenario=Scenario(mode="infer"), metrics=("memory",))
    assert m.peak_bytes == 16 * 32 * F32
    assert "one warmed-up forward" in m.peak_method and m.extra["step"] == INFER_STEP


def test_train_step_is_timed_with_zero_grad_inside_and_restores_eval_modules() -> None:
    module = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Dropout(0.5)).eval()
    m = measure(module, (2, 8, 8, 8), scenario=Scenario(mode="train"), budget=FAST, metrics=("latency",))
    assert m.ok and m.timing is not None and m.timing.median_s > 0
    assert m.extra["step"] == TRAIN_STEP and "zero_grad inside the timed step" in TRAIN_STEP
    assert m.scenario == Scenario(mode="train")
    assert m.extra["mode"] == "train" and m.extra["grad_mode"] == "enable_grad"
    assert not module.training and all(p.grad is None for p in module.parameters())


def test_each_train_step_writes_fresh_gradients() -> None:
    lin = nn.Linear(8, 4)
    with CpuBackend().prepare(lin, (3, 8), Scenario(mode="train")) as prepared:
        assert prepared.module is not lin and prepared.module.training  # a copy, in train mode
        assert prepared.x.requires_grad
        prepared.run_once()
        first = prepared.module.weight.grad.clone()
        prepared.run_once()
        # zero_grad(set_to_none=True) inside the step: the second step's gradient is not added to the first.
        assert torch.equal(prepared.module.weight.grad, first)
        # d(sum(x W^T + b))/dW = the column sums of x, for each output row.
        assert torch.allclose(first, prepared.x.detach().sum(0).expand(4, 8))
        assert torch.equal(prepared.x.grad, lin.weight.detach().sum(0).expand(3, 8))
    assert lin.weight.grad is None and lin.training


class GradSpy(nn.Linear):
    """A Linear that notes, as each forward starts, whether its weight's and its input's gradients are None."""

    seen: ClassVar[list[tuple[bool, bool]]] = []  # a class attribute: the backend's copy of the module shares it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        GradSpy.seen.append((self.weight.grad is None, x.grad is None))
        return super().forward(x)


def test_train_timing_sets_the_gradients_to_none_before_each_step() -> None:
    # Zeroing them in place gives the same gradients (the test above) but times another step: backward then
    # adds into kept buffers instead of allocating them, which is not what a training loop with
    # zero_grad(set_to_none=True), PyTorch's default since 2.0, does.
    GradSpy.seen.clear()
    budget = TimingBudget(min_run_time=0.0, max_run_time=1.0, precision=None, warmup_s=0.0, warmup_calls=2)
    with CpuBackend().prepare(GradSpy(8, 4), (3, 8), Scenario(mode="train")) as prepared:
        stats = prepared.time(budget)
    assert len(GradSpy.seen) >= stats.warmup_calls + stats.n_calls >= 3  # every call a step, timed ones too
    assert GradSpy.seen == [(True, True)] * len(GradSpy.seen)


def test_train_mode_is_checked() -> None:
    with pytest.raises(ValueError, match=r"--mode 'eval': allowed: infer, train"):
        Scenario(mode="eval")


def test_an_infer_step_leaves_the_float32_module_in_place() -> None:
    conv = nn.Conv2d(4, 4, 3).train()
    with CpuBackend().prepare(conv, (1, 4, 8, 8), Scenario()) as prepared:
        # Nothing to change: the caller's module itself runs, in eval mode, under inference_mode.
        assert prepared.module is conv and not conv.training
        out = prepared.run_once()
        assert out.shape == (1, 4, 6, 6) and out.is_inference()
    assert conv.training


# ---------------------------------------------------------------- dtypes and layout


def test_cpu_bfloat16_leaves_the_module_float32() -> None:
    module = nn.Linear(16, 16)
    m = measure(module, (4, 16), scenario=Scenario(dtype="bfloat16"), budget=FAST)
    assert m.ok and m.peak_bytes == 4 * 16 * 2
    assert module.weight.dtype == torch.float32


def test_float16_on_cpu_runs_in_float16() -> None:
    conv = nn.Conv2d(4, 4, 3)
    with CpuBackend().prepare(conv, (1, 4, 8, 8), Scenario(dtype="float16")) as prepared:
        assert prepared.module.weight.dtype == prepared.x.dtype == torch.float16
        assert prepared.run_once().dtype == torch.float16
        assert prepared.peak_memory().peak_bytes >= 1 * 4 * 6 * 6 * 2  # at least its float16 output
    assert conv.weight.dtype == torch.float32


def test_channels_last_puts_module_and_input_in_that_format() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1)
    prepared = CpuBackend().prepare(conv, (1, 8, 8, 8), Scenario(channels_last=True))
    with prepared:
        assert prepared.x.is_contiguous(memory_format=torch.channels_last)
        assert prepared.module.weight.is_contiguous(memory_format=torch.channels_last)
        assert prepared.extra["memory_format"] == "channels_last"
        out = prepared.run_once()
        assert torch.allclose(out, conv(prepared.x.contiguous()), atol=1e-5)
    # The caller's module was copied, not converted.
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_leaves_a_token_input_as_it_is() -> None:
    with CpuBackend().prepare(nn.Linear(8, 8), (2, 5, 8), Scenario(channels_last=True)) as prepared:
        assert prepared.x.shape == (2, 5, 8) and prepared.x.is_contiguous()


# ---------------------------------------------------------------- autocast


def test_autocast_runs_every_timed_and_measured_step_under_torch_autocast() -> None:
    probe = AutocastProbe()
    m = measure(probe, (4, 16), scenario=Scenario(autocast="bfloat16"), budget=FAST)
    assert m.ok, m.reason
    assert m.extra["autocast"] == "torch.autocast('cpu', dtype=torch.bfloat16)"
    assert probe.seen and set(probe.seen) == {(True, torch.bfloat16)}
    # A float32 module, and its output in the autocast dtype: 4 x 16 bfloat16 values, at least.
    assert probe.linear.weight.dtype == torch.float32
    assert m.peak_bytes is not None and m.peak_bytes >= 4 * 16 * 2


def test_autocast_off_runs_without_it() -> None:
    probe = AutocastProbe()
    m = measure(probe, (4, 16), budget=FAST, metrics=("latency",))
    assert m.ok and "autocast" not in m.extra
    assert set(probe.seen) == {(False, torch.get_autocast_dtype("cpu"))}


def test_autocast_training_step_computes_in_the_autocast_dtype_with_float32_gradients() -> None:
    lin = nn.Linear(16, 8)
    with CpuBackend().prepare(lin, (4, 16), Scenario(mode="train", autocast="bfloat16")) as prepared:
        outputs: list[torch.dtype] = []
        prepared.module.register_forward_hook(lambda module, args, out: outputs.append(out.dtype))
        prepared.run_once()
        assert outputs == [torch.bfloat16]
        assert prepared.module.weight.dtype == prepared.module.weight.grad.dtype == torch.float32
    assert lin.weight.grad is None


# ---------------------------------------------------------------- torch.compile


def test_compile_failure_is_a_compile_failed_status(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: nn.Module, **kwargs: Any) -> Any:
        def call(*args: Any) -> Any:
            raise RuntimeError("simulated inductor crash")

        return call

    _fake_compile(monkeypatch, broken)
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), scenario=Scenario(compile=True), budget=FAST)
    assert m.status == COMPILE_FAILED and m.reason == "RuntimeError: simulated inductor crash"
    assert m.timing is None and m.extra["mode"] == "infer"


class _DynamoWrapped(Exception):
    """How dynamo reports an error of a compiled call: its own type, the original named in the message."""

    def __init__(self, inner: BaseException) -> None:
        super().__init__(f"backend='inductor' raised:\n{type(inner).__name__}: {inner}")
        self.inner_exception = inner


@pytest.mark.parametrize("wrapped", [False, True], ids=["raw", "wrapped by dynamo"])
def test_out_of_memory_while_compiling_is_an_oom_not_a_compile_failure(
    monkeypatch: pytest.MonkeyPatch, wrapped: bool
) -> None:
    def out_of_memory(module: nn.Module, **kwargs: Any) -> Any:
        def call(*args: Any) -> Any:
            oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise _DynamoWrapped(oom) if wrapped else oom

        return call

    _fake_compile(monkeypatch, out_of_memory)
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), scenario=Scenario(compile=True), budget=FAST)
    assert m.status == OOM and "Tried to allocate 2.00 GiB" in m.reason


def test_the_time_limit_while_compiling_is_a_timeout_not_a_compile_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(module: nn.Module, **kwargs: Any) -> Any:
        def call(*args: Any) -> Any:
            try:
                raise CaseTimeoutError("ran past its time limit of 1 s")
            except CaseTimeoutError as exc:  # dynamo turns what its compiler raised into its own error
                raise RuntimeError("inductor's compile was interrupted") from exc

        return call

    _fake_compile(monkeypatch, slow)
    with pytest.raises(RuntimeError, match="interrupted") as info:
        measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), scenario=Scenario(compile=True), budget=FAST)
    assert timed_out(info.value) and not timed_out(RuntimeError("x"))
    # The runner's time limit then makes the row a timeout (attnbench.guards.time_limit).


def test_compile_failure_reason_is_the_error_without_dynamos_advice() -> None:
    try:
        try:
            raise RuntimeError("Attempting to broadcast a dimension of length 1024")
        except RuntimeError as inner:
            raise ValueError("backend='inductor' raised: see below\n\nSet TORCHDYNAMO_VERBOSE=1 for more") from inner
    except ValueError as exc:
        text = short_error(exc)
    assert text == ("ValueError caused by RuntimeError: Attempting to broadcast a dimension of length 1024"), text
    assert short_error(RuntimeError("x" * 1000), limit=20) == "RuntimeError: xxx..."


@pytest.mark.parametrize("mode", COMPILE_MODES)
def test_compile_mode_is_passed_to_torch_compile(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    modes: list[str | None] = []

    def recording(module: nn.Module, *, mode: str | None = None, **kwargs: Any) -> nn.Module:
        modes.append(mode)
        return module

    _fake_compile(monkeypatch, recording)
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), scenario=Scenario(compile=True, compile_mode=mode), budget=FAST)
    assert m.ok, m.reason
    assert modes == [mode] and m.extra["compile_mode"] == mode and m.extra["compile_backend"] == "inductor"
    assert m.compile_s is not None and m.compile_s >= 0 and m.parity_max_abs == 0.0


def test_compile_that_changes_the_numbers_fails_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compile(monkeypatch, lambda module, **kwargs: _Shifted(module))
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), scenario=Scenario(compile=True), budget=FAST)
    assert m.status == PARITY_FAILED and "limit 0.0001" in m.reason
    assert m.parity_max_abs > 0


def test_compile_parity_covers_output_and_gradients_in_train_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compile(monkeypatch, _identity_compile)
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), scenario=Scenario(mode="train", compile=True), budget=FAST)
    assert m.ok and m.parity_max_abs == 0.0 and m.compile_s is not None
    assert m.extra["compile_parity"] == (
        "against eager float32 and float64: output, input grad, grad of weight, grad of bias"
    )
    assert m.parity_checked_shapes == ((1, 4, 8, 8),)


def test_compiled_more_exact_than_eager_passes_although_it_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no tolerance at all, only "at least as close to float64 as eager" can pass it.
    monkeypatch.setitem(COMPILE_PARITY_RTOL, "bfloat16", 0.0)
    _fake_compile(monkeypatch, lambda module, **kwargs: _Upcast(module))
    mlp = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64))
    m = measure(mlp, (8, 64), scenario=Scenario(dtype="bfloat16", compile=True), budget=FAST)
    assert m.ok, m.reason
    assert m.parity_max_abs > 0  # it does differ from eager
    assert m.extra["compile_parity_err_compiled"] <= m.extra["compile_parity_err_eager"]


def test_compile_parity_under_autocast_uses_the_autocast_dtypes_tolerance(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compile(monkeypatch, _identity_compile)
    scenario = Scenario(compile=True, autocast="bfloat16")
    m = measure(nn.Linear(16, 16), (4, 16), scenario=scenario, budget=FAST, metrics=("latency",))
    assert m.ok, m.reason
    assert m.extra["compile_parity_rtol"] == COMPILE_PARITY_RTOL["bfloat16"] and m.parity_max_abs == 0.0
    # Eager under autocast is a bfloat16 computation: measurably off the float64 result.
    assert m.extra["compile_parity_err_eager"] > 1e-4


def test_train_parity_goes_on_when_eager_differs_from_itself_by_round_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA's atomic-add backward passes (convolutions, pooling) make two eager steps differ in the last bits.
    _fake_compile(monkeypatch, _identity_compile)
    real = TorchPrepared._outputs

    def nondeterministic(self: TorchPrepared, module: nn.Module, seed: int, *args: Any, **kw: Any) -> dict:
        tensors = real(self, module, seed, *args, **kw)
        if seed == 1:  # the second eager step: a few units of float32's last place off
            tensors = {k: v * (1 + 4e-7) for k, v in tensors.items()}
        return tensors

    monkeypatch.setattr(TorchPrepared, "_outputs", nondeterministic)
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), scenario=Scenario(mode="train", compile=True), budget=FAST)
    assert m.ok, m.reason
    assert m.extra["compile_parity"].startswith("against eager float32 and float64")
    assert 0 < m.extra["compile_parity_eager_spread"] < COMPILE_PARITY_RTOL["float32"]


def test_compile_parity_is_not_claimed_for_a_random_train_step(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compile(monkeypatch, _identity_compile)
    module = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    m = measure(module, (4, 8), scenario=Scenario(mode="train", compile=True), budget=FAST)
    assert m.ok and m.parity_max_abs is None and "random in train mode" in m.extra["compile_parity"]


@pytest.mark.slow
def test_inductor_compiles_a_zoo_module_with_compile_time_apart() -> None:
    module = attnbench.build("lka", 16, (8, 8))
    m = measure(module, (1, 16, 8, 8), scenario=Scenario(compile=True), budget=FAST, metrics=("latency",))
    assert m.ok, m.reason
    assert m.compile_s > 0 and m.timing.median_s < m.compile_s
    assert m.extra["compile_backend"] == "inductor" and m.extra["compile_graphs"] >= 1
    assert m.extra["compile_parity_excess"] <= COMPILE_PARITY_RTOL["float32"]
    assert m.parity_checked_shapes == ((1, 16, 8, 8),)
    assert m.status == OK
