"""The columns of the summary table: header with its unit, cell text, and how soon it gives way on a narrow terminal.

Numbers are printed by attnbench.fmt (the one formatter) and tables fitted to the terminal by report.tables: each
column declares its priority (P_*), so a new column slots in without touching the fitting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from attnbench import fmt
from attnbench.backends import backend_facts
from attnbench.merge import MachineInfo
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


def metric_label(metric: str) -> str:
    if metric == "macs_attnbench":
        return "MACs"
    kind, backend = metric.split("_")[0], metric.split("_")[1]
    return f"{'latency' if kind == 'latency' else 'peak mem'} {backend}"


#: How soon a secondary column goes on a narrow terminal (larger: sooner). Module, C, H x W, the varying
#: identity columns, the headline metric and Status are KEY. A new column declares one of these (or its own).
P_PARAMS = 10


P_MACS = 12


P_OTHER_LATENCY = 20


P_COMPILE = 24  # torch.compile's first call: what a compiled run is about, beside its latency


P_THROUGHPUT = 25  # samples/s, shown when the batch or the thread count varies


P_INSTRUCTIONS = 26  # instructions per call: asked for explicitly (a gate on work), so kept before memory


P_MEMORY = 30


P_OTHER_ALLOC = 32  # the latency in the other allocator state, where it is > 10% slower


P_FLOPS = 40


P_ACHIEVED = 45


P_PEAK_SHARE = 50


P_SPREAD = 60  # the ±IQR beside a median (folded away, the median stays)


P_PARITY = 65


P_CROSS_CHECK = 70  # fvcore÷ours, thop÷ours


#: Units a column of FLOP/s is printed in (picked per column, like memory and time).
RATE_UNITS = (("MFLOP/s", 1e6), ("GFLOP/s", 1e9), ("TFLOP/s", 1e12))


def headline(table: pd.DataFrame, backends: Sequence[str], sort_by: str | None = None) -> str:
    """The summary column a table is about: the sorted-by latency, else the first backend's, else MACs, else params."""
    latencies = [f"latency_{b}_s" for b in backends if has(table, f"latency_{b}_s")]
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
    return column in table and table[column].notna().any()


def summary_columns(
    table: pd.DataFrame, backends: Sequence[str], roofs: Roofs | None = None, sort_by: str | None = None
) -> list[Column]:
    """The summary table's columns, each with its unit in the header and its priority on a narrow terminal."""
    head = headline(table, backends, sort_by)

    def priority(key: str, otherwise: int) -> int:
        return KEY if key == head else otherwise

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
    if has(table, "params"):
        cols.append(Column("Params", lambda r: fmt.si(r["params"]), priority("params", P_PARAMS), key="params"))
    if has(table, "macs_attnbench"):
        macs = priority("macs_attnbench", P_MACS)
        cols.append(Column("MACs", lambda r: fmt.si(r["macs_attnbench"]), macs, key="macs_attnbench"))
    if has(table, "flops_attnbench"):
        cols.append(Column("FLOPs", lambda r: fmt.si(r["flops_attnbench"]), P_FLOPS, key="flops_attnbench"))
    for counter in ("fvcore", "thop"):
        if f"macs_{counter}" in table and (
            table[f"macs_{counter}"].notna().any() or table["counter_notes"].fillna("").str.contains(counter).any()
        ):
            cols.append(Column(f"{counter}÷ours", _ratio_cell(counter), P_CROSS_CHECK, key=f"macs_{counter}"))
    for i, b in enumerate(backends):
        if has(table, f"mem_{b}_bytes"):
            unit, factor = fmt.pick_unit(table[f"mem_{b}_bytes"], fmt.BYTE_UNITS)
            cols.append(
                Column(
                    f"Mem {b} [{unit}]",
                    lambda r, b=b, factor=factor: fmt.in_unit(r.get(f"mem_{b}_bytes"), factor),
                    P_MEMORY + i,
                    key=f"mem_{b}_bytes",
                )
            )
    for i, b in enumerate(backends):
        if has(table, f"latency_{b}_s"):
            cols.append(_latency_column(table, b, priority(f"latency_{b}_s", P_OTHER_LATENCY + i)))
    for i, b in enumerate(backends):
        if has(table, f"instr_{b}"):
            cell = lambda r, b=b: fmt.si(r.get(f"instr_{b}"))  # noqa: E731
            cols.append(Column(f"{b} instr/call", cell, P_INSTRUCTIONS + i, key=f"instr_{b}"))
    cols += _scenario_columns(table, backends)
    cols += _roofline_columns(table, backends, roofs or {})
    for b in backends:
        # Each backend names what its parity figure compares (ORT against PyTorch, compiled against eager).
        label = backend_facts(b)["parity"]
        if label and has(table, f"parity_{b}"):
            cell = lambda r, b=b: fmt.sci(r.get(f"parity_{b}"))  # noqa: E731
            cols.append(Column(f"{label} max|Δ|", cell, P_PARITY, key=f"parity_{b}"))
    cols.append(Column("Status", lambda r: str(r["status"]), justify="left", wrap=True, key="status"))
    return cols


def _scenario_columns(table: pd.DataFrame, backends: Sequence[str]) -> list[Column]:
    """Throughput (when batch or threads vary), the other allocator state's latency, torch.compile's time."""
    cols = []
    # Throughput answers "what batch (or thread count) fills this machine": shown when either varies.
    if {"batch", "threads"} & set(varying(table)):
        for i, b in enumerate(backends):
            if has(table, f"throughput_{b}_per_s"):
                cols.append(
                    Column(
                        f"{b} [samples/s]",
                        lambda r, b=b: fmt.sig(r.get(f"throughput_{b}_per_s")),
                        P_THROUGHPUT + i,
                        key=f"throughput_{b}_per_s",
                    )
                )
    other = {("pinned",): "system", ("system",): "pinned"}.get(tuple(table["allocator"].unique()), "other")
    for i, b in enumerate(backends):
        if has(table, f"alloc_slower_{b}") and any(flag(v) for v in table[f"alloc_slower_{b}"]):
            unit, factor = fmt.pick_unit(table[f"other_alloc_{b}_s"], fmt.TIME_UNITS)
            cols.append(
                Column(
                    f"{b} [{unit}] {other}",
                    lambda r, b=b, factor=factor: _other_alloc_cell(r, b, factor),
                    P_OTHER_ALLOC + i,
                    key=f"other_alloc_{b}_s",
                )
            )
    for i, b in enumerate(backends):
        if has(table, f"compile_{b}_s"):
            cols.append(
                Column(
                    f"{b} compile [s]",
                    lambda r, b=b: fmt.sig(r.get(f"compile_{b}_s")),
                    P_COMPILE + i,
                    key=f"compile_{b}_s",
                )
            )
    return cols


def _other_alloc_cell(r: Mapping[str, Any], b: str, factor: float) -> str:
    # Only where the system allocator is > 10% slower: elsewhere the two states agree within the noise.
    return fmt.in_unit(r.get(f"other_alloc_{b}_s"), factor) if flag(r.get(f"alloc_slower_{b}")) else ""


def _ratio_cell(counter: str) -> Any:
    def cell(r: Mapping[str, Any]) -> str:
        q = ratio(r.get(f"macs_{counter}"), r.get("macs_attnbench"))
        if q is None:
            return "n/a"
        flag = " under" if q < 1 - RATIO_TOLERANCE else (" over" if q > 1 + RATIO_TOLERANCE else "")
        return f"{fmt.ratio(q)}{flag}"

    return cell


def _latency_column(table: pd.DataFrame, b: str, priority: int) -> Column:
    unit, factor = fmt.pick_unit(table[f"latency_{b}_s"], fmt.TIME_UNITS)

    def marks(r: Mapping[str, Any]) -> str:
        text = " ~" if flag(r.get(f"noisy_{b}")) else ""
        text += " !" if flag(r.get(f"contended_{b}")) else ""
        return text + (f" {ALLOC_MARK}" if flag(r.get(f"alloc_slower_{b}")) else "")

    def full(r: Mapping[str, Any]) -> str:
        med, iqr = r.get(f"latency_{b}_s"), r.get(f"iqr_{b}_s")
        if fmt.missing(med):
            return fmt.MISSING
        spread = "" if fmt.missing(iqr) else f" ±{fmt.in_unit(iqr, factor, 2)}"
        return fmt.in_unit(med, factor) + spread + marks(r)

    def short(r: Mapping[str, Any]) -> str:
        med = r.get(f"latency_{b}_s")
        return fmt.MISSING if fmt.missing(med) else fmt.in_unit(med, factor) + marks(r)

    key = f"latency_{b}_s"
    return Column(
        f"{b} [{unit}] med±IQR",
        full,
        priority,
        short=Column(f"{b} [{unit}]", short, P_SPREAD, key=key, meta={"best": True}),
        short_name="±IQR",
        key=key,
        meta={"best": True},
    )


def _roofline_columns(table: pd.DataFrame, backends: Sequence[str], roofs: Roofs) -> list[Column]:
    """Achieved FLOP/s per backend and its share of the machine's measured peak (where FLOPs were counted)."""
    if not has(table, "flops_attnbench"):
        return []
    cols = []
    for i, b in enumerate(backends):
        if not has(table, f"latency_{b}_s"):
            continue
        rates = [achieved(r, b) for _, r in table.iterrows()]
        unit, factor = fmt.pick_unit(rates, RATE_UNITS)
        cols.append(
            Column(f"{b} {unit}", lambda r, b=b, factor=factor: fmt.in_unit(achieved(r, b), factor), P_ACHIEVED + i)
        )
        if any(row_peak(r, b, roofs) for _, r in table.iterrows()):
            cols.append(Column(f"{b} % peak", lambda r, b=b: _peak_share(r, b, roofs), P_PEAK_SHARE + i))
    return cols


def _peak_share(r: Mapping[str, Any], b: str, roofs: Roofs) -> str:
    peak, value = row_peak(r, b, roofs), achieved(r, b)
    return fmt.MISSING if peak is None or value is None else fmt.percent(value / peak.flops_per_s)


def _best(table: pd.DataFrame, key: str) -> Any:
    # The best (lowest) value of a cost column among several modules.
    vals = pd.to_numeric(table[key], errors="coerce").dropna()
    return vals.min() if len(vals) and table["module"].nunique() > 1 else None


#: Cost columns whose lowest value is highlighted with --highlight (compare).
BEST_KEYS = ("params", "macs_attnbench", "flops_attnbench")


def highlights(table: pd.DataFrame, cols: Sequence[Column]) -> dict[tuple[Any, ...], dict[str, Any]]:
    # The best value of a column among the modules measured at the same setting: across resolutions the
    # smallest input would always win.
    setting = [k for k in ROW_KEY if k not in ("module", "kwargs", "layout")]
    keys = [c.key for c in cols if c.key in BEST_KEYS or c.key.startswith("mem_") or c.meta.get("best")]
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
    for i, m in enumerate(metrics):
        cols.append(
            Column(
                f"{metric_label(m)} exp",
                lambda r, m=m: fmt.ratio(r.get(f"{m}_exp")),
                P_MACS if m == "macs_attnbench" else P_OTHER_LATENCY + i,
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
        Column(f"{m.alias}÷{first}", lambda r, a=m.alias: fmt.ratio(r[f"ratio_{a}"]), P_MACS) for m in machines[1:]
    ]
    return cols


def cross_unit(frame: pd.DataFrame, machines: Sequence[MachineInfo]) -> tuple[str, float]:
    """One time unit for every machine's column, so they read side by side."""
    return fmt.pick_unit([v for m in machines for v in frame[f"latency_{m.alias}_s"]], fmt.TIME_UNITS)
