"""The attnbench command line: the Typer app, its consoles, signals, and the one way errors are printed.

Data goes to stdout, chatter to stderr. Known errors are one line on stderr and an exit code: 2 for bad input,
1 for a run whose cases failed, 130 for Ctrl-C, 143 for SIGTERM (handled like Ctrl-C: finished rows kept,
temporary files removed). ATTNBENCH_DEBUG=1 shows full tracebacks.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console

from attnbench import __version__
from attnbench.report.tables import PIPE_WIDTH
from attnbench.results import axes

app = typer.Typer(
    name="attnbench",
    help="Build, count, time and compare vision attention modules (CPU, CUDA, ONNX Runtime).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

#: Exit codes for a run stopped by Ctrl-C or SIGTERM (128 + the signal, as shells report it).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
DEBUG_ENV = "ATTNBENCH_DEBUG"


def stdout_width() -> int | None:
    """Table width: COLUMNS when set, the terminal's own width (None: rich asks it), else PIPE_WIDTH for a pipe."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if sys.stdout.isatty() else PIPE_WIDTH


class Consoles:
    """Where a command prints: `out` for data (tables), `err` for chatter (progress, notes, warnings)."""

    def __init__(self) -> None:
        self.out = Console(width=stdout_width())
        # One message, one line on a log: no wrapping; prose notes are wrapped by the caller at the width.
        self.err = Console(stderr=True, soft_wrap=True, width=stdout_width())

    def refresh(self) -> None:
        """Take COLUMNS as it is now (tests and wrappers change it between calls)."""
        self.__init__()


consoles = Consoles()


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """attnbench: build, count, time and compare vision attention modules."""
    if version:
        consoles.out.print(f"attnbench {__version__}")
        raise typer.Exit(0)


def error_line(message: str) -> None:
    """A known error as one line on stderr (plain print: a console would wrap it at the terminal width)."""
    print(f"attnbench: error: {' '.join(message.split())}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the orderly stop Ctrl-C gets: finished rows kept, temporary files removed."""


_stop_signal: int | None = None


def reset_stop() -> None:
    """Forget a signal of an earlier run in this process (tests run many)."""
    global _stop_signal
    _stop_signal = None


def on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM's handler: the first one stops the run as Ctrl-C would."""
    global _stop_signal
    if _stop_signal is not None:
        return  # the first one is being handled: let the files be written and the temporaries removed
    _stop_signal = signum
    raise Terminated


def stopped_by() -> tuple[str, int]:
    """What stopped the run and its exit code: 128 + the signal, as shells report it."""
    if _stop_signal == signal.SIGTERM:
        return "terminated (SIGTERM)", EXIT_TERMINATED
    return "interrupted", EXIT_INTERRUPTED


def flags_given_alone(args: Sequence[str]) -> list[str]:
    """The arguments with a value added to each on/off scenario option given alone (`--compile` -> `--compile
    on`), so that `--compile` and `--compile off --compile on` both work."""
    flags = {a.option for a in axes().values() if a.flag}
    words = {"on", "off", "true", "false", "yes", "no", "1", "0"}
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in flags and (i + 1 == len(args) or args[i + 1].lower() not in words):
            out.append("on")
    return out
