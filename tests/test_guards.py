"""The memory guard: its arithmetic, the CLI refusing what cannot fit, --force, and the exit-code policy.

Free memory is monkeypatched everywhere, so no test depends on this machine's RAM; `_measure` is replaced
wherever a real run would allocate more than a toy case, so nothing large is ever run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import attnbench.runner as runner
from attnbench import results as R
from attnbench.errors import ResourceGuardError
from tests.conftest import run_cli as _cli

GIB = 2**30


def _free(monkeypatch: pytest.MonkeyPatch, free: int | None) -> None:
    monkeypatch.setattr(runner, "available_bytes", lambda backend: free)


def _no_real_measure(monkeypatch: pytest.MonkeyPatch) -> list[R.Case]:
    """Replace the backend run by a stub that records its cases and reports ok without allocating."""
    seen: list[R.Case] = []

    def fake(
        module: torch.nn.Module, case: R.Case, options: runner.RunOptions, min_run_time: float | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        seen.append(case)
        return {"status": R.OK, "reason": ""}, {}

    monkeypatch.setattr(runner, "_measure", fake)
    return seen


def _refusing_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("the guard let a case through that it must refuse")

    monkeypatch.setattr(runner, "_measure", fail)


# ---------------------------------------------------------------- guard arithmetic


def test_guard_refuses_above_free_memory_with_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, 3 * GIB)
    runner.guard(2 * GIB, "cpu", force=False)  # 2 GiB x 1.5 = 3 GiB: exactly fits
    with pytest.raises(ResourceGuardError) as info:
        runner.guard(2 * GIB + 1, "cpu", force=False)
    message = str(info.value)
    assert "2 GiB" in message and "3 GiB" in message and f"x{runner.GUARD_MARGIN}" in message
    assert "free RAM" in message and "--force" in message


def test_guard_prints_huge_estimates_with_their_own_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    # mhsa at 8192x8192 holds a 2^52-element attention map: the message said '16777236.00 GiB'.
    _free(monkeypatch, 16 * GIB)
    with pytest.raises(ResourceGuardError) as info:
        runner.guard(2**54, "cpu", force=False)
    assert "estimated peak 16 PiB (x1.5 margin = 24 PiB) exceeds the 16 GiB of free RAM" in str(info.value)


def test_guard_names_gpu_memory_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, GIB)
    with pytest.raises(ResourceGuardError, match="free GPU memory"):
        runner.guard(GIB, "cuda", force=False)


@pytest.mark.parametrize(
    ("estimate", "free", "force"),
    [(10 * GIB, GIB, True), (None, GIB, False), (10 * GIB, None, False)],
    ids=["force", "no-estimate", "free-unknown"],
)
def test_guard_lets_through_forced_or_unknown(
    monkeypatch: pytest.MonkeyPatch, estimate: int | None, free: int | None, force: bool
) -> None:
    _free(monkeypatch, free)
    runner.guard(estimate, "cpu", force=force)


def test_available_bytes_reads_memavailable() -> None:
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo")
    free = runner.available_bytes("cpu")
    assert isinstance(free, int) and free > 0


# ---------------------------------------------------------------- the CLI


def test_mhsa_512_is_refused_with_estimate_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, 16 * GIB)
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
    rows = R.load(path).results  # the files are written before the error
    assert [r.status for r in rows] == [R.GUARDED]
    assert "GiB" in rows[0].reason and "mhsa" in out


def test_force_bypasses_the_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, GIB)
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
    assert [r.status for r in R.load(path).results] == [R.OK]


def test_mixed_sweep_keeps_the_guarded_row_and_runs_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, 2 * GIB)
    seen = _no_real_measure(monkeypatch)
    path = tmp_path / "r.csv"
    code, _, err = _cli(
        capsys,
        *"profile mhsa --dim 16 --res 8 --res 512 --res 16 --metrics params,memory -o".split(),
        str(path),
        "-q",
    )
    assert code == 0, err  # a refusal among cases that ran is reported, not an error
    rows = R.load(path).results
    assert [(r.height, r.status) for r in rows] == [(8, R.OK), (512, R.GUARDED), (16, R.OK)]
    assert [c.height for c in seen] == [8, 16]
    assert "--force" in rows[1].reason and rows[1].params is not None  # counted, then refused
    assert "attnbench: error" not in err


def test_mixed_refused_and_failed_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _free(monkeypatch, 2 * GIB)

    def boom(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("simulated fault")

    monkeypatch.setattr(runner, "_measure", boom)
    code, _, err = _cli(
        capsys, "profile", "mhsa", "--dim", "16", "--res", "8", "--res", "512", "--metrics", "memory", "-q"
    )
    assert code == 1, err
    assert "attnbench: error" not in err


def test_every_backend_skipped_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attnbench.backends import get_backend

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
    assert {r.status for r in R.load(path).results} == {R.SKIPPED}


def test_huge_case_is_counted_without_allocating_and_guarded_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # da at 512x512 holds a Linear(262144, 262144): 256 GiB of weights. Counting builds it on the meta
    # device (nothing allocated); a real build must never happen for a case the guard refuses.
    _free(monkeypatch, 16 * GIB)
    real_build = runner.build_module

    def meta_only(*args: Any, **kwargs: Any) -> torch.nn.Module:
        if torch.get_default_device().type != "meta":
            raise AssertionError("built a module in RAM that the guard must refuse")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(runner, "build_module", meta_only)
    counts = tmp_path / "counts.csv"
    code, _, err = _cli(
        capsys, "profile", "da", "--dim", "64", "--res", "512", "--metrics", "params,macs", "-o", str(counts)
    )
    assert code == 0, err
    (row,) = R.load(counts).results
    assert row.ok and row.params is not None and row.params > 2**36  # 262144^2 weights, counted, not allocated
    assert row.macs_attnbench == row.macs_formula
    measured = tmp_path / "measured.csv"
    code, _, err = _cli(
        capsys, "profile", "da", "--dim", "64", "--res", "512", "--metrics", "memory", "-o", str(measured)
    )
    assert code == 2, err
    (row,) = R.load(measured).results
    assert row.status == R.GUARDED
    assert "GiB" in row.reason and "--force" in row.reason
