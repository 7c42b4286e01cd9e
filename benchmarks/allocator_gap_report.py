"""The tables and the figure of benchmarks/allocator_gap.py, from its saved record (results/allocator_gap.json)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from attnbench.sysalloc import is_slower

KINDS = ("jemalloc", "jemalloc decay -1", "tcmalloc")


def _pinned(block: dict[str, Any]) -> dict[str, Any]:
    p = block["pinned"]
    return {"latency_median_s": p["median_s"], "latency_min_s": p["min_s"], "minor_faults_per_call": p["faults"]}


def _slow(block: dict[str, Any], figures: dict[str, Any]) -> bool:
    """sysalloc's `†` rule for one process against the block's pinned fresh process."""
    system = {
        "latency_median_s": figures["median_s"],
        "latency_min_s": figures["min_s"],
        "minor_faults_per_call": figures["faults"],
    }
    return is_slower(_pinned(block), system)


def _range(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}" if values else "–"


def _ratios(block: dict[str, Any], kind: str) -> list[float]:
    return [f["median_s"] / block["pinned"]["median_s"] for f in block[kind]]


def _geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def header(record: dict[str, Any]) -> list[str]:
    """What measured the figures, on what, under which load, with which protocol."""
    env, budget = record["env"], record["budget"]
    load = ", ".join(f"{x:.2f}" for x in record["load"])
    command = " ".join(["benchmarks/allocator_gap.py", record.get("argv", "")]).strip()
    loadavg = "; ".join("/".join(f"{x:.1f}" for x in avg) for avg in record.get("loadavg", [])) or "not recorded"
    return [
        "# The allocator as users meet it: fresh processes, forked children, pinned, jemalloc, tcmalloc",
        "",
        f"Measured {env['date_utc']} on {env['cpu_model']} ({env['usable_cores']} usable cores), 1 thread; torch "
        f"{env['torch']}, Python {env['python']}, {env['allocator'].get('allocator')}; `python "
        f"{command}` ({record['wall_s']:.0f} s). The machine is shared with other engineers' "
        f"tests: busy cores machine-wide (all processes, /proc/stat) at the start, between the parts and at the "
        f"end: {load} (of {env['usable_cores']}); load averages (1, 5, 15 min) at those points: {loadavg}; each "
        "case block's own reading is in the first table. Absolute times under such load are several times a "
        "quiet machine's (acmix 28x28 pinned: about 15 ms quiet); read the ratios and the page faults.",
        "",
        f"Every process builds the module (C=64, batch 1, inference) and times it with the code and budget "
        f"attnbench's system-state children use (`attnbench.allocserver.timed`, `sysalloc.system_budget`: warm-up "
        f"{budget['warmup_s']:g} s and at least {budget['warmup_calls']} calls, then blocks for at most "
        f"{budget['max_run_time']:g} s, stopping at ±{budget['precision']:.0%}), and counts its minor page faults "
        f"per call over the timed blocks. Per case, in one block: {record['fresh']} fresh `python -c` processes "
        f"with glibc's defaults (random PYTHONHASHSEED, as a user's script), {record['children']} forked children "
        "of each of attnbench's three system servers (PYTHONHASHSEED 1, 2, 3), and one fresh process each with "
        "glibc pinned by its environment variables (MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ at 1 GiB, "
        "what attnbench's mallopt does), jemalloc and tcmalloc (LD_PRELOAD of Debian's libjemalloc2 5.3.0 and "
        "libtcmalloc-minimal4), and jemalloc with `MALLOC_CONF=dirty_decay_ms:-1`. Ratios are over the pinned "
        "process of the same block, seconds apart: on this shared machine a single ratio moves by 10-30%, so a "
        "slow mode is told by its page faults, and `slow` uses attnbench's `†` rule (median and fastest call > "
        "10% slower, with the faults to explain it).",
        "",
        "![allocator gap](allocator_gap.png)",
        "",
    ]


def fresh_vs_children(record: dict[str, Any]) -> list[str]:
    """Per case: the spread of fresh processes against that of forked children."""
    lines = [
        "## Fresh processes against forked children (glibc's defaults)",
        "",
        "| case | pinned [ms] | fresh: median / pinned | fresh: faults/call | children: median / pinned "
        "| children: faults/call | slow: fresh | slow: children | busy cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    agree = split_fresh = split_children = 0
    for name, b in record["blocks"].items():
        slow_f = sum(_slow(b, f) for f in b["fresh"])
        slow_c = sum(_slow(b, f) for f in b["children"])
        agree += (slow_f > 0) == (slow_c > 0)
        split_fresh += 0 < slow_f < len(b["fresh"])
        split_children += 0 < slow_c < len(b["children"])
        lines.append(
            f"| {name}x{name.split()[1]} | {b['pinned']['median_s'] * 1e3:.3g} | {_range(_ratios(b, 'fresh'))} | "
            f"{_range([f['faults'] for f in b['fresh']], '{:,.0f}')} | {_range(_ratios(b, 'children'))} | "
            f"{_range([f['faults'] for f in b['children']], '{:,.0f}')} | {slow_f}/{len(b['fresh'])} | "
            f"{slow_c}/{len(b['children'])} | {b['busy_cores']:.1f} |"
        )
    n = len(record["blocks"])
    lines += [
        "",
        f"In {agree} of {n} cases the fresh processes and the children agree on whether any process is slower "
        f"(the `†` question). The fresh processes split between a slow and a fast mode in {split_fresh} cases, "
        f"the children in {split_children}.",
        "",
    ]
    return lines


def within_servers(record: dict[str, Any]) -> list[str]:
    """Do children of one server behave alike, and do servers differ? Faults per call per server and child."""
    lines = [
        "## Children of one server against each other",
        "",
        "Faults per call of each server's children (child 1, child 2), for the cases whose processes took more "
        "than 100 faults per call somewhere:",
        "",
        "| case | PYTHONHASHSEED=1 | PYTHONHASHSEED=2 | PYTHONHASHSEED=3 | fresh processes |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, b in record["blocks"].items():
        if max(f["faults"] for f in [*b["fresh"], *b["children"]]) <= 100:
            continue
        cells = []
        for seed in (1, 2, 3):
            faults = [f["faults"] for f in b["children"] if f["hash_seed"] == seed]
            cells.append(", ".join(f"{x:,.0f}" for x in faults))
        fresh = ", ".join(f"{f['faults']:,.0f}" for f in b["fresh"])
        lines.append(f"| {name}x{name.split()[1]} | " + " | ".join(cells) + f" | {fresh} |")
    return [*lines, ""]


def production(record: dict[str, Any]) -> list[str]:
    """Which allocator: each one's median over pinned, per case and over the cases."""
    kinds = [k for k in KINDS if any(k in b for b in record["blocks"].values())]
    lines = [
        "## Which allocator to run: each over glibc pinned",
        "",
        "| case | glibc defaults (median of fresh) | "
        + " | ".join(kinds)
        + " | faults/call: defaults (most) | "
        + " | ".join(kinds)
        + " |",
        "|---|" + "---:|" * (2 + 2 * len(kinds)),
    ]
    summary: dict[str, list[float]] = {"glibc defaults": [], **{k: [] for k in kinds}}
    for name, b in record["blocks"].items():
        default = statistics.median(_ratios(b, "fresh"))
        summary["glibc defaults"].append(default)
        cells = [f"{default:.2f}"]
        faults = [f"{max(f['faults'] for f in b['fresh']):,.0f}"]
        for k in kinds:
            ratio = b[k]["median_s"] / b["pinned"]["median_s"]
            summary[k].append(ratio)
            cells.append(f"{ratio:.2f}")
            faults.append(f"{b[k]['faults']:,.0f}")
        lines.append(f"| {name}x{name.split()[1]} | " + " | ".join(cells + faults) + " |")
    lines += ["", "Over the cases (geometric mean, and the largest):", ""]
    lines += [f"- {k}: {_geomean(v):.2f}x pinned, at most {max(v):.2f}x." for k, v in summary.items() if v]
    return [*lines, ""]


def attnbench_view(record: dict[str, Any]) -> list[str]:
    """attnbench's own rows of the same cases: its three processes' spread and its mark."""
    a = record["attnbench"]
    rows = a["rows"]
    spent = sum(r["allocator_s"] for r in rows.values())
    lines = [
        "## attnbench's rows of the same cases (one `profile` sweep, pinned headline)",
        "",
        f"The sweep took {a['wall_s']:.0f} s, of which {spent:.0f} s waited on the allocator servers (their start "
        "included); a system latency is shown where any process took enough faults to cost 10%.",
        "",
        "| case | pinned [ms] | system [ms] (3 processes) | faults/call | † |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in rows.items():
        spread = f"{r['lo_s'] * 1e3:.3g}–{r['hi_s'] * 1e3:.3g}" if r["lo_s"] else "not timed"
        faults = f"{r['faults_lo']:,.0f}–{r['faults_hi']:,.0f}" if r["faults_lo"] is not None else "–"
        lines.append(
            f"| {name}x{name.split()[1]} | {r['pinned_s'] * 1e3:.3g} | {spread} | {faults} | "
            f"{'†' if r['marked'] else ''} |"
        )
    return [*lines, ""]


def dagger(record: dict[str, Any]) -> list[str]:
    """The acmix 28x28 mark over repeated runs."""
    runs = record["dagger"]
    lines = [
        f"## The mark on acmix C=64 28x28, {len(runs)} runs of `attnbench profile acmix --dim 64 --res 28`",
        "",
        "| run | † | pinned [ms] | system [ms] (3 processes) | faults/call | wall [s] | busy cores after |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        spread = f"{r['lo_s'] * 1e3:.3g}–{r['hi_s'] * 1e3:.3g}" if r["lo_s"] == r["lo_s"] else "not timed"
        lines.append(
            f"| {i} | {'†' if r['marked'] else 'no'} | {r['pinned_s'] * 1e3:.3g} | {spread} | "
            f"{r['faults_lo']:,.0f}–{r['faults_hi']:,.0f} | {r['wall_s']:.1f} | {r['busy_cores']:.1f} |"
        )
    marked = sum(r["marked"] for r in runs)
    return [*lines, "", f"Marked in {marked} of {len(runs)} runs.", ""]


def cost(record: dict[str, Any]) -> list[str]:
    """What the allocator work costs `compare --all`."""
    lines = [
        "## What the allocator work costs `compare --all`",
        "",
        "| checkout | wall [s] | allocator states [s] | share | CPU rows | marked † |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in record["compare"]:
        lines.append(
            f"| {c['tree']} | {c['wall_s']:.0f} | {c['allocator_s']:.1f} | {c['allocator_s'] / c['wall_s']:.0%} | "
            f"{c['cpu_rows']} | {c['marked']} |"
        )
    return [*lines, ""]


def markdown(record: dict[str, Any]) -> str:
    """The whole report."""
    parts = header(record) + fresh_vs_children(record) + within_servers(record) + production(record)
    parts += attnbench_view(record) + dagger(record) + cost(record)
    return "\n".join(parts)


def plot(record: dict[str, Any], path: Path) -> None:
    """Per resolution, each module's processes as points: median over the pinned fresh process (log scale)."""
    import matplotlib  # a benchmark's figure: only when rendering

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = record["blocks"]
    resolutions = sorted({int(k.split()[1]) for k in blocks})
    modules = list(dict.fromkeys(k.split()[0] for k in blocks))
    fig, axes = plt.subplots(len(resolutions), 1, figsize=(11, 3.2 * len(resolutions)), sharey=True, squeeze=False)
    axes = axes[:, 0]
    series = [
        ("fresh", "glibc defaults, fresh processes", "o", "tab:blue", -0.24),
        ("children", "glibc defaults, attnbench's forked children", "x", "tab:orange", -0.08),
        ("jemalloc", "jemalloc", "^", "tab:green", 0.08),
        ("jemalloc decay -1", "jemalloc, dirty_decay_ms:-1", "v", "tab:olive", 0.16),
        ("tcmalloc", "tcmalloc", "s", "tab:red", 0.24),
    ]
    for ax, res in zip(axes, resolutions, strict=True):
        for key, label, marker, color, dx in series:
            xs, ys = [], []
            for j, m in enumerate(modules):
                b = blocks.get(f"{m} {res}")
                if b is None or key not in b:
                    continue
                figures = b[key] if isinstance(b[key], list) else [b[key]]
                for f in figures:
                    xs.append(j + dx)
                    ys.append(f["median_s"] / b["pinned"]["median_s"])
            ax.scatter(xs, ys, marker=marker, color=color, label=label, s=22, alpha=0.8)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(1.1, color="grey", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        ax.set_xticks(range(len(modules)), modules)
        ax.set_ylabel(f"{res}x{res}: median / pinned")
    axes[0].set_title("C=64, 1 thread: each process's median over glibc pinned (same block); dashed: +10%")
    axes[-1].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
