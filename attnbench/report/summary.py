"""The rows as tables of numbers: one summary row per geometry and scenario (backends pivoted into columns),
scaling exponents, the cross-machine view, sorting. Raw base units (s, bytes, MACs); printing is elsewhere."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from attnbench import fmt
from attnbench import results as R
from attnbench.backends import backend_facts
from attnbench.counting.base import CROSS_CHECK_TOLERANCE
from attnbench.merge import MachineInfo, machine_env
from attnbench.merge import machines as machines_of
from attnbench.metrics import COUNTED, METRICS, Metric, metric
from attnbench.results import SCENARIO_DEFAULTS, SCENARIO_FIELDS, Result, axes, axis, to_frame
from attnbench.roofline import Peak, intensity, min_traffic_bytes, peak_for, peaks_of, rate

CONVENTION = (
    "MACs and FLOPs: one multiply-add = 1 MAC = 2 FLOPs; a lone elementwise product (a gate x * g) = 1 MAC = "
    "1 FLOP. attnbench counts convolutions, matmuls/linear/einsum, "
    "scaled-dot-product attention and elementwise tensor-by-tensor products; softmax, activations, norms, "
    "additions and scalar scalings are listed as uncounted, not folded in. fvcore and thop are normalised to MACs. "
    "Papers' \"FLOPs\" are usually MACs: hold a paper's figure against the MACs column."
)


#: A counter whose total differs from attnbench's by more than this fraction is flagged (one definition, shared
#: with attnbench.counting.cross_check).
RATIO_TOLERANCE = CROSS_CHECK_TOLERANCE


GEOMETRY = ["module", "dim", "height", "width", "batch", "kwargs"]


#: Scenario fields and the machine: a summary row is one geometry in one scenario on one machine; backends are
#: pivoted into columns.
SCENARIO = [*SCENARIO_FIELDS, "machine"]


ROW_KEY = [*GEOMETRY, *SCENARIO]


#: One scaling series (a line in a plot, a row of the scaling table): everything but the resolution.
SERIES_KEY = [k for k in ROW_KEY if k not in ("height", "width")]


#: Identity columns shown only when they vary in a table, with their short headers.
VARYING = {"batch": "B", "kwargs": "kwargs", **{name: a.header for name, a in axes().items()}, "machine": "machine"}


#: Counts with SI prefixes, three significant digits (the one formatter: attnbench.fmt).
si = fmt.si


def present(value: Any) -> bool:
    return not fmt.missing(value)


def summary(results: Sequence[Result]) -> pd.DataFrame:
    """One row per geometry and scenario (ROW_KEY): counts once, then latency/memory per backend.

    Columns are raw numbers in base units; `backends` lists which backends have latency columns.
    """
    frame = spread_ignored(to_frame(results))
    if frame.empty:
        return frame
    for name in ("kwargs", "layout", "machine"):
        frame[name] = frame[name].fillna("")
    rows: list[dict[str, Any]] = []
    for key, grp in frame.groupby(ROW_KEY, sort=False, dropna=False):
        row: dict[str, Any] = dict(zip(ROW_KEY, key, strict=True))
        first = grp.iloc[0]
        # Counted once per geometry: the first value any of its rows holds.
        for col in (*(m.column for m in COUNTED), "macs_formula", "counter_notes", "output_shapes", "output_differs"):
            vals = grp[col].dropna()
            row[col] = vals.iloc[0] if len(vals) else None
        statuses = []
        for _, r in grp.iterrows():
            b = r["backend"]
            if r["status"] != R.OK:
                statuses.append(f"{b}: {r['status']}" if b != R.NO_BACKEND else r["status"])
            row.update(_pivoted(r, b))
        # One status when every backend ended the same way ("invalid"), else each backend's that did not pass.
        alike = set(grp["status"])
        row["status"] = alike.pop() if len(alike) == 1 else "; ".join(statuses)
        row["reason"] = "; ".join(r for r in grp["reason"] if r)
        row["tokens"] = int(first["height"]) * int(first["width"])
        rows.append(row)
    return pd.DataFrame(rows)


def spread_ignored(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose backend ignores a scenario field that the other rows vary, once per value of that field.

    A cpu row does not depend on ONNX Runtime's graph optimisation level: beside ort rows at levels basic and all,
    it belongs to both summary rows (and to the basic row alone when only basic was asked for), not to a row of
    its own at the default level.
    """
    if frame.empty:
        return frame
    for backend in frame["backend"].unique():
        for name in backend_facts(backend).get("ignores", []):
            others = frame.loc[frame["backend"] != backend, name].unique()
            if len(others) == 0 or list(others) == [SCENARIO_DEFAULTS[name]]:
                continue
            mine = frame["backend"] == backend
            spread = [frame[mine].assign(**{name: value}) for value in others]
            frame = pd.concat([frame[~mine], *spread], ignore_index=True)
    return frame


def _pivoted(r: Any, backend: str) -> dict[str, Any]:
    """One backend's row as the summary's per-backend columns of every pivoted metric."""
    values = {}
    for m in METRICS:
        if m.pivot:
            values[m.summary_column(backend)] = r[m.column]
            values.update({pattern.format(backend=backend): r[column] for pattern, column in m.details})
    return values


def ratio(macs: Any, reference: Any) -> float | None:
    """A counter's total over attnbench's (None when either is missing or zero)."""
    if not present(macs) or not present(reference) or not reference:
        return None
    return float(macs) / float(reference)


def backends_of(results: Sequence[Result]) -> list[str]:
    """Backends present in the rows, in first-seen order, without the 'none' placeholder."""
    seen: list[str] = []
    for r in results:
        if r.backend not in seen and r.backend != R.NO_BACKEND:
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
    metrics = _scaled_columns(table)
    out = []
    for key, grp in table.groupby(SERIES_KEY, sort=False, dropna=False):
        # Only geometries that produced numbers: a resolution the module refused has no point to fit.
        grp = grp[grp[metrics].notna().any(axis=1)].sort_values("tokens")
        if grp["tokens"].nunique() < 2:
            continue
        row: dict[str, Any] = dict(zip(SERIES_KEY, key, strict=True))
        row["n_min"], row["n_max"] = int(grp["tokens"].min()), int(grp["tokens"].max())
        for column in metrics:
            pts = [(t, v) for t, v in zip(grp["tokens"], grp[column], strict=True) if present(v) and v > 0]
            if len(pts) < 2:
                continue
            n, v = np.log([p[0] for p in pts]), np.log([float(p[1]) for p in pts])
            if n[-1] == n[-2]:
                continue
            row[f"{column}_exp"] = float((v[-1] - v[-2]) / (n[-1] - n[-2]))
            row[f"{column}_fit"] = float(np.polyfit(n, v, 1)[0])
        out.append(row)
    return pd.DataFrame(out)


def scaled_metrics(backends: Sequence[str]) -> list[tuple[Metric, str]]:
    """The metrics whose growth with N is shown (scaling table, plots), with their backend: the counted ones, then
    per backend, the more important first (latency before memory)."""
    scaled = [m for m in METRICS if m.scaling]
    pivoted = sorted((m for m in scaled if m.pivot), key=lambda m: m.priority)
    return [(m, "") for m in scaled if not m.pivot] + [(m, b) for b in backends for m in pivoted]


def plotted_metrics(backends: Sequence[str]) -> list[tuple[Metric, str]]:
    """The metrics drawn against N, with their backend: the scaled ones, then the others that declare a plot."""
    scaled = scaled_metrics(backends)
    others = sorted((m for m in METRICS if m.plot and not m.scaling and m.pivot), key=lambda m: m.priority)
    return scaled + [(m, b) for b in backends for m in others]


def _scaled_columns(table: pd.DataFrame) -> list[str]:
    """The summary columns whose exponent the scaling table shows."""
    backends = [c[len("latency_") : -2] for c in table.columns if c.startswith("latency_") and c.endswith("_s")]
    columns = [m.summary_column(b) for m, b in scaled_metrics(backends)]
    return [c for c in columns if c in table]


def series_varies(table: pd.DataFrame) -> list[str]:
    """The varying identity columns that name a scaling series (the machine is told apart by its line style, so a
    series keeps its colour on every machine; kwargs only when a series has some)."""
    return [k for k in varying(table) if (k != "kwargs" or table["kwargs"].astype(bool).any()) and k != "machine"]


def series_label(ident: Mapping[str, Any], varies: Sequence[str]) -> str:
    """A series' name in a legend: 'mhsa (C=64, dtype=bfloat16)'."""
    # An empty value (no kwargs, a zoo module's own layout) says nothing: left out of the label.
    shown = [(k, identity_text(k, ident[k])) for k in varies]
    parts = [f"C={ident['dim']}"] + [f"{VARYING[k]}={text}" for k, text in shown if text]
    return f"{ident['module']} ({', '.join(parts)})"


#: How the n-th series of a figure is drawn besides its colour, so ten modules stay apart (the ten colours repeat
#: after ten; neighbours differ in marker and dash too): (matplotlib, Plotly) names of each marker and dash.
SERIES_MARKERS = (
    ("o", "circle"),
    ("s", "square"),
    ("D", "diamond"),
    ("^", "triangle-up"),
    ("v", "triangle-down"),
    ("P", "cross"),
    ("X", "x"),
    ("*", "star"),
    ("p", "pentagon"),
    ("h", "hexagon"),
)
SERIES_DASHES = (("-", "solid"), ("--", "dash"), (":", "dot"), ("-.", "dashdot"))


@dataclass(frozen=True)
class Series:
    """One line of a scaling figure: a module setting in one scenario on one machine, its rows by N."""

    label: str
    machine: str
    rows: pd.DataFrame


def scaling_series(table: pd.DataFrame, column: str, backend: str = "") -> list[Series]:
    """The lines of `column` against N: one per module setting and scenario (mixing batches, kwargs or modes in
    one line would zig-zag); the scenario fields `backend` ignores make no lines of their own (its rows were
    spread over them)."""
    ignored = set(backend_facts(backend).get("ignores", [])) if backend else set()
    key_columns = [k for k in SERIES_KEY if k not in ignored]
    varies = series_varies(table)
    out = []
    for key, grp in table.groupby(key_columns, sort=False, dropna=False):
        grp = grp[grp[column].notna()].sort_values("tokens").drop_duplicates("tokens")
        if not grp.empty:
            ident = {**dict(zip(key_columns, key, strict=True)), **{k: "" for k in ignored}}
            out.append(Series(series_label(ident, varies), str(ident["machine"]), grp))
    return out


def resolution_ticks(table: pd.DataFrame) -> list[tuple[int, str]]:
    """Where a scaling figure's x-axis is labelled: each measured N, named by its resolutions ('14x14')."""
    names: dict[int, list[str]] = {}
    for _, r in table.sort_values("tokens").iterrows():
        text = f"{int(r['height'])}x{int(r['width'])}"
        if text not in names.setdefault(int(r["tokens"]), []):
            names[int(r["tokens"])].append(text)
    return [(n, " / ".join(texts)) for n, texts in names.items()]


def metric_unit(table: pd.DataFrame, m: Metric, backends: Sequence[str]) -> tuple[str, float]:
    """One unit for a metric across every backend's column (a figure or a set of figures reads in one)."""
    families = {"seconds": fmt.TIME_UNITS, "bytes": fmt.BYTE_UNITS}
    if m.units not in families:
        return "", 1.0
    columns = [m.summary_column(b) for b in backends] if m.pivot else [m.column]
    return fmt.pick_unit([v for c in columns if c in table for v in table[c]], families[m.units])


@dataclass(frozen=True)
class RooflinePoint:
    """One measured row on a roofline: its series, backend, machine, FLOPs per byte, FLOP/s and roof."""

    series: str
    backend: str
    machine: str
    intensity: float
    flops_per_s: float
    peak: Peak | None
    #: The summary row it comes from (hover texts name its setting).
    height: int = 0
    width: int = 0


def roofline_points(table: pd.DataFrame, backends: Sequence[str], env: Mapping[str, Any]) -> list[RooflinePoint]:
    """Every measured row with counted FLOPs as a point: (FLOPs / minimum traffic, FLOPs / median latency),
    under the roof its own machine measured (a merged report keeps one environment per machine)."""
    points = []
    varies = series_varies(table)
    # Series in the table's order (their colours match the scaling figures'), each by N.
    ordered = [
        grp.sort_values("tokens", kind="stable") for _, grp in table.groupby(SERIES_KEY, sort=False, dropna=False)
    ]
    for _, r in pd.concat(ordered).iterrows():
        traffic = min_traffic_bytes(
            r["params"], r["batch"], r["dim"], r["height"], r["width"], str(r["dtype"]), str(r["mode"])
        )
        x = intensity(r.get("flops_attnbench"), traffic)
        peaks = peaks_of(machine_env(env, str(r["machine"])))
        for b in backends:
            y = achieved(r, b)
            if x is None or y is None:
                continue
            series = series_label({k: r[k] for k in SERIES_KEY}, varies)
            peak = peak_for(peaks, backend_facts(b)["device"], str(r["dtype"]), int(r["threads"]))
            points.append(RooflinePoint(series, b, str(r["machine"]), x, y, peak, int(r["height"]), int(r["width"])))
    return points


def roof_range(points: Sequence[RooflinePoint]) -> tuple[float, float]:
    """The x-range of a roofline: every point and every ridge inside it, a factor of 3 of room each side (a ridge
    left of the points would leave only the flat roof drawn)."""
    xs = [p.intensity for p in points] + [p.peak.ridge for p in points if p.peak is not None]
    return min(xs) / 3, max(xs) * 3


def flag(value: Any) -> bool:
    # A bool column of a summary holds numpy bools (`is True` misses them) or None where not measured.
    return present(value) and bool(value)


#: The measured roofs of each machine of a report, by label and by alias (M1, ...); "" for a one-machine report.
Roofs = Mapping[str, Sequence[Peak]]


def roofs_by_machine(results: Sequence[Result], env: Mapping[str, Any] | None) -> dict[str, list[Peak]]:
    """Each machine's measured roofs (a merged report keeps an environment per machine)."""
    env = env or {}
    roofs: dict[str, list[Peak]] = {"": peaks_of(env)}
    for m in machines_of(results, env):
        roofs[m.label] = roofs[m.alias] = peaks_of(m.env)
    return roofs


def row_peak(r: Mapping[str, Any], b: str, roofs: Roofs) -> Peak | None:
    threads = r.get("threads")
    peaks = roofs.get(str(r.get("machine") or ""), roofs.get("", []))
    device = backend_facts(b)["device"]
    return peak_for(peaks, device, str(r.get("dtype") or "float32"), 1 if fmt.missing(threads) else int(threads))


def achieved(r: Mapping[str, Any], b: str) -> float | None:
    """FLOP/s a backend reached on a summary row: the counter's exact FLOPs over the median latency."""
    return rate(r.get("flops_attnbench"), r.get(f"latency_{b}_s"))


def varying(table: pd.DataFrame) -> list[str]:
    """The identity columns (batch, kwargs, scenario fields) that take more than one value in `table`."""
    return [key for key in VARYING if key in table and table[key].nunique(dropna=False) > 1]


def identity_text(key: str, value: Any) -> str:
    """An identity value as a table cell: kwargs as k=v, flags as yes/no, numbers as ints."""
    if key == "kwargs":
        return _kw_text(value)
    if key in SCENARIO_FIELDS and axis(key).flag:
        return "yes" if bool(value) else "no"
    if key == "batch" or (key in SCENARIO_FIELDS and axis(key).choices is None):
        return str(int(value))
    return str(value) if present(value) else ""


def _kw_text(kw: str) -> str:
    # One kwarg is one word (no spaces inside a list), so a narrow column wraps between kwargs, not inside one.
    if not kw:
        return ""
    return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in json.loads(kw).items())


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
    if kind in ("latency", "memory"):
        return metric(kind).summary_column(backend)
    allowed = ", ".join([*SORT_KEYS, "latency[-BACKEND]", "memory[-BACKEND]"])
    raise ValueError(f"cannot sort by {sort_by!r}; allowed: {allowed}")


#: The identity of a cross-hardware row: a case on every machine (everything but the machine).
CROSS_KEY = [*GEOMETRY, *(k for k in SCENARIO if k != "machine"), "backend"]


def cross_hardware(results: Sequence[Result]) -> tuple[pd.DataFrame, list[MachineInfo]]:
    """Median latency per machine side by side, one row per case measured on any machine, and the machines.

    Columns `latency_M1_s`, ... and `ratio_Mk` (Mk's latency over M1's, the first machine's). The frame is
    empty with fewer than two machines or without latency.
    """
    machines = machines_of(results, {})
    frame = to_frame([r for r in results if r.backend != R.NO_BACKEND])
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
        if any(present(row[f"latency_{m.alias}_s"]) for m in machines):
            rows.append(row)
    return pd.DataFrame(rows), machines


def with_machine_aliases(frame: pd.DataFrame, results: Sequence[Result]) -> pd.DataFrame:
    """The frame with machine labels shortened to M1, M2, ... when there are several (the legend names them)."""
    machines = machines_of(results, {})
    if len(machines) < 2 or frame.empty or "machine" not in frame:
        return frame
    aliases = {m.label: m.alias for m in machines}
    return frame.assign(machine=frame["machine"].map(lambda label: aliases.get(label, label)))
