"""One calling convention: wrap token-layout modules so every zoo module maps (B, C, H, W) to (B, C, H, W)."""

from __future__ import annotations

import torch
from torch import nn


class TokensToImage(nn.Module):
    """Run a (B, N, C) token module on a (B, C, H, W) map and return a map of the same layout.

    `pass_hw` forwards H and W to modules whose forward takes them (SMT's `forward(x, H, W)`);
    `self_attention` passes the tokens three times (queries, keys, values) as the official MHSA expects.
    The flatten and transpose move data only: they add no MACs.
    """

    def __init__(self, inner: nn.Module, pass_hw: bool = False, self_attention: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.pass_hw = pass_hw
        self.self_attention = self_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        if self.self_attention:
            out = self.inner(tokens, tokens, tokens)
        elif self.pass_hw:
            out = self.inner(tokens, h, w)
        else:
            out = self.inner(tokens)
        return out.transpose(1, 2).reshape(b, out.shape[-1], h, w)


#: What each layout feeds a user's module and expects back.
LAYOUT_SHAPES = {"image": "(B, C, H, W) in and out", "tokens": "(B, N, C) in and out, N = H*W"}


def forward_failure(layout: str, input_shape: tuple[int, ...], reason: str) -> str:
    """Why a forward failed, in one line; for a user's module it names the layout and suggests the other."""
    if layout not in LAYOUT_SHAPES:
        return f"forward failed: {reason}"
    other = "tokens" if layout == "image" else "image"
    b, c, h, w = input_shape
    given = (b, c, h, w) if layout == "image" else (b, h * w, c)
    return (
        f"forward failed with layout {layout} ({LAYOUT_SHAPES[layout]}; it got {given}); "
        f"if the module takes {LAYOUT_SHAPES[other].split(' in ')[0]}, try --layout {other}: {reason}"
    )
