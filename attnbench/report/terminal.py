"""The rows on the terminal: rich tables fitted to its width, and what a narrow terminal left out, on stderr."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from attnbench import fmt
from attnbench import results as R
from attnbench.merge import machines as machines_of
from attnbench.report.columns import (
    ALLOC_MARK,
    SHAPE_MARK,
    cross_columns,
    cross_unit,
    highlights,
    scaling_columns,
    summary_columns,
)
from attnbench.report.markdown import scenario_text
from attnbench.report.summary import (
    ROW_KEY,
    backends_of,
    cross_hardware,
    flag,
    present,
    roofs_by_machine,
    scaling,
    sort_summary,
    summary,
    with_machine_aliases,
)
from attnbench.report.tables import Column, Fitted, fit, fit_note, prose, render
from attnbench.results import Result

if TYPE_CHECKING:
    from rich.console import Console

    from attnbench.gate import Verdict


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
    cols = summary_columns(table, backends_of(results), roofs_by_machine(results, env), sort_by)
    rows = [r for _, r in table.iterrows()]
    fitted = fit(cols, rows, width)
    setting = [k for k in ROW_KEY if k not in ("module", "kwargs", "layout")]
    bests = highlights(table, fitted.columns) if highlight_best else {}

    def style(column: Column, r: Any, text: str) -> str:
        best = bests.get(tuple(r[c] for c in setting), {}).get(column.key)
        if best is not None and present(r.get(column.key)) and r.get(column.key) == best:
            return "bold green"
        if column.key == "status" and text != R.OK:
            return "red"
        if text.endswith((" under", " over")):
            return "yellow"
        return ""

    return render(fitted, rows, title, style), fitted


def scaling_table(results: Sequence[Result], width: int | None = None) -> tuple[Table, Fitted] | None:
    """Rich table of exponents x in cost ~ N^x fitted to `width`, and what it left out; None without two resolutions."""
    frame = with_machine_aliases(scaling(results), results)
    if frame.empty:
        return None
    rows = [r for _, r in frame.iterrows()]
    fitted = fit(scaling_columns(frame), rows, width)
    return render(fitted, rows, "Scaling: x in cost ~ N^x, N = H*W"), fitted


#: What the terminal says of the counting convention: short, the rest is in the docs.
SHORT_CONVENTION = (
    'MACs: 1 multiply-add = 1 MAC = 2 FLOPs (papers\' "FLOPs" are usually MACs); softmax, norms, activations '
    "and additions are uncounted (docs/reading-results.md)."
)
#: Each mark of a latency cell, in a few words (the docs say more).
MARK_WORDS = {
    "~": "noisy (IQR/median > 10% or precision not reached)",
    "!": "timed while other processes used the CPU",
    ALLOC_MARK: "> 10% slower with glibc's default allocator",
    SHAPE_MARK: "output's shape differs from the input's, as noted below",
}


def show(
    rows: Sequence[Result],
    out: Console,
    err: Console,
    title: str | None = None,
    sort_by: str | None = None,
    highlight_best: bool = False,
    env: Mapping[str, Any] | None = None,
) -> None:
    """Print the summary (with its scenario line) and scaling tables on `out`, fitted to its width; on `err`, in
    lines wrapped at its width: what a narrow terminal left out, the marks shown, the cases that did not complete
    and the convention."""
    width = out.width
    table, fitted = rich_table(rows, title, sort_by, highlight_best, width, env)
    out.print(table)
    summary_frame = summary(rows)
    scenario = scenario_text(summary_frame)
    if scenario:
        say(out, scenario)
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
        say(out, line)
    line = fit_note(width, fits)
    if line:
        say(err, f"attnbench: {line}", style="dim")
    for line in marks_legend(rows, fitted, sort_by):
        say(err, line)
    for line in failure_lines(rows):
        say(err, line, style="yellow", indent=2)
    for line in output_notes(rows):
        say(err, line, indent=2)
    say(err, SHORT_CONVENTION, style="dim")


def say(console: Console, text: str, style: str = "", indent: int = 0) -> None:
    """One line of prose, wrapped at the console's width (a pipe's: COLUMNS, else PIPE_WIDTH)."""
    console.print(prose(text, console.width, indent), style=style, markup=False, highlight=False, soft_wrap=True)


def marks_legend(rows: Sequence[Result], fitted: Fitted, sort_by: str | None = None) -> list[str]:
    """What the marks the printed table shows mean, one line, and which rows the default allocator slows."""
    frame = with_machine_aliases(summary(rows), rows)
    if frame.empty:
        return []
    if sort_by:
        frame = sort_summary(frame, sort_by)
    texts = [c.cell(r) for _, r in frame.iterrows() for c in fitted.columns]
    shown = [mark for mark in MARK_WORDS if any(f" {mark}" in text for text in texts)]
    lines = []
    if shown:
        lines.append("; ".join(f"{mark} {MARK_WORDS[mark]}" for mark in shown) + " (docs/reading-results.md).")
    slower = [r for r in rows if flag(r.system_allocator_slower) and r.latency_median_s and r.other_allocator_latency_s]
    if slower:
        ratios = ", ".join(f"{r.module} {r.height}x{r.width} {_slowdown(r)}x" for r in slower)
        lines.append(
            f"{ratios}: slower with glibc's default allocator than pinned, in fresh processes (docs/allocators.md)."
        )
    return lines


def _slowdown(r: Result) -> str:
    # The system state's time over the pinned one, whichever is the row's headline.
    a, b = float(r.latency_median_s or 0), float(r.other_allocator_latency_s or 0)
    return fmt.sig(max(a, b) / min(a, b), 2)


def failure_lines(rows: Sequence[Result]) -> list[str]:
    """One line per case that did not complete, its backends together when they ended alike."""
    grouped: dict[tuple[Any, ...], list[Result]] = {}
    for r in rows:
        if r.status != R.OK:
            key = (r.module, r.dim, r.height, r.width, r.batch, r.kwargs, r.scenario, r.status, r.reason)
            grouped.setdefault(key, []).append(r)
    lines = []
    for same in grouped.values():
        first = dataclasses.replace(same[0], backend=", ".join(r.backend for r in same))
        lines.append(f"{first.label}: {first.status}: {first.reason}")
    return lines


def output_notes(rows: Sequence[Result]) -> list[str]:
    """One line per geometry whose output deserves a note (a shape other than the input's, several tensors)."""
    notes: dict[tuple[Any, ...], str] = {}
    for row in rows:
        if row.status == R.OK and row.reason:
            mark = f"{SHAPE_MARK} " if row.output_differs else ""
            where = f"{row.module} C={row.dim} {row.height}x{row.width} B={row.batch}"
            notes.setdefault(row.case.geometry, f"{mark}{where}: {row.reason}")
    return list(notes.values())


def show_gate(verdict: Verdict, console: Console, failed_cases: int = 0) -> None:
    """Print every row the gate judged (largest change first), what else changed, and the outcome: passed,
    inconclusive (machine busy) or failed (also when cases of the run failed)."""
    if verdict.latency_note:
        console.print(f"[yellow]gate: {verdict.latency_note}[/yellow]", highlight=False)
    if verdict.gated:
        console.print(_gated_table(verdict))
    others = [c for c in verdict.changes if c.kind not in ("instructions", "instructions-less", "latency-ok")]
    if others:
        table = Table(title="Changes against the baseline", header_style="bold", title_justify="left")
        for header in ("Case", "Kind", "Change", "Fails"):
            table.add_column(header)
        for c in others:
            table.add_row(c.case, c.kind, c.detail, "yes" if c.failing else "no", style="red" if c.failing else None)
        console.print(table)
    console.print(_gate_line(verdict, failed_cases), highlight=False)


def _gated_table(verdict: Verdict) -> Table:
    """Every gated row, its baseline and current value, the change and the limit, the largest change first."""
    title = f"Gated on {verdict.metric}: every row, the largest change first"
    table = Table(title=title, header_style="bold", title_justify="left")
    for header, justify in (("Case", "left"), ("Baseline", "right"), ("Now", "right"), ("Change", "right")):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    table.add_column("Limit", justify="right")
    table.add_column("Fails")
    value = fmt.si if verdict.metric == "instructions" else fmt.seconds
    ranked = sorted(verdict.gated, key=lambda g: -math.inf if g.change is None else -g.change)
    for g in ranked:
        change = "not counted" if g.change is None else f"{g.change:+.2%}"
        cells = (g.case, value(g.before), value(g.after), change, f"{g.limit:.0%}", "yes" if g.failing else "no")
        table.add_row(*cells, style="red" if g.failing else None)
    return table


def _gate_line(verdict: Verdict, failed_cases: int) -> str:
    """The outcome in one line, then what its counts count: a case is one module at one geometry and mode (its
    params and MACs are compared once), a row is a case on one backend in one scenario (judged by the metric)."""
    failing = sum(c.failing for c in verdict.changes)
    compared = f"{verdict.compared_cases} case(s) compared, {len(verdict.gated)} row(s) judged on {verdict.metric}"
    meaning = (
        "\n[dim](a case: one module at one geometry and mode, its params and MACs compared once; a row: a case on "
        "one backend in one scenario)[/dim]"
    )
    if verdict.inconclusive and not failed_cases:
        busy = sum(c.kind == "latency-busy" for c in verdict.changes)
        return (
            f"gate: [yellow]INCONCLUSIVE (machine busy)[/yellow]: {compared}; {busy} latency regression(s) seen "
            "only while other processes used the CPU, not failed (--strict fails them; --gate-metric "
            "instructions is immune to load)" + meaning
        )
    outcome = "[green]PASSED[/green]" if verdict.passed and not failed_cases else "[red]FAILED[/red]"
    failed = f", {failed_cases} case(s) of this run failed" if failed_cases else ""
    return f"gate: {outcome}: {compared}, {failing} failing change(s){failed}" + meaning


def machines_legend(results: Sequence[Result]) -> list[str]:
    """'M1 = label' lines for the terminal; none with fewer than two machines."""
    machines = machines_of(results, {})
    return [f"{m.alias} = {m.label}" for m in machines] if len(machines) > 1 else []


def cross_hardware_table(results: Sequence[Result], width: int | None = None) -> tuple[Group, Fitted] | None:
    """The cross-hardware view as a rich Table fitted to `width` (machines named by show's legend), and what
    the fitting left out; None with fewer than two machines."""
    frame, machines = cross_hardware(results)
    if frame.empty:
        return None
    cols = cross_columns(frame, machines)
    rows = [r for _, r in frame.iterrows()]
    fitted = fit(cols, rows, width)
    unit, _ = cross_unit(frame, machines)
    table = render(fitted, rows, f"Across machines: median latency [{unit}]")
    return Group(table, Text("Mk÷M1: machine k's time over the first machine's (below 1: faster)")), fitted
