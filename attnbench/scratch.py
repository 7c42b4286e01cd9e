"""Temporary directories that a signal cannot leak: removed on exit from their block, or at interpreter exit.

tempfile.TemporaryDirectory leaves its directory behind when SIGTERM (turned into an exception by the CLI)
lands between the mkdir and the registration of its finalizer, or in the middle of its removal (a bare
mkdtemp, before its owner's cleanup is armed): a process descheduled right after the mkdir on a loaded
machine gets the signal exactly there. Here the directory is created and recorded with the signals held
back, and every recorded directory that is still there at interpreter exit is removed then.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator

_LIVE: set[str] = set()
_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT and SIGTERM until the block ends (main thread only, where Python runs signal handlers).

    A thread mask (pthread_sigmask) holds a signal back from the calling thread only: the kernel hands a
    process-directed signal to any thread that does not block it, and torch always starts threads of its own.
    Python, though, runs every handler in the main thread, so a handler that only notes the signal defers it
    whichever thread the kernel chose; the noted signals are raised again, in order, once the block is over.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for sig in pending:
            signal.raise_signal(sig)


def make(prefix: str) -> str:
    """A fresh temporary directory, recorded for removal at exit until remove() takes it."""
    with _signals_held():
        path = tempfile.mkdtemp(prefix=prefix)
        _LIVE.add(path)
    return path


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[str]:
    """A fresh temporary directory for the block, removed when it exits however it exits."""
    path = make(prefix)
    try:
        yield path
    finally:
        remove(path)


def remove(path: str) -> None:
    """Remove a scratch directory; what a signal interrupts here is finished at interpreter exit."""
    shutil.rmtree(path, ignore_errors=True)
    _LIVE.discard(path)


@atexit.register
def _remove_leftovers() -> None:
    for path in list(_LIVE):
        remove(path)
