"""The CPU backend (attnbench.backends.cpu): its facts, threads set and restored, refusals, autocast, inductor."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from attnbench.backends import base, get_backend
from attnbench.backends.base import CaseFailed
from attnbench.backends.cpu import CpuBackend, inductor_missing
from attnbench.measurement import Measurement, measure
from attnbench.results import COMPILE_FAILED, SKIPPED, Case, Scenario
from attnbench.timing import TimingBudget

FAST = TimingBudget(min_run_time=0.01, max_run_time=0.05, warmup_s=0.0, warmup_calls=1)


def test_facts() -> None:
    cpu = get_backend("cpu")
    assert isinstance(cpu, CpuBackend) and cpu.available() == (True, f"torch {torch.__version__} on the CPU")
    assert cpu.facts() == {
        "device": "cpu",
        "marker": "o",
        "parity": "compiled",
        "ignores": ["ort_opt_level", "tf32"],
        "sync": "",
    }
    assert cpu.memory_name == "RAM" and cpu.allocator_states and cpu.autocasts
    assert cpu.compiles and cpu.channels_last and cpu.modes == ("infer", "train")
    assert cpu.dtypes == ("float32", "float16", "bfloat16") and cpu.ignores == ("ort_opt_level", "tf32")


def test_free_memory_is_the_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:   4096 kB\n")
    monkeypatch.setattr(base, "MEMINFO", str(meminfo))
    assert CpuBackend().free_memory() == 4096 * 1024


def test_cpu_measure_sane() -> None:
    module = nn.Linear(64, 128)
    module.train()
    before = torch.get_num_threads()
    m = measure(module, (32, 64), budget=TimingBudget(min_run_time=0.05, warmup_s=0.01))
    assert isinstance(m, Measurement) and m.ok and m.status == "ok" and m.reason == ""
    t = m.timing
    assert t is not None
    assert 0 < t.min_s <= t.p10_s <= t.median_s and t.iqr_s >= 0 and t.mean_s > 0
    assert t.n_blocks >= 5 and t.n_calls >= t.n_blocks and t.warmup_calls >= 10
    assert m.peak_bytes == 32 * 128 * 4 and "weights and input excluded" in m.peak_method
    assert m.scenario.threads == 1 and m.extra["torch_num_threads"] == 1 and m.scenario.dtype == "float32"
    assert m.extra["grad_mode"] == "inference_mode" and m.extra["memory_format"] == "contiguous"
    assert m.allocator["allocator"]
    # Process-wide and module state are restored.
    assert torch.get_num_threads() == before and module.training


def test_cpu_threads_are_set_and_restored() -> None:
    before = torch.get_num_threads()
    m = measure(nn.Linear(8, 8), (4, 8), scenario=Scenario(threads=2), budget=FAST, metrics=("latency",))
    assert m.extra["torch_num_threads"] == 2 and m.scenario.threads == 2 and m.peak_bytes is None
    assert torch.get_num_threads() == before


def test_a_failed_compile_restores_threads_and_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: nn.Module, **kwargs: Any) -> Any:
        raise RuntimeError("simulated inductor crash")

    monkeypatch.setattr(torch, "compile", broken)
    before = torch.get_num_threads()
    conv = nn.Conv2d(4, 4, 3).train()
    with pytest.raises(CaseFailed) as info:
        CpuBackend().prepare(conv, (1, 4, 8, 8), Scenario(compile=True, threads=2))
    assert info.value.status == COMPILE_FAILED and "simulated inductor crash" in info.value.reason
    assert info.value.details["extra"]["torch_num_threads"] == 2
    # prepare() never handed a Prepared to close: it restored both itself.
    assert torch.get_num_threads() == before and conv.training


def test_autocast_on_cpu_runs_a_float32_module_with_a_bfloat16_output() -> None:
    linear = nn.Linear(16, 32)
    with CpuBackend().prepare(linear, (4, 16), Scenario(autocast="bfloat16")) as prepared:
        assert prepared.module.weight.dtype == prepared.x.dtype == torch.float32
        out = prepared.run_once()
        assert out.dtype == torch.bfloat16 and out.shape == (4, 32)
        assert torch.allclose(out.float(), linear(prepared.x), atol=0.1)
        # The output is the one bfloat16 tensor the step leaves: 4 x 32 x 2 bytes at least.
        assert prepared.peak_memory().peak_bytes >= 4 * 32 * 2
    assert linear.weight.dtype == torch.float32


def test_autocast_is_refused_on_a_module_already_converted() -> None:
    for dtype in ("bfloat16", "float16"):
        reason = CpuBackend().refusal(Scenario(dtype=dtype, autocast="bfloat16"))
        assert reason == f"autocast runs a float32 module in mixed precision; --dtype {dtype} already converts it"
        m = measure(nn.Linear(4, 4), (2, 4), scenario=Scenario(dtype=dtype, autocast="float16"))
        assert m.status == SKIPPED and m.reason.startswith("autocast runs a float32 module") and m.timing is None
    assert CpuBackend().refusal(Scenario(autocast="float16")) is None


def test_every_scenario_field_the_cpu_runs_is_accepted() -> None:
    cpu = CpuBackend()
    for scenario in (
        Scenario(mode="train", dtype="bfloat16", threads=2),
        Scenario(channels_last=True, allocator="system"),
        Scenario(compile=True, compile_mode="max-autotune"),
    ):
        assert cpu.refusal(scenario) is None, scenario


def test_counts_instructions_of_eager_float32_inference_at_one_thread() -> None:
    cpu = CpuBackend()
    assert cpu.counts_instructions(Case("lka", 16, 8, 8))
    assert cpu.counts_instructions(Case("attn.py:A", 16, 8, 8, scenario=Scenario(layout="tokens")))
    for other in (
        Scenario(threads=2),
        Scenario(dtype="bfloat16"),
        Scenario(mode="train"),
        Scenario(channels_last=True),
        Scenario(compile=True),
        Scenario(allocator="system"),
        Scenario(autocast="bfloat16"),
    ):
        assert not cpu.counts_instructions(Case("lka", 16, 8, 8, scenario=other)), other


def test_is_oom_is_the_hosts_refusal() -> None:
    cpu = CpuBackend()
    assert cpu.is_oom(MemoryError()) and cpu.is_oom(torch.OutOfMemoryError("out of memory"))
    assert not cpu.is_oom(RuntimeError("out of memory"))  # the message is measure()'s business


def test_compile_without_a_cxx_compiler_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    m = measure(nn.Conv2d(4, 4, 3), (1, 4, 8, 8), scenario=Scenario(compile=True), budget=FAST)
    assert m.status == SKIPPED and "no C++ compiler here" in m.reason


def test_compile_without_python_headers_is_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sysconfig

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++")
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    reason = inductor_missing()
    assert reason == f"torch.compile on the CPU builds C++ kernels against Python.h, which is not in {tmp_path} " + (
        "(python3-dev)"
    )
    assert CpuBackend().refusal(Scenario(compile=True)) == reason
    assert CpuBackend().refusal(Scenario()) is None  # asked for no compile: no compiler needed


def test_this_machine_can_build_inductor_kernels() -> None:
    assert inductor_missing() is None  # CI installs g++ and the Python headers when missing (.ci/run)
