"""The zoo's types: what a module spec says (ModuleSpec), what its rules and formulas see (Setting), and where it
comes from (Reference). Types only: the table of zoo entries is attnbench.zoo.registry, user specs attnbench.zoo.user.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attnbench.results import DEFAULT_USER_LAYOUT

if TYPE_CHECKING:  # torch is imported with the module files (list and info read the catalog, without torch)
    from torch import nn

Resolution = tuple[int, int]


@dataclass(frozen=True)
class Reference:
    """Where a module comes from: the paper and the official code it reproduces."""

    paper: str
    arxiv: str
    repo: str
    file: str
    cls: str
    commit: str = ""


@dataclass(frozen=True)
class Setting:
    """What constraints and formulas see: dim, merged kwargs, and (when known) resolution and batch."""

    dim: int
    kwargs: Mapping[str, Any]
    height: int | None = None
    width: int | None = None
    batch: int = 1

    def __getitem__(self, key: str) -> Any:
        return self.kwargs[key]

    @property
    def tokens(self) -> int:
        """Number of tokens N = H * W (needs the resolution)."""
        assert self.height is not None and self.width is not None
        return self.height * self.width


@dataclass(frozen=True)
class Constraint:
    """One rule a case must satisfy; `check` returns a readable reason when the case breaks it."""

    name: str
    check: Callable[[Setting], str | None]
    #: True when the rule needs H and W (checked only once the resolution is known).
    needs_resolution: bool = False


@dataclass(frozen=True)
class Example:
    """A concrete case for tests: valid, or (with `violates`) crafted to break one named constraint."""

    dim: int
    res: Resolution
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch: int = 1
    #: For a bad example: the `Constraint.name` (or "dim", "kwargs", "resolution") it must be refused by.
    violates: str | None = None


@dataclass(frozen=True)
class ModuleSpec:
    """Everything attnbench knows about one zoo entry."""

    name: str
    title: str
    #: builder(dim, res, **kwargs) -> module taking and returning (B, C, H, W).
    builder: Callable[..., nn.Module]
    #: The official module's native layout; token-layout modules are wrapped to (B, C, H, W).
    layout: Literal["image", "tokens"]
    defaults: Mapping[str, Any]
    constraints: tuple[Constraint, ...]
    reference: Reference
    #: Hand-derived parameter count for a Setting (resolution needed only if resolution_bound); None for
    #: a user's module, which has no formula.
    params_formula: Callable[[Setting], int] | None
    #: Hand-derived MAC count (attnbench convention, see attnbench.counting) for a full Setting; None for a
    #: user's module.
    macs_formula: Callable[[Setting], int] | None
    #: True when the weights depend on H and W, so build() needs `res`.
    resolution_bound: bool = False
    #: What differs from the official code (generalisations, dropped arguments), in one paragraph.
    notes: str = ""
    #: One line per kwarg saying what it is.
    kwarg_help: Mapping[str, str] = field(default_factory=dict)
    #: Valid cases the tests build and count (three or more, one non-square, one with non-default kwargs).
    examples: tuple[Example, ...] = ()
    #: One crafted bad case per constraint, each naming the constraint it breaks.
    bad_examples: tuple[Example, ...] = ()
    tags: tuple[str, ...] = ()
    #: True for a module given by file or import path (attnbench.specs): its builder returns the user's module
    #: as is, each case picks the layout it takes (image or tokens), and its kwargs are checked by calling it.
    adhoc: bool = False
    #: The file whose hash identifies the code ("" = the file that defines the builder).
    source_file: str = ""
    #: That file's short hash when its code was loaded ("" = computed on first use, see source_hash()).
    source_hash: str = ""
    #: A user's class or factory function (None for the zoo), called as factory(dim, **kwargs), or as `call` says.
    factory: Callable[..., Any] | None = None
    #: A user's module built by its constructor check on the CPU (its meta build failed), handed over once per
    #: Setting so the run does not build it again (attnbench.zoo.user.Built), or None.
    take_built: Callable[[Setting], Any] | None = None
    #: The explicit call a spec wrote (attnbench.zoo.user.Call): built as written, with no dim; None otherwise.
    call: Any = None

    def case_layout(self, requested: str = "") -> str:
        """The layout a case of this module records: "" (its own) for the zoo, image or tokens for a user's module."""
        if not self.adhoc:
            return ""
        return requested or DEFAULT_USER_LAYOUT


#: A user's file is imported under this prefix plus a hash of its absolute path (attnbench.zoo.user): private,
#: and never a clash with an installed package or with the same file name in two directories.
PRIVATE_PREFIX = "_attnbench_user_"
#: Hex digits of a source file's SHA-256 shown in reports: enough to tell two versions apart at a glance.
SOURCE_HASH_DIGITS = 12


def file_hash(path: str) -> str:
    """First SOURCE_HASH_DIGITS hex digits of the SHA-256 of a file's bytes ('' when it cannot be read)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:SOURCE_HASH_DIGITS]
    except OSError:
        return ""
