"""Fuzzing: any drawn module, dim, kwargs, resolution and batch ends in a result or the typed error; any drawn
scenario is refused naming its option or survives files and the command line's text; any drawn sweep plans each
case once, as its backend runs it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnbench
from attnbench import results as R
from attnbench import store
from attnbench.backends import get_backend
from attnbench.errors import InvalidCaseError
from attnbench.results import Case, Result, Scenario
from attnbench.sweep import Sweep
from attnbench.zoo.registry import get_spec


def _kw_value(default: Any) -> st.SearchStrategy[Any]:
    """Values around a kwarg's default, invalid ones included: zero, negatives, even kernels, wrong types."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.one_of(st.integers(-2, 9), st.just("x"), st.just(1.5))
    if isinstance(default, float):
        return st.floats(-1, 2, allow_nan=False)
    if isinstance(default, (list, tuple)):
        return st.one_of(st.lists(st.integers(-1, 9), min_size=0, max_size=5), st.just(3))
    return st.just(default)


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, int, tuple[int, int], int, dict[str, Any]]:
    """A zoo module with a dim, a resolution, a batch and kwargs, valid or not."""
    name = draw(st.sampled_from(attnbench.list_modules()))
    spec = get_spec(name)
    dim = draw(st.one_of(st.integers(-4, 0), st.sampled_from([1, 3, 8, 12, 16, 24, 32, 48, 64])))
    res = (draw(st.integers(0, 20)), draw(st.integers(0, 20)))
    batch = draw(st.integers(0, 2))
    keys = draw(st.lists(st.sampled_from(sorted(spec.defaults)), unique=True, max_size=2)) if spec.defaults else []
    kwargs = {k: draw(_kw_value(spec.defaults[k])) for k in keys}
    return name, dim, res, batch, kwargs


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_case_ends_in_a_result_or_the_typed_error(case: tuple[str, int, tuple[int, int], int, dict]) -> None:
    name, dim, res, batch, kwargs = case
    try:
        spec, setting = attnbench.validate(name, dim, res, batch, **kwargs)
    except InvalidCaseError as exc:
        assert exc.reason and exc.module == name
        return
    module = attnbench.build(name, dim, res, **kwargs).eval()
    with torch.no_grad():
        y = module(torch.randn(batch, dim, *res))
    assert y.shape[:2] == (batch, dim) and torch.isfinite(y).all()
    report = attnbench.count_macs(module, (batch, dim, *res))
    assert report.status == "ok" and report.macs == spec.macs_formula(setting)
    assert sum(p.numel() for p in module.parameters()) == spec.params_formula(setting)


def _field_value(name: str) -> st.SearchStrategy[Any]:
    """A field's values, and values of the right and the wrong type that it refuses."""
    axis = R.axis(name)
    if axis.choices is None:
        return st.one_of(st.integers(-2, 64), st.just(True), st.just("2"))
    return st.one_of(st.sampled_from(axis.choices), st.sampled_from(["", "x", "float64", 0, 1, None]))


@st.composite
def scenario_values(draw: st.DrawFn) -> dict[str, Any]:
    """Some of the scenario fields, each with a drawn value."""
    names = draw(st.lists(st.sampled_from(R.SCENARIO_FIELDS), unique=True, max_size=len(R.SCENARIO_FIELDS)))
    return {name: draw(_field_value(name)) for name in names}


def _text(value: Any) -> str:
    """A value as one would type it on the command line."""
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)


@settings(max_examples=200, deadline=None)
@given(scenario_values())
def test_a_scenario_is_refused_naming_its_option_or_survives_files_and_text(values: dict[str, Any]) -> None:
    try:
        scenario = Scenario(**values)
    except ValueError as exc:
        bad = [name for name in R.SCENARIO_FIELDS if name in values and R.axis(name).check(values[name])]
        assert bad and str(exc) == R.axis(bad[0]).check(values[bad[0]])  # the first bad field, in field order
        return
    assert all(R.axis(name).check(value) is None for name, value in values.items())
    for name, value in values.items():
        if value != "":  # the layout's default is each module's own: nothing to type
            assert R.axis(name).parse(_text(value)) == value
    row = Result.for_case(Case("lka", 16, 8, 8, scenario=scenario), params=1488, latency_noisy=False)
    assert R.unflat(R.flat(row)) == row
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, json_path = Path(tmp) / "r.csv", Path(tmp) / "r.json"
        store.write_csv(csv_path, [row], {})
        store.atomic_write(json_path, store.json_text([row], {}))
        assert store.load(csv_path).results == [row] == store.load(json_path).results


@st.composite
def sweeps(draw: st.DrawFn) -> Sweep:
    """A sweep of lka over a few scenario fields and cpu and ort."""
    fields = draw(st.lists(st.sampled_from(R.SCENARIO_FIELDS), unique=True, max_size=4))
    scenarios = {
        name: tuple(draw(st.lists(st.sampled_from(R.axis(name).choices or (1, 2)), min_size=1, max_size=3)))
        for name in fields
        if name != "layout"  # the zoo keeps its own layout; a user's layout is checked apart
    }
    backends = tuple(draw(st.lists(st.sampled_from(["cpu", "ort"]), min_size=1, max_size=2, unique=True)))
    return Sweep(("lka",), (16,), ((8, 8),), backends=backends, scenarios=scenarios)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sweeps())
def test_a_sweep_plans_each_case_once_as_its_backend_runs_it(sweep: Sweep) -> None:
    cases = sweep.cases()
    assert len(cases) == len(set(cases))
    for case in cases:
        assert get_backend(case.backend).settle(case.scenario) == case.scenario
        assert case.scenario.layout == ""
    wanted = {
        (backend, get_backend(backend).settle(scenario))
        for scenario in sweep.scenario_list()
        for backend in sweep.backends
    }
    assert {(c.backend, c.scenario) for c in cases} == wanted
