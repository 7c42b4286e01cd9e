"""Does the CI gate pass unchanged code and catch a change of work while other processes load the machine?

For the whole benchmark, COMPETITORS CPU-bound processes (`yes > /dev/null`) compete for the cores, as on a
shared CI runner. Each gate run is a fresh process running the CI command of .ci/run:
1. a baseline, written once with `--gate-metric instructions -o BASE` (instruction counts beside timings);
2. N runs of unchanged code gated on instructions (`--baseline BASE --gate-metric instructions`): must pass;
3. N runs with one module changed to do ~25% more elementwise work at equal params and MACs
   (benchmarks/gate_variants.py): must fail, naming the module;
4. for contrast, M runs of unchanged code gated on wall time against the same baseline: today's gate,
   which now says "inconclusive (machine busy)" instead of failing when the timings were contended;
5. a user's own module, by its file spec (`PATH:Block`, benchmarks/gate_variants.py writes the file), in every
   run: N runs with that FILE changed to do at least 2% more instructions (extra scalar multiplications, sized
   in one valgrind process beforehand): must fail, naming it (its valgrind worker builds it from the file);
6. sensitivity: in one valgrind process, every zoo module with elementwise work, original and changed,
   at 16x16 and 32x32 (and the original again): how many more instructions 25% more elementwise work is,
   against how much a repeated count moves.
Writes results/gate_stability.md and .json. Run: nohup python benchmarks/gate_stability.py &
"""

from __future__ import annotations

import argparse
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

#: The gate of .ci/run without its ORT rows (instructions are counted on cpu rows; ORT export would add a
#: minute per run under this load), on the modules of the issue's original experiment by default.
MODULES = "mhsa,lka,sk,acmix"
SETTING = ["--dim", "64", "--res", "16", "--res", "32", "--backend", "cpu", "--quiet"]
#: Timing as .ci/run does it: the wall-time gate needs it; the instruction gate's verdict does not read it.
TIMED = ["--max-run-time", "0.5"]
COUNTS_ONLY = ["--metrics", "params,macs"]
COMPETITORS = 2
TARGET = "mhsa"
#: The user's file module's change: at least this much more instructions per call, at every resolution.
FILE_EXTRA = 0.02


def child(mode: str, target: str, argv: list[str]) -> int:
    """Change the zoo as `mode` says, then run the CLI in this process."""
    from attnbench.cli import main

    if mode == "more-elementwise":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from gate_variants import more_elementwise

        more_elementwise(target)
    return main(argv)


def gate_run(mode: str, baseline: Path, metric: str, args: list[str], target: str = TARGET) -> dict[str, Any]:
    """One gate run in a fresh process: exit code, wall time, the gate's last line and the failing cases."""
    started = time.perf_counter()
    cmd = [sys.executable, __file__, "--child", mode, "--target", target, "--", *args]
    cmd += ["--baseline", str(baseline), "--gate-metric", metric]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"gate run crashed ({done.returncode}): {done.stderr[-2000:]}")
    lines = done.stdout.splitlines()
    verdict = next((ln for ln in reversed(lines) if ln.startswith("gate:")), "")
    failing = sorted({ln.split()[1] for ln in lines if ln.startswith("│") and "│ yes" in ln and len(ln.split()) > 1})
    return {
        "code": done.returncode,
        "wall_s": time.perf_counter() - started,
        "verdict": verdict,
        "failing_modules": failing,
        "changes": [ln for ln in lines if ln.startswith("│")][:12],
    }


def sensitivity(names: list[str]) -> list[dict[str, Any]]:
    """Instructions of each module against its 25%-more-elementwise version, and of a repeated count."""
    import torch
    from gate_variants import MoreElementwise, passes_for

    import attnbench

    # The instruction counter itself (an internal): all counts in one valgrind process, as the gate's pass does.
    from attnbench.instructions import InstructionBatch

    plan: list[dict[str, Any]] = []
    with InstructionBatch() as batch:
        for name in names:
            for side in (16, 32):
                try:
                    _, setting = attnbench.validate(name, 64, side)
                except attnbench.InvalidCaseError:
                    continue
                passes, work, added = passes_for(attnbench.get_spec(name).builder, 64, (side, side), **setting.kwargs)
                if added > work:  # next to no elementwise work: 25% of it is less than one pass
                    continue
                torch.manual_seed(0)
                module = attnbench.build(name, 64, side).eval()
                shape = (1, 64, side, side)
                for m in (module, MoreElementwise(module, passes).eval(), module):
                    batch.add(m, shape)
                plan.append({"module": name, "res": side, "passes": passes, "added_fraction": added / work})
        counts = batch.run()
    for i, row in enumerate(plan):
        orig, more, again = (c.instructions for c in counts[3 * i : 3 * i + 3])
        row.update(orig=orig, changed=more, repeat=again)
    return plan


def calibrate_file(path: Path) -> dict[int, dict[str, int]]:
    """Passes per H that make the user's block do at least FILE_EXTRA more instructions, counted in valgrind."""
    import importlib

    import torch
    from gate_variants import write_user_block

    from attnbench.instructions import InstructionBatch

    write_user_block(path, {})
    sys.path.insert(0, str(path.parent))  # the valgrind worker unpickles the block by its module's name
    block = importlib.import_module(path.stem)
    probe = 8
    sides = (16, 32)
    with InstructionBatch() as batch:
        for side in sides:
            for passes in ({}, {side: probe}):
                torch.manual_seed(0)
                batch.add(block.Block(64, passes).eval(), (1, 64, side, side))
        counts = [c.instructions for c in batch.run()]
    plan = {}
    for i, side in enumerate(sides):
        orig, more = counts[2 * i], counts[2 * i + 1]
        per_pass = (more - orig) / probe
        passes = int(-(-FILE_EXTRA * orig // per_pass))  # ceil
        plan[side] = {"passes": passes, "orig": orig, "per_pass": round(per_pass), "expected": passes * per_pass}
    return plan


def attnbench_modules(spec: str) -> list[str]:
    """The zoo names that --modules names."""
    import attnbench

    return list(attnbench.list_modules()) if spec == "all" else spec.split(",")


def main() -> None:
    """Baseline, unchanged and changed runs under load; write the record."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--changed-runs", type=int, default=5)
    parser.add_argument("--file-runs", type=int, default=5)
    parser.add_argument("--wall-runs", type=int, default=2)
    parser.add_argument("--target", default=TARGET)
    parser.add_argument("--modules", default=MODULES, help="comma-separated modules, or 'all' (the CI's 10)")
    parser.add_argument(
        "--timed", action="store_true", help="time the instruction-gate runs too, as .ci/run does (a minute more each)"
    )
    parser.add_argument("--markdown-only", action="store_true", help="Re-render the .md from the .json.")
    args = parser.parse_args()
    if args.markdown_only:
        write_markdown(json.loads((ROOT / "results" / "gate_stability.json").read_text()))
        return
    import attnbench
    from attnbench.env import environment

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gate_variants import passes_for, write_user_block

    tmp = Path(tempfile.mkdtemp())
    user_file = tmp / "user_block.py"
    calibration = calibrate_file(user_file)
    file_spec = f"{user_file}:Block"
    modules = ["--all"] if args.modules == "all" else args.modules.split(",")
    modules.append(file_spec)
    timed_args = ["compare", *modules, *SETTING, *TIMED]
    instr_args = timed_args if args.timed else ["compare", *modules, *SETTING, *COUNTS_ONLY]
    baseline = tmp / "baseline.csv"
    load_idle = busy_cores()
    yes = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(COMPETITORS)]
    try:
        load_busy = busy_cores()
        started = time.perf_counter()
        base_cmd = [sys.executable, "-m", "attnbench.cli", *timed_args, "--gate-metric", "instructions", "-o"]
        subprocess.run([*base_cmd, str(baseline)], check=True, cwd=ROOT, capture_output=True)
        baseline_s = time.perf_counter() - started
        results: dict[str, list[dict[str, Any]]] = {"unchanged": [], "changed": [], "file": [], "wall": []}
        file_change = {side: c["passes"] for side, c in calibration.items()}
        for i in range(max(args.runs, args.changed_runs, args.file_runs)):
            # Interleaved, so that both kinds of run see the same phases of the machine's load.
            if i < args.runs:
                results["unchanged"].append(gate_run("plain", baseline, "instructions", instr_args))
            if i < args.changed_runs:
                results["changed"].append(
                    gate_run("more-elementwise", baseline, "instructions", instr_args, args.target)
                )
            if i < args.file_runs:
                write_user_block(user_file, file_change)  # the user changed their file
                try:
                    results["file"].append(gate_run("plain", baseline, "instructions", instr_args))
                finally:
                    write_user_block(user_file, {})
            print(f"round {i + 1}: " + " | ".join(v[-1]["verdict"] for v in results.values() if v), flush=True)
        for _ in range(args.wall_runs):
            results["wall"].append(gate_run("plain", baseline, "wall", timed_args))
        sens = sensitivity(attnbench_modules(args.modules))
        load_end = busy_cores()
    finally:
        for proc in yes:
            proc.kill()
    rows = attnbench.load_results(baseline).results
    counts = {f"{r.module} {r.height}x{r.width}": r.instructions for r in rows}
    added = []
    for side in (16, 32):
        _, setting = attnbench.validate(args.target, 64, side)
        passes, work, extra = passes_for(attnbench.get_spec(args.target).builder, 64, (side, side), **setting.kwargs)
        added.append({"res": side, "passes": passes, "elementwise_ops": work, "added_ops": extra})
    record = {
        "baseline_args": timed_args,
        "instruction_args": instr_args,
        "competitors": COMPETITORS,
        "busy_cores_before": load_idle,
        "busy_cores_with_competitors": load_busy,
        "busy_cores_at_end": load_end,
        "baseline_s": baseline_s,
        "baseline_instructions": counts,
        "target": args.target,
        "target_change": added,
        "file_spec": file_spec,
        "file_calibration": calibration,
        "results": results,
        "sensitivity": sens,
        "env": environment(),
    }
    (ROOT / "results" / "gate_stability.json").write_text(json.dumps(record, indent=1, default=str))
    write_markdown(record)


def _file_paragraph(record: dict[str, Any]) -> list[str]:
    """How the user's file was changed, and what the changed runs' tables said of it."""
    sizes = "; ".join(
        f"{side}x{side}: {c['passes']} multiplications of {c['per_pass']:,} instructions each on top of "
        f"{c['orig']:,} ({c['expected'] / c['orig']:+.2%})"
        for side, c in record["file_calibration"].items()
    )
    example = next((r for r in record["results"]["file"] if r["code"] == 1), None)
    return [
        f"The user's module: `{record['file_spec']}`, a file spec (a 1x1-conv attention block written by "
        "benchmarks/gate_variants.py), in the baseline and every run. For its changed runs the file itself was "
        "rewritten before the run and restored after it, so only a gate that builds the module from the user's "
        "file, in its valgrind worker too, can see the change. The change, sized in one valgrind process before "
        f"the runs: {sizes}.",
        "",
        *(
            ["A changed-file run's table and verdict:", "", "```", *example["changes"], example["verdict"], "```", ""]
            if example
            else []
        ),
    ]


def _summary(runs: list[dict[str, Any]]) -> tuple[int, int, float]:
    passed = sum(r["code"] == 0 for r in runs)
    return passed, len(runs) - passed, statistics.mean(r["wall_s"] for r in runs) if runs else 0.0


def write_markdown(record: dict[str, Any]) -> None:
    """results/gate_stability.md from the record."""
    env = record["env"]
    res = record["results"]
    up, uf, uwall = _summary(res["unchanged"])
    cp, cf, cwall = _summary(res["changed"])
    wp, wf, wwall = _summary(res["wall"])
    fp, ff, fwall = _summary(res.get("file", []))
    spec = record.get("file_spec", "")
    file_named = sum(spec in r["failing_modules"] for r in res.get("file", []) if r["code"] == 1)
    named = sum(record["target"] in r["failing_modules"] for r in res["changed"] if r["code"] == 1)
    inconclusive = sum("INCONCLUSIVE" in r["verdict"] for r in res["wall"])
    target = record["target"]
    change = "; ".join(
        f"{c['res']}x{c['res']}: {c['passes']} passes over the output = {c['added_ops']:,} element-ops on top of "
        f"{c['elementwise_ops']:,} ({c['added_ops'] / c['elementwise_ops']:+.0%})"
        for c in record["target_change"]
    )
    lines = [
        "# Regression gate under load: instruction counts against wall time",
        "",
        f"Measured {env.get('date_utc', '')} on {env.get('cpu_model')} ({env.get('logical_cores')} logical cores, "
        f"shared with other work), torch {env.get('torch')}, python {env.get('python')}, valgrind "
        f"{env.get('valgrind')}; `python benchmarks/gate_stability.py`. For the whole run {record['competitors']} "
        "CPU-bound processes (`yes > /dev/null`) competed for the cores. Busy cores (machine-wide, /proc/stat): "
        f"{record['busy_cores_before']:.2f} before they started, {record['busy_cores_with_competitors']:.2f} with "
        f"them, {record['busy_cores_at_end']:.2f} at the end.",
        "",
        f"The baseline was written once, under the same load: `attnbench {' '.join(record['baseline_args'])} "
        "--gate-metric instructions -o BASE` (instruction counts beside the timings). Each gate run is a fresh "
        f"process: `attnbench {' '.join(record['instruction_args'])} --baseline BASE --gate-metric instructions` "
        "(unchanged and changed runs alternate), then the wall-time runs with the baseline's own arguments and "
        "`--gate-metric wall`."
        + (
            " The instruction-gate runs do not time the cases (`--metrics params,macs`): that gate's verdict "
            "reads counts and instructions only, and timing would add a minute per run under this load."
            if "--metrics" in record["instruction_args"]
            else ""
        ),
        "",
        "| scenario | gate | runs | expected | passed | failed | mean wall per run |",
        "|---|---|---:|---|---:|---:|---:|",
        f"| unchanged code | instructions | {up + uf} | pass | **{up}** | {uf} | {uwall:.0f} s |",
        f"| {target} does ~25% more elementwise work (equal params and MACs) | instructions | {cp + cf} | fail | "
        f"{cp} | **{cf}** ({named} naming {target}) | {cwall:.0f} s |",
        *(
            [
                f"| the user's file `{Path(spec).name}` changed to do >= {FILE_EXTRA:.0%} more instructions | "
                f"instructions | {fp + ff} | fail | {fp} | **{ff}** ({file_named} naming it) | {fwall:.0f} s |"
            ]
            if spec
            else []
        ),
        f"| unchanged code | wall | {wp + wf} | pass or inconclusive | **{wp}** ({inconclusive} inconclusive "
        f"(machine busy)) | {wf} | {wwall:.0f} s |",
        "",
        f"The change: `{target}` followed by scalar multiplications of its output by 1.0, sized from attnbench's "
        f"count of its elementwise arithmetic: {change}. Params and MACs are unchanged (a scalar multiplication "
        "is not a MAC), so only the work measure can see it.",
        "",
        *(_file_paragraph(record) if spec else []),
        "Instruction counts per forward in the baseline (instructions, SSE4 kernels under Callgrind):",
        "",
        "| case | instructions |",
        "|---|---:|",
        *[f"| {k} | {v:,} |" for k, v in record["baseline_instructions"].items() if v is not None],
        "",
    ]
    lines += [
        "## Sensitivity: what 25% more elementwise work is in instructions, module by module",
        "",
        "Counted in one valgrind process (under the same load): the module, its changed version, the module "
        "again. The gate's default tolerance is 1% (`--tolerance` sets another).",
        "",
        "| module | H x W | passes | elementwise ops added | instructions | changed | change | repeat |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["sensitivity"]:
        change, repeat = r["changed"] / r["orig"] - 1, r["repeat"] / r["orig"] - 1
        lines.append(
            f"| {r['module']} | {r['res']}x{r['res']} | {r['passes']} | {r['added_fraction']:+.0%} | "
            f"{r['orig']:,} | {r['changed']:,} | {change:+.2%} | {repeat:+.3%} |"
        )
    lines.append("")
    example = next((r for r in res["changed"] if r["code"] == 1), None)
    if example:
        lines += [
            "A failing run's table (the last column: instructions per call) and verdict:",
            "",
            "```",
            *example["changes"],
            example["verdict"],
            "```",
            "",
        ]
    busy = next((r for r in res["wall"] if "INCONCLUSIVE" in r["verdict"]), None)
    if busy:
        lines += [
            "A wall-time gate run under the same load, its table and verdict:",
            "",
            "```",
            *busy["changes"],
            busy["verdict"],
            "```",
            "",
        ]
    (ROOT / "results" / "gate_stability.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    if "--child" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--child")
        ap.add_argument("--target")
        ns, rest = ap.parse_known_args()
        sys.exit(child(ns.child, ns.target, [a for a in rest if a != "--"]))
    main()
