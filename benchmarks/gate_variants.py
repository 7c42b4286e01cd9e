"""Deliberately changed zoo modules for benchmarks/gate_stability.py (never registered outside a benchmark).

`more_elementwise(name)` swaps zoo module `name` for a version that does about 25% more elementwise work at
the same params and MACs: after the original forward, `passes` multiplications of the output by 1.0 (an
elementwise op attnbench lists as uncounted, so MACs do not move; no new weights, so params do not move).
The number of passes is sized from attnbench's own counter: 25% of the element-operations of the module's
elementwise arithmetic (its uncounted ops minus pure layout ops such as views, transposes and copies).

The class lives in an importable module (not in a script's __main__) so that the instruction counter's
valgrind worker can load the very object the run built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Ops that move or relabel data without arithmetic; everything else the counter leaves uncounted is
#: elementwise arithmetic (activations, normalisations, softmax, additions, scalar scalings, reductions).
LAYOUT_OPS = frozenset(
    [
        "view",
        "_unsafe_view",
        "transpose",
        "permute",
        "expand",
        "unsqueeze",
        "squeeze",
        "split",
        "unbind",
        "reshape",
        "flatten",
        "select",
        "slice",
        "stack",
        "cat",
        "clone",
        "pad",
        "im2col",
        "flip",
        "dropout",
        "linspace",
        "contiguous",
        "t",
        "alias",
        "detach",
    ]
)
#: How much more elementwise work the changed module does.
EXTRA_FRACTION = 0.25


class MoreElementwise(nn.Module):
    """`inner`, then `passes` scalar multiplications of its output by 1.0."""

    def __init__(self, inner: nn.Module, passes: int) -> None:
        super().__init__()
        self.inner = inner
        self.passes = passes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        for _ in range(self.passes):
            y = y * 1.0
        return y


def elementwise_ops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Element-operations of the module's elementwise arithmetic, from attnbench's counter."""
    from attnbench.counting import count_macs

    report = count_macs(module, input_shape)
    total = 0
    for op, use in report.uncounted.items():
        name = op.removeprefix("aten.").split(" ")[0]
        if name not in LAYOUT_OPS:
            total += use.elements
    return total


def passes_for(builder: Any, dim: int, res: tuple[int, int], **kwargs: Any) -> tuple[int, int, int]:
    """(passes, elementwise element-ops of the original, element-ops added) for one geometry at batch 1."""
    with torch.device("meta"):
        module = builder(dim, res, **kwargs)
    shape = (1, dim, res[0], res[1])
    work = elementwise_ops(module, shape)
    numel = dim * res[0] * res[1]
    passes = max(1, round(EXTRA_FRACTION * work / numel))
    return passes, work, passes * numel


def more_elementwise(name: str) -> None:
    """Replace zoo module `name`, in this process, by its 25%-more-elementwise-work version."""
    from attnbench.zoo import registry

    spec = registry.get_spec(name)

    def build_more(dim: int, res: tuple[int, int], **kwargs: Any) -> nn.Module:
        passes, _, _ = passes_for(spec.builder, dim, res, **kwargs)
        return MoreElementwise(spec.builder(dim, res, **kwargs), passes)

    registry._LOADED[name] = type(spec)(**{**spec.__dict__, "builder": build_more})


#: A user's own attention block, written to a file and profiled by its file spec (`PATH:Block`): the gate must
#: see a change made in that file, in its valgrind worker too. PASSES maps H to extra scalar multiplications of
#: the attention's output (none in the original; the changed file sets them).
USER_BLOCK = '''"""A user's own attention block (written by benchmarks/gate_variants.py)."""
import torch
from torch import nn

PASSES: dict[int, int] = {passes!r}


class Block(nn.Module):
    def __init__(self, dim: int, passes: dict[int, int] | None = None) -> None:
        super().__init__()
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.passes = PASSES if passes is None else passes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)
        attn = (q.transpose(1, 2) @ k * c**-0.5).softmax(-1)
        y = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)
        for _ in range(self.passes.get(h, 0)):
            y = y * 1.0
        return self.proj(y)
'''


def write_user_block(path: Any, passes: dict[int, int]) -> None:
    """Write the user's block file with `passes` extra multiplications per H ({} is the original)."""
    from pathlib import Path

    Path(path).write_text(USER_BLOCK.format(passes=passes))
