"""Backends judged from the installed packages alone (what `attnbench env` prints without --probe): the built-in
ones by their packages' versions, third-party ones by their entry points, and no torch imported."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest

from attnbench.backends import installed


def test_the_built_in_backends_are_judged_by_the_packages() -> None:
    judged = installed.installed_backends()
    assert list(judged)[:4] == ["cpu", "cuda", "ort", "ort-cuda"]
    torch_version = metadata.version("torch")
    assert judged["cpu"] == {"available": True, "reason": f"torch {torch_version}"}
    if "+cpu" in torch_version:
        assert judged["cuda"]["available"] is False and "no CUDA support" in judged["cuda"]["reason"]
    assert judged["ort"]["available"] is True and metadata.version("onnxruntime") in judged["ort"]["reason"]


def test_a_missing_package_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    real = installed._version
    monkeypatch.setattr(installed, "_version", lambda *d: None if d == ("onnx",) else real(*d))
    judged = installed.installed_backends()
    ort = metadata.version("onnxruntime")
    assert judged["ort"] == {"available": False, "reason": f"needs onnxruntime and onnx (have {ort}, None)"}


def test_entry_points_are_listed_as_third_party(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installed, "plugins", lambda: {"mine": "pkg.mod:Mine", "cpu": "other:Cpu"})
    judged = installed.installed_backends()
    assert judged["mine"]["available"] is None and "pkg.mod:Mine" in judged["mine"]["reason"]
    assert "torch" in judged["cpu"]["reason"], "a plugin cannot take a built-in name"


def test_judging_imports_no_torch() -> None:
    code = (
        "import sys, json; from attnbench.backends.installed import installed_backends; installed_backends(); "
        "print(json.dumps('torch' in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) is False
