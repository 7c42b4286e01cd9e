"""Tables fit the terminal: at any width the key columns are whole, secondary ones go first, and one line says so."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from attnbench import fmt, report
from attnbench.results import Result
from attnbench.tables import KEY, Column, fit, render
from tests.conftest import run_cli
from tests.samples import ENV, sample_results

WIDTHS = (60, 80, 120, 200)


def parse(text: str, anchor: int = 1) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the first rich table in `text`; a row's wrapped lines are joined back.

    A line whose cell in column `anchor` (a number that is never empty) is blank continues the row above.
    """
    headers: list[str] = []
    rows: list[list[str]] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("┃"):
            cells = [c.strip() for c in line.strip("┃").split("┃")]
            headers = cells if not headers else [f"{a} {b}".strip() for a, b in zip(headers, cells, strict=True)]
            in_table = True
        elif line.startswith("│") and in_table:
            cells = [c.strip() for c in line.strip("│").split("│")]
            if rows and not cells[anchor]:
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
            else:
                rows.append(cells)
        elif line.startswith("└") and in_table:
            break
    return headers, rows


def squeeze(text: str) -> str:
    """Text without whitespace: a cell folded inside a word joins back to the same characters."""
    return "".join(text.split())


def render_summary(rows: list[Result], width: int) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    report.show(
        rows,
        Console(file=out, width=width),
        Console(file=err, width=width, soft_wrap=True),
        "sample",
        env=ENV,
    )
    return out.getvalue(), err.getvalue()


@pytest.mark.parametrize("width", WIDTHS)
def test_key_columns_are_whole_at_every_width(width: int) -> None:
    rows = sample_results()
    text, _ = render_summary(rows, width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    headers, cells = parse(text)
    table = report.summary(rows)
    assert len(cells) == len(table)
    unit, factor = fmt.pick_unit(table["latency_cpu_s"], fmt.TIME_UNITS)
    latency = next(i for i, h in enumerate(headers) if h.startswith(f"cpu [{unit}]"))  # the headline metric
    module, dim, res, status = (headers.index(h) for h in ("Module", "C", "H x W", "Status"))
    for got, (_, want) in zip(cells, table.iterrows(), strict=True):
        assert squeeze(got[module]) == squeeze(want["module"])
        assert got[dim] == "64"
        assert got[res] == f"{want['height']}x{want['width']}"
        assert squeeze(got[status]) == squeeze(want["status"])
        assert got[latency].split()[0] == fmt.in_unit(want["latency_cpu_s"], factor)
    if width >= 80:  # the done-when of issue 13: params stay at 80 columns
        params = headers.index("Params")
        assert [c[params] for c in cells] == [fmt.si(p) for p in table["params"]]


def test_narrow_tables_say_what_they_left_out_in_one_line() -> None:
    rows = sample_results()
    _, err = render_summary(rows, 80)
    notes = [line for line in err.splitlines() if "80 columns" in line]
    assert len(notes) == 1
    assert "hidden " in notes[0] and "fvcore÷ours" in notes[0] and "no ±IQR" in notes[0]
    full = int(notes[0].rsplit("COLUMNS=", 1)[1].split()[0])
    assert notes[0].endswith(f"(COLUMNS={full} or -o FILE.md shows all)")
    wide, err = render_summary(rows, full)  # the width the note names shows everything
    assert "columns:" not in err
    assert "columns:" in render_summary(rows, full - 1)[1]
    headers, _ = parse(wide)
    assert {"fvcore÷ours", "thop÷ours", "ORT max|Δ|", "FLOPs", "cpu GFLOP/s", "cpu % peak"} <= set(headers)
    assert "cpu [ms] med±IQR" in headers  # units picked from the column: 10.2 s among milliseconds


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
    buf = io.StringIO()
    Console(file=buf, width=24).print(render(fitted, rows))
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 24
    _, cells = parse(text)
    assert squeeze(cells[0][0]) == "models/attn.py:MyAttention" and cells[0][1] == "123456"


def test_varying_threads_get_a_key_column() -> None:
    import dataclasses

    rows = [r for r in sample_results() if r.module == "acmix"]
    rows += [dataclasses.replace(r, threads=2) for r in rows]
    text, _ = render_summary(rows, 60)
    headers, cells = parse(text)
    assert "threads" in headers
    assert sorted({c[headers.index("threads")] for c in cells}) == ["1", "2"]


@pytest.mark.parametrize("width", WIDTHS)
def test_list_never_cuts_the_default_kwargs(
    width: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnbench.zoo import catalog

    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "…" not in out
    assert max(len(line) for line in out.splitlines()) <= width
    headers, rows = parse(out, anchor=0)
    kwargs = headers.index("Default kwargs")
    entries = catalog.zoo()
    assert [r[0] for r in rows] == [e["name"] for e in entries]
    for row, entry in zip(rows, entries, strict=True):
        want = ", ".join(f"{k}={v.replace(', ', ',')}" for k, v in entry["defaults"]) or "-"
        assert squeeze(row[kwargs]) == squeeze(want)


def test_piped_output_honours_columns_and_defaults_to_120(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench import cli

    monkeypatch.setenv("COLUMNS", "77")
    assert cli.stdout_width() == 77
    monkeypatch.delenv("COLUMNS")
    assert cli.stdout_width() == 120  # pytest's stdout is not a terminal


def test_best_value_among_modules_at_one_setting_is_highlighted() -> None:
    rows = [r for r in sample_results() if r.height == 28]
    table, fitted = report.rich_table(rows, highlight_best=True, width=400)
    headers = [c.header for c in fitted.columns]
    latency = table.columns[headers.index("cpu [ms] med±IQR")]
    modules = [str(c) for c in table.columns[0]._cells]
    styles = {m: cell.style for m, cell in zip(modules, latency._cells, strict=True)}
    fastest = min((r for r in rows if r.backend == "cpu" and r.ok), key=lambda r: r.latency_median_s)
    assert styles[fastest.module] == "bold green"
    assert [m for m, s in styles.items() if s == "bold green"] == [fastest.module]


def test_one_status_when_every_backend_ended_alike() -> None:
    table = report.summary(sample_results())
    got = {(r["module"], r["height"]): r["status"] for _, r in table.iterrows()}
    assert got[("clo", 14)] == "invalid"  # refused on cpu and ort alike: said once
    assert got[("mhsa", 56)] == "ort: failed"  # only ORT failed: which one
    assert got[("acmix", 14)] == "ok"


@pytest.mark.parametrize("width", WIDTHS)
def test_merged_machines_fit_too(width: int) -> None:
    import dataclasses

    rows = [
        dataclasses.replace(r, machine=m)
        for m in ("Xeon, torch 2.13", "EPYC 7763, torch 2.13")
        for r in sample_results()
    ]
    text, _ = render_summary(rows, width)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    cross = text[text.index("Across machines") :]
    headers, cells = parse(cross)
    assert headers[:4] == ["Module", "C", "H x W", "backend"] and headers[4].startswith("M1 [")
    assert len(cells) == len([r for r in sample_results() if r.machine == "" and r.latency_median_s is not None])
    assert all(c[0] and c[1] == "64" and c[4] for c in cells)


def test_reference_results_fit_80_columns(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13's done-when: every module, resolution, params and status at 80 columns; pandas reads the CSV."""
    from pathlib import Path

    import pandas as pd

    from attnbench import results as R

    path = Path(__file__).resolve().parent.parent / "results" / "compare-cpu.csv"
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(capsys, "report", str(path))
    assert code == 0 and "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    headers, cells = parse(out)
    table = report.summary(R.load(path).results)
    got = [(c[headers.index("Module")], c[headers.index("H x W")], c[headers.index("Status")]) for c in cells]
    assert got == [(r["module"], f"{r['height']}x{r['width']}", r["status"]) for _, r in table.iterrows()]
    assert [c[headers.index("Params")] for c in cells] == [fmt.si(p) for p in table["params"]]
    assert len(pd.read_csv(path)) == len(R.load(path).results)
