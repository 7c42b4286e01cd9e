"""attnbench: build, count, time and compare vision attention modules."""

from __future__ import annotations

from typing import Any

from attnbench.errors import (
    AttnbenchError,
    BackendUnavailableError,
    InvalidCaseError,
    UnknownModuleError,
)
from attnbench.registry import build, get_spec, list_modules, validate

__version__ = "0.1.0"

__all__ = [
    "AttnbenchError",
    "BackendUnavailableError",
    "InvalidCaseError",
    "UnknownModuleError",
    "__version__",
    "build",
    "count_macs",
    "count_params",
    "get_spec",
    "list_modules",
    "measure",
    "validate",
]

# Counting and measuring pull in fvcore, thop and onnxruntime: import them only when asked for.
_LAZY = {
    "count_macs": "attnbench.counting",
    "count_params": "attnbench.counting",
    "measure": "attnbench.measurement",
    "profile": "attnbench.runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")
