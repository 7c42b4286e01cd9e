"""The roofline: which roof a case runs under, minimum traffic and intensity by hand, and the roof's measurement
(once per key, best call, threads put back) with a fake clock."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from attnbench import roofline
from attnbench.results import DTYPES
from attnbench.roofline import Peak

CPU = Peak("cpu", "float32", 1, 1.5e11, 6e9, "m")
CPU2 = Peak("cpu", "float32", 2, 2.8e11, 9e9, "m")
GPU = Peak("cuda", "float32", 0, 5e13, 4e12, "m")


def test_key_of_keeps_threads_on_the_cpu_only() -> None:
    assert roofline.key_of("cpu", "float32", 2) == ("cpu", "float32", 2)
    assert roofline.key_of("cuda", "float16", 8) == ("cuda", "float16", 0)


def test_peak_for_finds_the_roof_of_the_device_dtype_and_threads() -> None:
    peaks = [CPU, CPU2, GPU]
    assert roofline.peak_for(peaks, "cpu", "float32", 2) is CPU2
    assert roofline.peak_for(peaks, "cuda", "float32", 4) is GPU  # threads do not matter on a GPU
    assert roofline.peak_for(peaks, "cpu", "bfloat16", 1) is None
    assert roofline.peak_for([], "cpu", "float32", 1) is None


def test_ridge_is_flops_over_bytes() -> None:
    assert CPU.ridge == 1.5e11 / 6e9 == 25.0


def test_peaks_of_reads_the_record_and_skips_what_it_cannot_understand() -> None:
    good = {"device": "cpu", "dtype": "float32", "threads": 1, "flops_per_s": 1.5e11, "bytes_per_s": 6e9}
    env = {"peaks": [{**good, "method": "m", "extra": 1}, {"device": "cpu"}, "junk"]}
    assert roofline.peaks_of(env) == [CPU]
    assert roofline.peaks_of({}) == [] and roofline.peaks_of({"peaks": None}) == []


@pytest.mark.parametrize(
    ("args", "mode", "traffic"),
    [
        # (params, batch, dim, H, W, dtype): (2 * B*C*H*W + params) elements, each moved once
        ((1000, 2, 16, 8, 8, "float32"), "infer", (2 * 2 * 16 * 8 * 8 + 1000) * 4),
        ((1000, 2, 16, 8, 8, "bfloat16"), "infer", (2 * 2 * 16 * 8 * 8 + 1000) * 2),
        ((1000, 2, 16, 8, 8, "float16"), "train", (2 * 2 * 16 * 8 * 8 + 1000) * 2 * 2),  # the gradients too
        ((0, 1, 64, 14, 28, "float32"), "infer", 2 * 64 * 14 * 28 * 4),
    ],
)
def test_min_traffic_by_hand(args: tuple[Any, ...], mode: str, traffic: int) -> None:
    assert roofline.min_traffic_bytes(*args, mode=mode) == traffic


def test_min_traffic_is_unknown_when_a_value_is() -> None:
    assert roofline.min_traffic_bytes(None, 1, 16, 8, 8, "float32") is None
    assert roofline.min_traffic_bytes(float("nan"), 1, 16, 8, 8, "float32") is None
    assert roofline.min_traffic_bytes(10, 1, 16, 8, 8, "int8") is None
    assert set(DTYPES) <= set(roofline.DTYPE_BYTES)


def test_rate_and_intensity() -> None:
    assert roofline.rate(3e9, 1.5) == 2e9
    assert roofline.rate(None, 1.0) is None and roofline.rate(1.0, None) is None
    assert roofline.rate(1.0, 0) is None and roofline.rate(1.0, -1.0) is None
    assert roofline.intensity(2_000, 500) == 4.0
    assert roofline.intensity(2_000, 0) is None


# ---------------------------------------------------------------- measuring the roof


def test_measure_peaks_measures_each_key_once_and_leaves_out_what_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, int]] = []

    def fake(device: str, dtype: str, threads: int) -> Peak:
        calls.append((device, dtype, threads))
        if device == "cuda":
            raise RuntimeError("no CUDA device")
        return Peak(device, dtype, threads, 1e11 * threads, 5e9, "fake")

    monkeypatch.setattr(roofline, "_CACHE", {})
    monkeypatch.setattr(roofline, "_measure", fake)
    keys = [("cpu", "float32", 1), ("cuda", "float32", 0), ("cpu", "float32", 2), ("cpu", "float32", 1)]
    first = roofline.measure_peaks(keys)
    assert [(p["device"], p["threads"], p["flops_per_s"]) for p in first] == [("cpu", 1, 1e11), ("cpu", 2, 2e11)]
    assert first[0] == {
        "device": "cpu",
        "dtype": "float32",
        "threads": 1,
        "flops_per_s": 1e11,
        "bytes_per_s": 5e9,
        "method": "fake",
    }
    assert roofline.measure_peaks(keys) == first
    # Measured once per process; a key that failed is tried again next time.
    assert calls == [("cpu", "float32", 1), ("cuda", "float32", 0), ("cpu", "float32", 2), ("cuda", "float32", 0)]


class _Clock:
    """A clock that moves only when the timed function runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_best_rate_is_the_fastest_call_after_a_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    durations = iter([4.0, 0.125, 0.0625, 0.09375, 0.03125])  # warm-up, then three calls fill MIN_SECONDS
    synced: list[bool] = []

    def fn() -> None:
        clock.now += next(durations)

    monkeypatch.setattr(roofline, "time", clock)
    assert roofline._best_rate(fn, 100.0, lambda: synced.append(True)) == 100.0 / 0.0625
    assert len(synced) == 4  # after the warm-up and after each timed call
    assert next(durations) == 0.03125  # the fourth call was never made


def test_a_call_longer_than_min_seconds_is_timed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    durations = iter([0.75, 0.5, 0.125])  # exact in binary

    def fn() -> None:
        clock.now += next(durations)

    monkeypatch.setattr(roofline, "time", clock)
    assert roofline._best_rate(fn, 1.0, lambda: None) == 1 / 0.5
    assert next(durations) == 0.125


def test_a_matmul_too_slow_to_time_is_skipped_and_said(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0.5 GFLOP/s, as bfloat16 matmuls on a CPU without them: the 64 call would take 1 s and more.
    monkeypatch.setattr(roofline, "MATMUL_SIZES", {"cpu": (32, 64)})
    monkeypatch.setattr(roofline, "COPY_BYTES", {"cpu": 2**20})
    monkeypatch.setattr(roofline, "SLOW_MATMUL_S", 2.0 * 64**3 / 1e5 - 0.1)
    timed: list[float] = []

    def rate(fn: Any, work: float, sync: Any) -> float:
        timed.append(work)
        return 1e5

    monkeypatch.setattr(roofline, "_best_rate", rate)
    peak = roofline._measure("cpu", "bfloat16", 1)
    assert timed == [2.0 * 32**3, 2 * 2**20]  # the 32 matmul and the copy: no 64 matmul
    assert "matmuls (32; 64 skipped: a call would take 5.2 s)" in peak.method


def test_best_rate_runs_until_min_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        clock.now += 0.0625  # exact in binary

    monkeypatch.setattr(roofline, "time", clock)
    assert roofline._best_rate(fn, 1.0, lambda: None) == 1 / 0.0625
    assert len(calls) == 1 + round(roofline.MIN_SECONDS / 0.0625)  # the warm-up, then calls over MIN_SECONDS


def test_copy_is_at_most_an_eighth_of_the_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    def meminfo(kilobytes: int) -> Any:
        def fake(path: str, *args: Any, **kwargs: Any) -> io.StringIO:
            assert path == "/proc/meminfo"
            return io.StringIO(f"MemTotal: 99999999 kB\nMemAvailable: {kilobytes} kB\n")

        return fake

    monkeypatch.setattr(roofline, "open", meminfo(64 * 2**20), raising=False)  # 64 GiB free: the full copy
    assert roofline._copy_bytes("cpu") == roofline.COPY_BYTES["cpu"] == 256 * 2**20
    monkeypatch.setattr(roofline, "open", meminfo(512 * 2**10), raising=False)  # 512 MiB free
    assert roofline._copy_bytes("cpu") == 64 * 2**20
    monkeypatch.setattr(roofline, "open", meminfo(1024), raising=False)  # never below 1 MiB
    assert roofline._copy_bytes("cpu") == 2**20
    assert roofline._copy_bytes("cuda") == roofline.COPY_BYTES["cuda"]


def test_a_real_measurement_is_a_peak_and_puts_the_threads_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny sizes: what is checked is the record, not the machine's speed.
    monkeypatch.setattr(roofline, "MATMUL_SIZES", {"cpu": (32, 64)})
    monkeypatch.setattr(roofline, "COPY_BYTES", {"cpu": 2**20})
    monkeypatch.setattr(roofline, "MIN_SECONDS", 0.0)
    before = torch.get_num_threads()
    peak = roofline._measure("cpu", "float32", 2)
    assert torch.get_num_threads() == before
    assert (peak.device, peak.dtype, peak.threads) == ("cpu", "float32", 2)
    assert peak.flops_per_s > 0 and peak.bytes_per_s > 0
    method = "best call of square float32 matmuls (32, 64) and of a 1 MiB copy (read + write), each over >= 0.0 s"
    assert peak.method == method


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without a GPU")
def test_no_gpu_no_gpu_roof(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(roofline, "_CACHE", {})
    with pytest.raises(RuntimeError, match="no CUDA device"):
        roofline._measure("cuda", "float32", 0)
    assert roofline.measure_peaks([("cuda", "float32", 0)]) == []
