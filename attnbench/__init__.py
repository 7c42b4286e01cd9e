"""attnbench: build, count, time and compare vision attention modules."""

from __future__ import annotations

from typing import Any

from attnbench.errors import (
    AttnbenchError,
    BackendUnavailableError,
    InvalidCaseError,
    ModuleSpecError,
    UnknownModuleError,
)
from attnbench.zoo.registry import get_spec, list_modules
from attnbench.zoo.spec import ModuleSpec

__version__ = "0.1.0"

__all__ = [
    "AttnbenchError",
    "BackendUnavailableError",
    "Case",
    "InvalidCaseError",
    "ModuleSpec",
    "ModuleSpecError",
    "Result",
    "RunOptions",
    "Sweep",
    "UnknownModuleError",
    "__version__",
    "build",
    "compare_to_baseline",
    "count_macs",
    "count_params",
    "get_spec",
    "list_modules",
    "load_results",
    "measure",
    "plot_scaling",
    "profile",
    "report",
    "validate",
]

# Counting and measuring pull in fvcore, thop and onnxruntime: import them only when asked for.
_LAZY = {
    "build": "attnbench.zoo.build",
    "validate": "attnbench.zoo.build",
    "count_macs": "attnbench.counting",
    "count_params": "attnbench.counting",
    "measure": "attnbench.measurement",
    "profile": "attnbench.runner",
    "RunOptions": "attnbench.runner",
    "Case": "attnbench.results",
    "Result": "attnbench.results",
    "Sweep": "attnbench.sweep",
    "compare_to_baseline": "attnbench.gate",
    "plot_scaling": "attnbench.plots",
}
#: Public names that are another module's attribute under a clearer name here, or a module itself.
_RENAMED = {"load_results": ("attnbench.results", "load")}
_SUBMODULES = ("report",)


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _RENAMED:
        module, attr = _RENAMED[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"attnbench.{name}")
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")
