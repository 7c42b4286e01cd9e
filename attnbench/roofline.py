"""The roofline: the machine's measured peak compute and memory bandwidth, and where each measured case sits.

Peak compute is the best rate of square matmuls (the largest kernel a BLAS runs near its peak); bandwidth is
the best rate of a large tensor copy, counted as bytes read plus bytes written. Both are measured once per
process for each (device, dtype, threads) a run uses, and recorded in the environment (`env["peaks"]`), so a
report re-rendered later, or on another machine, uses the roof of the machine that measured the rows.

A case's arithmetic intensity is its exact FLOPs (the attnbench counter's, never 2 x MACs) over its minimum
memory traffic: input, output and weights, each moved once, in the row's dtype; in training the gradients of
all three move too. Every zoo module returns a tensor of its input's shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from attnbench.fmt import missing

#: Bytes per element of each dtype a row may name.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
#: Square matmul sizes tried for peak compute, per device (the best rate wins: the roof is an upper bound).
MATMUL_SIZES = {"cpu": (512, 1024), "cuda": (4096, 8192)}
#: Bytes copied for the bandwidth (well beyond the last-level cache of the CPU's share and of a GPU's L2).
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20}
#: Each rate is the best call over at least this many seconds after a warm-up call (a call longer than that:
#: one timed call).
MIN_SECONDS = 0.25
#: A larger matmul whose call would take longer than this (the last size's time x the cube of the size ratio) is
#: skipped: a CPU without fast bfloat16 matmuls (0.5 GFLOP/s on the 2-core VM) spent 8.5 s per 1024 call, 35 s in
#: all, before timing 1.8 s of cases; the smaller size still bounds the roof from below.
SLOW_MATMUL_S = 1.0

PeakKey = tuple[str, str, int]  # (device, dtype, threads); threads is 0 for a GPU


@dataclass(frozen=True)
class Peak:
    """The roof of one device at one dtype and thread count."""

    device: str
    dtype: str
    threads: int
    flops_per_s: float
    bytes_per_s: float
    method: str

    @property
    def ridge(self) -> float:
        """FLOPs per byte above which a kernel can reach peak compute (below: bandwidth-bound)."""
        return self.flops_per_s / self.bytes_per_s


def key_of(device: str, dtype: str, threads: int) -> PeakKey:
    """The roof a case on `device` (its backend's) runs under: threads matter on the CPU only."""
    return (device, dtype, int(threads) if device == "cpu" else 0)


def peaks_of(env: Mapping[str, Any]) -> list[Peak]:
    """The peaks recorded in an environment record (none for reports from before they were measured)."""
    out = []
    for item in env.get("peaks") or []:
        try:
            out.append(Peak(**{k: item[k] for k in Peak.__dataclass_fields__}))
        except (KeyError, TypeError):
            continue  # a record this version does not understand: no roof rather than a wrong one
    return out


def peak_for(peaks: Iterable[Peak], device: str, dtype: str, threads: int) -> Peak | None:
    """The measured roof for a case on `device`, or None when the run did not measure it."""
    key = key_of(device, dtype, threads)
    return next((p for p in peaks if (p.device, p.dtype, p.threads) == key), None)


def min_traffic_bytes(
    params: Any, batch: Any, dim: Any, height: Any, width: Any, dtype: str, mode: str = "infer"
) -> int | None:
    """Input + output + weights in bytes, each moved once (twice in training: their gradients too)."""
    if any(missing(v) for v in (params, batch, dim, height, width)) or dtype not in DTYPE_BYTES:
        return None
    activations = int(batch) * int(dim) * int(height) * int(width)
    elements = 2 * activations + int(params)  # the output has the input's shape
    return elements * DTYPE_BYTES[dtype] * (2 if mode == "train" else 1)


def rate(work: Any, seconds: Any) -> float | None:
    """Work per second (FLOP/s), None when either is missing or the time is not positive."""
    if missing(work) or missing(seconds) or float(seconds) <= 0:
        return None
    return float(work) / float(seconds)


def intensity(flops: Any, traffic: Any) -> float | None:
    """FLOPs per byte of minimum traffic."""
    return rate(flops, traffic)


# ---------------------------------------------------------------- measuring the roof

_CACHE: dict[PeakKey, Peak] = {}


def measure_peaks(keys: Iterable[PeakKey]) -> list[dict[str, Any]]:
    """Measure (once per process) the roof for each key; JSON-ready records for env["peaks"].

    A device that cannot be measured here (no GPU) is left out: its rows then show no % of peak.
    """
    records = []
    for key in dict.fromkeys(keys):
        if key not in _CACHE:
            try:
                _CACHE[key] = _measure(*key)
            except (RuntimeError, TypeError, ValueError, MemoryError):
                continue
        records.append(asdict(_CACHE[key]))
    return records


def measured_here() -> list[dict[str, Any]]:
    """The roofs this process has measured, as env["peaks"] records them (for rows that come without their
    environment, such as attnbench.profile()'s)."""
    return [asdict(peak) for peak in _CACHE.values()]


def _measure(device: str, dtype: str, threads: int) -> Peak:
    import torch  # torch: env records without --probe measure no roof

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    torch_dtype = getattr(torch, dtype)
    previous = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(max(1, threads))
    tf32 = None
    if device == "cuda":
        from attnbench.backends.cuda import restore_tf32, set_tf32  # torch's CUDA switches: a GPU roof only

        # The float32 roof is true float32's, as attnbench runs float32 rows unless --tf32.
        tf32 = set_tf32(False)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    try:
        flops, sizes, skipped = 0.0, [], ""
        for n in MATMUL_SIZES[device]:
            if sizes and 2.0 * n**3 / flops > SLOW_MATMUL_S:
                skipped = f"; {n} skipped: a call would take {2.0 * n**3 / flops:.1f} s"
                break
            a = torch.randn(n, n, device=device).to(torch_dtype)
            b = torch.randn(n, n, device=device).to(torch_dtype)
            c = torch.empty(n, n, device=device, dtype=torch_dtype)
            flops = max(flops, _best_rate(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), 2.0 * n**3, sync))
            sizes.append(n)
            del a, b, c
        size = _copy_bytes(device)
        src = torch.ones(size // DTYPE_BYTES[dtype], device=device, dtype=torch_dtype)
        dst = torch.empty_like(src)
        bandwidth = _best_rate(lambda: dst.copy_(src), 2.0 * src.numel() * src.element_size(), sync)
    finally:
        torch.set_num_threads(previous)
        if tf32 is not None:
            restore_tf32(tf32)
    method = (
        f"best call of square {dtype} matmuls ({', '.join(map(str, sizes))}{skipped}"
        + ("; TF32 off" if device == "cuda" and dtype == "float32" else "")
        + f") and of a {size // 2**20} MiB copy (read + write), each over >= {MIN_SECONDS} s"
    )
    return Peak(device, dtype, threads, flops, bandwidth, method)


def _copy_bytes(device: str) -> int:
    # Never more than an eighth of the free RAM: the copy needs two buffers and the run its own memory.
    size = COPY_BYTES[device]
    if device == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        size = min(size, int(line.split()[1]) * 1024 // 8)
        except OSError:
            pass
    return max(size, 2**20)


def _best_rate(fn: Callable[[], Any], work: float, sync: Callable[[], None]) -> float:
    """Work per second of the fastest call (after one warm-up call) over MIN_SECONDS, or of one call when a single
    call outlasts MIN_SECONDS."""
    fn()
    sync()
    best, calls, started = float("inf"), 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - started < MIN_SECONDS:
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return work / best
