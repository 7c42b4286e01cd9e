"""Instruction counts (attnbench.instructions): dump parsing, the valgrind-missing error, the runner's one pass, and
(slow) real counts."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from attnbench import instructions
from attnbench import results as R
from attnbench.instructions import InstructionBatch, InstructionCount, ValgrindUnavailableError, read_dump_total
from attnbench.results import Scenario
from attnbench.runner import Sink, run
from attnbench.settings import RunOptions
from tests.conftest import run_cli

HAS_VALGRIND = shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


class Gated(nn.Module):
    """A linear layer, then `repeats` elementwise passes (more work at equal params and MACs)."""

    def __init__(self, repeats: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(256, 256)
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        for _ in range(self.repeats):
            y = torch.tanh(y) + y
        return y


class FailsWhenCounted(nn.Module):
    """Works through the warm-up, then raises on the first forward inside collection."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > instructions.WARMUP_CALLS + 1:
            raise RuntimeError("broken on purpose")
        return x * 2


class StatusLines(Sink):
    """A sink that keeps the run's status lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def status(self, message: str) -> None:
        """Keep the line."""
        self.lines.append(message)


def _valgrind_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make check_available() pass whether or not this machine has valgrind (the counting itself is faked)."""
    monkeypatch.setattr(instructions, "valgrind_version", lambda: "3.19.0")
    monkeypatch.setattr(instructions.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(torch._C, "_valgrind_supported_platform", lambda: True)


def test_read_dump_total(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.3"
    dump.write_text("# callgrind format\nversion: 1\ncmd: python\nevents: Ir\nsummary: 123456789\n\nfn=main\n0 5\n")
    assert read_dump_total(dump) == 123456789
    dump.write_text("events: Ir\ntotals: 42\n")  # older callgrind versions
    assert read_dump_total(dump) == 42
    dump.write_text("events: Ir\n")
    with pytest.raises(ValueError, match="no 'summary:' line"):
        read_dump_total(dump)


def test_missing_valgrind_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    with pytest.raises(ValgrindUnavailableError, match="apt-get install valgrind"):
        instructions.check_available()
    code, out, err = run_cli(capsys, *"compare lka --dim 16 --res 8 --gate-metric instructions --quiet".split())
    assert code == 2 and out == ""
    assert err.splitlines() == [err.strip()] and err.startswith("attnbench: error: instruction counts need valgrind")


def test_a_torch_without_valgrind_support_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    _valgrind_here(monkeypatch)
    monkeypatch.setattr(torch._C, "_valgrind_supported_platform", lambda: False)
    with pytest.raises(ValgrindUnavailableError, match=re.escape(f"torch {torch.__version__} was built")):
        instructions.check_available()


def test_a_module_that_cannot_travel_is_a_failed_count() -> None:
    class Local(nn.Module):  # defined in a function: pickle cannot find it again in another process
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with InstructionBatch() as batch:
        batch.add(Local(), (1, 4))
        (count,) = batch.run()
    assert not count.ok and count.instructions is None
    assert count.reason.startswith("cannot hand the module to the valgrind worker")


def test_an_empty_batch_counts_nothing_and_removes_its_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)  # nothing to count: valgrind not needed
    with InstructionBatch() as batch:
        assert len(batch) == 0 and batch.run() == []
        directory = batch._dir
        assert directory.is_dir()
    assert not directory.exists()


def test_runner_counts_cpu_rows_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[int] = []

    def fake_run(self: InstructionBatch, calls: int = 1, timeout_s: float | None = None) -> list[InstructionCount]:
        passes.append(len(self))
        return [InstructionCount(1000 + i) if i == 0 else InstructionCount(None, "failed", "boom") for i in range(2)]

    _valgrind_here(monkeypatch)
    monkeypatch.setattr(InstructionBatch, "run", fake_run)
    cases = [
        R.Case("lka", 16, 8, 8, backend="cpu"),
        R.Case("lka", 16, 8, 8, backend="cpu", scenario=Scenario(threads=2)),  # not eligible: 2 threads
        R.Case("lka", 16, 12, 12, backend="cpu"),
    ]
    sink = StatusLines()
    options = RunOptions(metrics=("params", "instructions"), counters=("attnbench",))
    outcome = run(cases, options, sink)
    assert passes == [2]  # one valgrind pass for the two eligible rows
    first, two_threads, other = outcome.results
    assert first.instructions == 1000 and two_threads.instructions is None
    assert other.instructions is None and '"instructions_error": "boom"' in other.extra
    assert sink.lines[0] == "counting instructions of 2 case(s) under valgrind (one process)"
    assert sink.lines[1].startswith("counted instructions in ")


def test_counting_instructions_without_valgrind_fails_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instructions.shutil, "which", lambda name: None)
    sink = StatusLines()
    with pytest.raises(ValgrindUnavailableError):
        run([R.Case("lka", 16, 8, 8)], RunOptions(metrics=("params", "instructions")), sink)
    assert sink.lines == []


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VALGRIND, reason="needs valgrind")
def test_real_counts_repeat_and_see_more_work() -> None:
    torch.manual_seed(0)
    plain, more = Gated(1), Gated(3)
    with InstructionBatch() as batch:
        for module in (plain, plain, FailsWhenCounted(), plain, more):
            batch.add(module, (64, 256))
        first, second, failed, third, heavier = batch.run()
    assert first.ok and second.ok and third.ok and heavier.ok
    assert not failed.ok and "broken on purpose" in failed.reason
    # A few million instructions; the same forward counts the same within 0.1% (a count jitters by about a
    # thousand instructions), before and after a case that failed mid-collection.
    assert first.instructions > 1_000_000  # type: ignore[operator]
    for again in (second, third):
        assert abs(again.instructions / first.instructions - 1) < 0.001  # type: ignore[operator]
    # Two more tanh-and-add passes over 64x256 elements are tens of thousands of instructions more.
    assert heavier.instructions / first.instructions > 1.01  # type: ignore[operator]
    assert set(batch.phases) == {"start_load_warm_s", "instrumentation_on_s"}


def test_a_module_from_a_users_file_travels_by_name(tmp_path: Path) -> None:
    # A user's file is imported under a private module name a pickle cannot find in another process: the
    # worker builds the module again from its spec, seeded as the runner seeds its build.
    import torch

    from attnbench.results import Case, Scenario
    from attnbench.zoo.build import build_module

    (tmp_path / "mine.py").write_text(
        "from torch import nn\n\nclass Mine(nn.Module):\n    def __init__(self, dim):\n        super().__init__()\n"
        "        self.fc = nn.Linear(dim, dim)\n\n    def forward(self, x):\n        return self.fc(x)\n"
    )
    spec = f"{tmp_path / 'mine.py'}:Mine"
    case = Case(spec, 8, 4, 4, scenario=Scenario(layout="tokens"))
    torch.manual_seed(3)
    module = build_module(spec, 8, (4, 4), {}, "tokens")
    with instructions.InstructionBatch() as batch:
        batch.add(module, (1, 8, 4, 4), seed=3, build=case)
        batch.add(torch.nn.Linear(2, 2), (1, 2), seed=0, build=None)  # an importable class still travels pickled
        entries = batch._cases
        assert "build" in entries[0] and not Path(entries[0]["path"]).exists()
        assert "build" not in entries[1] and Path(entries[1]["path"]).exists()
        rebuilt = instructions._load(entries[0])
    assert all(
        torch.equal(a, b) for a, b in zip(module.state_dict().values(), rebuilt.state_dict().values(), strict=True)
    )


def test_a_zoo_module_travels_pickled_even_with_its_case() -> None:
    # Counts depend a little on how a module's objects were made: zoo modules travel as the baselines' did.
    import torch

    from attnbench.results import Case
    from attnbench.zoo.build import build_module

    module = build_module("lka", 16, (8, 8))
    with instructions.InstructionBatch() as batch:
        batch.add(module, (1, 16, 8, 8), seed=0, build=Case("lka", 16, 8, 8))
        assert "build" not in batch._cases[0] and Path(batch._cases[0]["path"]).exists()
        assert isinstance(torch.load(batch._cases[0]["path"], weights_only=False), torch.nn.Module)
