"""DA: dual (position + channel) attention, the External-Attention-pytorch variant.

Paper: "Dual Attention Network for Scene Segmentation", Fu et al., CVPR 2019 (arXiv:1809.02983).
Reference code: xmu-xiaoma666/External-Attention-pytorch, file ``model/attention/DANet.py``, class
``DAModule(d_model=512, kernel_size=3, H=7, W=7)``, built on ``ScaledDotProductAttention``
(``SelfAttention.py``) and ``SimplifiedScaledDotProductAttention`` (``SimplifiedSelfAttention.py``);
DANet.py read upstream at 6c229ea; the two helpers compared from the lyp2333 fork at 440d687.

Structure: position branch: k x k conv (bias) C -> C, then single-head self-attention over the N = H*W
positions with q/k/v/o projections Linear(C, C); channel branch: k x k conv C -> C, then single-head
attention over the C channels, each a token of width N, with no q/k/v projections and an output
projection Linear(N, N). Output = position + channel (no residual with the input, no learned gamma).

This is not the official DANet (junfu1115/DANet: 1x1 query/key convs to C/8, learned gamma, residual), only
the popular variant, reproduced as is except for one deliberate change:

- Upstream's ``DAModule.__init__`` ignores its arguments and always builds d_model=512, kernel_size=3, 7x7, so
  it runs only at 512 channels on 49 positions. This module honours ``dim``, ``kernel_size`` and the
  resolution it is built for. Because ``fc_o`` of the channel branch is Linear(H*W, H*W), the module is
  resolution-bound: calling it at another (H, W) raises ``InvalidCaseError``.

Same as upstream: parameter names and shapes (at 512, 3, 7x7 the module matches upstream's state_dict key
for key), the init (Linear weights N(0, 0.001^2), biases 0; convs PyTorch default), dropout 0.1 on both
attention maps in train mode, outputs for the same weights (checked at 512 @ 7x7 as is, and with upstream
patched to honour its arguments at other dims and resolutions).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnbench.errors import InvalidCaseError
from attnbench.zoo.constraints import odd_kernels
from attnbench.zoo.modules.mhsa import ScaledDotProductAttention
from attnbench.zoo.spec import Example, ModuleSpec, Reference, Setting


class SimplifiedScaledDotProductAttention(nn.Module):
    """Multi-head attention with the tokens themselves as q, k, v (no input projections), then fc_o."""

    def __init__(self, d_model: int, h: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.d_model, self.h = d_model, h
        self.d_k = self.d_v = d_model // h
        self.fc_o = nn.Linear(h * self.d_v, d_model)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.fc_o.weight, std=0.001)
        nn.init.zeros_(self.fc_o.bias)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(B, Nq, d_model), (B, Nk, d_model), (B, Nk, d_model) -> (B, Nq, d_model)."""
        b, nq, _ = queries.shape
        nk = keys.shape[1]
        q = queries.view(b, nq, self.h, self.d_k).transpose(1, 2)  # (B, h, Nq, d_k)
        k = keys.view(b, nk, self.h, self.d_k).permute(0, 2, 3, 1)  # (B, h, d_k, Nk)
        v = values.view(b, nk, self.h, self.d_v).transpose(1, 2)  # (B, h, Nk, d_v)
        att = self.dropout((torch.matmul(q, k) / math.sqrt(self.d_k)).softmax(dim=-1))
        out = torch.matmul(att, v).transpose(1, 2).reshape(b, nq, self.h * self.d_v)
        return self.fc_o(out)


class PositionAttentionModule(nn.Module):
    """Conv, then single-head self-attention across the H*W positions (tokens of width C)."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.cnn = nn.Conv2d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2)
        self.pa = ScaledDotProductAttention(dim, d_k=dim, d_v=dim, h=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H*W, C)."""
        y = self.cnn(x).flatten(2).transpose(1, 2)
        return self.pa(y, y, y)


class ChannelAttentionModule(nn.Module):
    """Conv, then single-head attention across the C channels (tokens of width H*W)."""

    def __init__(self, dim: int, kernel_size: int = 3, height: int = 7, width: int = 7) -> None:
        super().__init__()
        self.cnn = nn.Conv2d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2)
        self.pa = SimplifiedScaledDotProductAttention(height * width, h=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H*W)."""
        y = self.cnn(x).flatten(2)
        return self.pa(y, y, y)


class DAModule(nn.Module):
    """Sum of the position and channel attention branches, built for one (H, W)."""

    def __init__(self, dim: int, kernel_size: int = 3, height: int = 7, width: int = 7) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.position_attention_module = PositionAttentionModule(dim, kernel_size)
        self.channel_attention_module = ChannelAttentionModule(dim, kernel_size, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); H, W must be the resolution the module was built for."""
        b, c, h, w = x.shape
        if (h, w) != (self.height, self.width):
            raise InvalidCaseError(
                "da",
                "resolution",
                f"built for H x W = {self.height}x{self.width} (channel fc_o is Linear(H*W, H*W)), "
                f"called at {h}x{w}: build it again for this resolution",
            )
        p_out = self.position_attention_module(x).transpose(1, 2).reshape(b, c, h, w)
        c_out = self.channel_attention_module(x).view(b, c, h, w)
        return p_out + c_out


def _build(dim: int, res: tuple[int, int] | None, kernel_size: int) -> nn.Module:
    if res is None:
        raise InvalidCaseError("da", "resolution", "its weights depend on H and W: pass res=(H, W)")
    return DAModule(dim, kernel_size, res[0], res[1])


def _params(s: Setting) -> int:
    c, k = s.dim, s["kernel_size"]
    n = s.tokens
    convs = 2 * (c * c * k * k + c)  # one k x k conv with bias per branch
    position = 4 * (c * c + c)  # fc_q, fc_k, fc_v, fc_o: Linear(C, C) with bias
    channel = n * n + n  # fc_o: Linear(N, N) with bias
    return convs + position + channel


def _macs(s: Setting) -> int:
    c, k, b = s.dim, s["kernel_size"], s.batch
    n = s.tokens
    convs = 2 * b * c * n * c * k * k
    # Position branch: N tokens of width C, one head of width C.
    pos_proj = 4 * b * n * c * c  # fc_q, fc_k, fc_v, fc_o
    pos_att = b * n * c * n + b * n * n * c  # q @ k^T and att @ v
    # Channel branch: C tokens of width N, no input projections.
    chn_att = b * c * n * c + b * c * c * n  # q @ k^T and att @ v
    chn_proj = b * c * n * n  # fc_o: Linear(N, N) on C tokens
    return convs + pos_proj + pos_att + chn_att + chn_proj  # scaling, softmax, sum: 0 MACs


SPEC = ModuleSpec(
    name="da",
    title="DA (dual attention)",
    builder=_build,
    layout="image",
    defaults={"kernel_size": 3},
    constraints=(odd_kernels("kernel_size"),),
    reference=Reference(
        paper="Dual Attention Network for Scene Segmentation",
        arxiv="1809.02983",
        repo="xmu-xiaoma666/External-Attention-pytorch",
        file="model/attention/DANet.py",
        cls="DAModule",
        commit="6c229ea70980c507cfd16d8a1ab2acb236ca6d38",
    ),
    params_formula=_params,
    macs_formula=_macs,
    resolution_bound=True,
    notes=(
        "The External-Attention-pytorch DAModule (not junfu1115/DANet's PAM/CAM). Upstream ignores its "
        "d_model, kernel_size, H, W arguments and always builds 512 channels at 7x7; this one honours "
        "dim, kernel_size and the build resolution (identical to upstream at 512, 3, 7x7). "
        "Resolution-bound: the channel branch's fc_o is Linear(H*W, H*W); calling it at another (H, W) "
        "raises InvalidCaseError."
    ),
    kwarg_help={"kernel_size": "odd kernel of the conv in front of each branch (padding keeps the size)"},
    examples=(
        Example(64, (7, 7)),
        Example(32, (8, 12), batch=2),
        Example(48, (14, 14), {"kernel_size": 5}),
    ),
    bad_examples=(Example(64, (7, 7), {"kernel_size": 4}, violates="kernel_size odd"),),
    tags=("global-attention", "channel-attention", "resolution-bound"),
)
