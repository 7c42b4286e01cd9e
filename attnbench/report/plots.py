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

from attnbench import fmt
from attnbench.backends import backend_facts
from attnbench.merge import machine_env
from attnbench.report.columns import UNIT_FAMILIES
from attnbench.report.summary import (
    SERIES_KEY,
    VARYING,
    achieved,
    backends_of,
    identity_text,
    plotted_metrics,
    summary,
    varying,
)
from attnbench.results import Result
from attnbench.roofline import Peak, intensity, min_traffic_bytes, peak_for, peaks_of

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


def _series_label(ident: Mapping[str, Any], varies: Sequence[str]) -> str:
    # An empty value (no kwargs, a zoo module's own layout) says nothing: left out of the label.
    shown = [(k, identity_text(k, ident[k])) for k in varies]
    parts = [f"C={ident['dim']}"] + [f"{VARYING[k]}={text}" for k, text in shown if text]
    return f"{ident['module']} ({', '.join(parts)})"


def _legend_columns(labels: Sequence[str]) -> int:
    # Two columns of long labels (a user's module path) would run off the figure: one column then.
    return 1 if max((len(text) for text in labels), default=0) > LONG_LABEL else 2


def _varies(table: pd.DataFrame) -> list[str]:
    # The machine is told by the line style (and its own legend), so a series keeps its colour on every machine.
    return [k for k in varying(table) if (k != "kwargs" or table["kwargs"].astype(bool).any()) and k != "machine"]


def _machine_legend(ax: Any, styles: Mapping[str, str], first: Any) -> None:
    """A second legend naming the machines by line style (the first one, the series, stays)."""

    if not styles:
        return
    ax.add_artist(first)
    handles = [Line2D([], [], color="black", linestyle=s, label=m) for m, s in styles.items()]
    ax.legend(handles=handles, fontsize=6, loc="lower right", title="machine", title_fontsize=7)


def _metrics(table: pd.DataFrame, backends: Sequence[str]) -> list[tuple[str, str, float, str, str, tuple[str, ...]]]:
    """(column, axis label with unit, scale to that unit, file name, backend, interval columns) per metric plotted."""
    out = []
    for m, backend in plotted_metrics(backends):
        column = m.summary_column(backend)
        if not m.plot or column not in table:
            continue
        unit, factor = fmt.pick_unit(table[column], UNIT_FAMILIES[m.units]) if m.units in UNIT_FAMILIES else ("", 1.0)
        axis = m.axis.format(backend=backend, unit=unit)
        band = tuple(c.format(backend=backend) for c in m.band)
        out.append((column, axis, 1 / factor, m.plot.format(backend=backend), backend, band))
    return out


def _bars(grp: pd.DataFrame, column: str, band: Sequence[str], scale: float) -> Any:
    """Error bars from a metric's interval columns (None where it has none)."""
    if not band or not all(c in grp for c in band):
        return None
    y = grp[column].astype(float)
    lo, hi = (grp[c].astype(float).fillna(y) for c in band)
    return [(y - lo).clip(lower=0) * scale, (hi - y).clip(lower=0) * scale]


def scaling_figures(results: Sequence[Result]) -> list[Plot]:
    """One log-log figure per metric present: the metric against N = H x W, one line per module series."""
    table = summary(results)
    if table.empty:
        return []
    plots = []
    varies = _varies(table)
    styles = machine_styles(table)
    for column, metric, scale, name, backend, band in _metrics(table, backends_of(results)):
        if column not in table or table[column].notna().sum() == 0:
            continue
        fig, ax = _figure()
        colors: dict[str, str] = {}
        # One line per module setting and scenario: mixing batches, kwargs or modes in one line would zig-zag. The
        # scenario fields this backend ignores do not make lines of their own (its rows were spread over them).
        ignored = set(backend_facts(backend).get("ignores", [])) if backend else set()
        series_key = [k for k in SERIES_KEY if k not in ignored]
        for key, grp in table.groupby(series_key, sort=False, dropna=False):
            grp = grp[grp[column].notna()].sort_values("tokens").drop_duplicates("tokens")
            if grp.empty:
                continue
            ident = {**dict(zip(series_key, key, strict=True)), **{k: "" for k in ignored}}
            series = _series_label(ident, varies)
            new = series not in colors
            style = {
                "marker": "o",
                "color": colors.setdefault(series, f"C{len(colors) % 10}"),
                "linestyle": styles.get(ident["machine"], "-"),
                "label": series if new else "_nolegend_",
            }
            xs, ys, bars = grp["tokens"], grp[column].astype(float) * scale, _bars(grp, column, band, scale)
            if bars is None:
                ax.plot(xs, ys, **style)
            else:
                ax.errorbar(xs, ys, yerr=bars, capsize=3, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N = H x W")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} against N")
        ax.grid(True, which="both", alpha=0.3)
        _machine_legend(ax, styles, ax.legend(fontsize=7, ncol=_legend_columns(ax.get_legend_handles_labels()[1])))
        fig.tight_layout()
        plots.append(Plot(name, fig))
    return plots


@dataclass(frozen=True)
class _Point:
    series: str
    backend: str
    machine: str
    intensity: float
    flops_per_s: float
    peak: Peak | None


def _roofline_points(table: pd.DataFrame, backends: Sequence[str], env: Mapping[str, Any]) -> list[_Point]:
    """Every measured row with counted FLOPs as a point: (FLOPs / minimum traffic, FLOPs / median latency),
    under the roof its own machine measured (a merged report keeps one environment per machine)."""
    points = []
    varies = _varies(table)
    for _, r in table.sort_values("tokens", kind="stable").iterrows():
        traffic = min_traffic_bytes(
            r["params"], r["batch"], r["dim"], r["height"], r["width"], str(r["dtype"]), str(r["mode"])
        )
        x = intensity(r.get("flops_attnbench"), traffic)
        peaks = peaks_of(machine_env(env, str(r["machine"])))
        for b in backends:
            y = achieved(r, b)
            if x is None or y is None:
                continue
            series = _series_label({k: r[k] for k in SERIES_KEY}, varies)
            peak = peak_for(peaks, backend_facts(b)["device"], str(r["dtype"]), int(r["threads"]))
            points.append(_Point(series, b, str(r["machine"]), x, y, peak))
    return points


def roofline_figures(results: Sequence[Result], env: Mapping[str, Any] | None = None) -> list[Plot]:
    """One roofline per device the rows ran on (cpu: torch and ORT; cuda): achieved GFLOP/s against FLOPs per
    byte, one colour per module series, one marker per backend, one line style per machine, under the roof
    recorded in `env`."""
    table = summary(results)
    if table.empty or "flops_attnbench" not in table:
        return []
    backends = backends_of(results)
    points = _roofline_points(table, backends, env or {})
    styles = machine_styles(table)
    plots = []
    device_of = {b: backend_facts(b)["device"] for b in backends}
    for device in dict.fromkeys(device_of.values()):
        mine = [p for p in points if device_of[p.backend] == device]
        if mine:
            plots.append(Plot(f"roofline_{device}.png", _roofline(device, mine, styles)))
    return plots


def _roofline(device: str, points: Sequence[_Point], styles: Mapping[str, str]) -> Figure:

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
    xs = [p.intensity for p in points]
    for (machine, _, _), peak in roofs.items():
        _draw_roof(ax, peak, min(xs) / 3, max(max(xs), peak.ridge) * 3, styles.get(machine, "-"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity [FLOP/byte]: FLOPs / (input + output + weights)")
    ax.set_ylabel("achieved [GFLOP/s]: FLOPs / median latency")
    roof = "under the measured roof" if roofs else "(no measured roof in this report's environment)"
    ax.set_title(f"roofline {device}: achieved GFLOP/s against arithmetic intensity {roof}", fontsize=9)
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
