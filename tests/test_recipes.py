"""docs/across-machines.md's recipes for running across machines: the GitHub Actions matrix and the Slurm array job.

Neither GitHub nor Slurm runs here. The tests check what can be checked on one machine: the workflow parses, is
manual only, and its shard count matches its matrix; the docs page shows the workflow file and the Slurm script
as they are; and every attnbench command they contain parses with the real CLI and, replayed here (counting
only), produces shards that merge into the whole sweep.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import attnbench
from attnbench import store
from tests.conftest import parse_cli, run_cli

ROOT = Path(__file__).resolve().parent.parent
#: The manual's page that shows the recipes.
RECIPES = (ROOT / "docs" / "across-machines.md").read_text()
WORKFLOW = ROOT / ".github" / "workflows" / "sweep.yml"
#: What `compare --all` plans by default: every module at 14, 28 and 56.
ALL_GEOMETRIES = {(m, r) for m in attnbench.list_modules() for r in (14, 28, 56)}


def doc_block(marker: str) -> str:
    """The fenced code block between <!-- marker:start --> and <!-- marker:end --> in docs/across-machines.md."""
    found = re.search(rf"<!-- {marker}:start -->\n```\w+\n(.*?)```\n<!-- {marker}:end -->", RECIPES, flags=re.S)
    assert found, f"docs/across-machines.md lacks the {marker} block"
    return found.group(1)


def workflow() -> dict:
    """The sweep workflow; PyYAML reads the key `on` as True (YAML 1.1), so it is renamed back."""
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True)
    return data


def _run_command(job: dict) -> str:
    (command,) = [s["run"] for s in job["steps"] if s.get("run", "").startswith("attnbench")]
    return command


def test_docs_show_the_workflow_file_as_it_is() -> None:
    assert doc_block("sweep-workflow") == WORKFLOW.read_text()


def test_workflow_runs_by_hand_only_and_its_shards_match_its_matrix() -> None:
    flow = workflow()
    assert set(flow["on"]) == {"workflow_dispatch"}, "a sweep must not run on every push"
    measure, merge = flow["jobs"]["measure"], flow["jobs"]["merge"]
    shards = measure["strategy"]["matrix"]["shard"]
    count = re.search(r"--shard \$\{\{ matrix\.shard \}\}/(\d+)", _run_command(measure))
    assert count and shards == list(range(1, int(count.group(1)) + 1))
    assert measure["strategy"]["fail-fast"] is False and len(measure["strategy"]["matrix"]["runner"]) == 2
    assert merge["needs"] == "measure" and merge["if"] == "always()"
    upload = next(s for s in measure["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    download = next(s for s in merge["steps"] if s.get("uses", "").startswith("actions/download-artifact"))
    assert fnmatch.fnmatch(upload["with"]["name"], download["with"]["pattern"])
    assert download["with"]["merge-multiple"] is True


def _expand(text: str, values: dict[str, str]) -> list[str]:
    """A workflow command with its ${{ ... }} expressions and $ARGS filled in, split as a shell would."""
    text = re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: values[m.group(1)], text)
    return shlex.split(text.replace("$ARGS", values["ARGS"]))


def test_workflow_commands_parse_and_their_shards_merge_into_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = workflow()
    measure, merge = flow["jobs"]["measure"], flow["jobs"]["merge"]
    args = flow["on"]["workflow_dispatch"]["inputs"]["args"]["default"]
    upload = next(s for s in measure["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shards").mkdir()
    runners = measure["strategy"]["matrix"]["runner"]
    for runner in runners:
        for shard in measure["strategy"]["matrix"]["shard"]:
            argv = _expand(_run_command(measure), {"matrix.runner": runner, "matrix.shard": str(shard), "ARGS": args})
            assert argv[0] == "attnbench" and parse_cli(argv[1:])["shard"] == f"{shard}/3"
            # Counting only, and the runner's name as the machine: one CPU stands in for both runner types.
            code, _, err = run_cli(capsys, *argv[1:], "--metrics", "params", "--label", runner)
            assert code == 0, err
            for path in Path().glob("shard-*"):  # what upload-artifact takes and download-artifact merges
                assert fnmatch.fnmatch(path.name, upload["with"]["path"])
                path.rename(tmp_path / "shards" / path.name)
    (command,) = [s["run"] for s in merge["steps"] if s.get("run", "").startswith("attnbench")]
    argv = shlex.split(command)
    code, _, err = run_cli(capsys, *argv[1:])
    assert code == 0, err
    rows = store.load("report.csv").results
    for runner in runners:
        assert {(r.module, r.height) for r in rows if r.machine == runner} == ALL_GEOMETRIES
    assert len(rows) == 2 * len(ALL_GEOMETRIES)
    assert "### M2: ubuntu-24.04-arm" in Path("report.md").read_text()


STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""


def _stubs(tmp_path: Path) -> Path:
    """A directory with stand-ins for attnbench and docker that log how they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("attnbench", "docker"):
        path = bin_dir / name
        path.write_text(STUB.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_slurm_script_runs_one_shard_per_task_and_the_merge_gives_the_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "sweep.sbatch"
    script.write_text(doc_block("slurm-script"))
    subprocess.run(["bash", "-n", str(script)], check=True)
    array = re.search(r"#SBATCH --array=0-(\d+)", script.read_text())
    assert array, "the array must start at 0: task i runs shard i+1"
    tasks = int(array.group(1)) + 1
    bin_dir, log = _stubs(tmp_path), tmp_path / "calls.jsonl"
    base = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log)}
    slurm = {"SLURM_ARRAY_TASK_COUNT": str(tasks), "SLURM_ARRAY_JOB_ID": "77"}
    for task in range(tasks):
        env = {**base, **slurm, "SLURM_ARRAY_TASK_ID": str(task)}
        env.pop("ATTNBENCH_IMAGE", None)
        subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, check=True)
    docker_env = {
        **base,
        **slurm,
        "SLURM_ARRAY_TASK_ID": "1",
        "ATTNBENCH_IMAGE": "attnbench:cuda",
        "SLURM_JOB_GPUS": "3",
    }
    subprocess.run(["bash", str(script)], cwd=tmp_path, env=docker_env, check=True)

    *plain, docker = _calls(log)
    assert [parse_cli(argv[1:])["shard"] for argv in plain] == [f"{k}/{tasks}" for k in range(1, tasks + 1)]
    assert docker[:7] == ["docker", "run", "--rm", "--gpus", "device=3", "-v", f"{tmp_path}/sweep-77:/out"]
    assert docker[7] == "attnbench:cuda"
    # In the image, the same command as the plain task 1, writing into the mounted directory.
    assert docker[8:] == [a.replace("sweep-77/", "/out/") for a in plain[1][1:]]

    monkeypatch.chdir(tmp_path)
    for argv in plain:  # what each task would have measured, counted only
        code, _, err = run_cli(capsys, *argv[1:], "--metrics", "params")
        assert code == 0, err
    submit = doc_block("slurm-submit").splitlines()
    assert submit[0] == "job=$(sbatch --parsable sweep.sbatch)"
    wrapped = shlex.split(submit[1])[-1].replace("$job", "77")
    code, _, err = run_cli(capsys, *shlex.split(wrapped)[1:])
    assert code == 0, err
    rows = store.load(tmp_path / "sweep-77" / "report.csv").results
    assert sorted((r.module, r.height) for r in rows) == sorted(ALL_GEOMETRIES)


def test_slurm_script_passes_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    script = tmp_path / "sweep.sbatch"
    script.write_text(doc_block("slurm-script"))
    done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
