"""The HTML report as text: one self-contained document (no URL to fetch), one table row per result row with units
in the headers and marks explained, every section that applies, and the gate's verdict when there was one. What a
browser does with it is tests/report/test_html_browser.py's."""

from __future__ import annotations

import dataclasses
import json
import re
from html.parser import HTMLParser
from pathlib import Path

from attnbench import store
from attnbench.gate import Change, Verdict
from attnbench.report import files
from attnbench.report.html import html, plotly_js
from attnbench.results import Case, Result
from tests.samples import ENV, sample_results

ROOT = Path(__file__).resolve().parents[2]


class _Page(HTMLParser):
    """What a browser would load from a page: every src and href, and the results table's body rows."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.rows: list[dict[str, str]] = []
        self.headers: list[str] = []
        self._in_results = self._in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "table":
            self._in_results = found.get("id") == "results-table"
        if self._in_results and tag == "tr" and "data-module" in found:
            self.rows.append({k: v or "" for k, v in found.items()})
        self._in_th = self._in_results and tag == "th"

    def handle_data(self, data: str) -> None:
        if self._in_th:
            self.headers.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_results = False
        if tag == "th":
            self._in_th = False


def _page(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def test_the_page_is_self_contained() -> None:
    text = html(sample_results(), ENV)
    page = _page(text)
    assert page.links == []  # no script, style or image comes from anywhere
    assert plotly_js()[:2000] in text  # Plotly.js itself is inline
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text[: text.index(plotly_js()[:200])])
    assert "cdn" not in text.lower().split("<script>")[0]


def test_one_table_row_per_result_row_with_units_in_the_headers() -> None:
    rows = sample_results()
    page = _page(html(rows, ENV))
    assert [(r["data-module"], r["data-backend"]) for r in page.rows] == [(r.module, r.backend) for r in rows]
    assert "latency [ms] med±IQR" in page.headers and "peak memory [MiB]" in page.headers
    assert {"Module", "C", "H x W", "backend", "MACs", "Status"} <= set(page.headers)


def test_marks_are_explained_on_hover_and_in_the_legend() -> None:
    text = html(sample_results(), ENV)
    assert text.count('<abbr class="mark" title="noisy: IQR/median') == 2  # acmix 28x28, cpu and ort
    assert "Marks (hover one): <code>~</code> noisy" in text
    assert "<code>!</code>" not in text  # no contended row: its mark goes unexplained


def test_an_output_shaped_unlike_its_input_is_marked_in_the_status_column() -> None:
    first, *rest = sample_results()
    net = dataclasses.replace(first, output_differs=True, reason="output (1, 10) differs from the input (1, 8, 4, 4)")
    text = html([net, *rest], ENV)
    assert text.count('<abbr class="mark" title="the output&#x27;s shape differs from the input&#x27;s">≠</abbr>') == 1
    assert 'title="output (1, 10) differs from the input (1, 8, 4, 4)">ok' in text


def test_the_sections_that_apply() -> None:
    text = html(sample_results(), ENV)
    for heading in ("Results", "MACs against N", "latency against N", "peak memory against N", "Cost map"):
        assert f"<h2>{heading}</h2>" in text
    for heading in ("Roofline, cpu", "Scaling with N = H*W", "Machine roof", "Cases that did not complete"):
        assert f"<h2>{heading}</h2>" in text
    assert "<h2>Module sources and counter notes</h2>" in text and "<h2>Across machines</h2>" not in text
    assert "<details><summary><h2>Environment</h2>" in text  # folded away
    assert "<h2>Gate</h2>" not in text


def test_every_chart_has_its_spec_and_element() -> None:
    text = html(sample_results(), ENV)
    specs = json.loads(re.search(r'<script type="application/json" id="chart-specs">(.*?)</script>', text, re.S)[1])
    assert [s["id"] for s in specs] == re.findall(r'<div class="chart" id="([^"]+)"', text)
    assert len(specs) == 5


def test_the_gate_verdict_heads_the_page() -> None:
    verdict = Verdict(changes=[Change("mhsa C=64 56x56", "count", "MACs 1 -> 2", True)], compared_cases=3)
    text = html(sample_results(), ENV, verdict=verdict)
    assert '<p class="verdict bad">gate: FAILED: 3 case(s) compared</p>' in text
    assert "MACs 1 -&gt; 2" in text
    assert text.index("<h2>Gate</h2>") < text.index("<h2>Results</h2>")


def test_counts_only_rows_have_no_latency_or_memory() -> None:
    rows = [
        Result.for_case(Case(r.module, r.dim, r.height, r.width, backend="none"), params=1, macs_attnbench=2)
        for r in sample_results()
        if r.backend == "cpu"
    ]
    text = html(rows, {})
    assert "latency" not in _page(text).headers and "Cost map" not in text


def test_the_header_names_machine_date_and_command() -> None:
    env = {**ENV, "machine": "test machine", "date_utc": "2026-01-01T00:00:00+00:00", "command": "attnbench compare"}
    text = html(sample_results(), env)
    for fact in ("test machine", "2026-01-01T00:00:00+00:00", "attnbench compare", "test cpu"):
        assert f"<dd>{fact}</dd>" in text


def test_a_merged_report_has_the_cross_machine_view(tmp_path: Path) -> None:
    from attnbench.merge import merge

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    store.write_csv(a, sample_results(), {**ENV, "cpu_model": "cpu A"})
    store.write_csv(b, sample_results(), {**ENV, "cpu_model": "cpu B"})
    merged = merge([store.load(a), store.load(b)])
    text = html(merged.results, merged.env)
    assert "<h2>Across machines</h2>" in text and "<h3>M1</h3>" in text and "<h3>M2</h3>" in text
    assert len(_page(text).rows) == 2 * len(sample_results())


def test_written_by_suffix_with_the_other_reports(tmp_path: Path) -> None:
    path = tmp_path / "r.HTML"
    files.write(sample_results(), ENV, [path])
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_the_reference_run_fits_six_megabytes() -> None:
    loaded = store.load(ROOT / "results" / "compare-cpu.csv")
    assert len(html(loaded.results, loaded.env).encode()) < 6 * 2**20
