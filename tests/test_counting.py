"""Counting: every counted operator family against hand arithmetic, the adapters, params, failure paths."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnbench.counting import (
    CONVENTION,
    COUNTERS,
    count_all,
    count_macs,
    count_params,
    cross_check,
    flag_disagreements,
)
from attnbench.counting.dispatch import DispatchCounter
from attnbench.errors import InvalidCaseError


class Fn(nn.Module):
    """A module whose forward is a given function of its input (and optional extra tensors made from it)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def macs(fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], device: str = "meta") -> int:
    report = count_macs(Fn(fn), shape, device=device)
    assert report.status == "ok", report.reason
    assert report.macs is not None
    return report.macs


# --- matrix products ------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_matmul_function_and_operator(device: str) -> None:
    w = torch.randn(5, 6, device=device)
    # (2, 3, 4, 5) @ (5, 6): 2*3*4 rows x 6 columns x 5 contracted
    assert macs(lambda x: torch.matmul(x, w.to(x.device)), (2, 3, 4, 5), device) == 2 * 3 * 4 * 6 * 5
    assert macs(lambda x: x @ w.to(x.device), (2, 3, 4, 5), device) == 720
    # batched (2, 4, 5) @ (2, 5, 4) and a vector product (5,) @ (5,)
    assert macs(lambda x: x @ x.transpose(-1, -2), (2, 4, 5), device) == 2 * 4 * 4 * 5
    assert macs(lambda x: x @ x, (5,), device) == 5


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_einsum_bmm_baddbmm_tensordot(device: str) -> None:
    k = torch.randn(2, 3, 5, 6, device=device)
    assert macs(lambda x: torch.einsum("bhnd,bhmd->bhnm", x, k.to(x.device)), (2, 3, 4, 6), device) == 720
    b = torch.randn(2, 4, 5, device=device)
    assert macs(lambda x: torch.bmm(x, b.to(x.device)), (2, 3, 4), device) == 2 * 3 * 4 * 5
    bias = torch.randn(2, 3, 5, device=device)
    # the bias add of baddbmm is not a MAC
    assert macs(lambda x: torch.baddbmm(bias.to(x.device), x, b.to(x.device)), (2, 3, 4), device) == 120
    t = torch.randn(4, 5, 6, device=device)
    assert macs(lambda x: torch.tensordot(x, t.to(x.device), dims=2), (3, 4, 5), device) == 3 * 6 * 4 * 5


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_linear_on_3d_input_bias_not_counted(device: str) -> None:
    layer = nn.Linear(8, 5)
    report = count_macs(layer, (2, 7, 8), device=device)
    assert report.macs == 2 * 7 * 8 * 5
    assert dict(report.by_op) == {"aten.linear": 560}


# --- attention ------------------------------------------------------------------------------------------
B, H, NQ, NK, DK, DV = 2, 3, 7, 9, 8, 4


def _sdpa(x: torch.Tensor) -> torch.Tensor:
    k = torch.ones(B, H, NK, DK, device=x.device)
    v = torch.ones(B, H, NK, DV, device=x.device)
    return F.scaled_dot_product_attention(x, k, v)


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_sdpa_counted_on_meta_and_cpu(device: str) -> None:
    report = count_macs(Fn(_sdpa), (B, H, NQ, DK), device=device)
    assert report.macs == B * H * NQ * NK * (DK + DV) == 4536
    assert report.device == device


def test_sdpa_cpu_fused_kernel_counted() -> None:
    # Equal head sizes make the CPU flash kernel eligible; under no_grad the composite decomposes to it.
    q, k, v = torch.randn(B, H, NQ, DK), torch.randn(B, H, NK, DK), torch.randn(B, H, NK, DK)
    with torch.no_grad(), DispatchCounter() as counter:
        F.scaled_dot_product_attention(q, k, v)
    assert dict(counter.by_op) == {"aten._scaled_dot_product_flash_attention_for_cpu": B * H * NQ * NK * 2 * DK}
    with torch.inference_mode(), DispatchCounter() as counter:
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    assert counter.total == 2 * 3 * 7 * 9 * 16


class SelfAttention(nn.Module):
    """nn.MultiheadAttention on (B, N, C) tokens; on real CPU tensors in inference mode it takes the fused path."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_multihead_attention_fast_and_slow_path(device: str) -> None:
    report = count_macs(SelfAttention(16, 4), (1, 10, 16), device=device)
    # q, k, v and output projections: 4 * 10 * 16 * 16; attention: 4 heads * 10 * 10 * (4 + 4)
    assert report.macs == 4 * 10 * 16 * 16 + 4 * 10 * 10 * 8


# --- convolutions ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_conv_groups_dilation_stride(device: str) -> None:
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=1, dilation=2, groups=4)
    # out side: (16 + 2 - 2*2 - 1) // 2 + 1 = 7; MACs = 12 * 7 * 7 * (8 / 4) * 3 * 3
    assert count_macs(conv, (1, 8, 16, 16), device=device).macs == 12 * 49 * 2 * 9 == 10584
    conv1d = nn.Conv1d(4, 6, 3, stride=2, bias=False)  # out length (11 - 3) // 2 + 1 = 5
    assert count_macs(conv1d, (2, 4, 11), device=device).macs == 2 * 6 * 5 * 4 * 3
    conv3d = nn.Conv3d(2, 4, (1, 3, 3), padding=(0, 1, 1))
    assert count_macs(conv3d, (1, 2, 3, 5, 5), device=device).macs == 4 * 3 * 5 * 5 * 2 * 9


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_transposed_conv_charges_each_input_element(device: str) -> None:
    deconv = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    # every input element meets (6 / 2) * 3 * 3 weights
    assert count_macs(deconv, (1, 4, 5, 5), device=device).macs == 100 * 3 * 9


# --- elementwise ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_elementwise_products(device: str) -> None:
    shape = (2, 3, 4, 4)
    assert macs(lambda x: x * x, shape, device) == 96
    assert macs(lambda x: x * x.mean((2, 3), keepdim=True), shape, device) == 96  # broadcast (2, 3, 1, 1)
    assert macs(lambda x: x.clone().mul_(x), shape, device) == 96
    assert macs(lambda x: torch.addcmul(x, x, x), shape, device) == 96
    report = count_macs(Fn(lambda x: (x * 2) * torch.ones(1, device=x.device) / (x + 1)), shape, device=device)
    assert report.macs == 0
    scalar = report.uncounted["aten.mul (scalar)"]
    assert (scalar.calls, scalar.elements, scalar.category) == (2, 192, "scalar scaling")
    assert report.uncounted["aten.div"].category == "division"
    assert report.uncounted["aten.add"].category == "add"


def test_uncounted_ops_listed_with_elements() -> None:
    norm = nn.LayerNorm(5)
    model = Fn(lambda x: norm(x.softmax(-1)).relu().sum(-1))
    model.norm = norm
    report = count_macs(model, (2, 3, 4, 5))
    assert report.macs == 0
    got = {k: (u.calls, u.elements, u.category) for k, u in report.uncounted.items()}
    assert got["aten.softmax"] == (1, 120, "softmax")
    assert got["aten.layer_norm"] == (1, 120, "norm")
    assert got["aten.relu"] == (1, 120, "activation")
    assert got["aten.sum"] == (1, 24, "reduction")


# --- attribution, report --------------------------------------------------------------------------------
class Two(nn.Module):
    """Two children and a product done in the root's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.head = nn.Sequential(nn.Linear(4, 6), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2).transpose(1, 2)  # (1, 25, 4)
        return self.head(y) @ torch.ones(6, 2, device=x.device)


def test_by_module_attribution() -> None:
    report = count_macs(Two(), (1, 3, 5, 5))
    assert dict(report.by_module) == {"conv": 4 * 25 * 3, "head": 25 * 4 * 6, "(self)": 25 * 6 * 2}
    assert report.by_module_nested["head.0"] == 600
    assert report.macs == sum(report.by_module.values()) == 300 + 600 + 300
    assert report.flops == 2 * report.macs
    assert CONVENTION in report.format()


def test_peak_live_bytes_estimate() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = x * x  # 4 KiB, alive until the end of forward
        return y + 1  # 4 KiB more while y is still referenced

    report = count_macs(Fn(fn), (1, 1024))
    assert report.peak_live_bytes_estimate == 2 * 4096


def test_attention_at_224_counts_on_meta_without_memory() -> None:
    n = 224 * 224  # a 50176 x 50176 attention map: 10 GB if it were allocated
    report = count_macs(SelfAttention(64, 1), (1, n, 64))
    assert report.macs == 4 * n * 64 * 64 + n * n * 128
    assert report.device == "meta"


# --- module left untouched, fallback, failures -------------------------------------------------------
def test_user_module_untouched_and_mode_kept() -> None:
    model = Two().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for counter in COUNTERS:
        assert count_macs(model, (1, 3, 5, 5), counter=counter).ok
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any("total_ops" in vars(m) or "total_ops" in m._buffers for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_meta_failure_falls_back_to_cpu() -> None:
    def data_dependent(x: torch.Tensor) -> torch.Tensor:
        return x * x if x.sum().item() > -1e9 else x  # .item() cannot run on meta

    report = count_macs(Fn(data_dependent), (2, 8))
    assert report.macs == 16
    assert report.device.startswith("cpu (meta failed:")


def test_cpu_fallback_refused_when_too_big() -> None:
    from attnbench.counting.dispatch import count_dispatch

    def data_dependent(x: torch.Tensor) -> torch.Tensor:
        return x if x.sum().item() > 0 else -x

    report = count_dispatch(Fn(data_dependent), (2, 8), cpu_limit_bytes=16)
    assert report.status == "unavailable" and "limit" in report.reason
    # fvcore cannot trace convolutions on meta; a CPU run is refused when the activations would not fit
    conv = count_macs(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), counter="fvcore", activation_bytes=10**12)
    assert conv.status == "unavailable" and "GiB" in conv.reason


class Broken(nn.Module):
    """Fails on every device."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


@pytest.mark.parametrize("counter", COUNTERS)
def test_failing_counter_returns_status(counter: str) -> None:
    report = count_macs(Broken(), (1, 4), counter=counter)
    assert report.status in ("failed", "unavailable")
    assert report.macs is None and report.flops is None
    assert "boom" in report.reason


def test_missing_counter_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fvcore", None)
    monkeypatch.setitem(sys.modules, "fvcore.nn", None)
    report = count_macs(nn.Linear(4, 4), (1, 4), counter="fvcore")
    assert report.status == "unavailable" and "not installed" in report.reason


class Strict(nn.Module):
    """Refuses odd widths the way zoo modules do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise InvalidCaseError("strict", "W % 2 == 0", f"W={x.shape[-1]} is odd")
        return x


@pytest.mark.parametrize("counter", COUNTERS)
def test_invalid_case_propagates(counter: str) -> None:
    with pytest.raises(InvalidCaseError):
        count_macs(Strict(), (1, 3), counter=counter)


def test_unknown_counter_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="attnbench, fvcore, thop"):
        count_macs(nn.Linear(2, 2), (1, 2), counter="ptflops")


# --- adapters -------------------------------------------------------------------------------------------
class ConvLinear(nn.Module):
    """Convs (groups, stride, dilation) and linears only: all three counters must agree exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dw(self.stem(x)).flatten(2).transpose(1, 2))


def test_three_counters_agree_on_conv_linear() -> None:
    reports = count_all(ConvLinear(), (2, 3, 8, 8))
    # stem 2*8*64*3*9 = 27648; dw (out 4x4) 2*8*16*2*9 = 4608; fc 2*16*8*10 = 2560
    expected = 27648 + 4608 + 2560
    assert [r.counter for r in reports] == list(COUNTERS)
    assert [r.macs for r in reports] == [expected] * 3, [r.reason for r in reports]
    assert cross_check(reports) == {"attnbench": 1.0, "fvcore": 1.0, "thop": 1.0}
    for r in reports:
        assert dict(r.by_module) == {"stem": 27648, "dw": 4608, "fc": 2560}, r.counter


def test_fvcore_lists_what_it_misses() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return F.scaled_dot_product_attention(y, y, y) * y

    ours, fv, th = count_all(Gate(), (1, 5, 8))
    fc, attention, product = 5 * 8 * 8, 5 * 5 * 16, 40
    assert ours.macs == fc + attention + product
    assert fv.macs == fc
    assert {"aten::scaled_dot_product_attention", "aten::mul"} <= set(fv.uncounted)
    assert th.macs == fc + attention  # ultralytics-thop counts functional sdpa, not elementwise products
    ratios = cross_check([ours, fv, th])
    assert set(flag_disagreements(ratios)) == {"fvcore", "thop"}


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


def test_cross_check_ratios_and_flags() -> None:
    from attnbench.counting import cross_check, flag_disagreements
    from attnbench.counting.base import MacReport

    reports = [
        MacReport("attnbench", 1000),
        MacReport("fvcore", 754),
        MacReport("thop", 1005),
        MacReport("other", None, status="unavailable", reason="not installed"),
    ]
    ratios = cross_check(reports)
    assert ratios == {"attnbench": 1.0, "fvcore": 0.754, "thop": 1.005, "other": None}
    assert set(flag_disagreements(ratios)) == {"fvcore"}
