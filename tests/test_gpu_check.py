"""benchmarks/gpu_check.sh and gpu_check.py without a GPU: arguments, the skip line, the commands, the verdicts.

What needs a GPU (the CUDA tests, the timing and memory checks, the CUDA sweep) cannot run here. These tests
check everything around it: bad arguments, the one-line skip, that each command the script would run is one
the CLI accepts (replayed here, counting only, into the same report files), the summary, and the pass/fail
judgement of the checks on given figures.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from attnbench import results as R
from attnbench import store
from tests.conftest import parse_cli, run_cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["cuda-tests", "checks", "compare-fp32", "compare-bf16", "merge"]


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=120)


def _no_gpu_path(tmp_path: Path) -> str:
    """PATH with an nvidia-smi that finds no GPU, as it answers on a machine whose driver sees none."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_without_a_gpu_one_line_exit_0_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = _script("--out", str(out), env={"PATH": _no_gpu_path(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "gpu_check.sh: skipped: no CUDA GPU on this machine (nvidia-smi lists no GPU); nothing checked, nothing written"
    ]
    assert list(out.iterdir()) == [] and done.stdout == ""


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_nvidia_smi_the_line_says_so(tmp_path: Path) -> None:
    done = _script("--out", str(tmp_path))
    assert done.returncode == 0
    assert done.stderr.strip().endswith("(nvidia-smi not found); nothing checked, nothing written")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bogus"], "unknown argument '--bogus' (see --help)"),
        (["--budget", "0"], "--budget needs a whole number of seconds > 0, got '0'"),
        (["--budget", "8m"], "got '8m'"),
        (["--budget"], "got ''"),
        (["--out"], "--out needs a directory"),
        (["--out", "/nonexistent/results"], "--out /nonexistent/results: no such directory"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], needle: str) -> None:
    done = _script(*args)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("gpu_check.sh: error: ")
    assert needle in done.stderr


def test_help_prints_usage_and_exit_codes() -> None:
    done = _script("--help")
    assert done.returncode == 0
    assert "usage: benchmarks/gpu_check.sh [--out DIR]" in done.stdout and "Exit codes: 0" in done.stdout
    assert not done.stdout.startswith("#")


def _dry_run(tmp_path: Path, out: Path) -> dict[str, list[str]]:
    done = _script("--dry-run", "--out", str(out), env={"TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    steps = {}
    for line in done.stdout.splitlines():
        name, _, command = line.partition(": ")
        steps[name] = shlex.split(command)
    return steps


def test_dry_run_commands_are_the_cli_s_and_replay_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    steps = _dry_run(tmp_path, out)
    assert list(steps) == STEPS
    assert steps["cuda-tests"] == [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    # Without CUDA the checker says so, exits 0 and writes nothing.
    checks = steps["checks"]
    assert checks[1:] == ["benchmarks/gpu_check.py", "check", "--out", str(out / "gpu_check.json")]
    monkeypatch.chdir(ROOT)
    assert _checker().main(checks[2:]) == 0
    assert "skipped: no CUDA GPU" in capsys.readouterr().err and not (out / "gpu_check.json").exists()

    code, help_text, _ = run_cli(capsys, "compare", "--help")
    modes = ["--mode", "infer", "--mode", "train"] if "--mode" in help_text else []
    fp32, bf16 = (steps[name][3:] for name in ("compare-fp32", "compare-bf16"))
    assert " ".join(["--backend", "cuda", "--backend", "ort-cuda", "--dtype", "float32"]) in " ".join(fp32)
    assert " ".join(["--backend", "cuda", "--dtype", "bfloat16"]) in " ".join(bf16)
    assert all(" ".join(modes) in " ".join(c) for c in (fp32, bf16))
    # Each compare, replayed counting only (no GPU needed), writes where the merge step reads.
    work = Path(fp32[fp32.index("-o") + 1]).parent
    work.mkdir()
    for argv in (fp32, bf16):
        assert parse_cli(argv)["all_"] is True
        code, _, err = run_cli(capsys, *argv, "--metrics", "params")
        assert code == 0, err
    merge = steps["merge"][3:]
    assert merge[:3] == ["report", str(work / "fp32.csv"), str(work / "bf16.csv")]
    code, _, err = run_cli(capsys, *merge)
    assert code == 0, err
    rows = store.load(out / "compare-cuda.csv").results
    # Counting only: one row per geometry and mode (a training step counts differently).
    assert {r.scenario.dtype for r in rows} == {"float32", "bfloat16"} and len(rows) == 2 * 30 * max(1, len(modes) // 2)
    assert (out / "compare-cuda.md").exists() and (out / "compare-cuda.json").exists()


def test_summary_lists_steps_rows_and_checks(tmp_path: Path) -> None:
    checker = _checker()
    steps = tmp_path / "steps.tsv"
    steps.write_text("cuda-tests\tpass\t31\t4 passed in 20.1s\ncompare-bf16\tFAIL (exit 1)\t80\tsam: failed\n")
    report = tmp_path / "compare-cuda.csv"
    fp32, bf16 = R.Scenario(dtype="float32"), R.Scenario(dtype="bfloat16")
    rows = [
        R.Result("lka", 64, 14, 14, 1, "cuda", "", fp32, latency_median_s=1e-4),
        R.Result("sam", 64, 14, 14, 1, "cuda", "", bf16, status="failed", reason="RuntimeError: no bf16"),
    ]
    store.write_csv(report, rows, {"gpu": "NVIDIA H100 80GB HBM3", "cpu_model": "AMD EPYC 7763", "torch": "2.13.0"})
    checks = tmp_path / "gpu_check.json"
    record = {"timing": _timing(1.012), "memory": [_memory(16777216, 16777216, 16777216)]}
    checks.write_text(__import__("json").dumps(record))
    out = tmp_path / "gpu_check.md"
    assert checker.summary(steps, report, checks, out) == 0
    text = out.read_text()
    assert "Machine: H100 80GB HBM3 + EPYC 7763, torch 2.13.0" in text
    assert "| compare-bf16 | FAIL (exit 1) | 80 | sam: failed |" in text
    assert "| cuda | bfloat16 | infer | failed | 1 |" in text and "sam 14x14 cuda bfloat16 infer: failed" in text
    assert "torch.utils.benchmark = 1.0120" in text and "16,777,216 B: exact" in text


def _timing(ratio: float) -> dict:
    return {
        "module": "mhsa",
        "dim": 64,
        "res": 56,
        "batch": 8,
        "attnbench_medians_s": [ratio * 1e-3],
        "timer_medians_s": [1e-3],
        "ratio_of_medians": ratio,
        "tolerance": 0.03,
        "agree": abs(ratio - 1) <= 0.03,
    }


def _memory(ours: int, direct: int, analytic: int | None) -> dict:
    exact = ours == direct and (analytic is None or ours == analytic)
    return {
        "case": "Linear",
        "attnbench_bytes": ours,
        "direct_bytes": direct,
        "analytic_bytes": analytic,
        "exact": exact,
    }


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"timing": _timing(1.05), "memory": []}, "timing: attnbench 1.05 ms vs torch.utils.benchmark 1 ms (+5.0%"),
        ({"timing": _timing(0.96), "memory": []}, "(-4.0%, limit 3%) on mhsa C=64 56x56 B=8"),
        (
            {"timing": _timing(1.0), "memory": [_memory(16777728, 16777216, 16777216)]},
            "memory: Linear: attnbench 16777728 B, max_memory_allocated 16777216 B, analytic 16777216 B",
        ),
    ],
)
def test_checks_fail_with_a_one_line_reason(record: dict, reason: str) -> None:
    checker = _checker()
    with pytest.raises(checker.CheckFailed) as info:
        checker._verdict(record)
    assert reason in str(info.value) and "\n" not in str(info.value)


def test_checks_within_target_pass() -> None:
    _checker()._verdict({"timing": _timing(1.029), "memory": [_memory(5, 5, None)]})
