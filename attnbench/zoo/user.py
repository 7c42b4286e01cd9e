"""Module specs beyond the zoo: `path/to/file.py:Name` and `package.module:Name` resolve to an ad-hoc ModuleSpec.

`Name` is an nn.Module subclass or a factory function, called as `Name(dim, **kwargs)` (the first positional
argument is the channel count, timm's convention for attention layers). A spec with an explicit call,
`path/to/file.py:factory(depth=2, pretrained=False)` or `package.module:factory(...)`, is built exactly as
written instead: its arguments are Python literals (parsed, never run), no dim is passed, and `--dim` only gives
the input's channels. A file inside a package (its folder has an `__init__.py`) is imported as part of its
package, rooted at the highest folder above it that still has one, so its relative imports work. Loading a file
runs its code, as pytest does when it collects a test file. Every way a spec can be wrong raises ModuleSpecError
with one line that names the file (and line) and says what to do; attnbench.zoo.registry.get_spec() is the only
caller and caches the result, so a file is imported once per process and runner, counting and backends see a
ModuleSpec like any zoo entry. The Python API also turns classes, factories and instances into specs
(`spec_for_object`).
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
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Call:
    """An explicit call written in a spec, `factory(*args, **kwargs)`: built as written, with no dim passed."""

    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def text(self, name: str, extra: Mapping[str, Any] | None = None) -> str:
        """The call as Python source: 'van_b0(pretrained=False)' (plus `extra` keywords, from --kw)."""
        items = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in (*self.kwargs, *(extra or {}).items())]
        return f"{name}({', '.join(items)})"


#: What a failed build says about the form a spec used.
FORM_DIM = (
    "built as Name(dim, **kwargs): --dim is its first argument; write Name(...) in the spec to build it as written"
)
FORM_CALL = "built as written in the spec, with no dim: --dim gives only the input's channels"


def _literal(node: ast.expr, text: str) -> Any:
    """The value of one written argument, which must be a Python literal (nothing in a spec is run)."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ModuleSpecError(
            f"module spec {text!r}: argument {ast.unparse(node)!r} is not a Python literal (numbers, strings, "
            "True/False/None, lists, tuples, dicts): a spec's call is parsed, never run"
        ) from None


def parse_call(arguments: str, text: str) -> Call:
    """The written arguments of an explicit call ('depth=2, pretrained=False'), each a Python literal."""
    try:
        node = ast.parse(f"_({arguments})", mode="eval").body
    except SyntaxError as exc:
        raise ModuleSpecError(f"module spec {text!r}: its call is not valid Python ({exc.msg})") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.func.id != "_":
        raise ModuleSpecError(f"module spec {text!r}: expected Name(arguments) after ':'")
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise ModuleSpecError(f"module spec {text!r}: write each argument out (no *args or **kwargs)")
    args = tuple(_literal(a, text) for a in node.args)
    kwargs = tuple((k.arg, _literal(k.value, text)) for k in node.keywords if k.arg is not None)
    return Call(args, kwargs)


def _parts(text: str) -> tuple[str, str, str | None]:
    """'m.py:f(a=1)' -> ('m.py', 'f', 'a=1'); 'm.py:A' -> ('m.py', 'A', None). The call starts at the first '('."""
    text = text.strip()
    head, arguments = text, None
    if text.endswith(")") and "(" in text:
        head, _, rest = text.partition("(")
        arguments = rest[:-1]
    target, _, name = head.rpartition(":")
    return target, name.strip(), arguments


def _split(text: str) -> tuple[str, str, Call | None]:
    """'models/attn.py:MyAttn' -> ('models/attn.py', 'MyAttn', None); the last ':' before a call separates."""
    target, name, arguments = _parts(text)
    if not target or not name:
        raise ModuleSpecError(
            f"module spec {text!r}: expected path/to/file.py:Name or package.module:Name (or Name(arguments))"
        )
    if not _DOTTED.match(name):
        raise ModuleSpecError(f"module spec {text!r}: {name!r} after ':' is not a Python name")
    return target, name, None if arguments is None else parse_call(arguments, text.strip())


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
    """The spec as rows name it: a file relative to the current directory, a call in canonical form; zoo names
    and imports as typed.

    Pure text work (nothing is imported or run), so the same file gives the same module name on every run and
    machine that runs from the same directory: './models/attn.py:A', '/abs/cwd/models/attn.py:A' and
    'models//attn.py:A' are all 'models/attn.py:A', and 'm.py:f( depth = 2 )' is 'm.py:f(depth=2)'.
    """
    text = text.strip()
    target, name, arguments = _parts(text)
    if arguments is not None and target and name:
        try:
            name = parse_call(arguments, text).text(name)
        except ModuleSpecError:
            return text  # get_spec says what is wrong with it
    if target and _is_file_target(target):
        return f"{_display_path(target)}:{name}"
    return f"{target}:{name}" if target and arguments is not None else text


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
    text = normalise(text)
    target, name, _ = _parts(text)
    if target and _is_file_target(target):
        name = text[len(target) + 1 :]  # the name with its call, if any
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
    """Import a Python file (once per process): as part of its package when its folder is one, else under a
    private module name; errors name the file and line."""
    shown = _display_path(path)
    absolute = os.path.realpath(os.path.expanduser(path))
    if absolute in _FILES:
        return _FILES[absolute]
    if not os.path.exists(absolute):
        raise ModuleSpecError(f"{shown}: no such file (looked for {absolute})")
    if os.path.isdir(absolute):
        raise ModuleSpecError(f"{shown}: is a directory; name a .py file, or import a package as package.module:Name")
    package = _package_of(absolute)
    module = _load_in_package(absolute, *package, shown) if package else _load_private(absolute, shown)
    _FILES[absolute] = module
    return module


def _package_of(absolute: str) -> tuple[str, str] | None:
    """'.../repo/models/epsanet.py' -> ('models.epsanet', '.../repo') when models/ has an __init__.py (the package
    is rooted at the highest folder above the file that still has one); None for a file outside a package, or in
    a folder whose name cannot be imported."""
    folder = os.path.dirname(absolute)
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        return None
    root = folder
    while os.path.isfile(os.path.join(os.path.dirname(root), "__init__.py")) and os.path.dirname(root) != root:
        root = os.path.dirname(root)
    base = os.path.dirname(root)
    parts = Path(os.path.relpath(absolute, base)).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return (".".join(parts), base) if all(p.isidentifier() for p in parts) else None


def _load_in_package(absolute: str, dotted: str, base: str, shown: str) -> ModuleType:
    """Import `dotted` (the file's name in its package), its top-level package taken from the file's own tree."""
    top = dotted.split(".")[0]
    top_dir = os.path.join(base, top)
    present = sys.modules.get(top)
    if present is not None:
        paths = [os.path.realpath(p) for p in getattr(present, "__path__", [])]
        if os.path.realpath(top_dir) not in paths:
            where = paths[0] if paths else getattr(present, "__file__", "?")
            raise ModuleSpecError(
                f"{shown}: its package {top!r} ({_display_path(top_dir)}) has the name of a package this process "
                f"already imported from {where}: run it in a process of its own"
            )
    # The repository's own absolute imports (`from models.x import y`, a top-level sibling) resolve from its root.
    if base not in sys.path:
        sys.path.append(base)
    try:
        if present is None:
            # Created from its own folder, not looked up on sys.path: a same-named package elsewhere cannot win.
            spec = importlib.util.spec_from_file_location(
                top, os.path.join(top_dir, "__init__.py"), submodule_search_locations=[top_dir]
            )
            assert spec is not None and spec.loader is not None
            package = importlib.util.module_from_spec(spec)
            sys.modules[top] = package
            try:
                spec.loader.exec_module(package)
            except BaseException:
                del sys.modules[top]
                raise
        return importlib.import_module(dotted)
    except (Exception, SystemExit) as exc:
        raise ModuleSpecError(
            f"{_where(exc, absolute)}: importing {shown} (as {dotted}) failed: {_error_text(exc)}"
        ) from None


def _load_private(absolute: str, shown: str) -> ModuleType:
    """Import a file outside any package under a private module name, its folder appended to sys.path."""
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


def load_target(text: str) -> tuple[Any, str, Call | None]:
    """The object a spec names, the source file that defines it (for the hash), and the call written, if any."""
    target, name, call = _split(text)
    shown = normalise(text)
    if _is_file_target(target):
        module = load_file(target)
        where = _display_path(target)
    else:
        module = _import(target)
        where = target
    obj = _lookup(module, name, where)
    _check_callable(obj, shown)
    return obj, _source_file(obj) or getattr(module, "__file__", "") or "", call


def _source_file(obj: Any) -> str:
    try:
        return inspect.getsourcefile(obj) or ""
    except (TypeError, OSError):
        return ""


# ---------------------------------------------------------------- the ad-hoc spec


def _call_text(factory: Callable[..., Any], dim: int, kwargs: Mapping[str, Any], call: Call | None) -> str:
    name = getattr(factory, "__name__", "factory")
    if call is not None:
        return call.text(name, kwargs)
    args = ", ".join([str(dim), *(f"{k}={v!r}" for k, v in kwargs.items())])
    return f"{name}({args})"


def _parameters_hint(factory: Callable[..., Any], exc: BaseException) -> str:
    # An unexpected keyword is the usual typo: list what the constructor does take.
    if not isinstance(exc, TypeError) or "keyword" not in str(exc):
        return ""
    try:
        params = list(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return ""
    return f" (it takes: {', '.join(params)})" if params else ""


#: First parameters that mean the factory is a network's (timm's `model(pretrained=False, **kwargs)`): dim
#: given there would load weights, so the Name(dim) form is refused.
NOT_A_DIM = ("pretrained",)


def _first_parameter(factory: Callable[..., Any]) -> str | None:
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    return (
        params[0].name
        if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)
        else None
    )


class NotAModuleError(TypeError):
    """A factory returned something other than an nn.Module."""


def construct(factory: Callable[..., Any], dim: int, kwargs: Mapping[str, Any], call: Call | None = None) -> nn.Module:
    """`factory(dim, **kwargs)`, or the call as written (plus --kw keywords), refusing anything but an nn.Module."""
    if call is None:
        module = factory(dim, **kwargs)
    else:
        clash = sorted(set(kwargs) & {k for k, _ in call.kwargs})
        if clash:
            raise TypeError(f"--kw {', '.join(clash)}: already written in the spec's call")
        module = factory(*call.args, **dict(call.kwargs), **kwargs)
    if not isinstance(module, nn.Module):
        raise NotAModuleError(f"returned an object of type {type(module).__name__}, not an nn.Module")
    return module


#: The seed a constructor check builds with on the CPU (RunOptions' default), so the run can use that build.
BUILD_SEED = 0


@dataclass
class Built:
    """A module the constructor check had to build for real (its meta build failed), kept for the run to take."""

    module: nn.Module
    #: Where it was built and why there: "cpu (meta build failed: ...)".
    where: str
    seconds: float
    seed: int = BUILD_SEED


def judge(
    factory: Callable[..., Any], dim: int, kwargs: Mapping[str, Any], call: Call | None = None
) -> tuple[str | None, Built | None]:
    """Why the constructor cannot build a module (None when it can), and the module when it had to be built on
    the CPU. Tried on the meta device first (no weights allocated); a constructor that needs real tensors (a
    `.item()`, a table computed from data) is built on the CPU, seeded, and that build is kept."""
    form = FORM_CALL if call is not None else FORM_DIM
    text = _call_text(factory, dim, kwargs, call)
    if call is None and _first_parameter(factory) in NOT_A_DIM:
        first = _first_parameter(factory)
        return f"{text} would pass --dim as {first}={dim} ({form})", None
    try:
        with torch.device("meta"):
            construct(factory, dim, kwargs, call)
        return None, None
    except Exception as exc:
        meta_error = _error_text(exc)
    started = time.perf_counter()
    try:
        with torch.random.fork_rng():
            torch.manual_seed(BUILD_SEED)
            module = construct(factory, dim, kwargs, call)
    except NotAModuleError as exc:
        return f"{text} {exc} ({form})", None
    except Exception as exc:
        return f"{text} raised {_error_text(exc)}{_parameters_hint(factory, exc)} ({form})", None
    where = f"cpu (meta build failed: {meta_error[:120]})"
    return None, Built(module, where, time.perf_counter() - started)


def constructor_reason(
    factory: Callable[..., Any], dim: int, kwargs: Mapping[str, Any], call: Call | None = None
) -> str | None:
    """Why the constructor cannot build a module (None when it can); the user's message is passed on (see judge)."""
    return judge(factory, dim, kwargs, call)[0]


def _setting_key(setting: Setting) -> str:
    return repr((setting.dim, sorted(setting.kwargs.items())))


def adhoc_spec(
    name: str,
    factory: Callable[..., Any],
    source: str,
    instance: nn.Module | None = None,
    call: Call | None = None,
) -> ModuleSpec:
    """A ModuleSpec for a user's class, factory or instance: no formulas, one constraint (the constructor runs)."""
    qual = getattr(factory, "__qualname__", getattr(factory, "__name__", type(factory).__name__))
    judged: dict[str, str | None] = {}
    kept: dict[str, Built] = {}
    if instance is not None:

        def builder(dim: int, res: Any, **kwargs: Any) -> nn.Module:
            return instance

        constraints: tuple[Constraint, ...] = ()
    else:

        def builder(dim: int, res: Any, **kwargs: Any) -> nn.Module:
            return construct(factory, dim, kwargs, call)

        def check(setting: Setting) -> str | None:
            # Judged once per dim and kwargs: the sweep's checks and every build ask again.
            key = _setting_key(setting)
            if key not in judged:
                judged[key], built = judge(factory, setting.dim, setting.kwargs, call)
                if built is not None:
                    kept[key] = built
            return judged[key]

        constraints = (Constraint("constructor", check),)

    def take_built(setting: Setting) -> Built | None:
        # Handed over once: the run counts (and may measure) this build instead of building again.
        return kept.pop(_setting_key(setting), None)

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
        take_built=take_built,
        call=call,
    )


def resolve(text: str) -> ModuleSpec:
    """The ad-hoc spec for 'path/to/file.py:Name' or 'package.module:Name' (imports the code)."""
    obj, source, call = load_target(text)
    return adhoc_spec(normalise(text), obj, source, call=call)


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
