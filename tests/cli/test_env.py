"""`env`: the environment record as aligned text or JSON, backends and counters with why each is (not) available,
and the measured roofs of `--probe` in words."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest

from attnbench import env as E
from tests.conftest import run_cli

NOTE = "attnbench: backends judged from installed packages; --probe imports and checks them"


def test_text_and_json_say_the_same(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = E.static_environment()  # one record for both calls (its date moves with the clock)
    monkeypatch.setattr(E, "static_environment", lambda: dict(snapshot))
    code, text, err = run_cli(capsys, "env")
    assert code == 0 and err.strip() == NOTE
    code, out, err = run_cli(capsys, "env", "--json")
    assert code == 0 and err == ""
    record = json.loads(out)
    lines = text.splitlines()
    for key, value in record.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            start = lines.index(f"{key}:")
            for i, (name, info) in enumerate(value.items(), start=1):
                mark = {True: "yes", False: "no ", None: "?  "}[info["available"]]
                assert lines[start + i].rstrip() == f"  {name:20s} {mark}  {info['reason']}".rstrip()
        elif not isinstance(value, dict | list):
            assert f"{key:22s} {value}" in lines
    assert record["available_backends"]["cpu"] == {"available": True, "reason": f"torch {record['torch']}"}


def test_counters_say_whether_they_are_installed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "thop" else real(name, *a))
    monkeypatch.setattr(E, "static_environment", lambda: {"fvcore": "0.1.5", "thop": None})
    code, out, _ = run_cli(capsys, "env", "--json")
    assert code == 0
    counters = json.loads(out)["available_counters"]
    assert counters["attnbench"] == {"available": True, "reason": "built in (dispatch level, meta device)"}
    assert counters["thop"] == {"available": False, "reason": "ultralytics-thop not installed"}
    assert counters["fvcore"] == {"available": real("fvcore") is not None, "reason": "fvcore 0.1.5"}


def test_probe_measures_the_roofs_and_says_them_in_words(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    asked: list[tuple[int, list[Any]]] = []
    peak = {"device": "cpu", "dtype": "float32", "threads": 1, "flops_per_s": 1.5e11, "bytes_per_s": 6e9}

    def environment(threads: int = 1, peaks: Any = ()) -> dict[str, Any]:
        asked.append((threads, list(peaks)))
        return {"torch": "2.13.0", "peaks": [peak, {**peak, "threads": 2}], "available_backends": {}}

    monkeypatch.setattr(E, "environment", environment)
    code, out, err = run_cli(capsys, "env", "--probe")
    assert code == 0 and err == ""  # probed: no note about judging from packages
    want = [("cpu", "float32", 1)] + ([("cuda", "float32", 0)] if torch.cuda.is_available() else [])
    assert asked == [(1, want)]
    lines = out.splitlines()
    assert f"{'peak cpu':22s} 150 GFLOP/s, 6.00 GB/s (float32, 1 thread; ridge 25 FLOP/B)" in lines
    assert f"{'peak cpu':22s} 150 GFLOP/s, 6.00 GB/s (float32, 2 threads; ridge 25 FLOP/B)" in lines
    code, out, _ = run_cli(capsys, "env", "--probe", "--json")
    assert json.loads(out)["peaks"] == [peak, {**peak, "threads": 2}]
