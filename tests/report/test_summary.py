"""The summary frame: one row per geometry and scenario with backends pivoted into columns, scaling exponents,
statuses said once, sorting, and the identity columns that vary."""

from __future__ import annotations

import dataclasses

import pytest

from attnbench import fmt
from attnbench.report import summary as S
from attnbench.results import Case, Result, Scenario
from tests.samples import sample_results, scaling_results


def test_si_formatting() -> None:
    assert S.si is fmt.si  # the summary's counts are the one formatter's
    assert S.si(12_345_678) == "12.3 M"
    assert S.si(999) == "999"
    assert S.si(1.5e9) == "1.50 G"
    assert S.si(None) == "-"


def test_summary_has_one_row_per_geometry() -> None:
    table = S.summary(scaling_results(2.0))
    assert len(table) == 3
    assert {"latency_cpu_s", "latency_ort_s", "mem_cpu_bytes"} <= set(table.columns)
    assert list(table["tokens"]) == [64, 256, 1024]
    assert list(table["latency_ort_s"]) == pytest.approx([1e-6 * n**2.0 for n in (64, 256, 1024)])


def test_an_empty_run_is_an_empty_summary() -> None:
    assert S.summary([]).empty
    assert S.scaling([]).empty


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_scaling_exponent_recovers_the_power(exponent: float) -> None:
    frame = S.scaling(scaling_results(exponent))
    row = frame.iloc[0]
    assert row["macs_attnbench_exp"] == pytest.approx(exponent, abs=1e-3)
    assert row["latency_cpu_s_exp"] == pytest.approx(exponent, abs=1e-3)
    assert row["mem_cpu_bytes_exp"] == pytest.approx(1.0, abs=1e-3)
    assert (row["n_min"], row["n_max"]) == (64, 1024)


def test_scaling_needs_two_resolutions() -> None:
    assert S.scaling([r for r in scaling_results(1.0) if r.height == 8]).empty


def test_sort_key_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="allowed"):
        S.sort_key("speed", ["cpu"])
    assert S.sort_key("latency-ort", ["cpu", "ort"]) == "latency_ort_s"
    with pytest.raises(ValueError, match="no ort measurements"):
        S.sort_key("latency-ort", ["cpu"])
    assert S.sort_key("latency", ["ort", "cpu"]) == "latency_ort_s"  # the first backend when none is named
    assert S.sort_key("memory-cpu", ["cpu"]) == "mem_cpu_bytes"
    assert S.sort_key("macs", []) == "macs_attnbench"


def test_sort_summary_orders_by_the_metric_then_the_module() -> None:
    table = S.summary([r for r in sample_results() if r.height == 28])
    by_macs = S.sort_summary(table, "macs")
    assert list(by_macs["module"]) == ["models/attn.py:MyAttention", "acmix", "clo", "mhsa"]
    by_latency = S.sort_summary(table, "latency-ort")
    assert list(by_latency["latency_ort_s"]) == sorted(table["latency_ort_s"])


def test_one_status_when_every_backend_ended_alike() -> None:
    table = S.summary(sample_results())
    got = {(r["module"], r["height"]): r["status"] for _, r in table.iterrows()}
    assert got[("clo", 14)] == "invalid"  # refused on cpu and ort alike: said once
    assert got[("mhsa", 56)] == "ort: failed"  # only ORT failed: which one
    assert got[("acmix", 14)] == "ok"
    reasons = {(r["module"], r["height"]): r["reason"] for _, r in table.iterrows()}
    assert reasons[("mhsa", 56)] == "export failed"


def test_parity_is_one_column_per_backend() -> None:
    """ORT's parity (against PyTorch) and torch.compile's (against eager) no longer share one column."""
    compiled = Scenario(compile=True)
    rows = [
        Result.for_case(Case("lka", 16, 8, 8, scenario=compiled), params=1, parity_max_abs=2.5e-6),
        Result.for_case(Case("lka", 16, 8, 8, backend="ort", scenario=compiled), params=1, parity_max_abs=3.9e-7),
    ]
    table = S.summary(rows)
    assert len(table) == 1
    assert table.loc[0, "parity_cpu"] == pytest.approx(2.5e-6)
    assert table.loc[0, "parity_ort"] == pytest.approx(3.9e-7)
    assert not {"parity_max_abs", "compile_parity_max_abs"} & set(table.columns)


def test_a_scenario_is_a_summary_row_of_its_own() -> None:
    rows = [
        Result.for_case(Case("lka", 16, 8, 8, scenario=Scenario(dtype=dtype)), params=1, latency_median_s=t)
        for dtype, t in (("float32", 2e-3), ("bfloat16", 1e-3))
    ]
    table = S.summary(rows)
    assert list(table["dtype"]) == ["float32", "bfloat16"]
    assert list(table["latency_cpu_s"]) == [2e-3, 1e-3]
    assert S.varying(table) == ["dtype"]


def test_varying_lists_the_identity_columns_that_take_several_values() -> None:
    rows = sample_results()
    assert S.varying(S.summary(rows)) == []
    more = rows + [dataclasses.replace(r, batch=4, scenario=Scenario(threads=2, mode="train")) for r in rows]
    assert S.varying(S.summary(more)) == ["batch", "threads", "mode"]  # in VARYING's order


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("kwargs", '{"kernels": [3, 5], "heads": 4}', "kernels=[3,5], heads=4"),
        ("kwargs", "", ""),
        ("channels_last", True, "yes"),
        ("compile", False, "no"),
        ("threads", 2.0, "2"),
        ("batch", 8, "8"),
        ("dtype", "bfloat16", "bfloat16"),
        ("layout", None, ""),
    ],
)
def test_identity_text(key: str, value: object, text: str) -> None:
    assert S.identity_text(key, value) == text


def test_backends_of_keeps_the_first_seen_order_without_none() -> None:
    rows = [Result.for_case(Case("lka", 16, 8, 8, backend=b), params=1) for b in ("ort", "none", "cpu", "ort", "none")]
    assert S.backends_of(rows) == ["ort", "cpu"]


def test_ratio_of_a_counter_to_ours() -> None:
    assert S.ratio(50, 100) == 0.5
    assert S.ratio(None, 100) is None
    assert S.ratio(50, 0) is None  # no ratio to zero MACs
    assert S.ratio(50, float("nan")) is None


def test_achieved_rate_is_the_counted_flops_over_the_median() -> None:
    table = S.summary([r for r in sample_results() if r.module == "acmix" and r.height == 14])
    row = table.iloc[0]
    assert S.achieved(row, "cpu") == pytest.approx(row["flops_attnbench"] / 3.47e-3)
    assert S.achieved(row, "ort") == pytest.approx(row["flops_attnbench"] / (3.47e-3 / 2))
