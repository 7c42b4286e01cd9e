"""`profile` and `compare` end to end: counts and every report format, refused and failing cases, Ctrl-C, the
progress a log gets, the gate's verdict and exit codes, shards, and the generated scenario options at work."""

from __future__ import annotations

import dataclasses
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from attnbench import counts, runner, store
from attnbench import results as R
from attnbench.cli import app as A
from attnbench.cli.run import Progress, Sinks, progress_line
from attnbench.results import Case, Result, Scenario
from attnbench.runner import RunOutcome
from attnbench.sink import PREPARE, TIME
from tests.conftest import run_cli as run
from tests.samples import markdown_tables, parse_rich

COUNTS = ["--metrics", "params,macs", "--quiet"]
#: A timed case that takes a few hundredths of a second: enough to have a latency, not to measure one well.
TIMED = ["--metrics", "params,latency", "--max-run-time", "0.02", "--warmup", "0"]


def test_profile_counts_and_writes_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outs = [tmp_path / f"r.{s}" for s in ("csv", "md", "json")]
    code, out, err = run(
        capsys,
        *"profile lka mhsa --dim 32 --res 8 --res 8x16 --metrics params,macs --quiet".split(),
        *[a for p in outs for a in ("-o", str(p))],
    )
    assert code == 0, err
    loaded = store.load(outs[0])
    assert len(loaded.results) == 4 and all(r.ok for r in loaded.results)
    lka = next(r for r in loaded.results if r.module == "lka" and r.width == 16)
    assert lka.macs_attnbench == lka.macs_formula
    # FLOPs are the counter's: 2 per multiply-add, 1 for each product of LKA's u * attn gate (C x H x W of them).
    assert lka.flops_attnbench == 2 * lka.macs_attnbench - 32 * 8 * 16
    assert json.loads(outs[2].read_text())["schema"] == store.SCHEMA_VERSION
    assert store.load(outs[2]).results == loaded.results
    md = outs[1].read_text()
    assert "| lka |" in md and "MACs" in md and "one multiply-add = 1 MAC = 2 FLOPs" in md
    assert "MACs" in out and "Params" in out
    assert [line for line in err.splitlines() if line.startswith("wrote ")] == [f"wrote {p}" for p in outs]
    assert {r.backend for r in loaded.results} == {R.NO_BACKEND}  # counted only: nothing ran the module


def test_an_upper_case_suffix_is_its_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv, md = tmp_path / "R.CSV", tmp_path / "R.MD"
    code, _, err = run(capsys, "profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "-o", str(csv), "-o", str(md))
    assert code == 0, err
    assert [r.module for r in store.load(csv).results] == ["lka"]
    assert md.read_text().startswith("# attnbench profile\n")
    code, out, err = run(capsys, "report", str(csv))  # and reads back as a report
    assert code == 0 and "lka" in out, err


def test_sweep_with_some_invalid_cases_keeps_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.csv"
    code, _, err = run(
        capsys,
        *"profile clo --dim 32 --res 14 --res 16 --metrics params,macs -o".split(),
        str(path),
        "--quiet",
    )
    rows = store.load(path).results
    assert [r.status for r in rows] == [R.INVALID, R.OK]
    assert "window_size" in rows[0].reason
    assert code == 0  # refused-by-design cases are reported, not failures
    assert f"clo C=32 14x14 B=1 none: invalid: {rows[0].reason}" in " ".join(err.split())


def test_every_case_refused_ends_like_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "profile", "lka", "--dim", "16", "--res", "8", "--channels-last", *TIMED, "-q")
    assert code == 0, err  # lka is an image module: channels_last applies
    code, _, err = run(capsys, "profile", "mhsa", "--dim", "16", "--res", "8", "--channels-last", *TIMED, "-q")
    lines = [line for line in err.splitlines() if line.startswith("attnbench: error:")]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("attnbench: error: every case was refused; first: mhsa C=16 8x8 B=1 cpu channels_last")
    assert "tokens (B, N, C)" in lines[0]


def _failing_at(height: int, exc: BaseException) -> Any:
    """counts.count that raises `exc` for cases of this height."""
    real = counts.count

    def count(module: Any, case: Case, *args: Any, **kwargs: Any) -> Any:
        if case.height == height:
            raise exc
        return real(module, case, *args, **kwargs)

    return count


def test_failing_case_is_a_row_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(counts, "count", _failing_at(8, RuntimeError("simulated fault")))
    path = tmp_path / "r.csv"
    code, _, err = run(
        capsys,
        *"profile lka --dim 16 --res 8 --res 16 --metrics params,macs -o".split(),
        str(path),
        "--quiet",
    )
    rows = store.load(path).results
    assert code == 1
    assert [r.status for r in rows] == [R.FAILED, R.OK]
    assert "simulated fault" in rows[0].reason and "simulated fault" in err
    assert "lka C=16 8x8 B=1 none: failed: RuntimeError: simulated fault" in err.splitlines()


def test_interrupt_keeps_finished_rows_in_valid_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(counts, "count", _failing_at(16, KeyboardInterrupt()))
    csv_path, json_path, md_path = tmp_path / "r.csv", tmp_path / "r.json", tmp_path / "r.md"
    code, _, err = run(
        capsys,
        *"profile lka --dim 16 --res 8 --res 16 --res 32 --metrics params,macs -o".split(),
        str(csv_path),
        "-o",
        str(json_path),
        "-o",
        str(md_path),
        "--quiet",
    )
    assert code == 130 and "interrupted" in err
    assert "attnbench: interrupted: 1 completed row(s) kept" in err.splitlines()
    assert [r.height for r in store.load(csv_path).results] == [8]
    assert [r.height for r in store.load(json_path).results] == [8]
    text = md_path.read_text()
    assert text.startswith("# ")
    rows = markdown_tables(text)[0][1:]
    assert [row[:3] for row in rows] == [["lka", "16", "8x8"]]
    assert "## Environment" in text


def test_a_log_gets_one_line_per_finished_case(capsys: pytest.CaptureFixture[str]) -> None:
    # capsys's stderr is not a terminal, as in CI: no bar, one plain line per case as it finishes.
    code, _, err = run(
        capsys, *"profile lka --dim 16 --res 8 --res 12 --metrics params,latency --max-run-time 0.02".split()
    )
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("attnbench: [")]
    assert len(lines) == 2
    assert lines[0].startswith("attnbench: [1/2] lka C=16 8x8 B=1 cpu: ok in ")
    # Where the time went: the stages that took 0.1 s or more, if any (the rotation's rounds are every case's;
    # test_a_log_line_says_where_the_time_went names them on a known clock).
    assert re.fullmatch(r"attnbench: \[1/2\] lka C=16 8x8 B=1 cpu: ok in \d+\.\d s( \(.+ \d+\.\d s\))?", lines[0])
    assert lines[1].startswith("attnbench: [2/2] lka C=16 12x12 B=1 cpu: ok in ")
    code, _, err = run(capsys, *"profile lka --dim 16 --res 8 --metrics params,latency --max-run-time 0.02 -q".split())
    assert code == 0 and "attnbench: [" not in err


def test_progress_line() -> None:
    row = Result.for_case(Case("sk", 64, 28, 28, kwargs=(("kernels", (3, 5)),)), seconds=1.234)
    assert progress_line(row, 3, 58) == '[3/58] sk C=64 28x28 B=1 cpu {"kernels": [3, 5]}: ok in 1.2 s'
    failed = Result.for_case(Case("lka", 16, 8, 8, scenario=Scenario(dtype="bfloat16", threads=2)), status=R.OOM)
    assert progress_line(failed, 1, 1) == "[1/1] lka C=16 8x8 B=1 cpu bfloat16 t=2: oom"
    # The case's own 1.2 s and its geometry's counting and building; the slow stages named, the short ones unsaid.
    stages = {"counting": 0.02, "building": 0.5, "export, session, parity": 0.8}
    assert progress_line(row, 3, 58, stages).endswith(": ok in 1.8 s (building 0.5 s, export, session, parity 0.8 s)")


def test_a_log_line_says_where_the_time_went(capsys: pytest.CaptureFixture[str]) -> None:
    # Counting 0.05 s (too short to say), exporting 2.8 s, timing 0.5 s.
    clock = iter([0.0, 0.05, 0.05, 2.85, 2.85, 3.35])
    progress = Progress(measures=True, quiet=False)
    progress.clock = lambda: next(clock)
    case = Case("lka", 16, 8, 8, backend="ort")
    progress.start({}, [case])
    for stage in ("counting", "exporting", "timing"):
        progress.stage(case, stage)
    progress.row(Result.for_case(case, seconds=3.35))
    line = "attnbench: [1/1] lka C=16 8x8 B=1 ort: ok in 3.4 s (exporting 2.8 s, timing 0.5 s)"
    assert capsys.readouterr().err == line + "\n"


def test_progress_counts_cases_or_counted_geometries(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        Case("lka", 16, 8, 8, backend=b, scenario=Scenario(mode=m)) for b in ("cpu", "ort") for m in ("infer", "train")
    ]
    measuring = Progress(measures=True, quiet=False)
    measuring.start({}, cases)
    assert measuring.total == 4
    counting = Progress(measures=False, quiet=False)
    counting.start({}, cases)
    assert counting.total == 2  # one row per geometry and mode when nothing is timed
    counting.row(Result.for_case(dataclasses.replace(cases[0], backend="none"), seconds=0.04))
    counting.status("counting instructions of 2 case(s) under valgrind (one process)")
    counting.finish(RunOutcome())
    assert capsys.readouterr().err.splitlines() == [
        "attnbench: [1/2] lka C=16 8x8 B=1 none: ok in 0.0 s",
        "attnbench: counting instructions of 2 case(s) under valgrind (one process)",
    ]


def test_a_quiet_progress_says_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(measures=True, quiet=True)
    case = Case("lka", 16, 8, 8)
    progress.start({}, [case])
    progress.stage(case, "measuring")
    progress.row(Result.for_case(case))
    progress.status("anything")
    progress.finish(RunOutcome())
    assert capsys.readouterr() == ("", "") and progress.done == 1


def test_a_terminal_gets_a_bar_that_names_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(A.consoles, "err", Console(file=err, force_terminal=True, width=100))
    progress = Progress(measures=True, quiet=False)
    case = Case("lka", 16, 8, 8, backend="ort")
    progress.start({}, [case])
    assert progress._bar is not None
    progress.stage(case, "counting")  # the geometry's: no backend named
    assert progress._bar.tasks[0].description == "lka C=16 8x8 B=1: counting"
    progress.stage(case, "exporting")
    assert progress._bar.tasks[0].description == "lka C=16 8x8 B=1 ort: exporting"
    progress.phase(PREPARE, [case], "2 worker process(es)")
    progress.stage(case, "preparing")
    assert progress._bar.tasks[0].description == "[1/2 prepare] lka C=16 8x8 B=1 ort: preparing"
    progress.phase(TIME, [case], "interleaved")
    assert progress._bar.tasks[0].description == "[2/2 time] timing 1 case(s) alone"
    progress.rotation(2, 1)
    assert progress._bar.tasks[0].description == "[2/2 time] round 3: 1 case(s) taking turns"
    progress.row(Result.for_case(case))
    assert progress._bar.tasks[0].completed == 1
    progress.finish(RunOutcome())
    assert progress._bar is None
    assert "[1/1]" not in err.getvalue()  # no log line on a terminal: the bar shows it


def test_sinks_hand_every_event_to_each_sink_in_order() -> None:
    heard: list[tuple[str, str]] = []

    class Ear(runner.Sink):
        """A sink that notes what it hears, under its name."""

        def __init__(self, name: str) -> None:
            self.name = name

        def start(self, env: Any, cases: Any) -> None:
            heard.append((self.name, "start"))

        def stage(self, case: Case, stage: str) -> None:
            heard.append((self.name, stage))

        def row(self, row: Result) -> None:
            heard.append((self.name, "row"))

        def status(self, message: str) -> None:
            heard.append((self.name, message))

        def finish(self, outcome: RunOutcome) -> None:
            heard.append((self.name, "finish"))

    sinks = Sinks([Ear("a"), Ear("b")])
    case = Case("lka", 16, 8, 8)
    sinks.start({}, [case])
    sinks.stage(case, "counting")
    sinks.row(Result.for_case(case))
    sinks.status("note")
    sinks.finish(RunOutcome())
    assert heard == [(n, e) for e in ("start", "counting", "row", "note", "finish") for n in ("a", "b")]


# ---------------------------------------------------------------- the gate


def test_gate_that_compares_nothing_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.csv"
    run(capsys, "profile", "lka", "--dim", "16", "--res", "8", "--metrics", "params,macs", "-o", str(base), "--quiet")
    code, out, err = run(
        capsys,
        *"compare lka --dim 16 --res 16 --metrics params,macs --baseline".split(),
        str(base),
        "--quiet",
    )
    assert code == 2 and "no case of this run is in the baseline" in err
    assert "(it holds C=16 8x8 B=1); run with the baseline's settings" in err
    assert "PASSED" not in out + err
    code, out, err = run(
        capsys,
        *"compare lka --dim 16 --res 8 --metrics params,macs --baseline".split(),
        str(base),
        "--quiet",
    )
    assert code == 0 and "1 case(s) compared" in out, err
    assert "gate: PASSED: 1 case(s) compared, 0 row(s) judged on wall, 0 failing change(s)" in out


def test_a_count_change_fails_the_gate_and_shows_the_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.csv"
    args = ["lka", "--dim", "16", "--res", "8", *COUNTS]
    assert run(capsys, "profile", *args, "-o", str(base))[0] == 0
    loaded = store.load(base)
    (row,) = loaded.results
    store.write_csv(base, [dataclasses.replace(row, params=row.params - 1)], loaded.env)
    code, out, _ = run(capsys, "compare", *args, "--baseline", str(base))
    assert code == 1
    assert "Changes against the baseline" in out
    assert f"params {row.params - 1:,} -> {row.params:,} (+1)" in out
    assert "gate: FAILED: 1 case(s) compared, 0 row(s) judged on wall, 1 failing change(s)" in out


def test_instruction_gate_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnbench import instructions

    counts = {"now": 1_000_000}

    def fake_run(self: instructions.InstructionBatch, **_: object) -> list[instructions.InstructionCount]:
        return [instructions.InstructionCount(counts["now"]) for _ in range(len(self))]

    monkeypatch.setattr(instructions, "check_available", lambda: "3.19.0")
    monkeypatch.setattr(instructions.InstructionBatch, "run", fake_run)
    base = tmp_path / "base.csv"
    args = "compare lka --dim 16 --res 8 --backend cpu --metrics params,macs --gate-metric instructions -q".split()
    assert run(capsys, *args, "-o", str(base))[0] == 0
    (written,) = store.load(base).results
    assert written.instructions == 1_000_000 and written.latency_median_s is None
    assert run(capsys, *args, "--baseline", str(base))[0] == 0
    counts["now"] = 1_250_000
    code, out, _ = run(capsys, *args, "--baseline", str(base))
    assert code == 1 and "gate: FAILED" in out and "+25.00%" in out and "lka C=16 8x8" in out
    assert "1 row(s) judged on instructions" in out
    # A wall-time baseline (no counts) cannot gate on instructions: refused before measuring.
    wall = tmp_path / "wall.csv"
    run(capsys, *"compare lka --dim 16 --res 8 --backend cpu --metrics params -q -o".split(), str(wall))
    code, _, err = run(capsys, *args, "--baseline", str(wall))
    assert code == 2 and "holds no instruction counts" in err


# ---------------------------------------------------------------- shards


def test_empty_shard_says_so_and_writes_empty_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.csv"
    argv = [*"profile lka --dim 16 --res 8 --metrics params,macs --shard 2/2 --quiet -o".split(), str(out)]
    code, _stdout, err = run(capsys, *argv)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0] == (
        "attnbench: shard 2/2 has no cases: the sweep has 1 geometry, fewer than 2 shards; wrote empty reports"
    )
    assert lines[1:] == [f"wrote {out}"]
    loaded = store.load(out)
    assert loaded.results == [] and loaded.env["shard"] == "2/2"


def test_a_shard_of_only_invalid_cases_is_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # clo at 14x14 is refused by its window rule, 16x16 runs: two geometries, one per shard.
    base = "profile clo --dim 32 --res 14 --res 16 --metrics params,macs --quiet".split()
    results = [run(capsys, *base, "--shard", f"{k}/2") for k in (1, 2)]
    assert sorted(code for code, _, _ in results) == [0, 0], results
    assert sum("invalid" in out for _, out, _ in results) == 1


def test_a_shard_holds_its_part_of_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parts = []
    for k in (1, 2):
        path = tmp_path / f"s{k}.csv"
        argv = ["profile", "lka", "--dim", "16", "--res", "8", "--res", "16", *COUNTS, "--shard", f"{k}/2"]
        assert run(capsys, *argv, "-o", str(path))[0] == 0
        loaded = store.load(path)
        assert loaded.env["shard"] == f"{k}/2" and loaded.env["sweep"]["resolutions"] == [[8, 8], [16, 16]]
        parts.append([r.height for r in loaded.results])
    assert sorted(parts) == [[8], [16]]  # disjoint, and together the whole sweep


# ---------------------------------------------------------------- the scenario options at work


def test_autocast_and_warmup_reach_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnbench import timing

    warmups: list[float] = []
    real = timing.warm_up

    def warm_up(fn: Any, min_calls: int, min_s: float, *args: Any) -> Any:
        warmups.append(min_s)
        return real(fn, min_calls, min_s, *args)

    monkeypatch.setattr(timing, "warm_up", warm_up)
    path = tmp_path / "r.csv"
    argv = ["profile", "lka", "--dim", "16", "--res", "8", "--metrics", "params,latency", "--max-run-time", "0.02"]
    code, _, err = run(capsys, *argv, "--warmup", "0.01", "--autocast", "bf16", "-o", str(path))
    assert code == 0, err
    (row,) = store.load(path).results
    # The headline timing in this process warmed up for the seconds asked: its first (cold) call, then the rest.
    assert row.latency_first_s is not None and warmups == [pytest.approx(0.01 - row.latency_first_s)]
    assert row.ok and row.scenario == Scenario(autocast="bfloat16") and row.latency_median_s
    assert row.label == "lka C=16 8x8 B=1 cpu autocast=bfloat16"
    progress = [line for line in err.splitlines() if line.startswith("attnbench: [")]
    assert len(progress) == 1 and progress[0].startswith("attnbench: [1/1] lka C=16 8x8 B=1 cpu autocast=bfloat16: ok")


def test_a_swept_scenario_field_is_a_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md, csv = tmp_path / "r.md", tmp_path / "r.csv"
    argv = ["profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "--mode", "infer", "--mode", "train"]
    code, out, err = run(capsys, *argv, "-o", str(md), "-o", str(csv))
    assert code == 0, err
    infer, train = store.load(csv).results
    assert (infer.scenario.mode, train.scenario.mode) == ("infer", "train")
    assert train.macs_attnbench > 2 * infer.macs_attnbench  # forward + backward
    header, *rows = markdown_tables(md.read_text())[0]
    assert header[3] == "mode" and [r[3] for r in rows] == ["infer", "train"]
    assert "\nScenario: float32, 1 thread, contiguous, eager, pinned allocator.\n" in md.read_text()
    headers, cells = parse_rich(out)
    assert headers[3] == "mode" and [c[3] for c in cells] == ["infer", "train"]


@pytest.mark.onnx
@pytest.mark.slow
def test_ort_parity_column_and_opt_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv, md = tmp_path / "r.csv", tmp_path / "r.md"
    argv = ["profile", "lka", "--dim", "16", "--res", "8", "--backend", "cpu", "--backend", "ort", *TIMED, "-q"]
    code, out, err = run(capsys, *argv, "--ort-opt-level", "basic", "-o", str(csv), "-o", str(md))
    assert code == 0, err
    cpu, ort = store.load(csv).results
    assert (cpu.backend, cpu.scenario.ort_opt_level) == ("cpu", "all")  # the CPU backend ignores it
    assert (ort.backend, ort.scenario.ort_opt_level) == ("ort", "basic")
    assert ort.parity_max_abs is not None and ort.parity_max_abs < 1e-4 and cpu.parity_max_abs is None
    assert json.loads(ort.extra)["ort_graph_optimization_level"] == "ORT_ENABLE_BASIC"
    header, *rows = markdown_tables(md.read_text())[0]
    assert "ORT max|Δ|" in header and "compiled max|Δ|" not in header
    parity = [r[header.index("ORT max|Δ|")] for r in rows]
    assert f"{ort.parity_max_abs:.1e}" in parity
    assert "ORT max|Δ|" in out


def test_help_shows_each_commands_defaults(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one option a line
    _, compare, _ = run(capsys, "compare", "--help")
    _, profile, _ = run(capsys, "profile", "--help")
    _, report, _ = run(capsys, "report", "--help")
    for text in ("[default: 14, 28, 56]", "[default: cpu, ort]", "[default: macs]", "[default: 64]", "[default: 0.5]"):
        assert text in compare, text
    for text in ("[default: 56]", "[default: cpu]", "[default: as measured]", "[default: 64]"):
        assert text in profile, text
    assert "[default: macs]" in report  # report sorts as compare does


def test_html_report_is_written_with_the_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page, csv = tmp_path / "r.html", tmp_path / "r.csv"
    argv = [*"profile lka --dim 16 --res 8 --res 16 --metrics params,macs -q -o".split(), str(page), "-o", str(csv)]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and f"wrote {page}" in err
    assert text.count('<tr data-module="lka"') == len(store.load(csv).results) == 2
    # The header's command line is the one that measured the rows (recorded in the environment).
    assert html.escape(store.load(csv).env["command"]) in text
