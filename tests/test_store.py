"""Result files: rows round-trip through CSV and JSON, the sidecar, legacy files, locks, streaming row by row;
malformed files are refused with the file and the problem."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from attnbench import results as R
from attnbench import store
from attnbench.errors import BaselineError, OutputLockedError
from attnbench.results import Case, Result, Scenario
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "schema1-compare-cpu.csv"
ENV = {"cpu_model": "test cpu", "torch": "2.13.0"}
COUNTS = ["--metrics", "params,macs", "--quiet"]


def rows() -> list[Result]:
    """Two rows: a measured one with a large count, and an invalid one."""
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


def scenario_rows() -> list[Result]:
    """Rows whose scenarios are off their defaults in every field, the new ones included."""
    scenario = Scenario("bfloat16", 2, "train", True, True, "tokens", "system", "reduce-overhead", "bfloat16", "basic")
    return [
        Result.for_case(Case("m.py:A", 16, 8, 8, 1, "cpu", scenario=scenario), params=1, latency_noisy=True),
        Result.for_case(Case("lka", 16, 8, 8, 1, "ort", scenario=Scenario(ort_opt_level="disable")), seconds=0.5),
    ]


def _write(path: Path, results: list[Result]) -> None:
    """Write rows as the suffix says: CSV with its sidecar, or JSON."""
    if path.suffix == ".csv":
        store.write_csv(path, results, ENV)
    else:
        store.atomic_write(path, store.json_text(results, ENV))


def _env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    _write(path, rows())
    loaded = store.load(path)
    assert loaded.results == rows()
    assert loaded.env == ENV
    assert loaded.source == str(path)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_round_trip_keeps_every_scenario_field(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    _write(path, scenario_rows())
    assert store.load(path).results == scenario_rows()


def test_csv_is_plain_and_its_environment_is_in_the_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    _write(path, rows())
    with path.open() as handle:
        assert [r["module"] for r in csv.DictReader(handle)] == ["mhsa", "clo"]
    frame = pd.read_csv(path)
    assert list(frame.columns) == list(R.COLUMNS)
    assert frame["macs_attnbench"].iloc[0] == 123456789012
    meta = json.loads(store.sidecar(path).read_text())
    assert meta == {"schema": store.SCHEMA_VERSION, "env": ENV}
    assert store.sidecar(path).name == "r.csv.meta.json"
    assert store.sidecar(path) == tmp_path / ("r.csv" + store.SIDECAR_SUFFIX)
    assert store.meta_text(ENV) == store.sidecar(path).read_text()


def test_csv_text_and_lines() -> None:
    text = store.csv_text(rows())
    header, *lines = text.splitlines(keepends=True)
    assert header == ",".join(R.COLUMNS) + "\n"
    assert lines == [store.csv_line(r) for r in rows()]
    assert store.csv_text([]) == header
    cells = next(csv.reader([lines[0]]))
    values = dict(zip(R.COLUMNS, cells, strict=True))
    # Floats as repr (exact), None as an empty cell, the scenario spread into its columns.
    assert (values["latency_median_s"], values["macs_fvcore"], values["dtype"]) == ("0.00123", "", "float32")
    assert (values["compile_mode"], values["autocast"], values["ort_opt_level"]) == ("default", "off", "all")


def test_json_rows_are_flat() -> None:
    data = json.loads(store.json_text(scenario_rows(), ENV))
    assert (data["schema"], data["env"]) == (store.SCHEMA_VERSION, ENV)
    first = data["results"][0]
    assert list(first) == list(R.COLUMNS)
    assert (first["dtype"], first["threads"], first["compile_mode"], first["ort_opt_level"]) == (
        "bfloat16",
        2,
        "reduce-overhead",
        "basic",
    )
    assert "scenario" not in first


def test_csv_without_sidecar_reads_with_unknown_environment(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    _write(path, rows())
    store.sidecar(path).unlink()
    loaded = store.load(path)
    assert loaded.results == rows() and loaded.env == {}


def test_csv_resaved_by_pandas_is_read_back_exactly(tmp_path: Path) -> None:
    path, resaved = tmp_path / "r.csv", tmp_path / "pandas.csv"
    _write(path, rows())
    frame = pd.read_csv(path)  # the nullable int columns come back as floats: 123456789012.0
    frame.to_csv(resaved)  # with pandas' index column, which the reader ignores
    assert "123456789012.0" in resaved.read_text()
    assert store.load(resaved).results == rows()


# ---------------------------------------------------------------- older files


def test_schema_1_csv_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    header = "module,dim,height,width,batch,backend,dtype,threads,kwargs,status,reason,params,macs_attnbench"
    meta = ' {"schema": 1, "env": {"torch": "2.13.0"}}'
    path.write_text(store.LEGACY_CSV_MAGIC + meta + "\n" + header + "\nlka,64,8,8,1,cpu,float32,1,,ok,,9024,567\n")
    loaded = store.load(path)
    (row,) = loaded.results
    assert loaded.env == {"torch": "2.13.0"}
    assert (row.module, row.params, row.macs_attnbench) == ("lka", 9024, 567)
    # Columns schema 1 lacked take their defaults, the scenario fields added since too.
    assert (row.scenario.mode, row.flops_attnbench) == ("infer", None)
    assert row.scenario == Scenario()
    assert store.READABLE_SCHEMAS == (1, 2) and store.SCHEMA_VERSION == 2


def test_a_file_from_before_the_new_scenario_fields_is_read_with_their_defaults(tmp_path: Path) -> None:
    # attnbench 0.1's reference run (results/compare-cpu.csv), kept as written: without compile_mode, autocast,
    # ort_opt_level and the columns added to the latency statistics since.
    loaded = store.load(FIXTURE)
    assert len(loaded.results) == 60
    assert {r.module for r in loaded.results} == {"acmix", "ea", "mhsa", "sk", "da", "epsa", "sam", "clo", "lka", "van"}
    assert [(r.module, r.height, r.backend) for r in loaded.results[:4]] == [
        ("acmix", 14, "cpu"),
        ("acmix", 14, "ort"),
        ("acmix", 28, "cpu"),
        ("acmix", 28, "ort"),
    ]
    first = loaded.results[0]
    assert (first.params, first.macs_attnbench, first.latency_calls, first.peak_mem_bytes) == (
        17822,
        4998784,
        288,
        8561280,
    )
    assert first.scenario == Scenario()
    assert (first.latency_ci_rel, first.instructions, first.compile_s) == (None, None, None)
    assert loaded.env["torch"] == "2.13.0+cpu" and loaded.env["onnxruntime"] == "1.31.1"
    # Written again, it has today's columns, and reads back the same.
    again = tmp_path / "again.csv"
    store.write_csv(again, loaded.results, loaded.env)
    assert list(pd.read_csv(again).columns) == list(R.COLUMNS)
    assert store.load(again).results == loaded.results


def test_an_empty_scenario_cell_takes_the_default(tmp_path: Path) -> None:
    text = store.csv_text(scenario_rows()[:1])
    header, line = text.splitlines()
    cells = next(csv.reader([line]))
    cells[R.COLUMNS.index("compile_mode")] = ""
    path = tmp_path / "r.csv"
    path.write_text(header + "\n" + ",".join(f'"{c}"' for c in cells) + "\n")
    (row,) = store.load(path).results
    assert row.scenario.compile_mode == "default" and row.scenario.dtype == "bfloat16"


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("", ".csv", "empty"),
        ("module,dim\nx,1\n", ".csv", "not an attnbench CSV"),
        ("a,b\n1,2\n", ".csv", "missing column"),
        (store.LEGACY_CSV_MAGIC + " {bad json\n", ".csv", "corrupt header"),
        (store.LEGACY_CSV_MAGIC + ' {"schema": 99, "env": {}}\nmodule\n', ".csv", "schema version 99"),
        ("{", ".json", "corrupt JSON"),
        ('{"schema": 2, "env": {}}', ".json", "no 'results' list"),
        ('{"schema": 2, "env": {}, "results": [1]}', ".json", "not an object"),
        ('{"schema": 2, "env": {}, "results": [{"module": "m", "dim": "64"}]}', ".json", "column dim"),
        ('{"env": {}, "results": []}', ".json", "no schema version"),
        ("x", ".txt", "unknown report format"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(BaselineError, match=message) as info:
        store.load(path)
    assert str(path) in str(info.value)


def test_a_scenario_value_outside_its_axis_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(store.csv_text(rows()).replace("float32", "int8", 1))
    with pytest.raises(BaselineError, match=r"line 2: --dtype 'int8': allowed"):
        store.load(path)


def test_sidecar_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    _write(path, rows())
    store.sidecar(path).write_text('{"schema": 99, "env": {}}')
    with pytest.raises(BaselineError, match="schema version 99"):
        store.load(path)
    store.sidecar(path).write_text("{")
    with pytest.raises(BaselineError, match=r"meta\.json: corrupt JSON"):
        store.load(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="no such file"):
        store.load(tmp_path / "nope.csv")
    with pytest.raises(BaselineError, match="is a directory"):
        store.load(tmp_path)


def test_truncated_csv_row_is_refused(tmp_path: Path) -> None:
    text = store.csv_text(rows())
    path = tmp_path / "cut.csv"
    path.write_text(text[: text.rindex(",")] + "\n")
    with pytest.raises(BaselineError, match="line 3"):
        store.load(path)


# ---------------------------------------------------------------- writing


def test_atomic_write_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    store.atomic_write(path, "{}")
    store.atomic_write(path, '{"a": 1}')
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_gives_a_plain_files_permissions(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    store.atomic_write(path, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.csv"
    store.atomic_write(path, "old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        store.atomic_write(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


# ---------------------------------------------------------------- streaming


def test_csv_stream_is_a_valid_file_after_every_row(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    stream = store.CsvStream(path, ENV)
    assert store.load(path).results == [] and store.load(path).env == ENV
    written = []
    for row in [*rows(), *scenario_rows()]:
        stream.append(row)
        written.append(row)
        loaded = store.load(path)  # what a reader sees if the run died here
        assert loaded.results == written and loaded.env == ENV
    stream.finish(written)
    assert store.load(path).results == written


def test_csv_stream_writes_each_row_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = store.CsvStream(tmp_path / "s.csv", ENV)
    writes: list[bytes] = []
    real = os.write

    def counting(fd: int, data: bytes) -> int:
        if fd == stream._fd:
            writes.append(bytes(data))
        return real(fd, data)

    monkeypatch.setattr(store.os, "write", counting)
    for row in rows():
        stream.append(row)
    assert writes == [store.csv_line(r).encode() for r in rows()]
    stream.close()
    stream.close()  # idempotent


def test_csv_stream_finish_rewrites_only_when_rows_or_env_changed(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    stream = store.CsvStream(path, ENV)
    for row in rows():
        stream.append(row)
    inode, meta_inode = path.stat().st_ino, store.sidecar(path).stat().st_ino
    stream.finish(rows(), ENV)
    assert (path.stat().st_ino, store.sidecar(path).stat().st_ino) == (inode, meta_inode)  # left as streamed

    path = tmp_path / "t.csv"
    stream = store.CsvStream(path, ENV)
    for row in rows():
        stream.append(row)
    inode, meta_inode = path.stat().st_ino, store.sidecar(path).stat().st_ino
    final = [dataclasses.replace(rows()[0], instructions=1234), rows()[1]]  # as the valgrind pass fills them in
    stream.finish(final, {**ENV, "valgrind": "3.22"})
    assert path.stat().st_ino != inode and store.sidecar(path).stat().st_ino != meta_inode
    loaded = store.load(path)
    assert loaded.results == final and loaded.results[0].instructions == 1234
    assert loaded.env == {**ENV, "valgrind": "3.22"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.csv.meta.json", "t.csv", "t.csv.meta.json"]


# ---------------------------------------------------------------- one writer per output


def test_output_lock_refuses_a_second_holder_and_removes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    first = store.OutputLock(path)
    first.acquire()
    assert first.lock_path == tmp_path / ".r.csv.lock"
    assert first.lock_path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(OutputLockedError, match=f"another attnbench run \\(pid {os.getpid()}\\) is writing it"):
        store.OutputLock(path).acquire()
    first.release()
    first.release()  # a no-op when not held
    assert not first.lock_path.exists()
    second = store.OutputLock(path)
    second.acquire()
    second.release()
    assert list(tmp_path.iterdir()) == []


def test_an_output_another_run_is_writing_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.csv"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from attnbench.store import OutputLock; "
            "OutputLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
            str(path),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(capsys, "profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "-o", str(path))
        assert code == 2 and f"another attnbench run (pid {holder.pid}) is writing it" in err
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run_cli(capsys, "profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "-o", str(path))
    assert code == 0, err  # the kernel let go of a dead holder's lock
    assert len(store.load(path).results) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.meta.json"]  # no lock file left


def test_sigterm_stops_like_ctrl_c_keeping_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.counts as counts

    real = counts.count

    def terminate(module: Any, case: Case, *args: Any, **kwargs: Any) -> Any:
        if case.height == 16:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this sleep
        return real(module, case, *args, **kwargs)

    monkeypatch.setattr(counts, "count", terminate)
    path = tmp_path / "r.csv"
    argv = "profile lka --dim 16 --res 8 --res 16 --res 32".split()
    code, _, err = run_cli(capsys, *argv, *COUNTS, "-o", str(path))
    assert code == 143
    assert "attnbench: terminated (SIGTERM): 1 completed row(s) kept" in err
    assert [r.height for r in store.load(path).results] == [8]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() restores the default handler


def test_a_json_value_is_checked_against_its_columns_type() -> None:
    _typed = store._typed  # the one checker every JSON row goes through
    assert _typed("latency_median_s", 1) == 1.0 and isinstance(_typed("latency_median_s", 1), float)
    assert _typed("latency_median_s", None) is None  # a number not measured
    with pytest.raises(ValueError, match=r"^column latency_median_s: True is not of the column's type$"):
        _typed("latency_median_s", True)  # a bool is an int to Python, not a latency
    with pytest.raises(ValueError, match=r"^column module is null$"):
        _typed("module", None)
