"""The attnbench command line: thin Typer commands over the library; data on stdout, chatter on stderr."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

try:  # typer >= 0.20 vendors its own click; older versions use the click package
    from typer._click.exceptions import UsageError as ClickUsageError
    from typer.exceptions import Abort, Exit
except ImportError:  # pragma: no cover
    from click.exceptions import Abort, Exit
    from click.exceptions import UsageError as ClickUsageError
from rich.console import Console

from attnbench import __version__
from attnbench import results as R
from attnbench.errors import AttnbenchError, BaselineError, UsageError
from attnbench.sweep import Sweep
from attnbench.tables import PIPE_WIDTH
from attnbench.timing import DEFAULT_MAX_RUN_TIME, DEFAULT_MIN_RUN_TIME, DEFAULT_PRECISION
from attnbench.zoo.registry import get_spec, list_modules
from attnbench.zoo.spec import ModuleSpec

if TYPE_CHECKING:
    from attnbench.runner import RunOptions, RunOutcome

app = typer.Typer(
    name="attnbench",
    help="Build, count, time and compare vision attention modules (CPU, CUDA, ONNX Runtime).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def stdout_width() -> int | None:
    """Table width: COLUMNS when set, the terminal's own width (None: rich asks it), else PIPE_WIDTH for a pipe."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else PIPE_WIDTH


out = Console(width=stdout_width())
err = Console(stderr=True, soft_wrap=True)  # one message, one line: no wrapping at 80 columns

#: Defaults of `compare`: quick enough for a 2-core CPU in a few minutes, wide enough to show scaling.
COMPARE_DIM = 64
COMPARE_RES = ("14", "28", "56")
COMPARE_BACKENDS = ("cpu", "ort")
PROFILE_RES = ("56",)
#: Submodule levels --breakdown shows unless --depth says otherwise (fvcore's flop_count_table default).
BREAKDOWN_DEPTH = 3
OUTPUT_SUFFIXES = (".csv", ".md", ".json")
#: Exit codes for a run stopped by Ctrl-C or SIGTERM (128 + the signal, as shells report it).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


# ---------------------------------------------------------------- option parsing


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


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return value.strip()  # a bare word stays a string; the module's type check decides


def parse_kw(items: Sequence[str]) -> dict[str, Any]:
    """['heads=4', 'kernels=[3,5]'] -> {'heads': 4, 'kernels': [3, 5]}; values are Python literals."""
    shared, _ = parse_module_kw(items)
    return shared


def parse_module_kw(items: Sequence[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """--kw values as (kwargs for every module, kwargs per module): 'heads=4', 'mhsa@heads=4', 'a.py:A@k=7'."""
    shared: dict[str, Any] = {}
    own: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key.strip().isidentifier():
            shared[key.strip()] = _literal(value)
            continue
        match = _MODULE_KW.match(item)
        if not match or not match["module"].strip():
            raise UsageError(
                f"--kw {item!r}: expected KEY=VALUE for every module or MODULE@KEY=VALUE for one "
                "(e.g. heads=4, mhsa@heads=4, models/attn.py:MyAttn@window=7)"
            )
        own.setdefault(match["module"].strip(), {})[match["key"]] = _literal(match["value"])
    return shared, own


def parse_list(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """'params,macs' -> ('params', 'macs'), refusing names outside `allowed`."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UsageError(f"{option} {text!r}: unknown {', '.join(bad) or 'empty list'}; allowed: {', '.join(allowed)}")
    return names


def check_outputs(paths: Sequence[Path]) -> list[Path]:
    """Refuse, before measuring, outputs of unknown format, that are directories, or that cannot be written."""
    checked: list[Path] = []
    for path in paths:
        if any(path.resolve() == seen.resolve() for seen in checked):
            raise UsageError(f"output {path}: given twice")
        if path.suffix not in OUTPUT_SUFFIXES:
            raise UsageError(f"output {path}: unknown format {path.suffix or '(none)'!r}; use .csv, .md or .json")
        if path.is_dir():
            raise UsageError(f"output {path}: is a directory")
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


# ---------------------------------------------------------------- shared options

ModulesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Zoo names (see `attnbench list`), or your own: path/to/file.py:Name or package.module:Name "
        "(an nn.Module class or factory, called as Name(dim, **kwargs); importing runs the file's code)."
    ),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every module of the zoo (instead of naming them).")]
DimOpt = Annotated[list[int] | None, typer.Option("--dim", "-d", help="Channels C; repeat for a sweep.")]
ResOpt = Annotated[list[str] | None, typer.Option("--res", "-r", help="Resolution H or HxW; repeat for a sweep.")]
BatchOpt = Annotated[list[int] | None, typer.Option("--batch", "-b", help="Batch size; repeat for a sweep.")]
BackendOpt = Annotated[list[str] | None, typer.Option("--backend", help="cpu, cuda or ort; repeat for several.")]
ThreadsOpt = Annotated[
    list[int] | None, typer.Option("--threads", help="Intra-op threads (torch and ORT); repeat for a sweep. Default 1.")
]
DtypeOpt = Annotated[
    list[str] | None,
    typer.Option("--dtype", help="float32, bfloat16 or float16 (a backend that cannot run one: skipped); repeat."),
]
ModeOpt = Annotated[
    list[str] | None,
    typer.Option("--mode", help="infer (eval, no grad) or train (forward + backward of output.sum()); repeat."),
]
ChannelsLastOpt = Annotated[
    bool, typer.Option("--channels-last", help="Module and input in channels_last (image-layout modules).")
]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile (inductor); compile time kept apart.")]
AllocatorOpt = Annotated[
    str,
    typer.Option(
        "--allocator",
        help="Which glibc state the CPU latency shows: pinned (stable) or system (a plain PyTorch process's).",
    ),
]
KwOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--kw",
        help="Module kwarg KEY=VALUE (Python literal) for every module, or MODULE@KEY=VALUE for one "
        "(mhsa@heads=4, models/attn.py:MyAttn@window=7); repeat.",
    ),
]
LayoutOpt = Annotated[
    str | None,
    typer.Option(
        "--layout",
        help="What your own modules take and return: image (B, C, H, W), the default, or tokens (B, N, C). "
        "Zoo modules keep their own.",
    ),
]
MetricsOpt = Annotated[
    str, typer.Option("--metrics", help="Comma list of params,macs,memory,latency,instructions (needs valgrind).")
]
CountersOpt = Annotated[str, typer.Option("--counters", help="Comma list of attnbench,fvcore,thop.")]
OutputOpt = Annotated[list[Path] | None, typer.Option("--output", "-o", help="Write .csv, .md or .json; repeat.")]
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
TimeLimitOpt = Annotated[float | None, typer.Option("--time-limit", help="Per-case time limit in seconds.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run cases the memory guard would refuse.")]
SortOpt = Annotated[
    str | None, typer.Option("--sort", help="params, macs, module, latency[-BACKEND], memory[-BACKEND].")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="Run only shard K of N of the cases (e.g. 2/3); merge the parts with `report`."),
]
LabelOpt = Annotated[
    str | None,
    typer.Option("--label", help="Machine label for every row (default: hardware, torch and ORT versions)."),
]


# ---------------------------------------------------------------- commands


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """attnbench: build, count, time and compare vision attention modules."""
    if version:
        out.print(f"attnbench {__version__}")
        raise typer.Exit(0)


@app.command("list")
def list_cmd(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the README's Markdown module table.")] = False,
) -> None:
    """Show the module zoo: name, paper, layout, default kwargs, constraints."""
    from attnbench.tables import KEY, Column, fit, fit_note, render
    from attnbench.zoo import catalog

    if markdown:
        from attnbench.report import zoo_markdown

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
    fitted = fit(columns, entries, out.width)
    out.print(render(fitted, entries, "attnbench module zoo"))
    note = fit_note(out.width, [("", fitted)], " or `attnbench info NAME`")
    if note:
        err.print(f"attnbench: {note}", style="dim", highlight=False)


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
    from attnbench.zoo import catalog

    entries = {e["name"]: e for e in catalog.zoo()}
    if name not in entries:  # a user's module (file.py:Name); an unknown name is refused with suggestions
        _info_user(get_spec(name))
        return
    e = entries[name]

    def line(text: str) -> None:
        out.print(text, markup=False, highlight=False)

    out.print(f"[bold]{e['name']}[/bold]: {e['title']}", highlight=False)
    line(f"paper:      {e['paper']} (arXiv {e['arxiv']})")
    line(f"official:   {e['repo']} {e['file']} :: {e['cls']}" + (f" @ {e['commit']}" if e["commit"] else ""))
    line(f"layout:     {e['layout']}" + ("  (wrapped to B, C, H, W)" if e["layout"] == "tokens" else ""))
    line(f"resolution: {catalog.resolution_text(e)}")
    line("kwargs:")
    for key, text in e["defaults"]:
        line(f"  {key} = {text}  {e['kwarg_help'].get(key, '')}".rstrip())
    line("constraints:")
    for c in e["constraints"]:
        line(f"  {c['name']}" + ("  (needs H, W)" if c["needs_resolution"] else ""))
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
    import inspect

    from attnbench.zoo.registry import source_hash

    out.print(f"[bold]{spec.name}[/bold]: your own module", highlight=False)
    out.print(f"source:     {spec.reference.file or '?'} (sha256 {source_hash(spec.name) or '?'}...)", highlight=False)
    try:
        signature = str(inspect.signature(spec.factory)) if spec.factory is not None else "(dim, **kwargs)"
    except (TypeError, ValueError):
        signature = "(dim, **kwargs)"
    out.print(f"called as:  {spec.reference.cls}{signature}, first argument = channels C", highlight=False)
    out.print("layout:     --layout image (default: (B, C, H, W) in and out) or tokens ((B, N, C))", highlight=False)
    out.print("counts:     no hand formula; params and MACs are counted, as for the zoo", highlight=False)


@app.command("env")
def env_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Import torch and ONNX Runtime to check each backend, and measure the machine's peak compute and "
            "bandwidth (a few seconds): the record a run writes.",
        ),
    ] = False,
) -> None:
    """The environment record: versions, devices, and which backends and counters are available."""
    import importlib.util
    import json

    from attnbench import env

    if probe:
        record = env.environment(threads=1, peaks=_probe_peaks())
    else:
        # From files and package metadata only, so this answers at once; --probe imports and measures.
        record = env.static_environment()
        record.update(env.nvidia_smi())
        record["available_backends"] = env.installed_backends()
    record["available_counters"] = {
        "attnbench": {"available": True, "reason": "built in (dispatch level, meta device)"},
        **{
            name: {
                "available": importlib.util.find_spec(module) is not None,
                "reason": f"{dist} {record.get(name) or 'not installed'}",
            }
            for name, module, dist in (("fvcore", "fvcore", "fvcore"), ("thop", "thop", "ultralytics-thop"))
        },
    }
    if as_json:
        print(json.dumps(record, indent=2, default=str))
        return
    for key, value in record.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            out.print(f"{key}:", highlight=False)
            for name, info in value.items():
                mark = {True: "yes", False: "no ", None: "?  "}[info.get("available")]
                out.print(f"  {name:20s} {mark}  {info.get('reason', '')}", highlight=False)
        elif isinstance(value, dict):
            out.print(f"{key:22s} " + ", ".join(f"{k}={v}" for k, v in value.items()), highlight=False)
        elif key == "peaks":
            for p in value:
                out.print(f"{'peak ' + p['device']:22s} {_peak_text(p)}", highlight=False)
        else:
            out.print(f"{key:22s} {value}", highlight=False)
    if not probe:
        err.print("attnbench: backends judged from installed packages; --probe imports and checks them", style="dim")


def _probe_peaks() -> list[tuple[str, str, int]]:
    """The roofs `env --probe` measures: the CPU at 1 thread, and the GPU when there is one."""
    import torch

    keys = [("cpu", R.DEFAULT_DTYPE, 1)]
    if torch.cuda.is_available():
        keys.append(("cuda", R.DEFAULT_DTYPE, 0))
    return keys


def _peak_text(peak: dict[str, Any]) -> str:
    from attnbench import fmt

    threads = f", {peak['threads']} thread{'s' if peak['threads'] > 1 else ''}" if peak["device"] == "cpu" else ""
    return (
        f"{fmt.si(peak['flops_per_s'], 'FLOP/s')}, {fmt.si(peak['bytes_per_s'], 'B/s')} "
        f"({peak['dtype']}{threads}; ridge {fmt.sig(peak['flops_per_s'] / peak['bytes_per_s'])} FLOP/B)"
    )


def _resolve_modules(modules: Sequence[str] | None, all_: bool) -> tuple[str, ...]:
    """The modules named, as rows name them (unknown ones refused with suggestions), or the whole zoo with --all."""
    if all_ and modules:
        raise UsageError(f"--all runs every module: drop the module names ({', '.join(modules)}) or --all")
    if all_:
        return tuple(list_modules())
    if not modules:
        raise UsageError("name at least one module, or pass --all for the whole zoo")
    # get_spec raises UnknownModuleError with suggestions, or ModuleSpecError for a spec that cannot load.
    return tuple(dict.fromkeys(get_spec(m).name for m in modules))


def _sweep(
    modules: tuple[str, ...],
    dims: Sequence[int],
    res: Sequence[str],
    batches: Sequence[int],
    backends: Sequence[str],
    threads: Sequence[int],
    dtypes: Sequence[str],
    kw: Sequence[str],
    shard: str | None = None,
    layout: str | None = None,
    scenario: Scenario | None = None,
) -> Sweep:
    """The Sweep the options describe (strings parsed; values checked by Sweep.check)."""
    from attnbench.shard import parse_shard

    scenario = scenario or Scenario()
    shared, own = parse_module_kw(kw)
    return Sweep(
        modules=modules,
        dims=tuple(dims),
        resolutions=tuple(parse_res(r) for r in res),
        batches=tuple(batches),
        backends=tuple(dict.fromkeys(backends)),
        dtypes=tuple(dict.fromkeys(dtypes)),
        threads=tuple(dict.fromkeys(threads)),
        kwargs=shared,
        shard=parse_shard(shard) if shard is not None else None,
        module_kwargs=own,
        layout=layout or "",
        modes=tuple(dict.fromkeys(scenario.modes or [R.DEFAULT_MODE])),
        channels_last=(scenario.channels_last,),
        compile=(scenario.compile,),
        allocators=(scenario.allocator,),
    )


@dataclass(frozen=True)
class Timing:
    """How long each case is timed: until its median is known to `precision`, within a floor and a budget."""

    min_run_time: float = DEFAULT_MIN_RUN_TIME
    max_run_time: float = DEFAULT_MAX_RUN_TIME
    precision: float = DEFAULT_PRECISION

    def check(self) -> None:
        """Refuse values no timing could use."""
        if self.min_run_time < 0:
            raise UsageError("--min-run-time must be >= 0")
        if self.max_run_time <= 0:
            raise UsageError("--max-run-time must be > 0")
        if not 0 < self.precision < 1:
            raise UsageError("--precision must be a fraction in (0, 1), e.g. 0.01 for +-1%")


@dataclass(frozen=True)
class Scenario:
    """The scenario options of a measuring command, as typed."""

    modes: Sequence[str] | None = None
    channels_last: bool = False
    compile: bool = False
    allocator: str = R.DEFAULT_ALLOCATOR


def _options(
    metrics: str,
    counters: str,
    timing: Timing,
    time_limit: float | None,
    force: bool,
    label: str | None = None,
    extra_metrics: Sequence[str] = (),
) -> RunOptions:
    """RunOptions from the options' strings, refusing bad values (and a missing valgrind, for instructions)."""
    from attnbench.runner import COUNTERS, METRICS, RunOptions

    if label is not None and not label.strip():
        raise UsageError("--label must not be empty")
    timing.check()
    if time_limit is not None and time_limit <= 0:
        raise UsageError("--time-limit must be > 0")
    names = parse_list(metrics, METRICS, "--metrics")
    names += tuple(m for m in extra_metrics if m not in names)
    if "instructions" in names:
        from attnbench.instructions import check_available

        check_available()
    return RunOptions(
        metrics=names,
        counters=parse_list(counters, COUNTERS, "--counters"),
        min_run_time=timing.min_run_time,
        max_run_time=timing.max_run_time,
        precision=timing.precision,
        time_limit_s=time_limit,
        force=force,
        machine=" ".join(label.split()) if label is not None else None,
    )


@dataclass(frozen=True)
class Outputs:
    """Where a run's rows go: files, plots, and how the tables look."""

    files: tuple[Path, ...] = ()
    plots: Path | None = None
    title: str = "attnbench"
    sort: str | None = None
    highlight_best: bool = False
    quiet: bool = False
    breakdown: bool = False
    depth: int = BREAKDOWN_DEPTH  # submodule levels of the breakdown

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on every output file while this run writes them (a second run is refused)."""
        locks = [R.OutputLock(path) for path in self.files]
        try:
            for lock in locks:
                lock.acquire()
            yield
        finally:
            for lock in locks:
                lock.release()

    def check(self, backends: Sequence[str]) -> None:
        """Refuse, before measuring, outputs and plot directories that cannot be written, and a bad --sort."""
        from attnbench import report

        check_outputs(self.files)
        check_plots_dir(self.plots)
        if self.sort:
            try:
                report.sort_key(self.sort, backends)
            except ValueError as exc:
                raise UsageError(f"--sort: {exc}") from None


@dataclass(frozen=True)
class GateOptions:
    """The regression gate: a baseline file and how latency is judged."""

    baseline: Path
    tolerance: float | None = None
    force_latency: bool = False
    metric: str = "wall"  # "wall" (latency) or "instructions" (work, immune to load)
    strict: bool = False  # fail latency regressions measured on a busy machine too


def _measure_and_report(sweep: Sweep, options: RunOptions, outputs: Outputs, gate: GateOptions | None = None) -> None:
    """Check everything, run the sweep (rows streamed to files), show the tables, gate; exit 0 / 1 / 2 / 130 / 143."""
    sweep.check(options.measures)
    outputs.check(sweep.backends)
    base = None
    if gate is not None:
        from attnbench.gate import load_baseline

        base = load_baseline(gate.baseline)
    if options.measures:
        for warning in sweep.warnings():
            err.print(f"attnbench: warning: {warning}", style="yellow", highlight=False)
    with outputs.locked():
        _run_and_report(sweep, options, outputs, gate, base)


def _run_and_report(
    sweep: Sweep, options: RunOptions, outputs: Outputs, gate: GateOptions | None, base: R.LoadedResults | None
) -> None:
    """Run the checked sweep with its outputs locked: rows streamed to files, tables, plots, the gate."""
    from attnbench import report
    from attnbench.env import environment, machine_label
    from attnbench.roofline import key_of

    cases = sweep.cases()
    # The roof each timed case runs under (a second or so each, once per run): achieved FLOP/s becomes % of peak.
    roofs = [key_of(c.backend, c.dtype, c.threads) for c in cases] if "latency" in options.metrics else []
    env = environment(threads=max(sweep.threads), peaks=roofs)
    # The label goes into the environment too, so `report` can name the rows of a file that lost it.
    env["machine"] = options.machine or machine_label(env)
    options = dataclasses.replace(options, machine=env["machine"])
    env["sweep"] = sweep.record()  # so `report` can put merged shards back in plan order
    if gate is not None and base is not None and gate.metric == "instructions":
        from attnbench.gate import check_instruction_baseline

        check_instruction_baseline(base, env, gate.baseline)  # before minutes are spent measuring
    if sweep.shard is not None:
        env["shard"] = f"{sweep.shard[0]}/{sweep.shard[1]}"
        if not cases:
            _empty_shard(sweep, env, outputs)
            return
    rows: list[R.Result] = []

    def on_result(row: R.Result) -> None:
        rows.append(row)
        report.write(rows, env, outputs.files, outputs.title, outputs.sort)

    outcome = _run_with_progress(cases, options, on_result, outputs.quiet)
    rows[:] = outcome.results  # the instruction pass, if any, filled in counts after the rows streamed
    report.write(rows, env, outputs.files, outputs.title, outputs.sort)
    if outputs.plots is not None and rows:
        from attnbench.plots import plot_scaling

        plot_scaling(rows, outputs.plots, env)
    report.show(rows, out, err, outputs.title, outputs.sort, outputs.highlight_best, env)
    if outputs.breakdown:
        print_breakdowns(rows, outputs.depth)
    for path in outputs.files:
        err.print(f"wrote {path}", highlight=False)
    if outcome.interrupted:
        how, code = _stopped_by()
        err.print(f"attnbench: {how}: {len(rows)} completed row(s) kept", highlight=False)
        raise typer.Exit(code)
    # Nothing ran because every case was refused (guarded, skipped, invalid): the input asked for nothing
    # this machine will run, so it ends like bad input, with the first refusal's reason. A shard of only
    # invalid cases is not bad input: the sweep as a whole has valid cases (Sweep.check), other shards run them.
    only_invalid_shard = sweep.shard is not None and all(row.status == R.INVALID for row in rows)
    if rows and all(row.status in R.REFUSED for row in rows) and not only_invalid_shard:
        first = rows[0]
        why = f"{report.case_text(first)}: {first.status}: {first.reason}"
        raise AttnbenchError(f"every case was refused; first: {why}")
    gate_failed = False
    if gate is not None and base is not None:
        gate_failed = not _gate(rows, base, gate, options, len(outcome.failed))
    if outcome.failed or gate_failed:
        raise typer.Exit(1)


def _empty_shard(sweep: Sweep, env: dict[str, Any], outputs: Outputs) -> None:
    """A shard the partition left without cases: say so, write empty reports (a CI merge finds them), exit 0."""
    from attnbench import report
    from attnbench.shard import geometry

    assert sweep.shard is not None
    geometries = len({geometry(c) for c in dataclasses.replace(sweep, shard=None).cases()})
    report.write([], env, outputs.files, outputs.title, outputs.sort)
    err.print(
        f"attnbench: shard {env['shard']} has no cases: the sweep has {geometries} geometr"
        f"{'y' if geometries == 1 else 'ies'}, fewer than {sweep.shard[1]} shards; wrote empty reports",
        highlight=False,
    )
    for path in outputs.files:
        err.print(f"wrote {path}", highlight=False)


def _run_with_progress(
    cases: list[R.Case], options: RunOptions, on_result: Callable[[R.Result], None], quiet: bool
) -> RunOutcome:
    """Run the cases with progress on stderr: a bar on a terminal, one plain line per finished case elsewhere."""
    from attnbench.runner import run

    # One step per measured case, or per geometry when only counting.
    steps = cases if options.measures else list({(_geometry_text(c), c.mode): c for c in cases}.values())
    on_status = None if quiet else _status_line
    if not quiet and not err.is_terminal:
        # A CI log: no bar (it would be redrawn into the log or hidden), but a line as each case finishes.
        done = 0

        def on_line(row: R.Result) -> None:
            nonlocal done
            done += 1
            on_result(row)
            print(f"attnbench: {progress_line(row, done, len(steps))}", file=sys.stderr, flush=True)

        return run(cases, options, on_result=on_line, on_status=on_status)

    def describe(case: R.Case) -> str:
        return _geometry_text(case) + (f" {case.backend}" if options.measures else "")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=quiet,
    )
    with progress:
        task = progress.add_task(describe(steps[0]), total=len(steps))
        done = 0

        def on_progress(case: R.Case) -> None:
            nonlocal done
            done += 1
            progress.update(task, advance=1, description=describe(steps[min(done, len(steps) - 1)]))

        return run(cases, options, on_result=on_result, on_progress=on_progress, on_status=on_status)


def progress_line(row: R.Result, done: int, total: int) -> str:
    """One finished case for a log: '[3/58] sk C=64 28x28 B=1 cpu: ok in 1.2 s'."""
    from attnbench.report import case_text

    seconds = f" in {row.seconds:.1f} s" if row.seconds is not None else ""
    return f"[{done}/{total}] {case_text(row)}: {row.status}{seconds}"


def _status_line(message: str) -> None:
    # Plain print: a log gets the line whole and at once.
    print(f"attnbench: {message}", file=sys.stderr, flush=True)


def _geometry_text(case: R.Case) -> str:
    return f"{case.module} C={case.dim} {case.height}x{case.width} B={case.batch}"


def _gate(
    rows: list[R.Result], base: R.LoadedResults, gate: GateOptions, options: RunOptions, failed_cases: int = 0
) -> bool:
    """Compare the rows with the baseline, print the verdict; True when the gate passes.

    Everything that can end the run in an error is decided before the verdict is printed, so PASSED is never
    followed by an error; cases of this run that failed make the printed verdict FAILED, as the exit code is.
    """
    from attnbench import report
    from attnbench.gate import compare_to_baseline
    from attnbench.runner import run

    verdict = compare_to_baseline(
        rows,
        base,
        tolerance=gate.tolerance,
        force_latency=gate.force_latency,
        remeasure=lambda case: run([case], options.without_instructions()).results,
        metric=gate.metric,
        strict=gate.strict,
    )
    if verdict.compared_cases == 0:
        # A gate that compared nothing must not pass: the run's settings differ from the baseline's.
        held = sorted({f"C={r.dim} {r.height}x{r.width} B={r.batch}" for r in base.results})
        raise BaselineError(
            f"gate: no case of this run is in the baseline {gate.baseline} (it holds {', '.join(held[:6])}"
            f"{', ...' if len(held) > 6 else ''}); run with the baseline's settings"
        )
    report.show_gate(verdict, out, failed_cases)
    return verdict.passed


def print_breakdowns(rows: Sequence[R.Result], depth: int = BREAKDOWN_DEPTH) -> None:
    """For each geometry: params, MACs and FLOPs per nested submodule down to `depth` (as fvcore's
    flop_count_table), then the attnbench counter's MACs per operator and what it saw but did not count."""
    import json

    import torch
    from rich.measure import Measurement

    from attnbench import fmt
    from attnbench.counting import breakdown_table, count_macs, count_params
    from attnbench.zoo.adapters import TokensToImage
    from attnbench.zoo.build import build_module

    seen = set()
    for row in rows:
        key = (row.module, row.dim, row.height, row.width, row.batch, row.kwargs, row.layout, row.mode)
        if key in seen or row.status == R.INVALID:
            continue
        seen.add(key)
        kwargs = json.loads(row.kwargs) if row.kwargs else {}
        with torch.device("meta"):  # counts need shapes only: no weights are allocated
            module = build_module(row.module, row.dim, (row.height, row.width), kwargs, row.layout)
        report = count_macs(module, (row.batch, row.dim, row.height, row.width), mode=row.mode)
        params = count_params(module)
        # A token-layout module sits inside the (B, C, H, W) adapter: the adapter is not a level of its own.
        levels = depth + (1 if isinstance(module, TokensToImage) else 0)
        title = f"{row.module} C={row.dim} {row.height}x{row.width} B={row.batch}: per submodule, depth {depth}"
        table = breakdown_table(params, report, max_depth=levels, fmt=fmt.si, title=title)
        if Measurement.get(out, out.options, table).maximum > out.width:  # class names give way first
            table = breakdown_table(params, report, max_depth=levels, fmt=fmt.si, title=title, types=False)
        out.print()
        out.print(table)
        out.print(
            f"params {params.total:,} (trainable {params.trainable:,}; buffers, not counted: {params.buffers:,})",
            highlight=False,
        )
        out.print(report.format(), markup=False, highlight=False)


@app.command("profile")
def profile_cmd(
    modules: ModulesArg = None,
    all_: AllOpt = False,
    dim: DimOpt = None,
    res: ResOpt = None,
    batch: BatchOpt = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = None,
    dtype: DtypeOpt = None,
    mode: ModeOpt = None,
    channels_last: ChannelsLastOpt = False,
    compile_: CompileOpt = False,
    allocator: AllocatorOpt = R.DEFAULT_ALLOCATOR,
    kw: KwOpt = None,
    layout: LayoutOpt = None,
    metrics: MetricsOpt = "params,macs,memory,latency",
    counters: CountersOpt = "attnbench,fvcore,thop",
    output: OutputOpt = None,
    plots: PlotsOpt = None,
    min_run_time: MinRunOpt = DEFAULT_MIN_RUN_TIME,
    max_run_time: MaxRunOpt = DEFAULT_MAX_RUN_TIME,
    precision: PrecisionOpt = DEFAULT_PRECISION,
    time_limit: TimeLimitOpt = None,
    force: ForceOpt = False,
    sort: SortOpt = None,
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    label: LabelOpt = None,
    breakdown: Annotated[
        bool,
        typer.Option(
            "--breakdown", help="Also print params, MACs and FLOPs per nested submodule, and MACs per operator."
        ),
    ] = False,
    depth: Annotated[
        int | None,
        typer.Option("--depth", help=f"Submodule levels --breakdown shows (default {BREAKDOWN_DEPTH}; 0: the whole)."),
    ] = None,
) -> None:
    """Measure modules over every dim, resolution, batch and backend given; one table, optional reports."""
    sweep = _sweep(
        _resolve_modules(modules, all_),
        dim or [64],
        res or list(PROFILE_RES),
        batch or [1],
        backend or ["cpu"],
        threads or [1],
        dtype or [R.DEFAULT_DTYPE],
        kw or [],
        shard,
        layout,
        Scenario(mode, channels_last, compile_, allocator),
    )
    if depth is not None and (not breakdown or depth < 0):
        raise UsageError(f"--depth {depth}: " + ("must be >= 0" if breakdown else "only with --breakdown"))
    levels = BREAKDOWN_DEPTH if depth is None else depth
    outputs = Outputs(tuple(output or ()), plots, "attnbench profile", sort, False, quiet, breakdown, levels)
    timing = Timing(min_run_time, max_run_time, precision)
    _measure_and_report(sweep, _options(metrics, counters, timing, time_limit, force, label), outputs)


@app.command("compare")
def compare_cmd(
    modules: ModulesArg = None,
    all_: AllOpt = False,
    dim: DimOpt = None,
    res: ResOpt = None,
    batch: BatchOpt = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = None,
    dtype: DtypeOpt = None,
    mode: ModeOpt = None,
    channels_last: ChannelsLastOpt = False,
    compile_: CompileOpt = False,
    allocator: AllocatorOpt = R.DEFAULT_ALLOCATOR,
    kw: KwOpt = None,
    layout: LayoutOpt = None,
    metrics: MetricsOpt = "params,macs,memory,latency",
    counters: CountersOpt = "attnbench,fvcore,thop",
    output: OutputOpt = None,
    plots: PlotsOpt = None,
    min_run_time: MinRunOpt = DEFAULT_MIN_RUN_TIME,
    max_run_time: MaxRunOpt = DEFAULT_MAX_RUN_TIME,
    precision: PrecisionOpt = DEFAULT_PRECISION,
    time_limit: TimeLimitOpt = None,
    force: ForceOpt = False,
    sort: SortOpt = "macs",
    quiet: QuietOpt = False,
    shard: ShardOpt = None,
    label: LabelOpt = None,
    baseline: Annotated[Path | None, typer.Option("--baseline", help="Gate against this CSV/JSON report.")] = None,
    tolerance: Annotated[
        float | None, typer.Option("--tolerance", help="Latency regression tolerance (fraction).")
    ] = None,
    force_latency: Annotated[
        bool, typer.Option("--force-latency", help="Compare latency with a baseline from other hardware.")
    ] = False,
    gate_metric: Annotated[
        str,
        typer.Option(
            "--gate-metric",
            help="wall: latency; instructions: Callgrind instructions per forward (needs valgrind; immune to "
            "load). With -o, instructions also writes them into the baseline.",
        ),
    ] = "wall",
    strict: Annotated[
        bool, typer.Option("--strict", help="Wall gate: fail latency regressions measured on a busy machine too.")
    ] = False,
) -> None:
    """Compare modules side by side (defaults: C=64 at 14, 28, 56 on cpu and ort), best per column in bold."""
    sweep = _sweep(
        _resolve_modules(modules, all_),
        dim or [COMPARE_DIM],
        res or list(COMPARE_RES),
        batch or [1],
        backend or list(COMPARE_BACKENDS),
        threads or [1],
        dtype or [R.DEFAULT_DTYPE],
        kw or [],
        shard,
        layout,
        Scenario(mode, channels_last, compile_, allocator),
    )
    outputs = Outputs(tuple(output or ()), plots, "attnbench compare", sort, True, quiet)
    if tolerance is not None and not 0 <= tolerance < 10:
        raise UsageError("--tolerance must be a fraction in [0, 10), e.g. 0.1 for 10%")
    if gate_metric not in ("wall", "instructions"):
        raise UsageError(f"--gate-metric {gate_metric!r}: allowed: wall, instructions")
    gate = GateOptions(baseline, tolerance, force_latency, gate_metric, strict) if baseline is not None else None
    # Gating on instructions, or writing a baseline for it, needs the counts in this run's rows.
    extra = ("instructions",) if gate_metric == "instructions" else ()
    timing = Timing(min_run_time, max_run_time, precision)
    options = _options(metrics, counters, timing, time_limit, force, label, extra)
    _measure_and_report(sweep, options, outputs, gate)


@app.command("report")
def report_cmd(
    sources: Annotated[
        list[str], typer.Argument(help="CSV or JSON reports written by attnbench, or globs ('shards/*.csv').")
    ],
    output: OutputOpt = None,
    plots: PlotsOpt = None,
    sort: SortOpt = None,
    label: Annotated[
        str | None,
        typer.Option("--label", help="Machine label for rows that have none (default: from their file's environment)."),
    ] = None,
    latest: Annotated[
        bool, typer.Option("--latest", help="Keep the newest of a case measured twice on one machine (else an error).")
    ] = False,
) -> None:
    """Re-render saved results, or merge several (shards, machines) into one report, without measuring."""
    from attnbench import report
    from attnbench.merge import expand, merge

    if label is not None and not label.strip():
        raise UsageError("--label must not be empty")
    paths = expand(sources)
    merged = merge([R.load(path) for path in paths], " ".join(label.split()) if label else None, latest)
    title = f"attnbench report ({paths[0].name})" if len(paths) == 1 else f"attnbench report ({len(paths)} files)"
    outputs = Outputs(tuple(output or ()), plots, title, sort)
    outputs.check(report.backends_of(merged.results))
    with outputs.locked():
        report.write(merged.results, merged.env, outputs.files, outputs.title, outputs.sort)
    if plots is not None:
        from attnbench.plots import plot_scaling

        for path in plot_scaling(merged.results, plots, merged.env):
            err.print(f"wrote {path}", highlight=False)
    report.show(merged.results, out, err, outputs.title, outputs.sort, env=merged.env)
    for path in outputs.files:
        err.print(f"wrote {path}", highlight=False)


def _error_line(message: str) -> None:
    # Plain print, not rich: a console would wrap the line at the terminal width.
    print(f"attnbench: error: {' '.join(message.split())}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the orderly stop Ctrl-C gets: finished rows kept, temporary files removed."""


_stop_signal: int | None = None


def _on_sigterm(signum: int, frame: Any) -> None:
    global _stop_signal
    if _stop_signal is not None:
        return  # the first one is being handled: let the files be written and the temporaries removed
    _stop_signal = signum
    raise Terminated


def _stopped_by() -> tuple[str, int]:
    """What stopped the run and its exit code: 128 + the signal, as shells report it."""
    if _stop_signal == signal.SIGTERM:
        return "terminated (SIGTERM)", EXIT_TERMINATED
    return "interrupted", EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one-line errors on stderr; exit 2 for bad input, 1 for failed cases, 130 for Ctrl-C,
    143 for SIGTERM."""
    global out, _stop_signal
    out = Console(width=stdout_width())  # COLUMNS as it is now (tests and wrappers change it between calls)
    args = list(argv) if argv is not None else sys.argv[1:]
    if not args:  # bare `attnbench`: the help, as a success
        args = ["--help"]
    if args == ["--version"]:  # answered before typer builds its parsers (a third of a second)
        out.print(f"attnbench {__version__}", highlight=False)
        return 0
    _stop_signal = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        return _main(args)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(args: list[str]) -> int:
    debug = bool(os.environ.get("ATTNBENCH_DEBUG"))
    try:
        code = app(args=args, standalone_mode=False)
    except Exit as exc:
        return exc.exit_code
    except (Abort, KeyboardInterrupt):
        how, code = _stopped_by()
        err.print(f"attnbench: {how}", highlight=False)
        return code
    except ClickUsageError as exc:
        _error_line(exc.format_message())
        return 2
    except (AttnbenchError, BaselineError) as exc:
        if debug:
            raise
        _error_line(str(exc))
        return exc.exit_code
    # With standalone_mode off, click returns the code of a typer.Exit instead of raising it.
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
