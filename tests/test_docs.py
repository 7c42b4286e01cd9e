"""The Python examples of the docs run as written: the worked example module, profile(), run_sweep() and the
one-module calls of docs/own-modules.md, and the cache's example in docs/cache.md, in a scratch directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.settings import ALLOCATOR_PROCESSES_ENV, WORKERS_ENV

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "own-modules.md"


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a page, in order."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


@pytest.mark.slow
def test_the_own_module_examples_run(tmp_path: Path) -> None:
    module, *examples = python_blocks(PAGE)
    assert "class LinearAttention" in module and len(examples) == 3
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "attn.py").write_text(module)
    script = "\n\n".join(examples)
    # As written, in a clean environment, save two knobs the suite sets everywhere (tests/conftest.py): no worker
    # processes and no allocator servers, whose imports would take most of this test's time.
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    env |= {name: os.environ[name] for name in (WORKERS_ENV, ALLOCATOR_PROCESSES_ENV)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    # profile(): LinearAttention and mhsa at 14 and 28, then the instance at 28, each one cpu row.
    assert lines[0].startswith("5 models.attn:LinearAttention C=64 14x14 B=1 cpu layout=tokens ")
    assert lines[1] == "True"  # the run_sweep rows gate against the CSV they streamed
    assert lines[2] == "torch.Size([2, 64, 32, 32])" and int(lines[3]) > 0
    assert (tmp_path / "mine.csv").exists() and (tmp_path / "mine.md").exists()
    assert {p.name for p in (tmp_path / "plots").iterdir()} >= {"macs.png", "latency_cpu.png", "memory_cpu.png"}


def test_the_cache_example_runs_without_torch(tmp_path: Path) -> None:
    (block,) = python_blocks(ROOT / "docs" / "cache.md")
    probe = block + "\nimport sys\nprint(sorted(m for m in ('torch', 'pandas') if m in sys.modules))\n"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "ATTNBENCH_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["b'{\"macs\": 1234}' {'counter': 'attnbench'} 1 1", "[]"]
    assert [p.parent.parent.name for p in tmp_path.rglob("*") if p.is_file()] == ["counts"]
