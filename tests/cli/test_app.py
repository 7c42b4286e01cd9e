"""The app's plumbing: consoles sized by COLUMNS (120 for a pipe), on/off options given alone, what stopped a run."""

from __future__ import annotations

import signal

import pytest

from attnbench.cli import app as A
from attnbench.report.tables import PIPE_WIDTH
from attnbench.results import axes


def test_piped_output_honours_columns_and_defaults_to_120(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "77")
    assert A.stdout_width() == 77
    monkeypatch.delenv("COLUMNS")
    assert A.stdout_width() == 120 == PIPE_WIDTH  # pytest's stdout is not a terminal


@pytest.mark.parametrize("columns", ["0", "-3", "wide", ""])
def test_a_columns_value_that_is_no_width_is_ignored(columns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    assert A.stdout_width() == PIPE_WIDTH


def test_consoles_take_columns_as_it_is_when_refreshed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "64")
    consoles = A.Consoles()
    assert consoles.out.width == 64
    monkeypatch.setenv("COLUMNS", "91")
    assert consoles.out.width == 64  # built before: keeps its width until refreshed
    consoles.refresh()
    assert consoles.out.width == 91 and consoles.err.width == 91
    assert consoles.err.stderr and not consoles.out.stderr  # data on stdout, chatter on stderr
    assert consoles.err.soft_wrap  # one message, one line on a log


def test_the_flags_are_the_on_off_scenario_fields() -> None:
    assert sorted(a.option for a in axes().values() if a.flag) == ["--channels-last", "--compile", "--tf32"]


@pytest.mark.parametrize(
    ("argv", "settled"),
    [
        (["profile", "lka", "--compile"], ["profile", "lka", "--compile", "on"]),
        (["profile", "--compile", "lka"], ["profile", "--compile", "on", "lka"]),
        (["profile", "lka", "--compile", "off", "--compile", "on"], None),
        (["profile", "lka", "--channels-last", "--compile"], [*"profile lka --channels-last on --compile on".split()]),
        (["profile", "lka", "--compile", "OFF"], None),  # a value in any case is a value
        (["profile", "lka", "--compile", "yes", "--channels-last", "0"], None),
        (["profile", "lka", "--compile=off"], None),  # given with its value: left alone
        (["profile", "lka", "--dtype", "bf16"], None),  # not an on/off option
        (["profile", "lka", "--backend", "cuda", "--tf32"], [*"profile lka --backend cuda --tf32 on".split()]),
    ],
)
def test_an_on_off_option_given_alone_means_on(argv: list[str], settled: list[str] | None) -> None:
    assert A.flags_given_alone(argv) == (argv if settled is None else settled)


def test_stopped_by_says_interrupted_or_terminated_with_the_shell_s_exit_code() -> None:
    A.reset_stop()
    assert A.stopped_by() == ("interrupted", 130) == ("interrupted", A.EXIT_INTERRUPTED)
    with pytest.raises(A.Terminated) as info:
        A.on_sigterm(signal.SIGTERM, None)
    assert isinstance(info.value, KeyboardInterrupt)  # stops the run as Ctrl-C does
    assert A.stopped_by() == ("terminated (SIGTERM)", 143) == ("terminated (SIGTERM)", A.EXIT_TERMINATED)
    A.on_sigterm(signal.SIGTERM, None)  # a second SIGTERM while the first is handled: no second interrupt
    A.reset_stop()
    assert A.stopped_by() == ("interrupted", 130)


def test_error_line_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    A.error_line("first line\n  second   line")
    out, err = capsys.readouterr()
    assert out == "" and err == "attnbench: error: first line second line\n"
