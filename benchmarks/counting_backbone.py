"""Counting a backbone: attnbench's counts-only run against the three counters called directly on a prebuilt model.

The run under test is `attnbench.profile(SPEC, dim=3, res=224, metrics params,macs)`: the constructor check, the
one build, params, and MACs from the attnbench counter, fvcore and thop, as `attnbench profile SPEC --metrics
params,macs` does after its imports. The reference is what a user who already holds the built model would run:
fvcore's FlopCountAnalysis(model, x).total() and thop.profile(model copy, (x,)) on the CPU, and
attnbench.count_macs(model, shape) (on meta). Both sides run in this one process, in alternating order, after
every import, at the same thread count (1, the run's default); the figure is the ratio of their wall times per
repeat, so a machine shared with other jobs slows both sides alike, and the spread across repeats says how much
the load moved it. Target: at most 1.3x.

Run: python benchmarks/counting_backbone.py SPEC [SPEC...] [--repeats 5] [-o results/counting_backbone.md]
e.g. SPEC = /path/to/SMT/models/smt.py:smt_s(pretrained=False) (in an environment with the repository's imports).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from thop import profile as thop_profile

import attnbench

# The spec cache of the registry (internal): emptied between repeats, so each run judges and builds afresh as a
# new process would (the file itself stays imported: imports are outside both sides).
from attnbench.zoo import registry

TARGET = 1.3
RES = 224


def ours(spec: str) -> tuple[float, Any]:
    """Seconds of attnbench's counts-only run of `spec`, and its row."""
    registry._ADHOC.clear()
    options = attnbench.RunOptions(metrics=("params", "macs"))
    started = time.perf_counter()
    (row,) = attnbench.profile(spec, dim=3, res=RES, options=options)
    return time.perf_counter() - started, row


def direct(model: torch.nn.Module) -> tuple[float, dict[str, float]]:
    """Seconds of fvcore + thop + attnbench's counter called directly on the prebuilt model, and each's."""
    x = torch.randn(1, 3, RES, RES)
    spare = copy.deepcopy(model)  # thop writes buffers onto the model it profiles: a copy made outside the clock
    times = {}
    started = time.perf_counter()
    with torch.no_grad():
        FlopCountAnalysis(model, (x,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
    times["fvcore"] = time.perf_counter() - started
    t0 = time.perf_counter()
    with torch.no_grad():
        thop_profile(spare, inputs=(x,), verbose=False)
    times["thop"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    attnbench.count_macs(model, (1, 3, RES, RES))
    times["attnbench"] = time.perf_counter() - t0
    return time.perf_counter() - started, times


def measure(spec: str, repeats: int) -> dict[str, Any]:
    """Alternating repeats of both sides on one spec: per-repeat seconds and ratios."""
    torch.set_num_threads(1)
    model = attnbench.build(spec, 3, RES).eval()  # imports the file and warms both paths
    ours(spec)
    direct(model)
    runs = []
    for i in range(repeats):
        loads = os.getloadavg()[0]
        if i % 2:
            d, parts = direct(model)
            o, row = ours(spec)
        else:
            o, row = ours(spec)
            d, parts = direct(model)
        counters = ("attnbench", "fvcore", "thop")
        runs.append({"ours_s": o, "direct_s": d, "ratio": o / d, "ratio_counting": (o - row.build_s) / d,
                     "direct_parts": parts, "load_1min": loads,
                     "build_s": row.build_s, "built_on": row.built_on,
                     "count_s": {c: getattr(row, f"count_s_{c}") for c in counters},
                     "counted_on": {c: getattr(row, f"counted_on_{c}") for c in counters}})  # fmt: skip
    ratios = [r["ratio"] for r in runs]
    counting = [r["ratio_counting"] for r in runs]
    return {
        "counting_median": statistics.median(counting),
        "counting_min": min(counting),
        "counting_max": max(counting),
        "spec": spec,
        "params": row.params,
        "macs": row.macs_attnbench,
        "runs": runs,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "within_target": max(ratios) <= TARGET,
    }


def environment() -> dict[str, Any]:
    """Machine and versions the figures were taken on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for dist in ("torch", "fvcore", "ultralytics-thop", "timm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions,
            "attnbench": attnbench.__version__, "threads": 1}  # fmt: skip


def markdown(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """The report: per backbone, the ratio's median and spread, and where the run's time went."""
    lines = [
        "# Counting a backbone: attnbench's run against the counters called directly",
        "",
        f"`benchmarks/counting_backbone.py`; {env['cpu']}, {env['cores']} cores shared with other engineers' test "
        f"runs, torch {env['versions']['torch']}, fvcore {env['versions']['fvcore']}, ultralytics-thop "
        f"{env['versions']['ultralytics-thop']}, timm {env['versions']['timm']}, 1 thread, 224x224, batch 1.",
        "",
        "Ours: `attnbench.profile(SPEC, dim=3, res=224)` with metrics params,macs (the constructor check, the one "
        "build, params, and the three counters, as `attnbench profile SPEC --metrics params,macs` after its "
        "imports). Direct: fvcore's `FlopCountAnalysis(model, x).total()` and `thop.profile(copy, (x,))` on the "
        "CPU plus `attnbench.count_macs(model, shape)`, on the model built beforehand (its build not timed). "
        f"Both in one process, alternating, after every import; ratio = ours / direct per repeat. Target <= {TARGET}x.",
        "",
        "Two ratios per repeat: the whole run against the direct calls, and the run without its one build (the "
        "constructor check's, on the CPU where the meta device cannot build the model: the direct side's build is "
        "not timed). Median (min-max) over the repeats.",
        "",
        "| backbone | params | MACs | built on | repeats | whole run ÷ direct | without the build ÷ direct | "
        "load (1 min) |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        loads = [run["load_1min"] for run in r["runs"]]
        built = r["runs"][0]["built_on"].split(" (")[0]
        lines.append(
            f"| `{Path(r['spec'].split(':')[0]).name}:{r['spec'].split(':', 1)[1]}` | {r['params'] / 1e6:.1f} M | "
            f"{r['macs'] / 1e9:.2f} G | {built} | {len(r['runs'])} | {r['ratio_median']:.2f} "
            f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['counting_median']:.2f} "
            f"({r['counting_min']:.2f}-{r['counting_max']:.2f}) | {min(loads):.1f}-{max(loads):.1f} |"
        )
    lines += ["", "Where the time went (medians over the repeats, seconds):", ""]
    lines += ["| backbone | ours | build | attnbench | fvcore | thop | direct | fvcore | thop | attnbench |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        med = functools.partial(_median, r["runs"])
        lines.append(
            f"| `{Path(r['spec'].split(':')[0]).name}` | {med('ours_s'):.2f} | {med('build_s'):.2f} | "
            f"{med('count_s', 'attnbench'):.2f} | {med('count_s', 'fvcore'):.2f} | {med('count_s', 'thop'):.2f} | "
            f"{med('direct_s'):.2f} | {med('direct_parts', 'fvcore'):.2f} | {med('direct_parts', 'thop'):.2f} | "
            f"{med('direct_parts', 'attnbench'):.2f} |"
        )
    lines += ["", "Where each counter of the run ran, and where the model was built:", ""]
    for r in results:
        run = r["runs"][0]
        where = "; ".join(f"{c}: {w}" for c, w in run["counted_on"].items())
        lines.append(f"- `{Path(r['spec'].split(':')[0]).name}`: built on {run['built_on']}; {where}")
    return "\n".join(lines) + "\n"


def _median(runs: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
    return statistics.median(run[key][sub] if sub else run[key] for run in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output", type=Path, default=Path("results/counting_backbone.md"))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.specs[0], args.repeats), default=str))
        return 0
    env = environment()
    # One process per backbone: repositories often name their package `models`, and a process imports one.
    results = []
    for spec in args.specs:
        cmd = [sys.executable, __file__, "--one", spec, "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1]))
    args.output.write_text(markdown(results, env))
    args.output.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results}, indent=1))
    for r in results:
        print(
            f"{r['spec']}: whole run {r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}), without "
            f"the build {r['counting_median']:.2f} ({r['counting_min']:.2f}-{r['counting_max']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
