"""captured() (attnbench.capture): Python and C-level output and warnings go into a buffer, and come back out."""

from __future__ import annotations

import os
import sys
import warnings

import pytest

from attnbench.capture import Captured, captured


def test_python_and_file_descriptor_output_is_captured(capfd: pytest.CaptureFixture[str]) -> None:
    with captured() as out:
        print("from print")
        sys.stderr.write("from sys.stderr\n")
        # What C++ code (kineto, the exporters) writes goes to the file descriptors directly.
        os.write(1, b"from fd 1\n")
        os.write(2, b"from fd 2\n")
    for line in ("from print", "from sys.stderr", "from fd 1", "from fd 2"):
        assert line in out.text
    assert out.warnings == []
    # Nothing reached the terminal, and the terminal is back afterwards.
    print("after")
    os.write(2, b"after on fd 2\n")
    terminal = capfd.readouterr()
    assert terminal.out == "after\n" and terminal.err == "after on fd 2\n"


def test_warnings_are_recorded_every_time_with_their_category() -> None:
    with captured() as out:
        for _ in range(2):
            warnings.warn("the legacy exporter is deprecated", DeprecationWarning, stacklevel=1)
        warnings.warn("plain", stacklevel=1)
    assert out.warnings == [
        "DeprecationWarning: the legacy exporter is deprecated",
        "DeprecationWarning: the legacy exporter is deprecated",
        "UserWarning: plain",
    ]


def test_output_is_kept_and_streams_restored_when_the_block_raises(capfd: pytest.CaptureFixture[str]) -> None:
    stdout, stderr = sys.stdout, sys.stderr
    with pytest.raises(RuntimeError, match="export failed"), captured() as out:
        print("progress line")
        os.write(2, b"C++ says why\n")
        raise RuntimeError("export failed")
    assert "progress line" in out.text and "C++ says why" in out.text
    assert sys.stdout is stdout and sys.stderr is stderr
    print("visible")
    assert capfd.readouterr().out == "visible\n"


def test_tail_joins_warnings_and_output_on_one_line_from_the_end() -> None:
    result = Captured(text="  first line\n\nsecond   line \n", warnings=["UserWarning: careful"])
    assert result.tail() == "UserWarning: careful | first line second line"
    assert result.tail(11) == "second line"
    assert Captured().tail() == ""
    assert Captured(text="  \n", warnings=["W: a", "W: b"]).tail() == "W: a | W: b"
