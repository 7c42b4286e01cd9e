"""The HTML report: one self-contained file that a browser opens offline, with its data, styles, script and the
Plotly.js that draws its charts all inline (nothing is fetched, from a CDN or elsewhere).

It is built from the same rows and metric declarations as the CSV and the Markdown: the run's header (machines,
versions, date, command line), the gate's verdict when there was one, the results table (one row per result row,
sortable by any header, filtered by module and backend, units in the headers, marks explained on hover), the
charts of attnbench.report.charts, the scaling exponents, the cross-machine view of a merged report, the roofs,
the cases that did not complete, the module sources with their counter notes, and the operators left uncounted.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from importlib import resources
from typing import TYPE_CHECKING, Any

import pandas as pd

from attnbench import fmt
from attnbench import results as R
from attnbench.merge import machines as machines_of
from attnbench.metrics import METRICS, Metric
from attnbench.report.charts import charts
from attnbench.report.columns import ALLOC_MARK, RATE_UNITS, SHAPE_MARK, UNIT_FAMILIES, cross_columns, metric_label
from attnbench.report.markdown import CROSS_NOTE, scenario_text
from attnbench.report.summary import (
    CONVENTION,
    RATIO_TOLERANCE,
    SORT_KEYS,
    VARYING,
    backends_of,
    cross_hardware,
    flag,
    identity_text,
    ratio,
    roofs_by_machine,
    row_peak,
    scaling,
    summary,
    varying,
    with_machine_aliases,
)
from attnbench.results import Result, to_frame
from attnbench.roofline import peaks_of, rate
from attnbench.zoo import catalog
from attnbench.zoo.spec import SOURCE_HASH_DIGITS

if TYPE_CHECKING:
    from attnbench.gate import Verdict

#: What each mark of a latency cell means, shown when the pointer rests on it.
MARK_TIPS = {
    "~": "noisy: IQR/median > 10%, or the asked precision was not reached",
    "!": "timed while other processes used more than 5% of a core: indicative only",
    ALLOC_MARK: "more than 10% slower in a process with glibc's default allocator (see 'other allocator')",
}
#: What the Status column's mark means (normal for a network, a mistake for a block).
SHAPE_TIP = "the output's shape differs from the input's"
#: The environment facts the header shows, in order, with their names.
HEADER_FACTS = (
    ("machine", "machine"),
    ("date_utc", "date (UTC)"),
    ("command", "command"),
    ("cpu_model", "CPU"),
    ("gpu", "GPU"),
    ("torch", "torch"),
    ("onnxruntime", "ONNX Runtime"),
    ("python", "Python"),
    ("attnbench", "attnbench"),
    ("git_commit", "git commit"),
    ("platform", "platform"),
)


@dataclass(frozen=True)
class Cell:
    """One column of the results table: its header and tip, and each row's (html, sort value)."""

    header: str
    tip: str
    cell: Callable[[Mapping[str, Any]], tuple[str, Any]]
    numeric: bool = True


def html(
    results: Sequence[Result],
    env: Mapping[str, Any],
    title: str = "attnbench report",
    sort_by: str | None = None,
    verdict: Verdict | None = None,
) -> str:
    """The whole report as one HTML document (about 5 MB: Plotly.js is most of it)."""
    env = env or {}
    table = with_machine_aliases(summary(results), results)
    backends = backends_of(results)
    figures = charts(table, backends, env)
    body = [
        _header(results, env, title),
        _verdict(verdict),
        _results(results, env, sort_by),
        *(_chart(c) for c in figures),
        _scaling(results),
        _cross(results),
        _roofs(results, env),
        _failures(results),
        _sources(results),
        _uncounted(results),
        _section("Counting convention", f"<p>{escape(CONVENTION)}</p>"),
        _environment(results, env),
    ]
    specs = json.dumps([{"id": c.id, "spec": c.spec} for c in figures], separators=(",", ":"))
    return PAGE.format(
        title=escape(title),
        css=_asset("report.css"),
        body="\n".join(part for part in body if part),
        specs=specs.replace("</", "<\\/"),  # a "</script>" inside the data would end its element
        plotly=plotly_js(),
        js=_asset("report.js"),
    )


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="attnbench">
<title>{title}</title>
<style>
{css}
</style>
</head>
<body>
{body}
<script type="application/json" id="chart-specs">{specs}</script>
<script>
{plotly}
</script>
<script>
{js}
</script>
</body>
</html>
"""


@functools.cache
def plotly_js() -> str:
    """Plotly.js as the plotly package ships it (minified, every trace type), inlined so the page needs no network."""
    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


def _asset(name: str) -> str:
    return (resources.files("attnbench.report") / "assets" / name).read_text(encoding="utf-8")


def _section(heading: str, inner: str, anchor: str = "", folded: bool = False) -> str:
    ident = f' id="{anchor}"' if anchor else ""
    if folded:
        return f"<section{ident}><details><summary><h2>{escape(heading)}</h2></summary>\n{inner}\n</details></section>"
    return f"<section{ident}><h2>{escape(heading)}</h2>\n{inner}\n</section>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A plain table of already escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls or "plain"}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


# ---------------------------------------------------------------- header and verdict


def _header(results: Sequence[Result], env: Mapping[str, Any], title: str) -> str:
    """The title and the facts of each machine: label, date, command line, hardware, versions."""
    machines = machines_of(results, env)
    records = [(m.alias, m.env) for m in machines] if len(machines) > 1 else [("", env)]
    blocks = []
    for alias, record in records:
        facts = [(name, record.get(key)) for key, name in HEADER_FACTS]
        facts = [(name, value) for name, value in facts if value not in (None, "", [])]
        items = "".join(f"<dt>{escape(name)}</dt><dd>{escape(str(value))}</dd>" for name, value in facts)
        head = f"<h3>{escape(alias)}</h3>" if alias else ""
        blocks.append(f'<div class="machine">{head}<dl>{items}</dl></div>')
    count = f"{len(results)} result row{'s' if len(results) != 1 else ''}"
    return (
        f'<header><h1>{escape(title)}</h1><p class="sub">{count}, written by attnbench; it needs no network.</p>'
        f'<div class="machines">{"".join(blocks)}</div></header>'
    )


def _verdict(verdict: Verdict | None) -> str:
    """The gate's outcome and what changed against the baseline (nothing without a gate)."""
    if verdict is None:
        return ""
    if verdict.inconclusive:
        outcome, cls = "INCONCLUSIVE (machine busy)", "warn"
    else:
        outcome, cls = ("PASSED", "ok") if verdict.passed else ("FAILED", "bad")
    lines = [f'<p class="verdict {cls}">gate: {outcome}: {verdict.compared_cases} case(s) compared</p>']
    if verdict.latency_note:
        lines.append(f"<p>{escape(verdict.latency_note)}</p>")
    if verdict.changes:
        rows = [
            [escape(c.case), escape(c.kind), escape(c.detail), "yes" if c.failing else "no"] for c in verdict.changes
        ]
        lines.append(_table(["Case", "Kind", "Change", "Fails"], rows))
    return _section("Gate", "\n".join(lines), "gate")


# ---------------------------------------------------------------- the results table


def result_cells(frame: pd.DataFrame, env: Mapping[str, Any], results: Sequence[Result]) -> list[Cell]:
    """The results table's columns: the identity, the backend, each declared metric's, the status."""
    cells = [
        Cell("Module", "The module (attnbench list, attnbench info NAME)", lambda r: _text(r["module"]), False),
        Cell("C", "Channels", lambda r: (str(int(r["dim"])), int(r["dim"]))),
        Cell("H x W", "Resolution", lambda r: (f"{int(r['height'])}x{int(r['width'])}", int(r["height"] * r["width"]))),
    ]
    for key in varying(frame):
        numeric = key == "batch" or key == "threads"
        cells.append(
            Cell(
                VARYING[key], f"{key} (varies in this report)", lambda r, k=key: _text(identity_text(k, r[k])), numeric
            )
        )
    cells.append(Cell("backend", "Where it ran (attnbench env)", lambda r: _text(r["backend"]), False))
    roofs = roofs_by_machine(results, env)
    for m in METRICS:
        if m.when and not set(m.when) & set(varying(frame)):
            continue
        if m.column in frame and frame[m.column].notna().any():
            cells += _metric_cells(m, frame, roofs)
    cells.append(Cell("Status", "ok, or why the case did not complete (hover for the reason)", _status, False))
    return cells


def _text(value: Any) -> tuple[str, Any]:
    return escape(str(value)), str(value)


def _metric_cells(m: Metric, frame: pd.DataFrame, roofs: Any) -> list[Cell]:
    """A metric's column(s), each value printed by the one formatter, in one unit for the whole column."""
    if m.cell == "latency":
        return [_latency_cell(m, frame)]
    if m.cell == "counter_ratio":
        return [Cell(m.label, m.doc, lambda r: _counter_ratio(r, m.column))]
    if m.cell == "roofline":
        return _rate_cells(m, frame, roofs)
    if m.cell == "other_allocator":
        unit, factor = fmt.pick_unit(frame["latency_median_s"], fmt.TIME_UNITS)
        mark = f"{m.label} [{unit}]"
        return [
            Cell(
                mark,
                m.doc,
                lambda r: _number(r.get(m.column) if flag(r.get("system_allocator_slower")) else None, factor),
            )
        ]
    if m.units in UNIT_FAMILIES:
        unit, factor = fmt.pick_unit(frame[m.column], UNIT_FAMILIES[m.units])
        return [Cell(f"{m.label} [{unit}]", m.doc, lambda r: _number(r.get(m.column), factor))]
    text = {"count": fmt.si, "plain": fmt.sig, "error": fmt.sci}[m.units]
    return [Cell(m.label, m.doc, lambda r: (text(r.get(m.column)), _sortable(r.get(m.column))))]


def _sortable(value: Any) -> Any:
    return None if fmt.missing(value) else float(value)


def _number(value: Any, factor: float) -> tuple[str, Any]:
    return fmt.in_unit(value, factor), _sortable(value)


def _latency_cell(m: Metric, frame: pd.DataFrame) -> Cell:
    """The median ± IQR with its marks, each mark explained on hover."""
    unit, factor = fmt.pick_unit(frame[m.column], fmt.TIME_UNITS)

    def cell(r: Mapping[str, Any]) -> tuple[str, Any]:
        median = r.get(m.column)
        if fmt.missing(median):
            return fmt.MISSING, None
        iqr = r.get("latency_iqr_s")
        text = fmt.in_unit(median, factor)
        if not fmt.missing(iqr):
            text += f' <span class="iqr">±{fmt.in_unit(iqr, factor, 2)}</span>'
        flags = (("~", "latency_noisy"), ("!", "latency_contended"), (ALLOC_MARK, "system_allocator_slower"))
        for mark, column in flags:
            if flag(r.get(column)):
                text += f' <abbr class="mark" title="{escape(MARK_TIPS[mark])}">{mark}</abbr>'
        return text, float(median)

    return Cell(f"{m.label} [{unit}] med±IQR", m.doc, cell)


def _counter_ratio(r: Mapping[str, Any], column: str) -> tuple[str, Any]:
    q = ratio(r.get(column), r.get("macs_attnbench"))
    if q is None:
        return fmt.MISSING, None
    off = " under" if q < 1 - RATIO_TOLERANCE else (" over" if q > 1 + RATIO_TOLERANCE else "")
    return fmt.ratio(q) + (f'<span class="off">{off}</span>' if off else ""), q


def _rate_cells(m: Metric, frame: pd.DataFrame, roofs: Any) -> list[Cell]:
    """Achieved FLOP/s (one unit) and its share of the row's measured peak."""

    def achieved(r: Mapping[str, Any]) -> float | None:
        return rate(r.get("flops_attnbench"), r.get("latency_median_s"))

    rates = [achieved(r) for _, r in frame.iterrows()]
    if not any(v is not None for v in rates):
        return []
    unit, factor = fmt.pick_unit(rates, RATE_UNITS)

    def share(r: Mapping[str, Any]) -> tuple[str, Any]:
        summary_like = {**r, f"latency_{r['backend']}_s": r.get("latency_median_s")}
        peak, value = row_peak(summary_like, str(r["backend"]), roofs), achieved(r)
        if peak is None or value is None:
            return fmt.MISSING, None
        return fmt.percent(value / peak.flops_per_s), value / peak.flops_per_s

    cells = [Cell(unit, m.doc, lambda r: _number(achieved(r), factor))]
    if any(share(r)[1] is not None for _, r in frame.iterrows()):
        cells.append(Cell("% peak", "Share of the machine's measured peak compute (matmul)", share))
    return cells


def _status(r: Mapping[str, Any]) -> tuple[str, Any]:
    status, reason = str(r["status"]), str(r.get("reason") or "")
    cls = "" if status == R.OK else ' class="bad"'
    tip = f' title="{escape(reason)}"' if reason else ""
    # An output shaped unlike the input is marked, as on the terminal and in Markdown (the reason says how).
    differs = flag(r.get("output_differs"))
    mark = f' <abbr class="mark" title="{escape(SHAPE_TIP)}">{SHAPE_MARK}</abbr>' if differs else ""
    return f"<span{cls}{tip}>{escape(status)}{mark}</span>", status


def _results(results: Sequence[Result], env: Mapping[str, Any], sort_by: str | None) -> str:
    """The results table with its filters, the scenario line and the legend of what applies."""
    frame = with_machine_aliases(_long_frame(results, sort_by), results)
    if frame.empty:
        return _section("Results", "<p>No results.</p>", "results")
    cells = result_cells(frame, env, results)
    head = "".join(
        f'<th title="{escape(c.tip)}" data-type="{"num" if c.numeric else "text"}">{escape(c.header)}</th>'
        for c in cells
    )
    rows = []
    for _, r in frame.iterrows():
        tds = []
        for c in cells:
            text, value = c.cell(r)
            data = "" if value is None else f' data-v="{escape(str(value))}"'
            tds.append(f"<td{data}>{text}</td>")
        attrs = f'data-module="{escape(str(r["module"]))}" data-backend="{escape(str(r["backend"]))}"'
        rows.append(f"<tr {attrs}>{''.join(tds)}</tr>")
    table = f'<div class="scroll"><table id="results-table" class="results"><thead><tr>{head}</tr></thead><tbody>\n'
    table += "\n".join(rows) + "\n</tbody></table></div>"
    scenario = scenario_text(summary(results))
    parts = [_filters(frame), table, f"<p>{escape(scenario)}</p>" if scenario else "", _legend(frame)]
    return _section("Results", "\n".join(p for p in parts if p), "results")


def _long_frame(results: Sequence[Result], sort_by: str | None) -> pd.DataFrame:
    """The rows, one per result, in the order the other reports sort them (sort_by), the rest as measured."""
    frame = to_frame(results)
    if frame.empty or not sort_by:
        return frame
    kind, _, backend = sort_by.partition("-")
    key = {"latency": "latency_median_s", "memory": "peak_mem_bytes"}.get(kind, SORT_KEYS.get(kind, ""))
    if key not in frame:
        return frame
    if backend:  # latency-ort: that backend's rows first, by their latency
        frame = frame.assign(_other=frame["backend"] != backend)
        return frame.sort_values(["_other", key, "module"], kind="stable", na_position="last").drop(columns="_other")
    return frame.sort_values([key, "module"], kind="stable", na_position="last")


def _filters(frame: pd.DataFrame) -> str:
    """The module and backend pickers above the table, and the count of rows shown."""

    def select(name: str, values: Sequence[str]) -> str:
        options = "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in ["", *values])
        options = options.replace('<option value="">', '<option value="">all', 1)
        return f'<label>{name} <select id="filter-{name}" data-key="{name}">{options}</select></label>'

    modules = list(dict.fromkeys(str(m) for m in frame["module"]))
    backends = list(dict.fromkeys(str(b) for b in frame["backend"]))
    count = f'<span id="shown">{len(frame)} of {len(frame)} rows</span>'
    return f'<div class="filters">{select("module", modules)} {select("backend", backends)} {count}</div>'


def _legend(frame: pd.DataFrame) -> str:
    """What the table's marks and columns mean, only the parts that apply."""
    parts = ["Click a header to sort by it; the pickers filter by module and backend."]
    if "latency_median_s" in frame and frame["latency_median_s"].notna().any():
        parts.append("Latency: median per call ± interquartile range.")
    marks = (("~", "latency_noisy"), ("!", "latency_contended"), (ALLOC_MARK, "system_allocator_slower"))
    shown = [
        f"<code>{mark}</code> {escape(MARK_TIPS[mark])}" for mark, c in marks if c in frame and frame[c].map(flag).any()
    ]
    if shown:
        parts.append("Marks (hover one): " + "; ".join(shown) + ".")
    if "peak_mem_bytes" in frame and frame["peak_mem_bytes"].notna().any():
        parts.append("Peak memory: activations and temporaries of one step; weights and input excluded.")
    return f'<p class="legend">{" ".join(parts)} More: docs/reading-results.md.</p>'


def _chart(chart: Any) -> str:
    note = f'<p class="note">{escape(chart.note)}</p>' if chart.note else ""
    series = escape(json.dumps(list(chart.series)))
    return _section(chart.title, f'<div class="chart" id="{chart.id}" data-series="{series}"></div>{note}')


# ---------------------------------------------------------------- the other sections


def _scaling(results: Sequence[Result]) -> str:
    frame = with_machine_aliases(scaling(results), results)
    if frame.empty:
        return ""
    metrics = [c[: -len("_exp")] for c in frame.columns if c.endswith("_exp")]
    extra = varying(frame)
    headers = ["Module", "C", *(VARYING[c] for c in extra), "N range", *(f"{metric_label(m)} exp" for m in metrics)]
    rows = []
    for _, r in frame.iterrows():
        cells = [escape(str(r["module"])), str(int(r["dim"]))] + [escape(identity_text(c, r[c])) for c in extra]
        cells.append(f"{r['n_min']}..{r['n_max']}")
        cells += [f"{fmt.ratio(r.get(f'{m}_exp'))} ({fmt.ratio(r.get(f'{m}_fit'))})" for m in metrics]
        rows.append(cells)
    note = "<p>Exponent x in cost ~ N^x between the two largest resolutions (least-squares fit in brackets).</p>"
    return _section("Scaling with N = H*W", note + _table(headers, rows), "scaling")


def _cross(results: Sequence[Result]) -> str:
    frame, machines = cross_hardware(results)
    if frame.empty:
        return ""
    cols = cross_columns(frame, machines)
    rows = [[escape(c.cell(r)) for c in cols] for _, r in frame.iterrows()]
    legend = "".join(f"<li>{m.alias} = {escape(m.label)}</li>" for m in machines)
    inner = f"<p>{escape(CROSS_NOTE)}</p><ul>{legend}</ul>" + _table([escape(c.header) for c in cols], rows)
    return _section("Across machines", inner, "machines")


def _roofs(results: Sequence[Result], env: Mapping[str, Any]) -> str:
    machines = machines_of(results, env)
    named = [(m.alias, peaks_of(m.env)) for m in machines] if len(machines) > 1 else [("", peaks_of(env))]
    rows = [
        [
            escape(alias),
            p.device,
            p.dtype,
            str(p.threads) if p.device == "cpu" else "-",
            fmt.sig(p.flops_per_s / 1e9),
            fmt.sig(p.bytes_per_s / 1e9),
            fmt.sig(p.ridge),
        ]
        for alias, peaks in named
        for p in peaks
    ]
    if not rows:
        return ""
    headers = ["machine", "device", "dtype", "threads", "peak [GFLOP/s]", "bandwidth [GB/s]", "ridge [FLOP/B]"]
    method = next(p.method for _, peaks in named for p in peaks)
    return _section("Machine roof", _table(headers, rows) + f"<p>Measured as the {escape(method)}.</p>", "roof")


def _failures(results: Sequence[Result]) -> str:
    bad = [r for r in results if r.status != R.OK]
    if not bad:
        return ""
    rows = [[escape(r.label), escape(r.status), escape(r.reason)] for r in bad]
    return _section("Cases that did not complete", _table(["Case", "status", "reason"], rows), "failures")


def _sources(results: Sequence[Result]) -> str:
    """Each module's paper and official code (zoo modules), its source hash and the counters' notes on it."""
    papers = {e["name"]: e for e in catalog.zoo()}
    modules: dict[str, dict[str, Any]] = {}
    for r in results:
        entry = modules.setdefault(r.module, {"hash": r.source_hash, "notes": []})
        for note in (r.counter_notes or "").split("; "):
            if note and note not in entry["notes"]:
                entry["notes"].append(note)
    rows = []
    for name, e in modules.items():
        paper = papers.get(name)
        reference = f"{paper['title']} (arXiv {paper['arxiv']}); {paper['repo']} {paper['file']}" if paper else "yours"
        notes = escape("; ".join(e["notes"]) or "-")
        rows.append([escape(name), escape(reference), f"<code>{escape(e['hash'] or '-')}</code>", notes])
    note = (
        f"<p>The source hash is the first {SOURCE_HASH_DIGITS} hex digits of the SHA-256 of the file that defines "
        "the module: another hash, other code. Counter notes say what a counter could not do.</p>"
    )
    headers = ["Module", "paper and official code", "source hash", "counter notes"]
    return _section("Module sources and counter notes", note + _table(headers, rows), "sources")


def _uncounted(results: Sequence[Result]) -> str:
    """What each counter left uncounted, per case: folded away, it is long."""
    rows = []
    for r in results:
        if r.backend in (R.NO_BACKEND, *backends_of(results)[:1]) and (r.uncounted_attnbench or r.uncounted_fvcore):
            case = f"{r.module} C={r.dim} {r.height}x{r.width}"
            rows.append([escape(case), escape(r.uncounted_attnbench or "-"), escape(r.uncounted_fvcore or "-")])
    if not rows:
        return ""
    inner = "<p>Operators the counters did not count, with calls and elements (they are not folded in).</p>"
    return _section("Uncounted operators", inner + _table(["Case", "attnbench", "fvcore"], rows), "uncounted", True)


def _environment(results: Sequence[Result], env: Mapping[str, Any]) -> str:
    machines = machines_of(results, env)
    records = [(f"{m.alias}: {m.label}", m.env) for m in machines] if len(machines) > 1 else [("", env)]
    parts = []
    for name, record in records:
        rows = [
            [escape(str(k)), escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))]
            for k, v in record.items()
            if k != "machines"
        ]
        parts.append((f"<h3>{escape(name)}</h3>" if name else "") + _table(["key", "value"], rows))
    return _section("Environment", "\n".join(parts), "environment", True)
