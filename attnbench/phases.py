"""A run in two phases: first everything that is not a timing, with the machine's cores in parallel; then the
timings, alone and one at a time.

Phase 1, PREPARE, for a group of cases whose prepared modules fit in memory together:
- counting, one job per geometry (on the meta device, attnbench.counts), read from the disk cache when a run
  before counted the same code at the same geometry, else done in worker processes (attnbench.workers) when
  there is more than one job, else here;
- this process builds each geometry's module once (after the memory guard has read its count), hands the work
  its backends can offload (ONNX exports) to the workers, and stages every case: prepares it (session, compile,
  parity) and reads its peak memory; the allocator servers probe glibc's default state meanwhile.
Phase 2, TIME: each backend's staged cases are timed in one rotation (attnbench.timing.time_lanes), or one after
the other with `interleave=False`; as a case stops, the allocator states that need a timing are timed, alone,
and its row is made and emitted. So Ctrl-C keeps every row whose timing had ended.

A failure anywhere (in a worker too) is that case's row, with its status and reason, never the run's end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnbench import results as R
from attnbench.backends import get_backend
from attnbench.backends.base import Job, host_available_bytes
from attnbench.cache import Cache, source_key
from attnbench.counts import Counted, GeometryCounts, count_geometry
from attnbench.errors import (
    AttnbenchError,
    BackendUnavailableError,
    CaseTimeoutError,
    InvalidCaseError,
    ResourceGuardError,
)
from attnbench.guards import guard, time_limit
from attnbench.instructions import InstructionBatch
from attnbench.measurement import Staged, is_oom, stage, stages
from attnbench.results import Case, Result, kwargs_text
from attnbench.settings import RunOptions
from attnbench.sink import PREPARE, TIME, RunOutcome, Sink
from attnbench.sysalloc import headline_budget
from attnbench.timing import Lane, time_lanes
from attnbench.workers import Pool
from attnbench.zoo.build import build_module, check_case
from attnbench.zoo.registry import rebuildable, source_hash

#: Why channels_last does not apply to a token module (a skipped row with this reason).
TOKENS_CHANNELS_LAST = (
    "channels_last is a memory format for image-layout (B, C, H, W) modules; {module} works on tokens (B, N, C), "
    "whose memory order is already channel-last"
)
#: Set to show full tracebacks of failing cases.
DEBUG_ENV = "ATTNBENCH_DEBUG"
#: A group's prepared cases may hold at most this share of the memory free when it starts.
GROUP_MEMORY_SHARE = 0.5


def debug() -> bool:
    """True when ATTNBENCH_DEBUG is set: print full tracebacks of failing cases."""
    return bool(os.environ.get(DEBUG_ENV))


@dataclass
class Item:
    """One case of the plan on its way to a row."""

    index: int
    case: Case
    #: This case's own seconds so far (its staging, its timing, its allocator states).
    spent_s: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)
    #: The counter's estimate of its peak (the memory guard reads it).
    estimate_bytes: int | None = None
    staged: Staged | None = None
    module: nn.Module | None = None


@dataclass
class Geometry:
    """The cases of one geometry (module, dim, resolution, batch, kwargs, layout): counted and built once."""

    items: list[Item]
    counts: GeometryCounts | None = None
    future: Future[Any] | None = None
    base: dict[str, Any] = field(default_factory=dict)
    #: The layout its module takes (the spec's, unless the scenario names one).
    layout: str = ""

    @property
    def first(self) -> Case:
        """The case it is counted and built from."""
        return self.items[0].case

    @property
    def modes(self) -> list[str]:
        """Its modes, in plan order."""
        return list(dict.fromkeys(item.case.scenario.mode for item in self.items))


@dataclass
class RunState:
    """What one run shares between its phases: options, where rows go, the workers, the queues."""

    options: RunOptions
    sink: Sink
    outcome: RunOutcome
    machine: str
    pool: Pool | None = None
    allocators: Any = None
    batch: InstructionBatch | None = None
    #: Outcome row index of each module queued for the valgrind pass, in queue order.
    queued: list[int] = field(default_factory=list)
    #: Plan index of each outcome row (rows are put back in plan order at the end).
    order: list[int] = field(default_factory=list)
    #: The cache across runs (counts here; the backends keep their exports in it).
    cache: Cache | None = None
    jobs: dict[str, tuple[Job, Future[Any]]] = field(default_factory=dict)
    received: set[str] = field(default_factory=set)
    rotations: int = 0
    #: Wall seconds spent in phase 2 (timing, and the allocator states timed as cases stop).
    time_s: float = 0.0

    def emit(self, item: Item, row: Result) -> None:
        """A finished row: labelled with the machine (merged reports keep runs apart), kept, and handed on."""
        row = dataclasses.replace(row, machine=self.machine)
        self.outcome.results.append(row)
        self.order.append(item.index)
        self.sink.row(row)

    def fail(self, items: Sequence[Item], exc: BaseException, values: Mapping[str, Any]) -> None:
        """Each item's row, failed with `exc`."""
        if debug():
            traceback.print_exception(exc)
        for item in items:
            self.emit(item, failure_row(item.case, exc, values))


def failure_row(case: Case, exc: BaseException, base: Mapping[str, Any]) -> Result:
    """The row of a case that raised: its status from the error's type, its reason from the message."""
    try:
        backend = get_backend(case.backend)
    except BackendUnavailableError:
        backend = None
    if isinstance(exc, InvalidCaseError):
        status = R.INVALID
    elif isinstance(exc, BackendUnavailableError):
        status = R.SKIPPED
    elif isinstance(exc, ResourceGuardError):
        status = R.GUARDED
    elif isinstance(exc, CaseTimeoutError):
        status = R.TIMEOUT
    elif is_oom(exc, backend):
        status = R.OOM
    else:
        status = R.FAILED
    reason = str(exc) if isinstance(exc, AttnbenchError) else f"{type(exc).__name__}: {exc}"
    line = reason.splitlines()[0][:500] if reason else type(exc).__name__
    return Result.for_case(case, **{**base, "status": status, "reason": line})


# ---------------------------------------------------------------- the plan


def geometries(cases: Sequence[Case], options: RunOptions) -> list[Geometry]:
    """The plan's cases grouped by geometry, in plan order; counting only: one case per mode, on no backend."""
    groups: dict[tuple[Any, ...], list[Item]] = {}
    for index, case in enumerate(cases):
        groups.setdefault(case.geometry, []).append(Item(index, case))
    if not options.measures:
        for key, items in groups.items():
            first: dict[str, Item] = {}
            for item in items:
                case = dataclasses.replace(item.case, backend=R.NO_BACKEND)
                first.setdefault(case.scenario.mode, Item(item.index, case))
            groups[key] = list(first.values())
    return [Geometry(items) for items in groups.values()]


def run_plan(plan: list[Geometry], state: RunState) -> None:
    """Count every geometry, then prepare and time group after group (counting only: emit the counts)."""
    if state.options.measures:
        state.sink.phase(PREPARE, [i.case for g in plan for i in g.items], _workers_note(state))
    _start_counts(plan, state)
    if not state.options.measures:
        for geometry in plan:
            _emit_counts(geometry, state)
        return
    siblings = _settings(plan)
    group = _Group()
    for at, geometry in enumerate(plan):
        counts = _counts_of(geometry, state)
        if counts is None:
            continue
        if group.geometries and not group.fits(geometry, counts):
            _time_group(group, state)
            group = _Group()
            rest = [i.case for g in plan[at:] for i in g.items]
            state.sink.phase(PREPARE, rest, f"{_workers_note(state)}; the cases before fill the memory")
        _prepare_geometry(geometry, counts, group, state, siblings)
    _time_group(group, state)


# ---------------------------------------------------------------- counting


def _start_counts(plan: list[Geometry], state: RunState) -> None:
    """Hand every geometry another process can count to the worker pool (when there is one)."""
    for geometry in plan:
        state.sink.stage(geometry.first, "counting")
        first = geometry.first
        try:
            geometry.base = {"source_hash": source_hash(first.module)}
            hw = (first.height, first.width)
            spec, _ = check_case(first.module, first.dim, hw, first.batch, first.kwargs_dict, first.scenario.layout)
            geometry.layout = first.scenario.layout or spec.layout
        except Exception as exc:  # a case its module cannot run, or a spec that cannot be read: its rows fail
            geometry.counts = GeometryCounts(failure=exc)
            continue
        geometry.counts = _cached_counts(geometry, state)
        if geometry.counts is None and state.pool is not None and rebuildable(geometry.first.module):
            fn = "attnbench.counts:count_geometry_job"
            geometry.future = state.pool.submit(fn, geometry.first, geometry.modes, state.options)


def _counts_of(geometry: Geometry, state: RunState) -> GeometryCounts | None:
    """The geometry's counts (waiting for its job, or counting here); None when it failed (its rows emitted)."""
    if geometry.counts is None:
        if geometry.future is not None:
            try:
                geometry.counts = geometry.future.result()
            except Exception as exc:  # the worker died or hung: this geometry's rows fail with why
                geometry.counts = GeometryCounts(failure=exc)
        else:
            geometry.counts = count_geometry(geometry.first, geometry.modes, state.options)
        _cache_counts(geometry, state)
    counts = geometry.counts
    if counts.failure is not None:
        state.fail(geometry.items, counts.failure, geometry.base)
        return None
    for mode, outcome in counts.modes.items():
        if isinstance(outcome, Exception):
            state.fail([i for i in geometry.items if i.case.scenario.mode == mode], outcome, geometry.base)
    for item in geometry.items:
        counted = counts.modes.get(item.case.scenario.mode)
        if isinstance(counted, Counted):
            item.values = {**geometry.base, **counted.values}
            item.estimate_bytes = counted.estimate_bytes
    return counts


#: Kind of the cache entries holding a geometry's counts.
COUNTS_KIND = "counts"


@functools.lru_cache(maxsize=1)
def _counting_code() -> str:
    """A digest of the attnbench code that counts: the counters, the zoo (modules, formulas, adapters)."""
    root = Path(__file__).resolve().parent
    files = [root / "counts.py", *sorted((root / "counting").rglob("*.py")), *sorted((root / "zoo").rglob("*.py"))]
    return source_key(*files)


def _counts_key(geometry: Geometry, state: RunState) -> str | None:
    """The cache key of a geometry's counts: what is counted, how, by which code and versions (None: no cache)."""
    cache, options, first = state.cache, state.options, geometry.first
    if cache is None or not cache.ready() or not geometry.base.get("source_hash"):
        return None
    parts = {
        "module": first.module,
        "source_hash": geometry.base["source_hash"],
        "geometry": [first.dim, first.height, first.width, first.batch, first.scenario.layout],
        "kwargs": kwargs_text(first.kwargs),
        "modes": geometry.modes,
        "metrics": [m for m in options.metrics if m in ("params", "macs")],
        "counters": list(options.counters),
        "estimate": options.measures,
        "code": _counting_code(),
    }
    return cache.key(COUNTS_KIND, parts)


def _cached_counts(geometry: Geometry, state: RunState) -> GeometryCounts | None:
    """The geometry's counts from a run before, if the cache holds them (an entry that does not decode: None)."""
    key = _counts_key(geometry, state)
    entry = state.cache.get(COUNTS_KIND, key) if state.cache is not None and key is not None else None
    if entry is None:
        return None
    try:
        modes = json.loads(entry.data)
        counts = {m: Counted(_from_cache(v["values"]), v["estimate"]) for m, v in modes.items()}
    except (ValueError, KeyError, TypeError):
        return None
    return GeometryCounts(modes=dict(counts)) if set(counts) == set(geometry.modes) else None


def _from_cache(values: dict[str, Any]) -> dict[str, Any]:
    """Cached counts as a row's values: where each counter ran stays, the seconds it took then do not (this run
    spent none)."""
    return {k: (None if k == "build_s" or k.startswith("count_s_") else v) for k, v in values.items()}


def _cache_counts(geometry: Geometry, state: RunState) -> None:
    """Keep a geometry's counts for later runs when every mode was counted."""
    counts, key = geometry.counts, _counts_key(geometry, state)
    if counts is None or key is None or state.cache is None or counts.failure is not None:
        return
    if not all(isinstance(c, Counted) for c in counts.modes.values()):
        return
    data = {m: {"values": c.values, "estimate": c.estimate_bytes} for m, c in counts.modes.items()}  # type: ignore[union-attr]
    with contextlib.suppress(TypeError, ValueError):  # values JSON cannot hold are simply not cached
        state.cache.put(COUNTS_KIND, key, json.dumps(data, sort_keys=True).encode(), {"module": geometry.first.module})


def _emit_counts(geometry: Geometry, state: RunState) -> None:
    """Counting only: one row per mode."""
    started = time.perf_counter()
    if _counts_of(geometry, state) is None:
        return
    for item in geometry.items:
        if item.values:
            seconds = time.perf_counter() - started
            state.emit(item, Result.for_case(item.case, **item.values, seconds=seconds))


# ---------------------------------------------------------------- phase 1: prepare


@dataclass
class _Group:
    """Geometries prepared together and then timed together: their prepared modules fit in memory at once."""

    geometries: list[Geometry] = field(default_factory=list)
    #: Items waiting for an offloaded job before they can be staged.
    waiting: list[Item] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)
    budget: dict[str, int | None] = field(default_factory=dict)

    def _needs(self, geometry: Geometry, counts: GeometryCounts) -> dict[str, int]:
        needs: dict[str, int] = {}
        for item in geometry.items:
            counted = counts.modes.get(item.case.scenario.mode)
            if not isinstance(counted, Counted) or counted.estimate_bytes is None:
                continue
            try:
                backend = get_backend(item.case.backend)
            except BackendUnavailableError:
                continue
            estimate = backend.memory_estimate(counted.estimate_bytes, item.case) or 0
            needs[backend.memory_name] = needs.get(backend.memory_name, 0) + estimate
            if backend.memory_name not in self.budget:
                free = backend.free_memory()
                self.budget[backend.memory_name] = int(free * GROUP_MEMORY_SHARE) if free is not None else None
        return needs

    def fits(self, geometry: Geometry, counts: GeometryCounts) -> bool:
        """Whether the geometry's cases fit beside the group's (each memory within its share)."""
        needs = self._needs(geometry, counts)
        return all(
            (budget := self.budget.get(name)) is None or self.held.get(name, 0) + need <= budget
            for name, need in needs.items()
        )

    def add(self, geometry: Geometry, counts: GeometryCounts) -> None:
        """Take the geometry in, holding its memory."""
        for name, need in self._needs(geometry, counts).items():
            self.held[name] = self.held.get(name, 0) + need
        self.geometries.append(geometry)


def _settings(plan: list[Geometry]) -> dict[tuple[Any, ...], list[Case]]:
    """The cases of each module setting (all but the resolution) on each backend: one export can serve them."""
    settings: dict[tuple[Any, ...], list[Case]] = {}
    for geometry in plan:
        for item in geometry.items:
            settings.setdefault(_setting_of(item.case), []).append(item.case)
    return settings


def _setting_of(case: Case) -> tuple[Any, ...]:
    return (case.module, case.dim, case.kwargs, case.scenario.layout, case.backend)


def _prepare_geometry(
    geometry: Geometry,
    counts: GeometryCounts,
    group: _Group,
    state: RunState,
    siblings: dict[tuple[Any, ...], list[Case]],
) -> None:
    """Build the geometry's module, hand its offloadable work to the workers, stage what needs none."""
    group.add(geometry, counts)
    items = [i for i in geometry.items if i.values]
    module = _build(geometry, items, counts, state)
    if module is None:
        return
    offloaded = _offload(module, items, state, siblings)
    for item in items:
        item.module = module
        if item.case.backend in offloaded:
            group.waiting.append(item)
        else:
            _stage_item(item, module, geometry.layout, state)


def _workers_note(state: RunState) -> str:
    return f"up to {state.pool.size} worker process(es)" if state.pool is not None else "in this process"


def _build(geometry: Geometry, items: list[Item], counts: GeometryCounts, state: RunState) -> nn.Module | None:
    """The geometry's module, built for real once the host's memory guard let it (None: its rows failed)."""
    options, first = state.options, geometry.first
    if counts.built is not None and counts.built.seed == options.seed:
        # Built for real to be counted (its constructor needs data), from the run's seed: measured as it is.
        return counts.built.module.eval()
    estimates = [c.estimate_bytes for c in counts.modes.values() if isinstance(c, Counted) and c.estimate_bytes]
    state.sink.stage(first, "building")
    try:
        # The module is built in RAM whatever the backend: guard its whole estimated peak there first.
        guard(max(estimates, default=None), host_available_bytes(), "RAM", options.force)
        torch.manual_seed(options.seed)
        hw = (first.height, first.width)
        with time_limit(options.time_limit_s):
            module = build_module(first.module, first.dim, hw, first.kwargs_dict, first.scenario.layout)
        return module.eval()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        for item in items:
            state.fail([item], exc, item.values)
        return None


def _offload(
    module: nn.Module, items: list[Item], state: RunState, siblings: dict[tuple[Any, ...], list[Case]]
) -> set[str]:
    """Submit the backends' offloadable jobs for these items; the backends whose items must wait for one."""
    if state.pool is None or not items or not rebuildable(items[0].case.module):
        return set()
    waiting: set[str] = set()
    for name in dict.fromkeys(item.case.backend for item in items):
        try:
            backend = get_backend(name)
            mine = [i.case for i in items if i.case.backend == name]
            jobs = backend.offload(module, [*mine, *siblings.get(_setting_of(mine[0]), [])], state.options.seed)
        except Exception:  # nothing offloaded: the case prepares (and fails, if it must) in this process
            continue
        for job in jobs:
            # The same setting at another resolution asks for the job already under way: wait for that one.
            if job.key not in state.jobs:
                future = state.pool.submit("attnbench.phases:offload_job", mine[0], state.options.seed, job)
                state.jobs[job.key] = (job, future)
            waiting.add(name)
    return waiting


def offload_job(case: Case, seed: int, job: Job) -> Any:
    """In a worker: build the case's module as the run did (same seed) and run the job's function on it."""
    from attnbench.workers import resolve  # the worker side of the pool

    torch.manual_seed(seed)
    hw = (case.height, case.width)
    module = build_module(case.module, case.dim, hw, case.kwargs_dict, case.scenario.layout).eval()
    return resolve(job.fn)(module, *job.args)


def _receive_jobs(state: RunState, backend_name: str) -> None:
    """Wait for every offloaded job and hand each answer to its backend (once)."""
    backend = get_backend(backend_name)
    for key, (job, future) in state.jobs.items():
        if key in state.received:
            continue
        try:
            answer: Any = future.result()
        except Exception as exc:  # the job's failure is the backend's to judge (it may prepare here instead)
            answer = exc
        backend.receive(job, answer)
        state.received.add(key)


def _not_applicable(case: Case, layout: str) -> str | None:
    """Why a scenario field of `case` does not apply to its module (which takes `layout`), or None."""
    if case.scenario.channels_last and layout in R.TOKEN_LAYOUTS:
        return TOKENS_CHANNELS_LAST.format(module=case.module)
    return None


def _stage_item(item: Item, module: nn.Module, layout: str, state: RunState) -> None:
    """Prepare one case and read its memory (phase 1); a case that cannot be prepared is emitted as its row."""
    case, options = item.case, state.options
    started = time.perf_counter()
    why_not = _not_applicable(case, layout)
    if why_not is not None:
        state.emit(item, Result.for_case(case, **{**item.values, "status": R.SKIPPED, "reason": why_not}))
        return
    failed = None
    try:
        backend = get_backend(case.backend)
        estimate = backend.memory_estimate(item.estimate_bytes, case)
        guard(estimate, backend.free_memory(), backend.memory_name, options.force)
        with time_limit(options.time_limit_s), stages(lambda stage: state.sink.stage(case, stage)):
            staged = _stage_case(module, case, options)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if debug():
            traceback.print_exception(exc)
        failed = failure_row(case, exc, item.values)
    if failed is not None:
        # Outside the handler: its traceback no longer holds the failed step's frames and tensors, so the backend
        # can give their memory back before the next case's guard reads what is free (PyTorch's FAQ on OOM). A
        # case refused before it ran (unavailable backend, the guard) left nothing to give back.
        state.emit(item, failed)
        if failed.status not in R.REFUSED:
            _cleanup(case)
        return
    item.spent_s += time.perf_counter() - started
    if staged.failure is not None:
        _emit_measured(item, staged.conclude(None), state, None)
        return
    item.staged = staged
    if backend.allocator_states and "latency" in options.metrics and state.allocators is not None:
        state.allocators.submit(case, options.seed)


def _cleanup(case: Case) -> None:
    """The case's backend gives back what a failure left behind (nothing when it is not available)."""
    with contextlib.suppress(BackendUnavailableError):
        get_backend(case.backend).cleanup_after_failure()


def _stage_case(module: nn.Module, case: Case, options: RunOptions) -> Staged:
    """The case prepared on its backend, its memory read (attnbench.measurement.stage)."""
    metrics = [m for m in ("latency", "memory") if m in options.metrics]
    return stage(module, case.input_shape, case.backend, case.scenario, metrics, options.seed)


# ---------------------------------------------------------------- phase 2: time


def _time_group(group: _Group, state: RunState) -> None:
    """Stage what waited for its jobs, then time the group's cases backend by backend, emitting rows as they stop."""
    for name in dict.fromkeys(item.case.backend for item in group.waiting):
        _receive_jobs(state, name)
    layouts = {id(i): g.layout for g in group.geometries for i in g.items}
    for item in group.waiting:
        assert item.module is not None
        _stage_item(item, item.module, layouts[id(item)], state)
    items = [i for g in group.geometries for i in g.items if i.staged is not None]
    if not items:
        return
    if state.allocators is not None and "latency" in state.options.metrics:
        state.allocators.collect()  # the probes of phase 1 end before any timing: nothing else of ours may run
    started = time.perf_counter()
    try:
        _time_items(items, state)
    finally:
        state.time_s += time.perf_counter() - started


def _time_items(items: list[Item], state: RunState) -> None:
    """Phase 2 for a group's staged items: backend by backend."""
    if "latency" in state.options.metrics:
        state.sink.phase(TIME, [i.case for i in items], "interleaved" if state.options.interleave else "one by one")
    by_backend: dict[str, list[Item]] = {}
    for item in items:
        by_backend.setdefault(item.case.backend, []).append(item)
    for backend_items in by_backend.values():
        _time_backend(backend_items, state)


def _time_backend(items: list[Item], state: RunState) -> None:
    """Time one backend's staged cases in one rotation (or one by one), finishing each as it stops."""
    options = state.options
    lanes: dict[int, Lane] = {}
    owner: dict[int, Item] = {}
    for item in items:
        assert item.staged is not None
        mine = item.staged.lanes(headline_budget(item.case, options.budget)) if "latency" in options.metrics else []
        if not mine:
            _finish(item, None, state, "")
            continue
        for lane in mine:
            lane.context = _limited(lane.context, options.time_limit_s)
            lanes[id(lane)], owner[id(lane)] = lane, item
        state.sink.stage(item.case, "timing")
    if not lanes:
        return
    state.rotations += 1
    rotation = f"{state.rotations}" if options.interleave and len(lanes) > 1 else ""

    def done(lane: Lane) -> None:
        _finish(owner[id(lane)], lane, state, rotation)

    if options.interleave:
        time_lanes(list(lanes.values()), on_stop=done, on_round=state.sink.rotation)
    else:
        for lane in lanes.values():
            time_lanes([lane], on_stop=done)


def _limited(context: Callable[[], Any], seconds: float | None) -> Callable[[], Any]:
    """The lane's context with the case's time limit around each block (a hung call ends as a timeout)."""
    if seconds is None:
        return context

    def both() -> Iterator[None]:
        with context(), time_limit(seconds):
            yield

    import contextlib  # only runs with --time-limit wrap their lanes

    return contextlib.contextmanager(both)


def _finish(item: Item, lane: Lane | None, state: RunState, rotation: str) -> None:
    """A case's timing ended: its measurement, its allocator states, its row."""
    assert item.staged is not None
    started = time.perf_counter()
    if lane is not None:
        item.spent_s += lane.warmup_s + lane.timed_s
    staged, item.staged = item.staged, None
    try:
        measurement = staged.conclude(lane)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        state.fail([item], exc, item.values)
        return
    if lane is not None and rotation and measurement.timing is not None:
        measurement.extra.update(
            timing_rotation=rotation, block_times_s=[float(f"{t:.6g}") for t in measurement.timing.times_s]
        )
    item.spent_s += time.perf_counter() - started
    _emit_measured(item, measurement, state, lane)


def _emit_measured(item: Item, measurement: Any, state: RunState, lane: Lane | None) -> None:
    """The row of a measured (or failed) case, with the allocator states where they apply; queue its count."""
    case, options = item.case, state.options
    started = time.perf_counter()
    values = measurement.row_values(case.batch)
    if "memory" not in options.metrics:
        for name in ("peak_mem_bytes", "peak_mem_method", "reserved_mem_bytes"):
            values.pop(name)
    extra = measurement.extra_values()
    backend = get_backend(case.backend)
    timed = values.get("status") == R.OK and values.get("latency_median_s") is not None
    if backend.allocator_states and timed and state.allocators is not None:
        state.sink.stage(case, "timing the other allocator")
        values, extra = state.allocators.finish(case, values, extra, options.budget, options.seed)
    values["extra"] = json.dumps(extra, sort_keys=True, default=str)
    # The output's note (counted once) stays beside the backend's own reason.
    values["reason"] = "; ".join(r for r in (values.get("reason"), item.values.get("reason")) if r)
    item.spent_s += time.perf_counter() - started
    row = Result.for_case(case, **{**item.values, **values, "seconds": item.spent_s})
    state.emit(item, row)
    if state.batch is not None and row.status == R.OK and backend.counts_instructions(case) and item.module:
        state.batch.add(item.module, case.input_shape, options.seed, case if rebuildable(case.module) else None)
        state.queued.append(len(state.outcome.results) - 1)
