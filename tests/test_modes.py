"""Scenarios users pay for: training, dtypes, channels_last, torch.compile, threads and throughput."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import attnbench
import attnbench.runner as runner
from attnbench import report
from attnbench import results as R
from attnbench.backends._torch import COMPILE_PARITY_RTOL, TRAIN_STEP
from attnbench.backends.base import Scenario
from attnbench.backends.cpu import CpuBackend
from attnbench.errors import UsageError
from attnbench.measurement import measure
from attnbench.sweep import Sweep
from tests.conftest import run_cli

FAST = {"min_run_time": 0.01, "warmup": 0.0, "warmup_calls": 1}
FAST_OPTIONS = runner.RunOptions(min_run_time=0.01)
F32 = 4  # bytes per float32 element


# ---------------------------------------------------------------- training


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
    m = measure(lin, (n, fan_in), mode="train", latency=False)
    out = n * fan_out * F32
    expected = out + F32 + F32 + n * fan_in * F32 + out + fan_out * fan_in * F32
    assert m.ok and m.peak_bytes == expected == 16392
    assert "training step" in m.peak_method and "gradients" in m.peak_method
    # The caller's module is left as it came: its mode, and no gradients on it.
    assert lin.training and lin.weight.grad is None and lin.bias.grad is None


def test_infer_memory_of_the_same_layer_is_its_output_only() -> None:
    m = measure(nn.Linear(64, 32), (16, 64), mode="infer", latency=False)
    assert m.peak_bytes == 16 * 32 * F32


def test_train_step_is_timed_with_zero_grad_inside_and_restores_eval_modules() -> None:
    module = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Dropout(0.5)).eval()
    m = measure(module, (2, 8, 8, 8), mode="train", memory=False, **FAST)
    assert m.ok and m.timing is not None and m.timing.median_s > 0
    assert m.extra["step"] == TRAIN_STEP and "zero_grad inside the timed step" in TRAIN_STEP
    assert m.scenario == Scenario(mode="train")
    assert not module.training and all(p.grad is None for p in module.parameters())


def test_train_mode_is_checked() -> None:
    from attnbench.errors import InvalidCaseError

    with pytest.raises(InvalidCaseError, match=r"mode.*infer, train"):
        measure(nn.Identity(), (1, 4), mode="eval")


def test_ort_train_rows_are_skipped_with_the_reason() -> None:
    pytest.importorskip("onnxruntime")
    m = measure(nn.Linear(4, 4), (2, 4), backend="ort", mode="train")
    assert m.status == R.SKIPPED and "no training" in m.reason


@pytest.mark.parametrize("module", ["lka", "van"])
def test_train_counts_are_three_forwards_and_the_other_counters_say_why_not(module: str) -> None:
    # Each conv's backward is a grad_input and a grad_weight conv; each gate product x * g has two backward
    # products (one per operand): a training step is exactly three forwards for both (the check).
    cases = Sweep((module,), (64,), ((32, 32),), modes=("infer", "train")).cases()
    rows = {r.mode: r for r in runner.run(cases, runner.RunOptions(metrics=("params", "macs"))).results}
    assert rows["train"].macs_attnbench == 3 * rows["infer"].macs_attnbench
    assert rows["train"].macs_fvcore is None and rows["train"].macs_thop is None
    assert "fvcore: unavailable" in rows["train"].counter_notes and "backward" in rows["train"].counter_notes
    assert rows["infer"].macs_formula == rows["infer"].macs_attnbench and rows["train"].macs_formula is None


def test_counted_once_per_geometry_and_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnbench.counting as counting

    modes: list[str] = []
    real = counting.count_all

    def spy(*args: Any, mode: str = "infer", **kwargs: Any) -> Any:
        modes.append(mode)
        return real(*args, mode=mode, **kwargs)

    monkeypatch.setattr(counting, "count_all", spy)
    sweep = Sweep(("lka",), (16,), ((8, 8),), dtypes=("float32", "bfloat16"), modes=("infer", "train"))
    rows = runner.run(sweep.cases(), runner.RunOptions(metrics=("params", "macs", "memory"))).results
    assert len(rows) == 4 and sorted(modes) == ["infer", "train"]
    assert {r.mode: r.macs_attnbench for r in rows if r.dtype == "bfloat16"} == {
        r.mode: r.macs_attnbench for r in rows if r.dtype == "float32"
    }


def test_train_and_infer_rows_of_one_geometry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    argv = "profile lka --dim 16 --res 8 --mode infer --mode train --min-run-time 0.01"
    code, out, err = run_cli(capsys, *argv.split(), "-o", str(path), "-q")
    assert code == 0, err
    rows = {(r.mode, r.backend): r for r in R.load(path).results}
    for mode in ("infer", "train"):
        row = rows[(mode, "cpu")]
        assert row.latency_median_s and row.peak_mem_bytes and row.throughput_per_s
        assert json.loads(row.extra)["mode"] == mode
    # Training keeps activations and allocates gradients: it needs more memory than inference.
    assert rows[("train", "cpu")].peak_mem_bytes > rows[("infer", "cpu")].peak_mem_bytes
    assert "mode" in out  # the column appears because the mode varies


# ---------------------------------------------------------------- dtypes and layout


def test_bfloat16_on_cpu_keeps_the_counts_and_changes_the_memory(tmp_path: Path) -> None:
    sweep = Sweep(("lka",), (16,), ((16, 16),), dtypes=("float32", "bfloat16"), backends=("cpu", "ort"))
    sweep.check()  # bfloat16 off cuda is no longer bad input
    rows = {(r.dtype, r.backend): r for r in runner.run(sweep.cases(), FAST_OPTIONS).results}
    f32, bf16 = rows[("float32", "cpu")], rows[("bfloat16", "cpu")]
    assert bf16.ok and f32.ok
    assert (bf16.params, bf16.macs_attnbench) == (f32.params, f32.macs_attnbench)
    assert bf16.peak_mem_bytes < f32.peak_mem_bytes
    assert (
        rows[("bfloat16", "ort")].status == R.SKIPPED
        and "runs float32, not bfloat16" in rows[("bfloat16", "ort")].reason
    )


def test_float16_on_cpu_runs_in_float16() -> None:
    conv = nn.Conv2d(4, 4, 3)
    with CpuBackend().prepare(conv, (1, 4, 8, 8), dtype="float16") as prepared:
        assert prepared.module.weight.dtype == prepared.x.dtype == torch.float16
        assert prepared.run_once().dtype == torch.float16
        assert prepared.peak_memory().peak_bytes >= 1 * 4 * 6 * 6 * 2  # at least its float16 output
    assert conv.weight.dtype == torch.float32


def test_channels_last_puts_module_and_input_in_that_format() -> None:
    conv = nn.Conv2d(8, 8, 3, padding=1)
    prepared = CpuBackend().prepare(conv, (1, 8, 8, 8), scenario=Scenario(channels_last=True))
    with prepared:
        assert prepared.x.is_contiguous(memory_format=torch.channels_last)
        assert prepared.module.weight.is_contiguous(memory_format=torch.channels_last)
        assert prepared.extra["memory_format"] == "channels_last"
        out = prepared.run_once()
        assert torch.allclose(out, conv(prepared.x.contiguous()), atol=1e-5)
    # The caller's module was copied, not converted.
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_of_a_token_module_is_skipped_with_the_reason() -> None:
    cases = Sweep(("lka", "mhsa"), (16,), ((8, 8),), channels_last=(True,)).cases()
    rows = {r.module: r for r in runner.run(cases, FAST_OPTIONS).results}
    assert rows["lka"].ok and rows["lka"].channels_last
    assert rows["mhsa"].status == R.SKIPPED and "tokens" in rows["mhsa"].reason
    assert rows["mhsa"].macs_attnbench  # counted all the same


# ---------------------------------------------------------------- torch.compile


class _Shifted(nn.Module):
    """What a miscompiled module looks like: the right shape, wrong numbers."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * (1 + 1e-3)


def _fake_compile(monkeypatch: pytest.MonkeyPatch, fn: Any) -> None:
    monkeypatch.setattr(torch, "compile", fn)


def test_compile_failure_is_a_compile_failed_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: nn.Module, **kwargs: Any) -> Any:
        def call(*args: Any) -> Any:
            raise RuntimeError("simulated inductor crash")

        return call

    _fake_compile(monkeypatch, broken)
    rows = runner.run([R.Case("lka", 16, 8, 8, compile=True)], FAST_OPTIONS).results
    assert rows[0].status == R.COMPILE_FAILED and "simulated inductor crash" in rows[0].reason
    assert rows[0].macs_attnbench  # counted all the same
    assert torch.get_num_threads() == 1  # the failed prepare restored the threads


def test_compile_failure_reason_is_the_error_without_dynamos_advice() -> None:
    from attnbench.backends._torch import short_error

    try:
        try:
            raise RuntimeError("Attempting to broadcast a dimension of length 1024")
        except RuntimeError as inner:
            raise ValueError("backend='inductor' raised: see below\n\nSet TORCHDYNAMO_VERBOSE=1 for more") from inner
    except ValueError as exc:
        text = short_error(exc)
    assert text == ("ValueError caused by RuntimeError: Attempting to broadcast a dimension of length 1024"), text


def test_compile_that_changes_the_numbers_fails_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compile(monkeypatch, lambda module, **kwargs: _Shifted(module))
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), compile=True, **FAST)
    assert m.status == "parity_failed" and "limit 0.0001" in m.reason
    assert m.parity_max_abs > 0


def test_compile_parity_covers_output_and_gradients_in_train_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compile(monkeypatch, lambda module, **kwargs: module)  # a compiler that changes nothing
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), mode="train", compile=True, **FAST)
    assert m.ok and m.parity_max_abs == 0.0 and m.compile_s is not None
    assert m.extra["compile_parity"] == (
        "against eager float32 and float64: output, input grad, grad of weight, grad of bias"
    )


class _Upcast(nn.Module):
    """What inductor often does in bfloat16: compute in float32 inside, round once at the end."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.f32 = copy.deepcopy(inner).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f32(x.float()).to(x.dtype)


def test_compiled_more_exact_than_eager_passes_although_it_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no tolerance at all, only "at least as close to float64 as eager" can pass it.
    monkeypatch.setitem(COMPILE_PARITY_RTOL, "bfloat16", 0.0)
    _fake_compile(monkeypatch, lambda module, **kwargs: _Upcast(module))
    mlp = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64))
    m = measure(mlp, (8, 64), dtype="bfloat16", compile=True, **FAST)
    assert m.ok, m.reason
    assert m.parity_max_abs > 0  # it does differ from eager
    assert m.extra["compile_parity_err_compiled"] <= m.extra["compile_parity_err_eager"]


def test_compile_parity_is_not_claimed_for_a_random_train_step(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compile(monkeypatch, lambda module, **kwargs: module)
    m = measure(nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)), (4, 8), mode="train", compile=True, **FAST)
    assert m.ok and m.parity_max_abs is None and "random in train mode" in m.extra["compile_parity"]


def test_compile_without_a_cxx_compiler_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), compile=True, **FAST)
    assert m.status == R.SKIPPED and "no C++ compiler here" in m.reason


def test_this_machine_can_build_inductor_kernels() -> None:
    from attnbench.backends.cpu import inductor_missing

    assert inductor_missing() is None  # CI installs g++ and the Python headers when missing (.ci/run)


@pytest.mark.slow
def test_inductor_compiles_a_zoo_module_with_compile_time_apart() -> None:
    m = measure(attnbench.build("lka", 16, (8, 8)), (1, 16, 8, 8), compile=True, memory=False, **FAST)
    assert m.ok, m.reason
    assert m.compile_s > 0 and m.timing.median_s < m.compile_s
    assert m.extra["compile_backend"] == "inductor" and m.extra["compile_graphs"] >= 1
    assert m.extra["compile_parity_excess"] <= COMPILE_PARITY_RTOL["float32"]
    assert m.parity_checked_shapes == ((1, 16, 8, 8),)


# ---------------------------------------------------------------- threads and throughput


def test_throughput_is_batch_over_the_median() -> None:
    cases = Sweep(("lka",), (16,), ((8, 8),), batches=(1, 4), threads=(1, 2)).cases()
    rows = runner.run(cases, FAST_OPTIONS).results
    assert {(r.batch, r.threads) for r in rows} == {(1, 1), (1, 2), (4, 1), (4, 2)}
    for r in rows:
        assert r.throughput_per_s == pytest.approx(r.batch / r.latency_median_s, rel=1e-12)
        assert json.loads(r.extra)["torch_num_threads"] == r.threads


def test_throughput_column_appears_when_batch_or_threads_vary() -> None:
    def row(batch: int, threads: int) -> R.Result:
        case = R.Case("lka", 16, 8, 8, batch=batch, threads=threads)
        return R.Result.for_case(case, latency_median_s=batch * 1e-3, throughput_per_s=1000.0)

    def headers(rows: list[R.Result]) -> list[str]:
        return [c.header for c in report._columns(report.summary(rows), ["cpu"])]

    assert "cpu [samples/s]" in headers([row(1, 1), row(8, 1)])
    assert "cpu [samples/s]" in headers([row(1, 1), row(1, 2)])
    assert "cpu [samples/s]" not in headers([row(1, 1)])
    md = report.markdown([row(1, 1), row(8, 1)], {})
    assert "| cpu [samples/s] |" in md and "| 1000 |" in md


# ---------------------------------------------------------------- the sweep and the reports


def test_sweep_scenario_fields_flow_into_every_case() -> None:
    sweep = Sweep(("lka",), modes=("infer", "train"), compile=(False, True), allocators=("system",))
    cases = sweep.cases()
    assert len(cases) == 4
    assert {(c.mode, c.compile, c.allocator) for c in cases} == {
        (m, c, "system") for m in ("infer", "train") for c in (False, True)
    }


@pytest.mark.parametrize(
    ("sweep", "needle"),
    [
        (Sweep(("lka",), modes=("eval",)), "--mode 'eval': allowed: infer, train"),
        (Sweep(("lka",), allocators=("jemalloc",)), "--allocator 'jemalloc': allowed: pinned, system"),
    ],
)
def test_sweep_refuses_unknown_scenario_values(sweep: Sweep, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        sweep.check()


def test_reports_carry_the_mode(tmp_path: Path) -> None:
    infer = R.Result.for_case(R.Case("lka", 16, 8, 8), latency_median_s=1e-3)
    train = R.Result.for_case(R.Case("lka", 16, 8, 8, mode="train"), latency_median_s=3e-3, compile_s=1.5)
    assert "Scenario: inference, float32, 1 thread, contiguous, eager, pinned allocator." in report.markdown(
        [infer], {}
    )
    both = report.markdown([infer, train], {})
    assert "| mode |" in both and "| train |" in both and "Scenario: float32" in both
    assert "| cpu compile [s] |" in both and "| 1.5 |" in both
    R.write_csv(tmp_path / "r.csv", [infer, train], {})
    (tmp_path / "r.json").write_text(R.json_text([infer, train], {}))
    for name in ("r.csv", "r.json"):
        back = R.load(tmp_path / name).results
        assert [(r.mode, r.compile_s) for r in back] == [("infer", None), ("train", 1.5)]
