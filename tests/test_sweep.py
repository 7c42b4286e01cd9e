"""Sweep: the plan of cases (complete, ordered by geometry, each scenario as its backend runs it), its record, and
the checks made before anything runs."""

from __future__ import annotations

import json

import pytest

from attnbench.errors import InvalidCaseError, UnknownModuleError, UsageError
from attnbench.results import SCENARIO_DEFAULTS, Case, Scenario
from attnbench.sweep import Sweep
from tests.conftest import run_cli
from tests.stubs import stub_measure


def test_every_combination_once_with_geometries_adjacent() -> None:
    sweep = Sweep(("lka", "mhsa"), (16, 32), ((8, 8), (8, 16)), (1, 2), ("cpu", "ort"), scenarios={"threads": (1, 2)})
    cases = sweep.cases()
    assert len(cases) == len(set(cases)) == 2 * 2 * 2 * 2 * 2 * 2
    geometries = [(c.module, c.dim, c.height, c.width, c.batch) for c in cases]
    # Each geometry's cases form one run: a geometry never comes back after another started.
    seen: list[tuple] = []
    for g in geometries:
        if not seen or seen[-1] != g:
            assert g not in seen
            seen.append(g)
    assert cases[0] == Case("lka", 16, 8, 8, 1, "cpu", scenario=Scenario(threads=1))


def test_plan_order_is_geometry_then_scenario_fields_in_field_order_then_backend() -> None:
    sweep = Sweep(
        ("lka", "mhsa"),
        (16, 32),
        ((8, 8), (8, 16)),
        (1, 2),
        ("cpu", "ort"),
        scenarios={"mode": ("infer", "train"), "dtype": ("float32", "bfloat16")},  # named out of field order
    )
    cases = sweep.cases()
    expected = [
        (m, d, h, w, b, dtype, mode, backend)
        for m in ("lka", "mhsa")
        for d in (16, 32)
        for h, w in ((8, 8), (8, 16))
        for b in (1, 2)
        for dtype in ("float32", "bfloat16")  # dtype is a field before mode: it varies more slowly
        for mode in ("infer", "train")
        for backend in ("cpu", "ort")
    ]
    planned = [
        (c.module, c.dim, c.height, c.width, c.batch, c.scenario.dtype, c.scenario.mode, c.backend) for c in cases
    ]
    assert planned == expected


def test_scenario_list_is_the_product_in_field_order() -> None:
    sweep = Sweep(("lka",), scenarios={"ort_opt_level": ("basic", "all"), "threads": (1, 4)})
    assert sweep.scenario_list() == [
        Scenario(threads=1, ort_opt_level="basic"),
        Scenario(threads=1, ort_opt_level="all"),
        Scenario(threads=4, ort_opt_level="basic"),
        Scenario(threads=4, ort_opt_level="all"),
    ]
    assert Sweep(("lka",)).scenario_list() == [Scenario()]


def test_values_are_the_default_alone_unless_varied_and_duplicates_go() -> None:
    sweep = Sweep(("lka",), scenarios={"dtype": ("bfloat16", "float32", "bfloat16")})
    assert sweep.values("dtype") == ("bfloat16", "float32")
    assert sweep.values("threads") == (1,)
    assert sweep.values("compile_mode") == ("default",)


def test_the_cpu_backend_plans_each_case_once_over_ort_opt_levels() -> None:
    # The cpu backend ignores ort_opt_level: its cases settle onto the default and are planned once.
    sweep = Sweep(("lka",), (16,), ((8, 8),), backends=("cpu", "ort"), scenarios={"ort_opt_level": ("basic", "all")})
    assert [(c.backend, c.scenario.ort_opt_level) for c in sweep.cases()] == [
        ("cpu", "all"),
        ("ort", "basic"),
        ("ort", "all"),
    ]


def test_tf32_is_planned_on_the_cuda_backends_and_in_float32_only() -> None:
    # TF32 is a CUDA setting of float32 matmuls: the CPU backends run each case once, and so does a bfloat16 module.
    backends = ("cpu", "ort", "cuda", "ort-cuda")
    scenarios = {"tf32": (False, True), "dtype": ("float32", "bfloat16")}
    sweep = Sweep(("lka",), (16,), ((8, 8),), backends=backends, scenarios=scenarios)
    planned = [(c.backend, c.scenario.dtype, c.scenario.tf32) for c in sweep.cases()]
    assert sorted(planned) == sorted(
        [
            ("cpu", "float32", False),
            ("cpu", "bfloat16", False),
            ("ort", "float32", False),
            ("ort", "bfloat16", False),
            ("cuda", "float32", False),
            ("cuda", "float32", True),
            ("cuda", "bfloat16", False),
            ("ort-cuda", "float32", False),
            ("ort-cuda", "float32", True),
            ("ort-cuda", "bfloat16", False),
        ]
    )


def test_compile_mode_without_compile_settles_onto_the_default() -> None:
    sweep = Sweep(("lka",), (16,), ((8, 8),), scenarios={"compile_mode": ("default", "max-autotune")})
    assert [c.scenario for c in sweep.cases()] == [Scenario()]
    # With compile on, cpu runs both modes; ort ignores compile_mode and runs one.
    sweep = Sweep(
        ("lka",),
        (16,),
        ((8, 8),),
        backends=("cpu", "ort"),
        scenarios={"compile": (True,), "compile_mode": ("default", "max-autotune")},
    )
    assert [(c.backend, c.scenario.compile_mode) for c in sweep.cases()] == [
        ("cpu", "default"),
        ("ort", "default"),
        ("cpu", "max-autotune"),
    ]
    assert all(c.scenario.compile for c in sweep.cases())


def test_zoo_modules_keep_their_own_layout_and_user_modules_take_the_asked_one() -> None:
    sweep = Sweep(("lka", "torch.nn:Identity"), (16,), ((8, 8),), scenarios={"layout": ("tokens",)})
    assert [(c.module, c.scenario.layout) for c in sweep.cases()] == [("lka", ""), ("torch.nn:Identity", "tokens")]
    (case,) = Sweep(("torch.nn:Identity",), (16,), ((8, 8),)).cases()
    assert case.scenario.layout == "image"
    assert sweep.layout_for("lka", "tokens") == "" and sweep.layout_for("torch.nn:Identity") == "image"


def test_kwargs_become_hashable_tuples() -> None:
    (case,) = Sweep(("sk",), (64,), ((8, 8),), kwargs={"kernels": [3, 5]}).cases()
    assert case.kwargs == (("kernels", (3, 5)),)
    hash(case)


def test_module_kwargs_override_shared_ones() -> None:
    sweep = Sweep(("mhsa", "lka"), kwargs={"heads": 2}, module_kwargs={"mhsa": {"heads": 4}})
    assert sweep.kwargs_for("mhsa") == {"heads": 4}
    assert sweep.kwargs_for("lka") == {"heads": 2}


def test_record_holds_the_scenario_values_under_scenarios() -> None:
    sweep = Sweep(
        ("lka", "mhsa"),
        (16,),
        ((8, 16),),
        backends=("cpu", "ort"),
        scenarios={"dtype": ("float32", "bfloat16"), "channels_last": (False, True)},
        module_kwargs={"mhsa": {"heads": 4}},
        shard=(1, 2),
    )
    record = sweep.record()
    assert record == {
        "modules": ["lka", "mhsa"],
        "dims": [16],
        "resolutions": [[8, 16]],
        "batches": [1],
        "backends": ["cpu", "ort"],
        "scenarios": {"dtype": ["float32", "bfloat16"], "channels_last": [False, True]},
        "kwargs": {},
        "module_kwargs": {"mhsa": {"heads": 4}},
    }
    assert json.loads(json.dumps(record)) == record


def test_a_shard_plans_only_its_cases_in_plan_order() -> None:
    whole = Sweep(("lka",), (16,), ((8, 8), (8, 16), (16, 16)), (1, 2)).cases()
    parts = [Sweep(("lka",), (16,), ((8, 8), (8, 16), (16, 16)), (1, 2), shard=(k, 2)).cases() for k in (1, 2)]
    assert sorted(parts[0] + parts[1], key=whole.index) == whole
    assert all(part == sorted(part, key=whole.index) for part in parts)
    assert not set(parts[0]) & set(parts[1])


@pytest.mark.parametrize(
    ("sweep", "error", "needle"),
    [
        (Sweep(()), UsageError, "at least one module"),
        (Sweep(("lka",), dims=(0,)), UsageError, "--dim 0"),
        (Sweep(("lka",), batches=(-1,)), UsageError, "--batch -1"),
        (Sweep(("lka",), resolutions=((0, 8),)), UsageError, "--res 0x8"),
        (Sweep(("lka",), scenarios={"threads": (0,)}), UsageError, "--threads 0"),
        (Sweep(("lka",), backends=("tpu",)), UsageError, "allowed: cpu"),
        (Sweep(("lka",), scenarios={"dtype": ("int8",)}), UsageError, "allowed: float32"),
        (Sweep(("lka",), scenarios={"dtype": ("float64",)}), UsageError, "--dtype 'float64'"),
        (Sweep(("lka",), scenarios={"compile_mode": ("fast",)}), UsageError, "--compile-mode 'fast'"),
        (Sweep(("lka",), scenarios={"ort_opt_level": ("max",)}), UsageError, "--ort-opt-level 'max'"),
        (Sweep(("lka",), scenarios={"speed": (1,)}), UsageError, "'speed' is not a scenario field"),
        (Sweep(("lka",), kwargs={"heads": 4}), InvalidCaseError, "allowed"),
        (Sweep(("mhsa", "lka"), kwargs={"heads": 4}), InvalidCaseError, "--kw MODULE@heads=VALUE"),
        (Sweep(("lka",), module_kwargs={"mhsa": {"heads": 4}}), UsageError, "not a module of this run"),
        (Sweep(("clo",), resolutions=((14, 14),)), InvalidCaseError, "window"),
        (Sweep(("acmx",)), UnknownModuleError, "did you mean acmix"),
    ],
)
def test_check_refuses_bad_input_before_running(sweep: Sweep, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        sweep.check()


def test_check_accepts_a_sweep_with_some_invalid_cases() -> None:
    Sweep(("clo",), (32,), ((14, 14), (16, 16))).check()  # 14 breaks the window rule, 16 runs


def test_layout_for_the_zoo_alone_is_refused() -> None:
    with pytest.raises(UsageError, match="own modules"):
        Sweep(("lka", "mhsa"), scenarios={"layout": ("tokens",)}).check(measures=False)
    # The layout's own default ("": each module's) is no request at all.
    Sweep(("lka",), scenarios={"layout": ("",)}).check(measures=False)


def test_a_backend_missing_here_is_refused_alone_but_skipped_among_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnbench.backends import get_backend
    from attnbench.errors import BackendUnavailableError

    monkeypatch.setattr(type(get_backend("ort")), "available", lambda self: (False, "no onnxruntime here"))
    with pytest.raises(BackendUnavailableError, match="backend 'ort' is not available here: no onnxruntime here"):
        Sweep(("lka",), backends=("ort",)).check()
    Sweep(("lka",), backends=("ort",)).check(measures=False)  # counting needs no backend
    Sweep(("lka",), backends=("cpu", "ort")).check()


def test_threads_beyond_the_usable_cores_are_warned_about(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.env
    import attnbench.sweep

    # Whatever cores this process may use (taskset -c 0 gives one): two, where the sweep reads them.
    monkeypatch.setattr(attnbench.env, "usable_cores", lambda: 2)
    monkeypatch.setattr(attnbench.sweep, "usable_cores", lambda: 2)
    assert Sweep(("lka",), scenarios={"threads": (1, 2)}).warnings() == []
    (warning,) = Sweep(("lka",), scenarios={"threads": (1, 64)}).warnings()
    assert warning.startswith("--threads 64 exceeds the 2 usable core(s)")
    stub_measure(monkeypatch, lambda *a, **k: ({"status": "ok", "reason": ""}, {}))
    code, _, err = run_cli(capsys, *"profile lka --dim 16 --res 8 --threads 64 --metrics memory --quiet".split())
    assert code == 0 and "attnbench: warning: --threads 64 exceeds the 2 usable core(s)" in err


def test_scenario_defaults_are_the_sweeps_defaults() -> None:
    sweep = Sweep(("lka",))
    assert {name: sweep.values(name) for name in SCENARIO_DEFAULTS} == {k: (v,) for k, v in SCENARIO_DEFAULTS.items()}
