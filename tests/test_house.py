"""The house rules, checked on the code itself: small functions, few parameters, no import circles, no hidden
imports, and a test file for every source file (tests mirror the package)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "attnbench"
#: STYLE.md: functions of at most 60 lines; library functions of at most 8 parameters.
MAX_LINES = 60
MAX_PARAMS = 8
#: Source files whose behaviour is tested elsewhere, with where.
NO_OWN_TEST = {
    "__main__.py": "the `python -m attnbench.cli` shim: tests/cli/test_main.py runs main()",
    "cli/commands.py": "the import that registers the commands: every tests/cli file runs them",
    "zoo/modules/": "each zoo module: tests/zoo/test_modules.py and test_golden.py, parametrized over the registry",
}


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _functions(path: Path) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _is_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    # A Typer command takes one parameter per option; it only builds the request (STYLE.md allows it).
    return any("command" in ast.unparse(d) for d in node.decorator_list)


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = node.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    count = len(names) + bool(a.vararg) + bool(a.kwarg)
    return count - (1 if names and names[0].arg in ("self", "cls") else 0)


def test_no_function_is_longer_than_sixty_lines() -> None:
    long = [
        f"{p.relative_to(ROOT)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for p in _sources()
        for f in _functions(p)
        if f.end_lineno - f.lineno + 1 > MAX_LINES
    ]
    assert long == []


def test_no_function_but_a_command_takes_more_than_eight_parameters() -> None:
    many = [
        f"{p.relative_to(ROOT)}:{f.lineno} {f.name} ({_params(f)} parameters)"
        for p in _sources()
        for f in _functions(p)
        if _params(f) > MAX_PARAMS and not _is_command(f)
    ]
    assert many == []


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (inside functions and TYPE_CHECKING blocks too)."""
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            # A module importing its own package (or an ancestor) runs nothing new: not an edge.
            if name and name != here and not here.startswith(name + "."):
                found.add(name)
    return found


def _graph(level: str) -> dict[str, set[str]]:
    modules = {_module(p): p for p in _sources()}

    def room(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if level == "folder" and len(parts) > 2 else name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = {room(t) for t in _imports(path, set(modules))} - {room(name)}
        graph.setdefault(room(name), set()).update(edges)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("level", ["file", "folder"])
def test_the_import_graph_has_no_circle(level: str) -> None:
    # At folder level a sub-package is one room: a circle there is an import that runs up a layer.
    assert _cycles(_graph(level)) == []


def test_the_checker_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_inside_a_function_says_why() -> None:
    # Imports sit at the top, except those that keep torch (pandas, matplotlib, an optional package) out of the
    # quick commands or of `import attnbench`, and each of those says so in a comment.
    silent = []
    for path in _sources():
        lines = path.read_text().splitlines()
        for function in _functions(path):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    said = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
                    if not said:
                        silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert silent == []


def _only_declares(source: Path) -> bool:
    """True for a package marker: a docstring and imports, nothing defined (nothing of its own to test)."""
    body = ast.parse(source.read_text()).body
    return all(isinstance(n, ast.Expr | ast.Import | ast.ImportFrom | ast.Assign) for n in body) and not any(
        isinstance(n, ast.Assign) and not ast.unparse(n).startswith("__all__") for n in body
    )


def _test_file(source: Path) -> Path:
    relative = source.relative_to(PACKAGE)
    name = "test_init.py" if source.name == "__init__.py" else f"test_{source.stem.lstrip('_')}.py"
    return ROOT / "tests" / relative.parent / name


def test_every_source_file_has_its_test_file() -> None:
    exempt = tuple(NO_OWN_TEST)
    missing = [
        str(_test_file(p).relative_to(ROOT))
        for p in _sources()
        if not str(p.relative_to(PACKAGE)).startswith(exempt) and not _only_declares(p) and not _test_file(p).exists()
    ]
    assert missing == []
