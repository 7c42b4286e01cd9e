"""A case checked against its module's spec before anything is allocated (check_case, validate), and the build
(build, build_module): types, constraints, layouts, resolution-bound weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attnbench.errors import InvalidCaseError
from attnbench.zoo.adapters import TokensToImage
from attnbench.zoo.build import build, build_module, check_case, validate
from attnbench.zoo.registry import get_spec


def test_validate_merges_defaults_and_returns_the_setting() -> None:
    spec, setting = validate("mhsa", 64, (14, 28), 2, heads=4)
    assert spec is get_spec("mhsa")
    assert (setting.dim, setting.height, setting.width, setting.batch) == (64, 14, 28, 2)
    assert dict(setting.kwargs) == {**spec.defaults, "heads": 4}
    _, setting = validate("mhsa", 64)
    assert (setting.height, setting.width) == (None, None)
    _, setting = validate("mhsa", 64, 16)
    assert (setting.height, setting.width) == (16, 16)


def test_check_case_takes_kwargs_as_a_mapping_and_lists_for_tuples() -> None:
    _, setting = check_case("sk", 64, (8, 8), 1, {"kernels": (3, 5)})
    assert setting["kernels"] == [3, 5]
    assert check_case("sk", 64)[1]["kernels"] == [1, 3, 5, 7]


@pytest.mark.parametrize(
    ("call", "constraint", "reason"),
    [
        ({"dim": 0}, "dim", "must be an int >= 1, got 0"),
        ({"dim": True}, "dim", "must be an int >= 1, got True"),
        ({"dim": 2.5}, "dim", "must be an int >= 1, got 2.5"),
        ({"batch": 0}, "batch", "must be an int >= 1, got 0"),
        ({"res": 0}, "resolution", "must be an int >= 1 or (H, W) of such ints, got (0, 0)"),
        ({"res": (8, 8, 8)}, "resolution", "must be an int >= 1 or (H, W) of such ints, got (8, 8, 8)"),
        ({"res": (8.0, 8)}, "resolution", "got (8.0, 8)"),
        ({"kwargs": {"heads": "four"}}, "kwargs", "heads must be an int, got 'four' (str)"),
        ({"kwargs": {"heads": True}}, "kwargs", "heads must be an int, got True (bool)"),
        ({"kwargs": {"heads": 2.5}}, "kwargs", "heads must be an int, got 2.5 (float)"),
        ({"kwargs": {"dropout": "x"}}, "kwargs", "dropout must be a number, got 'x' (str)"),
        ({"kwargs": {"d_k": "x"}}, "kwargs", "d_k must be an int or None, got 'x' (str)"),
        ({"kwargs": {"heads": 4, "window": 7}}, "kwargs", "unknown keyword(s) window; allowed: heads, d_k, d_v"),
        ({"kwargs": {"heads": 3}}, "dim % heads == 0 (when d_k or d_v is None)", "dim=64 is not divisible by heads=3"),
        ({"layout": "tokens"}, "layout", "a zoo module keeps its own layout (tokens); layouts are for your own"),
    ],
)
def test_check_case_refuses_with_the_constraint_and_reason(call: dict[str, Any], constraint: str, reason: str) -> None:
    args = {"dim": 64, "res": None, "batch": 1, "kwargs": None, "layout": "", **call}
    with pytest.raises(InvalidCaseError) as info:
        check_case("mhsa", args["dim"], args["res"], args["batch"], args["kwargs"], args["layout"])
    assert info.value.module == "mhsa" and info.value.constraint == constraint
    assert reason in info.value.reason


def test_list_kwargs_are_checked_item_by_item() -> None:
    for bad in ([], [3, "5"], 3):
        with pytest.raises(InvalidCaseError, match="kernels must be a non-empty list of ints"):
            check_case("sk", 64, None, 1, {"kernels": bad})
    with pytest.raises(InvalidCaseError, match="qkv_bias must be a bool, got 1"):
        check_case("sam", 64, None, 1, {"qkv_bias": 1})


def test_resolution_rules_wait_for_a_resolution() -> None:
    check_case("clo", 64)  # no H, W yet: the window rule is not judged
    with pytest.raises(InvalidCaseError) as info:
        check_case("clo", 64, (14, 16))
    assert info.value.constraint == "H, W % window_size == 0 (global branch on)"


def test_a_users_module_takes_any_layout_of_its_own() -> None:
    check_case("torch.nn:Identity", 16, None, 1, {}, "tokens")
    with pytest.raises(InvalidCaseError, match="'nchw' is not one of image, tokens") as info:
        check_case("torch.nn:Identity", 16, None, 1, {}, "nchw")
    assert info.value.constraint == "layout"


def test_build_gives_a_module_on_maps() -> None:
    module = build("mhsa", 32, heads=4)
    x = torch.randn(2, 32, 4, 8)
    assert module.eval()(x).shape == x.shape
    with torch.device("meta"):
        meta = build("sk", 32)
    assert all(p.device.type == "meta" for p in meta.parameters())


def test_a_resolution_bound_module_needs_its_resolution() -> None:
    with pytest.raises(InvalidCaseError, match="its weights depend on H and W: pass res=") as info:
        build("da", 16)
    assert info.value.constraint == "resolution"
    assert build("da", 16, (4, 8)).eval()(torch.randn(1, 16, 4, 8)).shape == (1, 16, 4, 8)


def test_build_module_adapts_a_users_token_module() -> None:
    image = build_module("torch.nn:Linear", 16, None, {"out_features": 16})
    assert isinstance(image, torch.nn.Linear)
    tokens = build_module("torch.nn:Linear", 16, None, {"out_features": 16}, "tokens")
    assert isinstance(tokens, TokensToImage) and isinstance(tokens.inner, torch.nn.Linear)
    assert tokens(torch.randn(2, 16, 4, 4)).shape == (2, 16, 4, 4)


def test_build_refuses_a_bad_case_before_building() -> None:
    with pytest.raises(InvalidCaseError) as info:
        build("sk", 64, 8, kernels=[2, 3])
    assert info.value.constraint == "kernels odd"
