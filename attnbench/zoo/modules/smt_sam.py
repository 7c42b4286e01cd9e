"""Scale-Aware Modulation (SAM), the convolutional attention of SMT.

Paper: "Scale-Aware Modulation Meet Transformer", Lin et al., ICCV 2023, arXiv 2307.08579.
Official code: AFeng-x/SMT, ``models/smt.py``, class ``Attention(dim, ca_num_heads=4, sa_num_heads=8,
qkv_bias=False, qk_scale=None, attn_drop=0., proj_drop=0., ca_attention=1, expand_ratio=2)``; SAM is its
``ca_attention=1`` branch (the other branch is SMT's plain multi-head self-attention, not built here).

On tokens x (B, N, C), N = H * W: v = Linear(x); s = Linear(x) viewed as a (B, C, H, W) map and split into
``heads`` channel groups; group i goes through its own depthwise (3 + 2i) x (3 + 2i) conv (multi-head mixed
convolution). The groups' outputs are interleaved channel by channel, so each group of the grouped 1 x 1
``proj0`` (groups = C / heads) sees one channel from every scale (scale-aware aggregation); then BN, GELU
and a 1 x 1 ``proj1`` back to C give the modulator; out = proj(modulator * v).

Differences from upstream (parameters and outputs are otherwise identical):
- ``qkv_bias`` defaults to True: the class default is False, but every SMT model (smt_t/s/b/l) builds its
  attention with ``qkv_bias=True``, so True is the module as trained and used. Pass False for the class
  default (2 * C fewer parameters).
- ``sa_num_heads`` and its assert ``dim % sa_num_heads == 0`` are dropped: the argument only sizes the
  self-attention branch, which SAM does not build (SMT itself passes -1 for SAM-only stages). So dim 36
  works here although upstream's class default (8) would refuse it.
- ``qk_scale``, ``attn_drop`` (self-attention branch only) and ``proj_drop`` (0 in every SMT model) are
  dropped.
- No ``self.modulator`` attribute: some upstream snapshots store the modulator on the module at every
  forward, a side effect that keeps a (B, C, H, W) tensor (and its graph) alive after the call. It is not
  stored here.
- Parameter names: upstream ``local_conv_{i+1}`` is ``local_convs.{i}``; the rest (v, s, proj0, bn, proj1,
  proj) are unchanged. In the zoo the module is wrapped by ``TokensToImage`` (prefix ``inner.``).

The module holds a BatchNorm, so train- and eval-mode outputs differ (and training needs B * H * W > 1).
``benchmarks/make_golden_b.py`` holds the name mapping and checks outputs against the official class.
"""

from __future__ import annotations

import torch
from torch import nn

from attnbench.zoo.adapters import TokensToImage
from attnbench.zoo.constraints import dim_divisible_by, positive
from attnbench.zoo.spec import Example, ModuleSpec, Reference, Setting

__all__ = ["SAM"]


def _local_kernel(i: int) -> int:
    """Kernel size of the i-th head's depthwise conv: 3, 5, 7, ..."""
    return 3 + 2 * i


class SAM(nn.Module):
    """Scale-Aware Modulation on tokens: forward(x (B, N, C), H, W) -> (B, N, C)."""

    def __init__(self, dim: int, heads: int = 4, expand_ratio: int = 2, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        head_dim = dim // heads
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.s = nn.Linear(dim, dim, bias=qkv_bias)
        self.local_convs = nn.ModuleList(
            nn.Conv2d(head_dim, head_dim, _local_kernel(i), padding=_local_kernel(i) // 2, groups=head_dim)
            for i in range(heads)
        )
        # head_dim groups of `heads` channels: after interleaving, each group holds one channel per scale.
        self.proj0 = nn.Conv2d(dim, dim * expand_ratio, kernel_size=1, groups=head_dim)
        self.bn = nn.BatchNorm2d(dim * expand_ratio)
        self.act = nn.GELU()
        self.proj1 = nn.Conv2d(dim * expand_ratio, dim, kernel_size=1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Modulate v by multi-scale depthwise features of the same tokens."""
        b, _, c = x.shape
        v = self.v(x)
        s = self.s(x).transpose(1, 2).reshape(b, c, height, width)
        scales = [conv(part) for conv, part in zip(self.local_convs, s.chunk(self.heads, dim=1), strict=True)]
        # Stack on a new axis after the channels: channel j of head i lands at j * heads + i.
        mixed = torch.stack(scales, dim=2).reshape(b, c, height, width)
        modulator = self.proj1(self.act(self.bn(self.proj0(mixed))))
        return self.proj(modulator.flatten(2).transpose(1, 2) * v)


# ---------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------

DEFAULTS = {"heads": 4, "expand_ratio": 2, "qkv_bias": True}


def _elementwise(out: int, a: int, b: int) -> int:
    """MACs of a tensor-by-tensor product: numel(out), but 0 when a factor has a single element (a scalar)."""
    return out if a > 1 and b > 1 else 0


def _params(s: Setting) -> int:
    c, h, e = s.dim, s["heads"], s["expand_ratio"]
    head_dim = c // h
    qkv_bias = c if s["qkv_bias"] else 0
    v_and_s = 2 * (c * c + qkv_bias)
    local = sum(head_dim * _local_kernel(i) ** 2 + head_dim for i in range(h))  # depthwise + bias
    proj0 = (e * c) * h + e * c  # grouped 1x1: each output channel sees C / head_dim = h inputs; + bias
    bn = 2 * e * c  # weight and bias (running stats are buffers)
    proj1 = e * c * c + c
    proj = c * c + c
    return v_and_s + local + proj0 + bn + proj1 + proj


def _macs(s: Setting) -> int:
    c, h, e = s.dim, s["heads"], s["expand_ratio"]
    head_dim, pixels = c // h, s.batch * s.tokens
    v_and_s = 2 * pixels * c * c
    local = sum(pixels * head_dim * _local_kernel(i) ** 2 for i in range(h))  # depthwise
    proj0 = pixels * (e * c) * h
    proj1 = pixels * c * (e * c)
    modulate = _elementwise(pixels * c, pixels * c, pixels * c)  # modulator * v, tensor by tensor
    proj = pixels * c * c
    return v_and_s + local + proj0 + proj1 + modulate + proj  # BN and GELU are not MACs


def _build(dim: int, res: tuple[int, int] | None, **kw: object) -> nn.Module:
    return TokensToImage(SAM(dim, **kw), pass_hw=True)  # type: ignore[arg-type]


SPEC = ModuleSpec(
    name="sam",
    title="Scale-Aware Modulation (SMT)",
    builder=_build,
    layout="tokens",
    defaults=DEFAULTS,
    constraints=(
        positive("heads"),
        positive("expand_ratio"),
        dim_divisible_by("heads"),
    ),
    reference=Reference(
        paper="Scale-Aware Modulation Meet Transformer",
        arxiv="2307.08579",
        repo="AFeng-x/SMT",
        file="models/smt.py",
        cls="Attention (ca_attention=1)",
        commit="663e614eea9c4351cf6c50f827e4c28f638841f0",
    ),
    params_formula=_params,
    macs_formula=_macs,
    notes=(
        "SMT Attention with ca_attention=1 (heads = ca_num_heads). qkv_bias defaults to True, not the "
        "class default False, because every SMT model (smt_t/s/b/l) builds it with True; pass False for "
        "the class default. sa_num_heads and its assert dim % sa_num_heads == 0 are dropped: they size "
        "only the self-attention branch, which SAM does not build (dim 36 runs here; upstream's class "
        "default 8 would refuse it). qk_scale, attn_drop, proj_drop (0) are dropped. The modulator is "
        "not stored on the module (some upstream snapshots keep it as self.modulator). Token layout: "
        "wrapped by TokensToImage; contains a BatchNorm (train needs B*H*W > 1). Any H, W."
    ),
    kwarg_help={
        "heads": "ca_num_heads: channel groups, head i uses a depthwise (3 + 2i) x (3 + 2i) conv",
        "expand_ratio": "proj0 widens C to expand_ratio * C before BN, GELU and proj1",
        "qkv_bias": "bias on the v and s projections (True in every SMT model; class default False)",
    },
    examples=(
        Example(dim=64, res=(8, 8)),
        Example(dim=64, res=(8, 12), batch=2),
        Example(dim=36, res=(7, 7)),
        Example(dim=48, res=(6, 10), kwargs={"heads": 3, "expand_ratio": 3, "qkv_bias": False}, batch=2),
    ),
    bad_examples=(
        Example(dim=64, res=(8, 8), kwargs={"heads": 0}, violates="heads >= 1"),
        Example(dim=64, res=(8, 8), kwargs={"expand_ratio": 0}, violates="expand_ratio >= 1"),
        Example(dim=30, res=(8, 8), violates="dim % heads == 0"),
    ),
    tags=("conv", "modulation", "multi-scale", "tokens"),
)
