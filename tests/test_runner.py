"""The runner (attnbench.runner): run and run_sweep with a Sink, counting once per geometry and mode, rows for
every failure with their statuses, time limits, the memory guard, Ctrl-C, and counting-only rows."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import attnbench.runner as runner
import attnbench.zoo.build as zoo_build
from attnbench import counts, guards, phases, store
from attnbench import results as R
from attnbench.backends import base
from attnbench.errors import (
    BackendUnavailableError,
    CaseTimeoutError,
    InvalidCaseError,
    ResourceGuardError,
    UsageError,
)
from attnbench.report import summary
from attnbench.report.columns import summary_columns
from attnbench.report.markdown import markdown
from attnbench.results import Case, Result, Scenario
from attnbench.runner import RunOutcome, Sink, failure_row, run, run_sweep
from attnbench.settings import RunOptions
from attnbench.sweep import Sweep
from attnbench.timing import TimingBudget
from tests.conftest import run_cli as _cli
from tests.stubs import stub_measure, stub_timed
from tests.test_fuzz import cases as fuzzed_cases

FAST_OPTIONS = RunOptions(budget=TimingBudget(min_run_time=0.01, max_run_time=0.05))
COUNTS = RunOptions(metrics=("params", "macs"), counters=("attnbench",))
GIB = 2**30


class Recorder(Sink):
    """A sink that keeps everything the run tells it, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.env: Mapping[str, Any] = {}
        self.planned: list[Case] = []
        self.rows: list[Result] = []
        self.outcome: RunOutcome | None = None

    def start(self, env: Mapping[str, Any], cases: Sequence[Case]) -> None:
        """The environment and the plan."""
        self.env, self.planned = env, list(cases)
        self.events.append(("start", len(cases)))

    def phase(self, phase: str, cases: Sequence[Case], note: str = "") -> None:
        """A phase begins."""
        self.events.append((f"phase {phase}", len(cases)))

    def stage(self, case: Case, stage: str) -> None:
        """A case's stage."""
        self.events.append((stage, case.label))

    def row(self, row: Result) -> None:
        """A finished row."""
        self.rows.append(row)
        self.events.append(("row", row.label))

    def finish(self, outcome: RunOutcome) -> None:
        """The end."""
        self.outcome = outcome
        self.events.append(("finish", len(outcome.results)))


def _sleep_forever(*args: Any, **kwargs: Any) -> Any:
    """A call that never returns by itself."""
    while True:
        time.sleep(0.05)


class _Hangs(torch.nn.Module):
    """A module whose forward never returns (a stand-in for a pathological case)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sleep_forever()


def _stub_measure(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[Case]:
    """Replace the backend run by a stub that records its cases and reports ok; Ctrl-C at case `fail_at`."""
    seen: list[Case] = []

    def fake(module: torch.nn.Module, case: Case, options: RunOptions) -> tuple[dict[str, Any], dict[str, Any]]:
        seen.append(case)
        if fail_at is not None and len(seen) == fail_at:
            raise KeyboardInterrupt
        return {"status": R.OK, "reason": ""}, {"stub": True}

    stub_measure(monkeypatch, fake)
    return seen


def _free(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, free: int) -> None:
    """Pretend the host has `free` bytes of RAM available: the one reading of it, /proc/meminfo, says so."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable:   {free // 1024} kB\n")
    monkeypatch.setattr(base, "MEMINFO", str(meminfo))


@pytest.fixture
def alarm_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fast re-firing of the time limit; after the test no timer is left armed."""
    import signal

    monkeypatch.setattr(guards, "TIME_LIMIT_REFIRE_S", 0.05)
    before = signal.getsignal(signal.SIGALRM)
    yield
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before


# ---------------------------------------------------------------- run_sweep and its sink


@pytest.mark.onnx
def test_run_sweep_streams_every_row_to_the_sink_between_start_and_finish() -> None:
    sweep = Sweep(("lka",), (16,), ((8, 8), (12, 12)), backends=("cpu", "ort"))
    sink = Recorder()
    outcome = run_sweep(sweep, RunOptions(metrics=("params", "memory"), machine="test box"), sink)
    assert not outcome.interrupted and [r.status for r in outcome.results] == [R.OK] * 4
    assert sink.planned == sweep.cases() and sink.outcome is outcome
    # Rows are handed on as they finish (backend by backend) and end in plan order.
    assert [r.case for r in outcome.results] == sweep.cases()
    assert sorted(sink.rows, key=lambda r: r.label) == sorted(outcome.results, key=lambda r: r.label)
    labels = [c.label for c in sweep.cases()]
    # Phase 1: every geometry counted, then each built once and its cases prepared, stage by stage (ORT: its
    # export, session and parity; memory only, so no timing); then each backend's rows in turn.
    assert sink.events == [
        ("start", 4),
        ("phase prepare", 4),
        ("counting", labels[0]),
        ("counting", labels[2]),
        ("building", labels[0]),
        ("preparing", labels[0]),
        ("memory", labels[0]),
        ("export, session, parity", labels[1]),
        ("memory", labels[1]),
        ("building", labels[2]),
        ("preparing", labels[2]),
        ("memory", labels[2]),
        ("export, session, parity", labels[3]),
        ("memory", labels[3]),
        ("row", labels[0]),
        ("row", labels[2]),
        ("row", labels[1]),
        ("row", labels[3]),
        ("finish", 4),
    ]
    # The environment is recorded once, with the machine label every row carries and the sweep itself.
    assert outcome.env is sink.env and outcome.env["machine"] == "test box"
    assert outcome.env["sweep"]["modules"] == ["lka"] and outcome.env["sweep"]["backends"] == ["cpu", "ort"]
    assert "shard" not in outcome.env and outcome.env["threads"] == 1
    assert {r.machine for r in outcome.results} == {"test box"}
    # The two backends of one geometry share its counts.
    assert len({(r.params, r.macs_attnbench) for r in outcome.results if r.height == 8}) == 1


def test_run_sweep_records_the_shard_and_plans_only_its_cases() -> None:
    sweep = Sweep(("lka",), (16,), ((8, 8), (12, 12), (16, 16)), shard=(2, 3))
    sink = Recorder()
    outcome = run_sweep(sweep, COUNTS, sink)
    assert outcome.env["shard"] == "2/3" and sink.planned == sweep.cases() and len(sink.planned) == 1
    assert [r.height for r in outcome.results] == [c.height for c in sink.planned]


@pytest.mark.parametrize(
    ("options", "sweep", "needle"),
    [
        (RunOptions(metrics=("flops",)), Sweep(("lka",)), "--metrics 'flops': unknown flops"),
        (RunOptions(time_limit_s=0.0), Sweep(("lka",)), "--time-limit 0.0: must be > 0 seconds"),
        (COUNTS, Sweep(("lka",), scenarios={"mode": ("eval",)}), "--mode 'eval': allowed: infer, train"),
        (COUNTS, Sweep(("lka",), scenarios={"allocator": ("mimalloc",)}), "--allocator 'mimalloc': allowed: pinned"),
        (COUNTS, Sweep(("lka",), scenarios={"speed": ("fast",)}), "'speed' is not a scenario field"),
    ],
    ids=["metric", "time-limit", "mode", "allocator", "field"],
)
def test_run_sweep_refuses_bad_input_before_anything_runs(options: RunOptions, sweep: Sweep, needle: str) -> None:
    sink = Recorder()
    with pytest.raises(UsageError, match=needle):
        run_sweep(sweep, options, sink)
    assert sink.events == []


def test_sweep_scenario_fields_flow_into_every_case() -> None:
    sweep = Sweep(
        ("lka",),
        (16,),
        ((8, 8),),
        scenarios={"mode": ("infer", "train"), "compile": (False, True), "allocator": ("system",)},
    )
    sink = Recorder()
    outcome = run_sweep(sweep, COUNTS, sink)
    cases = sink.planned
    assert len(cases) == 4
    assert {(c.scenario.mode, c.scenario.compile, c.scenario.allocator) for c in cases} == {
        (m, c, "system") for m in ("infer", "train") for c in (False, True)
    }
    # Counting only: one row per mode, on no backend.
    assert [(r.scenario.mode, r.backend) for r in outcome.results] == [("infer", "none"), ("train", "none")]
    assert outcome.env["sweep"]["scenarios"]["mode"] == ["infer", "train"]


# ---------------------------------------------------------------- counting


@pytest.mark.parametrize("module", ["lka", "van"])
def test_train_counts_are_three_forwards_and_the_other_counters_say_why_not(module: str) -> None:
    # Each conv's backward is a grad_input and a grad_weight conv; each gate product x * g has two backward
    # products (one per operand): a training step is exactly three forwards for both (the check).
    cases = Sweep((module,), (64,), ((32, 32),), scenarios={"mode": ("infer", "train")}).cases()
    rows = {r.scenario.mode: r for r in run(cases, RunOptions(metrics=("params", "macs"))).results}
    assert rows["train"].macs_attnbench == 3 * rows["infer"].macs_attnbench
    assert rows["train"].macs_fvcore is None and rows["train"].macs_thop is None
    assert "fvcore: unavailable" in rows["train"].counter_notes and "backward" in rows["train"].counter_notes
    assert rows["infer"].macs_formula == rows["infer"].macs_attnbench and rows["train"].macs_formula is None


def test_counted_once_per_geometry_and_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[str] = []
    real = counts.count_all

    def spy(*args: Any, mode: str = "infer", **kwargs: Any) -> Any:
        modes.append(mode)
        return real(*args, mode=mode, **kwargs)

    monkeypatch.setattr(counts, "count_all", spy)
    sweep = Sweep(("lka",), (16,), ((8, 8),), scenarios={"dtype": ("float32", "bfloat16"), "mode": ("infer", "train")})
    rows = run(sweep.cases(), RunOptions(metrics=("params", "macs", "memory"))).results
    assert len(rows) == 4 and sorted(modes) == ["infer", "train"]
    assert {r.scenario.mode: r.macs_attnbench for r in rows if r.scenario.dtype == "bfloat16"} == {
        r.scenario.mode: r.macs_attnbench for r in rows if r.scenario.dtype == "float32"
    }


def test_counting_only_rows_are_one_per_mode_on_no_backend() -> None:
    cases = Sweep(
        ("lka",), (16,), ((8, 8),), backends=("cpu", "ort"), scenarios={"dtype": ("float32", "bfloat16")}
    ).cases()
    assert len(cases) == 4
    rows = run(cases, COUNTS).results
    (row,) = rows  # counts depend on neither the backend nor the dtype
    assert row.ok and row.backend == R.NO_BACKEND and row.scenario.mode == "infer"
    assert row.params and row.macs_attnbench and row.macs_formula == row.macs_attnbench
    assert row.latency_median_s is None and row.peak_mem_bytes is None and row.seconds is not None


def test_a_case_its_module_refuses_is_an_invalid_row() -> None:
    # mhsa's 8 heads must divide its dim: 15 is refused before anything is built; the next case runs.
    outcome = run([Case("mhsa", 15, 8, 8), Case("lka", 16, 8, 8)], COUNTS)
    invalid, ok = outcome.results
    assert invalid.status == R.INVALID and ok.ok
    assert (
        invalid.reason.startswith("mhsa: dim % heads == 0") and "dim=15 is not divisible by heads=8" in invalid.reason
    )
    assert invalid.params is None and invalid.macs_attnbench is None
    assert outcome.failed == []  # a refusal by design is not a failure


# ---------------------------------------------------------------- measured rows


def test_bfloat16_on_cpu_keeps_the_counts_and_changes_the_memory() -> None:
    sweep = Sweep(("lka",), (16,), ((16, 16),), backends=("cpu", "ort"), scenarios={"dtype": ("float32", "bfloat16")})
    sweep.check()  # bfloat16 off cuda is no longer bad input
    rows = {(r.scenario.dtype, r.backend): r for r in run(sweep.cases(), FAST_OPTIONS).results}
    f32, bf16 = rows[("float32", "cpu")], rows[("bfloat16", "cpu")]
    assert bf16.ok and f32.ok
    assert (bf16.params, bf16.macs_attnbench) == (f32.params, f32.macs_attnbench)
    assert bf16.peak_mem_bytes < f32.peak_mem_bytes
    assert (
        rows[("bfloat16", "ort")].status == R.SKIPPED
        and "runs float32, not bfloat16" in rows[("bfloat16", "ort")].reason
    )


def test_channels_last_of_a_token_module_is_skipped_with_the_reason() -> None:
    cases = Sweep(("lka", "mhsa"), (16,), ((8, 8),), scenarios={"channels_last": (True,)}).cases()
    rows = {r.module: r for r in run(cases, FAST_OPTIONS).results}
    assert rows["lka"].ok and rows["lka"].scenario.channels_last
    assert rows["mhsa"].status == R.SKIPPED and "tokens" in rows["mhsa"].reason
    assert rows["mhsa"].reason == runner.TOKENS_CHANNELS_LAST.format(module="mhsa")
    assert rows["mhsa"].macs_attnbench  # counted all the same


def test_compile_failure_is_a_compile_failed_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(module: torch.nn.Module, **kwargs: Any) -> Any:
        def call(*args: Any) -> Any:
            raise RuntimeError("simulated inductor crash")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    before = torch.get_num_threads()
    case = Case("lka", 16, 8, 8, scenario=Scenario(compile=True, threads=before + 1))
    rows = run([case], FAST_OPTIONS).results
    assert rows[0].status == R.COMPILE_FAILED and "simulated inductor crash" in rows[0].reason
    assert rows[0].macs_attnbench  # counted all the same
    assert torch.get_num_threads() == before  # the failed prepare restored the threads


def test_throughput_is_batch_over_the_median() -> None:
    cases = Sweep(("lka",), (16,), ((8, 8),), batches=(1, 4), scenarios={"threads": (1, 2)}).cases()
    rows = run(cases, FAST_OPTIONS).results
    assert {(r.batch, r.scenario.threads) for r in rows} == {(1, 1), (1, 2), (4, 1), (4, 2)}
    for r in rows:
        assert r.throughput_per_s == pytest.approx(r.batch / r.latency_median_s, rel=1e-12)
        assert json.loads(r.extra)["torch_num_threads"] == r.scenario.threads


def test_train_and_infer_rows_of_one_geometry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.json"
    argv = "profile lka --dim 16 --res 8 --mode infer --mode train --min-run-time 0.01 --max-run-time 0.05"
    code, out, err = _cli(capsys, *argv.split(), "-o", str(path), "-q")
    assert code == 0, err
    rows = {(r.scenario.mode, r.backend): r for r in store.load(path).results}
    for mode in ("infer", "train"):
        row = rows[(mode, "cpu")]
        assert row.latency_median_s and row.peak_mem_bytes and row.throughput_per_s
        assert json.loads(row.extra)["mode"] == mode
    # Training keeps activations and allocates gradients: it needs more memory than inference.
    assert rows[("train", "cpu")].peak_mem_bytes > rows[("infer", "cpu")].peak_mem_bytes
    assert "mode" in out  # the column appears because the mode varies


# ---------------------------------------------------------------- the rows in files and reports


def test_throughput_column_appears_when_batch_or_threads_vary() -> None:
    def row(batch: int, threads: int) -> Result:
        case = Case("lka", 16, 8, 8, batch=batch, scenario=Scenario(threads=threads))
        return Result.for_case(case, latency_median_s=batch * 1e-3, throughput_per_s=1000.0)

    def headers(rows: list[Result]) -> list[str]:
        return [c.header for c in summary_columns(summary.summary(rows), ["cpu"])]

    assert "cpu [samples/s]" in headers([row(1, 1), row(8, 1)])
    assert "cpu [samples/s]" in headers([row(1, 1), row(1, 2)])
    assert "cpu [samples/s]" not in headers([row(1, 1)])
    md = markdown([row(1, 1), row(8, 1)], {})
    assert "| cpu [samples/s] |" in md and "| 1000 |" in md


def test_reports_carry_the_mode(tmp_path: Path) -> None:
    infer = Result.for_case(Case("lka", 16, 8, 8), latency_median_s=1e-3)
    train = Result.for_case(
        Case("lka", 16, 8, 8, scenario=Scenario(mode="train")), latency_median_s=3e-3, compile_s=1.5
    )
    # The scenario line follows the Scenario's field order.
    assert "Scenario: float32, 1 thread, inference, contiguous, eager, pinned allocator." in markdown([infer], {})
    both = markdown([infer, train], {})
    assert "| mode |" in both and "| train |" in both and "Scenario: float32" in both
    assert "| cpu compile [s] |" in both and "| 1.5 |" in both
    store.write_csv(tmp_path / "r.csv", [infer, train], {})
    (tmp_path / "r.json").write_text(store.json_text([infer, train], {}))
    for name in ("r.csv", "r.json"):
        back = store.load(tmp_path / name).results
        assert [(r.scenario.mode, r.compile_s) for r in back] == [("infer", None), ("train", 1.5)]


# ---------------------------------------------------------------- failures are rows


@pytest.mark.parametrize(
    ("exc", "status", "reason"),
    [
        (InvalidCaseError("lka", "dim", "must be even"), R.INVALID, "lka: dim: must be even"),
        (BackendUnavailableError("no GPU"), R.SKIPPED, "no GPU"),
        (ResourceGuardError("estimated peak 4 TiB"), R.GUARDED, "estimated peak 4 TiB"),
        (CaseTimeoutError("ran past its time limit of 1 s"), R.TIMEOUT, "ran past its time limit of 1 s"),
        (MemoryError("Cannot allocate"), R.OOM, "MemoryError: Cannot allocate"),
        (torch.OutOfMemoryError("CUDA out of memory"), R.OOM, "OutOfMemoryError: CUDA out of memory"),
        (OSError(12, "Cannot allocate memory"), R.OOM, "OSError: [Errno 12] Cannot allocate memory"),
        (RuntimeError("first line\nsecond line"), R.FAILED, "RuntimeError: first line"),
        (ValueError(""), R.FAILED, "ValueError: "),
    ],
    ids=["invalid", "unavailable", "guarded", "timeout", "MemoryError", "torch-oom", "ENOMEM", "failed", "empty"],
)
def test_failure_row_status_comes_from_the_error(exc: Exception, status: str, reason: str) -> None:
    row = failure_row(Case("lka", 16, 8, 8), exc, {"params": 123})
    assert (row.status, row.reason, row.params) == (status, reason, 123)
    assert row.module == "lka" and row.backend == "cpu"


def test_failure_row_reasons_are_one_line_of_at_most_500_characters() -> None:
    row = failure_row(Case("lka", 16, 8, 8), RuntimeError("x" * 600), {})
    assert row.reason == "RuntimeError: " + "x" * 486 and len(row.reason) == 500


def test_an_ort_like_out_of_memory_error_is_an_oom_row_even_on_an_unknown_backend() -> None:
    class Fail(Exception):
        """As ONNX Runtime raises: its own type, derived from Exception."""

    exc = Fail("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer")
    assert failure_row(Case("lka", 16, 8, 8, backend="ort"), exc, {}).status == R.OOM
    assert failure_row(Case("lka", 16, 8, 8, backend="a-removed-plugin"), exc, {}).status == R.OOM


@pytest.mark.parametrize(
    "status", ["export_failed", "session_failed", "parity_failed", R.COMPILE_FAILED, R.OOM, R.TIMEOUT, R.FAILED]
)
def test_every_non_ok_measurement_status_counts_as_failed(status: str) -> None:
    row = Result.for_case(Case("lka", 16, 8, 8), status=status, reason="x")
    assert RunOutcome([row]).failed == [row]


@pytest.mark.parametrize("status", [R.OK, *R.REFUSED])
def test_ok_and_refusals_do_not_count_as_failed(status: str) -> None:
    row = Result.for_case(Case("lka", 16, 8, 8), status=status)
    assert RunOutcome([row]).failed == []


@pytest.mark.parametrize("where", ["backend", "runner"])
def test_out_of_memory_is_an_oom_row(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    from attnbench.backends.cpu import CpuBackend

    def oom(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("simulated: out of memory")

    # Inside a backend, measure() turns it into a status; outside one, the runner's failure row does.
    monkeypatch.setattr(*((CpuBackend, "prepare", oom) if where == "backend" else (phases, "_stage_case", oom)))
    outcome = run([Case("lka", 16, 8, 8), Case("lka", 16, 16, 16)], FAST_OPTIONS)
    assert [r.status for r in outcome.results] == [R.OOM, R.OOM]
    assert "out of memory" in outcome.results[0].reason
    assert outcome.failed == outcome.results


def test_a_case_that_raised_is_cleaned_up_after_the_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.backends.cpu import CpuBackend

    held: list[weakref.ref] = []
    cleanups: list[tuple[bool, bool]] = []

    def fails_holding_a_tensor(*args: Any) -> Any:
        activations = torch.empty(1024)  # what a failed forward's frame holds on the GPU
        held.append(weakref.ref(activations))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def cleanup(self: CpuBackend) -> None:
        # No exception is being handled any more, and the traceback that kept the frame's tensors alive is gone.
        cleanups.append((sys.exc_info()[0] is None, held[-1]() is None))

    monkeypatch.setattr(phases, "_stage_case", fails_holding_a_tensor)
    monkeypatch.setattr(CpuBackend, "cleanup_after_failure", cleanup)
    outcome = run([Case("lka", 16, 8, 8)], FAST_OPTIONS)
    assert [r.status for r in outcome.results] == [R.FAILED]
    assert cleanups == [(True, True)]


def test_a_failing_build_fails_every_case_of_its_geometry_and_the_next_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    real = phases.build_module

    def build(name: str, dim: int, hw: tuple[int, int], *args: Any, **kwargs: Any) -> torch.nn.Module:
        if hw == (8, 8) and torch.get_default_device().type != "meta":
            raise RuntimeError("simulated build fault")
        return real(name, dim, hw, *args, **kwargs)

    monkeypatch.setattr(phases, "build_module", build)
    seen = _stub_measure(monkeypatch)
    cases = Sweep(("lka",), (16,), ((8, 8), (12, 12)), backends=("cpu", "ort")).cases()
    rows = run(cases, RunOptions(metrics=("params", "memory"))).results
    assert [(r.height, r.backend, r.status) for r in rows] == [
        (8, "cpu", R.FAILED),
        (8, "ort", R.FAILED),
        (12, "cpu", R.OK),
        (12, "ort", R.OK),
    ]
    assert rows[0].reason == "RuntimeError: simulated build fault" and rows[0].params  # counted before the build
    assert [c.height for c in seen] == [12, 12]


def test_debug_prints_the_traceback_of_a_failing_case(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated fault")

    stub_measure(monkeypatch, boom)
    monkeypatch.delenv(runner.DEBUG_ENV, raising=False)
    assert not runner.debug()
    run([Case("lka", 16, 8, 8)], RunOptions(metrics=("memory",)))
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv(runner.DEBUG_ENV, "1")
    assert runner.debug()
    (row,) = run([Case("lka", 16, 8, 8)], RunOptions(metrics=("memory",))).results
    assert row.status == R.FAILED and "RuntimeError: simulated fault" in capsys.readouterr().err


# ---------------------------------------------------------------- the memory guard through the runner


def test_the_guard_refuses_a_case_that_cannot_fit_and_keeps_its_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, tmp_path, 1 * 2**20)  # 1 MiB free: nothing real fits
    seen = _stub_measure(monkeypatch)
    outcome = run([Case("mhsa", 16, 32, 32)], RunOptions(metrics=("params", "memory")))
    (row,) = outcome.results
    assert row.status == R.GUARDED and row.params is not None and seen == []
    assert "of free RAM; use --force to run it anyway" in row.reason and row.reason.startswith("estimated peak ")
    assert outcome.failed == []  # refused, not failed
    # With force, the same case runs.
    forced = run([Case("mhsa", 16, 32, 32)], RunOptions(metrics=("params", "memory"), force=True)).results
    assert [r.status for r in forced] == [R.OK] and len(seen) == 1


def test_the_guard_reads_each_backends_own_memory_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.backends.ort import OrtCpuBackend

    _free(monkeypatch, tmp_path, 64 * GIB)
    seen = _stub_measure(monkeypatch)
    # ORT's estimate of this case is past the RAM the host has; the CPU's is not.
    monkeypatch.setattr(OrtCpuBackend, "memory_estimate", lambda self, eager, case: 100 * GIB)
    rows = run(Sweep(("lka",), (16,), ((8, 8),), backends=("cpu", "ort")).cases(), RunOptions(metrics=("memory",)))
    assert [(r.backend, r.status) for r in rows.results] == [("cpu", R.OK), ("ort", R.GUARDED)]
    assert "estimated peak 100 GiB (x1.5 margin = 150 GiB) exceeds the 64 GiB of free RAM" in rows.results[1].reason
    assert [c.backend for c in seen] == ["cpu"]


def test_counting_alone_is_not_guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, tmp_path, 1 * 2**20)
    (row,) = run([Case("mhsa", 16, 32, 32)], COUNTS).results
    assert row.ok and row.params is not None  # counted on the meta device: nothing allocated, nothing to guard


# ---------------------------------------------------------------- Ctrl-C and time limits


def test_ctrl_c_while_preparing_ends_the_run_with_the_rows_finished_before(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _stub_measure(monkeypatch, fail_at=2)
    sweep = Sweep(("lka",), (16,), ((8, 8), (12, 12), (16, 16)))
    sink = Recorder()
    outcome = run_sweep(sweep, RunOptions(metrics=("params", "memory")), sink)
    # The three cases are prepared together, then timed: the second one's preparation was cut, none was finished.
    assert outcome.interrupted and len(seen) == 2 and outcome.results == []
    assert sink.outcome is outcome and sink.events[-1] == ("finish", 0)


def test_ctrl_c_while_timing_keeps_the_rows_whose_timing_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def slow_then_interrupted() -> None:
        calls["n"] += 1
        if calls["n"] > 100:  # after the quick case's six blocks (ten calls a block here)
            raise KeyboardInterrupt
        time.sleep(0.002)

    budget = TimingBudget(max_run_time=10.0, precision=None, min_run_time=0.0, warmup_s=0.0, warmup_calls=1)
    longer = dataclasses.replace(budget, min_run_time=5.0)
    stub_timed(monkeypatch, lambda case: (lambda: None, None) if case.height == 8 else (slow_then_interrupted, longer))
    sweep = Sweep(("lka",), (16,), ((8, 8), (12, 12)))
    sink = Recorder()
    outcome = run_sweep(sweep, RunOptions(metrics=("params", "latency"), budget=budget), sink)
    assert outcome.interrupted
    assert [(r.height, r.status) for r in outcome.results] == [(8, R.OK)]
    assert outcome.results[0].latency_median_s is not None and outcome.results[0].extra_dict["blocks"] == 6
    # The sink still hears the end, with the rows that were finished.
    assert sink.rows == outcome.results and sink.events[-1] == ("finish", 1)


def test_slow_case_times_out_and_the_next_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, alarm_checked: None
) -> None:
    # Counting once first does the process's lazy imports, so only the stubbed measurement can be slow.
    run([Case("lka", 16, 8, 8)], RunOptions(metrics=("params", "macs")))

    def measure(module: torch.nn.Module, case: Case, options: RunOptions) -> tuple[dict[str, Any], dict[str, Any]]:
        if case.height == 8:
            _sleep_forever()
        return {"status": R.OK, "reason": ""}, {}

    stub_measure(monkeypatch, measure)
    path = tmp_path / "r.csv"
    code, _, err = _cli(
        capsys, "profile", "lka", "--dim", "16", "--res", "8", "--res", "16", "--time-limit", "0.3", "-o", str(path)
    )
    assert code == 1, err
    rows = store.load(path).results
    assert [(r.height, r.status) for r in rows] == [(8, R.TIMEOUT), (16, R.OK)]
    assert rows[0].reason == "ran past its time limit of 0.3 s"
    assert "timeout" in err


@pytest.mark.parametrize("where", ["build", "count"])
def test_time_limit_covers_building_and_counting(
    monkeypatch: pytest.MonkeyPatch, alarm_checked: None, where: str
) -> None:
    # Counters catch every Exception of a module's forward: the alarm must fire again until the case gives up.
    stub = _sleep_forever if where == "build" else lambda *a, **k: _Hangs()
    monkeypatch.setattr(phases, "build_module", stub)
    monkeypatch.setattr(zoo_build, "build_module", stub)  # the counting build (attnbench.zoo.build.build_for_counting)
    options = RunOptions(metrics=("params", "macs"), time_limit_s=0.2)
    outcome = run([Case("lka", 16, 8, 8)], options)
    assert [r.status for r in outcome.results] == [R.TIMEOUT]
    assert outcome.failed == outcome.results


def test_time_limit_covers_the_measurement(monkeypatch: pytest.MonkeyPatch, alarm_checked: None) -> None:
    def measure(module: torch.nn.Module, case: Case, options: RunOptions) -> tuple[dict[str, Any], dict[str, Any]]:
        return _sleep_forever() if case.backend == "cpu" else ({"status": R.OK, "reason": ""}, {})

    # Counting once first does the process's lazy imports: the limit is for the stubbed measurement.
    run([Case("lka", 16, 8, 8)], COUNTS)
    stub_measure(monkeypatch, measure)
    cases = Sweep(("lka",), (16,), ((8, 8),), backends=("cpu", "ort")).cases()
    rows = run(cases, RunOptions(metrics=("memory",), time_limit_s=1.0)).results
    # The limit is per case: the cpu case ran out of it, the ort case of the same geometry had its own.
    assert [(r.backend, r.status) for r in rows] == [("cpu", R.TIMEOUT), ("ort", R.OK)]
    assert rows[0].reason == "ran past its time limit of 1 s"


# ---------------------------------------------------------------- through the command line


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
    rows = store.load(path).results
    assert [(r.backend, r.status) for r in rows] == [("ort", R.FAILED), ("cpu", R.OK)]
    assert rows[0].reason == "RuntimeError: simulated backend fault"
    assert rows[1].latency_median_s is not None


@pytest.mark.onnx
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
    rows = store.load(path).results
    assert [(r.backend, r.status) for r in rows] == [("ort", "export_failed"), ("cpu", R.OK)]
    assert "dynamo:" in rows[0].reason and "legacy:" in rows[0].reason and "simulated exporter crash" in rows[0].reason


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
    rows = store.load(path).results
    assert [r.status for r in rows] == [R.OK]
    assert rows[0].kwargs == '{"kernels": [3, 5]}' and rows[0].macs_attnbench == rows[0].macs_formula


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzed_cases())
def test_every_fuzzed_case_is_one_ok_or_invalid_row(case: tuple[str, int, tuple[int, int], int, dict]) -> None:
    name, dim, res, batch, kwargs = case
    planned = Sweep((name,), (dim,), (res,), (batch,), kwargs=kwargs).cases()
    rows = run(planned, COUNTS).results
    assert len(rows) == 1 and rows[0].status in (R.OK, R.INVALID), rows[0].reason


def test_no_environment_is_recorded_by_run_alone() -> None:
    outcome = run([Case("lka", 16, 8, 8)], COUNTS)
    assert outcome.env == {} and not outcome.interrupted and outcome.system_worker_startup_s == 0.0
    assert outcome.results[0].machine  # labelled with this machine all the same
