"""Views of result rows: summary tables, the terminal, Markdown, files, plots (attnbench.report.plots).

`write(rows, env, paths)` writes report files, `show(rows, out, err)` prints the tables, `ReportFiles` streams a
run's rows into its files. The Markdown text is report.markdown.markdown() and the summary frame
report.summary.summary(): a name here would be shadowed by its submodule once that is imported. The names below
are imported on first use: `list` and `info` use report.tables alone and must not import pandas or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ReportFiles": "attnbench.report.files",
    "write": "attnbench.report.files",
    "zoo_markdown": "attnbench.report.markdown",
    "backends_of": "attnbench.report.summary",
    "scaling": "attnbench.report.summary",
    "sort_key": "attnbench.report.summary",
    "show": "attnbench.report.terminal",
    "show_gate": "attnbench.report.terminal",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnbench.report' has no attribute {name!r}")
