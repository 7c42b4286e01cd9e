"""Shared fixtures: fixed seeds, few threads, and the registry's examples as test parameters."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import attnbench
from attnbench.cache import CACHE_ENV
from attnbench.settings import ALLOCATOR_PROCESSES_ENV, WORKERS_ENV
from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import Example, ModuleSpec


def pytest_configure(config: pytest.Config) -> None:
    # Tests are about numbers, not speed: one thread keeps them deterministic and leaves the other core free.
    torch.set_num_threads(1)
    # Runs count and export in this process unless a test asks for workers: a worker process costs seconds of
    # imports, which dominate a test's tiny cases (tests/test_phases.py runs the workers themselves).
    os.environ.setdefault(WORKERS_ENV, "0")
    # Measures a CPU row's default-allocator state only where a test asks (tests/test_sysalloc.py): three fresh
    # server processes cost seconds of imports and timings per run.
    os.environ.setdefault(ALLOCATOR_PROCESSES_ENV, "0")
    # The cache across runs (and the zoo's catalog in it) lives in a scratch directory, never the user's own:
    # also for what tests build at import time (RunOptions constants read the directory when built).
    global _CACHE_ROOT
    _CACHE_ROOT = Path(tempfile.mkdtemp(prefix="attnbench-test-cache-"))
    os.environ[CACHE_ENV] = str(_CACHE_ROOT / "session")
    config.add_cleanup(lambda: shutil.rmtree(_CACHE_ROOT, ignore_errors=True))


_CACHE_ROOT = Path()
_TEST_NUMBER = itertools.count()


@pytest.fixture(autouse=True)
def _cache_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    # Each test gets its own cache directory (made when first written): an entry one test stored never serves
    # another, so no test passes because of the order tests ran in.
    path = _CACHE_ROOT / f"test-{next(_TEST_NUMBER)}"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_exports() -> None:
    # ONNX graphs are shared process-wide; each test starts without another test's graphs.
    from attnbench.backends.export_cache import EXPORTS

    EXPORTS.clear()


def examples() -> list[tuple[str, int, Example]]:
    """(module, index, example) for every valid example of every registered module."""
    return [(name, i, ex) for name in attnbench.list_modules() for i, ex in enumerate(get_spec(name).examples)]


def example_id(value: object) -> str:
    """Readable test ids: acmix-0 rather than a repr of an Example."""
    if isinstance(value, Example):
        kw = ",".join(f"{k}={v}" for k, v in value.kwargs.items())
        return f"C{value.dim}-{value.res[0]}x{value.res[1]}-B{value.batch}" + (f"-{kw}" if kw else "")
    return str(value)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the attnbench CLI in-process; return (exit code, stdout, stderr)."""
    from attnbench.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def spec_of(name: str) -> ModuleSpec:
    """The spec registered under name."""
    return get_spec(name)


def parse_cli(argv: list[str]) -> dict[str, object]:
    """Parse an attnbench command line as the CLI would, without running it; unknown options raise."""
    import typer

    from attnbench.cli.app import app

    group = typer.main.get_command(app)
    name, *rest = argv
    command = group.get_command(group.make_context("attnbench", list(argv)), name)
    assert command is not None, f"unknown command {name!r}"
    return dict(command.make_context(name, rest).params)
