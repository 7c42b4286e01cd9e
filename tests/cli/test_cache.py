"""`attnbench cache info|clear` say what the cache holds and what was removed; `--cache-dir` and `--no-cache` reach
the run's options, and a cache directory that cannot be made is refused before anything runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attnbench import cache as C
from attnbench.cache import Cache
from attnbench.cli import options as O
from attnbench.cli.app import flags_given_alone
from attnbench.errors import UsageError
from attnbench.results import axes
from tests.conftest import parse_cli, run_cli

needs_permissions = pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes past permission bits")


def _filled(root: Path) -> Cache:
    """A cache with two exports of 3000 bytes and three counts of 10."""
    cache = Cache(root)
    for kind, n, size in (("exports", 2, 3000), ("counts", 3, 10)):
        for i in range(n):
            assert cache.put(kind, cache.key(kind, {"i": i}), b"x" * size, {})
    return cache


def _rows(out: str) -> dict[str, list[str]]:
    """The info table's rows by kind: [entries, size]; the header's too."""
    rows = [line.strip("│┃ ").replace("┃", "│").split("│") for line in out.splitlines() if line[:1] in "│┃"]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows if len(cells) == 3}


def test_info_shows_entries_and_size_per_kind_where_the_cap_and_the_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = _filled(tmp_path).info()
    code, out, err = run_cli(capsys, "cache", "info", "--cache-dir", str(tmp_path))
    assert (code, err) == (0, "")
    rows = _rows(out)
    kib = {k: f"{v.bytes / 1024:.3g}" for k, v in info.kinds.items()}
    assert rows["Kind"] == ["Entries", "Size (KiB)"]
    assert rows["exports"] == ["2", kib["exports"]] and rows["counts"] == ["3", kib["counts"]]
    assert rows["total"] == ["5", f"{info.bytes / 1024:.3g}"]
    assert f"root: {tmp_path}\n" in out
    assert "cap: 1 GiB (least recently used go first; $ATTNBENCH_CACHE_MAX_MB)\n" in out
    for package, version in C.versions().items():
        assert any(line.split() == [package, version] for line in out.splitlines()), package


def test_info_of_the_default_directory_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "fresh"))
    monkeypatch.setenv(C.MAX_MB_ENV, "64")
    code, out, _ = run_cli(capsys, "cache", "info")
    assert code == 0
    assert _rows(out)["total"] == ["0", "0"]
    assert f"root: {tmp_path / 'fresh'} (not created yet)" in out and "cap: 64 MiB" in out
    assert not (tmp_path / "fresh").exists()  # looking creates nothing


def test_clear_one_kind_then_all_says_how_many_and_how_much(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = _filled(tmp_path).info()
    code, out, _ = run_cli(capsys, "cache", "clear", "--kind", "counts", "--cache-dir", str(tmp_path))
    assert code == 0
    assert out == f"removed 3 entries ({info.kinds['counts'].bytes} B) from {tmp_path / 'counts'}\n"
    code, out, _ = run_cli(capsys, "cache", "clear", "--cache-dir", str(tmp_path))
    assert code == 0
    assert out == f"removed 2 entries ({info.kinds['exports'].bytes / 1024:.3g} KiB) from {tmp_path}\n"
    assert Cache(tmp_path).info().entries == 0


def test_clear_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path))
    _filled(tmp_path)
    code, out, _ = run_cli(capsys, "cache", "clear", "--kind", "exports")
    assert (code, out.split()[:3]) == (0, ["removed", "2", "entries"])


def test_clear_of_an_unknown_kind_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _filled(tmp_path)
    code, out, err = run_cli(capsys, "cache", "clear", "--kind", "graphs", "--cache-dir", str(tmp_path))
    assert (code, out) == (2, "")
    assert err == "attnbench: error: --kind 'graphs': unknown kind; allowed: exports, counts\n"
    assert Cache(tmp_path).info().entries == 5


@needs_permissions
def test_clear_of_an_unreadable_cache_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cache").mkdir(mode=0o000)
    try:
        code, _, err = run_cli(capsys, "cache", "clear", "--cache-dir", str(tmp_path / "cache"))
    finally:
        (tmp_path / "cache").chmod(0o700)
    assert code == 2 and err == f"attnbench: error: cannot read {tmp_path / 'cache'} (Permission denied)\n"


def test_bare_cache_shows_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "cache")
    assert code == 0 and "info" in out and "clear" in out


# ---------------------------------------------------------------- --cache-dir and --no-cache reach the run


def _options(*argv: str) -> O.RunOptions:
    params = parse_cli(flags_given_alone(argv))
    scenario = {name: params.pop(name) for name in axes()}
    return O.build_request(O.PROFILE, {**params, "scenario": scenario}).options


@pytest.mark.parametrize("command", ["profile", "compare"])
def test_cache_options_reach_the_run_options(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "env"))
    assert _options(command, "lka").cache_dir == tmp_path / "env"
    assert _options(command, "lka", "--no-cache").cache_dir is None
    monkeypatch.chdir(tmp_path)
    assert _options(command, "lka", "--cache-dir", "mine/cache").cache_dir == tmp_path / "mine" / "cache"
    assert (tmp_path / "mine" / "cache").is_dir()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--no-cache", "--cache-dir", "{tmp}/c"], "--no-cache and --cache-dir {tmp}/c: give one or the other"),
        (["--cache-dir", "{tmp}/file"], "--cache-dir {tmp}/file: is a file, expected a directory"),
        (["--cache-dir", "{tmp}/file/c"], "--cache-dir {tmp}/file/c: cannot create or write this directory"),
    ],
)
def test_a_cache_dir_that_cannot_be_used_is_refused_naming_the_option(
    tmp_path: Path, argv: list[str], says: str
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="^" + says.format(tmp=tmp_path)):
        _options("profile", "lka", *(a.format(tmp=tmp_path) for a in argv))


def test_a_bad_cap_is_refused_before_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(C.MAX_MB_ENV, "lots")
    code, out, err = run_cli(capsys, "profile", "lka", "--dim", "16", "--res", "8", "--metrics", "params")
    assert (code, out) == (2, "")
    assert err == "attnbench: error: $ATTNBENCH_CACHE_MAX_MB='lots': expected a size in MiB >= 0 (e.g. 512)\n"
