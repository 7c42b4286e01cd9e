"""The summary's columns: units in the headers, cells printed by the one formatter, marks, a parity column per
backend, the headline that never gives way, and the best values highlighted."""

from __future__ import annotations

import pytest

from attnbench import fmt
from attnbench.report.columns import (
    ALLOC_MARK,
    cross_columns,
    highlights,
    metric_label,
    scaling_columns,
    summary_columns,
)
from attnbench.report.summary import cross_hardware, scaling, summary
from attnbench.report.tables import KEY, Column
from attnbench.results import Case, Result, Scenario
from tests.samples import ENV, sample_results


def columns_of(rows: list[Result], backends: list[str], **kwargs: object) -> tuple[list[Column], list[dict]]:
    """The summary columns of `rows` and the summary's rows as dicts."""
    table = summary(rows)
    return summary_columns(table, backends, **kwargs), [r for _, r in table.iterrows()]  # type: ignore[arg-type]


def cells(rows: list[Result], backends: list[str], header: str, **kwargs: object) -> list[str]:
    """Every cell of the column with this header."""
    cols, table = columns_of(rows, backends, **kwargs)
    (column,) = [c for c in cols if c.header == header]
    return [column.cell(r) for r in table]


def test_headers_carry_their_units_picked_per_column() -> None:
    cols, _ = columns_of(sample_results(), ["cpu", "ort"])
    assert [c.header for c in cols] == [
        "Module",
        "C",
        "H x W",
        "Params",
        "MACs",
        "FLOPs",
        "fvcore÷ours",
        "thop÷ours",
        "Mem cpu [MiB]",  # 0.19 to 510 MiB
        "cpu [ms] med±IQR",  # 0.53 ms to 10.2 s: milliseconds
        "ort [ms] med±IQR",
        "cpu GFLOP/s",
        "ort GFLOP/s",
        "ORT max|Δ|",
        "Status",
    ]
    with_roof = [c.header for c in columns_of(sample_results(), ["cpu", "ort"], roofs={"": _peaks()})[0]]
    assert with_roof.index("cpu % peak") == with_roof.index("cpu GFLOP/s") + 1  # only with a measured roof


def _peaks() -> list:
    """ENV's measured roofs."""
    from attnbench.roofline import peaks_of

    return peaks_of(ENV)


def test_cells_are_printed_by_the_one_formatter() -> None:
    rows = [r for r in sample_results() if r.module == "mhsa"]
    assert cells(rows, ["cpu", "ort"], "Params") == ["16.6 K"] * 3
    assert cells(rows, ["cpu", "ort"], "MACs") == ["8.13 M", "116 M", "1.67 G"]
    assert cells(rows, ["cpu", "ort"], "cpu [ms] med±IQR") == ["0.647 ±0.013", "9.27 ±0.19", "10200 ±200"]
    # One unit for every backend's latency, so cpu and ort read side by side (ORT's alone would take µs).
    assert cells(rows, ["cpu", "ort"], "ort [ms] med±IQR") == ["0.324 ±0.0065", "4.63 ±0.093", fmt.MISSING]
    assert cells(rows, ["cpu", "ort"], "ORT max|Δ|") == ["3.9e-07", "3.9e-07", "-"]
    assert cells(rows, ["cpu", "ort"], "Status") == ["ok", "ok", "ort: failed"]


@pytest.mark.parametrize(
    ("fvcore", "text"), [(500, "0.50 under"), (1000, "1.00"), (1004, "1.00"), (989, "0.99 under"), (1500, "1.50 over")]
)
def test_counter_ratio_flags_a_disagreement_beyond_the_tolerance(fvcore: int, text: str) -> None:
    row = Result.for_case(Case("lka", 16, 8, 8), params=1, macs_attnbench=1000, macs_fvcore=fvcore, macs_thop=1000)
    assert cells([row], ["cpu"], "fvcore÷ours") == [text]


def test_a_counter_that_failed_keeps_its_column_with_n_a() -> None:
    row = Result.for_case(
        Case("lka", 16, 8, 8), params=1, macs_attnbench=100, counter_notes="fvcore: failed (no handle)"
    )
    assert cells([row], ["cpu"], "fvcore÷ours") == ["n/a"]
    assert "thop÷ours" not in [c.header for c in columns_of([row], ["cpu"])[0]]  # not asked, not shown


def test_latency_marks_noise_contention_and_the_slower_system_allocator() -> None:
    def timed(noisy: bool, contended: bool, slower: bool) -> Result:
        return Result.for_case(
            Case("lka", 16, 8, 8, batch=1 + noisy + 2 * contended + 4 * slower),
            params=1,
            latency_median_s=1e-3,
            latency_iqr_s=1e-5,
            latency_noisy=noisy,
            latency_contended=contended,
            system_allocator_slower=slower,
            other_allocator_latency_s=1.5e-3,
        )

    rows = [timed(False, False, False), timed(True, False, False), timed(False, True, False), timed(True, True, True)]
    marked = ["1 ±0.01", "1 ±0.01 ~", "1 ±0.01 !", f"1 ±0.01 ~ ! {ALLOC_MARK}"]
    assert cells(rows, ["cpu"], "cpu [ms] med±IQR") == marked
    # The other allocator state's latency, only where it is the slower one.
    assert cells(rows, ["cpu"], "cpu [ms] system") == ["", "", "", "1.5"]


def test_parity_columns_are_one_per_backend_named_by_what_they_compare() -> None:
    compiled = Scenario(compile=True)
    rows = [
        Result.for_case(Case("lka", 16, 8, 8, scenario=compiled), params=1, parity_max_abs=2.5e-6),
        Result.for_case(Case("lka", 16, 8, 8, backend="ort", scenario=compiled), params=1, parity_max_abs=3.9e-7),
    ]
    cols, table = columns_of(rows, ["cpu", "ort"])
    parity = {c.header: c.cell(table[0]) for c in cols if "max|Δ|" in c.header}
    assert parity == {"compiled max|Δ|": "2.5e-06", "ORT max|Δ|": "3.9e-07"}
    eager = [r for r in sample_results() if r.backend == "cpu"]
    assert not [c for c in columns_of(eager, ["cpu"])[0] if "max|Δ|" in c.header]  # no parity figure: no column


def test_scenario_columns_compile_time_throughput_and_instructions() -> None:
    rows = [
        Result.for_case(
            Case("lka", 16, 8, 8, batch=b, scenario=Scenario(compile=True)),
            params=1,
            latency_median_s=1e-3 * b,
            throughput_per_s=1000.0,
            compile_s=12.3,
            instructions=12_345_678,
        )
        for b in (1, 2)
    ]
    cols, table = columns_of(rows, ["cpu"])
    got = {c.header: [c.cell(r) for r in table] for c in cols}
    assert got["B"] == ["1", "2"]  # the batch varies: a column of its own
    assert got["cpu [samples/s]"] == ["1000", "1000"]  # shown because the batch varies
    assert got["cpu compile [s]"] == ["12.3", "12.3"]
    assert got["cpu instr/call"] == ["12.3 M", "12.3 M"]
    same_batch = columns_of(rows[:1], ["cpu"])[0]
    assert "cpu [samples/s]" not in [c.header for c in same_batch]


def test_the_headline_is_the_sorted_latency_and_never_gives_way() -> None:
    rows = sample_results()
    by_header = {c.header: c for c in columns_of(rows, ["cpu", "ort"])[0]}
    assert by_header["cpu [ms] med±IQR"].priority == KEY and by_header["ort [ms] med±IQR"].priority != KEY
    sorted_ort = {c.header: c for c in columns_of(rows, ["cpu", "ort"], sort_by="latency-ort")[0]}
    assert sorted_ort["ort [ms] med±IQR"].priority == KEY and sorted_ort["cpu [ms] med±IQR"].priority != KEY
    counted = [Result.for_case(Case("lka", 16, 8, 8, backend="none"), params=9, macs_attnbench=10)]
    priorities = {c.header: c.priority for c in columns_of(counted, [])[0]}
    assert priorities["MACs"] == KEY and priorities["Params"] != KEY  # no latency: MACs is the headline


def test_best_values_among_modules_at_one_setting() -> None:
    rows = [r for r in sample_results() if r.height == 28]
    table = summary(rows)
    cols = summary_columns(table, ["cpu", "ort"])
    best = highlights(table, cols)
    (setting,) = best.values()  # one setting: C=64 at 28x28
    assert setting["latency_cpu_s"] == min(r.latency_median_s for r in rows if r.backend == "cpu")
    assert setting["params"] == 9_024 and setting["macs_attnbench"] == table["macs_attnbench"].min()


def test_scaling_columns_name_each_metric() -> None:
    cols = scaling_columns(scaling(sample_results()))
    assert [c.header for c in cols] == [
        "Module",
        "C",
        "N range",
        "MACs exp",
        "latency cpu exp",
        "peak mem cpu exp",
        "latency ort exp",
    ]
    assert metric_label("macs_attnbench") == "MACs"
    assert metric_label("latency_ort_s") == "latency ort"
    assert metric_label("mem_cpu_bytes") == "peak mem cpu"


def test_cross_columns_put_every_machine_in_one_unit() -> None:
    import dataclasses

    rows = [
        dataclasses.replace(r, machine=m, latency_median_s=(r.latency_median_s or 0) * f or None)
        for m, f in (("A", 1.0), ("B", 2.0))
        for r in sample_results()
        if r.module == "acmix"
    ]
    frame, machines = cross_hardware(rows)
    cols = cross_columns(frame, machines)
    assert [c.header for c in cols] == ["Module", "C", "H x W", "backend", "M1 [ms]", "M2 [ms]", "M2÷M1"]
    first = frame.iloc[0]
    assert [c.cell(first) for c in cols] == ["acmix", "64", "14x14", "cpu", "3.47", "6.94", "2.00"]
