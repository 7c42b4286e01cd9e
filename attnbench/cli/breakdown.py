"""`--breakdown`: params, MACs and FLOPs per nested submodule, and MACs per operator, for each geometry of a run."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.measure import Measurement

from attnbench import fmt
from attnbench.cli.options import BREAKDOWN_DEPTH
from attnbench.counting import breakdown_table, count_macs, count_params
from attnbench.results import INVALID, Result
from attnbench.zoo.adapters import TokensToImage
from attnbench.zoo.build import build_module

#: A width no table reaches: measuring at it gives a table's natural width.
UNCONSTRAINED = 10_000


def print_breakdowns(rows: Sequence[Result], out: Console, depth: int = BREAKDOWN_DEPTH) -> None:
    """For each geometry: params, MACs and FLOPs per nested submodule down to `depth` (as fvcore's
    flop_count_table), then the attnbench counter's MACs per operator and what it saw but did not count."""

    seen = set()
    for row in rows:
        key = (*row.case.geometry, row.scenario.mode)
        if key in seen or row.status == INVALID:
            continue
        seen.add(key)
        kwargs = json.loads(row.kwargs) if row.kwargs else {}
        with torch.device("meta"):  # counts need shapes only: no weights are allocated
            module = build_module(row.module, row.dim, (row.height, row.width), kwargs, row.scenario.layout)
        report = count_macs(module, (row.batch, row.dim, row.height, row.width), mode=row.scenario.mode)
        params = count_params(module)
        # A token-layout module sits inside the (B, C, H, W) adapter: the adapter is not a level of its own.
        levels = depth + (1 if isinstance(module, TokensToImage) else 0)
        title = f"{row.module} C={row.dim} {row.height}x{row.width} B={row.batch}: per submodule, depth {depth}"
        table = breakdown_table(params, report, max_depth=levels, fmt=fmt.si, title=title)
        # Measured unconstrained (at the console's width a measurement never exceeds it): class names give way first.
        if Measurement.get(out, out.options.update_width(UNCONSTRAINED), table).maximum > out.width:
            table = breakdown_table(params, report, max_depth=levels, fmt=fmt.si, title=title, types=False)
        out.print()
        out.print(table)
        out.print(
            f"params {params.total:,} (trainable {params.trainable:,}; buffers, not counted: {params.buffers:,})",
            highlight=False,
        )
        out.print(report.format(), markup=False, highlight=False)
