"""The module registry: one ModuleSpec per zoo entry, validation of a case, and build()."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from attnbench.errors import InvalidCaseError, ModuleSpecError, UnknownModuleError

if TYPE_CHECKING:  # torch is imported with the module files (list and info read the catalog, without torch)
    from torch import nn

Resolution = tuple[int, int]


@dataclass(frozen=True)
class Reference:
    """Where a module comes from: the paper and the official code it reproduces."""

    paper: str
    arxiv: str
    repo: str
    file: str
    cls: str
    commit: str = ""


@dataclass(frozen=True)
class Setting:
    """What constraints and formulas see: dim, merged kwargs, and (when known) resolution and batch."""

    dim: int
    kwargs: Mapping[str, Any]
    height: int | None = None
    width: int | None = None
    batch: int = 1

    def __getitem__(self, key: str) -> Any:
        return self.kwargs[key]

    @property
    def tokens(self) -> int:
        """Number of tokens N = H * W (needs the resolution)."""
        assert self.height is not None and self.width is not None
        return self.height * self.width


@dataclass(frozen=True)
class Constraint:
    """One rule a case must satisfy; `check` returns a readable reason when the case breaks it."""

    name: str
    check: Callable[[Setting], str | None]
    #: True when the rule needs H and W (checked only once the resolution is known).
    needs_resolution: bool = False


@dataclass(frozen=True)
class Example:
    """A concrete case for tests: valid, or (with `violates`) crafted to break one named constraint."""

    dim: int
    res: Resolution
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch: int = 1
    #: For a bad example: the `Constraint.name` (or "dim", "kwargs", "resolution") it must be refused by.
    violates: str | None = None


@dataclass(frozen=True)
class ModuleSpec:
    """Everything attnbench knows about one zoo entry."""

    name: str
    title: str
    #: builder(dim, res, **kwargs) -> module taking and returning (B, C, H, W).
    builder: Callable[..., nn.Module]
    #: The official module's native layout; token-layout modules are wrapped to (B, C, H, W).
    layout: Literal["image", "tokens"]
    defaults: Mapping[str, Any]
    constraints: tuple[Constraint, ...]
    reference: Reference
    #: Hand-derived parameter count for a Setting (resolution needed only if resolution_bound); None for
    #: a user's module, which has no formula.
    params_formula: Callable[[Setting], int] | None
    #: Hand-derived MAC count (attnbench convention, see attnbench.counting) for a full Setting; None for a
    #: user's module.
    macs_formula: Callable[[Setting], int] | None
    #: True when the weights depend on H and W, so build() needs `res`.
    resolution_bound: bool = False
    #: What differs from the official code (generalisations, dropped arguments), in one paragraph.
    notes: str = ""
    #: One line per kwarg saying what it is.
    kwarg_help: Mapping[str, str] = field(default_factory=dict)
    #: Valid cases the tests build and count (three or more, one non-square, one with non-default kwargs).
    examples: tuple[Example, ...] = ()
    #: One crafted bad case per constraint, each naming the constraint it breaks.
    bad_examples: tuple[Example, ...] = ()
    tags: tuple[str, ...] = ()
    #: True for a module given by file or import path (attnbench.specs): its builder returns the user's module
    #: as is, each case picks the layout it takes (image or tokens), and its kwargs are checked by calling it.
    adhoc: bool = False
    #: The file whose hash identifies the code ("" = the file that defines the builder).
    source_file: str = ""
    #: That file's short hash when its code was loaded ("" = computed on first use, see source_hash()).
    source_hash: str = ""
    #: A user's class or factory function (None for the zoo), called as factory(dim, **kwargs).
    factory: Callable[..., Any] | None = None

    def case_layout(self, requested: str = "") -> str:
        """The layout a case of this module records: "" (its own) for the zoo, image or tokens for a user's module."""
        if not self.adhoc:
            return ""
        return requested or DEFAULT_USER_LAYOUT


#: What a user's module takes and returns unless told otherwise: (B, C, H, W) maps.
DEFAULT_USER_LAYOUT = "image"
USER_LAYOUTS = ("image", "tokens")

_REGISTRY: dict[str, ModuleSpec] = {}
_LOADED = False


def register(spec: ModuleSpec) -> ModuleSpec:
    """Add a spec to the registry (called at the bottom of each module file)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"module {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    # Importing attnbench.modules runs every module file's register() call.
    global _LOADED
    if not _LOADED:
        importlib.import_module("attnbench.modules")
        _LOADED = True


def list_modules() -> list[str]:
    """Names of every registered module, in registration order."""
    _ensure_loaded()
    return list(_REGISTRY)


#: Specs resolved from file or import paths (and objects given to the Python API), by where the code lives
#: (a file's real path, not the name relative to today's directory): a file is imported once per process,
#: and every later lookup returns the same classes.
_ADHOC: dict[str, ModuleSpec] = {}


def get_spec(name: str) -> ModuleSpec:
    """The spec for a zoo name, 'path/to/file.py:Name' or 'package.module:Name' (resolved once, then cached).

    Unknown zoo names raise UnknownModuleError with the closest matches; a spec that cannot be loaded raises
    ModuleSpecError with one line saying why.
    """
    from attnbench import specs

    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    key = specs.cache_key(name)
    if key in _ADHOC:
        return _ADHOC[key]
    if not specs.is_spec(name):
        if specs.looks_like_spec(name):
            raise ModuleSpecError(specs.missing_name(name))
        raise UnknownModuleError(name, list(_REGISTRY))
    _ADHOC[key] = specs.resolve(name)
    return _ADHOC[key]


def add_spec(spec: ModuleSpec) -> ModuleSpec:
    """Cache a user's spec under its name (objects passed to the Python API), replacing an older one."""
    from attnbench import specs

    _ADHOC[specs.cache_key(spec.name)] = spec
    return spec


#: Source hashes by module name, taken once: the hash of the code this process runs, even if the file
#: changes on disk later.
_HASHES: dict[str, str] = {}


def source_hash(name: str) -> str:
    """Short hash of the source file of a module (a zoo module's file too), so reports show that code changed."""
    import inspect

    from attnbench import specs

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
        _HASHES[spec.name] = specs.source_hash(path) if path else ""
    return _HASHES[spec.name]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_reason(key: str, value: Any, default: Any) -> str | None:
    """Why `value` cannot stand where the spec's default is `default` (None if it can)."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "a bool"
    elif _is_int(default):
        ok, want = _is_int(value), "an int"
    elif isinstance(default, float):
        ok, want = (_is_int(value) or isinstance(value, float)), "a number"
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_int(v) for v in value)
        want = "a non-empty list of ints"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif default is None:
        # Every None default in the zoo means "derive it" for an int size (d_k, d_v).
        ok, want = value is None or _is_int(value), "an int or None"
    else:
        return None
    return None if ok else f"{key} must be {want}, got {value!r} ({type(value).__name__})"


def _as_resolution(module: str, res: int | Resolution | None) -> Resolution | None:
    if res is None:
        return None
    if _is_int(res):
        res = (res, res)  # type: ignore[assignment]
    if not isinstance(res, (tuple, list)) or len(res) != 2 or not all(_is_int(v) for v in res) or min(res) < 1:
        raise InvalidCaseError(module, "resolution", f"must be an int >= 1 or (H, W) of such ints, got {res!r}")
    return (int(res[0]), int(res[1]))


def validate(
    name: str,
    dim: int,
    res: int | Resolution | None = None,
    batch: int = 1,
    **kwargs: Any,
) -> tuple[ModuleSpec, Setting]:
    """Check a case against the spec's types and constraints; return the spec and the merged Setting.

    Constraints that need a resolution are checked only when `res` is given. Nothing is allocated.
    """
    return check_case(name, dim, res, batch, kwargs)


def check_case(
    name: str,
    dim: int,
    res: int | Resolution | None = None,
    batch: int = 1,
    kwargs: Mapping[str, Any] | None = None,
    layout: str = "",
) -> tuple[ModuleSpec, Setting]:
    """validate() with the kwargs as a mapping (any key, even 'layout') and the case's layout."""
    kwargs = dict(kwargs or {})
    spec = get_spec(name)
    if not _is_int(dim) or dim < 1:
        raise InvalidCaseError(name, "dim", f"must be an int >= 1, got {dim!r}")
    if not _is_int(batch) or batch < 1:
        raise InvalidCaseError(name, "batch", f"must be an int >= 1, got {batch!r}")
    _check_layout(spec, layout)
    if not spec.adhoc:  # a user's module has no declared kwargs: its constructor judges them (a constraint)
        _check_kwargs(spec, kwargs)
    merged = {**spec.defaults, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}}
    hw = _as_resolution(name, res)
    setting = Setting(dim, merged, hw[0] if hw else None, hw[1] if hw else None, batch)
    for constraint in spec.constraints:
        if constraint.needs_resolution and hw is None:
            continue
        reason = constraint.check(setting)
        if reason:
            raise InvalidCaseError(name, constraint.name, reason)
    return spec, setting


def _check_layout(spec: ModuleSpec, layout: str) -> None:
    if not layout:
        return
    if not spec.adhoc:
        raise InvalidCaseError(
            spec.name, "layout", f"a zoo module keeps its own layout ({spec.layout}); layouts are for your own modules"
        )
    if layout not in USER_LAYOUTS:
        raise InvalidCaseError(spec.name, "layout", f"{layout!r} is not one of {', '.join(USER_LAYOUTS)}")


def _check_kwargs(spec: ModuleSpec, kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(spec.defaults))
    if unknown:
        allowed = ", ".join(spec.defaults) or "none"
        raise InvalidCaseError(spec.name, "kwargs", f"unknown keyword(s) {', '.join(unknown)}; allowed: {allowed}")
    for key, value in kwargs.items():
        reason = _type_reason(key, value, spec.defaults[key])
        if reason:
            raise InvalidCaseError(spec.name, "kwargs", reason)


def build(name: str, dim: int, res: int | Resolution | None = None, **kwargs: Any) -> nn.Module:
    """Build module `name` (zoo name or spec) for `dim` channels; it takes and returns (B, C, H, W) tensors.

    `res` (int or (H, W)) is required only by modules whose weights depend on the resolution;
    when given, resolution constraints are checked too.
    """
    return build_module(name, dim, res, kwargs)


def build_module(
    name: str,
    dim: int,
    res: int | Resolution | None = None,
    kwargs: Mapping[str, Any] | None = None,
    layout: str = "",
) -> nn.Module:
    """build() with the kwargs as a mapping and the case's layout: a user's (B, N, C) module gets the adapter."""
    from attnbench.adapters import TokensToImage

    spec, setting = check_case(name, dim, res, 1, kwargs, layout)
    if spec.resolution_bound and res is None:
        raise InvalidCaseError(name, "resolution", "its weights depend on H and W: pass res=(H, W)")
    hw = None if setting.height is None else (setting.height, setting.width)
    module = spec.builder(dim, hw, **setting.kwargs)
    # The zoo's builders adapt their own modules; a user's module is adapted here, by the same adapter.
    return TokensToImage(module) if spec.case_layout(layout) == "tokens" else module
