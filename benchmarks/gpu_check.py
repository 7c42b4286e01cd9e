"""The CUDA checks of benchmarks/gpu_check.sh: timing against torch.utils.benchmark, memory against the allocator.

  setup    that this python has a CUDA torch (it installs none), then the carried wheels (pip --no-index --target)
           and that every package attnbench and its tests import is there; exit 1 with what is missing.
  check    attnbench's CUDA latency against torch.utils.benchmark.Timer on TIMING_CASE, both timing a call to its
           end on the GPU (a synchronize after each call, as attnbench's cuda backend does), interleaved over
           rounds, within 3%; its CUDA peak memory against a hand-run torch.cuda.max_memory_allocated protocol and
           the analytic output size of a Linear, exactly. Writes the figures as JSON. Exit 0 when every check
           passes, 1 with a one-line reason when one fails, and 0 with a one-line "skipped" when torch sees no
           CUDA device.
  summary  results/gpu_check.md from the script's step log, the merged compare-cuda report and the checks, with
           what it could not check.

Run by benchmarks/gpu_check.sh; alone: python benchmarks/gpu_check.py check --out results/gpu_check.json
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Within this fraction of torch.utils.benchmark's median (the ratio of the medians over the rounds).
TIMING_TOLERANCE = 0.03
#: A compute-bound case (10.5 GMAC per call: the 3136 x 3136 attention map at batch 8), well above launch overhead.
TIMING_CASE = {"module": "mhsa", "dim": 64, "res": 56, "batch": 8}
TIMING_ROUNDS = 4
TIMING_MIN_RUN_TIME = 0.5
#: Linear(4096, 4096) on (1024, 4096) in float32: its only allocation during the call is the 16 MiB output.
LINEAR_SHAPE = (1024, 4096)
LINEAR_PEAK_BYTES = 1024 * 4096 * 4
MEMORY_MODULE_CASE = {"module": "mhsa", "dim": 64, "res": 28, "batch": 1}
PREFIX = "gpu_check.py"
#: What a 6-minute check leaves out whatever the machine has (the summary lists these beside what was unavailable).
NOT_COVERED = (
    "`--compile` on CUDA: inductor's first compile takes tens of seconds per case, more than a 6-minute check has",
    "`--tf32 on` in the sweeps: TF32 runs in the CUDA tests only (the flags set and restored, one small module)",
    "`--channels-last`, `--autocast` and more than one GPU",
)


#: What attnbench and its tests import, by import name: setup checks each is there once the wheels are in.
NEEDED = (
    "fvcore", "thop", "typer", "rich", "pandas", "tabulate", "onnx", "onnxruntime", "onnxscript", "matplotlib",
    "pytest", "hypothesis",
)  # fmt: skip


class CheckFailed(Exception):
    """A check whose figures miss their target; the message is the one-line reason."""


def _cuda_or_none() -> str | None:
    """Why there is no usable CUDA device, or None when there is one."""
    import torch

    if not torch.backends.cuda.is_built():
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    return None


def setup(wheels: Path, site: Path) -> int:
    """Check for a CUDA torch, install the carried wheels into `site` from `wheels` (no network), check imports."""
    import torch

    if not (torch.backends.cuda.is_built() and torch.cuda.is_available()):
        print(
            f"{PREFIX}: {sys.executable} has no usable CUDA torch (torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}, a GPU seen: {torch.cuda.is_available()}): this check installs none "
            "(docs/gpu-check.md)",
            file=sys.stderr,
        )
        return 1
    carried = sorted(wheels.glob("*.whl"))
    if carried:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        pip += ["--no-cache-dir", "--upgrade", "--target", str(site), *map(str, carried)]
        if subprocess.run(pip, check=False).returncode != 0:
            print(f"{PREFIX}: installing the carried wheels from {wheels} failed (above)", file=sys.stderr)
            return 1
    # A fresh interpreter: it finds what was just installed on the PYTHONPATH this script runs under.
    probe = "import importlib.util as u, sys; sys.exit(' '.join(m for m in sys.argv[1:] if not u.find_spec(m)))"
    missing = subprocess.run([sys.executable, "-c", probe, *NEEDED], capture_output=True, text=True, check=False)
    if missing.returncode != 0:
        print(
            f"{PREFIX}: missing: {missing.stderr.strip()}; run benchmarks/gpu_check.sh --prepare where there is "
            f"network and carry {wheels}/ ({len(carried)} wheels here)",
            file=sys.stderr,
        )
        return 1
    import onnxruntime

    print(
        f"{PREFIX}: torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name()}; "
        f"onnxruntime {onnxruntime.__version__} with {onnxruntime.get_available_providers()}; "
        f"{len(carried)} carried wheels in {site}"
    )
    return 0


def timing_agreement(case: dict[str, int], rounds: int, min_run_time: float) -> dict[str, Any]:
    """attnbench's CUDA median against Timer's blocked_autorange median, interleaved, on the same GPU copy."""
    import torch
    from torch.utils.benchmark import Timer

    import attnbench

    module = attnbench.build(case["module"], case["dim"], case["res"])
    shape = (case["batch"], case["dim"], case["res"], case["res"])
    budget = attnbench.TimingBudget(min_run_time=min_run_time)
    ours: list[float] = []
    theirs: list[float] = []
    # The backend's prepared case (internals): Timer calls the same GPU copy of the module on the same input.
    with attnbench.get_backend("cuda").prepare(module, shape, attnbench.Scenario()) as prepared:

        def forward() -> Any:
            # One call to its end on the GPU: attnbench's definition of a CUDA call's latency.
            with torch.inference_mode():
                out = prepared.module(prepared.x)
            torch.cuda.synchronize()
            return out

        for _ in range(10):  # Timer's own warm-up is one call: warm cuDNN's autotuning first
            forward()
        for r in range(rounds):
            for who in ("ours", "timer") if r % 2 == 0 else ("timer", "ours"):
                if who == "ours":
                    ours.append(prepared.time(budget).median_s)
                else:
                    timer = Timer(stmt="forward()", globals={"forward": forward})
                    theirs.append(timer.blocked_autorange(min_run_time=min_run_time).median)
    ratio = statistics.median(ours) / statistics.median(theirs)
    return {
        **case,
        "attnbench_medians_s": ours,
        "timer_medians_s": theirs,
        "ratio_of_medians": ratio,
        "tolerance": TIMING_TOLERANCE,
        "agree": abs(ratio - 1) <= TIMING_TOLERANCE,
    }


def direct_peak(fn: Any) -> int:
    """The allocator protocol run by hand: sync, base, reset peak, call, sync, max_memory_allocated - base."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def memory_truth() -> list[dict[str, Any]]:
    """attnbench's CUDA peak against the hand-run protocol (and, for the Linear, its output's bytes)."""
    import torch
    from torch import nn

    import attnbench
    from attnbench.backends.cuda import restore_tf32, set_tf32

    checks = []
    linear = nn.Linear(LINEAR_SHAPE[1], LINEAR_SHAPE[1])
    case = MEMORY_MODULE_CASE
    zoo = attnbench.build(case["module"], case["dim"], case["res"])
    zoo_shape = (case["batch"], case["dim"], case["res"], case["res"])
    for name, module, shape, expected in (
        (f"Linear(4096, 4096) on {LINEAR_SHAPE}", linear, LINEAR_SHAPE, LINEAR_PEAK_BYTES),
        (f"{case['module']} C={case['dim']} {case['res']}x{case['res']}", zoo, zoo_shape, None),
    ):
        ours = attnbench.measure(module, shape, backend="cuda", metrics=("memory",)).peak_bytes
        gpu = module.to("cuda").eval()
        x = torch.randn(shape, device="cuda")
        # The settings attnbench's cuda backend runs under (TF32 off, cuDNN autotuning), so both pick the same kernels.
        tf32, benchmark = set_tf32(False), torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            with torch.inference_mode():
                gpu(x)  # warm: cuBLAS workspace and cuDNN plans are allocated on the first call
                direct = direct_peak(functools.partial(gpu, x))
        finally:
            restore_tf32(tf32)
            torch.backends.cudnn.benchmark = benchmark
        checks.append(
            {
                "case": name,
                "attnbench_bytes": ours,
                "direct_bytes": direct,
                "analytic_bytes": expected,
                "exact": ours == direct and (expected is None or ours == expected),
            }
        )
        del gpu, x
        torch.cuda.empty_cache()
    return checks


def check(out: Path) -> int:
    """Run the timing and memory checks, write their figures to `out`; 0 pass or skipped, 1 a check failed."""
    missing = _cuda_or_none()
    if missing:
        print(f"{PREFIX}: skipped: no CUDA GPU ({missing}); nothing checked", file=sys.stderr)
        return 0
    import torch

    record: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        record["timing"] = timing_agreement(TIMING_CASE, TIMING_ROUNDS, TIMING_MIN_RUN_TIME)
        record["memory"] = memory_truth()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        _verdict(record)
    except CheckFailed as exc:
        print(f"{PREFIX}: FAILED: {exc}", file=sys.stderr)
        return 1
    t = record["timing"]
    print(f"{PREFIX}: timing within {TIMING_TOLERANCE:.0%} (ratio {t['ratio_of_medians']:.4f}); memory exact")
    return 0


def _verdict(record: dict[str, Any]) -> None:
    """Raise CheckFailed naming the first check that missed its target."""
    t = record["timing"]
    if not t["agree"]:
        raise CheckFailed(
            f"timing: attnbench {statistics.median(t['attnbench_medians_s']) * 1e3:.4g} ms vs "
            f"torch.utils.benchmark {statistics.median(t['timer_medians_s']) * 1e3:.4g} ms "
            f"({t['ratio_of_medians'] - 1:+.1%}, limit {TIMING_TOLERANCE:.0%}) on {t['module']} C={t['dim']} "
            f"{t['res']}x{t['res']} B={t['batch']}"
        )
    for m in record["memory"]:
        if not m["exact"]:
            raise CheckFailed(
                f"memory: {m['case']}: attnbench {m['attnbench_bytes']} B, max_memory_allocated "
                f"{m['direct_bytes']} B" + (f", analytic {m['analytic_bytes']} B" if m["analytic_bytes"] else "")
            )


# ---------------------------------------------------------------- summary


def summary(steps: Path, report: Path, checks: Path | None, out: Path) -> int:
    """Write the short Markdown summary of a gpu_check.sh run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import attnbench
    from attnbench.env import machine_label

    lines = ["# GPU check", "", "Written by `benchmarks/gpu_check.sh`.", ""]
    loaded = attnbench.load_results(report) if report.exists() else None
    if loaded is not None:
        env = next(iter(loaded.env.get("machines", {}).values()), loaded.env)
        lines += [f"Machine: {machine_label(env)}; GPU driver {env.get('gpu_driver')}, CUDA {env.get('cuda')}.", ""]
    lines += ["| step | status | seconds | note |", "|---|---|---:|---|"]
    with steps.open() as handle:
        for row in csv.reader(handle, delimiter="\t"):
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    lines.append("")
    if loaded is not None:
        lines += _result_counts(loaded.results, report.name)
    if checks is not None and checks.exists():
        lines += _check_lines(json.loads(checks.read_text()))
    lines += _not_checked(loaded.env if loaded is not None else None)
    out.write_text("\n".join(lines) + "\n")
    return 0


def _not_checked(env: dict[str, Any] | None) -> list[str]:
    """What this run could not check: the GPU backends that were unavailable (with why), and NOT_COVERED."""
    recorded = (env or {}).get("available_backends") or {}
    if not recorded:  # no report was written: ask this machine
        from attnbench.backends import available_backends  # torch: only the summary of a run without a report

        recorded = available_backends()
    lines = ["## Not checked", ""]
    for name in ("cuda", "ort-cuda"):
        entry = recorded.get(name) or {}
        if not entry.get("available"):
            lines.append(f"- `{name}`: unavailable here, its rows are `skipped`: {entry.get('reason', 'not recorded')}")
    lines += [f"- {item}" for item in NOT_COVERED]
    return [*lines, ""]


def _result_counts(rows: Sequence[Any], name: str) -> list[str]:
    """Rows per backend, dtype and mode with their statuses, then the first failures with reasons."""
    counts = Counter((r.backend, r.scenario.dtype, r.scenario.mode, r.status) for r in rows)
    lines = [f"`{name}`: {len(rows)} rows.", ""]
    lines += ["| backend | dtype | mode | status | rows |", "|---|---|---|---|---:|"]
    lines += [f"| {b} | {d} | {m} | {s} | {n} |" for (b, d, m, s), n in sorted(counts.items())]
    timed = [r for r in rows if r.latency_launch_bound is not None]
    if timed:
        bound = sum(bool(r.latency_launch_bound) for r in timed)
        lines += ["", f"Launch-bound (`L`: the GPU busy for under half the call): {bound} of {len(timed)} timed rows."]
    bad = [r for r in rows if r.status not in ("ok", "invalid")]
    if bad:
        lines += ["", "First cases that did not complete:", ""]
        lines += [
            f"- {r.module} {r.height}x{r.width} {r.backend} {r.scenario.dtype} {r.scenario.mode}: "
            f"{r.status}: {r.reason}"
            for r in bad[:10]
        ]
    return [*lines, ""]


def _check_lines(record: dict[str, Any]) -> list[str]:
    t = record.get("timing", {})
    lines = ["## Checks", ""]
    if t:
        lines.append(
            f"- timing, {t['module']} C={t['dim']} {t['res']}x{t['res']} B={t['batch']}: attnbench over "
            f"torch.utils.benchmark = {t['ratio_of_medians']:.4f} over {len(t['timer_medians_s'])} interleaved rounds "
            f"(limit +-{t['tolerance']:.0%}): {'pass' if t['agree'] else 'FAIL'}"
        )
    for m in record.get("memory", []):
        lines.append(
            f"- memory, {m['case']}: attnbench {m['attnbench_bytes']:,} B, max_memory_allocated {m['direct_bytes']:,} B"
            + (f", analytic {m['analytic_bytes']:,} B" if m["analytic_bytes"] else "")
            + f": {'exact' if m['exact'] else 'DIFFERS'}"
        )
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the subcommand and run it."""
    parser = argparse.ArgumentParser(prog=PREFIX, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    u = sub.add_parser("setup", help="check the CUDA torch, install the carried wheels, check the imports")
    u.add_argument("--wheels", type=Path, default=Path(".gpu-wheels"))
    u.add_argument("--site", type=Path, required=True)
    c = sub.add_parser("check", help="timing and memory checks (needs a CUDA GPU)")
    c.add_argument("--out", type=Path, default=Path("results/gpu_check.json"))
    s = sub.add_parser("summary", help="the Markdown summary of a gpu_check.sh run")
    s.add_argument("--steps", type=Path, required=True)
    s.add_argument("--report", type=Path, required=True)
    s.add_argument("--checks", type=Path)
    s.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "setup":
        return setup(args.wheels, args.site)
    if args.command == "check":
        return check(args.out)
    return summary(args.steps, args.report, args.checks, args.out)


if __name__ == "__main__":
    sys.exit(main())
