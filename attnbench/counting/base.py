"""Shared pieces of the counters: the MAC and FLOP convention, the report records, and safe module copies."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import nn

# The vocabulary is defined once: a count covers a mode of attnbench.results.MODES ("infer": one forward in eval
# mode; "train": one step, forward + backward).
from attnbench.results import MODES

#: The units every counter in attnbench reports in; every report prints it in its header. Exact: FLOPs are
#: counted, not derived (a lone elementwise product, such as a gate x * sigmoid(g), is one multiplication).
CONVENTION = "one multiply-add = 1 MAC = 2 FLOPs; a lone elementwise product = 1 MAC = 1 FLOP"


#: Appended to an operator's name when the backward pass ran it (by_op, uncounted), so phases stay apart.
BACKWARD_SUFFIX = " (backward)"


#: Where counting happens unless asked otherwise: shapes only, no data, no memory.
DEFAULT_DEVICE = "meta"

#: Largest estimated activation footprint for which a counter that cannot run on meta may run on the CPU.
CPU_FALLBACK_LIMIT_BYTES = 2 * 1024**3

#: Relative MAC difference from the reference counter above which cross_check() flags a counter.
CROSS_CHECK_TOLERANCE = 0.01

Status = Literal["ok", "unavailable", "failed"]


def check_mode(mode: str) -> str:
    """`mode` if it is one of MODES (ValueError naming the valid ones otherwise)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: valid modes are {', '.join(MODES)}")
    return mode


def _frozen(mapping: Mapping | None = None) -> Mapping:
    """A read-only copy of a mapping (an empty one by default), for the fields of a frozen report."""
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class UncountedOp:
    """An operator a counter saw but did not count as MACs: how often, how many output elements, what kind."""

    calls: int
    elements: int
    category: str


@dataclass(frozen=True)
class MacReport:
    """What one counter found for one module and input shape (MACs and FLOPs in the units of CONVENTION).

    In mode "train" every figure covers the whole step (forward + backward); backward_macs / backward_flops
    say how much of it the backward took, and backward operators carry BACKWARD_SUFFIX in by_op and
    uncounted. fvcore and thop count a forward only: their train reports are "unavailable".
    """

    counter: str
    macs: int | None
    by_op: Mapping[str, int] = field(default_factory=_frozen)
    #: MACs per top-level child module; work done directly in the root's forward is under "(self)".
    by_module: Mapping[str, int] = field(default_factory=_frozen)
    uncounted: Mapping[str, UncountedOp] = field(default_factory=_frozen)
    device: str = DEFAULT_DEVICE
    status: Status = "ok"
    reason: str = ""
    #: Peak bytes of tensors created during the forward, as seen at dispatch (attnbench counter only).
    peak_live_bytes_estimate: int | None = None
    seconds: float = 0.0
    input_shape: tuple[int, ...] = ()
    #: Inclusive MACs for every submodule by qualified name (nested levels too), where the counter knows them.
    by_module_nested: Mapping[str, int] = field(default_factory=_frozen)
    #: How many calls of each counted operator were seen (attnbench counter only).
    counted_calls: Mapping[str, int] = field(default_factory=_frozen)
    convention: str = CONVENTION
    #: Exact FLOPs (CONVENTION); None when the counter gave no number. fvcore and thop count multiply-adds
    #: only, so theirs are 2 x their MACs.
    flops: int | None = None
    #: FLOPs per operator, per top-level child and per qualified submodule, keyed as the MAC mappings.
    flops_by_op: Mapping[str, int] = field(default_factory=_frozen)
    flops_by_module: Mapping[str, int] = field(default_factory=_frozen)
    flops_by_module_nested: Mapping[str, int] = field(default_factory=_frozen)
    #: "infer" (one forward, eval mode) or "train" (one forward + backward step, train mode); see MODES.
    mode: str = "infer"
    #: The part of `macs` / `flops` done by the backward pass (0 in mode "infer").
    backward_macs: int = 0
    backward_flops: int = 0
    #: The counted forward's output shapes (output_shapes()) and its first tensor's shape; attnbench counter only.
    output_shapes: str = ""
    first_output_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Freeze the mappings so a shared report cannot be edited behind the caller's back.
        names = ("by_op", "by_module", "uncounted", "by_module_nested", "counted_calls")
        for name in (*names, "flops_by_op", "flops_by_module", "flops_by_module_nested"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                object.__setattr__(self, name, _frozen(value))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))

    @property
    def forward_macs(self) -> int | None:
        """MACs of the forward pass (all of them in mode "infer")."""
        return None if self.macs is None else self.macs - self.backward_macs

    @property
    def forward_flops(self) -> int | None:
        """FLOPs of the forward pass (all of them in mode "infer")."""
        return None if self.flops is None else self.flops - self.backward_flops

    @property
    def ok(self) -> bool:
        """True when the counter produced a number."""
        return self.status == "ok"

    def format(self, top: int = 12) -> str:
        """A plain-text summary: header with the convention, MACs by operator and module, what was left out."""
        where = f"input {tuple(self.input_shape)} on {self.device}, mode {self.mode}"
        lines = [f"# {self.counter}: {CONVENTION}", where]
        if not self.ok:
            lines.append(f"status {self.status}: {self.reason}")
            return "\n".join(lines)
        flops = "-" if self.flops is None else f"{self.flops:,}"
        lines.append(f"MACs {self.macs:,}  FLOPs {flops}  ({self.seconds:.3f} s)")
        if self.mode == "train":
            lines.append(
                f"forward MACs {self.forward_macs:,}  backward MACs {self.backward_macs:,}  "
                f"backward FLOPs {self.backward_flops:,}"
            )
        if self.reason:
            lines.append(f"note: {self.reason}")
        if self.peak_live_bytes_estimate is not None:
            lines.append(f"peak live activations (dispatch estimate) {self.peak_live_bytes_estimate:,} B")
        ranked = sorted(self.uncounted.items(), key=lambda kv: -kv[1].elements)
        # One name width for the three lists, as wide as their longest name: the lines fit an 80-column terminal.
        width = max(map(len, [*self.by_op, *self.by_module, *(op for op, _ in ranked[:top])]), default=0)
        if self.by_op:
            lines.append("counted operators:")
            lines += [f"  {op:<{width}} {n:>16,}" for op, n in sorted(self.by_op.items(), key=lambda kv: -kv[1])]
        if self.by_module:
            lines.append("by top-level module:")
            lines += [f"  {m:<{width}} {n:>16,}" for m, n in sorted(self.by_module.items(), key=lambda kv: -kv[1])]
        if ranked:
            lines.append("seen but not counted as MACs (calls, output elements, category):")
            lines += [f"  {op:<{width}} {u.calls:>6} {u.elements:>16,}  {u.category}" for op, u in ranked[:top]]
            if len(ranked) > top:
                lines.append(f"  ... and {len(ranked) - top} more")
        return "\n".join(lines)


def doubled(macs: Mapping[str, int]) -> dict[str, int]:
    """FLOPs of a counter that charges multiply-adds only (fvcore, thop): 2 per MAC."""
    return {key: 2 * n for key, n in macs.items()}


def unavailable(
    counter: str, reason: str, input_shape: Sequence[int], device: str = "", status: Status = "unavailable"
) -> MacReport:
    """A report for a counter that produced no number, saying why."""
    return MacReport(counter, None, device=device, status=status, reason=reason, input_shape=tuple(input_shape))


def check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    """The input shape as a tuple of positive ints (ValueError otherwise)."""
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty sequence of ints >= 1, got {input_shape!r}")
    return shape


def make_input(shape: Sequence[int], device: str | torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An input of the given shape: empty on meta, seeded normal values elsewhere."""
    if torch.device(device).type == "meta":
        return torch.empty(tuple(shape), device="meta", dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(tuple(shape), generator=gen, dtype=dtype).to(device)


def tensor_outputs(out: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor in a module's output (a tensor, or a tuple, list or dict of them, nested), with its path
    ("" for a lone tensor, "0", "1" in a tuple, "logits" in a dict), in order. Other values are left out."""
    if isinstance(out, torch.Tensor):
        return [(path, out)]
    if isinstance(out, (tuple, list)):
        items: Any = enumerate(out)
    elif isinstance(out, Mapping):
        items = out.items()
    else:
        return []
    found = []
    for key, value in items:
        found += tensor_outputs(value, f"{path}.{key}" if path else str(key))
    return found


def first_tensor(out: Any) -> torch.Tensor | None:
    """The first tensor of a module's output (None when it holds none)."""
    found = tensor_outputs(out)
    return found[0][1] if found else None


def replace_first_tensor(out: Any, new: torch.Tensor) -> Any:
    """The output with its first tensor replaced by `new` (the structure, tuple, list or dict, kept)."""
    done = False

    def walk(value: Any) -> Any:
        nonlocal done
        if done:
            return value
        if isinstance(value, torch.Tensor):
            done = True
            return new
        if isinstance(value, (tuple, list)):
            items = [walk(v) for v in value]
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        if isinstance(value, Mapping):
            return type(value)({k: walk(v) for k, v in value.items()})
        return value

    return walk(out)


def output_shapes(out: Any) -> str:
    """A module's output shapes as a row records them: '(1, 1000)', or '0: (1, 196, 64); 1: (1, 4, 196, 196)'."""
    found = tensor_outputs(out)
    if len(found) == 1 and not found[0][0]:
        return str(tuple(found[0][1].shape))
    return "; ".join(f"{path}: {tuple(t.shape)}" for path, t in found)


def scalar_loss(out: Any) -> torch.Tensor:
    """A training step's loss: the sum of every output tensor that requires grad (ValueError when none does)."""
    tensors = [t for _, t in tensor_outputs(out) if t.requires_grad]
    if not tensors:
        raise ValueError("the module's output does not require grad: there is no backward pass")
    loss = tensors[0].sum()
    for t in tensors[1:]:
        loss = loss + t.sum()
    return loss


def module_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype of the module's first floating parameter or buffer (float32 if none)."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


#: Attribute types a module copy shares instead of copying (a scripted function held as an attribute).
_SHARED_ATTRIBUTES = (torch.jit.ScriptFunction,)


def copy_to(module: nn.Module, device: str | torch.device) -> nn.Module:
    """A deep copy of `module` on `device`, in eval mode; to meta it copies no weight data at all.

    A module built on meta gets zero-filled weights when copied to a real device. Tensors held as plain
    attributes (not registered as parameters or buffers) are moved too, so a module
    that keeps a precomputed index tensor still runs on the new device.
    """
    device = torch.device(device)
    memo: dict[int, object] = {}

    def moved(t: torch.Tensor) -> torch.Tensor:
        # On meta, empty_like allocates nothing; elsewhere .to() copies once (no deepcopy of the source first).
        if device.type == "meta":
            new = torch.empty_like(t, device=device)
        elif t.is_meta:  # weights that never had values: zeros stand in (counts depend on shapes only)
            new = torch.zeros_like(t, device=device)
        else:
            new = t.detach().to(device, copy=True)
        if isinstance(t, nn.Parameter):
            return nn.Parameter(new, requires_grad=t.requires_grad)
        return new

    for sub in module.modules():
        tensors = [*sub._parameters.values(), *sub._buffers.values()]
        tensors += [v for v in vars(sub).values() if isinstance(v, torch.Tensor)]
        for t in tensors:
            if t is not None and id(t) not in memo:
                memo[id(t)] = moved(t)
        for value in vars(sub).values():
            if isinstance(value, _SHARED_ATTRIBUTES):  # stateless and not deep-copyable: the copy shares it
                memo[id(value)] = value
    clone = copy.deepcopy(module, memo)
    clone.eval()
    return clone


def on_meta(module: nn.Module) -> bool:
    """True when every parameter and buffer of `module` already lives on the meta device."""
    tensors = [*module.parameters(), *module.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)


def short_reason(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line: type and the first line of its message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tensor_bytes(module: nn.Module, shape: Sequence[int], dtype: torch.dtype) -> int:
    """Bytes of the input plus the module's parameters and buffers (what a real CPU run holds besides activations)."""
    weights = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    return weights + math.prod(shape) * torch.empty((), dtype=dtype).element_size()
