"""The shared pieces of the counters (attnbench.counting.base): the convention, the report record and its text,
input and shape checks, and module copies that leave the user's module alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench.counting import CONVENTION, count_macs
from attnbench.counting.base import (
    MacReport,
    UncountedOp,
    check_mode,
    check_shape,
    copy_to,
    doubled,
    make_input,
    module_dtype,
    on_meta,
    short_reason,
    tensor_bytes,
    unavailable,
)
from tests.counting.helpers import train


def test_convention_states_the_exact_rule() -> None:
    assert CONVENTION == "one multiply-add = 1 MAC = 2 FLOPs; a lone elementwise product = 1 MAC = 1 FLOP"
    report = count_macs(nn.Linear(4, 4), (1, 4))
    assert CONVENTION in report.format()
    assert "FLOPs 32" in report.format()


def test_format_shows_both_phases() -> None:
    text = train(nn.Linear(8, 5), (4, 8)).format()
    assert "mode train" in text and "forward MACs 160  backward MACs 320" in text


def test_report_mappings_are_frozen_copies() -> None:
    ops = {"aten.mm": 10}
    report = MacReport("attnbench", 10, by_op=ops, input_shape=[1, 4])  # type: ignore[arg-type]
    ops["aten.mm"] = 0
    assert dict(report.by_op) == {"aten.mm": 10} and report.input_shape == (1, 4)
    with pytest.raises(TypeError):
        report.by_op["aten.mm"] = 0  # type: ignore[index]


def test_forward_part_of_a_step() -> None:
    step = MacReport("attnbench", 300, flops=600, mode="train", backward_macs=200, backward_flops=400)
    assert (step.forward_macs, step.forward_flops) == (100, 200)
    missing = unavailable("fvcore", "not installed", (1, 4))
    assert (missing.forward_macs, missing.forward_flops) == (None, None)
    assert (missing.status, missing.ok, missing.device, missing.input_shape) == ("unavailable", False, "", (1, 4))


def test_format_of_a_failed_count_and_of_a_long_list() -> None:
    failed = unavailable("thop", "thop is not installed", (1, 4), "meta")
    assert failed.format().splitlines() == [
        f"# thop: {CONVENTION}",
        "input (1, 4) on meta, mode infer",
        "status unavailable: thop is not installed",
    ]
    listed = {f"aten.op{i}": UncountedOp(1, i, "other") for i in range(5)}
    text = MacReport("attnbench", 0, uncounted=listed, flops=0).format(top=2)
    assert "aten.op4" in text and "aten.op3" in text and "aten.op2" not in text  # the most elements first
    assert text.endswith("  ... and 3 more")


def test_doubled_charges_two_flops_per_mac() -> None:
    assert doubled({"stem": 27648, "(self)": 0}) == {"stem": 55296, "(self)": 0}


def test_check_shape_and_mode() -> None:
    assert check_shape([1, 3, 8, 8]) == (1, 3, 8, 8)
    for bad in [(), (1, 0), (1, 2.0), (True, 3)]:
        with pytest.raises(ValueError, match="input_shape"):
            check_shape(bad)  # type: ignore[arg-type]
    assert check_mode("train") == "train"
    with pytest.raises(ValueError, match="valid modes are infer, train"):
        check_mode("eval")


def test_make_input_seeded_on_cpu_empty_on_meta() -> None:
    empty = make_input((2, 3), "meta", torch.bfloat16)
    assert empty.is_meta and empty.shape == (2, 3) and empty.dtype == torch.bfloat16
    torch.manual_seed(123)  # the global generator does not matter
    values = make_input((2, 3), "cpu", torch.float32)
    assert torch.equal(values, torch.randn((2, 3), generator=torch.Generator().manual_seed(0)))


def test_module_dtype() -> None:
    assert module_dtype(nn.Linear(2, 2).to(torch.bfloat16)) == torch.bfloat16
    assert module_dtype(nn.BatchNorm1d(2, affine=False).double()) == torch.float64  # buffers count too
    assert module_dtype(nn.ReLU()) == torch.float32  # nothing floating: float32


class Holder(nn.Module):
    """A linear with a frozen bias, a buffer, and a plain tensor attribute (a precomputed index)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.fc.bias.requires_grad_(False)
        self.register_buffer("scale", torch.ones(2))
        self.index = torch.arange(3)


def test_copy_to_meta_copies_no_data_and_leaves_the_original() -> None:
    model = Holder().train()
    copy = copy_to(model, "meta")
    assert all(t.is_meta for t in (*copy.parameters(), *copy.buffers(), copy.index))
    assert not copy.training and model.training
    assert isinstance(copy.fc.weight, nn.Parameter) and copy.fc.weight.requires_grad and not copy.fc.bias.requires_grad
    assert not model.fc.weight.is_meta and not model.index.is_meta
    assert on_meta(copy) and not on_meta(model) and not on_meta(nn.ReLU())  # no tensors: not "on meta"
    back = copy_to(copy, "cpu")  # meta weights have no values: zeros stand in
    assert torch.equal(back.fc.weight, torch.zeros(2, 3)) and back.index.device.type == "cpu"


def test_short_reason() -> None:
    assert short_reason(ValueError("bad shape\nmore detail")) == "ValueError: bad shape"
    assert short_reason(RuntimeError()) == "RuntimeError"
    assert short_reason(RuntimeError("x" * 300), limit=20) == "RuntimeError: xxx..."


def test_tensor_bytes_of_input_weights_and_buffers() -> None:
    # Linear(8, 5): 45 float32 parameters = 180 B; a (4, 8) float32 input = 128 B
    assert tensor_bytes(nn.Linear(8, 5), (4, 8), torch.float32) == 180 + 128
    # BatchNorm1d(4): 8 float32 parameters (32 B), running mean and var (32 B), an int64 step count (8 B); the
    # input is counted in the dtype asked for: (2, 4) bfloat16 = 16 B
    assert tensor_bytes(nn.BatchNorm1d(4), (2, 4), torch.bfloat16) == 32 + 32 + 8 + 16


def test_outputs_of_any_structure_are_found_named_and_summed() -> None:
    from attnbench.counting.base import first_tensor, output_shapes, replace_first_tensor, scalar_loss, tensor_outputs

    a, b = torch.ones(1, 2), torch.ones(3)
    out = {"logits": a, "aux": (b, None, [b])}
    assert [(p, t.shape) for p, t in tensor_outputs(out)] == [("logits", (1, 2)), ("aux.0", (3,)), ("aux.2.0", (3,))]
    assert output_shapes(a) == "(1, 2)" and output_shapes((a, b)) == "0: (1, 2); 1: (3,)"
    assert first_tensor(out) is a and first_tensor(("no", 1)) is None
    swapped = replace_first_tensor(out, b)
    assert swapped["logits"] is b and swapped["aux"][0] is b and isinstance(swapped["aux"], tuple)
    x = torch.ones(2, requires_grad=True)
    assert scalar_loss((x * 2, x * 3, torch.ones(4))).item() == 10.0  # outputs without grad are left out
    with pytest.raises(ValueError, match="does not require grad"):
        scalar_loss(torch.ones(2))
