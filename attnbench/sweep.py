"""Sweep: a frozen description of what to measure; it checks its values and yields one Case per combination.

Like torch.utils.benchmark's TaskSpec, a Sweep holds plain values only. The CLI parses strings into them and the
Python API builds one directly; both then hand it to attnbench.runner.run_sweep. Every scenario field
(attnbench.results.Scenario) is a sweep dimension: `scenarios` names the values of each field that varies. A case
takes the scenario as its backend runs it (fields the backend ignores at their defaults, so no case is planned
twice). Everything a user can get wrong is refused by `check()` before anything is built or measured.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attnbench.backends import get_backend, list_backends
from attnbench.env import usable_cores
from attnbench.errors import BackendUnavailableError, InvalidCaseError, UsageError
from attnbench.results import SCENARIO_FIELDS, Case, Scenario, axis, frozen_kwargs
from attnbench.shard import Shard, check_shard, select
from attnbench.zoo.build import check_case
from attnbench.zoo.registry import get_spec

Resolution = tuple[int, int]


@dataclass(frozen=True)
class Sweep:
    """Every combination of these values is one Case; cases of one geometry come out adjacent."""

    modules: tuple[str, ...]
    dims: tuple[int, ...] = (64,)
    resolutions: tuple[Resolution, ...] = ((56, 56),)
    batches: tuple[int, ...] = (1,)
    backends: tuple[str, ...] = ("cpu",)
    #: The scenario fields that vary: field name -> its values (a field not named keeps its default).
    scenarios: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    #: Constructor kwargs given to every module.
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: Constructor kwargs for one module each, by module (zoo name or spec); they override `kwargs`.
    module_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: (K, N): plan only shard K of N (attnbench.shard); None plans every case.
    shard: Shard | None = None

    def __post_init__(self) -> None:
        # Module names as rows record them (a file spec relative to the current directory): pure text work,
        # so './attn.py:A' and 'attn.py:A' are one module, and module_kwargs find theirs whichever was typed.
        from attnbench.zoo.user import normalise  # here: user specs import torch, which `list` and `info` never need

        modules = tuple(dict.fromkeys(normalise(m) for m in self.modules))
        object.__setattr__(self, "modules", modules)
        own = {self._module_of(m): dict(kw) for m, kw in self.module_kwargs.items()}
        object.__setattr__(self, "module_kwargs", own)
        varied = {name: tuple(dict.fromkeys(values)) for name, values in self.scenarios.items()}
        object.__setattr__(self, "scenarios", varied)

    def _module_of(self, key: str) -> str:
        """The module a module_kwargs key means: the module itself, or the Name of exactly one 'path:Name'."""
        from attnbench.zoo.user import normalise  # torch: see __post_init__

        key = normalise(key)
        named = [m for m in self.modules if m.rpartition(":")[2] == key]
        return named[0] if key not in self.modules and len(named) == 1 else key

    def values(self, name: str) -> tuple[Any, ...]:
        """The values a scenario field takes in this sweep (its default alone when it does not vary)."""
        return self.scenarios.get(name) or (getattr(Scenario(), name),)

    def kwargs_for(self, module: str) -> dict[str, Any]:
        """The constructor kwargs one module of the sweep gets: the shared ones, then its own."""
        return {**self.kwargs, **self.module_kwargs.get(module, {})}

    def layout_for(self, module: str, requested: str = "") -> str:
        """The layout a module's cases record: the requested one for a user's module, "" (its own) for the zoo."""
        return get_spec(module).case_layout(requested)

    def scenario_list(self) -> list[Scenario]:
        """Every combination of the scenario fields' values, in field order (the last field varies fastest)."""
        combos = itertools.product(*(self.values(name) for name in SCENARIO_FIELDS))
        return [Scenario(**dict(zip(SCENARIO_FIELDS, combo, strict=True))) for combo in combos]

    def cases(self) -> list[Case]:
        """One Case per combination, in plan order (module, dim, resolution, batch, then scenario and backend).

        Each case's scenario is the one its backend runs (attnbench.backends.base.Backend.settle), and its
        layout its module's; a combination that settles onto an earlier one is planned once. With a shard,
        only that shard's cases, still in plan order.
        """
        from attnbench.backends import get_backend  # the backends import torch; checks and `list` do not

        backends = {b: get_backend(b) for b in self.backends}
        scenarios = self.scenario_list()
        plan: dict[Case, None] = {}
        for m, d, (h, w), b in itertools.product(self.modules, self.dims, self.resolutions, self.batches):
            kwargs = frozen_kwargs(self.kwargs_for(m))
            for scenario, backend in itertools.product(scenarios, self.backends):
                settled = backends[backend].settle(scenario)
                settled = dataclasses.replace(settled, layout=self.layout_for(m, scenario.layout))
                plan.setdefault(Case(m, d, h, w, b, backend, kwargs, settled), None)
        cases = list(plan)
        return cases if self.shard is None else select(cases, self.shard)

    def record(self) -> dict[str, Any]:
        """The sweep as plain JSON values, shard left out (written into a run's environment for merging)."""
        values = dataclasses.asdict(self)
        values.pop("shard")
        return json.loads(json.dumps(values, default=str))

    def warnings(self) -> list[str]:
        """What is allowed but probably not meant: more threads than this process may use."""

        cores = usable_cores()
        return [
            f"--threads {t} exceeds the {cores} usable core(s): the threads share cores, so its timings measure "
            "oversubscription rather than parallel speed"
            for t in self.values("threads")
            if t > cores
        ]

    def check(self, measures: bool = True) -> None:
        """Refuse, before anything runs, values no case could use; `measures`: latency or memory was asked for."""
        if not self.modules:
            raise UsageError("name at least one module")
        _positive("--dim", self.dims)
        _positive("--batch", self.batches)
        if self.shard is not None:
            check_shard(self.shard)
        for h, w in self.resolutions:
            if min(h, w) < 1:
                raise UsageError(f"--res {h}x{w}: expected positive H and W (e.g. 56 or 32x64)")
        for m in self.modules:
            get_spec(m)  # an unknown name or a spec that cannot be loaded: one line, before anything runs
        self._check_scenario()
        self._check_layout()
        self._check_backends(measures)
        self._check_kwargs()
        self._check_some_case_valid()

    def _check_layout(self) -> None:
        asked = [layout for layout in self.values("layout") if layout]
        if not asked:
            return
        if not any(get_spec(m).adhoc for m in self.modules):
            # It would change nothing: refuse rather than let a reader think the zoo ran in another layout.
            own = ", ".join(f"{m}: {get_spec(m).layout}" for m in self.modules)
            raise UsageError(
                f"--layout applies to your own modules (path/to/file.py:Name, package.module:Name); "
                f"zoo modules keep their own layout ({own})"
            )

    def _check_backends(self, measures: bool) -> None:

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
        # Only values are checked here: a backend that cannot run a dtype, training or compile gives skipped rows.
        for name, values in self.scenarios.items():
            if name not in SCENARIO_FIELDS:
                raise UsageError(f"{name!r} is not a scenario field; they are: {', '.join(SCENARIO_FIELDS)}")
            for value in values:
                reason = axis(name).check(value)
                if reason:
                    raise UsageError(reason)

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
                    check_case(m, d, None, 1, self.kwargs_for(m), self.layout_for(m, self._layout()))
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
                check_case(m, d, (h, w), b, self.kwargs_for(m), self.layout_for(m, self._layout()))
                return
            except InvalidCaseError as exc:
                first_invalid = first_invalid or exc
        if first_invalid is not None:
            raise first_invalid

    def _layout(self) -> str:
        # The first layout asked for judges a user's constructor (a module that takes tokens is built either way).
        return next((layout for layout in self.values("layout") if layout), "")


def _positive(name: str, values: Sequence[int]) -> None:
    bad = [v for v in values if v < 1]
    if bad:
        raise UsageError(f"{name} {bad[0]}: must be an int >= 1")
