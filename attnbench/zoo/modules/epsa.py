"""Pyramid Squeeze Attention (PSA), the attention module of EPSANet.

Paper: "EPSANet: An Efficient Pyramid Squeeze Attention Block on Convolutional Neural Network", Zhang et al.,
arXiv 2105.14447.
Official code: murufeng/EPSANet, ``models/epsanet.py`` class ``PSAModule(inplans, planes,
conv_kernels=[3, 5, 7, 9], stride=1, conv_groups=[1, 4, 8, 16])`` with ``models/SE_weight_module.py`` class
``SEWeightModule(channels, reduction=16)``.

The input goes through one bias-free convolution per branch (kernel k_i, padding k_i // 2, groups g_i, a
common stride), each producing dim / M channels. A single squeeze-and-excitation block (global average pool,
1x1 conv to c // reduction, ReLU, 1x1 conv back, sigmoid) - the same weights for every branch - scores each
branch's channels; a softmax across the M branches turns the scores into weights; each branch is scaled by
its weights and the branches are concatenated in REVERSED order (the last kernel's branch first), as upstream.

Differences from upstream (parameters and outputs are otherwise identical):
- ``inplans = planes = dim`` (the zoo contract keeps the channel count).
- The branch count is ``len(kernels)`` instead of a hard-coded 4. With 4 kernels this is exactly upstream
  (same convolutions, the same shared SE on dim / 4 channels, softmax over 4, reversed concatenation); other
  counts follow the same rule with dim / M channels per branch.
- The SE block runs once on the M branches stacked along the batch axis instead of M separate calls; it is
  the same computation with the same weights (and the same MACs).
- Cases upstream builds but cannot honour are refused: dim not divisible by the branch count (upstream's
  output would have 4 * (dim // 4) != dim channels), an SE hidden width of 0 (upstream builds, then fails in
  the forward) and even kernels (an all-even list happens to run upstream, one pixel larger; mixed parities
  fail in the concatenation).
- ``stride`` > 1 is kept: the output is then (B, C, (H - 1) // stride + 1, (W - 1) // stride + 1), smaller
  than the input, as in EPSANet's down-sampling blocks.

Parameter names: upstream ``conv_1 .. conv_4`` are ``convs.0 .. convs.3`` here; ``se.fc1`` / ``se.fc2`` are
unchanged. ``benchmarks/make_golden_b.py`` holds the mapping and checks outputs against the official class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnbench.zoo.constraints import odd_kernels, positive
from attnbench.zoo.spec import Constraint, Example, ModuleSpec, Reference, Setting

__all__ = ["PSA", "SEWeight"]


class SEWeight(nn.Module):
    """Squeeze-and-excitation scores: sigmoid(fc2(relu(fc1(avgpool(x))))), shape (B, C, 1, 1)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel scores in (0, 1) for x (B, C, H, W)."""
        pooled = F.adaptive_avg_pool2d(x, 1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))


class PSA(nn.Module):
    """Multi-scale grouped convolutions re-weighted by a shared SE block and a softmax across scales."""

    def __init__(
        self,
        dim: int,
        kernels: Sequence[int] = (3, 5, 7, 9),
        groups: Sequence[int] = (1, 4, 8, 16),
        stride: int = 1,
        reduction: int = 16,
    ) -> None:
        super().__init__()
        if len(kernels) != len(groups):
            raise ValueError(f"kernels {list(kernels)} and groups {list(groups)} must have the same length")
        self.branches = len(kernels)
        self.split = dim // self.branches
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, self.split, k, stride=stride, padding=k // 2, groups=g, bias=False)
            for k, g in zip(kernels, groups, strict=True)
        )
        # One SE block shared by every branch: its weights are counted once.
        self.se = SEWeight(self.split, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to (B, C, H', W'), H' = (H - 1) // stride + 1."""
        feats = torch.stack([conv(x) for conv in self.convs], dim=1)  # (B, M, c, H', W')
        b, m, c, h, w = feats.shape
        scores = self.se(feats.reshape(b * m, c, h, w)).reshape(b, m, c, 1, 1)
        weighted = feats * scores.softmax(dim=1)
        # Upstream prepends each branch in turn, so the last kernel's branch comes first.
        return weighted.flip(1).reshape(b, m * c, h, w)


# ---------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------

DEFAULTS = {"kernels": [3, 5, 7, 9], "groups": [1, 4, 8, 16], "stride": 1, "reduction": 16}


def _split(s: Setting) -> int:
    return s.dim // len(s["kernels"])


def _check_lengths(s: Setting) -> str | None:
    k, g = s["kernels"], s["groups"]
    return None if len(k) == len(g) else f"kernels {k} has {len(k)} entries but groups {g} has {len(g)}"


def _check_groups_positive(s: Setting) -> str | None:
    bad = [g for g in s["groups"] if g < 1]
    return None if not bad else f"groups must all be >= 1, got {s['groups']}"


def _check_dim_per_branch(s: Setting) -> str | None:
    m = len(s["kernels"])
    return None if s.dim % m == 0 else f"dim={s.dim} is not divisible by the branch count len(kernels)={m}"


def _check_dim_by_groups(s: Setting) -> str | None:
    bad = [g for g in s["groups"] if s.dim % g]
    return None if not bad else f"dim={s.dim} (each conv's input) is not divisible by groups {bad}"


def _check_split_by_groups(s: Setting) -> str | None:
    c = _split(s)
    bad = [g for g in s["groups"] if c % g]
    return None if not bad else f"dim/len(kernels)={c} (each conv's output) is not divisible by groups {bad}"


def _check_se_hidden(s: Setting) -> str | None:
    c, r = _split(s), s["reduction"]
    return None if c // r >= 1 else f"SE hidden width dim/len(kernels)//reduction = {c}//{r} = 0"


CONSTRAINTS = (
    Constraint("len(kernels) == len(groups)", _check_lengths),
    odd_kernels("kernels"),
    Constraint("groups >= 1", _check_groups_positive),
    positive("stride"),
    positive("reduction"),
    Constraint("dim % len(kernels) == 0", _check_dim_per_branch),
    Constraint("dim % each group == 0", _check_dim_by_groups),
    Constraint("dim/len(kernels) % each group == 0", _check_split_by_groups),
    Constraint("dim/len(kernels) // reduction >= 1", _check_se_hidden),
)


def _elementwise(out: int, a: int, b: int) -> int:
    """MACs of a tensor-by-tensor product: numel(out), but 0 when a factor has a single element (a scalar)."""
    return out if a > 1 and b > 1 else 0


def _params(s: Setting) -> int:
    dim, c = s.dim, _split(s)
    hidden = c // s["reduction"]
    # Bias-free convs dim -> c, each output channel seeing dim / g inputs over a k x k window.
    convs = sum((dim // g) * c * k * k for k, g in zip(s["kernels"], s["groups"], strict=True))
    se = (c * hidden + hidden) + (hidden * c + c)  # fc1 and fc2, 1x1 with bias, shared by all branches
    return convs + se


def _out_side(side: int, stride: int) -> int:
    # Odd k with padding k // 2: (side + 2 * (k // 2) - k) // stride + 1 = (side - 1) // stride + 1.
    return (side - 1) // stride + 1


def _macs(s: Setting) -> int:
    dim, c, b = s.dim, _split(s), s.batch
    m, hidden = len(s["kernels"]), c // s["reduction"]
    out_pixels = _out_side(s.height, s["stride"]) * _out_side(s.width, s["stride"])  # type: ignore[arg-type]
    branches = zip(s["kernels"], s["groups"], strict=True)
    convs = sum(b * c * out_pixels * (dim // g) * k * k for k, g in branches)
    se = b * m * (c * hidden + hidden * c)  # the shared SE runs once per branch on a (c, 1, 1) vector
    # branch features (B, M, c, H', W') * softmax weights (B, M, c, 1, 1), broadcast over H', W'
    reweight = _elementwise(b * m * c * out_pixels, b * m * c * out_pixels, b * m * c)
    return convs + se + reweight  # pooling, sigmoid, softmax and the concatenation are not MACs


def _build(dim: int, res: tuple[int, int] | None, **kw: object) -> nn.Module:
    return PSA(dim, **kw)  # type: ignore[arg-type]


SPEC = ModuleSpec(
    name="epsa",
    title="Pyramid Squeeze Attention (EPSANet PSA module)",
    builder=_build,
    layout="image",
    defaults=DEFAULTS,
    constraints=CONSTRAINTS,
    reference=Reference(
        paper="EPSANet: An Efficient Pyramid Squeeze Attention Block on Convolutional Neural Network",
        arxiv="2105.14447",
        repo="murufeng/EPSANet",
        file="models/epsanet.py",
        cls="PSAModule",
        commit="8f502931eda70e3770bbc0cb07d6d60082b27094",
    ),
    params_formula=_params,
    macs_formula=_macs,
    notes=(
        "PSAModule(dim, dim, kernels, stride, groups) with SEWeightModule(dim/M, reduction), M = "
        "len(kernels). Upstream hard-codes M = 4; the M-branch form reduces exactly to it at 4 kernels "
        "(generalised, not refused). One SE block is shared by all branches; softmax across branches; "
        "branches concatenated in upstream's reversed order (largest kernel first with the defaults). "
        "The SE runs once on the stacked branches instead of M calls (same weights, values and MACs). "
        "Refused although upstream builds them: dim % M != 0 (upstream would drop channels), SE hidden "
        "width 0 (fails in upstream's forward), even kernels. With stride > 1 the output is smaller than "
        "the input: (B, C, (H-1)//stride+1, (W-1)//stride+1). Default groups need dim % 64 == 0."
    ),
    kwarg_help={
        "kernels": "kernel size of each branch (odd); the branch count M is its length",
        "groups": "conv groups of each branch, same length as kernels",
        "stride": "stride of every branch conv (> 1 shrinks the output)",
        "reduction": "SE reduction: hidden width = dim / M // reduction",
    },
    examples=(
        Example(dim=64, res=(8, 8)),
        Example(dim=64, res=(12, 20), batch=2),
        Example(dim=128, res=(7, 9), kwargs={"stride": 2}),
        Example(dim=48, res=(10, 10), kwargs={"kernels": [3, 5, 7], "groups": [1, 2, 4], "reduction": 4}),
        Example(dim=32, res=(6, 6), kwargs={"groups": [1, 1, 2, 4], "reduction": 8}, batch=3),
    ),
    bad_examples=(
        Example(
            dim=64,
            res=(8, 8),
            kwargs={"kernels": [3, 5, 7]},
            violates="len(kernels) == len(groups)",
        ),
        Example(dim=64, res=(8, 8), kwargs={"kernels": [3, 5, 7, 8]}, violates="kernels odd"),
        Example(dim=64, res=(8, 8), kwargs={"groups": [1, 4, 8, 0]}, violates="groups >= 1"),
        Example(dim=64, res=(8, 8), kwargs={"stride": 0}, violates="stride >= 1"),
        Example(dim=64, res=(8, 8), kwargs={"reduction": 0}, violates="reduction >= 1"),
        Example(dim=66, res=(8, 8), violates="dim % len(kernels) == 0"),
        Example(dim=40, res=(8, 8), violates="dim % each group == 0"),
        Example(dim=32, res=(8, 8), violates="dim/len(kernels) % each group == 0"),
        Example(
            dim=64,
            res=(8, 8),
            kwargs={"reduction": 32},
            violates="dim/len(kernels) // reduction >= 1",
        ),
    ),
    tags=("conv", "multi-scale", "channel-attention"),
)
