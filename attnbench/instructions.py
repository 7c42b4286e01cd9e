"""Instruction counts: a deterministic measure of work per forward call, from Callgrind (valgrind).

Wall time on a shared machine moves with whatever else runs there; the number of instructions a forward
executes does not. This is what PyTorch's own CI gates on (torch.utils.benchmark's collect_callgrind)
and what CodSpeed is built on. Here every case of a run is counted in ONE valgrind process, so that the
cost of starting Python and importing torch under valgrind is paid once:

1. The parent saves each case's module (weights and all, with torch.save) and input shape to a temporary
   directory, so the worker counts exactly the objects the run measured, zoo or not.
2. The worker starts under `valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no`: imports and
   loading run without instrumentation (importing torch took 21 s of CPU so, 78 s instrumented). It
   loads every case, runs WARMUP_CALLS forwards of each (lazy initialisation, Python's specialising
   interpreter), then asks callgrind_control to switch instrumentation on, once. ATen, MKL and oneDNN
   are held to their SSE4 kernels (SSE_PATHS): valgrind runs FMA code two orders of magnitude slower.
3. Per case: one more forward outside collection, then collection on (torch._C._valgrind_toggle),
   `calls` forwards, collection off and a dump (torch._C._valgrind_toggle_and_dump_stats): one dump
   file per case, in case order.
4. The parent reads the event total ("summary:") of each dump: instructions per forward = total / calls.

Counted: user-space instructions of the calling thread's forward (Python, dispatcher, kernels), at 1
intra-op thread (valgrind serialises threads, and worker threads would add spin-waits that are not
deterministic). Not counted: the kernel, time waiting. Repeatable to about 0.1% (results/gate_stability.md),
not to the instruction: allocator state and Python's object layout move a few thousand instructions. The
count depends on the CPU, torch, Python, valgrind and allocator: compare counts only between runs where
those match (gate.py refuses the rest).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench import scratch
from attnbench.errors import BackendUnavailableError
from attnbench.zoo.spec import PRIVATE_PREFIX

if TYPE_CHECKING:
    from torch import nn

    from attnbench.results import Case

#: Forwards run natively (not instrumented) before counting: Python 3.11 specialises bytecode after a few.
WARMUP_CALLS = 3
#: Forwards counted per case; the count is deterministic, so one is enough.
DEFAULT_CALLS = 1
#: The worker's own limit on waiting for callgrind_control to switch instrumentation on.
INSTRUMENT_ON_TIMEOUT_S = 120.0
#: Kernels without FMA: valgrind emulates FMA3 instructions one helper call at a time, which made oneDNN's AVX2
#: convolutions about 85x slower under valgrind than their SSE4.1 versions (sk at 32x32: 60 s against 0.7 s
#: per forward). The counts are therefore those of the SSE4 code paths of ATen, MKL and oneDNN: a
#: deterministic measure of the module's work, not of the AVX2/AVX-512 kernels its timings run.
SSE_PATHS = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}
#: What an instruction count counts, for reports.
INSTRUCTIONS_METHOD = (
    "Callgrind Ir (instructions executed) per forward call at 1 thread, after warm-up, on the SSE4 kernels "
    "of ATen, MKL and oneDNN; one valgrind process for all cases"
)
#: Environment keys that must match for two instruction counts to be comparable.
INSTRUCTION_ENV_KEYS = ("cpu_model", "cpu_isa", "torch", "python", "valgrind", "allocator")
OK = "ok"
FAILED = "failed"


class ValgrindUnavailableError(BackendUnavailableError):
    """valgrind (or callgrind_control) is not installed, or this torch cannot talk to it."""


@dataclass(frozen=True)
class InstructionCount:
    """Instructions per forward call of one case, or why there is none."""

    instructions: int | None
    status: str = OK
    reason: str = ""
    calls: int = DEFAULT_CALLS
    #: Wall seconds the worker spent on this case under instrumentation (valgrind's cost, not the module's).
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        """True when the case was counted."""
        return self.status == OK


def valgrind_version() -> str | None:
    """valgrind's version ("3.19.0"), or None when it is not installed."""
    exe = shutil.which("valgrind")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().removeprefix("valgrind-") or None


def check_available() -> str:
    """valgrind's version; raises ValgrindUnavailableError with what to install when counting cannot run."""
    version = valgrind_version()
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if version is None or missing:
        raise ValgrindUnavailableError(
            f"instruction counts need valgrind ({', '.join(missing) or 'valgrind --version failed'} not found); "
            "install it (Debian/Ubuntu: apt-get install valgrind) or gate on wall time (--gate-metric wall)"
        )
    import torch  # torch: the CLI checks for valgrind before anything imports torch

    if not torch._C._valgrind_supported_platform():
        raise ValgrindUnavailableError(f"torch {torch.__version__} was built without valgrind support")
    return version


def isa_facts() -> str:
    """The instruction-set extensions that decide which kernels run (a count differs between them)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                    return ",".join(f for f in wanted if f in flags)
    except OSError:
        pass
    import torch  # torch: as above, a fallback only

    return torch.backends.cpu.get_cpu_capability()


class InstructionBatch:
    """Cases queued for one valgrind process: add() as modules are built, run() once at the end.

    A context manager: the temporary directory holding the saved modules and dumps is removed on exit,
    whatever ends the block.
    """

    def __init__(self) -> None:
        self._dir = Path(scratch.make("attnbench-callgrind-"))
        self._cases: list[dict[str, Any]] = []
        #: Seconds of the worker's phases in the last run (start, load and warm-up; instrumentation on).
        self.phases: dict[str, float] = {}

    def add(self, module: nn.Module, input_shape: Sequence[int], seed: int = 0, build: Case | None = None) -> int:
        """Queue `module` on a standard-normal input of `input_shape` (drawn from `seed`); its index.

        The module travels pickled, except one built from a user's file (`build`: the case it was built for by
        name): that file is imported under a private module name that a pickle cannot find in another process,
        so the worker builds it again from the name, as the runner did (same seed, same weights). Only then: a
        count depends slightly on how its objects were made (rebuilding a pickled zoo module moved lka's count by
        0.5%), and baselines hold counts of pickled modules.
        """
        index = len(self._cases)
        path = self._dir / f"case{index}.pt"
        entry: dict[str, Any] = {"path": str(path), "shape": list(input_shape), "seed": seed}
        if build is not None and any(type(m).__module__.startswith(PRIVATE_PREFIX) for m in module.modules()):
            entry["build"] = {
                "module": build.module,
                "dim": build.dim,
                "res": [build.height, build.width],
                "kwargs": build.kwargs_dict,
                "layout": build.scenario.layout,
            }
            self._cases.append(entry)
            return index
        import torch  # torch: the CLI checks for valgrind before anything imports torch

        try:
            torch.save(module, path)
        except Exception as exc:  # a class defined in __main__ cannot travel to another process
            entry["error"] = f"cannot hand the module to the valgrind worker: {type(exc).__name__}: {exc}"
        self._cases.append(entry)
        return index

    def __len__(self) -> int:
        return len(self._cases)

    def run(
        self, calls: int = DEFAULT_CALLS, timeout_s: float | None = None, valgrind_args: Sequence[str] = ()
    ) -> list[InstructionCount]:
        """Count every queued case in one valgrind process; one InstructionCount per add(), in order.

        `valgrind_args` are passed to valgrind before the program (for studies of its options).
        """
        if not self._cases:
            return []
        check_available()
        if all("error" in c for c in self._cases):
            return self._all_failed("")
        plan = self._dir / "plan.json"
        report = self._dir / "report.json"
        plan.write_text(json.dumps({"cases": self._cases, "calls": calls, "report": str(report)}))
        out_prefix = self._dir / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            "--collect-atstart=no",
            f"--callgrind-out-file={out_prefix}",
            *valgrind_args,
            sys.executable,
            "-m",
            "attnbench.instructions",
            "--worker",
            str(plan),
        ]
        env = {
            **os.environ,
            # The worker imports the same code (and the same module classes) as this process.
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            # String hashing decides dict and set order, and with it code paths: fixed, for repeatable counts.
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            **SSE_PATHS,
        }
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self._all_failed(f"valgrind ran past its time limit of {timeout_s:g} s")
        if done.returncode != 0 or not report.exists():
            tail = " ".join((done.stderr or done.stdout).split())[-400:]
            return self._all_failed(f"valgrind worker failed (exit {done.returncode}): {tail}")
        return self._read(json.loads(report.read_text()), out_prefix)

    def _all_failed(self, reason: str) -> list[InstructionCount]:
        return [InstructionCount(None, FAILED, c.get("error", reason)) for c in self._cases]

    def _read(self, report: dict[str, Any], out_prefix: Path) -> list[InstructionCount]:
        counts = []
        for case, outcome in zip(self._cases, report["cases"], strict=True):
            if "error" in case:
                counts.append(InstructionCount(None, FAILED, case["error"]))
            elif outcome["status"] != OK:
                counts.append(InstructionCount(None, FAILED, outcome["reason"]))
            else:
                total = read_dump_total(Path(f"{out_prefix}.{outcome['dump']}"))
                calls = outcome["calls"]
                counts.append(InstructionCount(round(total / calls), OK, "", calls, outcome.get("seconds")))
        self.phases = dict(report.get("phases", {}))
        return counts

    def close(self) -> None:
        """Remove the saved modules and dumps."""
        scratch.remove(str(self._dir))

    def __enter__(self) -> InstructionBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_TOTAL = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def read_dump_total(path: Path) -> int:
    """The event total (Ir, instructions executed) of one callgrind dump file."""
    match = _TOTAL.search(path.read_text(errors="replace"))
    if match is None:
        raise ValueError(f"{path}: no 'summary:' line (not a callgrind dump?)")
    return int(match.group(1))


def count_instructions(
    cases: Sequence[tuple[nn.Module, Sequence[int]]], seed: int = 0, calls: int = DEFAULT_CALLS
) -> list[InstructionCount]:
    """Instructions per forward for each (module, input shape), all in one valgrind process."""
    with InstructionBatch() as batch:
        for module, shape in cases:
            batch.add(module, shape, seed)
        return batch.run(calls)


# ---------------------------------------------------------------- the worker (runs under valgrind)


def _instrumentation_on() -> None:
    """Ask callgrind (through callgrind_control, a separate native process) to start instrumenting us.

    Callgrind reads such commands only while this process executes guest code, so we keep executing
    (a busy wait) until callgrind_control has had its answer.
    """
    control = subprocess.Popen(
        ["callgrind_control", "--instr=on", str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + INSTRUMENT_ON_TIMEOUT_S
    while control.poll() is None:
        if time.monotonic() > deadline:
            control.kill()
            raise RuntimeError("callgrind_control did not switch instrumentation on in time")
    answer = control.stdout.read().decode(errors="replace") if control.stdout else ""
    if control.returncode != 0 or "OK" not in answer:
        raise RuntimeError(f"callgrind_control --instr=on failed: {' '.join(answer.split())[:300]}")


def _load(case: dict[str, Any]) -> nn.Module:
    """A queued case's module: built again by name (seeded as the runner seeds its build), or unpickled."""
    import torch  # torch: the worker imports it uninstrumented, after start-up

    if "build" not in case:
        return torch.load(case["path"], weights_only=False).eval()
    from attnbench.zoo.build import build_module  # torch (a user's file may import it): as above

    spec = case["build"]
    torch.manual_seed(case["seed"])
    hw = tuple(spec["res"])
    return build_module(spec["module"], spec["dim"], hw, spec["kwargs"], spec["layout"]).eval()


def _worker(plan_path: str) -> int:
    """Load every case, warm up, switch instrumentation on, count each case into its own dump."""

    import torch  # torch: the worker imports it uninstrumented, after start-up

    from attnbench.backends.base import make_input  # torch: as above
    from attnbench.memory import pin_allocator  # torch: as above

    started = time.perf_counter()
    plan = json.loads(Path(plan_path).read_text())
    torch.set_num_threads(1)
    pin_allocator()  # the allocator settings the timings ran with
    loaded: list[Any] = []
    outcomes: list[dict[str, Any]] = []
    with torch.inference_mode():
        for case in plan["cases"]:
            try:
                if "error" in case:
                    raise RuntimeError(case["error"])
                module = _load(case)
                fn = functools.partial(module, make_input(case["shape"], torch.float32, case["seed"]))
                for _ in range(WARMUP_CALLS):
                    fn()
                loaded.append(fn)
                outcomes.append({"status": OK})
            except Exception as exc:
                loaded.append(None)
                outcomes.append({"status": FAILED, "reason": f"{type(exc).__name__}: {exc}"[:500]})
        phases = {"start_load_warm_s": time.perf_counter() - started}
        mark = time.perf_counter()
        _instrumentation_on()
        phases["instrumentation_on_s"] = time.perf_counter() - mark
        dumps = 0
        for fn, outcome in zip(loaded, outcomes, strict=True):
            if fn is None:
                continue
            mark = time.perf_counter()
            collecting = False
            try:
                fn()  # once more with instrumentation on, outside collection
                torch._C._valgrind_toggle()
                collecting = True
                for _ in range(plan["calls"]):
                    fn()
            except Exception as exc:
                outcome.update(status=FAILED, reason=f"{type(exc).__name__}: {exc}"[:500])
            if collecting:
                # Close the collection even after a failure, so the next case starts from zero.
                torch._C._valgrind_toggle_and_dump_stats()
                dumps += 1
                outcome.update(dump=dumps, calls=plan["calls"])
            outcome["seconds"] = time.perf_counter() - mark
    Path(plan["report"]).write_text(json.dumps({"cases": outcomes, "phases": phases}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2]))
    print("usage: python -m attnbench.instructions --worker PLAN.json (started by InstructionBatch.run)")
    sys.exit(2)
