"""The HTML report in a real browser: Debian's Chromium driven by Playwright, every network request blocked and
recorded. The page is the reference run's (results/compare-cpu.csv: ten modules, 60 rows), written by `attnbench
report -o`. Skipped, with the reason, where Playwright or a Chromium is missing (.ci/run installs both)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attnbench import store
from attnbench.backends import list_backends
from attnbench.cli import main
from attnbench.report.charts import exact

pytest.importorskip("pytest_playwright", reason="pytest-playwright is not installed (pip install -e '.[dev]')")

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "results" / "compare-cpu.csv"
#: Where the page is served from: a made-up origin that the route answers, so that any other request shows.
URL = "http://attnbench.report/report.html"
#: The Chromium executables Debian and others install.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    """The first Chromium on PATH (Playwright's own browser download is not reachable here)."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, Any]:
    """pytest-playwright's launch options: Debian's Chromium, headless, no sandbox (CI runs as root)."""
    path = chromium()
    if path is None:
        pytest.skip(f"no Chromium on PATH ({', '.join(BROWSERS)}): apt-get install chromium")
    return {"executable_path": path, "args": ["--no-sandbox", "--headless", "--disable-gpu"]}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference run's page, as `attnbench report results/compare-cpu.csv -o report.html` writes it."""
    path = tmp_path_factory.mktemp("html") / "report.html"

    assert main(["report", str(REFERENCE), "-o", str(path)]) == 0
    return path


class Opened:
    """A page of the report, with what it logged as errors and the requests it tried."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []


@pytest.fixture(scope="module")
def loaded(browser: Any, report: Path) -> Iterator[Opened]:
    """The report loaded once for the module (Plotly.js takes seconds to parse on a busy 2-core machine), every
    request but its own aborted, its charts drawn."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    seen = Opened(page)
    body = report.read_bytes()
    page.on("console", lambda message: seen.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))

    def route(request_route: Any) -> None:
        if request_route.request.url == URL:
            request_route.fulfill(body=body, content_type="text/html; charset=utf-8")
        else:
            seen.requests.append(request_route.request.url)
            request_route.abort()

    page.route("**/*", route)
    page.goto(URL)
    page.wait_for_function("document.querySelectorAll('.chart .main-svg').length >= 4")
    yield seen
    context.close()


@pytest.fixture
def opened(loaded: Opened) -> Opened:
    """The loaded report as it opened: no filter, every line shown, the pointer away from the charts."""
    loaded.page.evaluate(
        """() => {
        document.querySelectorAll('.filters select').forEach(s => {
            s.value = ''; s.dispatchEvent(new Event('change'));
        });
        document.querySelectorAll('.chart').forEach(div => Plotly.restyle(div, {visible: true}));
    }"""
    )
    loaded.page.mouse.move(0, 0)
    return loaded


def _rows(page: Any) -> list[dict[str, str]]:
    """The visible rows of the results table: module, backend and each cell's sort value by header."""
    return page.evaluate(
        """() => {
        const heads = [...document.querySelectorAll('#results-table thead th')].map(th => th.textContent);
        return [...document.querySelectorAll('#results-table tbody tr')].filter(tr => !tr.hidden).map(tr => {
            const row = {module: tr.dataset.module, backend: tr.dataset.backend};
            [...tr.cells].forEach((td, i) => { row[heads[i]] = td.dataset.v ?? null; });
            return row;
        });
    }"""
    )


def test_the_page_opens_offline_with_its_table_and_charts(opened: Opened) -> None:
    page = opened.page
    assert page.locator("#results-table").is_visible()
    assert page.locator(".chart .main-svg").count() >= 4 * 1  # each chart draws its own svg layers
    assert page.evaluate("document.querySelectorAll('.chart').length") == 5
    assert opened.errors == [] and opened.requests == []


def test_one_table_row_per_result_row(opened: Opened) -> None:
    rows = store.load(REFERENCE).results
    shown = sorted((r["module"], r["backend"], r["H x W"]) for r in _rows(opened.page))
    assert shown == sorted((r.module, r.backend, str(r.height * r.width)) for r in rows) and len(shown) == 60


def test_clicking_a_header_sorts_by_it(opened: Opened) -> None:
    page = opened.page
    header = page.locator("#results-table thead th", has_text="latency [ms]")
    header.click()
    values = [r[header.inner_text()] for r in _rows(page)]
    measured = [float(v) for v in values if v is not None]
    assert measured == sorted(measured) and values[-2:] == [None, None]  # clo 14x14 (invalid) last
    header.click()
    measured = [float(v) for v in (r[header.inner_text()] for r in _rows(page)) if v is not None]
    assert measured == sorted(measured, reverse=True)
    page.locator("#results-table thead th", has_text="Module").click()
    modules = [r["module"] for r in _rows(page)]
    assert modules == sorted(modules)


def test_the_filters_hide_rows(opened: Opened) -> None:
    page = opened.page
    page.select_option("#filter-module", "mhsa")
    assert {r["module"] for r in _rows(page)} == {"mhsa"} and len(_rows(page)) == 6
    page.select_option("#filter-backend", "ort")
    assert [(r["module"], r["backend"]) for r in _rows(page)] == [("mhsa", "ort")] * 3
    assert page.inner_text("#shown") == "3 of 60 rows"
    page.select_option("#filter-module", "")
    assert len(_rows(page)) == 30


@pytest.mark.parametrize("chart", ["chart-macs", "chart-latency"])
def test_hovering_a_point_shows_its_exact_value(opened: Opened, chart: str) -> None:
    page = opened.page
    rows = store.load(REFERENCE).results
    point = page.locator(f"#{chart} .scatterlayer .trace").last.locator(".points path").last
    point.scroll_into_view_if_needed()
    box = point.bounding_box()  # Plotly's drag layer lies over the points: the mouse goes there, Plotly finds it
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    label = page.locator(f"#{chart} .hoverlayer .hovertext")
    label.wait_for()
    text = label.text_content() or ""
    # The label names its point (the nearest to the pointer): its value is the row's, exactly.
    backends = "|".join(sorted(list_backends(), key=len, reverse=True))  # the label's lines run together here
    found = re.match(rf"(\w+) \(C=(\d+)\)(\d+)x(\d+) \(N = [\d,]+\)(?:, ({backends}))?", text)
    assert found, text
    module, dim, height, width, backend = found.groups()
    row = next(
        r
        for r in rows
        if (r.module, r.dim, r.height, r.width) == (module, int(dim), int(height), int(width))
        and r.backend == (backend or r.backend)
    )
    if chart == "chart-macs":
        assert f"MACs: {exact(row.macs_attnbench, 'count')}" in text
    else:
        assert f"latency: {exact(row.latency_median_s, 'seconds', 'ms', 1e-3)} ± " in text
    assert "status: ok" in text


def test_a_legend_click_hides_a_line(opened: Opened) -> None:
    page = opened.page
    lines = "document.querySelectorAll('#chart-latency .scatterlayer .trace').length"
    before = page.evaluate(lines)
    page.locator("#chart-latency .legend .traces").first.click()
    page.wait_for_function(f"{lines} < {before}")
    hidden = page.evaluate(
        "document.getElementById('chart-latency').data.filter(t => t.visible === 'legendonly').map(t => t.name)"
    )
    assert hidden == ["acmix (C=64)", "acmix (C=64)"]  # the module, in both panels (cpu, ort)
    assert page.evaluate(lines) == before - 2


def test_every_module_appears_in_every_chart_that_applies(opened: Opened) -> None:
    rows = store.load(REFERENCE).results
    modules = {f"{r.module} (C={r.dim})" for r in rows if r.status == "ok"}
    charts = opened.page.evaluate(
        """() => [...document.querySelectorAll('.chart')].map(div => ({
            id: div.id,
            traces: div.data.map(t => t.name),
            legend: [...div.querySelectorAll('.legend .legendtext')].map(t => t.textContent),
        }))"""
    )
    assert [c["id"] for c in charts] == [
        "chart-macs",
        "chart-latency",
        "chart-memory",
        "chart-cost-map",
        "chart-roofline-cpu",
    ]
    for chart in charts:
        assert modules <= set(chart["traces"]), chart["id"]
        assert modules <= set(chart["legend"]), chart["id"]
