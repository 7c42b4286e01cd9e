"""Printing of counts: a nested per-submodule table of params, MACs and FLOPs (as fvcore's flop_count_table)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from rich.table import Table

from attnbench.counting.base import MacReport
from attnbench.counting.params import ParamReport

#: Submodule depth shown unless asked otherwise (fvcore's flop_count_table default).
DEFAULT_DEPTH = 3

#: Indentation per nesting level in the Module column.
INDENT = "  "

#: The root's name in the Module column (its class is in the Type column).
ROOT = "model"

#: What a cell shows when the counter has no number for it.
MISSING = "-"

Formatter = Callable[[int], str]


def exact(n: int) -> str:
    """12345678 -> '12,345,678': every digit, so a table can be checked against a hand count."""
    return f"{n:,}"


class BreakdownRow(NamedTuple):
    """One module of the breakdown: inclusive figures; None where the counter has no number for it."""

    depth: int  # the root is 0, its children 1
    name: str  # the last part of the qualified name (the root: ROOT)
    qualified: str  # "" for the root
    type: str
    params: int
    macs: int | None
    flops: int | None


def breakdown_rows(params: ParamReport, macs: MacReport, max_depth: int = DEFAULT_DEPTH) -> list[BreakdownRow]:
    """The root and every submodule down to `max_depth`, in definition order.

    MACs and FLOPs are inclusive (a module's row counts its submodules' work). They are None where the
    counter failed or gives no per-submodule figures (thop).
    """
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
        raise ValueError(f"max_depth must be an int >= 0, got {max_depth!r}")
    nested_known = macs.ok and (bool(macs.by_module_nested) or not macs.macs)
    rows = [BreakdownRow(0, ROOT, "", params.types.get("", ""), params.total, macs.macs, macs.flops)]
    for name, count in params.by_module_nested.items():
        depth = name.count(".") + 1
        if depth > max_depth:
            continue
        sub_macs = macs.by_module_nested.get(name, 0) if nested_known else None
        sub_flops = macs.flops_by_module_nested.get(name, 0) if nested_known and macs.flops is not None else None
        short = name.rsplit(".", 1)[-1]
        rows.append(BreakdownRow(depth, short, name, params.types.get(name, ""), count, sub_macs, sub_flops))
    return rows


def breakdown_table(
    params: ParamReport,
    macs: MacReport,
    max_depth: int = DEFAULT_DEPTH,
    fmt: Formatter = exact,
    title: str | None = None,
    types: bool = True,
    time_share: Mapping[str, float] | None = None,
) -> Table:
    """A rich Table of nested submodules down to `max_depth` with their params, MACs and FLOPs.

    `params` comes from count_params() and `macs` from count_macs() on the same module. Submodules are
    listed in definition order, indented by depth; figures are inclusive. In mode "train" MACs and FLOPs
    cover forward + backward, the backward booked to the module whose forward built it. `fmt` formats
    every number (exact digits by default; pass an SI formatter for a compact table); `types=False` leaves
    out the Type column (class names) for narrow terminals. `time_share` (qualified name -> share of a profiled
    step, "" for the whole) adds a Time % column.
    """
    step = "one training step (forward + backward)" if macs.mode == "train" else "one forward"
    # No caption: the convention line is wider than a narrow table and the CLI prints it once per run.
    table = Table(title=title or f"{macs.counter} counts per submodule, {step}")
    # On a narrow terminal the Type column gives way first; names and numbers are never cut.
    table.add_column("Module", no_wrap=True)
    if types:
        table.add_column("Type", overflow="ellipsis", min_width=4)
    for header in ("Params", "MACs", "FLOPs", *(("Time %",) if time_share is not None else ())):
        table.add_column(header, justify="right", no_wrap=True)
    for row in breakdown_rows(params, macs, max_depth):
        cells = [MISSING if v is None else fmt(v) for v in (row.params, row.macs, row.flops)]
        if time_share is not None:
            share = time_share.get(row.qualified)
            cells.append(MISSING if share is None else f"{100 * share:.1f}")
        table.add_row(INDENT * row.depth + row.name, *([row.type] if types else []), *cells)
    return table
