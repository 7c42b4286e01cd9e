"""The CLI's edges: help, --all, --plots checked up front, the gate's last word, SIGTERM, locked outputs, truthful
`info`, the threads warning, quick commands without heavy imports, `env --json`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import attnbench
from attnbench import results as R
from attnbench.sweep import Sweep
from attnbench.zoo import catalog
from tests.conftest import run_cli as run

ROOT = Path(__file__).resolve().parent.parent
COUNTS = ["--metrics", "params,macs", "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_bare_attnbench_prints_help_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 0 and not err
    assert "Usage:" in out and "profile" in out and "compare" in out


def test_all_means_the_whole_zoo_in_profile_as_in_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("profile", "compare"):
        path = tmp_path / f"{command}.csv"
        code, _, err = run(capsys, command, "--all", "--dim", "64", "--res", "16", *COUNTS, "-o", str(path))
        assert code == 0, err
        assert {r.module for r in R.load(path).results} == set(attnbench.list_modules())
    code, _, err = run(capsys, "profile", "lka", "--all", *COUNTS)
    assert code == 2 and "--all" in err


def test_plots_directory_that_cannot_be_made_is_refused_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.runner as runner

    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("measured despite a bad --plots"))
    code, out, err = run(capsys, "profile", "lka", "--plots", "/proc/attnbench-plots", "--quiet")
    assert code == 2 and err.startswith("attnbench: error: --plots /proc/attnbench-plots: cannot create")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_plots_check_leaves_nothing_behind_when_the_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plots = tmp_path / "new" / "plots"
    code, _, err = run(
        capsys, "compare", "lka", "--plots", str(plots), "--baseline", str(tmp_path / "none.csv"), "--quiet"
    )
    assert code == 2 and "no such file" in err
    assert not (tmp_path / "new").exists()


def test_gate_that_compares_nothing_never_says_passed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.csv"
    run(capsys, "profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "-o", str(base))
    code, out, err = run(capsys, "compare", "lka", "--dim", "16", "--res", "16", *COUNTS, "--baseline", str(base))
    assert code == 2 and "no case of this run is in the baseline" in err
    assert "PASSED" not in out + err


def test_gate_verdict_is_failed_when_a_case_of_the_run_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.runner as runner

    base = tmp_path / "base.csv"
    run(capsys, "profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "-o", str(base))
    real = runner._count

    def flaky(module: Any, case: R.Case, *args: Any, **kwargs: Any) -> Any:
        if case.height == 16:  # a case the baseline does not hold, so the comparison itself passes
            raise RuntimeError("simulated fault")
        return real(module, case, *args, **kwargs)

    monkeypatch.setattr(runner, "_count", flaky)
    code, out, _ = run(capsys, *"compare lka --dim 16 --res 8 --res 16".split(), *COUNTS, "--baseline", str(base))
    assert code == 1
    assert "gate: FAILED: 1 case(s) compared, 0 failing change(s), 1 case(s) of this run failed" in out
    assert "PASSED" not in out


def test_sigterm_stops_like_ctrl_c_keeping_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.runner as runner

    real = runner._count

    def terminate(module: Any, case: R.Case, *args: Any, **kwargs: Any) -> Any:
        if case.height == 16:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this sleep
        return real(module, case, *args, **kwargs)

    monkeypatch.setattr(runner, "_count", terminate)
    path = tmp_path / "r.csv"
    code, _, err = run(capsys, *"profile lka --dim 16 --res 8 --res 16 --res 32".split(), *COUNTS, "-o", str(path))
    assert code == 143
    assert "attnbench: terminated (SIGTERM): 1 completed row(s) kept" in err
    assert [r.height for r in R.load(path).results] == [8]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() restores the default handler


@pytest.mark.slow
@pytest.mark.onnx
def test_sigterm_during_an_onnx_export_removes_its_temporary_directory(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "r.csv"
    argv = "profile lka --dim 16 --res 8 --backend cpu --backend ort --min-run-time 0.05 --quiet -o".split()
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnbench.cli", *argv, str(out)],
        env={**_env(), "TMPDIR": str(scratch)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(scratch.glob("attnbench-onnx-*")):  # the cpu row is done, the ORT export under way
        assert proc.poll() is None and time.monotonic() < deadline, "the export never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM): 1 completed row(s) kept" in err
    assert list(scratch.glob("attnbench-onnx-*")) == []
    assert [r.backend for r in R.load(out).results] == ["cpu"]
    assert not list(tmp_path.glob(".*.lock"))


def test_an_output_another_run_is_writing_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.csv"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from attnbench.results import OutputLock; "
            "OutputLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
            str(path),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code, _, err = run(capsys, "profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "-o", str(path))
        assert code == 2 and f"another attnbench run (pid {holder.pid}) is writing it" in err
        assert not path.exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = run(capsys, "profile", "lka", "--dim", "16", "--res", "8", *COUNTS, "-o", str(path))
    assert code == 0, err  # the kernel let go of a dead holder's lock
    assert len(R.load(path).results) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.meta.json"]  # no lock file left


def test_the_same_output_twice_in_one_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "r.csv")
    code, _, err = run(capsys, "profile", "lka", *COUNTS, "-o", path, "-o", path)
    assert code == 2 and "given twice" in err


@pytest.mark.parametrize("name", attnbench.list_modules())
def test_info_states_resolution_constraints_truthfully(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "info", name)
    assert code == 0
    (line,) = [x for x in out.splitlines() if x.startswith("resolution:")]
    spec = attnbench.get_spec(name)
    rules = [c.name for c in spec.constraints if c.needs_resolution]
    if spec.resolution_bound:
        assert "bound" in line
    elif rules:
        assert line == f"resolution: constrained: {'; '.join(rules)}"
    else:
        assert line == "resolution: any"
    assert all(rule in line for rule in rules)


def test_info_clo_names_its_divisibility_rule() -> None:
    entry = catalog.entry("clo")
    assert catalog.resolution_text(entry) == "constrained: H, W % window_size == 0 (global branch on)"


def test_threads_beyond_the_usable_cores_are_warned_about(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import attnbench.env
    import attnbench.runner as runner

    monkeypatch.setattr(attnbench.env, "usable_cores", lambda: 2)
    assert Sweep(("lka",), threads=(1, 2)).warnings() == []
    (warning,) = Sweep(("lka",), threads=(1, 64)).warnings()
    assert warning.startswith("--threads 64 exceeds the 2 usable core(s)")
    monkeypatch.setattr(runner, "_measure", lambda *a, **k: ({"status": "ok", "reason": ""}, {}))
    code, _, err = run(capsys, *"profile lka --dim 16 --res 8 --threads 64 --metrics memory --quiet".split())
    assert code == 0 and "attnbench: warning: --threads 64 exceeds the 2 usable core(s)" in err


#: Modules the quick commands must not import: each costs seconds (torch) or a large share of the 0.5 s budget.
HEAVY = ("torch", "onnx", "onnxruntime", "matplotlib", "pandas")


@pytest.mark.parametrize("argv", [["--version"], ["list"], ["info", "clo"], ["env"], ["env", "--json"]], ids=" ".join)
def test_quick_commands_import_nothing_heavy(argv: list[str]) -> None:
    catalog.zoo()  # the catalog cache is warm, as after any first use
    probe = (
        "import json, sys; from attnbench.cli import main; code = main(sys.argv[1:]); "
        f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv], env=_env(), capture_output=True, text=True, timeout=120, check=False
    )
    code, heavy = json.loads(done.stderr.strip().splitlines()[-1])
    assert code == 0, done.stderr
    assert heavy == []
    assert done.stdout.strip()


def test_catalog_matches_the_registry_and_rebuilds_when_the_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    live = catalog.live()
    assert catalog.zoo() == live  # computed, then cached
    (cached,) = tmp_path.glob("zoo-*.json")
    assert json.loads(cached.read_text()) == live
    monkeypatch.setattr(catalog, "source_key", lambda: "edited")
    assert catalog.zoo() == live
    assert [p.name for p in tmp_path.glob("zoo-*.json")] == ["zoo-edited.json"]  # the stale one is gone


def test_env_json_is_the_environment_record(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "env", "--json")
    assert code == 0
    record = json.loads(out)
    assert record["attnbench"] == attnbench.__version__
    assert record["available_backends"]["cpu"]["available"] is True
    assert {"torch", "onnxruntime", "cpu_model", "usable_cores", "available_counters"} <= set(record)


def test_env_probe_measures_the_roof(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "env", "--probe", "--json")
    assert code == 0
    record = json.loads(out)
    (cpu,) = [p for p in record["peaks"] if p["device"] == "cpu"]
    assert cpu["flops_per_s"] > 1e8 and cpu["bytes_per_s"] > 1e7 and cpu["threads"] == 1
    assert record["allocator"]["pinned"] is True


def _breakdown_rows(out: str) -> dict[str, list[str]]:
    """Module name -> its other cells, from the breakdown table printed after the summary (first one of a name)."""
    lines = out[out.index("per submodule") :].splitlines()
    rows = {}
    for line in lines[1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows.setdefault(cells[0], cells[1:])
    return rows


@pytest.mark.parametrize("depth", [1, 2])
def test_breakdown_depth_shows_nested_submodules_with_params_and_macs(
    depth: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from attnbench import fmt
    from attnbench.counting import count_macs

    monkeypatch.setenv("COLUMNS", "120")
    argv = f"profile sk --dim 32 --res 8 --metrics params,macs --breakdown --depth {depth} --quiet".split()
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    rows = _breakdown_rows(out)
    with torch.device("meta"):
        sk = attnbench.build("sk", 32)
    macs = count_macs(sk, (1, 32, 8, 8))
    assert rows["model"][:4] == ["SKAttention", fmt.si(91_680), fmt.si(macs.macs), fmt.si(macs.flops)]
    convs = sum(p.numel() for p in sk.convs.parameters())
    assert rows["convs"][:3] == ["ModuleList", fmt.si(convs), fmt.si(macs.by_module_nested["convs"])]
    assert ("3" in rows) == (depth == 2)  # convs.3, the 7x7 branch, is one level deeper (listed before fcs.3)
    if depth == 2:
        assert rows["3"][2] == fmt.si(32 * 32 * 7 * 7 * 8 * 8)  # its conv: C x C x k^2 x H x W MACs


def test_depth_needs_breakdown_and_a_level(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *"profile sk --depth 2".split(), *COUNTS)
    assert code == 2 and "only with --breakdown" in err
    code, _, err = run(capsys, *"profile sk --breakdown --depth -1".split(), *COUNTS)
    assert code == 2 and "must be >= 0" in err
