"""The zoo's metadata as plain data (what `list` and `info` print), cached on disk so they answer without torch.

Importing the zoo means importing torch (every module file defines an nn.Module), which takes seconds. The
metadata a person browses does not need it: it is computed from the registry once, written as JSON to the
user's cache directory, and read back while attnbench's source is unchanged. The cache is keyed by a hash of
every source file of the package, so an edited module rebuilds it; an unwritable cache only costs speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.cache import CACHE_ENV, default_dir  # noqa: F401  (CACHE_ENV: named here before the cache had a module)
from attnbench.errors import UnknownModuleError
from attnbench.zoo.registry import get_spec, list_modules
from attnbench.zoo.spec import Setting

if TYPE_CHECKING:
    from attnbench.zoo.spec import ModuleSpec

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the whole attnbench package


def describe(spec: ModuleSpec) -> dict[str, Any]:
    """Everything `list` and `info` show about one module, as JSON-ready data."""

    ref = spec.reference
    example = None
    if spec.examples:
        ex = spec.examples[0]
        s = Setting(ex.dim, {**spec.defaults, **ex.kwargs}, ex.res[0], ex.res[1], ex.batch)
        example = {
            "dim": ex.dim,
            "res": list(ex.res),
            "batch": ex.batch,
            "params": spec.params_formula(s),
            "macs": spec.macs_formula(s),
        }
    return {
        "name": spec.name,
        "title": spec.title,
        "paper": ref.paper,
        "arxiv": ref.arxiv,
        "repo": ref.repo,
        "file": ref.file,
        "cls": ref.cls,
        "commit": ref.commit,
        "layout": spec.layout,
        "resolution_bound": spec.resolution_bound,
        "defaults": [[key, repr(value)] for key, value in spec.defaults.items()],
        "kwarg_help": dict(spec.kwarg_help),
        "constraints": [{"name": c.name, "needs_resolution": c.needs_resolution} for c in spec.constraints],
        "notes": spec.notes,
        "example": example,
        "tags": list(spec.tags),
    }


def resolution_text(entry: dict[str, Any]) -> str:
    """What a module asks of H and W, truthfully: bound weights, the rules on H and W, or 'any'."""
    rules = [c["name"] for c in entry["constraints"] if c["needs_resolution"]]
    if entry["resolution_bound"]:
        return "bound (weights depend on H, W; pass --res)" + (f"; and {'; '.join(rules)}" if rules else "")
    return "constrained: " + "; ".join(rules) if rules else "any"


def source_key() -> str:
    """A hash of every source file of the package, the version of Python, and the package's location."""
    digest = hashlib.sha256(f"{sys.version}|{PACKAGE_DIR}".encode())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where the catalog is cached: the directory of attnbench's cache across runs (attnbench.cache)."""
    return default_dir()


def live() -> list[dict[str, Any]]:
    """The catalog computed from the registry (imports every module file, hence torch)."""

    return [describe(get_spec(name)) for name in list_modules()]


def zoo() -> list[dict[str, Any]]:
    """The catalog: from the cache when it matches the source, else computed (and cached for next time)."""
    path = cache_dir() / f"zoo-{source_key()}.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(entries, list) and all(isinstance(e, dict) and "name" in e for e in entries):
            return entries
    except (OSError, ValueError):
        pass
    entries = live()
    _store(path, entries)
    return entries


def _store(path: Path, entries: list[dict[str, Any]]) -> None:
    # Best effort: a read-only home only makes the next call slow. Old versions of the cache are removed.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob("zoo-*.json"):
            if old != path:
                old.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def entry(name: str) -> dict[str, Any]:
    """One module's catalog entry; an unknown name raises UnknownModuleError with the closest matches."""

    entries = zoo()
    for e in entries:
        if e["name"] == name:
            return e
    raise UnknownModuleError(name, [e["name"] for e in entries])
