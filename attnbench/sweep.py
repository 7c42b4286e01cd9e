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
from attnbench.registry import validate
from attnbench.results import DEFAULT_DTYPE, Case
from attnbench.shard import Shard, check_shard, select

#: The dtypes a Case may name.
DTYPES = ("float32", "float16", "bfloat16")
Resolution = tuple[int, int]


def frozen(value: Any) -> Any:
    """Lists and tuples, nested too, as tuples (so a Case stays hashable); registry.validate turns them back."""
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

    def kwargs_for(self, module: str) -> dict[str, Any]:
        """The constructor kwargs one module of the sweep gets."""
        return dict(self.kwargs)

    def cases(self) -> list[Case]:
        """One Case per combination, in plan order (module, dim, resolution, batch, then the scenario).

        With a shard, only that shard's cases, still in plan order.
        """
        plan = [
            Case(m, d, h, w, b, backend, dtype, threads, frozen_kwargs(self.kwargs_for(m)))
            for m, d, (h, w), b in itertools.product(self.modules, self.dims, self.resolutions, self.batches)
            for dtype, threads, backend in itertools.product(self.dtypes, self.threads, self.backends)
        ]
        return plan if self.shard is None else select(plan, self.shard)

    def record(self) -> dict[str, Any]:
        """The sweep as plain JSON values, shard left out (written into a run's environment for merging)."""
        values = dataclasses.asdict(self)
        values.pop("shard")
        return json.loads(json.dumps(values, default=str))

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
        self._check_backends(measures)
        self._check_dtypes()
        self._check_kwargs()
        self._check_some_case_valid()

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

    def _check_dtypes(self) -> None:
        for dtype in self.dtypes:
            if dtype not in DTYPES:
                raise UsageError(f"--dtype {dtype!r}: allowed: {', '.join(DTYPES)}")
            if dtype != DEFAULT_DTYPE and any(b != "cuda" for b in self.backends):
                raise UsageError(f"--dtype {dtype} is supported on --backend cuda only (CPU and ORT runs are float32)")

    def _check_kwargs(self) -> None:
        # A kwarg a module does not take, or of the wrong type, is bad input whatever the sweep; a constraint a
        # case breaks is judged per case.
        for m in self.modules:
            for d in self.dims:
                try:
                    validate(m, d, None, **self.kwargs_for(m))
                except InvalidCaseError as exc:
                    if exc.constraint == "kwargs":
                        raise

    def _check_some_case_valid(self) -> None:
        # Every case refused by the modules' constraints: that is bad input, not a sweep with failures.
        first_invalid: InvalidCaseError | None = None
        for m, d, (h, w), b in itertools.product(self.modules, self.dims, self.resolutions, self.batches):
            try:
                validate(m, d, (h, w), b, **self.kwargs_for(m))
                return
            except InvalidCaseError as exc:
                first_invalid = first_invalid or exc
        if first_invalid is not None:
            raise first_invalid


def _positive(name: str, values: Sequence[int]) -> None:
    bad = [v for v in values if v < 1]
    if bad:
        raise UsageError(f"{name} {bad[0]}: must be an int >= 1")
