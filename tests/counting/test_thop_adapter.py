"""ultralytics-thop as a counter (attnbench.counting.thop_adapter): its hooks' charges, what it has no rule for,
and how its numbers are reported."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from attnbench.counting import count_macs
from attnbench.counting.thop_adapter import count_thop
from tests.counting.helpers import Fn, Mixed


def test_flops_are_twice_their_macs() -> None:
    # thop charges multiply-adds only; it does not see the scalar scaling at all.
    report = count_macs(Fn(lambda x: nn.functional.linear(x, torch.ones(6, 4)) * 2.0), (3, 4), counter="thop")
    assert report.ok, report.reason
    assert (report.macs, report.flops) == (72, 144)


def test_charges_and_rule_less_layers_reported() -> None:
    # thop charges an affine LayerNorm 2 x 2 per element (80 elements): 320 on top of the linear; the functional
    # matmul is booked on no module, so under "(self)". GELU and Sigmoid have no thop rule: listed, counted as 0.
    report = count_thop(Mixed(), (2, 5, 8))
    assert (report.macs, report.flops) == (640 + 320 + 400, 2 * 1360)
    assert dict(report.by_module) == {"fc": 640, "act": 0, "norm": 320, "gate": 0, "(self)": 400}
    assert dict(report.flops_by_module) == {"fc": 1280, "act": 0, "norm": 640, "gate": 0, "(self)": 800}
    assert dict(report.by_op) == {} and report.device == "meta"
    listed = {op: (u.calls, u.elements, u.category) for op, u in report.uncounted.items()}
    assert listed == {"GELU": (1, 0, "no thop rule (leaf module)"), "Sigmoid": (1, 0, "no thop rule (leaf module)")}
    assert report.reason == "includes thop charges for 1 norm/softmax/pool layer(s) attnbench does not count"


def test_missing_thop_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "thop", None)
    report = count_thop(nn.Linear(4, 4), (1, 4))
    assert report.status == "unavailable" and report.macs is None
    assert "not installed" in report.reason and "pip install ultralytics-thop" in report.reason


def test_a_cpu_module_is_counted_on_the_cpu_as_it_is_and_given_back_unchanged() -> None:
    from attnbench.counting.fallback import OWN_DEVICE

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).train()
    buffers = [sorted(m._buffers) for m in net.modules()]
    report = count_thop(net, (1, 3, 8, 8), activation_bytes=10_000)  # the estimate says it fits
    assert report.device == OWN_DEVICE and report.by_module["0"] == 8 * 6 * 6 * 27  # the conv: C_in x 3 x 3 each
    assert net.training and [sorted(m._buffers) for m in net.modules()] == buffers
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    on_meta = count_thop(net, (1, 3, 8, 8))  # without an estimate: meta, as before
    assert on_meta.device == "meta" and on_meta.macs == report.macs
