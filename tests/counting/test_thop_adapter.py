"""ultralytics-thop as a counter (attnbench.counting.thop_adapter): its hooks' charges, what it has no rule for,
and how its numbers are reported."""

from __future__ import annotations

import torch
from torch import nn

from attnbench.counting import count_macs
from tests.counting.helpers import Fn


def test_flops_are_twice_their_macs() -> None:
    # thop charges multiply-adds only; it does not see the scalar scaling at all.
    report = count_macs(Fn(lambda x: nn.functional.linear(x, torch.ones(6, 4)) * 2.0), (3, 4), counter="thop")
    assert report.ok, report.reason
    assert (report.macs, report.flops) == (72, 144)
