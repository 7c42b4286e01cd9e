"""Backends behind one interface (base.Backend): get_backend(name), list_backends(), and third-party ones.

Built-in backends are a name -> "module:Class" table; others plug in through the entry point group
`attnbench.backends` (name = the backend's name, value = "module:Class"), e.g. in a package's pyproject.toml:

    [project.entry-points."attnbench.backends"]
    mycpu = "mypackage.backend:MyCpuBackend"

Backend modules are imported on first use, so `import attnbench` does not pull in onnxruntime, and this package
imports no torch until a backend is asked for (`attnbench env` reads attnbench.backends.installed alone).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from attnbench.backends.installed import ENTRY_POINT_GROUP, plugins
from attnbench.errors import BackendUnavailableError

if TYPE_CHECKING:
    from attnbench.backends.base import Backend, CaseFailed, Prepared

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "CaseFailed",
    "Prepared",
    "UnknownBackendError",
    "available_backends",
    "backend_facts",
    "get_backend",
    "list_backends",
]

#: name -> "module:Class"; a built-in backend is its file and one line here.
BUILT_IN: dict[str, str] = {
    "cpu": "attnbench.backends.cpu:CpuBackend",
    "cuda": "attnbench.backends.cuda:CudaBackend",
    "ort": "attnbench.backends.ort:OrtCpuBackend",
    "ort-cuda": "attnbench.backends.ort:OrtCudaBackend",
}
_INSTANCES: dict[str, Backend] = {}
#: What a report assumes of a backend it cannot load and whose run recorded nothing about it.
UNKNOWN_FACTS: dict[str, Any] = {"device": "cpu", "marker": "x", "parity": "", "ignores": [], "sync": ""}


class UnknownBackendError(BackendUnavailableError, ValueError):
    """A backend name that is not registered."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown backend {name!r}: valid backends are {', '.join(_table())}")


def _table() -> dict[str, str]:
    """Every registered backend: the built-in ones, then those of installed packages' entry points."""
    table = dict(BUILT_IN)
    for name, target in plugins().items():
        table.setdefault(name, target)
    return table


def list_backends() -> list[str]:
    """Names of every registered backend (available here or not)."""
    return list(_table())


def get_backend(name: str) -> Backend:
    """An instance of the backend registered under `name`; unknown names raise UnknownBackendError."""
    if name not in _INSTANCES:
        table = _table()
        if name not in table:
            raise UnknownBackendError(name)
        module_name, _, cls_name = table[name].partition(":")
        from attnbench.backends.base import Backend  # torch: only once a backend is asked for

        cls = getattr(importlib.import_module(module_name), cls_name)
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise BackendUnavailableError(f"backend {name!r}: {table[name]} is not an attnbench Backend subclass")
        if cls.name != name:
            raise BackendUnavailableError(f"backend {name!r}: {table[name]} is named {cls.name!r}")
        _INSTANCES[name] = cls()
    return _INSTANCES[name]


def available_backends() -> dict[str, dict[str, object]]:
    """For each backend: {"available": bool, "reason": str} and its facts, for the environment record."""
    out: dict[str, dict[str, object]] = {}
    for name in _table():
        try:
            backend = get_backend(name)
            ok, reason = backend.available()
            out[name] = {"available": ok, "reason": reason, **backend.facts()}
        except Exception as exc:  # an import failure is a reason, not a crash of the environment record
            out[name] = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    return out


def backend_facts(name: str, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """A backend's facts for a report: from the run's environment record, else from the backend itself."""
    recorded = ((env or {}).get("available_backends") or {}).get(name) or {}
    if "device" in recorded:
        return {**UNKNOWN_FACTS, **{k: recorded[k] for k in UNKNOWN_FACTS if k in recorded}}
    try:
        return get_backend(name).facts()
    except Exception:  # a backend of another machine that is not installed here
        return dict(UNKNOWN_FACTS)


def __getattr__(name: str) -> Any:
    # The interface classes import torch: on first use only.
    if name in ("Backend", "CaseFailed", "Prepared"):
        return getattr(importlib.import_module("attnbench.backends.base"), name)
    raise AttributeError(f"module 'attnbench.backends' has no attribute {name!r}")
