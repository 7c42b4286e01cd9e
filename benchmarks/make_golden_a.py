"""Check acmix, ea, mhsa, sk and da against their official code, and write tests/golden/<name>.pt.

The official code is not part of attnbench: clone it yourself and point ``--official-dir`` at a folder holding

    ACmix/ResNet/test_bottleneck.py                  git clone https://github.com/LeapLabTHU/ACmix
    EANet/model_torch.py                             git clone https://github.com/MenghaoGuo/EANet
    External-Attention-pytorch/model/attention/
        git clone https://github.com/xmu-xiaoma666/External-Attention-pytorch
        SelfAttention.py, SimplifiedSelfAttention.py, SKAttention.py, DANet.py

EANet's ``model_torch.py`` imports ``bn_lib`` and ``settings``, which its repository does not ship; this
script stubs them (SynchronizedBatchNorm2d -> nn.BatchNorm2d, BN_MOM = 0.1) before importing. Upstream's
DAModule ignores its arguments (always 512 channels, 7x7): it is checked as is at 512 @ 7x7, and at other
sizes with its two branches rebuilt from upstream's own branch classes at the requested size.

For every case: build the official module, overwrite *every* parameter and BN running statistic with random
values (upstream's tiny/zero inits would make the comparison vacuous), load the same weights into attnbench's
module (names map one to one; mhsa adds the ``inner.`` prefix of the token adapter), run both in eval mode on
the same input and report the largest absolute difference. With ``--out`` it also writes one golden file per
module at a small size: {dim, res, kwargs, batch, input, state_dict (attnbench names), output (official),
source}.

    python benchmarks/make_golden_a.py --official-dir ~/official [--out tests/golden]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import attnbench

TOLERANCE = 1e-5

SOURCES = {
    "acmix": "LeapLabTHU/ACmix@17f02533bfee1d1a07a14825917ccf161bb79c14 ResNet/test_bottleneck.py:ACmix",
    "ea": "MenghaoGuo/EANet@3ae0778df95e7af6e89868e18d42a54c722cbc39 model_torch.py:External_attention "
    "(norm_layer = BatchNorm2d(momentum=0.1))",
    "mhsa": "xmu-xiaoma666/External-Attention-pytorch (as in fork lyp2333@440d687) "
    "model/attention/SelfAttention.py:ScaledDotProductAttention",
    "sk": "xmu-xiaoma666/External-Attention-pytorch (as in fork lyp2333@440d687) "
    "model/attention/SKAttention.py:SKAttention",
    "da": "xmu-xiaoma666/External-Attention-pytorch@6c229ea model/attention/DANet.py:DAModule "
    "(branches built at the golden dim/res; upstream hard-codes 512 @ 7x7)",
}


@dataclass
class Case:
    """One comparison: an attnbench case and how to build the official module for it."""

    name: str
    dim: int
    res: tuple[int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch: int = 2


def _load_file(module_name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stub_eanet_imports() -> None:
    """EANet's model_torch.py needs bn_lib.nn.modules.SynchronizedBatchNorm2d and settings.BN_MOM."""
    for name in ("bn_lib", "bn_lib.nn", "bn_lib.nn.modules"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["bn_lib.nn.modules"].SynchronizedBatchNorm2d = nn.BatchNorm2d  # type: ignore[attr-defined]
    settings = sys.modules.setdefault("settings", types.ModuleType("settings"))
    settings.BN_MOM = 0.1  # type: ignore[attr-defined]


class Official:
    """Builders of the official modules, imported from the user's clones."""

    def __init__(self, root: Path) -> None:
        self.acmix = _load_file("official_acmix", root / "ACmix/ResNet/test_bottleneck.py")
        _stub_eanet_imports()
        self.eanet = _load_file("official_eanet", root / "EANet/model_torch.py")
        sys.path.insert(0, str(root / "External-Attention-pytorch"))
        self.self_attention = importlib.import_module("model.attention.SelfAttention")
        self.sk = importlib.import_module("model.attention.SKAttention")
        self.danet = importlib.import_module("model.attention.DANet")

    def build(self, case: Case) -> nn.Module:
        """The official module for `case` (kwarg names translated to upstream's)."""
        kw, c = case.kwargs, case.dim
        if case.name == "acmix":
            spec = attnbench.get_spec("acmix")
            a = {**spec.defaults, **kw}
            return self.acmix.ACmix(
                c, c, a["kernel_att"], head=a["heads"], kernel_conv=a["kernel_conv"], stride=a["stride"]
            )
        if case.name == "ea":
            if kw.get("k", 64) != 64:
                raise ValueError("upstream External_attention hard-codes k = 64")
            return self.eanet.External_attention(c)
        if case.name == "mhsa":
            heads = kw.get("heads", 8)
            d_k = kw.get("d_k") or c // heads
            d_v = kw.get("d_v") or c // heads
            return self.self_attention.ScaledDotProductAttention(c, d_k=d_k, d_v=d_v, h=heads)
        if case.name == "sk":
            spec = attnbench.get_spec("sk")
            a = {**spec.defaults, **kw}
            return self.sk.SKAttention(
                c, kernels=a["kernels"], reduction=a["reduction"], group=a["group"], L=a["min_hidden"]
            )
        if case.name == "da":
            k = kw.get("kernel_size", 3)
            module = self.danet.DAModule(d_model=c, kernel_size=k, H=case.res[0], W=case.res[1])
            if (c, k, case.res) != (512, 3, (7, 7)):
                # Upstream ignores its arguments; rebuild its two branches (its own classes) at this size.
                h, w = case.res
                module.position_attention_module = self.danet.PositionAttentionModule(c, k, h, w)
                module.channel_attention_module = self.danet.ChannelAttentionModule(c, k, h, w)
            return module
        raise KeyError(case.name)


def official_forward(name: str, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Call the official module with a (B, C, H, W) map (mhsa takes tokens three times)."""
    if name != "mhsa":
        return module

    def run(x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        return module(tokens, tokens, tokens).transpose(1, 2).reshape(b, c, h, w)

    return run


def to_attnbench_names(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official state_dict keys -> attnbench keys (identical but for mhsa's adapter prefix)."""
    prefix = "inner." if name == "mhsa" else ""
    return {prefix + key: value for key, value in state.items()}


@torch.no_grad()
def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter and BN running statistic in place (keeps EANet's tied storage tied)."""
    seen: set[int] = set()
    for p in module.parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 1
        std = fan_in**-0.5 if p.dim() > 1 else 0.5
        # Tied weights (EANet) are drawn once: drawing the second view would just redraw the same storage.
        key = p.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        p.copy_(torch.randn(p.shape, generator=generator) * std)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)


@torch.no_grad()
def compare(official: Official, case: Case, seed: int = 0) -> tuple[float, dict[str, Any]]:
    """Max abs output difference for `case`, and the golden record for it."""
    generator = torch.Generator().manual_seed(seed)
    ref = official.build(case)
    randomise(ref, generator)
    ours = attnbench.build(case.name, case.dim, case.res, **case.kwargs)

    ref_params = to_attnbench_names(case.name, dict(ref.named_parameters()))
    ref_shapes = {k: tuple(v.shape) for k, v in ref_params.items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.named_parameters()}
    if ref_shapes != our_shapes:
        raise AssertionError(f"{case}: parameter names/shapes differ:\n{ref_shapes}\n{our_shapes}")
    ours.load_state_dict(to_attnbench_names(case.name, ref.state_dict()), strict=True)
    ref.eval()
    ours.eval()

    x = torch.randn(case.batch, case.dim, *case.res, generator=generator)
    expected = official_forward(case.name, ref)(x)
    got = ours(x)
    if got.shape != expected.shape:
        raise AssertionError(f"{case}: output shape {tuple(got.shape)} != official {tuple(expected.shape)}")
    diff = (got - expected).abs().max().item()
    record = {
        "dim": case.dim,
        "res": list(case.res),
        "kwargs": dict(case.kwargs),
        "batch": case.batch,
        "input": x,
        "state_dict": ours.state_dict(),
        "output": expected,
        "source": SOURCES[case.name],
    }
    return diff, record


#: Settings compared with the official code: the defaults at dim 64 and two or more other dims/resolutions.
CHECKS = [
    Case("acmix", 64, (14, 14)),
    Case("acmix", 32, (8, 12)),
    Case("acmix", 48, (16, 16), {"stride": 2}),
    Case("acmix", 48, (10, 7), {"heads": 6, "kernel_att": 5}),
    Case("ea", 64, (14, 14)),
    Case("ea", 32, (8, 12)),
    Case("ea", 48, (7, 7), batch=3),
    Case("mhsa", 64, (14, 14)),
    Case("mhsa", 32, (8, 12), {"heads": 4}),
    Case("mhsa", 48, (7, 7), {"heads": 2, "d_k": 16, "d_v": 32}),
    Case("mhsa", 64, (7, 7), {"heads": 8, "d_k": 64, "d_v": 64}),  # upstream's own example shape
    Case("sk", 64, (14, 14)),
    Case("sk", 32, (8, 12)),
    Case("sk", 64, (7, 7), {"kernels": [3, 5], "reduction": 8, "group": 4, "min_hidden": 16}),
    Case("da", 512, (7, 7)),  # upstream as is
    Case("da", 64, (7, 7)),
    Case("da", 32, (8, 12)),
    Case("da", 48, (14, 14), {"kernel_size": 5}),
]

#: One small golden case per module, at the official default kwargs (files stay well under 200 KB).
GOLDEN = [
    Case("acmix", 32, (8, 12)),
    Case("ea", 32, (8, 12)),
    Case("mhsa", 32, (8, 12)),
    Case("sk", 16, (8, 12)),
    Case("da", 24, (6, 8)),  # not 512: attnbench's DAModule honours dim and resolution
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-dir", type=Path, required=True, help="folder with the official clones")
    parser.add_argument("--out", type=Path, default=None, help="write golden files here (e.g. tests/golden)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    official = Official(args.official_dir)

    worst = 0.0
    for case in CHECKS:
        diff, _ = compare(official, case)
        worst = max(worst, diff)
        status = "ok" if diff <= TOLERANCE else "FAIL"
        where = f"{case.name:6} dim={case.dim:<4} res={case.res} batch={case.batch} kwargs={case.kwargs}"
        print(f"{status:4} {where} max|diff|={diff:.3g}")
    if worst > TOLERANCE:
        sys.exit(f"largest difference {worst:.3g} exceeds {TOLERANCE}")

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for case in GOLDEN:
            diff, record = compare(official, case, seed=1)
            assert diff <= TOLERANCE, (case, diff)
            path = args.out / f"{case.name}.pt"
            torch.save(record, path)
            print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB, max|diff| {diff:.3g})")


if __name__ == "__main__":
    main()
