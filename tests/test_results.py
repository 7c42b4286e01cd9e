"""Result rows round-trip through CSV and JSON; malformed files are refused with the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from attnbench import results as R
from attnbench.errors import BaselineError
from attnbench.results import Case, Result

ENV = {"cpu_model": "test cpu", "torch": "2.13.0"}


def rows() -> list[Result]:
    case = Case("mhsa", 64, 14, 28, 2, "cpu", kwargs=(("heads", 4),))
    return [
        Result.for_case(
            case,
            params=16640,
            macs_attnbench=123456789012,
            latency_median_s=0.00123,
            latency_iqr_s=1e-5,
            latency_noisy=False,
            peak_mem_bytes=4096,
        ),
        Result.for_case(Case("clo", 64, 14, 14), status=R.INVALID, reason="clo: H, W % window_size == 0: 14x14"),
    ]


def _write(path: Path, results: list[Result]) -> None:
    if path.suffix == ".csv":
        R.write_csv(path, results, ENV)
    else:
        R.atomic_write(path, R.json_text(results, ENV))


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    _write(path, rows())
    loaded = R.load(path)
    assert loaded.results == rows()
    assert loaded.env == ENV


def test_csv_is_plain_and_its_environment_is_in_the_sidecar(tmp_path: Path) -> None:
    import csv

    path = tmp_path / "r.csv"
    _write(path, rows())
    with path.open() as handle:
        assert [r["module"] for r in csv.DictReader(handle)] == ["mhsa", "clo"]
    frame = pd.read_csv(path)
    assert list(frame.columns) == list(R.RESULT_FIELDS)
    assert frame["macs_attnbench"].iloc[0] == 123456789012
    meta = json.loads(R.sidecar(path).read_text())
    assert meta == {"schema": R.SCHEMA_VERSION, "env": ENV}
    assert R.sidecar(path).name == "r.csv.meta.json"


def test_csv_without_sidecar_reads_with_unknown_environment(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    _write(path, rows())
    R.sidecar(path).unlink()
    loaded = R.load(path)
    assert loaded.results == rows() and loaded.env == {}


def test_csv_resaved_by_pandas_is_read_back_exactly(tmp_path: Path) -> None:
    path, resaved = tmp_path / "r.csv", tmp_path / "pandas.csv"
    _write(path, rows())
    frame = pd.read_csv(path)  # the nullable int columns come back as floats: 123456789012.0
    frame.to_csv(resaved)  # with pandas' index column, which the reader ignores
    assert "123456789012.0" in resaved.read_text()
    assert R.load(resaved).results == rows()


def test_schema_1_csv_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    header = "module,dim,height,width,batch,backend,dtype,threads,kwargs,status,reason,params,macs_attnbench"
    meta = ' {"schema": 1, "env": {"torch": "2.13.0"}}'
    path.write_text(R.LEGACY_CSV_MAGIC + meta + "\n" + header + "\nlka,64,8,8,1,cpu,float32,1,,ok,,9024,567\n")
    loaded = R.load(path)
    (row,) = loaded.results
    assert loaded.env == {"torch": "2.13.0"}
    assert (row.module, row.params, row.macs_attnbench) == ("lka", 9024, 567)
    assert (row.mode, row.flops_attnbench) == ("infer", None)  # columns schema 1 lacked take their defaults


def test_case_of_a_row_is_the_case_it_measured() -> None:
    case = Case("sk", 64, 14, 28, 2, "ort", threads=2, kwargs=(("kernels", (3, 5)),), mode="train")
    assert R.case_of(Result.for_case(case)) == case


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".csv", "empty"),
        ("module,dim\nx,1\n", ".csv", "not an attnbench CSV"),
        ("a,b\n1,2\n", ".csv", "missing column"),
        (R.LEGACY_CSV_MAGIC + " {bad json\n", ".csv", "corrupt header"),
        (R.LEGACY_CSV_MAGIC + ' {"schema": 99, "env": {}}\nmodule\n', ".csv", "schema version 99"),
        ("{", ".json", "corrupt JSON"),
        ('{"schema": 2, "env": {}}', ".json", "no 'results' list"),
        ('{"schema": 2, "env": {}, "results": [1]}', ".json", "not an object"),
        ('{"schema": 2, "env": {}, "results": [{"module": "m", "dim": "64"}]}', ".json", "column dim"),
        ("x", ".txt", "unknown report format"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(BaselineError, match=message) as info:
        R.load(path)
    assert str(path) in str(info.value)


def test_sidecar_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    _write(path, rows())
    R.sidecar(path).write_text('{"schema": 99, "env": {}}')
    with pytest.raises(BaselineError, match="schema version 99"):
        R.load(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="no such file"):
        R.load(tmp_path / "nope.csv")
    with pytest.raises(BaselineError, match="is a directory"):
        R.load(tmp_path)


def test_truncated_csv_row_is_refused(tmp_path: Path) -> None:
    text = R.csv_text(rows())
    path = tmp_path / "cut.csv"
    path.write_text(text[: text.rindex(",")] + "\n")
    with pytest.raises(BaselineError, match="line 3"):
        R.load(path)


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    R.atomic_write(path, "{}")
    R.atomic_write(path, '{"a": 1}')
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
