"""Typed errors: each message names what was wrong and what is allowed, in one line."""

from __future__ import annotations

import difflib


class AttnbenchError(Exception):
    """Base class for every error attnbench raises on purpose (the CLI prints these as one line)."""

    #: CLI exit code for this kind of error: 2 = bad input / usage, 1 = a run failed.
    exit_code: int = 2


class UsageError(AttnbenchError):
    """A malformed or contradictory option value (reported as one line, exit 2)."""


class UnknownModuleError(AttnbenchError, KeyError):
    """A module name that is not in the registry."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        # Case does not matter to a reader: MHSA means mhsa.
        lowered = {k.lower(): k for k in known}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.4)]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        super().__init__(
            f"unknown module {name!r}: {hint}known modules: {', '.join(known)}; "
            "or your own as path/to/file.py:Name or package.module:Name"
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ModuleSpecError(AttnbenchError, ValueError):
    """A module spec (path/to/file.py:Name, package.module:Name) that cannot be loaded: file, line and why."""


class InvalidCaseError(AttnbenchError, ValueError):
    """A dim, kwargs, resolution or batch that a module cannot run, found before allocating tensors."""

    def __init__(self, module: str, constraint: str, reason: str) -> None:
        self.module = module
        self.constraint = constraint
        self.reason = reason
        super().__init__(f"{module}: {constraint}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # travels back from a worker process whole
        return type(self), (self.module, self.constraint, self.reason)


class BackendUnavailableError(AttnbenchError, RuntimeError):
    """A backend (cuda, ort) or counter that cannot run on this machine."""


class ResourceGuardError(AttnbenchError, RuntimeError):
    """A case whose estimated memory exceeds what is free (pass force to run it anyway)."""


class BaselineError(AttnbenchError, ValueError):
    """A baseline or results file that is missing, empty, corrupt or of another schema."""


class OutputLockedError(UsageError):
    """An output file another attnbench run is writing (refused before measuring, exit 2)."""


class CaseTimeoutError(AttnbenchError, TimeoutError):
    """A case that ran past its time limit."""

    exit_code = 1


class ForwardError(AttnbenchError, RuntimeError):
    """A module's forward raised while it was counted (on meta, then on the CPU): the case cannot run."""

    exit_code = 1
