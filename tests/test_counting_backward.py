"""Training-step counts (mode="train"): forward + backward MACs and FLOPs against hand formulas.

Also the backward cases of PyTorch's ``test/test_flop_counter.py`` (pytorch/pytorch at
067f1d9d1fec00506e2b6f2bcdb95005e8cbd2ba), re-derived by hand and compared in MACs = FLOPs / 2 (every operator
FlopCounterMode counts is a multiply-add, so our exact FLOPs equal its numbers). Those cases drive
DispatchCounter directly as a mode around their own .backward(), as FlopCounterMode is used.

A training step = the module in train mode, the input requiring grad, loss = output.sum() (not counted: it is
not the module's work), loss.backward(). On meta unless stated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnbench
from attnbench.counting import BACKWARD_SUFFIX, COUNTERS, count_all, count_macs
from attnbench.counting.base import MacReport
from attnbench.counting.dispatch import DispatchCounter
from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import Setting

DEVICES = ["meta", "cpu"]
BWD = BACKWARD_SUFFIX


def train(module: nn.Module, shape: tuple[int, ...], device: str = "meta") -> MacReport:
    report = count_macs(module, shape, device=device, mode="train")
    assert report.ok, report.reason
    assert report.mode == "train" and report.device == device
    return report


# --- matrix products ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_linear_backward_is_two_products(device: str) -> None:
    # forward 4 x 8 x 5; backward grad_input (4,5)@(5,8) and grad_weight (5,4)@(4,8); grad_bias is a sum
    report = train(nn.Linear(8, 5), (4, 8), device)
    fwd = 4 * 8 * 5
    assert (report.forward_macs, report.backward_macs, report.macs) == (fwd, 2 * fwd, 3 * fwd)
    assert dict(report.by_op) == {"aten.addmm": fwd, f"aten.mm{BWD}": 2 * fwd}
    assert report.flops == 2 * report.macs and report.backward_flops == 4 * fwd
    assert report.uncounted[f"aten.sum{BWD}"].category == "reduction"  # the bias gradient
    # a 3-d input folds into one (14, 8) @ (8, 5) product each way
    assert train(nn.Linear(8, 5), (2, 7, 8), device).macs == 3 * 2 * 7 * 8 * 5


def test_frozen_weight_costs_no_weight_gradient() -> None:
    layer = nn.Linear(8, 5)
    layer.weight.requires_grad_(False)
    report = train(layer, (4, 8))
    assert report.backward_macs == 4 * 8 * 5  # grad_input only


class Bilinear(nn.Module):
    """x @ W with W a parameter, then the Gram matrix of the result: products of a weight and of activations."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(5, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.w  # (3, 4, 6): 3*4*6*5 = 360
        return y @ y.transpose(-1, -2)  # (3, 4, 4): 3*4*4*6 = 288


@pytest.mark.parametrize("device", DEVICES)
def test_matmul_backward(device: str) -> None:
    report = train(Bilinear(), (3, 4, 5), device)
    # each product: one gradient per operand that needs one; both operands of the Gram product are y
    assert report.forward_macs == 360 + 288
    assert report.backward_macs == 2 * 360 + 2 * 288
    assert report.macs == 3 * (360 + 288)


# --- convolutions ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_backward_grad_input_and_weight(bias: bool, device: str) -> None:
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=bias)
    report = train(conv, (2, 4, 5, 5), device)
    fwd = 2 * 6 * 25 * (4 // 2) * 9  # grouped: each output sees C_in / groups inputs
    assert report.forward_macs == fwd
    assert report.by_op[f"aten.convolution_backward{BWD}"] == 2 * fwd  # grad_bias is a sum, not a MAC
    assert report.flops == 2 * report.macs == 6 * fwd


@pytest.mark.parametrize("device", DEVICES)
def test_transposed_and_dilated_conv_backward(device: str) -> None:
    deconv = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    fwd = 2 * 4 * 25 * (6 // 2) * 9  # each input element meets C_out / groups * k * k weights
    assert train(deconv, (2, 4, 5, 5), device).macs == 3 * fwd
    dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4)
    assert train(dilated, (1, 4, 6, 6), device).macs == 3 * 36 * 4 * 9


def test_first_conv_of_a_frozen_input_costs_weight_gradient_only() -> None:
    # an input that needs no grad (a coordinate grid, as ACmix's positional conv) costs no grad_input
    class Grid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pe = nn.Conv2d(2, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            grid = torch.zeros(1, 2, *x.shape[-2:], device=x.device)
            return x + self.pe(grid)

    report = train(Grid(), (1, 4, 3, 3))
    assert report.by_op == {"aten.convolution": 9 * 4 * 2, f"aten.convolution_backward{BWD}": 9 * 4 * 2}


# --- attention ------------------------------------------------------------------------------------------------
class Sdpa(nn.Module):
    """SDPA of q (the input) over keys and values twice as long (q concatenated with itself)."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        kv = torch.cat([q, q], dim=2)
        return F.scaled_dot_product_attention(q, kv, kv, is_causal=self.causal)


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_backward_fused_cpu_kernel_recomputes_scores(device: str) -> None:
    # On meta the count follows the CPU's kernel choice, so both devices count the CPU flash kernel.
    b, h, n, d = 2, 3, 5, 8
    report = train(Sdpa(), (b, h, n, d), device)
    scores = b * h * n * 2 * n
    # recompute q k^T, then grad_v, grad of the scores, grad_q, grad_k: (3 d_k + 2 d_v) per score
    assert dict(report.by_op) == {
        "aten._scaled_dot_product_flash_attention_for_cpu": scores * 2 * d,
        f"aten._scaled_dot_product_flash_attention_for_cpu_backward{BWD}": scores * 5 * d,
    }


class UnequalHeads(nn.Module):
    """SDPA with values half as wide as queries and keys: the CPU flash kernel refuses it, math runs."""

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, q, q[..., : q.shape[-1] // 2])


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_backward_math_path(device: str) -> None:
    b, h, n, d_k, d_v = 2, 3, 5, 8, 4
    report = train(UnequalHeads(), (b, h, n, d_k), device)
    scores = b * h * n * n
    # q k^T and attn v forward; their four operand gradients backward, no recompute
    assert dict(report.by_op) == {"aten.bmm": scores * (d_k + d_v), f"aten.bmm{BWD}": 2 * scores * (d_k + d_v)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("backend", "torch_flops"), [(SDPBackend.MATH, 805306368), (None, 939524096)])
def test_torch_sdpa_fused_and_math_totals(backend: SDPBackend | None, torch_flops: int, device: str) -> None:
    # PyTorch test_sdpa (non-uniform: 128 queries, 256 keys, head dim 64, causal): forward 268435456 FLOPs;
    # the math backend's step is 3x, the fused kernels' 3.5x (PyTorch runs them on CUDA; here the CPU flash
    # kernel). A causal mask is not discounted, by PyTorch or by attnbench.
    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
        report = train(Sdpa(causal=True), (4, 8, 128, 64), device)
    assert report.forward_flops == 268435456
    assert report.flops == torch_flops and report.macs == torch_flops // 2


class MaskedSdpa(nn.Module):
    """Self-attention with an optional bool or float mask and attention dropout."""

    def __init__(self, dropout: float, mask: str | None) -> None:
        super().__init__()
        self.dropout, self.mask = dropout, mask

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        n = q.shape[-2]
        masks = {
            "bool": lambda: torch.ones(n, n, dtype=torch.bool, device=q.device).tril(),
            "float": lambda: torch.zeros(n, n, device=q.device),
        }
        mask = masks[self.mask]() if self.mask else None
        return F.scaled_dot_product_attention(q, q, q, attn_mask=mask, dropout_p=self.dropout)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_sdpa_train_counts_identical_on_meta_and_cpu(dropout: float, mask: str | None) -> None:
    # the kernel choice (flash without dropout, math with it), the bool-mask conversion and every listed op
    module, shape = MaskedSdpa(dropout, mask), (2, 3, 5, 8)
    meta, cpu = train(module, shape), train(module, shape, "cpu")
    assert dict(meta.by_op) == dict(cpu.by_op) and meta.flops == cpu.flops
    assert {k: (u.calls, u.elements) for k, u in meta.uncounted.items()} == {
        k: (u.calls, u.elements) for k, u in cpu.uncounted.items()
    }
    assert meta.peak_live_bytes_estimate == cpu.peak_live_bytes_estimate
    fused = "aten._scaled_dot_product_flash_attention_for_cpu" in meta.by_op
    assert fused == (dropout == 0.0)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_train_step(need_weights: bool) -> None:
    class Mha(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=need_weights)[0]

    b, n, c = 2, 6, 16
    meta, cpu = train(Mha(), (b, n, c)), train(Mha(), (b, n, c), "cpu")
    projections, scores = 4 * b * n * c * c, b * n * n  # per head-dim unit of attention: scores x c
    # with weights: explicit bmm (4 gradients); without: the CPU flash kernel (recompute: 3 c + 2 c)
    attention = scores * 2 * c * 3 if need_weights else scores * 2 * c + scores * 5 * c
    assert meta.macs == cpu.macs == 3 * projections + attention


def test_torch_sdpa_uniform_math_is_three_times_forward() -> None:
    q = torch.empty(4, 8, 128, 64, device="meta", requires_grad=True)
    with DispatchCounter() as counter:  # no kernel choice here: meta takes the math path
        F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    assert counter.total_flops == 3 * 134217728


# --- elementwise products -----------------------------------------------------------------------------------
class Gate(nn.Module):
    """a(x) * b(x): the gate product of two projections."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6, bias=bias), nn.Linear(6, 6, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) * self.b(x)


@pytest.mark.parametrize("device", DEVICES)
def test_gate_backward_is_two_products(device: str) -> None:
    rows, p = 4, 4 * 6
    lin = rows * 6 * 6
    report = train(Gate(bias=False), (rows, 6), device)
    assert report.forward_macs == 2 * lin + p
    assert report.by_op[f"aten.mul{BWD}"] == 2 * p  # grad * b(x) and grad * a(x)
    assert report.macs == 3 * (2 * lin + p)
    # FLOPs: lone products 1 each, forward and backward
    assert report.forward_flops == 4 * lin + p
    assert report.backward_flops == 8 * lin + 2 * p


def test_gate_gradient_summed_by_a_bias_gradient_is_a_multiply_add() -> None:
    # With biases, each gate gradient is summed over the rows for its bias's gradient: multiply-adds.
    rows, p = 4, 4 * 6
    report = train(Gate(bias=True), (rows, 6))
    assert report.flops_by_op[f"aten.mul{BWD}"] == 2 * 2 * p
    assert report.flops_by_op["aten.mul"] == p  # the forward gate stays lone


def test_conv_bias_gradient_sums_a_gate_gradient_too() -> None:
    # convolution_backward sums grad_output for grad_bias inside its kernel: the same multiply-add as above
    class ConvGate(nn.Module):
        def __init__(self, bias: bool) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.conv(x)

    p = 2 * 3 * 16
    with_bias, without = train(ConvGate(True), (2, 3, 4, 4)), train(ConvGate(False), (2, 3, 4, 4))
    assert with_bias.macs == without.macs
    assert with_bias.flops_by_op[f"aten.mul{BWD}"] == 3 * p  # grad * conv(x) lone, grad * x summed
    assert without.flops_by_op[f"aten.mul{BWD}"] == 2 * p


def test_broadcast_gate_gradient_is_summed_back() -> None:
    # SE-style x * s with s (B, C, 1, 1): the gradient of s is (grad * x) summed over H, W
    def se(x: torch.Tensor) -> torch.Tensor:
        return x * x.mean((2, 3), keepdim=True).sigmoid()

    model = nn.Module()
    model.forward = se  # type: ignore[method-assign]
    report = train(model, (2, 3, 4, 4))
    n = 2 * 3 * 16
    assert report.by_op == {"aten.mul": n, f"aten.mul{BWD}": 2 * n}
    assert report.flops_by_op[f"aten.mul{BWD}"] == n + 2 * n


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_in_training_multiplies_by_its_mask(device: str) -> None:
    # Decision: dropout's mask product is real work in training, 1 product per element each way (the mask
    # draw is listed, not counted); in inference dropout is the identity and costs nothing.
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1))
    n, lin = 4 * 8, 4 * 8 * 8
    report = train(model, (4, 8), device)
    assert report.by_op["aten.mul"] == n and report.by_op[f"aten.mul{BWD}"] == n
    assert report.macs == 3 * lin + 2 * n
    assert count_macs(model, (4, 8), device=device).macs == lin


# --- the zoo -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lka", "van"])
def test_lka_and_van_train_step_is_three_forwards(name: str) -> None:
    # Every conv has grad_input and grad_weight, the gate two backward products: exactly 3 x forward.
    c, side = 64, 32
    module = attnbench.build(name, c, (side, side))
    forward = count_macs(module, (1, c, side, side))
    step = train(module, (1, c, side, side))
    assert forward.macs == get_spec(name).macs_formula(Setting(c, {}, side, side, 1))
    assert step.macs == 3 * forward.macs
    assert step.forward_macs == forward.macs and step.backward_macs == 2 * forward.macs


@pytest.mark.parametrize("name", ["lka", "van", "sk", "epsa"])
def test_zoo_train_counts_agree_on_meta_and_cpu(name: str) -> None:
    ex = get_spec(name).examples[1]
    module = attnbench.build(name, ex.dim, ex.res, **ex.kwargs)
    shape = (ex.batch, ex.dim, *ex.res)
    meta, cpu = train(module, shape), train(module, shape, "cpu")
    assert (meta.macs, meta.flops, dict(meta.by_op)) == (cpu.macs, cpu.flops, dict(cpu.by_op))
    assert meta.peak_live_bytes_estimate == cpu.peak_live_bytes_estimate


# --- attribution and report ------------------------------------------------------------------------------------
def test_backward_attributed_to_the_module_that_ran_forward() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    report = train(model, (2, 8))
    first, second = 2 * 8 * 16, 2 * 16 * 4
    assert dict(report.by_module) == {"0": 3 * first, "2": 3 * second}
    assert dict(report.by_module_nested) == {"0": 3 * first, "2": 3 * second}
    assert report.uncounted[f"aten.threshold_backward{BWD}"].category == "activation"


class Squares(nn.Module):
    """PyTorch test_pytrees' Foo: an in-place relu of a dict entry, then its square as a matrix."""

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        y = x["a"].relu_()
        return {"a": torch.mm(y, y)}


class TwoSquares(nn.Module):
    """PyTorch test_pytrees' Mod: two Foo in a row, through dict inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Squares(), Squares()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a({"a": x.clone()}))["a"]


def test_torch_pytrees_attributed_per_submodule() -> None:
    # PyTorch: mm FLOPs under "Mod" = 12000 for a (10, 10) input; each Foo: 1000 MACs forward, two operand
    # gradients of 1000 each backward.
    report = train(TwoSquares(), (10, 10))
    assert report.flops == 12000
    assert dict(report.by_module_nested) == {"a": 3000, "b": 3000}


def test_tuple_output_summed_into_the_loss() -> None:
    class Tupled(nn.Module):  # PyTorch test_pytrees' Mod2: a tuple output
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (torch.mm(x, x),)

    assert train(Tupled(), (10, 10)).flops == 6000


@pytest.mark.parametrize("counter", [c for c in COUNTERS if c != "attnbench"])
def test_peers_cannot_count_a_backward(counter: str) -> None:
    report = count_macs(nn.Linear(4, 4), (1, 4), counter=counter, mode="train")
    assert report.status == "unavailable" and report.mode == "train"
    assert report.macs is None and report.flops is None
    assert "cannot count a backward" in report.reason


def test_count_all_train() -> None:
    reports = count_all(nn.Linear(4, 4), (2, 4), mode="train")
    assert [r.macs for r in reports] == [3 * 32, None, None]


def test_unknown_mode_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="infer, train"):
        count_macs(nn.Linear(2, 2), (1, 2), mode="eval")


def test_train_count_leaves_the_module_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert train(model, (3, 4)).ok
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats too


def test_in_place_op_on_the_input_is_allowed() -> None:
    # inside a network a module's input is an activation, so x.relu_() on it is legal
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.relu_())

    assert train(InPlace(), (2, 4)).macs == 3 * 2 * 4 * 4


def test_activation_backward_kernels_are_not_decomposed() -> None:
    # silu_backward has CPU and Meta kernels besides a math decomposition: the kernel runs, and its arithmetic
    # is an activation's (listed), not products
    for act in (nn.SiLU(), nn.GELU()):
        report = train(nn.Sequential(nn.Linear(4, 4), act), (2, 4))
        assert report.macs == 3 * 2 * 4 * 4, type(act).__name__
        name = f"aten.{type(act).__name__.lower()}_backward{BWD}"
        assert report.uncounted[name].category == "activation"


def test_mish_backward_decomposed_on_meta_only() -> None:
    # The one aten operator with a CPU kernel, a math decomposition and no C++ meta kernel: on meta autograd
    # decomposes it before the counter sees it, and its products are counted (a documented limit): per element
    # grad * (tsp + x * sigmoid * (1 - tsp * tsp)), tsp = tanh(softplus(x)): four tensor products.
    model = nn.Sequential(nn.Linear(4, 4), nn.Mish())
    cpu, meta = train(model, (2, 4), "cpu"), train(model, (2, 4))
    assert cpu.macs == 3 * 2 * 4 * 4 and "aten.mish_backward (backward)" in cpu.uncounted
    assert meta.by_op[f"aten.mul{BWD}"] == 4 * 2 * 4
    assert meta.macs == cpu.macs + 4 * 2 * 4


def test_output_without_grad_is_a_failed_count() -> None:
    class Detached(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(x, x, x).detach()

    sdpa = F.scaled_dot_product_attention
    report = count_macs(Detached(), (2, 3, 4), mode="train")
    assert report.status == "failed" and "does not require grad" in report.reason
    assert F.scaled_dot_product_attention is sdpa  # the kernel choice for meta is undone on failure too


def test_meta_failure_falls_back_to_cpu_in_training() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum().item() > -1e9 else x

    report = count_macs(DataDependent(), (2, 4), mode="train")
    assert report.device.startswith("cpu (meta failed:")
    assert report.macs == 3 * 2 * 4 * 4


def test_train_peak_live_bytes_of_a_linear() -> None:
    # Linear(8, 5) on (4, 8), float32: the output (4, 5) lives through the step; the backward creates the
    # loss gradient (1 element, expanded), grad_input (4, 8), grad_weight (5, 8) and grad_bias (5,), all kept
    # as .grad. Input and weights are not counted.
    report = train(nn.Linear(8, 5), (4, 8))
    assert report.peak_live_bytes_estimate == 4 * (4 * 5 + 1 + 4 * 8 + 5 * 8 + 5)


def test_format_shows_both_phases() -> None:
    text = train(nn.Linear(8, 5), (4, 8)).format()
    assert "mode train" in text and "forward MACs 160  backward MACs 320" in text


# --- PyTorch test_flop_counter.py backward cases, with DispatchCounter as the mode ---------------------------
def flops_of(step: Callable[[], None]) -> DispatchCounter:
    with DispatchCounter() as counter:
        step()
    return counter


def test_torch_backward_through_expand() -> None:
    def step() -> None:
        a = torch.randn(4, 5, requires_grad=True)
        b = torch.mm(a, torch.randn(5, 6))  # 120 MACs, then grad_a 120
        c = torch.bmm(b.unsqueeze(0).expand(7, 4, 6), torch.randn(7, 6, 7))  # 1176, then grad 1176
        c.sum().backward()

    counter = flops_of(step)
    assert counter.total_flops == 5184 == 2 * (120 + 120 + 1176 + 1176)
    assert counter.backward_macs == 120 + 1176


def test_torch_backward_twice_adds_up() -> None:
    def step() -> None:
        a = torch.randn(4, 5, requires_grad=True)
        for _ in range(2):
            a.mm(a.t()).sum().backward()  # 80 MACs, then one gradient per operand: 160

    assert flops_of(step).total_flops == 960


def test_torch_custom_autograd_function() -> None:
    class SquareTwice(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            return torch.mm(x, x)

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            return torch.mm(grad, grad) + torch.mm(grad, grad)

    def step() -> None:
        SquareTwice.apply(torch.randn(5, 5, requires_grad=True)).sum().backward()

    assert flops_of(step).total_flops == 750  # three 5x5 products of 125 MACs


@pytest.mark.parametrize(
    ("c_in", "c_out", "groups"), [(1, 1, 1), (1, 3, 1), (3, 1, 1), (3, 7, 1), (2, 4, 2), (4, 2, 2)]
)
@pytest.mark.parametrize("transposed", [False, True])
def test_torch_conv_backward_is_twice_forward(c_in: int, c_out: int, groups: int, transposed: bool) -> None:
    x = torch.rand(1, c_in, 4, 4, requires_grad=True)
    shape = (c_in, c_out // groups, 2, 2) if transposed else (c_out, c_in // groups, 2, 2)
    weight = torch.randn(shape, requires_grad=True)
    conv = F.conv_transpose2d if transposed else F.conv2d
    counter = flops_of(lambda: conv(x, weight, groups=groups).sum().backward())
    forward = counter.by_op["aten.convolution"]
    assert counter.by_op[f"aten.convolution_backward{BWD}"] == 2 * forward
    # forward by hand: per output (or, transposed, per input) position, in/groups (out/groups) x 4 taps
    positions = 16 if transposed else 9
    per_position = (c_out if transposed else c_in) // groups * 4
    assert forward == positions * (c_in if transposed else c_out) * per_position


def test_torch_small_convs_by_hand() -> None:
    x, w = torch.rand(1, 1, 2, 2, requires_grad=True), torch.randn(1, 1, 2, 2, requires_grad=True)
    assert flops_of(lambda: F.conv_transpose2d(x, w).sum().backward()).by_op["aten.convolution"] == 16  # 32 FLOPs
    w1 = torch.randn(1, 1, 1, 1, requires_grad=True)
    assert flops_of(lambda: F.conv2d(x, w1).sum().backward()).by_op["aten.convolution"] == 4  # 8 FLOPs


def test_torch_conv_transpose_loop() -> None:
    # 50 steps of ConvTranspose2d(4, 8, 2x2, stride 2) on (1, 4, 30, 2), input without grad: forward
    # 240 inputs x 8 x 4 = 7680 MACs, backward grad_weight only (7680); 50 x 15360 MACs = 1536000 FLOPs.
    x = torch.rand(1, 4, 30, 2)
    model = nn.ConvTranspose2d(4, 8, (2, 2), stride=2)

    def step() -> None:
        for _ in range(50):
            model(x).sum().backward()

    assert flops_of(step).total_flops == 1536000


# --- backward kernels of other devices (no GPU here): each rule reads q, k, v where the schema puts them -----
FUSED_BACKWARDS = {
    # kernel: True when its tensors are (B, heads, N, d), False for (B, N, heads, d)
    "_scaled_dot_product_flash_attention_for_cpu_backward": True,
    "_scaled_dot_product_flash_attention_backward": True,
    "_scaled_dot_product_efficient_attention_backward": True,
    "_scaled_dot_product_cudnn_attention_backward": True,
    "_flash_attention_backward": False,
    "_efficient_attention_backward": False,
}


@pytest.mark.parametrize(("kernel", "heads_first"), list(FUSED_BACKWARDS.items()))
def test_fused_attention_backward_rules(kernel: str, heads_first: bool) -> None:
    from attnbench.counting.rules import MAC_RULES as _RULES

    op = getattr(torch.ops.aten, kernel)
    names = [a.name for a in op.default._schema.arguments[:4]]
    assert names[1:] == ["query", "key", "value"], names
    b, h, n_q, n_k, d_k, d_v = 2, 3, 5, 7, 8, 4

    def tensor(n: int, d: int) -> torch.Tensor:
        return torch.empty((b, h, n, d) if heads_first else (b, n, h, d), device="meta")

    args = (tensor(n_q, d_v), tensor(n_q, d_k), tensor(n_k, d_k), tensor(n_k, d_v))
    assert _RULES[op](args, {}, None) == b * h * n_q * n_k * (3 * d_k + 2 * d_v)


def test_fused_dropout_kernel_rules() -> None:
    # CUDA's fused dropout: one mask product per element forward (in training) and backward
    from attnbench.counting.rules import PRODUCT_RULES as _PRODUCTS

    x = torch.empty(3, 4, device="meta")
    aten = torch.ops.aten
    assert _PRODUCTS[aten.native_dropout]((x, 0.1, True), {}, (x, x)) == 12
    assert _PRODUCTS[aten.native_dropout]((x, 0.1, False), {}, (x, x)) == 0
    assert _PRODUCTS[aten.native_dropout_backward]((x, x, 1.1), {}, x) == 12
