"""fvcore as a counter (attnbench.counting.fvcore_adapter): what it counts, what it charges that attnbench lists,
what it cannot see, and how its numbers are reported.

Cases from fvcore ``tests/test_flop_count.py`` and ``tests/test_jit_model_analysis.py`` (facebookresearch/fvcore
at 3378afe0d71dc2aa95e358bc78dc9b67cb48825a), re-derived by hand. fvcore's "flop" is one fused multiply-add:
1 fvcore flop = 1 MAC.
"""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnbench.counting import count_all, count_macs, cross_check, flag_disagreements
from attnbench.counting.fvcore_adapter import CONV_ON_META, count_fvcore, quiet
from tests.counting.helpers import NESTED_MACS, Fn, Mixed, Nested, counted, square


def test_flops_are_twice_their_macs() -> None:
    # fvcore charges multiply-adds only (its "flop" is one); it does not see the scalar scaling at all.
    report = count_macs(Fn(lambda x: nn.functional.linear(x, torch.ones(6, 4)) * 2.0), (3, 4), counter="fvcore")
    assert report.ok, report.reason
    assert (report.macs, report.flops) == (72, 144)


def test_charges_and_misses_reported() -> None:
    # fvcore charges an affine layer norm 5 per element (80 elements): 400 on top of the linear and the product.
    report = count_fvcore(Mixed(), (2, 5, 8))
    assert (report.macs, report.flops) == (640 + 400 + 400, 2 * 1440)
    assert dict(report.by_op) == {"linear": 640, "layer_norm": 400, "matmul": 400}
    assert dict(report.flops_by_op) == {"linear": 1280, "layer_norm": 800, "matmul": 800}
    assert dict(report.by_module) == {"fc": 640, "act": 0, "norm": 400, "gate": 0, "(self)": 400}
    assert report.reason == "includes fvcore charges for ops attnbench does not count as MACs: layer_norm 400"
    unsupported = {op: (u.calls, u.elements, u.category) for op, u in report.uncounted.items()}
    ops = ("aten::gelu", "aten::sigmoid", "aten::sum", "aten::add")
    assert unsupported == {op: (1, 0, "unsupported by fvcore") for op in ops}
    assert count_macs(Mixed(), (2, 5, 8)).macs == 640 + 400  # attnbench: the linear and the product only


def test_quiet_silences_fvcore_and_restores_its_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("fvcore")
    before = logger.level
    logger.setLevel(logging.INFO)
    try:
        with quiet():
            assert logger.level == logging.CRITICAL
            print("printed while tracing")
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(before)
    assert capsys.readouterr().out == ""


def test_fvcore_lists_what_it_misses() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return F.scaled_dot_product_attention(y, y, y) * y

    ours, fv, th = count_all(Gate(), (1, 5, 8))
    fc, attention, product = 5 * 8 * 8, 5 * 5 * 16, 40
    assert ours.macs == fc + attention + product
    assert fv.macs == fc
    assert {"aten::scaled_dot_product_attention", "aten::mul"} <= set(fv.uncounted)
    assert th.macs == fc + attention  # ultralytics-thop counts functional sdpa, not elementwise products
    ratios = cross_check([ours, fv, th])
    assert set(flag_disagreements(ratios)) == {"fvcore", "thop"}


def test_missing_counter_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fvcore", None)
    monkeypatch.setitem(sys.modules, "fvcore.nn", None)
    report = count_macs(nn.Linear(4, 4), (1, 4), counter="fvcore")
    assert report.status == "unavailable" and "not installed" in report.reason


# --- fvcore test_flop_count.py: what fvcore charges that attnbench lists -------------------------------------
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


def test_fvcore_nested_matches_fvcore_itself() -> None:
    theirs = count_macs(Nested(), (1, 4, 5), counter="fvcore")
    assert dict(theirs.by_module_nested) == NESTED_MACS


def test_a_convolution_goes_to_the_cpu_at_once_and_says_why() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    report = count_fvcore(conv, (1, 3, 8, 8))
    assert report.macs == 4 * 6 * 6 * 3 * 9  # every output element: C_in x 3 x 3
    assert report.device == f"cpu (meta failed: {CONV_ON_META})"
    assert count_fvcore(nn.Linear(4, 4), (2, 4)).device == "meta"  # no convolution: meta, as before
