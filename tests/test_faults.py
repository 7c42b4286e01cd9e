"""Faults inside a case: time limits, exceptions, OOM and failed ONNX exports become rows; the sweep goes on."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import attnbench.runner as runner
from attnbench import results as R
from attnbench.errors import CaseTimeoutError
from tests.conftest import run_cli as _cli
from tests.test_fuzz import cases


def _sleep_forever(*args: Any, **kwargs: Any) -> Any:
    while True:
        time.sleep(0.05)


class _Hangs(torch.nn.Module):
    """A module whose forward never returns (a stand-in for a pathological case)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sleep_forever()


@pytest.fixture
def alarm_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fast re-firing, and after the test: no timer left armed and the SIGALRM handler restored."""
    monkeypatch.setattr(runner, "TIME_LIMIT_REFIRE_S", 0.05)
    before = signal.getsignal(signal.SIGALRM)
    yield
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before


# ---------------------------------------------------------------- time limit


def test_slow_case_times_out_and_the_next_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, alarm_checked: None
) -> None:
    # Counting once first does the process's lazy imports, so only the stubbed measurement can be slow.
    runner.run([R.Case("lka", 16, 8, 8)], runner.RunOptions(metrics=("params", "macs")))

    def measure(
        module: torch.nn.Module, case: R.Case, options: runner.RunOptions, min_run_time: float | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if case.height == 8:
            _sleep_forever()
        return {"status": R.OK, "reason": ""}, {}

    monkeypatch.setattr(runner, "_measure", measure)
    path = tmp_path / "r.csv"
    code, _, err = _cli(
        capsys, "profile", "lka", "--dim", "16", "--res", "8", "--res", "16", "--time-limit", "0.3", "-o", str(path)
    )
    assert code == 1, err
    rows = R.load(path).results
    assert [(r.height, r.status) for r in rows] == [(8, R.TIMEOUT), (16, R.OK)]
    assert rows[0].reason == "ran past its time limit of 0.3 s"
    assert "timeout" in err


@pytest.mark.parametrize("where", ["build", "count"])
def test_time_limit_covers_building_and_counting(
    monkeypatch: pytest.MonkeyPatch, alarm_checked: None, where: str
) -> None:
    # Counters catch every Exception of a module's forward: the alarm must fire again until the case gives up.
    monkeypatch.setattr(runner, "build_module", _sleep_forever if where == "build" else lambda *a, **k: _Hangs())
    options = runner.RunOptions(metrics=("params", "macs"), time_limit_s=0.2)
    outcome = runner.run([R.Case("lka", 16, 8, 8)], options)
    assert [r.status for r in outcome.results] == [R.TIMEOUT]
    assert outcome.failed == outcome.results


def test_a_swallowed_timeout_still_ends_the_block(alarm_checked: None) -> None:
    # The inner suppress swallows the alarm, as a broad `except Exception` in a counter does.
    with pytest.raises(CaseTimeoutError), runner.time_limit(0.05), contextlib.suppress(CaseTimeoutError):
        _sleep_forever()


def test_time_limit_is_cleared_after_success_and_error(alarm_checked: None) -> None:
    with runner.time_limit(5.0):
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with pytest.raises(ValueError), runner.time_limit(5.0):
        raise ValueError("inside")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


# ---------------------------------------------------------------- exceptions, OOM, export


def test_backend_exception_is_a_failed_row_and_the_next_backend_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnbench.backends.ort import OrtCpuBackend

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated backend fault")

    monkeypatch.setattr(OrtCpuBackend, "prepare", broken)
    path = tmp_path / "r.csv"
    code, _, err = _cli(
        capsys,
        *"profile lka --dim 16 --res 8 --backend ort --backend cpu --min-run-time 0.01 -o".split(),
        str(path),
        "-q",
    )
    assert code == 1, err
    rows = R.load(path).results
    assert [(r.backend, r.status) for r in rows] == [("ort", R.FAILED), ("cpu", R.OK)]
    assert rows[0].reason == "RuntimeError: simulated backend fault"
    assert rows[1].latency_median_s is not None


@pytest.mark.parametrize("where", ["backend", "runner"])
def test_out_of_memory_is_an_oom_row(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    from attnbench.backends.cpu import CpuBackend

    def oom(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("simulated: out of memory")

    # Inside a backend, measure() turns it into a status; outside one, the runner's failure row does.
    monkeypatch.setattr(*((CpuBackend, "prepare", oom) if where == "backend" else (runner, "_measure", oom)))
    outcome = runner.run([R.Case("lka", 16, 8, 8), R.Case("lka", 16, 16, 16)], runner.RunOptions(min_run_time=0.01))
    assert [r.status for r in outcome.results] == [R.OOM, R.OOM]
    assert "out of memory" in outcome.results[0].reason
    assert outcome.failed == outcome.results


def test_failed_onnx_export_is_an_export_failed_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")

    def export(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated exporter crash")

    monkeypatch.setattr(torch.onnx, "export", export)  # both exporters (dynamo, legacy) go through it
    path = tmp_path / "r.csv"
    code, _, err = _cli(
        capsys,
        *"profile lka --dim 16 --res 8 --backend ort --backend cpu --min-run-time 0.01 -o".split(),
        str(path),
        "-q",
    )
    assert code == 1, err
    rows = R.load(path).results
    assert [(r.backend, r.status) for r in rows] == [("ort", "export_failed"), ("cpu", R.OK)]
    assert "dynamo:" in rows[0].reason and "legacy:" in rows[0].reason and "simulated exporter crash" in rows[0].reason


@pytest.mark.parametrize(
    "status", ["export_failed", "session_failed", "parity_failed", R.COMPILE_FAILED, R.OOM, R.TIMEOUT, R.FAILED]
)
def test_every_non_ok_measurement_status_counts_as_failed(status: str) -> None:
    row = R.Result.for_case(R.Case("lka", 16, 8, 8), status=status, reason="x")
    assert runner.RunOutcome([row]).failed == [row]


@pytest.mark.parametrize("status", [R.OK, *R.REFUSED])
def test_ok_and_refusals_do_not_count_as_failed(status: str) -> None:
    row = R.Result.for_case(R.Case("lka", 16, 8, 8), status=status)
    assert runner.RunOutcome([row]).failed == []


def test_list_kwargs_run_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Found by benchmarks/robustness.py: a list value made the Case unhashable and the run died with a traceback.
    path = tmp_path / "r.csv"
    code, _, err = _cli(
        capsys,
        *"profile sk --dim 32 --res 8 --kw kernels=[3,5] --metrics params,macs -o".split(),
        str(path),
        "-q",
    )
    assert code == 0, err
    rows = R.load(path).results
    assert [r.status for r in rows] == [R.OK]
    assert rows[0].kwargs == '{"kernels": [3, 5]}' and rows[0].macs_attnbench == rows[0].macs_formula


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_fuzzed_case_is_one_ok_or_invalid_row(case: tuple[str, int, tuple[int, int], int, dict]) -> None:
    name, dim, res, batch, kwargs = case
    plan = runner.plan([name], [dim], [res], [batch], ["cpu"], kwargs=kwargs)
    rows = runner.run(plan, runner.RunOptions(metrics=("params", "macs"), counters=("attnbench",))).results
    assert len(rows) == 1 and rows[0].status in (R.OK, R.INVALID), rows[0].reason
