"""The meta-first policy shared by the third-party counters: meta, else the CPU if it fits, else no number."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from attnbench.counting.base import (
    CPU_FALLBACK_LIMIT_BYTES,
    MacReport,
    copy_to,
    make_input,
    module_dtype,
    short_reason,
    tensor_bytes,
    unavailable,
)
from attnbench.counting.dispatch import count_dispatch
from attnbench.errors import InvalidCaseError

#: A counter body: (module copy in eval mode, input tensor, device label) -> report.
CounterBody = Callable[[nn.Module, torch.Tensor, str], MacReport]


@dataclass(frozen=True)
class Policy:
    """What a counter needs of run_meta_first beyond "meta first, then the CPU if it fits"."""

    #: Why the counter cannot run this module on meta, known without trying (its attempt would only cost time):
    #: the CPU is then tried at once, with that reason. None: try meta.
    meta_refusal: Callable[[nn.Module], str | None] | None = None
    #: The counter leaves the module as it found it once `untouched` puts back its hooks, buffers and train/eval
    #: modes (fvcore traces it; thop adds buffers and hooks and removes them): a module whose weights already live
    #: on the device is counted as it is, without a copy.
    reads_only: bool = False
    #: Count a module whose weights live on the CPU there first, as it is, when the case fits: the CPU's kernels
    #: are faster than the meta device's Python reference kernels (thop on SMT-S: 0.56 s against 0.95 s with the
    #: copy to meta, benchmarks/counting_backbone.py), and no copy is made.
    own_device: bool = False


DEFAULT_POLICY = Policy()
#: Where a counter ran that counted a CPU module on the CPU as it is (Policy.own_device).
OWN_DEVICE = "cpu (the module's own device, counted as it is)"


def _lives_on(module: nn.Module, device: str) -> bool:
    """True when every parameter and buffer of `module` is a real tensor on `device` (and it has some)."""
    tensors = [*module.parameters(), *module.buffers()]
    return bool(tensors) and all(t.device.type == device and not t.is_meta for t in tensors)


@contextlib.contextmanager
def untouched(module: nn.Module) -> Iterator[None]:
    """Give the module back as it came: its train/eval modes, and no hook or buffer a counter left behind."""
    modes = {m: m.training for m in module.modules()}
    kept = {m: (set(m._forward_pre_hooks), set(m._forward_hooks), set(m._buffers)) for m in module.modules()}
    try:
        yield
    finally:
        for m, (pre, post, buffers) in kept.items():
            for table, before in ((m._forward_pre_hooks, pre), (m._forward_hooks, post), (m._buffers, buffers)):
                for key in set(table) - before:
                    del table[key]
        for m, training in modes.items():
            m.train(training)


def estimate_activation_bytes(module: nn.Module, shape: Sequence[int]) -> int | None:
    """Peak live activation bytes from the attnbench counter on meta (None when it cannot tell)."""

    report = count_dispatch(module, shape, "meta")
    return report.peak_live_bytes_estimate if report.ok else None


def run_meta_first(
    counter: str,
    body: CounterBody,
    module: nn.Module,
    shape: tuple[int, ...],
    device: str,
    activation_bytes: int | None,
    limit_bytes: int = CPU_FALLBACK_LIMIT_BYTES,
    policy: Policy = DEFAULT_POLICY,
) -> MacReport:
    """Run `body` on a copy of `module` on `device`; if meta fails, on the CPU when the case fits in memory.

    `activation_bytes` is the caller's estimate of peak activations (from the attnbench counter); when it is
    None it is estimated here. `policy` says what the counter needs beyond that (see Policy). Errors become a
    report with a status and reason, InvalidCaseError excepted.
    """
    start = time.perf_counter()
    dtype = module_dtype(module)

    def attempt(where: str, label: str) -> MacReport:
        if policy.reads_only and _lives_on(module, where):
            with untouched(module):  # counted as it is: no copy of its weights
                report = body(module.eval(), make_input(shape, where, dtype), label)
        else:
            report = body(copy_to(module, where), make_input(shape, where, dtype), label)
        return _timed(report, time.perf_counter() - start)

    own = policy.own_device and device == "meta" and _lives_on(module, "cpu") and activation_bytes is not None
    if own and activation_bytes + tensor_bytes(module, shape, dtype) <= limit_bytes:
        with contextlib.suppress(Exception):  # a failure here leaves the usual meta-first path to decide
            return attempt("cpu", OWN_DEVICE)
    refused = policy.meta_refusal(module) if policy.meta_refusal is not None and device == "meta" else None
    try:
        if refused:
            raise RuntimeError(refused)
        return attempt(device, device)
    except InvalidCaseError:
        raise
    except Exception as exc:
        first = refused or short_reason(exc, 120)
        if device != "meta":
            return _timed(unavailable(counter, first, shape, device, "failed"), time.perf_counter() - start)
    too_big = _cpu_refusal(module, shape, first, activation_bytes, limit_bytes)
    if too_big:
        return _timed(unavailable(counter, too_big, shape, "meta"), time.perf_counter() - start)
    try:
        return attempt("cpu", f"cpu (meta failed: {first})")
    except InvalidCaseError:
        raise
    except Exception as exc:
        reason = f"meta failed ({first}); cpu failed ({short_reason(exc)})"
        return _timed(unavailable(counter, reason, shape, "cpu", "failed"), time.perf_counter() - start)


def _cpu_refusal(
    module: nn.Module, shape: tuple[int, ...], first: str, activation_bytes: int | None, limit_bytes: int
) -> str | None:
    """Why the CPU fallback after meta's failure `first` is not tried (None: it fits in `limit_bytes`)."""
    if activation_bytes is None:
        activation_bytes = estimate_activation_bytes(module, shape)
    if activation_bytes is None:
        return f"meta failed ({first}) and the activation memory of a CPU run could not be estimated"
    need = activation_bytes + tensor_bytes(module, shape, module_dtype(module))
    if need > limit_bytes:
        return (
            f"meta failed ({first}); a CPU run would need about {need / 2**30:.1f} GiB "
            f"(limit {limit_bytes / 2**30:.1f} GiB)"
        )
    return None


def _timed(report: MacReport, seconds: float) -> MacReport:
    """The report with the time the whole attempt took."""
    return replace(report, seconds=seconds)
