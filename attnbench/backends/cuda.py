"""PyTorch eager on one CUDA GPU: cudnn.benchmark autotuning in the warm-up, TF32 pinned, each call synchronised.

Written from the PyTorch docs and sources; not yet run on a GPU (the CI machine has none). Training, dtypes,
channels_last and torch.compile come from attnbench.backends._torch, shared with the CPU backend.
Timing: every timed call ends with torch.cuda.synchronize(device), so the host clock reads after the GPU
finished it: the latency of one call, launches and the GPU's work alike, as ONNX Runtime's CUDA provider
times its own runs (it synchronises its stream at the end of each run). Blocks of many calls amortise the
clock. The GPU's busy time (kernels and copies, from the profiler) over a few calls says whether a row is
launch-bound. TF32: float32 matmuls and convolutions run in true float32 unless the scenario asks for TF32
(`--tf32`); torch's own defaults differ (convolutions TF32, matmuls not), so both switches are set per case
and restored on close. Peak memory: synchronize / memory_allocated base / reset_peak_memory_stats / forward /
synchronize / max_memory_allocated - base, with max_memory_reserved reported separately.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from attnbench.backends._torch import TorchBackend, TorchPrepared, short_error
from attnbench.backends.base import SYNC_PER_CALL, Prepared, out_of_memory
from attnbench.capture import captured
from attnbench.memory import CUDA_TRAIN_PEAK_METHOD, PeakMemory, cuda_peak
from attnbench.results import Scenario
from attnbench.timing import Sync

#: Calls the profiler watches to read the GPU's busy time per call (after the timing warmed everything up).
BUSY_CALLS = 5
#: How torch's timed calls are synchronised (recorded in every row and in the environment's backend facts).
TORCH_SYNC = f"{SYNC_PER_CALL} (torch.cuda.synchronize(device) after each call)"


def _device_facts(device: torch.device) -> dict[str, Any]:
    """GPU name, capability, memory and library versions for the record."""
    props = torch.cuda.get_device_properties(device)
    return {
        "gpu_name": props.name,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_total_memory_bytes": int(props.total_memory),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def gpu_load_facts(device: torch.device | int | None = None) -> dict[str, Any]:
    """The GPU's SM clock and power draw now (read right after timed calls, not while the GPU idled)."""
    facts: dict[str, Any] = {}
    try:
        facts["gpu_clock_mhz_after_timing"] = torch.cuda.clock_rate(device)
        facts["gpu_power_draw_mw_after_timing"] = torch.cuda.power_draw(device)
    except Exception:  # needs pynvml (nvidia-ml-py); optional facts
        pass
    return facts


def gpu_free_bytes() -> int | None:
    """Free memory of the current GPU (every process and allocator counted), None without one."""
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


# ---------------------------------------------------------------- TF32


@contextlib.contextmanager
def _no_deprecation_warning() -> Iterator[None]:
    """Some torch releases warn (once) that allow_tf32 is deprecated: attnbench uses it on purpose (set_tf32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def tf32_flags() -> dict[str, Any]:
    """torch's TF32 switches as they stand, under the API that can read them without raising."""
    try:
        with _no_deprecation_warning():
            return {
                "api": "allow_tf32",
                "matmul": torch.backends.cuda.matmul.allow_tf32,
                "cudnn": torch.backends.cudnn.allow_tf32,
            }
    except RuntimeError:
        # torch >= 2.9 refuses to read the legacy names once this process set the fp32_precision API.
        return {
            "api": "fp32_precision",
            "matmul": torch.backends.cuda.matmul.fp32_precision,
            "conv": torch.backends.cudnn.conv.fp32_precision,
            "rnn": torch.backends.cudnn.rnn.fp32_precision,
        }


def set_tf32(on: bool) -> dict[str, Any]:
    """Switch TF32 for float32 cuBLAS matmuls and cuDNN convolutions on or off; return the switches as they were.

    Through the legacy names (allow_tf32): every torch this supports has them, inductor up to torch 2.11 reads
    them (pytorch/pytorch#166387: setting only fp32_precision breaks its compile), and from torch 2.9 on they set
    the fp32_precision state too (aten/src/ATen/Context.cpp, setAllowTF32CuBLAS / setAllowTF32CuDNN).
    """
    before = tf32_flags()
    with _no_deprecation_warning():
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    return before


def restore_tf32(flags: dict[str, Any]) -> None:
    """Put the switches back as tf32_flags() read them."""
    if flags["api"] == "allow_tf32":
        with _no_deprecation_warning():
            torch.backends.cuda.matmul.allow_tf32 = flags["matmul"]
            torch.backends.cudnn.allow_tf32 = flags["cudnn"]
        return
    torch.backends.cuda.matmul.fp32_precision = flags["matmul"]
    torch.backends.cudnn.conv.fp32_precision = flags["conv"]
    torch.backends.cudnn.rnn.fp32_precision = flags["rnn"]


# ---------------------------------------------------------------- the GPU's busy time


def busy_ns(intervals: Iterable[tuple[int, int]]) -> int:
    """Length of the union of (start, end) intervals: time with at least one kernel or copy running."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def device_busy_per_call(call: Callable[[], Any], calls: int = BUSY_CALLS) -> float | None:
    """Seconds per call the GPU ran kernels, copies or memsets, from the profiler's CUDA activity (CUPTI).

    CUPTI records the activity of every stream of the process's CUDA context, so it sees ONNX Runtime's kernels as
    well as torch's. None when the profiler records no GPU activity (no CUPTI, or a call that ran nothing there).
    """
    from torch.profiler import ProfilerActivity, profile  # slow to import: only a GPU row needs it

    # kineto prints its start and stop lines from C++: keep them off the user's terminal.
    with captured(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
    intervals = [
        (e.start_ns(), e.start_ns() + e.duration_ns())
        for e in prof.profiler.kineto_results.events()
        if str(e.device_type()).endswith("CUDA") and not _annotation(e)
    ]
    return busy_ns(intervals) / 1e9 / calls if intervals else None


def busy_or_note(call: Callable[[], Any], extra: dict[str, Any]) -> float | None:
    """device_busy_per_call, or None with the profiler's error in `extra`: the busy time is an extra, not the row."""
    try:
        return device_busy_per_call(call)
    except Exception as exc:  # another profiler running, CUPTI refused: the latency still stands
        if out_of_memory(exc):
            raise
        extra["device_busy_error"] = short_error(exc, 300)
        return None


def _annotation(event: Any) -> bool:
    """A user's record_function range shown on the GPU's timeline: a label, not work."""
    is_annotation = getattr(event, "is_user_annotation", None)
    return bool(is_annotation()) if callable(is_annotation) else False


def synchronised(fn: Callable[[], Any], sync: Sync) -> Callable[[], Any]:
    """`fn` followed by `sync`: one call whose end the host clock can read."""

    def call() -> Any:
        out = fn()
        sync()
        return out

    return call


class CudaPrepared(TorchPrepared):
    """A copy of the module on the GPU for the scenario, with cudnn.benchmark and TF32 set until close()."""

    backend = "cuda"

    def __init__(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int) -> None:
        super().__init__()
        threads = self.threads = scenario.threads
        self.device = torch.device("cuda", torch.cuda.current_device())
        self._prev_benchmark = torch.backends.cudnn.benchmark
        self._prev_threads = torch.get_num_threads()
        # cudnn.benchmark autotunes convolution algorithms on the first calls of each shape: the warm-up
        # pays for it, the timed blocks do not.
        torch.backends.cudnn.benchmark = True
        self._prev_tf32 = set_tf32(scenario.tf32)
        torch.set_num_threads(threads)
        self.extra = {
            "cudnn_benchmark": True,
            "torch_allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "torch_allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "timing_sync": TORCH_SYNC,
            "host_threads": threads,
            "graph_mode": "torch.compile (inductor)" if scenario.compile else "eager",
            **_device_facts(self.device),
        }
        try:
            # Always a copy (see TorchPrepared._setup), so the caller's CPU float32 module stays where it was.
            self._setup(module, input_shape, seed, scenario)
        except BaseException:
            # An OOM while copying or a failed compile: measure() never gets a Prepared to close.
            self.close()
            raise

    def _sync(self) -> Sync | None:
        return functools.partial(torch.cuda.synchronize, self.device)

    def timed_callable(self) -> tuple[Callable[[], Any], Sync | None]:
        """One step followed by a device synchronisation: each timed call is a whole call."""
        sync = functools.partial(torch.cuda.synchronize, self.device)
        return synchronised(self._step(), sync), sync

    def device_busy_s(self) -> float | None:
        """The GPU's busy seconds per warmed-up step, then its clock and power right after the timed calls."""
        fn, _ = self.timed_callable()
        with self.timing_context():
            busy = busy_or_note(fn, self.extra)
        self.extra.update(gpu_load_facts(self.device))
        return busy

    def peak_memory(self) -> PeakMemory:
        """Caching-allocator peak of one warmed-up step (the timing warm-up made the workspaces)."""
        mem = self._profiled_step(functools.partial(cuda_peak, device=self.device))
        if self.train:
            mem = dataclasses.replace(mem, method=CUDA_TRAIN_PEAK_METHOD)
        return mem

    def close(self) -> None:
        """Restore cudnn.benchmark, TF32 and threads; drop the GPU copy and return its cached blocks."""
        torch.backends.cudnn.benchmark = self._prev_benchmark
        restore_tf32(self._prev_tf32)
        torch.set_num_threads(self._prev_threads)
        self._restore_module()
        torch.cuda.empty_cache()


class CudaBackend(TorchBackend):
    """PyTorch eager on the current CUDA device."""

    name = "cuda"
    description = "PyTorch on a CUDA GPU (cudnn.benchmark, synchronised timing, fp32/fp16/bf16, train, compile)"
    device = "cuda"
    memory_name = "GPU memory"
    marker = "^"
    sync = TORCH_SYNC

    def available(self) -> tuple[bool, str]:
        """True with the GPU's name, or False with why there is no usable GPU."""
        if not torch.backends.cuda.is_built():
            return False, f"this torch build ({torch.__version__}) has no CUDA support"
        if not torch.cuda.is_available():
            return False, f"no CUDA device visible (torch {torch.__version__}, CUDA {torch.version.cuda})"
        return True, torch.cuda.get_device_name(torch.cuda.current_device())

    def prepare(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int = 0) -> Prepared:
        """Copy `module` to the GPU for the scenario; an OOM here comes back to measure() as status "oom"."""
        return CudaPrepared(module, input_shape, scenario, seed)

    def free_memory(self) -> int | None:
        """Free memory of the current GPU."""
        return gpu_free_bytes()

    def is_oom(self, exc: BaseException) -> bool:
        """The caching allocator's out-of-memory error."""
        return isinstance(exc, torch.OutOfMemoryError)

    def cleanup_after_failure(self) -> None:
        """Return cached blocks after a failure so the next case (and its memory guard) starts from a clean GPU."""
        release_gpu_memory()


def release_gpu_memory() -> None:
    """Collect unreachable objects (a failed step's tensors can sit in reference cycles), then return the caching
    allocator's free blocks to the driver; called outside any exception handler (PyTorch's FAQ on OOM recovery)."""
    gc.collect()
    if not torch.cuda.is_available():
        return
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    except RuntimeError:
        # A sticky CUDA error (an illegal memory access) leaves the context unusable: the next case reports it in
        # its own row; the cleanup must not take the sweep down.
        pass
