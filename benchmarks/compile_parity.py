"""How far does torch.compile (inductor, CPU) move each zoo module's numbers from eager, and what does compiling cost?

For every registered module at dim 64, res 16 (batch 1, 1 thread), in inference and training and in float32,
bfloat16 and float16: attnbench.measure(..., scenario=Scenario(compile=True)) with the parity tolerance
lifted, so the raw figures are recorded whatever they are: for the worst compared tensor (the output; in
training also the input and weight gradients), how far compiled and eager each are from the same step in
float64, and the excess of compiled over eager as a fraction of the tensor group's scale. The excess is then
judged against COMPILE_PARITY_RTOL, the tolerance attnbench applies. Also recorded: the status (compile_failed
with its reason), compile time (the first call), graph breaks, and the compiled / eager latency ratio measured
in the same process. Inductor's on-disk cache is pointed at a fresh directory, so every compile time is a
first compile (a second run of the same case hits the cache: acmix's 45 s took 0.6 s here).

Writes results/compile_parity.json and results/compile_parity.md. Run: python benchmarks/compile_parity.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# Before torch is imported: a cache that holds nothing yet, so compile times are first compiles.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="attnbench-inductor-")

import torch

import attnbench

# The torch backends' compile-parity tolerance (an internal): lifted below, so the raw figures are recorded.
import attnbench.backends._torch as torch_backend
from attnbench.env import environment

DIM = 64
RES = 16
MODES = ("infer", "train")
DTYPES = ("float32", "bfloat16", "float16")
MIN_RUN_TIME = 0.2
OUT = Path(__file__).resolve().parent.parent / "results"


def one(name: str, mode: str, dtype: str, limits: dict[str, float]) -> dict[str, Any]:
    """Eager and compiled, same process, same input; the parity tolerance lifted (recorded raw)."""
    module = attnbench.build(name, DIM, (RES, RES))
    shape = (1, DIM, RES, RES)
    budget = attnbench.TimingBudget(min_run_time=MIN_RUN_TIME)
    scenario = attnbench.Scenario(mode=mode, dtype=dtype)
    started = time.perf_counter()
    compiled = attnbench.measure(
        module, shape, scenario=dataclasses.replace(scenario, compile=True), budget=budget, metrics=("latency",)
    )
    eager = attnbench.measure(module, shape, scenario=scenario, budget=budget, metrics=("latency",))
    row: dict[str, Any] = {
        "module": name,
        "mode": mode,
        "dtype": dtype,
        "status": compiled.status,
        "reason": compiled.reason[:300],
        "compile_s": compiled.compile_s,
        "parity_excess": compiled.extra.get("compile_parity_excess"),
        "err_compiled": compiled.extra.get("compile_parity_err_compiled"),
        "err_eager": compiled.extra.get("compile_parity_err_eager"),
        "diff_vs_eager": compiled.parity_max_abs,
        "parity_worst": compiled.extra.get("compile_parity_worst"),
        "parity_note": compiled.extra.get("compile_parity", ""),
        "graph_breaks": compiled.extra.get("compile_graph_breaks"),
        "eager_median_s": eager.timing.median_s if eager.timing else None,
        "compiled_median_s": compiled.timing.median_s if compiled.timing else None,
        "limit": limits[dtype],
        "wall_s": time.perf_counter() - started,
    }
    if row["eager_median_s"] and row["compiled_median_s"]:
        row["speedup"] = row["eager_median_s"] / row["compiled_median_s"]
    return row


def markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """The report: one row per module, mode and dtype, then what the tolerance rests on."""
    lines = [
        "# torch.compile (inductor) against eager, per zoo module",
        "",
        f"Machine: {env['cpu_model']}, {env['usable_cores']} usable cores (shared, noisy VM), 1 thread; "
        f"torch {env['torch']}, Python {env['python']}; {env['date_utc']}. Module dim {DIM}, {RES}x{RES}, "
        "batch 1. For the worst compared tensor (the output; in training also the input and weight gradients): "
        "`|compiled−exact|` and `|eager−exact|`, the largest difference of each from the same step in float64 "
        "(same rounded weights and input), and `excess`, (|compiled−exact| − |eager−exact|) / the largest "
        "|exact| of the tensor's group, which attnbench judges against `limit` (COMPILE_PARITY_RTOL). "
        "`speedup`: eager / compiled median, same process (indicative: one run on a shared machine). "
        "`compile [s]`: the first call, compiling and running once, with inductor's on-disk cache empty at the "
        "start of the run (kernels shared between modules may hit it).",
        "",
        "| module | mode | dtype | status | compile [s] | worst tensor | \\|compiled−exact\\| | \\|eager−exact\\| "
        "| excess | limit | graph breaks | speedup |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        excess = "-" if r["parity_excess"] is None else f"{r['parity_excess']:.2g}"
        if r["parity_excess"] is None and "not checked" in r["parity_note"]:
            excess = "random (dropout)"
        comp = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        speed = f"{r['speedup']:.2f}" if r.get("speedup") else "-"
        breaks = "-" if r["graph_breaks"] is None else r["graph_breaks"]
        errs = [_g(r["err_compiled"]), _g(r["err_eager"])]
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason'][:120]}"
        if r["parity_excess"] is not None and r["parity_excess"] > r["limit"]:
            status = "**parity_failed**"
        lines.append(
            f"| {r['module']} | {r['mode']} | {r['dtype']} | {status.replace('|', '/')} | {comp} | "
            f"{r['parity_worst'] or '-'} | {errs[0]} | {errs[1]} | {excess} | {r['limit']:g} | {breaks} | {speed} |"
        )
    lines += ["", "## Worst excess per dtype, against the limit", ""]
    for dtype in DTYPES:
        excesses = [r["parity_excess"] for r in rows if r["dtype"] == dtype and r["parity_excess"] is not None]
        limit = _limit(rows, dtype)
        worst = max(excesses, default=math.nan)
        over = sum(e > limit for e in excesses)
        lines.append(f"- {dtype}: {len(excesses)} compared, worst {worst:.2g}, limit {limit:g}, {over} above it")
    failed = [r for r in rows if r["status"] == "compile_failed"]
    lines += ["", f"Compile failures: {len(failed)} of {len(rows)}.", ""]
    return "\n".join(lines) + "\n"


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def _limit(rows: list[dict[str, Any]], dtype: str) -> float:
    return next(r["limit"] for r in rows if r["dtype"] == dtype)


def main() -> None:
    """Run the grid (or the modules given) and write the JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=attnbench.list_modules())
    args = parser.parse_args()
    torch.set_num_threads(1)
    limits = dict(torch_backend.COMPILE_PARITY_RTOL)
    # Lift the tolerance so the raw difference is recorded; it is judged against `limits` in the report.
    torch_backend.COMPILE_PARITY_RTOL = {k: math.inf for k in limits}
    env = environment()
    rows = []
    for name in args.modules:
        for mode in MODES:
            for dtype in DTYPES:
                row = one(name, mode, dtype, limits)
                rows.append(row)
                print(json.dumps(row, default=str), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "compile_parity.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2, default=str))
    (OUT / "compile_parity.md").write_text(markdown(rows, env))


if __name__ == "__main__":
    main()
