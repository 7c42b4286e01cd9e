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
    """Hold SIGINT and SIGTERM back (main thread, where Python runs handlers; POSIX only) for the block."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
