"""How much of `attnbench compare --all` is measuring, and how it compares with a hand-written script.

Runs, one after the other in fresh processes: `attnbench compare --all` at its defaults, and
benchmarks/user_script.py (the same cases with fvcore, thop, torch.onnx.export, onnxruntime and
torch.utils.benchmark by hand). Each attnbench row records the seconds spent inside its timing protocol
(warm-up + timed blocks); everything else (imports, building, counting, exporting, parity, reporting) is
overhead. Writes results/cli_overhead.md and .json.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attnbench import results as R  # noqa: E402
from attnbench.env import environment  # noqa: E402

OVERHEAD_TARGET = 0.25


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall time of a command run to completion, and its stdout."""
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    """Measure both, write the report."""
    tmp = Path(tempfile.mkdtemp())
    csv = tmp / "compare.csv"
    wall, _ = timed(["attnbench", "compare", "--all", "-o", str(csv), "--quiet"])
    rows = R.load(csv).results
    loops = sum(json.loads(r.extra).get("timing_loop_s", 0.0) for r in rows if r.extra)
    measured = sum(1 for r in rows if r.ok)
    user_wall, out = timed([sys.executable, str(ROOT / "benchmarks" / "user_script.py")])
    inner = float(re.search(r"wall_s=([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    overhead = (wall - loops) / wall
    env = environment()
    figures = {
        "attnbench_wall_s": wall,
        "attnbench_timing_loops_s": loops,
        "attnbench_overhead_fraction": overhead,
        "rows_ok": measured,
        "rows_total": len(rows),
        "user_script_wall_s": user_wall,
        "user_script_inner_s": inner,
        "attnbench_over_user_script": wall / user_wall,
        "env": env,
    }
    (ROOT / "results" / "cli_overhead.json").write_text(json.dumps(figures, indent=2, default=str))
    lines = [
        "# Overhead of `attnbench compare --all` (defaults: C=64 at 14, 28, 56; cpu and ort; 1 thread; 1 s timed)",
        "",
        f"Measured {env.get('date_utc', '')} on {env.get('cpu_model')} ({env.get('logical_cores')} logical cores), "
        f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}; `python benchmarks/cli_overhead.py`.",
        "",
        "| what | value |",
        "|---|---:|",
        f"| attnbench compare --all, wall (fresh process, imports included) | {wall:.1f} s |",
        f"| of which inside timing loops (warm-up + timed blocks, summed over {measured} measured rows) "
        f"| {loops:.1f} s |",
        f"| overhead: building, counting (3 counters), exporting + parity, reporting | {wall - loops:.1f} s "
        f"= **{overhead:.1%}** (target < {OVERHEAD_TARGET:.0%}: {'met' if overhead < OVERHEAD_TARGET else 'MISSED'}) |",
        f"| hand-written script, same cases (fvcore, thop, export, ORT, Timer at 1 s), wall | {user_wall:.1f} s |",
        f"| attnbench / hand-written script | **{wall / user_wall:.2f}** (target <= 1: "
        f"{'met' if wall <= user_wall else 'MISSED'}) |",
        "",
        "attnbench does more per case than the script (its own counter, CPU peak memory, ORT parity at two "
        "batch sizes, reports); it saves time by exporting through a per-process cache of the ONNX exporter's "
        "op registry and by counting on the meta device where the counter allows.",
        "",
    ]
    (ROOT / "results" / "cli_overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
