"""Report files: every format by its suffix, written whole; a run's CSV streamed row by row and valid after every
row, its Markdown and JSON written once at the end, interrupted or not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from attnbench import store
from attnbench.report.files import ReportFiles, write
from attnbench.results import COLUMNS, Result
from attnbench.runner import RunOutcome
from tests.samples import ENV, markdown_tables, sample_results


def test_write_picks_the_format_by_suffix_in_any_case(tmp_path: Path) -> None:
    rows = sample_results()
    paths = [tmp_path / "r.csv", tmp_path / "R.CSV", tmp_path / "r.Md", tmp_path / "r.JSON"]
    write(rows, ENV, paths, title="sample", sort_by="macs")
    for csv in paths[:2]:
        loaded = store.load(csv)
        assert loaded.results == rows and loaded.env == ENV  # the sidecar keeps the environment
        assert store.sidecar(csv).exists()
    md = paths[2].read_text()
    assert md.startswith("# sample\n")
    modules = [row[0] for row in markdown_tables(md)[0][1:] if row[2] == "28x28"]
    assert modules == ["models/attn.py:MyAttention", "acmix", "clo", "mhsa"]  # sorted by MACs
    document = json.loads(paths[3].read_text())
    assert document["schema"] == store.SCHEMA_VERSION and document["env"] == ENV
    assert len(document["results"]) == len(rows) and list(document["results"][0]) == list(COLUMNS)
    assert store.load(paths[3]).results == rows


def test_write_nothing_writes_empty_but_valid_reports(tmp_path: Path) -> None:
    write([], {"k": "v"}, [tmp_path / "e.csv", tmp_path / "e.md", tmp_path / "e.json"])
    assert store.load(tmp_path / "e.csv").results == [] and store.load(tmp_path / "e.json").results == []
    assert "No results." in (tmp_path / "e.md").read_text()


def read_csv(path: Path) -> pd.DataFrame:
    """The CSV as pandas reads it (the header line is the first)."""
    return pd.read_csv(path, keep_default_na=False)


def test_csv_is_streamed_and_valid_after_every_row(tmp_path: Path) -> None:
    rows = sample_results()
    csv, md, js = tmp_path / "r.csv", tmp_path / "r.md", tmp_path / "r.json"
    sink = ReportFiles([csv, md, js], "streamed")
    sink.start(ENV, [r.case for r in rows])
    frame = read_csv(csv)
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 0  # the header, before any row
    assert store.load(csv).env == ENV
    for i, row in enumerate(rows, start=1):
        sink.row(row)
        frame = read_csv(csv)
        assert len(frame) == i, f"after row {i}"
        assert frame["module"].tolist() == [r.module for r in rows[:i]]
        assert frame["height"].tolist() == [r.height for r in rows[:i]]
        assert store.load(csv).results == rows[:i]
        assert not md.exists() and not js.exists()  # whole documents: at the end only
    sink.finish(RunOutcome(rows, dict(ENV)))
    assert store.load(csv).results == rows
    assert markdown_tables(md.read_text())[0][0][0] == "Module" and md.read_text().startswith("# streamed\n")
    assert store.load(js).results == rows


def test_an_interrupted_run_keeps_its_rows_in_every_format(tmp_path: Path) -> None:
    rows = sample_results()[:3]
    csv, md, js = tmp_path / "r.csv", tmp_path / "r.md", tmp_path / "r.json"
    sink = ReportFiles([csv, md, js])
    sink.start(ENV, [r.case for r in sample_results()])
    for row in rows:
        sink.row(row)
    sink.finish(RunOutcome(rows, dict(ENV), interrupted=True))
    assert store.load(csv).results == rows and store.load(js).results == rows
    table = markdown_tables(md.read_text())[0]
    assert [r[2] for r in table[1:]] == ["14x14", "28x28"]  # acmix 14x14 (cpu and ort), then acmix 28x28 (cpu)


def test_rows_changed_after_streaming_rewrite_the_csv_once(tmp_path: Path) -> None:
    """The valgrind pass fills in instruction counts after the rows were streamed: the CSV ends with them."""
    rows = sample_results()[:2]
    csv = tmp_path / "r.csv"
    sink = ReportFiles([csv])
    sink.start(ENV, [r.case for r in rows])
    for row in rows:
        sink.row(row)
    counted = [dataclasses.replace(r, instructions=1_000 + i) for i, r in enumerate(rows)]
    env = {**ENV, "valgrind": "3.19.0"}
    sink.finish(RunOutcome(counted, env))
    loaded = store.load(csv)
    assert [r.instructions for r in loaded.results] == [1_000, 1_001] and loaded.env == env
    assert len(read_csv(csv)) == 2


@pytest.mark.parametrize("suffix", [".csv", ".CSV"])
def test_only_csvs_are_streamed(tmp_path: Path, suffix: str) -> None:
    csv, md = tmp_path / f"r{suffix}", tmp_path / "r.md"
    sink = ReportFiles([csv, md])
    sink.start({}, [])
    assert csv.exists() and not md.exists()
    row: Result = sample_results()[0]
    sink.row(row)
    assert store.load(csv).results == [row]
    sink.finish(RunOutcome([row], {}))
    assert md.exists()
