"""External attention (EANet block): attention against a small learned memory instead of the tokens.

Paper: "Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks", Guo et al.,
TPAMI 2022 (arXiv:2105.02358).
Official code: MenghaoGuo/EANet, file ``model_torch.py``, class ``External_attention(c)``, read at commit
3ae0778 (the block EANet applies to 512-channel stride-8 features). This is *not* the token-layout
``ExternalAttention(d_model, S)`` of xmu-xiaoma666/External-Attention-pytorch (no residual, no conv, no norm).

Structure: 1x1 conv (bias) -> memory key unit M_k = Conv1d(C, k, 1, no bias) -> softmax over the N = H*W
positions -> divide by (1e-9 + sum over the k memory slots) (the paper's double normalisation) -> memory value
unit M_v = Conv1d(k, C, 1, no bias) -> 1x1 conv (no bias) + BatchNorm -> + input -> ReLU.

Same as upstream: parameter names and shapes; M_v's weight is the permuted view of M_k's (``linear_1.weight``
shares storage with ``linear_0.weight``: two Parameters, tied in memory, both counted and both in the
state_dict); the initialisation (convs N(0, 2/n) with n = k_h*k_w*C_out, the shared memory last drawn by M_v
with n = C, BN weight 1 and bias 0, conv1's bias left at PyTorch's default); outputs for the same weights.

Differs, on purpose:
- ``k`` (memory size) is a keyword (default 64 = upstream's hard-coded value).
- ``norm_layer`` is a module-level global of upstream's file built from ``SynchronizedBatchNorm2d`` and
  ``settings.BN_MOM = 0.1``, neither of which ships with the repository: the single-device equivalent
  ``nn.BatchNorm2d(C, momentum=0.1)`` is used.
- Like upstream, the tie lives in storage only: ``.to(dtype/device)`` converts each Parameter on its own
  and unties them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnbench.zoo.constraints import positive
from attnbench.zoo.spec import Example, ModuleSpec, Reference, Setting


class ExternalAttention(nn.Module):
    """EANet's external-attention block on (B, C, H, W), with a residual connection and ReLU."""

    def __init__(self, dim: int, k: int = 64) -> None:
        super().__init__()
        self.k = k
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.linear_0 = nn.Conv1d(dim, k, 1, bias=False)  # memory keys M_k: (k, C, 1)
        self.linear_1 = nn.Conv1d(k, dim, 1, bias=False)  # memory values M_v: (C, k, 1)
        # Tie M_v to M_k: a second Parameter over the same storage, seen as (C, k, 1).
        self.linear_1.weight = nn.Parameter(self.linear_0.weight.detach().permute(1, 0, 2))
        self.conv2 = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim, momentum=0.1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Upstream's init: He-normal with fan-out for conv weights, BN to identity."""
        with torch.no_grad():
            for m in (self.conv1, self.conv2[0]):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out))
            # Upstream draws the shared memory twice (M_k, then M_v); M_v's draw (fan-out C) is what stays.
            self.linear_1.weight.normal_(0.0, math.sqrt(2.0 / self.linear_1.out_channels))
            bn = self.conv2[1]
            bn.weight.fill_(1.0)
            bn.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        identity = x
        b, c, h, w = x.shape
        feats = self.conv1(x).view(b, c, h * w)
        attn = self.linear_0(feats).softmax(dim=-1)  # (B, k, N): normalised over positions
        attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))  # then L1 over the k memory slots
        out = self.linear_1(attn).view(b, c, h, w)
        return torch.relu(self.conv2(out) + identity)


def _build(dim: int, res: tuple[int, int] | None, k: int) -> nn.Module:
    return ExternalAttention(dim, k=k)


def _params(s: Setting) -> int:
    c, k = s.dim, s["k"]
    conv1 = c * c + c  # 1x1 with bias
    memory = k * c + c * k  # linear_0 and linear_1: tied in storage but two Parameters, both counted
    conv2 = c * c  # 1x1, no bias
    norm = 2 * c  # BN weight and bias (running stats are buffers)
    return conv1 + memory + conv2 + norm


def _macs(s: Setting) -> int:
    c, k, b = s.dim, s["k"], s.batch
    n = s.tokens
    conv1 = b * c * n * c
    mk = b * k * n * c  # Conv1d C -> k over N positions
    mv = b * c * n * k  # Conv1d k -> C
    conv2 = b * c * n * c
    return conv1 + mk + mv + conv2  # softmax, the L1 division, BN, residual, ReLU: 0 MACs


SPEC = ModuleSpec(
    name="ea",
    title="External Attention (EANet)",
    builder=_build,
    layout="image",
    defaults={"k": 64},
    constraints=(positive("k"),),
    reference=Reference(
        paper="Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks",
        arxiv="2105.02358",
        repo="MenghaoGuo/EANet",
        file="model_torch.py",
        cls="External_attention",
        commit="3ae0778df95e7af6e89868e18d42a54c722cbc39",
    ),
    params_formula=_params,
    macs_formula=_macs,
    notes=(
        "The official EANet block (conv1 -> M_k -> softmax over N -> L1 over k -> M_v -> conv+BN -> "
        "+ input -> ReLU), not xmu's token-layout ExternalAttention. Memory size k is a keyword "
        "(upstream hard-codes 64). SynchronizedBatchNorm2d(momentum=0.1) becomes "
        "nn.BatchNorm2d(momentum=0.1). "
        "linear_1.weight is tied to linear_0.weight in storage as upstream; both are counted."
    ),
    kwarg_help={"k": "number of external memory slots (S in the paper; upstream hard-codes 64)"},
    examples=(
        Example(64, (14, 14)),
        Example(32, (8, 12), batch=2),
        Example(48, (7, 7), {"k": 16}),
    ),
    bad_examples=(Example(64, (14, 14), {"k": 0}, violates="k >= 1"),),
    tags=("external-attention", "linear-complexity"),
)
