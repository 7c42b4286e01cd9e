"""Worker processes for the work of a run that is not a timing (counting, ONNX exports), run in parallel.

A Pool starts up to `size` worker processes (`python -m attnbench.workers`, the same attnbench as this process)
and hands each one job at a time: a function named "module:function", its arguments, its answer, all pickled
and length-prefixed over the worker's stdin and stdout. A job's answer is a concurrent.futures.Future: its result,
the exception the function raised (pickled back as it was), or WorkerError when the worker died, hung past the
job's limit or answered nonsense; the next job then gets a fresh worker. So a failure in a worker is that job's
failure, never the run's end.

Workers are started on first use and run in a session of their own: Ctrl-C at the terminal reaches this process
only, which stops them (close()). They compute on one intra-op thread each (OMP_NUM_THREADS=1), as the timing does.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import queue
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

#: Header of every message: its length in bytes.
_HEADER = struct.Struct("<Q")
#: Set in a worker process (attnbench code can tell it runs in one).
WORKER_ENV = "ATTNBENCH_WORKER"


class WorkerError(RuntimeError):
    """A worker process died, hung past its job's limit, or answered nonsense."""


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("end of stream")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(stream: IO[bytes]) -> Any:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, size))


def resolve(name: str) -> Callable[..., Any]:
    """The function a job names as "package.module:function"."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


class Worker:
    """One worker process: started on first use, one job at a time, restarted after a failure."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._stopped = False
        #: Seconds spent starting this worker (interpreter and imports), over all its starts.
        self.startup_s = 0.0

    def _start(self) -> subprocess.Popen[bytes]:
        started = time.perf_counter()
        # One intra-op thread each, as the timing runs: torch reads these when the first job imports it.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **self.env, WORKER_ENV: "1"}
        # The worker imports the same attnbench as this process, wherever it was imported from.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker; closed in close())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "attnbench.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,  # Ctrl-C goes to the run, which stops its workers
        )
        if self._stopped:  # stop() came while the process was being started: it may not have seen it
            self.stop()
            raise WorkerError("the worker was stopped")
        self.call("attnbench.workers:ping", (), None)
        self.startup_s += time.perf_counter() - started
        return self._proc

    def call(self, fn: str, args: tuple[Any, ...], timeout_s: float | None) -> Any:
        """Run fn(*args) in the worker and return its result (or raise what it raised, or WorkerError)."""
        if self._stopped:
            raise WorkerError("the worker was stopped")
        if self._proc is None or self._proc.poll() is not None:
            if fn == "attnbench.workers:ping":
                raise WorkerError("worker not started")
            self._start()
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            _send(proc.stdin, (fn, args))
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                if not sel.select(timeout_s):
                    raise WorkerError(f"worker gave no answer within {timeout_s:g} s")
            ok, value = _receive(proc.stdout)
        except WorkerError:
            self.close()
            raise
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            tail = self._log_tail()
            self.close()
            raise WorkerError(f"worker died ({type(exc).__name__}): {tail}") from None
        except BaseException:
            self.close()  # Ctrl-C mid-job: the worker's next answer would be stale
            raise
        if ok:
            return value
        raise value

    def _log_tail(self, limit: int = 300) -> str:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
        if self._log is None:
            return ""
        self._log.seek(0)
        text = " ".join(self._log.read().decode("utf-8", "replace").split())
        code = self._proc.returncode if self._proc is not None else None
        signal_name = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"{signal_name}; {text[-limit:] or 'no output'}"

    def stop(self) -> None:
        """Kill the worker now, whatever it is doing (its job fails); it takes no further job."""
        self._stopped = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the worker (end of input, then a kill if it does not exit)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Pool:
    """Up to `size` workers taking jobs from one queue; submit() returns a Future of the job's answer."""

    def __init__(self, size: int, timeout_s: float | None = None) -> None:
        self.size = max(1, size)
        self.timeout_s = timeout_s
        self._jobs: queue.Queue[tuple[str, tuple[Any, ...], Future[Any]] | None] = queue.Queue()
        self._workers: list[Worker] = []
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: str, *args: Any) -> Future[Any]:
        """Queue fn(*args) for the next free worker (starting one if fewer than `size` run)."""
        if self._closed:
            raise RuntimeError("pool is closed")
        future: Future[Any] = Future()
        self._jobs.put((fn, args, future))
        if len(self._threads) < self.size:
            worker = Worker()
            thread = threading.Thread(target=self._serve, args=(worker,), daemon=True, name="attnbench-worker")
            self._workers.append(worker)
            self._threads.append(thread)
            thread.start()
        return future

    def _serve(self, worker: Worker) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(worker.call(fn, args, self.timeout_s))
            except BaseException as exc:  # the job's failure, handed to whoever waits on it
                future.set_exception(exc)
        worker.close()

    @property
    def started(self) -> int:
        """How many workers were started (jobs start them; a pool given none starts none)."""
        return len(self._workers)

    @property
    def startup_s(self) -> float:
        """Seconds spent starting workers, summed over them (they start in parallel)."""
        return sum(w.startup_s for w in self._workers)

    def close(self) -> None:
        """Cancel queued jobs and stop every worker (a job still running is abandoned, its worker killed)."""
        self._closed = True
        with contextlib.suppress(queue.Empty):
            while (job := self._jobs.get_nowait()) is not None:
                job[2].cancel()
        for _ in self._threads:
            self._jobs.put(None)
        for worker in self._workers:
            # A thread blocked on a long job would keep the run waiting: kill its process.
            worker.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ping() -> str:
    """A job that does nothing: the worker answers once its imports are done."""
    return "ok"


class RemoteError(RuntimeError):
    """An exception from a worker that could not travel back as itself: its type's name and message."""


def _portable(exc: Exception) -> Exception:
    """`exc` if it survives a pickle round trip, else a RemoteError with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RemoteError(f"{type(exc).__name__}: {exc}")


def serve() -> None:
    """The worker's loop: one pickled (function, args) per job on stdin, one (ok, value) answer on stdout."""
    answers = os.fdopen(os.dup(1), "wb")
    # Whatever else prints (exporters, warnings) goes to stderr, not into the answers.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    while True:
        try:
            fn, args = _receive(requests)
        except EOFError:
            return
        try:
            answer: tuple[bool, Any] = (True, resolve(fn)(*args))
        except Exception as exc:  # the job's failure goes back to the run; the worker takes the next job
            answer = (False, _portable(exc))
        try:
            _send(answers, answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            _send(answers, (False, WorkerError(f"answer could not be sent back: {type(exc).__name__}: {exc}")))


if __name__ == "__main__":
    # Run the module's own copy, not __main__'s, so that what the worker pickles names attnbench.workers.
    from attnbench.workers import serve as _serve

    _serve()
