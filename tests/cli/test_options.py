"""The shared options and the one request builder: values parsed or refused in one line, outputs checked before
anything runs, and one generated option per Scenario field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from attnbench.cli import options as O
from attnbench.cli.app import app, flags_given_alone
from attnbench.errors import OutputLockedError, UsageError
from attnbench.gate import GateSettings
from attnbench.results import SCENARIO_DEFAULTS, SCENARIO_FIELDS, axes
from attnbench.settings import ALLOCATOR_PROCESSES_ENV, DEFAULT_ALLOCATOR_PROCESSES
from attnbench.store import OutputLock
from attnbench.timing import TimingBudget
from tests.conftest import parse_cli


def request_of(*argv: str) -> O.Request:
    """The Request a `profile` or `compare` command line builds, without running it."""
    params = parse_cli(flags_given_alone(argv))
    scenario = {name: params.pop(name) for name in axes()}
    defaults = O.COMPARE if argv[0] == "compare" else O.PROFILE
    return O.build_request(defaults, {**params, "scenario": scenario})


def scenarios_of(*argv: str) -> list[dict[str, Any]]:
    """Each planned case's scenario fields that are off their defaults."""
    return [case.scenario.changed() for case in request_of(*argv).sweep.cases()]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "hw"), [("56", (56, 56)), ("32x64", (32, 64)), ("32X64", (32, 64)), ("32*64", (32, 64)), (" 8 ", (8, 8))]
)
def test_parse_res(text: str, hw: tuple[int, int]) -> None:
    assert O.parse_res(text) == hw


@pytest.mark.parametrize("text", ["abc", "0", "-4", "4x4x4", "", "4x", "0x8"])
def test_a_bad_resolution_is_refused_naming_it(text: str) -> None:
    with pytest.raises(UsageError, match=f"--res '{text}': expected"):
        O.parse_res(text)


def test_parse_module_kw_splits_shared_and_own_kwargs() -> None:
    shared, own = O.parse_module_kw(
        ["heads=4", "kernels=[3, 5]", "name=abc", "mhsa@heads=2", "models/attn.py:MyAttn@window=7", "p@v2/a.py:A@k=1.5"]
    )
    assert shared == {"heads": 4, "kernels": [3, 5], "name": "abc"}  # literals, a bare word stays a string
    assert own == {"mhsa": {"heads": 2}, "models/attn.py:MyAttn": {"window": 7}, "p@v2/a.py:A": {"k": 1.5}}
    assert O.parse_module_kw([]) == ({}, {})


@pytest.mark.parametrize("item", ["heads", "=4", "@heads=4", "mhsa@=4"])
def test_a_kwarg_that_is_not_key_value_is_refused(item: str) -> None:
    with pytest.raises(UsageError, match=f"--kw '{item}': expected KEY=VALUE for every module or MODULE@KEY=VALUE"):
        O.parse_module_kw([item])


def test_parse_list() -> None:
    assert O.parse_list("params, macs", ("params", "macs", "latency"), "--metrics") == ("params", "macs")
    with pytest.raises(UsageError) as info:
        O.parse_list("params,speed", ("params", "macs"), "--metrics")
    assert str(info.value) == "--metrics 'params,speed': unknown speed; allowed: params, macs"
    with pytest.raises(UsageError, match="--counters ', ': unknown empty list; allowed: attnbench"):
        O.parse_list(", ", ("attnbench",), "--counters")


def test_parse_scenarios_resolves_aliases_and_drops_repeats() -> None:
    got = O.parse_scenarios(
        {
            "dtype": ["bf16", "float32", "bfloat16"],
            "compile": ["off", "on", "OFF"],
            "threads": ["2", "1"],
            "autocast": ["fp16"],
            "mode": None,
            "layout": [],
        }
    )
    assert got == {
        "dtype": ("bfloat16", "float32"),
        "compile": (False, True),
        "threads": (2, 1),
        "autocast": ("float16",),
    }


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        ("dtype", "int8", "--dtype 'int8': allowed: float32, float16, bfloat16"),
        ("threads", "0", "--threads 0: must be an int >= 1"),
        ("threads", "two", "--threads 'two': must be an int >= 1"),
        ("compile", "maybe", "--compile 'maybe': allowed: on, off"),
        ("compile_mode", "fast", "--compile-mode 'fast': allowed: default, reduce-overhead, max-autotune, "),
        ("autocast", "int8", "--autocast 'int8': allowed: off, bfloat16, float16"),
        ("ort_opt_level", "max", "--ort-opt-level 'max': allowed: disable, basic, extended, all"),
    ],
)
def test_a_bad_scenario_value_names_the_option_and_the_allowed_values(field: str, text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        O.parse_scenarios({field: [text]})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# ---------------------------------------------------------------- outputs


def test_check_outputs_accepts_every_format_in_any_case(tmp_path: Path) -> None:
    paths = [tmp_path / n for n in ("a.csv", "b.md", "c.json", "X.CSV", "Y.Md")]
    assert O.check_outputs(paths) == paths
    assert not list(tmp_path.iterdir())  # the writability probe leaves nothing behind


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dir", "is a directory; name a file ending in .csv, .md, .json or .html"),
        ("dir.csv", "is a directory; name a file ending in .csv, .md, .json or .html"),
        ("out.xlsx", "unknown format '.xlsx'; use .csv, .md, .json or .html"),
        ("out", "unknown format '(none)'; use .csv, .md, .json or .html"),
        ("nope/out.csv", "directory {tmp}/nope does not exist"),
    ],
)
def test_check_outputs_refuses_before_measuring(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir.csv").mkdir()
    path = tmp_path / name
    with pytest.raises(UsageError) as info:
        O.check_outputs([path])
    assert str(info.value) == f"output {path}: {message.format(tmp=tmp_path)}"


def test_the_same_output_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="given twice"):
        O.check_outputs([tmp_path / "a.csv", tmp_path / "." / "a.csv"])


def test_an_unwritable_output_is_refused() -> None:
    with pytest.raises(UsageError, match=r"output /proc/attnbench.csv: not writable"):
        O.check_outputs([Path("/proc/attnbench.csv")])


def test_check_plots_dir_makes_nothing_it_does_not_keep(tmp_path: Path) -> None:
    O.check_plots_dir(None)
    O.check_plots_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # tried and removed again
    (tmp_path / "kept").mkdir()
    O.check_plots_dir(tmp_path / "kept")
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match=r"--plots .*file.txt: is a file, expected a directory"):
        O.check_plots_dir(tmp_path / "file.txt")
    with pytest.raises(UsageError, match="--plots /proc/attnbench-plots: cannot create or write this directory"):
        O.check_plots_dir(Path("/proc/attnbench-plots"))


def test_outputs_check_refuses_a_sort_the_run_cannot_have(tmp_path: Path) -> None:
    O.Outputs(sort="latency-ort").check(["cpu", "ort"])
    with pytest.raises(UsageError, match="--sort: cannot sort by 'latency-ort': no ort measurements"):
        O.Outputs(sort="latency-ort").check(["cpu"])
    with pytest.raises(UsageError, match="--sort: cannot sort by 'speed'; allowed: params, macs, module"):
        O.Outputs(sort="speed").check(["cpu"])
    with pytest.raises(UsageError, match="unknown format"):
        O.Outputs(files=(tmp_path / "a.txt",)).check(["cpu"])


def test_outputs_are_locked_while_a_run_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    locked = pytest.raises(OutputLockedError, match=r"another attnbench run \(pid \d+\) is writing it")
    with O.Outputs(files=(path,)).locked(), locked:
        OutputLock(path).acquire()
    again = OutputLock(path)
    again.acquire()  # released at the end of the run
    again.release()
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the request


def test_profile_and_compare_defaults() -> None:
    profile = request_of("profile", "lka")
    assert profile.sweep.dims == (64,) and profile.sweep.resolutions == ((56, 56),)
    assert profile.sweep.backends == ("cpu",) and profile.sweep.batches == (1,)
    assert profile.outputs.sort is None and not profile.outputs.highlight_best
    assert profile.outputs.title == "attnbench profile" and profile.gate is None
    compare = request_of("compare", "lka", "sk")
    assert compare.sweep.modules == ("lka", "sk")
    assert compare.sweep.resolutions == ((14, 14), (28, 28), (56, 56)) and compare.sweep.backends == ("cpu", "ort")
    assert compare.outputs.sort == "macs" and compare.outputs.highlight_best
    assert request_of("compare", "lka", "--sort", "params").outputs.sort == "params"


def test_all_means_every_module_and_names_with_it_are_refused() -> None:
    import attnbench

    assert request_of("compare", "--all").sweep.modules == tuple(attnbench.list_modules())
    with pytest.raises(UsageError, match=r"--all runs every module: drop the module names \(lka\) or --all"):
        request_of("profile", "lka", "--all")
    with pytest.raises(UsageError, match="name at least one module, or pass --all"):
        request_of("profile")


def test_the_sweep_takes_every_value_given() -> None:
    sweep = request_of(
        *"profile lka mhsa lka -d 16 -d 32 -r 8 -r 8x16 -b 1 -b 2 --backend cpu --backend ort --backend cpu".split(),
        *("--kw", "mhsa@heads=4", "--kw", "x=1", "--shard", "2/3"),
    ).sweep
    assert sweep.modules == ("lka", "mhsa")  # each once, in the order given
    assert (sweep.dims, sweep.resolutions, sweep.batches) == ((16, 32), ((8, 8), (8, 16)), (1, 2))
    assert sweep.backends == ("cpu", "ort")
    assert sweep.kwargs == {"x": 1} and sweep.module_kwargs == {"mhsa": {"heads": 4}}
    assert sweep.shard == (2, 3)


def test_run_options_and_the_timing_budget() -> None:
    options = request_of(
        *"profile lka --metrics params,latency --counters attnbench --min-run-time 0.1 --max-run-time 2".split(),
        *"--precision 0.05 --warmup 0.5 --time-limit 30 --force --label".split(),
        " ci  a100 ",
    ).options
    assert options.metrics == ("params", "latency") and options.counters == ("attnbench",)
    assert options.budget == TimingBudget(min_run_time=0.1, max_run_time=2.0, precision=0.05, warmup_s=0.5)
    assert options.time_limit_s == 30 and options.force and options.machine == "ci a100"
    defaults = request_of("profile", "lka").options
    assert defaults.budget == TimingBudget() and defaults.machine is None and not defaults.force


def test_warmup_is_checked_like_the_rest_of_the_budget() -> None:
    assert request_of("profile", "lka", "--warmup", "0").options.budget.warmup_s == 0
    with pytest.raises(UsageError, match=r"--warmup -1\.0: must be >= 0 seconds"):
        request_of("profile", "lka", "--warmup", "-1")


def test_allocator_processes_from_the_option_else_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert request_of("compare", "lka", "--allocator-processes", "5").options.allocator_processes == 5
    monkeypatch.setenv(ALLOCATOR_PROCESSES_ENV, "2")
    assert request_of("profile", "lka").options.allocator_processes == 2
    monkeypatch.delenv(ALLOCATOR_PROCESSES_ENV)
    assert request_of("profile", "lka").options.allocator_processes == DEFAULT_ALLOCATOR_PROCESSES == 3
    with pytest.raises(UsageError, match=r"--allocator-processes -1: must be >= 0 \(0: the pinned state only\)"):
        request_of("profile", "lka", "--allocator-processes", "-1")


def test_outputs_of_the_request() -> None:
    out = request_of("profile", "lka", "-o", "a.csv", "-o", "b.MD", "--plots", "p", "-q", "--breakdown", "--depth", "0")
    assert out.outputs.files == (Path("a.csv"), Path("b.MD")) and out.outputs.plots == Path("p")
    assert out.outputs.quiet and out.outputs.breakdown and out.outputs.depth == 0
    assert request_of("profile", "lka", "--breakdown").outputs.depth == O.BREAKDOWN_DEPTH
    with pytest.raises(UsageError, match="--depth 2: only with --breakdown"):
        request_of("profile", "lka", "--depth", "2")
    with pytest.raises(UsageError, match="--depth -1: must be >= 0"):
        request_of("profile", "lka", "--breakdown", "--depth", "-1")


def test_the_gate_settings_of_compare(tmp_path: Path) -> None:
    base = tmp_path / "base.csv"
    gate = request_of("compare", "lka", "--baseline", str(base), "--tolerance", "0.2", "--strict").gate
    assert gate == GateSettings(base, tolerance=0.2, strict=True)
    assert request_of("compare", "lka").gate is None  # no baseline, no gate
    zero = request_of("compare", "lka", "--baseline", str(base), "--tolerance", "0").gate
    assert zero.tolerance == 0  # gates at zero, not replaced by the default
    with pytest.raises(UsageError, match="--tolerance must be a fraction in"):
        request_of("compare", "lka", "--tolerance", "-1")  # checked even without a baseline
    with pytest.raises(UsageError, match="--gate-metric 'x': allowed: wall, instructions"):
        request_of("compare", "lka", "--gate-metric", "x")


# ---------------------------------------------------------------- the generated scenario options


@pytest.mark.parametrize("command", ["profile", "compare"])
def test_one_generated_option_per_scenario_field(command: str) -> None:
    import attnbench.cli.commands  # noqa: F401  (registers the commands)

    group = typer.main.get_command(app)
    params = {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]
    for name in SCENARIO_FIELDS:
        option = params[name]
        assert option.opts == [axes()[name].option] and option.multiple and option.default is None
        help_text = option.help or ""
        assert help_text.startswith(axes()[name].help) and "repeat to sweep. [default: " in help_text, help_text
        default = SCENARIO_DEFAULTS[name]
        if axes()[name].flag:
            assert help_text.endswith(f"[default: {'on' if default else 'off'}]") and "on or off" in help_text
        elif default != "":  # the layout's default is each module's own, said in words
            assert help_text.endswith(f"[default: {default}]"), help_text
        for choice in axes()[name].choices or ():
            if not isinstance(choice, bool) and choice:
                assert str(choice) in help_text
    assert "scenario" not in params


def test_dtype_aliases() -> None:
    assert scenarios_of("profile", "lka", "--dtype", "fp16", "--dtype", "bf16") == [
        {"dtype": "float16"},
        {"dtype": "bfloat16"},
    ]


def test_autocast_takes_its_dtype_by_name_or_alias() -> None:
    assert scenarios_of("profile", "lka", "--autocast", "bf16") == [{"autocast": "bfloat16"}]
    assert scenarios_of("profile", "lka", "--autocast", "float16") == [{"autocast": "float16"}]


def test_a_compile_mode_without_compile_is_settled_away() -> None:
    assert scenarios_of("profile", "lka", "--compile-mode", "max-autotune") == [{}]
    assert scenarios_of("profile", "lka", "--compile", "--compile-mode", "max-autotune") == [
        {"compile": True, "compile_mode": "max-autotune"}
    ]


def test_compile_off_and_on_sweeps_both() -> None:
    assert request_of("profile", "lka", "--compile", "off", "--compile", "on").sweep.scenarios == {
        "compile": (False, True)
    }
    assert scenarios_of("profile", "lka", "--compile", "off", "--compile", "on") == [{}, {"compile": True}]
    assert scenarios_of("profile", "lka", "--compile") == [{"compile": True}]


def test_channels_last_alone_is_still_a_flag() -> None:
    assert scenarios_of("profile", "lka", "--channels-last") == [{"channels_last": True}]
    assert scenarios_of("profile", "--channels-last", "lka") == [{"channels_last": True}]  # before the module too
    assert scenarios_of("profile", "lka", "--channels-last", "off") == [{}]


def test_ort_opt_level_reaches_the_ort_cases_only() -> None:
    got = scenarios_of("compare", "lka", "-r", "8", "--ort-opt-level", "basic")
    assert got == [{}, {"ort_opt_level": "basic"}]  # cpu ignores it: its case keeps the default
    cases = request_of("compare", "lka", "-r", "8", "--ort-opt-level", "basic").sweep.cases()
    assert [c.backend for c in cases] == ["cpu", "ort"]


def test_threads_and_mode_sweep() -> None:
    got = scenarios_of("profile", "lka", "--threads", "1", "--threads", "2", "--mode", "infer", "--mode", "train")
    assert got == [{}, {"mode": "train"}, {"threads": 2}, {"threads": 2, "mode": "train"}]
