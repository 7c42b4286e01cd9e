"""The per-operator rules (attnbench.counting.rules) against hand-derived numbers, forward and training step.

Besides attnbench's own cases, the cases of two peers' counter suites, re-derived by hand (read, rewritten; no
code copied):
- PyTorch ``test/test_flop_counter.py`` (pytorch/pytorch at 067f1d9d1fec00506e2b6f2bcdb95005e8cbd2ba), the
  suite of ``torch.utils.flop_counter.FlopCounterMode``. Its unit is the FLOP, 2 per multiply-add, so its
  expected numbers are compared as MACs = FLOPs / 2; for the matmuls and convolutions it counts, attnbench's
  exact FLOPs must equal its numbers too.
- fvcore ``tests/test_flop_count.py`` (facebookresearch/fvcore at 3378afe0d71dc2aa95e358bc78dc9b67cb48825a).
  fvcore's "flop" is one fused multiply-add: 1 fvcore flop = 1 MAC.

A training step = the module in train mode, the input requiring grad, loss = output.sum() (not counted: it is
not the module's work), loss.backward(). Every case runs on meta (the default) and, where it is small, on the CPU
as well.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnbench.counting import CONVENTION, count_macs, rules
from attnbench.counting.base import MacReport
from attnbench.counting.dispatch import DispatchCounter
from attnbench.counting.rules import MAC_RULES, MOVEMENT, PRODUCT_RULES, VIEW, op_category
from tests.counting.helpers import BWD, DEVICES, Fn, Gate, Mha, counted, flops_of, macs_flops, train

aten = torch.ops.aten


# --- registration and the convention ----------------------------------------------------------------------------
def test_rules_state_the_convention() -> None:
    assert rules.__doc__ is not None and CONVENTION in rules.__doc__
    assert 'papers\' "FLOPs" are usually MACs' in rules.__doc__


def test_every_rule_is_named_where_it_is_defined() -> None:
    # One named function per family, as torch.utils.flop_counter's mm_flop, bmm_flop...
    for rule in (*MAC_RULES.values(), *PRODUCT_RULES.values()):
        assert rule.__name__.endswith("_macs") and getattr(rules, rule.__name__) is rule
    assert MAC_RULES[aten.bmm] is rules.matmul_macs
    assert MAC_RULES[aten.conv_transpose2d] is rules.conv_transpose_macs
    assert PRODUCT_RULES[aten.addcmul_] is rules.addcmul_macs
    assert {aten.mul, aten.mul_, aten.multiply, aten.multiply_, aten.addcmul, aten.addcmul_} == rules.SCALINGS
    assert {aten.addcmul, aten.addcmul_} == rules.FUSED_PRODUCTS


def test_an_operator_has_one_rule() -> None:
    with pytest.raises(ValueError, match="already has a counting rule"):
        rules.macs(aten.mm)(rules.outer_macs)
    with pytest.raises(ValueError, match="already has a counting rule"):
        rules.products(aten.bmm, scaling=True)(rules.mul_macs)
    assert MAC_RULES[aten.mm] is rules.matmul_macs
    assert aten.bmm not in PRODUCT_RULES and aten.bmm not in rules.SCALINGS


def meta(*shape: int) -> torch.Tensor:
    """An operand of the given shape on meta (a rule reads shapes only)."""
    return torch.empty(shape, device="meta")


# --- matrix products ------------------------------------------------------------------------------------
def macs(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], device: str = "meta") -> int:
    report = count_macs(Fn(fn), shape, device=device)
    assert report.status == "ok", report.reason
    assert report.macs is not None
    return report.macs


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_matmul_function_and_operator(device: str) -> None:
    w = torch.randn(5, 6, device=device)
    # (2, 3, 4, 5) @ (5, 6): 2*3*4 rows x 6 columns x 5 contracted
    assert macs(lambda x: torch.matmul(x, w.to(x.device)), (2, 3, 4, 5), device) == 2 * 3 * 4 * 6 * 5
    assert macs(lambda x: x @ w.to(x.device), (2, 3, 4, 5), device) == 720
    # batched (2, 4, 5) @ (2, 5, 4) and a vector product (5,) @ (5,)
    assert macs(lambda x: x @ x.transpose(-1, -2), (2, 4, 5), device) == 2 * 4 * 4 * 5
    assert macs(lambda x: x @ x, (5,), device) == 5


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_einsum_bmm_baddbmm_tensordot(device: str) -> None:
    k = torch.randn(2, 3, 5, 6, device=device)
    assert macs(lambda x: torch.einsum("bhnd,bhmd->bhnm", x, k.to(x.device)), (2, 3, 4, 6), device) == 720
    b = torch.randn(2, 4, 5, device=device)
    assert macs(lambda x: torch.bmm(x, b.to(x.device)), (2, 3, 4), device) == 2 * 3 * 4 * 5
    bias = torch.randn(2, 3, 5, device=device)
    # the bias add of baddbmm is not a MAC
    assert macs(lambda x: torch.baddbmm(bias.to(x.device), x, b.to(x.device)), (2, 3, 4), device) == 120
    t = torch.randn(4, 5, 6, device=device)
    assert macs(lambda x: torch.tensordot(x, t.to(x.device), dims=2), (3, 4, 5), device) == 3 * 6 * 4 * 5


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_linear_on_3d_input_bias_not_counted(device: str) -> None:
    layer = nn.Linear(8, 5)
    report = count_macs(layer, (2, 7, 8), device=device)
    assert report.macs == 2 * 7 * 8 * 5
    assert dict(report.by_op) == {"aten.linear": 560}


def test_matmul_and_conv_flops_are_twice_their_macs() -> None:
    report = count_macs(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(2), nn.Linear(25, 6)), (2, 3, 5, 5))
    assert report.macs == 2 * 4 * 25 * 3 * 9 + 2 * 4 * 6 * 25
    assert report.flops == 2 * report.macs
    assert dict(report.flops_by_op) == {op: 2 * n for op, n in report.by_op.items()}


def test_product_rules_read_operands_by_position_or_name() -> None:
    a, b, out = meta(3, 4, 5), meta(3, 5, 6), meta(3, 4, 6)
    assert rules.matmul_macs((a, b), {}, out) == 3 * 4 * 6 * 5 == 360
    assert rules.baddbmm_macs((meta(3, 4, 6),), {"batch1": a, "batch2": b}, out) == 360
    # addbmm sums the batch away: a (4, 6) output, yet each of the 3 batched products happens
    assert rules.addbmm_macs((meta(4, 6), a, b), {}, meta(4, 6)) == 360
    assert rules.addmv_macs((meta(4), meta(4, 5), meta(5)), {}, meta(4)) == 4 * 5
    assert rules.outer_macs((meta(4, 6), meta(4), meta(6)), {}, meta(4, 6)) == 4 * 6


def ones(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """An extra operand of the given shape on x's device (values do not matter to a count)."""
    return torch.ones(shape, device=x.device)


def assert_torch_flops(report: MacReport, torch_flops: int) -> None:
    """FlopCounterMode's FLOPs are 2 per multiply-add: our MACs are half, our exact FLOPs equal."""
    assert report.macs == torch_flops // 2
    assert report.flops == torch_flops


class Variety(nn.Module):
    """PyTorch's variety case: mm, addmm with scaled terms, matmul, einsum and a Linear in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(9, 10)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [
            torch.mm(x, ones(x, 5, 6)),  # 4*6 outputs x 5 = 120 MACs
            torch.addmm(ones(x, 4, 6), x, ones(x, 5, 6), beta=0.5, alpha=0.5),  # 120; beta/alpha are scalings
            torch.matmul(ones(x, 5, 6), ones(x, 6, 7)),  # 5*7 x 6 = 210
            torch.einsum("ab,bc->ac", ones(x, 6, 7), ones(x, 7, 8)),  # 6*8 x 7 = 336
            self.lin(ones(x, 8, 9)),  # 8*10 x 9 = 720
        ]


@pytest.mark.parametrize("device", DEVICES)
def test_torch_variety_of_products(device: str) -> None:
    report = counted(Variety(), (4, 5), device)
    assert report.macs == 120 + 120 + 210 + 336 + 720
    assert_torch_flops(report, 3012)


MATMUL_CASES = {
    # name: (function of x, input shape, FlopCounterMode's FLOPs, hand derivation in MACs)
    "mm": (lambda x: torch.mm(x, ones(x, 5, 6)), (4, 5), 240),  # 4 * 6 * 5
    "bmm": (lambda x: torch.bmm(x, ones(x, 3, 5, 6)), (3, 4, 5), 720),  # 3 * 4 * 6 * 5
    # three addmm with a full, a column and a row bias: the bias never adds MACs, 3 * (4 * 6 * 5)
    "addmm": (
        lambda x: [torch.addmm(ones(x, *b), x, ones(x, 5, 6)) for b in ((4, 6), (4, 1), (6,))],
        (4, 5),
        720,
    ),
    "baddbmm": (lambda x: torch.baddbmm(ones(x, 3, 4, 6), x, ones(x, 3, 5, 6)), (3, 4, 5), 720),
    # 6x6 image, 4x4 kernel, padding 1: 5x5 outputs; 2 * 25 positions * 6 out * 3 in * 16 taps
    "conv2d": (lambda x: torch.conv2d(x, ones(x, 6, 3, 4, 4), padding=1), (2, 3, 6, 6), 28800),
    "conv1d": (lambda x: torch.conv1d(x, ones(x, 6, 3, 4), padding=1), (2, 3, 6), 1440),  # 2 * 5 * 6 * 3 * 4
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(MATMUL_CASES))
def test_torch_ops(case: str, device: str) -> None:
    fn, shape, torch_flops = MATMUL_CASES[case]
    assert_torch_flops(counted(Fn(fn), shape, device), torch_flops)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_mm_with_out_argument(device: str) -> None:
    def into(x: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, x, out=torch.zeros(10, 10, device=x.device))

    assert_torch_flops(counted(Fn(into), (10, 10), device), 2000)  # 10 * 10 * 10 multiply-adds


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("in_features", "out_features", "shape"),
    [(8, 4, (5, 8)), (10, 20, (5, 10)), (10, 20, (5, 5, 10))],
    ids=["nn", "linear", "linear-3d"],
)
def test_fvcore_linear(in_features: int, out_features: int, shape: tuple[int, ...], device: str) -> None:
    report = counted(nn.Linear(in_features, out_features), shape, device)
    assert report.macs == math.prod(shape) * out_features  # rows x in x out; the bias is no MAC


MATMUL_SHAPES = {
    # fvcore test_matmul, test_matmul_broadcast, test_bmm, test_torch_mm: (A shape, B shape, MACs, op)
    "matmul": ((20, 10), (10, 100), 20 * 10 * 100, torch.matmul),
    "broadcast-batch-1": ((1, 20, 10), (1, 10, 100), 20 * 10 * 100, torch.matmul),
    "broadcast-2x2": ((2, 2, 20, 10), (2, 2, 10, 100), 4 * 20 * 10 * 100, torch.matmul),
    "broadcast-3d-2d": ((1, 20, 10), (10, 100), 20 * 10 * 100, torch.matmul),
    "broadcast-batch-2": ((2, 20, 10), (10, 100), 2 * 20 * 10 * 100, torch.matmul),
    "bmm": ((2, 5, 2), (2, 2, 12), 2 * 5 * 2 * 12, torch.bmm),
    "mm": ((3, 4), (4, 5), 60, torch.mm),
    "mm-as-matmul": ((3, 4), (4, 5), 60, torch.matmul),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(MATMUL_SHAPES))
def test_fvcore_matmul(case: str, device: str) -> None:
    a_shape, b_shape, expected, op = MATMUL_SHAPES[case]
    assert counted(Fn(lambda x: op(x, ones(x, *b_shape))), a_shape, device).macs == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("equation", "a_shape", "b_shape", "expected"),
    [
        ("nct,ncp->ntp", (1, 5, 2), (1, 5, 12), 1 * 2 * 12 * 5),  # outputs n,t,p x contracted c
        ("ntg,ncg->nct", (1, 2, 6), (1, 5, 6), 1 * 2 * 5 * 6),
        ("nc,nchw->hw", (3, 4), (3, 4, 2, 3), 2 * 3 * 3 * 4),  # 6 outputs, each sums over n and c
    ],
)
def test_fvcore_einsum(equation: str, a_shape: tuple, b_shape: tuple, expected: int, device: str) -> None:
    report = counted(Fn(lambda x: torch.einsum(equation, x, ones(x, *b_shape))), a_shape, device)
    assert report.macs == expected
    assert set(report.by_op) == {"aten.einsum"}


# --- matrix products in a training step: one product of the forward's size per operand that needs a grad --
@pytest.mark.parametrize("device", DEVICES)
def test_linear_backward_is_two_products(device: str) -> None:
    # forward 4 x 8 x 5; backward grad_input (4,5)@(5,8) and grad_weight (5,4)@(4,8); grad_bias is a sum
    report = train(nn.Linear(8, 5), (4, 8), device)
    fwd = 4 * 8 * 5
    assert (report.forward_macs, report.backward_macs, report.macs) == (fwd, 2 * fwd, 3 * fwd)
    assert dict(report.by_op) == {"aten.addmm": fwd, f"aten.mm{BWD}": 2 * fwd}
    assert report.flops == 2 * report.macs and report.backward_flops == 4 * fwd
    assert report.uncounted[f"aten.sum{BWD}"].category == "reduction"  # the bias gradient
    # a 3-d input folds into one (14, 8) @ (8, 5) product each way
    assert train(nn.Linear(8, 5), (2, 7, 8), device).macs == 3 * 2 * 7 * 8 * 5


def test_frozen_weight_costs_no_weight_gradient() -> None:
    layer = nn.Linear(8, 5)
    layer.weight.requires_grad_(False)
    report = train(layer, (4, 8))
    assert report.backward_macs == 4 * 8 * 5  # grad_input only


class Bilinear(nn.Module):
    """x @ W with W a parameter, then the Gram matrix of the result: products of a weight and of activations."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(5, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.w  # (3, 4, 6): 3*4*6*5 = 360
        return y @ y.transpose(-1, -2)  # (3, 4, 4): 3*4*4*6 = 288


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_backward(device: str) -> None:
    report = train(Bilinear(), (3, 4, 5), device)
    # each product: one gradient per operand that needs one; both operands of the Gram product are y
    assert report.forward_macs == 360 + 288
    assert report.backward_macs == 2 * 360 + 2 * 288
    assert report.macs == 3 * (360 + 288)


# --- convolutions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_conv_groups_dilation_stride(device: str) -> None:
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, dilation=2, groups=4)
    # out side: (16 + 2 - 2*2 - 1) // 2 + 1 = 7; MACs = 12 * 7 * 7 * (8 / 4) * 3 * 3
    assert count_macs(conv, (1, 8, 16, 16), device=device).macs == 12 * 49 * 2 * 9 == 10584
    conv1d = nn.Conv1d(4, 6, 3, stride=2, bias=False)  # out length (11 - 3) // 2 + 1 = 5
    assert count_macs(conv1d, (2, 4, 11), device=device).macs == 2 * 6 * 5 * 4 * 3
    conv3d = nn.Conv3d(2, 4, (1, 3, 3), padding=(0, 1, 1))
    assert count_macs(conv3d, (1, 2, 3, 5, 5), device=device).macs == 4 * 3 * 5 * 5 * 2 * 9


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_transposed_conv_charges_each_input_element(device: str) -> None:
    deconv = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    # every input element meets (6 / 2) * 3 * 3 weights
    assert count_macs(deconv, (1, 4, 5, 5), device=device).macs == 100 * 3 * 9


# (conv dims, batch, C_in, C_out, side, kernel, padding, stride, groups, transposed, output_padding)
FVCORE_CONVS = {
    "2d": (2, 5, 10, 3, 15, 3, 1, 1, 1, False, 0),
    "2d-stride": (2, 2, 10, 6, 20, 3, 1, 2, 1, False, 0),
    "grouped": (2, 5, 16, 8, 15, 5, 2, 1, 4, False, 0),
    "depthwise-like": (2, 5, 16, 8, 15, 3, 1, 1, 8, False, 0),
    "1d": (1, 5, 10, 3, 15, 3, 1, 1, 1, False, 0),
    "3d": (3, 5, 10, 3, 15, 3, 1, 1, 1, False, 0),
    "transposed": (2, 5, 10, 3, 15, 3, 1, 1, 1, True, 0),
    "transposed-stride": (2, 5, 10, 3, 15, 3, 1, 2, 1, True, 0),
    "transposed-output-padding": (2, 5, 10, 3, 15, 3, 1, 3, 1, True, 2),
}


CONV_CLASSES = {
    False: (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    True: (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
}


@pytest.mark.parametrize("case", list(FVCORE_CONVS))
def test_fvcore_conv(case: str) -> None:
    dims, batch, c_in, c_out, side, k, pad, stride, groups, transposed, out_pad = FVCORE_CONVS[case]
    extra = {"output_padding": out_pad} if transposed else {}
    conv = CONV_CLASSES[transposed][dims - 1](c_in, c_out, k, stride, pad, groups=groups, **extra)
    # A convolution charges each output position C_in/groups * k^d; a transposed one charges each *input*
    # position C_out/groups * k^d. Both come to B * C_in * C_out * k^d * positions^d / groups.
    positions = side if transposed else (side + 2 * pad - k) // stride + 1
    expected = batch * c_in * c_out * k**dims * positions**dims // groups
    assert counted(conv, (batch, c_in, *[side] * dims)).macs == expected


# --- convolutions in a training step ---------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_backward_grad_input_and_weight(bias: bool, device: str) -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=bias)
    report = train(conv, (2, 4, 5, 5), device)
    fwd = 2 * 6 * 25 * (4 // 2) * 9  # grouped: each output sees C_in / groups inputs
    assert report.forward_macs == fwd
    assert report.by_op[f"aten.convolution_backward{BWD}"] == 2 * fwd  # grad_bias is a sum, not a MAC
    assert report.flops == 2 * report.macs == 6 * fwd


@pytest.mark.parametrize("device", DEVICES)
def test_transposed_and_dilated_conv_backward(device: str) -> None:
    deconv = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    fwd = 2 * 4 * 25 * (6 // 2) * 9  # each input element meets C_out / groups * k * k weights
    assert train(deconv, (2, 4, 5, 5), device).macs == 3 * fwd
    dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4)
    assert train(dilated, (1, 4, 6, 6), device).macs == 3 * 36 * 4 * 9


def test_first_conv_of_a_frozen_input_costs_weight_gradient_only() -> None:
    # an input that needs no grad (a coordinate grid, as ACmix's positional conv) costs no grad_input
    class Grid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pe = nn.Conv2d(2, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            grid = torch.zeros(1, 2, *x.shape[-2:], device=x.device)
            return x + self.pe(grid)

    report = train(Grid(), (1, 4, 3, 3))
    assert report.by_op == {"aten.convolution": 9 * 4 * 2, f"aten.convolution_backward{BWD}": 9 * 4 * 2}


def test_conv_backward_rule_follows_output_mask() -> None:
    # Conv2d(4 -> 6, 3x3, padding 1, groups 2) on (2, 4, 5, 5): forward 2 * 6 * 25 outputs x 2 * 9 = 5400 MACs
    grad, x, w = meta(2, 6, 5, 5), meta(2, 4, 5, 5), meta(6, 2, 3, 3)
    args = (grad, x, w, [6], [1, 1], [1, 1], [1, 1], False, [0, 0], 2)
    forward = 2 * 6 * 25 * 2 * 9
    masks = {(True, True, True): 2 * forward, (True, False, True): forward, (False, True, False): forward}
    for mask, expected in {**masks, (False, False, True): 0}.items():
        assert rules.conv_backward_macs((*args, mask), {}, None) == expected, mask


@pytest.mark.parametrize(
    ("c_in", "c_out", "groups"), [(1, 1, 1), (1, 3, 1), (3, 1, 1), (3, 7, 1), (2, 4, 2), (4, 2, 2)]
)
@pytest.mark.parametrize("transposed", [False, True])
def test_torch_conv_backward_is_twice_forward(c_in: int, c_out: int, groups: int, transposed: bool) -> None:
    x = torch.rand(1, c_in, 4, 4, requires_grad=True)
    shape = (c_in, c_out // groups, 2, 2) if transposed else (c_out, c_in // groups, 2, 2)
    weight = torch.randn(shape, requires_grad=True)
    conv = F.conv_transpose2d if transposed else F.conv2d
    counter = flops_of(lambda: conv(x, weight, groups=groups).sum().backward())
    forward = counter.by_op["aten.convolution"]
    assert counter.by_op[f"aten.convolution_backward{BWD}"] == 2 * forward
    # forward by hand: per output (or, transposed, per input) position, in/groups (out/groups) x 4 taps
    positions = 16 if transposed else 9
    per_position = (c_out if transposed else c_in) // groups * 4
    assert forward == positions * (c_in if transposed else c_out) * per_position


def test_torch_small_convs_by_hand() -> None:
    x, w = torch.rand(1, 1, 2, 2, requires_grad=True), torch.randn(1, 1, 2, 2, requires_grad=True)
    assert flops_of(lambda: F.conv_transpose2d(x, w).sum().backward()).by_op["aten.convolution"] == 16  # 32 FLOPs
    w1 = torch.randn(1, 1, 1, 1, requires_grad=True)
    assert flops_of(lambda: F.conv2d(x, w1).sum().backward()).by_op["aten.convolution"] == 4  # 8 FLOPs


def test_torch_conv_transpose_loop() -> None:
    # 50 steps of ConvTranspose2d(4, 8, 2x2, stride 2) on (1, 4, 30, 2), input without grad: forward
    # 240 inputs x 8 x 4 = 7680 MACs, backward grad_weight only (7680); 50 x 15360 MACs = 1536000 FLOPs.
    x = torch.rand(1, 4, 30, 2)
    model = nn.ConvTranspose2d(4, 8, (2, 2), stride=2)

    def step() -> None:
        for _ in range(50):
            model(x).sum().backward()

    assert flops_of(step).total_flops == 1536000


# --- attention ------------------------------------------------------------------------------------------
B, H, NQ, NK, DK, DV = 2, 3, 7, 9, 8, 4


def _sdpa(x: torch.Tensor) -> torch.Tensor:
    k = torch.ones(B, H, NK, DK, device=x.device)
    v = torch.ones(B, H, NK, DV, device=x.device)
    return F.scaled_dot_product_attention(x, k, v)


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_sdpa_counted_on_meta_and_cpu(device: str) -> None:
    report = count_macs(Fn(_sdpa), (B, H, NQ, DK), device=device)
    assert report.macs == B * H * NQ * NK * (DK + DV) == 4536
    assert report.device == device


def test_sdpa_cpu_fused_kernel_counted() -> None:
    # Equal head sizes make the CPU flash kernel eligible; under no_grad the composite decomposes to it.
    q, k, v = torch.randn(B, H, NQ, DK), torch.randn(B, H, NK, DK), torch.randn(B, H, NK, DK)
    with torch.no_grad(), DispatchCounter() as counter:
        F.scaled_dot_product_attention(q, k, v)
    assert dict(counter.by_op) == {"aten._scaled_dot_product_flash_attention_for_cpu": B * H * NQ * NK * 2 * DK}
    with torch.inference_mode(), DispatchCounter() as counter:
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    assert counter.total == 2 * 3 * 7 * 9 * 16


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_multihead_attention_fast_and_slow_path(device: str) -> None:
    report = count_macs(Mha(16, 4), (1, 10, 16), device=device)
    # q, k, v and output projections: 4 * 10 * 16 * 16; attention: 4 heads * 10 * 10 * (4 + 4)
    assert report.macs == 4 * 10 * 16 * 16 + 4 * 10 * 10 * 8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_with_and_without_weights(need_weights: bool, device: str) -> None:
    b, n, c, heads = 2, 6, 16, 4
    report = counted(Mha(c, heads, need_weights), (b, n, c), device)
    # q, k, v and output projections, then q k^T and attn v over all heads (head_dim * heads = c each)
    assert report.macs == 4 * b * n * c * c + b * n * n * 2 * c
    assert report.flops == 2 * report.macs
    # On the CPU inference takes the fused kernel; on meta the explicit path (bmm with weights, SDPA without).
    expected_ops = (
        {"aten._native_multi_head_attention"}
        if device == "cpu"
        else {"aten.linear", "aten.bmm" if need_weights else "aten.scaled_dot_product_attention"}
    )
    assert set(report.by_op) == expected_ops


def test_fused_sdpa_on_cpu_named_and_counted() -> None:
    b, h, n, d = 2, 3, 7, 8

    def attend(x: torch.Tensor) -> torch.Tensor:
        q = x.view(b, n, h, d).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q, is_causal=True)  # causal masks are not discounted

    report = counted(Fn(attend), (b, n, h * d), "cpu")
    assert report.macs == b * h * n * n * 2 * d
    # inference mode shows the composite, whichever kernel then runs
    assert dict(report.by_op) == {"aten.scaled_dot_product_attention": report.macs}


def test_attention_forward_rules_in_both_layouts() -> None:
    b, h, n_q, n_k, d_k, d_v = 2, 3, 5, 7, 8, 4
    heads_first = (meta(b, h, n_q, d_k), meta(b, h, n_k, d_k), meta(b, h, n_k, d_v))
    tokens_first = (meta(b, n_q, h, d_k), meta(b, n_k, h, d_k), meta(b, n_k, h, d_v))
    expected = b * h * n_q * n_k * (d_k + d_v)
    assert MAC_RULES[aten._scaled_dot_product_efficient_attention](heads_first, {}, None) == expected
    assert MAC_RULES[aten._flash_attention_forward](tokens_first, {}, None) == expected


def test_rules_read_operands_given_by_name_and_any_leading_dims() -> None:
    # The schemas allow keywords, though aten passes positions: a rule must read both (issue 25's mutants).
    b, n_q, n_k, d_k, d_v = 2, 5, 7, 8, 4
    q, k, v = meta(b, n_q, d_k), meta(b, n_k, d_k), meta(b, n_k, d_v)  # (..., N, d) with one leading dim
    expected = b * n_q * n_k * (d_k + d_v)
    assert rules.sdpa_macs((q, k, v), {}, None) == rules.sdpa_macs((), {"query": q, "key": k, "value": v}, None)
    assert rules.sdpa_macs((q, k, v), {}, None) == expected == 840
    x, w, out = meta(2, 4, 5, 5), meta(6, 2, 3, 3), meta(2, 6, 5, 5)  # groups 2
    assert rules.conv_macs((), {"input": x, "weight": w}, out) == rules.conv_macs((x, w), {}, out) == 5400
    assert rules.conv_macs((x, w), {}, (out, meta(1))) == 5400  # a kernel returning a tuple: its first output
    # Transposed: per input element (2 * 4 * 25 of them) x C_out / groups (1) x the kernel (9): the input is read.
    x, w, out = meta(2, 4, 5, 5), meta(4, 1, 3, 3), meta(2, 2, 7, 7)
    positional = (x, w, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 2)
    by_name = {"input": x, "weight": w, "transposed": True}
    assert rules.convolution_macs((), by_name, out) == rules.convolution_macs(positional, {}, out) == 1800


def test_a_conv_backward_sums_grad_output_only_for_the_bias_gradient() -> None:
    grad = meta(2, 6, 5, 5)
    args = (grad, meta(2, 4, 5, 5), meta(6, 2, 3, 3), [6], [1, 1], [1, 1], [1, 1], False, [0, 0], 2)
    backward = aten.convolution_backward
    assert rules.summed_inputs(backward, args, {}, None) == []  # no mask: no gradient asked for
    assert rules.summed_inputs(backward, (*args, (True, True, False)), {}, None) == []
    for given, by_name in [((*args, (False, False, True)), {}), (args, {"output_mask": (False, False, True)})]:
        (summed,) = rules.summed_inputs(backward, given, by_name, None)
        assert summed is grad


def test_attention_kernels_of_some_builds_only_are_counted_where_present() -> None:
    names = ("_scaled_dot_product_fused_attention_overrideable", "_scaled_dot_product_attention_math_for_mps")
    present = [getattr(aten, name) for name in names if hasattr(aten, name)]
    assert present  # torch 2.13 has both: a build without them would make this test say so
    assert all(MAC_RULES[packet] is rules.sdpa_macs for packet in present)


def test_native_multi_head_attention_rule() -> None:
    # (B=2, N_q=6, C=16) queries over N_k=9 keys, 4 heads: the q and output projections 2 * 6 * 16 * 16 each, k and
    # v 2 * 9 * 16 * 16 each, then q k^T and attn v over all heads (head_dim * heads = 16): 2 * 6 * 9 * (16 + 16)
    q, kv = meta(2, 6, 16), meta(2, 9, 16)
    assert rules.native_mha_macs((q, kv, kv, 16, 4), {}, None) == 2 * (6 + 9 + 9 + 6) * 16 * 16 + 2 * 6 * 9 * 32


# --- attention in a training step ------------------------------------------------------------------------
class Sdpa(nn.Module):
    """SDPA of q (the input) over keys and values twice as long (q concatenated with itself)."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        kv = torch.cat([q, q], dim=2)
        return F.scaled_dot_product_attention(q, kv, kv, is_causal=self.causal)


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_backward_fused_cpu_kernel_recomputes_scores(device: str) -> None:
    # On meta the count follows the CPU's kernel choice, so both devices count the CPU flash kernel.
    b, h, n, d = 2, 3, 5, 8
    report = train(Sdpa(), (b, h, n, d), device)
    scores = b * h * n * 2 * n
    # recompute q k^T, then grad_v, grad of the scores, grad_q, grad_k: (3 d_k + 2 d_v) per score
    assert dict(report.by_op) == {
        "aten._scaled_dot_product_flash_attention_for_cpu": scores * 2 * d,
        f"aten._scaled_dot_product_flash_attention_for_cpu_backward{BWD}": scores * 5 * d,
    }


class UnequalHeads(nn.Module):
    """SDPA with values half as wide as queries and keys: the CPU flash kernel refuses it, math runs."""

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, q, q[..., : q.shape[-1] // 2])


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_backward_math_path(device: str) -> None:
    b, h, n, d_k, d_v = 2, 3, 5, 8, 4
    report = train(UnequalHeads(), (b, h, n, d_k), device)
    scores = b * h * n * n
    # q k^T and attn v forward; their four operand gradients backward, no recompute
    assert dict(report.by_op) == {"aten.bmm": scores * (d_k + d_v), f"aten.bmm{BWD}": 2 * scores * (d_k + d_v)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("backend", "torch_flops"), [(SDPBackend.MATH, 805306368), (None, 939524096)])
def test_torch_sdpa_fused_and_math_totals(backend: SDPBackend | None, torch_flops: int, device: str) -> None:
    # PyTorch test_sdpa (non-uniform: 128 queries, 256 keys, head dim 64, causal): forward 268435456 FLOPs;
    # the math backend's step is 3x, the fused kernels' 3.5x (PyTorch runs them on CUDA; here the CPU flash
    # kernel). A causal mask is not discounted, by PyTorch or by attnbench.
    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
        report = train(Sdpa(causal=True), (4, 8, 128, 64), device)
    assert report.forward_flops == 268435456
    assert report.flops == torch_flops and report.macs == torch_flops // 2


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_train_step(need_weights: bool) -> None:
    class Mha(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=need_weights)[0]

    b, n, c = 2, 6, 16
    meta, cpu = train(Mha(), (b, n, c)), train(Mha(), (b, n, c), "cpu")
    projections, scores = 4 * b * n * c * c, b * n * n  # per head-dim unit of attention: scores x c
    # with weights: explicit bmm (4 gradients); without: the CPU flash kernel (recompute: 3 c + 2 c)
    attention = scores * 2 * c * 3 if need_weights else scores * 2 * c + scores * 5 * c
    assert meta.macs == cpu.macs == 3 * projections + attention


def test_torch_sdpa_uniform_math_is_three_times_forward() -> None:
    q = torch.empty(4, 8, 128, 64, device="meta", requires_grad=True)
    with DispatchCounter() as counter:  # no kernel choice here: meta takes the math path
        F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    assert counter.total_flops == 3 * 134217728


# --- backward kernels of other devices (no GPU here): each rule reads q, k, v where the schema puts them -----
FUSED_BACKWARDS = {
    # kernel: True when its tensors are (B, heads, N, d), False for (B, N, heads, d)
    "_scaled_dot_product_flash_attention_for_cpu_backward": True,
    "_scaled_dot_product_flash_attention_backward": True,
    "_scaled_dot_product_efficient_attention_backward": True,
    "_scaled_dot_product_cudnn_attention_backward": True,
    "_flash_attention_backward": False,
    "_efficient_attention_backward": False,
}


@pytest.mark.parametrize(("kernel", "heads_first"), list(FUSED_BACKWARDS.items()))
def test_fused_attention_backward_rules(kernel: str, heads_first: bool) -> None:
    op = getattr(torch.ops.aten, kernel)
    names = [a.name for a in op.default._schema.arguments[:4]]
    assert names[1:] == ["query", "key", "value"], names
    b, h, n_q, n_k, d_k, d_v = 2, 3, 5, 7, 8, 4

    def tensor(n: int, d: int) -> torch.Tensor:
        return torch.empty((b, h, n, d) if heads_first else (b, n, h, d), device="meta")

    args = (tensor(n_q, d_v), tensor(n_q, d_k), tensor(n_k, d_k), tensor(n_k, d_v))
    assert MAC_RULES[op](args, {}, None) == b * h * n_q * n_k * (3 * d_k + 2 * d_v)


# --- elementwise products ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_elementwise_products(device: str) -> None:
    shape = (2, 3, 4, 4)
    assert macs(lambda x: x * x, shape, device) == 96
    assert macs(lambda x: x * x.mean((2, 3), keepdim=True), shape, device) == 96  # broadcast (2, 3, 1, 1)
    assert macs(lambda x: x.clone().mul_(x), shape, device) == 96
    assert macs(lambda x: torch.addcmul(x, x, x), shape, device) == 96
    report = count_macs(Fn(lambda x: (x * 2) * torch.ones(1, device=x.device) / (x + 1)), shape, device=device)
    assert report.macs == 0
    scalar = report.uncounted["aten.mul (scalar)"]
    assert (scalar.calls, scalar.elements, scalar.category) == (2, 192, "scalar scaling")
    assert report.uncounted["aten.div"].category == "division"
    assert report.uncounted["aten.add"].category == "add"


SHAPE = (2, 3, 4, 5)  # 120 elements


N = 120


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_lone_gate_is_one_flop_per_element(device: str) -> None:
    assert macs_flops(lambda x: x * torch.sigmoid(x), SHAPE, device) == (N, N)
    # a broadcast gate (SE style, (2, 3, 1, 1) against (2, 3, 4, 5)) is still one product per output element
    assert macs_flops(lambda x: x * x.mean((2, 3), keepdim=True).sigmoid(), SHAPE, device) == (N, N)


@pytest.mark.parametrize("device", DEVICES)
def test_gate_backward_is_two_products(device: str) -> None:
    rows, p = 4, 4 * 6
    lin = rows * 6 * 6
    report = train(Gate(bias=False), (rows, 6), device)
    assert report.forward_macs == 2 * lin + p
    assert report.by_op[f"aten.mul{BWD}"] == 2 * p  # grad * b(x) and grad * a(x)
    assert report.macs == 3 * (2 * lin + p)
    # FLOPs: lone products 1 each, forward and backward
    assert report.forward_flops == 4 * lin + p
    assert report.backward_flops == 8 * lin + 2 * p


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_in_training_multiplies_by_its_mask(device: str) -> None:
    # Decision: dropout's mask product is real work in training, 1 product per element each way (the mask
    # draw is listed, not counted); in inference dropout is the identity and costs nothing.
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1))
    n, lin = 4 * 8, 4 * 8 * 8
    report = train(model, (4, 8), device)
    assert report.by_op["aten.mul"] == n and report.by_op[f"aten.mul{BWD}"] == n
    assert report.macs == 3 * lin + 2 * n
    assert count_macs(model, (4, 8), device=device).macs == lin


def test_fused_dropout_kernel_rules() -> None:
    # CUDA's fused dropout: one mask product per element forward (in training) and backward
    x = torch.empty(3, 4, device="meta")
    aten = torch.ops.aten
    assert PRODUCT_RULES[aten.native_dropout]((x, 0.1, True), {}, (x, x)) == 12
    assert PRODUCT_RULES[aten.native_dropout]((x, 0.1, False), {}, (x, x)) == 0
    assert PRODUCT_RULES[aten.native_dropout_backward]((x, x, 1.1), {}, x) == 12


# --- sums that make a product a multiply-add ---------------------------------------------------------------------
def test_summed_inputs() -> None:
    x = meta(2, 3, 4)
    assert rules.summed_inputs(aten.sum, (x, [2]), {}, meta(2, 3)) == [x]
    assert rules.summed_inputs(aten.mean, (), {"self": x}, meta()) == [x]
    assert rules.summed_inputs(aten.sum, (x.unsqueeze(0), [0]), {}, meta(2, 3, 4)) == []  # a dim of size 1
    assert rules.summed_inputs(aten.amax, (x, [2]), {}, meta(2, 3)) == []  # a reduction, not a sum
    # convolution_backward sums grad_output for grad_bias, when asked for it
    grad = meta(2, 6, 5, 5)
    args = (grad, meta(2, 4, 5, 5), meta(6, 2, 3, 3), [6], [1, 1], [1, 1], [1, 1], False, [0, 0], 2)
    assert rules.summed_inputs(aten.convolution_backward, (*args, (True, True, True)), {}, None) == [grad]
    assert rules.summed_inputs(aten.convolution_backward, (*args, (True, True, False)), {}, None) == []


# --- what is not counted ----------------------------------------------------------------------------------
def test_uncounted_ops_listed_with_elements() -> None:
    norm = nn.LayerNorm(5)
    model = Fn(lambda x: norm(x.softmax(-1)).relu().sum(-1))
    model.norm = norm
    report = count_macs(model, (2, 3, 4, 5))
    assert report.macs == 0
    got = {k: (u.calls, u.elements, u.category) for k, u in report.uncounted.items()}
    assert got["aten.softmax"] == (1, 120, "softmax")
    assert got["aten.layer_norm"] == (1, 120, "norm")
    assert got["aten.relu"] == (1, 120, "activation")
    assert got["aten.sum"] == (1, 24, "reduction")


def test_torch_noop_counts_nothing() -> None:
    report = counted(Fn(torch.cos), (4, 5))
    assert (report.macs, report.flops) == (0, 0)
    assert report.uncounted["aten.cos"].category == "elementwise math"


@pytest.mark.parametrize(
    ("op", "category"),
    [
        (aten.gelu_backward.default, "activation"),  # a backward is categorised as its forward
        (aten._softmax_backward_data.default, "softmax"),
        (aten.relu_.default, "activation"),  # in-place: the trailing '_' is stripped
        (aten.native_layer_norm.default, "norm"),
        (aten.col2im.default, "add"),  # unfold's backward scatter-adds patches
        (aten.addcdiv.default, "division"),
        (aten.max_pool2d_with_indices_backward.default, "pooling"),
        (aten.bernoulli_.float, "creation"),
        (aten.t.default, VIEW),  # a pure view: no data moved
        (aten.permute.default, VIEW),
        (aten.reshape.default, MOVEMENT),  # tagged a view, but copies when the strides ask for it
        (aten.clone.default, MOVEMENT),  # an exact short name... of a copy
        (aten.index_select.default, MOVEMENT),  # a substring of a longer name
        (aten.real.default, VIEW),  # named nowhere: PyTorch says it is a view
        (aten.digamma.default, "elementwise math"),  # named nowhere: PyTorch tags it pointwise
        (aten.nonzero.default, "other"),
    ],
    ids=str,
)
def test_op_category(op: object, category: str) -> None:
    assert op_category(op) == category


def test_op_category_of_an_operator_known_by_name_only() -> None:
    # Something without an aten overload packet (a higher-order op, a Python callable) goes by its name, no tags.
    assert op_category("softmax") == "softmax"
    assert op_category("roll_") == MOVEMENT  # in-place: the trailing '_' stripped
    assert op_category("not_an_op") == "other"
