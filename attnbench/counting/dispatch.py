"""attnbench's own counter: every operator that reaches the PyTorch dispatcher, attributed per op and module.

Convention (CONVENTION): one multiply-add = one MAC = 2 FLOPs; a lone elementwise product = 1 MAC = 1 FLOP.
Additions, divisions and everything listed below as uncounted are neither MACs nor FLOPs.

Counted as MACs:

* convolutions of every flavour (1d/2d/3d, stride, dilation, groups, transposed):
  N * C_out * prod(out spatial) * (C_in / groups) * prod(kernel); a transposed conv charges each input
  element C_out / groups * prod(kernel);
* matrix products (mm, addmm, bmm, baddbmm, addbmm, matmul, linear, mv, addmv, dot, einsum, tensordot...):
  the product of the multiplied dims (output elements x contracted length); bias adds are not MACs;
* scaled-dot-product attention in every backend (the math, CPU flash, flash, efficient, cuDNN kernels):
  B * heads * N_q * N_k * (d_k + d_v);
* nn.MultiheadAttention's fused fast path: projections plus attention as above;
* elementwise tensor-by-tensor products (mul, mul_, addcmul) where both operands hold more than one
  element: one MAC per output element. A product with a Python scalar or a one-element tensor is a
  scalar scaling (0 MACs, listed), and so is division. Dropout in training multiplies by its mask: one
  product per element (the mask draw itself is listed, not counted).

FLOPs (exact, not 2 x MACs): every multiply-add above is 2 FLOPs. An elementwise product is a lone
multiplication, 1 FLOP per element, unless its result is summed: then each product meets an addition and is
a multiply-add, 2 FLOPs (ACmix's windowed q*k summed over the window; SK's weights*branches summed over
branches; the broadcast gradient of a gate, summed back to the gate's shape). addcmul is always 2. Rule, at
dispatch level: the storage of each lone product's output is remembered; views share it, and a copy (clone,
contiguous, a reshape that copies, copy_) passes it on. When sum, mean or nansum reduces a tensor on such a
storage (its output has fewer elements), or a convolution's backward takes it as the gradient it sums into
the bias gradient, the product is promoted to 2 FLOPs per element, once. Limits: a product is promoted as a
whole even if only a slice of it is summed; an in-place change that is not a copy (x.add_(1)) forgets it;
sums done inside other kernels (a norm's backward, softmax) do not promote, their own arithmetic being
uncounted; a sum of a non-product (x.sum()) is not a FLOP.

Everything else seen (softmax, activations, norms, adds, reductions, pooling, padding, unfold, copies and
views, and their backward kernels) is not counted: it is listed in `uncounted` with its call count, its
output elements and a category. Composite operators without a rule here are decomposed where the dispatcher
itself would run their decomposition (not where the device has a kernel of their own), so their products are
found; MACs found inside a decomposition are booked under the operator the module called.

Inference (mode "infer"): one forward under torch.inference_mode() with the module in eval mode, by default on
the meta device (shapes only, no data, no memory). In inference mode the dispatcher sees composite operators
such as aten.linear and aten.scaled_dot_product_attention before they decompose; the rules cover both the
composite and the decomposed forms.

Training (mode "train"): one step as a network runs it: the module in train mode, the input an activation
that requires grad (a clone of a leaf, made outside the count), loss = the sum of the output (computed
outside the count: it is not the module's work), loss.backward().
Autograd decomposes composites first, so the forward shows mm/addmm/bmm and the backward shows:

* matrix products' gradients as mm / bmm (one product of the forward's size per operand that needs a grad);
* convolution_backward: grad_input and grad_weight each cost the forward's MACs, as requested by its
  output_mask (a frozen weight or an input that needs no grad costs nothing); grad_bias is a sum, not a MAC;
* fused attention backward kernels (CPU flash, CUDA flash / efficient / cuDNN) recompute the scores:
  B * heads * N_q * N_k * (3 d_k + 2 d_v). PyTorch's math path (explicit bmm + softmax, taken when no fused
  kernel is eligible: on the CPU with dropout or unequal head sizes) has four products and no recompute:
  2 x forward. On meta PyTorch would always take the math path; the count instead runs
  F.scaled_dot_product_attention through the kernel a CPU run chooses (torch._fused_sdp_choice on stand-in
  CPU tensors that hold one row each), so meta and CPU counts agree;
* elementwise products' gradients as mul: two products per gate product when both factors need a grad.

One operator differs between meta and the CPU in training: mish_backward has a CPU kernel but only a Python
meta kernel, so on meta autograd runs its math decomposition before this counter sees it, and its four
products per element are counted; on the CPU it is one listed kernel.

Backward operators are booked with the suffix " (backward)" (by_op, uncounted) and in backward_macs /
backward_flops. Backward work is attributed to the module whose forward created the autograd node that runs
it: each module's forward hooks claim the autograd nodes its forward built, and the backward looks the
running node up (torch._C._current_autograd_node()).

Attribution per module: MACs go to every submodule whose forward is running (fvcore's ancestor_mode "caller"),
and when the root calls into a descendant without going through its parents' forward (a parent's helper
method), to that descendant's owners by name too. A submodule called twice is counted twice; a module
reachable under two names is booked under the first name named_modules() gives it.

The peak-live-bytes figure sums the storages of tensors created during the counted run that are still
referenced after each operator (input, weights and buffers excluded; gradients included in training); it
misses temporaries inside a kernel (the N x N score matrix of a fused attention kernel, im2col buffers of a
convolution).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn import functional as F
from torch.nn.attention import SDPBackend
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

from attnbench.counting.base import (
    BACKWARD_SUFFIX,
    CONVENTION,
    CPU_FALLBACK_LIMIT_BYTES,
    DEFAULT_DEVICE,
    MODES,
    MacReport,
    UncountedOp,
    check_mode,
    check_shape,
    copy_to,
    make_input,
    module_dtype,
    on_meta,
    short_reason,
    tensor_bytes,
    unavailable,
)
from attnbench.errors import InvalidCaseError

__all__ = ["CONVENTION", "MODES", "DispatchCounter", "count_dispatch", "cpu_attention_choice", "op_category"]

aten = torch.ops.aten

OpRule = Callable[[tuple, dict, Any], int]


def _numel(x: Any) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 1


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _product_rule(a_index: int, a_name: str) -> OpRule:
    """MACs of a (batched) matrix product: output elements x the contracted length of operand A."""

    def rule(args: tuple, kwargs: dict, out: Any) -> int:
        a = _arg(args, kwargs, a_index, a_name)
        return _first(out).numel() * a.shape[-1]

    return rule


def _addbmm(args: tuple, kwargs: dict, out: Any) -> int:
    # addbmm sums the batch away: every (b, n, k) x (b, k, m) product happens once.
    b1, b2 = _arg(args, kwargs, 1, "batch1"), _arg(args, kwargs, 2, "batch2")
    return b1.numel() * b2.shape[-1]


def _outer(args: tuple, kwargs: dict, out: Any) -> int:
    return _first(out).numel()


def _conv_macs(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, transposed: bool) -> int:
    per_element = math.prod(w.shape[1:])  # (C_in/groups) * prod(k), or (C_out/groups) * prod(k) if transposed
    return (x.numel() if transposed else out.numel()) * per_element


def _conv(args: tuple, kwargs: dict, out: Any, transposed: bool | None = None) -> int:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    if transposed is None:  # aten.convolution / _convolution carry the flag as their 7th argument
        transposed = bool(_arg(args, kwargs, 6, "transposed", False))
    return _conv_macs(x, w, _first(out), transposed)


def _conv_rule(transposed: bool | None) -> OpRule:
    return lambda args, kwargs, out: _conv(args, kwargs, out, transposed)


def _conv_backward(args: tuple, kwargs: dict, out: Any) -> int:
    """grad_input and grad_weight each cost the forward's MACs, as output_mask asks; grad_bias is a sum."""
    grad_out, x, w = args[0], args[1], args[2]
    transposed = bool(_arg(args, kwargs, 7, "transposed", False))
    mask = _arg(args, kwargs, 10, "output_mask", (True, True, True))
    return _conv_macs(x, w, grad_out, transposed) * (int(bool(mask[0])) + int(bool(mask[1])))


def _attention_dims(q: torch.Tensor, k: torch.Tensor, heads_first: bool) -> tuple[int, int, int]:
    """(batch * heads, N_q, N_k) from q and k in (B, h, N, d) (or any (..., N, d)), or (B, N, h, d)."""
    if heads_first:
        return math.prod(q.shape[:-2]), q.shape[-2], k.shape[-2]
    return q.shape[0] * q.shape[2], q.shape[1], k.shape[1]


def _sdpa_rule(heads_first: bool, backward: bool = False) -> OpRule:
    """Forward: B*h*N_q*N_k*(d_k + d_v). Fused backward (recomputes q k^T): B*h*N_q*N_k*(3 d_k + 2 d_v)."""
    first = 1 if backward else 0  # backward kernels take grad_out first, then q, k, v

    def rule(args: tuple, kwargs: dict, out: Any) -> int:
        q, k, v = (_arg(args, kwargs, first + i, n) for i, n in enumerate(("query", "key", "value")))
        batch_heads, n_q, n_k = _attention_dims(q, k, heads_first)
        d_k, d_v = q.shape[-1], v.shape[-1]
        per_score = 3 * d_k + 2 * d_v if backward else d_k + d_v
        return batch_heads * n_q * n_k * per_score

    return rule


def _native_mha(args: tuple, kwargs: dict, out: Any) -> int:
    # nn.MultiheadAttention's fused inference path: q/k/v projections, attention, output projection.
    q, k = args[0], args[1]
    embed = args[3]
    batch = math.prod(q.shape[:-2]) if q.dim() > 2 else 1
    n_q, n_k = q.shape[-2], k.shape[-2]
    projections = batch * (n_q + 2 * n_k) * embed * embed + batch * n_q * embed * embed
    return projections + batch * n_q * n_k * 2 * embed


# Operators counted as MACs (every one a multiply-add: 2 FLOPs per MAC), keyed by overload packet; their
# composite forms are not decomposed further.
_RULES: dict[Any, OpRule] = {
    aten.mm: _product_rule(0, "self"),
    aten.bmm: _product_rule(0, "self"),
    aten.matmul: _product_rule(0, "self"),
    aten.linear: _product_rule(0, "input"),
    aten.mv: _product_rule(0, "self"),
    aten.dot: _product_rule(0, "self"),
    aten.vdot: _product_rule(0, "self"),
    aten.addmm: _product_rule(1, "mat1"),
    aten.addmm_: _product_rule(1, "mat1"),
    aten._addmm_activation: _product_rule(1, "mat1"),
    aten.baddbmm: _product_rule(1, "batch1"),
    aten.baddbmm_: _product_rule(1, "batch1"),
    aten.addmv: _product_rule(1, "mat"),
    aten.addmv_: _product_rule(1, "mat"),
    aten.addbmm: _addbmm,
    aten.addbmm_: _addbmm,
    aten.addr: _outer,
    aten.addr_: _outer,
    aten.convolution: _conv_rule(None),
    aten._convolution: _conv_rule(None),
    aten.conv1d: _conv_rule(False),
    aten.conv2d: _conv_rule(False),
    aten.conv3d: _conv_rule(False),
    aten.conv_transpose1d: _conv_rule(True),
    aten.conv_transpose2d: _conv_rule(True),
    aten.conv_transpose3d: _conv_rule(True),
    aten.mkldnn_convolution: _conv_rule(False),
    aten._slow_conv2d_forward: _conv_rule(False),
    aten.slow_conv3d_forward: _conv_rule(False),
    aten.slow_conv_dilated2d: _conv_rule(False),
    aten.slow_conv_dilated3d: _conv_rule(False),
    aten.thnn_conv2d: _conv_rule(False),
    aten.slow_conv3d: _conv_rule(False),
    aten.slow_conv_transpose2d: _conv_rule(True),
    aten.slow_conv_transpose3d: _conv_rule(True),
    aten.cudnn_convolution: _conv_rule(False),
    aten.cudnn_convolution_transpose: _conv_rule(True),
    aten.miopen_convolution: _conv_rule(False),
    aten.miopen_depthwise_convolution: _conv_rule(False),
    aten.miopen_convolution_transpose: _conv_rule(True),
    aten._conv_depthwise2d: _conv_rule(False),
    aten.conv_depthwise3d: _conv_rule(False),
    aten._nnpack_spatial_convolution: _conv_rule(False),
    aten.convolution_backward: _conv_backward,
    aten.scaled_dot_product_attention: _sdpa_rule(True),
    aten._scaled_dot_product_attention_math: _sdpa_rule(True),
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_rule(True),
    aten._scaled_dot_product_flash_attention: _sdpa_rule(True),
    aten._scaled_dot_product_efficient_attention: _sdpa_rule(True),
    aten._scaled_dot_product_cudnn_attention: _sdpa_rule(True),
    aten._flash_attention_forward: _sdpa_rule(False),
    aten._efficient_attention_forward: _sdpa_rule(False),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_rule(True, backward=True),
    aten._scaled_dot_product_flash_attention_backward: _sdpa_rule(True, backward=True),
    aten._scaled_dot_product_efficient_attention_backward: _sdpa_rule(True, backward=True),
    aten._scaled_dot_product_cudnn_attention_backward: _sdpa_rule(True, backward=True),
    aten._flash_attention_backward: _sdpa_rule(False, backward=True),
    aten._efficient_attention_backward: _sdpa_rule(False, backward=True),
    aten._native_multi_head_attention: _native_mha,
}
for _name, _rule in (
    ("_scaled_dot_product_fused_attention_overrideable", _sdpa_rule(True)),
    ("_scaled_dot_product_fused_attention_overrideable_backward", _sdpa_rule(True, backward=True)),
    ("_scaled_dot_product_attention_math_for_mps", _sdpa_rule(True)),
):
    if hasattr(aten, _name):  # present in some builds only
        _RULES[getattr(aten, _name)] = _rule


def _factors(a: tuple[int, str], b: tuple[int, str]) -> OpRule:
    """Elementwise products: one per output element, 0 (a scalar scaling) when a factor has one element."""

    def rule(args: tuple, kwargs: dict, out: Any) -> int:
        x, y = _arg(args, kwargs, *a), _arg(args, kwargs, *b)
        return 0 if min(_numel(x), _numel(y)) <= 1 else _first(out).numel()

    return rule


def _dropout(args: tuple, kwargs: dict, out: Any) -> int:
    # native_dropout(input, p, train) multiplies by its mask only when training with p > 0.
    train, p = _arg(args, kwargs, 2, "train", True), _arg(args, kwargs, 1, "p", 0.0)
    return _first(out).numel() if train is not False and p > 0 else 0


def _elements(args: tuple, kwargs: dict, out: Any) -> int:
    return _first(out).numel()


# Elementwise products: 1 MAC per element. A rule answering 0 marks a scalar scaling (listed, not counted).
_PRODUCTS: dict[Any, OpRule] = {
    aten.mul: _factors((0, "self"), (1, "other")),
    aten.mul_: _factors((0, "self"), (1, "other")),
    aten.multiply: _factors((0, "self"), (1, "other")),
    aten.multiply_: _factors((0, "self"), (1, "other")),
    aten.addcmul: _factors((1, "tensor1"), (2, "tensor2")),
    aten.addcmul_: _factors((1, "tensor1"), (2, "tensor2")),
    aten.native_dropout: _dropout,  # the fused dropout kernel (CUDA); on CPU and meta dropout is bernoulli_ + mul
    aten.native_dropout_backward: _elements,  # grad * mask * scale
}
#: Products for which a one-element factor makes a scalar scaling.
_SCALINGS = {aten.mul, aten.mul_, aten.multiply, aten.multiply_, aten.addcmul, aten.addcmul_}
#: Products that add their result to a tensor as they go: always multiply-adds, 2 FLOPs.
_FUSED_PRODUCTS = {aten.addcmul, aten.addcmul_}
#: Reductions that sum their first argument: a lone product they consume becomes a multiply-add.
_SUMS = {aten.sum, aten.mean, aten.nansum}

# Composite operators that are not MACs and are listed under their own name instead of being decomposed
# (a norm stays "layer_norm" whatever it is made of).
_OPAQUE = {
    aten.softmax,
    aten.log_softmax,
    aten.layer_norm,
    aten.group_norm,
    aten.batch_norm,
    aten.instance_norm,
    aten.rms_norm,
    aten.dropout,
    aten.feature_dropout,
    aten.alpha_dropout,
    aten.adaptive_avg_pool1d,
    aten.adaptive_avg_pool2d,
    aten.adaptive_avg_pool3d,
    aten.adaptive_max_pool1d,
    aten.pad,
    aten.upsample_nearest1d,
    aten.upsample_nearest2d,
    aten.upsample_nearest3d,
    aten.upsample_bilinear2d,
    aten.upsample_bicubic2d,
    aten.upsample_linear1d,
    aten.upsample_trilinear3d,
}


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Names (overload packets, in-place '_' stripped) of uncounted operators, by category.
_CATEGORIES: dict[str, frozenset[str]] = {
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
_CATEGORY_OF = {name: cat for cat, names in _CATEGORIES.items() for name in names}


#: Suffixes of backward kernels: a backward is categorised as its forward (gelu_backward as an activation).
_BACKWARD_NAMES = ("_backward_data", "_backward")


def op_category(func: Any) -> str:
    """The category of an uncounted operator ("softmax", "norm", ... or "data movement/view" / "other")."""
    name = func._overloadpacket.__name__ if hasattr(func, "_overloadpacket") else str(func)
    for suffix in _BACKWARD_NAMES:
        if name.endswith(suffix) and name != suffix:
            name = name.removesuffix(suffix)
            break
    base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
    category = _CATEGORY_OF.get(name) or _CATEGORY_OF.get(base)
    if category:
        return category
    if name in _MOVEMENT_NAMES or base in _MOVEMENT_NAMES or any(w in name for w in _MOVEMENT_WORDS):
        return "data movement/view"
    tags = getattr(func, "tags", ())
    if getattr(func, "is_view", False) or torch.Tag.inplace_view in tags or torch.Tag.view_copy in tags:
        return "data movement/view"
    if torch.Tag.pointwise in tags:
        return "elementwise math"
    return "other"


# Exact names (short ones would match everything as substrings) and longer substrings of data movement.
_MOVEMENT_NAMES = frozenset({"t", "to", "cat", "pad", "roll", "flip", "take", "tile", "set_", "unbind", "alias"})
_MOVEMENT_WORDS = (
    "view", "reshape", "permute", "transpose", "expand", "squeeze", "flatten", "contiguous", "clone", "copy",
    "stack", "split", "chunk", "slice", "select", "index", "gather", "scatter", "unfold", "im2col", "_pad",
    "repeat", "narrow", "detach", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "movedim",
    "as_strided", "diagonal", "embedding", "upsample_nearest", "resize", "unsafe", "constant_pad",
)  # fmt: skip


def _op_name(func: Any) -> str:
    return str(getattr(func, "_overloadpacket", func))


def _storage_key(t: torch.Tensor) -> tuple[StorageWeakRef, int] | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or otherwise storage-less tensors
        return None
    return StorageWeakRef(storage), storage.nbytes()


def _cdata(t: torch.Tensor) -> int | None:
    key = _storage_key(t)
    return None if key is None else key[0].cdata


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _owners(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b']: the submodules that own a qualified name."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@dataclass
class _Product:
    """A lone elementwise product (1 FLOP per element) waiting to learn whether a sum consumes it."""

    name: str
    stack: tuple[str, ...]
    elements: int
    backward: bool
    promoted: bool = False


class DispatchCounter(TorchDispatchMode):
    """A TorchDispatchMode that books MACs and FLOPs per operator and per active submodule, and lists the rest.

    Work that autograd's engine runs (a backward pass inside the mode) is booked under names ending in
    BACKWARD_SUFFIX and attributed through the autograd nodes that attach(module, autograd=True) made the
    forward claim.
    """

    def __init__(self, module: nn.Module | None = None) -> None:
        super().__init__()
        self.by_op: dict[str, int] = defaultdict(int)
        self.flops_by_op: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.by_module: dict[str, int] = defaultdict(int)
        self.flops_by_module: dict[str, int] = defaultdict(int)
        self.by_module_nested: dict[str, int] = defaultdict(int)
        self.flops_by_module_nested: dict[str, int] = defaultdict(int)
        self.uncounted: dict[str, list] = {}
        self.backward_macs = 0
        self.backward_flops = 0
        self._stack: list[str] = []
        self._handles: list[Any] = []
        self._decomposing: list[str] = []
        self._excluded: set[int] = set()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._live_bytes = 0
        self.peak_live_bytes = 0
        self._products: dict[int, tuple[StorageWeakRef, _Product]] = {}
        self._claims: dict[Any, tuple[str, ...]] | None = None  # autograd node -> module stack (training)
        self._credit: dict[tuple[str, ...], tuple[list[str], str]] = {}
        if module is not None:
            self.attach(module)

    @property
    def total(self) -> int:
        """All MACs booked so far."""
        return sum(self.by_op.values())

    @property
    def total_flops(self) -> int:
        """All FLOPs booked so far (products promoted by a later sum included)."""
        return sum(self.flops_by_op.values())

    # --- module attribution -------------------------------------------------------------------------
    def attach(self, module: nn.Module, autograd: bool = False) -> None:
        """Hook every submodule so work is booked under the modules active when it happens.

        With `autograd`, each forward also claims the autograd nodes it builds, so that the backward can be
        attributed to the module whose forward made each node.
        """
        if autograd:
            self._claims = {}
        for name, sub in module.named_modules():
            if not name:
                continue
            self._handles.append(sub.register_forward_pre_hook(self._push(name), with_kwargs=True))
            self._handles.append(sub.register_forward_hook(self._pop, always_call=True))
        self.exclude(*module.parameters(), *module.buffers())
        for sub in module.modules():
            self.exclude(*(v for v in vars(sub).values() if isinstance(v, torch.Tensor)))

    def detach(self) -> None:
        """Remove the hooks attach() put on the module."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _push(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            # Nodes that already feed this module's inputs were built by its caller, not by it.
            self.claim((args, kwargs), tuple(self._stack))
            self._stack.append(name)

        return hook

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        self.claim(output, tuple(self._stack))
        if self._stack:
            self._stack.pop()

    def claim(self, tree: Any, stack: tuple[str, ...]) -> None:
        """Give the unclaimed autograd nodes behind the tensors in `tree` to the module `stack` (training only)."""
        if self._claims is None:
            return
        todo = [t.grad_fn for t in _tensors(tree) if t.grad_fn is not None]
        while todo:
            node = todo.pop()
            if node is None or node in self._claims:
                continue
            self._claims[node] = stack
            todo.extend(n for n, _ in node.next_functions)

    def exclude(self, *tensors: torch.Tensor) -> None:
        """Leave these tensors' storages (input, weights) out of the live-bytes estimate."""
        for t in tensors:
            key = _storage_key(t)
            if key is not None:
                self._excluded.add(key[0].cdata)

    def _current_stack(self, backward: bool) -> tuple[str, ...]:
        if backward and self._claims is not None:
            node = torch._C._current_autograd_node()
            return self._claims.get(node, ()) if node is not None else ()
        return tuple(self._stack)

    def _credited(self, stack: tuple[str, ...]) -> tuple[list[str], str]:
        """(qualified names credited, top-level key) for a module stack; see the module docstring."""
        hit = self._credit.get(stack)
        if hit is None:
            names = list(dict.fromkeys([*_owners(stack[0]), *stack])) if stack else []
            hit = (names, stack[0].split(".", 1)[0] if stack else "(self)")
            self._credit[stack] = hit
        return hit

    # --- the dispatch hook --------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        rule = _RULES.get(packet)
        if rule is None and packet not in _PRODUCTS and packet not in _OPAQUE and _decomposes(func, args, kwargs):
            # A composite without a rule: run its decomposition under this mode so nothing inside is missed.
            self._decomposing.append(_op_name(func))
            try:
                with self:
                    out = func.decompose(*args, **kwargs)
            finally:
                self._decomposing.pop()
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        name = self._decomposing[0] if self._decomposing else _op_name(func)
        backward = _in_backward()
        if backward:
            name += BACKWARD_SUFFIX
        stack = self._current_stack(backward)
        if rule is not None:
            macs = rule(args, kwargs, out)
            self._book(name, macs, 2 * macs, stack, backward)
        elif packet in _PRODUCTS:
            self._product(func, name, stack, backward, args, kwargs, out)
        else:
            self._list(name, op_category(func), out)
        if self._products:
            self._follow(func, packet, args, kwargs, out)
        self._track(out)
        return out

    def _product(
        self, func: Any, name: str, stack: tuple[str, ...], backward: bool, args: tuple, kwargs: dict, out: Any
    ) -> None:
        packet = func._overloadpacket
        macs = _PRODUCTS[packet](args, kwargs, out)
        if not macs and packet in _SCALINGS:
            suffix = BACKWARD_SUFFIX if name.endswith(BACKWARD_SUFFIX) else ""
            self._list(f"{name.removesuffix(suffix)} (scalar){suffix}", "scalar scaling", out)
            return
        if not macs:  # dropout that drops nothing
            self._list(name, op_category(func), out)
            return
        fused = packet in _FUSED_PRODUCTS
        self._book(name, macs, 2 * macs if fused else macs, stack, backward)
        if not fused:
            record = _Product(name, stack, macs, backward)
            self._remember(_first(out), record)

    def _book(self, name: str, macs: int, flops: int, stack: tuple[str, ...], backward: bool) -> None:
        self.by_op[name] += macs
        self.flops_by_op[name] += flops
        self.calls[name] += 1
        if backward:
            self.backward_macs += macs
            self.backward_flops += flops
        names, top = self._credited(stack)
        self.by_module[top] += macs
        self.flops_by_module[top] += flops
        for qualified in names:
            self.by_module_nested[qualified] += macs
            self.flops_by_module_nested[qualified] += flops

    def _promote(self, record: _Product) -> None:
        """A lone product turned out to be summed: its second FLOP per element, booked where the first was."""
        record.promoted = True
        self.flops_by_op[record.name] += record.elements
        if record.backward:
            self.backward_flops += record.elements
        names, top = self._credited(record.stack)
        self.flops_by_module[top] += record.elements
        for qualified in names:
            self.flops_by_module_nested[qualified] += record.elements

    # --- lone products and the sums that consume them ------------------------------------------------
    def _remember(self, t: torch.Tensor, record: _Product) -> None:
        key = _storage_key(t)
        if key is not None:
            self._products[key[0].cdata] = (key[0], record)

    def _recall(self, t: Any) -> _Product | None:
        if not isinstance(t, torch.Tensor):
            return None
        key = _storage_key(t)
        hit = self._products.get(key[0].cdata) if key is not None else None
        return hit[1] if hit is not None and not hit[0].expired() else None

    def _follow(self, func: Any, packet: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Promote products that a sum consumes; pass a product's storage on through copies; forget overwrites."""
        for t in _summed(packet, args, kwargs, out):
            record = self._recall(t)
            if record is not None and not record.promoted:
                self._promote(record)
        if packet in _PRODUCTS:
            return
        outputs = _tensors(out)
        written = {_cdata(t) for t in outputs} - {None}
        sources = [t for t in _tensors((args, kwargs)) if _cdata(t) not in written]
        if op_category(func) == "data movement/view":
            record = next((r for t in sources if (r := self._recall(t)) is not None), None)
            if record is not None:
                for t in outputs:
                    self._remember(t, record)
                return
        if func._schema.is_mutable:  # an in-place op that is not a copy of a product overwrote the values
            for cdata in written:
                self._products.pop(cdata, None)

    def _list(self, name: str, category: str, out: Any) -> None:
        entry = self.uncounted.setdefault(name, [0, 0, category])
        entry[0] += 1
        entry[1] += sum(t.numel() for t in _tensors(out))

    def _track(self, out: Any) -> None:
        # Book new output storages, then drop those no longer referenced, then update the peak.
        for t in _tensors(out):
            key = _storage_key(t)
            if key is None:
                continue
            ref, nbytes = key
            cdata = ref.cdata
            if cdata in self._excluded or cdata in self._live:
                continue
            self._live[cdata] = (ref, nbytes)
            self._live_bytes += nbytes
        for cdata, (ref, nbytes) in list(self._live.items()):
            if ref.expired():
                del self._live[cdata]
                self._live_bytes -= nbytes
                self._products.pop(cdata, None)
        self.peak_live_bytes = max(self.peak_live_bytes, self._live_bytes)

    def uncounted_ops(self) -> dict[str, UncountedOp]:
        """The listed operators as records."""
        return {k: UncountedOp(calls, elements, cat) for k, (calls, elements, cat) in self.uncounted.items()}


#: The dispatch key of a device's own kernels, to tell whether the dispatcher would decompose an operator.
_BACKEND_KEYS = {
    "cpu": torch._C.DispatchKey.CPU,
    "meta": torch._C.DispatchKey.Meta,
    "cuda": torch._C.DispatchKey.CUDA,
}


def _decomposes(func: Any, args: tuple, kwargs: dict) -> bool:
    """True when the dispatcher would run `func`'s CompositeImplicitAutograd decomposition on these tensors.

    An operator with a kernel of its own for the device (silu_backward has a CPU and a Meta kernel besides
    its math decomposition) runs that kernel, so its decomposition's products are not what happens.
    """
    if not func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd):
        return False
    tensor = next(iter(_tensors((args, kwargs))), None)
    key = _BACKEND_KEYS.get(tensor.device.type) if tensor is not None else None
    return key is None or not func.has_kernel_for_dispatch_key(key)


def _in_backward() -> bool:
    """True while autograd's engine runs a backward pass on this thread."""
    return torch._C._current_graph_task_id() != -1


def _summed(packet: Any, args: tuple, kwargs: dict, out: Any) -> list[torch.Tensor]:
    """The tensors this operator sums over (so that a product among them is a multiply-add)."""
    if packet in _SUMS:
        x = args[0] if args else kwargs.get("self")
        return [x] if isinstance(x, torch.Tensor) and _first(out).numel() < x.numel() else []
    if packet is aten.convolution_backward:  # grad_bias = grad_output summed over batch and positions
        mask = _arg(args, kwargs, 10, "output_mask", (False, False, False))
        return [args[0]] if mask[2] else []
    return []


def _scalar_loss(out: Any) -> torch.Tensor:
    """The training loss: the sum of every output tensor that requires grad."""
    tensors = [t for t in _tensors(out) if t.requires_grad]
    if not tensors:
        raise ValueError("the module's output does not require grad: there is no backward pass to count")
    loss = tensors[0].sum()
    for t in tensors[1:]:
        loss = loss + t.sum()
    return loss


def _run(module: nn.Module, shape: tuple[int, ...], device: str, counter: DispatchCounter) -> None:
    """Count one forward of a prepared module (on `device`, in eval mode) under inference mode."""
    x = make_input(shape, device, module_dtype(module))
    counter.attach(module)
    counter.exclude(x)
    try:
        with torch.inference_mode(), counter:
            module(x)
    finally:
        counter.detach()


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with t's shape, dtype and unit last stride that holds one row: enough to choose a kernel."""
    row = torch.empty((1,) * (t.dim() - 1) + (t.shape[-1],), dtype=t.dtype)
    return row.expand(t.shape)


@contextlib.contextmanager
def cpu_attention_choice() -> Iterator[None]:
    """While open, F.scaled_dot_product_attention on meta tensors runs the fused kernel a CPU run would choose.

    The meta device makes PyTorch pick the math path, whose backward differs from the CPU flash kernel's
    (no recompute of the scores). Where the CPU would take its flash kernel, the call goes to that kernel
    directly (it has meta and autograd support); every other call runs unchanged. The function is swapped in
    torch.nn.functional (a TorchFunctionMode cannot see the call inside nn.MultiheadAttention, whose
    functional wrapper handles modes itself); code that imported the function by name before keeps the
    original, and grouped-query attention is left to PyTorch (math on meta).
    """
    original = F.scaled_dot_product_attention

    def attend(*args: Any, **kwargs: Any) -> torch.Tensor:
        call = dict(zip(_SDPA_ARGS, args, strict=False)) | kwargs
        if not all(t.is_meta for t in _tensors(call)) or call.get("enable_gqa", False):
            return original(*args, **kwargs)
        mask = call.get("attn_mask")
        if mask is not None and mask.dtype == torch.bool:
            # As PyTorch's composite does first on every device: True = attend (0), False = -inf.
            like = {"dtype": call["query"].dtype, "device": mask.device}
            zero, minus_inf = torch.scalar_tensor(0.0, **like), torch.scalar_tensor(float("-inf"), **like)
            call["attn_mask"] = torch.where(mask, zero, minus_inf)
        if _cpu_takes_flash(call):
            flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
            q, k, v = call["query"], call["key"], call["value"]
            options = {"attn_mask": call.get("attn_mask"), "scale": call.get("scale")}
            return flash(q, k, v, call.get("dropout_p", 0.0), call.get("is_causal", False), **options)[0]
        return original(**call)

    F.scaled_dot_product_attention = attend
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _cpu_takes_flash(call: dict[str, Any]) -> bool:
    """True when these (meta) attention arguments would run the CPU flash kernel on the CPU."""
    q, k, v, mask = call["query"], call["key"], call["value"], call.get("attn_mask")
    with _disable_current_modes():  # the stand-ins and the choice are not the module's work: count nothing
        choice = torch._fused_sdp_choice(
            _stand_in(q), _stand_in(k), _stand_in(v), None if mask is None else _stand_in(mask),
            call.get("dropout_p", 0.0), call.get("is_causal", False), scale=call.get("scale"),
        )  # fmt: skip
    return choice == SDPBackend.FLASH_ATTENTION.value


def _run_train(module: nn.Module, shape: tuple[int, ...], device: str, counter: DispatchCounter) -> None:
    """Count one training step of a prepared module copy: train mode, forward, loss = sum, backward."""
    module.train()
    leaf = make_input(shape, device, module_dtype(module)).requires_grad_(True)
    counter.attach(module, autograd=True)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # Inside a network the input is an activation, not a leaf: in-place ops on it are allowed.
            x = leaf.clone()
            counter.exclude(leaf, x)
            with cpu_attention_choice(), counter:
                out = module(x)
            counter.claim(out, ())  # what the root's own forward built
            loss = _scalar_loss(out)  # outside the count: the loss is not the module's work
            with counter:
                loss.backward()
    finally:
        counter.detach()


_RUNS: dict[str, Callable[[nn.Module, tuple[int, ...], str, DispatchCounter], None]] = {
    "infer": _run,
    "train": _run_train,
}


def _report(counter: DispatchCounter, shape: tuple[int, ...], where: str, mode: str, seconds: float) -> MacReport:
    return MacReport(
        counter="attnbench",
        macs=counter.total,
        by_op=dict(counter.by_op),
        by_module=dict(counter.by_module),
        uncounted=counter.uncounted_ops(),
        device=where,
        status="ok",
        peak_live_bytes_estimate=counter.peak_live_bytes,
        seconds=seconds,
        input_shape=shape,
        by_module_nested=dict(counter.by_module_nested),
        counted_calls=dict(counter.calls),
        flops=counter.total_flops,
        flops_by_op=dict(counter.flops_by_op),
        flops_by_module=dict(counter.flops_by_module),
        flops_by_module_nested=dict(counter.flops_by_module_nested),
        mode=mode,
        backward_macs=counter.backward_macs,
        backward_flops=counter.backward_flops,
    )


def count_dispatch(
    module: nn.Module,
    input_shape: Sequence[int],
    device: str = DEFAULT_DEVICE,
    cpu_limit_bytes: int = CPU_FALLBACK_LIMIT_BYTES,
    mode: str = "infer",
) -> MacReport:
    """Count MACs and FLOPs of one forward (mode "infer") or one training step (mode "train") at dispatch level.

    On meta (the default) nothing is computed or allocated. If the module cannot run on meta, the count is
    repeated on the CPU (the report's device says why) unless the activations seen before the failure plus
    the weights already exceed `cpu_limit_bytes`. The user's module is never modified (a module already on
    meta is counted in place for inference, with its train/eval mode restored; training always uses a copy,
    so no gradient lands on the user's parameters).
    """
    shape = check_shape(input_shape)
    check_mode(mode)
    run = _RUNS[mode]
    start = time.perf_counter()
    target = str(device)
    in_place = mode == "infer" and target == "meta" and on_meta(module)
    modes = {m: m.training for m in module.modules()}
    try:
        work = module.eval() if in_place else copy_to(module, target)
        counter = DispatchCounter()
        try:
            run(work, shape, target, counter)
            where = target
        except InvalidCaseError:
            raise
        except Exception as exc:
            if target != "meta":
                raise
            first = short_reason(exc, 120)
            need = counter.peak_live_bytes + tensor_bytes(module, shape, module_dtype(module))
            if need > cpu_limit_bytes:
                reason = (
                    f"meta failed ({first}); a CPU run needs more than {need / 2**30:.1f} GiB "
                    f"(limit {cpu_limit_bytes / 2**30:.1f} GiB)"
                )
                failed = replace(unavailable("attnbench", reason, shape, "meta"), mode=mode)
                return replace(failed, seconds=time.perf_counter() - start)
            counter = DispatchCounter()
            run(copy_to(module, "cpu"), shape, "cpu", counter)
            where = f"cpu (meta failed: {first})"
    except InvalidCaseError:
        raise
    except Exception as exc:
        failed = replace(unavailable("attnbench", short_reason(exc), shape, target, "failed"), mode=mode)
        return replace(failed, seconds=time.perf_counter() - start)
    finally:
        if in_place:
            for m, training in modes.items():
                m.train(training)
    return _report(counter, shape, where, mode, time.perf_counter() - start)
