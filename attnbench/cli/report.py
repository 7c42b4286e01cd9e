"""`report`: re-render saved results, or merge several (shards, machines) into one report, without measuring."""

from __future__ import annotations

from typing import Annotated

import typer

from attnbench import report
from attnbench.cli.app import app, consoles
from attnbench.cli.options import COMPARE, CompareSortOpt, OutputOpt, Outputs, PlotsOpt
from attnbench.errors import UsageError
from attnbench.merge import expand, merge
from attnbench.store import load


@app.command("report")
def report_cmd(
    sources: Annotated[
        list[str], typer.Argument(help="CSV or JSON reports written by attnbench, or globs ('shards/*.csv').")
    ],
    output: OutputOpt = None,
    plots: PlotsOpt = None,
    sort: CompareSortOpt = None,
    label: Annotated[
        str | None,
        typer.Option("--label", help="Machine label for rows that have none (default: from their file's environment)."),
    ] = None,
    latest: Annotated[
        bool, typer.Option("--latest", help="Keep the newest of a case measured twice on one machine (else an error).")
    ] = False,
) -> None:
    """Re-render saved results, or merge several (shards, machines) into one report, without measuring."""

    if label is not None and not label.strip():
        raise UsageError("--label must not be empty")
    paths = expand(sources)
    merged = merge([load(path) for path in paths], " ".join(label.split()) if label else None, latest)
    title = f"attnbench report ({paths[0].name})" if len(paths) == 1 else f"attnbench report ({len(paths)} files)"
    # Sorted as `compare` sorts, so a saved comparison reads the same re-rendered.
    outputs = Outputs(tuple(output or ()), plots, title, sort if sort is not None else COMPARE.sort)
    outputs.check(report.backends_of(merged.results))
    with outputs.locked():
        report.write(merged.results, merged.env, outputs.files, outputs.title, outputs.sort)
    if plots is not None:
        from attnbench.report.plots import plot_scaling  # matplotlib: only when plots are asked for

        for path in plot_scaling(merged.results, plots, merged.env):
            consoles.err.print(f"wrote {path}", highlight=False)
    report.show(merged.results, consoles.out, consoles.err, outputs.title, outputs.sort, env=merged.env)
    for path in outputs.files:
        consoles.err.print(f"wrote {path}", highlight=False)
