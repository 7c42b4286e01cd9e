"""The report package's front door: its views by name, imported on first use (so `list` and `info` stay light)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from attnbench import report


@pytest.mark.parametrize(
    "name", ["ReportFiles", "write", "zoo_markdown", "backends_of", "scaling", "sort_key", "show", "show_gate"]
)
def test_the_package_re_exports_its_views(name: str) -> None:
    assert getattr(report, name) is getattr(importlib.import_module(report._LAZY[name]), name)
    assert callable(getattr(report, name))


@pytest.mark.parametrize("name", ["markdown", "summary"])
def test_views_named_like_their_modules_are_reached_through_them(name: str) -> None:
    # A name shared by a function and its module is the module once imported: the package offers the module.
    module = importlib.import_module(f"attnbench.report.{name}")
    assert callable(getattr(module, name)) and name not in report._LAZY


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        report.nothing  # noqa: B018


def test_the_tables_module_imports_no_pandas_or_torch() -> None:
    code = (
        "import sys, json, attnbench.report.tables; "
        "print(json.dumps([m for m in ('torch', 'pandas') if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []
