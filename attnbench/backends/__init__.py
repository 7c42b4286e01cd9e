"""Backends behind one interface (base.Backend): get_backend(name), list_backends().

Backend modules are imported on first use, so `import attnbench` does not pull in onnxruntime.
"""

from __future__ import annotations

import importlib

from attnbench.backends.base import Backend, CaseFailed, Prepared
from attnbench.errors import BackendUnavailableError

__all__ = [
    "Backend",
    "CaseFailed",
    "Prepared",
    "UnknownBackendError",
    "available_backends",
    "get_backend",
    "list_backends",
]

#: name -> "module:class"; adding a backend is one file and one line here.
_BACKENDS: dict[str, str] = {
    "cpu": "attnbench.backends.cpu:CpuBackend",
    "cuda": "attnbench.backends.cuda:CudaBackend",
    "ort": "attnbench.backends.ort:OrtCpuBackend",
    "ort-cuda": "attnbench.backends.ort:OrtCudaBackend",
}
_INSTANCES: dict[str, Backend] = {}


class UnknownBackendError(BackendUnavailableError, ValueError):
    """A backend name that is not registered."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown backend {name!r}: valid backends are {', '.join(_BACKENDS)}")


def list_backends() -> list[str]:
    """Names of every registered backend (available here or not)."""
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend registered under `name`; unknown names raise UnknownBackendError listing valid ones."""
    if name not in _BACKENDS:
        raise UnknownBackendError(name)
    if name not in _INSTANCES:
        module_name, cls_name = _BACKENDS[name].split(":")
        _INSTANCES[name] = getattr(importlib.import_module(module_name), cls_name)()
    return _INSTANCES[name]


def available_backends() -> dict[str, dict[str, object]]:
    """For each backend: {"available": bool, "reason": str}, for the environment record."""
    out: dict[str, dict[str, object]] = {}
    for name in _BACKENDS:
        try:
            ok, reason = get_backend(name).available()
        except Exception as exc:  # an import failure is a reason, not a crash of the environment record
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        out[name] = {"available": ok, "reason": reason}
    return out
