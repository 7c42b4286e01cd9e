"""A run in two phases (attnbench.phases): the plan, work in worker processes and its failures, groups that fit
in memory, and timing in one rotation (or one by one) with the rows' ratios."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from attnbench import backends, phases
from attnbench import results as R
from attnbench.backends import base
from attnbench.backends.base import CaseFailed, Job, Prepared
from attnbench.backends.cpu import CpuBackend
from attnbench.backends.export_cache import EXPORTS
from attnbench.counts import count_geometry
from attnbench.results import Case, Scenario
from attnbench.runner import Sink, run, run_sweep
from attnbench.settings import RunOptions
from attnbench.sink import PREPARE, TIME
from attnbench.sweep import Sweep
from attnbench.timing import TimingBudget
from attnbench.workers import WorkerError
from tests.stubs import stub_measure

FAST = TimingBudget(min_run_time=0.0, max_run_time=0.05)


class Phases(Sink):
    """Records the phases a run announces."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, int]] = []

    def phase(self, phase: str, cases: Sequence[Case], note: str = "") -> None:
        """A phase begins."""
        self.phases.append((phase, len(cases)))


def test_the_plan_groups_cases_by_geometry_and_counting_alone_keeps_one_per_mode() -> None:
    cases = Sweep(("lka",), (16,), ((8, 8), (12, 12)), backends=("cpu", "ort"), scenarios={"mode": ("infer", "train")})
    plan = phases.geometries(cases.cases(), RunOptions())
    assert [[i.index for i in g.items] for g in plan] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan[0].modes == ["infer", "train"] and plan[0].first == cases.cases()[0]
    counted = phases.geometries(cases.cases(), RunOptions(metrics=("params",)))
    assert [[(i.index, i.case.backend, i.case.scenario.mode) for i in g.items] for g in counted] == [
        [(0, R.NO_BACKEND, "infer"), (2, R.NO_BACKEND, "train")],
        [(4, R.NO_BACKEND, "infer"), (6, R.NO_BACKEND, "train")],
    ]


# ---------------------------------------------------------------- worker processes


@pytest.mark.onnx
@pytest.mark.slow
def test_workers_count_and_export_and_the_rows_are_those_of_one_process() -> None:
    cases = Sweep(("lka",), (16,), ((8, 8), (12, 12)), backends=("cpu", "ort")).cases()
    # No cache across runs: the second run must count and export for itself, in its workers.
    options = RunOptions(metrics=("params", "macs", "memory"), counters=("attnbench",), cache_dir=None)
    here = run(cases, options).results
    EXPORTS.clear()  # the graphs of the first run stay in this process: the second must export its own
    pooled = run(cases, RunOptions(**{**options.__dict__, "workers": 2})).results
    assert [r.status for r in pooled] == [R.OK] * 4
    same = ("params", "macs_attnbench", "flops_attnbench", "peak_mem_bytes", "exporter")
    assert [[getattr(r, c) for c in same] for r in pooled] == [[getattr(r, c) for c in same] for r in here]
    graphs = [r.extra_dict["onnx_graph"] for r in pooled if r.backend == "ort"]
    # One export in a worker serves both resolutions (H and W dynamic); each row checked its own parity.
    assert graphs == ["exported in a worker", "reused"]
    assert all(r.parity_max_abs is not None and r.parity_max_abs < 1e-4 for r in pooled if r.backend == "ort")


def crash(module: nn.Module, how: str) -> None:
    """A job that ends its worker process."""
    os._exit(3)


class Offloading(CpuBackend):
    """The CPU backend with a job to offload that kills its worker: the case must fail with why, the run go on."""

    name = "offloading"
    answers: list[Any] = []  # noqa: RUF012 (what receive() got, for the test)

    def offload(self, module: nn.Module, cases: Sequence[Case], seed: int) -> list[Job]:
        """One job per setting that ends its worker."""
        return [Job(f"crash:{cases[0].module}", "tests.test_phases:crash", ("exit",))]

    def receive(self, job: Job, answer: Any) -> None:
        """Keep the answer."""
        self.answers.append(answer)

    def prepare(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int = 0) -> Prepared:
        """Fail as the job did."""
        raise CaseFailed(R.EXPORT_FAILED, f"its job failed: {self.answers[-1]}")


def test_a_job_that_kills_its_worker_fails_its_cases_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Offloading()
    monkeypatch.setitem(backends._INSTANCES, "offloading", backend)
    cases = Sweep(("lka",), (16,), ((8, 8), (12, 12)), backends=("offloading", "cpu")).cases()
    rows = run(cases, RunOptions(metrics=("params", "memory"), counters=("attnbench",), workers=1)).results
    assert [(r.backend, r.status) for r in rows] == [
        ("offloading", R.EXPORT_FAILED),
        ("cpu", R.OK),
        ("offloading", R.EXPORT_FAILED),
        ("cpu", R.OK),
    ]
    # One job for the setting at both resolutions; its worker's death is the answer, with the exit code.
    assert len(backend.answers) == 1 and isinstance(backend.answers[0], WorkerError)
    assert "exit code 3" in rows[0].reason


# ---------------------------------------------------------------- groups that fit in memory


def test_cases_that_do_not_fit_together_are_prepared_and_timed_in_groups(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    options = RunOptions(metrics=("params", "memory"), counters=("attnbench",))
    estimates = [
        count_geometry(Case("lka", 16, n, n), ["infer"], options).modes["infer"].estimate_bytes for n in (8, 12, 16)
    ]
    assert all(isinstance(e, int) for e in estimates)
    # Half of the free memory holds the first two geometries' cases, not the third beside them.
    free = 2 * (estimates[0] + estimates[1]) + 2
    (tmp_path / "meminfo").write_text(f"MemAvailable:   {free // 1024 + 1} kB\n")
    monkeypatch.setattr(base, "MEMINFO", str(tmp_path / "meminfo"))
    monkeypatch.setattr(phases, "GROUP_MEMORY_SHARE", 0.5)
    monkeypatch.setattr("attnbench.guards.GUARD_MARGIN", 1.0)
    stub_measure(monkeypatch, lambda *a: ({"status": R.OK, "reason": ""}, {}))
    sink = Phases()
    outcome = run_sweep(Sweep(("lka",), (16,), ((8, 8), (12, 12), (16, 16))), options, sink)
    assert [r.status for r in outcome.results] == [R.OK] * 3
    assert sink.phases == [(PREPARE, 3), (PREPARE, 1)]


# ---------------------------------------------------------------- timing: one rotation, or one by one


@pytest.mark.parametrize("interleave", [True, False])
def test_one_rotation_pairs_the_rows_for_their_ratios(interleave: bool) -> None:
    torch.manual_seed(0)
    sweep = Sweep(("lka", "mhsa"), (16,), ((8, 8),))
    sink = Phases()
    options = RunOptions(metrics=("latency",), budget=FAST, interleave=interleave, reference="lka")
    rows = run_sweep(sweep, options, sink).results
    assert [r.module for r in rows] == ["lka", "mhsa"] and all(r.ok for r in rows)
    assert sink.phases == [(PREPARE, 2), (TIME, 2)]
    lka, mhsa = rows
    assert lka.latency_ratio == 1.0 and lka.ratio_reference == "lka" and mhsa.ratio_reference == "lka"
    assert mhsa.latency_ratio is not None and mhsa.latency_ratio > 0
    rotations = {r.extra_dict.get("timing_rotation") for r in rows}
    if interleave:
        # Paired round by round: the ratio rests on the rounds both ran, each row's blocks recorded.
        assert len(rotations) == 1 and None not in rotations
        blocks = [len(r.extra_dict["block_times_s"]) for r in rows]
        assert mhsa.ratio_rounds == min(blocks) >= 6
    else:
        assert rotations == {None} and mhsa.ratio_rounds == 0
