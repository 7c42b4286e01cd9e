"""Parameter counts (attnbench.counting.params): exact totals, tied weights, buffers apart, nesting."""

from __future__ import annotations

import torch
from torch import nn

from attnbench.counting import count_params
from tests.counting.helpers import Net


def test_count_params_exact_tied_and_buffers() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)  # 15
            self.b = self.a  # the same Parameter objects: counted once
            self.bn = nn.BatchNorm2d(4)  # 8 params; buffers 4 + 4 + 1
            shared = torch.zeros(6)
            self.p = nn.Parameter(shared)  # two distinct Parameters on one storage: both counted
            self.q = nn.Parameter(shared, requires_grad=False)

    model = Tied()
    report = count_params(model)
    assert report.total == sum(p.numel() for p in model.parameters()) == 15 + 8 + 6 + 6
    assert report.trainable == 29 and report.frozen == 6
    assert dict(report.by_module) == {"a": 15, "bn": 8, "(self)": 12}  # b is a, listed once
    assert report.buffers == 9


def test_nested_params() -> None:
    report = count_params(Net())
    assert report.total == 112 + 2 * 20 + 10
    assert dict(report.by_module_nested) == {
        "stem": 112,
        "blocks": 40,
        "blocks.0": 20,
        "blocks.0.conv": 20,
        "blocks.0.act": 0,
        "blocks.1": 20,
        "blocks.1.conv": 20,
        "blocks.1.act": 0,
        "head": 10,
    }
    assert report.types[""] == "Net" and report.types["blocks.1"] == "Block" and report.types["head"] == "Linear"


def test_nested_params_tied_weights_go_to_first_owner() -> None:
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    model[1].weight = model[0].weight
    assert dict(count_params(model).by_module_nested) == {"0": 9, "1": 0}


class Scaled(nn.Module):
    """A frozen parameter on the root itself, and a child with a parameter-free submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3), requires_grad=False)
        self.proj = nn.Sequential(nn.Linear(4, 3), nn.Identity())


def test_params_of_the_root_itself_and_frozen_ones() -> None:
    report = count_params(Scaled())
    assert (report.total, report.trainable, report.frozen, report.buffers) == (18, 15, 3, 0)
    assert dict(report.by_module) == {"proj": 15, "(self)": 3}
    assert dict(report.by_module_nested) == {"proj": 15, "proj.0": 15, "proj.1": 0}
    assert dict(report.types) == {"": "Scaled", "proj": "Sequential", "proj.0": "Linear", "proj.1": "Identity"}
