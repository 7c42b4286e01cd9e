"""The papers' tables against attnbench: the official model factories of the zoo's papers, from local checkouts.

Each network is built from its repository's own, unmodified file by an explicit call spec
(`models/van.py:van_b0(pretrained=False)`), at 224x224 with 3 input channels, and counted by `attnbench.profile`
(params, MACs from the attnbench counter, fvcore and thop). Its published params and FLOPs sit beside them, with
where each claim is written, the ratios, and what explains every gap above 2%. Nothing of the repositories is
copied into attnbench: this script only names their files.

The papers' "FLOPs" are multiply-accumulates (MACs): they are held against the MACs columns.

Run (in a throwaway environment that has the repositories' imports: timm, efficientnet_pytorch; see
results/paper_tables.md for the exact one):
    python benchmarks/paper_tables.py CHECKOUT... [-o results/paper_tables.md]
where each CHECKOUT is a local copy of one of: Visual-Attention-Network/VAN-Classification, AFeng-x/SMT,
qhfan/CloFormer, murufeng/EPSANet, LeapLabTHU/ACmix. Each repository is counted in a process of its own (VAN, SMT
and EPSANet all name their package `models`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The gap above which a ratio needs an explanation.
GAP = 0.02
RES = 224


@dataclass(frozen=True)
class Model:
    """One network of a paper's table: where its factory is, what the paper claims, where the claim is."""

    name: str
    repo: str  # the marker file that identifies the checkout
    file: str
    call: str
    params: str  # claimed parameters in millions, as written ("4.1", "21")
    flops: str  # claimed "FLOPs" (multiply-accumulates) in billions, as written ("0.9", "2.0")
    where: str

    @property
    def params_m(self) -> float:
        return float(self.params)

    @property
    def flops_g(self) -> float:
        return float(self.flops)


VAN = "models/van.py"
SMT = "models/smt.py"
CLO = "classification/models/model_factory.py"
EPSA = "models/epsanet.py"
ACMIX_R = "ResNet/ResNet_ImageNet.py"
ACMIX_S = "Swin-Transformer/models/swin_transformer_acmix.py"
SWIN_T = "SwinTransformer_acmix(depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], drop_path_rate=0.2)"
SWIN_S = "SwinTransformer_acmix(depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], drop_path_rate=0.3)"
CLO_PAPER = "paper (arXiv 2303.17803), ImageNet-1K table"

MODELS = (
    Model("VAN-B0", VAN, VAN, "van_b0(pretrained=False)", "4.1", "0.9", "VAN-Classification README table"),
    Model("VAN-B1", VAN, VAN, "van_b1(pretrained=False)", "13.9", "2.5", "VAN-Classification README table"),
    Model("VAN-B2", VAN, VAN, "van_b2(pretrained=False)", "26.6", "5.0", "VAN-Classification README table"),
    Model("VAN-B3", VAN, VAN, "van_b3(pretrained=False)", "44.8", "9.0", "VAN-Classification README table"),
    Model("SMT-T", SMT, SMT, "smt_t(pretrained=False)", "12", "2.4", "SMT README table"),
    Model("SMT-S", SMT, SMT, "smt_s(pretrained=False)", "21", "4.7", "SMT README table"),
    Model("SMT-B", SMT, SMT, "smt_b(pretrained=False)", "32", "7.7", "SMT README table"),
    Model("CloFormer-XXS", CLO, CLO, "cloformer_xxs()", "4.2", "0.6", CLO_PAPER),
    Model("CloFormer-XS", CLO, CLO, "cloformer_xs()", "7.2", "1.1", CLO_PAPER),
    Model("CloFormer-S", CLO, CLO, "cloformer_s()", "12.3", "2.0", CLO_PAPER),
    Model("EPSANet-50 (Small)", EPSA, EPSA, "epsanet50()", "22.56", "3.62", "EPSANet README table"),
    Model("EPSANet-101 (Small)", EPSA, EPSA, "epsanet101()", "38.90", "6.82", "EPSANet README table"),
    Model("ACmix ResNet-50", ACMIX_R, ACMIX_R, "ACmix_ResNet([3, 4, 6, 3])", "18.6", "3.6", "ACmix README table"),
    Model("ACmix Swin-T", ACMIX_S, ACMIX_S, SWIN_T, "30", "4.6", "ACmix README table"),
    Model("ACmix Swin-S", ACMIX_S, ACMIX_S, SWIN_S, "51", "9.0", "ACmix README table"),
)

#: Operators whose MACs are the "conv/linear/matmul" core every counter agrees on (attnbench's names; fvcore's).
CORE_ATTNBENCH = ("aten.conv2d", "aten.convolution", "aten.linear", "aten.matmul", "aten.bmm", "aten.mm",
                  "aten.addmm", "aten.einsum", "aten.baddbmm", "aten.scaled_dot_product_attention")  # fmt: skip
CORE_FVCORE = ("conv", "linear", "matmul", "bmm", "einsum", "addmm", "mm", "baddbmm")


# ---------------------------------------------------------------- the worker: one repository per process


def count_models(checkout: Path, models: list[Model]) -> list[dict[str, Any]]:
    """Count each model of one checkout with attnbench.profile, plus the per-operator totals a gap is read from."""
    import attnbench  # in the worker only: the parent never imports torch
    from attnbench.counting import count_macs  # per-operator totals of one counter (the explanations)

    out = []
    for m in models:
        spec = f"{checkout / m.file}:{m.call}"
        started = time.perf_counter()
        try:
            options = attnbench.RunOptions(metrics=("params", "macs"))
            (row,) = attnbench.profile(spec, dim=3, res=RES, options=options)
        except attnbench.AttnbenchError as exc:
            out.append({"name": m.name, "spec": spec, "error": str(exc)})
            continue
        wall = time.perf_counter() - started
        record = {"name": m.name, "spec": spec, "wall_s": wall, **_row_fields(row)}
        module = attnbench.build(spec, 3, RES)
        for counter in ("attnbench", "fvcore"):
            report = count_macs(module, (1, 3, RES, RES), counter)
            record[f"by_op_{counter}"] = dict(report.by_op)
        out.append(record)
    return out


def _row_fields(row: Any) -> dict[str, Any]:
    names = ("status", "reason", "params", "macs_attnbench", "macs_fvcore", "macs_thop", "flops_attnbench",
             "counter_notes", "counted_on_attnbench", "counted_on_fvcore", "counted_on_thop", "count_s_attnbench",
             "count_s_fvcore", "count_s_thop", "built_on", "build_s", "seconds", "output_shapes")  # fmt: skip
    return {n: getattr(row, n) for n in names}


# ---------------------------------------------------------------- the parent: run, compare, explain


def _checkouts(paths: list[Path]) -> dict[str, Path]:
    """Marker file -> the checkout holding it."""
    found: dict[str, Path] = {}
    for path in paths:
        for marker in {m.repo for m in MODELS}:
            if (path / marker).is_file():
                found[marker] = path
    return found


def _run_worker(checkout: Path, models: list[Model]) -> list[dict[str, Any]]:
    names = [m.name for m in models]
    cmd = [sys.executable, __file__, "--worker", str(checkout), json.dumps(names)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " ".join(proc.stderr.split())[-400:]
        return [{"name": n, "spec": f"{checkout}", "error": f"worker failed: {tail}"} for n in names]
    return [json.loads(ln) for ln in lines]


def _core(by_op: dict[str, int], names: tuple[str, ...]) -> int:
    return sum(n for op, n in by_op.items() if op in names)


def analyse(record: dict[str, Any], model: Model) -> dict[str, Any]:
    """Ratios to the claims, and the components a gap is read from (attnbench's products, fvcore's charges)."""
    if "error" in record:
        return record
    ours, fv, th = record["macs_attnbench"], record["macs_fvcore"], record["macs_thop"]
    claim_macs, claim_params = model.flops_g * 1e9, model.params_m * 1e6
    a_ops, f_ops = record.pop("by_op_attnbench"), record.pop("by_op_fvcore")
    core_a, core_f = _core(a_ops, CORE_ATTNBENCH), _core(f_ops, CORE_FVCORE)
    record.update(
        claim_params=claim_params,
        claim_macs=claim_macs,
        params_ratio=record["params"] / claim_params,
        ours_ratio=ours / claim_macs if ours else None,
        fvcore_ratio=fv / claim_macs if fv else None,
        thop_ratio=th / claim_macs if th else None,
        core_attnbench=core_a,
        core_fvcore=core_f,
        products_attnbench=ours - core_a,
        other_fvcore=fv - core_f if fv is not None else None,
        fvcore_other_ops={op: n for op, n in f_ops.items() if op not in CORE_FVCORE},
        attnbench_other_ops={op: n for op, n in a_ops.items() if op not in CORE_ATTNBENCH},
    )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("results/paper_tables.md"))
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--render", type=Path, help="Write the report again from a JSON this script wrote.")
    parser.add_argument(
        "--breakdowns", action="store_true", help="Only run --breakdown (by module, by type) on every model of the "
        "checkouts and add the exit codes to the JSON given by --render.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.render.read_text())
        if args.breakdowns:
            saved["environment"]["breakdowns"] = check_breakdowns(_checkouts(args.checkouts))
            args.render.write_text(json.dumps(saved, indent=1, default=str))
        write(saved["models"], args.output, saved["environment"])
        return 0
    if args.worker:
        checkout, names = Path(args.worker[0]), json.loads(args.worker[1])
        for record in count_models(checkout, [m for m in MODELS if m.name in names]):
            print(json.dumps(record, default=str), flush=True)
        return 0
    found = _checkouts(args.checkouts)
    records = []
    started = time.perf_counter()
    for marker, checkout in found.items():
        models = [m for m in MODELS if m.repo == marker]
        for record, model in zip(_run_worker(checkout, models), models, strict=True):
            records.append(analyse(record, model))
            print(f"{model.name}: {record.get('error') or 'counted'}", file=sys.stderr, flush=True)
    write(records, args.output, _environment(time.perf_counter() - started, found))
    return 0


def check_breakdowns(found: dict[str, Path]) -> list[dict[str, Any]]:
    """`attnbench profile MODELS --breakdown` and `--breakdown --by type` per checkout: exit code and tables seen."""
    checks = []
    for marker, checkout in found.items():
        specs = [f"{checkout / m.file}:{m.call}" for m in MODELS if m.repo == marker]
        for extra in ((), ("--by", "type")):
            cmd = [sys.executable, "-m", "attnbench.cli", "profile", *specs, "--dim", "3", "--res", str(RES),
                   "--metrics", "params,macs", "--breakdown", *extra, "--quiet"]  # fmt: skip
            started = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            checks.append({
                "models": [m.name for m in MODELS if m.repo == marker],
                "command": "--breakdown" + (" --by type" if extra else ""),
                "exit_code": done.returncode,
                "tables": done.stdout.count("\nbuilt on "),  # one line per breakdown, under its table
                "seconds": time.perf_counter() - started,
                "stderr_tail": " ".join(done.stderr.split())[-300:] if done.returncode else "",
            })  # fmt: skip
            print(f"{checks[-1]['models']} {checks[-1]['command']}: exit {done.returncode}", file=sys.stderr)
    return checks


# ---------------------------------------------------------------- the report


_PTFLOPS = (
    "another counter's convention: the README's figures are the convolutions and linears alone, 2.380 G (SMT-T), "
    "4.657 G (SMT-S) and 7.686 G (SMT-B), written 2.4, 4.7 and 7.7 G: a count without the functional q·kᵀ and "
    "attn·v of the MSA blocks, as module hooks give it (models/smt.py imports ptflops' "
    "get_model_complexity_info and calls it in `__main__`). attnbench, fvcore and thop all add those matmuls "
    "(81.1 M, 181.9 M, 280.3 M)"
)
_CLOFORMER = (
    "paper vs code: all three counters read the repository's model 8-11% above the paper, and its conv + linear "
    "+ matmul core alone (every counter agrees on it to the unit) is already above the claim; no counting "
    "convention covers that (fvcore's largest extra, the norms, is under 1%). Neither the paper nor the "
    "repository says how the figures were counted (classification/main.py asks the model for a flops() method "
    "that it does not have). The five-conv stem is 82.4 M MACs of CloFormer-XXS's 0.661 G"
)
#: What explains a gap that no rounding covers: read in the repository and the paper; keyed by model, and by
#: "model MACs" where the MACs need their own note.
NOTES: dict[str, str] = {
    "SMT-T MACs": _PTFLOPS,
    "SMT-S MACs": _PTFLOPS,
    "SMT-B MACs": _PTFLOPS,
    "SMT-S": (
        "paper vs code: the repository's smt_s, the configuration of its configs/smt/smt_small_224.yaml, builds "
        "22.55 M parameters (exactly sum(p.numel())) against the README's 21 M: the published figure does not "
        "describe the released code"
    ),
    "CloFormer-XXS MACs": _CLOFORMER,
    "CloFormer-XS MACs": _CLOFORMER,
    "CloFormer-S MACs": _CLOFORMER,
    "ACmix ResNet-50 MACs": (
        "ours (3.502 G) counts ACmix's windowed q·(k+pe) and attn·v products, 135.2 M MACs that fvcore (3.389 G) "
        "and thop (3.420 G) skip. The README's 3.6 G matches the conv and linear MACs (3.367 G) plus those "
        "products at 2 operations each (3.637 G); the repository does not say how it counted, and no other mix of "
        "the three conventions reaches 3.6 G"
    ),
    "ACmix Swin-T": (
        "paper vs code: the released SwinTransformer_acmix in the Swin-T configuration "
        "(configs/acmix_swin_tiny_patch4_window7_224.yaml) builds 28.65 M parameters against the README's 30 M "
        "(Swin-S: 50.35 M against 51 M, within 2%)"
    ),
}


def _rounds_to(ours: float, claim: str) -> bool:
    """True when our figure, written with the claim's decimals ("2.0": one), is the claim (its own rounding)."""
    decimals = len(claim.split(".")[1]) if "." in claim else 0
    return f"{ours:.{decimals}f}" == claim


def explain(r: dict[str, Any], model: Model) -> list[str]:
    """Why each figure differs from the claim by more than GAP: rounding, another counter's convention, or a note."""
    lines = []
    if abs(r["params_ratio"] - 1) > GAP:
        if _rounds_to(r["params"] / 1e6, model.params):
            lines.append(f"params: {r['params'] / 1e6:.2f} M written as {model.params} M (the claim's rounding)")
        else:
            lines.append(
                f"params: {r['params'] / 1e6:.2f} M against {model.params} M: {NOTES.get(model.name, 'unexplained')}"
            )
    counters = {"attnbench": r["macs_attnbench"], "fvcore": r["macs_fvcore"], "thop": r["macs_thop"]}
    off = {c: v for c, v in counters.items() if v and abs(v / r["claim_macs"] - 1) > GAP}
    if off:
        if all(_rounds_to(v / 1e9, model.flops) for v in off.values()):
            figures = ", ".join(f"{c} {v / 1e9:.3f} G" for c, v in off.items())
            lines.append(f"MACs: {figures} written as {model.flops} G (the claim's rounding)")
        else:
            lines.append(f"MACs: {NOTES.get(model.name + ' MACs', NOTES.get(model.name, 'unexplained'))}")
    return lines


def conventions(r: dict[str, Any]) -> str:
    """How attnbench's total and fvcore's differ from their common conv/linear/matmul core."""
    same = (
        "equal to the unit"
        if r["core_attnbench"] == r["core_fvcore"]
        else (f"attnbench {r['core_attnbench']:,} vs fvcore {r['core_fvcore']:,}")
    )
    products = ", ".join(f"{op} {n / 1e6:.1f} M" for op, n in r["attnbench_other_ops"].items() if n) or "none"
    charges = ", ".join(f"{op} {n / 1e6:.1f} M" for op, n in r["fvcore_other_ops"].items() if n) or "none"
    core = f"core {r['core_attnbench'] / 1e9:.4f} G ({same})"
    return f"{core}; attnbench's products: {products}; fvcore's charges: {charges}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write(records: list[dict[str, Any]], output: Path, env: dict[str, Any]) -> None:
    """results/paper_tables.md and .json: the claims beside the three counters, and every gap explained."""
    by_name = {m.name: m for m in MODELS}
    lines = [
        "# The papers' tables, from their official code",
        "",
        "`benchmarks/paper_tables.py`: each network built from its repository's own, unmodified file by an explicit "
        'call spec, counted by `attnbench.profile` at 224x224, batch 1 (3 input channels). **The papers\' "FLOPs" '
        "are multiply-accumulates: they are held against the MACs columns** (attnbench's FLOPs, 2 per multiply-add, "
        "would read about 2x).",
        "",
        f"Machine: {env['machine']}, load {env['load_1min']:.1f} (1 min) at the end, {env['seconds']:.0f} s in all. "
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f". PYTHONPATH={env['pythonpath'] or '-'}.",
        "",
        "| model | params | claim | ratio | MACs (attnbench) | fvcore | thop | claimed FLOPs (MACs) | ours÷claim | "
        "fvcore÷claim | thop÷claim | claims from |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        m = by_name[r["name"]]
        if "error" in r:
            lines.append(
                f"| {m.name} | - | {m.params_m:g} M | - | - | - | - | {m.flops_g:g} G | - | - | - | {m.where} |"
            )
            continue
        lines.append(
            f"| {m.name} | {r['params'] / 1e6:.2f} M | {m.params} M | {_ratio(r['params_ratio'])} | "
            f"{r['macs_attnbench'] / 1e9:.3f} G | {r['macs_fvcore'] / 1e9:.3f} G | {r['macs_thop'] / 1e9:.3f} G | "
            f"{m.flops} G | {_ratio(r['ours_ratio'])} | {_ratio(r['fvcore_ratio'])} | {_ratio(r['thop_ratio'])} | "
            f"{m.where} |"
        )
    lines += ["", "## Every gap above 2%, explained", ""]
    for r in records:
        m = by_name[r["name"]]
        if "error" in r:
            lines.append(f"- **{m.name}**: did not load: {r['error']}")
            continue
        for line in explain(r, m):
            lines.append(f"- **{m.name}**: {line}")
    lines += ["", "## The counters against each other", "",
              "Where attnbench and fvcore differ is their conventions, never the convolutions, linears and matmuls: "
              "the core below is the conv + linear + matmul MACs, and each counter's total is that core plus what "
              "its convention adds (attnbench: elementwise tensor products; fvcore: norms and pooling). thop "
              "charges norms, softmax and pooling like fvcore.", ""]  # fmt: skip
    lines += [
        "| model | conv/linear/matmul core, and each convention's part | built on | fvcore ran on |",
        "|---|---|---|---|",
    ]
    for r in records:
        if "error" not in r:
            ran = r["counted_on_fvcore"]
            ran = ran if len(ran) <= 60 else ran[:57] + "...)"
            lines.append(f"| {r['name']} | {conventions(r)} | {r['built_on']} | {ran} |")
    if env.get("breakdowns"):
        lines += ["", "## `--breakdown` on every network", "",
                  "`attnbench profile MODELS --dim 3 --res 224 --metrics params,macs --breakdown [--by type]`, one run "
                  "per repository (all its models in one run):", "",
                  "| models | command | exit code | breakdowns printed | seconds |",
                  "|---|---|---:|---:|---:|"]  # fmt: skip
        for c in env["breakdowns"]:
            lines.append(
                f"| {', '.join(c['models'])} | `{c['command']}` | {c['exit_code']} | {c['tables']} | "
                f"{c['seconds']:.0f} |" + (f" {c['stderr_tail']}" if c["stderr_tail"] else "")
            )
    lines += ["", "## Notes", "", *[f"- {n}" for n in NOTES_TEXT], "",
              "Checkouts: " + ", ".join(f"`{p}` at {c[:7]}" for p, c in env["checkouts"].items()) + "."]  # fmt: skip
    output.write_text("\n".join(lines) + "\n")
    output.with_suffix(".json").write_text(json.dumps({"environment": env, "models": records}, indent=1, default=str))


#: Free notes under the report: the environment, and what failed to load unmodified.
NOTES_TEXT: list[str] = [
    "Environment: a throwaway venv outside the repository with torch 2.13.0 (CPU), timm installed with --no-deps, "
    "efficientnet_pytorch 0.7.1 (CloFormer's MemoryEfficientSwish), fvcore, ultralytics-thop and attnbench itself. "
    "VAN's and SMT's READMEs pin timm 0.4.12: it is put first on PYTHONPATH (a --no-deps install in a folder of its "
    "own), and VAN, CloFormer and ACmix's Swin load with it as with timm 1.0.31.",
    "Found: SMT does not load unmodified with timm 1.x: models/smt.py:14 `from timm.data.transforms import "
    "_pil_interp` raises ImportError (timm 1.0.31 has no such name); with the pinned 0.4.12 it loads.",
    "Stand-ins, since torchvision is not installed (its wheels would pull another torch): a `torchvision` package "
    "with the names imported at load time (timm's FrozenBatchNorm2d and transforms, ACmix ResNet's "
    "`torchvision.models.utils.load_state_dict_from_url`, mapped to torch.hub's) and a `ptflops` module (imported "
    "by SMT's models/smt.py, never called while building). Nothing in them runs while a model is built or counted.",
    "Every model was built from its repository's file as it is, by an explicit call spec: "
    "`models/van.py:van_b0(pretrained=False)`, `models/epsanet.py:epsanet50()` (a package with relative imports), "
    "`ResNet/ResNet_ImageNet.py:ACmix_ResNet([3, 4, 6, 3])`, "
    "`Swin-Transformer/models/swin_transformer_acmix.py:SwinTransformer_acmix(depths=[2, 2, 6, 2], ...)`.",
]


def _environment(seconds: float, found: dict[str, Path]) -> dict[str, Any]:
    """Machine, versions and checkouts the figures were taken with."""
    versions = {}
    for name in ("torch", "timm", "fvcore", "ultralytics-thop", "efficientnet_pytorch"):
        code = f"import importlib.metadata as m; print(m.version({name!r}))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        versions[name] = proc.stdout.strip() or "not installed"
    proc = subprocess.run([sys.executable, "-c", "import timm; print(timm.__version__)"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    versions["timm (imported)"] = proc.stdout.strip() or "not importable"
    commits = {}
    for path in found.values():
        commit = (path / ".commit").read_text().strip() if (path / ".commit").is_file() else "unknown"
        commits[str(path)] = commit
    cpu = platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "machine": f"{cpu}, {os.cpu_count()} cores shared with other engineers' test runs, "
        f"Python {platform.python_version()}",
        "load_1min": os.getloadavg()[0],
        "seconds": seconds,
        "versions": versions,
        "checkouts": commits,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
