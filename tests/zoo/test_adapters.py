"""The token adapter: a (B, N, C) module run on (B, C, H, W) maps, called as its forward expects; and the line a
failed forward becomes, naming the layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench.zoo.adapters import LAYOUT_SHAPES, TokensToImage, forward_failure


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
    ("layout", "line"),
    [
        (
            "image",
            "forward failed with layout image ((B, C, H, W) in and out; it got (2, 16, 4, 8)); if the module takes "
            "(B, N, C), try --layout tokens: boom",
        ),
        (
            "tokens",
            "forward failed with layout tokens ((B, N, C) in and out, N = H*W; it got (2, 32, 16)); if the module "
            "takes (B, C, H, W), try --layout image: boom",
        ),
        ("", "forward failed: boom"),  # a zoo module: its layout is its own
    ],
)
def test_forward_failure_names_the_layout_and_suggests_the_other(layout: str, line: str) -> None:
    assert forward_failure(layout, (2, 16, 4, 8), "boom") == line
    assert set(LAYOUT_SHAPES) == {"image", "tokens"}
