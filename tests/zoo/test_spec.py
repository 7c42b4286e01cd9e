"""The zoo's types: Setting (what rules and formulas see), ModuleSpec's layout rule, and source hashes."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import SOURCE_HASH_DIGITS, Example, Reference, Setting, file_hash


def test_setting_reads_kwargs_and_counts_tokens() -> None:
    setting = Setting(64, {"heads": 4}, 14, 28, 2)
    assert setting["heads"] == 4
    assert setting.tokens == 14 * 28
    assert Setting(64, {}).batch == 1
    with pytest.raises(KeyError):
        setting["window"]


def test_a_setting_without_resolution_has_no_tokens() -> None:
    with pytest.raises(AssertionError):
        _ = Setting(64, {}).tokens


def test_examples_and_references_are_frozen_data() -> None:
    example = Example(64, (14, 28))
    assert (example.kwargs, example.batch, example.violates) == ({}, 1, None)
    reference = Reference("paper", "1234.5678", "owner/repo", "file.py", "Cls")
    assert reference.commit == ""
    with pytest.raises(dataclasses.FrozenInstanceError):
        reference.paper = "other"  # type: ignore[misc]


def test_case_layout_is_the_zoos_own_or_the_asked_one_for_a_users_module() -> None:
    zoo = get_spec("mhsa")
    assert zoo.case_layout() == "" and zoo.case_layout("tokens") == ""
    own = dataclasses.replace(zoo, adhoc=True)
    assert own.case_layout() == "image" and own.case_layout("tokens") == "tokens"


def test_file_hash_is_the_start_of_the_sha256(tmp_path: Path) -> None:
    path = tmp_path / "attn.py"
    path.write_bytes(b"class A: pass\n")
    assert SOURCE_HASH_DIGITS == 12
    assert file_hash(str(path)) == hashlib.sha256(b"class A: pass\n").hexdigest()[:12]
    assert file_hash(str(tmp_path / "missing.py")) == ""
    assert file_hash(str(tmp_path)) == ""  # a directory cannot be read as a file
