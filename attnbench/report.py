"""Turn rows into views: the summary table, scaling exponents, rich tables and Markdown.

Numbers are printed by attnbench.fmt (the one formatter) and tables fitted to the terminal by attnbench.tables:
each column here declares its priority (P_*), so a new column slots in without touching the fitting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Group
from rich.table import Table
from rich.text import Text

from attnbench import fmt
from attnbench import results as R
from attnbench.counting.base import CROSS_CHECK_TOLERANCE
from attnbench.instructions import INSTRUCTIONS_METHOD
from attnbench.merge import machines as machines_of
from attnbench.results import Result, to_frame
from attnbench.roofline import Peak, peak_for, peaks_of, rate
from attnbench.tables import KEY, Column, Fitted, fit, fit_note, render
from attnbench.zoo.spec import SOURCE_HASH_DIGITS

if TYPE_CHECKING:
    from rich.console import Console

    from attnbench.gate import Verdict
    from attnbench.merge import MachineInfo

CONVENTION = (
    "MACs and FLOPs: one multiply-add = 1 MAC = 2 FLOPs; a lone elementwise product (a gate x * g) = 1 MAC = "
    "1 FLOP. attnbench counts convolutions, matmuls/linear/einsum, "
    "scaled-dot-product attention and elementwise tensor-by-tensor products; softmax, activations, norms, "
    "additions and scalar scalings are listed as uncounted, not folded in. fvcore and thop are normalised to MACs."
)
#: A counter whose total differs from attnbench's by more than this fraction is flagged (one definition, shared
#: with attnbench.counting.cross_check).
RATIO_TOLERANCE = CROSS_CHECK_TOLERANCE
GEOMETRY = ["module", "dim", "height", "width", "batch", "kwargs"]
#: Scenario fields: a summary row is one geometry in one scenario; backends are pivoted into columns.
SCENARIO = ["layout", "mode", "dtype", "threads", "channels_last", "compile", "allocator", "machine"]
ROW_KEY = [*GEOMETRY, *SCENARIO]
#: One scaling series (a line in a plot, a row of the scaling table): everything but the resolution.
SERIES_KEY = [k for k in ROW_KEY if k not in ("height", "width")]
#: Marks a CPU latency that a default (unpinned) glibc process would see more than 10% slower.
ALLOC_MARK = "†"
#: Identity columns shown only when they vary in a table, with their short headers.
VARYING = {
    "batch": "B",
    "kwargs": "kwargs",
    "layout": "layout",
    "mode": "mode",
    "dtype": "dtype",
    "threads": "threads",
    "channels_last": "ch-last",
    "compile": "compiled",
    "allocator": "alloc",
    "machine": "machine",
}


#: Counts with SI prefixes, three significant digits (the one formatter: attnbench.fmt).
si = fmt.si


def _present(value: Any) -> bool:
    return not fmt.missing(value)


def summary(results: Sequence[Result]) -> pd.DataFrame:
    """One row per geometry and scenario (ROW_KEY): counts once, then latency/memory per backend.

    Columns are raw numbers in base units; `backends` lists which backends have latency columns.
    """
    frame = to_frame(results)
    if frame.empty:
        return frame
    for name in ("kwargs", "layout", "machine"):
        frame[name] = frame[name].fillna("")
    rows: list[dict[str, Any]] = []
    for key, grp in frame.groupby(ROW_KEY, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(ROW_KEY, key, strict=True))
        first = grp.iloc[0]
        counts = ("params", "macs_attnbench", "macs_fvcore", "macs_thop", "macs_formula", "flops_attnbench")
        for col in (*counts, "counter_notes"):
            vals = grp[col].dropna()
            row[col] = vals.iloc[0] if len(vals) else None
        statuses = []
        for _, r in grp.iterrows():
            b = r["backend"]
            if r["status"] != R.OK:
                statuses.append(f"{b}: {r['status']}" if b != "none" else r["status"])
            row[f"latency_{b}_s"] = r["latency_median_s"]
            row[f"iqr_{b}_s"] = r["latency_iqr_s"]
            row[f"noisy_{b}"] = r["latency_noisy"]
            row[f"contended_{b}"] = r["latency_contended"]
            row[f"mem_{b}_bytes"] = r["peak_mem_bytes"]
            row[f"throughput_{b}_per_s"] = r["throughput_per_s"]
            row[f"other_alloc_{b}_s"] = r["other_allocator_latency_s"]
            row[f"alloc_slower_{b}"] = r["system_allocator_slower"]
            row[f"compile_{b}_s"] = r["compile_s"]
            if _present(r["instructions"]):
                row[f"instr_{b}"] = r["instructions"]
            if b == "ort":
                row["parity_max_abs"] = r["parity_max_abs"]
            elif r["compile"]:
                row["compile_parity_max_abs"] = r["parity_max_abs"]
        # One status when every backend ended the same way ("invalid"), else each backend's that did not pass.
        alike = set(grp["status"])
        row["status"] = alike.pop() if len(alike) == 1 else "; ".join(statuses)
        row["reason"] = "; ".join(r for r in grp["reason"] if r)
        row["tokens"] = int(first["height"]) * int(first["width"])
        rows.append(row)
    return pd.DataFrame(rows)


def ratio(macs: Any, reference: Any) -> float | None:
    """A counter's total over attnbench's (None when either is missing or zero)."""
    if not _present(macs) or not _present(reference) or not reference:
        return None
    return float(macs) / float(reference)


def backends_of(results: Sequence[Result]) -> list[str]:
    """Backends present in the rows, in first-seen order, without the 'none' placeholder."""
    seen: list[str] = []
    for r in results:
        if r.backend not in seen and r.backend != "none":
            seen.append(r.backend)
    return seen


def scaling(results: Sequence[Result]) -> pd.DataFrame:
    """Exponent x of cost ~ N^x (N = H*W) per module, between the two largest N, for each metric and backend.

    The local slope at the largest resolutions is what "linear" or "quadratic" claims are about; a
    least-squares slope over all points is given too.
    """
    table = summary(results)
    if table.empty:
        return table
    metrics = ["macs_attnbench"] + [c for c in table.columns if c.startswith(("latency_", "mem_"))]
    out = []
    for key, grp in table.groupby(SERIES_KEY, sort=False, dropna=False):
        # Only geometries that produced numbers: a resolution the module refused has no point to fit.
        grp = grp[grp[metrics].notna().any(axis=1)].sort_values("tokens")
        if grp["tokens"].nunique() < 2:
            continue
        row: dict[str, Any] = dict(zip(SERIES_KEY, key, strict=True))
        row["n_min"], row["n_max"] = int(grp["tokens"].min()), int(grp["tokens"].max())
        for metric in metrics:
            pts = [(t, v) for t, v in zip(grp["tokens"], grp[metric], strict=True) if _present(v) and v > 0]
            if len(pts) < 2:
                continue
            n, v = np.log([p[0] for p in pts]), np.log([float(p[1]) for p in pts])
            if n[-1] == n[-2]:
                continue
            row[f"{metric}_exp"] = float((v[-1] - v[-2]) / (n[-1] - n[-2]))
            row[f"{metric}_fit"] = float(np.polyfit(n, v, 1)[0])
        out.append(row)
    return pd.DataFrame(out)


def _metric_label(metric: str) -> str:
    if metric == "macs_attnbench":
        return "MACs"
    kind, backend = metric.split("_")[0], metric.split("_")[1]
    return f"{'latency' if kind == 'latency' else 'peak mem'} {backend}"


# ---------------------------------------------------------------- the columns of the main table

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
    latencies = [f"latency_{b}_s" for b in backends if _has(table, f"latency_{b}_s")]
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


def _has(table: pd.DataFrame, column: str) -> bool:
    return column in table and table[column].notna().any()


def _columns(
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
    if _has(table, "params"):
        cols.append(Column("Params", lambda r: fmt.si(r["params"]), priority("params", P_PARAMS), key="params"))
    if _has(table, "macs_attnbench"):
        macs = priority("macs_attnbench", P_MACS)
        cols.append(Column("MACs", lambda r: fmt.si(r["macs_attnbench"]), macs, key="macs_attnbench"))
    if _has(table, "flops_attnbench"):
        cols.append(Column("FLOPs", lambda r: fmt.si(r["flops_attnbench"]), P_FLOPS, key="flops_attnbench"))
    for counter in ("fvcore", "thop"):
        if f"macs_{counter}" in table and (
            table[f"macs_{counter}"].notna().any() or table["counter_notes"].fillna("").str.contains(counter).any()
        ):
            cols.append(Column(f"{counter}÷ours", _ratio_cell(counter), P_CROSS_CHECK, key=f"macs_{counter}"))
    for i, b in enumerate(backends):
        if _has(table, f"mem_{b}_bytes"):
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
        if _has(table, f"latency_{b}_s"):
            cols.append(_latency_column(table, b, priority(f"latency_{b}_s", P_OTHER_LATENCY + i)))
    for i, b in enumerate(backends):
        if _has(table, f"instr_{b}"):
            cell = lambda r, b=b: fmt.si(r.get(f"instr_{b}"))  # noqa: E731
            cols.append(Column(f"{b} instr/call", cell, P_INSTRUCTIONS + i, key=f"instr_{b}"))
    cols += _scenario_columns(table, backends)
    cols += _roofline_columns(table, backends, roofs or {})
    if _has(table, "parity_max_abs"):
        cols.append(Column("ORT max|Δ|", lambda r: fmt.sci(r.get("parity_max_abs")), P_PARITY, key="parity_max_abs"))
    if _has(table, "compile_parity_max_abs"):
        cols.append(
            Column(
                "compiled max|Δ|", lambda r: fmt.sci(r.get("compile_parity_max_abs")), P_PARITY, key="compile_parity"
            )
        )
    cols.append(Column("Status", lambda r: str(r["status"]), justify="left", wrap=True, key="status"))
    return cols


def _scenario_columns(table: pd.DataFrame, backends: Sequence[str]) -> list[Column]:
    """Throughput (when batch or threads vary), the other allocator state's latency, torch.compile's time."""
    cols = []
    # Throughput answers "what batch (or thread count) fills this machine": shown when either varies.
    if {"batch", "threads"} & set(varying(table)):
        for i, b in enumerate(backends):
            if _has(table, f"throughput_{b}_per_s"):
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
        if _has(table, f"alloc_slower_{b}") and any(_flag(v) for v in table[f"alloc_slower_{b}"]):
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
        if _has(table, f"compile_{b}_s"):
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
    return fmt.in_unit(r.get(f"other_alloc_{b}_s"), factor) if _flag(r.get(f"alloc_slower_{b}")) else ""


def _flag(value: Any) -> bool:
    # A bool column of a summary holds numpy bools (`is True` misses them) or None where not measured.
    return _present(value) and bool(value)


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
        text = " ~" if _flag(r.get(f"noisy_{b}")) else ""
        text += " !" if _flag(r.get(f"contended_{b}")) else ""
        return text + (f" {ALLOC_MARK}" if _flag(r.get(f"alloc_slower_{b}")) else "")

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


#: The measured roofs of each machine of a report, by label and by alias (M1, ...); "" for a one-machine report.
Roofs = Mapping[str, Sequence[Peak]]


def roofs_by_machine(results: Sequence[Result], env: Mapping[str, Any] | None) -> dict[str, list[Peak]]:
    """Each machine's measured roofs (a merged report keeps an environment per machine)."""
    env = env or {}
    roofs: dict[str, list[Peak]] = {"": peaks_of(env)}
    for m in machines_of(results, env):
        roofs[m.label] = roofs[m.alias] = peaks_of(m.env)
    return roofs


def _row_peak(r: Mapping[str, Any], b: str, roofs: Roofs) -> Peak | None:
    threads = r.get("threads")
    peaks = roofs.get(str(r.get("machine") or ""), roofs.get("", []))
    return peak_for(peaks, b, str(r.get("dtype") or R.DEFAULT_DTYPE), 1 if fmt.missing(threads) else int(threads))


def achieved(r: Mapping[str, Any], b: str) -> float | None:
    """FLOP/s a backend reached on a summary row: the counter's exact FLOPs over the median latency."""
    return rate(r.get("flops_attnbench"), r.get(f"latency_{b}_s"))


def _roofline_columns(table: pd.DataFrame, backends: Sequence[str], roofs: Roofs) -> list[Column]:
    """Achieved FLOP/s per backend and its share of the machine's measured peak (where FLOPs were counted)."""
    if not _has(table, "flops_attnbench"):
        return []
    cols = []
    for i, b in enumerate(backends):
        if not _has(table, f"latency_{b}_s"):
            continue
        rates = [achieved(r, b) for _, r in table.iterrows()]
        unit, factor = fmt.pick_unit(rates, RATE_UNITS)
        cols.append(
            Column(f"{b} {unit}", lambda r, b=b, factor=factor: fmt.in_unit(achieved(r, b), factor), P_ACHIEVED + i)
        )
        if any(_row_peak(r, b, roofs) for _, r in table.iterrows()):
            cols.append(Column(f"{b} % peak", lambda r, b=b: _peak_share(r, b, roofs), P_PEAK_SHARE + i))
    return cols


def _peak_share(r: Mapping[str, Any], b: str, roofs: Roofs) -> str:
    peak, value = _row_peak(r, b, roofs), achieved(r, b)
    return fmt.MISSING if peak is None or value is None else fmt.percent(value / peak.flops_per_s)


def varying(table: pd.DataFrame) -> list[str]:
    """The identity columns (batch, kwargs, scenario fields) that take more than one value in `table`."""
    return [key for key in VARYING if key in table and table[key].nunique(dropna=False) > 1]


def identity_text(key: str, value: Any) -> str:
    """An identity value as a table cell: kwargs as k=v, flags as yes/no, numbers as ints."""
    if key == "kwargs":
        return _kw_text(value)
    if key in ("channels_last", "compile"):
        return "yes" if bool(value) else "no"
    if key in ("batch", "threads"):
        return str(int(value))
    return str(value) if _present(value) else ""


def _kw_text(kw: str) -> str:
    # One kwarg is one word (no spaces inside a list), so a narrow column wraps between kwargs, not inside one.
    if not kw:
        return ""
    return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in json.loads(kw).items())


def _best(table: pd.DataFrame, key: str) -> Any:
    # The best (lowest) value of a cost column among several modules.
    vals = pd.to_numeric(table[key], errors="coerce").dropna()
    return vals.min() if len(vals) and table["module"].nunique() > 1 else None


#: Cost columns whose lowest value is highlighted with --highlight (compare).
BEST_KEYS = ("params", "macs_attnbench", "flops_attnbench")


def _highlights(table: pd.DataFrame, cols: Sequence[Column]) -> dict[tuple[Any, ...], dict[str, Any]]:
    # The best value of a column among the modules measured at the same setting: across resolutions the
    # smallest input would always win.
    setting = [k for k in ROW_KEY if k not in ("module", "kwargs", "layout")]
    keys = [c.key for c in cols if c.key in BEST_KEYS or c.key.startswith("mem_") or c.meta.get("best")]
    return {
        tuple(values): {key: _best(grp, key) for key in keys}
        for values, grp in table.groupby(setting, sort=False, dropna=False)
    }


def rich_table(
    results: Sequence[Result],
    title: str | None = None,
    sort_by: str | None = None,
    highlight_best: bool = False,
    width: int | None = None,
    env: Mapping[str, Any] | None = None,
) -> tuple[Table, Fitted]:
    """The summary as a rich Table fitted to `width` (None: every column), and what the fitting left out."""
    table = with_machine_aliases(summary(results), results)
    if table.empty:
        return Table(title=title), fit([], [], width)
    if sort_by:
        table = sort_summary(table, sort_by)
    cols = _columns(table, backends_of(results), roofs_by_machine(results, env), sort_by)
    rows = [r for _, r in table.iterrows()]
    fitted = fit(cols, rows, width)
    setting = [k for k in ROW_KEY if k not in ("module", "kwargs", "layout")]
    bests = _highlights(table, fitted.columns) if highlight_best else {}

    def style(column: Column, r: Any, text: str) -> str:
        best = bests.get(tuple(r[c] for c in setting), {}).get(column.key)
        if best is not None and _present(r.get(column.key)) and r.get(column.key) == best:
            return "bold green"
        if column.key == "status" and text != R.OK:
            return "red"
        if text.endswith((" under", " over")):
            return "yellow"
        return ""

    return render(fitted, rows, title, style), fitted


def _scaling_columns(frame: pd.DataFrame) -> list[Column]:
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
                f"{_metric_label(m)} exp",
                lambda r, m=m: fmt.ratio(r.get(f"{m}_exp")),
                P_MACS if m == "macs_attnbench" else P_OTHER_LATENCY + i,
            )
        )
    return cols


def scaling_table(results: Sequence[Result], width: int | None = None) -> tuple[Table, Fitted] | None:
    """Rich table of exponents x in cost ~ N^x fitted to `width`, and what it left out; None without two resolutions."""
    frame = with_machine_aliases(scaling(results), results)
    if frame.empty:
        return None
    rows = [r for _, r in frame.iterrows()]
    fitted = fit(_scaling_columns(frame), rows, width)
    return render(fitted, rows, "Scaling: x in cost ~ N^x, N = H*W"), fitted


SORT_KEYS = {"params": "params", "macs": "macs_attnbench", "module": "module"}


def sort_summary(table: pd.DataFrame, sort_by: str) -> pd.DataFrame:
    """Sort the summary by a metric name: params, macs, module, latency[-BACKEND], memory[-BACKEND]."""
    key = sort_key(sort_by, [c[len("latency_") : -2] for c in table.columns if c.startswith("latency_")])
    if key not in table:
        return table
    return table.sort_values([key, "module"], kind="stable", na_position="last")


def sort_key(sort_by: str, backends: Sequence[str]) -> str:
    """Summary column for a --sort value; raises ValueError listing what is allowed."""
    if sort_by in SORT_KEYS:
        return SORT_KEYS[sort_by]
    kind, _, backend = sort_by.partition("-")
    backend = backend or (backends[0] if backends else "cpu")
    if kind in ("latency", "memory") and backend not in backends:
        raise ValueError(
            f"cannot sort by {sort_by!r}: no {backend} measurements (backends: {', '.join(backends) or 'none'})"
        )
    if kind == "latency":
        return f"latency_{backend}_s"
    if kind == "memory":
        return f"mem_{backend}_bytes"
    allowed = ", ".join([*SORT_KEYS, "latency[-BACKEND]", "memory[-BACKEND]"])
    raise ValueError(f"cannot sort by {sort_by!r}; allowed: {allowed}")


# ---------------------------------------------------------------- Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(
    results: Sequence[Result],
    env: Mapping[str, Any],
    title: str = "attnbench report",
    sort_by: str | None = None,
) -> str:
    """GitHub-ready report: the table, scaling exponents, failures with reasons, environment, convention."""
    lines = [f"# {title}", ""]
    table = with_machine_aliases(summary(results), results)
    if table.empty:
        lines += ["No results.", ""]
    else:
        if sort_by:
            table = sort_summary(table, sort_by)
        cols = _columns(table, backends_of(results), roofs_by_machine(results, env), sort_by)
        lines.append("| " + " | ".join(_md_escape(c.header) for c in cols) + " |")
        lines.append("|" + "|".join("---" if c.justify == "left" else "---:" for c in cols) + "|")
        for _, r in table.iterrows():
            lines.append("| " + " | ".join(_md_escape(c.cell(r)) for c in cols) + " |")
        lines.append("")
        # The scenario fields that do not vary are not columns: the line under the table says them.
        lines += [scenario_text(table), ""]
        lines.append(
            "Latency: median per call over timed blocks, ± interquartile range; timing stops once the 95% "
            "confidence interval on the median is within the asked precision (±1% by default), or its time "
            "budget is spent, or the interval's width says the budget cannot reach that precision. `~` marks "
            "a noisy timing (IQR/median > 10%, or the precision not reached), "
            "`!` one taken while other processes used more than 5% of a core. "
            + (
                f"instr/call: {INSTRUCTIONS_METHOD} (a deterministic measure of work). "
                if any(_present(r.instructions) for r in results)
                else ""
            )
            + "Mem: activations and temporaries allocated during one forward, or in train mode during one "
            "forward + backward (gradients included); weights and input excluded. "
            "`under`/`over`: the counter differs from "
            f"attnbench's by more than {RATIO_TOLERANCE:.0%}."
            + (f" {ALLOC_LEGEND}" if any(_flag(r.system_allocator_slower) for r in results) else "")
            + (
                " FLOP/s: the attnbench counter's FLOPs over the median latency (`-` where FLOPs were not "
                "counted); % peak: of the machine's measured peak compute (below)."
                if any("FLOP/s" in c.header for c in cols)
                else ""
            )
        )
        lines.append("")
        notes = allocator_notes(results)
        if notes:
            lines += ["## Allocator", "", *[f"- {_md_escape(n)}" for n in notes], ""]
        lines += _roof_markdown(results, env)
        lines += machines_markdown(results, env)
        frame = with_machine_aliases(scaling(results), results)
        if not frame.empty:
            metrics = [c[: -len("_exp")] for c in frame.columns if c.endswith("_exp")]
            lines += [
                "## Scaling with N = H*W",
                "",
                "Exponent x in cost ~ N^x between the two largest resolutions (least-squares fit over "
                "all resolutions in brackets).",
                "",
            ]
            extra = varying(frame)
            heads = ["Module", "C", *(VARYING[c] for c in extra), "N range"]
            lines.append("| " + " | ".join(heads + [f"{_metric_label(m)} exp" for m in metrics]) + " |")
            lines.append("|---|---:|" + "---:|" * len(extra) + "---:|" + "---:|" * len(metrics))
            for _, r in frame.iterrows():
                vals = []
                for m in metrics:
                    e, f = r.get(f"{m}_exp"), r.get(f"{m}_fit")
                    vals.append(fmt.MISSING if not _present(e) else f"{fmt.ratio(e)} ({fmt.ratio(f)})")
                ids = [str(r["module"]), str(int(r["dim"]))]
                ids += [_md_escape(identity_text(c, r[c])) for c in extra]
                lines.append("| " + " | ".join([*ids, f"{r['n_min']}..{r['n_max']}", *vals]) + " |")
            lines.append("")
    lines += cross_hardware_markdown(results, env)
    bad = [r for r in results if r.status != R.OK]
    if bad:
        lines += [
            "## Cases that did not complete",
            "",
            "| Module | C | H x W | B | backend | status | reason |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for r in bad:
            lines.append(
                f"| {r.module} | {r.dim} | {r.height}x{r.width} | {r.batch} | {r.backend} | {r.status} | "
                f"{_md_escape(r.reason)} |"
            )
        lines.append("")
    lines += _sources_markdown(results)
    lines += [
        "## Counting convention",
        "",
        CONVENTION,
        "",
        *environment_markdown(results, env),
    ]
    return "\n".join(lines)


def _sources_markdown(results: Sequence[Result]) -> list[str]:
    """The 'Module sources' section: each module's source hash, so a reader sees when the code changed."""
    pairs = list(dict.fromkeys((r.module, r.source_hash) for r in results if r.source_hash))
    if not pairs:
        return []
    lines = [
        "## Module sources",
        "",
        f"First {SOURCE_HASH_DIGITS} hex digits of the SHA-256 of the file that defines each module: another "
        "hash, other code.",
        "",
        "| Module | source hash |",
        "|---|---|",
    ]
    lines += [f"| {_md_escape(module)} | `{digest}` |" for module, digest in pairs]
    return [*lines, ""]


def _roof_markdown(results: Sequence[Result], env: Mapping[str, Any]) -> list[str]:
    """The measured roof of each machine as a small Markdown table (nothing when no run measured one)."""
    machines = machines_of(results, env)
    named = [(m.alias, peaks_of(m.env)) for m in machines] if len(machines) > 1 else [("", peaks_of(env))]
    if not any(peaks for _, peaks in named):
        return []
    several = len(named) > 1
    lines = [
        "## Machine roof",
        "",
        "| "
        + ("machine | " if several else "")
        + "device | dtype | threads | peak compute [GFLOP/s] | bandwidth [GB/s] | ridge [FLOP/B] |",
        "|" + ("---|" if several else "") + "---|---|---:|---:|---:|---:|",
    ]
    for alias, peaks in named:
        for p in peaks:
            threads = str(p.threads) if p.device == "cpu" else "-"
            lines.append(
                "| " + (f"{alias} | " if several else "") + f"{p.device} | {p.dtype} | {threads} | "
                f"{fmt.sig(p.flops_per_s / 1e9)} | {fmt.sig(p.bytes_per_s / 1e9)} | {fmt.sig(p.ridge)} |"
            )
    method = next(p.method for _, peaks in named for p in peaks)
    return [*lines, "", f"Measured as the {method}.", ""]


ALLOC_LEGEND = (
    f"`{ALLOC_MARK}`: in a process that does not pin glibc's allocator (a default PyTorch process), the call "
    "is more than 10% slower in its median and its fastest call, and takes enough extra page faults to cost "
    "that; the `[ms] system` column gives that latency."
)
#: How the scenario line names each value of a scenario field.
_SCENARIO_WORDS: dict[str, Any] = {
    "mode": {"infer": "inference", "train": "training (forward + backward)"},
    "dtype": {},
    "threads": lambda n: f"{int(n)} thread" + ("s" if int(n) != 1 else ""),
    "channels_last": {True: "channels_last", False: "contiguous"},
    "compile": {True: "torch.compile", False: "eager"},
    "allocator": {"pinned": "pinned allocator", "system": "system allocator"},
}


def scenario_text(table: pd.DataFrame) -> str:
    """The scenario fields that are the same for every row, as one line (the varying ones are columns)."""
    if table.empty:
        return ""
    parts = []
    for key, words in _SCENARIO_WORDS.items():
        if key in table and key not in varying(table):
            value = table[key].iloc[0]
            value = bool(value) if key in ("channels_last", "compile") else value
            parts.append(words(value) if callable(words) else str(words.get(value, value)))
    return "Scenario: " + ", ".join(parts) + "." if parts else ""


def allocator_notes(results: Sequence[Result]) -> list[str]:
    """One sentence per row whose latency a default (unpinned) glibc process would see > 10% slower."""
    notes = []
    for r in results:
        if not _flag(r.system_allocator_slower) or not r.latency_median_s or not r.other_allocator_latency_s:
            continue
        system_headline = r.allocator == "system"
        system_s = r.latency_median_s if system_headline else r.other_allocator_latency_s
        pinned_s = r.other_allocator_latency_s if system_headline else r.latency_median_s
        faults = r.minor_faults_per_call if system_headline else r.other_allocator_faults_per_call
        notes.append(
            f"{case_text(r)}: a process with glibc's default allocator takes {fmt.seconds(system_s)} per call, "
            f"{fmt.sig(system_s / pinned_s, 2)}x the {fmt.seconds(pinned_s)} measured with the allocator pinned"
            + (f" ({faults:,.0f} minor page faults per call)" if faults is not None else "")
            + ("; the table shows the pinned number, --allocator system shows this one" if not system_headline else "")
            + "."
        )
    return notes


def zoo_markdown() -> str:
    """The module table for the README, generated from the registry (kept in sync by a test)."""
    from attnbench.zoo.registry import get_spec, list_modules
    from attnbench.zoo.spec import Setting

    lines = [
        "| name | module | arXiv | official code | layout | default kwargs | params at C=64 |",
        "|---|---|---|---|---|---|---:|",
    ]
    for name in list_modules():
        spec = get_spec(name)
        ref = spec.reference
        kwargs = ", ".join(f"{k}={v}" for k, v in spec.defaults.items()) or "-"
        layout = spec.layout + (", resolution-bound" if spec.resolution_bound else "")
        res = spec.examples[0].res if spec.resolution_bound and spec.examples else (56, 56)
        try:
            params = f"{spec.params_formula(Setting(64, dict(spec.defaults), res[0], res[1])):,}"
            if spec.resolution_bound:
                params += f" (at {res[0]}x{res[1]})"
        except Exception:  # a default that refuses C=64 (EPSA needs C % 64 == 0 and takes it)
            params = "-"
        lines.append(
            f"| `{name}` | {_md_escape(spec.title)} | [{ref.arxiv}](https://arxiv.org/abs/{ref.arxiv}) | "
            f"{ref.repo} `{ref.file}` `{_md_escape(ref.cls)}` | {layout} | {_md_escape(kwargs)} | {params} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- the one output pair every command uses


def write(
    rows: Sequence[Result],
    env: Mapping[str, Any],
    paths: Sequence[str | Path],
    title: str = "attnbench report",
    sort_by: str | None = None,
) -> None:
    """Write every requested report file (CSV with its sidecar, Markdown, JSON), each atomically."""
    for path in map(Path, paths):
        if path.suffix == ".csv":
            R.write_csv(path, rows, env)
        elif path.suffix == ".json":
            R.atomic_write(path, R.json_text(rows, env))
        else:
            R.atomic_write(path, markdown(rows, env, title=title, sort_by=sort_by))


def show(
    rows: Sequence[Result],
    out: Console,
    err: Console,
    title: str | None = None,
    sort_by: str | None = None,
    highlight_best: bool = False,
    env: Mapping[str, Any] | None = None,
) -> None:
    """Print the summary and scaling tables on `out`, fitted to its width; on `err`, what a narrow terminal left
    out, the cases that did not complete and the convention."""
    width = out.width
    table, fitted = rich_table(rows, title, sort_by, highlight_best, width, env)
    out.print(table)
    fits = [("", fitted)]
    scale = scaling_table(rows, width)
    if scale is not None:
        out.print(scale[0])
        fits.append(("scaling table: ", scale[1]))
    cross = cross_hardware_table(rows, width)
    if cross is not None:
        out.print(cross[0])
        fits.append(("machines table: ", cross[1]))
    for line in machines_legend(rows):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    line = fit_note(width, fits)
    if line:
        err.print(f"attnbench: {line}", style="dim", markup=False, highlight=False, soft_wrap=True)
    for note in allocator_notes(rows):
        err.print(note, markup=False, highlight=False, soft_wrap=True)
    for row in rows:
        if row.status != R.OK:
            err.print(
                f"{case_text(row)}: {row.status}: {row.reason}",
                style="yellow",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    err.print(f"[dim]{CONVENTION}[/dim]", highlight=False, soft_wrap=True)


def case_text(row: Result) -> str:
    """One case as short text: module, setting, backend, and the scenario fields that differ from the defaults."""
    text = f"{row.module} C={row.dim} {row.height}x{row.width} B={row.batch} {row.backend}"
    if row.dtype != R.DEFAULT_DTYPE:
        text += f" {row.dtype}"
    if row.threads != 1:
        text += f" t={row.threads}"
    if row.mode != R.DEFAULT_MODE:
        text += f" {row.mode}"
    if row.channels_last:
        text += " channels_last"
    if row.compile:
        text += " compiled"
    if row.layout:
        text += f" layout={row.layout}"
    if row.allocator != R.DEFAULT_ALLOCATOR:
        text += f" allocator={row.allocator}"
    return text + (f" {row.kwargs}" if row.kwargs else "")


def show_gate(verdict: Verdict, console: Console, failed_cases: int = 0) -> None:
    """Print what changed against the baseline and the gate's outcome: passed, inconclusive (machine busy) or failed
    (also when cases of the run failed)."""
    if verdict.latency_note:
        console.print(f"[yellow]gate: {verdict.latency_note}[/yellow]", highlight=False)
    if verdict.changes:
        table = Table(title="Changes against the baseline", header_style="bold", title_justify="left")
        for header in ("Case", "Kind", "Change", "Fails"):
            table.add_column(header)
        for c in verdict.changes:
            table.add_row(c.case, c.kind, c.detail, "yes" if c.failing else "no", style="red" if c.failing else None)
        console.print(table)
    failing = sum(c.failing for c in verdict.changes)
    compared = f"{verdict.compared_cases} case(s) compared"
    if verdict.metric == "instructions":
        compared += f", instructions of {verdict.compared_instructions} row(s)"
    if verdict.inconclusive and not failed_cases:
        busy = sum(c.kind == "latency-busy" for c in verdict.changes)
        console.print(
            f"gate: [yellow]INCONCLUSIVE (machine busy)[/yellow]: {compared}; {busy} latency regression(s) seen "
            "only while other processes used the CPU, not failed (--strict fails them; --gate-metric "
            "instructions is immune to load)",
            highlight=False,
        )
        return
    outcome = "[green]PASSED[/green]" if verdict.passed and not failed_cases else "[red]FAILED[/red]"
    console.print(
        f"gate: {outcome}: {compared}, {failing} failing change(s)"
        + (f", {failed_cases} case(s) of this run failed" if failed_cases else ""),
        highlight=False,
    )


# ---------------------------------------------------------------- across machines (merged reports)

#: The identity of a cross-hardware row: a case on every machine (everything but the machine).
CROSS_KEY = [*GEOMETRY, *(k for k in SCENARIO if k != "machine"), "backend"]


def cross_hardware(results: Sequence[Result]) -> tuple[pd.DataFrame, list[MachineInfo]]:
    """Median latency per machine side by side, one row per case measured on any machine, and the machines.

    Columns `latency_M1_s`, ... and `ratio_Mk` (Mk's latency over M1's, the first machine's). The frame is
    empty with fewer than two machines or without latency.
    """
    machines = machines_of(results, {})
    frame = to_frame([r for r in results if r.backend != "none"])
    if len(machines) < 2 or frame.empty or frame["latency_median_s"].isna().all():
        return pd.DataFrame(), machines
    for name in ("kwargs", "layout"):
        frame[name] = frame[name].fillna("")
    rows: list[dict[str, Any]] = []
    for key, grp in frame.groupby(CROSS_KEY, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(CROSS_KEY, key, strict=True))
        for m in machines:
            values = grp.loc[grp["machine"] == m.label, "latency_median_s"].dropna()
            row[f"latency_{m.alias}_s"] = float(values.iloc[0]) if len(values) else None
        first = row[f"latency_{machines[0].alias}_s"]
        for m in machines[1:]:
            row[f"ratio_{m.alias}"] = ratio(row[f"latency_{m.alias}_s"], first)
        if any(_present(row[f"latency_{m.alias}_s"]) for m in machines):
            rows.append(row)
    return pd.DataFrame(rows), machines


def _cross_columns(frame: pd.DataFrame, machines: Sequence[MachineInfo]) -> list[Column]:
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
    unit, factor = _cross_unit(frame, machines)
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


def _cross_unit(frame: pd.DataFrame, machines: Sequence[MachineInfo]) -> tuple[str, float]:
    """One time unit for every machine's column, so they read side by side."""
    return fmt.pick_unit([v for m in machines for v in frame[f"latency_{m.alias}_s"]], fmt.TIME_UNITS)


CROSS_NOTE = (
    "Median latency per call of the same case on each machine; `Mk÷M1` is machine k's time over the first "
    "machine's (below 1: faster than M1). The first machine is the first file's; order the files to choose it."
)


def cross_hardware_markdown(results: Sequence[Result], env: Mapping[str, Any]) -> list[str]:
    """The Markdown section comparing machines (none with fewer than two machines with latency)."""
    frame, machines = cross_hardware(results)
    if frame.empty:
        return []
    cols = _cross_columns(frame, machines)
    lines = ["## Across machines", "", CROSS_NOTE, ""]
    lines.append("| " + " | ".join(_md_escape(c.header) for c in cols) + " |")
    lines.append("|" + "|".join("---" if c.justify == "left" else "---:" for c in cols) + "|")
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(_md_escape(c.cell(r)) for c in cols) + " |")
    return [*lines, ""]


def machines_markdown(results: Sequence[Result], env: Mapping[str, Any]) -> list[str]:
    """The legend of the machine aliases (M1, M2, ...) the tables use; none with fewer than two machines."""
    machines = machines_of(results, env)
    if len(machines) < 2:
        return []
    lines = ["## Machines", "", "| machine | label | date (UTC) | rows |", "|---|---|---|---:|"]
    for m in machines:
        rows = sum(r.machine == m.label for r in results)
        lines.append(f"| {m.alias} | {_md_escape(m.label)} | {m.env.get('date_utc', '') or ''} | {rows} |")
    return [*lines, ""]


def machines_legend(results: Sequence[Result]) -> list[str]:
    """'M1 = label' lines for the terminal; none with fewer than two machines."""
    machines = machines_of(results, {})
    return [f"{m.alias} = {m.label}" for m in machines] if len(machines) > 1 else []


def with_machine_aliases(frame: pd.DataFrame, results: Sequence[Result]) -> pd.DataFrame:
    """The frame with machine labels shortened to M1, M2, ... when there are several (the legend names them)."""
    machines = machines_of(results, {})
    if len(machines) < 2 or frame.empty or "machine" not in frame:
        return frame
    aliases = {m.label: m.alias for m in machines}
    return frame.assign(machine=frame["machine"].map(lambda label: aliases.get(label, label)))


def cross_hardware_table(results: Sequence[Result], width: int | None = None) -> tuple[Group, Fitted] | None:
    """The cross-hardware view as a rich Table fitted to `width` (machines named by show's legend), and what
    the fitting left out; None with fewer than two machines."""
    frame, machines = cross_hardware(results)
    if frame.empty:
        return None
    cols = _cross_columns(frame, machines)
    rows = [r for _, r in frame.iterrows()]
    fitted = fit(cols, rows, width)
    unit, _ = _cross_unit(frame, machines)
    table = render(fitted, rows, f"Across machines: median latency [{unit}]")
    return Group(table, Text("Mk÷M1: machine k's time over the first machine's (below 1: faster)")), fitted


def environment_markdown(results: Sequence[Result], env: Mapping[str, Any]) -> list[str]:
    """The environment section: one key/value table, or one per machine and the source files of a merge."""

    def table(record: Mapping[str, Any]) -> list[str]:
        rows = ["| key | value |", "|---|---|"]
        for k, v in record.items():
            rows.append(f"| {k} | {_md_escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))} |")
        return [*rows, ""]

    if not isinstance(env.get("machines"), Mapping):
        return ["## Environment", "", *table(env)]
    lines = ["## Environments", ""]
    for m in machines_of(results, env):
        lines += [f"### {m.alias}: {_md_escape(m.label)}", "", *table(m.env)]
    sources = env.get("merged_from") or []
    if sources:
        lines += [
            "### Merged from",
            "",
            "| file | machines | rows | date (UTC) | git commit |",
            "|---|---|---:|---|---|",
        ]
        aliases = {m.label: m.alias for m in machines_of(results, env)}
        for s in sources:
            names = ", ".join(aliases.get(label, label) for label in s.get("machines", []))
            lines.append(
                f"| {_md_escape(str(s.get('file', '')))} | {_md_escape(names)} | {s.get('rows', '')} | "
                f"{s.get('date_utc', '')} | {s.get('git_commit', '')} |"
            )
        lines.append("")
    return lines
