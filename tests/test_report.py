"""Views of the rows: human numbers, the summary, scaling exponents, ratio flags, Markdown."""

from __future__ import annotations

import pytest

from attnbench import report
from attnbench.results import Case, Result


def test_si_formatting() -> None:
    assert report.si(12_345_678) == "12.3 M"
    assert report.si(999) == "999"
    assert report.si(1.5e9) == "1.5 G"
    assert report.si(None) == "-"


def _rows(exponent: float, module: str = "m") -> list[Result]:
    out = []
    for side in (8, 16, 32):
        n = side * side
        for backend in ("cpu", "ort"):
            out.append(
                Result.for_case(
                    Case(module, 16, side, side, backend=backend),
                    params=100,
                    macs_attnbench=int(n**exponent),
                    macs_fvcore=int(n**exponent) // 2,
                    macs_thop=int(n**exponent),
                    latency_median_s=1e-6 * n**exponent,
                    latency_iqr_s=1e-8,
                    peak_mem_bytes=4 * n,
                )
            )
    return out


def test_summary_has_one_row_per_geometry() -> None:
    table = report.summary(_rows(2.0))
    assert len(table) == 3
    assert {"latency_cpu_s", "latency_ort_s", "mem_cpu_bytes"} <= set(table.columns)


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_scaling_exponent_recovers_the_power(exponent: float) -> None:
    frame = report.scaling(_rows(exponent))
    row = frame.iloc[0]
    assert row["macs_attnbench_exp"] == pytest.approx(exponent, abs=1e-3)
    assert row["latency_cpu_s_exp"] == pytest.approx(exponent, abs=1e-3)
    assert row["mem_cpu_bytes_exp"] == pytest.approx(1.0, abs=1e-3)


def test_undercounting_counter_is_flagged() -> None:
    md = report.markdown(_rows(2.0), {"cpu_model": "x"})
    assert "0.50 under" in md  # fvcore at half
    assert "1.00 |" in md  # thop agrees
    assert report.CONVENTION in md
    assert "cpu [ms] med±IQR" in md and "Mem cpu [KiB]" in md  # units picked per column: 4 ms to 1 s, 1 to 4 KiB


def test_sort_key_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="allowed"):
        report.sort_key("speed", ["cpu"])
    assert report.sort_key("latency-ort", ["cpu", "ort"]) == "latency_ort_s"
    with pytest.raises(ValueError, match="no ort measurements"):
        report.sort_key("latency-ort", ["cpu"])


def test_failed_rows_are_listed_with_reason() -> None:
    rows = [*_rows(1.0), Result.for_case(Case("clo", 16, 14, 14), status="invalid", reason="H not divisible")]
    md = report.markdown(rows, {})
    assert "Cases that did not complete" in md and "H not divisible" in md


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
        for r in _rows(1.0)
    ]
    md = report.markdown(rows, {"k": "v"})
    assert "ORT max" in md
    lines = md.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and lines[i + 1].startswith("|---"):
            cells = len(line.replace("\\|", "").split("|"))
            assert cells == len(lines[i + 1].split("|")), line


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
    md = report.markdown(rows, {})
    assert "| 1 ±0.2 ~ |" in md and "| 1 ±0.01 ! |" in md
