"""Counting: parameters, and MACs / FLOPs from three counters (attnbench's dispatch-level counter, fvcore, thop).

Convention (CONVENTION, every report prints it): one multiply-add = 1 MAC = 2 FLOPs; a lone elementwise product
= 1 MAC = 1 FLOP. Counting runs on the meta device by default: no data, no memory, seconds even for a
50176 x 50176 attention map. mode="infer" counts one forward; mode="train" one training step (forward and
backward), which only the attnbench counter can count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from attnbench.counting.base import (
    BACKWARD_SUFFIX,
    CONVENTION,
    CPU_FALLBACK_LIMIT_BYTES,
    CROSS_CHECK_TOLERANCE,
    DEFAULT_DEVICE,
    MODES,
    MacReport,
    UncountedOp,
    check_mode,
    check_shape,
    short_reason,
    unavailable,
)
from attnbench.counting.dispatch import count_dispatch
from attnbench.counting.params import ParamReport, count_params
from attnbench.errors import InvalidCaseError
from attnbench.settings import COUNTERS

__all__ = [
    "BACKWARD_SUFFIX",
    "CONVENTION",
    "COUNTERS",
    "CPU_FALLBACK_LIMIT_BYTES",
    "CROSS_CHECK_TOLERANCE",
    "DEFAULT_DEVICE",
    "MODES",
    "MacReport",
    "ParamReport",
    "UncountedOp",
    "breakdown_table",
    "count_all",
    "count_macs",
    "count_params",
    "cross_check",
    "flag_disagreements",
]


#: Why fvcore and thop have no number for a training step.
FORWARD_ONLY = "{} counts a forward pass only (it traces or hooks the forward); it cannot count a backward"


def breakdown_table(*args: Any, **kwargs: Any) -> Any:
    """Nested submodule table of params, MACs and FLOPs (see attnbench.counting.table.breakdown_table)."""
    from attnbench.counting.table import breakdown_table as build  # rich is imported only when a table is made

    return build(*args, **kwargs)


def _counter(name: str, mode: str) -> Callable[..., MacReport]:
    """The counting function of counter `name`, with the call signature count_macs() uses."""
    # Imported on demand: fvcore and thop are slow to import and may be missing.
    if name == "attnbench":
        return lambda module, shape, device, activation_bytes=None: count_dispatch(module, shape, device, mode=mode)
    if name == "fvcore":
        from attnbench.counting.fvcore_adapter import count_fvcore  # slow to import, maybe missing: only when asked for

        return count_fvcore
    from attnbench.counting.thop_adapter import count_thop  # slow to import, maybe missing: only when asked for

    return count_thop


def _check_counter(counter: str) -> None:
    """Refuse a counter name that is not in COUNTERS (ValueError naming the valid ones)."""
    if counter not in COUNTERS:
        raise ValueError(f"unknown counter {counter!r}: valid counters are {', '.join(COUNTERS)}")


def count_macs(
    module: nn.Module,
    input_shape: Sequence[int],
    counter: str = "attnbench",
    device: str = DEFAULT_DEVICE,
    activation_bytes: int | None = None,
    mode: str = "infer",
) -> MacReport:
    """MACs and FLOPs of `module` on an input of `input_shape`, per `counter` (see CONVENTION).

    mode "infer" counts one forward in eval mode; mode "train" one training step (train mode, forward, loss =
    sum of the output, backward), which only the attnbench counter can do: fvcore and thop answer
    "unavailable" with the reason. Never raises for a counter that is missing or fails (the report's status
    and reason say why), except InvalidCaseError from a module refusing the input shape, and ValueError for
    an unknown counter or mode. `activation_bytes` (the attnbench counter's peak estimate) lets fvcore/thop
    decide on a CPU fallback without estimating it again.
    """
    _check_counter(counter)
    check_mode(mode)
    shape = check_shape(input_shape)
    if mode == "train" and counter != "attnbench":
        return replace(unavailable(counter, FORWARD_ONLY.format(counter), shape, device), mode=mode)
    try:
        fn = _counter(counter, mode)
    except ImportError as exc:
        return unavailable(counter, f"{counter} cannot be imported: {short_reason(exc)}", shape, device)
    try:
        return fn(module, shape, device, activation_bytes=activation_bytes)
    except InvalidCaseError:
        raise
    except Exception as exc:  # a counter bug must not take the caller down
        return replace(unavailable(counter, short_reason(exc), shape, device, "failed"), mode=mode)


def count_all(
    module: nn.Module,
    input_shape: Sequence[int],
    counters: Iterable[str] = COUNTERS,
    device: str = DEFAULT_DEVICE,
    mode: str = "infer",
) -> list[MacReport]:
    """One report per counter, in order; the attnbench estimate of activations guides the others' fallback."""
    names = list(counters)
    for name in names:
        _check_counter(name)
    check_mode(mode)
    reports: list[MacReport] = []
    estimate: int | None = None
    if "attnbench" in names:
        first = count_macs(module, input_shape, "attnbench", device, mode=mode)
        if first.ok and mode == "infer":  # on meta, or on the CPU where meta failed: the same tensors either way
            estimate = first.peak_live_bytes_estimate
    for name in names:
        if name == "attnbench":
            reports.append(first)
        else:
            reports.append(count_macs(module, input_shape, name, device, activation_bytes=estimate, mode=mode))
    return reports


def cross_check(reports: Sequence[MacReport], reference: str = "attnbench") -> dict[str, float | None]:
    """MACs of each counter as a ratio to the reference counter's (None where either has no number)."""
    ref = next((r for r in reports if r.counter == reference), None)
    base = ref.macs if ref is not None and ref.ok else None
    ratios: dict[str, float | None] = {}
    for report in reports:
        if report.macs is None or base is None:
            ratios[report.counter] = None
        elif base == 0:
            ratios[report.counter] = 1.0 if report.macs == 0 else float("inf")
        else:
            ratios[report.counter] = report.macs / base
    return ratios


def flag_disagreements(
    ratios: Mapping[str, float | None], tolerance: float = CROSS_CHECK_TOLERANCE
) -> dict[str, float]:
    """The counters from cross_check() whose ratio differs from 1 by more than `tolerance` (1% by default)."""
    return {name: r for name, r in ratios.items() if r is not None and abs(r - 1.0) > tolerance}
