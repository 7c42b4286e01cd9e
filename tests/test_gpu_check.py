"""benchmarks/gpu_check.sh and gpu_check.py without a GPU: arguments, the skip line, the commands, the verdicts.

What needs a GPU (the CUDA tests, the timing and memory checks, the CUDA sweep) cannot run here. These tests
check everything around it: bad arguments, the one-line skip, that each command the script would run is one
the CLI accepts (replayed here, counting only, into the same report files), the summary, and the pass/fail
judgement of the checks on given figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

from attnbench import results as R
from attnbench import store
from tests.conftest import parse_cli, run_cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["setup", "cuda-tests", "checks", "compare-fp32", "compare-bf16", "merge", "summary"]
#: A step line of the dry run: "NAME (LIMIT s): COMMAND".
STEP_LINE = re.compile(r"^([a-z0-9-]+) \((\d+) s\): (.*)$")


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
        (["--budget", "400"], "--budget 400: at most 350 s, so that a second try fits"),
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
    assert "--prepare" in done.stdout and "--no-install" not in done.stdout
    assert not done.stdout.startswith("#")


def _dry_run(tmp_path: Path, out: Path) -> tuple[dict[str, list[str]], dict[str, int], str]:
    """The dry run's steps (name -> command), their limits, and its whole output."""
    done = _script("--dry-run", "--out", str(out), env={"TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    steps, limits = {}, {}
    for line in done.stdout.splitlines():
        match = STEP_LINE.match(line)
        if match:
            steps[match[1]], limits[match[1]] = shlex.split(match[3]), int(match[2])
    return steps, limits, done.stdout


def test_dry_run_plans_a_machine_whose_python3_has_cuda_torch_within_six_minutes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    steps, limits, text = _dry_run(tmp_path, out)
    assert list(steps) == STEPS
    # Nothing from the network: no torch, no index, no pip install other than the carried wheels' (in setup).
    assert "install from the network: none; torch: " in text
    assert not re.search(r"index-url|download\.pytorch|pip install|onnxruntime-gpu", text)
    assert steps["setup"][1:5] == ["benchmarks/gpu_check.py", "setup", "--wheels", ".gpu-wheels"]
    wheels = "fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor==3.3.0 ultralytics-thop==2.2.3"
    assert "carried wheels (.gpu-wheels/, made by --prepare; " in text and wheels in text
    # Each step's limit, and all of them within the 6 minutes (10 s left for nvidia-smi and the archive).
    assert sum(limits.values()) == 350 <= 360
    assert "350 s in all (budget 350 s; with the GPU check and the archive around them, at most 360 s)" in text
    assert "one archive of" in text and "$OUT/gpu_check.tar.gz when OUT is set" in text


def _fake_python(tmp_path: Path) -> Path:
    """A python3 that says it has no CUDA torch for setup and writes the summary it is asked for."""
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = setup ]; then echo "gpu_check.py: python3 has no usable CUDA torch" >&2; exit 1; fi\n'
        'if [ "$2" = summary ]; then while [ $# -gt 1 ]; do [ "$1" = --out ] && echo "# GPU check" >"$2"; shift;'
        " done; exit 0; fi\n"
        "exit 3\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


def test_a_gpu_without_a_cuda_torch_stops_at_setup_and_still_leaves_one_archive(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    out, dest = tmp_path / "results", tmp_path / "OUT"
    out.mkdir()
    dest.mkdir()
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(_fake_python(tmp_path)), "OUT": str(dest)}
    done = _script("--out", str(out), env={**env, "TMPDIR": str(tmp_path)})
    assert done.returncode == 1, done.stderr
    assert "gpu_check.sh: setup (up to 20 s)" in done.stderr and "gpu_check.sh: FAILED: setup" in done.stderr
    assert "cuda-tests" not in done.stderr  # nothing runs without a CUDA torch, and nothing is installed
    with tarfile.open(dest / "gpu_check.tar.gz") as archive:
        names = set(archive.getnames())
        steps = archive.extractfile("gpu_check/steps.tsv").read().decode()  # type: ignore[union-attr]
    assert {"gpu_check/gpu_check.md", "gpu_check/logs/setup.log", "gpu_check/steps.tsv"} <= names
    assert steps.startswith("setup\tFAIL (exit 1)\t") and "has no usable CUDA torch" in steps
    assert done.stdout == "# GPU check\n"  # the summary, printed for the device tool's output tail


def test_setup_refuses_a_torch_without_cuda_and_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checker = _checker()
    assert checker.setup(tmp_path, tmp_path / "site") == 1
    assert "has no usable CUDA torch" in capsys.readouterr().err and not (tmp_path / "site").exists()
    # With a CUDA torch, a package neither here nor among the carried wheels is named.
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(checker, "NEEDED", ("json", "no_such_package_for_gpu_check"))
    assert checker.setup(tmp_path, tmp_path / "site") == 1
    err = capsys.readouterr().err
    assert "missing: no_such_package_for_gpu_check; run benchmarks/gpu_check.sh --prepare" in err
    assert "(0 wheels here)" in err


def test_dry_run_commands_are_the_cli_s_and_replay_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    steps, _, _ = _dry_run(tmp_path, out)
    assert list(steps) == STEPS
    # Every file with a CUDA test, and only those (collecting the whole suite would take a third of the step).
    marked = re.compile(r"^@pytest\.mark\.cuda\b", re.MULTILINE)
    cuda_files = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py") if marked.search(p.read_text())
    )
    assert "tests/backends/test_cuda.py" in cuda_files and "tests/test_gpu_check.py" not in cuda_files
    assert steps["cuda-tests"] == [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "cuda",
        "-p",
        "no:cacheprovider",
        *cuda_files,
    ]
    # Without CUDA the checker says so, exits 0 and writes nothing.
    checks = steps["checks"]
    assert checks[1:] == ["benchmarks/gpu_check.py", "check", "--out", str(out / "gpu_check.json")]
    monkeypatch.chdir(ROOT)
    assert _checker().main(checks[2:]) == 0
    assert "skipped: no CUDA GPU" in capsys.readouterr().err and not (out / "gpu_check.json").exists()

    modes = ["--mode", "infer", "--mode", "train"]
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
        R.Result("lka", 64, 14, 14, 1, "cuda", "", fp32, latency_median_s=1e-4, latency_launch_bound=True),
        R.Result("lka", 64, 28, 28, 1, "cuda", "", fp32, latency_median_s=3e-4, latency_launch_bound=False),
        R.Result("sam", 64, 14, 14, 1, "cuda", "", bf16, status="failed", reason="RuntimeError: no bf16"),
    ]
    no_ort_gpu = "onnxruntime 1.30.0 has no CUDAExecutionProvider (has ['CPUExecutionProvider'])"
    backends = {"cuda": {"available": True}, "ort-cuda": {"available": False, "reason": no_ort_gpu}}
    env = {"gpu": "NVIDIA H100 80GB HBM3", "cpu_model": "AMD EPYC 7763", "torch": "2.13.0"}
    store.write_csv(report, rows, {**env, "available_backends": backends})
    checks = tmp_path / "gpu_check.json"
    record = {"timing": _timing(1.012), "memory": [_memory(16777216, 16777216, 16777216)]}
    checks.write_text(json.dumps(record))
    out = tmp_path / "gpu_check.md"
    assert checker.summary(steps, report, checks, out) == 0
    text = out.read_text()
    assert "Machine: H100 80GB HBM3 + EPYC 7763, torch 2.13.0" in text
    assert "| compare-bf16 | FAIL (exit 1) | 80 | sam: failed |" in text
    assert "| cuda | bfloat16 | infer | failed | 1 |" in text and "sam 14x14 cuda bfloat16 infer: failed" in text
    assert "torch.utils.benchmark = 1.0120" in text and "16,777,216 B: exact" in text
    assert "Launch-bound (`L`: the GPU busy for under half the call): 1 of 2 timed rows." in text
    # What it could not check, plainly: ort-cuda without onnxruntime-gpu, and what no 6-minute run covers.
    not_checked = text.split("## Not checked", 1)[1]
    assert f"- `ort-cuda`: unavailable here, its rows are `skipped`: {no_ort_gpu}" in not_checked
    assert "`cuda`" not in not_checked and "- `--compile` on CUDA" in not_checked


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
