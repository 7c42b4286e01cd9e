"""Scratch directories: removed on every exit path, signals held back while one is created and recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attnbench import scratch, store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tmpdir_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR pointed at a fresh directory, re-read by tempfile."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(scratch.tempfile, "tempdir", None)  # re-read TMPDIR
    return tmp_path


def test_removed_when_the_block_raises(tmpdir_here: Path) -> None:
    with pytest.raises(KeyboardInterrupt), scratch.scratch_dir("ab-") as path:
        (Path(path) / "model.onnx").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmpdir_here.iterdir()) == [] and path not in scratch._LIVE


def test_removed_when_the_block_ends(tmpdir_here: Path) -> None:
    with scratch.scratch_dir("ab-") as path:
        assert Path(path).parent == tmpdir_here and Path(path).name.startswith("ab-")
        assert path in scratch._LIVE
        (Path(path) / "nested").mkdir()
    assert list(tmpdir_here.iterdir()) == [] and path not in scratch._LIVE


def test_make_records_until_remove(tmpdir_here: Path) -> None:
    path = scratch.make("ab-")
    assert Path(path).is_dir() and path in scratch._LIVE
    scratch.remove(path)
    assert not Path(path).exists() and path not in scratch._LIVE
    scratch.remove(path)  # twice is harmless


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
        assert signal.getsignal(signal.SIGTERM) is handler  # and the handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        for thread in busy:
            thread.join()


def test_signals_are_not_held_outside_the_main_thread() -> None:
    handlers: list[object] = []

    def worker() -> None:
        with scratch._signals_held():  # signal.signal() would raise here: nothing is touched
            handlers.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert handlers == [before]


@pytest.mark.slow
@pytest.mark.onnx
def test_sigterm_during_an_onnx_export_removes_its_temporary_directory(tmp_path: Path) -> None:
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    out = tmp_path / "r.csv"
    argv = "profile lka --dim 16 --res 8 --backend cpu --backend ort --min-run-time 0.05 --quiet -o".split()
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnbench.cli", *argv, str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch_root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    # Both cases are prepared before either is timed: the cpu case is staged, the ORT export under way.
    while not list(scratch_root.glob("attnbench-onnx-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the export never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM): 0 completed row(s) kept" in err
    assert list(scratch_root.glob("attnbench-onnx-*")) == []
    assert store.load(out).results == []  # a valid, empty report
    assert not list(tmp_path.glob(".*.lock"))
