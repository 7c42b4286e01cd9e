"""Exact FLOPs: 2 per multiply-add, 1 per lone elementwise product, 2 for a product a sum consumes.

The dispatch counter's rule (attnbench.counting.dispatch docstring) is checked on small hand-built forwards,
then on every example of every zoo module against FLOPs = 2 x the registry's MAC formula minus one FLOP per
element of each lone product, written here by hand for each module.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import attnbench
from attnbench.counting import CONVENTION, count_macs
from attnbench.counting.base import MacReport
from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import Example, Setting
from tests.conftest import example_id, examples


class Fn(nn.Module):
    """A module whose forward is a function of its input."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def counted(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], device: str = "meta") -> MacReport:
    report = count_macs(Fn(fn), shape, device=device)
    assert report.ok, report.reason
    return report


def macs_flops(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], device: str = "meta") -> tuple:
    report = counted(fn, shape, device)
    return report.macs, report.flops


SHAPE = (2, 3, 4, 5)  # 120 elements
N = 120


# --- the rule on hand-built forwards -----------------------------------------------------------------------
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_lone_gate_is_one_flop_per_element(device: str) -> None:
    assert macs_flops(lambda x: x * torch.sigmoid(x), SHAPE, device) == (N, N)
    # a broadcast gate (SE style, (2, 3, 1, 1) against (2, 3, 4, 5)) is still one product per output element
    assert macs_flops(lambda x: x * x.mean((2, 3), keepdim=True).sigmoid(), SHAPE, device) == (N, N)


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


def test_matmul_and_conv_flops_are_twice_their_macs() -> None:
    report = count_macs(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(2), nn.Linear(25, 6)), (2, 3, 5, 5))
    assert report.macs == 2 * 4 * 25 * 3 * 9 + 2 * 4 * 6 * 25
    assert report.flops == 2 * report.macs
    assert dict(report.flops_by_op) == {op: 2 * n for op, n in report.by_op.items()}


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


def test_convention_states_the_exact_rule() -> None:
    assert CONVENTION == "one multiply-add = 1 MAC = 2 FLOPs; a lone elementwise product = 1 MAC = 1 FLOP"
    report = count_macs(nn.Linear(4, 4), (1, 4))
    assert CONVENTION in report.format()
    assert "FLOPs 32" in report.format()


@pytest.mark.parametrize("counter", ["fvcore", "thop"])
def test_peers_flops_are_twice_their_macs(counter: str) -> None:
    # They charge multiply-adds only (fvcore's "flop" is one); they do not see the gate at all.
    report = count_macs(Fn(lambda x: nn.functional.linear(x, torch.ones(6, 4)) * 2.0), (3, 4), counter=counter)
    assert report.ok, report.reason
    assert (report.macs, report.flops) == (72, 144)


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
