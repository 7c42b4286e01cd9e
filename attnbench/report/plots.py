"""Plots: MACs, latency and peak memory against the number of tokens (log-log, one line per series), and a
roofline per device (achieved FLOP/s against arithmetic intensity, under the machine's measured roof).

Figures are built with matplotlib's object API on the Agg canvas (no display, no pyplot state), returned as
`Plot`s so tests can read their titles, labels and lines, and written as PNGs by `plot_scaling`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from attnbench import fmt
from attnbench.backends import backend_facts
from attnbench.report.summary import (
    SERIES_DASHES,
    SERIES_MARKERS,
    RooflinePoint,
    Series,
    backends_of,
    flag,
    metric_unit,
    resolution_ticks,
    roof_range,
    roofline_points,
    scaled_metrics,
    scaling_series,
    summary,
)
from attnbench.results import Result
from attnbench.roofline import Peak, measured_here

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

FIGSIZE = (7.5, 4.8)
DPI = 110
#: Legend labels longer than this many characters go in one column.
LONG_LABEL = 32
#: Line styles of the machines of a plot, in order of first appearance (a fifth machine reuses the first).
MACHINE_STYLES = ("-", "--", ":", "-.")


def machine_styles(table: Any) -> dict[str, str]:
    """{machine label: line style} when the summary holds several machines, else {} (every line solid)."""
    labels = [m for m in dict.fromkeys(table["machine"]) if m] if "machine" in table else []
    if len(labels) < 2:
        return {}
    return {m: MACHINE_STYLES[i % len(MACHINE_STYLES)] for i, m in enumerate(labels)}


@dataclass(frozen=True)
class Plot:
    """One figure and the file name it is written under."""

    name: str
    figure: Figure


def _figure() -> tuple[Figure, Any]:

    fig = Figure(figsize=FIGSIZE)
    FigureCanvasAgg(fig)  # headless: no display on CI or in Docker
    return fig, fig.add_subplot()


def _legend_columns(labels: Sequence[str]) -> int:
    # Two columns of long labels (a user's module path) would run off the figure: one column then.
    return 1 if max((len(text) for text in labels), default=0) > LONG_LABEL else 2


def _machine_legend(ax: Any, styles: Mapping[str, str], first: Any) -> None:
    """A second legend naming the machines by line style (the first one, the series, stays)."""

    if not styles:
        return
    ax.add_artist(first)
    handles = [Line2D([], [], color="black", linestyle=s, label=m) for m, s in styles.items()]
    ax.legend(handles=handles, fontsize=6, loc="lower right", title="machine", title_fontsize=7)


def scaling_figures(results: Sequence[Result]) -> list[Plot]:
    """One log-log figure per metric and backend: the metric against N = H x W, one line per module series, in
    one unit per metric for every backend; latency with its IQR as a bar and its noisy points hollow."""
    table = summary(results)
    if table.empty:
        return []
    plots = []
    backends = backends_of(results)
    styles = machine_styles(table)
    for m, backend in scaled_metrics(backends):
        column = m.summary_column(backend)
        if not m.plot or column not in table or table[column].notna().sum() == 0:
            continue
        unit, factor = metric_unit(table, m, backends)
        axis = m.axis.format(backend=backend, unit=unit)
        fig, ax = _figure()
        order: dict[str, int] = {}
        for series in scaling_series(table, column, backend):
            index = order.setdefault(series.label, len(order))
            _draw_series(ax, series, column, backend, (index, 1 / factor, styles.get(series.machine)))
        _resolution_axis(ax, table)
        ax.set_yscale("log")
        ax.set_ylabel(axis)
        ax.set_title(f"{axis} against N")
        ax.grid(True, which="both", alpha=0.3)
        _machine_legend(ax, styles, ax.legend(fontsize=7, ncol=_legend_columns(ax.get_legend_handles_labels()[1])))
        if "iqr_{backend}_s" in dict(m.details):
            fig.text(0.01, 0.01, "bars: interquartile range; hollow: noisy (~) or timed under load (!)", fontsize=6)
        fig.tight_layout()
        plots.append(Plot(m.plot.format(backend=backend), fig))
    return plots


def _draw_series(ax: Any, series: Series, column: str, backend: str, style: tuple[int, float, str | None]) -> None:
    """One line: marker and dash by its index (the machine's dash when several), IQR bars and hollow noisy points."""
    index, scale, machine_dash = style
    rows = series.rows
    color, marker = f"C{index % 10}", SERIES_MARKERS[index % len(SERIES_MARKERS)][0]
    dash = machine_dash or SERIES_DASHES[index % len(SERIES_DASHES)][0]
    x, y = rows["tokens"].astype(float), rows[column].astype(float) * scale
    iqr = f"iqr_{backend}_s"
    new = series.label not in ax.get_legend_handles_labels()[1]
    label = series.label if new else "_nolegend_"
    ax.plot(x, y, marker=marker, color=color, linestyle=dash, label=label, markersize=6)
    if iqr in rows and column.startswith("latency_") and rows[iqr].notna().any():
        # No caps: a cap is a line of its own, and a figure's lines are its series.
        ax.errorbar(x, y, yerr=rows[iqr].astype(float).fillna(0) * scale / 2, fmt="none", ecolor=color, capsize=0)
    marks = [c for c in (f"noisy_{backend}", f"contended_{backend}") if c in rows]
    noisy = [any(flag(r[c]) for c in marks) for _, r in rows.iterrows()]
    if any(noisy):
        ax.scatter(x[noisy], y[noisy], marker=marker, facecolors="white", edgecolors=color, s=36, zorder=3)


def _resolution_axis(ax: Any, table: pd.DataFrame) -> None:
    """A log x-axis labelled at the measured resolutions (14x14, 28x28), not at powers of ten."""
    ax.set_xscale("log")
    ticks = resolution_ticks(table)
    ax.set_xticks([n for n, _ in ticks], [text for _, text in ticks], fontsize=7)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("resolution H x W (log of the tokens N = H x W)")


def roofline_figures(results: Sequence[Result], env: Mapping[str, Any] | None = None) -> list[Plot]:
    """One roofline per device the rows ran on (cpu: torch and ORT; cuda): achieved GFLOP/s against FLOPs per
    byte, one colour per module series, one marker per backend, one line style per machine, under the roof
    recorded in `env`."""
    table = summary(results)
    if table.empty or "flops_attnbench" not in table:
        return []
    backends = backends_of(results)
    # Rows from attnbench.profile() come without their environment: the roofs this process measured for them.
    points = roofline_points(table, backends, env if env is not None else {"peaks": measured_here()})
    styles = machine_styles(table)
    plots = []
    device_of = {b: backend_facts(b)["device"] for b in backends}
    for device in dict.fromkeys(device_of.values()):
        mine = [p for p in points if device_of[p.backend] == device]
        if mine:
            plots.append(Plot(f"roofline_{device}.png", _roofline(device, mine, styles)))
    return plots


def _roofline(device: str, points: Sequence[RooflinePoint], styles: Mapping[str, str]) -> Figure:

    fig, ax = _figure()
    colors = {s: f"C{i % 10}" for i, s in enumerate(dict.fromkeys(p.series for p in points))}
    backends = list(dict.fromkeys(p.backend for p in points))
    machines = list(dict.fromkeys(p.machine for p in points))
    for series, color in colors.items():
        for machine in machines:
            for b in backends:
                mine = [p for p in points if (p.series, p.machine, p.backend) == (series, machine, b)]
                if mine:
                    ax.plot(
                        [p.intensity for p in mine],
                        [p.flops_per_s / 1e9 for p in mine],
                        color=color,
                        marker=backend_facts(b)["marker"],
                        linestyle=styles.get(machine, "-"),
                        linewidth=0.8,
                        alpha=0.85,
                    )
    roofs = {(p.machine, p.peak.dtype, p.peak.threads): p.peak for p in points if p.peak is not None}
    x_min, x_max = roof_range(points)
    for (machine, _, _), peak in roofs.items():
        _draw_roof(ax, peak, x_min, x_max, styles.get(machine, "-"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity [FLOP/byte]: FLOPs / (input + output + weights)")
    ax.set_ylabel("achieved [GFLOP/s]: FLOPs / median latency")
    roof = "under the measured roof" if roofs else "(no measured roof)"
    ax.set_title(f"roofline {device}: achieved GFLOP/s {roof}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=c, linewidth=2, label=s) for s, c in colors.items()]
    handles += [Line2D([], [], color="0.3", marker=backend_facts(b)["marker"], linestyle="", label=b) for b in backends]
    handles += [Line2D([], [], color="black", linestyle=s, label=m) for m, s in styles.items()]
    ax.legend(handles=handles, fontsize=7, ncol=_legend_columns([h.get_label() for h in handles]), loc="lower right")
    fig.tight_layout()
    return fig


def _draw_roof(ax: Any, peak: Peak, x_min: float, x_max: float, style: str) -> None:
    """min(peak compute, bandwidth x intensity), labelled with both measured rates."""
    xs = [x_min, peak.ridge, x_max] if x_min < peak.ridge < x_max else [x_min, x_max]
    ys = [min(peak.flops_per_s, peak.bytes_per_s * x) / 1e9 for x in xs]
    threads = f", {peak.threads} thread{'s' if peak.threads > 1 else ''}" if peak.device == "cpu" else ""
    ax.plot(xs, ys, color="black", linewidth=1.6, linestyle=style)
    ax.annotate(
        f"peak {fmt.sig(peak.flops_per_s / 1e9)} GFLOP/s (matmul{threads})",
        (x_max, peak.flops_per_s / 1e9),
        textcoords="offset points",
        xytext=(-4, 4),
        ha="right",
        fontsize=7,
    )
    ax.annotate(
        f"{fmt.sig(peak.bytes_per_s / 1e9)} GB/s (copy)",
        (x_min, peak.bytes_per_s * x_min / 1e9),
        textcoords="offset points",
        xytext=(4, 6),
        fontsize=7,
    )


def figures(results: Sequence[Result], env: Mapping[str, Any] | None = None) -> list[Plot]:
    """Every plot the rows allow: scaling plots, and a roofline per device where FLOPs were counted."""
    return scaling_figures(results) + roofline_figures(results, env)


def plot_scaling(results: Sequence[Result], out_dir: str | Path, env: Mapping[str, Any] | None = None) -> list[Path]:
    """Write every plot as a PNG in `out_dir` (created if needed); return the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for plot in figures(results, env):
        path = out / plot.name
        plot.figure.savefig(path, dpi=DPI)
        written.append(path)
    return written
