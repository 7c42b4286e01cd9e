"""How fast the commands a person types to look around answer: --version, list, info, env (target < 0.5 s).

Each command runs in a fresh process, REPEATS times, interleaved with `python -c pass` (the interpreter's own
start-up on this machine), after one warm-up call that fills the zoo catalog cache. The shared 2-core VM is
noisy, so the minimum is the figure that says what the code costs; the median says what a person waits. Also
records which heavy libraries each command imported (none is the goal). Writes results/quick_commands.md and
.json.
"""

from __future__ import annotations

import json
import os
import resource
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


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) a fresh process takes to run `argv` to completion.

    On a busy machine the wall time includes waiting for a core; the CPU time is what the command costs,
    and what its wall time is on an idle core (each of these commands runs on one thread).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


#: typer alone, parsing one flag: the floor under every command (typer builds its parsers with pydantic).
TYPER_FLOOR = (
    "import typer\napp = typer.Typer()\n@app.command()\ndef f(x: bool = False) -> None:\n    pass\n"
    "app(['--x'], standalone_mode=False)\n"
)


def main() -> None:
    """Time every command, the bare interpreter and typer alone, interleaved; write the report."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATTNBENCH_CACHE_DIR": tempfile.mkdtemp(), "COLUMNS": "120"}
    base = [sys.executable, "-m", "attnbench.cli"]
    run([*base, "list"], env)  # the first call after an edit builds the catalog cache (imports torch)
    references = {"python -c pass": [sys.executable, "-c", "pass"], "typer alone": [sys.executable, "-c", TYPER_FLOOR]}
    programs = {**{" ".join(c): [*base, *c] for c in COMMANDS}, **references}
    walls: dict[str, list[float]] = {name: [] for name in programs}
    cpus: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(REPEATS):
        for name, argv in programs.items():
            w, c = run(argv, env)
            walls[name].append(w)
            cpus[name].append(c)
    imported = {}
    for command in COMMANDS:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, *command], env=env, capture_output=True, text=True, check=True, cwd=ROOT
        )
        imported[" ".join(command)] = json.loads(done.stderr.strip().splitlines()[-1])
    record = static_environment()
    load = os.getloadavg()
    figures = {
        "wall_s": walls,
        "cpu_s": cpus,
        "min_wall_s": {k: min(v) for k, v in walls.items()},
        "median_wall_s": {k: statistics.median(v) for k, v in walls.items()},
        "min_cpu_s": {k: min(v) for k, v in cpus.items()},
        "heavy_imports": imported,
        "load_average": load,
        "target_s": TARGET_S,
        "env": record,
    }
    (ROOT / "results" / "quick_commands.json").write_text(json.dumps(figures, indent=2, default=str))
    lines = [
        "# How fast the quick commands answer (target < 0.5 s)",
        "",
        f"Measured {record['date_utc']} on {record['cpu_model']} ({record['logical_cores']} logical cores, shared: "
        f"load average {load[0]:.1f} during the run), Python {record['python']}; "
        f"`python benchmarks/quick_commands.py`: each program in a fresh process, {REPEATS} times, interleaved, "
        "after one call that fills the zoo catalog cache.",
        "",
        "CPU time (user + system) is what a command costs and its wall time on an idle core (each runs on one "
        "thread); the wall time here includes waiting for a core on the busy machine.",
        "",
        "| program | CPU [s], min | wall [s], min | wall [s], median | heavy libraries imported | target (CPU) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name in programs:
        mine = name in imported
        heavy = (", ".join(imported[name]) or "none") if mine else ""
        met = ("met" if figures["min_cpu_s"][name] < TARGET_S else "MISSED") if mine else ""
        lines.append(
            f"| `{'attnbench ' + name if mine else name}` | {figures['min_cpu_s'][name]:.3f} | "
            f"{figures['min_wall_s'][name]:.3f} | {figures['median_wall_s'][name]:.3f} | {heavy} | {met} |"
        )
    lines += [
        "",
        "None of the commands imports torch, ONNX, matplotlib, pandas or numpy: `list` and `info` read the zoo's "
        "metadata from a cache keyed by a hash of attnbench's source (rebuilt, with torch, after an edit), `env` "
        "reads package metadata (`env --probe` imports and measures), and `--version` answers before typer "
        "builds its parsers. What is left is the interpreter and typer (which builds its parsers with pydantic).",
        "",
    ]
    (ROOT / "results" / "quick_commands.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
