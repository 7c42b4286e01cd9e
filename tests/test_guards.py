"""Guards around a case (attnbench.guards): the memory guard's arithmetic, the time limit, and the command line
refusing what cannot fit, --force, and the exit-code policy.

Free memory is monkeypatched everywhere, so no test depends on this machine's RAM; `_measure` is replaced
wherever a real run would allocate more than a toy case, so nothing large is ever run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import attnbench.zoo.build
from attnbench import guards, phases, store
from attnbench import results as R
from attnbench.backends import base, get_backend
from attnbench.errors import CaseTimeoutError, ResourceGuardError
from attnbench.guards import GUARD_MARGIN, guard, time_limit
from attnbench.settings import RunOptions
from tests.conftest import run_cli as _cli
from tests.stubs import stub_measure

GIB = 2**30


def _free(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, free: int) -> None:
    """Pretend the host has `free` bytes of RAM available: the one reading of it, /proc/meminfo, says so."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {4 * free // 1024} kB\nMemAvailable:   {free // 1024} kB\n")
    monkeypatch.setattr(base, "MEMINFO", str(meminfo))


def _no_real_measure(monkeypatch: pytest.MonkeyPatch) -> list[R.Case]:
    """Replace the backend run by a stub that records its cases and reports ok without allocating."""
    seen: list[R.Case] = []

    def fake(module: torch.nn.Module, case: R.Case, options: RunOptions) -> tuple[dict[str, Any], dict[str, Any]]:
        seen.append(case)
        return {"status": R.OK, "reason": ""}, {}

    stub_measure(monkeypatch, fake)
    return seen


def _refusing_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any backend run a test failure: the guard must have refused the case before it."""

    def fail(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the guard let a case through that it must refuse")

    stub_measure(monkeypatch, fail)


def _sleep_forever(*args: Any, **kwargs: Any) -> Any:
    """A block that never ends by itself."""
    while True:
        time.sleep(0.05)


@pytest.fixture
def alarm_checked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fast re-firing, and after the test: no timer left armed and the SIGALRM handler restored."""
    monkeypatch.setattr(guards, "TIME_LIMIT_REFIRE_S", 0.05)
    before = signal.getsignal(signal.SIGALRM)
    yield
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before


# ---------------------------------------------------------------- guard arithmetic


def test_guard_refuses_above_free_memory_with_margin() -> None:
    guard(2 * GIB, 3 * GIB, "RAM", force=False)  # 2 GiB x 1.5 = 3 GiB: exactly fits
    with pytest.raises(ResourceGuardError) as info:
        guard(2 * GIB + 1, 3 * GIB, "RAM", force=False)
    message = str(info.value)
    assert "2 GiB" in message and "3 GiB" in message and f"x{GUARD_MARGIN}" in message
    assert "free RAM" in message and "--force" in message


def test_guard_prints_huge_estimates_with_their_own_unit() -> None:
    # mhsa at 8192x8192 holds a 2^52-element attention map: the message said '16777236.00 GiB'.
    with pytest.raises(ResourceGuardError) as info:
        guard(2**54, 16 * GIB, "RAM", force=False)
    assert "estimated peak 16 PiB (x1.5 margin = 24 PiB) exceeds the 16 GiB of free RAM" in str(info.value)


@pytest.mark.parametrize(("backend", "memory"), [("cpu", "RAM"), ("ort", "RAM"), ("cuda", "GPU memory")])
def test_guard_names_the_memory_each_backend_reads(backend: str, memory: str) -> None:
    where = get_backend(backend).memory_name
    assert where == memory
    with pytest.raises(ResourceGuardError, match=f"of free {memory}; use --force"):
        guard(GIB, GIB, where, force=False)


@pytest.mark.parametrize(
    ("estimate", "free", "force"),
    [(10 * GIB, GIB, True), (None, GIB, False), (10 * GIB, None, False)],
    ids=["force", "no-estimate", "free-unknown"],
)
def test_guard_lets_through_forced_or_unknown(estimate: int | None, free: int | None, force: bool) -> None:
    assert guard(estimate, free, "RAM", force=force) is None


def test_guard_margin() -> None:
    assert GUARD_MARGIN == 1.5


# ---------------------------------------------------------------- the time limit


def test_a_block_past_its_limit_raises_the_timeout(alarm_checked: None) -> None:
    with pytest.raises(CaseTimeoutError, match=r"^ran past its time limit of 0.05 s$"), time_limit(0.05):
        _sleep_forever()


def test_a_swallowed_timeout_still_ends_the_block(alarm_checked: None) -> None:
    # The inner suppress swallows the alarm, as a broad `except Exception` in a counter does.
    with pytest.raises(CaseTimeoutError), time_limit(0.05), contextlib.suppress(CaseTimeoutError):
        _sleep_forever()


def test_a_timeout_turned_into_another_error_is_still_the_timeout(alarm_checked: None) -> None:
    with pytest.raises(CaseTimeoutError) as info, time_limit(0.05):
        try:
            _sleep_forever()
        except CaseTimeoutError as exc:  # as a counter reports a failed forward
            raise RuntimeError("the forward failed") from exc
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_swallowed_timeout_after_which_the_block_ends_is_raised_at_its_end(alarm_checked: None) -> None:
    ran_on = []
    with pytest.raises(CaseTimeoutError), time_limit(0.05):
        with contextlib.suppress(CaseTimeoutError):
            _sleep_forever()
        ran_on.append(True)  # the block finished on its own, late
    assert ran_on == [True]


def test_time_limit_is_cleared_after_success_and_error(alarm_checked: None) -> None:
    with time_limit(5.0):
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with pytest.raises(ValueError), time_limit(5.0):
        raise ValueError("inside")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_no_limit_and_other_threads_set_no_timer(alarm_checked: None) -> None:
    for seconds in (None, 0):
        with time_limit(seconds):
            assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    # Signals reach the main thread only: elsewhere the limit cannot bite, so none is set.
    timers: list[tuple[float, float]] = []

    def elsewhere() -> None:
        with time_limit(5.0):
            timers.append(signal.getitimer(signal.ITIMER_REAL))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert timers == [(0.0, 0.0)]


# ---------------------------------------------------------------- the command line


def test_mhsa_512_is_refused_with_estimate_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, tmp_path, 16 * GIB)
    _refusing_measure(monkeypatch)
    path = tmp_path / "r.csv"
    code, out, err = _cli(
        capsys, "profile", "mhsa", "--dim", "64", "--res", "512", "--metrics", "latency,memory", "-o", str(path), "-q"
    )
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("attnbench: error: every case was refused")
    assert "guarded" in last and "estimated peak" in last and "16 GiB of free RAM" in last and "--force" in last
    assert "Traceback" not in err + out
    rows = store.load(path).results  # the files are written before the error
    assert [r.status for r in rows] == [R.GUARDED]
    assert "GiB" in rows[0].reason and "mhsa" in out


def test_force_bypasses_the_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, tmp_path, GIB)
    seen = _no_real_measure(monkeypatch)  # the stub stands in for the 4 TiB run
    path = tmp_path / "r.csv"
    code, _, err = _cli(
        capsys,
        *"profile mhsa --dim 64 --res 512 --metrics latency,memory --force -o".split(),
        str(path),
        "-q",
    )
    assert code == 0, err
    assert [(c.module, c.height) for c in seen] == [("mhsa", 512)]
    assert [r.status for r in store.load(path).results] == [R.OK]


def test_mixed_sweep_keeps_the_guarded_row_and_runs_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, tmp_path, 2 * GIB)
    seen = _no_real_measure(monkeypatch)
    path = tmp_path / "r.csv"
    code, _, err = _cli(
        capsys,
        *"profile mhsa --dim 16 --res 8 --res 512 --res 16 --metrics params,memory -o".split(),
        str(path),
        "-q",
    )
    assert code == 0, err  # a refusal among cases that ran is reported, not an error
    rows = store.load(path).results
    assert [(r.height, r.status) for r in rows] == [(8, R.OK), (512, R.GUARDED), (16, R.OK)]
    assert [c.height for c in seen] == [8, 16]
    assert "--force" in rows[1].reason and rows[1].params is not None  # counted, then refused
    assert "attnbench: error" not in err


def test_mixed_refused_and_failed_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, tmp_path, 2 * GIB)

    def boom(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("simulated fault")

    stub_measure(monkeypatch, boom)
    code, _, err = _cli(
        capsys, "profile", "mhsa", "--dim", "16", "--res", "8", "--res", "512", "--metrics", "memory", "-q"
    )
    assert code == 1, err
    assert "attnbench: error" not in err


def test_every_backend_skipped_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if any(get_backend(b).available()[0] for b in ("cuda", "ort-cuda")):
        pytest.skip("a CUDA backend is available here")
    path = tmp_path / "r.csv"
    code, _, err = _cli(
        capsys,
        *"profile lka --dim 16 --res 8 --backend cuda --backend ort-cuda -o".split(),
        str(path),
    )
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("attnbench: error: every case was refused")
    assert {r.status for r in store.load(path).results} == {R.SKIPPED}


def test_huge_case_is_counted_without_allocating_and_guarded_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # da at 512x512 holds a Linear(262144, 262144): 256 GiB of weights. Counting builds it on the meta
    # device (nothing allocated); a real build must never happen for a case the guard refuses.
    _free(monkeypatch, tmp_path, 16 * GIB)
    real_build = phases.build_module

    def meta_only(*args: Any, **kwargs: Any) -> torch.nn.Module:
        if torch.get_default_device().type != "meta":
            raise AssertionError("built a module in RAM that the guard must refuse")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(phases, "build_module", meta_only)
    monkeypatch.setattr(attnbench.zoo.build, "build_module", meta_only)  # the counting build
    counts = tmp_path / "counts.csv"
    code, _, err = _cli(
        capsys, "profile", "da", "--dim", "64", "--res", "512", "--metrics", "params,macs", "-o", str(counts)
    )
    assert code == 0, err
    (row,) = store.load(counts).results
    assert row.ok and row.params is not None and row.params > 2**36  # 262144^2 weights, counted, not allocated
    assert row.macs_attnbench == row.macs_formula
    measured = tmp_path / "measured.csv"
    code, _, err = _cli(
        capsys, "profile", "da", "--dim", "64", "--res", "512", "--metrics", "memory", "-o", str(measured)
    )
    assert code == 2, err
    (row,) = store.load(measured).results
    assert row.status == R.GUARDED
    assert "GiB" in row.reason and "--force" in row.reason
