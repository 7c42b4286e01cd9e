"""Sweep: a frozen description of what to measure; it checks its values and yields one Case per combination.

Like torch.utils.benchmark's TaskSpec, a Sweep holds plain values only. The CLI parses strings into them and the
Python API builds one directly; both then hand `sweep.cases()` to the runner. Everything a user can get wrong
is refused by `check()` before anything is built or measured.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attnbench.errors import BackendUnavailableError, InvalidCaseError, UsageError
from attnbench.results import DEFAULT_ALLOCATOR, DEFAULT_DTYPE, DEFAULT_MODE, USER_LAYOUTS, Case
from attnbench.shard import Shard, check_shard, select
from attnbench.zoo.build import check_case
from attnbench.zoo.registry import get_spec

#: The dtypes a Case may name (a backend that cannot run one gives a skipped row, not a usage error).
DTYPES = ("float32", "float16", "bfloat16")
MODES = ("infer", "train")
#: Which allocator state a CPU row's headline latency is taken in (see attnbench.sysalloc).
ALLOCATORS = ("pinned", "system")
Resolution = tuple[int, int]


def frozen(value: Any) -> Any:
    """Lists and tuples, nested too, as tuples (so a Case stays hashable); check_case turns them back."""
    return tuple(frozen(v) for v in value) if isinstance(value, list | tuple) else value


def frozen_kwargs(kwargs: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Kwargs as a sorted tuple of (key, hashable value) pairs."""
    return tuple(sorted((k, frozen(v)) for k, v in (kwargs or {}).items()))


@dataclass(frozen=True)
class Sweep:
    """Every combination of these values is one Case; cases of one geometry come out adjacent."""

    modules: tuple[str, ...]
    dims: tuple[int, ...] = (64,)
    resolutions: tuple[Resolution, ...] = ((56, 56),)
    batches: tuple[int, ...] = (1,)
    backends: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = (DEFAULT_DTYPE,)
    threads: tuple[int, ...] = (1,)
    #: Constructor kwargs given to every module.
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: (K, N): plan only shard K of N (attnbench.shard); None plans every case.
    shard: Shard | None = None
    #: Constructor kwargs for one module each, by module (zoo name or spec); they override `kwargs`.
    module_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: What a user's module takes: "image" (B, C, H, W) or "tokens" (B, N, C); "" = image. Zoo modules keep theirs.
    layout: str = ""
    #: Scenario fields (see attnbench.results.Case): each value multiplies the cases.
    modes: tuple[str, ...] = (DEFAULT_MODE,)
    channels_last: tuple[bool, ...] = (False,)
    compile: tuple[bool, ...] = (False,)
    allocators: tuple[str, ...] = (DEFAULT_ALLOCATOR,)

    def __post_init__(self) -> None:
        # Module names as rows record them (a file spec relative to the current directory): pure text work,
        # so './attn.py:A' and 'attn.py:A' are one module, and module_kwargs find theirs whichever was typed.
        from attnbench.zoo.user import normalise  # here: specs imports torch, which `list` and `info` never need

        modules = tuple(dict.fromkeys(normalise(m) for m in self.modules))
        object.__setattr__(self, "modules", modules)
        own = {self._module_of(m): dict(kw) for m, kw in self.module_kwargs.items()}
        object.__setattr__(self, "module_kwargs", own)

    def _module_of(self, key: str) -> str:
        """The module a module_kwargs key means: the module itself, or the Name of exactly one 'path:Name'."""
        from attnbench.zoo.user import normalise

        key = normalise(key)
        named = [m for m in self.modules if m.rpartition(":")[2] == key]
        return named[0] if key not in self.modules and len(named) == 1 else key

    def kwargs_for(self, module: str) -> dict[str, Any]:
        """The constructor kwargs one module of the sweep gets: the shared ones, then its own."""
        return {**self.kwargs, **self.module_kwargs.get(module, {})}

    def layout_for(self, module: str) -> str:
        """The layout the module's cases record: the sweep's for a user's module, "" (its own) for the zoo."""
        return get_spec(module).case_layout(self.layout)

    def cases(self) -> list[Case]:
        """One Case per combination, in plan order (module, dim, resolution, batch, then the scenario).

        With a shard, only that shard's cases, still in plan order.
        """
        layouts = {m: self.layout_for(m) for m in self.modules}
        scenarios = list(
            itertools.product(
                self.modes, self.dtypes, self.threads, self.channels_last, self.compile, self.allocators, self.backends
            )
        )
        plan = [
            Case(
                m,
                d,
                h,
                w,
                b,
                backend,
                dtype,
                threads,
                frozen_kwargs(self.kwargs_for(m)),
                mode=mode,
                channels_last=channels_last,
                compile=compiled,
                allocator=allocator,
                layout=layouts[m],
            )
            for m, d, (h, w), b in itertools.product(self.modules, self.dims, self.resolutions, self.batches)
            for mode, dtype, threads, channels_last, compiled, allocator, backend in scenarios
        ]
        return plan if self.shard is None else select(plan, self.shard)

    def record(self) -> dict[str, Any]:
        """The sweep as plain JSON values, shard left out (written into a run's environment for merging)."""
        values = dataclasses.asdict(self)
        values.pop("shard")
        return json.loads(json.dumps(values, default=str))

    def warnings(self) -> list[str]:
        """What is allowed but probably not meant: more threads than this process may use."""
        from attnbench.env import usable_cores

        cores = usable_cores()
        return [
            f"--threads {t} exceeds the {cores} usable core(s): the threads share cores, so its timings measure "
            "oversubscription rather than parallel speed"
            for t in self.threads
            if t > cores
        ]

    def check(self, measures: bool = True) -> None:
        """Refuse, before anything runs, values no case could use; `measures`: latency or memory was asked for."""
        if not self.modules:
            raise UsageError("name at least one module")
        _positive("--dim", self.dims)
        _positive("--batch", self.batches)
        _positive("--threads", self.threads)
        if self.shard is not None:
            check_shard(self.shard)
        for h, w in self.resolutions:
            if min(h, w) < 1:
                raise UsageError(f"--res {h}x{w}: expected positive H and W (e.g. 56 or 32x64)")
        for m in self.modules:
            get_spec(m)  # an unknown name or a spec that cannot be loaded: one line, before anything runs
        self._check_layout()
        self._check_backends(measures)
        self._check_scenario()
        self._check_kwargs()
        self._check_some_case_valid()

    def _check_layout(self) -> None:
        if not self.layout:
            return
        if self.layout not in USER_LAYOUTS:
            raise UsageError(f"--layout {self.layout!r}: allowed: {', '.join(USER_LAYOUTS)}")
        if not any(get_spec(m).adhoc for m in self.modules):
            # It would change nothing: refuse rather than let a reader think the zoo ran in another layout.
            own = ", ".join(f"{m}: {get_spec(m).layout}" for m in self.modules)
            raise UsageError(
                f"--layout applies to your own modules (path/to/file.py:Name, package.module:Name); "
                f"zoo modules keep their own layout ({own})"
            )

    def _check_backends(self, measures: bool) -> None:
        from attnbench.backends import get_backend, list_backends

        known = list_backends()
        for b in self.backends:
            if b not in known:
                raise UsageError(f"--backend {b!r}: unknown; allowed: {', '.join(known)}")
        # A backend asked for alone must exist here; in a multi-backend run the missing one becomes skipped rows.
        if len(self.backends) == 1 and measures:
            ok, why = get_backend(self.backends[0]).available()
            if not ok:
                raise BackendUnavailableError(f"backend {self.backends[0]!r} is not available here: {why}")

    def _check_scenario(self) -> None:
        # Only names are checked here: a backend that cannot run a dtype, training or compile gives skipped rows.
        for option, values, allowed in (
            ("--dtype", self.dtypes, DTYPES),
            ("--mode", self.modes, MODES),
            ("--allocator", self.allocators, ALLOCATORS),
        ):
            for value in values:
                if value not in allowed:
                    raise UsageError(f"{option} {value!r}: allowed: {', '.join(allowed)}")

    def _check_kwargs(self) -> None:
        # A kwarg a module does not take, or of the wrong type, is bad input whatever the sweep; a constraint a
        # case breaks is judged per case. A user's constructor that refuses every dim is bad input too.
        for m in self.module_kwargs:
            if m not in self.modules:
                raise UsageError(f"--kw {m}@...: {m} is not a module of this run (modules: {', '.join(self.modules)})")
        for m in self.modules:
            refusals = []
            for d in self.dims:
                try:
                    check_case(m, d, None, 1, self.kwargs_for(m), self.layout_for(m))
                except InvalidCaseError as exc:
                    if exc.constraint == "kwargs":
                        raise self._kwargs_hint(exc) from None
                    if exc.constraint == "constructor":
                        refusals.append(exc)
            if refusals and len(refusals) == len(self.dims):
                raise refusals[0]

    def _kwargs_hint(self, exc: InvalidCaseError) -> InvalidCaseError:
        # A shared --kw that one module of several lacks: say how to give it to the others only.
        own = get_spec(exc.module).defaults
        shared = sorted(k for k in self.kwargs if k not in own and k not in self.module_kwargs.get(exc.module, {}))
        if len(self.modules) < 2 or not shared:
            return exc
        key = shared[0]
        hint = f" (to give it to one module only: --kw MODULE@{key}=VALUE)"
        return InvalidCaseError(exc.module, exc.constraint, exc.reason + hint)

    def _check_some_case_valid(self) -> None:
        # Every case refused by the modules' constraints: that is bad input, not a sweep with failures.
        first_invalid: InvalidCaseError | None = None
        for m, d, (h, w), b in itertools.product(self.modules, self.dims, self.resolutions, self.batches):
            try:
                check_case(m, d, (h, w), b, self.kwargs_for(m), self.layout_for(m))
                return
            except InvalidCaseError as exc:
                first_invalid = first_invalid or exc
        if first_invalid is not None:
            raise first_invalid


def _positive(name: str, values: Sequence[int]) -> None:
    bad = [v for v in values if v < 1]
    if bad:
        raise UsageError(f"{name} {bad[0]}: must be an int >= 1")
