"""The command line: the bad-input matrix, profile/compare/report outputs, interruption, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnbench import results as R
from tests.bad_inputs import BAD_INPUTS, argv_for, prepare
from tests.conftest import run_cli as run


@pytest.mark.parametrize(("argv", "needle"), [(a, n) for _, a, n in BAD_INPUTS], ids=[i for i, _, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    prepare(str(tmp_path))
    code, out, err = run(capsys, *argv_for(argv, str(tmp_path)))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("attnbench: error:")
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in err + out
    assert not (tmp_path / "out.csv").exists(), "nothing is written for bad input"


def test_list_shows_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("acmix", "ea", "mhsa", "sk", "da", "epsa", "sam", "clo", "lka", "van"):
        assert name in out


def test_info_shows_reference_and_constraints(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", "clo")
    assert code == 0
    assert "CloFormer" in out and "window_size" in out and "qhfan/CloFormer" in out


def test_profile_counts_and_writes_every_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outs = [tmp_path / f"r.{s}" for s in ("csv", "md", "json")]
    code, out, err = run(
        capsys,
        *"profile lka mhsa --dim 32 --res 8 --res 8x16 --metrics params,macs --quiet".split(),
        *[a for p in outs for a in ("-o", str(p))],
    )
    assert code == 0, err
    loaded = R.load(outs[0])
    assert len(loaded.results) == 4 and all(r.ok for r in loaded.results)
    lka = next(r for r in loaded.results if r.module == "lka" and r.width == 16)
    assert lka.macs_attnbench == lka.macs_formula
    # FLOPs are the counter's: 2 per multiply-add, 1 for each product of LKA's u * attn gate (C x H x W of them).
    assert lka.flops_attnbench == 2 * lka.macs_attnbench - 32 * 8 * 16
    assert json.loads(outs[2].read_text())["schema"] == R.SCHEMA_VERSION
    md = outs[1].read_text()
    assert "| lka |" in md and "MACs" in md and "one multiply-add = 1 MAC = 2 FLOPs" in md
    assert "MACs" in out and "Params" in out


def test_report_rerenders_saved_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "r.csv"
    run(
        capsys,
        *"profile lka --dim 16 --res 8 --res 16 --metrics params,macs -o".split(),
        str(src),
        "--quiet",
    )
    md = tmp_path / "again.md"
    code, out, err = run(capsys, "report", str(src), "-o", str(md), "--plots", str(tmp_path / "plots"))
    assert code == 0, err
    assert "| lka |" in md.read_text()
    assert (tmp_path / "plots" / "macs.png").exists()
    assert "exp" in out  # the scaling table: two resolutions given


def test_sweep_with_some_invalid_cases_keeps_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.csv"
    code, _, _ = run(
        capsys,
        *"profile clo --dim 32 --res 14 --res 16 --metrics params,macs -o".split(),
        str(path),
        "--quiet",
    )
    rows = R.load(path).results
    assert [r.status for r in rows] == [R.INVALID, R.OK]
    assert "window_size" in rows[0].reason
    assert code == 0  # refused-by-design cases are reported, not failures


def test_failing_case_is_a_row_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.runner as runner

    real = runner._count

    def flaky(module, case, *args, **kwargs):  # type: ignore[no-untyped-def]
        if case.height == 8:
            raise RuntimeError("simulated fault")
        return real(module, case, *args, **kwargs)

    monkeypatch.setattr(runner, "_count", flaky)
    path = tmp_path / "r.csv"
    code, _, err = run(
        capsys,
        *"profile lka --dim 16 --res 8 --res 16 --metrics params,macs -o".split(),
        str(path),
        "--quiet",
    )
    rows = R.load(path).results
    assert code == 1
    assert [r.status for r in rows] == [R.FAILED, R.OK]
    assert "simulated fault" in rows[0].reason and "simulated fault" in err


def test_interrupt_keeps_finished_rows_in_valid_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.runner as runner

    real = runner._count

    def interrupt(module, case, *args, **kwargs):  # type: ignore[no-untyped-def]
        if case.height == 16:
            raise KeyboardInterrupt
        return real(module, case, *args, **kwargs)

    monkeypatch.setattr(runner, "_count", interrupt)
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
    assert [r.height for r in R.load(csv_path).results] == [8]
    assert [r.height for r in R.load(json_path).results] == [8]
    rows = _markdown_table_rows(md_path.read_text())
    assert [row[:3] for row in rows] == [["lka", "16", "8x8"]]
    assert "## Environment" in md_path.read_text()


def _markdown_table_rows(text: str) -> list[list[str]]:
    """The data rows of a report's first table, checking that every table in it is well formed."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.startswith("|"):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    tables = [b for b in blocks if b]
    assert tables and text.startswith("# ")
    for table in tables:
        width = table[0].count("|")
        assert all(line.endswith("|") and line.count("|") == width for line in table), table
        assert set(table[1].replace("|", "").replace(":", "")) == {"-"}, table[1]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in tables[0][2:]]


def test_breakdown_lists_operators_modules_and_uncounted(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "profile", "lka", "--dim", "16", "--res", "8", "--metrics", "params,macs", "--breakdown", "--quiet"
    )
    assert code == 0, err
    assert "aten.conv2d" in out and "aten.mul" in out  # counted: the convs and the u * attn gate
    assert "conv_spatial" in out  # per submodule
    assert "seen but not counted" in out and "aten.clone" in out  # upstream's copy, listed, not a MAC


def test_gate_that_compares_nothing_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.csv"
    run(capsys, "profile", "lka", "--dim", "16", "--res", "8", "--metrics", "params,macs", "-o", str(base), "--quiet")
    code, _, err = run(
        capsys,
        *"compare lka --dim 16 --res 16 --metrics params,macs --baseline".split(),
        str(base),
        "--quiet",
    )
    assert code == 2 and "no case of this run is in the baseline" in err
    code, out, err = run(
        capsys,
        *"compare lka --dim 16 --res 8 --metrics params,macs --baseline".split(),
        str(base),
        "--quiet",
    )
    assert code == 0 and "1 case(s) compared" in out, err


def test_a_log_gets_one_line_per_finished_case(capsys: pytest.CaptureFixture[str]) -> None:
    # capsys's stderr is not a terminal, as in CI: no bar, one plain line per case as it finishes.
    code, _, err = run(
        capsys, *"profile lka --dim 16 --res 8 --res 12 --metrics params,latency --max-run-time 0.02".split()
    )
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("attnbench: [")]
    assert len(lines) == 2
    assert lines[0].startswith("attnbench: [1/2] lka C=16 8x8 B=1 cpu: ok in ") and lines[0].endswith(" s")
    assert lines[1].startswith("attnbench: [2/2] lka C=16 12x12 B=1 cpu: ok in ")
    code, _, err = run(capsys, *"profile lka --dim 16 --res 8 --metrics params,latency --max-run-time 0.02 -q".split())
    assert code == 0 and "attnbench: [" not in err


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
    (written,) = R.load(base).results
    assert written.instructions == 1_000_000 and written.latency_median_s is None
    assert run(capsys, *args, "--baseline", str(base))[0] == 0
    counts["now"] = 1_250_000
    code, out, _ = run(capsys, *args, "--baseline", str(base))
    assert code == 1 and "gate: FAILED" in out and "+25.00%" in out and "lka C=16 8x8" in out
    # A wall-time baseline (no counts) cannot gate on instructions: refused before measuring.
    wall = tmp_path / "wall.csv"
    run(capsys, *"compare lka --dim 16 --res 8 --backend cpu --metrics params -q -o".split(), str(wall))
    code, _, err = run(capsys, *args, "--baseline", str(wall))
    assert code == 2 and "holds no instruction counts" in err
