"""Nothing breaks, nothing is lost: the bad-input matrix, a long fuzz run and the memory guard, as a record.

Writes results/robustness.md and .json with the machine, versions and date:
(a) every entry of tests/bad_inputs.py through `attnbench.cli.main` in-process: it must end cleanly (exit 2,
    one stderr line starting "attnbench: error:", no traceback, no output file);
(b) a hypothesis fuzz run with the strategy of tests/test_fuzz.py, through the library (build, forward,
    count) and a shorter one through the runner (every case must be an ok or invalid row, never a crash);
(c) the memory guard at dim 64 for mhsa, da and acmix at 56, 112, 224 and 512: the runner's estimate (taken
    on a meta-built module, so nothing large is allocated), the free RAM, the guard's decision; cases that
    fit with an estimate under 1 GiB are run for real (peak memory), refused ones whose weights are small go
    through the real runner to show they are refused without allocating.

Run (light, but be nice to a shared machine): nice -n 19 python benchmarks/robustness.py [--out results]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ holds the bad-input matrix and the fuzz strategy

import torch  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

import attnbench  # noqa: E402

# Internals: the runner's per-case path, its counting and the memory guard are what (b) and (c) study.
from attnbench import counts, guards, runner  # noqa: E402
from attnbench import results as R  # noqa: E402
from attnbench.cli import main as cli_main  # noqa: E402
from attnbench.env import environment  # noqa: E402
from attnbench.errors import ResourceGuardError  # noqa: E402
from tests.bad_inputs import BAD_INPUTS, argv_for, prepare  # noqa: E402
from tests.test_fuzz import cases as fuzz_cases  # noqa: E402

GUARD_MODULES = ("mhsa", "da", "acmix")
GUARD_RES = (56, 112, 224, 512)
GUARD_DIM = 64
#: Only cases whose estimate is below this are run for real: the record must stay light on a shared machine.
RUN_BELOW_BYTES = 2**30
FUZZ_SEED = 20240601
MIB = 2**20
GIB = 2**30


def _cli(argv: list[str]) -> tuple[int, str, str, float]:
    """Run the CLI in-process; (exit code, stdout, stderr, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except SystemExit as exc:  # not expected: main() returns codes
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            err.write(f"Traceback (escaped main): {type(exc).__name__}: {exc}\n")
            code = -1
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t


# ---------------------------------------------------------------- (a) bad inputs


def bad_input_matrix() -> list[dict[str, Any]]:
    """Every bad-input entry, with what the CLI did and whether that was clean."""
    rows = []
    for ident, argv, needle in BAD_INPUTS:
        with tempfile.TemporaryDirectory(prefix="attnbench-bad-") as tmp:
            prepare(tmp)
            code, out, err, seconds = _cli(argv_for(argv, tmp))
            wrote = (Path(tmp) / "out.csv").exists()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        checks = {
            "exit_2": code == 2,
            "one_line": len(lines) == 1,
            "prefix": bool(lines) and lines[0].startswith("attnbench: error:"),
            "says_what": bool(lines) and needle.lower() in lines[0].lower(),
            "no_traceback": "Traceback" not in out + err,
            "no_output_file": not wrote,
        }
        rows.append(
            {
                "id": ident,
                "argv": argv,
                "exit_code": code,
                "stderr": lines[0] if len(lines) == 1 else err.strip(),
                "seconds": seconds,
                "clean": all(checks.values()),
                "failed_checks": [k for k, v in checks.items() if not v],
            }
        )
    return rows


# ---------------------------------------------------------------- (b) fuzz


def fuzz_library(examples: int) -> dict[str, Any]:
    """tests/test_fuzz.py's property over `examples` draws: a correct result or InvalidCaseError, nothing else."""
    tally: dict[str, Any] = {"examples": 0, "valid": 0, "refused": 0, "wrong": [], "other_exceptions": []}
    refused_by: dict[str, int] = {}

    @seed(FUZZ_SEED)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(fuzz_cases())
    def prop(case: tuple[str, int, tuple[int, int], int, dict[str, Any]]) -> None:
        name, dim, res, batch, kwargs = case
        tally["examples"] += 1
        try:
            spec, setting = attnbench.validate(name, dim, res, batch, **kwargs)
        except attnbench.InvalidCaseError as exc:
            tally["refused"] += 1
            refused_by[exc.constraint] = refused_by.get(exc.constraint, 0) + 1
            return
        try:
            module = attnbench.build(name, dim, res, **kwargs).eval()
            with torch.no_grad():
                y = module(torch.randn(batch, dim, *res))
            report = attnbench.count_macs(module, (batch, dim, *res))
            params = sum(p.numel() for p in module.parameters())
        except Exception as exc:
            tally["other_exceptions"].append(f"{case!r}: {type(exc).__name__}: {exc}"[:300])
            return
        ok = (
            y.shape[:2] == (batch, dim)
            and bool(torch.isfinite(y).all())
            and report.status == "ok"
            and report.macs == spec.macs_formula(setting)
            and params == spec.params_formula(setting)
        )
        if ok:
            tally["valid"] += 1
        else:
            tally["wrong"].append(repr(case)[:300])

    t = time.perf_counter()
    prop()
    return {**tally, "refused_by_constraint": dict(sorted(refused_by.items())), "seconds": time.perf_counter() - t}


def fuzz_runner(examples: int) -> dict[str, Any]:
    """The same draws through runner.run (params, MACs, every counter): each must be one ok or invalid row.

    runner.run, not run_sweep: the sweep's check refuses a sweep whose only case is invalid before the runner
    sees it, and this study is of what the runner makes of each case.
    """
    statuses: dict[str, int] = {}
    bad: list[str] = []
    options = attnbench.RunOptions(metrics=("params", "macs"))

    @seed(FUZZ_SEED + 1)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(fuzz_cases())
    def prop(case: tuple[str, int, tuple[int, int], int, dict[str, Any]]) -> None:
        name, dim, res, batch, kwargs = case
        try:
            sweep = attnbench.Sweep((name,), (dim,), (res,), (batch,), ("cpu",), kwargs=kwargs)
            rows = runner.run(sweep.cases(), options).results
        except Exception as exc:
            bad.append(f"{case!r}: escaped the runner: {type(exc).__name__}: {exc}"[:300])
            return
        for row in rows:
            statuses[row.status] = statuses.get(row.status, 0) + 1
            if row.status not in (R.OK, R.INVALID) or len(rows) != 1:
                bad.append(f"{case!r}: {row.status}: {row.reason}"[:300])

    t = time.perf_counter()
    prop()
    return {
        "examples": sum(statuses.values()),
        "statuses": statuses,
        "bad": bad,
        "seconds": time.perf_counter() - t,
    }


# ---------------------------------------------------------------- (c) memory guard


def _meta_estimate(name: str, res: int) -> tuple[int, int, int | None]:
    """(weights bytes, activation estimate, runner estimate) from a module built on meta (nothing allocated)."""
    spec, setting = attnbench.validate(name, GUARD_DIM, res)
    case = R.Case(name, GUARD_DIM, res, res)
    with torch.device("meta"):
        module = attnbench.build(name, GUARD_DIM, res).eval()
    options = attnbench.RunOptions(metrics=("memory",))
    counted = counts.count(module, case, setting, spec, options, case.scenario.mode)
    weights = 4 * spec.params_formula(setting)
    activations = (
        None
        if counted.estimate_bytes is None
        else counted.estimate_bytes - weights - 8 * case.batch * case.dim * case.tokens
    )
    return weights, activations or 0, counted.estimate_bytes


def guard_table() -> list[dict[str, Any]]:
    """The guard's decision for every (module, res), and what the real runner did where that is light."""
    rows = []
    for name in GUARD_MODULES:
        for res in GUARD_RES:
            weights, activations, estimate = _meta_estimate(name, res)
            free = attnbench.get_backend("cpu").free_memory()
            try:
                guards.guard(estimate, free, "RAM", force=False)
                decision = "runs"
            except ResourceGuardError as exc:
                decision, reason = "refused", str(exc)
            row: dict[str, Any] = {
                "module": name,
                "dim": GUARD_DIM,
                "res": res,
                "weights_bytes": weights,
                "activation_estimate_bytes": activations,
                "estimate_bytes": estimate,
                "need_bytes": None if estimate is None else estimate * guards.GUARD_MARGIN,
                "free_bytes": free,
                "decision": decision,
                "reason": reason if decision == "refused" else "",
            }
            if decision == "runs":
                if estimate is not None and estimate < RUN_BELOW_BYTES:
                    row.update(_through_runner(name, res, "after counting"))
                else:
                    row["action"] = "not run: fits, but the estimate is >= 1 GiB (kept light)"
            elif weights * guards.GUARD_MARGIN > (free or 0):
                # The runner guards the weights before building: it refuses without allocating anything.
                row.update(_through_runner(name, res, "before building (weights guard)"))
            elif weights < RUN_BELOW_BYTES:
                # Small weights are built, the peak is counted on meta, and the full estimate is refused.
                row.update(_through_runner(name, res, "after counting"))
            else:
                row["action"] = (
                    f"not run through the runner: building allocates {weights / GIB:.1f} GiB of weights before "
                    "the full estimate is known"
                )
            rows.append(row)
    return rows


def _through_runner(name: str, res: int, where: str) -> dict[str, Any]:
    t = time.perf_counter()
    options = attnbench.RunOptions(metrics=("params", "memory"), budget=attnbench.TimingBudget(min_run_time=0.05))
    result = runner.run([R.Case(name, GUARD_DIM, res, res)], options).results[0]
    seconds = time.perf_counter() - t
    if result.status == R.OK:
        action = f"ran: ok in {seconds:.1f} s, measured peak {result.peak_mem_bytes / MIB:,.1f} MiB (activations)"
    else:
        action = f"runner: {result.status} {where}, in {seconds * 1000:.0f} ms"
    return {
        "action": action,
        "runner_status": result.status,
        "runner_seconds": seconds,
        "measured_peak_bytes": result.peak_mem_bytes,
    }


def cli_refusal() -> dict[str, Any]:
    """The issue's example: `attnbench profile mhsa --dim 64 --res 512` (latency, memory) must be refused fast."""
    argv = ["profile", "mhsa", "--dim", "64", "--res", "512", "--metrics", "latency,memory", "--quiet"]
    code, _, err, seconds = _cli(argv)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return {"argv": argv, "exit_code": code, "error_line": last, "seconds": seconds}


# ---------------------------------------------------------------- output


def _b(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / GIB:,.2f} GiB" if n >= GIB else f"{n / MIB:,.1f} MiB"


def write(out: Path, record: dict[str, Any]) -> None:
    """results/robustness.{json,md}."""
    (out / "robustness.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    env, bad, lib, run_fz, guard, cli = (
        record[k] for k in ("environment", "bad_inputs", "fuzz_library", "fuzz_runner", "guard", "cli_refusal")
    )
    clean = sum(r["clean"] for r in bad)
    lines = [
        "# Robustness: bad input, fuzzing, memory guard",
        "",
        f"`benchmarks/robustness.py`, {env.get('date_utc')}, attnbench {env.get('attnbench')} "
        f"({env.get('git_commit')}), Python {env.get('python')}, torch {env.get('torch')}, "
        f"onnxruntime {env.get('onnxruntime')}, {env.get('cpu_model')} ({env.get('logical_cores')} logical cores), "
        f"{env.get('platform')}.",
        "",
        "## (a) Bad-input matrix",
        "",
        f"**{clean} / {len(bad)}** invalid invocations from `tests/bad_inputs.py` end cleanly: exit code 2, exactly "
        "one stderr line starting `attnbench: error:` that names the problem, no traceback, no output file written "
        "(each run in-process through `attnbench.cli.main`).",
        "",
        "| id | exit | stderr | clean |",
        "|---|---:|---|:-:|",
    ]
    for r in bad:
        text = r["stderr"].replace("|", "\\|")
        mark = "yes" if r["clean"] else f"**no** ({', '.join(r['failed_checks'])})"
        lines.append(f"| {r['id']} | {r['exit_code']} | {text} | {mark} |")
    lines += [
        "",
        "## (b) Fuzzing (hypothesis, strategy of `tests/test_fuzz.py`)",
        "",
        f"- library (validate, build, forward, count, params and MACs against the formulas), seed {FUZZ_SEED}: "
        f"**{lib['examples']}** examples, **{lib['valid']}** valid and correct, **{lib['refused']}** refused with "
        f"InvalidCaseError, **{len(lib['wrong'])}** wrong results, **{len(lib['other_exceptions'])}** other "
        f"exceptions; {lib['seconds']:.0f} s",
        f"- refusals by constraint: {'; '.join(f'`{k}` {v}' for k, v in lib['refused_by_constraint'].items())}",
        f"- through `runner.run` (params, MACs with attnbench, fvcore and thop), seed {FUZZ_SEED + 1}: "
        f"**{run_fz['examples']}** examples, rows by status: "
        f"{', '.join(f'{k} {v}' for k, v in sorted(run_fz['statuses'].items()))}; **{len(run_fz['bad'])}** rows "
        f"that were neither ok nor invalid or escaped the runner; {run_fz['seconds']:.0f} s",
    ]
    for item in (lib["wrong"] + lib["other_exceptions"] + run_fz["bad"])[:20]:
        lines.append(f"  - `{item}`")
    lines += [
        "",
        "## (c) Memory guard",
        "",
        f"The runner refuses a case when (estimate) x {guards.GUARD_MARGIN} exceeds the free memory (MemAvailable "
        "for CPU/ORT, free device memory for CUDA), unless `--force`. Estimate = the attnbench counter's "
        "meta-device peak of live activations + weights + input and output. Here it was taken on a meta-built "
        "module (nothing allocated); before building, the runner also guards the weights alone (4 B x the "
        "params formula), since building allocates them.",
        "",
        f"CLI: `attnbench {' '.join(cli['argv'])}` -> exit {cli['exit_code']} in {cli['seconds']:.1f} s "
        "(in-process, imports already warm):",
        "",
        f"    {cli['error_line']}",
        "",
        f"Dim {GUARD_DIM}, batch 1. Cases with an estimate under 1 GiB that fit are run for real (count + memory "
        "on the CPU backend, short timing); others are only decided.",
        "",
        "| module | res | weights | act. estimate | estimate | x margin | free RAM | guard | what happened |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in guard:
        lines.append(
            f"| {r['module']} | {r['res']} | {_b(r['weights_bytes'])} | {_b(r['activation_estimate_bytes'])} | "
            f"{_b(r['estimate_bytes'])} | {_b(r['need_bytes'])} | {_b(r['free_bytes'])} | {r['decision']} | "
            f"{r['action']} |"
        )
    refused = [r for r in guard if r["decision"] == "refused"]
    runs = [r for r in guard if r["decision"] == "runs"]
    ran_ok = [r for r in guard if r.get("runner_status") == R.OK]
    lines += [
        "",
        f"{len(refused)} of {len(guard)} cases refused, each with an estimate x margin above the free RAM; "
        f"{len(runs)} fit, of which {len(ran_ok)} were run and ended ok.",
        "",
    ]
    (out / "robustness.md").write_text("\n".join(lines))


def main() -> int:
    """Run the three studies, write the record, and return 0 when nothing broke."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--fuzz-examples", type=int, default=20000)
    parser.add_argument("--runner-fuzz-examples", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = environment(threads=1)
    t = time.perf_counter()
    bad = bad_input_matrix()
    print(
        f"bad inputs: {sum(r['clean'] for r in bad)}/{len(bad)} clean ({time.perf_counter() - t:.0f} s)",
        file=sys.stderr,
    )
    cli = cli_refusal()
    print(f"cli refusal: exit {cli['exit_code']} in {cli['seconds']:.1f} s", file=sys.stderr)
    lib = fuzz_library(args.fuzz_examples)
    print(f"fuzz (library): {lib['examples']} examples, {lib['seconds']:.0f} s", file=sys.stderr)
    run_fz = fuzz_runner(args.runner_fuzz_examples)
    print(f"fuzz (runner): {run_fz['examples']} examples, {run_fz['seconds']:.0f} s", file=sys.stderr)
    guard = guard_table()
    print(f"guard table: {len(guard)} cases ({time.perf_counter() - t:.0f} s in all)", file=sys.stderr)
    record = {
        "environment": env,
        "bad_inputs": bad,
        "cli_refusal": cli,
        "fuzz_library": lib,
        "fuzz_runner": run_fz,
        "guard": guard,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out, record)
    print(f"wrote {args.out / 'robustness.md'} and .json", file=sys.stderr)
    broke = (
        not all(r["clean"] for r in bad)
        or cli["exit_code"] != 2
        or lib["wrong"]
        or lib["other_exceptions"]
        or run_fz["bad"]
        or any(r.get("runner_status") not in (None, R.OK, R.GUARDED) for r in guard)
    )
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
