"""SK attention: selective kernels, the External-Attention-pytorch variant.

Paper: "Selective Kernel Networks", Li et al., CVPR 2019 (arXiv:1903.06586).
Reference code: xmu-xiaoma666/External-Attention-pytorch, file ``model/attention/SKAttention.py``, class
``SKAttention(channel=512, kernels=[1,3,5,7], reduction=16, group=1, L=32)``. Our notes read it at d75848e;
the copy compared here is the lyp2333 fork's (440d687; the cenaav fork's differs only in whitespace).

Structure: one branch per kernel size k: Conv2d(C, C, k, padding k//2, groups, bias) -> BN -> ReLU; U = sum
of the branches; s = spatial mean of U; z = fc(s) with fc = Linear(C, d), d = max(L, C // reduction) (no BN or
ReLU after it, unlike SKNet); one Linear(d, C) per branch; softmax across the branches; output = sum over
branches of weight * branch.

This is not SKNet's own SK unit (two branches, 3x3 and dilated 3x3, grouped, fc with BN + ReLU): the zoo
entry is the popular dense multi-kernel variant, reproduced as is. Same as upstream: parameter names and
shapes, PyTorch default init, outputs for the same weights. Differs only in naming: ``L`` is ``min_hidden``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from attnbench.zoo.constraints import dim_divisible_by, odd_kernels, positive
from attnbench.zoo.spec import Constraint, Example, ModuleSpec, Reference, Setting


class SKAttention(nn.Module):
    """Selective-kernel attention: softmax-weighted sum of conv-BN-ReLU branches of different kernel sizes."""

    def __init__(
        self,
        dim: int,
        kernels: list[int] | tuple[int, ...] = (1, 3, 5, 7),
        reduction: int = 16,
        group: int = 1,
        min_hidden: int = 32,
    ) -> None:
        super().__init__()
        self.d = max(min_hidden, dim // reduction)
        self.convs = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(dim, dim, k, padding=k // 2, groups=group),
                    bn=nn.BatchNorm2d(dim),
                    relu=nn.ReLU(),
                )
            )
            for k in kernels
        )
        self.fc = nn.Linear(dim, self.d)
        self.fcs = nn.ModuleList(nn.Linear(self.d, dim) for _ in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c = x.shape[:2]
        branches = [branch(x) for branch in self.convs]
        feats = torch.stack(branches, 0)  # (M, B, C, H, W)
        squeezed = sum(branches).mean(-1).mean(-1)  # (B, C): global average of the fused map
        z = self.fc(squeezed)  # (B, d)
        logits = torch.stack([fc(z).view(b, c, 1, 1) for fc in self.fcs], 0)  # (M, B, C, 1, 1)
        weights = logits.softmax(dim=0)  # across the branches
        return (weights * feats).sum(0)


def _build(
    dim: int, res: tuple[int, int] | None, kernels: list[int], reduction: int, group: int, min_hidden: int
) -> nn.Module:
    return SKAttention(dim, list(kernels), reduction, group, min_hidden)


def _hidden(s: Setting) -> int:
    return max(s["min_hidden"], s.dim // s["reduction"])


def _hidden_positive(s: Setting) -> str | None:
    d = _hidden(s)
    if d >= 1:
        return None
    squeeze = s.dim // s["reduction"]
    return f"hidden width d = max(min_hidden={s['min_hidden']}, dim // reduction={squeeze}) is {d}"


def _params(s: Setting) -> int:
    c, g, d = s.dim, s["group"], _hidden(s)
    kernels = s["kernels"]
    convs = sum(c * (c // g) * k * k + c for k in kernels)  # grouped conv with bias, per branch
    norms = len(kernels) * 2 * c  # BN weight and bias per branch
    fc = c * d + d
    fcs = len(kernels) * (d * c + c)
    return convs + norms + fc + fcs


def _macs(s: Setting) -> int:
    c, g, d, b = s.dim, s["group"], _hidden(s), s.batch
    n = s.tokens
    m = len(s["kernels"])
    convs = sum(b * c * n * (c // g) * k * k for k in s["kernels"])
    fc = b * c * d
    fcs = m * b * d * c
    # (M, B, C, 1, 1) * (M, B, C, H, W), elementwise; a 1-element operand makes it a scaling: 0 MACs.
    reweight = m * b * c * n if m * b * c > 1 and m * b * c * n > 1 else 0
    return convs + fc + fcs + reweight  # BN, ReLU, sums, means, softmax: 0 MACs


SPEC = ModuleSpec(
    name="sk",
    title="SK attention (selective kernel)",
    builder=_build,
    layout="image",
    defaults={"kernels": [1, 3, 5, 7], "reduction": 16, "group": 1, "min_hidden": 32},
    constraints=(
        odd_kernels("kernels"),
        positive("reduction"),
        positive("group"),
        dim_divisible_by("group"),
        Constraint("max(min_hidden, dim // reduction) >= 1", _hidden_positive),
    ),
    reference=Reference(
        paper="Selective Kernel Networks",
        arxiv="1903.06586",
        repo="xmu-xiaoma666/External-Attention-pytorch",
        file="model/attention/SKAttention.py",
        cls="SKAttention",
        commit="d75848e",
    ),
    params_formula=_params,
    macs_formula=_macs,
    notes=(
        "The External-Attention-pytorch SKAttention (dense conv-BN-ReLU branch per kernel, fc without "
        "BN), not SKNet's two-branch grouped SK unit. L is called min_hidden. A hidden width d of 0 "
        "(upstream builds it: Linear(C, 0), so the branch weights are the fcs biases alone) is refused."
    ),
    kwarg_help={
        "kernels": "odd kernel sizes, one conv-BN-ReLU branch each",
        "reduction": "squeeze ratio: hidden width d = max(min_hidden, dim // reduction)",
        "group": "groups of every branch conv; dim must be divisible by it",
        "min_hidden": "L in the paper: lower bound of the hidden width d",
    },
    examples=(
        Example(64, (14, 14)),
        Example(32, (8, 12), batch=2),
        Example(64, (7, 7), {"kernels": [3, 5], "reduction": 8, "group": 4, "min_hidden": 16}),
    ),
    bad_examples=(
        Example(64, (14, 14), {"kernels": [1, 2]}, violates="kernels odd"),
        Example(64, (14, 14), {"reduction": 0}, violates="reduction >= 1"),
        Example(64, (14, 14), {"group": 0}, violates="group >= 1"),
        Example(64, (14, 14), {"group": 3}, violates="dim % group == 0"),
        Example(8, (14, 14), {"min_hidden": 0}, violates="max(min_hidden, dim // reduction) >= 1"),
    ),
    tags=("channel-attention", "multi-scale"),
)
