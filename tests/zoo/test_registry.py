"""The zoo's table: every entry resolves to a spec of its name, in the order `list` shows; unknown names get
suggestions; user specs are resolved once and cached; source hashes are taken once."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pytest

import attnbench
from attnbench import store
from attnbench.errors import ModuleSpecError, UnknownModuleError
from attnbench.zoo import registry
from attnbench.zoo.registry import ZOO, get_spec, list_modules
from attnbench.zoo.spec import ModuleSpec
from tests.conftest import run_cli

EXPECTED = ["acmix", "ea", "mhsa", "sk", "da", "epsa", "sam", "clo", "lka", "van"]
USER = "import torch\n\n\nclass GatedConv(torch.nn.Module):\n    def __init__(self, dim):\n        super().__init__()\n"


def test_zoo_has_the_ten_entries_in_the_tables_order() -> None:
    assert list_modules() == list(ZOO) == EXPECTED
    assert attnbench.list_modules() == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_every_entry_resolves_to_a_spec_of_its_name(name: str) -> None:
    module, _, attribute = ZOO[name].partition(":")
    assert module.startswith("attnbench.zoo.modules.")
    spec = get_spec(name)
    assert isinstance(spec, ModuleSpec) and spec.name == name and not spec.adhoc
    assert getattr(importlib.import_module(module), attribute) is spec
    assert get_spec(name) is spec  # loaded once


def test_a_table_entry_whose_spec_has_another_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ZOO, "attn", "attnbench.zoo.modules.mhsa:SPEC")
    message = r"the zoo table maps 'attn' to attnbench\.zoo\.modules\.mhsa:SPEC, whose spec is named 'mhsa'"
    with pytest.raises(ValueError, match=message):
        get_spec("attn")
    assert "attn" not in registry._LOADED


@pytest.mark.parametrize(
    ("name", "needle"),
    [("acmx", "did you mean acmix"), ("vann", "did you mean van"), ("qqqq", "known modules: acmix, ea, mhsa")],
)
def test_unknown_names_get_suggestions(name: str, needle: str) -> None:
    with pytest.raises(UnknownModuleError, match=needle) as info:
        get_spec(name)
    assert "path/to/file.py:Name" in str(info.value)


def test_text_meant_as_a_spec_without_a_name_says_to_add_one() -> None:
    with pytest.raises(ModuleSpecError, match="names no class or function: add :Name"):
        get_spec("torch.nn")


def test_a_spec_is_imported_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "attn.py").write_text(USER + "\n\ndef make_gate(dim):\n    return GatedConv(dim)\n")
    first = get_spec("models/attn.py:GatedConv")
    assert get_spec("./models/attn.py:GatedConv") is first
    assert get_spec(f"{tmp_path}/models/attn.py:GatedConv") is first
    assert get_spec("models/attn.py:make_gate").factory(8).__class__ is first.factory  # same module object


def test_a_failed_import_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fix_me.py").write_text("x = (\n")
    with pytest.raises(ModuleSpecError):
        get_spec("fix_me.py:A")
    (tmp_path / "fix_me.py").write_text("import torch\nclass A(torch.nn.Identity):\n    pass\n")
    assert get_spec("fix_me.py:A").factory.__name__ == "A"


def test_add_spec_caches_a_users_spec_under_its_name_replacing_an_older_one() -> None:
    import dataclasses

    base = get_spec("torch.nn:Identity")
    newer = dataclasses.replace(base, title="newer")
    assert registry.add_spec(newer) is newer
    assert get_spec("torch.nn:Identity") is newer
    registry.add_spec(base)
    assert get_spec("torch.nn:Identity") is base


@pytest.mark.parametrize("name", EXPECTED)
def test_source_hash_of_a_zoo_module_is_its_files(name: str) -> None:
    module = importlib.import_module(ZOO[name].partition(":")[0])
    assert module.__file__ is not None
    expected = hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()[:12]
    assert registry.source_hash(name) == expected


def test_source_hash_of_a_users_module_is_taken_when_it_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hashed.py").write_text(USER)
    digest = hashlib.sha256(USER.encode()).hexdigest()[:12]
    assert registry.source_hash("hashed.py:GatedConv") == digest
    (tmp_path / "hashed.py").write_text(USER + "# edited after loading\n")
    assert registry.source_hash("hashed.py:GatedConv") == digest  # the code this process runs


def test_all_means_the_whole_zoo_in_profile_as_in_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counts = ["--metrics", "params,macs", "--quiet"]
    for command in ("profile", "compare"):
        path = tmp_path / f"{command}.csv"
        code, _, err = run_cli(capsys, command, "--all", "--dim", "64", "--res", "16", *counts, "-o", str(path))
        assert code == 0, err
        assert {r.module for r in store.load(path).results} == set(attnbench.list_modules())
    code, _, err = run_cli(capsys, "profile", "lka", "--all", *counts)
    assert code == 2 and "--all" in err
