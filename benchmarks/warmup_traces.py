"""How long must the warm-up be? Per-call traces from the first call, the evidence behind timing.py's warm-up.

For every case of `attnbench compare --all` (C=64 at 14, 28, 56; cpu and ort; 1 thread), in one process: the
module is built and prepared as the runner does (ORT: exported, session opened, parity run), then every call
is timed on its own, from the first, for TRACE_S seconds (at least MIN_TRACE_CALLS calls). Each candidate
warm-up rule (at least N calls and T seconds, optionally capped) is replayed on the trace: the calls after its
warm-up are grouped into attnbench's blocks and run through the adaptive stop rule, and the median it would
report is compared with the trace's steady state (the median of its last half). A rule is judged by the
seconds it spends warming up and by the cases whose median lands more than 3% off the steady state.

Writes results/warmup_traces.md and .json. Run: python benchmarks/warmup_traces.py [--replay]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing_defaults import cases, measure_or_replay  # noqa: E402

import attnbench  # noqa: E402
from attnbench import Scenario, TimingBudget  # noqa: E402

# The timing protocol's parts (internals): its blocks and stop rule are replayed on the traces.
from attnbench.timing import (  # noqa: E402
    BLOCK_TARGET_S,
    DEFAULT_MAX_RUN_TIME,
    DEFAULT_PRECISION,
    MIN_BLOCKS,
    quantile,
    stop_reason,
)

TRACE_S = 2.0
#: The adaptive stop rule at timing.py's defaults, without a floor.
DEFAULT_RULE = TimingBudget(min_run_time=0.0, max_run_time=DEFAULT_MAX_RUN_TIME, precision=DEFAULT_PRECISION)
MIN_TRACE_CALLS = 40
OFF = 0.03
#: (min calls, min seconds, cap seconds or None): the cap ends the warm-up once it has run this long and at
#: least 3 calls, however few calls that is.
RULES: tuple[tuple[int, float, float | None], ...] = (
    (0, 0.0, None),
    (1, 0.0, None),
    (3, 0.0, None),
    (3, 0.05, None),
    (3, 0.1, None),
    (10, 0.0, None),
    (10, 0.1, None),
    (10, 0.25, None),
    (10, 0.1, 0.5),
    (10, 0.05, 0.3),
    (5, 0.1, 0.3),
)


def trace(fn: Any, context: Any) -> list[float]:
    """Seconds of each call from the first one, for TRACE_S seconds and at least MIN_TRACE_CALLS calls."""
    out: list[float] = []
    with context:
        started = time.perf_counter()
        while len(out) < MIN_TRACE_CALLS or time.perf_counter() - started < TRACE_S:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def measure_all(limit: int | None) -> list[dict[str, Any]]:
    """One trace per case, each on a freshly built module (and a fresh ORT session)."""
    rows = []
    for name, side, backend in cases()[:limit]:
        torch.manual_seed(0)
        module = attnbench.build(name, 64, side).eval()
        # The backend's prepared case (internals): every call of the callable attnbench's loop times, from the first.
        with attnbench.get_backend(backend).prepare(module, (1, 64, side, side), Scenario(threads=1)) as prepared:
            fn, _sync = prepared.timed_callable()
            calls = trace(fn, prepared.timing_context())
        rows.append({"module": name, "res": side, "backend": backend, "calls": calls})
        print(
            f"{name} {side} {backend}: first {calls[0] * 1e3:.3f} ms, steady {steady(calls) * 1e3:.3f} ms",
            file=sys.stderr,
            flush=True,
        )
    return rows


def steady(calls: list[float]) -> float:
    """The trace's steady state: the median of its last half."""
    return quantile(sorted(calls[len(calls) // 2 :]), 0.5)


def warm_end(calls: list[float], rule: tuple[int, float, float | None]) -> int:
    """How many calls the warm-up rule takes on this trace."""
    min_calls, min_s, cap = rule
    spent = 0.0
    for i, c in enumerate(calls):
        if i >= min_calls and spent >= min_s:
            return i
        if cap is not None and i >= 3 and spent >= cap:
            return i
        spent += c
    return len(calls)


def replay(calls: list[float], start: int) -> float | None:
    """The median attnbench's blocks and stop rule would report from call `start` on (None: trace too short)."""
    rest = calls[start:]
    per_call_guess = max(quantile(sorted(rest[:5]), 0.5), 1e-9) if rest else 1.0
    cpb = max(1, round(BLOCK_TARGET_S / per_call_guess))
    blocks, total = [], 0.0
    for i in range(0, len(rest) - cpb + 1, cpb):
        block = sum(rest[i : i + cpb])
        blocks.append(block / cpb)
        total += block
        if stop_reason(blocks, total, DEFAULT_RULE, MIN_BLOCKS) is not None:
            return quantile(sorted(blocks), 0.5)
    return quantile(sorted(blocks), 0.5) if len(blocks) >= MIN_BLOCKS else None


def judge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rule replayed on every trace."""
    grid = []
    for rule in RULES:
        warm_s, off, worst, judged = 0.0, [], 0.0, 0
        for r in rows:
            n = warm_end(r["calls"], rule)
            warm_s += sum(r["calls"][:n])
            got = replay(r["calls"], n)
            if got is None:
                continue
            judged += 1
            dev = got / steady(r["calls"]) - 1
            worst = max(worst, abs(dev))
            if abs(dev) > OFF:
                off.append(f"{r['module']} {r['res']} {r['backend']} {dev:+.1%}")
        grid.append({"rule": list(rule), "warmup_s": warm_s, "judged": judged, "off": off, "worst": worst})
    return grid


def first_calls(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case: the first three calls and the call count to come within 5% of steady state for good."""
    out = []
    for r in rows:
        calls, ref = r["calls"], steady(r["calls"])
        settle = next((i for i in range(len(calls)) if all(c <= ref * 1.05 for c in calls[i : i + 5])), None)
        out.append(
            {
                "case": f"{r['module']} {r['res']}x{r['res']} {r['backend']}",
                "steady_ms": ref * 1e3,
                "first": [c / ref for c in calls[:3]],
                "settled_after": settle,
                "calls": len(calls),
            }
        )
    return out


def rule_text(rule: list[Any]) -> str:
    """A rule in words."""
    calls, secs, cap = rule
    text = f">= {calls} calls and >= {secs:g} s"
    return text + (f", at most {cap:g} s once >= 3 calls" if cap is not None else "")


def write_markdown(data: dict[str, Any]) -> None:
    """results/warmup_traces.md: the rules' cost and error, then the first calls of every case."""
    env = data["env"]
    lines = [
        "# Warm-up: how many calls before a case's median can be trusted",
        "",
        f"Measured {env['date_utc']} on {env['cpu_model']} ({env['logical_cores']} logical cores; "
        f"{data['busy_cores']:.2f} cores busy machine-wide at the start), torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}; `python benchmarks/warmup_traces.py`, {data['wall_s']:.0f} s.",
        "",
        __doc__.split("\n\n")[1]
        .replace("\n", " ")
        .replace("TRACE_S", f"{TRACE_S:g}")
        .replace("MIN_TRACE_CALLS", str(MIN_TRACE_CALLS)),
        "",
        "| warm-up rule | warm-up, all cases [s] | judged | > 3% off steady state | worst |",
        "|---|---:|---:|---:|---:|",
    ]
    for g in data["grid"]:
        lines.append(
            f"| {rule_text(g['rule'])} | {g['warmup_s']:.1f} | {g['judged']} | {len(g['off'])} | {g['worst']:.1%} |"
        )
    firsts = first_calls(data["rows"])
    slow = [c for c in firsts if len(c["first"]) == 3 and max(c["first"][1:]) > 1.5]
    worst = max(firsts, key=lambda c: c["first"][0])
    counts = [len(g["off"]) for g in data["grid"] if g["rule"][0] >= 3]
    lines += [
        "",
        f"What it shows: the first call was up to {worst['first'][0]:.0f}x the steady state ({worst['case']}), and "
        f"in {len(slow)} of {len(firsts)} cases call 2 or 3 was still above 1.5x it, so a warm-up of a call or two "
        f"biases the median. From 3 calls on, every rule leaves {min(counts)}-{max(counts)} cases more than 3% off "
        "the trace's own steady state: the machine's slow and fast phases, not the warm-up, decide those, so no "
        "shorter rule can be shown safe here, and the warm-up stays at >= 10 calls and >= 0.25 s.",
    ]
    lines += [
        "",
        "Per case: the first three calls over the steady state, and the call after which five calls in a row "
        "stay within 5% of it.",
        "",
        "| case | steady [ms] | call 1 | call 2 | call 3 | settled after [calls] | traced calls |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in first_calls(data["rows"]):
        f = [f"{x:.2f}x" for x in c["first"]] + [""] * (3 - len(c["first"]))
        lines.append(f"| {c['case']} | {c['steady_ms']:.3f} | {' | '.join(f)} | {c['settled_after']} | {c['calls']} |")
    (ROOT / "results" / "warmup_traces.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """Measure (or reload), replay the rules, write the report."""
    measure_or_replay("warmup_traces", measure_all, judge, write_markdown)


if __name__ == "__main__":
    main()
