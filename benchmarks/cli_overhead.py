"""Is `attnbench compare --all` faster than the script a user would write, and are its short timings right?

1. Speed, side by side in one run: `attnbench compare --all` at its defaults on a first run (A: an empty cache
   across runs), benchmarks/user_script.py (S: fvcore, thop, torch.onnx.export, onnxruntime and
   Timer.blocked_autorange(min_run_time=1) for the same cases) and attnbench again with the cache the first run
   filled (W: a warm cache), each in a fresh process, in the order A S W W S A so that all meet the machine's slow
   and fast phases alike. From A's and W's rows and records: where their time goes (the two phases, timing loops,
   exports, ...).
2. Agreement, in this process, for every case of the run (cpu and ort): attnbench's timing at its defaults
   against a 5 s reference (Timer.blocked_autorange(min_run_time=5) after the same warm-up) on the same
   module or ORT session, the order alternating from case to case. Target: every case whose reference is
   above 1 ms within 3%, or flagged noisy. The CLI's own row (another process) is shown beside it.
Writes results/cli_overhead.md and .json. Run: python benchmarks/cli_overhead.py
"""

from __future__ import annotations

import json
import os
import statistics
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

SPEED_TARGET = 0.65
WARM_TARGET = 0.45
AGREEMENT = 0.03
REFERENCE_S = 5.0
JUDGED_ABOVE_S = 1e-3


def timed(cmd: list[str]) -> float:
    """Wall time of a command run to completion (in the repository, importing this checkout)."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - started


def speed(tmp: Path) -> dict[str, Any]:
    """A first run, the script, a warm-cache run, in the order A S W W S A; the runs' CSVs for the breakdowns."""
    walls: dict[str, list[float]] = {"first": [], "script": [], "warm": []}
    csvs: dict[str, list[str]] = {"first": [], "warm": []}
    for i, who in enumerate(("first", "script", "warm", "warm", "script", "first")):
        if who != "script":
            csv = tmp / f"compare{i}.csv"
            # A first run starts from an empty cache; the warm runs reuse the one the first run filled.
            cache = tmp / ("cache0" if who == "warm" else f"cache{i}")
            cmd = [sys.executable, "-m", "attnbench.cli", "compare", "--all", "-o", str(csv), "--quiet"]
            cmd += ["--cache-dir", str(cache)]
            csvs[who].append(str(csv))
        else:
            cmd = [sys.executable, str(ROOT / "benchmarks" / "user_script.py")]
        walls[who].append(timed(cmd))
        print(f"{who}: {walls[who][-1]:.1f} s", file=sys.stderr, flush=True)
    return {"walls": walls, "csvs": csvs}


def breakdown(csv: Path, wall: float) -> dict[str, Any]:
    """Seconds of attnbench's run by part, from its environment record and the `extra` of its rows."""
    import attnbench

    loaded = attnbench.load_results(csv)
    rows, env = loaded.results, loaded.env
    extras = [json.loads(r.extra) for r in rows if r.extra]
    phases = env.get("phases", {})
    graphs = [e.get("onnx_graph", "") for e in extras if "onnx_graph" in e]
    return {
        "prepare_s": phases.get("prepare_s"),
        "time_s": phases.get("time_s"),
        "workers": phases.get("workers"),
        "worker_startup_s": phases.get("worker_startup_s"),
        "rest_s": wall - (phases.get("prepare_s") or 0.0) - (phases.get("time_s") or 0.0),
        "timing_loops_s": sum(e.get("timing_loop_s", 0.0) for e in extras),
        "export_s": sum(e.get("export_s", 0.0) + e.get("export_spatial_attempt_s", 0.0) for e in extras),
        "system_allocator_s": sum(e.get("system_allocator_s", 0.0) for e in extras),
        "graphs": {g: graphs.count(g) for g in sorted(set(graphs))},
        "cache": env.get("cache", {}),
        "rows_ok": sum(r.ok for r in rows),
        "rows": len(rows),
    }


def reference(fn: Any, context: Any) -> tuple[float, float]:
    """Timer's median and IQR/median after attnbench's warm-up."""
    from torch.utils.benchmark import Timer

    # attnbench's own warm-up (an internal), so that the reference starts from the state attnbench times in.
    from attnbench.timing import warm_up

    with context:
        warm_up(fn)
        m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=1).blocked_autorange(min_run_time=REFERENCE_S)
    return m.median, m.iqr / m.median


def agreement(csv: Path) -> list[dict[str, Any]]:
    """attnbench at its defaults against a 5 s reference, per case, in this process."""
    import torch

    import attnbench
    from attnbench.memory import pin_allocator

    pin_allocator()  # the allocator state the CLI's rows were timed in (an internal: measure() pins it)
    torch.set_num_threads(1)
    cli = {(r.module, r.height, r.backend): r for r in attnbench.load_results(csv).results if r.ok}
    out = []
    for i, (name, side, backend) in enumerate(sorted(cli, key=lambda k: (k[0], k[1], k[2]))):
        torch.manual_seed(0)
        module = attnbench.build(name, 64, side).eval()
        # Inside the backend's prepared case (internals): the reference times the very callable attnbench's loop
        # times, in the same context.
        with attnbench.get_backend(backend).prepare(module, (1, 64, side, side), attnbench.Scenario()) as prepared:
            fn, _ = prepared.timed_callable()
            if i % 2:
                ref, ref_iqr = reference(fn, prepared.timing_context())
            ours = prepared.time()
            if not i % 2:
                ref, ref_iqr = reference(fn, prepared.timing_context())
        row = cli[(name, side, backend)]
        out.append(
            {
                "case": f"{name} {side}x{side} {backend}",
                "ref_s": ref,
                "ref_iqr_rel": ref_iqr,
                "ours_s": ours.median_s,
                "ours_ci_rel": ours.median_ci_rel,
                "ours_noisy": ours.noisy,
                "ours_timed_s": sum(ours.times_s) * ours.calls_per_block,
                "ours_blocks": ours.n_blocks,
                "ours_other_cpu": ours.other_cpu_cores,
                "cli_s": row.latency_median_s,
                "cli_noisy": row.latency_noisy,
            }
        )
        print(f"{out[-1]['case']}: ours/ref {ours.median_s / ref:.3f}", file=sys.stderr, flush=True)
    return out


def verdict(r: dict[str, Any]) -> str:
    """'agrees', 'flagged' (off by more than 3% but marked noisy), 'MISS', or 'not judged' (<= 1 ms)."""
    if r["ref_s"] <= JUDGED_ABOVE_S:
        return "not judged"
    if abs(r["ours_s"] / r["ref_s"] - 1) <= AGREEMENT:
        return "agrees"
    return "flagged" if r["ours_noisy"] else "MISS"


def main() -> None:
    """Speed, then agreement; write the report (`--markdown-only`: re-render it from the .json)."""
    from attnbench.env import environment

    if "--markdown-only" in sys.argv:
        write_markdown(json.loads((ROOT / "results" / "cli_overhead.json").read_text()))
        return

    tmp = Path(tempfile.mkdtemp())
    load_start = busy_cores()
    started = time.perf_counter()
    sp = speed(tmp)
    load_mid = busy_cores()
    agree = agreement(Path(sp["csvs"]["first"][0]))
    load_end = busy_cores()
    s_wall = statistics.mean(sp["walls"]["script"])
    record = {
        "speed": sp,
        "breakdown": breakdown(Path(sp["csvs"]["first"][0]), sp["walls"]["first"][0]),
        "warm_breakdown": breakdown(Path(sp["csvs"]["warm"][0]), sp["walls"]["warm"][0]),
        "agreement": agree,
        "ratio": statistics.mean(sp["walls"]["first"]) / s_wall,
        "warm_ratio": statistics.mean(sp["walls"]["warm"]) / s_wall,
        "busy_cores": [load_start, load_mid, load_end],
        "wall_s": time.perf_counter() - started,
        "env": environment(),
    }
    (ROOT / "results" / "cli_overhead.json").write_text(json.dumps(record, indent=1, default=str))
    write_markdown(record)


def _part_rows(b: dict[str, Any], wb: dict[str, Any], wall: float, warm_wall: float) -> list[str]:
    """The breakdown table's rows, first run beside warm run."""

    def cell(x: Any, total: float) -> str:
        return "-" if x is None else f"{x:.1f} ({x / total:.0%})"

    parts = [
        ("phase 1, prepare: counting, building, exports, sessions, parity, memory, allocator probes", "prepare_s"),
        ("phase 2, time: the rotations, and the allocator states timed as cases stop", "time_s"),
        ("  of which timing loops (warm-up + blocks)", "timing_loops_s"),
        ("  of which the system allocator state", "system_allocator_s"),
        ("ONNX exports (in workers, overlapping the rest of phase 1)", "export_s"),
        ("interpreter start, imports, the roof, reports", "rest_s"),
    ]
    rows = [f"| {name} | {cell(b.get(k), wall)} | {cell(wb.get(k), warm_wall)} |" for name, k in parts]
    for label, key in (("worker processes started", "workers"), ("their start-up (summed)", "worker_startup_s")):
        rows.append(f"| {label} | {b.get(key)} | {wb.get(key)} |")
    rows.append(f"| graphs (how each ORT row got its graph) | {b['graphs']} | {wb['graphs']} |")
    hits = [f"{x['cache'].get('hits', 0)} hits, {x['cache'].get('stored', 0)} stored" for x in (b, wb)]
    rows.append(f"| cache across runs | {hits[0]} | {hits[1]} |")
    return rows


def write_markdown(record: dict[str, Any]) -> None:
    """results/cli_overhead.md."""
    env, sp, b, wb = record["env"], record["speed"], record["breakdown"], record["warm_breakdown"]
    a, s, w = sp["walls"]["first"], sp["walls"]["script"], sp["walls"]["warm"]
    verdicts = [verdict(r) for r in record["agreement"]]
    judged = [v for v in verdicts if v != "not judged"]
    load = ", ".join(f"{x:.2f}" for x in record["busy_cores"])
    lines = [
        "# `attnbench compare --all` against the script a user would write",
        "",
        f"Measured {env.get('date_utc', '')} on {env.get('cpu_model')} ({env.get('logical_cores')} logical cores), "
        f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}; `python benchmarks/cli_overhead.py` "
        f"({record['wall_s']:.0f} s). The machine is shared: busy cores machine-wide (all processes, /proc/stat) "
        f"at the start, between the parts and at the end: {load}.",
        "",
        "## Speed (defaults: C=64 at 14, 28, 56; cpu and ort; 1 thread)",
        "",
        "Each run a fresh process, in the order first, script, warm, warm, script, first. A first run starts from "
        "an empty cache across runs; a warm run from the one the first run filled (its exports and counts). The "
        "script (`benchmarks/user_script.py`): fvcore, thop, `torch.onnx.export(dynamo=True)` per case, "
        "onnxruntime, and `Timer.blocked_autorange(min_run_time=1.0)` on CPU and ORT per case.",
        "",
        "| run | wall [s] |",
        "|---|---:|",
        f"| attnbench compare --all, first run | {a[0]:.1f}, {a[1]:.1f} (mean {statistics.mean(a):.1f}) |",
        f"| attnbench compare --all, warm cache | {w[0]:.1f}, {w[1]:.1f} (mean {statistics.mean(w):.1f}) |",
        f"| user_script.py | {s[0]:.1f}, {s[1]:.1f} (mean {statistics.mean(s):.1f}) |",
        "",
        f"attnbench / script, first run: **{record['ratio']:.2f}** (target <= {SPEED_TARGET}: "
        f"{'met' if record['ratio'] <= SPEED_TARGET else 'MISSED'}); warm cache: **{record['warm_ratio']:.2f}** "
        f"(target <= {WARM_TARGET}: {'met' if record['warm_ratio'] <= WARM_TARGET else 'MISSED'}).",
        "",
        "Where the runs' time went (from their environment records and rows):",
        "",
        "| part | first run [s] | warm cache [s] |",
        "|---|---:|---:|",
        *_part_rows(b, wb, a[0], w[0]),
        "",
        "## Agreement with a 5 s reference",
        "",
        f"Per case, in one process: attnbench's timing at its defaults and `Timer.blocked_autorange("
        f"min_run_time={REFERENCE_S:g})` after the same warm-up, on the same module or session, the order "
        "alternating. Target: every case whose reference is above 1 ms within 3%, or flagged noisy (`~`: the "
        "95% CI on the median not within ±1% in the budget, or IQR/median > 10%). `CLI` is the row of the first "
        "attnbench run above (another process, another minute).",
        "",
        f"Judged {len(judged)} cases: **{judged.count('agrees')} agree**, {judged.count('flagged')} are off by more "
        f"than 3% and flagged noisy, **{judged.count('MISS')} miss** (off and not flagged).",
        "",
        "| case | ref [ms] | ref IQR/med | attnbench [ms] | ours / ref | 95% CI ± | blocks | timed [s] | "
        "other CPU [cores] | verdict | CLI [ms] | CLI / ref |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r, v in zip(record["agreement"], verdicts, strict=True):
        other = "-" if r["ours_other_cpu"] is None else f"{r['ours_other_cpu']:.2f}"
        cli = r["cli_s"]
        cli_ms = "-" if cli is None else f"{cli * 1e3:.3f}"
        cli_ratio = "-" if cli is None else f"{cli / r['ref_s']:.3f}"
        lines.append(
            f"| {r['case']} | {r['ref_s'] * 1e3:.3f} | {r['ref_iqr_rel']:.1%} | {r['ours_s'] * 1e3:.3f}"
            f"{' ~' if r['ours_noisy'] else ''} | {r['ours_s'] / r['ref_s']:.3f} | {r['ours_ci_rel']:.2%} | "
            f"{r['ours_blocks']} | {r['ours_timed_s']:.2f} | {other} | {v} | {cli_ms} | {cli_ratio} |"
        )
    lines.append("")
    (ROOT / "results" / "cli_overhead.md").write_text("\n".join(lines))
    print("\n".join(lines[:40]))


if __name__ == "__main__":
    main()
