"""The token adapter: a (B, N, C) module run on (B, C, H, W) maps, called as its forward expects; and the line a
failed forward becomes, naming the layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench.results import USER_LAYOUTS
from attnbench.zoo.adapters import LAYOUT_SHAPES, TokensToImage, adapter_for, forward_failure, layouts_that_run


class Record(nn.Module):
    """Returns its first input plus one and keeps what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[object, ...]] = []

    def forward(self, *args: object) -> torch.Tensor:
        self.calls.append(args)
        first = args[0]
        assert isinstance(first, torch.Tensor)
        return first + 1


def test_tokens_are_the_map_flattened_and_come_back_as_a_map() -> None:
    x = torch.randn(2, 16, 4, 8)
    inner = Record()
    out = TokensToImage(inner)(x)
    ((tokens,),) = inner.calls
    assert tokens.shape == (2, 32, 16)
    assert torch.equal(tokens, x.flatten(2).transpose(1, 2))
    assert torch.equal(out, x + 1)


def test_a_token_linear_is_a_1x1_conv_on_the_map() -> None:
    linear = nn.Linear(16, 24)
    conv = nn.Conv2d(16, 24, 1)
    conv.weight.data = linear.weight.data.view(24, 16, 1, 1).clone()
    conv.bias.data = linear.bias.data.clone()
    x = torch.randn(2, 16, 4, 8)
    torch.testing.assert_close(TokensToImage(linear)(x), conv(x))


def test_pass_hw_and_self_attention_call_conventions() -> None:
    x = torch.randn(1, 8, 2, 3)
    inner = Record()
    TokensToImage(inner, pass_hw=True)(x)
    (call,) = inner.calls
    assert call[1:] == (2, 3)
    inner = Record()
    TokensToImage(inner, self_attention=True)(x)
    (call,) = inner.calls
    assert len(call) == 3 and call[0] is call[1] is call[2]


@pytest.mark.parametrize(
    ("layout", "runs_with", "line"),
    [
        ("image", [], "forward failed with layout image (it got (2, 16, 4, 8)): boom"),
        (
            "image",
            ["tokens"],
            "forward failed with layout image (it got (2, 16, 4, 8)): boom; the input's layout was the problem: it "
            "runs with --layout tokens ((B, N, C) in and out, N = H*W)",
        ),
        ("tokens-hw", [], "forward failed with layout tokens-hw (it got (2, 32, 16), H, W): boom"),
        ("", [], "forward failed: boom"),  # a zoo module: its layout is its own
    ],
)
def test_forward_failure_names_the_cause_and_a_layout_only_where_the_module_runs(
    layout: str, runs_with: list[str], line: str
) -> None:
    assert forward_failure(layout, (2, 16, 4, 8), "boom", runs_with) == line
    assert set(LAYOUT_SHAPES) == set(USER_LAYOUTS)


class Pair(nn.Module):
    """(B, N, C) tokens in; the tokens plus one and their mean over N out, as a tuple (attention weights' place)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, x.mean(1)


class Keyed(nn.Module):
    """(B, N, C) in; a dict whose first tensor is the tokens."""

    def forward(self, x: torch.Tensor, h: int, w: int) -> dict[str, torch.Tensor]:
        return {"out": x * 2, "hw": torch.tensor([h, w])}


def test_the_adapter_converts_the_first_tensor_of_a_tuple_or_dict_and_passes_the_rest() -> None:
    x = torch.randn(2, 16, 4, 8)
    out, mean = adapter_for("tokens", Pair())(x)
    assert torch.equal(out, x + 1) and mean.shape == (2, 16)
    keyed = adapter_for("tokens-hw", Keyed())(x)
    assert torch.equal(keyed["out"], 2 * x) and keyed["hw"].tolist() == [4, 8]  # forward(x, H, W)
    assert adapter_for("image", Pair()).__class__ is Pair  # the image layout needs no adapter


def test_tokens_of_another_count_are_passed_on_as_they_are() -> None:
    shrink = nn.Linear(16, 16)
    out = TokensToImage(_Drop(shrink))(torch.randn(1, 16, 4, 4))
    assert out.shape == (1, 8, 16)  # N = 8, not H*W = 16: not a map of this size, so not reshaped into one


class _Drop(nn.Module):
    """Keeps every other token (a patch-merging stand-in)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x[:, ::2])


def test_the_layouts_a_module_runs_in_are_found_on_meta() -> None:
    linear = nn.Linear(16, 16)
    assert layouts_that_run(linear, "image", (1, 16, 4, 4)) == ["tokens"]  # (B, N, C): tokens, not (x, H, W)
    assert layouts_that_run(TokensToImage(Keyed(), pass_hw=True), "tokens", (1, 16, 4, 4)) == ["tokens-hw"]
    assert layouts_that_run(nn.Conv2d(16, 16, 1), "image", (1, 16, 4, 4)) == []
