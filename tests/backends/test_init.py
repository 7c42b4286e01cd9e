"""The backend registry (attnbench.backends): the built-in table, entry points, lookup, availability and facts."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

import pytest
from torch import nn

import attnbench.backends as backends
from attnbench.backends import (
    BUILT_IN,
    ENTRY_POINT_GROUP,
    UNKNOWN_FACTS,
    Backend,
    Prepared,
    UnknownBackendError,
    available_backends,
    backend_facts,
    get_backend,
    list_backends,
)
from attnbench.errors import BackendUnavailableError
from attnbench.measurement import measure
from attnbench.results import Scenario

#: How the GPU backends synchronise a timed call: each call, torch with torch.cuda.synchronize, ORT with its stream.
CUDA_SYNC = (
    "per call: the host clock reads after the device finished each call (torch.cuda.synchronize(device) after each "
    "call)"
)
ORT_SYNC = (
    "per call: the host clock reads after the device finished each call (run_with_iobinding synchronises the "
    "provider's stream at the end of each run: ORT's default, disable_synchronize_execution_providers not set)"
)
#: What each built-in backend says of itself (device, plot marker, parity column, ignored fields, synchronisation).
BUILT_IN_FACTS = {
    "cpu": {"device": "cpu", "marker": "o", "parity": "compiled", "ignores": ["ort_opt_level", "tf32"], "sync": ""},
    "cuda": {"device": "cuda", "marker": "^", "parity": "compiled", "ignores": ["ort_opt_level"], "sync": CUDA_SYNC},
    "ort": {"device": "cpu", "marker": "s", "parity": "ORT", "ignores": ["compile_mode", "tf32"], "sync": ""},
    "ort-cuda": {"device": "cuda", "marker": "D", "parity": "ORT", "ignores": ["compile_mode"], "sync": ORT_SYNC},
}


class PluginBackend(Backend):
    """A third-party backend, as a package would register it through the entry point group."""

    name = "plugin"
    description = "a test plug-in"
    device = "cuda"
    marker = "*"
    parity = "plugin"

    def available(self) -> tuple[bool, str]:
        """Available, saying so."""
        return True, "the plug-in is here"

    def prepare(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int = 0) -> Prepared:
        """Never called here."""
        raise NotImplementedError


class NotABackend:
    """A class an entry point may name by mistake."""

    name = "bogus"


def _entry_points(monkeypatch: pytest.MonkeyPatch, **entries: str) -> None:
    """Installed packages' entry points in the attnbench.backends group: name -> "module:Class"."""
    points = [metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in entries.items()]

    def entry_points(group: str) -> list[metadata.EntryPoint]:
        return points if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    # Instances are cached per name: each test starts from none.
    monkeypatch.setattr(backends, "_INSTANCES", {})


def test_registry_names_and_unknown_backend() -> None:
    names = list_backends()
    assert {"cpu", "cuda", "ort"} <= set(names)
    with pytest.raises(UnknownBackendError, match="valid backends are cpu, cuda, ort"):
        get_backend("tensorrt")
    with pytest.raises(BackendUnavailableError, match="unknown backend 'tpu'"):
        measure(nn.Identity(), (1, 4, 8, 8), backend="tpu")


def test_the_built_in_table_comes_first_in_its_order() -> None:
    assert list(BUILT_IN) == ["cpu", "cuda", "ort", "ort-cuda"]
    assert list_backends()[: len(BUILT_IN)] == list(BUILT_IN)
    assert ENTRY_POINT_GROUP == "attnbench.backends"


def test_unknown_backend_error_is_both_unavailable_and_a_value_error() -> None:
    with pytest.raises(UnknownBackendError) as info:
        get_backend("tpu")
    assert isinstance(info.value, BackendUnavailableError) and isinstance(info.value, ValueError)
    assert info.value.name == "tpu"
    assert str(info.value) == f"unknown backend 'tpu': valid backends are {', '.join(list_backends())}"


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_each_built_in_backend_is_its_table_entry_and_one_instance(name: str) -> None:
    backend = get_backend(name)
    module_name, _, cls_name = BUILT_IN[name].partition(":")
    assert type(backend).__module__ == module_name and type(backend).__name__ == cls_name
    assert backend.name == name and backend.description
    assert get_backend(name) is backend  # cached: one instance per name
    assert backend.facts() == BUILT_IN_FACTS[name]


@pytest.mark.parametrize("name", list_backends())
def test_every_backend_says_whether_it_is_available(name: str) -> None:
    ok, reason = get_backend(name).available()
    assert isinstance(ok, bool) and reason


def test_a_backend_plugs_in_through_its_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_points(monkeypatch, plugin=f"{__name__}:PluginBackend", cpu=f"{__name__}:PluginBackend")
    # A plug-in is listed after the built-in ones, and cannot take a built-in name.
    assert list_backends() == [*BUILT_IN, "plugin"]
    assert type(get_backend("cpu")).__name__ == "CpuBackend"
    backend = get_backend("plugin")
    assert isinstance(backend, PluginBackend) and get_backend("plugin") is backend
    assert backend_facts("plugin") == {"device": "cuda", "marker": "*", "parity": "plugin", "ignores": [], "sync": ""}
    assert available_backends()["plugin"] == {
        "available": True,
        "reason": "the plug-in is here",
        "device": "cuda",
        "marker": "*",
        "parity": "plugin",
        "ignores": [],
        "sync": "",
    }


def test_an_entry_point_that_is_not_a_backend_is_refused_with_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_points(monkeypatch, bogus=f"{__name__}:NotABackend", plugin=f"{__name__}:PluginBackend")
    with pytest.raises(BackendUnavailableError, match=rf"backend 'bogus': {__name__}:NotABackend is not an attnbench"):
        get_backend("bogus")


def test_an_entry_point_under_another_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_points(monkeypatch, other=f"{__name__}:PluginBackend")
    with pytest.raises(BackendUnavailableError, match=r"backend 'other': .*:PluginBackend is named 'plugin'"):
        get_backend("other")


def test_a_backend_that_cannot_import_is_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    _entry_points(monkeypatch, broken="no_such_package_for_attnbench.backend:Backend")
    table = available_backends()
    assert table["broken"]["available"] is False
    assert table["broken"]["reason"].startswith("ModuleNotFoundError: No module named 'no_such_package_for_attnbench'")
    # Every built-in entry still carries its facts beside whether it is available.
    for name in BUILT_IN:
        ok, reason = get_backend(name).available()
        assert table[name] == {"available": ok, "reason": reason, **BUILT_IN_FACTS[name]}
    # A report of a run made elsewhere still has facts for it.
    assert backend_facts("broken") == UNKNOWN_FACTS


def test_backend_facts_prefer_the_runs_record() -> None:
    recorded = {"available_backends": {"cpu": {"available": True, "device": "cuda", "marker": "v"}}}
    # What the run recorded wins; a fact it did not record is the default one, not this machine's.
    assert backend_facts("cpu", recorded) == {"device": "cuda", "marker": "v", "parity": "", "ignores": [], "sync": ""}
    # A record without facts (an older run) falls back to the backend itself.
    assert backend_facts("cpu", {"available_backends": {"cpu": {"available": True}}}) == BUILT_IN_FACTS["cpu"]
    assert backend_facts("cpu", None) == backend_facts("cpu", {}) == BUILT_IN_FACTS["cpu"]
    # A backend neither recorded nor installed: the report's assumption.
    assert (
        backend_facts("tpu")
        == UNKNOWN_FACTS
        == {
            "device": "cpu",
            "marker": "x",
            "parity": "",
            "ignores": [],
            "sync": "",
        }
    )
    assert backend_facts("tpu", {"available_backends": {"tpu": {"device": "tpu"}}})["device"] == "tpu"
