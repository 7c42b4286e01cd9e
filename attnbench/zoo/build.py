"""A case checked against a module's spec (types, constraints) before anything is allocated, and the build."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attnbench.errors import InvalidCaseError
from attnbench.results import USER_LAYOUTS
from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import ModuleSpec, Resolution, Setting

if TYPE_CHECKING:
    from torch import nn


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_reason(key: str, value: Any, default: Any) -> str | None:
    """Why `value` cannot stand where the spec's default is `default` (None if it can)."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "a bool"
    elif _is_int(default):
        ok, want = _is_int(value), "an int"
    elif isinstance(default, float):
        ok, want = (_is_int(value) or isinstance(value, float)), "a number"
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(_is_int(v) for v in value)
        want = "a non-empty list of ints"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif default is None:
        # Every None default in the zoo means "derive it" for an int size (d_k, d_v).
        ok, want = value is None or _is_int(value), "an int or None"
    else:
        return None
    return None if ok else f"{key} must be {want}, got {value!r} ({type(value).__name__})"


def _as_resolution(module: str, res: int | Resolution | None) -> Resolution | None:
    if res is None:
        return None
    if _is_int(res):
        res = (res, res)  # type: ignore[assignment]
    if not isinstance(res, (tuple, list)) or len(res) != 2 or not all(_is_int(v) for v in res) or min(res) < 1:
        raise InvalidCaseError(module, "resolution", f"must be an int >= 1 or (H, W) of such ints, got {res!r}")
    return (int(res[0]), int(res[1]))


def validate(
    name: str,
    dim: int,
    res: int | Resolution | None = None,
    batch: int = 1,
    **kwargs: Any,
) -> tuple[ModuleSpec, Setting]:
    """Check a case against the spec's types and constraints; return the spec and the merged Setting.

    Constraints that need a resolution are checked only when `res` is given. Nothing is allocated.
    """
    return check_case(name, dim, res, batch, kwargs)


def check_case(
    name: str,
    dim: int,
    res: int | Resolution | None = None,
    batch: int = 1,
    kwargs: Mapping[str, Any] | None = None,
    layout: str = "",
) -> tuple[ModuleSpec, Setting]:
    """validate() with the kwargs as a mapping (any key, even 'layout') and the case's layout."""
    kwargs = dict(kwargs or {})
    spec = get_spec(name)
    if not _is_int(dim) or dim < 1:
        raise InvalidCaseError(name, "dim", f"must be an int >= 1, got {dim!r}")
    if not _is_int(batch) or batch < 1:
        raise InvalidCaseError(name, "batch", f"must be an int >= 1, got {batch!r}")
    _check_layout(spec, layout)
    if not spec.adhoc:  # a user's module has no declared kwargs: its constructor judges them (a constraint)
        _check_kwargs(spec, kwargs)
    merged = {**spec.defaults, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}}
    hw = _as_resolution(name, res)
    setting = Setting(dim, merged, hw[0] if hw else None, hw[1] if hw else None, batch)
    for constraint in spec.constraints:
        if constraint.needs_resolution and hw is None:
            continue
        reason = constraint.check(setting)
        if reason:
            raise InvalidCaseError(name, constraint.name, reason)
    return spec, setting


def _check_layout(spec: ModuleSpec, layout: str) -> None:
    if not layout:
        return
    if not spec.adhoc:
        raise InvalidCaseError(
            spec.name, "layout", f"a zoo module keeps its own layout ({spec.layout}); layouts are for your own modules"
        )
    if layout not in USER_LAYOUTS:
        raise InvalidCaseError(spec.name, "layout", f"{layout!r} is not one of {', '.join(USER_LAYOUTS)}")


def _check_kwargs(spec: ModuleSpec, kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(spec.defaults))
    if unknown:
        allowed = ", ".join(spec.defaults) or "none"
        raise InvalidCaseError(spec.name, "kwargs", f"unknown keyword(s) {', '.join(unknown)}; allowed: {allowed}")
    for key, value in kwargs.items():
        reason = _type_reason(key, value, spec.defaults[key])
        if reason:
            raise InvalidCaseError(spec.name, "kwargs", reason)


def build(name: str, dim: int, res: int | Resolution | None = None, **kwargs: Any) -> nn.Module:
    """Build module `name` (zoo name or spec) for `dim` channels; it takes and returns (B, C, H, W) tensors.

    `res` (int or (H, W)) is required only by modules whose weights depend on the resolution;
    when given, resolution constraints are checked too.
    """
    return build_module(name, dim, res, kwargs)


def build_module(
    name: str,
    dim: int,
    res: int | Resolution | None = None,
    kwargs: Mapping[str, Any] | None = None,
    layout: str = "",
) -> nn.Module:
    """build() with the kwargs as a mapping and the case's layout: a user's (B, N, C) module gets the adapter."""
    spec, setting = check_case(name, dim, res, 1, kwargs, layout)
    if spec.resolution_bound and res is None:
        raise InvalidCaseError(name, "resolution", "its weights depend on H and W: pass res=(H, W)")
    hw = None if setting.height is None else (setting.height, setting.width)
    return adapt(spec, spec.builder(dim, hw, **setting.kwargs), layout)


def adapt(spec: ModuleSpec, module: nn.Module, layout: str) -> nn.Module:
    """A user's module in the adapter its layout needs; the zoo's builders adapt their own modules."""
    from attnbench.zoo.adapters import adapter_for  # torch: checks (list, info, a sweep's plan) need none

    return adapter_for(spec.case_layout(layout), module)


#: Where a module built for counting lives when its constructor runs on the meta device.
META = "meta"


@dataclass
class CountingBuild:
    """The module a geometry is counted on: built on meta (no weights), or on the CPU where its constructor
    needs real tensors, with where, why and how long; `seed` is the seed of a real build (None on meta)."""

    module: nn.Module
    where: str
    seconds: float
    seed: int | None = None

    @property
    def real(self) -> bool:
        """True when the module has real weights (it can be measured, not only counted)."""
        return self.seed is not None


def build_for_counting(
    name: str,
    dim: int,
    res: Resolution,
    kwargs: Mapping[str, Any],
    layout: str,
    seed: int,
    before_cpu: Callable[[ModuleSpec, Setting], None] | None = None,
) -> CountingBuild:
    """Build once for counting: on meta, or on the CPU when the meta build fails (guarded by `before_cpu`).

    A user's constructor that its check already had to build on the CPU is not built again: that build is
    taken over (see attnbench.zoo.user.judge).
    """
    import torch  # torch: checks (list, info, a sweep's plan) need none

    spec, setting = check_case(name, dim, res, 1, kwargs, layout)
    taken = spec.take_built(setting) if spec.take_built is not None else None
    if taken is not None:
        return CountingBuild(adapt(spec, taken.module, layout).eval(), taken.where, taken.seconds, taken.seed)
    started = time.perf_counter()
    try:
        with torch.device(META):
            module = build_module(name, dim, res, kwargs, layout)
        return CountingBuild(module.eval(), META, time.perf_counter() - started)
    except InvalidCaseError:
        raise
    except Exception as exc:  # a constructor that needs data (.item(), a table computed from weights)
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:120]
    if before_cpu is not None:
        before_cpu(spec, setting)
    started = time.perf_counter()
    torch.manual_seed(seed)
    module = build_module(name, dim, res, kwargs, layout)
    return CountingBuild(module.eval(), f"cpu (meta build failed: {why})", time.perf_counter() - started, seed)
