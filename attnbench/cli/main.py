"""The console entry point: the commands registered, argv settled, errors turned into one line and an exit code."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence

import typer

from attnbench import __version__
from attnbench.cli import commands  # noqa: F401  (registers the commands on the app)
from attnbench.cli.app import (
    DEBUG_ENV,
    app,
    consoles,
    error_line,
    flags_given_alone,
    on_sigterm,
    reset_stop,
    stopped_by,
)
from attnbench.errors import AttnbenchError

try:  # typer >= 0.20 vendors its own click; older versions use the click package
    from typer._click.exceptions import UsageError as ClickUsageError
    from typer.exceptions import Abort, Exit
except ImportError:  # pragma: no cover
    from click.exceptions import Abort, Exit
    from click.exceptions import UsageError as ClickUsageError


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one-line errors on stderr; exit 2 for bad input, 1 for failed cases, 130 for Ctrl-C,
    143 for SIGTERM."""
    consoles.refresh()
    args = list(argv) if argv is not None else sys.argv[1:]
    if not args:  # bare `attnbench`: the help, as a success
        args = ["--help"]
    if args == ["--version"]:  # answered before typer builds its parsers (a third of a second)
        consoles.out.print(f"attnbench {__version__}", highlight=False)
        return 0
    reset_stop()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        return _main(flags_given_alone(args))
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(args: list[str]) -> int:
    debug = bool(os.environ.get(DEBUG_ENV))
    # The command is invoked here, not through typer's own main, which turns a Ctrl-C or SIGTERM that escapes a
    # command into a bare exit 130: here the stop is said, and SIGTERM keeps its 143.
    command = typer.main.get_command(app)
    try:
        with command.make_context("attnbench", list(args)) as ctx:
            command.invoke(ctx)
    except Exit as exc:
        return exc.exit_code
    except (Abort, KeyboardInterrupt):
        return _stopped()
    except ClickUsageError as exc:
        error_line(exc.format_message())
        return 2
    except AttnbenchError as exc:
        if debug:
            raise
        error_line(str(exc))
        return exc.exit_code
    return 0


def _stopped() -> int:
    """Say what stopped the run; its exit code (130 for Ctrl-C, 143 for SIGTERM)."""
    how, code = stopped_by()
    consoles.err.print(f"attnbench: {how}", highlight=False)
    return code
