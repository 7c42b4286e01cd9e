"""attnbench.profile: zoo names, specs, classes, factories, instances and dicts of them to kwargs, over scenarios
given as a Scenario or a mapping that sweeps; the rows go to reports, plots and the gate."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import attnbench
from attnbench import api
from attnbench import results as R
from attnbench.errors import UsageError
from attnbench.gate import compare_to_baseline
from attnbench.results import Result, Scenario
from attnbench.runner import Sink
from attnbench.settings import RunOptions
from attnbench.timing import TimingBudget
from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import Setting
from tests.zoo.test_user import gated_flops, gated_macs, gated_params, mlp_macs, mlp_params, write_user_file

COUNTS = RunOptions(metrics=("params", "macs"), counters=("attnbench",))
#: Measured, briefly: latency on a tiny budget (memory is covered by the zoo's tests).
TINY = RunOptions(
    metrics=("params", "macs", "latency"),
    counters=("attnbench",),
    budget=TimingBudget(min_run_time=0.01, max_run_time=0.5, precision=None, warmup_s=0.01),
)
#: Peak memory only: a backend runs every case, without a timing loop.
MEMORY = RunOptions(metrics=("params", "memory"), counters=("attnbench",))


@pytest.fixture
def user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The user's file (tests.zoo.test_user.USER_FILE) at models/attn.py under a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    return write_user_file(tmp_path)


class Scale(nn.Module):
    """y = w * x with one weight per channel: C params, and one MAC per element (a tensor-by-tensor product)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w.expand_as(x)


class Gain(nn.Module):
    """y = g * x with `group` gains shared by channel groups: `group` params, one MAC per element."""

    def __init__(self, dim: int, group: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.g = nn.Parameter(torch.ones(group))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.g.repeat_interleave(self.dim // len(self.g)).view(1, -1, 1, 1)


def make_scale(dim: int) -> Scale:
    """A factory function: profile() calls it as make_scale(dim)."""
    return Scale(dim)


# ---------------------------------------------------------------- exact counts, both layouts, cpu and ort


@pytest.mark.parametrize(("dim", "res", "batch", "k"), [(16, (8, 8), 1, 3), (24, (8, 12), 2, 5)])
def test_image_module_counts_match_hand_formula(user_file: str, dim: int, res: tuple, batch: int, k: int) -> None:
    (row,) = attnbench.profile(f"{user_file}:GatedConv", dim, res, batch, kwargs={"kernel": k}, options=COUNTS)
    assert row.ok, row.reason
    assert (row.module, row.scenario.layout) == ("models/attn.py:GatedConv", "image")
    assert row.params == gated_params(dim, k)
    assert row.macs_attnbench == gated_macs(batch, dim, *res, k)
    assert row.flops_attnbench == gated_flops(batch, dim, *res, k)
    assert row.macs_formula is None  # no hand formula is claimed for a user's module


@pytest.mark.parametrize(("dim", "res", "batch", "hidden"), [(16, (8, 8), 1, 2), (32, (4, 8), 2, 3)])
def test_token_module_counts_match_hand_formula(user_file: str, dim: int, res: tuple, batch: int, hidden: int) -> None:
    spec, tokens = f"{user_file}:TokenMLP", {"layout": "tokens"}
    (row,) = attnbench.profile(spec, dim, res, batch, scenario=tokens, kwargs={"hidden": hidden}, options=COUNTS)
    assert row.ok, row.reason
    assert row.scenario.layout == "tokens"
    assert row.params == mlp_params(dim, hidden)
    assert row.macs_attnbench == mlp_macs(batch, dim, *res, hidden)


@pytest.mark.onnx
def test_user_modules_are_measured_on_cpu_and_ort(user_file: str) -> None:
    rows = attnbench.profile(
        {f"{user_file}:GatedConv": {}, f"{user_file}:TokenMLP": {"hidden": 2}},
        16,
        8,
        backend=["cpu", "ort"],
        options=TINY,
    )
    by = {(r.module, r.backend): r for r in rows}
    # TokenMLP takes tokens: in the image layout its first Linear meets W = 8 features, not C = 16, so it fails
    # with a reason that names the layout, while GatedConv is measured on both backends.
    for backend in ("cpu", "ort"):
        gated = by[("models/attn.py:GatedConv", backend)]
        assert gated.ok, gated.reason
        assert gated.params == gated_params(16, 3) and gated.macs_attnbench == gated_macs(1, 16, 8, 8, 3)
        assert gated.latency_median_s and gated.latency_median_s > 0
        mlp = by[("models/attn.py:TokenMLP", backend)]
        assert mlp.status == R.FAILED
        assert "layout image" in mlp.reason and "it runs with --layout tokens" in mlp.reason
    assert by[("models/attn.py:GatedConv", "ort")].parity_max_abs is not None
    assert by[("models/attn.py:GatedConv", "ort")].parity_max_abs < 1e-4


@pytest.mark.onnx
def test_token_module_exports_to_ort_through_the_adapter(user_file: str) -> None:
    rows = attnbench.profile(
        f"{user_file}:TokenMLP", 16, (4, 8), backend=["cpu", "ort"], scenario={"layout": "tokens"}, options=TINY
    )
    assert [r.status for r in rows] == [R.OK, R.OK], [r.reason for r in rows]
    ort = rows[1]
    assert ort.exporter and ort.parity_max_abs is not None and ort.parity_max_abs < 1e-4
    assert ort.macs_attnbench == mlp_macs(1, 16, 4, 8, 2)


def test_factory_function_is_called_with_dim_and_kwargs(user_file: str) -> None:
    (row,) = attnbench.profile(f"{user_file}:make_gate", 16, 8, kwargs={"kernel": 7}, options=COUNTS)
    assert row.params == gated_params(16, 7)
    (row,) = attnbench.profile(make_scale, 16, 8, options=COUNTS)
    assert (row.module, row.params) == ("tests.test_api:make_scale", 16)


def test_zoo_rows_carry_the_hash_of_their_module_file() -> None:
    import attnbench.zoo.modules.van_lka as van_lka

    (row,) = attnbench.profile("lka", 16, 8, options=COUNTS)
    assert row.source_hash == hashlib.sha256(Path(van_lka.__file__).read_bytes()).hexdigest()[:12]


def test_token_layout_failure_suggests_image(user_file: str) -> None:
    (row,) = attnbench.profile(f"{user_file}:GatedConv", 16, 8, scenario={"layout": "tokens"}, options=COUNTS)
    assert row.status == R.FAILED
    assert "layout tokens" in row.reason and "it got (1, 64, 16)" in row.reason and "--layout image" in row.reason


def test_constructor_refusing_one_dim_of_several_gives_an_invalid_row(user_file: str, tmp_path: Path) -> None:
    Path(tmp_path / "models" / "heads.py").write_text(
        "import torch\nclass H(torch.nn.Module):\n    def __init__(self, dim, heads=4):\n        super().__init__()\n"
        "        if dim % heads:\n            raise ValueError(f'dim {dim} % heads {heads} != 0')\n"
        "    def forward(self, x):\n        return x\n"
    )
    rows = attnbench.profile("models/heads.py:H", [16, 18], 8, options=COUNTS)
    assert [(r.dim, r.status) for r in rows] == [(16, R.OK), (18, R.INVALID)]
    assert "H(18) raised ValueError: dim 18 % heads 4 != 0" in rows[1].reason


# ---------------------------------------------------------------- classes, instances, dicts of modules


def test_api_takes_a_class_and_names_it_by_import_path() -> None:
    (row,) = attnbench.profile(Scale, 16, 8, options=COUNTS)
    assert row.module == "tests.test_api:Scale"
    assert (row.params, row.macs_attnbench) == (16, 16 * 8 * 8)
    assert get_spec("tests.test_api:Scale").factory is Scale


def test_api_measures_an_instance_as_built() -> None:
    module = Scale(16)
    rows = attnbench.profile([module, "lka"], 16, [8, 16], options=COUNTS)
    assert [r.module for r in rows] == ["tests.test_api:Scale (instance)"] * 2 + ["lka"] * 2
    assert [r.macs_attnbench for r in rows[:2]] == [16 * 64, 16 * 256]
    two = attnbench.profile([Scale(16), Scale(16)], 16, 8, options=COUNTS)
    assert [r.module for r in two] == ["tests.test_api:Scale (instance)", "tests.test_api:Scale (instance 2)"]


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        ({}, "pass dim="),
        ({"dim": [16, 32]}, "one value"),
        ({"dim": 16, "kwargs": {"heads": 4}}, "already built"),
    ],
)
def test_api_refuses_what_contradicts_an_instance(call: dict, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        attnbench.profile(Scale(16), res=8, options=COUNTS, **call)


def test_api_refuses_kwargs_given_to_an_instance_in_a_dict() -> None:
    with pytest.raises(UsageError, match=r"already built, so constructor kwargs \(group\) cannot apply"):
        attnbench.profile({Scale(16): {"group": 2}}, 16, 8, options=COUNTS)


def test_api_instance_with_the_wrong_dim_is_a_failed_row() -> None:
    (row,) = attnbench.profile(Scale(16), 32, 8, options=COUNTS)
    assert row.status == R.FAILED and "layout image" in row.reason


def test_a_dict_gives_each_module_its_own_kwargs(user_file: str) -> None:
    rows = attnbench.profile(
        {Gain: {"group": 4}, f"{user_file}:GatedConv": {"kernel": 5}, "mhsa": {"heads": 2}, Scale: {}},
        16,
        8,
        options=COUNTS,
    )
    by = {r.module: r for r in rows}
    assert list(by) == ["tests.test_api:Gain", "models/attn.py:GatedConv", "mhsa", "tests.test_api:Scale"]
    assert (by["tests.test_api:Gain"].params, by["tests.test_api:Gain"].kwargs) == (4, '{"group": 4}')
    assert by["models/attn.py:GatedConv"].params == gated_params(16, 5)
    assert by["mhsa"].kwargs == '{"heads": 2}' and by["mhsa"].macs_attnbench == by["mhsa"].macs_formula
    assert (by["tests.test_api:Scale"].params, by["tests.test_api:Scale"].kwargs) == (16, "")


def test_shared_kwargs_go_to_every_module_and_a_dicts_own_ones_win() -> None:
    rows = attnbench.profile({Gain: {"group": 8}, "sk": {}}, 16, 8, kwargs={"group": 2}, options=COUNTS)
    assert [(r.module, r.kwargs) for r in rows] == [
        ("tests.test_api:Gain", '{"group": 8}'),
        ("sk", '{"group": 2}'),
    ]
    assert rows[0].params == 8
    assert rows[1].params == get_spec("sk").params_formula(Setting(16, {**get_spec("sk").defaults, "group": 2}))


# ---------------------------------------------------------------- scenarios


def test_a_scenario_mapping_with_a_list_sweeps_two_rows_per_case() -> None:
    rows = attnbench.profile("lka", 16, [8, 16], scenario={"dtype": ["float32", "bfloat16"]}, options=MEMORY)
    assert [(r.height, r.scenario.dtype, r.status) for r in rows] == [
        (8, "float32", R.OK),
        (8, "bfloat16", R.OK),
        (16, "float32", R.OK),
        (16, "bfloat16", R.OK),
    ]
    assert {r.params for r in rows} == {get_spec("lka").params_formula(_setting("lka", 16))}
    # The dtype reached the module: bfloat16 activations take less memory than float32 ones.
    for f32, bf16 in (rows[0:2], rows[2:4]):
        assert bf16.peak_mem_bytes is not None and f32.peak_mem_bytes is not None
        assert bf16.peak_mem_bytes < f32.peak_mem_bytes


def _setting(name: str, dim: int) -> Setting:
    """The spec's Setting for a module at `dim` with its default kwargs."""
    return Setting(dim, dict(get_spec(name).defaults))


def test_a_scenario_object_applies_its_fields() -> None:
    (row,) = attnbench.profile("lka", 16, 8, scenario=Scenario(dtype="bfloat16", mode="train"), options=COUNTS)
    assert (row.scenario.dtype, row.scenario.mode, row.backend) == ("bfloat16", "train", R.NO_BACKEND)


def test_sweep_of_turns_values_into_the_sweep_the_cli_would_build() -> None:
    sweep = api.sweep_of(
        ["lka", Scale],
        [16, 32],
        [8, (8, 16)],
        [1, 2],
        ["cpu", "ort", "cpu"],
        {"layout": "tokens", "dtype": ["float32", "bfloat16"]},
        {"k": 1},
    )
    assert sweep.modules == ("lka", "tests.test_api:Scale")
    assert (sweep.dims, sweep.resolutions, sweep.batches, sweep.backends) == (
        (16, 32),
        ((8, 8), (8, 16)),
        (1, 2),
        ("cpu", "ort"),
    )
    assert sweep.scenarios == {"layout": ("tokens",), "dtype": ("float32", "bfloat16")}
    assert sweep.kwargs == {"k": 1} and sweep.module_kwargs == {}
    one = api.sweep_of("lka", None, (8, 16), 1, "cpu", Scenario(threads=2, compile_mode="reduce-overhead"), None)
    assert (one.dims, one.resolutions) == ((api.DEFAULT_DIM,), ((8, 16),))
    assert one.scenarios == {"threads": (2,), "compile_mode": ("reduce-overhead",)}
    assert api.sweep_of("lka", 16, 8, 1, "cpu", None, None).scenarios == {}


def test_bad_scenario_values_are_refused_before_anything_runs() -> None:
    with pytest.raises(UsageError, match="--dtype 'float64'"):
        attnbench.profile("lka", 16, 8, scenario={"dtype": ["float32", "float64"]}, options=COUNTS)
    with pytest.raises(UsageError, match="'speed' is not a scenario field"):
        attnbench.profile("lka", 16, 8, scenario={"speed": 2}, options=COUNTS)


def test_profile_outcome_streams_rows_to_a_sink_and_records_the_environment() -> None:
    class Collect(Sink):
        """Keeps what the run reports."""

        def __init__(self) -> None:
            self.started: list[str] = []
            self.rows: list[Result] = []
            self.finished = False

        def start(self, env: Any, cases: Any) -> None:
            self.started = [c.label for c in cases]

        def row(self, row: Result) -> None:
            self.rows.append(row)

        def finish(self, outcome: Any) -> None:
            self.finished = True

    sink = Collect()
    sweep = api.sweep_of("lka", 16, [8, 16], 1, "cpu", {"mode": ["infer", "train"]}, None)
    outcome = api.profile_outcome(sweep, COUNTS, sink)
    assert sink.started == [
        "lka C=16 8x8 B=1 cpu",
        "lka C=16 8x8 B=1 cpu train",
        "lka C=16 16x16 B=1 cpu",
        "lka C=16 16x16 B=1 cpu train",
    ]
    assert sink.rows == outcome.results and sink.finished and not outcome.interrupted
    assert [(r.height, r.scenario.mode) for r in outcome.results] == [
        (8, "infer"),
        (8, "train"),
        (16, "infer"),
        (16, "train"),
    ]
    assert outcome.env["sweep"] == sweep.record() and outcome.env["machine"]
    assert {r.machine for r in outcome.results} == {outcome.env["machine"]}


def test_profile_outcome_raises_keyboard_interrupt_when_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.runner import RunOutcome

    monkeypatch.setattr(api, "run_sweep", lambda *a: RunOutcome(interrupted=True))
    with pytest.raises(KeyboardInterrupt):
        api.profile_outcome(api.sweep_of("lka", 16, 8, 1, "cpu", None, None), COUNTS)


# ---------------------------------------------------------------- where the rows go


def test_api_rows_go_to_reports_plots_and_the_gate(tmp_path: Path) -> None:
    rows = attnbench.profile([Scale, "lka"], 16, [8, 16], options=COUNTS)
    attnbench.report.write(rows, {}, [tmp_path / "r.md", tmp_path / "r.csv", tmp_path / "r.json"])
    assert "tests.test_api:Scale" in (tmp_path / "r.md").read_text()
    loaded = attnbench.load_results(tmp_path / "r.json")
    assert loaded.results == rows
    assert [p.name for p in attnbench.plot_scaling(rows, tmp_path / "plots")] == ["macs.png"]
    verdict = attnbench.compare_to_baseline(rows, tmp_path / "r.csv", env={})
    assert verdict.passed and verdict.compared_cases == 4


def test_gate_mentions_a_changed_source_hash_without_failing() -> None:
    rows = attnbench.profile([Scale, "lka"], 16, 8, options=COUNTS)
    base = [replace(r, source_hash="0" * 12) if r.module == "lka" else r for r in rows]
    verdict = compare_to_baseline(rows, base, env={})
    (change,) = verdict.changes
    assert (change.case, change.kind, change.failing) == ("lka", "source", False)
    assert verdict.passed
    # A count change still fails, whatever the hash says.
    changed = [replace(r, params=r.params + 1) for r in base]
    assert not compare_to_baseline(rows, changed, env={}).passed


def test_public_api_names() -> None:
    for name in ("profile", "Result", "Case", "Sweep", "RunOptions", "report", "plot_scaling", "compare_to_baseline"):
        assert name in attnbench.__all__ and getattr(attnbench, name) is not None
    for name in ("Scenario", "TimingBudget", "run_sweep", "Sink", "GateSettings", "load_results", "validate"):
        assert name in attnbench.__all__ and getattr(attnbench, name) is not None
    assert attnbench.profile is api.profile
    assert attnbench.Scenario is Scenario
