"""The package root is the public API: every name it lists resolves, and importing it stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import attnbench


@pytest.mark.parametrize("name", attnbench.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(attnbench, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        attnbench.nothing  # noqa: B018


def test_the_lazy_names_are_the_modules_own() -> None:
    from attnbench import api, results, runner, store

    assert attnbench.profile is api.profile and attnbench.run_sweep is runner.run_sweep
    assert attnbench.Scenario is results.Scenario and attnbench.load_results is store.load


def test_importing_it_imports_no_torch_or_pandas() -> None:
    code = "import sys, json, attnbench; print(json.dumps([m for m in ('torch', 'pandas') if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
