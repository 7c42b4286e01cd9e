"""Counting one geometry: params, every counter's MACs and FLOPs, and the activation estimate the memory guard needs.

Counting runs on a meta-device build (no weights exist, so nothing is allocated: da at 512x512 holds a 256 GiB
Linear), before anything real is built. `count_geometry` is the whole of it for one geometry and its modes: a job
that a worker process can run (attnbench.workers) as well as this one; its answer is a `GeometryCounts`, whose
failures are values (one mode can fail while the other counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attnbench import results as R
from attnbench.backends.base import host_available_bytes
from attnbench.counting import count_all, count_params
from attnbench.counting.rules import VIEW
from attnbench.errors import ForwardError
from attnbench.guards import guard, time_limit
from attnbench.results import Case
from attnbench.settings import RunOptions
from attnbench.zoo.adapters import forward_failure, layouts_that_run
from attnbench.zoo.build import CountingBuild, build_for_counting, check_case
from attnbench.zoo.spec import ModuleSpec, Setting


@dataclass
class Counted:
    """What counting one geometry in one mode produced, shared by all its backend rows."""

    values: dict[str, Any]
    estimate_bytes: int | None


@dataclass
class GeometryCounts:
    """Each mode's counts of one geometry, or the exception that stopped it (the whole geometry's, or a mode's)."""

    failure: Exception | None = None
    modes: dict[str, Counted | Exception] = field(default_factory=dict)
    #: The module counted, where it has real weights and was counted in this process: measured as it is (built
    #: once). Never sent back from a worker.
    built: CountingBuild | None = None


def count_geometry_job(first: Case, modes: Sequence[str], options: RunOptions) -> GeometryCounts:
    """count_geometry in a worker: the counts without the module (the run builds its own)."""
    answer = count_geometry(first, modes, options)
    answer.built = None
    return answer


def count_geometry(first: Case, modes: Sequence[str], options: RunOptions) -> GeometryCounts:
    """Build `first` once for counting (on meta where its constructor allows) and count it in each of `modes`;
    failures are kept, not raised."""
    hw = (first.height, first.width)
    try:
        spec, setting = check_case(first.module, first.dim, hw, first.batch, first.kwargs_dict, first.scenario.layout)
        with time_limit(options.time_limit_s):
            built = _build_for_counting(first, options)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return GeometryCounts(failure=exc)
    answer = GeometryCounts(built=built if built.real else None)
    base = {"built_on": built.where, "build_s": built.seconds}
    for mode in modes:
        try:
            with time_limit(options.time_limit_s):
                counted = count(built.module, first, setting, spec, options, mode)
            answer.modes[mode] = Counted({**base, **counted.values}, counted.estimate_bytes)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # this mode's cases fail; the other mode's still run
            answer.modes[mode] = exc
    return answer


def _uncounted_summary(report: Any) -> str:
    """What a counter saw but did not count, most output elements first; pure views (no data moved) left out."""
    items = sorted(report.uncounted.items(), key=lambda kv: -kv[1].elements)
    listed = [f"{op} x{u.calls} ({u.elements} el)" for op, u in items if u.category != VIEW]
    views = sum(u.calls for u in report.uncounted.values() if u.category == VIEW)
    return "; ".join(listed + ([f"{views} view call(s) left out (no data moved)"] if views else []))


def count(
    module: torch.nn.Module, case: Case, setting: Setting, spec: ModuleSpec, options: RunOptions, mode: str
) -> Counted:
    """Params, and every counter's MACs in `mode` (train: forward + backward), for one geometry."""

    values: dict[str, Any] = {}
    notes: list[str] = []
    if "params" in options.metrics:
        values["params"] = count_params(module).total
    counters = list(options.counters) if "macs" in options.metrics else []
    # The guard needs the attnbench counter's activation estimate even when MACs were not asked for;
    # count_all runs it first and hands its estimate to fvcore and thop (their CPU-fallback limit).
    if options.measures and "attnbench" not in counters:
        counters.insert(0, "attnbench")
    estimate = None
    for report in count_all(module, case.input_shape, counters=counters, mode=mode):
        if report.counter == "attnbench":
            if report.status == "failed":  # the module's own forward raised: no backend will run it either
                raise ForwardError(_forward_failure(module, case, report.reason))
            estimate = report.peak_live_bytes_estimate
            values.update(output_values(report.output_shapes, report.first_output_shape, case))
            if "macs" not in options.metrics:
                continue
        _counter_values(report, values, notes)
    # The registry's formulas are of one forward.
    if "macs" in options.metrics and spec.macs_formula is not None and mode == R.MODES[0]:
        values["macs_formula"] = spec.macs_formula(setting)
    values["counter_notes"] = "; ".join(notes)
    weights = 4 * sum(p.numel() for p in module.parameters())
    if estimate is not None:
        # Weights and input (plus an output of the same size) are resident too.
        estimate += weights + 4 * 2 * case.batch * case.dim * case.tokens
    # Without the counter's estimate, the weights are the least a build holds.
    return Counted(values, estimate if estimate is not None else weights)


def _forward_failure(module: torch.nn.Module, case: Case, reason: str) -> str:
    """The line of a forward that raised; for a user's module, the other layouts are tried on meta first."""
    layout = case.scenario.layout
    runs_with = layouts_that_run(module, layout, case.input_shape) if layout in R.USER_LAYOUTS else []
    return forward_failure(layout, case.input_shape, reason, runs_with)


def output_values(shapes: str, first: tuple[int, ...] | None, case: Case) -> dict[str, Any]:
    """The output columns of a row, and the note an output deserves (its `reason`; the status stays ok)."""
    if not shapes:
        return {}
    notes = []
    differs = first is not None and tuple(first) != case.input_shape
    if differs:
        notes.append(
            f"output {tuple(first)} differs from the input {case.input_shape}: normal for a network, a mistake for "
            "a block"
        )
    if ";" in shapes or ":" in shapes:
        adapter = (
            "; the tokens adapter converted the first back to (B, C, H, W)"
            if case.scenario.layout in R.TOKEN_LAYOUTS
            else ""
        )
        notes.append(f"the module returns several tensors ({shapes}): each is counted, timed and checked{adapter}")
    return {"output_shapes": shapes, "output_differs": differs, "reason": "; ".join(notes)}


def _counter_values(report: Any, values: dict[str, Any], notes: list[str]) -> None:
    """One counter's columns of a row (MACs, FLOPs, what it left uncounted, where it ran and how long), or a
    note saying why it has none."""
    counter = report.counter
    values[f"counted_on_{counter}"] = report.device
    values[f"count_s_{counter}"] = report.seconds
    if report.status == "ok":
        values[f"macs_{counter}"] = report.macs
        if counter == "attnbench":
            values["flops_attnbench"] = report.flops
    else:
        notes.append(f"{counter}: {report.status} ({report.reason})")
    if counter == "attnbench":
        values["uncounted_attnbench"] = _uncounted_summary(report)
        if report.device != "meta":
            notes.append(f"attnbench counted on {report.device}")
    elif counter == "fvcore" and report.status == "ok":
        values["uncounted_fvcore"] = _uncounted_summary(report)


def _build_for_counting(case: Case, options: RunOptions) -> CountingBuild:
    """The module built on the meta device (no weights allocated); a real build if a constructor needs data."""

    def before_cpu(spec: ModuleSpec, setting: Setting) -> None:
        # Only the weights are known before counting: guard them before allocating (a user's module has no
        # formula; its constructor check's CPU build, if it made one, was taken over instead).
        if spec.params_formula is not None:
            guard(4 * spec.params_formula(setting), host_available_bytes(), "RAM", options.force)

    hw = (case.height, case.width)
    return build_for_counting(
        case.module, case.dim, hw, case.kwargs_dict, case.scenario.layout, options.seed, before_cpu
    )
