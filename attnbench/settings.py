"""How a run measures: which metrics and counters, the timing budget, the guards. One object that travels whole.

The scenario (how a module runs) is attnbench.results.Scenario; the timing budget is attnbench.timing.TimingBudget,
kept beside the loop that spends it. RunOptions holds everything else a run needs, with its defaults named here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from attnbench.cache import default_dir
from attnbench.errors import UsageError
from attnbench.timing import TimingBudget

#: Every metric a run knows: `params` and `macs` are counted, `memory` and `latency` measured, and
#: `instructions` counted under valgrind after the sweep (all cases in one process; see attnbench.instructions).
METRICS = ("params", "macs", "memory", "latency", "instructions")
#: What a run measures unless told otherwise: instruction counts cost a valgrind pass, so they are asked for.
DEFAULT_METRICS = ("params", "macs", "memory", "latency")
#: The metrics that need a backend to run the module (the others are counted on the meta device).
MEASURED_METRICS = ("memory", "latency", "instructions")
#: The MAC counters, in the order they run: attnbench's own dispatch-level counter first (the others use its
#: activation estimate to decide on a CPU fallback).
COUNTERS = ("attnbench", "fvcore", "thop")
#: Intra-op threads unless asked: 1 is what a shared 2-core CI machine measures reproducibly.
DEFAULT_THREADS = 1
DEFAULT_SEED = 0


#: Overrides the automatic number of worker processes (0: everything in the run's own process).
WORKERS_ENV = "ATTNBENCH_WORKERS"


def _workers_from_env() -> int | None:
    value = os.environ.get(WORKERS_ENV, "").strip()
    return int(value) if value.isdigit() else None


#: Fresh processes the default (glibc) allocator state of every CPU row is measured in (issue 23: three or more;
#: acmix 28x28 landed in a 2.7x slower mode in some fresh processes and not in others).
DEFAULT_ALLOCATOR_PROCESSES = 3
#: Overrides that number (0: the pinned state only, about 1.4 s less per CPU row; the rows say so).
ALLOCATOR_PROCESSES_ENV = "ATTNBENCH_ALLOCATOR_PROCESSES"


def _allocator_processes_from_env() -> int:
    value = os.environ.get(ALLOCATOR_PROCESSES_ENV, "").strip()
    return int(value) if value.isdigit() else DEFAULT_ALLOCATOR_PROCESSES


@dataclass(frozen=True)
class RunOptions:
    """How to measure: which metrics and counters, the timing budget, the guards, the seed, the machine label."""

    metrics: tuple[str, ...] = DEFAULT_METRICS
    counters: tuple[str, ...] = COUNTERS
    budget: TimingBudget = field(default_factory=TimingBudget)
    #: Per case (one backend of one geometry), in seconds; None: no limit.
    time_limit_s: float | None = None
    #: Run cases the memory guard would refuse.
    force: bool = False
    seed: int = DEFAULT_SEED
    #: Label every row with this machine name; None: attnbench.env.machine_label() of this machine.
    machine: str | None = None
    #: Worker processes for the work that is not a timing (counting, exports); 0: all in this process; None:
    #: $ATTNBENCH_WORKERS if set, else the cores this process may use.
    workers: int | None = field(default_factory=lambda: _workers_from_env())
    #: Fresh processes the system allocator state of a CPU row is measured in (0: not measured); the default:
    #: $ATTNBENCH_ALLOCATOR_PROCESSES if set, else DEFAULT_ALLOCATOR_PROCESSES.
    allocator_processes: int = field(default_factory=_allocator_processes_from_env)
    #: Time the cases of one backend in round-robin blocks (False: one after the other).
    interleave: bool = True
    #: The module latency ratios are taken to at each setting (None: the fastest there; attnbench.ratios).
    reference: str | None = None
    #: Where ONNX exports and counts are cached across runs (attnbench.cache); None: no cache. The default,
    #: attnbench.cache.default_dir(), is read from the environment when the options are built.
    cache_dir: Path | None = field(default_factory=default_dir)

    @property
    def measures(self) -> bool:
        """True when a backend has to run the module (latency, memory or instructions asked for)."""
        return any(m in self.metrics for m in MEASURED_METRICS)

    def without_instructions(self) -> RunOptions:
        """The same options minus the valgrind pass (to re-measure one case's latency)."""
        return dataclasses.replace(self, metrics=tuple(m for m in self.metrics if m != "instructions"))

    def check(self) -> None:
        """Refuse values no run could use (UsageError naming the option)."""
        for option, names, allowed in (("--metrics", self.metrics, METRICS), ("--counters", self.counters, COUNTERS)):
            bad = [n for n in names if n not in allowed]
            if bad or not names:
                raise UsageError(
                    f"{option} {','.join(names)!r}: unknown {', '.join(bad) or 'empty list'}; "
                    f"allowed: {', '.join(allowed)}"
                )
        problem = self.budget.problem()
        if problem:
            raise UsageError(problem)
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise UsageError(f"--time-limit {self.time_limit_s!r}: must be > 0 seconds")
        if self.machine is not None and not self.machine.strip():
            raise UsageError("--label must not be empty")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers {self.workers!r}: must be >= 0 (0: everything in this process)")
        if self.allocator_processes < 0:
            raise UsageError(
                f"--allocator-processes {self.allocator_processes!r}: must be >= 0 (0: the pinned state only)"
            )
