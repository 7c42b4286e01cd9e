"""The attnbench command line: thin Typer commands over the library; data on stdout, chatter on stderr."""

from __future__ import annotations

import ast
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

try:  # typer >= 0.20 vendors its own click; older versions use the click package
    from typer._click.exceptions import UsageError as ClickUsageError
    from typer.exceptions import Abort, Exit
except ImportError:  # pragma: no cover
    from click.exceptions import Abort, Exit
    from click.exceptions import UsageError as ClickUsageError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attnbench import __version__
from attnbench import results as R
from attnbench.errors import AttnbenchError, BaselineError, InvalidCaseError
from attnbench.registry import get_spec, list_modules, validate

app = typer.Typer(
    name="attnbench",
    help="Build, count, time and compare vision attention modules (CPU, CUDA, ONNX Runtime).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Tables are wide: a pipe or a file gets 200 columns rather than rich's default of 80 for non-terminals.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)  # one message, one line: no wrapping at 80 columns

#: Defaults of `compare`: quick enough for a 2-core CPU in a few minutes, wide enough to show scaling.
COMPARE_DIM = 64
COMPARE_RES = ("14", "28", "56")
COMPARE_BACKENDS = ("cpu", "ort")
PROFILE_RES = ("56",)
#: Seconds of timed calls per case: measurement.md's blocked_autorange(min_run_time=1.0) for stable medians.
CLI_MIN_RUN_TIME = 1.0
OUTPUT_SUFFIXES = (".csv", ".md", ".json")
#: Exit code for a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class UsageError(AttnbenchError):
    """A malformed option value (reported as one line, exit 2)."""


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


def parse_kw(items: Sequence[str]) -> dict[str, Any]:
    """['heads=4', 'kernels=[3,5]'] -> {'heads': 4, 'kernels': [3, 5]}; values are Python literals."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--kw {item!r}: expected KEY=VALUE (e.g. heads=4 or kernels=[3,5])")
        try:
            parsed[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed[key] = value.strip()  # a bare word stays a string; the module's type check decides
    return parsed


def parse_list(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """'params,macs' -> ('params', 'macs'), refusing names outside `allowed`."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UsageError(f"{option} {text!r}: unknown {', '.join(bad) or 'empty list'}; allowed: {', '.join(allowed)}")
    return names


def check_outputs(paths: Sequence[Path]) -> list[Path]:
    """Refuse, before measuring, outputs of unknown format, that are directories, or that cannot be written."""
    checked = []
    for path in paths:
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
    """Refuse a plots directory that is a file or cannot be created."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise UsageError(f"--plots {path}: is a file, expected a directory")
    probe = path if path.exists() else path.parent
    if not probe.exists() or not os.access(probe, os.W_OK):
        raise UsageError(f"--plots {path}: cannot create or write this directory")


def check_positive(name: str, values: Sequence[int]) -> None:
    """Refuse zero or negative sizes."""
    bad = [v for v in values if v < 1]
    if bad:
        raise UsageError(f"{name} {bad[0]}: must be an int >= 1")


# ---------------------------------------------------------------- shared options

ModulesArg = Annotated[list[str] | None, typer.Argument(help="Module names (see `attnbench list`).")]
DimOpt = Annotated[list[int] | None, typer.Option("--dim", "-d", help="Channels C; repeat for a sweep.")]
ResOpt = Annotated[list[str] | None, typer.Option("--res", "-r", help="Resolution H or HxW; repeat for a sweep.")]
BatchOpt = Annotated[list[int] | None, typer.Option("--batch", "-b", help="Batch size; repeat for a sweep.")]
BackendOpt = Annotated[list[str] | None, typer.Option("--backend", help="cpu, cuda or ort; repeat for several.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="Intra-op threads (torch and ORT). Default 1.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, or float16/bfloat16 on cuda.")]
KwOpt = Annotated[list[str] | None, typer.Option("--kw", help="Module kwarg KEY=VALUE (Python literal); repeat.")]
MetricsOpt = Annotated[str, typer.Option("--metrics", help="Comma list of params,macs,memory,latency.")]
CountersOpt = Annotated[str, typer.Option("--counters", help="Comma list of attnbench,fvcore,thop.")]
OutputOpt = Annotated[list[Path] | None, typer.Option("--output", "-o", help="Write .csv, .md or .json; repeat.")]
PlotsOpt = Annotated[Path | None, typer.Option("--plots", help="Directory for scaling plots (PNG).")]
MinRunOpt = Annotated[float, typer.Option("--min-run-time", help="Seconds of timed calls per case.")]
TimeLimitOpt = Annotated[float | None, typer.Option("--time-limit", help="Per-case time limit in seconds.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run cases the memory guard would refuse.")]
SortOpt = Annotated[
    str | None, typer.Option("--sort", help="params, macs, module, latency[-BACKEND], memory[-BACKEND].")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


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
    from rich.table import Table

    if markdown:
        from attnbench.report import zoo_markdown

        print(zoo_markdown())
        return

    table = Table(title="attnbench module zoo", header_style="bold", title_justify="left")
    for header in ("Name", "Module (paper)", "arXiv", "Layout", "Default kwargs", "Constraints"):
        table.add_column(header)
    for name in list_modules():
        spec = get_spec(name)
        layout = spec.layout + (", resolution-bound" if spec.resolution_bound else "")
        kwargs = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        table.add_row(
            name,
            spec.title,
            spec.reference.arxiv,
            layout,
            kwargs,
            "; ".join(c.name for c in spec.constraints) or "-",
        )
    out.print(table)


@app.command("info")
def info_cmd(name: Annotated[str, typer.Argument(help="Module name.")]) -> None:
    """Everything attnbench knows about one module: reference, kwargs, constraints, notes, formulas."""
    from attnbench.registry import Setting

    spec = get_spec(name)
    ref = spec.reference
    out.print(f"[bold]{spec.name}[/bold]: {spec.title}")
    out.print(f"paper:      {ref.paper} (arXiv {ref.arxiv})")
    out.print(f"official:   {ref.repo} {ref.file} :: {ref.cls}" + (f" @ {ref.commit}" if ref.commit else ""))
    out.print(f"layout:     {spec.layout}" + ("  (wrapped to B, C, H, W)" if spec.layout == "tokens" else ""))
    out.print(f"resolution: {'bound (weights depend on H, W; pass --res)' if spec.resolution_bound else 'any'}")
    out.print("kwargs:")
    for key, value in spec.defaults.items():
        out.print(f"  {key} = {value!r}  {spec.kwarg_help.get(key, '')}")
    out.print("constraints:")
    for c in spec.constraints:
        out.print(f"  {c.name}" + ("  (needs H, W)" if c.needs_resolution else ""))
    if spec.notes:
        out.print(f"notes:      {spec.notes}")
    if spec.examples:
        ex = spec.examples[0]
        s = Setting(ex.dim, {**spec.defaults, **ex.kwargs}, ex.res[0], ex.res[1], ex.batch)
        out.print(
            f"formulas at C={ex.dim}, {ex.res[0]}x{ex.res[1]}, B={ex.batch}: params = "
            f"{spec.params_formula(s):,}, MACs = {spec.macs_formula(s):,}"
        )
    if spec.tags:
        out.print(f"tags:       {', '.join(spec.tags)}")


@app.command("env")
def env_cmd() -> None:
    """The environment record: versions, devices, and which backends and counters are available."""
    import importlib.util

    from attnbench.env import environment

    record = environment()
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
    for key, value in record.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            out.print(f"{key}:", highlight=False)
            for name, info in value.items():
                mark = "yes" if info.get("available") else "no "
                out.print(f"  {name:20s} {mark}  {info.get('reason', '')}", highlight=False)
        elif isinstance(value, dict):
            out.print(f"{key:22s} " + ", ".join(f"{k}={v}" for k, v in value.items()), highlight=False)
        else:
            out.print(f"{key:22s} {value}", highlight=False)


def _resolve_modules(modules: Sequence[str] | None, all_: bool) -> list[str]:
    if all_ or not modules:
        if not all_ and not modules:
            raise UsageError("name at least one module, or pass --all")
        return list_modules()
    for m in modules:
        get_spec(m)  # raises UnknownModuleError with suggestions
    return list(dict.fromkeys(modules))


def _measure_and_report(
    *,
    modules: list[str],
    dims: Sequence[int],
    res: Sequence[str],
    batches: Sequence[int],
    backends: Sequence[str],
    threads: int,
    dtype: str,
    kw: Sequence[str],
    metrics: str,
    counters: str,
    outputs: Sequence[Path],
    plots: Path | None,
    min_run_time: float,
    time_limit: float | None,
    force: bool,
    sort: str | None,
    quiet: bool,
    title: str,
    highlight_best: bool,
    baseline: Path | None = None,
    tolerance: float | None = None,
    force_latency: bool = False,
    breakdown: bool = False,
) -> None:
    """Validate everything, run the sweep, stream rows to files, print tables; exit 0 / 1 / 2 / 130."""
    from attnbench import report
    from attnbench.backends import list_backends
    from attnbench.runner import COUNTERS, METRICS, RunOptions, plan, run

    # 1. Everything a user can get wrong is checked before anything is measured.
    check_positive("--dim", dims)
    check_positive("--batch", batches)
    check_positive("--threads", [threads])
    resolutions = [parse_res(r) for r in res]
    kwargs = parse_kw(kw)
    metric_names = parse_list(metrics, METRICS, "--metrics")
    counter_names = parse_list(counters, COUNTERS, "--counters")
    known_backends = list_backends()
    for b in backends:
        if b not in known_backends:
            raise UsageError(f"--backend {b!r}: unknown; allowed: {', '.join(known_backends)}")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise UsageError(f"--dtype {dtype!r}: allowed: float32, float16, bfloat16")
    if dtype != "float32" and any(b != "cuda" for b in backends):
        raise UsageError(f"--dtype {dtype} is supported on --backend cuda only (CPU and ORT runs are float32)")
    if min_run_time <= 0:
        raise UsageError("--min-run-time must be > 0")
    if time_limit is not None and time_limit <= 0:
        raise UsageError("--time-limit must be > 0")
    if tolerance is not None and not 0 <= tolerance < 10:
        raise UsageError("--tolerance must be a fraction in [0, 10), e.g. 0.1 for 10%")
    if sort:
        try:
            report.sort_key(sort, backends)
        except ValueError as exc:
            raise UsageError(f"--sort: {exc}") from None
    outputs = check_outputs(outputs)
    check_plots_dir(plots)
    # Backends asked for alone must exist here; in a multi-backend run the missing one becomes skipped rows.
    if len(backends) == 1 and ("latency" in metric_names or "memory" in metric_names):
        from attnbench.backends import get_backend

        ok, why = get_backend(backends[0]).available()
        if not ok:
            from attnbench.errors import BackendUnavailableError

            raise BackendUnavailableError(f"backend {backends[0]!r} is not available here: {why}")
    # A kwarg a module does not take, or of the wrong type, is bad input whatever the sweep; a constraint a
    # case breaks is judged per case below.
    for m in modules:
        for d in dims:
            try:
                validate(m, d, None, **kwargs)
            except InvalidCaseError as exc:
                if exc.constraint == "kwargs":
                    raise
    base = None
    if baseline is not None:
        from attnbench.gate import load_baseline

        base = load_baseline(baseline)
    cases = plan(modules, dims, resolutions, batches, backends, threads, dtype, kwargs)
    # Every case refused up front: that is bad input, not a sweep with failures.
    valid_count = 0
    first_invalid: InvalidCaseError | None = None
    for c in dict.fromkeys((c.module, c.dim, c.height, c.width, c.batch) for c in cases):  # plan order
        try:
            validate(c[0], c[1], (c[2], c[3]), c[4], **kwargs)
            valid_count += 1
        except InvalidCaseError as exc:
            first_invalid = first_invalid or exc
    if valid_count == 0 and first_invalid is not None:
        raise first_invalid

    # 2. Run, streaming every finished row to the output files (atomically rewritten, always valid).
    from attnbench.env import environment

    env = environment(threads=threads)
    options = RunOptions(
        metrics=metric_names,
        counters=counter_names,
        min_run_time=min_run_time,
        time_limit_s=time_limit,
        force=force,
    )
    rows: list[R.Result] = []

    def write_all() -> None:
        write_outputs(rows, env, outputs, title, sort)

    def on_result(row: R.Result) -> None:
        rows.append(row)
        write_all()

    # One step per measured case, or per geometry when only counting; the bar names the step under way.
    steps = (
        cases if options.measures else list({(c.module, c.dim, c.height, c.width, c.batch): c for c in cases}.values())
    )

    def describe(case: R.Case) -> str:
        where = f" {case.backend}" if options.measures else ""
        return f"{case.module} C={case.dim} {case.height}x{case.width} B={case.batch}{where}"

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

        outcome = run(cases, options, on_result=on_result, on_progress=on_progress)
    write_all()
    if plots is not None and rows:
        from attnbench.plots import plot_scaling

        plot_scaling(rows, plots)

    # 3. Show what was measured.
    out.print(report.rich_table(rows, title=title, sort_by=sort, highlight_best=highlight_best))
    scale = report.scaling_table(rows)
    if scale is not None:
        out.print(scale)
    if breakdown:
        print_breakdowns(rows)
    for row in rows:
        if row.status not in (R.OK,):
            err.print(
                f"{row.module} C={row.dim} {row.height}x{row.width} B={row.batch} {row.backend}: "
                f"{row.status}: {row.reason}",
                style="yellow",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
    err.print(f"[dim]{report.CONVENTION}[/dim]", highlight=False, soft_wrap=True)
    for path in outputs:
        err.print(f"wrote {path}")
    if outcome.interrupted:
        err.print(f"attnbench: interrupted: {len(rows)} completed row(s) kept")
        raise typer.Exit(EXIT_INTERRUPTED)
    # Nothing ran because every case was refused (guarded, skipped, invalid): the input asked for nothing
    # this machine will run, so it ends like bad input, with the first refusal's reason.
    if rows and all(row.status in R.REFUSED for row in rows):
        first = rows[0]
        raise AttnbenchError(
            f"every case was refused; first: {first.module} C={first.dim} {first.height}x{first.width} "
            f"B={first.batch} {first.backend}: {first.status}: {first.reason}"
        )
    gate_failed = False
    if base is not None:
        from attnbench.gate import compare_to_baseline, print_gate

        verdict = compare_to_baseline(
            rows,
            base,
            tolerance=tolerance,
            force_latency=force_latency,
            remeasure=lambda case: run([case], options).results,
        )
        print_gate(verdict, out)
        if verdict.compared_cases == 0:
            # A gate that compared nothing must not pass: the run's settings differ from the baseline's.
            held = sorted({f"C={r.dim} {r.height}x{r.width} B={r.batch}" for r in base.results})
            raise BaselineError(
                f"gate: no case of this run is in the baseline {baseline} (it holds {', '.join(held[:6])}"
                f"{', ...' if len(held) > 6 else ''}); run with the baseline's settings"
            )
        gate_failed = not verdict.passed
    if outcome.failed or gate_failed:
        raise typer.Exit(1)


def print_breakdowns(rows: Sequence[R.Result]) -> None:
    """Params per child, and the attnbench counter's MACs per operator and submodule, for each geometry."""
    import json

    import torch

    from attnbench.adapters import TokensToImage
    from attnbench.counting import count_macs, count_params
    from attnbench.registry import build

    seen = set()
    for row in rows:
        key = (row.module, row.dim, row.height, row.width, row.batch, row.kwargs)
        if key in seen or row.status == R.INVALID:
            continue
        seen.add(key)
        kwargs = json.loads(row.kwargs) if row.kwargs else {}
        with torch.device("meta"):  # counts need shapes only: no weights are allocated
            module = build(row.module, row.dim, (row.height, row.width), **kwargs)
        report = count_macs(module, (row.batch, row.dim, row.height, row.width))
        # A token-layout module sits inside the (B, C, H, W) adapter: break down the module itself.
        params = count_params(module.inner if isinstance(module, TokensToImage) else module)
        out.print(f"\n[bold]{row.module}[/bold] C={row.dim} {row.height}x{row.width} B={row.batch}")
        out.print(
            f"params {params.total:,} (trainable {params.trainable:,}; buffers, not counted: {params.buffers:,})",
            highlight=False,
        )
        for child, n in params.by_module.items():
            out.print(f"  {child:45s} {n:>15,}", highlight=False)
        out.print(report.format(), markup=False, highlight=False)


def write_outputs(
    rows: Sequence[R.Result],
    env: dict[str, Any],
    outputs: Sequence[Path],
    title: str,
    sort: str | None = None,
) -> None:
    """Write every requested report file (CSV, Markdown, JSON) from the rows so far."""
    from attnbench import report

    for path in outputs:
        if path.suffix == ".csv":
            text = R.csv_text(rows, env)
        elif path.suffix == ".json":
            text = R.json_text(rows, env)
        else:
            text = report.markdown(rows, env, title=title, sort_by=sort)
        R.atomic_write(path, text)


@app.command("profile")
def profile_cmd(
    modules: ModulesArg = None,
    dim: DimOpt = None,
    res: ResOpt = None,
    batch: BatchOpt = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    dtype: DtypeOpt = "float32",
    kw: KwOpt = None,
    metrics: MetricsOpt = "params,macs,memory,latency",
    counters: CountersOpt = "attnbench,fvcore,thop",
    output: OutputOpt = None,
    plots: PlotsOpt = None,
    min_run_time: MinRunOpt = CLI_MIN_RUN_TIME,
    time_limit: TimeLimitOpt = None,
    force: ForceOpt = False,
    sort: SortOpt = None,
    quiet: QuietOpt = False,
    breakdown: Annotated[
        bool, typer.Option("--breakdown", help="Also print attnbench's per-operator and per-submodule MACs.")
    ] = False,
) -> None:
    """Measure modules over every dim, resolution, batch and backend given; one table, optional reports."""
    _measure_and_report(
        modules=_resolve_modules(modules, False),
        dims=dim or [64],
        res=res or list(PROFILE_RES),
        batches=batch or [1],
        backends=backend or ["cpu"],
        threads=threads,
        dtype=dtype,
        kw=kw or [],
        metrics=metrics,
        counters=counters,
        outputs=output or [],
        plots=plots,
        min_run_time=min_run_time,
        time_limit=time_limit,
        force=force,
        sort=sort,
        quiet=quiet,
        title="attnbench profile",
        highlight_best=False,
        breakdown=breakdown,
    )


@app.command("compare")
def compare_cmd(
    modules: ModulesArg = None,
    all_: Annotated[bool, typer.Option("--all", help="Every module of the zoo.")] = False,
    dim: DimOpt = None,
    res: ResOpt = None,
    batch: BatchOpt = None,
    backend: BackendOpt = None,
    threads: ThreadsOpt = 1,
    dtype: DtypeOpt = "float32",
    kw: KwOpt = None,
    metrics: MetricsOpt = "params,macs,memory,latency",
    counters: CountersOpt = "attnbench,fvcore,thop",
    output: OutputOpt = None,
    plots: PlotsOpt = None,
    min_run_time: MinRunOpt = CLI_MIN_RUN_TIME,
    time_limit: TimeLimitOpt = None,
    force: ForceOpt = False,
    sort: SortOpt = "macs",
    quiet: QuietOpt = False,
    baseline: Annotated[Path | None, typer.Option("--baseline", help="Gate against this CSV/JSON report.")] = None,
    tolerance: Annotated[
        float | None, typer.Option("--tolerance", help="Latency regression tolerance (fraction).")
    ] = None,
    force_latency: Annotated[
        bool, typer.Option("--force-latency", help="Compare latency with a baseline from other hardware.")
    ] = False,
) -> None:
    """Compare modules side by side (defaults: C=64 at 14, 28, 56 on cpu and ort), best per column in bold."""
    _measure_and_report(
        modules=_resolve_modules(modules, all_),
        dims=dim or [COMPARE_DIM],
        res=res or list(COMPARE_RES),
        batches=batch or [1],
        backends=backend or list(COMPARE_BACKENDS),
        threads=threads,
        dtype=dtype,
        kw=kw or [],
        metrics=metrics,
        counters=counters,
        outputs=output or [],
        plots=plots,
        min_run_time=min_run_time,
        time_limit=time_limit,
        force=force,
        sort=sort,
        quiet=quiet,
        title="attnbench compare",
        highlight_best=True,
        baseline=baseline,
        tolerance=tolerance,
        force_latency=force_latency,
    )


@app.command("report")
def report_cmd(
    source: Annotated[Path, typer.Argument(help="A CSV or JSON report written by attnbench.")],
    output: OutputOpt = None,
    plots: PlotsOpt = None,
    sort: SortOpt = None,
) -> None:
    """Re-render saved results (table, Markdown, plots) without measuring anything."""
    from attnbench import report

    loaded = R.load(source)
    outputs = check_outputs(output or [])
    check_plots_dir(plots)
    if sort:
        try:
            report.sort_key(sort, report.backends_of(loaded.results))
        except ValueError as exc:
            raise UsageError(f"--sort: {exc}") from None
    title = f"attnbench report ({source.name})"
    write_outputs(loaded.results, loaded.env, outputs, title, sort)
    if plots is not None:
        for path in __import__("attnbench.plots", fromlist=["plot_scaling"]).plot_scaling(loaded.results, plots):
            err.print(f"wrote {path}")
    out.print(report.rich_table(loaded.results, title=title, sort_by=sort))
    scale = report.scaling_table(loaded.results)
    if scale is not None:
        out.print(scale)


def _error_line(message: str) -> None:
    # Plain print, not rich: a console would wrap the line at the terminal width.
    print(f"attnbench: error: {' '.join(message.split())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one-line errors on stderr; exit 2 for bad input, 1 for failed cases, 130 for Ctrl-C."""
    debug = bool(os.environ.get("ATTNBENCH_DEBUG"))
    try:
        code = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except Exit as exc:
        return exc.exit_code
    except Abort:
        err.print("attnbench: interrupted")
        return EXIT_INTERRUPTED
    except ClickUsageError as exc:
        _error_line(exc.format_message())
        return 2
    except (AttnbenchError, BaselineError) as exc:
        if debug:
            raise
        _error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("attnbench: interrupted")
        return EXIT_INTERRUPTED
    # With standalone_mode off, click returns the code of a typer.Exit instead of raising it.
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
