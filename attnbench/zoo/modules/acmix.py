"""ACmix: a mixed self-attention and convolution block.

Paper: "On the Integration of Self-Attention and Convolution", Pan et al., CVPR 2022 (arXiv:2111.14556).
Official code: LeapLabTHU/ACmix, file ``ResNet/test_bottleneck.py``, class ``ACmix`` (the module that
replaces the 3x3 conv of every ACmix-ResNet bottleneck), read at commit 17f0253.

One set of 1x1 projections (q, k, v) feeds two paths. The attention path lets every (strided) query attend
over a ``kernel_att x kernel_att`` reflection-padded window of keys, with a relative positional term from a
1x1 conv (``conv_p``) applied to a fixed (1, 2, H, W) coordinate grid. The convolution path mixes the
3·heads projected maps into ``kernel_conv**2`` maps (``fc``) and gathers them with a grouped conv whose
weights start as one-hot shift kernels (``dep_conv``). The output is ``rate1 * attention + rate2 * conv``.

Same as upstream: parameter names, shapes and count (``dep_conv`` has no bias: upstream declares one and then
replaces it with None), the initialisation (shift kernels, rates 0.5, PyTorch defaults elsewhere), and the
outputs for the same weights (checked to float32 round-off at 64 @ 14x14, 32 @ 8x12, 48 @ 16x16 stride 2).

Differs, on purpose:
- ``in_planes == out_planes == dim`` (the zoo maps (B, C, H, W) to (B, C, H/stride, W/stride)).
- ``kernel_conv`` is generalised: ``dep_conv`` uses padding ``kernel_conv // 2`` where upstream hard-codes 1,
  so any odd ``kernel_conv`` runs (upstream crashes for anything but 3 in the final sum). At 3 this is the
  official module exactly.
- ``dilation`` is dropped: upstream only enlarges the reflection padding with it, never the unfold, so every
  dilation other than 1 crashes in a ``view``.
- The coordinate grid is built on the input's device in ``conv_p``'s dtype (upstream: float32, and CUDA or
  CPU only), which changes nothing in float32 on CPU/CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.zoo.constraints import (
    dim_divisible_by,
    min_resolution,
    odd_kernels,
    positive,
    resolution_divisible,
)
from attnbench.zoo.spec import Example, ModuleSpec, Reference, Setting


def coordinate_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A (1, 2, H, W) grid: channel 0 is x in [-1, 1] along W, channel 1 is y in [-1, 1] along H."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y)).unsqueeze(0)


class ACmix(nn.Module):
    """ACmix block: shared 1x1 q/k/v feeding a windowed-attention path and a shift-conv path."""

    def __init__(
        self,
        dim: int,
        kernel_att: int = 7,
        heads: int = 4,
        kernel_conv: int = 3,
        stride: int = 1,
    ) -> None:
        super().__init__()
        if dim % heads or kernel_att % 2 == 0 or kernel_conv % 2 == 0 or stride < 1:
            raise ValueError(
                f"ACmix needs dim % heads == 0 and odd kernels, got {dim=}, {heads=}, "
                f"{kernel_att=}, {kernel_conv=}, {stride=}"
            )
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.kernel_att = kernel_att
        self.kernel_conv = kernel_conv
        self.stride = stride
        self.scale = float(self.head_dim) ** -0.5

        # Mixing weights of the two paths (one scalar each).
        self.rate1 = nn.Parameter(torch.empty(1))
        self.rate2 = nn.Parameter(torch.empty(1))
        # q, k, v projections (shared by both paths) and the positional encoding of the coordinate grid.
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.conv3 = nn.Conv2d(dim, dim, 1)
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)

        # Attention path: reflection-padded kernel_att x kernel_att windows, one per (strided) query.
        self.pad_att = nn.ReflectionPad2d(kernel_att // 2)
        self.unfold = nn.Unfold(kernel_size=kernel_att, padding=0, stride=stride)

        # Convolution path: 3*heads maps -> kernel_conv**2 maps, then a grouped conv (one group per
        # channel of a head) that starts out as a set of shifts. No bias, as upstream ends up with.
        taps = kernel_conv * kernel_conv
        self.fc = nn.Conv2d(3 * heads, taps, 1, bias=False)
        self.dep_conv = nn.Conv2d(
            taps * self.head_dim,
            dim,
            kernel_conv,
            stride=stride,
            padding=kernel_conv // 2,
            groups=self.head_dim,
            bias=False,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Rates to 0.5 and dep_conv to one-hot shift kernels as upstream; the rest keep PyTorch's init."""
        nn.init.constant_(self.rate1, 0.5)
        nn.init.constant_(self.rate2, 0.5)
        k = self.kernel_conv
        shifts = torch.zeros(k * k, k, k)
        for tap in range(k * k):
            shifts[tap, tap // k, tap % k] = 1.0
        with torch.no_grad():
            self.dep_conv.weight.copy_(shifts.expand(self.dim, -1, -1, -1))

    def _windows(self, t: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """(N, D, H, W) -> (N, D, kernel_att**2, Ho, Wo): every reflection-padded window around a query."""
        n, d = t.shape[:2]
        cols = self.unfold(self.pad_att(t))
        return cols.view(n, d, self.kernel_att * self.kernel_att, *out_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H/stride, W/stride)."""
        b, _, h, w = x.shape
        s, heads, hd = self.stride, self.heads, self.head_dim
        out_hw = (h // s, w // s)
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)

        # Attention path. The positional term of key j seen from query i is pe_i - pe_j.
        pe = self.conv_p(coordinate_grid(h, w, x.device, self.conv_p.weight.dtype))  # (1, hd, H, W)
        q_heads = q.view(b * heads, hd, h, w) * self.scale
        pe_query = pe
        if s > 1:
            q_heads = q_heads[:, :, ::s, ::s]
            pe_query = pe[:, :, ::s, ::s]
        k_win = self._windows(k.view(b * heads, hd, h, w), out_hw)
        pe_win = self._windows(pe, out_hw)
        logits = (q_heads.unsqueeze(2) * (k_win + pe_query.unsqueeze(2) - pe_win)).sum(1)
        weights = logits.softmax(dim=1)  # over the kernel_att**2 window
        v_win = self._windows(v.view(b * heads, hd, h, w), out_hw)
        out_att = (weights.unsqueeze(1) * v_win).sum(2).view(b, self.dim, *out_hw)

        # Convolution path: fc mixes the (q, k, v) x heads axis; dep_conv gathers the shifted taps.
        stacked = torch.cat([t.view(b, heads, hd, h * w) for t in (q, k, v)], dim=1)  # (B, 3*heads, hd, HW)
        taps = self.fc(stacked)  # (B, kernel_conv**2, hd, HW)
        taps = taps.transpose(1, 2).reshape(b, hd * self.kernel_conv**2, h, w)
        out_conv = self.dep_conv(taps)

        return self.rate1 * out_att + self.rate2 * out_conv


def _build(dim: int, res: tuple[int, int] | None, **kwargs: int) -> nn.Module:
    return ACmix(dim, **kwargs)


def _params(s: Setting) -> int:
    c, heads, kc = s.dim, s["heads"], s["kernel_conv"]
    head_dim = c // heads
    qkv = 3 * (c * c + c)  # three 1x1 convs with bias
    pos = 2 * head_dim + head_dim  # conv_p: 2 -> head_dim, with bias
    fc = 3 * heads * kc * kc  # 1x1, no bias
    dep = c * (kc * kc) * kc * kc  # C_out x (C_in/groups = kc^2) x kc x kc, no bias
    return qkv + pos + fc + dep + 2  # + rate1, rate2


def _product(numel_a: int, numel_b: int) -> int:
    """MACs of a broadcast elementwise product whose output is the larger operand (0 for a scalar scaling)."""
    return max(numel_a, numel_b) if min(numel_a, numel_b) > 1 else 0


def _macs(s: Setting) -> int:
    c, heads, ka, kc, st = s.dim, s["heads"], s["kernel_att"], s["kernel_conv"], s["stride"]
    b, h, w = s.batch, s.height, s.width
    assert h is not None and w is not None
    head_dim = c // heads
    ho, wo = h // st, w // st
    qkv = 3 * b * c * c * h * w  # conv1..3
    pos = 1 * head_dim * 2 * h * w  # conv_p on the batch-1 grid: does not scale with B
    # Elementwise products count numel(out) only when both operands have more than one element.
    logits = _product(b * c * ho * wo, b * c * ka * ka * ho * wo)  # q * (k_win + pe_q - pe_win)
    mix = _product(b * heads * ka * ka * ho * wo, b * c * ka * ka * ho * wo)  # weights * v_win
    fc = b * kc * kc * (3 * heads) * head_dim * h * w  # 1x1 conv on (B, 3*heads, head_dim, HW)
    dep = b * c * ho * wo * (kc * kc) * kc * kc  # grouped conv, C_in/groups = kc^2
    return qkv + pos + logits + mix + fc + dep  # q scaling and rate1/rate2 products: scalar, 0 MACs


SPEC = ModuleSpec(
    name="acmix",
    title="ACmix",
    builder=_build,
    layout="image",
    defaults={"kernel_att": 7, "heads": 4, "kernel_conv": 3, "stride": 1},
    constraints=(
        positive("heads"),
        dim_divisible_by("heads"),
        odd_kernels("kernel_att"),
        odd_kernels("kernel_conv"),
        positive("stride"),
        resolution_divisible("stride"),
        min_resolution(lambda s: s["kernel_att"] // 2 + 1, "reflection pad kernel_att // 2 < H, W"),
    ),
    reference=Reference(
        paper="On the Integration of Self-Attention and Convolution",
        arxiv="2111.14556",
        repo="LeapLabTHU/ACmix",
        file="ResNet/test_bottleneck.py",
        cls="ACmix",
        commit="17f02533bfee1d1a07a14825917ccf161bb79c14",
    ),
    params_formula=_params,
    macs_formula=_macs,
    notes=(
        "in_planes = out_planes = dim. kernel_conv generalised to any odd size (dep_conv padding "
        "kernel_conv // 2; upstream hard-codes 1 and so runs only kernel_conv 3, where this is "
        "identical). dilation dropped (upstream crashes for dilation != 1). No dep_conv bias, as "
        "upstream. The coordinate grid follows the input's device and conv_p's dtype. "
        "Output is (B, C, H/stride, W/stride)."
    ),
    kwarg_help={
        "kernel_att": "odd side of the attention window around each query (reflection-padded)",
        "heads": "attention heads; dim must be divisible by it",
        "kernel_conv": "odd kernel of the shift-conv path (3 = upstream; others: attnbench extension)",
        "stride": "output stride of both paths; H and W must be divisible by it",
    },
    examples=(
        Example(64, (14, 14)),
        Example(32, (8, 12), batch=2),
        Example(48, (16, 16), {"stride": 2, "heads": 6}),
        Example(32, (10, 7), {"kernel_att": 5, "kernel_conv": 5}),
    ),
    bad_examples=(
        Example(64, (14, 14), {"heads": 0}, violates="heads >= 1"),
        Example(30, (14, 14), {"heads": 4}, violates="dim % heads == 0"),
        Example(64, (14, 14), {"kernel_att": 4}, violates="kernel_att odd"),
        Example(64, (14, 14), {"kernel_conv": 2}, violates="kernel_conv odd"),
        Example(64, (14, 14), {"stride": 0}, violates="stride >= 1"),
        Example(64, (15, 15), {"stride": 2}, violates="H, W % stride == 0"),
        Example(64, (3, 3), violates="H, W >= min (reflection pad kernel_att // 2 < H, W)"),
    ),
    tags=("hybrid", "local-attention", "conv"),
)
