"""attnbench's own counter: the engine that runs a module under the dispatcher and books every operator it sees.

What each operator costs (MAC rules, elementwise products, sums, categories of what is not counted) is decided in
attnbench.counting.rules; this module applies those rules to one run and attributes the result. Each call that
reaches the dispatcher is booked by its MAC rule, as an elementwise product, or listed in `uncounted` with its
call count, output elements and category. A composite operator without a rule is decomposed where the
dispatcher itself would run its decomposition (not where the device has a kernel of its own), so the products
inside are found; they are booked under the operator the module called.

Inference (mode "infer"): one forward under torch.inference_mode() with the module in eval mode, by default on
the meta device (shapes only, no data, no memory). In inference mode the dispatcher sees composite operators
such as aten.linear and aten.scaled_dot_product_attention before they decompose; the rules cover both forms.

Training (mode "train"): one step as a network runs it: the module in train mode, the input an activation that
requires grad (a clone of a leaf, made outside the count), loss = the sum of the output (computed outside the
count: it is not the module's work), loss.backward(). Autograd decomposes composites first, so the forward shows
mm / addmm / bmm and the backward the gradient kernels the rules price. On meta PyTorch would always take the
math attention path, whose backward differs from the CPU flash kernel's; the count instead runs
F.scaled_dot_product_attention through the kernel a CPU run chooses (cpu_attention_choice), so meta and CPU
counts agree. One operator still differs: mish_backward has a CPU kernel but only a Python meta kernel, so on
meta autograd runs its math decomposition before this counter sees it and its four products per element are
counted; on the CPU it is one listed kernel. Backward operators are booked with the suffix " (backward)" (by_op,
uncounted) and in backward_macs / backward_flops.

Attribution per module: MACs go to every submodule whose forward is running (fvcore's ancestor_mode "caller"),
and when the root calls into a descendant without going through its parents' forward (a parent's helper
method), to that descendant's owners by name too. A submodule called twice is counted twice; a module reachable
under two names is booked under the first name named_modules() gives it. Backward work goes to the module whose
forward created the autograd node that runs it: each module's forward hooks claim the autograd nodes its
forward built, and the backward looks the running node up (torch._C._current_autograd_node()).

Lone-product promotion: a product is booked at 1 FLOP per element and the storage of its output remembered;
views share it, and a copy (clone, contiguous, a reshape that copies, copy_) passes it on. When an operator sums
such a storage (rules.summed_inputs), the product is promoted to 2 FLOPs per element, once, booked where the
product was. Limits: a product is promoted as a whole even if only a slice of it is summed; an in-place change
that is not a copy (x.add_(1)) forgets it.

The peak-live-bytes figure sums the storages of tensors created during the counted run that are still
referenced after each operator (input, weights and buffers excluded; gradients included in training); it misses
temporaries inside a kernel (the N x N score matrix of a fused attention kernel, im2col buffers of a
convolution). When the module cannot run on meta, count_dispatch repeats the count on the CPU if that estimate
says it fits.
"""

from __future__ import annotations

import contextlib
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
    first_tensor,
    make_input,
    module_dtype,
    on_meta,
    output_shapes,
    scalar_loss,
    short_reason,
    tensor_bytes,
    unavailable,
)
from attnbench.counting.rules import (
    FUSED_PRODUCTS,
    MAC_RULES,
    MOVEMENT,
    OPAQUE,
    PRODUCT_RULES,
    SCALAR_SCALING,
    SCALINGS,
    VIEW,
    first_output,
    op_category,
    summed_inputs,
)
from attnbench.errors import InvalidCaseError

__all__ = ["CONVENTION", "MODES", "DispatchCounter", "count_dispatch", "cpu_attention_choice", "op_category"]


def _op_name(func: Any) -> str:
    """The name an operator is booked under: its overload packet ("aten.mm"), whatever the overload."""
    return str(getattr(func, "_overloadpacket", func))


def _storage_key(t: torch.Tensor) -> tuple[StorageWeakRef, int] | None:
    """A weak reference to the storage under `t` and its size in bytes (None for storage-less tensors)."""
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or otherwise storage-less tensors
        return None
    return StorageWeakRef(storage), storage.nbytes()


def _cdata(t: torch.Tensor) -> int | None:
    """The identity of the storage under `t` (views share it), or None."""
    key = _storage_key(t)
    return None if key is None else key[0].cdata


def _tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors in a nest of tuples, lists and dicts (arguments or outputs of a call)."""
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
    """A TorchDispatchMode that books MACs and FLOPs per operator and per active submodule, and lists the rest."""

    # Work that autograd's engine runs (a backward pass inside the mode) is booked under names ending in
    # BACKWARD_SUFFIX and attributed through the autograd nodes that attach(module, autograd=True) made the
    # forward claim.

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
        #: The counted forward's output shapes (attnbench.counting.base.output_shapes) and its first tensor's.
        self.output_shapes = ""
        self.first_output_shape: tuple[int, ...] | None = None
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

    def note_output(self, out: Any) -> None:
        """Remember the shapes of the counted forward's output (a tensor, or a tuple, list or dict of them)."""
        self.output_shapes = output_shapes(out)
        first = first_tensor(out)
        self.first_output_shape = None if first is None else tuple(first.shape)

    # --- module attribution -------------------------------------------------------------------------
    def attach(self, module: nn.Module, autograd: bool = False) -> None:
        """Hook every submodule so work is booked under the modules active when it happens."""
        # With `autograd`, each forward also claims the autograd nodes it builds, so that the backward can be
        # attributed to the module whose forward made each node.
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
        """A forward pre-hook that puts submodule `name` on the stack of running modules."""

        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            # Nodes that already feed this module's inputs were built by its caller, not by it.
            self.claim((args, kwargs), tuple(self._stack))
            self._stack.append(name)

        return hook

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        """A forward hook: the module's output nodes are its own; it leaves the stack of running modules."""
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
        """The modules to credit now: those running, or in a backward those whose forward built the node."""
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
        """Run one operator and book it: by its MAC rule, as a product, or listed; decompose rule-less composites."""
        kwargs = kwargs or {}
        packet = func._overloadpacket
        rule = MAC_RULES.get(packet)
        if rule is None and packet not in PRODUCT_RULES and packet not in OPAQUE and _decomposes(func, args, kwargs):
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
        elif packet in PRODUCT_RULES:
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
        """Book an elementwise product (1 FLOP per element until a sum promotes it), or list a scaling."""
        packet = func._overloadpacket
        macs = PRODUCT_RULES[packet](args, kwargs, out)
        if not macs and packet in SCALINGS:
            suffix = BACKWARD_SUFFIX if name.endswith(BACKWARD_SUFFIX) else ""
            self._list(f"{name.removesuffix(suffix)} (scalar){suffix}", SCALAR_SCALING, out)
            return
        if not macs:  # dropout that drops nothing
            self._list(name, op_category(func), out)
            return
        fused = packet in FUSED_PRODUCTS
        self._book(name, macs, 2 * macs if fused else macs, stack, backward)
        if not fused:
            record = _Product(name, stack, macs, backward)
            self._remember(first_output(out), record)

    def _book(self, name: str, macs: int, flops: int, stack: tuple[str, ...], backward: bool) -> None:
        """Add MACs and FLOPs to an operator, to the backward totals if it is one, and to the modules credited."""
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
        """Note that the storage under `t` holds the values of a lone product."""
        key = _storage_key(t)
        if key is not None:
            self._products[key[0].cdata] = (key[0], record)

    def _recall(self, t: Any) -> _Product | None:
        """The lone product whose values the storage under `t` holds, if it is still alive."""
        if not isinstance(t, torch.Tensor):
            return None
        key = _storage_key(t)
        hit = self._products.get(key[0].cdata) if key is not None else None
        return hit[1] if hit is not None and not hit[0].expired() else None

    def _follow(self, func: Any, packet: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Promote products that a sum consumes; pass a product's storage on through copies; forget overwrites."""
        for t in summed_inputs(packet, args, kwargs, out):
            record = self._recall(t)
            if record is not None and not record.promoted:
                self._promote(record)
        if packet in PRODUCT_RULES:
            return
        outputs = _tensors(out)
        written = {_cdata(t) for t in outputs} - {None}
        sources = [t for t in _tensors((args, kwargs)) if _cdata(t) not in written]
        if op_category(func) in (MOVEMENT, VIEW):
            record = next((r for t in sources if (r := self._recall(t)) is not None), None)
            if record is not None:
                for t in outputs:
                    self._remember(t, record)
                return
        if func._schema.is_mutable:  # an in-place op that is not a copy of a product overwrote the values
            for cdata in written:
                self._products.pop(cdata, None)

    def _list(self, name: str, category: str, out: Any) -> None:
        """Count a call of an uncounted operator and its output elements under its category."""
        entry = self.uncounted.setdefault(name, [0, 0, category])
        entry[0] += 1
        entry[1] += sum(t.numel() for t in _tensors(out))

    def _track(self, out: Any) -> None:
        """Update the live-bytes estimate after an operator."""
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
    """True when the dispatcher would run `func`'s CompositeImplicitAutograd decomposition on these tensors."""
    # An operator with a kernel of its own for the device (silu_backward has a CPU and a Meta kernel besides its
    # math decomposition) runs that kernel, so its decomposition's products are not what happens.
    if not func.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd):
        return False
    tensor = next(iter(_tensors((args, kwargs))), None)
    key = _BACKEND_KEYS.get(tensor.device.type) if tensor is not None else None
    return key is None or not func.has_kernel_for_dispatch_key(key)


def _in_backward() -> bool:
    """True while autograd's engine runs a backward pass on this thread."""
    return torch._C._current_graph_task_id() != -1


def _run(module: nn.Module, shape: tuple[int, ...], device: str, counter: DispatchCounter) -> None:
    """Count one forward of a prepared module (on `device`, in eval mode) under inference mode."""
    x = make_input(shape, device, module_dtype(module))
    counter.attach(module)
    counter.exclude(x)
    try:
        with torch.inference_mode(), counter:
            out = module(x)
        counter.note_output(out)
    finally:
        counter.detach()


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with t's shape, dtype and unit last stride that holds one row: enough to choose a kernel."""
    row = torch.empty((1,) * (t.dim() - 1) + (t.shape[-1],), dtype=t.dtype)
    return row.expand(t.shape)


@contextlib.contextmanager
def cpu_attention_choice() -> Iterator[None]:
    """While open, F.scaled_dot_product_attention on meta tensors runs the fused kernel a CPU run would choose."""
    # The meta device makes PyTorch pick the math path, whose backward differs from the CPU flash kernel's (no
    # recompute of the scores). Where the CPU would take its flash kernel, the call goes to that kernel directly
    # (it has meta and autograd support); every other call runs unchanged. The function is swapped in
    # torch.nn.functional (a TorchFunctionMode cannot see the call inside nn.MultiheadAttention, whose functional
    # wrapper handles modes itself); code that imported the function by name before keeps the original, and
    # grouped-query attention is left to PyTorch (math on meta).
    original = F.scaled_dot_product_attention

    def attend(*args: Any, **kwargs: Any) -> torch.Tensor:
        """F.scaled_dot_product_attention, sent to the CPU flash kernel where a CPU run would take it."""
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
            counter.note_output(out)
            loss = scalar_loss(out)  # outside the count: the loss is not the module's work
            with counter:
                loss.backward()
    finally:
        counter.detach()


_RUNS: dict[str, Callable[[nn.Module, tuple[int, ...], str, DispatchCounter], None]] = {
    "infer": _run,
    "train": _run_train,
}


def _report(counter: DispatchCounter, shape: tuple[int, ...], where: str, mode: str) -> MacReport:
    """The report of a finished count (its duration is set by count_dispatch)."""
    return MacReport(
        counter="attnbench",
        macs=counter.total,
        by_op=dict(counter.by_op),
        by_module=dict(counter.by_module),
        uncounted=counter.uncounted_ops(),
        device=where,
        status="ok",
        peak_live_bytes_estimate=counter.peak_live_bytes,
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
        output_shapes=counter.output_shapes,
        first_output_shape=counter.first_output_shape,
    )


def count_dispatch(
    module: nn.Module,
    input_shape: Sequence[int],
    device: str = DEFAULT_DEVICE,
    cpu_limit_bytes: int = CPU_FALLBACK_LIMIT_BYTES,
    mode: str = "infer",
) -> MacReport:
    """MACs and FLOPs of one forward (mode "infer") or one training step (mode "train"), counted at dispatch level."""
    shape = check_shape(input_shape)
    check_mode(mode)
    start = time.perf_counter()
    target = str(device)
    # The user's module is never modified: a module already on meta is counted in place for inference (its
    # train/eval modes restored after); any other count, and training always, runs on a copy, so no gradient
    # lands on the user's parameters.
    in_place = mode == "infer" and target == "meta" and on_meta(module)
    modes = {m: m.training for m in module.modules()}
    try:
        report = _count(module, shape, target, mode, cpu_limit_bytes, in_place)
    except InvalidCaseError:
        raise
    except Exception as exc:
        report = replace(unavailable("attnbench", short_reason(exc), shape, target, "failed"), mode=mode)
    finally:
        if in_place:
            for m, training in modes.items():
                m.train(training)
    return replace(report, seconds=time.perf_counter() - start)


def _count(
    module: nn.Module, shape: tuple[int, ...], target: str, mode: str, cpu_limit_bytes: int, in_place: bool
) -> MacReport:
    """One count on `target`; if meta fails, the count again on the CPU when the case fits in `cpu_limit_bytes`."""
    run = _RUNS[mode]
    work = module.eval() if in_place else copy_to(module, target)
    counter = DispatchCounter()
    try:
        run(work, shape, target, counter)
        return _report(counter, shape, target, mode)
    except InvalidCaseError:
        raise
    except Exception as exc:
        if target != "meta":
            raise
        first = short_reason(exc, 120)
    # What a CPU run holds at least: the activations seen before meta failed, the input and the weights.
    need = counter.peak_live_bytes + tensor_bytes(module, shape, module_dtype(module))
    if need > cpu_limit_bytes:
        reason = (
            f"meta failed ({first}); a CPU run needs more than {need / 2**30:.1f} GiB "
            f"(limit {cpu_limit_bytes / 2**30:.1f} GiB)"
        )
        return replace(unavailable("attnbench", reason, shape, "meta"), mode=mode)
    counter = DispatchCounter()
    run(copy_to(module, "cpu"), shape, "cpu", counter)
    return _report(counter, shape, f"cpu (meta failed: {first})", mode)
