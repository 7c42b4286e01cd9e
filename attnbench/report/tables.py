"""Rich tables that fit the terminal: columns declare how much they matter, the fitting drops or folds the rest.

A column is KEY (always shown, never cut: it may wrap onto a second line if it allows it) or secondary with a
priority: the larger the number, the sooner it goes when the table is too wide. A column may also offer a
shorter variant (the median without its ±IQR) that is used, at its own priority, before anything else of
lower priority is dropped. New columns slot in by declaring a priority; the fitting never changes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

#: Priority of a column that is always shown in full.
KEY = 0
#: Width of a pipe, file or CI log when COLUMNS does not say otherwise.
PIPE_WIDTH = 120
#: A wrapping column is folded inside its words down to this width, and no further, on a very narrow terminal.
FOLD_FLOOR = 6


@dataclass(frozen=True)
class Column:
    """One column: header, cell text per row, and how it behaves when space runs short."""

    header: str
    cell: Callable[[Any], str]
    #: KEY, or how soon it is dropped on a narrow terminal (larger: sooner).
    priority: int = KEY
    #: A narrower variant, used from `short.priority` on (e.g. the median without ±IQR).
    short: Column | None = None
    #: What the fitting note calls the shortening ("±IQR"); defaults to the header.
    short_name: str = ""
    justify: str = "right"
    #: May wrap at spaces when the terminal is too narrow for it on one line (a status, kwargs, a module name).
    wrap: bool = False
    #: Text expected to wrap (a title, a list of rules): fitted by its longest word, not its full length.
    prose: bool = False
    #: The summary column this one shows (best-value highlighting, sorting).
    key: str = ""
    #: Extra data for the caller's styling.
    meta: dict[str, Any] = field(default_factory=dict)
    #: Marks its cells may carry that refer to another column, by that column's key ((`†`, "other_alloc_cpu_s"),):
    #: a mark goes when the fitting hides the column it refers to.
    marks: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Fitted:
    """The columns chosen for a width, and what was left out or shortened to get there."""

    columns: list[Column]
    hidden: list[str]
    shortened: list[str]
    width: int | None
    #: How wide the table is with every column in full.
    full_width: int = 0

    def note(self) -> str | None:
        """What a narrow terminal left out ("hidden: fvcore÷ours; no ±IQR"), None when nothing was."""
        parts = []
        if self.hidden:
            parts.append("hidden " + ", ".join(self.hidden))
        if self.shortened:
            parts.append("no " + ", ".join(dict.fromkeys(self.shortened)))
        return "; ".join(parts) or None


def fit_note(width: int | None, tables: Sequence[tuple[str, Fitted]], elsewhere: str = " or -o FILE.md") -> str | None:
    """One line for every table a command printed: what `width` columns left out, and how wide shows it all."""
    parts = [f"{name}{fitted.note()}" for name, fitted in tables if fitted.note()]
    if not parts:
        return None
    full = max(fitted.full_width for _, fitted in tables)
    return f"{width} columns: " + "; ".join(parts) + f" (COLUMNS={full}{elsewhere} shows all)"


def _min_width(column: Column, rows: Sequence[Any]) -> int:
    if not (column.wrap or column.prose):
        return _natural_width(column, rows)
    texts = [column.header, *(column.cell(r) for r in rows)]
    return max(cell_len(word) for text in texts for word in (text.split() or [""]))  # rich wraps at spaces


def _natural_width(column: Column, rows: Sequence[Any]) -> int:
    texts = [column.header, *(column.cell(r) for r in rows)]
    return max(cell_len(line) for text in texts for line in (text.splitlines() or [""]))


def _overhead(n: int) -> int:
    # A rich Table with its default box: one space of padding each side of a cell, a rule between cells and
    # at both edges.
    return 3 * n + 1


def table_width(columns: Sequence[Column], rows: Sequence[Any]) -> int:
    """How wide a rich Table (default box, one space of padding each side) draws these columns, prose wrapped."""
    return sum(_min_width(c, rows) if c.prose else _natural_width(c, rows) for c in columns) + _overhead(len(columns))


def allot(columns: Sequence[Column], rows: Sequence[Any], width: int | None) -> list[int] | None:
    """Content width of each column for a table `width` wide (None: every column at its natural width).

    Numbers get all they need. Wrapping columns share what is left in proportion to what they lack, down to
    their longest word; only when even that does not fit are they folded inside words (never cut).
    """
    natural = [_natural_width(c, rows) for c in columns]
    if width is None or sum(natural) + _overhead(len(columns)) <= width:
        return None
    widths = [_min_width(c, rows) for c in columns]
    spare = width - _overhead(len(columns)) - sum(widths)
    flexible = [i for i, c in enumerate(columns) if c.wrap or c.prose]
    while spare < 0:  # fold the widest wrapping column inside its words, down to FOLD_FLOOR
        widest = max(flexible, key=lambda i: widths[i], default=None)
        if widest is None or widths[widest] <= FOLD_FLOOR:
            break
        widths[widest] -= 1
        spare += 1
    gaps = [natural[i] - widths[i] if i in flexible else 0 for i in range(len(columns))]
    total_gap = sum(gaps)
    if spare <= 0 or total_gap <= 0:
        return widths
    extra = [spare * g // total_gap for g in gaps]
    left = spare - sum(extra)
    for i in sorted(range(len(gaps)), key=lambda i: -gaps[i]):  # round-off goes to the columns wanting most
        if left <= 0:
            break
        if extra[i] < gaps[i]:
            extra[i] += 1
            left -= 1
    return [w + e for w, e in zip(widths, extra, strict=True)]


def fit(columns: Sequence[Column], rows: Sequence[Any], width: int | None) -> Fitted:
    """Shorten and drop secondary columns, least important first, until the table fits `width` (None: all)."""
    chosen: list[Column | None] = list(columns)
    hidden: list[tuple[int, str]] = []
    shortened: list[str] = []
    if width is None:
        return Fitted(list(columns), [], shortened, width, table_width(columns, rows))
    steps: list[tuple[int, int, str]] = []
    for index, column in enumerate(columns):
        if column.priority > KEY:
            steps.append((column.priority, index, "drop"))
        if column.short is not None:
            steps.append((column.short.priority, index, "short"))
    # Least important first; among equals, the rightmost column first (columns are declared in reading order).
    steps.sort(key=lambda s: (-s[0], -s[1], s[2] == "drop"))
    for _priority, index, action in steps:
        present = [c for c in chosen if c is not None]
        if table_width(present, rows) <= width:
            break
        column = chosen[index]
        if column is None:
            continue
        if action == "drop":
            chosen[index] = None
            hidden.append((index, column.header))
        elif column.short is not None and column is columns[index]:
            chosen[index] = replace(column.short, priority=column.priority, short=None)
            shortened.append(column.short_name or column.header)
    full = table_width(columns, rows)
    kept = [c for c in chosen if c is not None]
    keys = {c.key for c in kept if c.key}
    # The note lists them in reading order.
    return Fitted([_unmarked(c, keys) for c in kept], [h for _, h in sorted(hidden)], shortened[::-1], width, full)


def _unmarked(column: Column, keys: set[str]) -> Column:
    """The column without the marks whose column is not shown (a `†` pointing at nothing says nothing)."""
    orphans = [mark for mark, key in column.marks if key not in keys]
    if not orphans:
        return column

    def cell(row: Any, inner: Callable[[Any], str] = column.cell) -> str:
        text = inner(row)
        for mark in orphans:
            text = text.replace(f" {mark}", "")
        return text

    return replace(column, cell=cell, marks=())


def prose(text: str, width: int | None, indent: int = 0) -> str:
    """A sentence wrapped at `width` (None: one line) at its spaces, continuation lines indented by `indent`."""
    if width is None or len(text) <= width:
        return text
    return textwrap.fill(text, width, subsequent_indent=" " * indent, break_long_words=False, break_on_hyphens=False)


def render(
    fitted: Fitted,
    rows: Sequence[Any],
    title: str | None = None,
    style: Callable[[Column, Any, str], str] | None = None,
) -> Table:
    """The fitted columns as a rich Table, each as wide as `allot` says; nothing is ever cut with an ellipsis."""
    # A title is text, not markup: "[ms]" in it is a unit, not a style.
    table = Table(title=None if title is None else Text(title), header_style="bold", title_justify="left")
    widths = allot(fitted.columns, rows, fitted.width)
    for i, column in enumerate(fitted.columns):
        table.add_column(
            Text(column.header),
            justify=column.justify,  # type: ignore[arg-type]
            # Nothing is cut: at a width too small even for the key columns, rich folds a cell onto more lines.
            no_wrap=False,
            overflow="fold",
            width=None if widths is None else widths[i],
        )
    for row in rows:
        cells = []
        for column in fitted.columns:
            text = column.cell(row)
            cells.append(Text(text, style=style(column, row, text) if style else ""))
        table.add_row(*cells)
    return table
