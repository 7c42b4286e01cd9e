"""Does "A is 3x B" hold from one run to the next on a shared machine? Interleaved timing against sequential.

The same `attnbench compare` of MODULES at RESOLUTIONS (cpu, C=64) runs three times, minutes apart, the third time
with two CPU-bound processes competing; each time twice, interleaved (the default) and --no-interleave, one right
after the other in alternating order. For every pair of modules at one resolution (15 pairs x 2 = 30), the ratio
of their latencies in each run:
- "medians": median_i / median_j from the rows, for both modes;
- "paired": (interleaved only) the median over the rounds both ran of block_i / block_j, read off the rows'
  block times, as attnbench.ratios pairs a row with its reference.
Agreement: two quiet runs within 5% (|r2 / r1 - 1| <= 0.05), and all three within 10% (max / min - 1 <= 0.10).
Targets (issue 23, interleaved): 90% of the pairs within 5% between the quiet runs, 80% within 10% across all three.

Writes results/ratio_stability.md and .json. Run: python benchmarks/ratio_stability.py [--gap SECONDS]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_load import busy_cores  # noqa: E402

MODULES = ("lka", "mhsa", "sk", "epsa", "van", "sam")
RESOLUTIONS = (16, 32)
DIM = 64
QUIET, ALL = 0.05, 0.10
TARGET_QUIET, TARGET_ALL = 0.90, 0.80
RUNS = ("quiet 1", "quiet 2", "loaded")
COMPETITORS = 2


def compare(csv: Path, interleave: bool, cache: Path) -> float:
    """One `attnbench compare` in a fresh process; its wall seconds."""
    cmd = [sys.executable, "-m", "attnbench.cli", "compare", *MODULES, "--dim", str(DIM)]
    cmd += [arg for r in RESOLUTIONS for arg in ("--res", str(r))]
    cmd += ["--backend", "cpu", "--metrics", "latency", "--cache-dir", str(cache), "-o", str(csv), "--quiet"]
    cmd += [] if interleave else ["--no-interleave"]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - started


def competitors(n: int) -> list[subprocess.Popen[bytes]]:
    """n CPU-bound processes (a busy loop each)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def rows_of(csv: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(module, res) -> its median and block times."""
    import attnbench

    out = {}
    for r in attnbench.load_results(csv).results:
        if r.ok and r.latency_median_s:
            extra = json.loads(r.extra) if r.extra else {}
            out[(r.module, r.height)] = {"median": r.latency_median_s, "blocks": extra.get("block_times_s")}
    return out


def pair_ratios(rows: dict[tuple[str, int], dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """For every pair at one resolution: the ratio of medians and (when block times exist) the paired one."""
    from attnbench.ratios import paired

    out: dict[str, dict[str, float | None]] = {}
    for res in RESOLUTIONS:
        for a, b in itertools.combinations(MODULES, 2):
            ra, rb = rows.get((a, res)), rows.get((b, res))
            if ra is None or rb is None:
                continue
            both = ra["blocks"] and rb["blocks"]
            out[f"{a}/{b} @{res}"] = {
                "medians": ra["median"] / rb["median"],
                "paired": paired(ra["blocks"], rb["blocks"]).value if both else None,
            }
    return out


def agreement(runs: list[dict[str, dict[str, float | None]]], kind: str) -> dict[str, Any]:
    """How many pairs agree within QUIET between the quiet runs and within ALL across the three runs."""
    pairs = [p for p in runs[0] if all(p in r and r[p][kind] for r in runs)]
    quiet = [p for p in pairs if abs(runs[1][p][kind] / runs[0][p][kind] - 1) <= QUIET]  # type: ignore[operator]
    spread = {p: max(r[p][kind] for r in runs) / min(r[p][kind] for r in runs) - 1 for p in pairs}  # type: ignore[type-var,operator]
    within = [p for p in pairs if spread[p] <= ALL]
    return {"pairs": len(pairs), "quiet_within_5": len(quiet), "all_within_10": len(within), "spread": spread}


def measure(gap_s: float, tmp: Path) -> dict[str, Any]:
    """The three runs, each interleaved and sequential (alternating which goes first), minutes apart."""
    record: dict[str, Any] = {"runs": {}, "walls": {}, "load": {}}
    cache = tmp / "cache"
    compare(tmp / "warm.csv", True, cache)  # counts cached: the timed runs below differ only in their timing
    for i, run in enumerate(RUNS):
        if i:
            time.sleep(gap_s)
        procs = competitors(COMPETITORS) if run == "loaded" else []
        try:
            record["load"][run] = busy_cores(2.0)
            for interleave in (True, False) if i % 2 == 0 else (False, True):
                mode = "interleaved" if interleave else "sequential"
                csv = tmp / f"{run.replace(' ', '')}-{mode}.csv"
                record["walls"][f"{run} {mode}"] = compare(csv, interleave, cache)
                record["runs"].setdefault(mode, {})[run] = pair_ratios(rows_of(csv))
                print(f"{run} {mode}: {record['walls'][f'{run} {mode}']:.1f} s", file=sys.stderr, flush=True)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    return record


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """Agreement per mode and kind of ratio."""
    out = {}
    for mode, kinds in (("interleaved", ("paired", "medians")), ("sequential", ("medians",))):
        runs = [record["runs"][mode][r] for r in RUNS]
        for kind in kinds:
            out[f"{mode} {kind}"] = agreement(runs, kind)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gap", type=float, default=120.0, help="seconds between the runs (default 120)")
    args = parser.parse_args()
    import onnxruntime
    import torch

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ratio-stability-") as tmp:
        record = measure(args.gap, Path(tmp))
    record["summary"] = summarise(record)
    record["machine"] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": time.time() - started,
        "gap_s": args.gap,
    }
    out = ROOT / "results" / "ratio_stability.json"
    out.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    write_markdown(record)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_markdown(record: dict[str, Any]) -> None:
    """results/ratio_stability.md: the verdicts, then every pair's ratios run by run."""
    m, summary = record["machine"], record["summary"]
    lines = [
        "# Do latency ratios hold from run to run? Interleaved against sequential timing",
        "",
        f"Measured {m['when']} on {m['cpu']} ({m['cores']} logical cores), Python {m['python']}, torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}; `python benchmarks/ratio_stability.py --gap {m['gap_s']:g}` "
        f"({m['seconds']:.0f} s). `attnbench compare {' '.join(MODULES)} --dim {DIM} "
        f"{' '.join(f'--res {r}' for r in RESOLUTIONS)} --backend cpu --metrics latency` three times, "
        f"{m['gap_s']:g} s apart, each time interleaved and with `--no-interleave`; the third run with "
        f"{COMPETITORS} CPU-bound processes competing. Busy cores machine-wide (/proc/stat) at each run's start: "
        + ", ".join(f"{run} {load:.2f}" for run, load in record["load"].items())
        + ".",
        "",
        f"Per pair of modules at one resolution ({len(MODULES) * (len(MODULES) - 1) // 2} pairs x {len(RESOLUTIONS)}"
        f"): the two quiet runs agree when |r2 / r1 - 1| <= {QUIET:.0%}; all three when max / min - 1 <= {ALL:.0%}.",
        "",
        "| timing | ratio | pairs | quiet runs within 5% | all three within 10% |",
        "|---|---|---:|---:|---:|",
    ]
    for name, s in summary.items():
        mode, kind = name.split()
        n = s["pairs"]
        lines.append(
            f"| {mode} | {kind} | {n} | {s['quiet_within_5']} ({s['quiet_within_5'] / n:.0%}) | "
            f"{s['all_within_10']} ({s['all_within_10'] / n:.0%}) |"
        )
    paired = summary["interleaved paired"]
    n = paired["pairs"]
    ok_quiet = paired["quiet_within_5"] / n >= TARGET_QUIET
    ok_all = paired["all_within_10"] / n >= TARGET_ALL
    lines += [
        "",
        f"Targets (interleaved, the ratios attnbench reports: paired): {TARGET_QUIET:.0%} within 5% between the "
        f"quiet runs: **{'MET' if ok_quiet else 'MISSED'}**; {TARGET_ALL:.0%} within 10% across all three: "
        f"**{'MET' if ok_all else 'MISSED'}**.",
        "",
        "Wall seconds per run: " + ", ".join(f"{k} {v:.1f}" for k, v in record["walls"].items()) + ".",
        "",
        "## Every pair",
        "",
        "| pair | "
        + " | ".join(f"{mode[:3]} {run}" for mode in ("interleaved", "sequential") for run in RUNS)
        + " | spread int (paired) | spread seq |",
        "|---|" + "---:|" * (2 * len(RUNS) + 2),
    ]
    for pair in record["runs"]["interleaved"][RUNS[0]]:
        cells = []
        for mode, kind in (("interleaved", "paired"), ("sequential", "medians")):
            cells += [_num(record["runs"][mode][run].get(pair, {}).get(kind)) for run in RUNS]
        spreads = [summary[k]["spread"].get(pair) for k in ("interleaved paired", "sequential medians")]
        lines.append(f"| {pair} | " + " | ".join(cells) + " | " + " | ".join(_pct(s) for s in spreads) + " |")
    (ROOT / "results" / "ratio_stability.md").write_text("\n".join(lines) + "\n")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
    print("wrote results/ratio_stability.md", file=sys.stderr)
