"""Large Kernel Attention (LKA) and the VAN attention block that wraps it.

Paper: "Visual Attention Network", Guo et al., arXiv 2202.09741.
Official code: Visual-Attention-Network/VAN-Classification, ``models/van.py``, classes ``LKA(dim)`` and
``Attention(d_model)`` (commit 8566d2e; later snapshots rename them ``AttentionModule`` and
``SpatialAttention`` without changing them).

LKA decomposes a large (21 x 21) kernel into a 5 x 5 depthwise conv, a 7 x 7 depthwise conv with dilation 3
(padding 9, so the receptive field is 19 and the size is kept) and a 1 x 1 conv; the result gates the input
element-wise. The VAN attention block puts LKA between two 1 x 1 projections with a GELU and adds the input
back (that shortcut lives inside the official ``Attention``; the VAN ``Block`` adds a second one around it).

Differences from upstream: none in parameters, outputs or memory. Upstream copies its input twice with
``x.clone()`` (once in LKA, once for the shortcut); the copies change no value but cost a (B, C, H, W) buffer
each, so they are kept: attnbench measures peak memory, and that must be upstream's.

Verification: ``benchmarks/make_golden_b.py --official-dir <dir with van.py's two classes>`` copies weights
into the official classes and compares outputs; ``tests/golden/lka.pt`` and ``tests/golden/van.pt`` hold the
official outputs for fixed inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.zoo.spec import Example, ModuleSpec, Reference, Setting

__all__ = ["LKA", "VANAttention"]


class LKA(nn.Module):
    """Large Kernel Attention: x * conv1x1(dwconv7x7_dil3(dwconv5x5(x)))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, kernel_size=5, padding=2, groups=dim)
        # 7x7 taps spaced 3 apart cover 19 pixels; padding 9 = 3 * (7 - 1) / 2 keeps H and W.
        self.conv_spatial = nn.Conv2d(dim, dim, kernel_size=7, padding=9, dilation=3, groups=dim)
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate x (B, C, H, W) by its own large-kernel response."""
        u = x.clone()  # upstream's copy: no value changes, one (B, C, H, W) buffer of peak memory
        gate = self.conv1(self.conv_spatial(self.conv0(x)))
        return u * gate


class VANAttention(nn.Module):
    """VAN's attention block: 1x1 -> GELU -> LKA -> 1x1, plus the input (residual inside the block)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, kernel_size=1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = LKA(dim)
        self.proj_2 = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to (B, C, H, W)."""
        shortcut = x.clone()  # upstream's copy, kept for a faithful peak memory
        y = self.spatial_gating_unit(self.activation(self.proj_1(x)))
        return self.proj_2(y) + shortcut


# ---------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------

_REFERENCE_LKA = Reference(
    paper="Visual Attention Network",
    arxiv="2202.09741",
    repo="Visual-Attention-Network/VAN-Classification",
    file="models/van.py",
    cls="LKA",
    commit="8566d2ef38708338526a0adfa3350377a456d443",
)


def _elementwise(out: int, a: int, b: int) -> int:
    """MACs of a tensor-by-tensor product: numel(out), but 0 when a factor has a single element (a scalar)."""
    return out if a > 1 and b > 1 else 0


def _lka_params(s: Setting) -> int:
    c = s.dim
    conv0 = c * 5 * 5 + c  # depthwise 5x5 + bias
    conv_spatial = c * 7 * 7 + c  # depthwise 7x7 (dilated) + bias
    conv1 = c * c + c  # pointwise + bias
    return conv0 + conv_spatial + conv1


def _lka_macs(s: Setting) -> int:
    c, pixels = s.dim, s.batch * s.tokens
    conv0 = pixels * c * 5 * 5  # depthwise: one input channel per output channel
    conv_spatial = pixels * c * 7 * 7
    conv1 = pixels * c * c
    gate = _elementwise(pixels * c, pixels * c, pixels * c)  # x * gate, tensor by tensor
    return conv0 + conv_spatial + conv1 + gate


def _van_params(s: Setting) -> int:
    c = s.dim
    return 2 * (c * c + c) + _lka_params(s)  # proj_1 and proj_2 (1x1 with bias) around LKA


def _van_macs(s: Setting) -> int:
    c, pixels = s.dim, s.batch * s.tokens
    return 2 * pixels * c * c + _lka_macs(s)  # GELU and the residual add are not MACs


def _build_lka(dim: int, res: tuple[int, int] | None) -> nn.Module:
    return LKA(dim)


def _build_van(dim: int, res: tuple[int, int] | None) -> nn.Module:
    return VANAttention(dim)


_EXAMPLES = (
    Example(dim=64, res=(14, 14)),
    Example(dim=32, res=(8, 12), batch=2),
    Example(dim=16, res=(5, 31)),
    Example(dim=3, res=(3, 3), batch=3),
)

LKA_SPEC = ModuleSpec(
    name="lka",
    title="Large Kernel Attention (VAN)",
    builder=_build_lka,
    layout="image",
    defaults={},
    constraints=(),
    reference=_REFERENCE_LKA,
    params_formula=_lka_params,
    macs_formula=_lka_macs,
    notes=(
        "Same parameters and outputs as upstream LKA(dim). Upstream's u = x.clone() is kept (no value "
        "changes; it is part of upstream's peak memory). Runs at any C >= 1 and any H, W: "
        "all convolutions keep the size. LKA has no kwargs: kernel sizes 5 and 7 (dilation 3) are fixed "
        "upstream."
    ),
    examples=_EXAMPLES,
    bad_examples=(),
    tags=("conv", "gating", "large-kernel"),
)

VAN_SPEC = ModuleSpec(
    name="van",
    title="VAN attention block (1x1, GELU, LKA, 1x1, residual)",
    builder=_build_van,
    layout="image",
    defaults={},
    constraints=(),
    reference=Reference(
        paper=_REFERENCE_LKA.paper,
        arxiv=_REFERENCE_LKA.arxiv,
        repo=_REFERENCE_LKA.repo,
        file=_REFERENCE_LKA.file,
        cls="Attention",
        commit=_REFERENCE_LKA.commit,
    ),
    params_formula=_van_params,
    macs_formula=_van_macs,
    notes=(
        "Same parameters, parameter names and outputs as upstream Attention(d_model) (the residual to "
        "the input is part of the module, as upstream). Upstream's two x.clone() copies are kept "
        "(part of upstream's peak memory). Any C >= 1 and H, W >= 1."
    ),
    examples=_EXAMPLES,
    bad_examples=(),
    tags=("conv", "gating", "large-kernel", "residual"),
)
