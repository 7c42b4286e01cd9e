"""The terminal: tables fit any width with the key columns whole, secondary ones go first and one line says so,
the best values are highlighted, merged machines get their own table, and what did not complete is said."""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from attnbench import fmt
from attnbench.report.summary import summary
from attnbench.report.terminal import machines_legend, rich_table, scaling_table, show
from attnbench.results import Result
from tests.samples import ENV, parse_rich, sample_results, squeeze

WIDTHS = (60, 80, 120, 200)


def render_summary(rows: list[Result], width: int) -> tuple[str, str]:
    """What `show` prints at this width: (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    show(
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
    headers, cells = parse_rich(text)
    table = summary(rows)
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
    if "Params" in headers:  # issue 22: memory outlasts params (it was the first column to go)
        params = headers.index("Params")
        assert [c[params] for c in cells] == [fmt.si(p) for p in table["params"]]
        assert any(h.startswith("Mem cpu") for h in headers)


def test_narrow_tables_say_what_they_left_out_in_one_line() -> None:
    rows = sample_results()
    _, err = render_summary(rows, 80)
    assert max(len(line) for line in err.splitlines()) <= 80  # prose wraps at the width too
    notes = [" ".join(note.split()) for note in err.split("\n~")[0].split("attnbench: ")[1:]]
    notes = [f"attnbench: {note}" for note in notes if "80 columns" in note]
    assert len(notes) == 1
    assert notes[0].startswith("attnbench: 80 columns: hidden ")
    assert "fvcore÷ours" in notes[0] and "no ±IQR" in notes[0]
    full = int(notes[0].rsplit("COLUMNS=", 1)[1].split()[0])
    assert notes[0].endswith(f"(COLUMNS={full} or -o FILE.md shows all)")
    wide, err = render_summary(rows, full)  # the width the note names shows everything
    assert "columns:" not in err
    assert "columns:" in render_summary(rows, full - 1)[1]
    headers, _ = parse_rich(wide)
    assert {"fvcore÷ours", "thop÷ours", "ORT max|Δ|", "FLOPs", "cpu GFLOP/s", "cpu % peak"} <= set(headers)
    assert "cpu [ms] med±IQR" in headers  # units picked from the column: 10.2 s among milliseconds


def test_varying_threads_get_a_key_column() -> None:
    rows = [r for r in sample_results() if r.module == "acmix"]
    rows += [dataclasses.replace(r, scenario=dataclasses.replace(r.scenario, threads=2)) for r in rows]
    text, _ = render_summary(rows, 60)
    headers, cells = parse_rich(text)
    assert "threads" in headers
    assert sorted({c[headers.index("threads")] for c in cells}) == ["1", "2"]


def test_best_value_among_modules_at_one_setting_is_highlighted() -> None:
    rows = [r for r in sample_results() if r.height == 28]
    table, fitted = rich_table(rows, highlight_best=True, width=400)
    headers = [c.header for c in fitted.columns]
    latency = table.columns[headers.index("cpu [ms] med±IQR")]
    modules = [str(c) for c in table.columns[0]._cells]
    styles = {m: cell.style for m, cell in zip(modules, latency._cells, strict=True)}
    fastest = min((r for r in rows if r.backend == "cpu" and r.ok), key=lambda r: r.latency_median_s)
    assert styles[fastest.module] == "bold green"
    assert [m for m, s in styles.items() if s == "bold green"] == [fastest.module]
    plain, _ = rich_table(rows, highlight_best=False, width=400)
    assert "bold green" not in {cell.style for cell in plain.columns[headers.index("cpu [ms] med±IQR")]._cells}


def test_a_status_other_than_ok_is_red_and_a_flagged_ratio_yellow() -> None:
    rows = sample_results()
    table, fitted = rich_table(rows, width=400)
    headers = [c.header for c in fitted.columns]
    status = {str(c): c.style for c in table.columns[headers.index("Status")]._cells}
    assert status == {"ok": "", "ort: failed": "red", "invalid": "red"}
    fvcore = {str(c): c.style for c in table.columns[headers.index("fvcore÷ours")]._cells}
    assert fvcore["0.75 under"] == "yellow" and fvcore["1.00"] == ""


@pytest.mark.parametrize("width", WIDTHS)
def test_merged_machines_fit_too(width: int) -> None:
    rows = [
        dataclasses.replace(r, machine=m)
        for m in ("Xeon, torch 2.13", "EPYC 7763, torch 2.13")
        for r in sample_results()
    ]
    text, _ = render_summary(rows, width)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width
    cross = text[text.index("Across machines") :]
    headers, cells = parse_rich(cross)
    assert headers[:4] == ["Module", "C", "H x W", "backend"] and headers[4].startswith("M1 [")
    assert len(cells) == len([r for r in sample_results() if r.machine == "" and r.latency_median_s is not None])
    assert all(c[0] and c[1] == "64" and c[4] for c in cells)
    assert "M1 = Xeon, torch 2.13" in text.splitlines() and "M2 = EPYC 7763, torch 2.13" in text.splitlines()


def test_machines_legend_only_for_several_machines() -> None:
    rows = sample_results()
    assert machines_legend(rows) == []
    two = [dataclasses.replace(r, machine=m) for m in ("a", "b") for r in rows]
    assert machines_legend(two) == ["M1 = a", "M2 = b"]


def test_scaling_table_needs_two_resolutions() -> None:
    rows = sample_results()
    assert scaling_table([r for r in rows if r.height == 28]) is None
    table, fitted = scaling_table(rows)  # type: ignore[misc]
    assert table.title is not None and str(table.title) == "Scaling: x in cost ~ N^x, N = H*W"
    assert [c.header for c in fitted.columns][:3] == ["Module", "C", "N range"]


def test_cases_that_did_not_complete_and_the_convention_go_to_stderr() -> None:
    from attnbench.report.summary import CONVENTION
    from attnbench.report.terminal import SHORT_CONVENTION

    out, err = render_summary(sample_results(), 200)
    lines = err.splitlines()
    assert "mhsa C=64 56x56 B=1 ort: failed: export failed" in lines
    # Backends that ended alike share one line.
    assert "clo C=64 14x14 B=1 cpu, ort: invalid: H, W % window_size == 0" in lines
    assert SHORT_CONVENTION in lines and CONVENTION not in err  # the long one is the reports' and the docs'
    assert "export failed" not in out and SHORT_CONVENTION not in out  # data on stdout, chatter on stderr


def test_no_rows_print_an_empty_table_and_no_note() -> None:
    out, err = render_summary([], 80)
    assert "columns:" not in err and "Scaling" not in out
