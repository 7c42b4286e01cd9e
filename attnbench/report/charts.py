"""The HTML report's interactive charts, as Plotly figure specs (plain dicts of data and layout) that the page draws
with the Plotly.js it inlines (attnbench.report.html): the scaling of each plotted metric against N, one panel per
backend; the cost map (what to pick at one resolution); a roofline per device.

Built from the summary and the metric declarations, like the PNG plots (attnbench.report.plots), with the same
series, units, markers and dashes; no Python plotting package is needed to write them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from attnbench import fmt
from attnbench.backends import backend_facts
from attnbench.metrics import METRICS, Metric, metric
from attnbench.report.summary import (
    SERIES_DASHES,
    SERIES_KEY,
    SERIES_MARKERS,
    RooflinePoint,
    Series,
    flag,
    metric_unit,
    resolution_ticks,
    roof_range,
    roofline_points,
    scaling_series,
    series_label,
    series_varies,
)

#: Plotly's default colours (matplotlib's C0..C9 too): a module keeps its colour in the PNGs and the page.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
#: Significant digits a hover shows of a measured value (the table shows three).
HOVER_DIGITS = 5
#: Height of the charts whose legend also holds a ring or a roof (pixels): ten modules and it fit unscrolled.
TALL = 540
#: Gap between two panels of a chart, as a fraction of its width.
PANEL_GAP = 0.06
#: Plotly's marker symbols of each backend on a roofline, by its matplotlib marker (a backend fact).
SYMBOL_OF = {mpl: plotly for mpl, plotly in SERIES_MARKERS}


@dataclass(frozen=True)
class Chart:
    """One chart of the page: its element id, heading, Plotly spec and caption."""

    id: str
    title: str
    spec: dict[str, Any]
    note: str = ""
    #: The series (modules) it draws: every one of them has a legend entry.
    series: tuple[str, ...] = field(default_factory=tuple)


def exact(value: Any, units: str, unit: str = "", factor: float = 1.0) -> str:
    """A value as a hover shows it: counts in full (4,998,784), measurements to HOVER_DIGITS digits in `unit`."""
    if fmt.missing(value):
        return fmt.MISSING
    if units == "count":
        return f"{int(value):,}"
    return f"{float(value) / factor:.{HOVER_DIGITS}g}" + (f" {unit}" if unit else "")


def _style(index: int, machine_dash: str | None = None) -> dict[str, Any]:
    """Colour, marker and dash of the n-th series (the machine's dash when several machines share a chart)."""
    return {
        "color": PALETTE[index % len(PALETTE)],
        "symbol": SERIES_MARKERS[index % len(SERIES_MARKERS)][1],
        "dash": machine_dash or SERIES_DASHES[index % len(SERIES_DASHES)][1],
    }


def _machine_dashes(table: pd.DataFrame) -> dict[str, str]:
    labels = [m for m in dict.fromkeys(table["machine"]) if m] if "machine" in table else []
    return {m: SERIES_DASHES[i % len(SERIES_DASHES)][1] for i, m in enumerate(labels)} if len(labels) > 1 else {}


def _axes(panels: Sequence[str], x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
    """Layout axes for side-by-side panels sharing one y scale, with the panel titles as annotations."""
    layout: dict[str, Any] = {"annotations": []}
    width = (1 - PANEL_GAP * (len(panels) - 1)) / len(panels)
    for i, name in enumerate(panels):
        suffix = "" if i == 0 else str(i + 1)
        left = i * (width + PANEL_GAP)
        layout[f"xaxis{suffix}"] = {**x, "domain": [left, left + width], "anchor": f"y{suffix}"}
        # The panels share one scale: only the first names it.
        shared = {"matches": "y", "title": {"text": ""}} if i else {}
        layout[f"yaxis{suffix}"] = {**y, "anchor": f"x{suffix}", **shared}
        if name:
            layout["annotations"].append(
                {"text": f"<b>{name}</b>", "x": left + width / 2, "y": 1.02, "xref": "paper", "yref": "paper"}
                | {"showarrow": False, "xanchor": "center", "yanchor": "bottom"}
            )
    return layout


def _log_ticks(units: str) -> dict[str, Any]:
    """Tick labels of a log axis: at 1, 2 and 5 of each decade; counts with SI prefixes (2G, not 2,000,000,000)."""
    return {"dtick": "D2", **({"tickformat": "~s"} if units == "count" else {})}


def _layout(title: str, axes: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "hovermode": "closest",
        "legend": {"title": {"text": "click to hide"}, "font": {"size": 11}},
        "margin": {"l": 80, "r": 20, "t": 60, "b": 60},
        "height": 470,
        **axes,
    }


def scaling_charts(table: pd.DataFrame, backends: Sequence[str]) -> list[Chart]:
    """One chart per plotted metric against N (log-log), one panel per backend that measured it, one line per
    module series: hover gives the exact value, setting and status; a legend click hides the series."""
    charts = []
    dashes = _machine_dashes(table)
    # The counted metrics first, then the measured ones, the more important first (latency before memory).
    plotted = [m for m in METRICS if m.plot]
    for m in sorted(plotted, key=lambda m: (bool(m.pivot), m.priority if m.pivot else 0)):
        panels = [(b, m.summary_column(b)) for b in backends] if m.pivot else [("", m.column)]
        panels = [(b, c) for b, c in panels if c in table and table[c].notna().any()]
        if not panels:
            continue
        unit, factor = metric_unit(table, m, backends)
        order: dict[str, int] = {}
        data = []
        for i, (backend, column) in enumerate(panels):
            for series in scaling_series(table, column, backend):
                index = order.setdefault(series.label, len(order))
                first = not any(d["name"] == series.label for d in data)
                style = _style(index, dashes.get(series.machine))
                data.append(_line(series, (m, backend, column), (unit, factor), style, (i, first)))
        ticks = resolution_ticks(table)
        x = {"type": "log", "tickvals": [n for n, _ in ticks], "ticktext": [t for _, t in ticks], "title": "H x W"}
        axis = m.axis.format(backend="", unit=unit).replace("  ", " ").strip()
        y = {"type": "log", "title": {"text": axis}, **_log_ticks(m.units)}
        layout = _layout(f"{m.label} against N = H x W", _axes([b for b, _ in panels], x, y))
        note = "Bars: interquartile range; hollow points: noisy (~) or timed under load (!)." if m.details else ""
        charts.append(Chart(f"chart-{m.name}", f"{m.label} against N", {"data": data, "layout": layout}, note))
        charts[-1] = _with_series(charts[-1], list(order))
    return charts


def _with_series(chart: Chart, series: Sequence[str]) -> Chart:
    return Chart(chart.id, chart.title, chart.spec, chart.note, tuple(series))


def _line(
    series: Series, what: tuple[Metric, str, str], unit: tuple[str, float], style: dict[str, Any], at: tuple[int, bool]
) -> dict[str, Any]:
    """One series as a Plotly line in panel `at[0]`, in the legend when `at[1]`; IQR bars and hollow noisy points
    for a latency."""
    m, backend, column = what
    panel, legend = at
    rows = series.rows
    values = rows[column].astype(float)
    iqr = rows.get(f"iqr_{backend}_s") if m.details else None
    noisy = [_noisy(r, backend) for _, r in rows.iterrows()]
    symbols = [style["symbol"] + ("-open" if marks else "") for marks in noisy]
    suffix = "" if panel == 0 else str(panel + 1)
    trace: dict[str, Any] = {
        "type": "scatter",
        "mode": "lines+markers",
        "name": series.label,
        "legendgroup": series.label,
        "showlegend": legend,
        "x": [int(n) for n in rows["tokens"]],
        "y": [v / unit[1] for v in values],
        "xaxis": f"x{suffix}",
        "yaxis": f"y{suffix}",
        "line": {"color": style["color"], "dash": style["dash"], "width": 2},
        "marker": {"symbol": symbols, "size": 9, "color": style["color"], "line": {"width": 1.5}},
        "text": [
            _hover(series.label, r, (m, backend, column), unit, marks)
            for (_, r), marks in zip(rows.iterrows(), noisy, strict=True)
        ],
        "hovertemplate": "%{text}<extra></extra>",
    }
    if iqr is not None and iqr.notna().any():
        trace["error_y"] = {"type": "data", "array": [float(v) / unit[1] / 2 if present(v) else 0 for v in iqr]}
        trace["error_y"] |= {"visible": True, "thickness": 1, "width": 0, "color": style["color"]}
    return trace


def present(value: Any) -> bool:
    return not fmt.missing(value)


def _noisy(r: Mapping[str, Any], backend: str) -> str:
    """The timing marks of a summary row's backend ('~', '!', '~ !' or '')."""
    marks = [m for m, c in (("~", f"noisy_{backend}"), ("!", f"contended_{backend}")) if flag(r.get(c))]
    return " ".join(marks)


def _hover(label: str, r: Mapping[str, Any], what: tuple[Metric, str, str], unit: tuple[str, float], marks: str) -> str:
    """A point's hover text: the series, its setting and backend, the exact value, the status."""
    m, backend, column = what
    value = exact(r.get(column), m.units, *unit)
    iqr = r.get(f"iqr_{backend}_s") if m.details else None
    spread = f" ± {exact(iqr, m.units, *unit)} (IQR)" if present(iqr) else ""
    where = f"{int(r['height'])}x{int(r['width'])} (N = {int(r['tokens']):,})" + (f", {backend}" if backend else "")
    status = str(r.get("status") or "ok")
    words = {"~": "noisy (~)", "!": "timed under load (!)"}
    status += "".join(f", {words[mark]}" for mark in marks.split())
    return f"<b>{label}</b><br>{where}<br>{m.label}: {value}{spread}<br>status: {status}"


# ---------------------------------------------------------------- the cost map


def cost_map(table: pd.DataFrame, backends: Sequence[str]) -> Chart | None:
    """Latency (each backend's) or MACs against peak memory at one resolution, one point per module; the points
    nothing beats on both axes are ringed. A menu picks the resolution and the cost (None without memory)."""
    memory = metric("memory")
    mem_backends = [
        b for b in backends if memory.summary_column(b) in table and table[memory.summary_column(b)].notna().any()
    ]
    if not mem_backends:
        return None
    mem_column = memory.summary_column(mem_backends[0])
    mem_unit = metric_unit(table, memory, backends)
    latency = metric("latency")
    costs = [
        (f"latency {b}", latency.summary_column(b), latency) for b in backends if latency.summary_column(b) in table
    ]
    costs.append(("MACs", "macs_attnbench", metric("macs")))
    costs = [(name, c, m) for name, c, m in costs if table[c].notna().any()]
    views, data = [], []
    for res, at in _resolutions(table):
        for name, column, m in costs:
            unit = metric_unit(table, m, backends)
            traces = _cost_points(at, (mem_column, mem_unit, mem_backends[0]), (name, column, m, unit), table)
            views.append((f"{res} · {name}", len(data), len(traces), f"{m.label} [{unit[0]}]" if unit[0] else m.label))
            data += traces
    if not views:
        return None
    return _cost_chart(data, views, f"peak memory {mem_backends[0]} [{mem_unit[0]}]", table)


def _resolutions(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The resolutions of the rows, largest first (where modules differ most), with their rows."""
    out = []
    for (h, w), grp in sorted(table.groupby(["height", "width"], sort=False), key=lambda kv: -kv[0][0] * kv[0][1]):
        out.append((f"{int(h)}x{int(w)}", grp))
    return out


def _cost_points(
    at: pd.DataFrame, x: tuple[str, tuple[str, float], str], y: tuple[Any, ...], table: pd.DataFrame
) -> list[dict[str, Any]]:
    """One trace per module setting (a point) and a ring trace over the points nothing beats on both axes."""
    mem_column, (mem_unit, mem_factor), mem_backend = x
    name, column, m, (unit, factor) = y
    varies = series_varies(table)
    styles = {label: i for i, label in enumerate(_labels(table))}
    points = []
    for _, r in at.iterrows():
        if present(r.get(mem_column)) and present(r.get(column)):
            label = _label(r, varies)
            points.append((label, float(r[mem_column]) / mem_factor, float(r[column]) / factor, r))
    best = pareto([(px, py) for _, px, py, _ in points])
    traces = []
    for (label, px, py, r), top in zip(points, best, strict=True):
        style = _style(styles.get(label, 0))
        text = (
            f"<b>{label}</b><br>{int(r['height'])}x{int(r['width'])}<br>peak memory {mem_backend}: "
            f"{exact(r[mem_column], 'bytes', mem_unit, mem_factor)}<br>"
            f"{name}: {exact(r[column], m.units, unit, factor)}"
            + ("<br><b>nothing beats it on both axes</b>" if top else "")
        )
        traces.append(
            {"type": "scatter", "mode": "markers", "name": label, "legendgroup": label, "x": [px], "y": [py]}
            | {"marker": {"symbol": style["symbol"], "size": 12, "color": style["color"]}, "text": [text]}
            | {"hovertemplate": "%{text}<extra></extra>", "visible": False}
        )
    front = sorted((px, py) for (_, px, py, _), top in zip(points, best, strict=True) if top)
    traces.append(
        {"type": "scatter", "mode": "lines+markers", "name": "nothing beats it on both axes", "hoverinfo": "skip"}
        | {
            "x": [p[0] for p in front],
            "y": [p[1] for p in front],
            "visible": False,
            "line": {"color": "black", "dash": "dot", "width": 1},
        }
        | {"marker": {"symbol": "circle-open", "size": 22, "color": "black", "line": {"width": 2}}}
    )
    return traces


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (x, y), whether no other point is at least as low on both and lower on one (lower is better)."""
    return [
        not any(ox <= x and oy <= y and (ox < x or oy < y) for j, (ox, oy) in enumerate(points) if j != i)
        for i, (x, y) in enumerate(points)
    ]


def _labels(table: pd.DataFrame) -> list[str]:
    varies = series_varies(table)
    return list(dict.fromkeys(_label(r, varies) for _, r in table.iterrows()))


def _label(r: Mapping[str, Any], varies: Sequence[str]) -> str:
    return series_label({k: r[k] for k in SERIES_KEY}, varies)


def _cost_chart(
    data: list[dict[str, Any]], views: list[tuple[str, int, int, str]], x_title: str, table: pd.DataFrame
) -> Chart:
    """The cost map with a menu of its views (resolution x cost), the first shown."""
    buttons = []
    for name, start, count, y_title in views:
        visible = [start <= i < start + count for i in range(len(data))]
        buttons.append(
            {"label": name, "method": "update", "args": [{"visible": visible}, {"yaxis.title.text": y_title}]}
        )
    first = views[0]
    for i in range(first[1], first[1] + first[2]):
        data[i]["visible"] = True
    layout = _layout(
        "Cost map: what to pick at one resolution",
        {
            "xaxis": {"type": "log", "title": {"text": x_title}, **_log_ticks("bytes")},
            "yaxis": {"type": "log", "title": {"text": first[3]}, **_log_ticks("seconds")},
        },
    )
    layout["updatemenus"] = [{"buttons": buttons, "x": 0, "xanchor": "left", "y": 1.16, "yanchor": "top", "active": 0}]
    layout["margin"]["t"] = 90
    layout["height"] = TALL
    note = (
        "Lower left is cheaper. Ringed: nothing else is at least as cheap on both axes. The menu picks the "
        "resolution and the cost."
    )
    return Chart("chart-cost-map", "Cost map", {"data": data, "layout": layout}, note, tuple(_labels(table)))


# ---------------------------------------------------------------- the roofline


def roofline_charts(table: pd.DataFrame, backends: Sequence[str], env: Mapping[str, Any]) -> list[Chart]:
    """One roofline per device: achieved GFLOP/s against FLOPs per byte, a colour per series, a marker per backend,
    under each measured roof (its ridge inside the axes)."""
    if "flops_attnbench" not in table:
        return []
    points = roofline_points(table, backends, env)
    device_of = {b: backend_facts(b)["device"] for b in backends}
    charts = []
    for device in dict.fromkeys(device_of.values()):
        mine = [p for p in points if device_of[p.backend] == device]
        if mine:
            charts.append(_roofline(device, mine))
    return charts


def _roofline(device: str, points: Sequence[RooflinePoint]) -> Chart:
    order = {s: i for i, s in enumerate(dict.fromkeys(p.series for p in points))}
    data = []
    for (series, backend, machine), mine in _grouped(points).items():
        style = _style(order[series])
        symbol = SYMBOL_OF.get(backend_facts(backend)["marker"], "circle")
        data.append(
            {"type": "scatter", "mode": "lines+markers", "name": series, "legendgroup": series}
            | {"showlegend": not any(d["name"] == series for d in data), "x": [p.intensity for p in mine]}
            | {"y": [p.flops_per_s / 1e9 for p in mine], "line": {"color": style["color"], "width": 1}}
            | {
                "marker": {"symbol": symbol, "size": 9, "color": style["color"]},
                "hovertemplate": "%{text}<extra></extra>",
            }
            | {"text": [_roof_hover(p, machine) for p in mine]}
        )
    low, high = roof_range(points)
    roofs = {(p.machine, p.peak.dtype, p.peak.threads): p.peak for p in points if p.peak is not None}
    for peak in roofs.values():
        xs = [low, peak.ridge, high]
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "measured roof",
                "x": xs,
                "line": {"color": "black", "width": 2},
            }
            | {"y": [min(peak.flops_per_s, peak.bytes_per_s * x) / 1e9 for x in xs], "hoverinfo": "text"}
            | {"text": [_roof_text(peak)] * 3}
        )
    layout = _layout(
        f"Roofline, {device}",
        {
            "xaxis": {
                "type": "log",
                "title": {"text": "arithmetic intensity [FLOP/byte]"},
                "range": _log_range(low, high),
            },
            "yaxis": {"type": "log", "title": {"text": "achieved [GFLOP/s]"}, **_log_ticks("plain")},
        },
    )
    backends = ", ".join(
        f"{b}: {SYMBOL_OF.get(backend_facts(b)['marker'], 'circle')}" for b in dict.fromkeys(p.backend for p in points)
    )
    layout["height"] = TALL
    note = f"FLOPs over (input + output + weights) bytes, against FLOPs over the median latency. Markers: {backends}."
    if not roofs:
        note += " No roof was measured for these rows."
    return Chart(
        f"chart-roofline-{device}", f"Roofline, {device}", {"data": data, "layout": layout}, note, tuple(order)
    )


def _roof_text(peak: Any) -> str:
    return (
        f"roof: {fmt.sig(peak.flops_per_s / 1e9)} GFLOP/s (matmul), {fmt.sig(peak.bytes_per_s / 1e9)} GB/s (copy); "
        f"ridge {fmt.sig(peak.ridge)} FLOP/B"
    )


def _grouped(points: Sequence[RooflinePoint]) -> dict[tuple[str, str, str], list[RooflinePoint]]:
    groups: dict[tuple[str, str, str], list[RooflinePoint]] = {}
    for p in points:
        groups.setdefault((p.series, p.backend, p.machine), []).append(p)
    return groups


def _log_range(low: float, high: float) -> list[float]:
    return [math.log10(low), math.log10(high)]


def _roof_hover(p: RooflinePoint, machine: str) -> str:
    share = f" ({fmt.percent(p.flops_per_s / p.peak.flops_per_s)} of peak)" if p.peak is not None else ""
    return (
        f"<b>{p.series}</b><br>{p.height}x{p.width}, {p.backend}"
        + (f", {machine}" if machine else "")
        + f"<br>{exact(p.intensity, 'plain')} FLOP/B<br>{exact(p.flops_per_s / 1e9, 'plain')} GFLOP/s{share}"
    )


def charts(table: pd.DataFrame, backends: Sequence[str], env: Mapping[str, Any]) -> list[Chart]:
    """Every chart the rows allow, in reading order: scaling per metric, the cost map, the rooflines."""
    if table.empty:
        return []
    cost = cost_map(table, backends)
    return [*scaling_charts(table, backends), *([cost] if cost else []), *roofline_charts(table, backends, env)]
