"""What the backends are, judged without importing torch or ONNX Runtime: for `attnbench env`, which answers at once.

The built-in backends are judged from the installed packages' metadata; a third-party backend (entry point
group `attnbench.backends`) is listed with its target, and `env --probe` imports it to judge it.
"""

from __future__ import annotations

from importlib import metadata

#: The entry point group third-party backends register under (name = the backend's name, value = "module:Class").
ENTRY_POINT_GROUP = "attnbench.backends"


def plugins() -> dict[str, str]:
    """Backends of installed packages' entry points: name -> "module:Class"."""
    return {entry.name: entry.value for entry in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def installed_backends() -> dict[str, dict[str, object]]:
    """Each backend judged from the installed packages alone (no import): "available" is None when only
    probing can tell (a CUDA build of torch, onnxruntime-gpu: is there a GPU?)."""
    torch_v, onnx_v = _version("torch"), _version("onnx")
    ort_v, ort_gpu = _version("onnxruntime", "onnxruntime-gpu"), _version("onnxruntime-gpu")
    probe = "`attnbench env --probe` checks for a GPU"
    out: dict[str, dict[str, object]] = {
        "cpu": {"available": torch_v is not None, "reason": f"torch {torch_v or 'not installed'}"},
    }
    if torch_v is None or "+cpu" in torch_v:
        out["cuda"] = {"available": False, "reason": f"this torch build ({torch_v}) has no CUDA support"}
    else:
        out["cuda"] = {"available": None, "reason": f"torch {torch_v} is a CUDA build; {probe}"}
    if ort_v is None or onnx_v is None:
        out["ort"] = {"available": False, "reason": f"needs onnxruntime and onnx (have {ort_v}, {onnx_v})"}
    else:
        out["ort"] = {"available": True, "reason": f"onnxruntime {ort_v} CPUExecutionProvider, onnx {onnx_v}"}
    if ort_gpu is None:
        out["ort-cuda"] = {"available": False, "reason": f"onnxruntime {ort_v} is the CPU build (no onnxruntime-gpu)"}
    else:
        out["ort-cuda"] = {"available": None, "reason": f"onnxruntime-gpu {ort_gpu}; {probe}"}
    for name, target in plugins().items():
        out.setdefault(
            name, {"available": None, "reason": f"third-party backend {target}; `attnbench env --probe` imports it"}
        )
    return out
