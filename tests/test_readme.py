"""The README stays true: its module table is the registry's, its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from attnbench.report import zoo_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_module_table_is_generated_from_the_registry() -> None:
    block = re.search(r"<!-- modules:start -->\n(.*)\n<!-- modules:end -->", README, flags=re.S)
    assert block, "README lacks the generated module table markers"
    assert block.group(1) == zoo_markdown(), "README's module table is stale: paste `attnbench list --markdown`"


def test_ci_runs_the_readme_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    commands = (
        "python3 -m venv .venv && . .venv/bin/activate",
        "python3 -m pip install torch==2.13.0",
        'python3 -m pip install -e ".[dev]"',
        "python3 -m pytest -q",
    )
    for command in commands:
        assert command in README, command
        assert command in ci, command


def test_readme_gate_example_matches_ci_settings() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    settings = "--dim 64 --res 16 --res 32 --backend cpu --backend ort"
    assert settings in ci and settings in " ".join(README.split())
    gate = "--max-run-time 0.5 --gate-metric instructions --baseline results/ci-baseline.csv"
    assert gate in " ".join(ci.replace("\\\n", " ").split()) and gate in " ".join(README.split())
