"""fvcore's FlopCountAnalysis as a MAC counter, with what it could not count listed as uncounted.

fvcore calls one fused multiply-add a "flop"; that is one MAC in attnbench's convention (one multiply-add =
1 MAC = 2 FLOPs), so its totals are taken as MACs unchanged, and its FLOPs are 2 x its MACs (every operator it
counts is charged as multiply-adds). It counts a forward only: a training step is "unavailable".

fvcore traces the module with torch.jit and has rules for conv, matmul, linear, einsum, bmm and addmm, but
also charges norms, upsampling and adaptive average pooling (which attnbench does not count as MACs); it has
no rule for scaled-dot-product attention or elementwise products, which it reports through unsupported_ops()
(listed here), and it silently ignores a fixed set of view and creation ops. Tracing on meta fails for
convolutions in current torch, so such modules are counted on the CPU when their activations fit in memory
(see attnbench.counting.fallback).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from attnbench.counting.base import DEFAULT_DEVICE, MacReport, UncountedOp, check_shape, doubled, unavailable
from attnbench.counting.fallback import Policy, run_meta_first

#: fvcore rules for operators that attnbench does not count as MACs (their share is noted in the report).
NON_MAC_RULES = ("batch_norm", "group_norm", "layer_norm", "instance_norm", "upsample_nearest2d",
                 "upsample_bilinear2d", "adaptive_avg_pool2d", "grid_sampler")  # fmt: skip


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence fvcore's log lines, tracer warnings and anything printed while tracing."""
    loggers = [logging.getLogger(name) for name in ("fvcore", "fvcore.nn.jit_analysis")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _body(module: nn.Module, x: torch.Tensor, device: str) -> MacReport:
    """fvcore's count of one forward of the module (a copy, or the module itself on its device), as a report."""
    from fvcore.nn import FlopCountAnalysis  # slow to import, maybe missing: only when this counter runs

    with quiet(), torch.no_grad():
        analysis = FlopCountAnalysis(module, (x,))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = int(analysis.total())
        by_op = {op: int(n) for op, n in analysis.by_operator().items() if n}
        nested = {name: int(n) for name, n in analysis.by_module().items() if name}
        unsupported = dict(analysis.unsupported_ops())
    children = [name for name, _ in module.named_children()]
    by_module = {name: nested.get(name, 0) for name in children}
    rest = total - sum(by_module.values())
    if rest:
        by_module["(self)"] = rest
    uncounted = {op: UncountedOp(int(calls), 0, "unsupported by fvcore") for op, calls in unsupported.items()}
    extra = {op: n for op, n in by_op.items() if op in NON_MAC_RULES}
    note = ""
    if extra:
        listed = ", ".join(f"{op} {n:,}" for op, n in extra.items())
        note = f"includes fvcore charges for ops attnbench does not count as MACs: {listed}"
    return MacReport(
        "fvcore", total, by_op, by_module, uncounted, device=device, reason=note,
        input_shape=tuple(x.shape), by_module_nested=nested, flops=2 * total, flops_by_op=doubled(by_op),
        flops_by_module=doubled(by_module), flops_by_module_nested=doubled(nested),
    )  # fmt: skip


def count_fvcore(
    module: nn.Module,
    input_shape: Sequence[int],
    device: str = DEFAULT_DEVICE,
    activation_bytes: int | None = None,
) -> MacReport:
    """MACs of `module` per fvcore (on a copy; meta first, CPU fallback only if it fits in memory)."""
    shape = check_shape(input_shape)
    try:
        import fvcore.nn  # noqa: F401
    except ImportError as exc:
        return unavailable("fvcore", f"fvcore is not installed ({exc}); pip install fvcore", shape, device)
    return run_meta_first("fvcore", _body, module, shape, device, activation_bytes, policy=POLICY)


#: Why fvcore goes straight to the CPU for a module with a convolution (its failed meta attempt cost 0.6-0.8 s on
#: SMT-S, measured with benchmarks/counting_backbone.py).
CONV_ON_META = "fvcore cannot trace a convolution on meta"


def meta_refusal(module: nn.Module) -> str | None:
    """Why fvcore cannot count this module on the meta device, known without trying (None: try it).

    fvcore traces with torch.jit, and under the tracer the meta kernel of a convolution checks its output shape
    with traced tensors (torch._check raises "cond must be a bool, but got a Tensor"): every convolution fails.
    """
    return CONV_ON_META if any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules()) else None


#: fvcore only traces the module (its hooks are removed after, and put back by run_meta_first on a failure): a
#: module already on the CPU is counted without a copy of its weights (0.4-0.7 s on a 22 M-parameter backbone).
POLICY = Policy(meta_refusal=meta_refusal, reads_only=True)
