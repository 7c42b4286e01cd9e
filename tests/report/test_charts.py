"""The HTML report's charts: one per plotted metric with a panel per backend, exact values on hover, one unit per
metric, the cost map's best points, and a roofline whose ridge lies inside the axes."""

from __future__ import annotations

import pytest

from attnbench.report import charts as C
from attnbench.report.summary import backends_of, summary
from tests.samples import ENV, MODULES, sample_results

SERIES = [f"{m[0]} (C=64)" for m in MODULES]


def _charts(rows=None, env=ENV) -> dict[str, C.Chart]:  # type: ignore[no-untyped-def]
    rows = rows or sample_results()
    return {c.id: c for c in C.charts(summary(rows), backends_of(rows), env)}


def test_one_chart_per_plotted_metric_then_the_cost_map_and_the_roofline() -> None:
    assert list(_charts()) == ["chart-macs", "chart-latency", "chart-memory", "chart-cost-map", "chart-roofline-cpu"]


def test_latency_has_a_panel_per_backend_in_one_unit_and_every_module_in_each() -> None:
    spec = _charts()["chart-latency"].spec
    layout, data = spec["layout"], spec["data"]
    assert [a["text"] for a in layout["annotations"]] == ["<b>cpu</b>", "<b>ort</b>"]
    assert layout["yaxis2"]["matches"] == "y"  # one scale for both panels
    assert layout["yaxis"]["title"]["text"] == "latency [ms], median"  # 47 µs to 10.2 s: one unit, ms
    for axis in ("x", "x2"):
        assert sorted(t["name"] for t in data if t["xaxis"] == axis) == sorted(SERIES)
    # One legend entry per module: a click on it hides the module in both panels (its legend group).
    assert sorted(t["name"] for t in data if t["showlegend"]) == sorted(SERIES)
    assert {t["legendgroup"] for t in data} == set(SERIES)


def test_ticks_are_the_measured_resolutions() -> None:
    x = _charts()["chart-macs"].spec["layout"]["xaxis"]
    assert (x["tickvals"], x["ticktext"]) == ([196, 784, 3136], ["14x14", "28x28", "56x56"])


def test_a_hover_gives_the_exact_value_setting_and_status() -> None:
    data = _charts()["chart-latency"].spec["data"]
    acmix = next(t for t in data if t["name"] == "acmix (C=64)" and t["xaxis"] == "x")
    rows = [r for r in sample_results() if r.module == "acmix" and r.backend == "cpu"]
    assert acmix["y"] == pytest.approx([r.latency_median_s * 1e3 for r in rows])
    text = acmix["text"][1]  # 28x28, noisy in the samples
    value = f"{rows[1].latency_median_s * 1e3:.5g} ms"
    assert f"latency: {value} ± " in text and "28x28 (N = 784), cpu" in text and "status: ok, noisy (~)" in text
    assert acmix["marker"]["symbol"][1].endswith("-open") and not acmix["marker"]["symbol"][0].endswith("-open")
    assert acmix["error_y"]["array"] == pytest.approx([r.latency_iqr_s * 1e3 / 2 for r in rows])


def test_counts_hover_in_full() -> None:
    data = _charts()["chart-macs"].spec["data"]
    mhsa = next(t for t in data if t["name"] == "mhsa (C=64)")
    macs = next(r.macs_attnbench for r in sample_results() if r.module == "mhsa")
    assert f"MACs: {macs:,}" in mhsa["text"][0]


def test_series_differ_in_colour_marker_and_dash() -> None:
    data = _charts()["chart-macs"].spec["data"]
    styles = {(t["line"]["color"], t["marker"]["symbol"][0], t["line"]["dash"]) for t in data}
    assert len({s[0] for s in styles}) == len({s[1] for s in styles}) == len({s[2] for s in styles}) == 4


def test_pareto_marks_what_nothing_beats_on_both_axes() -> None:
    # (3, 3) is beaten by (2, 2) on both axes; a tie beats nothing; the cheapest on one axis always stays.
    assert C.pareto([(1, 5), (2, 2), (3, 3), (5, 1), (1, 5)]) == [True, True, False, True, True]
    assert C.pareto([(1, 5), (1, 4)]) == [False, True]
    assert C.pareto([(1, 1)]) == [True]


def test_the_cost_map_has_a_view_per_resolution_and_cost() -> None:
    chart = _charts()["chart-cost-map"]
    (menu,) = chart.spec["layout"]["updatemenus"]
    labels = [b["label"] for b in menu["buttons"]]
    assert labels[:3] == ["56x56 · latency cpu", "56x56 · latency ort", "56x56 · MACs"]  # the largest first
    assert len(labels) == 9
    visible = [t for t in chart.spec["data"] if t.get("visible")]
    # 56x56, latency cpu against memory cpu: every module measured there, and the ring over the best ones.
    assert [t["name"] for t in visible[:-1]] == SERIES
    ring = visible[-1]
    best = [t for t in visible[:-1] if "nothing beats it" in t["text"][0]]
    assert sorted(zip(ring["x"], ring["y"], strict=True)) == sorted((t["x"][0], t["y"][0]) for t in best)


def test_the_roofline_bends_inside_the_axes() -> None:
    env = {"peaks": [{**ENV["peaks"][0], "bytes_per_s": 1e11}]}  # ridge 1.5 FLOP/B, left of every case
    chart = _charts(env=env)["chart-roofline-cpu"]
    (roof,) = [t for t in chart.spec["data"] if t["name"] == "measured roof"]
    low, high = chart.spec["layout"]["xaxis"]["range"]
    assert roof["x"][1] == pytest.approx(1.5)
    assert 10**low < 1.5 < 10**high
    assert max(roof["y"]) == pytest.approx(150)


def test_without_a_roof_the_roofline_says_so() -> None:
    chart = _charts(env={})["chart-roofline-cpu"]
    assert "No roof was measured" in chart.note
    assert not [t for t in chart.spec["data"] if t["name"] == "measured roof"]


def test_exact_values() -> None:
    assert C.exact(4_998_784, "count") == "4,998,784"
    assert C.exact(0.0123456789, "seconds", "ms", 1e-3) == "12.346 ms"
    assert C.exact(None, "count") == "-"


def test_no_rows_no_charts() -> None:
    assert C.charts(summary([]), [], {}) == []
