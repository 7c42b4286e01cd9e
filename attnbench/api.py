"""profile(): the Python door to the one sweep path (attnbench.runner.run_sweep), taking modules as objects too.

It builds the Sweep the CLI would build from the same values and runs it through run_sweep, so a Python user
gets the CLI's rows: the environment record, roofs, streaming to files (`sink`), the same errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from attnbench.errors import UsageError
from attnbench.results import Result, Scenario
from attnbench.runner import RunOutcome, Sink, run_sweep
from attnbench.settings import RunOptions
from attnbench.sweep import Sweep
from attnbench.zoo.registry import add_spec, get_spec
from attnbench.zoo.user import spec_for_object

#: Channels the Python API measures when `dim` is not given (a module instance needs it given).
DEFAULT_DIM = 64
#: A resolution: a side (H = W) or (H, W).
Res = int | tuple[int, int]


def profile(
    modules: Any,
    dim: int | Sequence[int] | None = None,
    res: Res | Sequence[Res] = 28,
    batch: int | Sequence[int] = 1,
    backend: str | Sequence[str] = "cpu",
    scenario: Scenario | Mapping[str, Any] | None = None,
    options: RunOptions | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> list[Result]:
    """Measure modules over dims, resolutions, batches, backends and scenarios; one Result per case.

    `modules` is one or a list of: zoo names, specs ('path/to/file.py:Name', 'package.module:Name'), nn.Module
    classes or factory functions (built as `Name(dim, **kwargs)`), or nn.Module instances, measured as built
    (an instance needs `dim`, its input channels, one value, and takes no kwargs); or a dict of such modules to
    the constructor kwargs of each. `scenario` is a Scenario, or a mapping of scenario fields to a value or a
    list of values (each list a sweep dimension: {"dtype": ["float32", "bfloat16"], "layout": "tokens"}).
    `kwargs` go to every module. Bad input raises the CLI's errors; the rows are the CLI's rows.
    """
    return profile_outcome(sweep_of(modules, dim, res, batch, backend, scenario, kwargs), options).results


def profile_outcome(sweep: Sweep, options: RunOptions | None = None, sink: Sink | None = None) -> RunOutcome:
    """Run a sweep as profile() does, with its environment record; Ctrl-C raises KeyboardInterrupt at the end."""
    outcome = run_sweep(sweep, options, sink)
    if outcome.interrupted:
        raise KeyboardInterrupt
    return outcome


def sweep_of(
    modules: Any,
    dim: int | Sequence[int] | None,
    res: Res | Sequence[Res],
    batch: int | Sequence[int],
    backend: str | Sequence[str],
    scenario: Scenario | Mapping[str, Any] | None,
    kwargs: Mapping[str, Any] | None,
) -> Sweep:
    """The Sweep profile() runs: objects become cached ad-hoc specs, values become tuples."""
    items = modules if isinstance(modules, Mapping) else {m: {} for m in _as_list(modules)}
    names, instances = _api_modules(list(items))
    own = {name: dict(kw) for name, kw in zip(names, items.values(), strict=True) if kw}
    dims = _as_list(dim) if dim is not None else [DEFAULT_DIM]
    _check_instances(instances, dim, dims, dict(kwargs or {}), own)
    resolutions = [(r, r) if isinstance(r, int) else (int(r[0]), int(r[1])) for r in _as_list(res)]
    return Sweep(
        modules=tuple(names),
        dims=tuple(dims),
        resolutions=tuple(resolutions),
        batches=tuple(_as_list(batch)),
        backends=tuple(dict.fromkeys(_as_list(backend))),
        scenarios=_scenarios(scenario),
        kwargs=dict(kwargs or {}),
        module_kwargs=own,
    )


def _scenarios(scenario: Scenario | Mapping[str, Any] | None) -> dict[str, tuple[Any, ...]]:
    """The scenario fields that vary, each as a tuple of values."""
    if scenario is None:
        return {}
    if isinstance(scenario, Scenario):
        return {name: (value,) for name, value in scenario.changed().items()}
    return {name: tuple(_as_list(values)) for name, values in scenario.items()}


def _as_list(v: Any) -> list[Any]:
    # A (H, W) pair given directly as `res` is one resolution, not a list of two.
    is_hw = isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v)
    return list(v) if isinstance(v, (list, tuple)) and not is_hw else [v]


def _api_modules(items: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Module names for the sweep (objects become cached ad-hoc specs), and the names of instances."""
    names: list[str] = []
    instances: list[str] = []
    for item in items:
        if isinstance(item, str):
            names.append(get_spec(item).name)
            continue
        spec = add_spec(spec_for_object(item, set(names)))
        names.append(spec.name)
        if isinstance(item, nn.Module):
            instances.append(spec.name)
    return names, instances


def _check_instances(
    instances: Sequence[str],
    dim: Any,
    dims: Sequence[int],
    kwargs: Mapping[str, Any],
    own: Mapping[str, Mapping[str, Any]],
) -> None:
    """Refuse what contradicts a module that is already built: no dim, several dims, constructor kwargs."""
    if not instances:
        return
    if dim is None or len(dims) != 1:
        raise UsageError(
            f"{instances[0]} is an nn.Module instance, measured as built: pass dim= its input channels (one value)"
        )
    for name in instances:
        given = {**kwargs, **own.get(name, {})}
        if given:
            raise UsageError(
                f"{name} is already built, so constructor kwargs ({', '.join(sorted(given))}) cannot apply: pass "
                "its class to have it built with them, or give them to other modules only in a dict of modules"
            )
