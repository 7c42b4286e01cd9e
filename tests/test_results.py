"""The records every run speaks: Scenario and its Axes, Case, Result, and the flat columns files and frames hold."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from attnbench import results as R
from attnbench.results import Case, Result, Scenario

#: The flat columns of schema 2 as attnbench 0.1 wrote them (before compile_mode, autocast, ort_opt_level, tf32 and
#: latency_launch_bound).
SCHEMA_2_COLUMNS = (
    "module", "dim", "height", "width", "batch", "backend", "dtype", "threads", "kwargs", "mode", "channels_last",
    "compile", "layout", "allocator", "status", "reason", "machine", "source_hash", "params", "macs_attnbench",
    "macs_fvcore", "macs_thop", "macs_formula", "flops_attnbench", "uncounted_attnbench", "uncounted_fvcore",
    "counter_notes", "latency_median_s", "latency_iqr_s", "latency_p10_s", "latency_min_s", "latency_calls",
    "latency_noisy", "latency_contended", "latency_ci_rel", "throughput_per_s", "minor_faults_per_call",
    "other_allocator_latency_s", "other_allocator_faults_per_call", "system_allocator_slowdown",
    "system_allocator_slower", "compile_s", "instructions", "peak_mem_bytes", "peak_mem_method",
    "reserved_mem_bytes", "parity_max_abs", "exporter", "seconds", "extra",
)  # fmt: skip
FIELDS = (
    "dtype", "threads", "mode", "channels_last", "compile", "layout", "allocator", "compile_mode", "autocast",
    "ort_opt_level", "tf32",
)  # fmt: skip
#: What came after schema 2: scenario fields (after allocator) and row columns (beside their kin).
NEW_COLUMNS = ("compile_mode", "autocast", "ort_opt_level", "tf32")


# ---------------------------------------------------------------- Scenario and its axes


def test_scenario_fields_and_defaults_in_order() -> None:
    assert R.SCENARIO_FIELDS == FIELDS
    assert list(R.axes()) == list(FIELDS)
    assert R.SCENARIO_DEFAULTS == {
        "dtype": "float32",
        "threads": 1,
        "mode": "infer",
        "channels_last": False,
        "compile": False,
        "layout": "",
        "allocator": "pinned",
        "compile_mode": "default",
        "autocast": "off",
        "ort_opt_level": "all",
        "tf32": False,
    }
    assert dataclasses.asdict(Scenario()) == R.SCENARIO_DEFAULTS


@pytest.mark.parametrize("name", FIELDS)
def test_every_field_has_an_axis_with_option_help_and_header(name: str) -> None:
    axis = R.axis(name)
    assert axis.option == "--" + name.replace("_", "-")
    assert axis.help.strip() and axis.header.strip()
    assert axis.check(R.SCENARIO_DEFAULTS[name]) is None  # the default is one of its values
    assert R.axes()[name] is axis


def test_vocabulary_is_the_axes_choices() -> None:
    assert R.axis("dtype").choices == R.DTYPES == ("float32", "float16", "bfloat16")
    assert R.axis("mode").choices == R.MODES == ("infer", "train")
    assert R.axis("allocator").choices == R.ALLOCATORS == ("pinned", "system", "jemalloc", "tcmalloc")
    assert R.axis("layout").choices == ("", *R.USER_LAYOUTS) == ("", "image", "tokens", "tokens-hw")
    assert R.TOKEN_LAYOUTS == ("tokens", "tokens-hw")
    assert R.axis("compile_mode").choices == R.COMPILE_MODES
    assert R.axis("autocast").choices == R.AUTOCAST == ("off", "bfloat16", "float16")
    assert R.axis("ort_opt_level").choices == R.ORT_OPT_LEVELS == ("disable", "basic", "extended", "all")
    assert R.axis("threads").choices is None
    assert R.DEFAULT_USER_LAYOUT == "image" and R.NO_BACKEND == "none"
    assert R.REFUSED == (R.INVALID, R.SKIPPED, R.GUARDED)
    assert [name for name, axis in R.axes().items() if axis.flag] == ["channels_last", "compile", "tf32"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dtype": "float64"}, "--dtype 'float64': allowed: float32, float16, bfloat16"),
        ({"dtype": "bf16"}, "--dtype 'bf16': allowed"),  # aliases are for the command line, not the record
        ({"threads": 0}, "--threads 0: must be an int >= 1"),
        ({"threads": True}, "--threads True: must be an int >= 1"),
        ({"threads": 2.0}, "--threads 2.0: must be an int >= 1"),
        ({"mode": "eval"}, "--mode 'eval': allowed: infer, train"),
        ({"channels_last": 1}, "--channels-last 1: allowed: False, True"),
        ({"compile": "on"}, "--compile 'on': allowed"),
        ({"layout": "nchw"}, "--layout 'nchw': allowed: , image, tokens"),
        ({"allocator": "mimalloc"}, "--allocator 'mimalloc': allowed: pinned, system, jemalloc, tcmalloc"),
        ({"compile_mode": "fast"}, "--compile-mode 'fast': allowed: default, reduce-overhead"),
        ({"autocast": "float32"}, "--autocast 'float32': allowed: off, bfloat16, float16"),
        ({"ort_opt_level": "max"}, "--ort-opt-level 'max': allowed: disable, basic, extended, all"),
    ],
)
def test_scenario_refuses_values_outside_its_axes(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Scenario(**values)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("dtype", "bfloat16", "bfloat16"),
        ("dtype", "bf16", "bfloat16"),
        ("dtype", "FP16", "float16"),
        ("dtype", "half", "float16"),
        ("dtype", " fp32 ", "float32"),
        ("threads", "4", 4),
        ("threads", " 2 ", 2),
        ("channels_last", "on", True),
        ("channels_last", "OFF", False),
        ("compile", "yes", True),
        ("compile", "0", False),
        ("autocast", "bf16", "bfloat16"),
        ("compile_mode", "max-autotune", "max-autotune"),
        ("ort_opt_level", "basic", "basic"),
    ],
)
def test_axis_parses_command_line_text(name: str, text: str, value: Any) -> None:
    parsed = R.axis(name).parse(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("threads", "0", "--threads 0: must be an int >= 1"),
        ("threads", "-2", "--threads -2: must be an int >= 1"),
        ("threads", "two", "--threads 'two': must be an int >= 1"),
        ("dtype", "int8", "--dtype 'int8': allowed: float32, float16, bfloat16"),
        ("compile", "maybe", "--compile 'maybe': allowed: on, off"),
        ("mode", "eval", "--mode 'eval': allowed: infer, train"),
    ],
)
def test_axis_refuses_text_naming_the_allowed_values(name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        R.axis(name).parse(text)
    assert str(info.value) == message


def test_axis_check_is_strict_about_types() -> None:
    assert R.axis("threads").check(3) is None
    assert R.axis("threads").check(False) == "--threads False: must be an int >= 1"
    assert R.axis("compile").check(True) is None
    assert R.axis("compile").check(1) == "--compile 1: allowed: False, True"
    assert R.axis("dtype").check("float16") is None


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("dtype", "float32", "float32"),
        ("dtype", "bfloat16", "bfloat16"),
        ("threads", 1, "1 thread"),
        ("threads", 4, "4 threads"),
        ("mode", "infer", "inference"),
        ("mode", "train", "training (forward + backward)"),
        ("channels_last", False, "contiguous"),
        ("channels_last", True, "channels_last"),
        ("compile", False, "eager"),
        ("compile", True, "torch.compile"),
        ("layout", "tokens", ""),
        ("allocator", "pinned", "pinned allocator"),
        ("allocator", "system", "system allocator"),
        ("compile_mode", "default", ""),
        ("compile_mode", "reduce-overhead", "compile mode reduce-overhead"),
        ("autocast", "off", ""),
        ("autocast", "float16", "autocast float16"),
        ("ort_opt_level", "all", ""),
        ("ort_opt_level", "disable", "ORT graph optimisation disable"),
    ],
)
def test_axis_says_each_value_in_the_scenario_line(name: str, value: Any, said: str) -> None:
    assert R.axis(name).say(value) == said


@pytest.mark.parametrize(
    ("scenario", "label"),
    [
        (Scenario(), ""),
        (Scenario(dtype="bfloat16", threads=2, mode="train"), " bfloat16 t=2 train"),
        (Scenario(channels_last=True), " channels_last"),
        (Scenario(compile=True), " compiled"),
        (Scenario(layout="tokens"), " layout=tokens"),
        (Scenario(allocator="system"), " allocator=system"),
        (Scenario(compile=True, compile_mode="max-autotune"), " compiled compile_mode=max-autotune"),
        (Scenario(autocast="bfloat16"), " autocast=bfloat16"),
        (Scenario(ort_opt_level="basic"), " ort_opt=basic"),
        (Scenario(ort_opt_level="disable", dtype="float16", threads=4), " float16 t=4 ort_opt=disable"),
    ],
)
def test_label_shows_the_fields_off_their_defaults_in_field_order(scenario: Scenario, label: str) -> None:
    assert scenario.label() == label


def test_changed_lists_fields_off_their_defaults_in_field_order() -> None:
    scenario = Scenario(ort_opt_level="basic", mode="train", dtype="float16")
    assert list(scenario.changed().items()) == [("dtype", "float16"), ("mode", "train"), ("ort_opt_level", "basic")]
    assert Scenario().changed() == {}


def test_settled_puts_compile_mode_back_when_compile_is_off() -> None:
    idle = Scenario(compile_mode="max-autotune", dtype="bfloat16")
    assert idle.settled() == Scenario(dtype="bfloat16")
    assert idle.settled().compile_mode == "default"
    on = Scenario(compile=True, compile_mode="max-autotune")
    assert on.settled() is on  # nothing idle: the same object
    assert Scenario().settled() == Scenario()


def test_scenario_is_frozen_and_hashable() -> None:
    scenario = Scenario(dtype="float16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.dtype = "float32"  # type: ignore[misc]
    assert len({scenario, Scenario(dtype="float16"), Scenario()}) == 2


# ---------------------------------------------------------------- Case


def test_case_defaults_and_shapes() -> None:
    case = Case("mhsa", 64, 14, 28)
    assert (case.batch, case.backend, case.kwargs, case.scenario) == (1, "cpu", (), Scenario())
    case = Case("mhsa", 64, 14, 28, 2, kwargs=(("heads", 4),))
    assert case.input_shape == (2, 64, 14, 28)
    assert case.tokens == 14 * 28
    assert case.kwargs_dict == {"heads": 4}
    assert case.geometry == ("mhsa", 64, 14, 28, 2, (("heads", 4),), "")


def test_case_takes_the_scenario_whole() -> None:
    with pytest.raises(TypeError, match="dtype"):
        Case("lka", 64, 8, 8, dtype="float16")  # type: ignore[call-arg]
    case = Case("lka", 64, 8, 8, scenario=Scenario(dtype="float16"))
    assert case.scenario.dtype == "float16"
    # The layout decides what is built: two layouts are two geometries; a dtype or a backend is not.
    tokens = dataclasses.replace(case, scenario=Scenario(layout="tokens"))
    assert tokens.geometry != case.geometry
    assert dataclasses.replace(case, backend="ort", scenario=Scenario()).geometry == case.geometry


def test_case_label() -> None:
    case = Case("sk", 64, 28, 28, 1, "cpu", (("kernels", (3, 5)),), Scenario(dtype="bfloat16", threads=2))
    assert case.label == 'sk C=64 28x28 B=1 cpu bfloat16 t=2 {"kernels": [3, 5]}'
    assert Case("lka", 16, 8, 12, 2, "ort").label == "lka C=16 8x12 B=2 ort"


def test_frozen_kwargs_are_sorted_hashable_tuples() -> None:
    assert R.frozen([1, [2, (3, [4])]]) == (1, (2, (3, (4,))))
    assert R.frozen("abc") == "abc"
    assert R.frozen_kwargs({"b": [3, 5], "a": 1}) == (("a", 1), ("b", (3, 5)))
    assert R.frozen_kwargs(None) == ()
    hash(R.frozen_kwargs({"k": [[1, 2], [3]]}))


def test_kwargs_text_is_sorted_json() -> None:
    assert R.kwargs_text({"b": 2, "a": [3, 5]}) == '{"a": [3, 5], "b": 2}'
    assert R.kwargs_text((("heads", 4),)) == '{"heads": 4}'
    assert R.kwargs_text({}) == ""


# ---------------------------------------------------------------- Result


def test_case_of_a_row_is_the_case_it_measured() -> None:
    case = Case("sk", 64, 14, 28, 2, "ort", kwargs=(("kernels", (3, 5)),), scenario=Scenario(threads=2, mode="train"))
    assert Result.for_case(case).case == case


def test_for_case_carries_identity_kwargs_and_scenario() -> None:
    scenario = Scenario(dtype="bfloat16", ort_opt_level="basic")
    case = Case("mhsa", 64, 14, 28, 2, "ort", (("heads", 4),), scenario)
    row = Result.for_case(case, params=16640, status=R.FAILED, reason="x")
    assert (row.module, row.dim, row.height, row.width, row.batch, row.backend) == ("mhsa", 64, 14, 28, 2, "ort")
    assert row.kwargs == '{"heads": 4}'
    assert row.scenario is scenario and row.scenario.dtype == "bfloat16"
    assert (row.params, row.status, row.reason, row.ok) == (16640, R.FAILED, "x", False)
    assert Result.for_case(case).ok
    assert row.label == case.label == 'mhsa C=64 14x28 B=2 ort bfloat16 ort_opt=basic {"heads": 4}'


def test_key_tells_rows_of_other_cases_apart_and_ignores_values() -> None:
    case = Case("lka", 64, 8, 8)
    row = Result.for_case(case, params=1, latency_median_s=1e-3)
    assert row.key == Result.for_case(case, params=2).key
    assert row.key == ("lka", 64, 8, 8, 1, "cpu", "", Scenario())
    others = [
        dataclasses.replace(case, scenario=Scenario(compile_mode="reduce-overhead")),
        dataclasses.replace(case, scenario=Scenario(autocast="float16")),
        dataclasses.replace(case, backend="ort"),
        dataclasses.replace(case, kwargs=(("kernel", 5),)),
    ]
    keys = {Result.for_case(c).key for c in [case, *others]}
    assert len(keys) == 5


def test_extra_dict() -> None:
    assert Result.for_case(Case("lka", 64, 8, 8), extra='{"seed": 0}').extra_dict == {"seed": 0}
    assert Result.for_case(Case("lka", 64, 8, 8)).extra_dict == {}


# ---------------------------------------------------------------- flat columns


#: The metric columns added since schema 2, in their order.
NEW_METRIC_COLUMNS = (
    "latency_p90_s",
    "latency_p99_s",
    "latency_first_s",
    "latency_ratio",
    "latency_ratio_lo",
    "latency_ratio_hi",
    "latency_ratio_wide",
    "ratio_reference",
    "ratio_rounds",
    "latency_launch_bound",
    "system_processes",
    "system_latency_lo_s",
    "system_latency_hi_s",
    "system_faults_lo_per_call",
    "system_faults_hi_per_call",
)

#: Columns added since schema 2 after the count columns: where each counter ran and for how long, the build, the
#: output shapes (issue 21).
COUNTING_COLUMNS = (
    "counted_on_attnbench", "counted_on_fvcore", "counted_on_thop", "count_s_attnbench", "count_s_fvcore",
    "count_s_thop", "built_on", "build_s", "output_shapes", "output_differs",
)  # fmt: skip


def test_columns_keep_schema_2_order_with_new_scenario_fields_after_allocator() -> None:
    at = R.COLUMNS.index("allocator")
    assert R.COLUMNS[at + 1 : at + 5] == ("compile_mode", "autocast", "ort_opt_level", "tf32")
    new = (*NEW_COLUMNS, *COUNTING_COLUMNS, *NEW_METRIC_COLUMNS)
    assert tuple(c for c in R.COLUMNS if c not in new) == SCHEMA_2_COLUMNS
    # The count columns follow the counts (issue 21); the timing and allocator columns added since schema 2 come
    # last (issue 23).
    at = R.COLUMNS.index("counter_notes")
    assert R.COLUMNS[at + 1 : at + 1 + len(COUNTING_COLUMNS)] == COUNTING_COLUMNS
    assert R.COLUMNS[-len(NEW_METRIC_COLUMNS) :] == NEW_METRIC_COLUMNS
    assert set(R.SCENARIO_FIELDS) <= set(R.COLUMNS) and "scenario" not in R.COLUMNS
    assert len(R.COLUMNS) == len(set(R.COLUMNS))
    assert R.COLUMNS[:6] == R.IDENTITY_FIELDS
    assert set(R.REQUIRED_COLUMNS) <= set(R.COLUMNS)


def _full_row() -> Result:
    """A row with every scenario field off its default and values of every column type."""
    scenario = Scenario(
        "bfloat16", 2, "train", True, True, "tokens", "system", "max-autotune", "float16", "basic", True
    )
    case = Case("models/attn.py:A", 32, 8, 16, 2, "ort", (("k", 3),), scenario)
    return Result.for_case(case, params=123456789012, latency_median_s=1.5e-3, latency_noisy=True, extra="{}")


def test_flat_spreads_the_scenario_into_columns_and_unflat_puts_it_back() -> None:
    row = _full_row()
    values = R.flat(row)
    assert list(values) == list(R.COLUMNS)
    assert {name: values[name] for name in R.SCENARIO_FIELDS} == dataclasses.asdict(row.scenario)
    assert (values["kwargs"], values["params"], values["latency_noisy"]) == ('{"k": 3}', 123456789012, True)
    assert R.unflat(values) == row


def test_unflat_gives_missing_scenario_fields_their_defaults_and_checks_the_rest() -> None:
    values = {k: v for k, v in R.flat(_full_row()).items() if k not in ("compile_mode", "autocast", "ort_opt_level")}
    scenario = R.unflat(values).scenario
    assert (scenario.dtype, scenario.compile_mode, scenario.autocast, scenario.ort_opt_level) == (
        "bfloat16",
        "default",
        "off",
        "all",
    )
    with pytest.raises(ValueError, match="--dtype 'int8'"):
        R.unflat({**values, "dtype": "int8"})


def test_column_types() -> None:
    types = R.column_types()
    assert list(types) == list(R.COLUMNS)
    expected = {"dtype": str, "threads": int, "channels_last": bool, "compile": bool, "ort_opt_level": str}
    expected |= {"params": int, "latency_median_s": float, "latency_noisy": bool, "reason": str, "dim": int}
    assert {name: types[name] for name in expected} == expected


def test_to_frame_has_one_column_per_field_and_exact_nullable_ints() -> None:
    row = _full_row()
    frame = R.to_frame([row, Result.for_case(Case("lka", 64, 8, 8), status=R.INVALID)])
    assert list(frame.columns) == list(R.COLUMNS)
    assert str(frame["params"].dtype) == "Int64"
    assert frame["params"].iloc[0] == 123456789012 and frame["params"].isna().iloc[1]
    assert list(frame["dtype"]) == ["bfloat16", "float32"]
    assert list(frame["threads"]) == [2, 1]
    assert list(frame["compile_mode"]) == ["max-autotune", "default"]
