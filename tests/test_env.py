"""The environment record: machine facts read from files and metadata, the short machine label, and the full
record a run writes (threads, allocator, backends, roofs)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch

import attnbench
from attnbench import env, roofline

ROOT = Path(__file__).resolve().parent.parent
XEON = "Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz"


def _fake_open(text: str) -> Any:
    """An open() that serves `text` for /proc/cpuinfo."""

    def fake(path: str, *args: Any, **kwargs: Any) -> io.StringIO:
        assert path == "/proc/cpuinfo"
        return io.StringIO(text)

    return fake


# ---------------------------------------------------------------- machine facts


def test_cpu_model_is_read_from_proc_cpuinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = f"processor\t: 0\nvendor_id\t: x\nmodel name\t: {XEON}\n"
    monkeypatch.setattr(env, "open", _fake_open(cpuinfo), raising=False)
    assert env.cpu_model() == XEON


def test_cpu_model_falls_back_to_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no /proc here")

    monkeypatch.setattr(env, "open", missing, raising=False)
    monkeypatch.setattr(env.platform, "processor", lambda: "arm")
    assert env.cpu_model() == "arm"
    monkeypatch.setattr(env, "open", _fake_open("processor\t: 0\n"), raising=False)  # no model line
    monkeypatch.setattr(env.platform, "processor", lambda: "")
    monkeypatch.setattr(env.platform, "machine", lambda: "aarch64")
    assert env.cpu_model() == "aarch64"


def test_usable_cores_is_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert env.usable_cores() == 3
    monkeypatch.delattr(env.os, "sched_getaffinity")  # no affinity call on this system: the core count
    monkeypatch.setattr(env.os, "cpu_count", lambda: 7)
    assert env.usable_cores() == 7


def test_git_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    if (ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", env.git_commit())
    monkeypatch.setattr(env.shutil, "which", lambda name: None)
    assert env.git_commit() == "unknown"


def test_nvidia_smi_parses_the_first_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env.shutil, "which", lambda name: None)
    assert env.nvidia_smi() == {}
    monkeypatch.setattr(env.shutil, "which", lambda name: "/usr/bin/" + name)
    line = "NVIDIA H200, 550.54.15, 1980 MHz, 120.50 W\nNVIDIA H200, 550.54.15, 345 MHz, 70.00 W\n"

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert argv[0] == "nvidia-smi"
        return subprocess.CompletedProcess(argv, 0, stdout=line, stderr="")

    monkeypatch.setattr(env.subprocess, "run", run)
    assert env.nvidia_smi() == {
        "gpu": "NVIDIA H200",
        "gpu_driver": "550.54.15",
        "gpu_sm_clock": "1980 MHz",
        "gpu_power_draw": "120.50 W",
    }
    monkeypatch.setattr(env.subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 9, "", "err"))
    assert env.nvidia_smi() == {}

    def broken(argv: list[str], **kwargs: Any) -> Any:
        raise subprocess.TimeoutExpired(argv, 10)

    monkeypatch.setattr(env.subprocess, "run", broken)
    assert env.nvidia_smi() == {}


def test_gpu_info_records_how_tf32_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(env, "nvidia_smi", lambda: {"gpu_driver": "580.159.04"})
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    info = env.gpu_info()
    assert info["gpu"] == "NVIDIA H200" and info["gpu_driver"] == "580.159.04"
    assert info["tf32"]["policy"] == env.TF32_POLICY and "unless the scenario says --tf32" in env.TF32_POLICY
    assert info["tf32"]["torch_flags_at_start"]["api"] in ("allow_tf32", "fp32_precision")
    assert info["tf32"]["NVIDIA_TF32_OVERRIDE"] == "0"


def test_gpu_info_without_a_gpu_is_nones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert env.gpu_info() == {"gpu": None, "gpu_driver": None, "cuda": torch.version.cuda}


def test_static_environment_needs_no_torch() -> None:
    probe = (
        "import json, sys; from attnbench.env import static_environment; record = static_environment(); "
        "print(json.dumps([sorted(record), 'torch' in sys.modules, record['torch']]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    keys, imported_torch, torch_version = json.loads(done.stdout)
    assert not imported_torch
    assert torch_version == metadata.version("torch")
    assert {"attnbench", "git_commit", "date_utc", "python", "platform", "cpu_model", "usable_cores"} <= set(keys)
    assert {"torch", "onnxruntime", "onnx", "onnxscript", "fvcore", "thop", "numpy"} <= set(keys)


def test_static_environment_values() -> None:
    record = env.static_environment()
    assert record["attnbench"] == attnbench.__version__
    assert record["usable_cores"] == env.usable_cores() and record["cpu_model"] == env.cpu_model()
    assert record["omp_num_threads_env"] == os.environ.get("OMP_NUM_THREADS")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["date_utc"])


# ---------------------------------------------------------------- the machine label


@pytest.mark.parametrize(
    ("name", "short"),
    [
        (XEON, "Xeon Gold 6130"),
        ("AMD EPYC 7763 64-Core Processor", "EPYC 7763"),
        ("Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "Core i7-8700"),
        ("Apple M2", "Apple M2"),
        ("CPU", "CPU"),  # nothing but noise: the name as it was
        (None, ""),
        ("", ""),
    ],
)
def test_short_model_drops_marks_and_clocks(name: str | None, short: str) -> None:
    assert env.short_model(name) == short


def test_machine_label_names_gpu_cpu_and_versions() -> None:
    record = {"cpu_model": XEON, "gpu": "NVIDIA GeForce RTX 4090", "torch": "2.13.0", "onnxruntime": "1.32.0"}
    assert env.machine_label(record) == "RTX 4090 + Xeon Gold 6130, torch 2.13.0, ort 1.32.0"
    assert env.machine_label({"cpu_model": XEON, "torch": "2.13.0+cpu"}) == "Xeon Gold 6130, torch 2.13.0+cpu"
    assert env.machine_label({}) == "unknown CPU"


def test_machine_label_of_this_machine_is_made_of_its_label_facts() -> None:
    facts = env.label_facts()
    assert set(facts) == {"cpu_model", "gpu", "torch", "onnxruntime"}
    assert facts["torch"] == metadata.version("torch")
    assert env.machine_label() == env.machine_label(facts)


# ---------------------------------------------------------------- the full record


def test_environment_records_threads_allocator_and_backends() -> None:
    record = env.environment(threads=2)
    assert record["threads"] == 2
    assert record["torch_default_threads"] == torch.get_num_threads()
    assert record["allocator"]["pinned"] is True
    assert record["available_backends"]["cpu"]["available"] is True
    assert {"gpu", "gpu_driver", "cuda", "cpu_isa", "valgrind", "cpu_model", "torch"} <= set(record)
    assert "peaks" not in record  # no roof asked for, none measured


def test_environment_records_the_roofs_it_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[tuple[str, str, int]]] = []

    def fake(keys: Any) -> list[dict[str, Any]]:
        asked.append(list(keys))
        return [{"device": "cpu", "dtype": "float32", "threads": 2, "flops_per_s": 1.0, "bytes_per_s": 2.0}]

    monkeypatch.setattr(roofline, "measure_peaks", fake)
    monkeypatch.setattr(env, "measure_peaks", fake, raising=False)
    record = env.environment(threads=2, peaks=[("cpu", "float32", 2)])
    assert asked == [[("cpu", "float32", 2)]]
    assert record["peaks"] == [
        {"device": "cpu", "dtype": "float32", "threads": 2, "flops_per_s": 1.0, "bytes_per_s": 2.0}
    ]
