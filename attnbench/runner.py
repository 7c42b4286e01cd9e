"""run_sweep: the one path from a Sweep to rows, for the command line and the Python API alike.

It checks the sweep, records the environment (machine, versions, the roofs the timed cases run under, the sweep
itself, the shard), then runs it in two phases (attnbench.phases): first everything that is not a timing --
counting once per geometry on the meta device, building once, ONNX exports, the allocator probes -- with the
machine's cores in parallel; then the timings, alone. Every failing case becomes a row with a status and a reason,
and Ctrl-C ends the sweep with the rows finished so far. Rows go to a Sink as they finish (attnbench.report.files
streams them into the output files) and end in plan order; the valgrind pass fills in instruction counts at the
end, and a gate, when asked, judges the rows against its baseline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING

import torch

from attnbench.backends import get_backend
from attnbench.cache import Cache
from attnbench.env import command_line, environment, machine_label
from attnbench.errors import BackendUnavailableError
from attnbench.instructions import InstructionBatch, check_available
from attnbench.phases import DEBUG_ENV, TOKENS_CHANNELS_LAST, RunState, debug, failure_row, geometries, run_plan
from attnbench.ratios import check_reference, with_ratios
from attnbench.results import Case
from attnbench.roofline import key_of
from attnbench.settings import RunOptions
from attnbench.sink import RunOutcome, Sink
from attnbench.sysalloc import AllocatorServers
from attnbench.workers import Pool

if TYPE_CHECKING:
    from attnbench.gate import GateSettings
    from attnbench.sweep import Sweep

__all__ = [
    "DEBUG_ENV",
    "TOKENS_CHANNELS_LAST",
    "RunOutcome",
    "Sink",
    "debug",
    "failure_row",
    "run",
    "run_sweep",
]


# ---------------------------------------------------------------- the sweep


def run_sweep(
    sweep: Sweep, options: RunOptions | None = None, sink: Sink | None = None, gate: GateSettings | None = None
) -> RunOutcome:
    """Check the sweep, record the environment, measure every case (rows streamed to `sink`), gate if asked."""

    options, sink = options or RunOptions(), sink or Sink()
    options.check()
    threads = max(sweep.values("threads"))
    with torch_threads(threads):  # the constructor checks build with the run's threads, as counting does
        sweep.check(options.measures)
    options = dataclasses.replace(options, reference=check_reference(options.reference, sweep.modules))
    baseline = gate.load() if gate is not None else None
    cases = sweep.cases()
    roofs = [_roof_key(c) for c in cases] if "latency" in options.metrics else []
    env = environment(threads=threads, peaks=roofs)
    env["machine"] = options.machine or machine_label(env)
    env["command"] = command_line()  # what a report's reader would type to measure again
    env["sweep"] = sweep.record()  # so `report` can put merged shards back in plan order
    if sweep.shard is not None:
        env["shard"] = f"{sweep.shard[0]}/{sweep.shard[1]}"
    if gate is not None and baseline is not None:
        gate.check_baseline(baseline, env)  # before minutes are spent measuring
    options = dataclasses.replace(options, machine=env["machine"])
    sink.start(env, cases)
    with torch_threads(threads):
        outcome = run(cases, options, sink)
    outcome.results = with_ratios(outcome.results, options.reference)
    env["cache"], env["phases"] = outcome.cache, outcome.phases
    outcome.env = env
    try:
        if gate is not None and baseline is not None and outcome.results and not outcome.interrupted:
            again = options.without_instructions()
            outcome.verdict = gate.judge(outcome.results, baseline, env, lambda case: run([case], again).results)
    finally:
        # After the gate, so a report can carry its verdict; whatever the gate does, the sink hears the end.
        sink.finish(outcome)
    return outcome


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to the run's while building and counting (a timed case sets its own)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _roof_key(case: Case) -> tuple[str, str, int]:

    return key_of(get_backend(case.backend).device, case.scenario.dtype, case.scenario.threads)


def run(cases: Iterable[Case], options: RunOptions | None = None, sink: Sink | None = None) -> RunOutcome:
    """Measure every case (no environment record: run_sweep's job); each failure is a row, Ctrl-C stops with
    what was finished; the rows end in plan order.

    With "instructions" in the metrics, valgrind must be installed (else ValgrindUnavailableError before
    anything runs); the modules of eligible cases are queued as they are timed and counted after the sweep
    in one valgrind process, and their rows then carry `instructions`.
    """

    options, sink = options or RunOptions(), sink or Sink()
    counting = "instructions" in options.metrics
    if counting:
        check_available()
    machine = options.machine if options.machine is not None else machine_label()
    plan = geometries(list(cases), options)
    state = RunState(options, sink, RunOutcome(), machine, cache=Cache(options.cache_dir))
    started = time.perf_counter()
    with ExitStack() as stack:
        disk = state.cache if state.cache.ready() else None
        for name in dict.fromkeys(i.case.backend for g in plan for i in g.items):
            with contextlib.suppress(BackendUnavailableError):  # its cases fail with why, later
                stack.enter_context(get_backend(name).cached(disk))
        size = pool_size(options, plan)
        # A job has the case's time limit inside; the pool's own limit catches a worker that hangs past it.
        limit = 2 * options.time_limit_s + 30 if options.time_limit_s else None
        state.pool = stack.enter_context(Pool(size, limit)) if size else None
        state.allocators = stack.enter_context(AllocatorServers(options.allocator_processes))
        state.batch = stack.enter_context(InstructionBatch()) if counting else None
        try:
            run_plan(plan, state)
            if state.queued:
                _count_instructions(state)
        except KeyboardInterrupt:
            state.outcome.interrupted = True
        state.outcome.system_worker_startup_s = state.allocators.startup_s
    state.outcome.cache = state.cache.record()
    total = time.perf_counter() - started
    state.outcome.phases = {
        "workers": state.pool.started if state.pool is not None else 0,
        "worker_startup_s": state.pool.startup_s if state.pool is not None else 0.0,
        "prepare_s": total - state.time_s,
        "time_s": state.time_s,
    }
    _in_plan_order(state)
    return state.outcome


def pool_size(options: RunOptions, plan: list[object]) -> int:
    """Worker processes for phase 1: the usable cores (or --workers), none for fewer than two geometries."""
    wanted = options.workers if options.workers is not None else usable_cores()
    return min(wanted, len(plan)) if wanted >= 1 and len(plan) >= 2 else 0


def usable_cores() -> int:
    """The cores this process may run on (its affinity), or the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _in_plan_order(state: RunState) -> None:
    """Put the rows back in plan order (they were emitted as they finished)."""
    results = state.outcome.results
    if state.order != sorted(state.order):
        ranked = sorted(range(len(results)), key=lambda i: state.order[i])
        state.outcome.results = [results[i] for i in ranked]


# ---------------------------------------------------------------- the valgrind pass


def _count_instructions(run_: RunState) -> None:
    """Run the one valgrind pass and put each count into its row (a failed count is noted in `extra`)."""
    assert run_.batch is not None
    outcome, queued, options = run_.outcome, run_.queued, run_.options
    started = time.perf_counter()
    run_.sink.status(f"counting instructions of {len(queued)} case(s) under valgrind (one process)")
    limit = options.time_limit_s * len(queued) if options.time_limit_s else None
    counts = run_.batch.run(timeout_s=limit)
    for index, count_ in zip(queued, counts, strict=True):
        row = outcome.results[index]
        if count_.ok:
            outcome.results[index] = dataclasses.replace(row, instructions=count_.instructions)
        else:
            extra = {**row.extra_dict, "instructions_error": count_.reason}
            outcome.results[index] = dataclasses.replace(row, extra=json.dumps(extra, sort_keys=True, default=str))
    run_.sink.status(f"counted instructions in {time.perf_counter() - started:.1f} s")
