"""Constraint builders: each rule's name, whether it needs H and W, and the reason it gives for a bad case."""

from __future__ import annotations

from typing import Any

import pytest

from attnbench.zoo import constraints as C
from attnbench.zoo.spec import Setting


def _s(dim: int = 64, height: int | None = None, width: int | None = None, **kwargs: Any) -> Setting:
    """A Setting with these kwargs."""
    return Setting(dim, kwargs, height, width)


def test_dim_divisible_by() -> None:
    rule = C.dim_divisible_by("heads")
    assert (rule.name, rule.needs_resolution) == ("dim % heads == 0", False)
    assert rule.check(_s(64, heads=8)) is None
    assert rule.check(_s(60, heads=8)) == "dim=60 is not divisible by heads=8"
    assert rule.check(_s(64, heads=0)) == "heads must be >= 1, got 0"


def test_divisible_reads_both_sides_from_the_setting() -> None:
    rule = C.divisible("dim/len(kernels)", lambda s: s.dim // len(s["kernels"]), "group", lambda s: s["group"])
    assert rule.name == "dim/len(kernels) % group == 0"
    assert rule.check(_s(64, kernels=[3, 5], group=4)) is None
    assert rule.check(_s(64, kernels=[3, 5], group=3)) == "dim/len(kernels)=32 is not divisible by group=3"


def test_positive() -> None:
    rule = C.positive("k")
    assert (rule.name, rule.needs_resolution) == ("k >= 1", False)
    assert rule.check(_s(k=1)) is None
    assert rule.check(_s(k=0)) == "k must be >= 1, got 0"
    assert rule.check(_s(k=-3)) == "k must be >= 1, got -3"


@pytest.mark.parametrize(
    ("value", "ok"),
    [(3, True), (1, True), ([1, 3, 5, 7], True), (4, False), (0, False), (-1, False), ([3, 4], False), ([], True)],
)
def test_odd_kernels(value: Any, ok: bool) -> None:
    rule = C.odd_kernels("kernels")
    assert (rule.name, rule.needs_resolution) == ("kernels odd", False)
    reason = rule.check(_s(kernels=value))
    if ok:
        assert reason is None
    else:
        assert reason == (
            f"kernels must hold odd sizes >= 1 (only an odd kernel padded by k // 2 keeps H and W), got {value}"
        )


def test_resolution_divisible() -> None:
    rule = C.resolution_divisible("window_size")
    assert (rule.name, rule.needs_resolution) == ("H, W % window_size == 0", True)
    assert rule.check(_s(height=16, width=8, window_size=4)) is None
    assert rule.check(_s(height=14, width=16, window_size=4)) == "H x W = 14x16 is not divisible by window_size=4"
    assert rule.check(_s(height=16, width=14, window_size=4)) == "H x W = 16x14 is not divisible by window_size=4"
    assert rule.check(_s(height=16, width=16, window_size=0)) == "window_size must be >= 1, got 0"


def test_min_resolution() -> None:
    rule = C.min_resolution(lambda s: s["k"] // 2 + 1, "pad k // 2 < H, W")
    assert (rule.name, rule.needs_resolution) == ("H, W >= min (pad k // 2 < H, W)", True)
    assert rule.check(_s(height=4, width=8, k=7)) is None
    assert rule.check(_s(height=3, width=8, k=7)) == "H x W = 3x8 is below the minimum side 4 (pad k // 2 < H, W)"
