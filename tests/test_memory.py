"""Peak memory (attnbench.memory): exact to the byte on known cases; allocator pinning is recorded."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import pytest
import torch
from torch import nn

from attnbench import memory
from attnbench.memory import (
    ALLOCATOR_ENV,
    CUDA_PEAK_METHOD,
    PeakMemory,
    allocator_settings,
    cpu_peak_bytes,
    peak_of_events,
    pin_allocator,
)


class KnownTemporary(nn.Module):
    """Allocates a 1,000,000-byte temporary that is still alive when the output is allocated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tmp = torch.empty(250_000)  # 250,000 float32 = 1,000,000 B
        tmp.fill_(1.0)
        y = x.clone()
        del tmp
        return y


def _warm_peak(module: nn.Module, x: torch.Tensor) -> int:
    """The CPU peak of one forward after one warm-up forward."""
    with torch.inference_mode():
        module(x)
        return cpu_peak_bytes(functools.partial(module, x))


def test_peak_of_events_orders_by_time() -> None:
    # Given out of order: +100 at t=1, +50 at t=2, -100 at t=3, +20 at t=4 -> peak 150.
    assert peak_of_events([(3, -100), (1, 100), (4, 20), (2, 50)]) == 150
    assert peak_of_events([]) == 0
    # Same time: the order recorded (a block freed right after it was made still counted), not by size.
    assert peak_of_events([(5, 100), (5, -100)]) == 100


def test_linear_output_exact_to_the_byte() -> None:
    layer = nn.Linear(64, 128).eval()
    x = torch.randn(32, 64)
    assert _warm_peak(layer, x) == 32 * 128 * 4  # the output only: weights and input are excluded


def test_big_linear_output_exact() -> None:
    layer = nn.Linear(512, 1024).eval()
    x = torch.randn(256, 512)
    assert _warm_peak(layer, x) == 256 * 1024 * 4


def test_known_temporary_exact() -> None:
    x = torch.randn(10, 100)
    assert _warm_peak(KnownTemporary(), x) == 1_000_000 + 10 * 100 * 4


def test_freed_temporary_counts_once() -> None:
    def fn() -> torch.Tensor:
        for _ in range(3):
            t = torch.empty(1000)  # 4000 B, freed before the next one
            del t
        return torch.empty(10)

    assert cpu_peak_bytes(fn) == 4000


def test_peak_sees_no_events_from_outside_the_call() -> None:
    weights = torch.randn(1000, 1000)  # allocated before: not counted
    assert cpu_peak_bytes(lambda: weights.sum()) == 4


def test_pin_allocator_records_settings() -> None:
    info = pin_allocator()
    assert isinstance(info, dict) and "allocator" in info and "pinned" in info
    assert pin_allocator() == info  # idempotent: once per process
    assert allocator_settings() == info
    if info["allocator"].startswith("glibc"):
        assert info["pinned"] is True
        assert info["mmap_threshold_bytes"] == info["trim_threshold_bytes"] == 1 << 30


def test_a_preloaded_allocator_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_ALLOCATOR", None)  # as in a fresh process
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2:/lib/other.so")
    info = pin_allocator()
    assert info["allocator"] == "preloaded (libjemalloc.so.2)" and info["note"] == "left as is"
    assert info["pinned"] is False and info["ld_preload"].startswith("/usr/lib/x86_64-linux-gnu/libjemalloc")


def test_the_system_state_worker_keeps_glibcs_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    monkeypatch.setattr(memory, "_ALLOCATOR", None)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv(ALLOCATOR_ENV, "system")
    info = pin_allocator()
    assert info["pinned"] is False and "not pinned" in info["note"] and info["allocator"].startswith("glibc")
    assert "mmap_threshold_bytes" not in info


def test_peak_memory_has_no_reserved_bytes_unless_told() -> None:
    assert PeakMemory(10, "counted").reserved_bytes is None


class FakeAllocator:
    """torch.cuda's allocator counters, played by hand: what is allocated now, and the peak since the last reset."""

    def __init__(self, resident: int) -> None:
        self.allocated = self.peak = resident
        self.calls: list[str] = []
        self.devices: set[object] = set()  # every device a counter was asked about

    def alloc(self, nbytes: int) -> None:
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def free(self, nbytes: int) -> None:
        self.allocated -= nbytes

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Stand in for torch.cuda's counters (no GPU needed)."""
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "synchronize", lambda device=None: self._note(device, self.calls.append("sync")))
        monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: self._note(device, self.allocated))
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: self._note(device, self.peak))
        monkeypatch.setattr(cuda, "max_memory_reserved", lambda device=None: self._note(device, 2 * self.peak))
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda device=None: self._note(device, self._reset()))

    def _note(self, device: object, answer: object) -> object:
        self.devices.add(device)
        return answer

    def _reset(self) -> None:
        self.calls.append("reset")
        self.peak = self.allocated


def test_cuda_peak_counts_what_the_step_allocates_above_weights_and_input(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.memory import cuda_peak

    # 1 MiB of weights and input resident; a step that allocates 4 KiB and 16 KiB, frees the 4 KiB, keeps 16 KiB.
    allocator = FakeAllocator(resident=2**20)
    allocator.install(monkeypatch)

    def step() -> str:
        allocator.alloc(4096)
        allocator.alloc(16384)
        allocator.free(4096)
        return "output"

    peak = cuda_peak(step, device="cuda:1")
    assert peak.peak_bytes == 4096 + 16384  # the weights and the input are not counted
    assert allocator.devices == {"cuda:1"}  # every counter read on the case's own GPU
    assert peak.reserved_bytes == 2 * (2**20 + 4096 + 16384) and peak.method == CUDA_PEAK_METHOD
    # The step's work is finished (synchronised) before the peak is read, and the peak reset before it ran.
    assert allocator.calls == ["sync", "reset", "sync"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_linear() -> None:
    from attnbench.memory import cuda_peak

    layer = nn.Linear(64, 128).cuda().eval()
    x = torch.randn(32, 64, device="cuda")
    with torch.inference_mode():
        layer(x)
        peak = cuda_peak(functools.partial(layer, x))
    # The caching allocator rounds blocks up to 512 B; the output is 16,384 B.
    assert peak.peak_bytes is not None and peak.peak_bytes >= 32 * 128 * 4
    assert peak.reserved_bytes is not None and peak.reserved_bytes >= peak.peak_bytes


# ---------------------------------------------------------------- preloaded allocators (jemalloc, tcmalloc)


def test_a_preload_library_is_found_in_the_library_dirs_or_not_at_all(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(memory, "_library_dirs", lambda: [str(tmp_path / "none"), str(tmp_path)])
    monkeypatch.setattr(memory.ctypes.util, "find_library", lambda name: None)
    assert memory.preload_library("jemalloc") is None and memory.preload_library("system") is None
    assert memory.preload_missing("jemalloc") == (
        "--allocator jemalloc: libjemalloc.so.2 is not installed (Debian/Ubuntu: apt-get install libjemalloc2); "
        "rows under it are skipped"
    )
    # Any of the allocator's known file names will do; the linker cache's soname is tried first.
    (tmp_path / "libtcmalloc.so.4").write_bytes(b"")
    assert memory.preload_library("tcmalloc") == str(tmp_path / "libtcmalloc.so.4")
    assert memory.preload_missing("tcmalloc") is None
    assert memory.preload_missing("pinned") is None and memory.preload_missing("system") is None


def test_the_mapped_library_is_read_from_the_process_maps(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f0000000000-7f0000001000 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f0000002000-7f0000003000 rw-p 00000000 00:00 0\n"
        "7f0000004000-7f0000005000 r-xp 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
    )
    assert memory.mapped_library("jemalloc", str(maps)) == "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    assert memory.mapped_library("tcmalloc", str(maps)) is None
    assert memory.mapped_library("system", str(maps)) is None
    assert memory.mapped_library("jemalloc", str(tmp_path / "absent")) is None
