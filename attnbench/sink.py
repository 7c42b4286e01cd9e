"""Where a run's rows go (Sink) and what it produced (RunOutcome): the run's interface with whoever shows it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attnbench import results as R
from attnbench.results import Case, Result

if TYPE_CHECKING:
    from attnbench.gate import Verdict

#: The phases of a run (Sink.phase): everything that is not a timing, in parallel; then the timings, alone.
PREPARE, TIME = "prepare", "time"


class Sink:
    """Where a run reports: its environment and plan, each finished row, its stages and its end. Override what
    you need; every method does nothing here."""

    def start(self, env: Mapping[str, Any], cases: Sequence[Case]) -> None:
        """The run begins: its environment record and the cases it plans."""

    def phase(self, phase: str, cases: Sequence[Case], note: str = "") -> None:
        """The run enters a phase for these cases: PREPARE (count, build, export, probe) or TIME (timing alone);
        `note` says more (how many workers, which group of how many)."""

    def stage(self, case: Case, stage: str) -> None:
        """`case` enters a stage: "counting", "building", "preparing" (then the backend's own: "exporting",
        "compiling"; and "memory"), "timing", "timing the other allocator"."""

    def rotation(self, round_: int, timing: int) -> None:
        """The timing rotation begins a round: its number and how many cases are still being timed."""

    def row(self, row: Result) -> None:
        """A case finished (ok or not): its row."""

    def status(self, message: str) -> None:
        """A line about the run as a whole (the valgrind pass)."""

    def finish(self, outcome: RunOutcome) -> None:
        """The run ended (completed, failed cases, or interrupted): every row, final, and the gate's verdict."""


@dataclass
class RunOutcome:
    """What a sweep produced: the rows, its environment, whether Ctrl-C cut it short, and the gate's verdict."""

    results: list[Result] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    #: Seconds spent starting the system-allocator worker (0 when no CPU case was timed).
    system_worker_startup_s: float = 0.0
    verdict: Verdict | None = None
    #: What the cache across runs did (attnbench.cache.Cache.record): recorded in the environment.
    cache: dict[str, Any] = field(default_factory=dict)
    #: Wall seconds of each phase (the work before the timings, the timings) and the worker processes used.
    phases: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Result]:
        """Rows that failed: anything but ok and the deliberate refusals (invalid, skipped, guarded)."""
        return [r for r in self.results if r.status not in (R.OK, *R.REFUSED)]
