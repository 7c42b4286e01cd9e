"""The shared pieces of the counters (attnbench.counting.base): the convention, the report record and its text,
input and shape checks, and module copies that leave the user's module alone."""

from __future__ import annotations

from torch import nn

from attnbench.counting import CONVENTION, count_macs
from tests.counting.helpers import train


def test_convention_states_the_exact_rule() -> None:
    assert CONVENTION == "one multiply-add = 1 MAC = 2 FLOPs; a lone elementwise product = 1 MAC = 1 FLOP"
    report = count_macs(nn.Linear(4, 4), (1, 4))
    assert CONVENTION in report.format()
    assert "FLOPs 32" in report.format()


def test_format_shows_both_phases() -> None:
    text = train(nn.Linear(8, 5), (4, 8)).format()
    assert "mode train" in text and "forward MACs 160  backward MACs 320" in text
