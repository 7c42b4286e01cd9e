"""CloAttention: CloFormer's attention (local AttnConv branches + a pooled global branch).

Paper: "Rethinking Local Perception in Lightweight Vision Transformer", Fan et al., arXiv 2303.17803.
Official code: qhfan/CloFormer, ``classification/models/blocks.py``, class ``EfficientAttention(dim,
num_heads, group_split, kernel_sizes, window_size=7, attn_drop=0., proj_drop=0., qkv_bias=True)`` with
``AttnMap(dim)``. The zoo's defaults are num_heads 8, group_split [4, 4], kernel_sizes [5], window_size 4
(a CloFormer stage-2 configuration at 28 x 28; note the class default window_size is 7).

With d = dim / heads, local branch i owns group_split[i] heads (c_i channels): a 1x1 conv makes q, k, v, a
depthwise k_i x k_i conv mixes them spatially, and the gate tanh(AttnMap(q * k) / sqrt(d)) multiplies v;
AttnMap is 1x1 conv, SiLU, 1x1 conv (this is the high-frequency "AttnConv"). The global branch owns the last
group_split entry: queries from every pixel attend (softmax, scaled by d^-1/2) to keys and values computed
on the window_size x window_size average-pooled map. The branch outputs are concatenated (local first)
and projected by a 1x1 conv. A group_split entry of 0 switches that branch off.

Differences from upstream (parameters and outputs are otherwise identical):
- ``efficientnet_pytorch``'s MemoryEfficientSwish (x * sigmoid(x) with a hand-written backward) is
  ``nn.SiLU``: the same function, one operator.
- ``attn_drop`` / ``proj_drop`` are dropped (0 in every CloFormer model for the attention).
- Upstream views the pooled keys as (H * W) // window_size**2 positions, so H and W must be multiples of
  window_size when the global branch is on; a few other shapes happen to run upstream (e.g. 5 x 4 with
  window 4, where the pooling drops a row) and are refused here, as are even kernel sizes.
- Parameter names: upstream ``qkvs.i`` / ``convs.i`` / ``act_blocks.i.act_block.{0,2}`` are
  ``local_branches.i.qkv`` / ``.mixer`` / ``.attn_map.{0,2}``; ``global_q`` / ``global_kv`` are
  ``global_branch.q`` / ``.kv``; ``proj`` is unchanged. ``benchmarks/make_golden_b.py`` holds the mapping
  and checks outputs against the official class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.zoo.constraints import dim_divisible_by, odd_kernels, positive
from attnbench.zoo.spec import Constraint, Example, ModuleSpec, Reference, Setting

__all__ = ["AttnConv", "CloAttention", "PooledGlobalAttention"]


class AttnConv(nn.Module):
    """Local (high-frequency) branch: tanh-gated, depthwise-mixed q * k context applied to v."""

    def __init__(self, dim: int, channels: int, kernel_size: int, scale: float, qkv_bias: bool) -> None:
        super().__init__()
        self.scale = scale
        self.qkv = nn.Conv2d(dim, 3 * channels, kernel_size=1, bias=qkv_bias)
        width = 3 * channels
        self.mixer = nn.Conv2d(width, width, kernel_size, padding=kernel_size // 2, groups=width)
        self.attn_map = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, channels, H, W)."""
        q, k, v = self.mixer(self.qkv(x)).chunk(3, dim=1)
        gate = torch.tanh(self.attn_map(q * k) * self.scale)
        return gate * v


class PooledGlobalAttention(nn.Module):
    """Global (low-frequency) branch: full-resolution queries, keys and values from an average-pooled map."""

    def __init__(self, dim: int, heads: int, head_dim: int, window_size: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.window_size = heads, head_dim, window_size
        self.scale = head_dim**-0.5
        self.q = nn.Conv2d(dim, heads * head_dim, kernel_size=1, bias=qkv_bias)
        self.kv = nn.Conv2d(dim, 2 * heads * head_dim, kernel_size=1, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, heads * head_dim, H, W); H and W must be multiples of window_size."""
        b, _, h, w = x.shape
        g, d = self.heads, self.head_dim
        q = self.q(x).reshape(b, g, d, h * w).transpose(-1, -2)  # (B, g, N, d)
        pooled = F.avg_pool2d(x, self.window_size) if self.window_size > 1 else x
        kv = self.kv(pooled)
        k, v = kv.reshape(b, 2, g, d, -1).transpose(-1, -2).unbind(1)  # each (B, g, N / ws^2, d)
        attn = ((q * self.scale) @ k.transpose(-1, -2)).softmax(dim=-1)
        out = attn @ v  # (B, g, N, d)
        return out.transpose(-1, -2).reshape(b, g * d, h, w)


class CloAttention(nn.Module):
    """CloFormer EfficientAttention: AttnConv branches and a pooled global branch, concatenated, 1x1 proj."""

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        group_split: Sequence[int] = (4, 4),
        kernel_sizes: Sequence[int] = (5,),
        window_size: int = 4,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if sum(group_split) != heads or len(kernel_sizes) + 1 != len(group_split):
            raise ValueError(
                f"need sum(group_split) == heads and len(kernel_sizes) + 1 == len(group_split), "
                f"got group_split={list(group_split)}, heads={heads}, kernel_sizes={list(kernel_sizes)}"
            )
        head_dim = dim // heads
        scale = head_dim**-0.5
        self.local_branches = nn.ModuleList(
            AttnConv(dim, g * head_dim, k, scale, qkv_bias)
            for g, k in zip(group_split[:-1], kernel_sizes, strict=True)
            if g > 0
        )
        global_heads = group_split[-1]
        self.global_branch: PooledGlobalAttention | None = None
        if global_heads > 0:
            self.global_branch = PooledGlobalAttention(dim, global_heads, head_dim, window_size, qkv_bias)
        self.proj = nn.Conv2d(dim, dim, kernel_size=1, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to (B, C, H, W)."""
        outs = [branch(x) for branch in self.local_branches]
        if self.global_branch is not None:
            outs.append(self.global_branch(x))
        return self.proj(torch.cat(outs, dim=1))


# ---------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------

DEFAULTS = {"heads": 8, "group_split": [4, 4], "kernel_sizes": [5], "window_size": 4, "qkv_bias": True}


def _check_split_nonnegative(s: Setting) -> str | None:
    gs = s["group_split"]
    return None if min(gs) >= 0 else f"group_split entries must be >= 0 (0 = branch off), got {gs}"


def _check_split_sum(s: Setting) -> str | None:
    gs, h = s["group_split"], s["heads"]
    return None if sum(gs) == h else f"sum(group_split)={sum(gs)} (group_split={gs}) must equal heads={h}"


def _check_split_length(s: Setting) -> str | None:
    ks, gs = s["kernel_sizes"], s["group_split"]
    if len(ks) + 1 == len(gs):
        return None
    return f"group_split {gs} needs one entry per kernel size {ks} plus one for the global branch"


def _check_windows(s: Setting) -> str | None:
    ws = s["window_size"]
    if s["group_split"][-1] == 0 or (s.height % ws == 0 and s.width % ws == 0):  # type: ignore[operator]
        return None
    return f"H x W = {s.height}x{s.width} is not divisible by window_size={ws} (global branch is on)"


CONSTRAINTS = (
    positive("heads"),
    positive("window_size"),
    Constraint("group_split >= 0", _check_split_nonnegative),
    Constraint("sum(group_split) == heads", _check_split_sum),
    Constraint("len(kernel_sizes) + 1 == len(group_split)", _check_split_length),
    odd_kernels("kernel_sizes"),
    dim_divisible_by("heads"),
    Constraint("H, W % window_size == 0 (global branch on)", _check_windows, needs_resolution=True),
)


def _local(s: Setting) -> list[tuple[int, int]]:
    """(channels, kernel) of each active local branch."""
    d = s.dim // s["heads"]
    return [(g * d, k) for g, k in zip(s["group_split"][:-1], s["kernel_sizes"], strict=True) if g > 0]


def _elementwise(out: int, a: int, b: int) -> int:
    """MACs of a tensor-by-tensor product: numel(out), but 0 when a factor has a single element (a scalar)."""
    return out if a > 1 and b > 1 else 0


def _params(s: Setting) -> int:
    dim, bias = s.dim, 1 if s["qkv_bias"] else 0
    total = 0
    for c, k in _local(s):
        total += dim * 3 * c + bias * 3 * c  # qkv 1x1
        total += 3 * c * k * k + 3 * c  # depthwise mixer, always with bias
        total += 2 * (c * c + c)  # AttnMap: two 1x1 convs with bias
    cg = s["group_split"][-1] * (dim // s["heads"])
    if cg:
        total += dim * cg + bias * cg  # global q
        total += dim * 2 * cg + bias * 2 * cg  # global kv
    total += dim * dim + bias * dim  # proj
    return total


def _macs(s: Setting) -> int:
    dim, b, n = s.dim, s.batch, s.tokens
    total = 0
    for c, k in _local(s):
        total += b * n * dim * 3 * c  # qkv 1x1
        total += b * n * 3 * c * k * k  # depthwise mixer
        maps = b * n * c  # elements of q, k, v and the gate
        total += _elementwise(maps, maps, maps)  # q * k
        total += 2 * b * n * c * c  # AttnMap
        total += _elementwise(maps, maps, maps)  # tanh(...) * v
    g = s["group_split"][-1]
    if g:
        d, ws = dim // s["heads"], s["window_size"]
        keys = (s.height // ws) * (s.width // ws)  # type: ignore[operator]
        total += b * n * dim * g * d  # q 1x1 on the full map
        total += b * keys * dim * 2 * g * d  # kv 1x1 on the pooled map
        total += b * g * n * keys * d  # q @ k^T (the scale multiplies by a Python float: 0 MACs)
        total += b * g * n * keys * d  # attn @ v
    total += b * n * dim * dim  # proj
    return total  # SiLU, tanh, softmax, pooling and the concatenation are not MACs


def _build(dim: int, res: tuple[int, int] | None, **kw: object) -> nn.Module:
    return CloAttention(dim, **kw)  # type: ignore[arg-type]


SPEC = ModuleSpec(
    name="clo",
    title="CloAttention (CloFormer AttnConv + pooled global attention)",
    builder=_build,
    layout="image",
    defaults=DEFAULTS,
    constraints=CONSTRAINTS,
    reference=Reference(
        paper="Rethinking Local Perception in Lightweight Vision Transformer",
        arxiv="2303.17803",
        repo="qhfan/CloFormer",
        file="classification/models/blocks.py",
        cls="EfficientAttention",
        commit="421921321f6ae3ba63681c6ca63bde011de92d4b",
    ),
    params_formula=_params,
    macs_formula=_macs,
    notes=(
        "EfficientAttention(dim, num_heads=8, group_split=[4, 4], kernel_sizes=[5], window_size=4) with "
        "AttnMap; MemoryEfficientSwish is nn.SiLU (same function). attn_drop/proj_drop dropped. H and W "
        "must be multiples of window_size when the global branch is on (group_split[-1] > 0); some other "
        "shapes run upstream only because the pooling drops the remainder, and are refused here, as are "
        "even kernels. window_size 1 gives full N x N global attention (CloFormer stage 4)."
    ),
    kwarg_help={
        "heads": "num_heads: total heads; head width d = dim / heads",
        "group_split": "heads per local branch, then heads of the global branch (0 = branch off)",
        "kernel_sizes": "depthwise kernel of each local branch (odd), one per local branch",
        "window_size": "average-pool window of the global branch's keys and values",
        "qkv_bias": "bias on the q/k/v 1x1 convs and on proj",
    },
    examples=(
        Example(dim=64, res=(16, 16)),
        Example(dim=64, res=(12, 20), batch=2),
        Example(
            dim=32,
            res=(8, 8),
            kwargs={"heads": 4, "group_split": [3, 1], "kernel_sizes": [3], "window_size": 8},
        ),
        Example(
            dim=64,
            res=(7, 9),
            kwargs={"heads": 4, "group_split": [2, 2, 0], "kernel_sizes": [3, 5]},
        ),
        Example(
            dim=32,
            res=(6, 6),
            kwargs={"heads": 4, "group_split": [0, 4], "window_size": 1},
            batch=2,
        ),
        Example(dim=48, res=(8, 12), kwargs={"qkv_bias": False, "heads": 6, "group_split": [2, 4]}),
    ),
    bad_examples=(
        Example(dim=64, res=(16, 16), kwargs={"heads": 0}, violates="heads >= 1"),
        Example(dim=64, res=(16, 16), kwargs={"window_size": 0}, violates="window_size >= 1"),
        Example(dim=64, res=(16, 16), kwargs={"group_split": [-1, 9]}, violates="group_split >= 0"),
        Example(
            dim=64,
            res=(16, 16),
            kwargs={"group_split": [4, 3]},
            violates="sum(group_split) == heads",
        ),
        Example(
            dim=64,
            res=(16, 16),
            kwargs={"group_split": [4, 2, 2]},
            violates="len(kernel_sizes) + 1 == len(group_split)",
        ),
        Example(dim=64, res=(16, 16), kwargs={"kernel_sizes": [4]}, violates="kernel_sizes odd"),
        Example(dim=60, res=(16, 16), violates="dim % heads == 0"),
        Example(dim=64, res=(14, 14), violates="H, W % window_size == 0 (global branch on)"),
    ),
    tags=("attention", "conv", "global-local"),
)
