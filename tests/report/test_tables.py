"""Fitting a table to the terminal: secondary columns shortened or dropped least important first, key columns never
cut (they fold), and one note that says what went and how wide shows it all."""

from __future__ import annotations

import io

from rich.console import Console

from attnbench.report.tables import KEY, Column, Fitted, allot, fit, fit_note, prose, render, table_width
from tests.samples import parse_rich, squeeze


def printed(fitted: Fitted, rows: list[dict[str, str]], width: int) -> str:
    """The fitted table as a console this wide prints it."""
    buf = io.StringIO()
    Console(file=buf, width=width).print(render(fitted, rows))
    return buf.getvalue()


def test_least_important_columns_go_first() -> None:
    rows = [{"a": "x" * 10, "b": "y" * 10, "c": "z" * 10}]
    columns = [
        Column("A", lambda r: r["a"]),
        Column("B", lambda r: r["b"], priority=10),
        Column("C", lambda r: r["c"], priority=20, short=Column("C", lambda r: "z", priority=30)),
    ]
    assert fit(columns, rows, 1000).hidden == []
    narrow = fit(columns, rows, 10 + 10 + 1 + 3 * 3 + 1)  # room for A, B and the one-letter C
    assert [c.header for c in narrow.columns] == ["A", "B", "C"] and narrow.shortened == ["C"]
    assert narrow.columns[2].cell(rows[0]) == "z"
    tight = fit(columns, rows, 10 + 10 + 2 * 3 + 1)  # room for A and B only
    assert [c.header for c in tight.columns] == ["A", "B"] and tight.hidden == ["C"]
    only_key = fit(columns, rows, 10)
    assert [c.header for c in only_key.columns] == ["A"]  # a key column stays, whatever the width


def test_a_key_column_too_wide_for_the_terminal_folds_instead_of_being_cut() -> None:
    rows = [{"name": "models/attn.py:MyAttention", "n": "123456"}]
    columns = [Column("Name", lambda r: r["name"], KEY, wrap=True), Column("N", lambda r: r["n"])]
    fitted = fit(columns, rows, 24)
    text = printed(fitted, rows, 24)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 24
    _, cells = parse_rich(text)
    assert squeeze(cells[0][0]) == "models/attn.py:MyAttention" and cells[0][1] == "123456"


def test_table_width_is_what_rich_draws() -> None:
    rows = [{"a": "x" * 7, "b": "yy"}]
    columns = [Column("A", lambda r: r["a"]), Column("Bee", lambda r: r["b"])]
    assert table_width(columns, rows) == 7 + 3 + 3 * 2 + 1  # the widest of header and cells, padding and rules
    text = printed(fit(columns, rows, None), rows, 200)
    assert max(len(line) for line in text.splitlines()) == table_width(columns, rows)


def test_nothing_left_out_no_note() -> None:
    rows = [{"a": "x"}]
    columns = [Column("A", lambda r: r["a"]), Column("B", lambda r: r["a"], priority=10)]
    fitted = fit(columns, rows, 80)
    assert fitted.note() is None and fit_note(80, [("", fitted)]) is None
    everything = fit(columns, rows, None)
    assert everything.columns == columns and everything.width is None


def test_the_note_lists_every_table_in_reading_order_and_the_width_that_shows_all() -> None:
    rows = [{"a": "x" * 10}]
    spread = Column("A ±", lambda r: r["a"] + " ±0.1", 10, short=Column("A", lambda r: r["a"], 60), short_name="±IQR")
    columns = [
        Column("K", lambda r: r["a"]),
        Column("P", lambda r: r["a"], priority=50),
        Column("Q", lambda r: r["a"], priority=40),
        spread,
    ]
    fitted = fit(columns, rows, 30)
    assert fitted.hidden == ["P", "Q"] and fitted.shortened == ["±IQR"]
    assert fitted.note() == "hidden P, Q; no ±IQR"
    other = fit([Column("K", lambda r: r["a"]), Column("Z", lambda r: r["a"], priority=10)], rows, 16)
    note = fit_note(30, [("", fitted), ("scaling table: ", other)], " or `attnbench info NAME`")
    full = max(fitted.full_width, other.full_width)
    assert note == (
        f"30 columns: hidden P, Q; no ±IQR; scaling table: hidden Z (COLUMNS={full} or `attnbench info NAME` shows all)"
    )


def test_wrapping_columns_share_the_room_left_down_to_their_longest_word() -> None:
    rows = [{"k": "1234", "t": "a long title of many words"}]
    columns = [Column("K", lambda r: r["k"]), Column("Title", lambda r: r["t"], prose=True)]
    assert allot(columns, rows, 200) is None  # everything fits: natural widths
    widths = allot(columns, rows, 4 + 7 + 3 * 2 + 1)
    assert widths == [4, 7]  # "Title" and the words fit in 7; the number keeps its 4
    text = printed(fit(columns, rows, 18), rows, 18)
    assert sum(line.startswith("│") for line in text.splitlines()) > 1 and "…" not in text  # wrapped, not cut
    _, cells = parse_rich(text, anchor=0)
    assert cells[0][1] == "a long title of many words"


def test_a_mark_goes_with_the_column_it_points_to() -> None:
    rows = [{"t": "1.5 ~ †", "s": "2.25"}]
    marked = Column("cpu [ms]", lambda r: r["t"], KEY, key="t", marks=(("†", "s"),))
    system = Column("cpu [ms] system", lambda r: r["s"], 30, key="s")
    wide = fit([marked, system], rows, None)
    assert [c.cell(rows[0]) for c in wide.columns] == ["1.5 ~ †", "2.25"]
    narrow = fit([marked, system], rows, table_width([marked], rows))  # room for the latency alone
    assert [c.header for c in narrow.columns] == ["cpu [ms]"] and narrow.hidden == ["cpu [ms] system"]
    assert narrow.columns[0].cell(rows[0]) == "1.5 ~"  # the † pointed at the hidden column: it goes too


def test_prose_wraps_at_the_width_with_a_hanging_indent() -> None:
    text = "alpha beta gamma delta epsilon zeta eta theta"
    assert prose(text, None) == text and prose(text, 80) == text
    lines = prose(text, 20, indent=4).splitlines()
    assert max(len(line) for line in lines) <= 20 and all(line.startswith("    ") for line in lines[1:])
    assert " ".join(text.split()) == " ".join(" ".join(lines).split())
