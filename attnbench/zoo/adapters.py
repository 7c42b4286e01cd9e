"""One calling convention: wrap token-layout modules so every module maps (B, C, H, W) to the image layout, and
say, when a forward fails, whether the input's layout was the problem.

Layouts of a user's module (attnbench.results.USER_LAYOUTS): "image" takes (B, C, H, W) as it is; "tokens" takes
(B, N, C), N = H*W; "tokens-hw" takes (B, N, C) plus H and W (`forward(x, H, W)`, as PVT, SegFormer and Swin
blocks do). A module may return a tensor, or a tuple, list or dict of tensors: the token adapter converts the
first tensor back to (B, C, H, W) and passes the others on as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnbench.counting.base import copy_to, first_tensor, make_input, replace_first_tensor
from attnbench.results import USER_LAYOUTS


class TokensToImage(nn.Module):
    """Run a (B, N, C) token module on a (B, C, H, W) map and return a map of the same layout.

    `pass_hw` forwards H and W to modules whose forward takes them (SMT's `forward(x, H, W)`);
    `self_attention` passes the tokens three times (queries, keys, values) as the official MHSA expects.
    The flatten and transpose move data only: they add no MACs. Of a tuple, list or dict output, the first
    tensor is converted back (when it holds N = H*W tokens); the rest pass through unchanged.
    """

    def __init__(self, inner: nn.Module, pass_hw: bool = False, self_attention: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.pass_hw = pass_hw
        self.self_attention = self_attention

    def forward(self, x: torch.Tensor) -> Any:
        b, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        if self.self_attention:
            out = self.inner(tokens, tokens, tokens)
        elif self.pass_hw:
            out = self.inner(tokens, h, w)
        else:
            out = self.inner(tokens)
        first = first_tensor(out)
        if first is None or first.dim() != 3 or first.shape[1] != h * w:
            return out  # not tokens of this map: the row notes the output's shape
        image = first.transpose(1, 2).reshape(b, first.shape[-1], h, w)
        return image if first is out else replace_first_tensor(out, image)


#: What each layout feeds a user's module and expects back.
LAYOUT_SHAPES = {
    "image": "(B, C, H, W) in and out",
    "tokens": "(B, N, C) in and out, N = H*W",
    "tokens-hw": "forward(x, H, W) with x (B, N, C), N = H*W; (B, N, C) out",
}


def adapter_for(layout: str, module: nn.Module) -> nn.Module:
    """`module` wrapped for its layout: as it is for the image layout (and the zoo's ""), else in TokensToImage."""
    if layout in ("tokens", "tokens-hw"):
        return TokensToImage(module, pass_hw=layout == "tokens-hw")
    return module


def unwrapped(module: nn.Module) -> nn.Module:
    """The user's module inside a layout adapter (the module itself when it has none)."""
    return module.inner if isinstance(module, TokensToImage) else module


def layout_input(layout: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a module of this layout is given for an image-layout case (B, C, H, W)."""
    b, c, h, w = input_shape
    return (b, h * w, c) if layout in ("tokens", "tokens-hw") else (b, c, h, w)


def layouts_that_run(module: nn.Module, layout: str, input_shape: tuple[int, ...]) -> list[str]:
    """The other layouts whose forward runs where `layout`'s failed (tried on a meta copy: no data, no memory).

    A module that cannot run on the meta device at all gives none, so a failure is never blamed on the layout
    without evidence.
    """
    inner = copy_to(unwrapped(module), "meta")
    found = []
    for other in USER_LAYOUTS:
        if other == layout:
            continue
        try:
            with torch.no_grad():
                adapter_for(other, inner)(make_input(input_shape, "meta", torch.float32))
        except Exception:
            continue
        found.append(other)
    return found


def forward_failure(layout: str, input_shape: tuple[int, ...], reason: str, runs_with: list[str] | None = None) -> str:
    """Why a forward failed, in one line: the error itself, and for a user's module the layout it was given; the
    other layouts are suggested only when the module runs in them (the input's shape was the problem)."""
    if layout not in LAYOUT_SHAPES:
        return f"forward failed: {reason}"
    given = layout_input(layout, input_shape)
    line = f"forward failed with layout {layout} (it got {given}"
    line += ", H, W)" if layout == "tokens-hw" else ")"
    line += f": {reason}"
    if runs_with:
        options = " or ".join(f"--layout {other} ({LAYOUT_SHAPES[other]})" for other in runs_with)
        line += f"; the input's layout was the problem: it runs with {options}"
    return line
