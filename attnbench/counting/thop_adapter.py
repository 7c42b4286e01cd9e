"""ultralytics-thop's profile() as a MAC counter (thop already reports MACs: one multiply-add each).

Its FLOPs are 2 x its MACs: every operator it charges is charged as multiply-adds. It counts a forward only:
a training step is "unavailable".

thop counts through forward hooks on known layer types (conv, linear, norms, pools, softmax modules,
nn.MultiheadAttention) plus, in ultralytics-thop 2.x, functional matmul / bmm / einsum / linear / sdpa
calls made outside a counted layer. It charges norms, softmax and average pooling (attnbench does not count
those as MACs) and nothing for elementwise products or activations. It writes buffers and hooks onto the
modules it profiles and removes them after: a module already on the CPU is counted there as it is (anything it
leaves on a failure is removed), any other on a copy. Leaf modules for which thop has no rule are listed as
uncounted (calls = how many such modules, elements unknown = 0).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from attnbench.counting.base import DEFAULT_DEVICE, MacReport, UncountedOp, check_shape, doubled, unavailable
from attnbench.counting.fallback import Policy, run_meta_first

#: thop rules for layers that attnbench does not count as MACs.
NON_MAC_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Softmax, nn.LogSoftmax, nn.Softmin,
    nn.Softmax2d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.Upsample, nn.PReLU,
)  # fmt: skip


def _rule_less_leaves(module: nn.Module) -> dict[str, UncountedOp]:
    """Leaf module types thop has no rule for, with how many of each: what it silently counts as zero."""
    from thop.profile import register_hooks  # slow to import, maybe missing

    found: dict[str, int] = {}
    for sub in module.modules():
        if next(sub.children(), None) is not None:
            continue
        if not any(t in register_hooks for t in type(sub).__mro__):
            found[type(sub).__name__] = found.get(type(sub).__name__, 0) + 1
    return {name: UncountedOp(n, 0, "no thop rule (leaf module)") for name, n in found.items()}


def _body(module: nn.Module, x: torch.Tensor, device: str) -> MacReport:
    """thop's count of one forward of a module copy, as a report (run by run_meta_first)."""
    from thop import profile  # slow to import, maybe missing: only when this counter runs

    logger = logging.getLogger("thop")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            total, _params, layers = profile(module, inputs=(x,), verbose=False, ret_layer_info=True)
    finally:
        logger.setLevel(level)
    macs = round(total)
    by_module = {name: round(info[0]) for name, info in layers.items()}
    rest = macs - sum(by_module.values())
    if rest:
        # thop books functional products (matmul, sdpa...) and the root's own layers on no module.
        by_module["(self)"] = rest
    non_mac = sum(1 for m in module.modules() if isinstance(m, NON_MAC_LAYERS))
    note = f"includes thop charges for {non_mac} norm/softmax/pool layer(s) attnbench does not count" if non_mac else ""
    return MacReport(
        "thop", macs, {}, by_module, _rule_less_leaves(module), device=device, reason=note,
        input_shape=tuple(x.shape), flops=2 * macs, flops_by_module=doubled(by_module),
    )  # fmt: skip


def count_thop(
    module: nn.Module,
    input_shape: Sequence[int],
    device: str = DEFAULT_DEVICE,
    activation_bytes: int | None = None,
) -> MacReport:
    """MACs of `module` per ultralytics-thop (on a deep copy; meta first, CPU fallback only if it fits)."""
    shape = check_shape(input_shape)
    try:
        import thop  # noqa: F401
    except ImportError as exc:
        return unavailable("thop", f"thop is not installed ({exc}); pip install ultralytics-thop", shape, device)
    return run_meta_first("thop", _body, module, shape, device, activation_bytes, policy=POLICY)


#: thop adds buffers and hooks to the modules it profiles and removes them (run_meta_first's `untouched` puts back
#: anything left on a failure): a module whose weights live on the CPU is counted there as it is, no copy.
POLICY = Policy(reads_only=True, own_device=True)
