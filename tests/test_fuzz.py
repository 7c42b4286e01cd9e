"""Fuzzing: any drawn module, dim, kwargs, resolution and batch ends in a result or the typed error."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnbench
from attnbench.errors import InvalidCaseError
from attnbench.zoo.registry import get_spec


def _kw_value(default: Any) -> st.SearchStrategy[Any]:
    # Values around the default, invalid ones included: zero, negatives, even kernels, wrong types.
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


def test_resolution_bound_module_refuses_another_resolution() -> None:
    module = attnbench.build("da", 16, 8)
    with pytest.raises(InvalidCaseError, match="8x8"):
        module(torch.randn(1, 16, 12, 12))
