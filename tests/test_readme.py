"""The README and the manual stay true: the module table is the registry's, the commands are the ones CI runs, and
every link between the pages lands."""

from __future__ import annotations

import re
from pathlib import Path

from attnbench.report import zoo_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
#: The manual's pages, docs/README.md (the index) included.
PAGES = sorted(DOCS.glob("*.md"))
#: A Markdown link or image: [text](target) or ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def doc(page: str) -> str:
    """The text of the manual's page docs/<page>.md."""
    return (DOCS / f"{page}.md").read_text()


def _prose(text: str) -> str:
    """The Markdown outside fenced code blocks (a `# comment` in a block is no heading, a `[x](y)` there no link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", _prose(path.read_text()), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_module_table_is_generated_from_the_registry() -> None:
    block = re.search(r"<!-- modules:start -->\n(.*)\n<!-- modules:end -->", README, flags=re.S)
    assert block, "README lacks the generated module table markers"
    assert block.group(1) == zoo_markdown(), "README's module table is stale: paste `attnbench list --markdown`"


def test_ci_runs_the_readme_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    commands = (
        "python3 -m venv .venv && . .venv/bin/activate",
        "python3 -m pip install torch==2.13.0",
        'python3 -m pip install -e ".[dev]"',
        "python3 -m pytest -q",
    )
    for command in commands:
        assert command in README, command
        assert command in ci, command


def test_gate_example_matches_ci_settings() -> None:
    ci = (ROOT / ".ci" / "run").read_text() + (ROOT / ".ci" / "gate").read_text()
    page = doc("ci-gate")
    settings = "--dim 64 --res 16 --res 32 --backend cpu --backend ort"
    assert settings in ci and settings in " ".join(page.split())
    assert "--max-run-time 0.5" in ci and "--gate-metric instructions" in ci and "results/ci-baseline.csv" in ci
    gate = "--max-run-time 0.5 --gate-metric instructions --baseline results/ci-baseline.csv"
    assert gate in " ".join(page.split())


def test_readme_and_the_index_link_every_page_of_the_manual() -> None:
    assert PAGES, "docs/ holds no page"
    linked_from_readme = {target.split("#")[0] for target in LINK.findall(_prose(README))}
    linked_from_index = {target.split("#")[0] for target in LINK.findall(_prose(doc("README")))}
    for page in PAGES:
        assert f"docs/{page.name}" in linked_from_readme, f"README.md does not link docs/{page.name}"
        if page.name != "README.md":
            assert page.name in linked_from_index, f"docs/README.md does not link {page.name}"


def test_every_relative_link_lands_on_a_file_and_a_heading() -> None:
    broken = []
    for source in [ROOT / "README.md", *PAGES]:
        for target in LINK.findall(_prose(source.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:: not checked here
                continue
            path, _, anchor = target.partition("#")
            dest = (source.parent / path).resolve() if path else source
            if not dest.exists():
                broken.append(f"{source.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{source.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_every_page_of_the_manual_says_what_it_is_for() -> None:
    for page in PAGES:
        lines = page.read_text().splitlines()
        purpose = lines[0].startswith("# ") and lines[1] == "" and lines[2]
        assert purpose, f"{page.name} should open with a title, then one line on what it is for"
