"""The zoo's table: name -> "module:SPEC" (each file of attnbench.zoo.modules defines its specs), and lookup.

Adding a module to the zoo is its file plus one line here. Module files are imported on first lookup, so
`import attnbench` and the quick commands (list, info, env) never import torch. User specs
('path/to/file.py:Name', 'package.module:Name') are resolved by attnbench.zoo.user and cached here.
"""

from __future__ import annotations

import importlib
import inspect

from attnbench.errors import ModuleSpecError, UnknownModuleError
from attnbench.zoo.spec import ModuleSpec, file_hash

#: The zoo, in the order `list` and `--all` show it: name -> "module:attribute" of its ModuleSpec.
ZOO: dict[str, str] = {
    "acmix": "attnbench.zoo.modules.acmix:SPEC",
    "ea": "attnbench.zoo.modules.external:SPEC",
    "mhsa": "attnbench.zoo.modules.mhsa:SPEC",
    "sk": "attnbench.zoo.modules.sk:SPEC",
    "da": "attnbench.zoo.modules.danet:SPEC",
    "epsa": "attnbench.zoo.modules.epsa:SPEC",
    "sam": "attnbench.zoo.modules.smt_sam:SPEC",
    "clo": "attnbench.zoo.modules.cloformer:SPEC",
    "lka": "attnbench.zoo.modules.van_lka:LKA_SPEC",
    "van": "attnbench.zoo.modules.van_lka:VAN_SPEC",
}

_LOADED: dict[str, ModuleSpec] = {}
#: Specs resolved from file or import paths (and objects given to the Python API), by where the code lives
#: (a file's real path, not the name relative to today's directory): a file is imported once per process,
#: and every later lookup returns the same classes.
_ADHOC: dict[str, ModuleSpec] = {}
#: Cache keys of the user specs resolved from their text: another process can resolve the same text again (an
#: object given to the Python API cannot be rebuilt elsewhere).
_FROM_TEXT: set[str] = set()
#: Source hashes by module name, taken once: the hash of the code this process runs, even if the file
#: changes on disk later.
_HASHES: dict[str, str] = {}


def list_modules() -> list[str]:
    """Names of every zoo module, in the table's order."""
    return list(ZOO)


def _zoo_spec(name: str) -> ModuleSpec:
    if name not in _LOADED:
        module, _, attribute = ZOO[name].partition(":")
        spec = getattr(importlib.import_module(module), attribute)
        if spec.name != name:
            raise ValueError(f"the zoo table maps {name!r} to {ZOO[name]}, whose spec is named {spec.name!r}")
        _LOADED[name] = spec
    return _LOADED[name]


def get_spec(name: str) -> ModuleSpec:
    """The spec for a zoo name, 'path/to/file.py:Name' or 'package.module:Name' (resolved once, then cached).

    Unknown zoo names raise UnknownModuleError with the closest matches; a spec that cannot be loaded raises
    ModuleSpecError with one line saying why.
    """
    if name in ZOO:
        return _zoo_spec(name)
    # Here, not at the top: user specs import torch, which the quick commands (list, info, env) never need.
    from attnbench.zoo import user

    key = user.cache_key(name)
    if key in _ADHOC:
        return _ADHOC[key]
    if not user.is_spec(name):
        if user.looks_like_spec(name):
            raise ModuleSpecError(user.missing_name(name))
        raise UnknownModuleError(name, list(ZOO))
    _ADHOC[key] = user.resolve(name)
    _FROM_TEXT.add(key)
    return _ADHOC[key]


def add_spec(spec: ModuleSpec) -> ModuleSpec:
    """Cache a user's spec under its name (objects passed to the Python API), replacing an older one."""
    from attnbench.zoo import user  # torch: see get_spec

    key = user.cache_key(spec.name)
    _ADHOC[key] = spec
    _FROM_TEXT.discard(key)
    return spec


def rebuildable(name: str) -> bool:
    """Whether another process can build this module from its name alone: a zoo name, or a spec typed as text
    (a class, factory or instance given to the Python API lives in this process only)."""
    if name in ZOO:
        return True
    from attnbench.zoo import user  # torch: see get_spec

    return user.cache_key(name) in _FROM_TEXT


def source_hash(name: str) -> str:
    """Short hash of the source file of a module (a zoo module's file too), so reports show that code changed."""
    spec = get_spec(name)
    if spec.source_hash:
        return spec.source_hash
    if spec.adhoc:  # hashed when its code was loaded; "" when it has no source file (a C extension)
        return ""
    if spec.name not in _HASHES:
        path = spec.source_file
        if not path:
            try:
                path = inspect.getsourcefile(spec.builder) or ""
            except TypeError:
                path = ""
        _HASHES[spec.name] = file_hash(path) if path else ""
    return _HASHES[spec.name]
