"""`list` and `info`: the zoo's metadata, read from a cache without importing torch (attnbench.zoo.catalog)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Annotated, Any

import typer

from attnbench.cli.app import app, consoles
from attnbench.report.tables import KEY, Column, fit, fit_note, prose, render
from attnbench.zoo import catalog
from attnbench.zoo.registry import source_hash

if TYPE_CHECKING:
    from attnbench.zoo.spec import ModuleSpec


@app.command("list")
def list_cmd(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the README's Markdown module table.")] = False,
) -> None:
    """Show the module zoo: name, paper, layout, default kwargs, constraints."""

    if markdown:
        from attnbench.report import zoo_markdown  # pandas and torch: only for --markdown

        print(zoo_markdown())
        return
    entries = catalog.zoo()
    # Name and default kwargs are what a user copies from this table: never cut, they wrap between kwargs.
    columns = [
        Column("Name", lambda e: e["name"], KEY, justify="left"),
        Column("Module (paper)", lambda e: e["title"], LIST_TITLE, justify="left", prose=True),
        Column("arXiv", lambda e: e["arxiv"], LIST_ARXIV, justify="left"),
        Column("Layout", _layout_text, LIST_LAYOUT, justify="left", prose=True),
        Column("Default kwargs", _defaults_text, KEY, justify="left", prose=True),
        Column("Constraints", _constraints_text, LIST_CONSTRAINTS, justify="left", prose=True),
    ]
    fitted = fit(columns, entries, consoles.out.width)
    consoles.out.print(render(fitted, entries, "attnbench module zoo"))
    note = fit_note(consoles.out.width, [("", fitted)], " or `attnbench info NAME`")
    if note:
        consoles.err.print(f"attnbench: {note}", style="dim", highlight=False)


#: Where `info`'s values start ("paper:      "): their continuation lines start there too.
INFO_INDENT = 12
#: How soon `list` drops a column on a narrow terminal (larger: sooner); name and kwargs always stay.
LIST_LAYOUT, LIST_ARXIV, LIST_TITLE, LIST_CONSTRAINTS = 10, 20, 30, 40


def _layout_text(entry: dict[str, Any]) -> str:
    return entry["layout"] + (", resolution-bound" if entry["resolution_bound"] else "")


def _defaults_text(entry: dict[str, Any]) -> str:
    # One kwarg is one word (no space inside a list), so a narrow column wraps between kwargs.
    return ", ".join(f"{key}={text.replace(', ', ',')}" for key, text in entry["defaults"]) or "-"


def _constraints_text(entry: dict[str, Any]) -> str:
    return "; ".join(c["name"] for c in entry["constraints"]) or "-"


@app.command("info")
def info_cmd(name: Annotated[str, typer.Argument(help="Module name.")]) -> None:
    """Everything attnbench knows about one module: reference, kwargs, constraints, notes, formulas."""

    entries = {e["name"]: e for e in catalog.zoo()}
    if name not in entries:  # a user's module (file.py:Name); an unknown name is refused with suggestions
        from attnbench.zoo.registry import get_spec  # user specs import torch; the zoo's entries do not

        _info_user(get_spec(name))
        return
    e = entries[name]

    def line(text: str, indent: int = INFO_INDENT) -> None:
        # A long value wraps under itself, not under its name.
        consoles.out.print(prose(text, consoles.out.width, indent), markup=False, highlight=False, soft_wrap=True)

    consoles.out.print(f"[bold]{e['name']}[/bold]: {e['title']}", highlight=False)
    line(f"paper:      {e['paper']} (arXiv {e['arxiv']})")
    line(f"official:   {e['repo']} {e['file']} :: {e['cls']}" + (f" @ {e['commit']}" if e["commit"] else ""))
    line(f"layout:     {e['layout']}" + ("  (wrapped to B, C, H, W)" if e["layout"] == "tokens" else ""))
    line(f"resolution: {catalog.resolution_text(e)}")
    line("kwargs:")
    for key, text in e["defaults"]:
        line(f"  {key} = {text}  {e['kwarg_help'].get(key, '')}".rstrip(), 4)
    line("constraints:")
    for c in e["constraints"]:
        line(f"  {c['name']}" + ("  (needs H, W)" if c["needs_resolution"] else ""), 4)
    if e["notes"]:
        line(f"notes:      {e['notes']}")
    if e["example"]:
        ex = e["example"]
        line(
            f"formulas at C={ex['dim']}, {ex['res'][0]}x{ex['res'][1]}, B={ex['batch']}: params = "
            f"{ex['params']:,}, MACs = {ex['macs']:,}"
        )
    if e["tags"]:
        line(f"tags:       {', '.join(e['tags'])}")


def _info_user(spec: ModuleSpec) -> None:
    """What attnbench knows about a user's module: where it is, its source hash, how it is called."""

    consoles.out.print(f"[bold]{spec.name}[/bold]: your own module", highlight=False)
    consoles.out.print(
        f"source:     {spec.reference.file or '?'} (sha256 {source_hash(spec.name) or '?'}...)", highlight=False
    )
    try:
        signature = str(inspect.signature(spec.factory)) if spec.factory is not None else "(dim, **kwargs)"
    except (TypeError, ValueError):
        signature = "(dim, **kwargs)"
    if spec.call is not None:
        called = f"{spec.call.text(spec.reference.cls)}, as written: no dim (--dim gives the input's channels)"
    else:
        called = f"{spec.reference.cls}{signature}, first argument = channels C"
    consoles.out.print(f"called as:  {called}", highlight=False)
    consoles.out.print(
        "layout:     --layout image (default: (B, C, H, W) in and out), tokens ((B, N, C)) or tokens-hw "
        "(forward(x, H, W))",
        highlight=False,
    )
    consoles.out.print("counts:     no hand formula; params and MACs are counted, as for the zoo", highlight=False)
