"""`report`: saved results rendered again (tables, files, plots) without measuring anything."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from attnbench import fmt, runner, store
from attnbench.report.summary import sort_summary, summary
from tests.conftest import run_cli as run
from tests.samples import ENV, markdown_tables, parse_rich, sample_results

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """The sample rows saved as a CSV with its environment."""
    path = tmp_path / "saved.csv"
    store.write_csv(path, sample_results(), ENV)
    return path


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
    assert f"wrote {tmp_path / 'plots' / 'macs.png'}" in err.splitlines() and f"wrote {md}" in err.splitlines()


def test_report_measures_nothing_and_keeps_every_row(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("report measured"))
    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: pytest.fail("report measured"))
    again, js = tmp_path / "again.csv", tmp_path / "again.json"
    code, out, err = run(capsys, "report", str(saved), "-o", str(again), "-o", str(js))
    assert code == 0, err
    assert out.startswith("attnbench report (saved.csv)")
    for path in (again, js):
        loaded = store.load(path)
        assert [r.key for r in loaded.results] == [r.key for r in sample_results()]
        assert [r.latency_median_s for r in loaded.results] == [r.latency_median_s for r in sample_results()]
    assert "mhsa C=64 56x56 B=1 ort: failed: export failed" in err.splitlines()  # what did not complete, again


def test_report_sorts_and_titles_the_markdown(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = tmp_path / "r.md"
    code, _, err = run(capsys, "report", str(saved), "--sort", "params", "-o", str(md))
    assert code == 0, err
    text = md.read_text()
    assert text.startswith("# attnbench report (saved.csv)\n")
    modules = [row[0] for row in markdown_tables(text)[0][1:] if row[2] == "28x28"]
    assert modules == ["models/attn.py:MyAttention", "mhsa", "acmix", "clo"]
    code, _, err = run(capsys, "report", str(saved), "--sort", "latency-cuda")
    assert code == 2 and err.startswith("attnbench: error: --sort: cannot sort by 'latency-cuda': no cuda measurements")


def test_reference_results_fit_80_columns(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13's done-when: every module, resolution and status at 80 columns, sorted as `compare` sorts (by MACs,
    which stay); issue 22's: no line of stdout or stderr is longer; pandas reads the CSV."""
    path = ROOT / "results" / "compare-cpu.csv"
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run(capsys, "report", str(path))
    assert code == 0 and "…" not in out
    assert max(len(line) for line in (out + err).splitlines()) <= 80
    headers, cells = parse_rich(out)
    table = sort_summary(summary(store.load(path).results), "macs")
    got = [(c[headers.index("Module")], c[headers.index("H x W")], c[headers.index("Status")]) for c in cells]
    assert got == [(r["module"], f"{r['height']}x{r['width']}", r["status"]) for _, r in table.iterrows()]
    assert [c[headers.index("MACs")] for c in cells] == [fmt.si(p) for p in table["macs_attnbench"]]
    assert len(pd.read_csv(path)) == len(store.load(path).results)


def test_report_of_nothing_readable_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.md").write_text("# not a report")
    code, _, err = run(capsys, "report", str(tmp_path / "notes.md"))
    assert code == 2 and err.startswith("attnbench: error: ") and "unknown report format '.md'" in err
    code, _, err = run(capsys, "report")
    assert code == 2 and "Missing argument" in err
