"""`list` and `info`: the zoo at any width without cutting what a user copies, one module's reference, constraints
and formulas, and a user's own module."""

from __future__ import annotations

from pathlib import Path

import pytest

import attnbench
from attnbench.zoo import catalog
from tests.conftest import run_cli
from tests.samples import parse_rich, squeeze

WIDTHS = (60, 80, 120, 200)


def test_list_shows_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in ("acmix", "ea", "mhsa", "sk", "da", "epsa", "sam", "clo", "lka", "van"):
        assert name in out
    assert "attnbench module zoo" in out


@pytest.mark.parametrize("width", WIDTHS)
def test_list_never_cuts_the_default_kwargs(
    width: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = run_cli(capsys, "list")
    assert code == 0 and "…" not in out
    assert max(len(line) for line in out.splitlines()) <= width
    headers, rows = parse_rich(out, anchor=0)
    kwargs = headers.index("Default kwargs")
    entries = catalog.zoo()
    assert [r[0] for r in rows] == [e["name"] for e in entries]
    for row, entry in zip(rows, entries, strict=True):
        want = ", ".join(f"{k}={v.replace(', ', ',')}" for k, v in entry["defaults"]) or "-"
        assert squeeze(row[kwargs]) == squeeze(want)
    notes = [line for line in err.splitlines() if "columns:" in line]
    if "Constraints" in headers:
        assert notes == []
    else:  # a narrow terminal says what went, and where to see it
        (note,) = notes
        assert note.startswith(f"attnbench: {width} columns: hidden ") and "Constraints" in note
        assert note.endswith("or `attnbench info NAME` shows all)")


def test_list_markdown_is_the_readme_table(capsys: pytest.CaptureFixture[str]) -> None:
    from attnbench.report.markdown import zoo_markdown

    code, out, _ = run_cli(capsys, "list", "--markdown")
    assert code == 0 and out == zoo_markdown() + "\n"


def test_info_shows_reference_and_constraints(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "info", "clo")
    assert code == 0
    assert "CloFormer" in out and "window_size" in out and "qhfan/CloFormer" in out
    lines = out.splitlines()
    assert lines[0] == "clo: CloAttention (CloFormer AttnConv + pooled global attention)"
    assert "paper:      Rethinking Local Perception in Lightweight Vision Transformer (arXiv 2303.17803)" in lines
    assert "  window_size = 4  average-pool window of the global branch's keys and values" in lines
    assert "  H, W % window_size == 0 (global branch on)  (needs H, W)" in lines
    assert "formulas at C=64, 16x16, B=1: params = 21,248, MACs = 4,628,480" in lines


@pytest.mark.parametrize("name", attnbench.list_modules())
def test_info_of_every_module_gives_its_formulas(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "info", name)
    entry = {e["name"]: e for e in catalog.zoo()}[name]
    assert code == 0 and out.startswith(f"{name}: {entry['title']}")
    ex = entry["example"]
    res = f"{ex['res'][0]}x{ex['res'][1]}"
    assert f"formulas at C={ex['dim']}, {res}, B={ex['batch']}: params = {ex['params']:,}, MACs = {ex['macs']:,}" in out


def test_info_of_a_token_module_says_it_is_wrapped(capsys: pytest.CaptureFixture[str]) -> None:
    token = next(e["name"] for e in catalog.zoo() if e["layout"] == "tokens")
    _, out, _ = run_cli(capsys, "info", token)
    assert "layout:     tokens  (wrapped to B, C, H, W)" in out.splitlines()


def test_info_of_your_own_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.bad_inputs import USER_FILES

    (tmp_path / "user.py").write_text(USER_FILES["user.py"])
    code, out, err = run_cli(capsys, "info", f"{tmp_path}/user.py:MyAttn")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{tmp_path}/user.py:MyAttn: your own module"
    assert lines[1].startswith(f"source:     {tmp_path}/user.py (sha256 ") and lines[1].endswith("...)")
    assert "called as:  MyAttn(dim, heads=2), first argument = channels C" in lines
    assert "counts:     no hand formula; params and MACs are counted, as for the zoo" in lines


def test_info_of_an_unknown_module_suggests_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "info", "lkaa")
    assert code == 2 and out == ""
    assert err.startswith("attnbench: error: unknown module 'lkaa': did you mean lka")


def test_info_indents_its_continuation_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    from attnbench.cli.app import consoles

    consoles.refresh()
    code, out, _ = run_cli(capsys, "info", "acmix")
    assert code == 0
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 60
    notes = lines.index(next(line for line in lines if line.startswith("notes:")))
    # A value's next lines start under the value, not under its name: up to the next name, all indented 12.
    rest = lines[
        notes + 1 : notes + 1 + next(i for i, line in enumerate(lines[notes + 1 :]) if not line.startswith(" "))
    ]
    assert rest and all(line.startswith(" " * 12) and line[12] != " " for line in rest)
    kwarg = next(i for i, line in enumerate(lines) if line.startswith("  kernel_att = 7"))
    assert lines[kwarg + 1].startswith("    ") and not lines[kwarg + 1].startswith("     ")
