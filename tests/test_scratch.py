"""Scratch directories: removed on every exit path, signals held back while one is created and recorded."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from attnbench import scratch


def test_removed_when_the_block_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(scratch.tempfile, "tempdir", None)  # re-read TMPDIR
    with pytest.raises(KeyboardInterrupt), scratch.scratch_dir("ab-") as path:
        (Path(path) / "model.onnx").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [] and path not in scratch._LIVE


def test_a_removal_cut_short_is_finished_at_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    left = tmp_path / "ab-left"
    left.mkdir()
    monkeypatch.setattr(scratch, "_LIVE", {str(left)})  # as if a signal had cut its block's removal short
    scratch._remove_leftovers()
    assert not left.exists() and not scratch._LIVE


@pytest.mark.parametrize("other_threads", [False, True])
def test_a_signal_waits_until_the_directory_is_recorded(other_threads: bool) -> None:
    seen: list[bool] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(True)

    stop = threading.Event()
    busy = [threading.Thread(target=stop.wait) for _ in range(3 if other_threads else 0)]
    for thread in busy:  # threads that do not block the signal: the kernel may hand it to any of them
        thread.start()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with scratch._signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # time for the kernel to deliver it, to whichever thread it picks
            held = list(seen)
        assert held == [] and seen == [True]  # delivered once the block was over, not inside it
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        for thread in busy:
            thread.join()
