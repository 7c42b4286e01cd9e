"""How evenly do shards split a sweep's wall time? Replays measured per-case times under each way of splitting.

Input: a report of a measured sweep (default: results/compare-cpu.csv, `compare --all` on the reference
machine); each row's `seconds` is the wall time its case took. For N shards and each strategy, a shard's time is
the sum of its rows' measured seconds, and the figure of merit is the slowest shard over the ideal (total / N):
1.00 is a perfect split, 1.50 means the sweep ends 50% later than it could.

Strategies:
  * count: geometries dealt round-robin in plan order (a split by number of cases);
  * MACs only: largest-first by estimated MACs, no per-case overhead (overhead_macs=0);
  * MACs + overhead: attnbench's split (attnbench.shard.partition, CASE_OVERHEAD_MACS per case);
  * and the overhead a least-squares fit of seconds = a + b * MACs over the rows suggests (a / b).

Times from one run on a shared VM are noisy (and exclude per-geometry counting); the replay compares splits of
the same times, so the noise is common to all strategies. Writes results/shard_balance.{json,md}.
Run: python benchmarks/shard_balance.py [REPORT]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import attnbench

# The split itself (an internal): attnbench.shard.partition and its per-case overhead are what is replayed.
from attnbench import shard
from attnbench.results import Case, Result

OUT = Path(__file__).resolve().parent.parent / "results"
SHARD_COUNTS = (2, 3, 4, 6)
Split = Callable[[list[Case], int], list[list[Case]]]


def by_count(cases: list[Case], count: int) -> list[list[Case]]:
    """Geometries dealt round-robin in plan order."""
    order = list(dict.fromkeys(shard.geometry(c) for c in cases))
    owner = {g: i % count for i, g in enumerate(order)}
    return [[c for c in cases if owner[shard.geometry(c)] == i] for i in range(count)]


def imbalance(parts: Sequence[Sequence[Case]], seconds: dict[Case, float]) -> tuple[float, list[float]]:
    """Slowest shard's measured time over the ideal (total / N), and each shard's time."""
    times = [sum(seconds[c] for c in part) for part in parts]
    return max(times) / (sum(times) / len(parts)), times


def fitted_overhead(rows: Sequence[Result]) -> tuple[float, float, int]:
    """Least-squares seconds = a + b * MACs over the ok rows: (a [s], b [s/MAC], a / b [MACs])."""
    x = np.array([r.macs_attnbench for r in rows], dtype=float)
    y = np.array([r.seconds for r in rows], dtype=float)
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b), int(a / b)


def main(argv: Sequence[str] | None = None) -> int:
    """Replay the report under every strategy and shard count; write the JSON and Markdown summaries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default=str(OUT / "compare-cpu.csv"))
    args = parser.parse_args(argv)
    loaded = attnbench.load_results(args.report)
    rows = [r for r in loaded.results if r.seconds is not None]
    cases = [r.case for r in rows]
    seconds = {r.case: float(r.seconds or 0.0) for r in rows}
    timed = [r for r in rows if r.ok and r.macs_attnbench]
    a, b, fit = fitted_overhead(timed)
    strategies: dict[str, Split] = {
        "count (round-robin)": by_count,
        "MACs only": lambda cs, n: shard.partition(cs, n, overhead_macs=0),
        f"MACs + {shard.CASE_OVERHEAD_MACS / 1e9:g} GMAC/case (attnbench)": shard.partition,
        f"MACs + {fit / 1e9:.2g} GMAC/case (fit)": lambda cs, n: shard.partition(cs, n, overhead_macs=fit),
    }
    table: dict[str, dict[int, dict[str, object]]] = {}
    for name, split in strategies.items():
        table[name] = {}
        for n in SHARD_COUNTS:
            parts = split(cases, n)
            ratio, times = imbalance(parts, seconds)
            big = max(c.tokens for c in cases)
            table[name][n] = {
                "slowest_over_ideal": round(ratio, 3),
                "shard_seconds": [round(t, 2) for t in times],
                "shards_without_largest_resolution": sum(not any(c.tokens == big for c in p) for p in parts),
            }
    record = {
        "report": str(args.report),
        "env": loaded.env,
        "rows": len(rows),
        "total_seconds": round(sum(seconds.values()), 2),
        "fit": {"a_s": a, "b_s_per_mac": b, "overhead_macs": fit},
        "case_overhead_macs": shard.CASE_OVERHEAD_MACS,
        "strategies": table,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "shard_balance.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (OUT / "shard_balance.md").write_text(markdown(record))
    print(markdown(record))
    return 0


def markdown(record: dict) -> str:
    """The summary table: slowest shard over ideal per strategy and shard count."""
    env = record["env"]
    lines = [
        "# Shard balance: replaying measured case times under each split",
        "",
        f"Source: `{Path(record['report']).name}`, {record['rows']} rows, {record['total_seconds']} s of cases, "
        f"measured on {env.get('cpu_model', '?')} ({env.get('logical_cores', '?')} cores), torch "
        f"{env.get('torch', '?')}, {env.get('date_utc', '?')}. Script: `benchmarks/shard_balance.py`.",
        "",
        "Each cell: the slowest shard's time over the ideal (total / N); 1.00 is a perfect split. In brackets, "
        "shards that got none of the largest resolution.",
        "",
        "| strategy | " + " | ".join(f"N={n}" for n in SHARD_COUNTS) + " |",
        "|---|" + "---:|" * len(SHARD_COUNTS),
    ]
    for name, cells in record["strategies"].items():
        values = [
            f"{c['slowest_over_ideal']:.2f} ({c['shards_without_largest_resolution']})"
            for c in (cells[n] for n in SHARD_COUNTS)
        ]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    fit = record["fit"]
    lines += [
        "",
        f"Least-squares fit over the ok rows: seconds = {fit['a_s']:.2f} + {fit['b_s_per_mac'] * 1e9:.2f} x GMACs, "
        f"so a case's fixed cost is worth {fit['overhead_macs'] / 1e9:.2g} GMAC. attnbench uses "
        f"CASE_OVERHEAD_MACS = {record['case_overhead_macs'] / 1e9:g} GMAC.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
