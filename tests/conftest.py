"""Shared fixtures: fixed seeds, few threads, and the registry's examples as test parameters."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

import attnbench
from attnbench.settings import WORKERS_ENV
from attnbench.zoo.catalog import CACHE_ENV
from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import Example, ModuleSpec


def pytest_configure(config: pytest.Config) -> None:
    # Tests are about numbers, not speed: one thread keeps them deterministic and leaves the other core free.
    torch.set_num_threads(1)
    # Runs count and export in this process unless a test asks for workers: a worker process costs seconds of
    # imports, which dominate a test's tiny cases (tests/test_phases.py runs the workers themselves).
    os.environ.setdefault(WORKERS_ENV, "0")
    # `list` and `info` cache the zoo's metadata: in a scratch directory, not the user's home.
    if CACHE_ENV not in os.environ:
        cache = tempfile.mkdtemp(prefix="attnbench-test-cache-")
        os.environ[CACHE_ENV] = cache
        config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


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
