"""Peak memory: CPU (profiler allocation events), CUDA (caching-allocator peak), and allocator pinning.

CPU peak = the peak of the running sum of signed allocation sizes (frees are negative) of the CPU
`[memory]` events, in time order, of one warmed-up forward under torch.profiler with profile_memory=True.
It counts activations and temporaries allocated during the forward, kernel-internal workspaces included;
weights and input are excluded (allocated before), and so are allocator overhead and allocations made
outside c10 (measurement.md, "CPU peak memory").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from attnbench.capture import captured

#: What the CPU peak counts, written into every result row.
CPU_PEAK_METHOD = (
    "torch.profiler CPU [memory] events, peak of the cumulative signed bytes over one warmed-up forward: "
    "activations and temporaries allocated during the forward; weights and input excluded"
)
#: ...in train mode: one training step (see attnbench.backends._torch), with the grads None before it.
CPU_TRAIN_PEAK_METHOD = (
    "torch.profiler CPU [memory] events, peak of the cumulative signed bytes over one warmed-up training step "
    "(forward + backward of output.sum(), grads None before it): output, saved activations, temporaries and "
    "the input and weight gradients; weights and input excluded"
)
#: What the CUDA peak counts.
CUDA_PEAK_METHOD = (
    "torch.cuda.max_memory_allocated() - memory_allocated() before one warmed-up forward: "
    "activations and temporaries allocated during the forward; weights and input excluded"
)
CUDA_TRAIN_PEAK_METHOD = (
    "torch.cuda.max_memory_allocated() - memory_allocated() before one warmed-up training step (forward + "
    "backward of output.sum(), grads None before it): output, saved activations, temporaries and the input "
    "and weight gradients; weights and input excluded"
)

#: glibc mallopt parameters (malloc.h) and the value measurement.md found to remove page-fault churn.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
PINNED_THRESHOLD_BYTES = 1 << 30
#: Set to "system" in a process that must keep glibc's default (dynamic) thresholds: the worker that measures
#: the default-allocator state (attnbench.sysalloc). Nothing else should set it.
ALLOCATOR_ENV = "ATTNBENCH_ALLOCATOR"

#: The allocators a CPU row can be measured under by LD_PRELOAD (the `allocator` axis): the name ctypes looks
#: up, the files tried in the library directories, and the Debian package that installs them.
PRELOADS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "jemalloc": ("jemalloc", ("libjemalloc.so.2", "libjemalloc.so"), "libjemalloc2"),
    "tcmalloc": (
        "tcmalloc_minimal",
        ("libtcmalloc_minimal.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so.4", "libtcmalloc.so"),
        "libtcmalloc-minimal4",
    ),
}
#: Where shared libraries usually live, after the directories of this platform's own multiarch triple.
LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib")
#: Where a process lists the files it has mapped (the proof that a preloaded library is in it).
PROC_MAPS = "/proc/self/maps"

_ALLOCATOR: dict[str, Any] | None = None


@dataclass(frozen=True)
class PeakMemory:
    """A peak-memory reading: bytes, what it counts, and (CUDA) the caching allocator's reserved bytes."""

    peak_bytes: int | None
    method: str
    reserved_bytes: int | None = None


def peak_of_events(events: list[tuple[int, int]]) -> int:
    """Peak of the running sum of signed sizes, given (time_ns, signed_bytes) pairs in any order."""
    running = 0
    peak = 0
    # sorted() is stable: events with the same timestamp keep the order the profiler recorded them in.
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        running += nbytes
        peak = max(peak, running)
    return peak


def _is_cpu_event(event: Any) -> bool:
    return str(event.device_type()).endswith("CPU")


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated on the CPU during one call of `fn` (call it warmed up, under inference_mode)."""
    from torch.profiler import ProfilerActivity, profile  # slow to import: only a peak reading needs it

    # kineto prints profiler_start/stop lines on fd 2 from C++: keep them off the user's terminal.
    with captured(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        # The output stays alive until after the last event: it is part of what the forward allocated.
        del out
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and _is_cpu_event(e)
    ]
    return peak_of_events(events)


def cuda_peak(fn: Callable[[], Any], device: torch.device | str | int | None = None) -> PeakMemory:
    """Peak bytes the CUDA caching allocator handed out during one call of `fn`, plus max reserved bytes."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    reserved = torch.cuda.max_memory_reserved(device)
    del out
    return PeakMemory(peak_bytes=int(peak), method=CUDA_PEAK_METHOD, reserved_bytes=int(reserved))


def _glibc_version() -> str | None:
    libc_name, version = platform.libc_ver()
    return version if libc_name == "glibc" and version else None


def pin_allocator() -> dict[str, Any]:
    """Raise glibc's mmap and trim thresholds to 1 GiB once per process; return the settings for the record.

    Without this, glibc mmaps and unmaps every block above its 32 MiB dynamic-threshold cap on each call,
    so a module with large attention maps pays tens of thousands of page faults per forward and switches
    between a fast and a slow mode (measurement.md). An LD_PRELOADed jemalloc/tcmalloc is left alone, and so
    is glibc in a process started with ATTNBENCH_ALLOCATOR=system (the default-allocator state).
    """
    global _ALLOCATOR
    if _ALLOCATOR is not None:
        return dict(_ALLOCATOR)
    preload = os.environ.get("LD_PRELOAD", "")
    glibc = _glibc_version()
    info: dict[str, Any] = {"allocator": "unknown", "pinned": False, "ld_preload": preload or None}
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        info.update(allocator=f"preloaded ({os.path.basename(preload.split(':')[0])})", note="left as is")
    elif glibc is None:
        info.update(allocator="system (not glibc)", note="mallopt not applied")
    elif os.environ.get(ALLOCATOR_ENV) == "system":
        info.update(allocator=f"glibc {glibc} malloc", note="system state: glibc's default thresholds, not pinned")
    else:
        info.update(allocator=f"glibc {glibc} malloc")
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok_mmap = libc.mallopt(M_MMAP_THRESHOLD, PINNED_THRESHOLD_BYTES) == 1
            ok_trim = libc.mallopt(M_TRIM_THRESHOLD, PINNED_THRESHOLD_BYTES) == 1
        except (OSError, AttributeError) as exc:
            info.update(note=f"mallopt unavailable: {exc}")
        else:
            info.update(
                pinned=ok_mmap and ok_trim,
                mmap_threshold_bytes=PINNED_THRESHOLD_BYTES if ok_mmap else None,
                trim_threshold_bytes=PINNED_THRESHOLD_BYTES if ok_trim else None,
            )
            if not (ok_mmap and ok_trim):
                info.update(note=f"mallopt refused: mmap={ok_mmap}, trim={ok_trim}")
    _ALLOCATOR = info
    return dict(info)


def allocator_settings() -> dict[str, Any] | None:
    """The settings pin_allocator() applied in this process, or None if it has not run."""
    return dict(_ALLOCATOR) if _ALLOCATOR is not None else None


def _library_dirs() -> list[str]:
    """The directories a preload library is looked for in: multiarch ones first (Debian's /usr/lib/<triple>)."""
    triple = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    return [*(f"{d}/{triple}" for d in ("/usr/lib", "/lib")), *LIBRARY_DIRS]


def preload_library(allocator: str) -> str | None:
    """The file LD_PRELOAD loads for `allocator` ("jemalloc", "tcmalloc"), or None where it is not installed."""
    if allocator not in PRELOADS:
        return None
    lookup, files, _ = PRELOADS[allocator]
    # ctypes asks the linker's cache (ldconfig -p) for the soname; the file itself is found in the usual places.
    found = ctypes.util.find_library(lookup)
    for name in ([found] if found else []) + [f for f in files if f != found]:
        for directory in _library_dirs():
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    return None


def preload_missing(allocator: str) -> str | None:
    """Why a CPU row cannot be measured under `allocator` here (None: it can, or it needs no library)."""
    if allocator not in PRELOADS:
        return None
    if _glibc_version() is None:
        return f"--allocator {allocator} is loaded with LD_PRELOAD on a glibc Linux system; this one is not"
    if preload_library(allocator) is None:
        _, files, package = PRELOADS[allocator]
        return (
            f"--allocator {allocator}: {files[0]} is not installed (Debian/Ubuntu: apt-get install {package}); "
            "rows under it are skipped"
        )
    return None


def mapped_library(allocator: str, maps: str = PROC_MAPS) -> str | None:
    """The file of `allocator`'s library mapped into this process (read from /proc/self/maps), or None."""
    if allocator not in PRELOADS:
        return None
    _, files, _ = PRELOADS[allocator]
    stems = tuple(f.split(".so")[0] + ".so" for f in files)
    try:
        with open(maps, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split(maxsplit=5)  # address, perms, offset, device, inode, path (if any)
                path = fields[5].strip() if len(fields) == 6 else ""
                if os.path.basename(path).startswith(stems):
                    return path
    except OSError:
        return None
    return None
