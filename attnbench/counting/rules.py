"""The counting rules: how many MACs each aten operator does, which are elementwise products, and what the rest is.

Convention (base.CONVENTION): one multiply-add = 1 MAC = 2 FLOPs; a lone elementwise product = 1 MAC = 1 FLOP;
papers' "FLOPs" are usually MACs. Additions, divisions and every listed operator are neither MACs nor FLOPs.

What is counted, each family by a named rule below, registered for the aten overload packets it covers:

* @macs rules (MAC_RULES): matrix products, convolutions, attention kernels, nn.MultiheadAttention's fused path
  and the backward kernels of convolution and attention. Every MAC is a multiply-add, 2 FLOPs. Attention is
  counted dense: a causal mask (is_causal=True) is not discounted, as in PyTorch's FlopCounterMode. A composite
  operator with a rule here is counted whole; one without is decomposed by the engine (attnbench.counting.dispatch)
  so that the products inside are found.
* @products rules (PRODUCT_RULES): elementwise tensor-by-tensor products, 1 MAC per output element. Alone a
  product is 1 FLOP per element; it is a multiply-add (2 FLOPs) when fused with an addition (FUSED_PRODUCTS) or
  when a sum consumes it (summed_inputs(), which the engine follows). A product by a scalar is a scaling
  (SCALINGS: 0 MACs, listed).
* Everything else (softmax, activations, norms, additions, reductions, pooling, padding, copies and views, and
  their backward kernels) is listed, not counted, under op_category(); the OPAQUE composites are listed under
  their own name instead of being decomposed.

A rule takes one dispatcher call's (args, kwargs, out) and returns its MACs; it reads each operand where the
operator's schema puts it, by position or by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "FUSED_PRODUCTS",
    "MAC_RULES",
    "MOVEMENT",
    "OPAQUE",
    "PRODUCT_RULES",
    "SCALAR_SCALING",
    "SCALINGS",
    "SUMS",
    "VIEW",
    "OpRule",
    "first_output",
    "macs",
    "op_category",
    "products",
    "summed_inputs",
]

aten = torch.ops.aten

#: A rule: (args, kwargs, out) of one dispatcher call -> its MACs.
OpRule = Callable[[tuple, dict, Any], int]

#: Operators counted as MACs (every one a multiply-add), by overload packet; filled by @macs.
MAC_RULES: dict[Any, OpRule] = {}
#: Elementwise products (1 MAC per element), by overload packet; filled by @products.
PRODUCT_RULES: dict[Any, OpRule] = {}
#: Products for which a one-element factor makes a scalar scaling (0 MACs, listed as SCALAR_SCALING).
SCALINGS: set[Any] = set()
#: Products that add their result to a tensor as they go: always multiply-adds, 2 FLOPs per element.
FUSED_PRODUCTS: set[Any] = set()

#: The category under which a scalar scaling (x * 2.0, x * one-element tensor) is listed.
SCALAR_SCALING = "scalar scaling"
#: The category of copies and views, through which the engine follows a lone product to a later sum.
MOVEMENT = "data movement/view"
#: The category of pure views (view, permute, transpose, expand, slice...): they move no data, so reports of
#: what was not counted leave them out (the engine follows products through them as through copies).
VIEW = "view (no data moved)"


def macs(*packets: Any) -> Callable[[OpRule], OpRule]:
    """Register a MAC rule for these aten overload packets (as torch.utils.flop_counter's register_flop_formula)."""

    def register(rule: OpRule) -> OpRule:
        _register(MAC_RULES, packets, rule)
        return rule

    return register


def products(*packets: Any, scaling: bool = False, fused: bool = False) -> Callable[[OpRule], OpRule]:
    """Register an elementwise-product rule; `scaling`: a 0 answer is a scalar scaling; `fused`: always 2 FLOPs."""

    def register(rule: OpRule) -> OpRule:
        _register(PRODUCT_RULES, packets, rule)
        if scaling:
            SCALINGS.update(packets)
        if fused:
            FUSED_PRODUCTS.update(packets)
        return rule

    return register


def _register(table: dict[Any, OpRule], packets: tuple[Any, ...], rule: OpRule) -> None:
    """Book `rule` for each packet, refusing a packet that already has a rule (two rules for one op is a bug)."""
    for packet in packets:
        if packet in MAC_RULES or packet in PRODUCT_RULES:
            raise ValueError(f"{packet} already has a counting rule")
        table[packet] = rule


def _present(*names: str) -> tuple[Any, ...]:
    """The aten overload packets of these names that this PyTorch build has (some exist on some builds only)."""
    return tuple(getattr(aten, name) for name in names if hasattr(aten, name))


def _numel(x: Any) -> int:
    """Elements of a tensor operand; a Python scalar is one."""
    return x.numel() if isinstance(x, torch.Tensor) else 1


def first_output(out: Any) -> torch.Tensor:
    """The (first) output tensor of an operator that may return a tuple."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """An operand given by position `index` or by keyword `name`, as the schema allows either."""
    return args[index] if len(args) > index else kwargs.get(name, default)


# --- matrix products ------------------------------------------------------------------------------------------
# MACs = output elements x the contracted length (the last dim of the left operand). Bias terms (addmm's input,
# baddbmm's self) are additions and alpha / beta are scalings: neither is a MAC. einsum and tensordot have no
# rule: the engine decomposes them to bmm / mm and books what it finds under their own name. In training,
# autograd decomposes linear and matmul first, and each operand that needs a gradient costs one product of the
# forward's size (mm / bmm in the backward).


def _contracted(out: Any, a: torch.Tensor) -> int:
    """MACs of a (batched) matrix product: output elements x the contracted length of its left operand."""
    return first_output(out).numel() * a.shape[-1]


@macs(aten.mm, aten.bmm, aten.matmul, aten.mv, aten.dot, aten.vdot)
def matmul_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """self @ other (any batch, matrix or vector form)."""
    return _contracted(out, _arg(args, kwargs, 0, "self"))


@macs(aten.linear)
def linear_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """input @ weight^T; the bias is not a MAC."""
    return _contracted(out, _arg(args, kwargs, 0, "input"))


@macs(aten.addmm, aten.addmm_, aten._addmm_activation)
def addmm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """beta * input + alpha * mat1 @ mat2: the product only."""
    return _contracted(out, _arg(args, kwargs, 1, "mat1"))


@macs(aten.baddbmm, aten.baddbmm_)
def baddbmm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """beta * self + alpha * batch1 @ batch2: the batched product only."""
    return _contracted(out, _arg(args, kwargs, 1, "batch1"))


@macs(aten.addmv, aten.addmv_)
def addmv_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """beta * self + alpha * mat @ vec: the product only."""
    return _contracted(out, _arg(args, kwargs, 1, "mat"))


@macs(aten.addbmm, aten.addbmm_)
def addbmm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """self + sum over the batch of batch1 @ batch2: every (b, n, k) x (b, k, m) product happens once."""
    b1, b2 = _arg(args, kwargs, 1, "batch1"), _arg(args, kwargs, 2, "batch2")
    return b1.numel() * b2.shape[-1]


@macs(aten.addr, aten.addr_)
def outer_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """self + vec1 (x) vec2: one product per output element."""
    return first_output(out).numel()


# --- convolutions ---------------------------------------------------------------------------------------------
# Every flavour (1d/2d/3d, stride, dilation, groups, and each device's kernel): N * C_out * prod(out spatial) *
# (C_in / groups) * prod(kernel), i.e. output elements x the weight's per-output slice. A transposed convolution
# charges each *input* element C_out / groups * prod(kernel) (its weight is (C_in, C_out / groups, *kernel)).
# The bias is an addition.


def _conv_macs(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, transposed: bool) -> int:
    """MACs of a convolution from its input, weight and output (or, transposed, per input element)."""
    per_element = math.prod(w.shape[1:])  # (C_in/groups) * prod(k), or (C_out/groups) * prod(k) if transposed
    return (x.numel() if transposed else out.numel()) * per_element


def _conv(args: tuple, kwargs: dict, out: Any, transposed: bool) -> int:
    """A convolution call whose input and weight come first, as every conv schema has them."""
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    return _conv_macs(x, w, first_output(out), transposed)


@macs(aten.convolution, aten._convolution)
def convolution_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """The generic convolution, whose 7th argument says whether it is transposed."""
    return _conv(args, kwargs, out, bool(_arg(args, kwargs, 6, "transposed", False)))


@macs(
    aten.conv1d, aten.conv2d, aten.conv3d, aten.mkldnn_convolution, aten._slow_conv2d_forward,
    aten.slow_conv3d_forward, aten.slow_conv_dilated2d, aten.slow_conv_dilated3d, aten.thnn_conv2d,
    aten.slow_conv3d, aten.cudnn_convolution, aten.miopen_convolution, aten.miopen_depthwise_convolution,
    aten._conv_depthwise2d, aten.conv_depthwise3d, aten._nnpack_spatial_convolution,
)  # fmt: skip
def conv_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """A convolution (and each device's kernel for one): per output element."""
    return _conv(args, kwargs, out, transposed=False)


@macs(
    aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d, aten.slow_conv_transpose2d,
    aten.slow_conv_transpose3d, aten.cudnn_convolution_transpose, aten.miopen_convolution_transpose,
)  # fmt: skip
def conv_transpose_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """A transposed convolution (and each device's kernel for one): per input element."""
    return _conv(args, kwargs, out, transposed=True)


# In training, grad_input and grad_weight each cost the forward's MACs, as requested by output_mask (a frozen
# weight, or an input that needs no grad, costs nothing); grad_bias is a sum of grad_output, not a MAC (see
# summed_inputs: a lone product it sums becomes a multiply-add).
@macs(aten.convolution_backward)
def conv_backward_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """grad_input and grad_weight of a convolution, each the forward's MACs, as output_mask asks."""
    grad_out, x, w = args[0], args[1], args[2]
    transposed = bool(_arg(args, kwargs, 7, "transposed", False))
    mask = _arg(args, kwargs, 10, "output_mask", (True, True, True))
    return _conv_macs(x, w, grad_out, transposed) * (int(bool(mask[0])) + int(bool(mask[1])))


# --- attention ------------------------------------------------------------------------------------------------
# Scaled-dot-product attention in every backend (the composite, math, CPU flash, flash, efficient, cuDNN):
# q k^T and attn v, B * heads * N_q * N_k * (d_k + d_v). A causal mask is not discounted (PyTorch's
# FlopCounterMode does not either). The scaling by 1/sqrt(d) and the softmax are not MACs.
#
# Fused backward kernels recompute the scores: q k^T again, then grad_v, the scores' gradient, grad_q and grad_k,
# B * heads * N_q * N_k * (3 d_k + 2 d_v). PyTorch's math path instead shows its bmm products and their
# gradients (four products, no recompute: 2 x forward), which the matrix-product rules count.
#
# The public kernels take (B, heads, N, d) (or any (..., N, d)); the low-level CUDA forward / backward kernels
# (_flash_attention_*, _efficient_attention_*) take (B, N, heads, d). Backward kernels take grad_out first.


def _attention(args: tuple, kwargs: dict, first: int, heads_first: bool, backward: bool) -> int:
    """MACs of an attention kernel whose q, k, v start at argument `first`, in either layout."""
    q, k, v = (_arg(args, kwargs, first + i, n) for i, n in enumerate(("query", "key", "value")))
    if heads_first:
        batch_heads, n_q, n_k = math.prod(q.shape[:-2]), q.shape[-2], k.shape[-2]
    else:
        batch_heads, n_q, n_k = q.shape[0] * q.shape[2], q.shape[1], k.shape[1]
    d_k, d_v = q.shape[-1], v.shape[-1]
    per_score = 3 * d_k + 2 * d_v if backward else d_k + d_v
    return batch_heads * n_q * n_k * per_score


@macs(
    aten.scaled_dot_product_attention, aten._scaled_dot_product_attention_math,
    aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
    *_present("_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math_for_mps"),
)  # fmt: skip
def sdpa_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """Attention forward on (B, heads, N, d): B * heads * N_q * N_k * (d_k + d_v)."""
    return _attention(args, kwargs, 0, heads_first=True, backward=False)


@macs(aten._flash_attention_forward, aten._efficient_attention_forward)
def sdpa_tokens_first_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """The low-level CUDA attention forward on (B, N, heads, d)."""
    return _attention(args, kwargs, 0, heads_first=False, backward=False)


@macs(
    aten._scaled_dot_product_flash_attention_for_cpu_backward, aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_efficient_attention_backward, aten._scaled_dot_product_cudnn_attention_backward,
    *_present("_scaled_dot_product_fused_attention_overrideable_backward"),
)  # fmt: skip
def sdpa_backward_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """A fused attention backward on (B, heads, N, d), scores recomputed: B * heads * N_q * N_k * (3 d_k + 2 d_v)."""
    return _attention(args, kwargs, 1, heads_first=True, backward=True)


@macs(aten._flash_attention_backward, aten._efficient_attention_backward)
def sdpa_tokens_first_backward_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """The low-level CUDA attention backward on (B, N, heads, d)."""
    return _attention(args, kwargs, 1, heads_first=False, backward=True)


# nn.MultiheadAttention's fused inference path (real CPU tensors in inference mode): the q, k, v and output
# projections plus attention as above, with head_dim * heads = embed_dim.
@macs(aten._native_multi_head_attention)
def native_mha_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """The fused nn.MultiheadAttention: four projections and attention over all heads."""
    q, k = args[0], args[1]
    embed = args[3]
    batch = math.prod(q.shape[:-2]) if q.dim() > 2 else 1
    n_q, n_k = q.shape[-2], k.shape[-2]
    projections = batch * (n_q + 2 * n_k) * embed * embed + batch * n_q * embed * embed
    return projections + batch * n_q * n_k * 2 * embed


# --- elementwise products -------------------------------------------------------------------------------------
# A product of two tensors that both hold more than one element (a gate x * sigmoid(g), SE's x * s broadcast):
# one MAC per output element. With a Python scalar or a one-element tensor it is a scalar scaling: 0 MACs, listed
# (as is a division). In training the gradient of a gate arrives as mul too: two products per gate product when
# both factors need a grad.


@products(aten.mul, aten.mul_, aten.multiply, aten.multiply_, scaling=True)
def mul_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """self * other: one per output element, 0 (a scaling) when a factor has one element."""
    x, y = _arg(args, kwargs, 0, "self"), _arg(args, kwargs, 1, "other")
    return 0 if min(_numel(x), _numel(y)) <= 1 else first_output(out).numel()


@products(aten.addcmul, aten.addcmul_, scaling=True, fused=True)
def addcmul_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """self + value * tensor1 * tensor2: a multiply-add per output element, 0 when a factor has one element."""
    x, y = _arg(args, kwargs, 1, "tensor1"), _arg(args, kwargs, 2, "tensor2")
    return 0 if min(_numel(x), _numel(y)) <= 1 else first_output(out).numel()


# Dropout in training multiplies by its mask: one product per element each way (drawing the mask is listed, not
# counted); in inference it is the identity. On the CPU and meta dropout is bernoulli_ + mul (the mul rule);
# CUDA's fused kernel is native_dropout.
@products(aten.native_dropout)
def native_dropout_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """native_dropout(input, p, train): the mask product, only when training with p > 0."""
    train, p = _arg(args, kwargs, 2, "train", True), _arg(args, kwargs, 1, "p", 0.0)
    return first_output(out).numel() if train is not False and p > 0 else 0


@products(aten.native_dropout_backward)
def native_dropout_backward_macs(args: tuple, kwargs: dict, out: Any) -> int:
    """grad * mask * scale: one product per element."""
    return first_output(out).numel()


# --- sums: where a lone product becomes a multiply-add ---------------------------------------------------------
# An elementwise product whose result is summed meets an addition per element: a multiply-add, 2 FLOPs (ACmix's
# windowed q * k summed over the window; SK's weights * branches summed over branches; the broadcast gradient of
# a gate summed back to the gate's shape). Only these explicit reductions promote; sums inside other kernels (a
# norm's backward, softmax) do not, their own arithmetic being uncounted, and a sum of a non-product (x.sum())
# is not a FLOP.

#: Reductions that sum their first argument.
SUMS = frozenset({aten.sum, aten.mean, aten.nansum})


def summed_inputs(packet: Any, args: tuple, kwargs: dict, out: Any) -> list[torch.Tensor]:
    """The tensors this operator sums over (a lone product among them is a multiply-add)."""
    if packet in SUMS:
        x = args[0] if args else kwargs.get("self")
        # A "sum" that keeps every element (over a dim of size 1) adds nothing.
        return [x] if isinstance(x, torch.Tensor) and first_output(out).numel() < x.numel() else []
    if packet is aten.convolution_backward:  # grad_bias = grad_output summed over batch and positions
        mask = _arg(args, kwargs, 10, "output_mask", (False, False, False))
        return [args[0]] if mask[2] else []
    return []


# --- what is not counted --------------------------------------------------------------------------------------

#: Composite operators that are not MACs, listed under their own name instead of being decomposed (a norm stays
#: "layer_norm" whatever it is made of).
OPAQUE = frozenset({
    aten.softmax, aten.log_softmax, aten.layer_norm, aten.group_norm, aten.batch_norm, aten.instance_norm,
    aten.rms_norm, aten.dropout, aten.feature_dropout, aten.alpha_dropout, aten.adaptive_avg_pool1d,
    aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d, aten.adaptive_max_pool1d, aten.pad, aten.upsample_nearest1d,
    aten.upsample_nearest2d, aten.upsample_nearest3d, aten.upsample_bilinear2d, aten.upsample_bicubic2d,
    aten.upsample_linear1d, aten.upsample_trilinear3d,
})  # fmt: skip


def _names(text: str) -> frozenset[str]:
    """A set of operator names written as one space-separated string."""
    return frozenset(text.split())


#: Names (overload packets, in-place '_' stripped) of uncounted operators, by category.
CATEGORIES: dict[str, frozenset[str]] = {
    "softmax": _names("softmax _softmax log_softmax _log_softmax _safe_softmax softmin"),
    "activation": _names(
        "relu relu6 gelu silu sigmoid tanh hardswish hardsigmoid leaky_relu elu selu celu mish softplus "
        "softsign hardtanh threshold prelu _prelu_kernel glu logsigmoid hardshrink softshrink clamp "
        "clamp_min clamp_max clip erf"
    ),
    "norm": _names(
        "layer_norm native_layer_norm group_norm native_group_norm batch_norm native_batch_norm "
        "_native_batch_norm_legit _native_batch_norm_legit_no_training _batch_norm_impl_index "
        "_batch_norm_with_update _batch_norm_no_update instance_norm rms_norm _fused_rms_norm "
        "local_response_norm cudnn_batch_norm miopen_batch_norm renorm"
    ),
    # col2im / fold scatter-add overlapping patches (unfold's backward): additions only.
    "add": _names("add sub rsub subtract neg add_ sub_ col2im fold"),
    "dropout (identity in eval)": _names("dropout feature_dropout alpha_dropout feature_alpha_dropout native_dropout"),
    "division": _names("div divide true_divide floor_divide reciprocal addcdiv remainder fmod"),
    "elementwise math": _names(
        "exp exp2 expm1 log log2 log10 log1p pow sqrt rsqrt abs sign sin cos tan atan atan2 sinh cosh "
        "floor ceil round trunc frac square maximum minimum fmax fmin where lerp masked_fill eq ne lt le "
        "gt ge logical_and logical_or logical_not bitwise_and bitwise_or bitwise_not isnan isinf "
        "nan_to_num xlogy hypot sgn"
    ),
    "reduction": _names(
        "sum mean amax amin max min argmax argmin var std var_mean std_mean norm linalg_vector_norm "
        "frobenius_norm prod cumsum cumprod logsumexp all any topk sort argsort median nansum "
        "count_nonzero aminmax"
    ),
    "pooling": _names(
        "avg_pool1d avg_pool2d avg_pool3d max_pool1d max_pool2d max_pool3d max_pool2d_with_indices "
        "max_pool3d_with_indices adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d "
        "_adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d "
        "adaptive_max_pool3d mkldnn_adaptive_avg_pool2d _mkldnn_avg_pool2d _mkldnn_max_pool2d "
        "mkldnn_max_pool2d"
    ),
    "interpolation": _names(
        "upsample_bilinear2d upsample_bicubic2d upsample_linear1d upsample_trilinear3d "
        "_upsample_bilinear2d_aa _upsample_bicubic2d_aa grid_sampler grid_sampler_2d grid_sampler_3d "
        "affine_grid_generator"
    ),
    "creation": _names(
        "empty empty_like empty_strided zeros zeros_like ones ones_like full full_like arange linspace "
        "logspace randn rand randint randn_like rand_like normal uniform new_empty new_zeros new_ones "
        "new_full scalar_tensor eye tensor lift_fresh lift_fresh_copy fill fill_ zero zero_ bernoulli "
        "meshgrid tril triu one_hot new_empty_strided"
    ),
    # Operators with arithmetic this counter has no MAC rule for: review them when they appear.
    "compute without a MAC rule": _names(
        "_trilinear bilinear cdist _cdist_forward _euclidean_dist conv_tbc lstm gru rnn_tanh rnn_relu "
        "_transformer_encoder_layer_fwd embedding_bag _embedding_bag linalg_solve linalg_inv linalg_svd "
        "_linalg_svd linalg_qr linalg_cholesky _linalg_eigh cholesky inverse triangular_solve fft_fft "
        "fft_rfft fft_fft2 fft_rfft2 _fft_r2c _fft_c2r _fft_c2c"
    ),
}
_CATEGORY_OF = {name: cat for cat, names in CATEGORIES.items() for name in names}

#: Suffixes of backward kernels: a backward is categorised as its forward (gelu_backward as an activation).
_BACKWARD_NAMES = ("_backward_data", "_backward")

# Exact names (short ones would match everything as substrings) and longer substrings of data movement.
_MOVEMENT_NAMES = frozenset({"t", "to", "cat", "pad", "roll", "flip", "take", "tile", "set_", "unbind", "alias"})
_MOVEMENT_WORDS = (
    "view", "reshape", "permute", "transpose", "expand", "squeeze", "flatten", "contiguous", "clone", "copy",
    "stack", "split", "chunk", "slice", "select", "index", "gather", "scatter", "unfold", "im2col", "_pad",
    "repeat", "narrow", "detach", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "movedim",
    "as_strided", "diagonal", "embedding", "upsample_nearest", "resize", "unsafe", "constant_pad",
)  # fmt: skip


#: Composite operators that PyTorch tags as views but that copy when the strides ask for it.
_MAY_COPY = frozenset({"reshape", "reshape_as", "contiguous", "flatten"})


def op_category(func: Any) -> str:
    """The category of an uncounted operator ("softmax", "norm", ... VIEW, MOVEMENT or "other")."""
    name = func._overloadpacket.__name__ if hasattr(func, "_overloadpacket") else str(func)
    if getattr(func, "is_view", False) and name not in _MAY_COPY:
        return VIEW
    for suffix in _BACKWARD_NAMES:
        if name.endswith(suffix) and name != suffix:
            name = name.removesuffix(suffix)
            break
    base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
    category = _CATEGORY_OF.get(name) or _CATEGORY_OF.get(base)
    if category:
        return category
    if name in _MOVEMENT_NAMES or base in _MOVEMENT_NAMES or any(w in name for w in _MOVEMENT_WORDS):
        return MOVEMENT
    # Operators named nowhere above: PyTorch's own tags say whether they are views or pointwise math.
    tags = getattr(func, "tags", ())
    if getattr(func, "is_view", False) or torch.Tag.inplace_view in tags or torch.Tag.view_copy in tags:
        return MOVEMENT
    if torch.Tag.pointwise in tags:
        return "elementwise math"
    return "other"
