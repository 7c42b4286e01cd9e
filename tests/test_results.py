"""Result rows round-trip through CSV and JSON; malformed files are refused with the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

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


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    text = R.csv_text(rows(), ENV) if suffix == ".csv" else R.json_text(rows(), ENV)
    R.atomic_write(path, text)
    loaded = R.load(path)
    assert loaded.results == rows()
    assert loaded.env == ENV


def test_csv_first_line_carries_schema_and_env(tmp_path: Path) -> None:
    text = R.csv_text(rows(), ENV)
    first = text.splitlines()[0]
    assert first.startswith(R.CSV_MAGIC)
    assert json.loads(first[len(R.CSV_MAGIC) :])["schema"] == R.SCHEMA_VERSION
    assert text.splitlines()[1].split(",")[:3] == ["module", "dim", "height"]


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".csv", "empty"),
        ("module,dim\nx,1\n", ".csv", "not an attnbench CSV"),
        (R.CSV_MAGIC + " {bad json\n", ".csv", "corrupt header"),
        (R.CSV_MAGIC + ' {"schema": 99, "env": {}}\nmodule\n', ".csv", "schema version 99"),
        ("{", ".json", "corrupt JSON"),
        ('{"schema": 1, "env": {}}', ".json", "no 'results' list"),
        ('{"schema": 1, "env": {}, "results": [1]}', ".json", "not an object"),
        ('{"schema": 1, "env": {}, "results": [{"module": "m", "dim": "64"}]}', ".json", "column dim"),
        ("x", ".txt", "unknown report format"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(BaselineError, match=message) as info:
        R.load(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="no such file"):
        R.load(tmp_path / "nope.csv")
    with pytest.raises(BaselineError, match="is a directory"):
        R.load(tmp_path)


def test_truncated_csv_row_is_refused(tmp_path: Path) -> None:
    text = R.csv_text(rows(), ENV)
    path = tmp_path / "cut.csv"
    path.write_text(text[: text.rindex(",")] + "\n")
    with pytest.raises(BaselineError, match="line 4"):
        R.load(path)


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    R.atomic_write(path, "{}")
    R.atomic_write(path, '{"a": 1}')
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
