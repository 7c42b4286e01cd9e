"""attnbench's own MAC counter: every operator that reaches the PyTorch dispatcher, attributed per op and module.

Convention: one multiply-add = one MAC; FLOPs = 2 x MACs (see CONVENTION). Counted as MACs:

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
  scalar scaling (0 MACs, listed), and so is division.

Everything else seen (softmax, activations, norms, adds, reductions, pooling, padding, unfold, copies and
views...) is not a MAC: it is listed in `uncounted` with its call count, its output elements and a category.
Composite operators without a rule here are decomposed (as the dispatcher would) so their products are
found; MACs found inside a decomposition are booked under the operator the module called.

Counting runs under torch.inference_mode() with the module in eval mode, by default on the meta device
(shapes only, no data, no memory). In inference mode the dispatcher sees composite operators such as
aten.linear and aten.scaled_dot_product_attention before they decompose; the rules below cover both the
composite and the decomposed forms. The peak-live-bytes figure sums the storages of tensors created during
the forward that are still referenced after each operator; it misses temporaries inside a kernel (the
N x N score matrix of a fused attention kernel, im2col buffers of a convolution).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from attnbench.counting.base import (
    CONVENTION,
    CPU_FALLBACK_LIMIT_BYTES,
    DEFAULT_DEVICE,
    MacReport,
    UncountedOp,
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

__all__ = ["CONVENTION", "DispatchCounter", "count_dispatch", "op_category"]

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


def _conv(args: tuple, kwargs: dict, out: Any, transposed: bool | None = None) -> int:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    if transposed is None:  # aten.convolution / _convolution carry the flag as their 7th argument
        transposed = bool(_arg(args, kwargs, 6, "transposed", False))
    per_element = math.prod(w.shape[1:])  # (C_in/groups) * prod(k), or (C_out/groups) * prod(k) if transposed
    return (x.numel() if transposed else _first(out).numel()) * per_element


def _conv_rule(transposed: bool | None) -> OpRule:
    return lambda args, kwargs, out: _conv(args, kwargs, out, transposed)


def _sdpa_rule(heads_first: bool) -> OpRule:
    """B * heads * N_q * N_k * (d_k + d_v) from q (.., N_q, d_k), k (.., N_k, d_k), v (.., N_k, d_v)."""

    def rule(args: tuple, kwargs: dict, out: Any) -> int:
        q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
        if heads_first:  # (B, h, N, d) or any (..., N, d)
            batch_heads, n_q, n_k = math.prod(q.shape[:-2]), q.shape[-2], k.shape[-2]
        else:  # _flash_attention_forward / _efficient_attention_forward: (B, N, h, d)
            batch_heads, n_q, n_k = q.shape[0] * q.shape[2], q.shape[1], k.shape[1]
        return batch_heads * n_q * n_k * (q.shape[-1] + v.shape[-1])

    return rule


def _native_mha(args: tuple, kwargs: dict, out: Any) -> int:
    # nn.MultiheadAttention's fused inference path: q/k/v projections, attention, output projection.
    q, k = args[0], args[1]
    embed = args[3]
    batch = math.prod(q.shape[:-2]) if q.dim() > 2 else 1
    n_q, n_k = q.shape[-2], k.shape[-2]
    projections = batch * (n_q + 2 * n_k) * embed * embed + batch * n_q * embed * embed
    return projections + batch * n_q * n_k * 2 * embed


def _elementwise_product(operands: Sequence[Any], out: Any) -> int | None:
    """MACs of an elementwise product, or None when it is a scalar scaling (an operand of one element)."""
    if any(_numel(t) <= 1 for t in operands):
        return None
    return _first(out).numel()


# Operators counted as MACs, keyed by overload packet; their composite forms are not decomposed further.
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
    aten.scaled_dot_product_attention: _sdpa_rule(True),
    aten._scaled_dot_product_attention_math: _sdpa_rule(True),
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_rule(True),
    aten._scaled_dot_product_flash_attention: _sdpa_rule(True),
    aten._scaled_dot_product_efficient_attention: _sdpa_rule(True),
    aten._scaled_dot_product_cudnn_attention: _sdpa_rule(True),
    aten._flash_attention_forward: _sdpa_rule(False),
    aten._efficient_attention_forward: _sdpa_rule(False),
    aten._native_multi_head_attention: _native_mha,
}
for _name in ("_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math_for_mps"):
    if hasattr(aten, _name):  # present in some builds only
        _RULES[getattr(aten, _name)] = _sdpa_rule(True)

# Elementwise products: which positional arguments are the two factors.
_PRODUCTS: dict[Any, tuple[tuple[int, str], tuple[int, str]]] = {
    aten.mul: ((0, "self"), (1, "other")),
    aten.mul_: ((0, "self"), (1, "other")),
    aten.multiply: ((0, "self"), (1, "other")),
    aten.multiply_: ((0, "self"), (1, "other")),
    aten.addcmul: ((1, "tensor1"), (2, "tensor2")),
    aten.addcmul_: ((1, "tensor1"), (2, "tensor2")),
}

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
    "add": _names("add sub rsub subtract neg add_ sub_"),
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
        "meshgrid tril triu one_hot"
    ),
    # Operators with arithmetic this counter has no MAC rule for: review them when they appear.
    "compute without a MAC rule": _names(
        "_trilinear bilinear cdist _cdist_forward _euclidean_dist conv_tbc lstm gru rnn_tanh rnn_relu "
        "_transformer_encoder_layer_fwd embedding_bag _embedding_bag linalg_solve linalg_inv linalg_svd "
        "_linalg_svd linalg_qr linalg_cholesky _linalg_eigh cholesky inverse triangular_solve fft_fft "
        "fft_rfft fft_fft2 fft_rfft2 _fft_r2c _fft_c2r _fft_c2c col2im fold"
    ),
}
_CATEGORY_OF = {name: cat for cat, names in _CATEGORIES.items() for name in names}


def op_category(func: Any) -> str:
    """The category of an uncounted operator ("softmax", "norm", ... or "data movement/view" / "other")."""
    name = func._overloadpacket.__name__ if hasattr(func, "_overloadpacket") else str(func)
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


class DispatchCounter(TorchDispatchMode):
    """A TorchDispatchMode that books MACs per operator and per active submodule, and lists the rest."""

    def __init__(self, module: nn.Module | None = None) -> None:
        super().__init__()
        self.by_op: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.by_module: dict[str, int] = defaultdict(int)
        self.by_module_nested: dict[str, int] = defaultdict(int)
        self.uncounted: dict[str, list] = {}
        self._stack: list[str] = []
        self._handles: list[Any] = []
        self._decomposing: list[str] = []
        self._excluded: set[int] = set()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._live_bytes = 0
        self.peak_live_bytes = 0
        if module is not None:
            self.attach(module)

    @property
    def total(self) -> int:
        """All MACs booked so far."""
        return sum(self.by_op.values())

    # --- module attribution -------------------------------------------------------------------------
    def attach(self, module: nn.Module) -> None:
        """Hook every submodule so MACs are booked under the modules active when they happen."""
        for name, sub in module.named_modules():
            if not name:
                continue
            self._handles.append(sub.register_forward_pre_hook(self._push(name)))
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
        def hook(module: nn.Module, args: Any) -> None:
            self._stack.append(name)

        return hook

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack:
            self._stack.pop()

    def exclude(self, *tensors: torch.Tensor) -> None:
        """Leave these tensors' storages (input, weights) out of the live-bytes estimate."""
        for t in tensors:
            key = _storage_key(t)
            if key is not None:
                self._excluded.add(key[0].cdata)

    # --- the dispatch hook --------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket
        rule = _RULES.get(packet)
        if rule is None and packet not in _PRODUCTS and packet not in _OPAQUE:
            # A composite without a rule: run its decomposition under this mode so nothing inside is missed
            # (decompose() answers NotImplemented for operators that have a kernel of their own).
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
        if rule is not None:
            self._book(name, rule(args, kwargs, out))
        elif packet in _PRODUCTS:
            (i, a_name), (j, b_name) = _PRODUCTS[packet]
            a, b = _arg(args, kwargs, i, a_name), _arg(args, kwargs, j, b_name)
            macs = _elementwise_product((a, b), out)
            if macs is None:
                self._list(f"{_op_name(func)} (scalar)", "scalar scaling", out)
            else:
                self._book(name, macs)
        else:
            self._list(_op_name(func), op_category(func), out)
        self._track(out)
        return out

    def _book(self, name: str, macs: int) -> None:
        self.by_op[name] += macs
        self.calls[name] += 1
        if self._stack:
            self.by_module[self._stack[-1].split(".", 1)[0]] += macs
            for qualified in dict.fromkeys(self._stack):
                self.by_module_nested[qualified] += macs
        else:
            self.by_module["(self)"] += macs

    def _list(self, name: str, category: str, out: Any) -> None:
        entry = self.uncounted.setdefault(name, [0, 0, category])
        entry[0] += 1
        entry[1] += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))

    def _track(self, out: Any) -> None:
        # Book new output storages, then drop those no longer referenced, then update the peak.
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
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
        self.peak_live_bytes = max(self.peak_live_bytes, self._live_bytes)

    def uncounted_ops(self) -> dict[str, UncountedOp]:
        """The listed operators as records."""
        return {k: UncountedOp(calls, elements, cat) for k, (calls, elements, cat) in self.uncounted.items()}


def _run(module: nn.Module, shape: tuple[int, ...], device: str, counter: DispatchCounter) -> None:
    """Count one forward of a prepared module (on `device`, in eval mode, hooked by `counter`)."""
    x = make_input(shape, device, module_dtype(module))
    counter.exclude(x)
    try:
        with torch.inference_mode(), counter:
            module(x)
    finally:
        counter.detach()


def count_dispatch(
    module: nn.Module,
    input_shape: Sequence[int],
    device: str = DEFAULT_DEVICE,
    cpu_limit_bytes: int = CPU_FALLBACK_LIMIT_BYTES,
) -> MacReport:
    """Count MACs of one forward of `module` on an input of `input_shape` at the dispatch level.

    On meta (the default) nothing is computed or allocated. If the module cannot run on meta, the count is
    repeated on the CPU (the report's device says why) unless the activations seen before the failure plus
    the weights already exceed `cpu_limit_bytes`. The user's module is never modified (a module already on
    meta is counted in place, with its train/eval mode restored).
    """
    shape = check_shape(input_shape)
    start = time.perf_counter()
    target = str(device)
    in_place = target == "meta" and on_meta(module)
    modes = {m: m.training for m in module.modules()}
    try:
        work = module.eval() if in_place else copy_to(module, target)
        counter = DispatchCounter(work)
        try:
            _run(work, shape, target, counter)
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
                return replace(unavailable("attnbench", reason, shape, "meta"), seconds=time.perf_counter() - start)
            cpu = copy_to(module, "cpu")
            counter = DispatchCounter(cpu)
            _run(cpu, shape, "cpu", counter)
            where = f"cpu (meta failed: {first})"
    except InvalidCaseError:
        raise
    except Exception as exc:
        failed = unavailable("attnbench", short_reason(exc), shape, target, "failed")
        return replace(failed, seconds=time.perf_counter() - start)
    finally:
        if in_place:
            for m, mode in modes.items():
                m.train(mode)
    return MacReport(
        counter="attnbench",
        macs=counter.total,
        by_op=dict(counter.by_op),
        by_module=dict(counter.by_module),
        uncounted=counter.uncounted_ops(),
        device=where,
        status="ok",
        peak_live_bytes_estimate=counter.peak_live_bytes,
        seconds=time.perf_counter() - start,
        input_shape=shape,
        by_module_nested=dict(counter.by_module_nested),
        counted_calls=dict(counter.calls),
    )
