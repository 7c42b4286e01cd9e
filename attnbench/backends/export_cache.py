"""ONNX graphs exported once per module setting and reused for every resolution of it, held in memory.

A module setting is identified by a fingerprint of the module itself (module_fingerprint): the class of
every submodule, their plain attributes (heads, kernel sizes, flags) and the bytes of every parameter and
buffer. Two modules with different weights, or the same weights but other settings, never share a graph.
The runner builds one module per geometry from the same seed, so the modules of one setting at 14x14 and
at 56x56 have the same fingerprint whenever their weights do not depend on the resolution.

Graphs are kept as serialized bytes (ONNX Runtime opens a session from bytes), so no file outlives the
export that wrote it: the export's temporary directory is a context manager, removed on success, on error
and on KeyboardInterrupt alike. The cache is bounded (MAX_GRAPHS, MAX_GRAPH_BYTES) and process-wide;
`clear()` or `with EXPORTS:` empties it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Graphs kept at once: a sweep visits one setting's resolutions one after the other, so a few suffice.
MAX_GRAPHS = 4
#: Larger graphs are not kept (they are exported per resolution, as before).
MAX_GRAPH_BYTES = 256 * 2**20

_PLAIN = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Graph:
    """One exported graph: its bytes and what the export reported."""

    model: bytes
    exporter: str
    #: The graph input's dims: ints where the exporter fixed a size, names where it left it symbolic.
    dims: tuple[int | str, ...]
    opset: int | None
    info: dict[str, Any] = field(default_factory=dict)
    #: The input shape of the case that exported it (the export itself traces batch >= 2).
    exported_at: tuple[int, ...] = ()

    @property
    def spatial_dynamic(self) -> bool:
        """True when batch, H and W all came out symbolic, so one graph can serve every resolution."""
        return len(self.dims) == 4 and all(isinstance(self.dims[i], str) for i in (0, 2, 3))


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, tuple | list | torch.Size) and all(_plain(v) for v in value)


def module_fingerprint(module: nn.Module) -> str:
    """A digest of the module's structure, plain attributes and weights: equal digests export equal graphs."""
    digest = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules():
        cls = type(sub)
        digest.update(f"<{name}:{cls.__module__}.{cls.__qualname__}>".encode())
        for attr, value in sorted(vars(sub).items()):
            if attr.startswith("_") or attr == "training":
                continue
            if _plain(value):
                digest.update(f"{attr}={value!r};".encode())
            elif attr == "forward" and callable(value):
                # A forward replaced on the instance changes the graph although the class stays the same.
                digest.update(f"forward={getattr(value, '__qualname__', repr(value))};".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"[{name}:{t.dtype}:{tuple(t.shape)}]".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ExportCache:
    """Shared graphs by module fingerprint, and the settings whose graph cannot be shared (with why)."""

    def __init__(self, max_graphs: int = MAX_GRAPHS, max_bytes: int = MAX_GRAPH_BYTES) -> None:
        self.max_graphs = max_graphs
        self.max_bytes = max_bytes
        self._graphs: OrderedDict[str, Graph] = OrderedDict()
        self._refused: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str) -> Graph | None:
        """The shared graph of this setting, if one was exported in this process."""
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
        return graph

    def put(self, key: str, graph: Graph) -> bool:
        """Keep `graph` for later resolutions of this setting; False when it cannot be shared or is too big."""
        if not graph.spatial_dynamic or len(graph.model) > self.max_bytes:
            return False
        self._graphs[key] = graph
        self._graphs.move_to_end(key)
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return True

    def refuse(self, key: str, reason: str) -> None:
        """Record that this setting needs one export per resolution, and why; drop its shared graph."""
        self._graphs.pop(key, None)
        self._refused[key] = reason
        while len(self._refused) > 64 * self.max_graphs:
            self._refused.popitem(last=False)

    def refused(self, key: str) -> str | None:
        """Why this setting is exported per resolution, or None."""
        return self._refused.get(key)

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Forget every graph and refusal."""
        self._graphs.clear()
        self._refused.clear()

    def __enter__(self) -> ExportCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


#: The process-wide cache the ORT backend uses.
EXPORTS = ExportCache()
