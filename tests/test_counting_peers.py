"""The forward cases of two peers' counter suites, re-derived by hand and run against attnbench's counter.

Sources (read, re-derived, rewritten; no code copied):
- PyTorch ``test/test_flop_counter.py`` (pytorch/pytorch at 067f1d9d1fec00506e2b6f2bcdb95005e8cbd2ba), the
  suite of ``torch.utils.flop_counter.FlopCounterMode``. Its unit is the FLOP, 2 per multiply-add, so its
  expected numbers are compared as MACs = FLOPs / 2; for the matmuls and convolutions it counts, attnbench's
  exact FLOPs must equal its numbers too. Its backward cases live in tests/test_counting_backward.py.
- fvcore ``tests/test_flop_count.py`` and ``tests/test_jit_model_analysis.py`` (facebookresearch/fvcore at
  3378afe0d71dc2aa95e358bc78dc9b67cb48825a). fvcore's "flop" is one fused multiply-add: 1 fvcore flop =
  1 MAC. Where fvcore charges an operator attnbench lists as uncounted (batch norm, group norm, adaptive
  pooling, upsampling), the test runs fvcore itself and asserts the difference.

Every case runs on meta (the default) and, where it is small, on the CPU as well. Extra cases cover forms
real attention modules use and neither suite has: nn.MultiheadAttention with and without weights, the fused
CPU SDPA kernel, and a submodule called twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnbench.counting import count_macs
from attnbench.counting.base import MacReport

DEVICES = ["meta", "cpu"]


class Fn(nn.Module):
    """A module whose forward is a function of its input (extra operands are made on the input's device)."""

    def __init__(self, fn: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> object:
        return self.fn(x)


def ones(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """An extra operand of the given shape on x's device (values do not matter to a count)."""
    return torch.ones(shape, device=x.device)


def counted(module: nn.Module, shape: tuple[int, ...], device: str = "meta") -> MacReport:
    report = count_macs(module, shape, device=device)
    assert report.ok, report.reason
    assert report.device == device
    return report


def assert_torch_flops(report: MacReport, torch_flops: int) -> None:
    """FlopCounterMode's FLOPs are 2 per multiply-add: our MACs are half, our exact FLOPs equal."""
    assert report.macs == torch_flops // 2
    assert report.flops == torch_flops


# --- PyTorch test_flop_counter.py: forward cases ------------------------------------------------------------
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


def square(x: torch.Tensor) -> torch.Tensor:
    """x @ x, to be scripted."""
    return torch.mm(x, x)


def test_torch_scripted_function_counts_as_eager() -> None:
    # The dispatcher sees a TorchScript function's operators as it sees eager ones (fvcore cannot, below).
    eager = counted(Fn(square), (5, 5), "cpu")
    script = counted(Fn(torch.jit.script(square)), (5, 5), "cpu")
    assert script.macs == eager.macs == 125


def test_torch_noop_counts_nothing() -> None:
    report = counted(Fn(torch.cos), (4, 5))
    assert (report.macs, report.flops) == (0, 0)
    assert report.uncounted["aten.cos"].category == "elementwise math"


# --- fvcore test_flop_count.py --------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("in_features", "out_features", "shape"),
    [(8, 4, (5, 8)), (10, 20, (5, 10)), (10, 20, (5, 5, 10))],
    ids=["nn", "linear", "linear-3d"],
)
def test_fvcore_linear(in_features: int, out_features: int, shape: tuple[int, ...], device: str) -> None:
    report = counted(nn.Linear(in_features, out_features), shape, device)
    assert report.macs == math.prod(shape) * out_features  # rows x in x out; the bias is no MAC


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


# fvcore charges these; attnbench lists them as uncounted: a norm, a pooling or an interpolation is a
# per-element affine map or average, not a product of two operands, and counting it would make a module's MACs
# depend on how its norms are written. Counts run in eval mode, where fvcore charges batch norm 1 per element
# (its own test expects 4 per element for BatchNorm2d because it traces in training mode).
# (module factory, input shape, fvcore's count, attnbench's listed op, its output elements)
FVCORE_NON_MACS = {
    "batch_norm_1d": (lambda: nn.BatchNorm1d(10, affine=False), (10, 10), 10 * 10, "aten.batch_norm", 100),
    "batch_norm_2d": (lambda: nn.BatchNorm2d(10, affine=False), (10, 10, 5, 5), 10 * 10 * 25, "aten.batch_norm", 2500),
    "group_norm_affine": (lambda: GroupNorm(affine=True), (2, 2, 2, 2), 80, "aten.group_norm", 16),
    "group_norm": (lambda: GroupNorm(affine=False), (2, 2, 2, 2), 64, "aten.group_norm", 16),
    # bilinear x2 from 2x2 to 4x4: fvcore charges 4 per output element (2 * 2 * 4 * 4 outputs)
    "upsample_bilinear": (
        lambda: Fn(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)),
        (2, 2, 2, 2),
        2**4 * 4 * 4,
        "aten.upsample_bilinear2d",
        64,
    ),
}


class GroupNorm(nn.Module):
    """F.group_norm over 2 groups, with or without an affine weight and bias (fvcore charges 5 or 4 each)."""

    def __init__(self, affine: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2)) if affine else None
        self.bias = nn.Parameter(torch.zeros(2)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, 2, self.weight, self.bias)


@pytest.mark.parametrize("case", list(FVCORE_NON_MACS))
def test_fvcore_charges_what_attnbench_lists(case: str) -> None:
    build, shape, fvcore_count, listed, elements = FVCORE_NON_MACS[case]
    ours = counted(build(), shape)
    theirs = count_macs(build(), shape, counter="fvcore")
    assert (ours.macs, ours.flops) == (0, 0)
    assert (ours.uncounted[listed].calls, ours.uncounted[listed].elements) == (1, elements)
    assert theirs.macs == fvcore_count, theirs.reason


class ThreeNet(nn.Module):
    """fvcore's three-layer net: 1x1 conv, adaptive average pool, two linears."""

    def __init__(self, c_in: int = 2, c_conv: int = 5, c_lin: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_conv, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear1 = nn.Linear(c_conv, c_lin)
        self.linear2 = nn.Linear(c_lin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(self.pool(self.conv(x)).flatten(1)))


def test_fvcore_three_net_by_module() -> None:
    shape = (4, 2, 10, 10)
    ours = counted(ThreeNet(), shape)
    conv, linear1, linear2 = 4 * 5 * 2 * 100, 4 * 5 * 3, 4 * 3 * 1
    assert dict(ours.by_module_nested) == {"conv": conv, "linear1": linear1, "linear2": linear2}
    assert ours.macs == conv + linear1 + linear2
    # fvcore also charges the pool one per input element (4 * 5 * 10 * 10); attnbench lists it, 20 outputs.
    theirs = count_macs(ThreeNet(), shape, counter="fvcore")
    assert theirs.by_module_nested["pool"] == 2000
    assert theirs.macs - ours.macs == 2000
    assert ours.uncounted["aten.adaptive_avg_pool2d"].elements == 20


def test_fvcore_cannot_see_a_scripted_call_attnbench_can() -> None:
    scripted = torch.jit.script(square)
    model = Fn(lambda x: scripted(x * x))
    ours = counted(model, (5, 5), "cpu")
    assert ours.macs == 25 + 125  # the product x * x, then the scripted 5x5 @ 5x5
    theirs = count_macs(model, (5, 5), counter="fvcore")
    assert "prim::CallFunction" in theirs.uncounted
    assert theirs.macs == 0


# --- fvcore test_jit_model_analysis.py: attribution to modules ------------------------------------------------
class Inner(nn.Module):
    """fvcore's NestedNetInnerModule: a 1x1 conv on (2, 5), a 10 -> 10 linear, then 3 * y + 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 2, 1)
        self.fc = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(self.conv(x.reshape(-1, 2, 5)).flatten(1))
        return 3 * y + 1


class Nested(nn.Module):
    """fvcore's NestedNet: a 3-tap conv on (4, 5), a 20 -> 10 linear, the inner module, then a square."""

    def __init__(self) -> None:
        super().__init__()
        self.submod = Inner()
        self.fc = nn.Linear(20, 10)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.submod(self.fc(self.conv(x).flatten(1))) ** 2


NESTED_MACS = {
    "conv": 5 * 4 * 4 * 3,  # 5 positions x 4 out x 4 in x 3 taps
    "fc": 20 * 10,
    "submod": 5 * 2 * 2 + 10 * 10,
    "submod.conv": 5 * 2 * 2,
    "submod.fc": 10 * 10,
}


@pytest.mark.parametrize("device", DEVICES)
def test_fvcore_nested_by_module(device: str) -> None:
    report = counted(Nested(), (1, 4, 5), device)
    assert dict(report.by_module_nested) == NESTED_MACS
    assert report.macs == 240 + 200 + 120
    assert dict(report.by_module) == {"conv": 240, "fc": 200, "submod": 120}
    # what fvcore lists as unsupported here: the scalar 3 * y, + 1 and ** 2
    assert {"aten.mul (scalar)", "aten.add", "aten.pow"} <= set(report.uncounted)


def test_fvcore_nested_matches_fvcore_itself() -> None:
    theirs = count_macs(Nested(), (1, 4, 5), counter="fvcore")
    assert dict(theirs.by_module_nested) == NESTED_MACS


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


# --- forms real attention modules use ----------------------------------------------------------------------
class Mha(nn.Module):
    """nn.MultiheadAttention as self-attention on (B, N, C) tokens, optionally returning its weights."""

    def __init__(self, dim: int, heads: int, need_weights: bool) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=self.need_weights)[0]


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
