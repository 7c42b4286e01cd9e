"""The allocator gap: what a default PyTorch process pays that attnbench's pinned allocator hides, checked apart.

For mhsa and acmix at dim 64 (1 thread, batch 1, inference), at 32x32 and 56x56, in each of ROUNDS rounds:
  * attnbench, --allocator pinned: the headline median (this process, glibc pinned) and the system-state
    median from attnbench's worker (a process that leaves glibc alone, timed for at most
    SECONDARY_MAX_RUN_TIME where its extra page faults could cost 10% of a call);
  * attnbench, --allocator system: the same two states with the budgets swapped (system: the full budget);
  * an independent check, no attnbench code in the timing: a fresh Python process builds the module, warms it
    up (>= 1 s and >= 50 calls) and times it with torch.utils.benchmark.Timer(num_threads=1)
    .blocked_autorange(min_run_time=MIN_RUN_TIME), once with glibc's defaults (the system state) and once
    with glibc pinned through its own environment variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
    not attnbench's mallopt call). Minor page faults per call are read around the timed region.
Ratios are taken within a round (the machine is shared and noisy: absolute times move between runs).
Also recorded: what the system state costs a sweep (the worker's start, and seconds per case).

Writes results/allocator_gap.{json,md,png}. Run: python benchmarks/allocator_gap.py
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attnbench
from attnbench.env import environment

# The allocator pinning and the system-state worker's budget (internals) are what this benchmark checks.
from attnbench.memory import ALLOCATOR_ENV, PINNED_THRESHOLD_BYTES
from attnbench.sysalloc import SECONDARY_MAX_RUN_TIME

MODULES = ("mhsa", "acmix")
RESOLUTIONS = (32, 56)
DIM = 64
ROUNDS = 3
MIN_RUN_TIME = 1.0
OUT = Path(__file__).resolve().parent.parent / "results"

#: The independent timer: no attnbench code runs between the build and the result.
TIMER_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    from torch.utils.benchmark import Timer
    import attnbench
    import attnbench.memory
    name, dim, res, min_run_time = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = attnbench.build(name, dim, (res, res)).eval()
    x = torch.randn(1, dim, res, res)
    assert attnbench.memory.allocator_settings() is None  # attnbench never pinned this process
    with torch.inference_mode():
        start, calls = time.perf_counter(), 0
        while calls < 50 or time.perf_counter() - start < 1.0:
            module(x)
            calls += 1
        timer = Timer("module(x)", globals={"module": module, "x": x}, num_threads=1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        m = timer.blocked_autorange(min_run_time=min_run_time)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # blocked_autorange runs one extra call to size its blocks: close enough to count faults per call.
    n = sum(m.number_per_run for _ in m.raw_times) + 1
    print(json.dumps({"median_s": m.median, "faults_per_call": faults / n, "calls": n}))
    """
)


def independent(name: str, res: int, pinned: bool) -> dict[str, Any]:
    """Timer in a fresh process; `pinned` sets glibc's own thresholds through its environment variables."""
    env = {k: v for k, v in os.environ.items() if k != ALLOCATOR_ENV and not k.startswith("MALLOC_")}
    if pinned:
        env["MALLOC_MMAP_THRESHOLD_"] = str(PINNED_THRESHOLD_BYTES)
        env["MALLOC_TRIM_THRESHOLD_"] = str(PINNED_THRESHOLD_BYTES)
    env["OMP_NUM_THREADS"] = "1"
    args = [sys.executable, "-c", TIMER_SCRIPT, name, str(DIM), str(res), str(MIN_RUN_TIME)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def attnbench_row(name: str, res: int, allocator: str) -> attnbench.Result:
    """One CPU case through attnbench's runner (both allocator states; `allocator` is the headline)."""
    options = attnbench.RunOptions(metrics=("latency",), budget=attnbench.TimingBudget(min_run_time=MIN_RUN_TIME))
    (row,) = attnbench.profile(name, DIM, res, scenario=attnbench.Scenario(allocator=allocator), options=options)
    assert row.ok, row.reason
    return row


def measure_round(name: str, res: int) -> dict[str, Any]:
    """Every measurement of one case, back to back (one round)."""
    pinned_row = attnbench_row(name, res, "pinned")
    system_row = attnbench_row(name, res, "system")
    timer_system = independent(name, res, pinned=False)
    timer_pinned = independent(name, res, pinned=True)
    pe, se = json.loads(pinned_row.extra), json.loads(system_row.extra)
    return {
        "attnbench_pinned_s": pinned_row.latency_median_s,
        "attnbench_pinned_faults": pinned_row.minor_faults_per_call,
        "attnbench_system_short_s": pinned_row.other_allocator_latency_s,
        "attnbench_system_short_faults": pinned_row.other_allocator_faults_per_call,
        "attnbench_system_s": system_row.latency_median_s,
        "attnbench_system_faults": system_row.minor_faults_per_call,
        "attnbench_pinned_short_s": system_row.other_allocator_latency_s,
        "marked_slower": pinned_row.system_allocator_slower,
        "timer_system_s": timer_system["median_s"],
        "timer_system_faults": timer_system["faults_per_call"],
        "timer_pinned_s": timer_pinned["median_s"],
        "timer_pinned_faults": timer_pinned["faults_per_call"],
        # What the system state costs a row (the worker's start is per sweep, recorded apart).
        "system_state_s": pe["system_allocator_s"],
        "row_s": pinned_row.seconds,
        "worker_start_s": pe.get("system_worker_start_s") or se.get("system_worker_start_s"),
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-round ratios, then their median (and range) over the rounds."""

    def ratio(a: str, b: str) -> list[float]:
        # The short-budget system state is timed only where its extra page faults could cost 10% of a call.
        return [r[a] / r[b] for r in rounds if r[a] is not None]

    ratios = {
        "attnbench system / pinned": ratio("attnbench_system_s", "attnbench_pinned_s"),
        "attnbench system (short budget) / pinned": ratio("attnbench_system_short_s", "attnbench_pinned_s"),
        "Timer system / Timer pinned": ratio("timer_system_s", "timer_pinned_s"),
        "attnbench system / Timer system": ratio("attnbench_system_s", "timer_system_s"),
        "attnbench pinned / Timer pinned": ratio("attnbench_pinned_s", "timer_pinned_s"),
    }
    return {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v}
        if v
        else {"median": None, "min": None, "max": None, "rounds": []}
        for name, v in ratios.items()
    }


def plot(cases: dict[str, Any], path: Path) -> None:
    """Grouped bars per case: each latency over attnbench's pinned one in the same round (median, range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        ("timer_pinned_s", "Timer, fresh process, glibc pinned by its env variables"),
        ("attnbench_system_s", "attnbench, system state (worker, full budget)"),
        ("attnbench_system_short_s", "attnbench, system state (worker, 0.25 s budget)"),
        ("timer_system_s", "Timer, fresh process, glibc defaults"),
    ]
    names = list(cases)
    fig, ax = plt.subplots(figsize=(9, 5.2))
    width = 0.2
    for i, (key, label) in enumerate(series):
        meds, lows, highs = [], [], []
        for name in names:
            vals = [r[key] / r["attnbench_pinned_s"] for r in cases[name]["rounds"] if r[key] is not None]
            if not vals:  # the short-budget system state was not timed (too few extra faults)
                meds.append(math.nan)
                lows.append(0.0)
                highs.append(0.0)
                continue
            med = statistics.median(vals)
            meds.append(med)
            lows.append(med - min(vals))
            highs.append(max(vals) - med)
        xs = [j + (i - 1.5) * width for j in range(len(names))]
        ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.1, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("latency / attnbench pinned (same round)")
    ax.set_title("Allocator gap, dim 64, 1 thread: median over rounds, bars: range; dashed: +10%")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(cases: dict[str, Any], env: dict[str, Any], rounds: int) -> str:
    """The report: latencies and faults per case, the ratios, and the cost."""
    lines = [
        "# The allocator gap: pinned vs system vs an independent Timer",
        "",
        f"Machine: {env['cpu_model']}, {env['usable_cores']} usable cores (shared, noisy VM), 1 thread; torch "
        f"{env['torch']}, Python {env['python']}, {env['allocator'].get('allocator')}; {env['date_utc']}. "
        f"{rounds} rounds; ratios are taken within a round, then the median (min..max) over rounds is shown.",
        "",
        "![allocator gap](allocator_gap.png)",
        "",
        "| case | attnbench pinned [ms] | Timer glibc-env pinned [ms] | attnbench system [ms] | Timer system [ms] "
        "| faults/call pinned | faults/call system (attnbench) | faults/call system (Timer) | marked † |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, data in cases.items():
        rs = data["rounds"]

        def med(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[key] for r in rs)

        lines.append(
            f"| {name} | {med('attnbench_pinned_s') * 1e3:.3g} | {med('timer_pinned_s') * 1e3:.3g} | "
            f"{med('attnbench_system_s') * 1e3:.3g} | {med('timer_system_s') * 1e3:.3g} | "
            f"{med('attnbench_pinned_faults'):,.0f} | {med('attnbench_system_faults'):,.0f} | "
            f"{med('timer_system_faults'):,.0f} | {sum(bool(r['marked_slower']) for r in rs)}/{len(rs)} |"
        )
    lines += [
        "",
        "Minor page faults per call in the system state, over the rounds (min..max): attnbench's worker against "
        "the independent Timer.",
        "",
        "| case | attnbench (full budget) | attnbench (0.25 s) | Timer |",
        "|---|---:|---:|---:|",
    ]
    for name, data in cases.items():
        cells = []
        for key in ("attnbench_system_faults", "attnbench_system_short_faults", "timer_system_faults"):
            vals = [r[key] for r in data["rounds"]]
            cells.append(f"{min(vals):,.0f}..{max(vals):,.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    unstable = [
        name
        for name, data in cases.items()
        if max(r["attnbench_system_faults"] for r in data["rounds"])
        > 2 * max(1.0, min(r["attnbench_system_faults"] for r in data["rounds"]))
    ]
    lines += [
        "",
        "Where every block glibc returns is above its 32 MiB cap, both processes fault the same on every call "
        "(the maps are mapped and unmapped each time). Below the cap, glibc's dynamic thresholds depend on the "
        "process's history, and one process may keep the blocks (few faults) while another returns them (many): "
        + (f"{', '.join(unstable)} switched between the two across rounds." if unstable else "no case did here."),
    ]
    lines += ["", "Ratios (median over rounds, min..max):", ""]
    names = list(next(iter(cases.values()))["ratios"])
    lines.append("| case | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for name, data in cases.items():
        cells = [
            f"{v['median']:.2f} ({v['min']:.2f}..{v['max']:.2f})" if v["rounds"] else "not timed"
            for v in data["ratios"].values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    all_rounds = [r for data in cases.values() for r in data["rounds"]]
    starts = [r["worker_start_s"] for r in all_rounds if r["worker_start_s"]]
    state = [r["system_state_s"] / r["row_s"] for r in all_rounds]
    lines += [
        "",
        "## What the system state costs",
        "",
        f"- Starting the worker (once per sweep): median {statistics.median(starts):.1f} s over {len(starts)} "
        "starts (an interpreter importing torch and attnbench).",
        f"- Per case, with --min-run-time {MIN_RUN_TIME:g} and at most {SECONDARY_MAX_RUN_TIME:g} s of timing "
        f"for the second state: the system state took a median {statistics.median(state):.0%} of the row's "
        "time (build, warm-up and timing in the worker).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Run every round and write the reports (--out elsewhere for a quick try)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--modules", nargs="+", default=list(MODULES))
    parser.add_argument("--res", nargs="+", type=int, default=list(RESOLUTIONS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render", action="store_true", help="Re-render the .md and .png from the saved JSON.")
    args = parser.parse_args()
    if args.render:
        saved = json.loads((args.out / "allocator_gap.json").read_text())
        rounds = len(next(iter(saved["cases"].values()))["rounds"])
        plot(saved["cases"], args.out / "allocator_gap.png")
        (args.out / "allocator_gap.md").write_text(markdown(saved["cases"], saved["env"], rounds))
        return
    env = environment()
    cases: dict[str, Any] = {}
    for round_index in range(args.rounds):
        for name in args.modules:
            for res in args.res:
                key = f"{name} {res}x{res}"
                result = measure_round(name, res)
                cases.setdefault(key, {"rounds": []})["rounds"].append(result)
                print(round_index, key, json.dumps(result), flush=True)
    for data in cases.values():
        data["ratios"] = summarise(data["rounds"])
    args.out.mkdir(exist_ok=True)
    (args.out / "allocator_gap.json").write_text(json.dumps({"env": env, "cases": cases}, indent=2, default=str))
    plot(cases, args.out / "allocator_gap.png")
    (args.out / "allocator_gap.md").write_text(markdown(cases, env, args.rounds))


if __name__ == "__main__":
    main()
