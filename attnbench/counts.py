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
from attnbench.errors import ForwardError
from attnbench.guards import guard, time_limit
from attnbench.results import Case
from attnbench.settings import RunOptions
from attnbench.zoo.adapters import forward_failure
from attnbench.zoo.build import build_module, check_case
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


def count_geometry(first: Case, modes: Sequence[str], options: RunOptions) -> GeometryCounts:
    """Build `first` on the meta device and count it in each of `modes`; failures are kept, not raised."""
    hw = (first.height, first.width)
    try:
        spec, setting = check_case(first.module, first.dim, hw, first.batch, first.kwargs_dict, first.scenario.layout)
        with time_limit(options.time_limit_s):
            meta = _build_for_counting(first, spec, setting, options)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return GeometryCounts(failure=exc)
    answer = GeometryCounts()
    for mode in modes:
        try:
            with time_limit(options.time_limit_s):
                answer.modes[mode] = count(meta, first, setting, spec, options, mode)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # this mode's cases fail; the other mode's still run
            answer.modes[mode] = exc
    return answer


def _uncounted_summary(report: Any) -> str:
    items = sorted(report.uncounted.items(), key=lambda kv: -kv[1].elements)
    return "; ".join(f"{op} x{u.calls} ({u.elements} el)" for op, u in items)


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
                raise ForwardError(forward_failure(case.scenario.layout, case.input_shape, report.reason))
            estimate = report.peak_live_bytes_estimate
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


def _counter_values(report: Any, values: dict[str, Any], notes: list[str]) -> None:
    """One counter's columns of a row (MACs, FLOPs, what it left uncounted), or a note saying why it has none."""
    counter = report.counter
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


def _build_for_counting(case: Case, spec: ModuleSpec, setting: Setting, options: RunOptions) -> torch.nn.Module:
    """The module built on the meta device (no weights allocated); a real build if a constructor needs data."""
    hw = (case.height, case.width)
    try:
        with torch.device("meta"):
            return build_module(case.module, case.dim, hw, case.kwargs_dict, case.scenario.layout).eval()
    except (NotImplementedError, RuntimeError):
        # Only the weights are known before counting: guard them before allocating (a user's module has no
        # formula; its constructor already ran once, on the CPU, when the sweep was checked).
        if spec.params_formula is not None:
            guard(4 * spec.params_formula(setting), host_available_bytes(), "RAM", options.force)
        torch.manual_seed(options.seed)
        return build_module(case.module, case.dim, hw, case.kwargs_dict, case.scenario.layout).eval()
