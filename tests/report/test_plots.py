"""Plots say what they show: titles and axis labels name the metric and unit, one line and legend entry per series,
and the roofline puts each case under the measured roof."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attnbench.report import plots
from attnbench.report.markdown import markdown
from attnbench.report.summary import summary
from attnbench.results import Result
from attnbench.roofline import min_traffic_bytes
from tests.samples import ENV, MODULES, sample_results

SERIES = [f"{m[0]} (C=64)" for m in MODULES]


def _by_name(found: list[plots.Plot]) -> dict[str, plots.Plot]:
    return {p.name: p for p in found}


def test_scaling_plots_name_metric_and_unit_on_title_and_axis() -> None:
    found = _by_name(plots.scaling_figures(sample_results()))
    assert set(found) == {"macs.png", "latency_cpu.png", "latency_ort.png", "memory_cpu.png"}
    labels = {
        "macs.png": "MACs (attnbench counter)",
        "latency_cpu.png": "latency cpu [ms], median",
        "latency_ort.png": "latency ort [ms], median",
        "memory_cpu.png": "peak memory cpu [MiB]",
    }
    for name, label in labels.items():
        (ax,) = found[name].figure.axes
        assert ax.get_ylabel() == label  # was the last legend entry: "clo (C=64)"
        assert ax.get_title() == f"{label} against N"
        assert ax.get_xlabel() == "resolution H x W (log of the tokens N = H x W)"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == SERIES
        assert len(ax.get_lines()) == len(SERIES)  # one line per module series
        # Ticks at the measured resolutions, not at 2x10^2.
        assert [t.get_text() for t in ax.get_xticklabels()] == ["14x14", "28x28", "56x56"]
        assert list(ax.get_xticks()) == [196, 784, 3136]


def test_one_unit_per_metric_for_every_backend() -> None:
    # ORT's latencies alone would read best in µs: beside the CPU's in ms, they take its unit.
    rows = [
        dataclasses.replace(r, latency_median_s=r.latency_median_s / 50)
        if r.backend == "ort" and r.latency_median_s
        else r
        for r in sample_results()
    ]
    found = _by_name(plots.scaling_figures(rows))
    units = {name: found[name].figure.axes[0].get_ylabel() for name in ("latency_cpu.png", "latency_ort.png")}
    assert units == {"latency_cpu.png": "latency cpu [ms], median", "latency_ort.png": "latency ort [ms], median"}


def test_series_differ_in_marker_and_dash_and_noisy_points_are_hollow() -> None:
    (ax,) = _by_name(plots.scaling_figures(sample_results()))["latency_cpu.png"].figure.axes
    styles = [(line.get_marker(), line.get_linestyle()) for line in ax.get_lines()]
    assert len(set(m for m, _ in styles)) == len(SERIES) and len(set(d for _, d in styles)) == len(SERIES)
    # acmix at 28x28 is noisy in the samples: drawn again, hollow, over its point.
    (hollow,) = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
    assert list(hollow.get_offsets()[:, 0]) == [28 * 28]
    assert tuple(hollow.get_facecolors()[0]) == (1.0, 1.0, 1.0, 1.0)
    bars = [c for c in ax.collections if c is not hollow]
    assert len(bars) == len(SERIES)  # an IQR bar set per series


def test_scaling_lines_hold_the_measured_points() -> None:
    found = _by_name(plots.scaling_figures(sample_results()))
    (ax,) = found["latency_cpu.png"].figure.axes
    clo = next(line for line in ax.get_lines() if line.get_label() == "clo (C=64)")
    assert list(clo.get_xdata()) == [28 * 28, 56 * 56]  # 14x14 was refused: no point
    table = summary([r for r in sample_results() if r.module == "clo"])
    assert list(clo.get_ydata()) == pytest.approx([v * 1e3 for v in table["latency_cpu_s"].dropna()])


def test_roofline_places_each_case_under_the_measured_roof() -> None:
    rows = sample_results()
    (plot,) = plots.roofline_figures(rows, ENV)
    assert plot.name == "roofline_cpu.png"
    (ax,) = plot.figure.axes
    assert "under the measured roof" in ax.get_title()
    assert ax.get_ylabel().startswith("achieved [GFLOP/s]") and ax.get_xlabel().startswith("arithmetic intensity")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [*SERIES, "cpu", "ort"]
    lines = ax.get_lines()
    assert len(lines) == len(SERIES) * 2 + 1  # one line per series and backend, and the roof
    roof = lines[-1]
    assert max(roof.get_ydata()) == pytest.approx(150)  # the peak recorded in the environment, in GFLOP/s
    acmix = next(r for r in rows if r.module == "acmix" and r.height == 14 and r.backend == "cpu")
    traffic = min_traffic_bytes(acmix.params, 1, 64, 14, 14, "float32")
    assert traffic == 4 * (2 * 64 * 14 * 14 + 17_822)
    assert lines[0].get_xdata()[0] == pytest.approx(acmix.flops_attnbench / traffic)
    assert lines[0].get_ydata()[0] == pytest.approx(acmix.flops_attnbench / acmix.latency_median_s / 1e9)


def test_roofline_without_a_recorded_roof_says_so() -> None:
    (plot,) = plots.roofline_figures(sample_results(), {})
    (ax,) = plot.figure.axes
    assert "no measured roof" in ax.get_title()
    assert len(ax.get_lines()) == len(SERIES) * 2


def test_rows_without_counted_flops_get_no_roofline_and_no_assumed_flops() -> None:
    rows = [dataclasses.replace(r, flops_attnbench=None) for r in sample_results()]
    assert plots.roofline_figures(rows, ENV) == []
    md = markdown(rows, ENV)
    assert "FLOPs |" not in md and "GFLOP/s |" not in md  # never 2 x MACs in their place
    some = [dataclasses.replace(r, flops_attnbench=None) if r.module == "acmix" else r for r in sample_results()]
    lines = markdown(some, ENV).splitlines()
    first_table = lines[2 : lines.index("", 2)]
    header = [c.strip() for c in first_table[0].strip("|").split("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in first_table if line.startswith("| acmix |")]
    assert len(cells) == 3
    for name in ("FLOPs", "cpu GFLOP/s", "cpu % peak"):
        assert {c[header.index(name)] for c in cells} == {"-"}


def test_plot_files_are_written_and_readable(tmp_path: Path) -> None:
    from matplotlib.image import imread

    written = plots.plot_scaling(sample_results(), tmp_path / "plots", ENV)
    assert sorted(p.name for p in written) == sorted(
        ["macs.png", "latency_cpu.png", "latency_ort.png", "memory_cpu.png", "roofline_cpu.png"]
    )
    for path in written:
        assert imread(path).shape[:2] == (
            int(plots.FIGSIZE[1] * plots.DPI),
            int(plots.FIGSIZE[0] * plots.DPI),
        )


def test_no_rows_no_plots(tmp_path: Path) -> None:
    rows: list[Result] = []
    assert plots.plot_scaling(rows, tmp_path / "p") == []


def test_merged_machines_each_sit_under_their_own_roof() -> None:
    rows = [dataclasses.replace(r, machine=m) for m in ("A", "B") for r in sample_results() if r.module == "acmix"]
    fast = {**ENV["peaks"][0], "flops_per_s": 3e11}  # machine B's matmul peak is twice A's
    env = {"machines": {"A": ENV, "B": {**ENV, "peaks": [fast]}}}
    lines = markdown(rows, env).splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    share = header.index("cpu % peak")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:10]]
    by_machine = {(c[header.index("machine")], c[2]): float(c[share].rstrip("%")) for c in cells}
    for res in ("14x14", "28x28", "56x56"):
        assert by_machine[("M1", res)] == pytest.approx(2 * by_machine[("M2", res)], rel=0.01)
    (plot,) = plots.roofline_figures(rows, env)
    (ax,) = plot.figure.axes
    roofs = [line for line in ax.get_lines() if line.get_color() == "black"]
    assert sorted(max(line.get_ydata()) for line in roofs) == pytest.approx([150, 300])
    assert sorted(line.get_linestyle() for line in roofs) == ["-", "--"]  # one line style per machine


def test_the_ridge_lies_inside_the_axes_even_left_of_every_point() -> None:
    # A bandwidth so high that the ridge (1.5 FLOP/B) falls far left of every case: the roof still bends.
    env = {"peaks": [{**ENV["peaks"][0], "bytes_per_s": 1e11}]}
    (plot,) = plots.roofline_figures(sample_results(), env)
    (ax,) = plot.figure.axes
    (roof,) = [line for line in ax.get_lines() if line.get_color() == "black"]
    xs = list(roof.get_xdata())
    assert len(xs) == 3 and xs[0] < 1.5 < xs[-1] and xs[1] == pytest.approx(1.5)


def test_without_an_environment_the_roofs_this_process_measured_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench import roofline

    peak = roofline.Peak(**ENV["peaks"][0])
    monkeypatch.setattr(roofline, "_CACHE", {("cpu", "float32", 1): peak})
    (plot,) = plots.roofline_figures(sample_results())
    assert "under the measured roof" in plot.figure.axes[0].get_title()


def test_a_varying_scenario_field_names_the_series() -> None:
    rows = [
        dataclasses.replace(r, scenario=dataclasses.replace(r.scenario, dtype=dtype))
        for dtype in ("float32", "bfloat16")
        for r in sample_results()
        if r.module == "acmix" and r.backend == "cpu"
    ]
    (ax,) = _by_name(plots.scaling_figures(rows))["latency_cpu.png"].figure.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "acmix (C=64, dtype=float32)",
        "acmix (C=64, dtype=bfloat16)",
    ]
    assert len(ax.get_lines()) == 2  # one line per scenario: mixing them in one line would zig-zag


def test_each_device_gets_its_own_roofline_with_a_marker_per_backend() -> None:
    from attnbench.backends import backend_facts

    rows = sample_results()
    cuda = [dataclasses.replace(r, backend="cuda") for r in rows if r.backend == "cpu"]
    found = _by_name(plots.roofline_figures(rows + cuda, ENV))
    assert sorted(found) == ["roofline_cpu.png", "roofline_cuda.png"]
    (ax,) = found["roofline_cuda.png"].figure.axes
    assert "no measured roof" in ax.get_title()  # ENV measured the CPU only
    (cpu_ax,) = found["roofline_cpu.png"].figure.axes
    markers = {
        t.get_text(): h.get_marker()
        for t, h in zip(cpu_ax.get_legend().get_texts(), cpu_ax.get_legend().legend_handles, strict=True)
    }
    assert markers["cpu"] == backend_facts("cpu")["marker"] and markers["ort"] == backend_facts("ort")["marker"]
    assert markers["cpu"] != markers["ort"]


def test_figures_are_the_scaling_plots_and_the_rooflines() -> None:
    names = [p.name for p in plots.figures(sample_results(), ENV)]
    assert set(names[:-1]) == {"macs.png", "latency_cpu.png", "memory_cpu.png", "latency_ort.png"}
    assert names[-1] == "roofline_cpu.png"  # the rooflines after the scaling plots
