"""How fast and how lean counting is: every zoo module at dim 64, 56/112/224, attnbench counter on meta.

Writes results/counting_speed.md and .json (wall time, peak RSS, MACs against each module's analytic formula)
and results/counter_comparison.md (attnbench vs fvcore vs thop at dim 64, 56x56, plus mhsa at 14x14).
Targets: the whole sweep in < 30 s and < 1.5 GB peak RSS. Modules are built on the meta device, so even the
resolution-bound `da` at 224x224 (a Linear(50176, 50176), 10 GB of weights on a real device) costs nothing.

Run: python benchmarks/counting_speed.py [--out results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

T0 = time.perf_counter()

import torch  # noqa: E402

import attnbench  # noqa: E402
from attnbench import InvalidCaseError, count_macs  # noqa: E402

# The counters themselves (internals): all three on one module, and how far they agree, are what is measured.
from attnbench.counting import CONVENTION, count_all, cross_check  # noqa: E402

DIM = 64
RESOLUTIONS = (56, 112, 224)
COMPARE_RES = 56
TARGET_SECONDS = 30.0
TARGET_RSS_BYTES = int(1.5 * 1024**3)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def environment() -> dict[str, Any]:
    """Machine and versions the figures were taken on."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "attnbench": attnbench.__version__,
        "fvcore": version("fvcore"),
        "ultralytics-thop": version("ultralytics-thop"),
    }


def build(name: str, res: int, device: str) -> tuple[torch.nn.Module, str]:
    """Build a zoo module, on meta when possible (no weights allocated); returns (module, where built)."""
    if device == "meta":
        try:
            with torch.device("meta"):
                return attnbench.build(name, DIM, res), "meta"
        except InvalidCaseError:
            raise
        except Exception as exc:  # a builder that needs real data: build on the CPU instead
            return attnbench.build(name, DIM, res), f"cpu (meta build failed: {type(exc).__name__})"
    return attnbench.build(name, DIM, res), "cpu"


def speed_sweep() -> list[dict[str, Any]]:
    """Count every module at every resolution with the attnbench counter on meta."""
    rows: list[dict[str, Any]] = []
    for name in attnbench.list_modules():
        for res in RESOLUTIONS:
            row: dict[str, Any] = {"module": name, "dim": DIM, "res": res}
            try:
                spec, setting = attnbench.validate(name, DIM, res)
            except InvalidCaseError as exc:
                rows.append({**row, "status": "refused", "reason": str(exc)})
                continue
            t = time.perf_counter()
            module, built_on = build(name, res, "meta")
            row["build_s"] = time.perf_counter() - t
            report = count_macs(module, (1, DIM, res, res))
            formula = spec.macs_formula(setting)
            rows.append(
                {
                    **row,
                    "status": report.status,
                    "reason": report.reason,
                    "built_on": built_on,
                    "counted_on": report.device,
                    "count_s": report.seconds,
                    "macs": report.macs,
                    "formula_macs": formula,
                    "matches_formula": report.macs == formula,
                    "peak_live_bytes_estimate": report.peak_live_bytes_estimate,
                }
            )
            del module
    return rows


def comparison() -> list[dict[str, Any]]:
    """attnbench vs fvcore vs thop per module at dim 64, 56x56 (and mhsa at 14x14), modules built on the CPU."""
    cases = [(name, COMPARE_RES) for name in attnbench.list_modules()] + [("mhsa", 14)]
    rows = []
    for name, res in cases:
        try:
            spec, setting = attnbench.validate(name, DIM, res)
        except InvalidCaseError as exc:
            rows.append({"module": name, "res": res, "refused": str(exc)})
            continue
        module = attnbench.build(name, DIM, res)
        reports = count_all(module, (1, DIM, res, res))
        ratios = cross_check(reports)
        rows.append(
            {
                "module": name,
                "res": res,
                "formula_macs": spec.macs_formula(setting),
                "counters": {
                    r.counter: {
                        "macs": r.macs,
                        "ratio": ratios[r.counter],
                        "status": r.status,
                        "device": r.device,
                        "reason": r.reason,
                        "uncounted": {k: u.calls for k, u in r.uncounted.items()} if r.counter != "attnbench" else {},
                        "seconds": r.seconds,
                    }
                    for r in reports
                },
            }
        )
    return rows


def _m(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f} M"


def write_speed(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any], env: dict[str, Any]) -> None:
    """results/counting_speed.{json,md}."""
    payload = {"convention": CONVENTION, "environment": env, "summary": summary, "cases": rows}
    (out / "counting_speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Counting speed: attnbench counter on the meta device",
        "",
        f"Convention: {CONVENTION}. Every registered module at dim {DIM}, batch 1, resolutions "
        f"{', '.join(map(str, RESOLUTIONS))}; modules built on meta; `benchmarks/counting_speed.py`.",
        "",
        f"- total wall time (build + count, after imports): **{summary['total_wall_s']:.2f} s** "
        f"(target < {TARGET_SECONDS:.0f} s), of which one-time warm-up {summary['warmup_s']:.2f} s (the first "
        f"dispatch-mode count imports torch._dynamo) and counting {summary['count_s']:.2f} s; "
        f"imports before that {summary['import_s']:.2f} s",
        f"- peak RSS of the process: **{summary['peak_rss_bytes'] / 2**20:,.0f} MiB** "
        f"(target < {TARGET_RSS_BYTES / 2**30:.1f} GiB)",
        f"- cases counted: {summary['counted']}, refused by constraints: {summary['refused']}, "
        f"failed: {summary['failed']}, matching the module's analytic formula: "
        f"{summary['matches_formula']}/{summary['counted']}",
        "",
        "| module | res | MACs | formula | = | peak live act. (est.) | count s | counted on |",
        "|---|---:|---:|---:|:-:|---:|---:|---|",
    ]
    for r in rows:
        if r["status"] == "refused":
            lines.append(f"| {r['module']} | {r['res']} | refused: {r['reason']} | | | | | |")
            continue
        est = r["peak_live_bytes_estimate"]
        lines.append(
            f"| {r['module']} | {r['res']} | {_m(r['macs'])} | {_m(r['formula_macs'])} | "
            f"{'yes' if r['matches_formula'] else '**no**'} | "
            f"{'-' if est is None else f'{est / 2**20:,.1f} MiB'} | {r['count_s']:.3f} | {r['counted_on']} |"
        )
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    lines += [
        "",
        "The activation estimate sums storages of tensors created in the forward that are still referenced "
        "after each operator (dispatch level); it misses temporaries inside kernels.",
        "",
    ]
    (out / "counting_speed.md").write_text("\n".join(lines))


def write_comparison(out: Path, rows: list[dict[str, Any]], env: dict[str, Any]) -> None:
    """results/counter_comparison.md."""
    lines = [
        "# Counter comparison: attnbench vs fvcore vs ultralytics-thop",
        "",
        f'Convention: {CONVENTION} (fvcore\'s "flop" is one fused multiply-add, i.e. one MAC; thop reports '
        f"MACs). Dim {DIM}, batch 1, {COMPARE_RES}x{COMPARE_RES} (mhsa also at 14x14); ratio = counter / "
        "attnbench; rows off by more than 1% are marked with **bold** ratios.",
        "",
        "| module | res | attnbench | formula | fvcore | ratio | thop | ratio | fvcore unsupported ops |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def ratio(c: dict[str, Any]) -> str:
        r = c["ratio"]
        if r is None:
            return f"{c['status']}"
        text = f"{r:.4f}"
        return f"**{text}**" if abs(r - 1) > 0.01 else text

    notes = []
    for row in rows:
        if "refused" in row:
            lines.append(f"| {row['module']} | {row['res']} | refused: {row['refused']} | | | | | | |")
            continue
        c = row["counters"]
        ab, fv, th = c["attnbench"], c["fvcore"], c["thop"]
        unsupported = ", ".join(f"{k} x{n}" for k, n in sorted(fv["uncounted"].items())) or "-"
        lines.append(
            f"| {row['module']} | {row['res']} | {_m(ab['macs'])} | {_m(row['formula_macs'])} | "
            f"{_m(fv['macs'])} | {ratio(fv)} | {_m(th['macs'])} | {ratio(th)} | {unsupported} |"
        )
        for name in ("fvcore", "thop"):
            if c[name]["reason"] or not c[name]["device"].startswith("meta"):
                notes.append(
                    f"- {row['module']} @ {row['res']}, {name}: counted on {c[name]['device']}"
                    + (f"; {c[name]['reason']}" if c[name]["reason"] else "")
                )
    lines += [
        "",
        "Why they differ: fvcore has no rule for scaled-dot-product attention or elementwise products (it "
        "lists them as unsupported) and charges norms and adaptive average pooling; thop (2.x) counts layers by "
        "hook plus functional matmul/einsum/sdpa, charges norms, softmax modules and average pooling, and "
        "ignores elementwise products. attnbench counts convolutions, matrix products, attention and "
        "tensor-by-tensor products only, and lists everything else with element counts.",
        "",
        "## Per-counter notes",
        "",
        *notes,
        "",
        "## Environment",
        "",
        *[f"- {k}: {v}" for k, v in env.items()],
        "",
    ]
    (out / "counter_comparison.md").write_text("\n".join(lines))


def main() -> int:
    """Run the sweep and the comparison, write the results, and say whether the targets were met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "results")
    parser.add_argument("--skip-comparison", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import_s = time.perf_counter() - T0

    start = time.perf_counter()
    # The first dispatch-mode count in a process imports torch._dynamo (about 1.5 s): timed apart, kept in total.
    count_macs(torch.nn.Linear(2, 2), (1, 2))
    warmup = time.perf_counter() - start
    rows = speed_sweep()
    total = time.perf_counter() - start
    rss = peak_rss_bytes()  # read before the comparison, which runs real CPU forwards
    counted = [r for r in rows if r["status"] not in ("refused",)]
    summary = {
        "total_wall_s": total,
        "count_s": sum(r.get("count_s", 0.0) for r in counted),
        "import_s": import_s,
        "warmup_s": warmup,
        "peak_rss_bytes": rss,
        "counted": sum(r["status"] == "ok" for r in counted),
        "refused": sum(r["status"] == "refused" for r in rows),
        "failed": sum(r["status"] != "ok" for r in counted),
        "matches_formula": sum(bool(r.get("matches_formula")) for r in counted),
        "target_seconds": TARGET_SECONDS,
        "target_rss_bytes": TARGET_RSS_BYTES,
        "meets_targets": total < TARGET_SECONDS and rss < TARGET_RSS_BYTES,
    }
    env = environment()
    write_speed(args.out, rows, summary, env)
    print(
        f"sweep: {summary['counted']} counted, {summary['refused']} refused, {summary['failed']} failed, "
        f"{summary['matches_formula']} match their formula; {total:.2f} s, peak RSS {rss / 2**20:,.0f} MiB",
        file=sys.stderr,
    )
    if not args.skip_comparison:
        write_comparison(args.out, comparison(), env)
        print(f"wrote {args.out / 'counter_comparison.md'}", file=sys.stderr)
    return 0 if summary["meets_targets"] and summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
