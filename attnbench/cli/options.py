"""The options the measuring commands share, and the one request builder `profile` and `compare` go through.

A command is: parse, build the request, call the library, render. The options are declared once here as
`Annotated` aliases; the scenario options are generated from attnbench.results.Scenario's fields (one option
per field, repeatable: each value is a sweep dimension), so a new scenario field needs no edit here.
"""

from __future__ import annotations

import ast
import functools
import inspect
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from attnbench.cache import default_dir, max_bytes_from_env
from attnbench.errors import UsageError
from attnbench.gate import GateSettings
from attnbench.instructions import check_available
from attnbench.results import SCENARIO_DEFAULTS, axes
from attnbench.settings import COUNTERS, DEFAULT_ALLOCATOR_PROCESSES, DEFAULT_METRICS, METRICS, RunOptions
from attnbench.shard import parse_shard
from attnbench.store import OutputLock
from attnbench.sweep import Sweep
from attnbench.timing import (
    DEFAULT_MAX_RUN_TIME,
    DEFAULT_MIN_RUN_TIME,
    DEFAULT_PRECISION,
    WARMUP_MIN_CALLS,
    WARMUP_MIN_S,
    TimingBudget,
)
from attnbench.zoo.registry import get_spec, list_modules

#: The report formats `-o` writes, by suffix (any case: X.CSV is a CSV).
OUTPUT_SUFFIXES = (".csv", ".md", ".json", ".html")
#: Submodule levels --breakdown shows unless --depth says otherwise (fvcore's flop_count_table default).
BREAKDOWN_DEPTH = 3
#: What --breakdown groups by (--by): nested submodules (the default), or module classes.
BREAKDOWN_BY = ("module", "type")


@dataclass(frozen=True)
class Defaults:
    """What a measuring command measures when an option is not given."""

    title: str
    dims: tuple[int, ...]
    res: tuple[str, ...]
    backends: tuple[str, ...]
    sort: str | None
    highlight_best: bool


PROFILE = Defaults("attnbench profile", (64,), ("56",), ("cpu",), None, False)
#: compare: quick enough for a 2-core CPU in a few minutes, wide enough to show scaling.
COMPARE = Defaults("attnbench compare", (64,), ("14", "28", "56"), ("cpu", "ort"), "macs", True)


# ---------------------------------------------------------------- parsing


def parse_res(text: str) -> tuple[int, int]:
    """'56' -> (56, 56); '32x64' -> (32, 64)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"--res {text!r}: expected an int or HxW (e.g. 56 or 32x64)") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise UsageError(f"--res {text!r}: expected positive H and W (e.g. 56 or 32x64)")
    return values[0], values[1]


#: `--kw MODULE@KEY=VALUE` gives a kwarg to one module. KEY is an identifier, so the split is the first '@'
#: followed by `identifier=`: a file path or a dotted import path (even one holding '@') stays whole.
_MODULE_KW = re.compile(r"^(?P<module>.+?)@(?P<key>[A-Za-z_]\w*)=(?P<value>.*)$", re.S)


def literal(value: str) -> Any:
    """A Python literal from its text; a bare word stays a string (the module's type check decides)."""
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return value.strip()


def parse_module_kw(items: Sequence[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """--kw values as (kwargs for every module, kwargs per module): 'heads=4', 'mhsa@heads=4', 'a.py:A@k=7'."""
    shared: dict[str, Any] = {}
    own: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key.strip().isidentifier():
            shared[key.strip()] = literal(value)
            continue
        match = _MODULE_KW.match(item)
        if not match or not match["module"].strip():
            raise UsageError(
                f"--kw {item!r}: expected KEY=VALUE for every module or MODULE@KEY=VALUE for one "
                "(e.g. heads=4, mhsa@heads=4, models/attn.py:MyAttn@window=7)"
            )
        own.setdefault(match["module"].strip(), {})[match["key"]] = literal(match["value"])
    return shared, own


def parse_list(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """'params,macs' -> ('params', 'macs'), refusing names outside `allowed`."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UsageError(f"{option} {text!r}: unknown {', '.join(bad) or 'empty list'}; allowed: {', '.join(allowed)}")
    return names


def parse_scenarios(given: Mapping[str, Sequence[str] | None]) -> dict[str, tuple[Any, ...]]:
    """The scenario options' texts as values per field (only the fields given; aliases resolved)."""
    values: dict[str, tuple[Any, ...]] = {}
    for name, texts in given.items():
        if texts:
            try:
                values[name] = tuple(dict.fromkeys(axes()[name].parse(t) for t in texts))
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    return values


# ---------------------------------------------------------------- outputs


def check_outputs(paths: Sequence[Path]) -> list[Path]:
    """Refuse, before measuring, outputs of unknown format, that are directories, or that cannot be written."""
    checked: list[Path] = []
    for path in paths:
        if any(path.resolve() == seen.resolve() for seen in checked):
            raise UsageError(f"output {path}: given twice")
        if path.is_dir():
            raise UsageError(f"output {path}: is a directory; name a file ending in {_suffixes()}")
        if path.suffix.lower() not in OUTPUT_SUFFIXES:
            raise UsageError(f"output {path}: unknown format {path.suffix or '(none)'!r}; use {_suffixes()}")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"output {path}: directory {parent} does not exist")
        # Try it: permission bits lie for root and for special filesystems.
        try:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".attnbench-probe-"):
                pass
        except OSError as exc:
            raise UsageError(f"output {path}: not writable ({exc.strerror})") from None
        if path.exists() and not os.access(path, os.W_OK):
            raise UsageError(f"output {path}: not writable")
        checked.append(path)
    return checked


def _suffixes() -> str:
    return ", ".join(OUTPUT_SUFFIXES[:-1]) + f" or {OUTPUT_SUFFIXES[-1]}"


def check_plots_dir(path: Path | None) -> None:
    """Refuse, before measuring, a plots directory that is a file or cannot be created or written.

    Permission bits lie (root, /proc, read-only mounts), so it is tried: the missing directories are made, a
    probe file written, and what was made is removed again.
    """
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise UsageError(f"--plots {path}: is a file, expected a directory")
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".attnbench-probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"--plots {path}: cannot create or write this directory ({exc.strerror})") from None
    finally:
        for made in missing:  # deepest first
            try:
                made.rmdir()
            except OSError:
                break


def check_cache_dir(path: Path) -> Path:
    """The --cache-dir given, made (with its parents) and tried for writing; a UsageError naming it if it cannot be.

    Unlike --plots, what is made stays: it is where the cache will live."""
    path = path.expanduser().absolute()  # workers may run elsewhere
    if path.exists() and not path.is_dir():
        raise UsageError(f"--cache-dir {path}: is a file, expected a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".attnbench-probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"--cache-dir {path}: cannot create or write this directory ({exc.strerror})") from None
    return path


@dataclass(frozen=True)
class Outputs:
    """Where a run's rows go (files, plots) and how its tables look."""

    files: tuple[Path, ...] = ()
    plots: Path | None = None
    title: str = "attnbench"
    sort: str | None = None
    highlight_best: bool = False
    quiet: bool = False
    breakdown: bool = False
    depth: int = BREAKDOWN_DEPTH  # submodule levels of the breakdown
    by: str = BREAKDOWN_BY[0]  # what the breakdown groups by

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on every output file while this run writes them (a second run is refused)."""

        locks = [OutputLock(path) for path in self.files]
        try:
            for lock in locks:
                lock.acquire()
            yield
        finally:
            for lock in locks:
                lock.release()

    def check(self, backends: Sequence[str]) -> None:
        """Refuse, before measuring, outputs and plot directories that cannot be written, and a bad --sort."""
        from attnbench.report.summary import sort_key  # pandas: the quick commands never import it

        check_outputs(self.files)
        check_plots_dir(self.plots)
        if self.sort:
            try:
                sort_key(self.sort, backends)
            except ValueError as exc:
                raise UsageError(f"--sort: {exc}") from None


# ---------------------------------------------------------------- the shared options

ModulesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Zoo names (see `attnbench list`), or your own: path/to/file.py:Name or package.module:Name "
        "(an nn.Module class or factory, called as Name(dim, **kwargs); importing runs the file's code), or an "
        "explicit call built as written, with literal arguments and no dim: 'models/van.py:van_b0(pretrained=False)'."
    ),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every module of the zoo (instead of naming them).")]


def _said(values: Sequence[Any]) -> str:
    return ", ".join(map(str, values))


# The sweep's options, once per command: each --help says its own command's defaults.
ProfileDimOpt = Annotated[
    list[int] | None,
    typer.Option("--dim", "-d", help=f"Channels C; repeat for a sweep. [default: {_said(PROFILE.dims)}]"),
]
CompareDimOpt = Annotated[
    list[int] | None,
    typer.Option("--dim", "-d", help=f"Channels C; repeat for a sweep. [default: {_said(COMPARE.dims)}]"),
]
ProfileResOpt = Annotated[
    list[str] | None,
    typer.Option("--res", "-r", help=f"Resolution H or HxW; repeat for a sweep. [default: {_said(PROFILE.res)}]"),
]
CompareResOpt = Annotated[
    list[str] | None,
    typer.Option("--res", "-r", help=f"Resolution H or HxW; repeat for a sweep. [default: {_said(COMPARE.res)}]"),
]
BatchOpt = Annotated[
    list[int] | None, typer.Option("--batch", "-b", help="Batch size; repeat for a sweep. [default: 1]")
]
_BACKEND_HELP = "A backend (see `attnbench env`: cpu, cuda, ort, ort-cuda, ...); repeat for several."
ProfileBackendOpt = Annotated[
    list[str] | None, typer.Option("--backend", help=f"{_BACKEND_HELP} [default: {_said(PROFILE.backends)}]")
]
CompareBackendOpt = Annotated[
    list[str] | None, typer.Option("--backend", help=f"{_BACKEND_HELP} [default: {_said(COMPARE.backends)}]")
]
KwOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--kw",
        help="Module kwarg KEY=VALUE (Python literal) for every module, or MODULE@KEY=VALUE for one "
        "(mhsa@heads=4, models/attn.py:MyAttn@window=7); repeat.",
    ),
]
MetricsOpt = Annotated[
    str, typer.Option("--metrics", help=f"Comma list of {','.join(METRICS)} (instructions needs valgrind).")
]
CountersOpt = Annotated[str, typer.Option("--counters", help=f"Comma list of {','.join(COUNTERS)}.")]
OutputOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--output", "-o", help="Write a report: .csv, .md, .json or .html (a page to open offline), by suffix; repeat."
    ),
]
PlotsOpt = Annotated[Path | None, typer.Option("--plots", help="Directory for scaling plots (PNG).")]
MinRunOpt = Annotated[float, typer.Option("--min-run-time", help="Floor: time every case at least this many seconds.")]
MaxRunOpt = Annotated[
    float,
    typer.Option(
        "--max-run-time",
        help="Budget: stop timing a case after this many seconds, or sooner once the precision is out of its reach.",
    ),
]
PrecisionOpt = Annotated[
    float,
    typer.Option(
        "--precision", help="Stop timing a case once the 95% CI on its median is within +-this fraction (0.01 = 1%)."
    ),
]
WarmupOpt = Annotated[
    float, typer.Option("--warmup", help=f"Warm-up seconds before timing (and at least {WARMUP_MIN_CALLS} calls).")
]
TimeLimitOpt = Annotated[
    float | None, typer.Option("--time-limit", help="Per-case time limit in seconds. [default: none]")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run cases the memory guard would refuse.")]
_SORT_HELP = "params, macs, module, latency[-BACKEND], memory[-BACKEND]."
ProfileSortOpt = Annotated[str | None, typer.Option("--sort", help=f"{_SORT_HELP} [default: as measured]")]
#: compare sorts by MACs, and so does report (a saved comparison reads the same re-rendered).
CompareSortOpt = Annotated[str | None, typer.Option("--sort", help=f"{_SORT_HELP} [default: {COMPARE.sort}]")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="Run only shard K of N of the cases (e.g. 2/3); merge the parts with `report`."),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Cache ONNX exports and counts across runs here. [default: $ATTNBENCH_CACHE_DIR, else "
        "$XDG_CACHE_HOME/attnbench, else ~/.cache/attnbench]",
    ),
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Export and count afresh: neither read nor write the cache across runs.")
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Worker processes for counting and ONNX exports while this one prepares (0: all in this process). "
        "[default: $ATTNBENCH_WORKERS, else the usable cores]",
    ),
]
AllocatorProcessesOpt = Annotated[
    int | None,
    typer.Option(
        "--allocator-processes",
        help="Fresh processes a cpu row's latency under glibc's default allocator is measured in, beside the "
        "pinned state (0: not measured). [default: $ATTNBENCH_ALLOCATOR_PROCESSES, else "
        f"{DEFAULT_ALLOCATOR_PROCESSES}]",
    ),
]
NoInterleaveOpt = Annotated[
    bool,
    typer.Option(
        "--no-interleave",
        help="Time the cases one after the other, not a backend's cases in round-robin blocks (which let each "
        "sample the machine's slow and fast phases alike, and pair them for the ratios).",
    ),
]
ReferenceOpt = Annotated[
    str | None,
    typer.Option(
        "--reference", help="Latency ratios are taken to this module at each setting [default: the fastest there]."
    ),
]
LabelOpt = Annotated[
    str | None,
    typer.Option("--label", help="Machine label for every row (default: hardware, torch and ORT versions)."),
]

#: The defaults the options show in --help (the constants live beside the code that uses them).
TIMING_DEFAULTS = (DEFAULT_MIN_RUN_TIME, DEFAULT_MAX_RUN_TIME, DEFAULT_PRECISION, WARMUP_MIN_S)
METRICS_DEFAULT = ",".join(DEFAULT_METRICS)
COUNTERS_DEFAULT = ",".join(COUNTERS)


def scenario_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add one repeatable option per Scenario field to a command; the command receives them as `scenario`, a
    {field: [texts]} mapping (a field not given: None)."""
    signature = inspect.signature(command, eval_str=True)  # real types: typer reads __signature__ as it is
    params = [p for name, p in signature.parameters.items() if name != "scenario"]
    for name, ax in axes().items():
        default = SCENARIO_DEFAULTS[name]
        shown = ("on" if default else "off") if ax.flag else (default or "each module's own")
        values = [str(c) for c in ax.choices or () if c != ""]
        allowed = "on or off; given alone: on" if ax.flag else (", ".join(values) or "an int >= 1")
        metavar = "[on|off]" if ax.flag else ("N" if ax.choices is None else ax.option.strip("-").upper())
        option = typer.Option(
            ax.option, help=f"{ax.help}: {allowed}; repeat to sweep. [default: {shown}]", metavar=metavar
        )
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[list[str] | None, option]
            )
        )

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        scenario = {name: values.pop(name) for name in axes()}
        command(**values, scenario=scenario)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


# ---------------------------------------------------------------- the request


@dataclass(frozen=True)
class Request:
    """What a measuring command asks for, checked and built: the sweep, how to measure, where rows go, the gate."""

    sweep: Any  # attnbench.sweep.Sweep (imported late: it pulls the zoo in)
    options: RunOptions
    outputs: Outputs
    gate: Any = None  # attnbench.gate.GateSettings, or None


def build_request(defaults: Defaults, given: Mapping[str, Any]) -> Request:
    """The Request of a `profile` or `compare` call, from its options as typed; bad values raise UsageError."""

    modules = resolve_modules(given["modules"], given["all_"])
    shared, own = parse_module_kw(given["kw"] or [])
    sweep = Sweep(
        modules=modules,
        dims=tuple(given["dim"] or defaults.dims),
        resolutions=tuple(parse_res(r) for r in given["res"] or defaults.res),
        batches=tuple(given["batch"] or (1,)),
        backends=tuple(dict.fromkeys(given["backend"] or defaults.backends)),
        scenarios=parse_scenarios(given["scenario"]),
        kwargs=shared,
        module_kwargs=own,
        shard=parse_shard(given["shard"]) if given["shard"] is not None else None,
    )
    gate = _gate(given)
    options = _options(given, gate)
    outputs = _outputs(defaults, given)
    return Request(sweep, options, outputs, gate)


def _options(given: Mapping[str, Any], gate: Any) -> RunOptions:
    """RunOptions from the options' strings, refusing bad values (and a missing valgrind, for instructions)."""
    metrics = parse_list(given["metrics"], METRICS, "--metrics")
    # Gating on instructions, or writing a baseline for it, needs the counts in this run's rows.
    if given.get("gate_metric") == "instructions" and "instructions" not in metrics:
        metrics += ("instructions",)
    if "instructions" in metrics:
        check_available()
    budget = TimingBudget(
        min_run_time=given["min_run_time"],
        max_run_time=given["max_run_time"],
        precision=given["precision"],
        warmup_s=given["warmup"],
    )
    label = given["label"]
    options = RunOptions(
        metrics=metrics,
        counters=parse_list(given["counters"], COUNTERS, "--counters"),
        budget=budget,
        time_limit_s=given["time_limit"],
        force=given["force"],
        machine=" ".join(label.split()) if label is not None and label.strip() else label,
        cache_dir=_cache_dir(given),
        interleave=not given.get("no_interleave", False),
        reference=given.get("reference"),
        **({"workers": given["workers"]} if given.get("workers") is not None else {}),
        **(
            {"allocator_processes": given["allocator_processes"]}
            if given.get("allocator_processes") is not None
            else {}
        ),
    )
    options.check()
    return options


def _cache_dir(given: Mapping[str, Any]) -> Path | None:
    """The cache directory a run uses (None: --no-cache); a --cache-dir that cannot be made is refused."""
    path, off = given.get("cache_dir"), given.get("no_cache", False)
    if off and path is not None:
        raise UsageError(f"--no-cache and --cache-dir {path}: give one or the other")
    if off:
        return None
    max_bytes_from_env()  # a bad $ATTNBENCH_CACHE_MAX_MB is refused before anything runs
    # The default directory is not checked: if it cannot be written, the run goes on without the cache.
    return check_cache_dir(path) if path is not None else default_dir()


def _outputs(defaults: Defaults, given: Mapping[str, Any]) -> Outputs:
    depth, breakdown, by = given.get("depth"), given.get("breakdown", False), given.get("by")
    if depth is not None and (not breakdown or depth < 0):
        raise UsageError(f"--depth {depth}: " + ("must be >= 0" if breakdown else "only with --breakdown"))
    if by is not None and (not breakdown or by not in BREAKDOWN_BY):
        allowed = f"allowed: {', '.join(BREAKDOWN_BY)}"
        raise UsageError(f"--by {by}: " + (allowed if breakdown else "only with --breakdown"))
    return Outputs(
        files=tuple(given["output"] or ()),
        plots=given["plots"],
        title=defaults.title,
        sort=given["sort"] if given["sort"] is not None else defaults.sort,
        highlight_best=defaults.highlight_best,
        quiet=given["quiet"],
        breakdown=breakdown,
        depth=BREAKDOWN_DEPTH if depth is None else depth,
        by=by or BREAKDOWN_BY[0],
    )


def _gate(given: Mapping[str, Any]) -> Any:
    """The gate's settings (checked even without a baseline: --gate-metric instructions also writes one)."""
    if "gate_metric" not in given:  # profile has no gate
        return None

    gate = GateSettings(
        given["baseline"] or Path(),
        given["tolerance"],
        given["force_latency"],
        given["gate_metric"],
        given["strict"],
        given["allow_uncounted"],
    )
    gate.check()
    return gate if given["baseline"] is not None else None


def resolve_modules(modules: Sequence[str] | None, all_: bool) -> tuple[str, ...]:
    """The modules named, as rows name them (unknown ones refused with suggestions), or the whole zoo with --all."""

    if all_ and modules:
        raise UsageError(f"--all runs every module: drop the module names ({', '.join(modules)}) or --all")
    if all_:
        return tuple(list_modules())
    if not modules:
        raise UsageError("name at least one module, or pass --all for the whole zoo")
    # get_spec raises UnknownModuleError with suggestions, or ModuleSpecError for a spec that cannot load.
    return tuple(dict.fromkeys(get_spec(m).name for m in modules))
