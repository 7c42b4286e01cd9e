"""Merged reports: shards merge into the unsharded run, machines side by side, duplicates refused or resolved."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench import merge, store
from attnbench import results as R
from attnbench.env import machine_label, short_model
from attnbench.report.markdown import markdown
from attnbench.report.summary import cross_hardware
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
#: A sweep of 9 geometries, counted only (the test is about identity, not timing).
SHARDED = "compare lka mhsa ea --dim 16 --res 8 --res 16 --res 32 --metrics params,macs --counters attnbench --quiet"
#: A CPU no test host has: a real model name (an EPYC 7763 is a common CI runner) could be the host's own.
OTHER_CPU = "Imaginary Other 9999"


def _cli(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "attnbench.cli", *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _table_rows(md: str) -> list[str]:
    """The first table of a Markdown report (its header and rows)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Module"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


@pytest.mark.slow
def test_three_shard_processes_merge_into_the_unsharded_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    procs = [_cli(*SHARDED.split(), "--shard", f"{k}/3", "-o", str(tmp_path / f"shard-{k}.csv")) for k in (1, 2, 3)]
    code, _, err = run_cli(
        capsys, *SHARDED.split(), "-o", str(tmp_path / "whole.csv"), "-o", str(tmp_path / "whole.md")
    )
    assert code == 0, err
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    shards = [store.load(tmp_path / f"shard-{k}.csv").results for k in (1, 2, 3)]
    assert all(shards) and sum(map(len, shards)) == 9  # three non-empty parts, one row per geometry

    merged_md = tmp_path / "merged.md"
    code, _, err = run_cli(
        capsys,
        "report",
        str(tmp_path / "shard-*.csv"),
        "--sort",
        "macs",
        "-o",
        str(tmp_path / "m.csv"),
        "-o",
        str(merged_md),
    )
    assert code == 0, err
    merged, whole = store.load(tmp_path / "m.csv").results, store.load(tmp_path / "whole.csv").results
    # Row for row: the same cases in the same order with the same counts; only the wall time differs.
    assert [r.key for r in merged] == [r.key for r in whole]
    # Wall times differ between runs; so do the seconds each counter and the build took.
    drop = dict.fromkeys(("seconds", "build_s", "count_s_attnbench", "count_s_fvcore", "count_s_thop"))
    assert [dataclasses.replace(r, **drop) for r in merged] == [dataclasses.replace(r, **drop) for r in whole]
    assert {r.machine for r in merged} == {machine_label()}
    assert _table_rows(merged_md.read_text()) == _table_rows((tmp_path / "whole.md").read_text())


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real measured run (CSV + sidecar + JSON) on this machine."""
    from attnbench.cli import main

    out = tmp_path_factory.mktemp("measured")
    argv = "profile lka --dim 16 --res 8 --res 16 --counters attnbench --min-run-time 0.01 --quiet".split()
    assert main([*argv, "-o", str(out / "a.csv"), "-o", str(out / "a.json")]) == 0
    return out


def _other_machine(
    src: Path, dst: Path, cpu: str = OTHER_CPU, date: str = "2026-01-01T00:00:00+00:00", scale=0.5
) -> None:
    """Copy a CSV report as if an older attnbench had measured it on another machine (no row labels)."""
    meta = json.loads(store.sidecar(src).read_text())
    meta["env"].update(cpu_model=cpu, date_utc=date)
    meta["env"].pop("machine", None)
    store.sidecar(dst).write_text(json.dumps(meta))
    rows = list(csv.reader(src.open()))
    head = rows[0]
    for row in rows[1:]:
        row[head.index("machine")] = ""
        latency = row[head.index("latency_median_s")]
        row[head.index("latency_median_s")] = repr(float(latency) * scale)
    with dst.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def test_rows_name_their_machine_in_the_file_and_its_env(measured: Path) -> None:
    loaded = store.load(measured / "a.csv")
    assert {r.machine for r in loaded.results} == {machine_label()} == {loaded.env["machine"]}


def test_two_environments_merge_into_a_cross_hardware_table(
    measured: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _other_machine(measured / "a.csv", tmp_path / "b.csv")
    md, js = tmp_path / "m.md", tmp_path / "m.json"
    code, out, err = run_cli(
        capsys, "report", str(measured / "a.csv"), str(tmp_path / "b.csv"), "-o", str(md), "-o", str(js)
    )
    assert code == 0, err
    here, there = machine_label(), f"Imaginary Other 9999, torch {store.load(measured / 'a.csv').env['torch']}"
    assert there in machine_label({**store.load(tmp_path / "b.csv").env})
    text = md.read_text()
    legend = text[text.index("## Machines") : text.index("## Across machines")]
    assert f"| M1 | {here} |" in legend and "| M2 | Imaginary Other 9999, torch" in legend
    # The main table names machines by alias (the labels are long), one row per machine and case; sorted by MACs,
    # as `report` sorts, so each case's machines stand together.
    assert [row.split(" | ")[3] for row in _table_rows(text)[2:]] == ["M1", "M2", "M1", "M2"]
    table = _table_rows(text[text.index("## Across machines") :])
    # One time unit for both machines, picked from the values (these tiny cases run in microseconds).
    assert re.fullmatch(r"\| Module \| C \| H x W \| backend \| M1 \[(µs|ms)\] \| M2 \[\1\] \| M2÷M1 \|", table[0])
    assert len(table) == 2 + 2 and all(row.endswith("| 0.50 |") for row in table[2:])
    assert (
        "### M1: " in text and "### M2: Imaginary Other 9999" in text and OTHER_CPU in text
    )  # each machine's environment
    env = json.loads(js.read_text())["env"]
    assert list(env["machines"]) == [here, machine_label(store.load(tmp_path / "b.csv").env)]
    assert env["machines"][here]["cpu_model"] != OTHER_CPU and [s["rows"] for s in env["merged_from"]] == [2, 2]
    assert re.search(r"Across machines: median latency \[(µs|ms)\]", out) and "M2÷M1" in out
    assert f"M1 = {here}" in out.splitlines() and there in out


def test_cross_hardware_ratio_is_each_machine_over_the_first(measured: Path, tmp_path: Path) -> None:
    _other_machine(measured / "a.csv", tmp_path / "b.csv", scale=3.0)
    loaded = merge.merge([store.load(measured / "a.csv"), store.load(tmp_path / "b.csv")])
    frame, machines = cross_hardware(loaded.results)
    assert [m.alias for m in machines] == ["M1", "M2"]
    assert frame["ratio_M2"].tolist() == pytest.approx([3.0, 3.0])
    assert (frame["latency_M2_s"] / frame["latency_M1_s"]).tolist() == pytest.approx([3.0, 3.0])


def test_one_machine_has_no_cross_hardware_section(measured: Path) -> None:
    loaded = store.load(measured / "a.csv")
    assert "Across machines" not in markdown(loaded.results, loaded.env)


def test_same_case_twice_on_one_machine_is_an_error(
    measured: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "again.csv"
    copy.write_text((measured / "a.csv").read_text())
    store.sidecar(copy).write_text(store.sidecar(measured / "a.csv").read_text())
    code, _, err = run_cli(capsys, "report", str(measured / "a.csv"), str(copy))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("attnbench: error: lka C=16 8x8 B=1 cpu on machine")
    assert "pass --latest" in lines[0]


@pytest.mark.parametrize(
    ("date", "winner"), [("2099-01-01T00:00:00+00:00", "copy"), ("2000-01-01T00:00:00+00:00", "a")]
)
def test_latest_keeps_the_newest_file_s_row(measured: Path, tmp_path: Path, date: str, winner: str) -> None:
    copy = tmp_path / "copy.csv"
    _other_machine(measured / "a.csv", copy, cpu=store.load(measured / "a.csv").env["cpu_model"], date=date, scale=2.0)
    a = store.load(measured / "a.csv")
    merged = merge.merge([a, store.load(copy)], latest=True).results
    assert len(merged) == 2 and len({r.machine for r in merged}) == 1
    expected = [r.latency_median_s * (2.0 if winner == "copy" else 1.0) for r in a.results]
    assert [r.latency_median_s for r in merged] == pytest.approx(expected)


def test_label_names_unlabelled_rows_only(measured: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _other_machine(measured / "a.csv", tmp_path / "b.csv")
    out = tmp_path / "m.csv"
    code, _, err = run_cli(
        capsys, "report", str(measured / "a.csv"), str(tmp_path / "b.csv"), "--label", "laptop", "-o", str(out)
    )
    assert code == 0, err
    assert [r.machine for r in store.load(out).results] == [machine_label()] * 2 + ["laptop"] * 2


def test_profile_label_overrides_the_machine(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.csv"
    code, _, err = run_cli(
        capsys, *"profile lka --dim 16 --res 8 --metrics params --quiet --label".split(), " ci  a100 ", "-o", str(out)
    )
    assert code == 0, err
    loaded = store.load(out)
    assert [r.machine for r in loaded.results] == ["ci a100"] and loaded.env["machine"] == "ci a100"


def test_old_files_take_their_label_from_their_environment() -> None:
    # attnbench 0.1's reference run (results/compare-cpu.csv of 2026-11-22), kept as written: schema 1, no
    # machine column.
    legacy = store.load(ROOT / "tests" / "fixtures" / "schema1-compare-cpu.csv")
    rows = merge.merge([legacy]).results
    assert {r.machine for r in rows} == {f"Xeon, torch {legacy.env['torch']}, ort {legacy.env['onnxruntime']}"}


def test_a_csv_without_environment_is_its_own_machine(measured: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.csv"
    _other_machine(measured / "a.csv", bare)
    store.sidecar(bare).unlink()
    assert {r.machine for r in merge.merge([store.load(bare)]).results} == {"unknown machine (bare.csv)"}


def test_globs_skip_sidecars_and_other_files(measured: Path, tmp_path: Path) -> None:
    for name in ("x.csv", "y.csv"):
        _other_machine(measured / "a.csv", tmp_path / name)
    (tmp_path / "x.md").write_text("# not a report")
    assert [p.name for p in merge.expand([str(tmp_path / "*")])] == ["x.csv", "y.csv"]
    # A shell's expansion of `dir/*` names sidecars too: they go with their CSV.
    named = [str(tmp_path / n) for n in ("x.csv", "x.csv.meta.json", "y.csv")]
    assert [p.name for p in merge.expand(named)] == ["x.csv", "y.csv"]
    assert [p.name for p in merge.expand([str(tmp_path / "x.csv"), str(tmp_path / "?.csv")])] == ["x.csv", "y.csv"]


def test_merged_files_merge_again(measured: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _other_machine(measured / "a.csv", tmp_path / "b.csv")
    code, _, err = run_cli(
        capsys, "report", str(measured / "a.csv"), str(tmp_path / "b.csv"), "-o", str(tmp_path / "m.json")
    )
    assert code == 0, err
    _other_machine(measured / "a.csv", tmp_path / "c.csv", cpu="Apple M2")
    again = merge.merge([store.load(tmp_path / "m.json"), store.load(tmp_path / "c.csv")])
    # The first machine is this host, whatever its CPU; the others are the files' made-up ones.
    assert [m.label.split(",")[0] for m in merge.machines(again.results, again.env)] == [
        machine_label().split(",")[0],
        "Imaginary Other 9999",
        "Apple M2",
    ]
    assert again.env["machines"][machine_label()]["cpu_model"] == store.load(measured / "a.csv").env["cpu_model"]


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "Xeon Platinum 8375C"),
        ("AMD EPYC 7763 64-Core Processor", "EPYC 7763"),
        ("Intel(R) Core(TM) i7-10750H CPU @ 2.60GHz", "Core i7-10750H"),
        ("Intel(R) Xeon(R) Processor", "Xeon"),
        ("aarch64", "aarch64"),
    ],
)
def test_cpu_model_is_shortened(name: str, short: str) -> None:
    assert short_model(name) == short


def test_gpu_machines_are_labelled_by_gpu_and_cpu() -> None:
    env = {
        "gpu": "NVIDIA H100 80GB HBM3",
        "cpu_model": "AMD EPYC 7763 64-Core Processor",
        "torch": "2.13.0+cu128",
        "onnxruntime": "1.22.0",
    }
    assert machine_label(env) == "H100 80GB HBM3 + EPYC 7763, torch 2.13.0+cu128, ort 1.22.0"
    assert (
        machine_label({"cpu_model": "AMD EPYC 7763 64-Core Processor", "torch": "2.13.0"}) == "EPYC 7763, torch 2.13.0"
    )


def test_plan_order_follows_the_sweep_record_else_zoo_and_ascending_values() -> None:
    def row(module: str, res: int, backend: str, dim: int = 16) -> R.Result:
        return R.Result(module, dim, res, res, 1, backend, "", machine="m")

    rows = [row("lka", 56, "ort"), row("lka", 8, "cpu"), row("acmix", 56, "cpu", 32), row("acmix", 8, "cpu")]
    plain = merge.plan_order(rows, ["m"])  # no record: zoo order (acmix first), ascending C and H x W
    assert [(r.module, r.dim, r.height, r.backend) for r in plain] == [
        ("acmix", 16, 8, "cpu"),
        ("acmix", 32, 56, "cpu"),
        ("lka", 16, 8, "cpu"),
        ("lka", 16, 56, "ort"),
    ]
    record = {
        "modules": ["lka", "acmix"],
        "dims": [32, 16],
        "resolutions": [[56, 56], [8, 8]],
        "backends": ["ort", "cpu"],
    }
    planned = merge.plan_order(rows, ["m"], record)
    assert [(r.module, r.dim, r.height, r.backend) for r in planned] == [
        ("lka", 16, 56, "ort"),
        ("lka", 16, 8, "cpu"),
        ("acmix", 32, 56, "cpu"),
        ("acmix", 16, 8, "cpu"),
    ]


def test_plots_draw_one_line_style_per_machine(measured: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.report.plots import machine_styles, scaling_figures
    from attnbench.report.summary import summary

    _other_machine(measured / "a.csv", tmp_path / "b.csv")
    rows = merge.merge([store.load(measured / "a.csv"), store.load(tmp_path / "b.csv")]).results
    assert list(machine_styles(summary(rows)).values()) == ["-", "--"]
    assert machine_styles(summary(store.load(measured / "a.csv").results)) == {}
    latency = next(p.figure for p in scaling_figures(rows) if p.name == "latency_cpu.png")
    lines = latency.axes[0].get_lines()
    assert sorted(line.get_linestyle() for line in lines) == ["-", "--"]
    assert len({line.get_color() for line in lines}) == 1  # one module: one colour on both machines


@pytest.mark.parametrize(
    ("record", "dtypes"),
    [
        (None, ["float32", "bfloat16"]),  # no record: the order of the field's choices
        ({"scenarios": {"dtype": ["bfloat16", "float32"]}}, ["bfloat16", "float32"]),  # as the sweep gave them
        ({"dtypes": ["bfloat16", "float32"]}, ["bfloat16", "float32"]),  # attnbench 0.1 recorded them so
    ],
)
def test_plan_order_puts_scenario_fields_in_the_sweep_s_order(record: dict | None, dtypes: list[str]) -> None:
    rows = [
        R.Result("lka", 16, 8, 8, 1, backend, "", scenario=R.Scenario(dtype=dtype, mode=mode), machine="m")
        for backend in ("ort", "cpu")
        for mode in ("train", "infer")
        for dtype in ("bfloat16", "float32")
    ]
    planned = merge.plan_order(rows, ["m"], record)
    assert [(r.scenario.dtype, r.scenario.mode, r.backend) for r in planned] == [
        (dtype, mode, backend) for dtype in dtypes for mode in ("infer", "train") for backend in ("cpu", "ort")
    ]


def test_globs_match_reports_whatever_the_case_of_their_suffix(measured: Path, tmp_path: Path) -> None:
    _other_machine(measured / "a.csv", tmp_path / "X.CSV")
    (tmp_path / "y.JSON").write_text((measured / "a.json").read_text())
    assert [p.name for p in merge.expand([str(tmp_path / "*")])] == ["X.CSV", "y.JSON"]
    assert [len(store.load(p).results) for p in merge.expand([str(tmp_path / "*")])] == [2, 2]
