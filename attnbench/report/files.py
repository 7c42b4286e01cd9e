"""A run's report files: CSV (streamed row by row, with its sidecar), Markdown, JSON and HTML."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench import store
from attnbench.report.markdown import markdown
from attnbench.results import Result
from attnbench.runner import RunOutcome, Sink

if TYPE_CHECKING:
    from attnbench.gate import Verdict


def write(
    rows: Sequence[Result],
    env: Mapping[str, Any],
    paths: Sequence[str | Path],
    title: str = "attnbench report",
    sort_by: str | None = None,
    verdict: Verdict | None = None,
) -> None:
    """Write every requested report file (CSV with its sidecar, Markdown, JSON, HTML with the gate's `verdict`),
    each atomically."""
    for path in map(Path, paths):
        if path.suffix.lower() == ".csv":
            store.write_csv(path, rows, env)
        elif path.suffix.lower() == ".json":
            store.atomic_write(path, store.json_text(rows, env))
        elif path.suffix.lower() == ".html":
            from attnbench.report.html import html  # Plotly.js (5 MB) is read only when a page is asked for

            store.atomic_write(path, html(rows, env, title, sort_by, verdict))
        else:
            store.atomic_write(path, markdown(rows, env, title=title, sort_by=sort_by))


class ReportFiles(Sink):
    """A run's report files, written as it goes: each CSV streamed row by row, Markdown, JSON and HTML at its end.

    The CSVs hold every completed row whatever ends the run (attnbench.store.CsvStream); the whole-document
    formats are written once, when the run ends, interrupted or not.
    """

    def __init__(self, paths: Sequence[str | Path], title: str = "attnbench report", sort_by: str | None = None):
        self.paths = [Path(p) for p in paths]
        self.title, self.sort_by = title, sort_by
        self._streams: list[store.CsvStream] = []

    def start(self, env: Mapping[str, Any], cases: Sequence[Any]) -> None:
        """Open every CSV: sidecar and header now, rows as they come."""
        self._streams = [store.CsvStream(p, env) for p in self.paths if p.suffix.lower() == ".csv"]

    def row(self, row: Result) -> None:
        """Append the row to every CSV."""
        for stream in self._streams:
            stream.append(row)

    def finish(self, outcome: RunOutcome) -> None:
        """The CSVs' final form (rewritten only if rows changed after streaming), then Markdown, JSON and HTML (with
        the gate's verdict, when there was a gate)."""
        for stream in self._streams:
            stream.finish(outcome.results, outcome.env)
        others = [p for p in self.paths if p.suffix.lower() != ".csv"]
        write(outcome.results, outcome.env, others, self.title, self.sort_by, outcome.verdict)
