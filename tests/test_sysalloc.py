"""The allocator as users meet it (attnbench.sysalloc): glibc's defaults in several fresh processes (forked children
of system servers), jemalloc and tcmalloc under LD_PRELOAD, the spread and the `†` they make of a row, and servers
or children that crash, hang or die."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

import attnbench.runner as runner
from attnbench import memory, sysalloc
from attnbench import results as R
from attnbench.backends import get_backend
from attnbench.report import summary
from attnbench.report.columns import ALLOC_MARK, summary_columns
from attnbench.report.markdown import allocator_notes, markdown
from attnbench.results import Case, Scenario
from attnbench.settings import RunOptions
from attnbench.sysalloc import (
    FAULT_COST_BOUND_S,
    SECONDARY_MAX_RUN_TIME,
    SECONDARY_PRECISION,
    AllocatorServers,
    ProcessFigures,
    combine_headline,
    combine_pinned,
    faults_could_slow,
    headline_budget,
    is_slower,
    needs_timing,
    secondary_budget,
    system_budget,
)
from attnbench.timing import TimingBudget
from attnbench.zoo.registry import get_spec

#: A short budget with a short warm-up: the rows below are about faults and ratios, not precision.
QUICK = TimingBudget(min_run_time=0.05, max_run_time=0.1, warmup_s=0.0, warmup_calls=2)
FAST = RunOptions(budget=QUICK, metrics=("latency",), allocator_processes=sysalloc.SYSTEM_PROCESSES)
SHORT = TimingBudget(min_run_time=0.01, max_run_time=0.01, warmup_s=0.0, warmup_calls=1)
#: mhsa at 32x32: 8 heads x 1024 x 1024 float32 scores = 32 MiB per map, above glibc's largest dynamic mmap
#: threshold, so a process that does not pin the allocator maps and unmaps it on every call (8192 pages).
BIG_MAP = Case("mhsa", 16, 32, 32)
MAP_PAGES = 8 * 1024 * 1024 * 4 // 4096
SMALL = Case("lka", 16, 8, 8)
PRELOADED = [a for a in ("jemalloc", "tcmalloc") if memory.preload_library(a) is not None]


def _with(case: Case, allocator: str, backend: str = "cpu") -> Case:
    return Case(case.module, case.dim, case.height, case.width, backend=backend, scenario=Scenario(allocator=allocator))


# ---------------------------------------------------------------- a sweep through the runner


@pytest.fixture(scope="module")
def rows() -> dict[str, R.Result]:
    """The big-map case, the small case under every allocator, and an ort row asking for the system one: one sweep
    (three system servers, and a server per installed preload library)."""
    cases = [BIG_MAP, *(_with(SMALL, a) for a in R.ALLOCATORS), _with(SMALL, "system", backend="ort")]
    outcome = runner.run(cases, FAST)
    assert outcome.system_worker_startup_s > 0
    return {f"{r.module} {r.backend} {r.scenario.allocator}": r for r in outcome.results}


@pytest.mark.slow
def test_big_attention_maps_fault_on_every_call_in_every_fresh_process(rows: dict[str, R.Result]) -> None:
    row = rows["mhsa cpu pinned"]
    extra = json.loads(row.extra)
    assert row.ok, row.reason
    # Pinned: the maps stay mapped between calls; in each of the three processes at least one 32 MiB map is mapped
    # again on every call, whatever the process's history.
    assert row.system_processes == sysalloc.SYSTEM_PROCESSES == 3
    assert row.minor_faults_per_call < MAP_PAGES < row.system_faults_lo_per_call <= row.system_faults_hi_per_call
    processes = extra["allocator_processes"]
    assert sorted(p["hash_seed"] for p in processes) == [1, 2, 3]
    assert all(p["probe_faults_per_call"] > MAP_PAGES and p["latency_median_s"] > 0 for p in processes)
    # The other state is the slowest process; the spread spans all three.
    medians = [p["latency_median_s"] for p in processes]
    assert (row.system_latency_lo_s, row.system_latency_hi_s) == (min(medians), max(medians))
    assert row.other_allocator_latency_s == max(medians)
    assert row.system_allocator_slowdown == pytest.approx(max(medians) / row.latency_median_s)
    # The servers left glibc alone (ATTNBENCH_ALLOCATOR=system); this process pinned it.
    assert extra["system_allocator"]["pinned"] is False and "not pinned" in extra["system_allocator"]["note"]
    assert extra["allocator"]["pinned"] is True
    assert extra["system_allocator_s"] >= 0


@pytest.mark.slow
def test_the_system_headline_is_the_middle_process(rows: dict[str, R.Result]) -> None:
    row = rows["lka cpu system"]
    extra = row.extra_dict
    assert row.ok, row.reason
    medians = sorted(p["latency_median_s"] for p in extra["allocator_processes"])
    assert len(medians) == row.system_processes == 3
    assert row.latency_median_s == medians[1] and row.system_latency_hi_s == medians[2]
    assert row.system_allocator_slowdown == pytest.approx(medians[2] / row.other_allocator_latency_s)
    assert extra["headline_allocator"]["pinned"] is False and extra["pinned_latency_iqr_s"] >= 0
    ort = rows["lka ort system"]
    assert ort.status == R.SKIPPED and "glibc setting of the PyTorch CPU process" in ort.reason


@pytest.mark.slow
def test_a_case_with_few_faults_gets_its_faults_counted_but_no_timing(rows: dict[str, R.Result]) -> None:
    row = rows["lka cpu pinned"]
    extra = row.extra_dict
    assert row.ok, row.reason
    processes = extra["allocator_processes"]
    assert row.system_processes == 3 and row.system_faults_hi_per_call < 100
    assert all(p["probe_calls"] >= 3 for p in processes)
    # Timed exactly where a probe's extra faults could cost 10% of the pinned call. A fresh process's probe may
    # still take a fraction of a fault per call here, which at 100 us per fault can reach 10% of a call this
    # short: which branch a run takes depends on that fraction, so both are checked.
    pinned = {"latency_median_s": row.latency_median_s, "minor_faults_per_call": row.minor_faults_per_call}
    needed = any(
        sysalloc.faults_could_slow(pinned, {"minor_faults_per_call": p["probe_faults_per_call"]}) for p in processes
    )
    medians = [p["latency_median_s"] for p in processes if p["latency_median_s"] is not None]
    assert bool(medians) == needed
    if not needed:  # counted, not timed: no latency shown, not slower
        assert row.other_allocator_faults_per_call == row.system_faults_hi_per_call
        assert row.other_allocator_latency_s is None and row.system_latency_lo_s is None
        assert row.system_allocator_slower is False and row.system_allocator_slowdown is None
    else:  # timed: the slowest process is the other state
        assert row.other_allocator_latency_s == max(medians) and row.system_latency_lo_s == min(medians)


@pytest.mark.slow
@pytest.mark.parametrize("allocator", ["jemalloc", "tcmalloc"])
def test_a_preloaded_allocator_is_the_headline_where_installed(rows: dict[str, R.Result], allocator: str) -> None:
    row = rows[f"lka cpu {allocator}"]
    if allocator not in PRELOADED:
        assert row.status == R.SKIPPED and f"apt-get install {memory.PRELOADS[allocator][2]}" in row.reason
        return
    extra = row.extra_dict
    assert row.ok, row.reason
    # The child found the library in its own /proc/self/maps, and says which file.
    [process] = extra["allocator_processes"]
    assert Path(extra["allocator_library"]).name.startswith(memory.PRELOADS[allocator][1][0].split(".so")[0])
    assert process["library"] == extra["allocator_library"] and os.path.isfile(extra["allocator_library"])
    assert extra["headline_allocator"]["allocator"].startswith("preloaded")
    assert row.latency_median_s == process["latency_median_s"] and row.other_allocator_latency_s > 0
    assert row.system_processes is None and row.system_allocator_slower is None


def test_a_missing_library_skips_its_rows_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "preload_library", lambda allocator: None)
    cpu = get_backend("cpu")
    assert cpu.refusal(Scenario(allocator="jemalloc")) == (
        "--allocator jemalloc: libjemalloc.so.2 is not installed (Debian/Ubuntu: apt-get install libjemalloc2); "
        "rows under it are skipped"
    )
    assert "apt-get install libtcmalloc-minimal4" in cpu.refusal(Scenario(allocator="tcmalloc"))
    assert cpu.refusal(Scenario(allocator="system")) is None
    outcome = runner.run([_with(SMALL, "jemalloc")], FAST)
    assert outcome.results[0].status == R.SKIPPED and "libjemalloc2" in outcome.results[0].reason
    assert outcome.system_worker_startup_s == 0.0  # no server was started for it


def test_memory_only_and_non_cpu_rows_do_not_start_a_server() -> None:
    outcome = runner.run([SMALL], RunOptions(metrics=("params", "memory")))
    assert outcome.results[0].ok and outcome.system_worker_startup_s == 0.0
    assert outcome.results[0].other_allocator_latency_s is None and outcome.results[0].system_processes is None


# ---------------------------------------------------------------- fork children that crash, raise, hang


CRASHING = textwrap.dedent(
    """
    import ctypes, os, time
    from torch import nn

    class Base(nn.Module):
        def __init__(self, dim):
            super().__init__()

    class Segfaults(Base):
        def forward(self, x):
            return ctypes.string_at(0)

    class Exits(Base):
        def forward(self, x):
            os._exit(3)

    class Raises(Base):
        def forward(self, x):
            raise RuntimeError("boom")

    class Sleeps(Base):
        def forward(self, x):
            time.sleep(60)
            return x
    """
)
PINNED = {"latency_median_s": 1e-3, "latency_iqr_s": 1e-5, "latency_min_s": 9e-4, "minor_faults_per_call": 0.0}


@pytest.fixture(scope="module")
def crashing(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The file of modules that crash their process in each way (specs resolved here, as a sweep resolves them)."""
    path = tmp_path_factory.mktemp("crash") / "crash.py"
    path.write_text(CRASHING)
    for name in ("Segfaults", "Exits", "Raises", "Sleeps"):
        get_spec(f"{path}:{name}")
    return str(path)


@pytest.fixture(scope="module")
def server() -> Any:
    """One system server (a start is 2-3 s), shared; its children time out after 10 s."""
    with AllocatorServers(processes=1, timeout_s=10.0) as servers:
        yield servers


def _finish(servers: AllocatorServers, case: Case) -> tuple[dict[str, Any], dict[str, Any]]:
    servers.submit(case, 0)
    return servers.finish(case, dict(PINNED), {}, SHORT, 0)


@pytest.mark.slow
def test_crashing_children_fail_their_case_and_the_next_case_still_works(
    server: AllocatorServers, crashing: str
) -> None:
    died = {
        "Segfaults": "the process was killed by SIGSEGV",
        "Exits": "the process exited with code 3 without answering",
        "Raises": "RuntimeError: boom",
    }
    for name, reason in died.items():
        values, extra = _finish(server, Case(f"{crashing}:{name}", 16, 8, 8))
        assert values == PINNED  # the pinned row stands; its system state is a note
        assert (
            extra["system_allocator_note"]
            == f"system allocator state: system server (PYTHONHASHSEED=1): failed: {reason}"
        )
        values, extra = _finish(server, SMALL)
        assert values["system_processes"] == 1 and values["system_faults_hi_per_call"] is not None, extra
    # A row whose headline is the system state fails with the reason.
    values, _ = _finish(server, _with(Case(f"{crashing}:Raises", 16, 8, 8), "system"))
    assert values["status"] == R.FAILED and values["reason"].endswith("failed: RuntimeError: boom")
    assert server.starts == 1  # one server served them all


@pytest.mark.slow
def test_a_child_past_its_timeout_is_killed_and_the_server_goes_on(server: AllocatorServers, crashing: str) -> None:
    server.timeout_s = 1.0
    try:
        _, extra = _finish(server, Case(f"{crashing}:Sleeps", 16, 8, 8))
    finally:
        server.timeout_s = 10.0
    assert extra["system_allocator_note"].endswith("failed: no answer within 1 s: the process was killed")
    values, _ = _finish(server, SMALL)
    assert values["system_processes"] == 1


@pytest.mark.slow
def test_two_threads_after_fork_and_a_file_module_are_measured(server: AllocatorServers, crashing: str) -> None:
    # The server ran no torch op before forking, so a child's OpenMP pool starts clean (2 threads do not hang).
    values, extra = _finish(server, Case("lka", 16, 8, 8, scenario=Scenario(threads=2)))
    assert values["system_processes"] == 1, extra


@pytest.mark.slow
def test_a_server_that_dies_fails_that_case_only_and_is_started_again(server: AllocatorServers) -> None:
    starts = server.starts
    [live] = server._servers.values()
    os.kill(live.proc.pid, signal.SIGKILL)
    live.proc.wait()
    _, extra = _finish(server, SMALL)
    assert "system server (PYTHONHASHSEED=1) died" in extra["system_allocator_note"]
    values, _ = _finish(server, SMALL)
    assert values["system_processes"] == 1 and server.starts == starts + 1


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (("-c", "import sys; sys.exit(3)"), "system server (PYTHONHASHSEED=1) died: (no output)"),
        (("-c", "import time; time.sleep(60)"), "system server (PYTHONHASHSEED=1) gave no answer within 0.5 s"),
    ],
)
def test_a_server_that_dies_or_hangs_at_start_is_a_note_and_not_started_again(
    monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...], reason: str
) -> None:
    monkeypatch.setattr(sysalloc, "SERVER_ARGS", command)
    monkeypatch.setattr(sysalloc, "SERVER_SLACK_S", 0.0)
    with AllocatorServers(processes=1, timeout_s=0.5) as servers:
        for _ in range(2):
            values, extra = _finish(servers, SMALL)
            assert values == PINNED and reason in extra["system_allocator_note"]
        assert "not started again" in extra["system_allocator_note"] and servers.starts == 0
        values, _ = _finish(servers, _with(SMALL, "system"))
        assert values["status"] == R.FAILED and reason in values["reason"]


def test_a_module_given_as_an_object_gets_a_note_and_starts_nothing() -> None:
    case = Case("LocalClass (instance)", 16, 8, 8)
    with AllocatorServers() as servers:
        values, extra = _finish(servers, case)
        assert values == PINNED and "a module given to the Python API as an object" in extra["system_allocator_note"]
        values, _ = _finish(servers, _with(case, "jemalloc"))
        assert values["status"] == R.FAILED and values["reason"].startswith("jemalloc allocator state: measured")
        assert servers.starts == 0 and not servers._servers


# ---------------------------------------------------------------- budgets


def test_the_secondary_budget_has_no_floor_a_short_cap_and_a_looser_precision() -> None:
    run = TimingBudget(min_run_time=1.0, max_run_time=2.0, precision=0.01, warmup_s=0.5, warmup_calls=20)
    expected = TimingBudget(0.0, SECONDARY_MAX_RUN_TIME, SECONDARY_PRECISION, warmup_s=0.5, warmup_calls=20)
    assert secondary_budget(run) == expected
    # A shorter cap and a looser precision of the run are kept; a fixed budget stays fixed.
    assert secondary_budget(TimingBudget(max_run_time=0.1, precision=0.05)).max_run_time == 0.1
    assert secondary_budget(TimingBudget(max_run_time=0.1, precision=0.05)).precision == 0.05
    assert secondary_budget(TimingBudget(precision=None)).precision is None
    # In a fresh child: the run's warm-up seconds, but the probe's two warm-up calls.
    assert system_budget(run) == TimingBudget(0.0, SECONDARY_MAX_RUN_TIME, SECONDARY_PRECISION, 0.5, 2)


def test_the_in_process_budget_is_the_runs_unless_another_allocator_is_the_headline() -> None:
    run = TimingBudget(min_run_time=1.0, max_run_time=2.0)
    assert headline_budget(BIG_MAP, run) == run
    for allocator in ("system", "jemalloc", "tcmalloc"):
        assert headline_budget(_with(BIG_MAP, allocator), run) == secondary_budget(run)


def test_faults_could_slow_only_when_they_could_cost_ten_percent() -> None:
    pinned = {"latency_median_s": 10e-3, "minor_faults_per_call": 5.0}
    # 10% of 10 ms = 1 ms = 10 extra faults at FAULT_COST_BOUND_S (100 us) each: 12 could, 8 could not.
    assert FAULT_COST_BOUND_S == 100e-6
    assert faults_could_slow(pinned, {"minor_faults_per_call": 17.0})
    assert not faults_could_slow(pinned, {"minor_faults_per_call": 13.0})
    assert not faults_could_slow(pinned, {"minor_faults_per_call": None})
    probes = [ProcessFigures("a", 1, faults_per_call=3.0), ProcessFigures("b", 2, faults_per_call=None)]
    assert not needs_timing(pinned, probes)
    assert needs_timing(pinned, [*probes, ProcessFigures("c", 3, faults_per_call=20.0)])


# ---------------------------------------------------------------- the spread and the mark, from faked figures


def _latency(median: float, fastest: float, faults: float) -> dict[str, Any]:
    """Latency columns as a timing makes them."""
    return {
        "latency_median_s": median,
        "latency_iqr_s": median / 100,
        "latency_min_s": fastest,
        "latency_calls": 6,
        "minor_faults_per_call": faults,
    }


PIN = _latency(15e-3, 14e-3, 0.0)


def _process(seed: int, probe: float | None, timing: dict[str, Any] | None = None, note: str = "") -> ProcessFigures:
    f = ProcessFigures(f"system #{seed}", seed, faults_per_call=probe, probe_calls=3, timing=timing)
    f.allocator = {"pinned": False}
    if note:
        f.failed(R.FAILED, note)
    return f


def test_the_spread_over_processes_and_the_slowest_as_the_other_state() -> None:
    # acmix 28x28 as issue 23 saw it: one process in the fast mode, two in the slow one.
    figures = [
        _process(1, 150.0, _latency(15.9e-3, 14.8e-3, 140.0)),
        _process(2, 9000.0, _latency(41.2e-3, 38e-3, 8800.0)),
        _process(3, 9500.0, _latency(42.0e-3, 39e-3, 9600.0)),
    ]
    values, extra = combine_pinned(dict(PIN), {"seed": 0}, figures)
    assert (values["system_processes"], values["system_latency_lo_s"], values["system_latency_hi_s"]) == (
        3,
        15.9e-3,
        42.0e-3,
    )
    assert (values["system_faults_lo_per_call"], values["system_faults_hi_per_call"]) == (140.0, 9600.0)
    assert values["other_allocator_latency_s"] == 42.0e-3 and values["other_allocator_faults_per_call"] == 9600.0
    assert values["system_allocator_slowdown"] == pytest.approx(2.8) and values["system_allocator_slower"] is True
    assert values["latency_median_s"] == 15e-3  # the pinned state stays the headline
    assert extra["system_allocator_min_ratio"] == pytest.approx(39 / 14) and extra["system_latency_iqr_s"] == 42e-5
    assert [p["latency_median_s"] for p in extra["allocator_processes"]] == [15.9e-3, 41.2e-3, 42.0e-3]
    assert extra["seed"] == 0 and extra["system_allocator"] == {"pinned": False}


def test_few_faults_in_every_process_are_counted_and_not_timed() -> None:
    values, extra = combine_pinned(dict(PIN), {}, [_process(1, 3.0), _process(2, 5.0), _process(3, 4.0)])
    assert values == {
        **PIN,
        "system_processes": 3,
        "system_faults_lo_per_call": 3.0,
        "system_faults_hi_per_call": 5.0,
        "other_allocator_faults_per_call": 5.0,
        "system_allocator_slower": False,
    }
    assert "system_allocator_note" not in extra


def test_a_process_that_failed_is_a_note_and_a_needed_timing_that_failed_leaves_the_mark_open() -> None:
    # Process 1's probe crashed; process 2's probe counted enough faults to time it, and its timing crashed.
    figures = [_process(1, None, note="the process was killed by SIGSEGV"), _process(2, 9100.0, note="no answer")]
    values, extra = combine_pinned(dict(PIN), {}, figures)
    assert values["system_processes"] == 1 and values["system_faults_hi_per_call"] == 9100.0
    assert values["system_allocator_slower"] is None and "other_allocator_latency_s" not in values
    assert extra["system_allocator_note"] == (
        "system allocator state: system #1: failed: the process was killed by SIGSEGV; system #2: failed: no answer"
    )
    # No process answered at all: the pinned row as it was, with the note.
    values, extra = combine_pinned(dict(PIN), {}, [_process(1, None, note="boom")])
    assert values == PIN and extra["system_allocator_note"].endswith("boom")


def test_no_allocator_processes_leaves_the_pinned_row_with_a_note() -> None:
    servers, case = AllocatorServers(processes=0), Case("lka", 16, 8, 8)
    servers.submit(case, 0)
    values, extra = servers.finish(case, dict(PIN), {}, QUICK, 0)
    assert values == PIN and extra["system_allocator_note"] == sysalloc.NOT_MEASURED
    assert servers._servers == {} and servers._probes == {}  # nothing started, nothing queued
    # A system headline still needs a process: one server, not none.
    assert servers._keys(_with(case, "system")) == [("system", sysalloc.HASH_SEED_BASE)]


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ((30e-3, 28e-3, 24_600.0), True),  # mhsa's maps: 2x, the fastest call too, faults enough for it
        ((20e-3, 18e-3, 4.0), False),  # 33% slower, but 4 faults cannot cost 1.5 ms: noise
        ((16e-3, 15e-3, 24_600.0), False),  # faults, but within 10%
        ((20e-3, 14e-3, 24_600.0), False),  # a slower median whose fastest call is not slower: noise
    ],
)
def test_any_process_more_than_ten_percent_slower_marks_the_row(
    system: tuple[float, float, float], expected: bool
) -> None:
    assert is_slower(PIN, _latency(*system)) is expected
    # Two processes within 10% of pinned and the third as given: the third alone decides the mark.
    calm = [_process(i, 24_600.0, _latency(15.5e-3, 14.2e-3, 24_600.0)) for i in (1, 2)]
    values, _ = combine_pinned(dict(PIN), {}, [*calm, _process(3, system[2], _latency(*system))])
    assert values["system_allocator_slower"] is expected
    assert values["system_allocator_slowdown"] == pytest.approx(max(system[0], 15.5e-3) / 15e-3)


def test_the_system_headline_takes_the_middle_process_and_the_pinned_state_as_the_other() -> None:
    figures = [
        _process(1, None, _latency(42e-3, 39e-3, 9000.0)),
        _process(2, None, _latency(16e-3, 15e-3, 100.0)),
        _process(3, None, note="the process was killed by SIGKILL"),
        _process(4, None, _latency(41e-3, 38e-3, 8800.0)),
    ]
    values, extra = combine_headline(dict(PIN), {}, figures, "system")
    # Of an even count, the slower middle one: 41 ms of (16, 41, 42).
    assert values["latency_median_s"] == 41e-3 and extra["headline_process"] == "system #4"
    assert values["other_allocator_latency_s"] == 15e-3 and values["other_allocator_faults_per_call"] == 0.0
    assert (values["system_processes"], values["system_latency_lo_s"], values["system_latency_hi_s"]) == (
        3,
        16e-3,
        42e-3,
    )
    assert values["system_allocator_slowdown"] == pytest.approx(2.8) and values["system_allocator_slower"] is True
    assert extra["allocator_note"].startswith("system allocator: system #3: failed: the process was killed")
    assert extra["pinned_latency_iqr_s"] == PIN["latency_iqr_s"]


def test_a_preloaded_headline_records_its_library_and_fails_without_a_timing() -> None:
    f = _process(1, None, _latency(12e-3, 11e-3, 2.0))
    f.library = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    values, extra = combine_headline(dict(PIN), {}, [f], "jemalloc")
    assert values["latency_median_s"] == 12e-3 and values["other_allocator_latency_s"] == 15e-3
    assert extra["allocator_library"] == f.library and "system_processes" not in values
    failed = _process(1, None, note="jemalloc is not loaded in the server process (LD_PRELOAD='')")
    values, _ = combine_headline(dict(PIN), {}, [failed], "jemalloc")
    assert values["status"] == R.FAILED and values["reason"].startswith("jemalloc allocator: system #1: failed")


def test_a_slower_system_state_is_marked_and_said() -> None:
    row = R.Result.for_case(
        BIG_MAP,
        latency_median_s=0.010,
        latency_iqr_s=0.001,
        other_allocator_latency_s=0.030,
        other_allocator_faults_per_call=24_600.0,
        system_allocator_slowdown=3.0,
        system_allocator_slower=True,
        system_processes=3,
        system_latency_lo_s=0.028,
        system_latency_hi_s=0.030,
    )
    table = summary.summary([row])
    cols = {c.header: c.cell for c in summary_columns(table, ["cpu"])}
    first = table.iloc[0]
    assert cols["cpu [ms] med±IQR"](first).endswith(ALLOC_MARK)
    assert cols["cpu [ms] system"](first) == "30"
    [note] = allocator_notes([row])
    assert "30 ms with glibc's default allocator (the slowest of 3 fresh processes), 3x the pinned 10 ms" in note
    assert "24,600 page faults" in note
    md = markdown([row], {})
    assert "## Allocator" in md and ALLOC_MARK in md


def test_a_system_server_gets_glibcs_defaults_and_a_preload_server_the_users_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1073741824")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1:glibc.cpu.hwcaps=-AVX512F")
    monkeypatch.setenv("MALLOC_CONF", "dirty_decay_ms:-1")
    monkeypatch.setenv("LD_PRELOAD", "/opt/libjemalloc.so.2:/opt/libmine.so")
    system = sysalloc._server_env("system", 2)
    assert "MALLOC_MMAP_THRESHOLD_" not in system and system["GLIBC_TUNABLES"] == "glibc.cpu.hwcaps=-AVX512F"
    assert system["LD_PRELOAD"] == "/opt/libmine.so"  # the user's jemalloc is not the system state
    assert (system["ATTNBENCH_ALLOCATOR"], system["PYTHONHASHSEED"]) == ("system", "2")
    monkeypatch.setattr(sysalloc, "preload_library", lambda allocator: f"/usr/lib/lib{allocator}.so")
    preload = sysalloc._server_env("tcmalloc", 1)
    assert preload["LD_PRELOAD"] == "/usr/lib/libtcmalloc.so:/opt/libmine.so"
    assert preload["MALLOC_MMAP_THRESHOLD_"] == "1073741824" and preload["MALLOC_CONF"] == "dirty_decay_ms:-1"
