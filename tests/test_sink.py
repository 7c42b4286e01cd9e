"""The run's interface (attnbench.sink): a Sink hears everything and does nothing unless told; what counts as failed."""

from __future__ import annotations

import pytest

from attnbench import results as R
from attnbench.results import Case, Result
from attnbench.sink import PREPARE, TIME, RunOutcome, Sink


def test_a_plain_sink_hears_every_event_and_does_nothing() -> None:
    sink, case = Sink(), Case("lka", 16, 8, 8)
    for call in (
        lambda: sink.start({}, [case]),
        lambda: sink.phase(PREPARE, [case], "2 worker process(es)"),
        lambda: sink.stage(case, "building"),
        lambda: sink.phase(TIME, [case]),
        lambda: sink.rotation(0, 1),
        lambda: sink.row(Result.for_case(case)),
        lambda: sink.status("counting instructions"),
        lambda: sink.finish(RunOutcome()),
    ):
        assert call() is None


@pytest.mark.parametrize(
    ("status", "failed"),
    [(R.OK, False), (R.SKIPPED, False), (R.INVALID, False), (R.GUARDED, False), (R.FAILED, True), (R.OOM, True)],
)
def test_failed_rows_are_those_neither_ok_nor_refused_on_purpose(status: str, failed: bool) -> None:
    row = Result.for_case(Case("lka", 16, 8, 8), status=status)
    assert RunOutcome([row]).failed == ([row] if failed else [])
