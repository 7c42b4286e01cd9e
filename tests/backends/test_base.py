"""The backend interface (attnbench.backends.base): a Backend's facts, settle and refusal; Prepared; the helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from attnbench.backends import base, get_backend, list_backends
from attnbench.backends.base import (
    TORCH_DTYPES,
    Backend,
    CaseFailed,
    Prepared,
    host_available_bytes,
    make_input,
    torch_dtype,
)
from attnbench.errors import InvalidCaseError
from attnbench.memory import PeakMemory
from attnbench.results import DTYPES, SCENARIO_DEFAULTS, Case, Scenario
from attnbench.timing import Sync, TimingBudget

#: A fixed-budget, no-warm-up timing: the fewest calls a test can make.
TINY = TimingBudget(min_run_time=0.0, max_run_time=1e-9, precision=None, warmup_s=0.0, warmup_calls=1)


class Counting(Prepared):
    """A Prepared whose step counts its calls and notes whether it ran under inference_mode."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.inference: list[bool] = []
        self.closed = 0

    def step(self) -> None:
        """One call of the prepared step."""
        self.calls += 1
        self.inference.append(torch.is_inference_mode_enabled())

    def run_once(self) -> None:
        """One step."""
        self.step()

    def timed_callable(self) -> tuple[Callable[[], Any], Sync | None]:
        return self.step, None

    def peak_memory(self) -> PeakMemory:
        """Nothing measured."""
        return PeakMemory(None, "none")

    def close(self) -> None:
        """Count the closes."""
        self.closed += 1


class Minimal(Backend):
    """A backend that opts in to nothing: every default of the interface."""

    name = "minimal"
    description = "the interface's defaults, in float32 only"
    dtypes = ("float32",)

    def available(self) -> tuple[bool, str]:
        """Always."""
        return True, "here"

    def prepare(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int = 0) -> Prepared:
        """A counting Prepared."""
        return Counting()


class Explained(Minimal):
    """A backend that says in its own words why it refuses, and ignores two scenario fields."""

    name = "explained"
    dtypes = ("float32", "bfloat16")
    why_not: ClassVar[dict[str, str]] = {
        "train": "no backward here",
        "compile": "no compiler here",
        "channels_last": "no layouts here",
        "autocast": "no mixed precision here",
    }
    ignores = ("threads", "compile_mode")


class StepClock:
    """A fake clock that advances `step` seconds on every read."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


# ---------------------------------------------------------------- helpers


def test_inputs_are_seeded() -> None:
    assert torch.equal(make_input((2, 3), seed=5), make_input((2, 3), seed=5))
    assert not torch.equal(make_input((2, 3), seed=5), make_input((2, 3), seed=6))


def test_inputs_are_drawn_in_float32_so_every_dtype_sees_the_same_numbers() -> None:
    x32 = make_input((4, 8, 3, 3), seed=1)
    assert x32.dtype == torch.float32 and x32.shape == (4, 8, 3, 3) and x32.device.type == "cpu"
    for dtype in (torch.bfloat16, torch.float16):
        x = make_input((4, 8, 3, 3), dtype, seed=1)
        assert x.dtype == dtype and torch.equal(x, x32.to(dtype))
    # Standard normal: a few thousand draws have mean ~0 and std ~1.
    big = make_input((64, 64), seed=0)
    assert abs(big.mean().item()) < 0.1 and abs(big.std().item() - 1) < 0.1


def test_torch_dtype_names_every_dtype_and_refuses_others() -> None:
    assert tuple(TORCH_DTYPES) == DTYPES
    assert [torch_dtype(d) for d in DTYPES] == [torch.float32, torch.float16, torch.bfloat16]
    with pytest.raises(InvalidCaseError, match=r"^Conv2d: dtype: must be one of float32, float16, bfloat16, got"):
        torch_dtype("float64", "Conv2d")
    with pytest.raises(InvalidCaseError, match=r"^measure: dtype: .*'fp16'"):
        torch_dtype("fp16")


def test_host_available_bytes_reads_memavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:          100 kB\nMemAvailable:    2048 kB\n")
    monkeypatch.setattr(base, "MEMINFO", str(meminfo))
    assert host_available_bytes() == 2048 * 1024
    meminfo.write_text("MemTotal:       16000000 kB\n")  # an old kernel: no MemAvailable line
    assert host_available_bytes() is None
    monkeypatch.setattr(base, "MEMINFO", str(tmp_path / "absent"))
    assert host_available_bytes() is None


def test_host_available_bytes_of_this_machine() -> None:
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo")
    free = host_available_bytes()
    assert isinstance(free, int) and free > 0


def test_case_failed_carries_status_reason_and_details() -> None:
    exc = CaseFailed("parity_failed", "off by 1", parity_max_abs=1.0, exporter="dynamo")
    assert (exc.status, exc.reason, str(exc)) == ("parity_failed", "off by 1", "parity_failed: off by 1")
    assert exc.details == {"parity_max_abs": 1.0, "exporter": "dynamo"}


# ---------------------------------------------------------------- a Backend's facts


def test_the_interfaces_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Minimal()
    assert backend.facts() == {"device": "cpu", "marker": "x", "parity": "", "ignores": [], "sync": ""}
    assert backend.memory_name == "RAM" and backend.ignores == () and not backend.allocator_states
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable:    1000 kB\n")
    monkeypatch.setattr(base, "MEMINFO", str(meminfo))
    assert backend.free_memory() == 1000 * 1024  # the host's RAM, unless a backend computes elsewhere
    case = Case("lka", 16, 8, 8)
    assert backend.memory_estimate(1234, case) == 1234 and backend.memory_estimate(None, case) is None
    assert backend.counts_instructions(case) is False
    assert backend.is_oom(MemoryError()) is False  # only a backend's own error type (measure() knows the rest)
    assert backend.cleanup_after_failure() is None
    assert backend.refusal(Scenario()) is None


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        (Scenario(dtype="float16"), "backend 'minimal' runs float32, not float16"),
        (Scenario(mode="train"), "backend 'minimal' runs infer only"),
        (Scenario(compile=True), "backend 'minimal' does not run torch.compile"),
        (Scenario(channels_last=True), "backend 'minimal' has no channels_last memory format"),
        (Scenario(autocast="bfloat16"), "backend 'minimal' does not run torch.autocast"),
        (Scenario(allocator="system"), "the allocator state is a glibc setting of the PyTorch CPU process"),
    ],
    ids=["dtype", "train", "compile", "channels_last", "autocast", "allocator"],
)
def test_refusal_says_why_for_each_field(scenario: Scenario, reason: str) -> None:
    refusal = Minimal().refusal(scenario)
    assert refusal is not None and refusal.startswith(reason)


def test_a_backends_own_words_replace_the_generic_refusals() -> None:
    backend = Explained()
    assert backend.refusal(Scenario(mode="train")) == "no backward here"
    assert backend.refusal(Scenario(compile=True)) == "no compiler here"
    assert backend.refusal(Scenario(channels_last=True)) == "no layouts here"
    assert backend.refusal(Scenario(autocast="float16")) == "no mixed precision here"
    assert backend.refusal(Scenario(allocator="system")) == (
        "the allocator state is a glibc setting of the PyTorch CPU process; explained does not allocate through it "
        "per call"
    )
    # The dtype is checked first: a case with several refusals gets the first one.
    assert backend.refusal(Scenario(dtype="float16", mode="train")) == (
        "backend 'explained' runs float32, bfloat16, not float16"
    )


def test_settle_puts_ignored_fields_at_their_defaults() -> None:
    scenario = Scenario(threads=4, compile=True, compile_mode="max-autotune", dtype="bfloat16")
    settled = Explained().settle(scenario)
    assert settled == Scenario(compile=True, dtype="bfloat16")
    assert settled.threads == SCENARIO_DEFAULTS["threads"] and settled.compile_mode == "default"
    # A field that depends on another one that is off is idle too (compile_mode without compile).
    assert Minimal().settle(Scenario(compile_mode="reduce-overhead")) == Scenario()
    assert Minimal().settle(scenario) == scenario


@pytest.mark.parametrize("name", list_backends())
def test_settle_of_every_backend(name: str) -> None:
    backend = get_backend(name)
    asked = Scenario(compile=True, compile_mode="max-autotune", ort_opt_level="basic", threads=2)
    settled = backend.settle(asked)
    expected = dataclasses.replace(asked, **{field: SCENARIO_DEFAULTS[field] for field in backend.ignores})
    assert settled == expected
    # The PyTorch backends run no ONNX Runtime session; ONNX Runtime does not run torch.compile's modes.
    torch_backend = name in ("cpu", "cuda")
    assert settled.ort_opt_level == ("all" if torch_backend else "basic")
    assert settled.compile_mode == ("max-autotune" if torch_backend else "default")
    assert settled.threads == 2 and settled.compile is True  # a refusal, not a settlement, says no to those


# ---------------------------------------------------------------- Prepared


def test_prepared_starts_with_nothing_checked() -> None:
    prepared = Counting()
    assert prepared.exporter is None and prepared.parity_max_abs is None and prepared.compile_s is None
    assert prepared.parity_checked_shapes == () and prepared.extra == {}


def test_prepared_times_its_step_under_inference_mode_with_the_budget_and_clock() -> None:
    prepared = Counting()
    stats = prepared.time(TINY, clock=StepClock(0.5))
    # A fixed budget with no floor: 1 warm-up call, then the fewest blocks of one call each.
    assert stats.warmup_calls == 1 and stats.n_blocks == 6 and stats.calls_per_block == 1
    assert prepared.calls == 1 + 6 and all(prepared.inference)
    # Each clock read moves 0.5 s and a block reads it twice: every block "takes" 0.5 s.
    assert stats.median_s == 0.5 and stats.iqr_s == 0.0


def test_prepared_is_a_context_manager_that_closes() -> None:
    with Counting() as prepared:
        assert prepared.closed == 0
    assert prepared.closed == 1
    with pytest.raises(RuntimeError), Counting() as failing:
        raise RuntimeError("inside")
    assert failing.closed == 1
