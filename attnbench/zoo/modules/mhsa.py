"""Multi-head self-attention over the H*W tokens of a feature map.

Paper: "Attention Is All You Need", Vaswani et al., NeurIPS 2017 (arXiv:1706.03762).
Reference code: xmu-xiaoma666/External-Attention-pytorch, file ``model/attention/SelfAttention.py``, class
``ScaledDotProductAttention(d_model, d_k, d_v, h, dropout=.1)`` (the zoo's usual MHSA reference, also the
position branch of its DANet). Our notes read it at d75848e; the copy compared here is the lyp2333 fork's
(440d687), since the index holds no upstream copy of this file.

Structure: fc_q, fc_k = Linear(C, h*d_k), fc_v = Linear(C, h*d_v), fc_o = Linear(h*d_v, C), all with bias;
att = softmax(q k^T / sqrt(d_k)) with dropout on the attention weights (train mode only); out = fc_o(att v).
Written with explicit matmul + softmax as upstream (not F.scaled_dot_product_attention), so counters see
two batched matmuls.

Same as upstream: parameter names (under ``inner.``, from the token adapter) and shapes, the init (Linear
weights N(0, 0.001^2), biases 0), dropout 0.1, outputs for the same weights.

Differs, on purpose: upstream has no defaults for d_k, d_v, h (its example uses d_k = d_v = d_model, i.e.
every head as wide as the model). Here ``heads`` defaults to 8 and ``d_k`` / ``d_v`` default to dim / heads
(standard MHSA); pass them explicitly to get upstream's wide heads. The optional attention mask and
multiplicative weights of upstream's forward are not exposed (the zoo runs plain self-attention).
The module takes (B, N, C) tokens and is wrapped by ``TokensToImage`` to map (B, C, H, W) -> (B, C, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnbench.zoo.adapters import TokensToImage
from attnbench.zoo.spec import Constraint, Example, ModuleSpec, Reference, Setting


class ScaledDotProductAttention(nn.Module):
    """Multi-head scaled dot-product attention on (B, N, C) queries, keys and values."""

    def __init__(self, d_model: int, d_k: int, d_v: int, h: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.d_model, self.d_k, self.d_v, self.h = d_model, d_k, d_v, h
        self.fc_q = nn.Linear(d_model, h * d_k)
        self.fc_k = nn.Linear(d_model, h * d_k)
        self.fc_v = nn.Linear(d_model, h * d_v)
        self.fc_o = nn.Linear(h * d_v, d_model)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Upstream's init: Linear weights N(0, 0.001^2), biases zero."""
        for fc in (self.fc_q, self.fc_k, self.fc_v, self.fc_o):
            nn.init.normal_(fc.weight, std=0.001)
            nn.init.zeros_(fc.bias)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(B, Nq, C), (B, Nk, C), (B, Nk, C) -> (B, Nq, C)."""
        b, nq, _ = queries.shape
        nk = keys.shape[1]
        q = self.fc_q(queries).view(b, nq, self.h, self.d_k).transpose(1, 2)  # (B, h, Nq, d_k)
        k = self.fc_k(keys).view(b, nk, self.h, self.d_k).permute(0, 2, 3, 1)  # (B, h, d_k, Nk)
        v = self.fc_v(values).view(b, nk, self.h, self.d_v).transpose(1, 2)  # (B, h, Nk, d_v)
        att = torch.matmul(q, k) / math.sqrt(self.d_k)
        att = self.dropout(att.softmax(dim=-1))
        out = torch.matmul(att, v).transpose(1, 2).reshape(b, nq, self.h * self.d_v)
        return self.fc_o(out)


def head_widths(s: Setting) -> tuple[int, int]:
    """(d_k, d_v) for a Setting: None means dim // heads."""
    d_k = s["d_k"] if s["d_k"] is not None else s.dim // s["heads"]
    d_v = s["d_v"] if s["d_v"] is not None else s.dim // s["heads"]
    return d_k, d_v


def _build(
    dim: int, res: tuple[int, int] | None, heads: int, d_k: int | None, d_v: int | None, dropout: float
) -> nn.Module:
    dk = d_k if d_k is not None else dim // heads
    dv = d_v if d_v is not None else dim // heads
    return TokensToImage(ScaledDotProductAttention(dim, dk, dv, heads, dropout), self_attention=True)


def _optional_width(key: str) -> Constraint:
    def check(s: Setting) -> str | None:
        v = s[key]
        if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return None
        return f"{key} must be None (= dim // heads) or an int >= 1, got {v!r}"

    return Constraint(f"{key} is None or >= 1", check)


def _dim_divisible_when_default(s: Setting) -> str | None:
    if s["d_k"] is not None and s["d_v"] is not None:
        return None
    if s.dim % s["heads"]:
        return f"dim={s.dim} is not divisible by heads={s['heads']} (needed for d_k/d_v = dim // heads)"
    return None


def _dropout_range(s: Setting) -> str | None:
    p = s["dropout"]
    return None if 0.0 <= p <= 1.0 else f"dropout must be in [0, 1], got {p}"


def _heads_positive(s: Setting) -> str | None:
    return None if s["heads"] >= 1 else f"heads must be >= 1, got {s['heads']}"


def _params(s: Setting) -> int:
    c, h = s.dim, s["heads"]
    d_k, d_v = head_widths(s)
    qk = 2 * (c * h * d_k + h * d_k)  # fc_q, fc_k with bias
    v = c * h * d_v + h * d_v  # fc_v with bias
    o = h * d_v * c + c  # fc_o with bias
    return qk + v + o


def _macs(s: Setting) -> int:
    c, h, b = s.dim, s["heads"], s.batch
    n = s.tokens
    d_k, d_v = head_widths(s)
    proj = b * n * c * (2 * h * d_k + h * d_v)  # fc_q, fc_k, fc_v
    scores = b * h * n * d_k * n  # q @ k^T
    mix = b * h * n * n * d_v  # att @ v
    out = b * n * h * d_v * c  # fc_o
    return proj + scores + mix + out  # the 1/sqrt(d_k) division and softmax: 0 MACs


SPEC = ModuleSpec(
    name="mhsa",
    title="Multi-head self-attention",
    builder=_build,
    layout="tokens",
    defaults={"heads": 8, "d_k": None, "d_v": None, "dropout": 0.1},
    constraints=(
        Constraint("heads >= 1", _heads_positive),
        _optional_width("d_k"),
        _optional_width("d_v"),
        Constraint("dim % heads == 0 (when d_k or d_v is None)", _dim_divisible_when_default),
        Constraint("0 <= dropout <= 1", _dropout_range),
    ),
    reference=Reference(
        paper="Attention Is All You Need",
        arxiv="1706.03762",
        repo="xmu-xiaoma666/External-Attention-pytorch",
        file="model/attention/SelfAttention.py",
        cls="ScaledDotProductAttention",
        commit="d75848e",
    ),
    params_formula=_params,
    macs_formula=_macs,
    notes=(
        "Self-attention over the H*W tokens (q = k = v = tokens) through TokensToImage. heads "
        "defaults to 8 and d_k = d_v = dim // heads unless given (upstream has no defaults; its example "
        "uses d_k = d_v = d_model). Explicit matmul + softmax as upstream; dropout 0.1 on the attention "
        "weights in train mode only. Mask and multiplicative attention weights of upstream's forward "
        "are not exposed."
    ),
    kwarg_help={
        "heads": "number of attention heads (h)",
        "d_k": "query/key width per head; None = dim // heads",
        "d_v": "value width per head; None = dim // heads",
        "dropout": "dropout probability on the attention weights (train mode only)",
    },
    examples=(
        Example(64, (14, 14)),
        Example(32, (8, 12), {"heads": 4}, batch=2),
        Example(48, (7, 7), {"heads": 2, "d_k": 16, "d_v": 32}),
        Example(30, (5, 9), {"heads": 4, "d_k": 8, "d_v": 8}),
    ),
    bad_examples=(
        Example(64, (14, 14), {"heads": 0}, violates="heads >= 1"),
        Example(64, (14, 14), {"d_k": 0}, violates="d_k is None or >= 1"),
        Example(64, (14, 14), {"d_v": -1}, violates="d_v is None or >= 1"),
        Example(60, (14, 14), {"heads": 8}, violates="dim % heads == 0 (when d_k or d_v is None)"),
        Example(64, (14, 14), {"dropout": 1.5}, violates="0 <= dropout <= 1"),
    ),
    tags=("global-attention", "transformer"),
)
