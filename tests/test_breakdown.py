"""Breakdowns: counts per module class (inclusive, outermost instances, shares), a profiled step's times per
submodule and per aten operator with the counter's MACs beside them, and a module whose constructor needs data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attnbench import results as R
from attnbench.breakdown import PROFILED_CALLS, Timed, breakdown, by_type, profile_step, untimed_reason
from attnbench.counting import count_macs, count_params
from attnbench.results import Case, Result


class Block(nn.Module):
    """conv -> (a nested Block of its own, optional) -> linear over channels."""

    def __init__(self, c: int, inner: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.inner = Block(c, False) if inner else None
        self.mix = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.inner is not None:
            x = self.inner(x)
        return self.mix(x)


class Net(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(c, True), Block(c, False)])
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_by_type_counts_outermost_instances_inclusively_with_shares() -> None:
    net, c, hw = Net(4), 4, 8 * 8
    params, macs = count_params(net), count_macs(net, (1, c, 8, 8))
    rows = {r.type: r for r in by_type(params, macs)}
    conv3, conv1, head = c * c * 9 * hw, c * c * hw, 2 * c * hw
    assert macs.macs == 3 * (conv3 + conv1) + head
    # Block: the two outermost instances (the nested one is inside the first): everything but the head.
    assert (rows["Block"].instances, rows["Block"].macs) == (2, 3 * (conv3 + conv1))
    assert rows["Block"].macs_share == pytest.approx(3 * (conv3 + conv1) / macs.macs)
    assert (rows["Conv2d"].instances, rows["Conv2d"].macs, rows["Conv2d"].macs_share) == (7, macs.macs, 1.0)
    assert rows["Conv2d"].params == params.total and rows["Block"].params == params.total - (2 * c + 2)
    assert next(iter(rows)) == "Conv2d" and rows["Conv2d"].flops == 2 * macs.macs  # most MACs first


def test_a_container_without_a_forward_holds_its_childrens_time() -> None:
    timed = Timed({"": 1.0, "blocks.0": 0.5, "blocks.1": 0.25, "blocks.0.conv": 0.125}, [], 1.0, 0.5, 3)
    assert timed.seconds("blocks") == 0.75 and timed.share("blocks") == 0.75  # a ModuleList never runs itself
    assert timed.share("head") is None and timed.overhead == 1.0


def test_a_profiled_step_times_every_submodule_and_operator() -> None:
    net = Net(4).eval()
    row = Result.for_case(Case("x", 4, 8, 8), latency_median_s=1e-3)
    macs = count_macs(net, (1, 4, 8, 8))
    timed = profile_step(net, row, macs)
    assert timed.calls == PROFILED_CALLS and timed.unprofiled_s == 1e-3
    assert {"", "blocks.0", "blocks.0.inner", "blocks.1.mix", "head"} <= set(timed.module_s)
    assert timed.share("") == 1.0 and 0 < timed.share("blocks.0") < 1
    conv = next(op for op in timed.ops if op.name == "aten::conv2d")
    assert conv.calls == 7 and conv.macs == macs.macs and conv.rate is not None and conv.rate > 0
    assert conv.total_s >= conv.self_s and all(op.name.startswith("aten::") for op in timed.ops)


NEEDS_DATA = """
import torch
from torch import nn


class Backbone(nn.Module):
    def __init__(self, depth=2):
        super().__init__()
        rates = [x.item() for x in torch.linspace(0, 0.1, depth)]  # fails on the meta device
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in rates])

    def forward(self, x):
        return self.blocks(self.stem(x))
"""


def test_a_constructor_that_needs_data_is_built_on_the_cpu_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bb.py").write_text(NEEDS_DATA)
    row = Result.for_case(Case("bb.py:Backbone(depth=3)", 3, 16, 16, scenario=R.Scenario(layout="image")))
    result = breakdown(row)
    assert result.built_on.startswith("cpu (meta build failed: RuntimeError: Tensor.item() cannot be called on meta")
    assert result.params.total == (3 * 9 * 8 + 8) + 3 * (8 * 9 * 8 + 8)
    assert result.macs.ok and result.timed is None and "no latency" in result.untimed


def test_only_a_measured_row_on_a_profiling_backend_is_timed() -> None:
    counts = Result.for_case(Case("lka", 8, 8, 8, backend="none"))
    ort = Result.for_case(Case("lka", 8, 8, 8, backend="ort"), latency_median_s=1e-3)
    cpu = Result.for_case(Case("lka", 8, 8, 8, backend="cpu"), latency_median_s=1e-3)
    assert "no latency" in untimed_reason(counts)
    assert "does not see ort's operators" in untimed_reason(ort)
    assert untimed_reason(cpu) == ""
