"""The allocator as users meet it: a CPU row's latency in fresh processes with glibc's defaults, and under jemalloc
or tcmalloc.

attnbench pins glibc's malloc (attnbench.memory.pin_allocator) so timings are stable, but a user's own PyTorch
process does not: there, glibc's dynamic mmap threshold (at most 32 MiB) decides per process, from its allocation
history, whether a module's large blocks are mapped and unmapped on every call. acmix at C=64 28x28 measured
14.9 to 42.0 ms in six fresh processes (issue 23). mallopt turns the dynamic threshold off for good, so that
"system" state is measured in other processes: SYSTEM_PROCESSES servers (attnbench.allocserver), each with its
own PYTHONHASHSEED, which fork one child per request, so each child's history is "the imports + this module".

For a row whose headline is the pinned state (the default), every system server probes the row's minor page
faults per call (a few calls); where any process's extra faults could cost 10% of the pinned call (at most
FAULT_COST_BOUND_S each), every process is timed too (SECONDARY_MAX_RUN_TIME at most, one after another, nothing
else of ours running), so the row carries the spread over the processes. `†` (system_allocator_slower) marks a
row where any process is more than 10% slower in its median and its fastest call, with the faults to explain it.
With `--allocator system` the processes are timed with the run's budget and the headline is the middle one's;
with jemalloc or tcmalloc the headline is timed in a server started with LD_PRELOAD of the library.

AllocatorServers is the API a runner calls: submit(case, seed) queues a row's probes (non-blocking; probes may run
beside other work, as they count faults, not time), finish(...) waits for them, times where needed and returns the
row's values; collect() waits for every queued probe (before timing anything else). The combining is pure
(combine_pinned, combine_headline) and testable without processes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from attnbench.allocserver import PROBE_WARMUP_CALLS, request_for
from attnbench.memory import ALLOCATOR_ENV, PRELOADS, preload_library
from attnbench.results import FAILED, OK, Case
from attnbench.settings import DEFAULT_ALLOCATOR_PROCESSES
from attnbench.timing import TimingBudget
from attnbench.zoo.registry import rebuildable

#: Fresh processes (system servers) the default-allocator state of every CPU row is measured in, unless a run asks
#: for another number (RunOptions.allocator_processes).
SYSTEM_PROCESSES = DEFAULT_ALLOCATOR_PROCESSES
#: PYTHONHASHSEED of system server i is HASH_SEED_BASE + i: distinct, so no two share a history by accident, and
#: fixed, so a run repeats the last one's draws.
HASH_SEED_BASE = 1
#: Timed budget of a state that is not the headline: enough blocks to see a > 10% gap...
SECONDARY_MAX_RUN_TIME = 0.25
#: ...and the precision at which it stops early: a +-2% CI on its median cannot hide a 10% gap.
SECONDARY_PRECISION = 0.02
#: The system state is called slower (a marker in the table, a sentence in the report) when its median and its
#: fastest call are both above this ratio of the pinned ones...
SLOWDOWN_MARK = 1.10
#: ...and its extra minor page faults could account for that 10%: each costs at most this (zeroing a 2 MiB
#: huge page at 20 GB/s plus the kernel's fault path; a 4 KiB fault costs ~1-2 us here). A gap that the faults
#: cannot explain is noise, which moves medians by 10-30% on a shared machine.
FAULT_COST_BOUND_S = 100e-6
#: A child that has not answered within this many seconds is killed (a --time-limit bites first)...
WORKER_TIMEOUT_S = 900.0
#: ...and a server that gives no answer this long after that is taken for hung, and killed.
SERVER_SLACK_S = 60.0
#: A wait for the servers' start longer than this is recorded in the row (system_worker_start_s).
READY_WAIT_S = 0.01
#: glibc's malloc environment variables (a user's own tuning): a system server stands for glibc's defaults, so
#: they are dropped there (and the glibc.malloc entries of GLIBC_TUNABLES), and kept for the preloaded allocators.
GLIBC_MALLOC_ENV = (
    "MALLOC_ARENA_MAX",
    "MALLOC_ARENA_TEST",
    "MALLOC_CHECK_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_PERTURB_",
    "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
)
GLIBC_TUNABLES = "GLIBC_TUNABLES"
#: How a server is started (after the interpreter): the module whose __main__ serves.
SERVER_ARGS = ("-m", "attnbench.allocserver")
#: What the row of a module another process cannot build says (an object given to the Python API).
NOT_REBUILDABLE = (
    "measured in fresh processes that build the module by name; a module given to the Python API as an object "
    "lives in this process only"
)

#: What a pinned-headline row says when it was asked to measure the system state in no process.
NOT_MEASURED = "system allocator state: not measured (--allocator-processes 0)"


class ServerError(RuntimeError):
    """An allocator server died, hung, or answered nonsense."""


# ---------------------------------------------------------------- budgets


def secondary_budget(budget: TimingBudget) -> TimingBudget:
    """The budget of a state that is not the headline: it only has to show a gap above 10%, so no floor, a
    short cap, a looser precision."""
    precision = None if budget.precision is None else max(budget.precision, SECONDARY_PRECISION)
    cap = min(budget.max_run_time, SECONDARY_MAX_RUN_TIME)
    return dataclasses.replace(budget, min_run_time=0.0, max_run_time=cap, precision=precision)


def system_budget(budget: TimingBudget) -> TimingBudget:
    """The secondary budget in a fresh child: the run's warm-up seconds, but only the probe's warm-up calls (the
    fault mode is set by then; a slow module is not called 10 times before a 10% question)."""
    return dataclasses.replace(secondary_budget(budget), warmup_calls=PROBE_WARMUP_CALLS)


def headline_budget(case: Case, budget: TimingBudget) -> TimingBudget:
    """The budget of the in-process (pinned) timing: the run's, or the secondary one when another allocator is
    the headline."""
    return budget if case.scenario.allocator == "pinned" else secondary_budget(budget)


# ---------------------------------------------------------------- one process's figures, and the row they make


@dataclass
class ProcessFigures:
    """What one server's children measured of one row: the probe's faults, the timing, or why not."""

    server: str
    hash_seed: int
    status: str = OK
    note: str = ""
    #: The probe's minor page faults per call (pinned-headline rows).
    faults_per_call: float | None = None
    probe_calls: int | None = None
    #: The latency columns of its timing (where timed).
    timing: dict[str, Any] | None = None
    library: str | None = None
    allocator: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def faults(self) -> float | None:
        """Its faults per call: the timing's where timed, else the probe's."""
        if self.timing is not None and self.timing.get("minor_faults_per_call") is not None:
            return self.timing["minor_faults_per_call"]
        return self.faults_per_call

    def failed(self, status: str, note: str) -> None:
        """Record that a request of this process gave no figures, and why."""
        self.status, self.note = status or FAILED, note

    def record(self) -> dict[str, Any]:
        """The figures for the row's extra (what the spread columns summarise)."""
        timing = self.timing or {}
        out = {
            "server": self.server,
            "hash_seed": self.hash_seed,
            "probe_faults_per_call": self.faults_per_call,
            "probe_calls": self.probe_calls,
            "latency_median_s": timing.get("latency_median_s"),
            "latency_min_s": timing.get("latency_min_s"),
            "faults_per_call": timing.get("minor_faults_per_call"),
            "seconds": self.seconds,
        }
        if self.library:
            out["library"] = self.library
        if self.note:
            out["note"] = f"{self.status}: {self.note}"
        return out


def faults_could_slow(pinned: dict[str, Any], system: dict[str, Any]) -> bool:
    """Whether the system state's extra minor faults could cost 10% of the pinned median (each at most
    FAULT_COST_BOUND_S): the only way it is slower, so the only case worth timing."""
    extra_faults = (system.get("minor_faults_per_call") or 0.0) - (pinned.get("minor_faults_per_call") or 0.0)
    return extra_faults * FAULT_COST_BOUND_S >= (SLOWDOWN_MARK - 1) * pinned["latency_median_s"]


def needs_timing(pinned: dict[str, Any], figures: Iterable[ProcessFigures]) -> bool:
    """Whether any process's probe took enough extra faults to cost 10% of the pinned call."""
    return any(
        f.faults_per_call is not None and faults_could_slow(pinned, {"minor_faults_per_call": f.faults_per_call})
        for f in figures
    )


def is_slower(pinned: dict[str, Any], system: dict[str, Any]) -> bool:
    """The `†` rule for one process: its median and its fastest call both > 10% slower than pinned, and its extra
    faults could cost that (noise moves medians 10-30% on a shared machine; a gap the allocator causes has a
    mechanism, page faults on every call, and slows the fastest call too)."""
    if not pinned.get("latency_median_s") or not pinned.get("latency_min_s"):
        return False
    median_ratio = system["latency_median_s"] / pinned["latency_median_s"]
    min_ratio = system["latency_min_s"] / pinned["latency_min_s"]
    return min(median_ratio, min_ratio) > SLOWDOWN_MARK and faults_could_slow(pinned, system)


def _notes(figures: Sequence[ProcessFigures], what: str) -> str:
    """One line naming each process that gave no figures, and why."""
    failed = [f"{f.server}: {f.status}: {f.note}" for f in figures if f.note]
    return f"{what}: " + "; ".join(failed) if failed else ""


def _spread(values: dict[str, Any], pinned: dict[str, Any], measured: Sequence[ProcessFigures]) -> None:
    """The spread columns over the processes that measured the row, and the slowest one's slowdown and `†`."""
    faults = [f.faults for f in measured if f.faults is not None]
    values.update(
        system_processes=len(measured),
        system_faults_lo_per_call=min(faults, default=None),
        system_faults_hi_per_call=max(faults, default=None),
    )
    timed = [f.timing for f in measured if f.timing is not None]
    if not timed:
        return
    medians = [t["latency_median_s"] for t in timed]
    slowest = max(timed, key=lambda t: t["latency_median_s"])
    values.update(system_latency_lo_s=min(medians), system_latency_hi_s=max(medians))
    if pinned.get("latency_median_s"):
        values["system_allocator_slowdown"] = slowest["latency_median_s"] / pinned["latency_median_s"]
    values["system_allocator_slower"] = any(is_slower(pinned, t) for t in timed)


def _pinned(values: dict[str, Any]) -> dict[str, Any]:
    """The pinned state's latency figures from a row's values (this process's timing)."""
    keys = ("latency_median_s", "latency_iqr_s", "latency_min_s", "minor_faults_per_call")
    return {k: values.get(k) for k in keys}


def combine_pinned(
    values: dict[str, Any], extra: dict[str, Any], figures: Sequence[ProcessFigures]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pinned-headline row with the system state of its processes added: the spread, the slowest process as
    the other state (its median, faults and slowdown), and `†` when any process is > 10% slower."""
    values, extra = dict(values), dict(extra)
    extra["allocator_processes"] = [f.record() for f in figures]
    note = _notes(figures, "system allocator state")
    if note:
        extra["system_allocator_note"] = note
    measured = [f for f in figures if f.faults_per_call is not None]
    if not measured:
        return values, extra
    extra["system_allocator"] = measured[0].allocator
    pinned = _pinned(values)
    _spread(values, pinned, measured)
    timed = [f.timing for f in measured if f.timing is not None]
    if not timed:
        values["other_allocator_faults_per_call"] = values["system_faults_hi_per_call"]
        # Faults counted, not timed: too few extra faults to cost 10% of a call, so not slower (a timing that
        # was needed but failed leaves the question open).
        values["system_allocator_slower"] = None if needs_timing(pinned, measured) else False
        return values, extra
    slowest = max(timed, key=lambda t: t["latency_median_s"])
    values.update(
        other_allocator_latency_s=slowest["latency_median_s"],
        other_allocator_faults_per_call=slowest.get("minor_faults_per_call"),
    )
    extra["system_latency_iqr_s"] = slowest.get("latency_iqr_s")
    if pinned["latency_min_s"]:
        extra["system_allocator_min_ratio"] = slowest["latency_min_s"] / pinned["latency_min_s"]
    return values, extra


def combine_headline(
    values: dict[str, Any], extra: dict[str, Any], figures: Sequence[ProcessFigures], allocator: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A row whose headline was timed in other processes (system, jemalloc, tcmalloc): the middle process's
    timing (of an even count, the slower middle one) as the headline, the pinned state (this process) as the
    other; a row none of them could time fails with their reasons."""
    values, extra = dict(values), dict(extra)
    extra["allocator_processes"] = [f.record() for f in figures]
    timed = sorted((f for f in figures if f.timing is not None), key=lambda f: f.timing["latency_median_s"])  # type: ignore[index]
    note = _notes(figures, f"{allocator} allocator")
    if not timed:
        status = next((f.status for f in figures if f.status != OK), FAILED)
        return {**values, "status": status, "reason": note or f"{allocator} allocator: no process answered"}, extra
    if note:
        extra["allocator_note"] = note
    pinned = _pinned(values)
    headline = timed[len(timed) // 2]
    assert headline.timing is not None
    values.update(headline.timing)
    values.update(
        other_allocator_latency_s=pinned["latency_median_s"],
        other_allocator_faults_per_call=pinned["minor_faults_per_call"],
    )
    extra.update(pinned_latency_iqr_s=pinned["latency_iqr_s"], headline_process=headline.server)
    extra["headline_allocator"] = headline.allocator
    if headline.library:
        extra["allocator_library"] = headline.library
    if allocator == "system":
        _spread(values, pinned, timed)
    return values, extra


# ---------------------------------------------------------------- the servers


@dataclass
class _Server:
    """One server process: its allocator, hash seed, pipes, and the requests it has not answered yet, in order."""

    allocator: str
    hash_seed: int
    name: str
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    started_wall: float
    buffer: bytearray = field(default_factory=bytearray)
    pending: collections.deque[int] = field(default_factory=collections.deque)
    #: Since when its current request has been running (monotonic), or None when idle.
    busy_since: float | None = None
    ready: bool = False

    def log_tail(self, limit: int = 300) -> str:
        """The end of what the server and its children printed (for a death's reason)."""
        self.log.seek(0)
        text = self.log.read().decode("utf-8", "replace")
        return " ".join(text.split())[-limit:] or "(no output)"


def _server_env(allocator: str, hash_seed: int) -> dict[str, str]:
    """The environment of a server: the allocator it serves, its own hash seed, this attnbench on its path."""
    env = dict(os.environ)
    if allocator == "system":  # glibc's defaults: not the user's tuning of them
        env = {k: v for k, v in env.items() if k not in GLIBC_MALLOC_ENV}
        tunables = [t for t in env.pop(GLIBC_TUNABLES, "").split(":") if t and not t.startswith("glibc.malloc.")]
        if tunables:
            env[GLIBC_TUNABLES] = ":".join(tunables)
    # Another allocator preloaded by the user would replace the one the server stands for.
    others = [p for p in env.get("LD_PRELOAD", "").split(":") if p and not any(a in p for a in (*PRELOADS, "malloc"))]
    library = preload_library(allocator)
    preload = ([library] if library else []) + others
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    env[ALLOCATOR_ENV] = allocator
    env["PYTHONHASHSEED"] = str(hash_seed)
    # The server imports the same attnbench as this process, wherever it was imported from.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


class AllocatorServers:
    """The allocator servers of a sweep (started lazily, closed at the end): submit a row, finish it.

    A dead or hung server fails the requests it holds (that row gets a note, or a failed headline) and is started
    again for the next row; Ctrl-C in this process ends in close(), which kills them (their children die with them).
    """

    def __init__(self, processes: int = SYSTEM_PROCESSES, timeout_s: float = WORKER_TIMEOUT_S) -> None:
        self.processes = processes
        self.timeout_s = timeout_s
        #: Seconds the servers took to start (interpreter, torch and attnbench imports), summed, for the record.
        self.startup_s = 0.0
        self.starts = 0
        self._servers: dict[tuple[str, int], _Server] = {}
        self._answers: dict[int, dict[str, Any]] = {}
        self._abandoned: set[int] = set()
        self._probes: dict[tuple[Case, int], list[tuple[tuple[str, int], int]]] = {}
        #: Servers that died before they were ready, and why: not started again (each start would fail alike).
        self._broken: dict[tuple[str, int], str] = {}
        self._next_id = 0

    # ------------------------------------------------ what a runner calls

    def submit(self, case: Case, seed: int) -> None:
        """Queue the row's probes in every system server (pinned headline), or start the servers that will time
        it (other headlines); returns at once."""
        if not rebuildable(case.module) or (case, seed) in self._probes or not self._keys(case):
            return
        keys = self._keys(case)
        if case.scenario.allocator != "pinned":
            for key in keys:
                if key not in self._broken:
                    self._server(key)
            return
        request = request_for("probe", case, seed, timeout_s=self.timeout_s)
        self._probes[(case, seed)] = [(key, self._send(key, request)) for key in keys]

    def finish(
        self, case: Case, pinned_values: dict[str, Any], pinned_extra: dict[str, Any], budget: TimingBudget, seed: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The row's values and extra with its allocator figures: wait for its probes, time where needed (one
        timing at a time, nothing else of ours running), combine. `budget` is the run's."""
        started = time.perf_counter()
        allocator = case.scenario.allocator
        if not rebuildable(case.module):
            return self._not_rebuildable(case, pinned_values, pinned_extra)
        if not self._keys(case):  # --allocator-processes 0: the pinned state only, and the row says so
            return pinned_values, {**pinned_extra, "system_allocator_note": NOT_MEASURED}
        self.submit(case, seed)
        # What waiting for a server's start cost this row is recorded apart (once per sweep, not per row).
        self._ready(self._keys(case))
        waited_start = time.perf_counter() - started
        if allocator == "pinned":
            figures = self._pinned_figures(case, pinned_values, budget, seed)
            values, extra = combine_pinned(pinned_values, pinned_extra, figures)
        else:
            figures = self._timed(case, budget, seed, self._keys(case))
            values, extra = combine_headline(pinned_values, pinned_extra, figures, allocator)
        if waited_start > READY_WAIT_S:
            extra["system_worker_start_s"] = waited_start
        extra["system_allocator_s"] = max(0.0, time.perf_counter() - started - waited_start)
        return values, extra

    def collect(self) -> None:
        """Wait until every queued request has answered (before timing: nothing else of ours may run)."""
        while any(server.pending for server in self._servers.values()):
            self._pump(1.0)

    def _ready(self, keys: Iterable[tuple[str, int]]) -> None:
        """Wait until the servers of `keys` have imported everything (answered their ping), or died."""
        # A server that is not ready has its ping pending until it answers or dies.
        while any(key in self._servers and self._servers[key].pending and not self._servers[key].ready for key in keys):
            self._pump(1.0)

    def close(self) -> None:
        """Stop every server: an idle one at the end of its input, a busy one (Ctrl-C, an error) killed."""
        servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            self._stop(server, kill=bool(server.pending))

    def __enter__(self) -> AllocatorServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------ the rows' figures

    def _keys(self, case: Case) -> list[tuple[str, int]]:
        """The servers a case's allocator is measured in: every system server, or the one preload server."""
        if case.scenario.allocator == "pinned":
            return [("system", HASH_SEED_BASE + i) for i in range(self.processes)]
        if case.scenario.allocator == "system":  # the headline needs a process, even when asked for none
            return [("system", HASH_SEED_BASE + i) for i in range(max(1, self.processes))]
        return [(case.scenario.allocator, HASH_SEED_BASE)]

    def _figure(
        self, key: tuple[str, int], answer: dict[str, Any], figures: ProcessFigures | None = None
    ) -> ProcessFigures:
        """One process's figures with one answer added (a failed answer becomes its note)."""
        f = figures or ProcessFigures(server=self._name(key), hash_seed=key[1])
        f.seconds += answer.get("seconds") or 0.0
        f.library, f.allocator = answer.get("library") or f.library, answer.get("allocator") or f.allocator
        if answer.get("status") != OK or not answer.get("values"):
            f.failed(answer.get("status") or FAILED, answer.get("reason") or "no values")
        return f

    def _pinned_figures(
        self, case: Case, pinned: dict[str, Any], budget: TimingBudget, seed: int
    ) -> list[ProcessFigures]:
        """Each system process's probe, and its timing where any process's faults could cost 10% of the call."""
        probes = self._probes.pop((case, seed))
        self._wait([rid for _, rid in probes])
        figures = []
        for key, rid in probes:
            answer = self._answers.pop(rid)
            f = self._figure(key, answer)
            if not f.note:
                f.faults_per_call = answer["values"]["minor_faults_per_call"]
                f.probe_calls = answer["values"]["probe_calls"]
            figures.append(f)
        if needs_timing(pinned, figures):
            # Every process, not only the one with the most faults: the probe's few calls do not rank the modes
            # well enough (acmix 28x28 went from 11,954 faults per call probed to 6,699 timed), and the spread is
            # the three processes' (tried: 12-15 s less per compare --all, but rows near the mark lost it).
            keys = [key for (key, _), f in zip(probes, figures, strict=True) if not f.note]
            timed = {f.server: f for f in self._timed(case, system_budget(budget), seed, keys)}
            for f in figures:
                extra = timed.get(f.server)
                if extra is not None:
                    f.timing, f.seconds = extra.timing, f.seconds + extra.seconds
                    f.status, f.note = extra.status, extra.note
        return figures

    def _timed(
        self, case: Case, budget: TimingBudget, seed: int, keys: Sequence[tuple[str, int]]
    ) -> list[ProcessFigures]:
        """The case timed in each of `keys`' servers, one after another, once nothing else of ours runs."""
        self.collect()
        figures = []
        for key in keys:
            rid = self._send(key, request_for("time", case, seed, budget, timeout_s=self.timeout_s))
            self._wait([rid])
            answer = self._answers.pop(rid)
            f = self._figure(key, answer)
            if not f.note:
                f.timing = answer["values"]
            figures.append(f)
        return figures

    def _not_rebuildable(
        self, case: Case, values: dict[str, Any], extra: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A module another process cannot build: a note (pinned headline) or a failed row (other headlines)."""
        reason = f"{case.scenario.allocator} allocator state: {NOT_REBUILDABLE}"
        if case.scenario.allocator == "pinned":
            return values, {**extra, "system_allocator_note": reason.replace("pinned", "system")}
        return {**values, "status": FAILED, "reason": reason}, extra

    # ------------------------------------------------ processes and pipes

    def _name(self, key: tuple[str, int]) -> str:
        allocator, seed = key
        return f"{allocator} server (PYTHONHASHSEED={seed})"

    def _server(self, key: tuple[str, int]) -> _Server:
        """The server of `key`, started (without waiting for it) if it is not running."""
        server = self._servers.get(key)
        if server is not None:
            return server
        allocator, seed = key
        log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server; closed in _stop())
        proc = subprocess.Popen(
            [sys.executable, *SERVER_ARGS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=_server_env(allocator, seed),
        )
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)
        server = _Server(allocator, seed, self._name(key), proc, log, time.time())
        self._servers[key] = server
        self._send(key, {"op": "ping"})
        return server

    def _send(self, key: tuple[str, int], request: dict[str, Any]) -> int:
        """Queue a request in a server (started if needed); its id. A server that died fails it at once."""
        rid, self._next_id = self._next_id, self._next_id + 1
        if key in self._broken:
            self._answers[rid] = {"status": FAILED, "reason": self._broken[key], "values": None}
            return rid
        server = self._server(key)
        data = memoryview((json.dumps({**request, "id": rid}) + "\n").encode())
        if not server.pending:
            server.busy_since = time.monotonic()
        server.pending.append(rid)
        fd = server.proc.stdin.fileno()  # type: ignore[union-attr]
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:  # its input is full: read its answers meanwhile (it may be waiting on us)
                select.select([], [fd], [], 0.1)
                self._pump(0.0)
            except (BrokenPipeError, OSError):
                self._died(server, f"{server.name} died: {server.log_tail()}")
                break
        return rid

    def _wait(self, rids: Iterable[int]) -> None:
        """Read answers until every one of `rids` is in; one abandoned (an exception) is dropped when it comes."""
        rids = list(rids)
        try:
            while missing := [rid for rid in rids if rid not in self._answers]:
                pending = {rid for server in self._servers.values() for rid in server.pending}
                for rid in set(missing) - pending:  # no server holds it: it will never come
                    self._answers[rid] = {"status": FAILED, "reason": "the request was lost", "values": None}
                self._pump(1.0)
        except BaseException:
            self._abandoned.update(rid for rid in rids if rid not in self._answers)
            for rid in rids:
                self._answers.pop(rid, None)
            raise

    def _pump(self, timeout_s: float) -> None:
        """Read what the busy servers have answered (up to `timeout_s` of waiting); fail dead and hung ones."""
        busy = {s.proc.stdout.fileno(): s for s in self._servers.values() if s.pending}  # type: ignore[union-attr]
        if not busy:
            return
        readable = select.select(list(busy), [], [], timeout_s)[0]
        for fd in readable:
            server = busy[fd]
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self._died(server, f"{server.name} died: {server.log_tail()}")
                continue
            server.buffer.extend(chunk)
            self._lines(server)
        now = time.monotonic()
        for server in busy.values():
            if (
                server.pending
                and server.busy_since is not None
                and now - server.busy_since > self.timeout_s + SERVER_SLACK_S
            ):
                self._died(server, f"{server.name} gave no answer within {self.timeout_s + SERVER_SLACK_S:g} s")

    def _lines(self, server: _Server) -> None:
        """The complete answers in a server's buffer, each matched to its oldest pending request."""
        while b"\n" in server.buffer:
            line, _, rest = bytes(server.buffer).partition(b"\n")
            server.buffer = bytearray(rest)
            rid = server.pending.popleft() if server.pending else None
            server.busy_since = time.monotonic() if server.pending else None
            try:
                answer = json.loads(line)
            except ValueError:
                answer = {"status": FAILED, "reason": f"{server.name} answered nonsense: {line[:200]!r}"}
            if "threads" in answer and not server.ready:  # the ping: the server has imported everything
                server.ready = True
                self.startup_s += max(0.0, float(answer.get("time", server.started_wall)) - server.started_wall)
                self.starts += 1
            elif rid is not None and rid not in self._abandoned:
                self._answers[rid] = answer
            self._abandoned.discard(rid)  # type: ignore[arg-type]

    def _died(self, server: _Server, reason: str) -> None:
        """A server that died or hung: its pending requests fail with `reason`; the next request starts another."""
        for rid in server.pending:
            if rid not in self._abandoned:
                self._answers[rid] = {"status": FAILED, "reason": reason, "values": None}
        server.pending.clear()
        key = (server.allocator, server.hash_seed)
        self._servers.pop(key, None)
        if not server.ready:
            self._broken[key] = f"{reason} (before it was ready: not started again)"
        self._stop(server, kill=True)

    def _stop(self, server: _Server, kill: bool) -> None:
        """End a server: close its input (it exits when its child is done), or kill it (its child dies with it)."""
        proc = server.proc
        try:
            if kill:
                proc.kill()
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        server.log.close()
