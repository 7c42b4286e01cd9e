"""RunOptions (attnbench.settings): its defaults, what it measures, and check() refusing what no run could use."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attnbench import settings
from attnbench.cache import CACHE_ENV
from attnbench.errors import UsageError
from attnbench.settings import COUNTERS, DEFAULT_METRICS, MEASURED_METRICS, METRICS, RunOptions
from attnbench.timing import TimingBudget


def test_defaults_are_the_named_constants() -> None:
    options = RunOptions()
    assert options.metrics == DEFAULT_METRICS == ("params", "macs", "memory", "latency")
    assert options.counters == COUNTERS == ("attnbench", "fvcore", "thop")
    assert options.budget == TimingBudget() and options.time_limit_s is None and options.force is False
    assert options.seed == settings.DEFAULT_SEED == 0 and options.machine is None
    assert settings.DEFAULT_THREADS == 1
    # Instruction counts cost a valgrind pass: asked for, never by default.
    assert set(DEFAULT_METRICS) == set(METRICS) - {"instructions"}
    assert set(MEASURED_METRICS) <= set(METRICS)
    options.check()


def test_the_cache_directory_is_read_when_the_options_are_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "one"))
    first = RunOptions()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "two"))
    assert (first.cache_dir, RunOptions().cache_dir) == (tmp_path / "one", tmp_path / "two")
    assert RunOptions(cache_dir=None).cache_dir is None  # no cache
    assert RunOptions().without_instructions().cache_dir == tmp_path / "two"


@pytest.mark.parametrize(
    ("metrics", "measures"),
    [
        (("params", "macs"), False),
        (("params",), False),
        (("memory",), True),
        (("latency",), True),
        (("params", "instructions"), True),
    ],
)
def test_measures_when_a_backend_has_to_run_the_module(metrics: tuple[str, ...], measures: bool) -> None:
    assert RunOptions(metrics=metrics).measures is measures


def test_without_instructions_keeps_everything_else() -> None:
    options = RunOptions(
        metrics=("params", "instructions", "latency"), budget=TimingBudget(min_run_time=1.0), seed=3, force=True
    )
    again = options.without_instructions()
    assert again == dataclasses.replace(options, metrics=("params", "latency"))
    assert RunOptions().without_instructions() == RunOptions()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            RunOptions(metrics=("params", "flops")),
            "--metrics 'params,flops': unknown flops; allowed: params, macs, memory, latency, instructions",
        ),
        (RunOptions(metrics=()), "--metrics '': unknown empty list; allowed: params, macs, memory, latency"),
        (RunOptions(counters=("ptflops",)), "--counters 'ptflops': unknown ptflops; allowed: attnbench, fvcore, thop"),
        (RunOptions(counters=()), "--counters '': unknown empty list; allowed: attnbench, fvcore, thop"),
        (RunOptions(budget=TimingBudget(precision=2.0)), "--precision 2.0: must be a fraction in (0, 1)"),
        (RunOptions(budget=TimingBudget(max_run_time=-1.0)), "--max-run-time -1.0: must be > 0 seconds"),
        (RunOptions(time_limit_s=0.0), "--time-limit 0.0: must be > 0 seconds"),
        (RunOptions(time_limit_s=-5.0), "--time-limit -5.0: must be > 0 seconds"),
        (RunOptions(machine="  "), "--label must not be empty"),
    ],
    ids=["metric", "no-metrics", "counter", "no-counters", "precision", "max-run-time", "limit-0", "limit<0", "label"],
)
def test_check_refuses_with_the_option_named(options: RunOptions, message: str) -> None:
    with pytest.raises(UsageError) as info:
        options.check()
    assert str(info.value).startswith(message)


def test_check_accepts_every_known_value() -> None:
    RunOptions(metrics=METRICS, counters=("thop",), time_limit_s=0.5, machine="ci box").check()
