"""Reusable constraint builders, so each module file states its rules as data in one line each."""

from __future__ import annotations

from collections.abc import Callable

from attnbench.zoo.spec import Constraint, Setting


def divisible(what: str, value: Callable[[Setting], int], by: str, divisor: Callable[[Setting], int]) -> Constraint:
    """`what` must be a multiple of `by` (both read from the Setting)."""

    def check(s: Setting) -> str | None:
        v, d = value(s), divisor(s)
        if d < 1:
            return f"{by} must be >= 1, got {d}"
        return None if v % d == 0 else f"{what}={v} is not divisible by {by}={d}"

    return Constraint(f"{what} % {by} == 0", check)


def dim_divisible_by(key: str) -> Constraint:
    """dim must be a multiple of kwarg `key` (heads, groups...)."""
    return divisible("dim", lambda s: s.dim, key, lambda s: s[key])


def positive(key: str) -> Constraint:
    """Integer kwarg `key` must be >= 1."""

    def check(s: Setting) -> str | None:
        return None if s[key] >= 1 else f"{key} must be >= 1, got {s[key]}"

    return Constraint(f"{key} >= 1", check)


def odd_kernels(key: str) -> Constraint:
    """Kwarg `key` (an int or a list of ints) holds only odd kernel sizes >= 1 (k // 2 padding keeps H, W)."""

    def check(s: Setting) -> str | None:
        value = s[key]
        sizes = value if isinstance(value, (list, tuple)) else [value]
        bad = [k for k in sizes if k < 1 or k % 2 == 0]
        if not bad:
            return None
        return f"{key} must hold odd sizes >= 1 (only an odd kernel padded by k // 2 keeps H and W), got {value}"

    return Constraint(f"{key} odd", check)


def resolution_divisible(key: str) -> Constraint:
    """H and W must be multiples of kwarg `key` (window or pool size)."""

    def check(s: Setting) -> str | None:
        d = s[key]
        if d < 1:
            return f"{key} must be >= 1, got {d}"
        if s.height % d or s.width % d:  # type: ignore[operator]
            return f"H x W = {s.height}x{s.width} is not divisible by {key}={d}"
        return None

    return Constraint(f"H, W % {key} == 0", check, needs_resolution=True)


def min_resolution(minimum: Callable[[Setting], int], why: str) -> Constraint:
    """H and W must both be at least `minimum(s)`; `why` says what needs it."""

    def check(s: Setting) -> str | None:
        m = minimum(s)
        if min(s.height, s.width) < m:  # type: ignore[type-var]
            return f"H x W = {s.height}x{s.width} is below the minimum side {m} ({why})"
        return None

    return Constraint(f"H, W >= min ({why})", check, needs_resolution=True)
