"""The counting entry points (attnbench.counting): count_macs and count_all over the three counters, modes,
errors that become report statuses, and cross_check / flag_disagreements."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench.counting import COUNTERS, count_all, count_macs, cross_check, flag_disagreements
from attnbench.counting.base import MacReport
from attnbench.errors import InvalidCaseError
from tests.counting.helpers import Broken, Two


def test_user_module_untouched_and_mode_kept() -> None:
    model = Two().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for counter in COUNTERS:
        assert count_macs(model, (1, 3, 5, 5), counter=counter).ok
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any("total_ops" in vars(m) or "total_ops" in m._buffers for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("counter", COUNTERS)
def test_failing_counter_returns_status(counter: str) -> None:
    report = count_macs(Broken(), (1, 4), counter=counter)
    assert report.status in ("failed", "unavailable")
    assert report.macs is None and report.flops is None
    assert "boom" in report.reason


class Strict(nn.Module):
    """Refuses odd widths the way zoo modules do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise InvalidCaseError("strict", "W % 2 == 0", f"W={x.shape[-1]} is odd")
        return x


@pytest.mark.parametrize("counter", COUNTERS)
def test_invalid_case_propagates(counter: str) -> None:
    with pytest.raises(InvalidCaseError):
        count_macs(Strict(), (1, 3), counter=counter)


def test_unknown_counter_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="attnbench, fvcore, thop"):
        count_macs(nn.Linear(2, 2), (1, 2), counter="ptflops")


def test_unknown_mode_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="infer, train"):
        count_macs(nn.Linear(2, 2), (1, 2), mode="eval")


@pytest.mark.parametrize("counter", [c for c in COUNTERS if c != "attnbench"])
def test_peers_cannot_count_a_backward(counter: str) -> None:
    report = count_macs(nn.Linear(4, 4), (1, 4), counter=counter, mode="train")
    assert report.status == "unavailable" and report.mode == "train"
    assert report.macs is None and report.flops is None
    assert "cannot count a backward" in report.reason


def test_count_all_train() -> None:
    reports = count_all(nn.Linear(4, 4), (2, 4), mode="train")
    assert [r.macs for r in reports] == [3 * 32, None, None]


class ConvLinear(nn.Module):
    """Convs (groups, stride, dilation) and linears only: all three counters must agree exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dw(self.stem(x)).flatten(2).transpose(1, 2))


def test_three_counters_agree_on_conv_linear() -> None:
    reports = count_all(ConvLinear(), (2, 3, 8, 8))
    # stem 2*8*64*3*9 = 27648; dw (out 4x4) 2*8*16*2*9 = 4608; fc 2*16*8*10 = 2560
    expected = 27648 + 4608 + 2560
    assert [r.counter for r in reports] == list(COUNTERS)
    assert [r.macs for r in reports] == [expected] * 3, [r.reason for r in reports]
    assert cross_check(reports) == {"attnbench": 1.0, "fvcore": 1.0, "thop": 1.0}
    for r in reports:
        assert dict(r.by_module) == {"stem": 27648, "dw": 4608, "fc": 2560}, r.counter


def test_count_all_in_the_order_asked() -> None:
    reports = count_all(ConvLinear(), (2, 3, 8, 8), counters=("thop", "attnbench"))
    assert [(r.counter, r.macs) for r in reports] == [("thop", 34816), ("attnbench", 34816)]
    with pytest.raises(ValueError, match="attnbench, fvcore, thop"):
        count_all(ConvLinear(), (2, 3, 8, 8), counters=("attnbench", "ptflops"))


def test_cross_check_against_zero_or_no_reference() -> None:
    reports = [MacReport("attnbench", 0), MacReport("fvcore", 0), MacReport("thop", 5)]
    assert cross_check(reports) == {"attnbench": 1.0, "fvcore": 1.0, "thop": float("inf")}
    assert flag_disagreements(cross_check(reports)) == {"thop": float("inf")}
    failed = [MacReport("attnbench", None, status="failed"), MacReport("thop", 5)]
    assert cross_check(failed) == {"attnbench": None, "thop": None}
    assert cross_check([MacReport("thop", 5)], reference="fvcore") == {"thop": None}


def test_flag_disagreements_tolerance() -> None:
    ratios = {"fvcore": 0.98, "thop": 1.005, "other": None}
    assert flag_disagreements(ratios) == {"fvcore": 0.98}
    assert flag_disagreements(ratios, tolerance=0.001) == {"fvcore": 0.98, "thop": 1.005}


def test_cross_check_ratios_and_flags() -> None:
    from attnbench.counting import cross_check, flag_disagreements
    from attnbench.counting.base import MacReport

    reports = [
        MacReport("attnbench", 1000),
        MacReport("fvcore", 754),
        MacReport("thop", 1005),
        MacReport("other", None, status="unavailable", reason="not installed"),
    ]
    ratios = cross_check(reports)
    assert ratios == {"attnbench": 1.0, "fvcore": 0.754, "thop": 1.005, "other": None}
    assert set(flag_disagreements(ratios)) == {"fvcore"}
