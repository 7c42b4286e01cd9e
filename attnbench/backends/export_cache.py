"""ONNX graphs exported once per module setting and reused for every resolution of it, in memory and across runs.

A module setting is identified by a fingerprint of the module itself (module_fingerprint): the class of every
submodule and the source file it comes from, their plain attributes (heads, kernel sizes, flags) and the bytes of
every parameter and buffer. Two modules with different weights, code or settings never share a graph. The runner
builds one module per geometry from the same seed, so the modules of one setting at 14x14 and at 56x56 have the
same fingerprint whenever their weights do not depend on the resolution.

A setting has either one graph with batch, H and W all symbolic (a "spatial" graph, for every resolution), or,
when that export is refused (with why), one graph per input shape ("fixed": batch symbolic only). Graphs are kept
as serialized bytes (ONNX Runtime opens a session from bytes), so no file outlives the export that wrote it.

In memory the cache is process-wide and bounded (MAX_GRAPHS, MAX_GRAPH_BYTES, MAX_TOTAL_BYTES); `clear()` or
`with EXPORTS:` empties it. With a disk cache attached (`attached(cache)`, attnbench.cache), a graph also
outlives the run: its key adds the versions of torch, onnx, onnxscript and onnxruntime and the code of the
exporter to the fingerprint, and a graph read back is checked for parity like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

#: Graphs kept at once in memory: a run prepares a group's settings before timing them, so many may be live.
MAX_GRAPHS = 256
#: Larger graphs are not kept (they are exported per resolution, as before).
MAX_GRAPH_BYTES = 256 * 2**20
#: All kept graphs together.
MAX_TOTAL_BYTES = 2**30
#: Kind of the disk cache's entries.
DISK_KIND = "exports"
#: Where a graph came from (recorded in the row that uses it first).
ORIGIN_HERE, ORIGIN_WORKER, ORIGIN_DISK = "", "worker", "cache"

_PLAIN = (bool, int, float, str, type(None))
Shape = tuple[int, ...]


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
    #: Where it came from: this process (""), a worker process, or the disk cache.
    origin: str = ORIGIN_HERE

    @property
    def spatial_dynamic(self) -> bool:
        """True when batch, H and W all came out symbolic, so one graph can serve every resolution."""
        return len(self.dims) == 4 and all(isinstance(self.dims[i], str) for i in (0, 2, 3))


@dataclass
class ExportAnswer:
    """What a worker's export job (attnbench.backends.ort.export_job) gives back for one module setting."""

    spatial: Graph | None = None
    #: Why the spatial export was refused (then `fixed` holds one graph per shape asked for).
    refused: str | None = None
    fixed: dict[Shape, Graph] = field(default_factory=dict)
    #: Shapes whose export failed: the CaseFailed to raise for them.
    failed: dict[Shape, Exception] = field(default_factory=dict)


class DiskCache(Protocol):
    """What the export cache needs of attnbench.cache.Cache."""

    def key(self, kind: str, parts: dict[str, Any]) -> str: ...

    def get(self, kind: str, key: str) -> Any: ...

    def put(self, kind: str, key: str, data: bytes, meta: dict[str, Any]) -> Any: ...


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, tuple | list | torch.Size) and all(_plain(v) for v in value)


@functools.lru_cache(maxsize=1024)
def _file_digest(path: str, mtime_ns: int) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=8).hexdigest()


def class_source(cls: type) -> str:
    """A digest of the file a class is defined in ("" when it has none): a forward changed there changes it."""
    try:
        path = inspect.getsourcefile(cls)
        return _file_digest(path, Path(path).stat().st_mtime_ns) if path else ""
    except (TypeError, OSError):
        return ""


def module_fingerprint(module: nn.Module) -> str:
    """A digest of the module's structure, code, plain attributes and weights: equal digests export equal graphs."""
    digest = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules():
        cls = type(sub)
        digest.update(f"<{name}:{cls.__module__}.{cls.__qualname__}:{class_source(cls)}>".encode())
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


def _exporter_code() -> str:
    """A digest of the attnbench code that shapes a graph (the ORT backend and this cache)."""
    here = Path(__file__).resolve().parent
    digest = hashlib.blake2b(digest_size=8)
    for name in ("ort.py", "export_cache.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def graph_meta(graph: Graph) -> dict[str, Any]:
    """The JSON-able facts of a graph, stored beside its bytes on disk."""
    return {
        "exporter": graph.exporter,
        "dims": list(graph.dims),
        "opset": graph.opset,
        "info": graph.info,
        "exported_at": list(graph.exported_at),
    }


def graph_of(data: bytes, meta: dict[str, Any]) -> Graph:
    """A graph read back from the disk cache."""
    return Graph(
        model=data,
        exporter=str(meta["exporter"]),
        dims=tuple(meta["dims"]),
        opset=meta.get("opset"),
        info=dict(meta.get("info", {})),
        exported_at=tuple(meta.get("exported_at", ())),
        origin=ORIGIN_DISK,
    )


class ExportCache:
    """Graphs by module fingerprint (and shape, for fixed ones), the refusals, the failures; optionally on disk."""

    def __init__(self, max_graphs: int = MAX_GRAPHS, max_bytes: int = MAX_GRAPH_BYTES) -> None:
        self.max_graphs = max_graphs
        self.max_bytes = max_bytes
        self._graphs: OrderedDict[tuple[str, Shape | None], Graph] = OrderedDict()
        self._refused: OrderedDict[str, str] = OrderedDict()
        self._failed: dict[tuple[str, Shape], Exception] = {}
        #: Graphs from a worker or the disk whose first user has taken them (it records their origin).
        self._claimed: set[tuple[str, Shape | None]] = set()
        self.disk: DiskCache | None = None

    # ------------------------------------------------------------ the disk layer

    @contextlib.contextmanager
    def attached(self, disk: DiskCache | None) -> Iterator[ExportCache]:
        """Read and write graphs through `disk` too for the block (None: memory only)."""
        before, self.disk = self.disk, disk
        try:
            yield self
        finally:
            self.disk = before

    def _disk_key(self, key: str, shape: Shape | None) -> str:
        assert self.disk is not None
        parts = {"fingerprint": key, "shape": list(shape) if shape else "spatial", "code": _exporter_code()}
        return self.disk.key(DISK_KIND, parts)

    def _load(self, key: str, shape: Shape | None) -> None:
        """Bring a setting's graph (or its refusal) from the disk into memory, if there is one."""
        if self.disk is None or (key, shape) in self._graphs or (shape is None and key in self._refused):
            return
        entry = self.disk.get(DISK_KIND, self._disk_key(key, shape))
        if entry is None:
            return
        if shape is None and entry.meta.get("refused"):
            self._refused[key] = str(entry.meta["refused"])
        elif entry.data:
            self._keep((key, shape), graph_of(entry.data, entry.meta))

    def _store(self, key: str, shape: Shape | None, graph: Graph | None, refused: str = "") -> None:
        if self.disk is None:
            return
        meta = graph_meta(graph) if graph is not None else {}
        if refused:
            meta["refused"] = refused
        with contextlib.suppress(OSError, TypeError, ValueError):  # a cache that cannot store is no cache
            json.dumps(meta)
            self.disk.put(DISK_KIND, self._disk_key(key, shape), graph.model if graph is not None else b"", meta)

    # ------------------------------------------------------------ graphs

    def _keep(self, slot: tuple[str, Shape | None], graph: Graph) -> bool:
        if len(graph.model) > self.max_bytes or not graph.model:
            return False
        self._graphs[slot] = graph
        self._graphs.move_to_end(slot)
        while len(self._graphs) > self.max_graphs or self._total() > MAX_TOTAL_BYTES:
            self._graphs.popitem(last=False)
        return slot in self._graphs

    def _total(self) -> int:
        return sum(len(g.model) for g in self._graphs.values())

    def get(self, key: str) -> Graph | None:
        """The shared (spatial) graph of this setting, if one was exported, here or in a run before."""
        self._load(key, None)
        graph = self._graphs.get((key, None))
        if graph is not None:
            self._graphs.move_to_end((key, None))
        return graph

    def put(self, key: str, graph: Graph) -> bool:
        """Keep `graph` for later resolutions of this setting; False when it cannot be shared or is too big."""
        if not graph.spatial_dynamic or not self._keep((key, None), graph):
            return False
        if graph.origin != ORIGIN_DISK:
            self._store(key, None, graph)
        return True

    def get_fixed(self, key: str, shape: Sequence[int]) -> Graph | None:
        """This setting's graph for one input shape (exported per resolution), if there is one."""
        self._load(key, tuple(shape))
        return self._graphs.get((key, tuple(shape)))

    def put_fixed(self, key: str, shape: Sequence[int], graph: Graph) -> None:
        """Keep a graph exported for one input shape."""
        if self._keep((key, tuple(shape)), graph) and graph.origin != ORIGIN_DISK:
            self._store(key, tuple(shape), graph)

    def claim(self, key: str, shape: Sequence[int] | None = None) -> bool:
        """True the first time a graph from a worker or the disk is used (that row records where it came from)."""
        slot = (key, tuple(shape) if shape is not None else None)
        graph = self._graphs.get(slot)
        if graph is None or graph.origin == ORIGIN_HERE or slot in self._claimed:
            return False
        self._claimed.add(slot)
        return True

    # ------------------------------------------------------------ refusals and failures

    def refuse(self, key: str, reason: str, lasting: bool = False) -> None:
        """Record that this setting needs one export per resolution, and why; drop its shared graph.

        `lasting`: the exporter itself refused (not a parity check at one resolution), so later runs may know too.
        """
        self._graphs.pop((key, None), None)
        self._refused[key] = reason
        while len(self._refused) > 64 * self.max_graphs:
            self._refused.popitem(last=False)
        if lasting:
            self._store(key, None, None, refused=reason)

    def refused(self, key: str) -> str | None:
        """Why this setting is exported per resolution, or None."""
        self._load(key, None)
        return self._refused.get(key)

    def fail(self, key: str, shape: Sequence[int], exc: Exception) -> None:
        """Record that exporting this setting at `shape` failed (in a worker): preparing it raises `exc`."""
        self._failed[(key, tuple(shape))] = exc

    def failure(self, key: str, shape: Sequence[int]) -> Exception | None:
        """The failure recorded for this setting at `shape`, or None."""
        return self._failed.get((key, tuple(shape)))

    def receive(self, key: str, answer: ExportAnswer) -> None:
        """Take in what a worker exported for one setting."""
        if answer.spatial is not None:
            self.put(key, dataclasses.replace(answer.spatial, origin=ORIGIN_WORKER))
        if answer.refused is not None:
            self.refuse(key, answer.refused, lasting=True)
        for shape, graph in answer.fixed.items():
            self.put_fixed(key, shape, dataclasses.replace(graph, origin=ORIGIN_WORKER))
        for shape, exc in answer.failed.items():
            self.fail(key, shape, exc)

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Forget every graph, refusal and failure (the disk keeps its own)."""
        self._graphs.clear()
        self._refused.clear()
        self._failed.clear()
        self._claimed.clear()

    def __enter__(self) -> ExportCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


#: The process-wide cache the ORT backend uses.
EXPORTS = ExportCache()
