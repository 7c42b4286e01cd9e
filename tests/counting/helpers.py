"""Modules and helpers shared by the counting tests (each used by more than one test file here)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attnbench.counting import BACKWARD_SUFFIX, count_macs
from attnbench.counting.base import MacReport
from attnbench.counting.dispatch import DispatchCounter

#: Where small cases are counted: on meta (shapes only) and, to check that meta tells the truth, on the CPU.
DEVICES = ["meta", "cpu"]
BWD = BACKWARD_SUFFIX


class Fn(nn.Module):
    """A module whose forward is a function of its input (extra operands are made on the input's device)."""

    def __init__(self, fn: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> object:
        return self.fn(x)


def counted(module: nn.Module, shape: tuple[int, ...], device: str = "meta") -> MacReport:
    """The attnbench count of one forward, which must succeed on `device` itself."""
    report = count_macs(module, shape, device=device)
    assert report.ok, report.reason
    assert report.device == device
    return report


def macs_flops(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], device: str = "meta") -> tuple:
    """(MACs, FLOPs) of one forward of Fn(fn)."""
    report = counted(Fn(fn), shape, device)
    return report.macs, report.flops


def train(module: nn.Module, shape: tuple[int, ...], device: str = "meta") -> MacReport:
    """The attnbench count of one training step, which must succeed on `device` itself."""
    report = count_macs(module, shape, device=device, mode="train")
    assert report.ok, report.reason
    assert report.mode == "train" and report.device == device
    return report


def flops_of(step: Callable[[], None]) -> DispatchCounter:
    """A DispatchCounter used as a mode around `step`, as PyTorch's FlopCounterMode is used."""
    with DispatchCounter() as counter:
        step()
    return counter


def square(x: torch.Tensor) -> torch.Tensor:
    """x @ x, to be scripted."""
    return torch.mm(x, x)


class Mha(nn.Module):
    """nn.MultiheadAttention as self-attention on (B, N, C) tokens, optionally returning its weights.

    Without weights, on real CPU tensors in inference mode, it takes PyTorch's fused path.
    """

    def __init__(self, dim: int, heads: int, need_weights: bool = False) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=self.need_weights)[0]


class Gate(nn.Module):
    """a(x) * b(x): the gate product of two projections."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6, bias=bias), nn.Linear(6, 6, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) * self.b(x)


class Two(nn.Module):
    """Two children and a product done in the root's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Sequential(nn.Linear(4, 6), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2).transpose(1, 2)  # (1, 25, 4)
        return self.head(y) @ torch.ones(6, 2, device=x.device)


class Broken(nn.Module):
    """Fails on every device."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


class Mixed(nn.Module):
    """A linear, an activation, an affine layer norm, a Gram product and a sigmoid: what each counter charges differs.

    On (2, 5, 8): the linear 2 * 5 * 8 * 8 = 640 MACs, the product (2, 5, 8) @ (2, 8, 5) 2 * 5 * 5 * 8 = 400; the
    norm is 80 elements.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(8)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.act(self.fc(x)))
        return torch.matmul(y, y.transpose(-1, -2)) + self.gate(y).sum()


# --- fvcore's nested net (tests/test_jit_model_analysis.py): counted by attnbench and by fvcore itself ---------
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


# --- a three-level net for parameter counts and the breakdown table ---------------------------------------------
class Block(nn.Module):
    """A 1x1 conv and a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)  # 16 + 4 params; 16 pixels x 4 x 4 = 256 MACs
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class Net(nn.Module):
    """stem -> two blocks -> pool -> head: three levels of nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)  # 108 + 4 params; 16 x 4 x 3 x 9 = 1728 MACs
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(4, 2)  # 8 + 2 params; 8 MACs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))
