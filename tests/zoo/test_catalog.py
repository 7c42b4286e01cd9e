"""The zoo's metadata as plain data (what `list` and `info` print): described from the registry, cached on disk
by a hash of the source, rebuilt when the source changes, truthful about what a module asks of H and W."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnbench.errors import UnknownModuleError
from attnbench.zoo import catalog
from attnbench.zoo.registry import get_spec, list_modules
from attnbench.zoo.spec import Setting


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


def test_a_cached_catalog_is_read_back_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(catalog, "source_key", lambda: "k")
    (tmp_path / "zoo-k.json").write_text(json.dumps([{"name": "cached-only"}]))
    assert catalog.zoo() == [{"name": "cached-only"}]  # no import of the zoo while the source is unchanged


@pytest.mark.parametrize("content", ["{", "[1, 2]", '{"name": "x"}', '[{"title": "no name"}]'])
def test_a_corrupt_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(catalog, "source_key", lambda: "k")
    (tmp_path / "zoo-k.json").write_text(content)
    assert catalog.zoo() == catalog.live()
    assert json.loads((tmp_path / "zoo-k.json").read_text()) == catalog.live()


def test_an_unwritable_cache_only_costs_speed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(catalog.CACHE_ENV, str(blocker / "cache"))
    assert catalog.zoo() == catalog.live()


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "mine"))
    assert catalog.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(catalog.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog.cache_dir() == tmp_path / "xdg" / "attnbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert catalog.cache_dir() == tmp_path / "home" / ".cache" / "attnbench"


def test_source_key_changes_with_any_source_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "pkg"
    (package / "zoo").mkdir(parents=True)
    (package / "a.py").write_text("A = 1\n")
    (package / "zoo" / "b.py").write_text("B = 1\n")
    monkeypatch.setattr(catalog, "PACKAGE_DIR", package)
    first = catalog.source_key()
    assert len(first) == 16 and catalog.source_key() == first
    (package / "zoo" / "b.py").write_text("B = 2\n")
    assert catalog.source_key() != first
    (package / "notes.txt").write_text("not source")
    second = catalog.source_key()
    (package / "notes.txt").write_text("still not source")
    assert catalog.source_key() == second


@pytest.mark.parametrize("name", list_modules())
def test_describe_holds_what_list_and_info_show(name: str) -> None:
    spec = get_spec(name)
    entry = catalog.describe(spec)
    assert entry["name"] == name and entry["title"] == spec.title
    ref = spec.reference
    assert (entry["paper"], entry["arxiv"], entry["repo"], entry["cls"]) == (ref.paper, ref.arxiv, ref.repo, ref.cls)
    assert entry["defaults"] == [[k, repr(v)] for k, v in spec.defaults.items()]
    assert entry["constraints"] == [{"name": c.name, "needs_resolution": c.needs_resolution} for c in spec.constraints]
    assert (entry["layout"], entry["resolution_bound"]) == (spec.layout, spec.resolution_bound)
    ex = spec.examples[0]
    setting = Setting(ex.dim, {**spec.defaults, **ex.kwargs}, ex.res[0], ex.res[1], ex.batch)
    assert entry["example"] == {
        "dim": ex.dim,
        "res": list(ex.res),
        "batch": ex.batch,
        "params": spec.params_formula(setting),
        "macs": spec.macs_formula(setting),
    }
    assert json.loads(json.dumps(entry)) == entry


def test_info_clo_names_its_divisibility_rule() -> None:
    entry = catalog.entry("clo")
    assert catalog.resolution_text(entry) == "constrained: H, W % window_size == 0 (global branch on)"


@pytest.mark.parametrize(
    ("bound", "rules", "text"),
    [
        (False, [], "any"),
        (False, ["a", "b"], "constrained: a; b"),
        (True, [], "bound (weights depend on H, W; pass --res)"),
        (True, ["a"], "bound (weights depend on H, W; pass --res); and a"),
    ],
)
def test_resolution_text(bound: bool, rules: list[str], text: str) -> None:
    constraints = [{"name": "k >= 1", "needs_resolution": False}]
    constraints += [{"name": r, "needs_resolution": True} for r in rules]
    assert catalog.resolution_text({"resolution_bound": bound, "constraints": constraints}) == text


def test_entry_of_an_unknown_name_suggests_close_ones() -> None:
    assert catalog.entry("sk")["name"] == "sk"
    with pytest.raises(UnknownModuleError, match="did you mean acmix"):
        catalog.entry("acmx")
