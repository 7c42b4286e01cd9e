"""Worker processes (attnbench.workers): a job runs in another process, its answer or its own exception comes back,
and a worker that dies or hangs fails that job alone."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator

import pytest

from attnbench.errors import InvalidCaseError
from attnbench.workers import Pool, RemoteError, WorkerError

HERE = "tests.test_workers"


# Jobs: found by name in the worker ("tests.test_workers:fn"), as attnbench's own are.
def pid_and_sum(a: int, b: int) -> tuple[int, int]:
    """The worker's pid and a + b."""
    return os.getpid(), a + b


def invalid() -> None:
    """Raise an attnbench error with fields of its own."""
    raise InvalidCaseError("lka", "dim", "must be a multiple of 8, got 12")


class Unpicklable(Exception):
    """An exception whose constructor a pickle cannot call again."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


def unpicklable() -> None:
    """Raise an exception that cannot travel back as itself."""
    raise Unpicklable(1, 2)


def die(how: str) -> None:
    """End the worker process abruptly."""
    if how == "exit":
        os._exit(7)
    ctypes.string_at(0)  # a segfault


def sleep(seconds: float) -> str:
    """Take a while."""
    time.sleep(seconds)
    return "woke"


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    """One worker for the module's tests (a worker costs seconds of imports)."""
    with Pool(1, timeout_s=60) as shared:
        yield shared


def test_a_job_runs_in_another_process_and_answers(pool: Pool) -> None:
    pid, total = pool.submit(f"{HERE}:pid_and_sum", 2, 3).result()
    assert total == 5 and pid != os.getpid()
    assert pool.submit(f"{HERE}:pid_and_sum", 4, 4).result() == (pid, 8)  # the same worker takes the next job


def test_a_job_raises_its_own_exception_back(pool: Pool) -> None:
    with pytest.raises(InvalidCaseError, match="lka: dim: must be a multiple of 8") as info:
        pool.submit(f"{HERE}:invalid").result()
    assert (info.value.module, info.value.constraint) == ("lka", "dim")
    with pytest.raises(RemoteError, match=r"^Unpicklable: 1\+2$"):
        pool.submit(f"{HERE}:unpicklable").result()


@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_a_worker_that_dies_fails_its_job_and_the_next_job_gets_a_fresh_one(pool: Pool, how: str) -> None:
    before, _ = pool.submit(f"{HERE}:pid_and_sum", 0, 0).result()
    with pytest.raises(WorkerError, match="exit code 7" if how == "exit" else "killed by signal 11"):
        pool.submit(f"{HERE}:die", how).result()
    after, total = pool.submit(f"{HERE}:pid_and_sum", 1, 1).result()
    assert total == 2 and after != before


def test_a_hung_job_fails_at_the_limit_and_close_stops_a_running_one() -> None:
    with Pool(1, timeout_s=0.5) as quick:
        quick.submit(f"{HERE}:pid_and_sum", 0, 0).result()  # started: the limit is for the job, not the imports
        with pytest.raises(WorkerError, match=r"no answer within 0\.5 s"):
            quick.submit(f"{HERE}:sleep", 30).result()
    slow = Pool(1)
    future = slow.submit(f"{HERE}:sleep", 30)
    while not future.running():
        time.sleep(0.01)
    started = time.monotonic()
    slow.close()
    assert time.monotonic() - started < 10 and future.done()
