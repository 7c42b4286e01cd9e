"""The zoo, parametrized over the registry: a module is tested by registering it."""

from __future__ import annotations

import math

import pytest
import torch

import attnbench
from attnbench.errors import InvalidCaseError
from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import Example, Setting
from tests.conftest import example_id, examples, run_cli

EXPECTED = ["acmix", "ea", "mhsa", "sk", "da", "epsa", "sam", "clo", "lka", "van"]
EXAMPLES = examples()


def _setting(name: str, ex: Example) -> Setting:
    """The Setting the spec's formulas see for an example."""
    spec = get_spec(name)
    return Setting(ex.dim, {**spec.defaults, **ex.kwargs}, ex.res[0], ex.res[1], ex.batch)


def _build(name: str, ex: Example) -> torch.nn.Module:
    """The example's module."""
    return attnbench.build(name, ex.dim, ex.res, **ex.kwargs)


def _input(ex: Example) -> torch.Tensor:
    """A random input of the example's shape."""
    return torch.randn(ex.batch, ex.dim, *ex.res)


def test_zoo_has_the_ten_entries() -> None:
    assert sorted(attnbench.list_modules()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_spec_is_complete(name: str) -> None:
    spec = get_spec(name)
    assert spec.reference.paper and spec.reference.arxiv and spec.reference.repo and spec.reference.cls
    assert len(spec.examples) >= 3, "three or more valid settings"
    assert any(ex.res[0] != ex.res[1] for ex in spec.examples), "one non-square resolution"
    assert any(ex.batch > 1 for ex in spec.examples), "one batch > 1"
    assert set(spec.kwarg_help) == set(spec.defaults), "every kwarg documented"
    named = {c.name for c in spec.constraints}
    covered = {ex.violates for ex in spec.bad_examples}
    assert named <= covered, f"constraints without a crafted bad case: {named - covered}"


@pytest.mark.parametrize(("name", "index", "ex"), EXAMPLES, ids=example_id)
def test_forward_shape_and_finite(name: str, index: int, ex: Example) -> None:
    module = _build(name, ex).eval()
    with torch.no_grad():
        y = module(_input(ex))
    stride = ex.kwargs.get("stride", get_spec(name).defaults.get("stride", 1))
    assert y.shape == (ex.batch, ex.dim, math.ceil(ex.res[0] / stride), math.ceil(ex.res[1] / stride))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(("name", "index", "ex"), EXAMPLES, ids=example_id)
def test_params_match_formula(name: str, index: int, ex: Example) -> None:
    module = _build(name, ex)
    assert sum(p.numel() for p in module.parameters()) == get_spec(name).params_formula(_setting(name, ex))


@pytest.mark.parametrize(("name", "index", "ex"), EXAMPLES, ids=example_id)
def test_macs_match_formula(name: str, index: int, ex: Example) -> None:
    module = _build(name, ex)
    report = attnbench.count_macs(module, (ex.batch, ex.dim, *ex.res), counter="attnbench")
    assert report.status == "ok", report.reason
    assert report.macs == get_spec(name).macs_formula(_setting(name, ex))


@pytest.mark.parametrize("name", EXPECTED)
def test_gradients_reach_every_parameter(name: str) -> None:
    ex = get_spec(name).examples[0]
    module = _build(name, ex).train()
    x = _input(Example(ex.dim, ex.res, ex.kwargs, batch=max(ex.batch, 2)))
    module(x).square().mean().backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", EXPECTED)
def test_deterministic_under_fixed_seed(name: str) -> None:
    ex = get_spec(name).examples[0]
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        module = _build(name, ex).eval()
        x = _input(ex)
        with torch.no_grad():
            outs.append((module(x), module.state_dict()))
    assert torch.equal(outs[0][0], outs[1][0])
    for key, value in outs[0][1].items():
        assert torch.equal(value, outs[1][1][key]), key


BAD = [(name, ex) for name in EXPECTED for ex in get_spec(name).bad_examples]


@pytest.mark.parametrize(("name", "ex"), BAD, ids=lambda v: v if isinstance(v, str) else str(v.violates))
def test_constraint_rejects_bad_case_with_reason(name: str, ex: Example) -> None:
    with pytest.raises(InvalidCaseError) as info:
        attnbench.validate(name, ex.dim, ex.res, ex.batch, **ex.kwargs)
    assert info.value.constraint == ex.violates
    assert info.value.module == name
    assert name in str(info.value) and info.value.reason
    # build() refuses the same case before allocating anything.
    with pytest.raises(InvalidCaseError):
        attnbench.build(name, ex.dim, ex.res, **ex.kwargs)


@pytest.mark.parametrize("name", EXPECTED)
@pytest.mark.parametrize("dim", [0, -4, 2.5, True])
def test_bad_dim_is_refused(name: str, dim: object) -> None:
    with pytest.raises(InvalidCaseError, match="dim"):
        attnbench.build(name, dim, 16)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", EXPECTED)
def test_unknown_kwarg_is_refused_with_the_allowed_ones(name: str) -> None:
    with pytest.raises(InvalidCaseError, match="unknown keyword") as info:
        attnbench.build(name, 64, 16, not_a_kwarg=1)
    for key in get_spec(name).defaults:
        assert key in str(info.value)


def test_resolution_bound_module_refuses_another_resolution() -> None:
    module = attnbench.build("da", 16, 8)
    with pytest.raises(InvalidCaseError, match="8x8"):
        module(torch.randn(1, 16, 12, 12))


# ---------------------------------------------------------------- sk, submodule by submodule


def _breakdown_rows(out: str) -> dict[str, list[str]]:
    """Module name -> its other cells, from the breakdown table printed after the summary (first one of a name)."""
    lines = out[out.index("per submodule") :].splitlines()
    rows = {}
    for line in lines[1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows.setdefault(cells[0], cells[1:])
    return rows


@pytest.mark.parametrize("depth", [1, 2])
def test_breakdown_depth_shows_nested_submodules_with_params_and_macs(
    depth: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from attnbench import fmt
    from attnbench.counting import count_macs

    monkeypatch.setenv("COLUMNS", "120")
    argv = f"profile sk --dim 32 --res 8 --metrics params,macs --breakdown --depth {depth} --quiet".split()
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    rows = _breakdown_rows(out)
    with torch.device("meta"):
        sk = attnbench.build("sk", 32)
    macs = count_macs(sk, (1, 32, 8, 8))
    assert rows["model"][:4] == ["SKAttention", fmt.si(91_680), fmt.si(macs.macs), fmt.si(macs.flops)]
    convs = sum(p.numel() for p in sk.convs.parameters())
    assert rows["convs"][:3] == ["ModuleList", fmt.si(convs), fmt.si(macs.by_module_nested["convs"])]
    assert ("3" in rows) == (depth == 2)  # convs.3, the 7x7 branch, is one level deeper (listed before fcs.3)
    if depth == 2:
        assert rows["3"][2] == fmt.si(32 * 32 * 7 * 7 * 8 * 8)  # its conv: C x C x k^2 x H x W MACs
