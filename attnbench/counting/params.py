"""Parameter counts: total, trainable, per top-level child and per nested submodule; buffers apart (never counted)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from torch import nn


@dataclass(frozen=True)
class ParamReport:
    """Parameter counts of a module, in elements (numel), as `module.parameters()` reports them.

    A Parameter object reachable twice is counted once; two distinct Parameters that share storage are both
    counted (exactly `sum(p.numel() for p in module.parameters())`). Buffers are not parameters: they are
    reported in `buffers` and excluded from every other figure.
    """

    total: int
    trainable: int
    #: Parameters per top-level child module; parameters registered on the root itself are under "(self)".
    by_module: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: Elements held in buffers (running stats, index tables...): excluded from `total`.
    buffers: int = 0
    #: Inclusive parameters of every submodule by qualified name, in named_modules() order (parameter-free
    #: ones at 0); the root is not listed (it is `total`). A module reachable under two names has its first.
    by_module_nested: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: The class name of each submodule in by_module_nested, and of the root under "".
    types: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def frozen(self) -> int:
        """Parameters with requires_grad=False."""
        return self.total - self.trainable


def count_params(module: nn.Module) -> ParamReport:
    """Count `module`'s parameters: total, trainable, per top-level child and nested submodule; buffers apart."""
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    by_module: dict[str, int] = dict.fromkeys((name for name, _ in module.named_children()), 0)
    # Attribute each Parameter object to the first place parameters() meets it, so the parts sum to total.
    owner: dict[int, str] = {}
    for qualified, p in module.named_parameters(remove_duplicate=False):
        owner.setdefault(id(p), qualified)
    for p in params:
        qualified = owner[id(p)]
        key = qualified.split(".", 1)[0] if "." in qualified else "(self)"
        by_module[key] = by_module.get(key, 0) + p.numel()
    named = [(name, sub) for name, sub in module.named_modules() if name]
    nested = dict.fromkeys((name for name, _ in named), 0)
    for p in params:
        for prefix in _owners(owner[id(p)]):
            if prefix in nested:
                nested[prefix] += p.numel()
    types = {"": type(module).__name__} | {name: type(sub).__name__ for name, sub in named}
    buffers = sum(b.numel() for b in module.buffers())
    return ParamReport(
        total, trainable, MappingProxyType(by_module), buffers, MappingProxyType(nested), MappingProxyType(types)
    )


def _owners(qualified: str) -> list[str]:
    """'a.b.weight' -> ['a', 'a.b']: the submodules that hold a parameter, outermost first."""
    parts = qualified.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
