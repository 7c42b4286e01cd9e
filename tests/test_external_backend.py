"""A backend from outside the project: a package that subclasses the CPU backend and registers it through the
`attnbench.backends` entry point runs in `profile` and reaches the CSV, Markdown, plots and `env`, with no edit to
attnbench."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from attnbench import backends, store
from tests.conftest import run_cli

PLUGIN = '''
from attnbench.backends.cpu import CpuBackend


class MyCpuBackend(CpuBackend):
    """PyTorch on the CPU, under another name: what a third-party backend starts from."""

    name = "mycpu"
    description = "a third party's CPU backend (a CpuBackend subclass)"
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed package (a module and its dist-info on sys.path) registering backend `mycpu`."""
    site = tmp_path / "site"
    (site / "mycpu_backend-0.1.dist-info").mkdir(parents=True)
    (site / "mycpu_backend.py").write_text(PLUGIN)
    (site / "mycpu_backend-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mycpu-backend\n")
    entry = "[attnbench.backends]\nmycpu = mycpu_backend:MyCpuBackend\n"
    (site / "mycpu_backend-0.1.dist-info" / "entry_points.txt").write_text(entry)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield tmp_path
    backends._INSTANCES.pop("mycpu", None)


def test_it_is_listed_and_built(plugin: Path) -> None:
    assert backends.list_backends()[-1] == "mycpu"
    backend = backends.get_backend("mycpu")
    assert backend.name == "mycpu" and backend.available()[0]
    assert backend.facts() == {
        "device": "cpu",
        "marker": "o",
        "parity": "compiled",
        "ignores": ["ort_opt_level", "tf32"],
        "sync": "",
    }


def test_profile_reaches_every_report(plugin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv, md, plots = plugin / "r.csv", plugin / "r.md", plugin / "plots"
    argv = "profile lka --dim 16 --res 8 --res 12 --backend mycpu --max-run-time 0.02 --quiet".split()
    code, out, err = run_cli(capsys, *argv, "-o", str(csv), "-o", str(md), "--plots", str(plots))
    assert code == 0, err
    rows = store.load(csv).results
    assert [(r.backend, r.status) for r in rows] == [("mycpu", "ok"), ("mycpu", "ok")]
    assert all(r.latency_median_s and r.peak_mem_bytes for r in rows)
    assert "mycpu [" in out and "Mem mycpu [" in out
    text = md.read_text()
    assert "| Mem mycpu [" in text and "mycpu [" in text.splitlines()[2]
    assert {"latency_mycpu.png", "memory_mycpu.png", "roofline_cpu.png"} <= {p.name for p in plots.iterdir()}
    # The run recorded the backend's facts, so the report can be rendered where the package is not installed.
    facts = store.load(csv).env["available_backends"]["mycpu"]
    assert facts["available"] is True and facts["device"] == "cpu"


def test_env_lists_it(plugin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "env", "--json")
    assert code == 0
    record = json.loads(out)["available_backends"]["mycpu"]
    assert record["available"] is None and "mycpu_backend:MyCpuBackend" in record["reason"]
    code, out, _ = run_cli(capsys, "env", "--probe", "--json")
    assert code == 0
    assert json.loads(out)["available_backends"]["mycpu"]["available"] is True
