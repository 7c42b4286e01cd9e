"""The metric declarations: each names a real Result column and a known unit, pivots per backend where a row
holds one value per backend, and the gate compares exactly the counted ones."""

from __future__ import annotations

import dataclasses

import pytest

from attnbench import metrics
from attnbench.report.columns import RENDERERS
from attnbench.results import COLUMNS


@pytest.mark.parametrize("m", metrics.METRICS, ids=lambda m: m.name)
def test_each_metric_reads_a_column_in_a_known_unit(m: metrics.Metric) -> None:
    assert m.column in COLUMNS and m.units in metrics.UNITS
    assert not m.cell or m.cell in RENDERERS
    assert not m.plot or m.axis, "a plotted metric names its axis"
    if m.pivot:
        assert "{backend}" in m.pivot and m.summary_column("ort") == m.pivot.format(backend="ort")
    else:
        assert m.summary_column("ort") == m.column


def test_names_are_unique_and_found() -> None:
    names = [m.name for m in metrics.METRICS]
    assert len(names) == len(set(names))
    assert metrics.metric("latency").column == "latency_median_s"
    with pytest.raises(KeyError, match="no metric 'speed'"):
        metrics.metric("speed")


def test_the_gate_compares_params_and_macs_exactly() -> None:
    assert metrics.gated_exactly() == ("params", "macs_attnbench")


def test_counted_metrics_are_the_ones_without_a_backend() -> None:
    assert [m.name for m in metrics.COUNTED] == ["params", "macs", "flops", "fvcore", "thop"]


def test_the_table_order_follows_the_declarations() -> None:
    # The summary table shows metrics in declaration order: counts, then memory, latency, and the rest.
    names = [m.name for m in metrics.METRICS]
    assert names.index("params") < names.index("macs") < names.index("memory") < names.index("latency")
    assert names[-1] == "parity"


def test_a_metric_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        metrics.metric("params").gate = False  # type: ignore[misc]
