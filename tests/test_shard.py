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
from tests.conftest import run_cli

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


def test_empty_shard_says_so_and_writes_empty_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.csv"
    argv = [*"profile lka --dim 16 --res 8 --metrics params,macs --shard 2/2 --quiet -o".split(), str(out)]
    code, _stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0] == (
        "attnbench: shard 2/2 has no cases: the sweep has 1 geometry, fewer than 2 shards; wrote empty reports"
    )
    from attnbench import results as R

    loaded = R.load(out)
    assert loaded.results == [] and loaded.env["shard"] == "2/2"


def test_a_shard_of_only_invalid_cases_is_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # clo at 14x14 is refused by its window rule, 16x16 runs: two geometries, one per shard.
    base = "profile clo --dim 32 --res 14 --res 16 --metrics params,macs --quiet".split()
    results = [run_cli(capsys, *base, "--shard", f"{k}/2") for k in (1, 2)]
    assert sorted(code for code, _, _ in results) == [0, 0], results
    assert sum("invalid" in out for _, out, _ in results) == 1
