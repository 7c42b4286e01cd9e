"""Which ONNX exporter should attnbench use? Export time against the ORT latency of the graph it writes.

ONNX export is the largest cost of `compare --all` after timing (results/cli_overhead.md), and torch 2.13 has
three ways to make the graph: torch.onnx.export(dynamo=True) with its onnxscript optimizer (attnbench's
choice), the same without the optimizer (optimize=False), and the TorchScript exporter (dynamo=False,
deprecated). A faster exporter is only a win if its graph runs as fast: ORT's latency is the number a
user ships. For every registered module at C=64, in one process (1 thread):
  * export time of each at 28x28 (batch 2, as attnbench exports; after one throwaway export of each kind, so
    no module pays an exporter's set-up), and parity with PyTorch there;
  * ORT latency of each graph at 28 and 56 (batch 1, 1 intra-op thread), the graphs' sessions timed in
    alternation (blocks of 5 calls, round robin, for ROUND_S seconds), so the machine's slow and fast
    phases fall on all of them alike; the ratio to the dynamo graph's median is what counts.

Writes results/exporter_choice.md and .json. Run: python benchmarks/exporter_choice.py [--markdown-only]
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine_load import busy_cores  # noqa: E402

import attnbench  # noqa: E402
from attnbench import InvalidCaseError  # noqa: E402

# The ORT backend's own parts (internals): its session options and exporter set-up, so that each graph is
# exported and run as attnbench's backend would.
from attnbench.backends import ort as ort_backend  # noqa: E402
from attnbench.capture import captured  # noqa: E402
from attnbench.env import environment  # noqa: E402

DIM = 64
EXPORTERS = ("dynamo", "dynamo, optimize=False", "legacy (dynamo=False)")
SIDES = (28, 56)
ROUND_S = 3.0


def export(module: torch.nn.Module, side: int, path: Path, exporter: str) -> float:
    """Export `module` at side x side (batch 2, dynamic batch) with `exporter`; seconds taken."""
    x = torch.randn(2, DIM, side, side)
    started = time.perf_counter()
    with captured(), torch.no_grad():
        if exporter.startswith("legacy"):
            axes = {"x": {0: "batch"}, "y": {0: "batch"}}
            torch.onnx.export(
                module, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes=axes
            )
        else:
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=True,
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                optimize=exporter == "dynamo",
            )
    return time.perf_counter() - started


def parity(path: Path, module: torch.nn.Module, side: int) -> float:
    """Largest |ORT - PyTorch| on one random input."""
    x = torch.randn(1, DIM, side, side)
    session = ort.InferenceSession(str(path), ort_backend.session_options(1), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = module(x).numpy()
    return float(np.abs(session.run(None, {"x": x.numpy()})[0] - want).max())


def latencies(paths: dict[str, Path], side: int) -> dict[str, float]:
    """Median per-call ORT latency of each graph, their sessions timed round robin in blocks of 5 calls."""
    feed = {"x": torch.randn(1, DIM, side, side).numpy()}
    sessions = {
        k: ort.InferenceSession(str(p), ort_backend.session_options(1), providers=["CPUExecutionProvider"])
        for k, p in paths.items()
    }
    for s in sessions.values():
        for _ in range(10):
            s.run(None, feed)
    blocks: dict[str, list[float]] = {k: [] for k in sessions}
    started = time.perf_counter()
    while time.perf_counter() - started < ROUND_S or min(len(b) for b in blocks.values()) < 6:
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(5):
                s.run(None, feed)
            blocks[k].append((time.perf_counter() - t0) / 5)
    return {k: statistics.median(b) for k, b in blocks.items()}


def measure_module(name: str, tmp: Path) -> dict[str, Any]:
    """Export times, parity and per-side latencies of one module under every exporter."""
    row: dict[str, Any] = {"module": name, "export_s": {}, "parity": {}, "latency_s": {}}
    for side in SIDES:
        try:
            attnbench.validate(name, DIM, side)
        except InvalidCaseError:
            continue
        torch.manual_seed(0)
        module = attnbench.build(name, DIM, side).eval()
        paths = {}
        for i, exporter in enumerate(EXPORTERS):
            path = tmp / f"{name}-{side}-{i}.onnx"
            seconds = export(module, side, path, exporter)
            if side == SIDES[0]:
                row["export_s"][exporter] = seconds
                row["parity"][exporter] = parity(path, module, side)
            paths[exporter] = path
        row["latency_s"][str(side)] = latencies(paths, side)
        print(
            f"{name} {side}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in row["latency_s"][str(side)].items()),
            file=sys.stderr,
            flush=True,
        )
    return row


def _as_markdown(text: str) -> str:
    """A docstring paragraph as Markdown: its `  * ` items become list items, wrapped lines are joined."""
    text = re.sub(r"\n  \* ", "\n\n- ", text)
    return re.sub(r"\n(?!\n|- )\s*", " ", text)


def write_markdown(data: dict[str, Any]) -> None:
    """results/exporter_choice.md."""
    env = data["env"]
    lines = [
        "# ONNX exporter: export time against the latency of the graph it writes",
        "",
        f"Measured {env['date_utc']} on {env['cpu_model']} ({env['logical_cores']} logical cores; "
        f"{data['busy_cores']:.2f} cores busy machine-wide at the start), torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}, onnxscript {data['onnxscript']}; "
        f"`python benchmarks/exporter_choice.py`, {data['wall_s']:.0f} s.",
        "",
        _as_markdown(__doc__.split("\n\n")[1].replace("ROUND_S", f"{ROUND_S:g}")),
        "",
        f"Export seconds at {SIDES[0]}x{SIDES[0]}, and each graph's ORT median over the dynamo graph's:",
        "",
        "| module | "
        + " | ".join(f"export: {e} [s]" for e in EXPORTERS)
        + " | "
        + " | ".join(f"{e} / dynamo at {s}x{s}" for s in SIDES for e in EXPORTERS[1:])
        + " |",
        "|---|" + "---:|" * (len(EXPORTERS) + len(SIDES) * (len(EXPORTERS) - 1)),
    ]
    worst = {e: 1.0 for e in EXPORTERS[1:]}
    totals = {e: 0.0 for e in EXPORTERS}
    for r in data["rows"]:
        cells = [f"{r['export_s'][e]:.2f}" for e in EXPORTERS]
        for e in EXPORTERS:
            totals[e] += r["export_s"][e]
        for s in SIDES:
            lat = r["latency_s"].get(str(s))
            for e in EXPORTERS[1:]:
                if lat is None:
                    cells.append("-")
                    continue
                ratio = lat[e] / lat["dynamo"]
                worst[e] = max(worst[e], ratio)
                cells.append(f"{ratio:.3f}")
        lines.append(f"| {r['module']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "All exports: " + ", ".join(f"{e} {totals[e]:.1f} s" for e in EXPORTERS) + ". Slowest graph against "
        "dynamo's: "
        + ", ".join(f"{e} {worst[e]:.2f}x" for e in EXPORTERS[1:])
        + ". Largest |ORT - PyTorch|: "
        + ", ".join(f"{e} {max(r['parity'][e] for r in data['rows']):.1e}" for e in EXPORTERS)
        + ".",
        "",
        "attnbench keeps the dynamo exporter with its optimizer: the faster exports write graphs that run slower "
        "in ONNX Runtime, and a latency that depends on which exporter the benchmark happened to use is not the "
        "module's.",
        "",
    ]
    (ROOT / "results" / "exporter_choice.md").write_text("\n".join(lines))


def main() -> None:
    """Measure every registered module, write the report."""
    import onnxscript

    ort_backend._reuse_torchlib_registry()
    torch.set_num_threads(1)
    started, busy = time.perf_counter(), busy_cores()
    with tempfile.TemporaryDirectory() as tmp:
        for i, exporter in enumerate(EXPORTERS):  # set-up (imports, registries) outside the figures
            export(torch.nn.Conv2d(DIM, DIM, 1), SIDES[0], Path(tmp) / f"warm{i}.onnx", exporter)
        rows = [measure_module(name, Path(tmp)) for name in attnbench.list_modules()]
    rows = [r for r in rows if r["export_s"]]
    data = {
        "rows": rows,
        "busy_cores": busy,
        "wall_s": time.perf_counter() - started,
        "env": environment(),
        "onnxscript": onnxscript.__version__,
    }
    (ROOT / "results" / "exporter_choice.json").write_text(json.dumps(data, default=str))
    write_markdown(data)


def rewrite() -> None:
    """Re-render results/exporter_choice.md from its .json (no measuring)."""
    write_markdown(json.loads((ROOT / "results" / "exporter_choice.json").read_text()))


if __name__ == "__main__":
    rewrite() if "--markdown-only" in sys.argv else main()
