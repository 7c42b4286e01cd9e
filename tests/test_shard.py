"""Shards: a partition of the plan (disjoint, complete, geometry-whole), stable, balanced by estimated cost."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import attnbench
from attnbench import shard
from attnbench.errors import UsageError
from attnbench.results import Case
from attnbench.sweep import Sweep
from attnbench.zoo import build, registry

ROOT = Path(__file__).resolve().parent.parent
#: The default `compare --all` plan: the sweep a CI matrix splits.
COMPARE = Sweep(tuple(attnbench.list_modules()), (64,), ((14, 14), (28, 28), (56, 56)), backends=("cpu", "ort"))


@pytest.mark.parametrize(("text", "expected"), [("1/1", (1, 1)), ("2/3", (2, 3)), (" 3/3 ", (3, 3))])
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert shard.parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/3", "4/3", "x", "1/0", "3", "1/3/4", "-1/3", "", "a/b", "1.5/3"])
def test_bad_shard_is_a_usage_error_naming_the_value(text: str) -> None:
    with pytest.raises(UsageError, match=r"--shard .*expected K/N") as info:
        shard.parse_shard(text)
    assert "\n" not in str(info.value)


def test_sweep_check_refuses_a_shard_out_of_range() -> None:
    with pytest.raises(UsageError, match="--shard '4/3'"):
        dataclasses.replace(COMPARE, shard=(4, 3)).check(measures=False)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 30, 31])
def test_shards_partition_the_plan_and_keep_geometries_whole(count: int) -> None:
    plan = COMPARE.cases()
    parts = [dataclasses.replace(COMPARE, shard=(k, count)).cases() for k in range(1, count + 1)]
    assert Counter(c for part in parts for c in part) == Counter(plan)  # complete, each case once
    for part in parts:
        assert part == [c for c in plan if c in set(part)]  # plan order within a shard
    owners = {shard.geometry(c): i for i, part in enumerate(parts) for c in part}
    assert all(owners[shard.geometry(c)] == i for i, part in enumerate(parts) for c in part)
    # 30 geometries: with N up to 30 every shard gets one; beyond, one shard is empty.
    assert sum(not part for part in parts) == max(0, count - 30)


def test_shard_membership_does_not_depend_on_plan_order() -> None:
    plan = COMPARE.cases()
    shuffled = plan[:]
    random.Random(7).shuffle(shuffled)
    by_plan = [set(part) for part in shard.partition(plan, 3)]
    by_shuffled = [set(part) for part in shard.partition(shuffled, 3)]
    assert by_plan == by_shuffled


def test_partition_is_the_same_under_another_hash_seed() -> None:
    # Every process salts str hashes differently; a partition that used them would differ between machines.
    code = (
        "import attnbench\n"
        "from attnbench.sweep import Sweep\n"
        "s = Sweep(tuple(attnbench.list_modules()), (64,), ((14, 14), (28, 28), (56, 56)), backends=('cpu', 'ort'))\n"
        "print([[(c.module, c.height, c.backend) for c in p] for p in __import__('attnbench.shard').shard"
        ".partition(s.cases(), 3)])\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    here = [[(c.module, c.height, c.backend) for c in p] for p in shard.partition(COMPARE.cases(), 3)]
    assert done.stdout == f"{here}\n"


def _load(part: list[Case]) -> int:
    return sum(shard.group_cost([c]) for c in part)


def test_big_resolutions_are_spread_and_estimated_cost_balanced() -> None:
    parts = shard.partition(COMPARE.cases(), 3)
    for part in parts:
        assert any(c.height == 56 for c in part), "every shard gets some of the 56x56 cases"
    loads = [_load(part) for part in parts]
    # Largest-first dealing stays within 4/3 of the optimum; here the optimum is near the mean.
    assert max(loads) <= 1.1 * sum(loads) / 3


def test_estimated_macs_is_the_formula_for_zoo_modules() -> None:
    case = Case("mhsa", 32, 8, 16, 2)
    spec, setting = build.validate("mhsa", 32, (8, 16), 2)
    assert shard.estimated_macs(case) == spec.macs_formula(setting)
    assert shard.estimated_macs(Case("clo", 32, 14, 14)) is None  # clo refuses 14x14 (window 4)


def test_estimated_macs_counts_on_meta_without_a_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = registry.get_spec("lka")
    case = Case("lka", 16, 8, 8)
    expected = spec.macs_formula(build.validate("lka", 16, (8, 8))[1])
    monkeypatch.setitem(registry._LOADED, "lka", dataclasses.replace(spec, macs_formula=None))
    assert shard.estimated_macs(case) == expected  # the attnbench counter matches lka's formula exactly

    def unbuildable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("needs real data")

    monkeypatch.setitem(registry._LOADED, "lka", dataclasses.replace(spec, macs_formula=None, builder=unbuildable))
    assert shard.estimated_macs(case) == 1 * 16**2 * 8 * 8  # the documented proxy: one 1x1 convolution


def test_select_is_one_part_of_the_partition() -> None:
    plan = COMPARE.cases()
    assert shard.select(plan, (2, 3)) == shard.partition(plan, 3)[1]
    assert shard.select(plan, (1, 1)) == plan
    assert shard.select(plan[:2], (2, 2)) == []  # one geometry, two shards: the second is empty
    with pytest.raises(UsageError, match="--shard '3/2': expected K/N"):
        shard.select(plan, (3, 2))


def test_a_refused_geometry_costs_almost_nothing() -> None:
    assert shard.group_cost([Case("clo", 32, 14, 14)] * 2) == 2 * shard.INVALID_CASE_COST
    lka = Case("lka", 16, 8, 8)
    assert shard.group_cost([lka], overhead_macs=0) == shard.estimated_macs(lka)
    assert shard.group_cost([lka, lka]) == 2 * (shard.estimated_macs(lka) + shard.CASE_OVERHEAD_MACS)


def test_cases_of_one_geometry_in_several_scenarios_stay_together() -> None:
    sweep = Sweep(("lka", "mhsa"), (16,), ((8, 8), (16, 16)), scenarios={"dtype": ("float32", "bfloat16")})
    parts = [dataclasses.replace(sweep, shard=(k, 4)).cases() for k in (1, 2, 3, 4)]
    assert [len(part) for part in parts] == [2, 2, 2, 2]  # four geometries, each with its two dtypes
    for part in parts:
        assert len({shard.geometry(c) for c in part}) == 1
        assert {c.scenario.dtype for c in part} == {"float32", "bfloat16"}
