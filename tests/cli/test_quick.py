"""The quick commands (`--version`, bare `attnbench`, `list`, `info`, `env`, `cache info`): they answer without
importing torch, pandas or ONNX Runtime, and what they say is true to the registry and the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import attnbench
from attnbench.zoo import catalog
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent.parent
#: Modules the quick commands must not import: each costs seconds (torch) or a large share of the 0.5 s budget.
HEAVY = ("torch", "onnx", "onnxruntime", "matplotlib", "pandas")


def _env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_bare_attnbench_prints_help_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys)
    assert code == 0 and not err
    assert "Usage:" in out and "profile" in out and "compare" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--version")
    assert (code, out, err) == (0, f"attnbench {attnbench.__version__}\n", "")


@pytest.mark.parametrize(
    "argv", [["--version"], ["list"], ["info", "clo"], ["env"], ["env", "--json"], ["cache", "info"]], ids=" ".join
)
def test_quick_commands_import_nothing_heavy(argv: list[str]) -> None:
    catalog.zoo()  # the catalog cache is warm, as after any first use
    probe = (
        "import json, sys; from attnbench.cli import main; code = main(sys.argv[1:]); "
        f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv], env=_env(), capture_output=True, text=True, timeout=120, check=False
    )
    code, heavy = json.loads(done.stderr.strip().splitlines()[-1])
    assert code == 0, done.stderr
    assert heavy == []
    assert done.stdout.strip()


def test_list_shows_every_module_in_the_tables_order(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "list")
    assert code == 0, err
    names = [line.strip("│ ").split(" ")[0] for line in out.splitlines() if line.startswith("│ ")]
    found = [n for n in names if n in attnbench.list_modules()]
    assert found == attnbench.list_modules()


@pytest.mark.parametrize("name", attnbench.list_modules())
def test_info_states_resolution_constraints_truthfully(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "info", name)
    assert code == 0
    (line,) = [x for x in out.splitlines() if x.startswith("resolution:")]
    spec = attnbench.get_spec(name)
    rules = [c.name for c in spec.constraints if c.needs_resolution]
    if spec.resolution_bound:
        assert "bound" in line
    elif rules:
        assert line == f"resolution: constrained: {'; '.join(rules)}"
    else:
        assert line == "resolution: any"
    assert all(rule in line for rule in rules)


def test_info_of_an_unknown_module_suggests_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "info", "lkaa")
    assert code == 2 and out == ""
    assert err.startswith("attnbench: error: unknown module 'lkaa': did you mean lka")


def test_env_json_is_the_environment_record(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "env", "--json")
    assert code == 0
    record = json.loads(out)
    assert record["attnbench"] == attnbench.__version__
    assert record["available_backends"]["cpu"]["available"] is True
    assert {"torch", "onnxruntime", "cpu_model", "usable_cores", "available_counters"} <= set(record)


def test_env_probe_measures_the_roof(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "env", "--probe", "--json")
    assert code == 0
    record = json.loads(out)
    (cpu,) = [p for p in record["peaks"] if p["device"] == "cpu"]
    assert cpu["flops_per_s"] > 1e8 and cpu["bytes_per_s"] > 1e7 and cpu["threads"] == 1
    assert record["allocator"]["pinned"] is True
