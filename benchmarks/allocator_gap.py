"""The allocator as users meet it: glibc's defaults in fresh processes against attnbench's forked server children,
and glibc pinned, jemalloc and tcmalloc, for the zoo at C=64 and 14/28/56 (1 thread, batch 1, inference).

Per case, in one block (so the machine's slow and fast phases fall on all of them alike):
  * FRESH fresh processes (`python -c`, a random PYTHONHASHSEED each, as a user's script) with glibc's defaults;
  * CHILDREN children per system server of attnbench.sysalloc (three servers, PYTHONHASHSEED 1, 2, 3), forked;
  * one fresh process each with glibc pinned by its own environment variables (MALLOC_MMAP_THRESHOLD_,
    MALLOC_TRIM_THRESHOLD_ at 1 GiB: the reference of the ratios), jemalloc (LD_PRELOAD as installed), jemalloc
    with MALLOC_CONF=dirty_decay_ms:-1, and tcmalloc (LD_PRELOAD).
Every one of them builds the module and times it with the same code (attnbench.allocserver.timed) and the same
budget, the one attnbench's children use for the system state (sysalloc.system_budget of the defaults), and
reads its minor page faults per call: the only difference between a fresh process and a child is fork().
Then, apart: attnbench's own rows (one `profile` sweep of the same cases: the spread over its three processes,
the `†`, what the allocator work cost), `profile acmix --dim 64 --res 28` run DAGGER_RUNS times (does it carry
its `†` every time?), and `compare --all`'s allocator seconds (with --old-tree, the same for another checkout).

Writes results/allocator_gap.{json,md,png}. Run: python benchmarks/allocator_gap.py [--old-tree DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_load import busy_cores  # noqa: E402

import attnbench  # noqa: E402
from attnbench.env import environment  # noqa: E402

# The servers, their children's budget and the preload libraries are the internals this benchmark checks.
from attnbench.memory import ALLOCATOR_ENV, PINNED_THRESHOLD_BYTES, preload_library  # noqa: E402
from attnbench.sysalloc import AllocatorServers, system_budget  # noqa: E402

DIM = 64
RESOLUTIONS = (14, 28, 56)
FRESH = 5
CHILDREN = 2
DAGGER_RUNS = 5
OUT = ROOT / "results"
BUDGET = system_budget(attnbench.TimingBudget())
#: The fresh-process variants besides glibc's defaults: name -> (allocator env value, extra environment).
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "pinned": (
        "system",
        {"MALLOC_MMAP_THRESHOLD_": str(PINNED_THRESHOLD_BYTES), "MALLOC_TRIM_THRESHOLD_": str(PINNED_THRESHOLD_BYTES)},
    ),
    "jemalloc": ("jemalloc", {}),
    "jemalloc decay -1": ("jemalloc", {"MALLOC_CONF": "dirty_decay_ms:-1"}),
    "tcmalloc": ("tcmalloc", {}),
}

#: A fresh process: the same build and timing as a server's child, nothing forked.
FRESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from attnbench.allocserver import case_of, timed
    from attnbench.memory import mapped_library
    from attnbench.timing import TimingBudget
    case, budget = case_of(json.loads(sys.argv[1])), TimingBudget(**json.loads(sys.argv[2]))
    status, reason, values = timed(case, 0, budget)
    print(json.dumps({"status": status, "reason": reason, "values": values, "library": mapped_library(sys.argv[3])}))
    """
)


def fresh(case: attnbench.Case, allocator: str, extra_env: dict[str, str]) -> dict[str, Any]:
    """One fresh `python -c` process timing the case under `allocator` (with `extra_env`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD",)}
    env.pop("PYTHONHASHSEED", None)  # random, as in a user's process
    env.update(extra_env, **{ALLOCATOR_ENV: allocator, "PYTHONPATH": str(ROOT)})
    library = preload_library(allocator)
    if library:
        env["LD_PRELOAD"] = library
    args = [json.dumps(dataclasses.asdict(case)), json.dumps(dataclasses.asdict(BUDGET)), allocator]
    out = subprocess.run(
        [sys.executable, "-c", FRESH_SCRIPT, *args], env=env, capture_output=True, text=True, check=True
    ).stdout
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["status"] == "ok", answer
    if allocator != "system":
        assert answer["library"], f"{allocator} not loaded"
    return _figures(answer["values"], library=answer["library"])


def _figures(values: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "median_s": values["latency_median_s"],
        "min_s": values["latency_min_s"],
        "faults": values["minor_faults_per_call"],
        "calls": values["latency_calls"],
        **more,
    }


def children(servers: AllocatorServers, case: attnbench.Case) -> list[dict[str, Any]]:
    """CHILDREN forked children of each system server, each timing the case as a fresh process does above."""
    out = []
    for round_ in range(CHILDREN):
        for f in servers._timed(case, BUDGET, 0, servers._keys(case)):
            assert f.timing is not None, f.note
            out.append(_figures(f.timing, hash_seed=f.hash_seed, child=round_))
    return out


def block(servers: AllocatorServers, name: str, res: int) -> dict[str, Any]:
    """Every measurement of one case, back to back, the kinds interleaved."""
    case = attnbench.Case(name, DIM, res, res)
    result: dict[str, Any] = {"fresh": [], "children": [], "busy_cores": busy_cores(1.0)}
    result["pinned"] = fresh(case, *VARIANTS["pinned"])
    for i in range(FRESH):
        result["fresh"].append(fresh(case, "system", {}))
        if i == 1:
            result["children"] = children(servers, case)
    for variant in ("jemalloc", "jemalloc decay -1", "tcmalloc"):
        if preload_library(VARIANTS[variant][0]):
            result[variant] = fresh(case, *VARIANTS[variant])
    return result


def attnbench_rows(cases: list[tuple[str, int]]) -> dict[str, Any]:
    """attnbench's own rows of the cases (one sweep, pinned headline): spread, mark, cost."""
    modules = sorted({n for n, _ in cases})
    options = attnbench.RunOptions(metrics=("latency",))
    started = time.perf_counter()
    rows = attnbench.profile(modules, DIM, sorted({r for _, r in cases}), options=options)
    wall = time.perf_counter() - started
    out = {}
    for row in rows:
        extra = row.extra_dict
        out[f"{row.module} {row.height}"] = {
            "status": row.status,
            "pinned_s": row.latency_median_s,
            "lo_s": row.system_latency_lo_s,
            "hi_s": row.system_latency_hi_s,
            "faults_lo": row.system_faults_lo_per_call,
            "faults_hi": row.system_faults_hi_per_call,
            "processes": row.system_processes,
            "marked": row.system_allocator_slower,
            "allocator_s": extra.get("system_allocator_s", 0.0) + extra.get("system_worker_start_s", 0.0),
            "row_s": row.seconds,
        }
    return {"rows": out, "wall_s": wall}


def cli_rows(args: list[str], tree: Path = ROOT) -> tuple[list[dict[str, Any]], float]:
    """An attnbench command in a fresh process (the checkout at `tree`), its CSV rows and its wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "rows.csv"
        env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "attnbench.cli", *args, "-o", str(csv)],
            cwd=tree,
            env=env,
            check=False,
            capture_output=True,
        )
        wall = time.perf_counter() - started
        import pandas as pd  # only the CLI parts read CSVs

        rows = pd.read_csv(csv).to_dict("records")
    return rows, wall


def dagger_runs() -> list[dict[str, Any]]:
    """`profile acmix --dim 64 --res 28`, DAGGER_RUNS times: the mark, the spread and the faults of each run."""
    runs = []
    for _ in range(DAGGER_RUNS):
        (row,), wall = cli_rows(["profile", "acmix", "--dim", "64", "--res", "28"])
        runs.append(
            {
                "marked": bool(row["system_allocator_slower"]),
                "pinned_s": row["latency_median_s"],
                "lo_s": row["system_latency_lo_s"],
                "hi_s": row["system_latency_hi_s"],
                "faults_lo": row["system_faults_lo_per_call"],
                "faults_hi": row["system_faults_hi_per_call"],
                "wall_s": wall,
                "busy_cores": busy_cores(1.0),
            }
        )
    return runs


#: A small `compare --all` (every zoo module, CPU only, short timings): what the allocator servers add to it.
COMPARE_ARGS = ["compare", "--all", "--dim", "64", "--res", "16", "--backend", "cpu", "--max-run-time", "0.1"]


def compare_cost(tree: Path = ROOT) -> dict[str, Any]:
    """A small `compare --all`: wall time, and the seconds its rows spent on the allocator states (its record)."""
    rows, wall = cli_rows(COMPARE_ARGS, tree)
    seconds = 0.0
    for row in rows:
        extra = json.loads(row["extra"]) if isinstance(row.get("extra"), str) and row["extra"] else {}
        seconds += extra.get("system_allocator_s", 0.0) + extra.get("system_worker_start_s", 0.0)
    cpu = [r for r in rows if r["backend"] == "cpu"]
    marked = sum(bool(r.get("system_allocator_slower")) is True for r in cpu)
    return {
        "wall_s": wall,
        "allocator_s": seconds,
        "cpu_rows": len(cpu),
        "marked": marked,
        "tree": str(tree),
        "args": " ".join(COMPARE_ARGS),
    }


def main() -> None:
    """Measure everything (or re-render the saved JSON with --render) and write the reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", default=attnbench.list_modules())
    parser.add_argument("--res", nargs="+", type=int, default=list(RESOLUTIONS))
    parser.add_argument("--old-tree", type=Path, help="Another checkout whose compare --all cost to report beside")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render", action="store_true", help="Re-render the .md and .png from the saved JSON.")
    args = parser.parse_args()
    path = args.out / "allocator_gap.json"
    if args.render:
        record = json.loads(path.read_text())
    else:
        record = measure_all(args)
        args.out.mkdir(exist_ok=True)
        path.write_text(json.dumps(record, indent=1, default=str))
    from allocator_gap_report import markdown, plot  # the rendering lives apart (matplotlib, tables)

    plot(record, args.out / "allocator_gap.png")
    (args.out / "allocator_gap.md").write_text(markdown(record))


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every part, in order, with the machine's load between them."""
    started = time.perf_counter()
    cases = [(m, r) for r in args.res for m in args.modules]
    record: dict[str, Any] = {"env": environment(), "budget": dataclasses.asdict(BUDGET), "load": [busy_cores()]}
    record["loadavg"] = [os.getloadavg()]
    record["fresh"], record["children"] = FRESH, CHILDREN
    record["argv"] = " ".join(sys.argv[1:])
    blocks: dict[str, Any] = {}
    with AllocatorServers() as servers:
        for name, res in cases:
            blocks[f"{name} {res}"] = block(servers, name, res)
            print(name, res, json.dumps(blocks[f"{name} {res}"])[:300], flush=True)
        record["startup_s"] = servers.startup_s
    record["blocks"] = blocks
    record["load"].append(busy_cores())
    record["loadavg"].append(os.getloadavg())
    record["attnbench"] = attnbench_rows(cases)
    record["load"].append(busy_cores())
    record["loadavg"].append(os.getloadavg())
    record["dagger"] = dagger_runs()
    record["compare"] = [compare_cost()]
    if args.old_tree:
        record["compare"].append(compare_cost(args.old_tree))
    record["load"].append(busy_cores())
    record["loadavg"].append(os.getloadavg())
    record["wall_s"] = time.perf_counter() - started
    return record


if __name__ == "__main__":
    main()
