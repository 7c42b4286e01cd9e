"""Module specs beyond the zoo: `path/to/file.py:Name` and `package.module:Name` resolve to an ad-hoc ModuleSpec.

`Name` is an nn.Module subclass or a factory function, called as `Name(dim, **kwargs)` (the first positional
argument is the channel count, timm's convention for attention layers). Loading a file runs its code, as
pytest does when it collects a test file. Every way a spec can be wrong raises ModuleSpecError with one line
that names the file (and line) and says what to do; attnbench.zoo.registry.get_spec() is the only caller and caches the
result, so a file is imported once per process and runner, counting and backends see a ModuleSpec like any
zoo entry. The Python API also turns classes, factories and instances into specs (`spec_for_object`).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from attnbench.errors import ModuleSpecError
from attnbench.results import DEFAULT_USER_LAYOUT
from attnbench.zoo.spec import PRIVATE_PREFIX, Constraint, ModuleSpec, Reference, Setting, file_hash

#: Suffix of the names given to module instances passed to the Python API (they cannot be rebuilt from text).
INSTANCE_SUFFIX = " (instance)"
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

#: Imported files by absolute path, and the private module name each got.
_FILES: dict[str, ModuleType] = {}
_FILE_OF_PRIVATE: dict[str, str] = {}


def is_spec(text: str) -> bool:
    """True when `text` names a module by file or import path (it has a ':Name'), not a zoo name."""
    return ":" in text


def looks_like_spec(text: str) -> bool:
    """True for text that is meant as a file or import path but lacks ':Name' (e.g. 'attn.py', 'pkg.mod')."""
    return not is_spec(text) and (text.endswith(".py") or "/" in text or os.sep in text or "." in text)


def _split(text: str) -> tuple[str, str]:
    """'models/attn.py:MyAttn' -> ('models/attn.py', 'MyAttn'); the last ':' separates (a path may hold one)."""
    target, _, name = text.strip().rpartition(":")
    if not target or not name:
        raise ModuleSpecError(f"module spec {text!r}: expected path/to/file.py:Name or package.module:Name")
    if not _DOTTED.match(name):
        raise ModuleSpecError(f"module spec {text!r}: {name!r} after ':' is not a Python name")
    return target, name


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _display_path(path: str) -> str:
    """A file as reports name it: relative to the current directory when inside it, else absolute."""
    absolute = os.path.normpath(os.path.join(os.getcwd(), os.path.expanduser(path)))
    for base, full in ((os.getcwd(), absolute), (os.path.realpath(os.getcwd()), os.path.realpath(absolute))):
        if os.path.commonpath([base, full]) == base:
            return Path(os.path.relpath(full, base)).as_posix()
    # Outside the current directory a '../..' path would depend on where one stands: keep it absolute.
    return Path(absolute).as_posix()


def normalise(text: str) -> str:
    """The spec as rows name it: a file relative to the current directory; zoo names and imports as typed.

    Pure text work (nothing is imported), so the same file gives the same module name on every run and
    machine that runs from the same directory: './models/attn.py:A', '/abs/cwd/models/attn.py:A' and
    'models//attn.py:A' are all 'models/attn.py:A'.
    """
    text = text.strip()
    target, _, name = text.rpartition(":")
    if target and _is_file_target(target):
        return f"{_display_path(target)}:{name}"
    return text


def missing_name(text: str) -> str:
    """The message for a spec without ':Name' ('attn.py', 'pkg.mod'), with the classes a file defines."""
    if _is_file_target(text):
        if not os.path.isfile(os.path.expanduser(text)):
            return f"module spec {text!r}: no such file, and a spec needs :Name (path/to/file.py:Name)"
        classes = _classes_in_file(text)
        example = classes[0] if classes else "MyAttention"
        listed = f" (classes in it: {', '.join(classes)})" if classes else ""
        return f"module spec {text!r} names no class or function: add :Name, e.g. {text}:{example}{listed}"
    return f"module spec {text!r} names no class or function: add :Name, e.g. {text}:MyAttention"


def _classes_in_file(path: str) -> list[str]:
    """Classes a file defines that derive from something ending in 'Module', read without running the file."""

    try:
        tree = ast.parse(Path(os.path.expanduser(path)).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("Module") for b in node.bases)
    ]


def cache_key(text: str) -> str:
    """Where a spec's code lives: a file spec's real path plus ':Name' (the name rows use is relative to the
    current directory, which may change between calls of the Python API); any other text as it is."""
    text = text.strip()
    target, _, name = text.rpartition(":")
    if target and _is_file_target(target):
        return f"{os.path.realpath(os.path.expanduser(target))}:{name}"
    return text


# ---------------------------------------------------------------- loading the code


def _where(exc: BaseException, prefer: str | None) -> str:
    """'file:line' of the frame that raised: the deepest one in `prefer` (the user's file) if any."""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_display_path(exc.filename)}:{exc.lineno}"
    chosen = [f for f in frames if prefer and os.path.realpath(f.filename) == os.path.realpath(prefer)]
    frame = (chosen or [f for f in frames if not f.filename.startswith("<frozen")] or frames or [None])[-1]
    return f"{_display_path(frame.filename)}:{frame.lineno}" if frame is not None else "?"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg}"
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def load_file(path: str) -> ModuleType:
    """Import a Python file under a private module name (once per process); errors name the file and line."""
    shown = _display_path(path)
    absolute = os.path.realpath(os.path.expanduser(path))
    if absolute in _FILES:
        return _FILES[absolute]
    if not os.path.exists(absolute):
        raise ModuleSpecError(f"{shown}: no such file (looked for {absolute})")
    if os.path.isdir(absolute):
        raise ModuleSpecError(f"{shown}: is a directory; name a .py file, or import a package as package.module:Name")
    digest = hashlib.sha1(absolute.encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", Path(absolute).stem)
    private = f"{PRIVATE_PREFIX}{digest}_{stem}"
    spec = importlib.util.spec_from_file_location(private, absolute)
    if spec is None or spec.loader is None:
        raise ModuleSpecError(f"{shown}: cannot be imported as Python source")
    module = importlib.util.module_from_spec(spec)
    # Registered before running: dataclasses, pickling and typing look the module up by name while it runs.
    sys.modules[private] = module
    # Sibling files import as top-level modules (as under pytest); appended, so they never shadow a package.
    folder = os.path.dirname(absolute)
    if folder not in sys.path:
        sys.path.append(folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[private]
        raise ModuleSpecError(f"{_where(exc, absolute)}: importing {shown} failed: {_error_text(exc)}") from None
    _FILES[absolute] = module
    _FILE_OF_PRIVATE[private] = absolute
    return module


def _import(target: str) -> ModuleType:
    """Import `package.module`; a missing module or an error inside it is one line naming file and line."""
    if not _DOTTED.match(target):
        raise ModuleSpecError(
            f"module spec target {target!r} is neither a .py file nor a dotted module path (package.module)"
        )
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise ModuleSpecError(f"cannot import {target}: no module named {exc.name!r} (is it installed?)") from None
        raise ModuleSpecError(f"{_where(exc, None)}: importing {target} failed: {_error_text(exc)}") from None
    except (Exception, SystemExit) as exc:
        origin = importlib.util.find_spec(target)
        prefer = origin.origin if origin is not None else None
        raise ModuleSpecError(f"{_where(exc, prefer)}: importing {target} failed: {_error_text(exc)}") from None


#: At most this many class names are listed when a name is not found.
MAX_LISTED = 10


def _classes_there(obj: Any) -> list[str]:
    """nn.Module subclasses a module defines (else those it exports, as a package's __init__ does)."""
    if not isinstance(obj, ModuleType):
        return []
    public = [(n, v) for n, v in vars(obj).items() if not n.startswith("_")]
    classes = [(n, v) for n, v in public if inspect.isclass(v) and issubclass(v, nn.Module)]
    own = [n for n, v in classes if v.__module__ == obj.__name__]
    return own or [n for n, _ in classes]


def _lookup(module: ModuleType, name: str, where: str) -> Any:
    """`module.name` (dotted names walk attributes); a missing name suggests close ones."""
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            candidates = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, candidates, n=3, cutoff=0.5)
            if close:
                raise ModuleSpecError(f"{where}: no name {name!r}: did you mean {', '.join(close)}?")
            classes = _classes_there(obj)
            listed = ", ".join(classes[:MAX_LISTED]) + (", ..." if len(classes) > MAX_LISTED else "")
            there = f"nn.Module classes there: {listed}" if classes else "it has no nn.Module class"
            raise ModuleSpecError(f"{where}: no name {name!r}; {there}")
        obj = getattr(obj, part)
    return obj


def _check_callable(obj: Any, where: str) -> None:
    if isinstance(obj, nn.Module):
        raise ModuleSpecError(
            f"{where} is an nn.Module instance, not a class or factory: name its class, or pass the instance "
            "to attnbench.profile() in Python"
        )
    if inspect.isclass(obj) and not issubclass(obj, nn.Module):
        raise ModuleSpecError(f"{where} is a class but not an nn.Module subclass")
    if not callable(obj):
        raise ModuleSpecError(f"{where} is of type {type(obj).__name__}, not an nn.Module subclass or a factory")


def load_target(text: str) -> tuple[Any, str]:
    """The object a spec names, and the source file that defines it (for the hash)."""
    target, name = _split(text)
    shown = normalise(text)
    if _is_file_target(target):
        module = load_file(target)
        where = _display_path(target)
    else:
        module = _import(target)
        where = target
    obj = _lookup(module, name, where)
    _check_callable(obj, shown)
    return obj, _source_file(obj) or getattr(module, "__file__", "") or ""


def _source_file(obj: Any) -> str:
    try:
        return inspect.getsourcefile(obj) or ""
    except (TypeError, OSError):
        return ""


# ---------------------------------------------------------------- the ad-hoc spec


def _call_text(factory: Callable[..., Any], dim: int, kwargs: Mapping[str, Any]) -> str:
    args = ", ".join([str(dim), *(f"{k}={v!r}" for k, v in kwargs.items())])
    return f"{getattr(factory, '__name__', 'factory')}({args})"


def _parameters_hint(factory: Callable[..., Any], exc: BaseException) -> str:
    # An unexpected keyword is the usual typo: list what the constructor does take.
    if not isinstance(exc, TypeError) or "keyword" not in str(exc):
        return ""
    try:
        params = list(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return ""
    return f" (it takes: {', '.join(params)})" if params else ""


class NotAModuleError(TypeError):
    """A factory returned something other than an nn.Module."""


def construct(factory: Callable[..., Any], dim: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """`factory(dim, **kwargs)`, refusing a result that is not an nn.Module."""
    module = factory(dim, **kwargs)
    if not isinstance(module, nn.Module):
        raise NotAModuleError(f"returned an object of type {type(module).__name__}, not an nn.Module")
    return module


def constructor_reason(factory: Callable[..., Any], dim: int, kwargs: Mapping[str, Any]) -> str | None:
    """Why `factory(dim, **kwargs)` cannot build a module (None when it can); the user's message is passed on.

    Tried on the meta device first (no weights allocated); a constructor that needs real tensors (a
    `.item()`, a table computed from data) is tried again on the CPU before it is judged.
    """
    try:
        with torch.device("meta"):
            construct(factory, dim, kwargs)
        return None
    except Exception:
        pass
    try:
        construct(factory, dim, kwargs)
        return None
    except NotAModuleError as exc:
        return f"{_call_text(factory, dim, kwargs)} {exc}"
    except Exception as exc:
        return f"{_call_text(factory, dim, kwargs)} raised {_error_text(exc)}{_parameters_hint(factory, exc)}"


def adhoc_spec(name: str, factory: Callable[..., Any], source: str, instance: nn.Module | None = None) -> ModuleSpec:
    """A ModuleSpec for a user's class, factory or instance: no formulas, one constraint (the constructor runs)."""
    qual = getattr(factory, "__qualname__", getattr(factory, "__name__", type(factory).__name__))
    if instance is not None:

        def builder(dim: int, res: Any, **kwargs: Any) -> nn.Module:
            return instance

        constraints: tuple[Constraint, ...] = ()
    else:

        def builder(dim: int, res: Any, **kwargs: Any) -> nn.Module:
            return construct(factory, dim, kwargs)

        judged: dict[str, str | None] = {}

        def check(setting: Setting) -> str | None:
            # Judged once per dim and kwargs: the sweep's checks and every build ask again.
            key = repr((setting.dim, sorted(setting.kwargs.items())))
            if key not in judged:
                judged[key] = constructor_reason(factory, setting.dim, setting.kwargs)
            return judged[key]

        constraints = (Constraint("constructor", check),)
    shown = _display_path(source) if source else ""
    return ModuleSpec(
        name=name,
        title=f"{qual} ({shown})" if shown else qual,
        builder=builder,
        layout=DEFAULT_USER_LAYOUT,
        defaults={},
        constraints=constraints,
        reference=Reference(paper="", arxiv="", repo="", file=shown, cls=qual),
        params_formula=None,
        macs_formula=None,
        notes="Your own module: counted and measured like the zoo, without hand formulas or constraints.",
        adhoc=True,
        source_file=source,
        source_hash=file_hash(source) if source else "",
        factory=factory,
    )


def resolve(text: str) -> ModuleSpec:
    """The ad-hoc spec for 'path/to/file.py:Name' or 'package.module:Name' (imports the code)."""
    obj, source = load_target(text)
    return adhoc_spec(normalise(text), obj, source)


def spec_for_object(obj: Any, taken: set[str] | None = None) -> ModuleSpec:
    """An ad-hoc spec for a class, factory or instance passed to the Python API, named as a spec would be.

    A class from an importable module is 'package.module:Class'; one from a file (a script's __main__, or a
    file loaded from a spec) is 'path/to/file.py:Class'. An instance is named after its class plus
    ' (instance)' (numbered when several share a class), since no text can rebuild it.
    """
    instance = obj if isinstance(obj, nn.Module) else None
    factory = type(obj) if instance is not None else obj
    if instance is None:
        _check_callable(obj, repr(obj))
    name = f"{_home(factory)}:{getattr(factory, '__qualname__', getattr(factory, '__name__', 'factory'))}"
    if instance is not None:
        taken = taken if taken is not None else set()
        base, n = name + INSTANCE_SUFFIX, 1
        name = base
        while name in taken:
            n += 1
            name = f"{base[:-1]} {n})"
    return adhoc_spec(name, factory, _source_file(factory), instance)


def _home(factory: Any) -> str:
    """Where a class or function lives, as the target part of a spec."""
    module_name = getattr(factory, "__module__", "") or "__main__"
    if module_name in _FILE_OF_PRIVATE:
        return _display_path(_FILE_OF_PRIVATE[module_name])
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module_name == "__main__" and path:
        return _display_path(path)
    return module_name
