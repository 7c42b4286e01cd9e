"""The console entry point: every bad input is one line on stderr and exit 2; known errors map to their exit
codes (1 for a failed run, 130 for Ctrl-C, 143 for SIGTERM); ATTNBENCH_DEBUG shows the traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import attnbench
from attnbench.cli import app as A
from attnbench.cli import main
from attnbench.cli import run as run_module
from attnbench.errors import AttnbenchError, CaseTimeoutError, UnknownModuleError, UsageError
from tests.bad_inputs import BAD_INPUTS, argv_for, prepare
from tests.conftest import run_cli as run

ROOT = Path(__file__).resolve().parents[2]
COUNTS = ["lka", "--dim", "16", "--res", "8", "--metrics", "params,macs", "--quiet"]


@pytest.mark.parametrize(("argv", "needle"), [(a, n) for _, a, n in BAD_INPUTS], ids=[i for i, _, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    prepare(str(tmp_path))
    code, out, err = run(capsys, *argv_for(argv, str(tmp_path)))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("attnbench: error:")
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in err + out
    assert not (tmp_path / "out.csv").exists(), "nothing is written for bad input"


def test_bad_input_ids_are_unique() -> None:
    ids = [i for i, _, _ in BAD_INPUTS]
    assert len(ids) == len(set(ids))


def test_version_and_help_succeed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--version")
    assert (code, out, err) == (0, f"attnbench {attnbench.__version__}\n", "")
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "Usage:" in out
    for command in ("list", "info", "env", "profile", "compare", "report"):
        assert command in out
    code, out, _ = run(capsys, "profile", "--help")
    assert code == 0 and "--compile-mode" in out and "--warmup" in out


def raising(exc: BaseException) -> Callable[..., None]:
    """A stand-in for measure_and_render that raises `exc` once the request is built."""

    def measure_and_render(*args: object, **kwargs: object) -> None:
        raise exc

    return measure_and_render


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (UsageError("--res 'x': expected an int"), 2, "attnbench: error: --res 'x': expected an int"),
        (
            AttnbenchError("every case was refused;\n first: ..."),
            2,
            "attnbench: error: every case was refused; first: ...",
        ),
        (CaseTimeoutError("lka: ran past 3 s"), 1, "attnbench: error: lka: ran past 3 s"),
        (
            UnknownModuleError("acmx", ["acmix", "mhsa"]),
            2,
            "attnbench: error: unknown module 'acmx': did you mean acmix?",
        ),
    ],
    ids=["usage", "refused", "failed", "unknown-module"],
)
def test_known_errors_are_one_line_and_their_exit_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, exc: Exception, code: int, line: str
) -> None:
    monkeypatch.setattr(run_module, "measure_and_render", raising(exc))
    got, out, err = run(capsys, "profile", *COUNTS)
    assert got == code
    assert len(err.splitlines()) == 1 and err.startswith(line), err
    assert out == ""


def test_ctrl_c_is_130(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module, "measure_and_render", raising(KeyboardInterrupt()))
    code, out, _ = run(capsys, "profile", *COUNTS)
    assert code == 130 and out == ""


#: A stop outside the sweep (before it, while rendering, in `report`) is said too, and SIGTERM keeps its 143: main()
#: invokes the command itself, since typer's own main turns an escaping interrupt into a bare exit 130.


def test_ctrl_c_outside_the_sweep_says_so(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module, "measure_and_render", raising(KeyboardInterrupt()))
    code, _, err = run(capsys, "profile", *COUNTS)
    assert code == 130 and err == "attnbench: interrupted\n"


def test_the_sigterm_handler_is_installed_while_a_command_runs_and_put_back(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    monkeypatch.setattr(run_module, "measure_and_render", lambda *a, **k: seen.append(signal.getsignal(signal.SIGTERM)))
    before = signal.getsignal(signal.SIGTERM)
    assert run(capsys, "profile", *COUNTS)[0] == 0
    assert seen == [A.on_sigterm]
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_outside_the_sweep_is_143(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def terminated(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, as Ctrl-C would

    monkeypatch.setattr(run_module, "measure_and_render", terminated)
    code, _, err = run(capsys, "profile", *COUNTS)
    assert code == 143 and err == "attnbench: terminated (SIGTERM)\n"


def test_debug_shows_the_traceback_of_a_known_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(A.DEBUG_ENV, "1")
    with pytest.raises(UnknownModuleError, match="did you mean acmix"):
        main(["profile", "acmx", "--quiet"])
    code, _, err = run(capsys, "profile", "lka", "--speed", "9")  # the command line's own errors stay one line
    assert code == 2 and err.startswith("attnbench: error: No such option: --speed")
    monkeypatch.delenv(A.DEBUG_ENV)
    assert run(capsys, "profile", "acmx", "--quiet")[0] == 2


def test_an_unexpected_error_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_module, "measure_and_render", raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # a bug is a traceback, not a tidy line that hides it
        main(["profile", *COUNTS])


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "--version"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"attnbench {attnbench.__version__}\n"
    bad = subprocess.run(
        [sys.executable, "-m", "attnbench.cli", "profile", "acmx"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("attnbench: error: unknown module 'acmx'")
