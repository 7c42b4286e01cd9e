"""Turn rows into views: the summary table, scaling exponents, rich tables and Markdown. Formatting lives only here."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Group
from rich.table import Table
from rich.text import Text

from attnbench import results as R
from attnbench.counting.base import CROSS_CHECK_TOLERANCE
from attnbench.merge import machines as machines_of
from attnbench.results import Result, to_frame
from attnbench.specs import SOURCE_HASH_DIGITS

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


def si(value: float | None, unit: str = "") -> str:
    """12345678 -> '12.3 M' (SI prefixes, three significant digits)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def mib(value: float | None) -> str:
    """Bytes as MiB with 3 significant digits."""
    if value is None or pd.isna(value):
        return "-"
    return f"{value / 2**20:.3g}"


def ms(value: float | None, digits: int = 3) -> str:
    """Seconds as milliseconds, `digits` significant digits."""
    if value is None or pd.isna(value):
        return "-"
    return f"{value * 1e3:.{digits}g}"


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value is not pd.NA


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
            if b == "ort":
                row["parity_max_abs"] = r["parity_max_abs"]
        row["status"] = "; ".join(statuses) if statuses else R.OK
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


def _columns(table: pd.DataFrame, backends: Sequence[str]) -> list[tuple[str, str, Any]]:
    """(header, key, cell function) for each column of the summary table; headers carry units."""

    def res(r: Mapping[str, Any]) -> str:
        return f"{int(r['height'])}x{int(r['width'])}"

    def ratio_cell(counter: str):
        def cell(r: Mapping[str, Any]) -> str:
            q = ratio(r.get(f"macs_{counter}"), r.get("macs_attnbench"))
            if q is None:
                return "n/a"
            flag = " under" if q < 1 - RATIO_TOLERANCE else (" over" if q > 1 + RATIO_TOLERANCE else "")
            return f"{q:.2f}{flag}"

        return cell

    cols: list[tuple[str, str, Any]] = [
        ("Module", "module", lambda r: str(r["module"])),
        ("C", "dim", lambda r: str(int(r["dim"]))),
        ("H x W", "tokens", res),
    ]
    for key in varying(table):
        cols.append((VARYING[key], key, lambda r, key=key: identity_text(key, r[key])))
    if table["params"].notna().any():
        cols.append(("Params", "params", lambda r: si(r["params"])))
    if table["macs_attnbench"].notna().any():
        cols.append(("MACs", "macs_attnbench", lambda r: si(r["macs_attnbench"])))
        cols.append(
            (
                "GFLOPs",
                "flops_attnbench",
                lambda r: "-" if not _present(r.get("flops_attnbench")) else f"{r['flops_attnbench'] / 1e9:.3g}",
            )
        )
    for counter in ("fvcore", "thop"):
        if f"macs_{counter}" in table and (
            table[f"macs_{counter}"].notna().any() or table["counter_notes"].fillna("").str.contains(counter).any()
        ):
            cols.append((f"{counter}÷ours", f"macs_{counter}", ratio_cell(counter)))
    for b in backends:
        if f"mem_{b}_bytes" in table and table[f"mem_{b}_bytes"].notna().any():
            cols.append((f"Mem {b} [MiB]", f"mem_{b}_bytes", lambda r, b=b: mib(r.get(f"mem_{b}_bytes"))))
    for b in backends:
        if f"latency_{b}_s" in table and table[f"latency_{b}_s"].notna().any():
            cols.append((f"{b} [ms] med±IQR", f"latency_{b}_s", lambda r, b=b: _latency_cell(r, b)))
    if "parity_max_abs" in table and table["parity_max_abs"].notna().any():
        cols.append(
            (
                "ORT max|Δ|",
                "parity_max_abs",
                lambda r: "-" if not _present(r.get("parity_max_abs")) else f"{r['parity_max_abs']:.1e}",
            )
        )
    cols.append(("Status", "status", lambda r: str(r["status"])))
    return cols


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
    if not kw:
        return ""
    return ",".join(f"{k}={v}" for k, v in json.loads(kw).items())


def _latency_cell(r: Mapping[str, Any], b: str) -> str:
    med = r.get(f"latency_{b}_s")
    if not _present(med):
        return "-"
    iqr = r.get(f"iqr_{b}_s")
    text = f"{ms(med)} ±{ms(iqr, 2)}" if _present(iqr) else ms(med)
    return text + (" ~" if r.get(f"noisy_{b}") is True else "") + (" !" if r.get(f"contended_{b}") is True else "")


def _best(table: pd.DataFrame, key: str) -> Any:
    # The best (lowest) value of a cost column; ratios and identity columns have no best.
    if (
        key in ("module", "dim", "tokens", "status", "parity_max_abs", *VARYING)
        or key.startswith("macs_fvcore")
        or key.startswith("macs_thop")
    ):
        return None
    vals = pd.to_numeric(table[key], errors="coerce").dropna()
    return vals.min() if len(vals) and table["module"].nunique() > 1 else None


def rich_table(
    results: Sequence[Result],
    title: str | None = None,
    sort_by: str | None = None,
    highlight_best: bool = False,
) -> Table:
    """The summary as a rich Table: units in headers, noisy timings marked '~', undercounts flagged."""
    table = with_machine_aliases(summary(results), results)
    backends = backends_of(results)
    out = Table(title=title, show_lines=False, header_style="bold", title_justify="left")
    if table.empty:
        return out
    if sort_by:
        table = sort_summary(table, sort_by)
    cols = _columns(table, backends)
    for header, key, _ in cols:
        out.add_column(
            Text(header),
            justify="left" if key in ("module", "status", "kwargs") else "right",
            no_wrap=key not in ("status", "kwargs"),
        )
    # The best value of a column among the modules measured at the same setting: across resolutions the
    # smallest input would always win.
    setting = [k for k in ROW_KEY if k not in ("module", "kwargs", "layout")]
    bests: dict[tuple[Any, ...], dict[str, Any]] = {}
    if highlight_best:
        for key_values, grp in table.groupby(setting, sort=False):
            bests[tuple(key_values)] = {key: _best(grp, key) for _, key, _ in cols}
    for _, r in table.iterrows():
        group_bests = bests.get(tuple(r[c] for c in setting), {})
        cells = []
        for _header, key, fn in cols:
            text = fn(r)
            style = ""
            if key == "status" and text != R.OK:
                style = "red"
            elif text.endswith(" under") or text.endswith(" over"):
                style = "yellow"
            best = group_bests.get(key)
            if best is not None and _present(r.get(key)) and r.get(key) == best:
                style = "bold green"
            cells.append(Text(text, style=style))
        out.add_row(*cells)
    return out


def scaling_table(results: Sequence[Result]) -> Table | None:
    """Rich table of exponents x in cost ~ N^x; None when no module has two resolutions."""
    frame = with_machine_aliases(scaling(results), results)
    if frame.empty:
        return None
    metrics = [c[: -len("_exp")] for c in frame.columns if c.endswith("_exp")]
    out = Table(
        title="Scaling: x in cost ~ N^x, N = H*W",
        header_style="bold",
        title_justify="left",
    )
    # Identity columns only when they vary, so rows that differ in them do not look identical.
    extra = varying(frame)
    out.add_column("Module")
    out.add_column("C", justify="right")
    for c in extra:
        out.add_column(VARYING[c], justify="right" if c in ("batch", "threads") else "left")
    out.add_column("N range", justify="right")
    for metric in metrics:
        out.add_column(f"{_metric_label(metric)} exp", justify="right")
    for _, r in frame.iterrows():
        out.add_row(
            str(r["module"]),
            str(int(r["dim"])),
            *[identity_text(c, r[c]) for c in extra],
            f"{r['n_min']}..{r['n_max']}",
            *[("-" if not _present(r.get(f"{m}_exp")) else f"{r[f'{m}_exp']:.2f}") for m in metrics],
        )
    return out


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
        cols = _columns(table, backends_of(results))
        lines.append("| " + " | ".join(_md_escape(h) for h, _, _ in cols) + " |")
        lines.append("|" + "|".join("---" if k in ("module", "status", "kwargs") else "---:" for _, k, _ in cols) + "|")
        for _, r in table.iterrows():
            lines.append("| " + " | ".join(_md_escape(fn(r)) for _, _, fn in cols) + " |")
        lines.append("")
        lines.append(
            "Latency: median per call over timed blocks, ± interquartile range; `~` marks a noisy "
            "timing (IQR/median > 10%), `!` one taken while other processes used more than 5% of a core. "
            "Mem: activations and temporaries allocated during one forward (weights and input excluded). "
            "`under`/`over`: the counter differs from "
            f"attnbench's by more than {RATIO_TOLERANCE:.0%}."
        )
        lines.append("")
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
                    vals.append("-" if not _present(e) else f"{e:.2f} ({f:.2f})")
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


def zoo_markdown() -> str:
    """The module table for the README, generated from the registry (kept in sync by a test)."""
    from attnbench.registry import Setting, get_spec, list_modules

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
) -> None:
    """Print the summary and scaling tables on `out`; cases that did not complete and the convention on `err`."""
    out.print(rich_table(rows, title=title, sort_by=sort_by, highlight_best=highlight_best))
    scale = scaling_table(rows)
    if scale is not None:
        out.print(scale)
    cross = cross_hardware_table(rows)
    if cross is not None:
        out.print(cross)
    for line in machines_legend(rows):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
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


def show_gate(verdict: Verdict, console: Console) -> None:
    """Print what changed against the baseline and the gate's outcome."""
    if verdict.latency_note:
        console.print(f"[yellow]gate: {verdict.latency_note}[/yellow]", highlight=False)
    if verdict.changes:
        table = Table(title="Changes against the baseline", header_style="bold", title_justify="left")
        for header in ("Case", "Kind", "Change", "Fails"):
            table.add_column(header)
        for c in verdict.changes:
            table.add_row(c.case, c.kind, c.detail, "yes" if c.failing else "no", style="red" if c.failing else None)
        console.print(table)
    outcome = "[green]PASSED[/green]" if verdict.passed else "[red]FAILED[/red]"
    console.print(
        f"gate: {outcome}: {verdict.compared_cases} case(s) compared, "
        f"{sum(c.failing for c in verdict.changes)} failing change(s)"
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


def _cross_columns(frame: pd.DataFrame, machines: Sequence[MachineInfo]) -> list[tuple[str, Any]]:
    """(header, cell function) for each column of the cross-hardware table."""
    cols: list[tuple[str, Any]] = [
        ("Module", lambda r: str(r["module"])),
        ("C", lambda r: str(int(r["dim"]))),
        ("H x W", lambda r: f"{int(r['height'])}x{int(r['width'])}"),
    ]
    cols += [(VARYING[k], lambda r, k=k: identity_text(k, r[k])) for k in varying(frame) if k != "machine"]
    cols.append(("backend", lambda r: str(r["backend"])))
    cols += [(f"{m.alias} [ms]", lambda r, a=m.alias: ms(r[f"latency_{a}_s"])) for m in machines]
    first = machines[0].alias
    cols += [
        (f"{m.alias}÷{first}", lambda r, a=m.alias: "-" if not _present(r[f"ratio_{a}"]) else f"{r[f'ratio_{a}']:.2f}")
        for m in machines[1:]
    ]
    return cols


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
    lines.append("| " + " | ".join(_md_escape(h) for h, _ in cols) + " |")
    lines.append("|" + "|".join("---" if h in ("Module", "backend") else "---:" for h, _ in cols) + "|")
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(_md_escape(fn(r)) for _, fn in cols) + " |")
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


def cross_hardware_table(results: Sequence[Result]) -> Group | None:
    """The cross-hardware view as a rich Table (machines named by show's legend); None with fewer than two."""
    frame, machines = cross_hardware(results)
    if frame.empty:
        return None
    out = Table(
        title=Text("Across machines: median latency [ms]"),
        header_style="bold",
        title_justify="left",
    )
    cols = _cross_columns(frame, machines)
    for header, _ in cols:
        out.add_column(Text(header), justify="left" if header in ("Module", "backend") else "right", no_wrap=True)
    for _, r in frame.iterrows():
        out.add_row(*(fn(r) for _, fn in cols))
    return Group(out, Text("Mk÷M1: machine k's time over the first machine's (below 1: faster)"))


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
