"""Guards around a case: the memory guard (an estimate against free memory) and the per-case time limit."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from attnbench.errors import CaseTimeoutError, ResourceGuardError
from attnbench.fmt import nbytes

#: The memory guard refuses a case whose estimate, times this margin, exceeds the free memory.
GUARD_MARGIN = 1.5
#: After a case's time limit, the alarm repeats this often until the case gives up (see time_limit).
TIME_LIMIT_REFIRE_S = 0.25


def guard(estimate_bytes: int | None, free_bytes: int | None, where: str, force: bool) -> None:
    """Raise ResourceGuardError when the estimated peak (with margin) exceeds the free memory `where` says."""
    if force or estimate_bytes is None or free_bytes is None:
        return
    need = estimate_bytes * GUARD_MARGIN
    if need > free_bytes:
        raise ResourceGuardError(
            f"estimated peak {nbytes(estimate_bytes)} (x{GUARD_MARGIN} margin = {nbytes(need)}) exceeds the "
            f"{nbytes(free_bytes)} of free {where}; use --force to run it anyway"
        )


def _importing(frame: Any) -> bool:
    """True when the interrupted stack is inside the import machinery."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise CaseTimeoutError in the main thread once `seconds` have passed (checked between Python steps).

    A single long kernel finishes before the limit bites: the limit stops loops, not one op. An import in
    progress is not interrupted, and a timeout that the block swallowed is raised again when it ends.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    message = f"ran past its time limit of {seconds:g} s"
    state = {"active": True, "fired": False}

    def _expire(signum: int, frame: Any) -> None:
        # Not while the limit is being cleared, and never inside an import: an import interrupted half-way
        # leaves a broken module in sys.modules for every later case. The next alarm tries again.
        if not state["active"] or _importing(frame):
            return
        state["fired"] = True
        raise CaseTimeoutError(message)

    previous = signal.signal(signal.SIGALRM, _expire)
    # The alarm fires again every TIME_LIMIT_REFIRE_S: counters and exporters catch `Exception` to turn a
    # failure into a status, so one alarm could be swallowed and the case go on past its limit.
    signal.setitimer(signal.ITIMER_REAL, seconds, TIME_LIMIT_REFIRE_S)
    try:
        yield
    except CaseTimeoutError:
        raise
    except Exception as exc:
        # A timeout caught inside and turned into another error (a counter's "failed" report, then a failed
        # forward) is still the timeout.
        if state["fired"]:
            raise CaseTimeoutError(message) from exc
        raise
    finally:
        state["active"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if state["fired"]:  # swallowed inside, and the block then finished: it still ran past its limit
        raise CaseTimeoutError(message)
