"""Is `attnbench compare --all` faster than the script a user would write, and are its short timings right?

1. Speed, side by side in one run: `attnbench compare --all` at its defaults (A), benchmarks/user_script.py
   (S: fvcore, thop, torch.onnx.export, onnxruntime and Timer.blocked_autorange(min_run_time=1) for the same
   cases) and attnbench with a shorter timing budget (V: VARIANT_ARGS), each in a fresh process, in the
   order A S V V S A so that all meet the machine's slow and fast phases alike. From A's rows: where its
   time goes (timing loops, exports, ...).
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

SPEED_TARGET = 0.6
AGREEMENT = 0.03
REFERENCE_S = 5.0
JUDGED_ABOVE_S = 1e-3
#: The variant timed beside the defaults: what a shorter budget buys.
VARIANT_ARGS = ["--max-run-time", "0.2"]


def timed(cmd: list[str]) -> float:
    """Wall time of a command run to completion (in the repository, importing this checkout)."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - started


def speed(tmp: Path) -> dict[str, Any]:
    """attnbench, the script and the variant in the order A S V V S A; attnbench's first CSV for the breakdown."""
    walls: dict[str, list[float]] = {"attnbench": [], "script": [], "variant": []}
    for i, who in enumerate(("attnbench", "script", "variant", "variant", "script", "attnbench")):
        if who != "script":
            csv = tmp / f"compare{i}.csv"
            cmd = [sys.executable, "-m", "attnbench.cli", "compare", "--all", "-o", str(csv), "--quiet"]
            cmd += VARIANT_ARGS if who == "variant" else []
        else:
            cmd = [sys.executable, str(ROOT / "benchmarks" / "user_script.py")]
        walls[who].append(timed(cmd))
        print(f"{who}: {walls[who][-1]:.1f} s", file=sys.stderr, flush=True)
    return {"walls": walls, "csv": str(tmp / "compare0.csv"), "variant_csv": str(tmp / "compare2.csv")}


def breakdown(csv: Path, wall: float) -> dict[str, float]:
    """Seconds of attnbench's run by part, from the `extra` of its rows."""
    import attnbench

    rows = attnbench.load_results(csv).results
    extras = [json.loads(r.extra) for r in rows if r.extra]
    loops = sum(e.get("timing_loop_s", 0.0) for e in extras)
    memory = sum(e.get("memory_s", 0.0) for e in extras)
    export = sum(e.get("export_s", 0.0) + e.get("export_spatial_attempt_s", 0.0) for e in extras)
    session = sum(e.get("prepare_s", 0.0) for e in extras if "ort_provider" in e) - export
    sysalloc = sum(e.get("system_allocator_s", 0.0) + e.get("system_worker_start_s", 0.0) for e in extras)
    exports = sum(1 for e in extras if e.get("onnx_graph", "").startswith("exported"))
    reused = sum(1 for e in extras if e.get("onnx_graph") == "reused")
    return {
        "timing_loops_s": loops,
        "memory_s": memory,
        "export_s": export,
        "session_and_parity_s": session,
        "system_allocator_s": sysalloc,
        "rest_s": wall - loops - memory - export - session - sysalloc,
        "exports": exports,
        "reused_graphs": reused,
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
        record = json.loads((ROOT / "results" / "cli_overhead.json").read_text())
        for key, csv, walls in (("breakdown", "csv", "attnbench"), ("variant_breakdown", "variant_csv", "variant")):
            if Path(record["speed"][csv]).exists():  # the run's CSVs, while its temporary folder lasts
                record[key] = breakdown(Path(record["speed"][csv]), record["speed"]["walls"][walls][0])
        (ROOT / "results" / "cli_overhead.json").write_text(json.dumps(record, indent=1, default=str))
        write_markdown(record)
        return

    tmp = Path(tempfile.mkdtemp())
    load_start = busy_cores()
    started = time.perf_counter()
    sp = speed(tmp)
    load_mid = busy_cores()
    agree = agreement(Path(sp["csv"]))
    load_end = busy_cores()
    a_wall, s_wall = statistics.mean(sp["walls"]["attnbench"]), statistics.mean(sp["walls"]["script"])
    record = {
        "speed": sp,
        "breakdown": breakdown(Path(sp["csv"]), sp["walls"]["attnbench"][0]),
        "variant_breakdown": breakdown(Path(sp["variant_csv"]), sp["walls"]["variant"][0]),
        "variant_args": VARIANT_ARGS,
        "variant_ratio": statistics.mean(sp["walls"]["variant"]) / s_wall,
        "agreement": agree,
        "ratio": a_wall / s_wall,
        "busy_cores": [load_start, load_mid, load_end],
        "wall_s": time.perf_counter() - started,
        "env": environment(),
    }
    (ROOT / "results" / "cli_overhead.json").write_text(json.dumps(record, indent=1, default=str))
    write_markdown(record)


def write_markdown(record: dict[str, Any]) -> None:
    """results/cli_overhead.md."""
    env, sp, b = record["env"], record["speed"], record["breakdown"]
    a, s, v = sp["walls"]["attnbench"], sp["walls"]["script"], sp["walls"]["variant"]
    vb = record["variant_breakdown"]
    wall = a[0]

    def share(x: float) -> str:
        return f"{x:.1f} s ({x / wall:.0%})"

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
        "Each run a fresh process, in the order attnbench, script, variant, variant, script, attnbench. The script "
        "(`benchmarks/user_script.py`): fvcore, thop, `torch.onnx.export(dynamo=True)` per case, onnxruntime, and "
        "`Timer.blocked_autorange(min_run_time=1.0)` on CPU and ORT per case.",
        "",
        "| run | wall [s] |",
        "|---|---:|",
        f"| attnbench compare --all | {a[0]:.1f}, {a[1]:.1f} (mean {statistics.mean(a):.1f}) |",
        f"| user_script.py | {s[0]:.1f}, {s[1]:.1f} (mean {statistics.mean(s):.1f}) |",
        f"| attnbench compare --all {' '.join(record['variant_args'])} | {v[0]:.1f}, {v[1]:.1f} "
        f"(mean {statistics.mean(v):.1f}) |",
        "",
        f"attnbench / script at the defaults: **{record['ratio']:.2f}** (target <= {SPEED_TARGET}: "
        f"{'met' if record['ratio'] <= SPEED_TARGET else 'MISSED'}); with `{' '.join(record['variant_args'])}`: "
        f"**{record['variant_ratio']:.2f}** (timing loops {vb['timing_loops_s']:.1f} s, "
        f"exports {vb['export_s']:.1f} s).",
        "",
        f"Where the first attnbench run's {wall:.1f} s went ({b['rows_ok']} measured rows of {b['rows']}):",
        "",
        "| part | seconds (share) |",
        "|---|---:|",
        f"| timing loops (warm-up + adaptive blocks) | {share(b['timing_loops_s'])} |",
        f"| ONNX export ({b['exports']} exports; {b['reused_graphs']} rows reused a graph) | {share(b['export_s'])} |",
        f"| ORT sessions and parity checks | {share(b['session_and_parity_s'])} |",
        f"| CPU peak-memory forward | {share(b['memory_s'])} |",
        f"| system allocator state (worker start, page faults; timed where they could cost 10%) | "
        f"{share(b.get('system_allocator_s', 0.0))} |",
        f"| imports, building, counting (3 counters), reporting | {share(b['rest_s'])} |",
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
