"""Check epsa, sam, clo, lka and van against the official code and write their golden files.

The official sources are not part of attnbench. Fetch them yourself and put these files, unmodified (or
trimmed to the classes named), in one directory passed as ``--official-dir``:

    epsanet.py, SE_weight_module.py   murufeng/EPSANet models/        (PSAModule, SEWeightModule)
    smt.py                            AFeng-x/SMT models/             (Attention)
    blocks.py                         qhfan/CloFormer classification/models/ (EfficientAttention, AttnMap)
    van.py                            Visual-Attention-Network/VAN-Classification models/ (LKA, Attention)

Third-party imports those files need but the attention classes do not use (timm, torchvision,
efficientnet_pytorch, ptflops, thop) are replaced by small stubs when they are not installed;
efficientnet_pytorch's MemoryEfficientSwish becomes ``nn.SiLU`` (the same function).

For every setting below, the script builds the official module, randomises all its parameters and
BatchNorm running statistics, maps the state dict to attnbench's parameter names, loads it into
``attnbench.build(...)`` with ``strict=True`` and compares eval-mode outputs (max abs difference must be
<= 1e-5). The first setting of each module is saved as ``tests/golden/<name>.pt`` with the official output,
then re-checked through the same flow the golden test uses.

    python benchmarks/make_golden_b.py --official-dir /path/to/official [--check-only]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
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
PACKAGE = "_attnbench_official_b"
GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "golden"


# ----------------------------------------------------------------------------------------------------------
# Loading the official files
# ----------------------------------------------------------------------------------------------------------


def _stub(name: str, **attrs: Any) -> None:
    """Register an empty module `name` (and its parents) unless the real one can be imported."""
    try:
        if importlib.util.find_spec(name.split(".")[0]) is not None and name.split(".")[0] not in _STUBBED:
            return
    except ValueError:
        pass
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
            _STUBBED.add(parts[0])
        if i > 1:
            setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], sys.modules[sub])
    for key, value in attrs.items():
        setattr(sys.modules[name], key, value)


_STUBBED: set[str] = set()


def _install_stubs() -> None:
    def unused(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("stub: not needed by the attention classes")

    def to_2tuple(x: Any) -> Any:
        return x if isinstance(x, tuple) else (x, x)

    _stub(
        "timm.models.layers",
        DropPath=nn.Identity,
        to_2tuple=to_2tuple,
        trunc_normal_=nn.init.trunc_normal_,
    )
    _stub("timm.models.registry", register_model=lambda fn: fn)
    _stub("timm.models.vision_transformer", _cfg=lambda **kw: kw)
    _stub(
        "timm.data.constants",
        IMAGENET_DEFAULT_MEAN=(0.485, 0.456, 0.406),
        IMAGENET_DEFAULT_STD=(0.229, 0.224, 0.225),
    )
    _stub("timm.data", create_transform=unused)
    _stub("torchvision.transforms")
    _stub("efficientnet_pytorch.model", MemoryEfficientSwish=nn.SiLU)
    _stub("ptflops", get_model_complexity_info=unused)
    _stub("thop", profile=unused)


def load_official(directory: Path) -> dict[str, types.ModuleType]:
    """Import the official files as submodules of one synthetic package (so relative imports work)."""
    _install_stubs()
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(directory)]  # type: ignore[attr-defined]
    sys.modules[PACKAGE] = package
    loaded = {}
    for stem in ("epsanet", "smt", "blocks", "van"):
        path = directory / f"{stem}.py"
        if not path.exists():
            raise SystemExit(f"{path} is missing: see this script's docstring for the files it needs")
        spec = importlib.util.spec_from_file_location(f"{PACKAGE}.{stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        loaded[stem] = module
    return loaded


# ----------------------------------------------------------------------------------------------------------
# What to compare: official constructor, name mapping, settings
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    dim: int
    res: tuple[int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch: int = 1


@dataclass(frozen=True)
class Entry:
    name: str
    #: (official modules, Case) -> the official nn.Module
    official: Callable[[dict[str, types.ModuleType], Case], nn.Module]
    #: official state-dict key -> attnbench key
    rename: Callable[[str], str]
    #: True when the official module works on tokens (B, N, C) with forward(x, H, W)
    tokens: bool
    #: the first case is the golden one
    cases: tuple[Case, ...]


def _shift_index(prefix: str, new_prefix: str) -> Callable[[str], str]:
    """Map "<prefix><i>." (1-based, upstream) to "<new_prefix><i - 1>." (0-based ModuleList)."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    return lambda key: pattern.sub(lambda m: f"{new_prefix}{int(m.group(1)) - 1}.", key)


def _clo_rename(key: str) -> str:
    key = re.sub(r"^qkvs\.(\d+)\.", r"local_branches.\1.qkv.", key)
    key = re.sub(r"^convs\.(\d+)\.", r"local_branches.\1.mixer.", key)
    key = re.sub(r"^act_blocks\.(\d+)\.act_block\.", r"local_branches.\1.attn_map.", key)
    return re.sub(r"^global_(q|kv)\.", r"global_branch.\1.", key)


def _epsa(off: dict[str, types.ModuleType], c: Case) -> nn.Module:
    kw = {**attnbench.get_spec("epsa").defaults, **c.kwargs}
    return off["epsanet"].PSAModule(
        c.dim, c.dim, conv_kernels=kw["kernels"], stride=kw["stride"], conv_groups=kw["groups"]
    )


def _epsa_with_reduction(off: dict[str, types.ModuleType], c: Case) -> nn.Module:
    # PSAModule always builds SEWeightModule(planes // 4) with its default reduction: swap in another one.
    module = _epsa(off, c)
    reduction = c.kwargs.get("reduction", 16)
    if reduction != 16:
        module.se = off["epsanet"].SEWeightModule(c.dim // 4, reduction)
    return module


def _sam(off: dict[str, types.ModuleType], c: Case) -> nn.Module:
    kw = {**attnbench.get_spec("sam").defaults, **c.kwargs}
    # sa_num_heads=-1 as SMT passes for SAM-only stages (the assert dim % -1 == 0 always holds).
    return off["smt"].Attention(
        c.dim,
        ca_num_heads=kw["heads"],
        sa_num_heads=-1,
        qkv_bias=kw["qkv_bias"],
        ca_attention=1,
        expand_ratio=kw["expand_ratio"],
    )


def _clo(off: dict[str, types.ModuleType], c: Case) -> nn.Module:
    kw = {**attnbench.get_spec("clo").defaults, **c.kwargs}
    return off["blocks"].EfficientAttention(
        c.dim,
        num_heads=kw["heads"],
        group_split=kw["group_split"],
        kernel_sizes=kw["kernel_sizes"],
        window_size=kw["window_size"],
        qkv_bias=kw["qkv_bias"],
    )


ENTRIES = (
    Entry(
        "epsa",
        _epsa_with_reduction,
        _shift_index("conv_", "convs."),
        False,
        (
            Case(64, (8, 8), batch=2),
            Case(128, (12, 10), {"stride": 2}),
            Case(64, (7, 9), {"groups": [1, 2, 4, 8], "reduction": 4}, batch=3),
        ),
    ),
    Entry(
        "sam",
        _sam,
        lambda key: "inner." + _shift_index("local_conv_", "local_convs.")(key),
        True,
        (
            Case(32, (8, 8), batch=2),
            Case(64, (8, 12)),
            Case(36, (7, 7), batch=2),
            Case(48, (6, 10), {"heads": 3, "expand_ratio": 3, "qkv_bias": False}, batch=2),
        ),
    ),
    Entry(
        "clo",
        _clo,
        _clo_rename,
        False,
        (
            Case(32, (8, 8), batch=2),
            Case(64, (16, 16)),
            Case(64, (12, 20), batch=2),
            Case(64, (7, 9), {"heads": 4, "group_split": [2, 2, 0], "kernel_sizes": [3, 5]}),
            Case(32, (6, 6), {"heads": 4, "group_split": [0, 4], "window_size": 1}, batch=2),
            Case(
                48,
                (8, 12),
                {"heads": 6, "group_split": [1, 2, 3], "kernel_sizes": [3, 7], "qkv_bias": False},
            ),
        ),
    ),
    Entry(
        "lka",
        lambda off, c: off["van"].LKA(c.dim),
        lambda key: key,
        False,
        (Case(32, (12, 16), batch=2), Case(64, (14, 14)), Case(16, (5, 31), batch=3)),
    ),
    Entry(
        "van",
        lambda off, c: off["van"].Attention(c.dim),
        lambda key: key,
        False,
        (Case(32, (12, 16), batch=2), Case(64, (14, 14)), Case(16, (5, 31), batch=3)),
    ),
)


# ----------------------------------------------------------------------------------------------------------
# Comparing
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def randomise(module: nn.Module) -> None:
    """Replace every parameter and BatchNorm statistic, so that every weight matters to the output."""
    for name, p in module.named_parameters():
        if p.dim() > 1:
            p.normal_(0.0, p[0].numel() ** -0.5)
        elif name.endswith("weight"):  # norm scales
            p.uniform_(0.5, 1.5)
        else:
            p.normal_(0.0, 0.2)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.2)  # type: ignore[union-attr]
            m.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]


def _source(name: str) -> str:
    """ "repo@commit path:Class" from the module's registered Reference."""
    ref = attnbench.get_spec(name).reference
    return f"{ref.repo}@{ref.commit} {ref.file}:{ref.cls}"


def official_output(entry: Entry, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not entry.tokens:
        return module(x)
    b, c, h, w = x.shape
    out = module(x.flatten(2).transpose(1, 2), h, w)
    return out.transpose(1, 2).reshape(b, c, h, w)


def compare(entry: Entry, official: dict[str, types.ModuleType], case: Case, seed: int) -> dict[str, Any]:
    """Build both, share weights, return the golden record (with the max abs difference)."""
    torch.manual_seed(seed)
    ref = entry.official(official, case)
    randomise(ref)
    ref.eval()
    ours = attnbench.build(entry.name, case.dim, case.res, **case.kwargs)
    ours.eval()

    mapped = {entry.rename(k): v.detach().clone() for k, v in ref.state_dict().items()}
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    mapped_shapes = {k: tuple(v.shape) for k, v in mapped.items()}
    if ours_shapes != mapped_shapes:
        raise AssertionError(f"{entry.name} {case}: state dicts differ:\n{ours_shapes}\nvs\n{mapped_shapes}")
    n_ref = sum(p.numel() for p in ref.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ref == n_ours, (entry.name, case, n_ref, n_ours)
    ours.load_state_dict(mapped, strict=True)

    x = torch.randn(case.batch, case.dim, *case.res)
    with torch.no_grad():
        expected = official_output(entry, ref, x)
        got = ours(x)
    diff = (expected - got).abs().max().item()
    return {
        "dim": case.dim,
        "res": list(case.res),
        "kwargs": dict(case.kwargs),
        "batch": case.batch,
        "input": x.contiguous(),
        "state_dict": {k: v.contiguous() for k, v in mapped.items()},
        "output": expected.detach().clone().contiguous(),
        "source": _source(entry.name),
        "_diff": diff,
        "_params": n_ours,
    }


def golden_flow(path: Path, name: str) -> float:
    """The generic golden test's flow: load, build, load_state_dict(strict), eval, compare."""
    record = torch.load(path, weights_only=True)
    module = attnbench.build(name, record["dim"], tuple(record["res"]), **record["kwargs"])
    module.load_state_dict(record["state_dict"], strict=True)
    module.eval()
    with torch.no_grad():
        out = module(record["input"])
    return (out - record["output"]).abs().max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-dir", type=Path, required=True, help="directory with the official files")
    parser.add_argument("--out-dir", type=Path, default=GOLDEN_DIR, help="where to write <name>.pt")
    parser.add_argument("--check-only", action="store_true", help="compare only; write no golden file")
    parser.add_argument("--only", nargs="*", help="module names to process (default: all five)")
    args = parser.parse_args(argv)

    official = load_official(args.official_dir.resolve())
    failed = False
    for entry in ENTRIES:
        if args.only and entry.name not in args.only:
            continue
        for i, case in enumerate(entry.cases):
            record = compare(entry, official, case, seed=i)
            diff, params = record.pop("_diff"), record.pop("_params")
            ok = diff <= TOLERANCE
            failed |= not ok
            print(
                f"{entry.name:5s} dim={case.dim:<4d} res={case.res} batch={case.batch} kwargs={case.kwargs} "
                f"params={params} max|diff|={diff:.2e} {'ok' if ok else 'FAIL'}"
            )
            if i == 0 and ok and not args.check_only:
                args.out_dir.mkdir(parents=True, exist_ok=True)
                path = args.out_dir / f"{entry.name}.pt"
                torch.save(record, path)
                flow = golden_flow(path, entry.name)
                failed |= flow > TOLERANCE
                size = path.stat().st_size / 1024
                print(f"      wrote {path} ({size:.0f} KiB), golden flow max|diff|={flow:.2e}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
