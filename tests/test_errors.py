"""Typed errors: each says what was wrong and what to do in one line, and carries the CLI's exit code (2 for bad
input, 1 for a run whose cases failed); the command line prints them as that one line, before measuring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from attnbench import errors as E
from attnbench import store
from attnbench.results import Case
from tests.conftest import run_cli

COUNTS = ["--metrics", "params,macs", "--quiet"]
ZOO = ["acmix", "ea", "mhsa", "sk", "da", "epsa", "sam", "clo", "lka", "van"]


# ---------------------------------------------------------------- the classes


@pytest.mark.parametrize(
    ("cls", "bases", "code"),
    [
        (E.UsageError, (E.AttnbenchError,), 2),
        (E.UnknownModuleError, (E.AttnbenchError, KeyError), 2),
        (E.ModuleSpecError, (E.AttnbenchError, ValueError), 2),
        (E.InvalidCaseError, (E.AttnbenchError, ValueError), 2),
        (E.BackendUnavailableError, (E.AttnbenchError, RuntimeError), 2),
        (E.ResourceGuardError, (E.AttnbenchError, RuntimeError), 2),
        (E.BaselineError, (E.AttnbenchError, ValueError), 2),
        (E.OutputLockedError, (E.UsageError,), 2),
        (E.CaseTimeoutError, (E.AttnbenchError, TimeoutError), 1),
        (E.ForwardError, (E.AttnbenchError, RuntimeError), 1),
    ],
)
def test_each_error_is_an_attnbench_error_with_its_exit_code(cls: type, bases: tuple[type, ...], code: int) -> None:
    assert issubclass(cls, E.AttnbenchError)
    assert all(issubclass(cls, base) for base in bases)
    assert cls.exit_code == code


def test_unknown_module_suggests_close_names_and_says_what_else_is_allowed() -> None:
    exc = E.UnknownModuleError("acmx", ZOO)
    assert exc.name == "acmx"
    assert str(exc) == (
        "unknown module 'acmx': did you mean acmix, sam? known modules: " + ", ".join(ZOO) + "; or your own as "
        "path/to/file.py:Name or package.module:Name"
    )
    assert str(E.UnknownModuleError("zzzzzz", ZOO)).startswith("unknown module 'zzzzzz': known modules: acmix,")
    assert str(E.UnknownModuleError("vann", ZOO)).startswith("unknown module 'vann': did you mean van? known")
    with pytest.raises(KeyError):  # a dict-style lookup miss, for callers that catch KeyError
        raise E.UnknownModuleError("x", ZOO)


def test_invalid_case_names_module_constraint_and_reason() -> None:
    exc = E.InvalidCaseError("clo", "H, W % window_size == 0", "H x W = 14x14 is not divisible by window_size=8")
    assert (exc.module, exc.constraint, exc.reason) == (
        "clo",
        "H, W % window_size == 0",
        "H x W = 14x14 is not divisible by window_size=8",
    )
    assert str(exc) == "clo: H, W % window_size == 0: H x W = 14x14 is not divisible by window_size=8"


# ---------------------------------------------------------------- on the command line: one line, the exit code


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "profile", "acmx", *COUNTS)
    assert code == 2 and out == ""
    assert err == f"attnbench: error: {E.UnknownModuleError('acmx', ZOO)}\n"


def test_debug_shows_the_traceback_instead(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNBENCH_DEBUG", "1")
    with pytest.raises(E.UnknownModuleError):
        run_cli(capsys, "profile", "acmx", *COUNTS)


def test_plots_directory_that_cannot_be_made_is_refused_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.runner as runner

    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("measured despite a bad --plots"))
    code, out, err = run_cli(capsys, "profile", "lka", "--plots", "/proc/attnbench-plots", "--quiet")
    assert code == 2 and err.startswith("attnbench: error: --plots /proc/attnbench-plots: cannot create")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_plots_check_leaves_nothing_behind_when_the_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plots = tmp_path / "new" / "plots"
    code, _, err = run_cli(
        capsys, "compare", "lka", "--plots", str(plots), "--baseline", str(tmp_path / "none.csv"), "--quiet"
    )
    assert code == 2 and "no such file" in err
    assert not (tmp_path / "new").exists()


def test_the_same_output_twice_in_one_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "r.csv")
    code, _, err = run_cli(capsys, "profile", "lka", *COUNTS, "-o", path, "-o", path)
    assert code == 2 and "given twice" in err


def test_depth_needs_breakdown_and_a_level(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, *"profile sk --depth 2".split(), *COUNTS)
    assert code == 2 and "only with --breakdown" in err
    code, _, err = run_cli(capsys, *"profile sk --breakdown --depth -1".split(), *COUNTS)
    assert code == 2 and "must be >= 0" in err


def test_gate_that_compares_nothing_never_says_passed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.csv"
    run_cli(capsys, "profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "-o", str(base))
    code, out, err = run_cli(capsys, "compare", "lka", "--dim", "16", "--res", "16", *COUNTS, "--baseline", str(base))
    assert code == 2 and "no case of this run is in the baseline" in err
    assert "PASSED" not in out + err


def test_gate_verdict_is_failed_when_a_case_of_the_run_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.runner as runner

    base = tmp_path / "base.csv"
    run_cli(capsys, "profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "-o", str(base))
    real = runner.count

    def flaky(module: Any, case: Case, *args: Any, **kwargs: Any) -> Any:
        if case.height == 16:  # a case the baseline does not hold, so the comparison itself passes
            raise RuntimeError("simulated fault")
        return real(module, case, *args, **kwargs)

    monkeypatch.setattr(runner, "count", flaky)
    argv = "compare lka --dim 16 --res 8 --res 16".split()
    code, out, _ = run_cli(capsys, *argv, *COUNTS, "--baseline", str(base))
    assert code == 1
    assert (
        "gate: FAILED: 1 case(s) compared, 0 row(s) judged on wall, 0 failing change(s), 1 case(s) of this run failed"
        in out
    )
    assert "PASSED" not in out


def test_an_invalid_case_is_a_refused_row_not_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.csv"
    code, _, err = run_cli(capsys, *"profile clo --dim 32 --res 14 --res 16".split(), *COUNTS, "-o", str(path))
    # 14 breaks clo's window rule: refused by design (invalid), not failed, so the run succeeds.
    assert code == 0, err
    assert [(r.height, r.status) for r in store.load(path).results] == [(14, "invalid"), (16, "ok")]
