"""Stand-ins for a backend's work in runner tests: a case staged without preparing or timing anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from attnbench import phases
from attnbench.results import Case
from attnbench.settings import RunOptions

#: What a stub is: (module, case, options) -> (row values, extra), like the old per-case measurement.
Measure = Callable[[torch.nn.Module, Case, RunOptions], tuple[dict[str, Any], dict[str, Any]]]


class StubMeasurement:
    """A measurement whose row values and extra are given (no timing: its row has no latency)."""

    def __init__(self, values: dict[str, Any], extra: dict[str, Any]) -> None:
        self.values, self.extra, self.timing = values, extra, None

    def row_values(self, batch: int) -> dict[str, Any]:
        """The given values, with the memory columns a real one always has."""
        return {"peak_mem_bytes": None, "peak_mem_method": "", "reserved_mem_bytes": None, **self.values}

    def extra_values(self) -> dict[str, Any]:
        """The given extra."""
        return dict(self.extra)


class StubStaged:
    """A staged case with nothing to time: it concludes with its stub measurement."""

    failure = None

    def __init__(self, values: dict[str, Any], extra: dict[str, Any]) -> None:
        self.measurement = StubMeasurement(values, extra)

    def lanes(self, budget: Any) -> list[Any]:
        """No lanes: nothing is timed."""
        return []

    def conclude(self, lane: Any) -> StubMeasurement:
        """The stub measurement."""
        return self.measurement


def stub_measure(monkeypatch: pytest.MonkeyPatch, fn: Measure) -> None:
    """Stage every case with `fn` instead of its backend: what fn returns is the row; what it raises, the case's."""

    def stage(module: torch.nn.Module, case: Case, options: RunOptions) -> StubStaged:
        return StubStaged(*fn(module, case, options))

    monkeypatch.setattr(phases, "_stage_case", stage)


class TimedStaged(StubStaged):
    """A staged case whose lane times `fn` (a real rotation); it concludes with the lane's median as its latency."""

    def __init__(self, fn: Callable[[], Any], budget: Any = None) -> None:
        super().__init__({"status": "ok", "reason": ""}, {})
        self.fn, self.budget = fn, budget

    def lanes(self, budget: Any) -> list[Any]:
        """One lane timing fn (on its own budget, if it has one)."""
        from attnbench.timing import Lane

        return [Lane(self.fn, self.budget or budget)]

    def conclude(self, lane: Any) -> StubMeasurement:
        """Its latency from the lane (or its failure)."""
        if lane.error is not None:
            return StubMeasurement({"status": "failed", "reason": str(lane.error)}, {})
        from attnbench.measurement import latency_values

        values = {"status": "ok", "reason": "", **latency_values(lane.stats(), 1)}
        return StubMeasurement(values, {"blocks": len(lane.times)})


def stub_timed(monkeypatch: pytest.MonkeyPatch, fn_of: Callable[[Case], tuple[Callable[[], Any], Any]]) -> None:
    """Stage every case as a lane timing what `fn_of(case)` gives: (callable, its own budget or None for the run's);
    nothing is prepared, the rotation is real."""

    def stage(module: torch.nn.Module, case: Case, options: RunOptions) -> TimedStaged:
        return TimedStaged(*fn_of(case))

    monkeypatch.setattr(phases, "_stage_case", stage)
