"""Sweep: the plan of cases (complete, ordered by geometry) and the checks made before anything runs."""

from __future__ import annotations

import pytest

from attnbench.errors import InvalidCaseError, UsageError
from attnbench.results import Case
from attnbench.sweep import Sweep


def test_every_combination_once_with_geometries_adjacent() -> None:
    sweep = Sweep(("lka", "mhsa"), (16, 32), ((8, 8), (8, 16)), (1, 2), ("cpu", "ort"), threads=(1, 2))
    cases = sweep.cases()
    assert len(cases) == len(set(cases)) == 2 * 2 * 2 * 2 * 2 * 2
    geometries = [(c.module, c.dim, c.height, c.width, c.batch) for c in cases]
    # Each geometry's cases form one run: a geometry never comes back after another started.
    seen: list[tuple] = []
    for g in geometries:
        if not seen or seen[-1] != g:
            assert g not in seen
            seen.append(g)
    assert cases[0] == Case("lka", 16, 8, 8, 1, "cpu", threads=1)


def test_kwargs_become_hashable_tuples() -> None:
    (case,) = Sweep(("sk",), (64,), ((8, 8),), kwargs={"kernels": [3, 5]}).cases()
    assert case.kwargs == (("kernels", (3, 5)),)
    hash(case)


@pytest.mark.parametrize(
    ("sweep", "error", "needle"),
    [
        (Sweep(()), UsageError, "at least one module"),
        (Sweep(("lka",), dims=(0,)), UsageError, "--dim 0"),
        (Sweep(("lka",), batches=(-1,)), UsageError, "--batch -1"),
        (Sweep(("lka",), threads=(0,)), UsageError, "--threads 0"),
        (Sweep(("lka",), backends=("tpu",)), UsageError, "allowed: cpu"),
        (Sweep(("lka",), dtypes=("int8",)), UsageError, "allowed: float32"),
        (Sweep(("lka",), kwargs={"heads": 4}), InvalidCaseError, "allowed"),
        (Sweep(("clo",), resolutions=((14, 14),)), InvalidCaseError, "window"),
    ],
)
def test_check_refuses_bad_input_before_running(sweep: Sweep, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        sweep.check()


def test_check_accepts_a_sweep_with_some_invalid_cases() -> None:
    Sweep(("clo",), (32,), ((14, 14), (16, 16))).check()  # 14 breaks the window rule, 16 runs
