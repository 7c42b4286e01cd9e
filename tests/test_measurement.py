"""measure() (attnbench.measurement): arguments, statuses of a case a backend refuses or fails, OOM, the cleanup
after a failure, and the row a Measurement makes."""

from __future__ import annotations

import dataclasses
import math
import sys
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import nn

import attnbench
import attnbench.backends as backends
from attnbench.backends.base import Backend, CaseFailed, Prepared
from attnbench.errors import BackendUnavailableError, InvalidCaseError
from attnbench.measurement import MEASURES, Measurement, is_oom, latency_values, measure, stages
from attnbench.memory import PeakMemory
from attnbench.results import OK, OOM, PARITY_FAILED, SKIPPED, Scenario
from attnbench.timing import LAUNCH_BOUND_FRACTION, MIN_BLOCKS, Sync, TimingBudget, summarize

#: The fewest calls a timing makes: one warm-up call, then MIN_BLOCKS blocks of one call.
TINY = TimingBudget(min_run_time=0.0, max_run_time=1e-9, precision=None, warmup_s=0.0, warmup_calls=1)


class SteppingClock:
    """A fake clock that advances a fixed step on every read (so measure() is deterministic)."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class QuotaExceeded(Exception):
    """The scripted backend's own out-of-memory error, whose message does not say so."""


class OrtLikeFailure(Exception):
    """What ONNX Runtime raises: its own type, derived from Exception, not RuntimeError."""


class ScriptedPrepared(Prepared):
    """A prepared step that fails where its backend says, and otherwise reads a fixed peak."""

    def __init__(self, backend: Scripted) -> None:
        super().__init__()
        self.backend_ = backend
        self.extra = {"scripted": True}

    def run_once(self) -> None:
        """Nothing to run."""

    def timed_callable(self) -> tuple[Callable[[], Any], Sync | None]:
        if self.backend_.fail_in == "run":
            self.backend_.raise_holding_a_tensor()
        return (lambda: None), None

    def peak_memory(self) -> PeakMemory:
        """A fixed reading."""
        return PeakMemory(123, "scripted peak", reserved_bytes=456)

    def close(self) -> None:
        """Count the closes."""
        self.backend_.closed += 1


class Scripted(Backend):
    """A backend that fails in prepare() or in the run with a fresh exception from `exc`, and records its cleanups."""

    name = "scripted"
    description = "fails on cue"
    dtypes = ("float32",)

    def __init__(self, fail_in: str = "", exc: Callable[[], BaseException] | None = None, ok: bool = True) -> None:
        self.fail_in, self.exc, self.ok = fail_in, exc, ok
        self.prepared = 0
        self.closed = 0
        #: At each cleanup: (no exception being handled, the failed step's tensor already freed).
        self.cleanups: list[tuple[bool, bool]] = []
        self._tensor: Callable[[], torch.Tensor | None] = lambda: None

    def available(self) -> tuple[bool, str]:
        """As scripted."""
        return self.ok, "scripted" if self.ok else "the scripted device is unplugged"

    def raise_holding_a_tensor(self) -> None:
        """Raise the scripted error from a frame that holds a tensor (as a failed forward does)."""
        activations = torch.empty(1024)
        self._tensor = weakref.ref(activations)
        assert self.exc is not None
        raise self.exc()

    def prepare(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int = 0) -> Prepared:
        """Fail here, or hand out a ScriptedPrepared."""
        self.prepared += 1
        if self.fail_in == "prepare":
            self.raise_holding_a_tensor()
        return ScriptedPrepared(self)

    def is_oom(self, exc: BaseException) -> bool:
        """Its own quota error is an OOM."""
        return isinstance(exc, QuotaExceeded)

    def cleanup_after_failure(self) -> None:
        """Record whether the failure is still being handled, and whether its tensors are gone."""
        self.cleanups.append((sys.exc_info()[0] is None, self._tensor() is None))


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Scripted]:
    """Register a Scripted backend under its name for the test: call it with Scripted's arguments."""

    def install(*args: Any, **kwargs: Any) -> Scripted:
        backend = Scripted(*args, **kwargs)
        monkeypatch.setitem(backends._INSTANCES, Scripted.name, backend)
        return backend

    return install


# ---------------------------------------------------------------- arguments


def test_bad_arguments_raise() -> None:
    # The scenario checks its own values as it is made.
    with pytest.raises(ValueError, match=r"--dtype 'float64': allowed: float32, float16, bfloat16"):
        measure(nn.Identity(), (1, 4), scenario=Scenario(dtype="float64"))
    with pytest.raises(ValueError, match=r"--threads 0: must be an int >= 1"):
        measure(nn.Identity(), (1, 4), scenario=Scenario(threads=0))
    with pytest.raises(InvalidCaseError, match="input_shape"):
        measure(nn.Identity(), (1, 0))
    with pytest.raises(InvalidCaseError, match=r"Identity: input_shape: must be positive ints, got \(\)"):
        measure(nn.Identity(), ())
    with pytest.raises(InvalidCaseError, match="precision"):
        measure(nn.Identity(), (1, 4), budget=TimingBudget(precision=0.0))
    with pytest.raises(InvalidCaseError, match="max-run-time"):
        measure(nn.Identity(), (1, 4), budget=TimingBudget(max_run_time=0.0))
    with pytest.raises(InvalidCaseError, match="min-run-time"):
        measure(nn.Identity(), (1, 4), budget=TimingBudget(min_run_time=-1.0))
    with pytest.raises(InvalidCaseError, match=r"Identity: budget: warm-up calls 0"):
        measure(nn.Identity(), (1, 4), budget=TimingBudget(warmup_calls=0))


def test_an_unavailable_backend_raises_with_its_reason(scripted: Callable[..., Scripted]) -> None:
    backend = scripted(ok=False)
    with pytest.raises(BackendUnavailableError, match="backend 'scripted' is unavailable: the scripted device is unp"):
        measure(nn.Identity(), (1, 4), backend="scripted")
    assert backend.prepared == 0


def test_public_alias_stays_callable() -> None:
    m = attnbench.measure(nn.Identity(), (1, 2), budget=TimingBudget(min_run_time=0.01, warmup_s=0.0), metrics=())
    assert m.ok and m.timing is None and m.peak_bytes is None
    assert MEASURES == ("latency", "memory")


# ---------------------------------------------------------------- what measure() measures


def test_measure_with_injected_clock_is_deterministic() -> None:
    # Each clock read moves 10 ms: a block reads twice, so each block "takes" 10 ms whatever it runs.
    budget = TimingBudget(min_run_time=0.05, warmup_s=0.25)
    m = measure(nn.Linear(8, 8), (4, 8), budget=budget, clock=SteppingClock(0.01), metrics=("latency",))
    t = m.timing
    assert t is not None
    # Every block equal: the median is known at once, so the floor (0.05 s = 5 blocks) and MIN_BLOCKS (6) rule.
    assert t.calls_per_block == 2 and t.n_blocks == MIN_BLOCKS
    assert t.median_s == pytest.approx(0.005) and t.iqr_s == pytest.approx(0.0) and not t.noisy
    assert t.precision_met is True and t.median_ci_rel == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("metrics", [("latency",), ("memory",), ("latency", "memory"), ()])
def test_metrics_pick_what_is_measured(metrics: tuple[str, ...], scripted: Callable[..., Scripted]) -> None:
    backend = scripted()
    m = measure(nn.Identity(), (1, 4), backend="scripted", budget=TINY, metrics=metrics, seed=7)
    assert m.ok and m.status == OK and m.reason == "" and backend.closed == 1
    assert (m.timing is not None) == ("latency" in metrics)
    if "memory" in metrics:
        assert (m.peak_bytes, m.peak_method, m.reserved_bytes) == (123, "scripted peak", 456)
    else:
        assert (m.peak_bytes, m.peak_method, m.reserved_bytes) == (None, "not requested", None)
    assert m.extra["scripted"] is True and m.extra["seed"] == 7
    assert m.extra["prepare_s"] >= 0 and m.extra["memory_s"] >= 0
    assert m.input_shape == (1, 4) and m.backend == "scripted" and m.scenario == Scenario()
    assert backend.cleanups == []  # nothing failed, nothing to clean


def test_a_refused_scenario_is_skipped_before_anything_is_prepared(scripted: Callable[..., Scripted]) -> None:
    backend = scripted()
    m = measure(nn.Identity(), (1, 4), backend="scripted", scenario=Scenario(mode="train"))
    assert m.status == SKIPPED and m.reason == "backend 'scripted' runs infer only" and m.timing is None
    assert m.scenario == Scenario(mode="train") and backend.prepared == 0 and backend.cleanups == []


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("where", ["prepare", "run"])
def test_a_case_failed_is_a_status_with_what_it_got_as_far_as(where: str, scripted: Callable[..., Scripted]) -> None:
    def exc() -> CaseFailed:
        return CaseFailed(PARITY_FAILED, "off by 1", parity_max_abs=1.0, parity_checked_shapes=[(1, 4)], extra={"a": 1})

    backend = scripted(where, exc)
    m = measure(nn.Identity(), (1, 4), backend="scripted", budget=TINY)
    assert (m.status, m.reason, m.parity_max_abs) == (PARITY_FAILED, "off by 1", 1.0)
    assert m.parity_checked_shapes == ((1, 4),) and m.extra == {"a": 1} and m.timing is None
    assert backend.cleanups == [(True, True)]
    assert backend.closed == (1 if where == "run" else 0)  # a Prepared that failed in its run is closed


@pytest.mark.parametrize("where", ["prepare", "run"])
@pytest.mark.parametrize(
    "exc",
    [
        lambda: MemoryError("Cannot allocate 8 GiB"),
        lambda: torch.OutOfMemoryError("simulated"),
        lambda: QuotaExceeded("quota of the scripted device"),
        lambda: OrtLikeFailure("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested"),
    ],
    ids=["MemoryError", "torch", "backend's own", "ORT-like"],
)
def test_out_of_memory_is_a_status_and_cleaned_up_outside_the_handler(
    where: str, exc: Callable[[], BaseException], scripted: Callable[..., Scripted]
) -> None:
    backend = scripted(where, exc)
    m = measure(nn.Identity(), (1, 4), backend="scripted", budget=TINY)
    stage = "preparing" if where == "prepare" else "running"
    assert m.status == OOM and m.reason == f"out of memory while {stage}: {exc()}"
    # The cleanup runs after the handler: no exception is being handled, and the traceback that held the failed
    # step's frames (and their tensors) is gone, so the memory can really be returned.
    assert backend.cleanups == [(True, True)]


@pytest.mark.parametrize("where", ["prepare", "run"])
def test_any_other_exception_propagates(where: str, scripted: Callable[..., Scripted]) -> None:
    backend = scripted(where, lambda: ValueError("a bug in the module"))
    with pytest.raises(ValueError, match="a bug in the module"):
        measure(nn.Identity(), (1, 4), backend="scripted", budget=TINY)
    assert backend.cleanups == []


def test_is_oom() -> None:
    assert is_oom(MemoryError()) and is_oom(torch.OutOfMemoryError("x"))
    # ONNX Runtime's exceptions derive from Exception: their message says it.
    assert is_oom(OrtLikeFailure("CUDA failure 2: out of memory ; GPU=0"))
    assert is_oom(OrtLikeFailure("Out Of Memory"))  # any case
    assert is_oom(OSError(12, "Cannot allocate memory"))  # the OS's ENOMEM: "[Errno 12] Cannot allocate memory"
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert is_oom(RuntimeError("not enough memory: you tried to allocate 8 GB"))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(OrtLikeFailure("invalid graph"))
    # A backend's own type counts only with that backend.
    quota = QuotaExceeded("quota")
    assert is_oom(quota, Scripted()) and not is_oom(quota) and not is_oom(RuntimeError("x"), Scripted())


# ---------------------------------------------------------------- the row a measurement makes


def _measurement(**changes: Any) -> Measurement:
    """A measured case with a known timing: blocks of 1, 2, 3, 4 and 10 ms (median 3 ms, IQR 2 ms)."""
    timing = dataclasses.replace(
        summarize([1e-3, 2e-3, 3e-3, 4e-3, 10e-3], calls_per_block=2, warmup_calls=12, warmup_s=0.3),
        minor_faults_per_call=1.5,
        other_cpu_cores=0.5,
        stop="fixed",
    )
    values: dict[str, Any] = {
        "backend": "cpu",
        "status": OK,
        "reason": "",
        "timing": timing,
        "peak_bytes": 2048,
        "peak_method": "counted",
        "reserved_bytes": None,
        "parity_max_abs": None,
        "parity_checked_shapes": (),
        "exporter": None,
        "input_shape": (4, 8),
        "allocator": {"allocator": "glibc", "pinned": True},
        "extra": {"torch_num_threads": 1},
    }
    return Measurement(**{**values, **changes})


def test_row_values_are_the_rows_columns_in_base_units() -> None:
    values = _measurement().row_values(batch=4)
    assert values == {
        "status": OK,
        "reason": "",
        "compile_s": None,
        "peak_mem_bytes": 2048,
        "peak_mem_method": "counted",
        "reserved_mem_bytes": None,
        "parity_max_abs": None,
        "exporter": "",
        "latency_median_s": 3e-3,
        "latency_iqr_s": pytest.approx(2e-3),
        "latency_p10_s": pytest.approx(1.4e-3),
        "latency_min_s": 1e-3,
        "latency_calls": 10,
        "latency_noisy": True,
        "latency_contended": True,
        "throughput_per_s": pytest.approx(4 / 3e-3),
        "minor_faults_per_call": 1.5,
        # Five blocks bound no median: an infinite interval is no number in a row.
        "latency_ci_rel": None,
        # A host backend has no device busy time: neither launch-bound nor not.
        "latency_launch_bound": None,
    }
    failed = _measurement(status=PARITY_FAILED, timing=None, exporter="dynamo").row_values(batch=1)
    assert failed["exporter"] == "dynamo" and "latency_median_s" not in failed


@pytest.mark.parametrize(("busy_s", "launch_bound"), [(1.4e-3, True), (1.5e-3, False), (2.9e-3, False)])
def test_a_gpu_row_is_launch_bound_when_its_device_was_busy_under_half_the_median(
    busy_s: float, launch_bound: bool
) -> None:
    m = _measurement(device_busy_s=busy_s)  # median 3 ms
    assert LAUNCH_BOUND_FRACTION == 0.5 and m.busy_share == pytest.approx(busy_s / 3e-3)
    assert m.row_values(batch=1)["latency_launch_bound"] is launch_bound
    extra = m.extra_values()
    assert extra["device_busy_s"] == busy_s and extra["device_busy_share"] == pytest.approx(busy_s / 3e-3)
    # Without a timing there is no share to judge.
    assert _measurement(device_busy_s=busy_s, timing=None).busy_share is None


def test_extra_values_add_the_allocator_and_how_the_timing_went() -> None:
    extra = _measurement().extra_values()
    assert extra["allocator"] == {"allocator": "glibc", "pinned": True} and extra["torch_num_threads"] == 1
    # Warm-up plus every timed call: 0.3 s + mean 4 ms x 10 calls.
    assert extra["timing_loop_s"] == pytest.approx(0.3 + 4e-3 * 10)
    assert (extra["timing_blocks"], extra["timing_stop"], extra["other_cpu_cores"]) == (5, "fixed", 0.5)
    assert extra["precision_target"] is None
    assert set(_measurement(timing=None).extra_values()) == {"allocator", "torch_num_threads"}


def test_latency_values_guard_the_throughput_and_the_interval() -> None:
    zero = dataclasses.replace(summarize([0.0] * 6), other_cpu_cores=None)
    values = latency_values(zero, batch=8)
    assert values["throughput_per_s"] is None and values["latency_contended"] is False
    assert values["latency_ci_rel"] is None  # a zero median has no relative interval
    six = summarize([1.0, 1.0, 1.0, 1.0, 1.0, 1.5])
    assert latency_values(six, batch=2)["latency_ci_rel"] == pytest.approx(0.5)
    assert latency_values(six, batch=2)["throughput_per_s"] == 2.0
    assert not math.isinf(latency_values(six, batch=2)["latency_ci_rel"])


# ---------------------------------------------------------------- stages


def test_a_listener_hears_each_stage_of_a_measurement(scripted: Callable[..., Scripted]) -> None:
    scripted()
    heard: list[str] = []
    with stages(heard.append):
        assert measure(nn.Identity(), (1, 2), "scripted", budget=TINY, clock=SteppingClock(1e-3)).ok
    assert heard == ["preparing", "timing", "memory"]
    measure(nn.Identity(), (1, 2), "scripted", budget=TINY, clock=SteppingClock(1e-3))
    assert len(heard) == 3  # outside the block nobody hears


def test_each_backend_names_its_preparation() -> None:
    assert backends.get_backend("ort").preparing(Scenario()) == "exporting"
    assert backends.get_backend("cpu").preparing(Scenario(compile=True)) == "compiling"
    assert backends.get_backend("cpu").preparing(Scenario()) == "preparing"
