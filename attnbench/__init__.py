"""attnbench: build, count, time and compare vision attention modules."""

from __future__ import annotations

import importlib
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

# Counting and measuring pull in torch, fvcore, thop and onnxruntime: import them only when asked for.
_LAZY = {
    "build": "attnbench.zoo.build",
    "validate": "attnbench.zoo.build",
    "count_macs": "attnbench.counting",
    "count_params": "attnbench.counting",
    "measure": "attnbench.measurement",
    "profile": "attnbench.api",
    "run_sweep": "attnbench.runner",
    "Sink": "attnbench.runner",
    "RunOutcome": "attnbench.runner",
    "RunOptions": "attnbench.settings",
    "TimingBudget": "attnbench.timing",
    "Case": "attnbench.results",
    "Result": "attnbench.results",
    "Scenario": "attnbench.results",
    "Sweep": "attnbench.sweep",
    "GateSettings": "attnbench.gate",
    "compare_to_baseline": "attnbench.gate",
    "plot_scaling": "attnbench.report.plots",
    "ReportFiles": "attnbench.report.files",
    "get_backend": "attnbench.backends",
    "list_backends": "attnbench.backends",
}
#: Public names that are another module's attribute under a clearer name here, or a module itself.
_RENAMED = {"load_results": ("attnbench.store", "load")}
_SUBMODULES = ("report", "results", "store")

__all__ = [
    "AttnbenchError",
    "BackendUnavailableError",
    "InvalidCaseError",
    "ModuleSpec",
    "ModuleSpecError",
    "UnknownModuleError",
    "__version__",
    "get_spec",
    "list_modules",
    *_LAZY,
    *_RENAMED,
    *_SUBMODULES,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _RENAMED:
        module, attr = _RENAMED[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f"attnbench.{name}")
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")
