"""Capture console output (Python and C++ alike) so exporter and profiler chatter stays off the terminal."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Captured:
    """What was printed and warned inside a `captured()` block."""

    text: str = ""
    warnings: list[str] = field(default_factory=list)

    def tail(self, limit: int = 600) -> str:
        """The last `limit` characters of output and warnings together, for a failure reason."""
        parts = list(self.warnings) + ([self.text.strip()] if self.text.strip() else [])
        joined = " | ".join(" ".join(p.split()) for p in parts)
        return joined[-limit:]


@contextlib.contextmanager
def captured() -> Iterator[Captured]:
    """Redirect fds 1 and 2 (C++ logging) and sys.stdout/stderr (print) into a buffer; record warnings."""
    result = Captured()
    py_buf = io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[int] = []
    caught: list[warnings.WarningMessage] = []
    # fd-level redirection catches what kineto and the ONNX exporter's C++ parts write directly.
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                saved.append(os.dup(fd))
                os.dup2(sink.fileno(), fd)
        except OSError:
            saved_fds_ok = False
        else:
            saved_fds_ok = True
        try:
            with (
                warnings.catch_warnings(record=True) as recorded,
                contextlib.redirect_stdout(py_buf),
                contextlib.redirect_stderr(py_buf),
            ):
                warnings.simplefilter("always")
                try:
                    yield result
                finally:
                    caught.extend(recorded or [])
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, old in zip((1, 2), saved, strict=False):
                os.dup2(old, fd)
                os.close(old)
            fd_text = ""
            if saved_fds_ok:
                sink.seek(0)
                fd_text = sink.read().decode("utf-8", "replace")
            result.text = py_buf.getvalue() + fd_text
            result.warnings = [f"{w.category.__name__}: {w.message}" for w in caught]
