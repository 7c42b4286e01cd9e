"""`--breakdown`: for each geometry of a run, params, MACs and FLOPs per nested submodule (or, `--by type`, per
module class), the counter's MACs per operator and what it saw but did not count; on a measured backend also each
submodule's share of the latency and the operator table from torch.profiler. The numbers come from
attnbench.breakdown; this file only renders them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from attnbench import fmt
from attnbench.breakdown import TOP_OPERATORS, Breakdown, Timed, TypeRow, breakdown, untimed_reason
from attnbench.cli.options import BREAKDOWN_BY, BREAKDOWN_DEPTH
from attnbench.counting import breakdown_table
from attnbench.report.tables import prose
from attnbench.results import INVALID, Result
from attnbench.settings import DEFAULT_SEED
from attnbench.zoo.adapters import TokensToImage

#: A width no table reaches: measuring at it gives a table's natural width.
UNCONSTRAINED = 10_000
#: What a missing figure shows.
MISSING = "-"
#: Where a folded line of the counter's report continues.
INDENT = 4


def print_breakdowns(
    rows: Sequence[Result],
    out: Console,
    depth: int = BREAKDOWN_DEPTH,
    by: str = BREAKDOWN_BY[0],
    seed: int = DEFAULT_SEED,
) -> None:
    """For each geometry and mode: the counts per nested submodule down to `depth` (as fvcore's flop_count_table)
    or per module class (`by` "type"), then the counter's MACs per operator and what it did not count; timed on
    the first of its rows measured on a backend whose operators torch.profiler sees."""
    for row in _one_per_geometry(rows):
        title = f"{row.module} C={row.dim} {row.height}x{row.width} B={row.batch}"
        try:
            result = breakdown(row, seed)
        except Exception as exc:  # the run's rows already say why this case failed; the others still print
            out.print(f"\n{title}: no breakdown: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            continue
        out.print()
        if by == "type":
            make = functools.partial(_type_table, result.types, f"{title}: per module class")
        else:
            make = functools.partial(_module_table, result, depth, f"{title}: per submodule, depth {depth}")
        out.print(_fitted(out, make))
        _print_counts(result, out, by)
        if result.timed is not None:
            _print_times(result.timed, row, out)
        elif result.untimed:
            out.print(result.untimed, highlight=False)


def _one_per_geometry(rows: Sequence[Result]) -> list[Result]:
    """One row per geometry and mode (refused cases left out): the first one a timed breakdown can use, if any."""
    chosen: dict[tuple, Result] = {}
    for row in rows:
        if row.status == INVALID:
            continue
        key = (*row.case.geometry, row.scenario.mode)
        if key not in chosen or (untimed_reason(chosen[key]) and not untimed_reason(row)):
            chosen[key] = row
    return list(chosen.values())


def _fitted(out: Console, make: Callable[[bool], Table]) -> Table:
    """The table with its Type column, or without it when that is wider than the console (names are never cut)."""
    table = make(True)
    # Measured unconstrained (at the console's width a measurement never exceeds it): class names give way first.
    if Measurement.get(out, out.options.update_width(UNCONSTRAINED), table).maximum > out.width:
        table = make(False)
    return table


def _module_table(result: Breakdown, depth: int, title: str, types: bool) -> Table:
    # A token-layout module sits inside the (B, C, H, W) adapter: the adapter is not a level of its own.
    levels = depth + (1 if result.params.types.get("") == TokensToImage.__name__ else 0)
    shares = None
    if result.timed is not None:
        shares = {name: share for name in result.params.types if (share := result.timed.share(name)) is not None}
    return breakdown_table(
        result.params, result.macs, max_depth=levels, fmt=fmt.si, title=title, types=types, time_share=shares
    )


def _type_table(rows: Sequence[TypeRow], title: str, types: bool = True) -> Table:
    """Params, MACs and FLOPs per module class with each class's share of the whole (`types`: its Type column is
    the row's name, so it always stays)."""
    table = Table(title=title)
    table.add_column("Type", no_wrap=True)
    timed = any(r.time_share is not None for r in rows)
    for header in ("Instances", "Params", "Params %", "MACs", "MACs %", "FLOPs", *(("Time %",) if timed else ())):
        table.add_column(header, justify="right", no_wrap=True)
    for r in rows:
        cells = [str(r.instances), fmt.si(r.params), _percent(r.params_share)]
        cells += [MISSING if r.macs is None else fmt.si(r.macs), _percent(r.macs_share)]
        cells.append(MISSING if r.flops is None else fmt.si(r.flops))
        table.add_row(r.type, *cells, *((_percent(r.time_share),) if timed else ()))
    return table


def _percent(share: float | None) -> str:
    return MISSING if share is None else f"{100 * share:.1f}"


def _print_counts(result: Breakdown, out: Console, by: str) -> None:
    """Where the module was built and counted, its parameters, and the counter's operators and uncounted ones."""
    params = result.params
    out.print(f"built on {result.built_on}; counted on {result.macs.device}", highlight=False)
    out.print(
        f"params {params.total:,} (trainable {params.trainable:,}; buffers, not counted: {params.buffers:,})",
        highlight=False,
    )
    if by == "type":
        out.print(
            "per module class: inclusive figures of each class's outermost instances; classes nest, so the "
            "shares add up to more than 100%",
            highlight=False,
        )
    # A line longer than the terminal folds under itself (main's prose rule), not back at the left margin.
    text = "\n".join(prose(line, out.width, INDENT) for line in result.macs.format().splitlines())
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_times(timed: Timed, row: Result, out: Console) -> None:
    """The operator table (fitted to the console: nothing is cut) and what the profiler's overhead does."""
    table = _op_table(timed, row, full=True)
    if Measurement.get(out, out.options.update_width(UNCONSTRAINED), table).maximum > out.width:
        table = _op_table(timed, row, full=False)  # Self % and Total give way; names and numbers stay whole
    out.print(table)
    more = len(timed.ops) - TOP_OPERATORS
    if more > 0:
        out.print(f"... and {more} more operators", highlight=False)
    out.print(_overhead_line(timed), highlight=False)


def _op_table(timed: Timed, row: Result, full: bool) -> Table:
    """The aten operators of one profiled step by self time; `full=False` leaves out Self % and Total."""
    title = f"{row.backend}: aten operators per step (torch.profiler, {timed.calls} steps)"
    table = Table(title=title)
    # "\\[" keeps rich from reading a unit in brackets as markup.
    headers = ["Operator", "Calls", "Self \\[ms]", "Self %", "Total \\[ms]", "MACs", "GFLOP/s"]
    if not full:
        headers = [h for h in headers if h not in ("Self %", "Total \\[ms]")]
    table.add_column("Operator", overflow="fold")  # a long name folds onto a second line on a narrow terminal
    for header in headers[1:]:
        table.add_column(header, justify="right", no_wrap=True)
    for op in timed.ops[:TOP_OPERATORS]:
        rate = op.rate
        cells = [op.name if full else op.name.removeprefix("aten::"), f"{op.calls:g}", f"{1e3 * op.self_s:.3f}"]
        if full:
            cells += [f"{100 * op.self_share:.1f}", f"{1e3 * op.total_s:.3f}"]
        cells += [MISSING if op.macs is None else fmt.si(op.macs), MISSING if rate is None else f"{rate / 1e9:.3g}"]
        table.add_row(*cells)
    return table


def _overhead_line(timed: Timed) -> str:
    """What the profiler did to the figures, against the run's unprofiled median."""
    profiled = f"one profiled step took {1e3 * timed.profiled_s:.3g} ms"
    if timed.overhead is None:
        return profiled + "; the headline latency is the run's unprofiled median"
    return (
        f"{profiled}, {100 * timed.overhead:+.0f}% against the run's unprofiled median of "
        f"{1e3 * timed.unprofiled_s:.3g} ms (the headline latency): the profiler and the submodule ranges add a "
        "fixed cost per operator and per module call, so small, frequent operators and modules read larger "
        "shares than they have unprofiled. MACs are the attnbench counter's, matched by operator name; GFLOP/s = "
        "its FLOPs over the operator's total time (its callees included: aten::linear holds addmm's time)."
    )
