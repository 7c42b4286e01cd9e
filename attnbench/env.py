"""The environment record written beside every result: machine, versions, threads, allocator, backends, roof.

`static_environment()` reads only files, package metadata and `git`, so `attnbench env` answers without
importing torch; `environment()` adds what needs torch and ONNX Runtime (threads, allocator, backend probes,
GPU) and, when asked, the machine's measured peak compute and bandwidth (attnbench.roofline).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import attnbench
from attnbench.backends import available_backends
from attnbench.roofline import PeakKey, measure_peaks

#: Distributions whose versions go into the record (thop ships as ultralytics-thop).
_VERSIONS = {
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnx": ("onnx",),
    "onnxscript": ("onnxscript",),
    "fvcore": ("fvcore",),
    "thop": ("ultralytics-thop", "thop"),
    "numpy": ("numpy",),
}


def _version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Logical cores this process may run on (the affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def git_commit() -> str:
    """HEAD of the checkout attnbench is imported from ("unknown" outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


#: How attnbench sets TF32 on a GPU (recorded in the environment of a machine with one).
TF32_POLICY = (
    "float32 rows run in true float32 unless the scenario says --tf32: cuda sets torch.backends.cuda.matmul."
    "allow_tf32 and torch.backends.cudnn.allow_tf32 per case (restored after it), ort-cuda the CUDA provider's "
    "use_tf32"
)


def gpu_info() -> dict[str, Any]:
    """GPU name, driver and CUDA versions, or Nones without a GPU."""
    import torch  # torch: env without --probe never imports it

    info: dict[str, Any] = {"gpu": None, "gpu_driver": None, "cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        return info
    info["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
    info["gpu_count"] = torch.cuda.device_count()
    from attnbench.backends.cuda import tf32_flags  # torch's CUDA switches: only a machine with a GPU reads them

    # What this process had before attnbench pins TF32 per case (off for float32 unless --tf32).
    # NVIDIA_TF32_OVERRIDE=0 turns TF32 off in cuBLAS and cuDNN for every library, whatever they ask for.
    override = os.environ.get("NVIDIA_TF32_OVERRIDE")
    info["tf32"] = {"policy": TF32_POLICY, "torch_flags_at_start": tf32_flags(), "NVIDIA_TF32_OVERRIDE": override}
    smi = nvidia_smi()
    info["gpu_driver"] = smi.get("gpu_driver")
    info["gpu_sm_clock"] = smi.get("gpu_sm_clock")
    info["gpu_power_draw"] = smi.get("gpu_power_draw")
    return info


def nvidia_smi() -> dict[str, Any]:
    """The first GPU's name, driver, SM clock and power draw from nvidia-smi ({} without it)."""
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,power.draw", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    first = out.stdout.strip().splitlines()[0].split(", ") if out.stdout.strip() else []
    keys = ("gpu", "gpu_driver", "gpu_sm_clock", "gpu_power_draw")
    return dict(zip(keys, first, strict=False))


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that made the record, as a shell would take it back: 'attnbench compare --all -o r.html' (the
    command line interface under any of its names), else the Python program and its arguments."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    program = Path(argv[0])
    if program.name == "attnbench" or program.parts[-3:] == ("attnbench", "cli", "__main__.py"):
        head = ["attnbench"]
    else:
        head = ["python", program.name] if program.suffix == ".py" else [program.name]
    return shlex.join(head + argv[1:])


def static_environment() -> dict[str, Any]:
    """The part of the record that needs neither torch nor ONNX Runtime: machine, versions, git commit."""

    record: dict[str, Any] = {
        "attnbench": attnbench.__version__,
        "git_commit": git_commit(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    record.update({name: _version(dists) for name, dists in _VERSIONS.items()})
    return record


def environment(threads: int = 1, peaks: Iterable[PeakKey] = ()) -> dict[str, Any]:
    """A flat, JSON-ready record of the machine and software a result was measured with.

    `threads` is the intra-op thread count the run uses (1 unless asked). Calling this pins the allocator
    (attnbench.memory.pin_allocator, once per process), so the settings recorded are the ones measured with.
    `peaks` names the (device, dtype, threads) roofs to measure and record under "peaks" (a second or so each).
    """
    import torch  # torch: env without --probe never imports it

    from attnbench.memory import pin_allocator  # torch (at its top): as above

    record = static_environment()
    record["threads"] = threads
    record["torch_default_threads"] = torch.get_num_threads()
    # What instruction counts depend on besides the CPU model and versions above (attnbench.instructions).
    from attnbench.instructions import isa_facts, valgrind_version

    record["cpu_isa"] = isa_facts()
    record["valgrind"] = valgrind_version()
    record.update(gpu_info())
    record["allocator"] = pin_allocator()
    record["available_backends"] = available_backends()
    keys = list(peaks)
    if keys:
        record["peaks"] = measure_peaks(keys)
    return record


#: Words a CPU or GPU model name carries that tell machines apart by nothing: vendors' marks, "CPU", clocks.
_CPU_NOISE = re.compile(r"\((?:R|TM)\)|\b(?:Intel|AMD|CPU|Processor)\b|\b\d+-Core\b|@.*$", re.IGNORECASE)
_GPU_NOISE = re.compile(r"\b(?:NVIDIA|GeForce|Tesla)\b", re.IGNORECASE)


def short_model(name: str | None, noise: re.Pattern[str] = _CPU_NOISE) -> str:
    """A model name without marks and clocks: 'Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz' -> 'Xeon Gold 6130'."""
    if not name:
        return ""
    return " ".join(noise.sub(" ", name).split()) or " ".join(name.split())


def label_facts() -> dict[str, Any]:
    """The part of the environment record a machine label is made of (cheap: no subprocess, no backends)."""
    facts: dict[str, Any] = {"cpu_model": cpu_model(), "gpu": None}
    facts.update({name: _version(_VERSIONS[name]) for name in ("torch", "onnxruntime")})
    import torch  # torch: env without --probe never imports it

    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
    return facts


def machine_label(env: Mapping[str, Any] | None = None) -> str:
    """A short name for the hardware and versions in an environment record (this machine's when None).

    The GPU model comes first when there is one, then the CPU model (a GPU machine's cpu rows ran there),
    torch and ONNX Runtime versions: 'Xeon Platinum 8375C, torch 2.13.0+cpu, ort 1.32.0'. Two runs with the
    same label count as one machine when results are merged.
    """
    env = label_facts() if env is None else env
    hardware = short_model(env.get("cpu_model")) or "unknown CPU"
    if env.get("gpu"):
        hardware = f"{short_model(env['gpu'], _GPU_NOISE)} + {hardware}"
    parts = [hardware]
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    if env.get("onnxruntime"):
        parts.append(f"ort {env['onnxruntime']}")
    return ", ".join(parts)
