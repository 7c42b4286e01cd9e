"""Breakdowns of one geometry: where the parameters, MACs and FLOPs are (per nested submodule, or per module
class), and on a measured backend where the time goes (each submodule's share of the latency, and the aten
operators' calls, self time, MACs and achieved GFLOP/s from torch.profiler).

The module is built as counting builds it (on meta, or on the CPU where its constructor needs data: the reason
is kept) and counted with the same CPU fallback. The timed part runs the row's own step (the backend's prepared
callable: its mode, dtype, threads) under torch.profiler, with a `record_function` range per submodule; the
profiler and those ranges cost time per operator, so the profiled call is slower than the run's unprofiled median,
which stays the headline latency (Timed.overhead says by how much).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from attnbench.backends import get_backend
from attnbench.capture import captured
from attnbench.counting import count_macs, count_params
from attnbench.counting.base import MacReport
from attnbench.counting.params import ParamReport
from attnbench.results import Result
from attnbench.runner import torch_threads
from attnbench.zoo.build import CountingBuild, build_for_counting, build_module

#: Profiled calls per timed breakdown, after one warm-up call: enough to average a backbone's few-ms operators
#: without making --breakdown a second benchmark.
PROFILED_CALLS = 3
#: Operators the operator table lists (by self time).
TOP_OPERATORS = 15
#: The prefix of the profiler ranges that time each submodule.
RANGE = "module::"
#: The root's range name (its qualified name is "").
ROOT = "model"


@dataclass(frozen=True)
class TypeRow:
    """One module class of a breakdown by type: its outermost instances' inclusive figures and share of the total."""

    type: str
    instances: int
    params: int
    macs: int | None
    flops: int | None
    macs_share: float | None
    params_share: float | None
    #: Share of a profiled step's time (None when the breakdown was not timed).
    time_share: float | None = None


@dataclass(frozen=True)
class OpRow:
    """One aten operator of a profiled step: per call of the step, seconds, and the counter's MACs by its name."""

    name: str
    calls: float
    self_s: float
    total_s: float
    self_share: float
    macs: int | None
    flops: int | None

    @property
    def rate(self) -> float | None:
        """Achieved FLOP/s: the counter's FLOPs of this operator over its inclusive time (None without FLOPs)."""
        return self.flops / self.total_s if self.flops and self.total_s > 0 else None


@dataclass(frozen=True)
class Timed:
    """Where one profiled step's time goes: per submodule (inclusive) and per aten operator."""

    #: Seconds per step inside each submodule, by qualified name ("" = the whole module).
    module_s: dict[str, float]
    ops: list[OpRow]
    #: Wall seconds of one profiled step, and the run's unprofiled median (the headline), if known.
    profiled_s: float
    unprofiled_s: float | None
    calls: int

    @property
    def overhead(self) -> float | None:
        """How much slower the profiled step is than the unprofiled median (0.2 = 20%); None without a median."""
        return self.profiled_s / self.unprofiled_s - 1 if self.unprofiled_s else None

    def seconds(self, qualified: str) -> float | None:
        """Seconds per step inside a submodule; a container whose forward never runs (a ModuleList) holds its
        children's; None for a module that never ran."""
        if qualified in self.module_s:
            return self.module_s[qualified]
        prefix = f"{qualified}." if qualified else ""
        children = {n.split(".")[0] for n in (k[len(prefix) :] for k in self.module_s if k.startswith(prefix) and k)}
        times = [t for c in children if (t := self.seconds(prefix + c)) is not None]
        return sum(times) if times else None

    def share(self, qualified: str) -> float | None:
        """A submodule's share of the profiled step's time in the whole module (None where it never ran)."""
        whole, part = self.module_s.get(""), self.seconds(qualified)
        return part / whole if whole and part is not None else None


@dataclass(frozen=True)
class Breakdown:
    """One geometry's breakdown: where it was built, its counts, and (on a measured backend) its times."""

    row: Result
    built_on: str
    params: ParamReport
    macs: MacReport
    timed: Timed | None = None
    #: Why there is no timed part ("" when there is one).
    untimed: str = ""
    types: list[TypeRow] = field(default_factory=list)


def by_type(params: ParamReport, macs: MacReport, timed: Timed | None = None) -> list[TypeRow]:
    """Params, MACs and FLOPs per module class, most MACs first, with each class's share of the whole.

    A class's figures are inclusive (its submodules' work is in them), summed over its outermost instances: a
    module inside another of its own class is not counted twice. Classes nest, so shares add up to more than 1.
    """
    nested = macs.ok and (bool(macs.by_module_nested) or not macs.macs)
    found: dict[str, list[int]] = {}
    shares: dict[str, float] = {}
    for name, count in params.by_module_nested.items():
        cls = params.types.get(name, "")
        owners = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        if any(params.types.get(o) == cls for o in owners):
            continue
        entry = found.setdefault(cls, [0, 0, 0, 0])
        entry[0] += 1
        entry[1] += count
        entry[2] += macs.by_module_nested.get(name, 0)
        entry[3] += macs.flops_by_module_nested.get(name, 0)
        share = timed.share(name) if timed is not None else None
        if share is not None:
            shares[cls] = shares.get(cls, 0.0) + share
    rows = [
        TypeRow(
            cls,
            n,
            p,
            m if nested else None,
            f if nested and macs.flops is not None else None,
            m / macs.macs if nested and macs.macs else None,
            p / params.total if params.total else None,
            shares.get(cls),
        )
        for cls, (n, p, m, f) in found.items()
    ]
    return sorted(rows, key=lambda r: (-(r.macs or 0), -r.params, r.type))


def breakdown(row: Result, seed: int = 0, timed: bool = True) -> Breakdown:
    """The breakdown of a row's geometry (built and counted as the run counts it); timed when the row was measured
    on a backend whose operators torch.profiler sees and `timed` is asked."""
    with torch_threads(row.scenario.threads):
        built = _build(row, seed)
        macs = count_macs(built.module, (row.batch, row.dim, row.height, row.width), mode=row.scenario.mode)
        params = count_params(built.module)
        result = Breakdown(row, built.where, params, macs, types=by_type(params, macs))
    if not timed:
        return result
    why = untimed_reason(row)
    if why:
        return _replace(result, untimed=why)
    module = built.module if built.real else _real(row, seed)
    times = profile_step(module, row, macs, seed)
    return _replace(result, timed=times, types=by_type(params, macs, times))


def _replace(b: Breakdown, **changes: Any) -> Breakdown:
    return dataclasses.replace(b, **changes)


def _build(row: Result, seed: int) -> CountingBuild:
    kwargs = json.loads(row.kwargs) if row.kwargs else {}
    return build_for_counting(row.module, row.dim, (row.height, row.width), kwargs, row.scenario.layout, seed)


def _real(row: Result, seed: int) -> nn.Module:
    """The module with real weights, from the run's seed (as the run measured it)."""
    kwargs = json.loads(row.kwargs) if row.kwargs else {}
    torch.manual_seed(seed)
    return build_module(row.module, row.dim, (row.height, row.width), kwargs, row.scenario.layout).eval()


def untimed_reason(row: Result) -> str:
    """Why a row gets no timed breakdown ("" when it does)."""
    if not row.ok or row.latency_median_s is None:
        return "not timed: the row has no latency (counts only, or the case did not run)"
    if not get_backend(row.backend).profiles_operators:
        return f"not timed: torch.profiler does not see {row.backend}'s operators (times are read on the cpu backend)"
    return ""


@contextlib.contextmanager
def _ranges(module: nn.Module, active: list[bool]) -> Iterator[None]:
    """A profiler range around every submodule's forward while `active[0]` is True (hooks removed after)."""
    stack: list[Any] = []

    def push(name: str) -> Any:
        def hook(_module: nn.Module, _args: Any) -> None:
            if active[0]:
                ctx = torch.autograd.profiler.record_function(RANGE + (name or ROOT))
                ctx.__enter__()
                stack.append(ctx)

        return hook

    def pop(_module: nn.Module, _args: Any, _out: Any) -> None:
        if active[0] and stack:
            stack.pop().__exit__(None, None, None)

    handles = []
    for name, sub in module.named_modules():
        handles.append(sub.register_forward_pre_hook(push(name)))
        handles.append(sub.register_forward_hook(pop, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profile_step(module: nn.Module, row: Result, macs: MacReport, seed: int = 0) -> Timed:
    """The row's step on its backend under torch.profiler: seconds per submodule and per aten operator."""
    active = [False]
    shape = (row.batch, row.dim, row.height, row.width)
    with _ranges(module, active), get_backend(row.backend).prepare(module, shape, row.scenario, seed) as prepared:
        fn, sync = prepared.timed_callable()
        with prepared.timing_context():
            fn()  # warm: lazy state (workspaces, packed weights) exists before the profiled calls
            active[0] = True
            with captured(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                started = time.perf_counter()
                for _ in range(PROFILED_CALLS):
                    fn()
                    if sync is not None:
                        sync()
                wall = (time.perf_counter() - started) / PROFILED_CALLS
            active[0] = False
    return _timed(prof.key_averages(), macs, wall, row.latency_median_s)


def _timed(events: Any, macs: MacReport, wall: float, median: float | None) -> Timed:
    """Per-step seconds of the profiler's averaged events: the submodule ranges, and the aten operators."""
    per_call = 1e-6 / PROFILED_CALLS  # the profiler's times are microseconds over all profiled calls
    module_s: dict[str, float] = {}
    ops = []
    for e in events:
        if e.key.startswith(RANGE):
            name = e.key[len(RANGE) :]
            module_s["" if name == ROOT else name] = e.cpu_time_total * per_call
        elif e.key.startswith("aten::"):
            counted = e.key.replace("::", ".", 1)
            ops.append((e.key, e.count, e.self_cpu_time_total * per_call, e.cpu_time_total * per_call, counted))
    self_total = sum(o[2] for o in ops) or 1.0
    rows = [
        OpRow(name, count / PROFILED_CALLS, s, t, s / self_total, macs.by_op.get(c), macs.flops_by_op.get(c))
        for name, count, s, t, c in ops
    ]
    rows.sort(key=lambda r: -r.self_s)
    return Timed(module_s, rows, wall, median, PROFILED_CALLS)
