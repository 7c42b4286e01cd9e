"""Counting one geometry (attnbench.counts): every mode's counts, failures as values, and the answer a worker sends."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from attnbench.counts import Counted, count_geometry
from attnbench.errors import ForwardError, InvalidCaseError
from attnbench.results import Case
from attnbench.settings import RunOptions
from attnbench.zoo.build import check_case

COUNTS = RunOptions(metrics=("params", "macs"), counters=("attnbench",))


def test_each_mode_is_counted_and_a_training_step_is_three_forwards() -> None:
    counts = count_geometry(Case("lka", 16, 8, 8), ["infer", "train"], COUNTS)
    assert counts.failure is None
    infer, train = counts.modes["infer"], counts.modes["train"]
    assert isinstance(infer, Counted) and isinstance(train, Counted)
    spec, setting = check_case("lka", 16, (8, 8), 1, {}, "")
    assert spec.macs_formula is not None and spec.params_formula is not None
    assert infer.values["macs_attnbench"] == infer.values["macs_formula"] == spec.macs_formula(setting)
    assert infer.values["params"] == spec.params_formula(setting)
    assert train.values["macs_attnbench"] == 3 * infer.values["macs_attnbench"] and "macs_formula" not in train.values
    # The guard's estimate: at least the weights (4 bytes each) and the input and output.
    assert infer.estimate_bytes is not None and infer.estimate_bytes >= 4 * infer.values["params"] + 2 * 4 * 16 * 64


def test_failures_are_values_and_the_answer_travels_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    invalid = count_geometry(Case("mhsa", 12, 8, 8, kwargs=(("heads", 5),)), ["infer"], COUNTS)
    assert isinstance(invalid.failure, InvalidCaseError) and invalid.modes == {}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text(
        "import torch\n\n\nclass Broken(torch.nn.Module):\n"
        "    def __init__(self, dim):\n        super().__init__()\n        self.proj = torch.nn.Conv2d(dim, dim, 1)\n\n"
        "    def forward(self, x):\n        raise ValueError('no forward today')\n"
    )
    broken = count_geometry(Case("broken.py:Broken", 8, 4, 4), ["infer"], COUNTS)
    assert broken.failure is None and isinstance(broken.modes["infer"], ForwardError)
    assert "no forward today" in str(broken.modes["infer"])
    # A worker sends its answer pickled: the failure comes back as the same error.
    again = pickle.loads(pickle.dumps(invalid))
    assert isinstance(again.failure, InvalidCaseError) and again.failure.constraint == invalid.failure.constraint
