"""The engine (attnbench.counting.dispatch): attribution per module, training steps, the kernel choice that keeps
meta and CPU counts equal, the fallback to the CPU, lone-product promotion, and the peak-live-bytes estimate.

Exact FLOPs: 2 per multiply-add, 1 per lone elementwise product, 2 for a product a sum consumes; checked on small
hand-built forwards, then on every example of every zoo module against FLOPs = 2 x the registry's MAC formula
minus one FLOP per element of each lone product, written here by hand for each module.

Attribution cases come from fvcore ``tests/test_jit_model_analysis.py`` (facebookresearch/fvcore at
3378afe0d71dc2aa95e358bc78dc9b67cb48825a) and backward cases from PyTorch ``test/test_flop_counter.py``
(pytorch/pytorch at 067f1d9d1fec00506e2b6f2bcdb95005e8cbd2ba), re-derived by hand (no code copied); the latter
drive DispatchCounter directly as a mode around their own .backward(), as FlopCounterMode is used.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnbench
from attnbench.counting import CONVENTION, count_macs
from attnbench.counting.base import short_reason
from attnbench.counting.dispatch import DispatchCounter, count_dispatch, cpu_attention_choice
from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import Example, Setting
from tests.conftest import example_id, examples
from tests.counting.helpers import (
    BWD,
    DEVICES,
    NESTED_MACS,
    Fn,
    Gate,
    Mha,
    Nested,
    Two,
    counted,
    flops_of,
    macs_flops,
    square,
    train,
)


# --- attribution per module -------------------------------------------------------------------------------
def test_by_module_attribution() -> None:
    report = count_macs(Two(), (1, 3, 5, 5))
    assert dict(report.by_module) == {"conv": 4 * 25 * 3, "head": 25 * 4 * 6, "(self)": 25 * 6 * 2}
    assert report.by_module_nested["head.0"] == 600
    assert report.macs == sum(report.by_module.values()) == 300 + 600 + 300
    assert report.flops == 2 * report.macs
    assert CONVENTION in report.format()


@pytest.mark.parametrize("device", DEVICES)
def test_fvcore_nested_by_module(device: str) -> None:
    report = counted(Nested(), (1, 4, 5), device)
    assert dict(report.by_module_nested) == NESTED_MACS
    assert report.macs == 240 + 200 + 120
    assert dict(report.by_module) == {"conv": 240, "fc": 200, "submod": 120}
    # what fvcore lists as unsupported here: the scalar 3 * y, + 1 and ** 2
    assert {"aten.mul (scalar)", "aten.add", "aten.pow"} <= set(report.uncounted)


class Unused(nn.Module):
    """fvcore's UnusedNet: one linear is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.unused = nn.Linear(10, 10), nn.Linear(10, 1), nn.Linear(20, 20)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def test_fvcore_unused_module_counts_nothing() -> None:
    report = counted(Unused(), (1, 10))
    assert report.macs == 100 + 10
    assert "unused" not in report.by_module_nested


class Repeated(nn.Module):
    """fvcore's RepeatedNet: fc1 called three times, fc2 twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 10), nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.fc1(x)
        for _ in range(2):
            x = self.fc2(x)
        return x


@pytest.mark.parametrize("device", DEVICES)
def test_fvcore_repeated_submodule_counted_each_call(device: str) -> None:
    report = counted(Repeated(), (1, 10), device)
    assert dict(report.by_module_nested) == {"fc1": 300, "fc2": 200}
    assert report.counted_calls["aten.linear"] == 5
    assert report.macs == 500


class Helper(nn.Module):
    """fvcore's NonForwardInnerModule: its linear runs from a method other than forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def other(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class NonForward(nn.Module):
    """fvcore's NonForwardNet: the root calls the submodule's helper, never its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.submod = Helper()
        self.fc = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.submod.other(self.fc(x))


def test_fvcore_non_forward_call_goes_to_its_owner() -> None:
    # As fvcore's ancestor_mode="owner": the helper's linear counts for `submod` although its forward never ran.
    report = counted(NonForward(), (1, 10))
    assert dict(report.by_module_nested) == {"fc": 100, "submod": 10, "submod.fc": 10}
    assert dict(report.by_module) == {"fc": 100, "submod": 10}


class Deep(nn.Module):
    """The root calls a module three levels down directly, past its parents' forward (they have none)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Module()
        self.a.b = nn.Module()
        self.a.b.c = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a.b.c(x)


def test_a_deep_module_called_past_its_parents_counts_for_each_of_them() -> None:
    report = counted(Deep(), (3, 4))  # 3 x 4 x 2 MACs
    assert dict(report.by_module) == {"a": 24}
    assert dict(report.by_module_nested) == {"a": 24, "a.b": 24, "a.b.c": 24}


class Holder(nn.Module):
    """fvcore's SharedInnerModule: wraps a module it may share."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.submod = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.submod(x)


class Shared(nn.Module):
    """fvcore's SharedModuleNet: one linear inside two holders, another under two names."""

    def __init__(self) -> None:
        super().__init__()
        inner = nn.Linear(10, 10)
        self.submod1, self.submod2 = Holder(inner), Holder(inner)
        multiname = nn.Linear(10, 1)
        self.multiname1, self.multiname2 = multiname, multiname

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.submod1(x) + self.submod2(x)
        return self.multiname1(x) + self.multiname2(x)


def test_fvcore_shared_module_booked_under_its_first_name() -> None:
    # fvcore's expectations in ancestor_mode="caller": a module object has one (first) name; each holder is
    # charged for the call it made.
    report = counted(Shared(), (1, 10))
    assert dict(report.by_module_nested) == {"submod1": 100, "submod1.submod": 200, "submod2": 100, "multiname1": 20}
    assert report.macs == 220
    # top-level attribution goes to the outermost running module, so the parts still sum to the total
    assert dict(report.by_module) == {"submod1": 100, "submod2": 100, "multiname1": 20}


class Recursive(nn.Module):
    """fvcore's RecursiveScopeNet: the root calls itself three times before its linear runs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor, count: int = 3) -> torch.Tensor:
        return self(x, count - 1) if count > 0 else self.fc(x)


def test_fvcore_recursive_scope_counted_once() -> None:
    report = counted(Recursive(), (1, 10))
    assert report.macs == 10
    assert dict(report.by_module_nested) == {"fc": 10}


def test_fvcore_data_parallel_wrapper_prefixes_names() -> None:
    # nn.DataParallel without a GPU calls the wrapped module directly; names gain the "module." prefix.
    report = counted(nn.DataParallel(Nested()), (1, 4, 5), "cpu")
    assert dict(report.by_module_nested) == {"module": 560} | {f"module.{k}": v for k, v in NESTED_MACS.items()}


def test_torch_scripted_function_counts_as_eager() -> None:
    # The dispatcher sees a TorchScript function's operators as it sees eager ones (fvcore cannot, below).
    eager = counted(Fn(square), (5, 5), "cpu")
    script = counted(Fn(torch.jit.script(square)), (5, 5), "cpu")
    assert script.macs == eager.macs == 125


# --- lone products and the sums that promote them -------------------------------------------------------------
SHAPE = (2, 3, 4, 5)  # 120 elements


N = 120


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_summed_product_is_a_multiply_add(device: str) -> None:
    assert macs_flops(lambda x: (x * x).sum(-1), SHAPE, device) == (N, 2 * N)
    assert macs_flops(lambda x: (x * x).mean(1), SHAPE, device) == (N, 2 * N)
    assert macs_flops(lambda x: torch.addcmul(x, x, x), SHAPE, device) == (N, 2 * N)  # adds as it multiplies


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_sum_seen_through_views_copies_and_in_place_products(device: str) -> None:
    assert macs_flops(lambda x: (x * x).view(6, 20).sum(1), SHAPE, device) == (N, 2 * N)
    assert macs_flops(lambda x: (x * x).transpose(0, 3).contiguous().sum(0), SHAPE, device) == (N, 2 * N)
    assert macs_flops(lambda x: (x * x).permute(3, 2, 1, 0).reshape(-1, 6).sum(0), SHAPE, device) == (N, 2 * N)
    assert macs_flops(lambda x: x.clone().mul_(x).sum(), SHAPE, device) == (N, 2 * N)


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_what_does_not_make_a_multiply_add(device: str) -> None:
    # an addition in between: the sum adds the added values, not the products
    assert macs_flops(lambda x: ((x * x) + 1).sum(), SHAPE, device) == (N, N)
    # overwritten in place before the sum
    assert macs_flops(lambda x: (x * x).add_(1).sum(), SHAPE, device) == (N, N)
    # a "sum" over a dim of size 1 adds nothing
    assert macs_flops(lambda x: (x * x).unsqueeze(0).sum(0), SHAPE, device) == (N, N)
    # a sum of a plain tensor is not a FLOP at all; a scalar scaling is neither MAC nor FLOP
    assert macs_flops(lambda x: (x * 3.0).sum(), SHAPE, device) == (0, 0)


def test_product_promoted_once_however_often_summed() -> None:
    def twice(x: torch.Tensor) -> torch.Tensor:
        y = x * x
        return y.sum(0) + y.sum(1).sum()

    assert macs_flops(twice, SHAPE) == (N, 2 * N)


class GateAndPool(nn.Module):
    """A lone gate in one child, a summed product in another: per-module FLOPs keep them apart."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 3, 1)
        self.gate = Fn(lambda x: x * torch.sigmoid(x))
        self.pool = Fn(lambda x: (x * x).sum((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a (2, 3) product in the root: 6 lone FLOPs (a y.mean() here would sum the gate's products)
        return self.pool(self.gate(self.proj(x))) * self.proj.bias


def test_flops_by_module_and_op() -> None:
    report = count_macs(GateAndPool(), (2, 3, 4, 4))
    proj = 2 * 3 * 16 * 3
    assert dict(report.by_module) == {"proj": proj, "gate": 96, "pool": 96, "(self)": 6}
    assert dict(report.flops_by_module) == {"proj": 2 * proj, "gate": 96, "pool": 192, "(self)": 6}
    assert dict(report.flops_by_module_nested) == {"proj": 2 * proj, "gate": 96, "pool": 192}
    assert report.flops_by_op["aten.mul"] == 96 + 192 + 6
    assert report.flops == 2 * proj + 96 + 192 + 6
    assert report.forward_flops == report.flops and report.backward_flops == 0


def test_gate_gradient_summed_by_a_bias_gradient_is_a_multiply_add() -> None:
    # With biases, each gate gradient is summed over the rows for its bias's gradient: multiply-adds.
    rows, p = 4, 4 * 6
    report = train(Gate(bias=True), (rows, 6))
    assert report.flops_by_op[f"aten.mul{BWD}"] == 2 * 2 * p
    assert report.flops_by_op["aten.mul"] == p  # the forward gate stays lone
    # The promotion is backward work too: two operand gradients per linear (2 x 2 x lin MACs), the gates'.
    lin = rows * 6 * 6
    assert (report.backward_macs, report.backward_flops) == (4 * lin + 2 * p, 8 * lin + 4 * p)


def test_conv_bias_gradient_sums_a_gate_gradient_too() -> None:
    # convolution_backward sums grad_output for grad_bias inside its kernel: the same multiply-add as above
    class ConvGate(nn.Module):
        def __init__(self, bias: bool) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.conv(x)

    p = 2 * 3 * 16
    with_bias, without = train(ConvGate(True), (2, 3, 4, 4)), train(ConvGate(False), (2, 3, 4, 4))
    assert with_bias.macs == without.macs
    assert with_bias.flops_by_op[f"aten.mul{BWD}"] == 3 * p  # grad * conv(x) lone, grad * x summed
    assert without.flops_by_op[f"aten.mul{BWD}"] == 2 * p


def test_broadcast_gate_gradient_is_summed_back() -> None:
    # SE-style x * s with s (B, C, 1, 1): the gradient of s is (grad * x) summed over H, W
    def se(x: torch.Tensor) -> torch.Tensor:
        return x * x.mean((2, 3), keepdim=True).sigmoid()

    model = nn.Module()
    model.forward = se  # type: ignore[method-assign]
    report = train(model, (2, 3, 4, 4))
    n = 2 * 3 * 16
    assert report.by_op == {"aten.mul": n, f"aten.mul{BWD}": 2 * n}
    assert report.flops_by_op[f"aten.mul{BWD}"] == n + 2 * n


# --- training steps: backward booked and attributed ----------------------------------------------------------
def test_backward_attributed_to_the_module_that_ran_forward() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    report = train(model, (2, 8))
    first, second = 2 * 8 * 16, 2 * 16 * 4
    assert dict(report.by_module) == {"0": 3 * first, "2": 3 * second}
    assert dict(report.by_module_nested) == {"0": 3 * first, "2": 3 * second}
    assert report.uncounted[f"aten.threshold_backward{BWD}"].category == "activation"


class TwoReads(nn.Module):
    """Reads its input twice in its own forward: x @ w1 + x @ w2."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Parameter(torch.ones(4, 3)), nn.Parameter(torch.ones(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w1 + x @ self.w2


def test_backward_of_a_module_that_reads_its_input_twice_is_all_its_own() -> None:
    # Walking back from its output, the module meets its input (its caller's) between its two products: both
    # products' gradients are still its own. Each product 2 x 4 x 3 MACs forward, two operand gradients backward.
    report = train(nn.Sequential(TwoReads()), (2, 4))
    mm = 2 * 4 * 3
    assert dict(report.by_module) == {"0": 3 * 2 * mm}
    assert (report.macs, report.backward_macs) == (6 * mm, 4 * mm)
    # Six products booked in one module: its FLOPs add up (2 per MAC), at the top level and nested.
    assert dict(report.flops_by_module) == dict(report.flops_by_module_nested) == {"0": 2 * 6 * mm}


class Squares(nn.Module):
    """PyTorch test_pytrees' Foo: an in-place relu of a dict entry, then its square as a matrix."""

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        y = x["a"].relu_()
        return {"a": torch.mm(y, y)}


class TwoSquares(nn.Module):
    """PyTorch test_pytrees' Mod: two Foo in a row, through dict inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Squares(), Squares()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a({"a": x.clone()}))["a"]


def test_torch_pytrees_attributed_per_submodule() -> None:
    # PyTorch: mm FLOPs under "Mod" = 12000 for a (10, 10) input; each Foo: 1000 MACs forward, two operand
    # gradients of 1000 each backward.
    report = train(TwoSquares(), (10, 10))
    assert report.flops == 12000
    assert dict(report.by_module_nested) == {"a": 3000, "b": 3000}


def test_tuple_output_summed_into_the_loss() -> None:
    class Tupled(nn.Module):  # PyTorch test_pytrees' Mod2: a tuple output
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (torch.mm(x, x),)

    assert train(Tupled(), (10, 10)).flops == 6000


def test_train_count_leaves_the_module_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert train(model, (3, 4)).ok
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats too


def test_in_place_op_on_the_input_is_allowed() -> None:
    # inside a network a module's input is an activation, so x.relu_() on it is legal
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.relu_())

    assert train(InPlace(), (2, 4)).macs == 3 * 2 * 4 * 4


def test_activation_backward_kernels_are_not_decomposed() -> None:
    # silu_backward has CPU and Meta kernels besides a math decomposition: the kernel runs, and its arithmetic
    # is an activation's (listed), not products
    for act in (nn.SiLU(), nn.GELU()):
        report = train(nn.Sequential(nn.Linear(4, 4), act), (2, 4))
        assert report.macs == 3 * 2 * 4 * 4, type(act).__name__
        name = f"aten.{type(act).__name__.lower()}_backward{BWD}"
        assert report.uncounted[name].category == "activation"


def test_mish_backward_decomposed_on_meta_only() -> None:
    # The one aten operator with a CPU kernel, a math decomposition and no C++ meta kernel: on meta autograd
    # decomposes it before the counter sees it, and its products are counted (a documented limit): per element
    # grad * (tsp + x * sigmoid * (1 - tsp * tsp)), tsp = tanh(softplus(x)): four tensor products.
    model = nn.Sequential(nn.Linear(4, 4), nn.Mish())
    cpu, meta = train(model, (2, 4), "cpu"), train(model, (2, 4))
    assert cpu.macs == 3 * 2 * 4 * 4 and "aten.mish_backward (backward)" in cpu.uncounted
    assert meta.by_op[f"aten.mul{BWD}"] == 4 * 2 * 4
    assert meta.macs == cpu.macs + 4 * 2 * 4


def test_output_without_grad_is_a_failed_count() -> None:
    class Detached(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(x, x, x).detach()

    sdpa = F.scaled_dot_product_attention
    report = count_macs(Detached(), (2, 3, 4), mode="train")
    assert report.status == "failed" and "does not require grad" in report.reason
    assert F.scaled_dot_product_attention is sdpa  # the kernel choice for meta is undone on failure too


# --- PyTorch test_flop_counter.py backward cases, with DispatchCounter as the mode ---------------------------
def test_torch_backward_through_expand() -> None:
    def step() -> None:
        a = torch.randn(4, 5, requires_grad=True)
        b = torch.mm(a, torch.randn(5, 6))  # 120 MACs, then grad_a 120
        c = torch.bmm(b.unsqueeze(0).expand(7, 4, 6), torch.randn(7, 6, 7))  # 1176, then grad 1176
        c.sum().backward()

    counter = flops_of(step)
    assert counter.total_flops == 5184 == 2 * (120 + 120 + 1176 + 1176)
    assert counter.backward_macs == 120 + 1176


def test_torch_backward_twice_adds_up() -> None:
    def step() -> None:
        a = torch.randn(4, 5, requires_grad=True)
        for _ in range(2):
            a.mm(a.t()).sum().backward()  # 80 MACs, then one gradient per operand: 160

    assert flops_of(step).total_flops == 960


def test_torch_custom_autograd_function() -> None:
    class SquareTwice(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            return torch.mm(x, x)

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            return torch.mm(grad, grad) + torch.mm(grad, grad)

    def step() -> None:
        SquareTwice.apply(torch.randn(5, 5, requires_grad=True)).sum().backward()

    assert flops_of(step).total_flops == 750  # three 5x5 products of 125 MACs


# --- meta and the CPU agree ----------------------------------------------------------------------------------
def test_cpu_attention_choice_sends_meta_calls_to_the_cpu_kernel() -> None:
    # Alone, PyTorch takes the math path on meta (two bmm). While the choice is open, a call the CPU would run on
    # its flash kernel goes to that kernel; one it would not (with dropout) still runs the math path, mask too.
    q = torch.empty(2, 3, 5, 8, device="meta")
    scores = 2 * 3 * 5 * 5
    original = F.scaled_dot_product_attention
    with DispatchCounter() as alone:
        F.scaled_dot_product_attention(q, q, q)
    with cpu_attention_choice(), DispatchCounter() as chosen:
        F.scaled_dot_product_attention(q, q, q)
    with cpu_attention_choice(), DispatchCounter() as dropped:
        F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
    assert F.scaled_dot_product_attention is original
    assert dict(alone.by_op) == {"aten.bmm": scores * 16}
    assert dict(chosen.by_op) == {"aten._scaled_dot_product_flash_attention_for_cpu": scores * 16}
    assert dict(dropped.by_op) == {"aten.bmm": scores * 16, "aten.mul": scores}


class MaskedSdpa(nn.Module):
    """Self-attention with an optional bool or float mask and attention dropout."""

    def __init__(self, dropout: float, mask: str | None) -> None:
        super().__init__()
        self.dropout, self.mask = dropout, mask

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        masks = {
            "bool": lambda: torch.ones(n, n, dtype=torch.bool, device=q.device).tril(),
            "float": lambda: torch.zeros(n, n, device=q.device),
        }
        mask = masks[self.mask]() if self.mask else None
        return F.scaled_dot_product_attention(q, q, q, attn_mask=mask, dropout_p=self.dropout)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_sdpa_train_counts_identical_on_meta_and_cpu(dropout: float, mask: str | None) -> None:
    # the kernel choice (flash without dropout, math with it), the bool-mask conversion and every listed op
    module, shape = MaskedSdpa(dropout, mask), (2, 3, 5, 8)
    meta, cpu = train(module, shape), train(module, shape, "cpu")
    assert dict(meta.by_op) == dict(cpu.by_op) and meta.flops == cpu.flops
    assert {k: (u.calls, u.elements) for k, u in meta.uncounted.items()} == {
        k: (u.calls, u.elements) for k, u in cpu.uncounted.items()
    }
    assert meta.peak_live_bytes_estimate == cpu.peak_live_bytes_estimate
    fused = "aten._scaled_dot_product_flash_attention_for_cpu" in meta.by_op
    assert fused == (dropout == 0.0)


@pytest.mark.parametrize("name", ["lka", "van"])
def test_lka_and_van_train_step_is_three_forwards(name: str) -> None:
    # Every conv has grad_input and grad_weight, the gate two backward products: exactly 3 x forward.
    c, side = 64, 32
    module = attnbench.build(name, c, (side, side))
    forward = count_macs(module, (1, c, side, side))
    step = train(module, (1, c, side, side))
    assert forward.macs == get_spec(name).macs_formula(Setting(c, {}, side, side, 1))
    assert step.macs == 3 * forward.macs
    assert step.forward_macs == forward.macs and step.backward_macs == 2 * forward.macs


@pytest.mark.parametrize("name", ["lka", "van", "sk", "epsa"])
def test_zoo_train_counts_agree_on_meta_and_cpu(name: str) -> None:
    ex = get_spec(name).examples[1]
    module = attnbench.build(name, ex.dim, ex.res, **ex.kwargs)
    shape = (ex.batch, ex.dim, *ex.res)
    meta, cpu = train(module, shape), train(module, shape, "cpu")
    assert (meta.macs, meta.flops, dict(meta.by_op)) == (cpu.macs, cpu.flops, dict(cpu.by_op))
    assert meta.peak_live_bytes_estimate == cpu.peak_live_bytes_estimate


# --- fallback to the CPU when meta fails ----------------------------------------------------------------------
def test_meta_failure_falls_back_to_cpu() -> None:
    def data_dependent(x: torch.Tensor) -> torch.Tensor:
        return x * x if x.sum().item() > -1e9 else x  # .item() cannot run on meta

    report = count_macs(Fn(data_dependent), (2, 8))
    assert report.macs == 16
    assert report.device.startswith("cpu (meta failed:")


def test_cpu_fallback_refused_when_too_big() -> None:
    def data_dependent(x: torch.Tensor) -> torch.Tensor:
        return x if x.sum().item() > 0 else -x

    report = count_dispatch(Fn(data_dependent), (2, 8), cpu_limit_bytes=16)
    assert report.status == "unavailable" and "limit" in report.reason


def test_meta_failure_falls_back_to_cpu_in_training() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum().item() > -1e9 else x

    report = count_macs(DataDependent(), (2, 4), mode="train")
    assert report.device.startswith("cpu (meta failed:")
    assert report.macs == 3 * 2 * 4 * 4


class DataDependent(nn.Module):
    """fvcore's TraceWarningNet: a branch on a tensor's value (.item() cannot run on meta)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 1), nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc1(x).item() < 0.0:
            x = self.fc2(x)
        return x + 2


def test_fvcore_data_dependent_branch_counted_on_cpu() -> None:
    model = DataDependent()
    report = count_macs(model, (1, 10))
    assert report.device.startswith("cpu (meta failed:")
    # the fallback runs on a seeded input: take the branch the same way to know what was counted
    x = torch.randn((1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        branch = model.fc1(x).item() < 0.0
    assert report.macs == 10 + (100 if branch else 0)


class MetaRefused(nn.Module):
    """A float64 linear layer whose forward refuses the meta device before any operator runs (nothing live yet)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3).double()
        self.message = message

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_meta:
            raise NotImplementedError(self.message)
        return self.fc(x)


#: What MetaRefused holds on the CPU at batch 2: float64 weights and bias, and the input (nothing ran on meta).
REFUSED_NEED = (4 * 3 + 3) * 8 + 2 * 4 * 8


@pytest.mark.parametrize(("mode", "macs"), [("infer", 2 * 4 * 3), ("train", 3 * 2 * 4 * 3)])
def test_the_cpu_fallback_says_why_meta_failed_and_keeps_the_mode(mode: str, macs: int) -> None:
    long = "no meta kernel for this step " * 8  # 232 characters: cut at 120 in the device
    report = count_dispatch(MetaRefused(long), (2, 4), mode=mode)
    why = short_reason(NotImplementedError(long), 120)
    assert len(why) == 120 and why.startswith("NotImplementedError: no meta kernel")
    # The input is made in the module's dtype (float64): a float32 one would fail on the CPU too.
    assert report.ok and (report.device, report.mode, report.macs) == (f"cpu (meta failed: {why})", mode, macs)


def test_the_cpu_fallback_fits_its_limit_to_the_byte() -> None:
    fits = count_dispatch(MetaRefused("no meta"), (2, 4), cpu_limit_bytes=REFUSED_NEED)
    assert fits.ok and fits.device == "cpu (meta failed: NotImplementedError: no meta)"
    refused = count_dispatch(MetaRefused("no meta"), (2, 4), cpu_limit_bytes=REFUSED_NEED - 1, mode="train")
    assert (refused.counter, refused.status, refused.device, refused.input_shape) == (
        "attnbench",
        "unavailable",
        "meta",
        (2, 4),
    )
    assert (refused.mode, refused.macs) == ("train", None)


def test_a_refused_fallback_gives_both_sizes_in_gib() -> None:
    rows = 3 * 2**30 // (4 * 8)  # a float64 input of 3 GiB, on meta only: no memory is taken
    report = count_dispatch(MetaRefused("no meta"), (rows, 4), cpu_limit_bytes=2**30)
    assert report.reason == (
        "meta failed (NotImplementedError: no meta); a CPU run needs more than 3.0 GiB (limit 1.0 GiB)"
    )


class Recorder(nn.Module):
    """A linear layer that records which module object ran its forward (a class list: copies share it)."""

    seen: ClassVar[list[nn.Module]] = []

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Recorder.seen.append(self)
        return self.fc(x)


def test_a_module_on_meta_is_counted_in_place_for_inference_and_keeps_its_modes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Recorder, "seen", [])
    module = Recorder().to("meta").train()
    module.fc.eval()  # a submodule in another mode than its parent: both are put back
    started = time.perf_counter()
    report = count_dispatch(module, (2, 4), device="meta")
    elapsed = time.perf_counter() - started
    assert report.ok and report.macs == 32 and Recorder.seen == [module]
    assert module.training and not module.fc.training
    assert 0 < report.seconds <= elapsed  # type: ignore[operator]
    # A training step runs on a copy (no gradient lands on the user's parameters), and so does a CPU module.
    assert count_dispatch(module, (2, 4), device="meta", mode="train").ok and Recorder.seen[-1] is not module
    on_cpu = Recorder()
    assert count_dispatch(on_cpu, (2, 4), device="meta").ok and Recorder.seen[-1] is not on_cpu


def test_a_count_that_fails_on_the_cpu_is_a_failed_report_with_its_mode() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken on purpose")

    report = count_dispatch(Fn(broken), (2, 4), device="cpu", mode="train")
    assert (report.counter, report.status, report.device, report.mode, report.input_shape, report.macs) == (
        "attnbench",
        "failed",
        "cpu",
        "train",
        (2, 4),
        None,
    )
    assert report.reason == "RuntimeError: broken on purpose"


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_the_report_gives_the_output_shapes(mode: str) -> None:
    def two(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": x * 2, "rows": x[:1].sum(1, keepdim=True)}

    report = count_dispatch(Fn(two), (2, 4), mode=mode)
    assert (report.output_shapes, report.first_output_shape) == ("y: (2, 4); rows: (1, 1)", (2, 4))
    counter = DispatchCounter()  # nothing noted yet, then an output without tensors
    assert (counter.output_shapes, counter.first_output_shape) == ("", None)
    counter.note_output({"n": 3})
    assert (counter.output_shapes, counter.first_output_shape) == ("", None)


class Around(nn.Module):
    """A linear layer between two matmuls of the root's own (before and after it)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x @ self.w) @ self.w


def test_a_training_step_credits_each_backward_to_the_forward_that_built_it() -> None:
    # Forward: 32 MACs per matmul. Backward: 64 per matmul (the gradients of both operands). The root's nodes
    # feed fc's input and consume its output: fc must not claim the first, nor the root lose the last.
    report = count_dispatch(Around(), (2, 4), mode="train")
    assert dict(report.by_module) == {"(self)": 2 * 32 + 2 * 64, "fc": 32 + 64}


def test_a_nested_module_credits_its_own_work_before_an_inner_one_to_itself() -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.inner = nn.Parameter(torch.randn(4, 4)), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x @ self.w)  # outer's matmul feeds inner: inner must not claim it

    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.outer = Outer()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.outer(x)

    report = count_dispatch(Root(), (2, 4), mode="train")
    assert dict(report.by_module_nested) == {"outer": 2 * (32 + 64), "outer.inner": 32 + 64}


def test_a_counter_built_on_a_module_credits_its_backward_to_the_root() -> None:
    # DispatchCounter(module) hooks the submodules for the forward only: a backward inside the mode runs outside
    # every module's forward, so it is the root's (autograd attribution is asked with attach(autograd=True)).
    module, x = nn.Sequential(nn.Linear(4, 4)), torch.randn(2, 4, requires_grad=True)
    counter = DispatchCounter(module)
    with counter:
        module(x).sum().backward()
    counter.detach()
    assert (dict(counter.by_module), counter.backward_macs) == ({"0": 32, "(self)": 64}, 64)


def test_a_submodule_that_raises_leaves_the_stack_of_running_modules() -> None:
    class Flaky(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("caught by its parent")

    class Parent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flaky, self.w = Flaky(), nn.Parameter(torch.randn(4, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with contextlib.suppress(ValueError):
                self.flaky(x)
            return x @ self.w  # the parent's, not flaky's

    assert dict(count_dispatch(Parent(), (2, 4)).by_module) == {"(self)": 32}


def test_a_buffer_written_in_place_is_not_an_activation() -> None:
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("calls", torch.zeros(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls.add_(1)  # its storage is the buffer's, like a running statistic's
            return x + self.calls

    assert count_dispatch(Counting(), (2, 4)).peak_live_bytes_estimate == 2 * 4 * 4  # the sum only


def test_an_input_written_in_place_in_a_training_step_is_not_an_activation() -> None:
    class Scaled(nn.Module):
        def __init__(self, in_place: bool) -> None:
            super().__init__()
            self.w, self.in_place = nn.Parameter(torch.randn(4, 4)), in_place

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.in_place:
                x.mul_(2)
            return x @ self.w

    plain, scaled = (count_dispatch(Scaled(p), (2, 4), mode="train") for p in (False, True))
    # The loss's seed gradient (a float32 scalar), the output (2x4), x's gradient (2x4) and w's (4x4). x itself is
    # the input, though the backward reads it through views (x.t()) and the in-place step writes it.
    assert plain.peak_live_bytes_estimate == 4 + 2 * 4 * 4 + 2 * 4 * 4 + 4 * 4 * 4
    # The in-place step holds one 2x4 tensor more: mul_'s gradient.
    assert scaled.peak_live_bytes_estimate == plain.peak_live_bytes_estimate + 2 * 4 * 4


# --- peak live bytes, and no memory on meta -------------------------------------------------------------------
def test_peak_live_bytes_estimate() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x * x  # 4 KiB, alive until the end of forward
        return y + 1  # 4 KiB more while y is still referenced

    report = count_macs(Fn(fn), (1, 1024))
    assert report.peak_live_bytes_estimate == 2 * 4096


def test_attention_at_224_counts_on_meta_without_memory() -> None:
    n = 224 * 224  # a 50176 x 50176 attention map: 10 GB if it were allocated
    report = count_macs(Mha(64, 1), (1, n, 64))
    assert report.macs == 4 * n * 64 * 64 + n * n * 128
    assert report.device == "meta"


def test_train_peak_live_bytes_of_a_linear() -> None:
    # Linear(8, 5) on (4, 8), float32: the output (4, 5) lives through the step; the backward creates the
    # loss gradient (1 element, expanded), grad_input (4, 8), grad_weight (5, 8) and grad_bias (5,), all kept
    # as .grad. Input and weights are not counted.
    report = train(nn.Linear(8, 5), (4, 8))
    assert report.peak_live_bytes_estimate == 4 * (4 * 5 + 1 + 4 * 8 + 5 * 8 + 5)


class ProductHead(nn.Module):
    """A linear, a gate one level down, their product summed, and a scaling by a Python float."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.gate = nn.Sequential(nn.Linear(3, 3, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        return (y * self.gate(y)).sum(-1) * 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_the_whole_report_of_one_forward_by_hand(device: str) -> None:
    # 4 tokens: proj 4 x 4 x 3 = 48 MACs, gate.0 4 x 3 x 3 = 36, the product 12 elements (a MAC each; 1 FLOP,
    # promoted to 2 by the sum); the sum and the scaling by 0.5 are listed. Float32: y, the gate's output and the
    # product (48 B each) are alive together at the product.
    report = count_dispatch(ProductHead(), (1, 2, 2, 4), device=device)
    assert (report.counter, report.status, report.reason, report.device, report.mode) == (
        "attnbench", "ok", "", device, "infer",
    )  # fmt: skip
    assert (report.input_shape, report.convention) == ((1, 2, 2, 4), CONVENTION)
    assert (report.macs, report.flops, report.backward_macs, report.backward_flops) == (96, 192, 0, 0)
    assert dict(report.by_op) == {"aten.linear": 84, "aten.mul": 12}
    assert dict(report.flops_by_op) == {"aten.linear": 168, "aten.mul": 24}
    assert dict(report.counted_calls) == {"aten.linear": 2, "aten.mul": 1}
    assert dict(report.by_module) == {"proj": 48, "gate": 36, "(self)": 12}
    assert dict(report.flops_by_module) == {"proj": 96, "gate": 72, "(self)": 24}
    assert dict(report.by_module_nested) == {"proj": 48, "gate": 36, "gate.0": 36}
    assert dict(report.flops_by_module_nested) == {"proj": 96, "gate": 72, "gate.0": 72}
    assert {k: (u.calls, u.elements, u.category) for k, u in report.uncounted.items()} == {
        "aten.sum": (1, 4, "reduction"),
        "aten.mul (scalar)": (1, 4, "scalar scaling"),
    }
    assert report.peak_live_bytes_estimate == 3 * 48


# --- the zoo: FLOPs = 2 x MACs - one per element of each lone product ----------------------------------------
def _lone_lka(s: Setting) -> int:
    return s.batch * s.dim * s.tokens  # u * attn: the LKA gate


def _lone_sam(s: Setting) -> int:
    return s.batch * s.tokens * s.dim  # modulator * v


def _lone_clo(s: Setting) -> int:
    d = s.dim // s["heads"]
    groups = [g for g in s["group_split"][:-1] if g > 0]
    return sum(2 * s.batch * s.tokens * g * d for g in groups)  # q * k and tanh(...) * v per local branch


def _lone_epsa(s: Setting) -> int:
    m = len(s["kernels"])
    c = s.dim // m
    out = ((s.height - 1) // s["stride"] + 1) * ((s.width - 1) // s["stride"] + 1)  # type: ignore[operator]
    return s.batch * m * c * out if s.batch * m * c > 1 else 0  # features * softmax weights


#: Elements of lone products per module. Products that are summed (ACmix's windowed q*k and attn*v, SK's
#: weights * branches summed over branches) are multiply-adds; MHSA, DANet and EANet have no elementwise product
#: in eval mode (dropout is the identity, scalings are by Python floats or one-element parameters).
LONE_PRODUCTS: dict[str, Callable[[Setting], int]] = {
    "lka": _lone_lka,
    "van": _lone_lka,
    "sam": _lone_sam,
    "clo": _lone_clo,
    "epsa": _lone_epsa,
    "acmix": lambda s: 0,
    "sk": lambda s: 0,
    "mhsa": lambda s: 0,
    "da": lambda s: 0,
    "ea": lambda s: 0,
}


@pytest.mark.parametrize(("name", "index", "ex"), examples(), ids=example_id)
def test_zoo_flops_match_formula(name: str, index: int, ex: Example) -> None:
    if name not in LONE_PRODUCTS:
        pytest.fail(f"{name}: write its lone-product formula in LONE_PRODUCTS (which of its products are summed?)")
    spec = get_spec(name)
    setting = Setting(ex.dim, {**spec.defaults, **ex.kwargs}, ex.res[0], ex.res[1], ex.batch)
    report = count_macs(attnbench.build(name, ex.dim, ex.res, **ex.kwargs), (ex.batch, ex.dim, *ex.res))
    assert report.ok, report.reason
    assert report.macs == spec.macs_formula(setting)
    assert report.flops == 2 * spec.macs_formula(setting) - LONE_PRODUCTS[name](setting)


def test_lone_gate_flops_of_lka_by_hand() -> None:
    # LKA at C=16, 8x8: depthwise 5x5 and dilated 7x7, a 1x1, and the gate u * attn.
    c, pixels = 16, 64
    convs = pixels * c * (25 + 49 + c)
    report = count_macs(attnbench.build("lka", c, (8, 8)), (1, c, 8, 8))
    assert (report.macs, report.flops) == (convs + pixels * c, 2 * convs + pixels * c)
    assert report.flops_by_op["aten.mul"] == pixels * c


def test_acmix_windowed_products_are_multiply_adds() -> None:
    # ACmix at C=16, 8x8, 4 heads, 7x7 window: q (B*heads, 4, 1, H, W) * k windows (.., 49, H, W) summed over
    # the head dim, then weights * v windows summed over the window: both are multiply-adds.
    report = count_macs(attnbench.build("acmix", 16, (8, 8)), (1, 16, 8, 8))
    products = 2 * 16 * 49 * 64
    assert report.by_op["aten.mul"] == products
    assert report.flops_by_op["aten.mul"] == 2 * products


def test_a_scaling_in_the_backward_is_listed_under_its_backward_name() -> None:
    report = train(Fn(lambda x: x * 0.5), (2, 3))
    scalings = {k: (u.calls, u.elements, u.category) for k, u in report.uncounted.items() if "(scalar)" in k}
    assert scalings == {
        "aten.mul (scalar)": (1, 6, "scalar scaling"),
        f"aten.mul (scalar){BWD}": (1, 6, "scalar scaling"),
    }
    assert report.macs == report.flops == 0


def test_a_dropout_kernel_that_drops_nothing_is_listed_not_counted() -> None:
    # CUDA's fused kernel outside training (train=False): no mask product; its output and mask are listed.
    x = torch.ones(3, 4)
    with DispatchCounter() as counter:
        torch.ops.aten.native_dropout(x, 0.1, False)
    assert counter.total == counter.total_flops == 0 and not counter.calls
    assert counter.uncounted == {"aten.native_dropout": [1, 24, "dropout (identity in eval)"]}


def test_live_bytes_count_each_new_storage_once_and_drop_the_dead() -> None:
    counter = DispatchCounter()
    weight = torch.zeros(4)
    counter.exclude(weight)
    a = torch.zeros(8)  # 32 B
    # A storage-less (sparse) output and an excluded one do not hide the new output after them.
    counter._track((torch.zeros(2).to_sparse(), weight, a))
    assert counter._live_bytes == counter.peak_live_bytes == 32
    b = torch.zeros(16)  # 64 B; a again (an in-place op's output) is not counted twice
    counter._track([a, b])
    assert counter._live_bytes == counter.peak_live_bytes == 96
    del a
    counter._track(torch.zeros(2))  # 8 B more, then a's 32 B are gone: the peak is read after the dead go
    assert (counter._live_bytes, counter.peak_live_bytes) == (72, 96)


def test_only_a_live_product_storage_is_recalled() -> None:
    counter = DispatchCounter()
    with counter:
        x = torch.ones(2, 3)
        product = x * x
    record = counter._recall(product.view(3, 2))  # a view shares the product's storage
    assert record is not None and (record.name, record.elements, record.promoted) == ("aten.mul", 6, False)
    assert counter._recall(x) is None and counter._recall(2.0) is None
    assert counter._recall(torch.zeros(2).to_sparse()) is None  # no storage to look up


def test_a_decomposed_operator_keeps_its_keyword_arguments() -> None:
    # einsum has no rule: the engine runs its decomposition, with its keyword-only contraction path. (2, 100) @
    # (100, 2) first costs 400 + 400 MACs; (100, 2) @ (2, 100) first, 20000 + 20000.
    a, b, c = torch.empty(2, 100, device="meta"), torch.empty(100, 2, device="meta"), torch.empty(2, 100, device="meta")
    for path, macs, viewed in [(None, 800, 3616), ([1, 2, 0, 1], 40000, 43600)]:
        with torch.inference_mode(), DispatchCounter() as counter:
            torch.ops.aten.einsum.default("ij,jk,kl->il", [a, b, c], **({"path": path} if path else {}))
        assert dict(counter.by_op) == {"aten.einsum": macs} and dict(counter.calls) == {"aten.einsum": 2}, path
        # Listed: the decomposition's 22 reshapes and permutes. Its result is the call's: einsum itself does not
        # run again (that would list a 23rd call, of 200 elements).
        assert counter.uncounted == {"aten.einsum": [22, viewed, "view (no data moved)"]}


def test_an_output_without_storage_after_a_pending_product_is_listed() -> None:
    x = torch.randn(2, 3)
    with torch.inference_mode(), DispatchCounter() as counter:
        y = x * x  # a lone product, waiting for a sum
        y.to_sparse()  # followed: its output has no storage to match against the product's
    assert (counter.total_flops, counter.uncounted) == (6, {"aten.to_sparse": [1, 6, "other"]})
