"""Outputs against the official code: golden files hold official outputs for weights we load into ours.

Each tests/golden/<name>.pt was produced by running the paper's official module (outside this repository)
on a fixed input with random weights (BN statistics randomised too), saving the input, those weights under
attnbench's parameter names, and the official output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attnbench

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def test_every_golden_file_belongs_to_a_registered_module() -> None:
    assert sorted(p.stem for p in GOLDEN.glob("*.pt")) == sorted(attnbench.list_modules())


@pytest.mark.parametrize("name", attnbench.list_modules())
def test_matches_official_output(name: str) -> None:
    path = GOLDEN / f"{name}.pt"
    assert path.exists(), f"no golden file for {name}: every registered module needs one"
    golden = torch.load(path, weights_only=True)
    module = attnbench.build(name, golden["dim"], tuple(golden["res"]), **golden["kwargs"])
    module.load_state_dict(golden["state_dict"], strict=True)
    module.eval()
    with torch.no_grad():
        out = module(golden["input"])
    assert out.shape == golden["output"].shape
    torch.testing.assert_close(out, golden["output"], rtol=1e-5, atol=1e-5)
