"""Does the regression gate pass an unchanged checkout every time and catch deliberate changes every time?

1. A baseline is written with the CI command (`attnbench compare --all` at C=64, 16x16 and 32x32, cpu, ort).
2. The gate runs N times against it on the unchanged checkout (each run a fresh process): it must pass.
3. Deliberate changes, each in a fresh process that patches one module before calling the CLI:
   - "extra-layer": lka gets one more 1x1 conv (params and MACs change): the gate must fail;
   - "slow30": the slowest case's module sleeps 30% of its baseline median in every forward: must fail.
Writes results/gate_stability.md and .json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Exactly the gate of .ci/run (cpu and ort, 0.2 s timed per case).
CI_ARGS = [
    "compare",
    "--all",
    "--dim",
    "64",
    "--res",
    "16",
    "--res",
    "32",
    "--backend",
    "cpu",
    "--backend",
    "ort",
    "--min-run-time",
    "0.2",
    "--quiet",
]


def child(mode: str, target: str, delay: float, argv: list[str]) -> int:
    """Patch the zoo as `mode` says, then run the CLI in this process."""
    import torch

    from attnbench import registry
    from attnbench.cli import main

    spec = registry.get_spec(target)
    if mode == "extra-layer":

        def build_more(dim, res, **kw):  # type: ignore[no-untyped-def]
            return torch.nn.Sequential(spec.builder(dim, res, **kw), torch.nn.Conv2d(dim, dim, 1))

        registry._REGISTRY[target] = type(spec)(**{**spec.__dict__, "builder": build_more})
    elif mode == "slow30":

        class Slow(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                time.sleep(delay)
                return self.inner(x)

        def build_slow(dim, res, **kw):  # type: ignore[no-untyped-def]
            return Slow(spec.builder(dim, res, **kw))

        registry._REGISTRY[target] = type(spec)(**{**spec.__dict__, "builder": build_slow})
    return main(argv)


def run_gate(mode: str, baseline: Path, target: str = "lka", delay: float = 0.0) -> tuple[int, float]:
    """One gate run in a fresh process; its exit code and wall time."""
    started = time.perf_counter()
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--target",
        target,
        "--delay",
        str(delay),
        "--",
        *CI_ARGS,
        "--baseline",
        str(baseline),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"gate run crashed ({done.returncode}): {done.stderr[-2000:]}")
    return done.returncode, time.perf_counter() - started


def main() -> None:
    """Baseline, N unchanged runs, deliberate changes; write the record."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--changed-runs", type=int, default=5)
    args = parser.parse_args()
    from attnbench import results as R
    from attnbench.env import environment

    tmp = Path(tempfile.mkdtemp())
    baseline = tmp / "baseline.csv"
    subprocess.run(["attnbench", *CI_ARGS, "-o", str(baseline)], check=True, cwd=ROOT, capture_output=True)
    rows = [r for r in R.load(baseline).results if r.ok and r.latency_median_s]
    slowest = max(rows, key=lambda r: r.latency_median_s or 0.0)
    delay = 0.3 * float(slowest.latency_median_s)  # type: ignore[arg-type]
    unchanged = [run_gate("plain", baseline) for _ in range(args.runs)]
    extra = [run_gate("extra-layer", baseline, "lka") for _ in range(args.changed_runs)]
    slow = [run_gate("slow30", baseline, slowest.module, delay) for _ in range(args.changed_runs)]
    env = environment()
    record = {
        "ci_args": CI_ARGS,
        "unchanged_passed": sum(code == 0 for code, _ in unchanged),
        "unchanged_runs": len(unchanged),
        "extra_layer_failed": sum(code == 1 for code, _ in extra),
        "extra_layer_runs": len(extra),
        "slow30_module": slowest.module,
        "slow30_case": f"{slowest.height}x{slowest.width}",
        "slow30_baseline_median_s": slowest.latency_median_s,
        "slow30_failed": sum(code == 1 for code, _ in slow),
        "slow30_runs": len(slow),
        "mean_run_s": sum(t for _, t in unchanged) / max(1, len(unchanged)),
        "env": env,
    }
    (ROOT / "results" / "gate_stability.json").write_text(json.dumps(record, indent=2, default=str))
    lines = [
        "# Regression gate: stability on an unchanged checkout, sensitivity to deliberate changes",
        "",
        f"Measured {env.get('date_utc', '')} on {env.get('cpu_model')} ({env.get('logical_cores')} logical "
        f"cores), torch {env.get('torch')}; `python benchmarks/gate_stability.py`. Each gate run is a fresh "
        f"process: `attnbench {' '.join(CI_ARGS)} --baseline BASELINE` against a baseline written once by the "
        "same command.",
        "",
        "| scenario | runs | expected | result |",
        "|---|---:|---|---:|",
        f"| unchanged checkout | {record['unchanged_runs']} | pass | **{record['unchanged_passed']} passed** |",
        f"| lka + one more 1x1 conv (params and MACs change) | {record['extra_layer_runs']} | fail | "
        f"**{record['extra_layer_failed']} failed** |",
        f"| {slowest.module} made 30% slower (sleep of {delay * 1e3:.2f} ms = 30% of its "
        f"{slowest.height}x{slowest.width} baseline median per call) | {record['slow30_runs']} | fail | "
        f"**{record['slow30_failed']} failed** |",
        "",
        f"Mean wall time of one gate run: {record['mean_run_s']:.1f} s.",
        "",
    ]
    (ROOT / "results" / "gate_stability.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    if "--child" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--child")
        ap.add_argument("--target")
        ap.add_argument("--delay", type=float)
        ns, rest = ap.parse_known_args()
        sys.exit(child(ns.child, ns.target, ns.delay, [a for a in rest if a != "--"]))
    main()
