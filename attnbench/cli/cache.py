"""`cache info` and `cache clear`: what the cache across runs holds (ONNX exports, counts), and emptying it.

Quick commands: attnbench.cache is plain Python, so neither imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from attnbench import fmt
from attnbench.cache import KINDS, MAX_MB_ENV, Cache, CacheInfo, default_dir
from attnbench.cli.app import app, consoles
from attnbench.cli.options import CacheDirOpt
from attnbench.errors import UsageError

cache_app = typer.Typer(
    name="cache",
    help="The cache across runs of ONNX exports and counts: what it holds (info), and emptying it (clear).",
    invoke_without_command=True,
    rich_markup_mode=None,
)
app.add_typer(cache_app, name="cache")

KindOpt = Annotated[
    str | None, typer.Option("--kind", help=f"Only this kind of entry: {', '.join(KINDS)}. [default: every kind]")
]


@cache_app.callback()
def _group(ctx: typer.Context) -> None:
    # Bare `attnbench cache` shows its help, as a success (as bare `attnbench` does).
    if ctx.invoked_subcommand is None:
        consoles.out.print(ctx.get_help(), highlight=False)
        raise typer.Exit(0)


def _cache(cache_dir: Path | None) -> Cache:
    """The cache at --cache-dir, else at the default directory (nothing is created by looking)."""
    return Cache(cache_dir.expanduser().absolute() if cache_dir is not None else default_dir())


@cache_app.command("info")
def info_cmd(cache_dir: CacheDirOpt = None) -> None:
    """What the cache holds per kind, where it is, its size cap, and the versions every key covers."""
    info = _cache(cache_dir).info()
    consoles.out.print(info_table(info))
    for line in info_lines(info):
        consoles.out.print(line, highlight=False, soft_wrap=True)
    if info.note:
        consoles.err.print(f"attnbench: {info.note}", highlight=False)


def info_table(info: CacheInfo) -> Table:
    """Entries and size per kind, and their total; the size in the unit its column reads best in."""
    unit, factor = fmt.pick_unit([*(k.bytes for k in info.kinds.values()), info.bytes], fmt.BYTE_UNITS)
    table = Table(title="attnbench cache", header_style="bold", title_justify="left")
    table.add_column("Kind")
    table.add_column("Entries", justify="right")
    table.add_column(f"Size ({unit})", justify="right")
    for name, kind in info.kinds.items():
        table.add_row(name, str(kind.entries), fmt.in_unit(kind.bytes, factor))
    table.add_section()
    table.add_row("total", str(info.entries), fmt.in_unit(info.bytes, factor))
    return table


def info_lines(info: CacheInfo) -> list[str]:
    """Where the cache is, its cap, and the versions its keys cover, one fact a line."""
    root = info.root
    state = "" if root is None or root.exists() else " (not created yet)"
    width = max(len(name) for name in info.versions)
    return [
        f"root: {root}{state}",
        f"cap: {fmt.nbytes(info.max_bytes)} (least recently used go first; ${MAX_MB_ENV})",
        "versions every key covers (another version: entries rebuilt):",
        *(f"  {name:{width}s}  {version}" for name, version in info.versions.items()),
    ]


@cache_app.command("clear")
def clear_cmd(kind: KindOpt = None, cache_dir: CacheDirOpt = None) -> None:
    """Remove the cache's entries (of one kind with --kind); the next run exports and counts afresh."""
    if kind is not None and kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: unknown kind; allowed: {', '.join(KINDS)}")
    cache = _cache(cache_dir)
    note = cache.info().note
    if note:
        raise UsageError(note)
    cleared = cache.clear(kind)
    where = cache.root / kind if kind is not None and cache.root is not None else cache.root
    noun = "entry" if cleared.entries == 1 else "entries"
    consoles.out.print(f"removed {cleared.entries} {noun} ({fmt.nbytes(cleared.bytes)}) from {where}", highlight=False)
