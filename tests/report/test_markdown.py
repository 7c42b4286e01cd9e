"""The Markdown report: well-formed tables, the scenario line in Scenario field order, marks and flags, failures
with their reasons, sources, the convention and the environment."""

from __future__ import annotations

import dataclasses

import pytest

from attnbench.report.markdown import (
    ALLOCATOR_NOTE,
    allocator_notes,
    environment_markdown,
    markdown,
    scenario_text,
    zoo_markdown,
)
from attnbench.report.summary import CONVENTION, summary
from attnbench.results import Case, Result, Scenario
from tests.samples import ENV, markdown_tables, sample_results, scaling_results


def test_undercounting_counter_is_flagged() -> None:
    md = markdown(scaling_results(2.0), {"cpu_model": "x"})
    assert "0.50 under" in md  # fvcore at half
    assert "1.00 |" in md  # thop agrees
    assert CONVENTION in md
    assert "cpu [ms] med±IQR" in md and "Mem cpu [KiB]" in md  # units picked per column: 4 ms to 1 s, 1 to 4 KiB


def test_failed_rows_are_listed_with_reason() -> None:
    rows = [*scaling_results(1.0), Result.for_case(Case("clo", 16, 14, 14), status="invalid", reason="H not divisible")]
    md = markdown(rows, {})
    assert "Cases that did not complete" in md and "H not divisible" in md
    failures = markdown_tables(md[md.index("## Cases that did not complete") :])[0]
    assert failures == [["Case", "status", "reason"], ["clo C=16 14x14 B=1 cpu", "invalid", "H not divisible"]]


def test_a_failed_case_names_its_scenario() -> None:
    # Two failures that differ only in their scenario (here the dtype) are told apart.
    rows = [
        Result.for_case(Case("lka", 16, 8, 8, scenario=Scenario(dtype=d)), status="oom", reason="x")
        for d in ("float32", "bfloat16")
    ]
    failures = markdown_tables(markdown(rows, {}).split("## Cases that did not complete")[1])[0]
    assert [row[0] for row in failures[1:]] == ["lka C=16 8x8 B=1 cpu", "lka C=16 8x8 B=1 cpu bfloat16"]


def test_the_legend_says_only_what_applies() -> None:
    counts = [Result.for_case(Case("lka", 16, 8, 8, backend="none"), params=1, macs_attnbench=2)]
    md = markdown(counts, {})
    assert "Latency:" not in md and "Mem:" not in md and "Marks" not in md
    timed = markdown(scaling_results(1.0), {})
    assert "Latency: median per call" in timed and "Mem: the peak" in timed and "`under`/`over`" in timed
    assert "`!`" not in timed  # no contended row


def test_markdown_tables_have_as_many_header_cells_as_separator_cells() -> None:
    rows = [
        r
        if r.backend == "cpu"
        else Result.for_case(
            Case(r.module, 16, r.height, r.width, backend="ort"),
            params=100,
            macs_attnbench=r.macs_attnbench,
            latency_median_s=1e-3,
            parity_max_abs=1e-7,
        )
        for r in scaling_results(1.0)
    ]
    md = markdown(rows, {"k": "v"})
    assert "ORT max" in md
    lines = md.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and lines[i + 1].startswith("|---"):
            cells = len(line.replace("\\|", "").split("|"))
            assert cells == len(lines[i + 1].split("|")), line
    assert md.startswith("# attnbench report\n")
    assert markdown_tables(md)[0][0][-2:] == ["ORT max|Δ|", "Status"]  # the escaped pipes read back whole


def test_noisy_and_contended_timings_are_marked() -> None:
    rows = [
        Result.for_case(
            Case("a", 16, 8, 8),
            params=1,
            latency_median_s=1e-3,
            latency_iqr_s=2e-4,
            latency_noisy=True,
            latency_contended=False,
        ),
        Result.for_case(
            Case("b", 16, 8, 8),
            params=1,
            latency_median_s=1e-3,
            latency_iqr_s=1e-5,
            latency_noisy=False,
            latency_contended=True,
        ),
    ]
    md = markdown(rows, {})
    assert "| 1 ±0.2 ~ |" in md and "| 1 ±0.01 ! |" in md


def test_launch_bound_gpu_timings_are_marked_and_the_legend_says_why() -> None:
    def gpu(name: str, bound: bool | None) -> Result:
        return Result.for_case(
            Case(name, 16, 8, 8, backend="cuda"),
            params=1,
            latency_median_s=1e-4,
            latency_iqr_s=1e-6,
            latency_launch_bound=bound,
        )

    md = markdown([gpu("a", True), gpu("b", False)], {})
    assert "| 100 ±1 L |" in md and "| 100 ±1 |" in md
    assert "`L`: launch-bound: the GPU ran kernels and copies for less than 50% of the call" in md
    assert "launch-bound" not in markdown([gpu("a", False), gpu("b", None)], {})


def test_the_summary_table_reads_back_cell_for_cell() -> None:
    md = markdown(sample_results(), ENV, title="sample")
    assert md.startswith("# sample\n\n| Module |")
    table = markdown_tables(md)[0]
    header, rows = table[0], table[1:]
    assert len(rows) == len(summary(sample_results()))
    clo14 = dict(zip(header, next(r for r in rows if r[0] == "clo" and r[2] == "14x14"), strict=True))
    assert clo14["Params"] == "-" and clo14["Status"] == "invalid" and clo14["fvcore÷ours"] == "n/a"
    mhsa56 = dict(zip(header, next(r for r in rows if r[0] == "mhsa" and r[2] == "56x56"), strict=True))
    assert mhsa56["cpu [ms] med±IQR"] == "10200 ±200" and mhsa56["ort [ms] med±IQR"] == "-"
    assert mhsa56["ORT max|Δ|"] == "-" and mhsa56["Status"] == "ort: failed"
    acmix14 = dict(zip(header, rows[0], strict=True))
    assert acmix14["cpu % peak"] == "1.92%" and acmix14["ORT max|Δ|"] == "3.9e-07"


def test_sorted_report_follows_the_sort() -> None:
    md = markdown([r for r in sample_results() if r.height == 28], {}, sort_by="params")
    modules = [row[0] for row in markdown_tables(md)[0][1:]]
    assert modules == ["models/attn.py:MyAttention", "mhsa", "acmix", "clo"]


def test_parity_columns_are_one_per_backend() -> None:
    compiled = Scenario(compile=True)
    rows = [
        Result.for_case(Case("lka", 16, 8, 8, backend=b, scenario=compiled), params=1, parity_max_abs=p)
        for b, p in (("cpu", 2e-6), ("ort", 4e-7))
    ]
    header, row = markdown_tables(markdown(rows, {}))[0]
    got = dict(zip(header, row, strict=True))
    assert got["compiled max|Δ|"] == "2.0e-06" and got["ORT max|Δ|"] == "4.0e-07"
    assert header.index("compiled max|Δ|") < header.index("ORT max|Δ|")  # in the order of the backends


def test_scenario_line_follows_the_scenario_field_order() -> None:
    md = markdown(sample_results(), ENV)
    # Was "inference, float32, ..."; the fields' order now: dtype, threads, mode, memory format, compile, allocator.
    assert "\nScenario: float32, 1 thread, inference, contiguous, eager, pinned allocator.\n" in md
    everything = Scenario(
        dtype="bfloat16",
        threads=2,
        mode="train",
        channels_last=True,
        compile=True,
        allocator="system",
        compile_mode="max-autotune",
        autocast="float16",
        ort_opt_level="basic",
    )
    row = Result.for_case(Case("lka", 16, 8, 8, scenario=everything), params=1)
    assert scenario_text(summary([row])) == (
        "Scenario: bfloat16, 2 threads, training (forward + backward), channels_last, torch.compile, system "
        "allocator, compile mode max-autotune, autocast float16, ORT graph optimisation basic."
    )


def test_a_varying_scenario_field_is_a_column_not_a_word_of_the_line() -> None:
    rows = [
        Result.for_case(Case("lka", 16, 8, 8, scenario=Scenario(dtype=d)), params=1, latency_median_s=1e-3)
        for d in ("float32", "bfloat16")
    ]
    md = markdown(rows, {})
    header, *cells = markdown_tables(md)[0]
    assert header[:4] == ["Module", "C", "H x W", "dtype"]
    assert [c[3] for c in cells] == ["float32", "bfloat16"]
    assert "\nScenario: 1 thread, inference, contiguous, eager, pinned allocator.\n" in md
    assert scenario_text(summary([])) == ""


def test_no_rows_say_so() -> None:
    md = markdown([], {"k": "v"})
    assert md.startswith("# attnbench report\n\nNo results.\n")
    assert "## Counting convention" in md and "| k | v |" in md


def test_module_sources_are_listed_once_per_module() -> None:
    rows = [dataclasses.replace(r, source_hash=f"{r.module[:3]}0123456789") for r in sample_results()]
    md = markdown(rows, {})
    table = markdown_tables(md[md.index("## Module sources") :])[0]
    assert table[0] == ["Module", "source hash"]
    assert table[1:] == [
        ["acmix", "`acm0123456789`"],
        ["mhsa", "`mhs0123456789`"],
        ["models/attn.py:MyAttention", "`mod0123456789`"],
        ["clo", "`clo0123456789`"],
    ]
    assert "## Module sources" not in markdown(sample_results(), {})  # no hashes: no section


def test_machine_roof_section_names_the_measured_peak() -> None:
    md = markdown(sample_results(), ENV)
    roof = markdown_tables(md[md.index("## Machine roof") :])[0]
    assert roof == [
        ["device", "dtype", "threads", "peak compute [GFLOP/s]", "bandwidth [GB/s]", "ridge [FLOP/B]"],
        ["cpu", "float32", "1", "150", "6", "25"],
    ]
    assert "Measured as the best call of square float32 matmuls (512, 1024) and of a 256 MiB copy." in md
    assert "## Machine roof" not in markdown(sample_results(), {})


def test_environment_is_a_key_value_table() -> None:
    lines = environment_markdown([], {"torch": "2.13.0", "peaks": [{"device": "cpu"}], "note": "a|b"})
    assert lines == [
        "## Environment",
        "",
        "| key | value |",
        "|---|---|",
        "| torch | 2.13.0 |",
        '| peaks | [{"device": "cpu"}] |',
        "| note | a\\|b |",
        "",
    ]


def test_allocator_notes_say_how_much_slower_the_system_allocator_is() -> None:
    row = Result.for_case(
        Case("lka", 16, 8, 8),
        params=1,
        latency_median_s=1e-3,
        other_allocator_latency_s=1.5e-3,
        other_allocator_faults_per_call=120.0,
        system_allocator_slower=True,
    )
    (note,) = allocator_notes([row])
    # Short: what the section is about is said once above its lines.
    want = "lka C=16 8x8 B=1 cpu: 1.5 ms with glibc's default allocator, 1.5x the pinned 1 ms"
    assert note == want + " (120 page faults per call)."
    md = markdown([row], {})
    assert "## Allocator" in md and f"- {note}" in md and "`†`" in md and ALLOCATOR_NOTE in md
    assert allocator_notes([dataclasses.replace(row, system_allocator_slower=False)]) == []


def test_zoo_markdown_has_one_row_per_module() -> None:
    import attnbench

    table = markdown_tables(zoo_markdown())[0]
    assert table[0] == ["name", "module", "arXiv", "official code", "layout", "default kwargs", "params at C=64"]
    assert [row[0] for row in table[1:]] == [f"`{name}`" for name in attnbench.list_modules()]


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_are_said_in_words(threads: int) -> None:
    row = Result.for_case(Case("lka", 16, 8, 8, scenario=Scenario(threads=threads)), params=1)
    said = "1 thread," if threads == 1 else "2 threads,"
    assert f"Scenario: float32, {said} inference" in markdown([row], {})
