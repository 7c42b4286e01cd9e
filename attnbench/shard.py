"""Shards: split a sweep's plan into N parts, one per machine or CI job, so the merged parts are the whole plan.

The partition is a pure function of the plan: every shard of the same command computes the same split on
any machine, with no random seed, no measured timing and no hash of a str (Python salts those per process).
Cases of one geometry stay in one shard, since they share a build and the counting. Geometries are dealt
largest estimated cost first, each to the shard with the least cost so far (ties: the lower shard), which
spreads the big resolutions over the shards instead of giving them all to one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attnbench.errors import InvalidCaseError, UsageError
from attnbench.results import Case
from attnbench.zoo.build import build_module, check_case

#: What one case's fixed costs are worth in MACs. Building, the warm-up and timing floors, the memory run and the
#: ONNX export take a case ~1.6 s whatever its size, and each further GMAC ~0.63 s (least-squares over
#: `compare --all` on the reference 2-core CPU: results/shard_balance.md). Without this term a shard of thirty
#: small cases would look as cheap as one large case: the slowest of 3 shards ran 1.52x the ideal, against 1.06x.
CASE_OVERHEAD_MACS = 2_500_000_000
#: A case the module's constraints refuse costs nothing to "run": it becomes an `invalid` row at once.
INVALID_CASE_COST = 1

Shard = tuple[int, int]  # (K, N): shard K of N, 1-based


def parse_shard(text: str) -> Shard:
    """'2/3' -> (2, 3); anything but K/N with 1 <= K <= N is a usage error."""
    index, _, count = text.strip().partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = (0, 0)
    check_shard(shard, text)
    return shard


def check_shard(shard: Shard, text: str | None = None) -> None:
    """Refuse a shard outside 1 <= K <= N (`text`: the value as the user typed it, for the message)."""
    index, count = shard
    if count < 1 or not 1 <= index <= count:
        typed = text if text is not None else f"{index}/{count}"
        raise UsageError(f"--shard {typed!r}: expected K/N (shard K of N, 1 <= K <= N), e.g. 2/3")


def geometry(case: Case) -> tuple[Any, ...]:
    """What the cases sharing one build and one counting have in common."""
    return case.geometry


def estimated_macs(case: Case) -> int | None:
    """MACs of one forward of the case's geometry: the module's formula, else a count on the meta device.

    None when the module's constraints refuse the case. A module with neither a formula nor a countable
    meta build falls back to the MACs of one 1x1 convolution, B * C^2 * H * W (a documented proxy).
    """

    try:
        hw = (case.height, case.width)
        spec, setting = check_case(case.module, case.dim, hw, case.batch, case.kwargs_dict, case.scenario.layout)
    except InvalidCaseError:
        return None
    formula = getattr(spec, "macs_formula", None)
    if formula is not None:
        try:
            return int(formula(setting))
        except Exception:  # a formula that cannot take this setting: count instead
            pass
    try:
        return _count_on_meta(case)
    except Exception:  # a module the meta device cannot build or run
        return case.batch * case.dim**2 * case.tokens


def _count_on_meta(case: Case) -> int:
    import torch  # torch: a sweep's plan needs it only for a module without a formula

    from attnbench.counting import count_macs  # torch: as above

    with torch.device("meta"):
        module = build_module(case.module, case.dim, (case.height, case.width), case.kwargs_dict, case.scenario.layout)
    return int(count_macs(module, case.input_shape).macs)


def partition(cases: Sequence[Case], count: int, overhead_macs: int | None = None) -> list[list[Case]]:
    """The plan split into `count` shards (each in plan order); together they are the plan, each case once.

    `overhead_macs`: what a case's fixed costs are worth in MACs (CASE_OVERHEAD_MACS when None).
    """
    overhead = CASE_OVERHEAD_MACS if overhead_macs is None else overhead_macs
    groups: dict[tuple[Any, ...], list[Case]] = {}
    for case in cases:
        groups.setdefault(geometry(case), []).append(case)
    costs = {key: group_cost(group, overhead) for key, group in groups.items()}
    # Largest first; equal costs in the order of the geometry's text, never of a hash or the input order.
    dealt = sorted(groups, key=lambda key: (-costs[key], repr(key)))
    loads = [0] * count
    owner: dict[tuple[Any, ...], int] = {}
    for key in dealt:
        shard = min(range(count), key=lambda i: (loads[i], i))
        owner[key] = shard
        loads[shard] += costs[key]
    return [[case for case in cases if owner[geometry(case)] == i] for i in range(count)]


def group_cost(group: Sequence[Case], overhead_macs: int = CASE_OVERHEAD_MACS) -> int:
    """Estimated cost of a geometry's cases: per case, its MACs plus the fixed overhead (refused: almost 0)."""
    macs = estimated_macs(group[0])
    per_case = INVALID_CASE_COST if macs is None else macs + overhead_macs
    return per_case * len(group)


def select(cases: Sequence[Case], shard: Shard) -> list[Case]:
    """The cases of shard K of N (possibly none, when N exceeds the number of geometries)."""
    index, count = shard
    check_shard(shard)
    return partition(cases, count)[index - 1]
