"""The columns of the summary table: header with its unit, cell text, and how soon it gives way on a narrow terminal.

Numbers are printed by attnbench.fmt (the one formatter) and tables fitted to the terminal by report.tables: each
column declares its priority (P_*), so a new column slots in without touching the fitting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from attnbench import fmt
from attnbench.backends import backend_facts
from attnbench.merge import MachineInfo
from attnbench.metrics import (
    METRICS,
    P_OTHER_LATENCY,
    P_PARAMS,
    P_PEAK_SHARE,
    P_SPREAD,
    Metric,
    metric,
)
from attnbench.report.summary import (
    RATIO_TOLERANCE,
    ROW_KEY,
    VARYING,
    Roofs,
    achieved,
    flag,
    identity_text,
    ratio,
    row_peak,
    sort_key,
    varying,
)
from attnbench.report.tables import KEY, Column

#: Marks a CPU latency that a default (unpinned) glibc process would see more than 10% slower.
ALLOC_MARK = "†"
#: Marks a GPU latency set by the host's launches: the GPU was busy for less than half of the call.
LAUNCH_MARK = "L"
#: Units a column of FLOP/s is printed in (picked per column, like memory and time).
RATE_UNITS = (("MFLOP/s", 1e6), ("GFLOP/s", 1e9), ("TFLOP/s", 1e12))
#: The unit families a column of seconds or bytes picks its unit from.
UNIT_FAMILIES = {"seconds": fmt.TIME_UNITS, "bytes": fmt.BYTE_UNITS}


def metric_label(summary_column: str) -> str:
    """The scaling table's name of a summary column ('MACs', 'latency cpu', 'peak mem ort')."""
    for m in METRICS:
        if not m.scaling:
            continue
        if not m.pivot and summary_column == m.column:
            return m.scaling
        head, _, tail = m.pivot.partition("{backend}")
        if m.pivot and summary_column.startswith(head) and summary_column.endswith(tail):
            backend = summary_column[len(head) : len(summary_column) - len(tail)]
            return m.scaling.format(backend=backend)
    return summary_column


def headline(table: pd.DataFrame, backends: Sequence[str], sort_by: str | None = None) -> str:
    """The summary column a table is about: the sorted-by latency, else the first backend's, else MACs, else params."""
    latency = metric("latency")
    latencies = [latency.summary_column(b) for b in backends if has(table, latency.summary_column(b))]
    if sort_by:
        try:
            key = sort_key(sort_by, backends)
        except ValueError:
            key = ""
        if key in latencies:
            return key
    if latencies:
        return latencies[0]
    if "macs_attnbench" in table and table["macs_attnbench"].notna().any():
        return "macs_attnbench"
    return "params"


def has(table: pd.DataFrame, column: str) -> bool:
    """True when the summary has the column and it holds a value somewhere."""
    return column in table and table[column].notna().any()


@dataclass(frozen=True)
class View:
    """What every column of one table is built against: the rows, their backends, the roofs, the headline."""

    table: pd.DataFrame
    backends: Sequence[str]
    roofs: Roofs
    head: str
    #: The column the rows are sorted by ("" when unsorted): a table sorted by a hidden column reads as unsorted.
    sorted_by: str = ""

    def priority(self, column: str, otherwise: int) -> int:
        """KEY for the headline and the sorted-by column (they never go), else the column's own priority."""
        return KEY if column in (self.head, self.sorted_by) else otherwise

    def unit(self, units: str) -> tuple[str, float]:
        """One unit for every column of a unit family in this table (each backend's latency and the other
        allocator's are read side by side), picked from all their values."""
        family = [m for m in METRICS if m.units == units]
        columns = [m.summary_column(b) for m in family for b in (self.backends if m.pivot else [""])]
        values = [v for c in dict.fromkeys(columns) if c in self.table for v in self.table[c]]
        return fmt.pick_unit(values, UNIT_FAMILIES[units])


def summary_columns(
    table: pd.DataFrame, backends: Sequence[str], roofs: Roofs | None = None, sort_by: str | None = None
) -> list[Column]:
    """The summary table's columns: the identity, then each declared metric's, then the status."""
    view = View(table, backends, roofs or {}, headline(table, backends, sort_by), _sorted_column(sort_by, backends))
    cols = [
        Column("Module", lambda r: str(r["module"]), justify="left", wrap=True, key="module"),
        Column("C", lambda r: str(int(r["dim"])), key="dim"),
        Column("H x W", lambda r: f"{int(r['height'])}x{int(r['width'])}", key="tokens"),
    ]
    for key in varying(table):
        cols.append(
            Column(
                VARYING[key],
                lambda r, key=key: identity_text(key, r[key]),
                justify="left" if key == "kwargs" else "right",
                wrap=key == "kwargs",
                key=key,
            )
        )
    for m in METRICS:
        if m.when and not set(m.when) & set(varying(table)):
            continue
        cols += RENDERERS[m.cell](m, view) if m.cell else _metric_columns(m, view)
    cols.append(Column("Status", status_text, justify="left", wrap=True, key="status"))
    return cols


#: Marks a row whose (first) output's shape differs from its input's: normal for a network, a mistake for a block.
SHAPE_MARK = "≠"


def status_text(r: Any) -> str:
    """The status cell: the status, marked when the output's shape differs from the input's (the note says how)."""
    return str(r["status"]) + (f" {SHAPE_MARK}" if flag(r.get("output_differs")) else "")


def _sorted_column(sort_by: str | None, backends: Sequence[str]) -> str:
    try:
        return sort_key(sort_by, backends) if sort_by and sort_by != "module" else ""
    except ValueError:
        return ""


def _metric_columns(m: Metric, view: View) -> list[Column]:
    """A metric's columns by its units: one, or one per backend that measured it."""
    targets = [(i, b, m.summary_column(b)) for i, b in enumerate(view.backends)] if m.pivot else [(0, "", m.column)]
    cols = []
    for i, backend, column in targets:
        parity = backend_facts(backend)["parity"] if backend else ""
        if not has(view.table, column) or ("{parity}" in m.header and not parity):
            continue
        unit, cell = _cell(m.units, view, column)
        header = m.header.format(backend=backend, unit=unit, parity=parity)
        priority = view.priority(column, m.priority + (i if m.pivot and m.units != "error" else 0))
        cols.append(Column(header, cell, priority, key=column, meta={"best": m.best}))
    return cols


def _cell(units: str, view: View, column: str) -> tuple[str, Any]:
    """The unit a column prints in (its family's, one per table) and its cell."""
    if units in UNIT_FAMILIES:
        unit, factor = view.unit(units)
        return unit, lambda r: fmt.in_unit(r.get(column), factor)
    text = {"count": fmt.si, "plain": fmt.sig, "error": fmt.sci}[units]
    return "", lambda r: text(r.get(column))


def _counter_ratio(m: Metric, view: View) -> list[Column]:
    """fvcore÷ours or thop÷ours: the counter's MACs over attnbench's, flagged beyond the tolerance."""
    table, counter = view.table, m.name
    if m.column not in table:
        return []
    if not (table[m.column].notna().any() or table["counter_notes"].fillna("").str.contains(counter).any()):
        return []

    def cell(r: Mapping[str, Any]) -> str:
        q = ratio(r.get(m.column), r.get("macs_attnbench"))
        if q is None:
            return "n/a"
        flag = " under" if q < 1 - RATIO_TOLERANCE else (" over" if q > 1 + RATIO_TOLERANCE else "")
        return f"{fmt.ratio(q)}{flag}"

    return [Column(m.header, cell, m.priority, key=m.column)]


def _latency_columns(m: Metric, view: View) -> list[Column]:
    """Each backend's median latency with its ±IQR (folded away first on a narrow terminal) and its marks."""
    cols = []
    for i, b in enumerate(view.backends):
        column = m.summary_column(b)
        if has(view.table, column):
            cols.append(_latency_column(view, b, column, view.priority(column, m.priority + i)))
    return cols


def _latency_column(view: View, b: str, key: str, priority: int) -> Column:
    unit, factor = view.unit("seconds")
    # The mark `†` refers to the other allocator's column: it goes when that column is hidden.
    marked = ((ALLOC_MARK, metric("other_allocator").summary_column(b)),)

    def marks(r: Mapping[str, Any]) -> str:
        text = " ~" if flag(r.get(f"noisy_{b}")) else ""
        text += " !" if flag(r.get(f"contended_{b}")) else ""
        text += f" {LAUNCH_MARK}" if flag(r.get(f"launch_bound_{b}")) else ""
        return text + (f" {ALLOC_MARK}" if flag(r.get(f"alloc_slower_{b}")) else "")

    def full(r: Mapping[str, Any]) -> str:
        med, iqr = r.get(key), r.get(f"iqr_{b}_s")
        if fmt.missing(med):
            return fmt.MISSING
        spread = "" if fmt.missing(iqr) else f" ±{fmt.in_unit(iqr, factor, 2)}"
        return fmt.in_unit(med, factor) + spread + marks(r)

    def short(r: Mapping[str, Any]) -> str:
        med = r.get(key)
        return fmt.MISSING if fmt.missing(med) else fmt.in_unit(med, factor) + marks(r)

    return Column(
        f"{b} [{unit}] med±IQR",
        full,
        priority,
        short=Column(f"{b} [{unit}]", short, P_SPREAD, key=key, meta={"best": True}, marks=marked),
        short_name="±IQR",
        key=key,
        meta={"best": True},
        marks=marked,
    )


def _other_allocator_columns(m: Metric, view: View) -> list[Column]:
    """The latency in the other allocator state, only where it is > 10% slower (elsewhere the states agree)."""
    table = view.table
    states = set(table["allocator"].unique())
    # The other state is pinned for any other headline (system, jemalloc, tcmalloc); mixed tables say "other".
    other = "system" if states == {"pinned"} else "pinned" if "pinned" not in states else "other"
    cols = []
    for i, b in enumerate(view.backends):
        column, slower = m.summary_column(b), f"alloc_slower_{b}"
        if not (has(table, slower) and any(flag(v) for v in table[slower])):
            continue
        unit, factor = view.unit("seconds")

        def cell(r: Mapping[str, Any], column: str = column, slower: str = slower, factor: float = factor) -> str:
            return fmt.in_unit(r.get(column), factor) if flag(r.get(slower)) else ""

        header = m.header.format(backend=b, unit=unit, other=other)
        cols.append(Column(header, cell, m.priority + i, key=column))
    return cols


def _ratio_columns(m: Metric, view: View) -> list[Column]:
    """Each backend's latency over the reference module's, with the 95% interval's half-width; ~ when it is wide."""
    cols = []
    for i, b in enumerate(view.backends):
        column = m.summary_column(b)
        if not has(view.table, column):
            continue
        refs = {str(v) for v in view.table[f"ratio_ref_{b}"].dropna() if v}
        header = m.header.format(backend=b, reference=refs.pop() if len(refs) == 1 else "fastest")
        cols.append(Column(header, lambda r, b=b: ratio_cell(r, b), m.priority + i, key=column))
    return cols


def ratio_cell(r: Mapping[str, Any], b: str) -> str:
    """'3.02 ±4%' (a ratio and its interval's half-width), 'ref' for the reference itself, ~ when wide."""
    value = r.get(f"ratio_{b}")
    if fmt.missing(value):
        return fmt.MISSING
    if r.get(f"ratio_ref_{b}") == r.get("module"):
        return "ref"
    lo, hi = r.get(f"ratio_lo_{b}"), r.get(f"ratio_hi_{b}")
    half = None if fmt.missing(lo) or fmt.missing(hi) else max(value - lo, hi - value) / value
    spread = " ±?" if half is None else f" ±{fmt.percent(half)}"
    return fmt.sig(value) + spread + (" ~" if flag(r.get(f"ratio_wide_{b}")) else "")


def _roofline_columns(m: Metric, view: View) -> list[Column]:
    """Achieved FLOP/s per backend and its share of the machine's measured peak (where FLOPs were counted)."""
    table = view.table
    if not has(table, "flops_attnbench"):
        return []
    cols = []
    measured = [b for b in view.backends if has(table, metric("latency").summary_column(b))]
    # One rate unit for every backend, so their FLOP/s read side by side.
    unit, factor = fmt.pick_unit([achieved(r, b) for b in measured for _, r in table.iterrows()], RATE_UNITS)
    for i, b in enumerate(view.backends):
        if b not in measured:
            continue
        header = m.header.format(backend=b, unit=unit)
        cols.append(Column(header, lambda r, b=b, factor=factor: fmt.in_unit(achieved(r, b), factor), m.priority + i))
        if any(row_peak(r, b, view.roofs) for _, r in table.iterrows()):
            cols.append(Column(f"{b} % peak", lambda r, b=b: _peak_share(r, b, view.roofs), P_PEAK_SHARE + i))
    return cols


def _peak_share(r: Mapping[str, Any], b: str, roofs: Roofs) -> str:
    peak, value = row_peak(r, b, roofs), achieved(r, b)
    return fmt.MISSING if peak is None or value is None else fmt.percent(value / peak.flops_per_s)


#: The metrics a table shows in a way of their own, by the `cell` their declaration names.
RENDERERS = {
    "counter_ratio": _counter_ratio,
    "latency": _latency_columns,
    "other_allocator": _other_allocator_columns,
    "ratio": _ratio_columns,
    "roofline": _roofline_columns,
}


def _best(table: pd.DataFrame, key: str) -> Any:
    # The best (lowest) value of a cost column among several modules.
    vals = pd.to_numeric(table[key], errors="coerce").dropna()
    return vals.min() if len(vals) and table["module"].nunique() > 1 else None


def highlights(table: pd.DataFrame, cols: Sequence[Column]) -> dict[tuple[Any, ...], dict[str, Any]]:
    # The best value of a column among the modules measured at the same setting: across resolutions the
    # smallest input would always win.
    setting = [k for k in ROW_KEY if k not in ("module", "kwargs", "layout")]
    keys = [c.key for c in cols if c.meta.get("best")]
    return {
        tuple(values): {key: _best(grp, key) for key in keys}
        for values, grp in table.groupby(setting, sort=False, dropna=False)
    }


def scaling_columns(frame: pd.DataFrame) -> list[Column]:
    metrics = [c[: -len("_exp")] for c in frame.columns if c.endswith("_exp")]
    cols = [
        Column("Module", lambda r: str(r["module"]), justify="left", wrap=True),
        Column("C", lambda r: str(int(r["dim"]))),
    ]
    for c in varying(frame):
        cols.append(
            Column(VARYING[c], lambda r, c=c: identity_text(c, r[c]), justify="left" if c == "kwargs" else "right")
        )
    cols.append(Column("N range", lambda r: f"{r['n_min']}..{r['n_max']}", P_PARAMS))
    # The counted exponent is exact (claims of "linear" are about it): it outlasts the measured ones.
    for i, m in enumerate(metrics):
        cols.append(
            Column(
                f"{metric_label(m)} exp",
                lambda r, m=m: fmt.ratio(r.get(f"{m}_exp")),
                P_OTHER_LATENCY - 1 if m == metric("macs").column else P_OTHER_LATENCY + i,
            )
        )
    return cols


def cross_columns(frame: pd.DataFrame, machines: Sequence[MachineInfo]) -> list[Column]:
    """The cross-hardware table's columns: the case, each machine's median latency, each machine over the first."""
    cols = [
        Column("Module", lambda r: str(r["module"]), justify="left", wrap=True),
        Column("C", lambda r: str(int(r["dim"]))),
        Column("H x W", lambda r: f"{int(r['height'])}x{int(r['width'])}"),
    ]
    cols += [
        Column(VARYING[k], lambda r, k=k: identity_text(k, r[k]), justify="left" if k == "kwargs" else "right")
        for k in varying(frame)
        if k != "machine"
    ]
    cols.append(Column("backend", lambda r: str(r["backend"]), justify="left"))
    unit, factor = cross_unit(frame, machines)
    for i, m in enumerate(machines):
        cols.append(
            Column(
                f"{m.alias} [{unit}]",
                lambda r, a=m.alias, f=factor: fmt.in_unit(r[f"latency_{a}_s"], f),
                KEY if i == 0 else P_OTHER_LATENCY + i,
            )
        )
    first = machines[0].alias
    # A ratio is what this table is for: it goes only after the other machines' own latencies.
    cols += [
        Column(f"{m.alias}÷{first}", lambda r, a=m.alias: fmt.ratio(r[f"ratio_{a}"]), P_OTHER_LATENCY - 1)
        for m in machines[1:]
    ]
    return cols


def cross_unit(frame: pd.DataFrame, machines: Sequence[MachineInfo]) -> tuple[str, float]:
    """One time unit for every machine's column, so they read side by side."""
    return fmt.pick_unit([v for m in machines for v in frame[f"latency_{m.alias}_s"]], fmt.TIME_UNITS)
