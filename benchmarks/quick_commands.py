"""How fast the commands a person types to look around answer: --version, list, info, env (target < 0.5 s).

Each command runs in a fresh process, REPEATS times, interleaved with `python -c pass` (the interpreter's own
start-up on this machine), after one warm-up call that fills the zoo catalog cache. The shared 2-core VM is
noisy, so the minimum is the figure that says what the code costs; the median says what a person waits. Also
records which heavy libraries each command imported (none is the goal). Writes results/quick_commands.md and
.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attnbench.env import static_environment  # noqa: E402

TARGET_S = 0.5
REPEATS = 9
COMMANDS = [["--version"], ["list"], ["info", "clo"], ["env"], ["env", "--json"]]
HEAVY = ("torch", "onnx", "onnxruntime", "matplotlib", "pandas", "numpy")
PROBE = (
    "import json, sys; from attnbench.cli import main; main(sys.argv[1:]); "
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)"
)


def wall(argv: list[str], env: dict[str, str]) -> float:
    """Seconds a fresh process takes to run `argv` to completion."""
    started = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=True, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    """Time every command and the bare interpreter, interleaved; write the report."""
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTNBENCH_CACHE_DIR": tempfile.mkdtemp(), "COLUMNS": "120"}
    base = [sys.executable, "-m", "attnbench.cli"]
    wall([*base, "list"], env)  # the first call after an edit builds the catalog cache (imports torch)
    times: dict[str, list[float]] = {" ".join(c): [] for c in COMMANDS}
    times["python -c pass"] = []
    for _ in range(REPEATS):
        times["python -c pass"].append(wall([sys.executable, "-c", "pass"], env))
        for command in COMMANDS:
            times[" ".join(command)].append(wall([*base, *command], env))
    imported = {}
    for command in COMMANDS:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, *command], env=env, capture_output=True, text=True, check=True, cwd=ROOT
        )
        imported[" ".join(command)] = json.loads(done.stderr.strip().splitlines()[-1])
    record = static_environment()
    figures = {
        "seconds": times,
        "min_s": {k: min(v) for k, v in times.items()},
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "heavy_imports": imported,
        "target_s": TARGET_S,
        "env": record,
    }
    (ROOT / "results" / "quick_commands.json").write_text(json.dumps(figures, indent=2, default=str))
    lines = [
        "# How fast the quick commands answer (target < 0.5 s)",
        "",
        f"Measured {record['date_utc']} on {record['cpu_model']} ({record['logical_cores']} logical cores, shared "
        f"and noisy), Python {record['python']}; `python benchmarks/quick_commands.py`: each command in a fresh "
        f"process, {REPEATS} times, interleaved with the bare interpreter, after one call that fills the zoo "
        "catalog cache.",
        "",
        "| command | min [s] | median [s] | heavy libraries imported | target |",
        "|---|---:|---:|---|---|",
    ]
    for name in times:
        heavy = ", ".join(imported.get(name, [])) or ("none" if name in imported else "")
        met = "" if name not in imported else ("met" if figures["min_s"][name] < TARGET_S else "MISSED")
        lines.append(
            f"| `{'attnbench ' + name if name in imported else name}` | {figures['min_s'][name]:.3f} | "
            f"{figures['median_s'][name]:.3f} | {heavy} | {met} |"
        )
    lines += [
        "",
        "The bare interpreter's start-up is part of every command's time. The commands import typer and rich "
        "but not torch, ONNX, matplotlib, pandas or numpy: `list` and `info` read the zoo's metadata from a "
        "cache keyed by a hash of attnbench's source (rebuilt, with torch, after an edit), and `env` reads "
        "package metadata (`env --probe` imports and measures).",
        "",
    ]
    (ROOT / "results" / "quick_commands.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
