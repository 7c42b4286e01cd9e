"""The allocator server's parts that run without forking (attnbench.allocserver): the probe, a child's answer, the
requests' JSON form and what a child's death says. Forked children are tested through the servers in
tests/test_sysalloc.py (pytest's own process has run torch ops, so it must not fork a torch child itself)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from attnbench import allocserver
from attnbench.allocserver import PROBE_MIN_CALLS, PROBE_WARMUP_CALLS, case_of, death, ping, probe, request_for
from attnbench.memory import ALLOCATOR_ENV
from attnbench.results import FAILED, OK, Case, Scenario
from attnbench.timing import TimingBudget


def test_a_request_carries_the_case_and_comes_back_as_the_same_case() -> None:
    case = Case("sk", 32, 8, 16, 2, kwargs=(("kernels", (1, 3)),), scenario=Scenario(mode="train", threads=2))
    budget = TimingBudget(min_run_time=0.0, max_run_time=0.1)
    request = json.loads(json.dumps(request_for("time", case, 7, budget, timeout_s=5.0)))
    assert case_of(request["case"]) == case
    assert (request["op"], request["seed"], request["timeout_s"]) == ("time", 7, 5.0)
    assert TimingBudget(**request["budget"]) == budget
    assert "budget" not in request_for("probe", case, 0)


def test_the_probe_counts_faults_over_a_few_calls_after_a_short_warm_up() -> None:
    values = probe(Case("lka", 16, 8, 8), 0)
    # At least PROBE_MIN_CALLS calls and PROBE_MIN_S seconds: a fast module takes many more calls.
    assert values["probe_calls"] > PROBE_MIN_CALLS and values["probe_s"] >= allocserver.PROBE_MIN_S
    assert values["minor_faults_per_call"] >= 0
    assert PROBE_WARMUP_CALLS == 2


@pytest.fixture
def unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """answer() records the allocator settings: never let it pin (or leave unpinned) this test process's glibc."""
    monkeypatch.setattr(allocserver, "pin_allocator", lambda: {"allocator": "glibc (test)", "pinned": False})


@pytest.mark.usefixtures("unpinned")
def test_a_preload_server_whose_library_is_not_mapped_answers_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOCATOR_ENV, "jemalloc")
    monkeypatch.setattr(allocserver, "mapped_library", lambda allocator: None)
    answer = allocserver.answer(request_for("probe", Case("lka", 16, 8, 8), 0))
    assert answer["status"] == FAILED and answer["values"] is None
    assert answer["reason"].startswith("jemalloc is not loaded in the server process (LD_PRELOAD=")


@pytest.mark.usefixtures("unpinned")
def test_a_case_that_cannot_be_built_is_a_failed_answer_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOCATOR_ENV, "system")
    answer = allocserver.answer(request_for("probe", Case("no-such-module", 16, 8, 8), 0))
    assert answer["status"] == FAILED and "no-such-module" in answer["reason"] and answer["values"] is None
    assert answer["allocator"] == {"allocator": "glibc (test)", "pinned": False} and answer["library"] is None


@pytest.mark.parametrize(
    ("status", "timed_out", "expected"),
    [
        (signal.SIGSEGV, False, "the process was killed by SIGSEGV"),
        (signal.SIGKILL, False, "the process was killed by SIGKILL"),
        (3 << 8, False, "the process exited with code 3 without answering"),
        (0, True, "no answer within 2.5 s: the process was killed"),
    ],
)
def test_a_childs_death_says_how_it_died(status: int, timed_out: bool, expected: str) -> None:
    assert death(int(status), timed_out, 2.5) == expected


def test_the_ping_says_the_server_is_ready() -> None:
    answer = ping()
    assert answer["status"] == OK and answer["pid"] == os.getpid() and answer["threads"] >= 1
    assert answer["time"] > 0 and answer["library"] is None  # this process preloads no allocator
