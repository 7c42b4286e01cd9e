"""Export once (attnbench.backends.export_cache): module fingerprints, the bounded graph cache, and reuse across
resolutions with parity each time."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from attnbench.backends import ort as ort_backend
from attnbench.backends.export_cache import (
    EXPORTS,
    MAX_GRAPHS,
    ExportCache,
    Graph,
    module_fingerprint,
)
from attnbench.measurement import Measurement, measure


class Mix(nn.Module):
    """A conv and a channel mix: nothing in it depends on H or W."""

    def __init__(self, dim: int = 4, scale: float = 0.5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale + x


class WidthBranch(nn.Module):
    """Branches on the width: an export at one width silently keeps that branch for every width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[-1] == 6 else x + 1


def _graph(dims: tuple[int | str, ...], size: int = 10) -> Graph:
    """A stand-in graph of `size` bytes with these input dims."""
    return Graph(model=b"x" * size, exporter="dynamo", dims=dims, opset=20)


def _export(module: nn.Module, shape: tuple[int, ...]) -> Measurement:
    """Export, open and verify on ORT, without timing or memory."""
    return measure(module, shape, backend="ort", metrics=())


def test_fingerprint_follows_weights_and_settings() -> None:
    torch.manual_seed(0)
    a = Mix()
    torch.manual_seed(0)
    b = Mix()
    assert module_fingerprint(a) == module_fingerprint(b)
    torch.manual_seed(1)
    assert module_fingerprint(Mix()) != module_fingerprint(a)  # other weights
    torch.manual_seed(0)
    assert module_fingerprint(Mix(scale=0.25)) != module_fingerprint(a)  # same weights, other attribute
    with torch.no_grad():
        b.conv.bias[0] += 1
    assert module_fingerprint(b) != module_fingerprint(a)


def test_fingerprint_sees_a_forward_replaced_on_the_instance_but_not_the_mode() -> None:
    torch.manual_seed(0)
    a = Mix()
    key = module_fingerprint(a)
    assert len(key) == 32 and int(key, 16) >= 0  # a 16-byte hex digest
    a.train(not a.training)
    assert module_fingerprint(a) == key  # train/eval does not change the exported (eval) graph
    a.forward = a.conv.forward  # type: ignore[method-assign]
    assert module_fingerprint(a) != key


def test_spatial_dynamic_needs_batch_height_and_width_symbolic() -> None:
    assert _graph(("b", 4, "h", "w")).spatial_dynamic
    assert not _graph((1, 4, "h", "w")).spatial_dynamic
    assert not _graph(("b", 4, 6, "w")).spatial_dynamic
    assert not _graph(("b", "n", "c")).spatial_dynamic  # tokens: no H, W


def test_cache_keeps_only_shareable_graphs_and_is_bounded() -> None:
    cache = ExportCache(max_graphs=2, max_bytes=100)
    assert not cache.put("fixed", _graph((1, 4, 6, 6)))
    assert not cache.put("big", _graph(("b", 4, "h", "w"), size=101))
    assert cache.put("a", _graph(("b", 4, "h", "w"))) and cache.put("b", _graph(("b", 4, "h", "w")))
    cache.get("a")  # a is now the most recent
    cache.put("c", _graph(("b", 4, "h", "w")))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    cache.refuse("a", "because")
    assert cache.get("a") is None and cache.refused("a") == "because"
    with cache:
        pass
    assert len(cache) == 0 and cache.refused("a") is None


def test_refusals_are_bounded_too() -> None:
    cache = ExportCache(max_graphs=1)
    for i in range(70):
        cache.refuse(f"k{i}", f"reason {i}")
    # 64 refusals per graph slot are kept, the oldest go first.
    assert cache.refused("k5") is None and cache.refused("k6") == "reason 6" and cache.refused("k69") == "reason 69"


def test_the_process_wide_cache() -> None:
    assert isinstance(EXPORTS, ExportCache) and EXPORTS.max_graphs == MAX_GRAPHS and len(EXPORTS) == 0


@pytest.mark.onnx
def test_one_export_serves_every_resolution() -> None:
    rows = []
    for side in (6, 10):
        torch.manual_seed(0)  # as the runner builds each geometry: same seed, same weights
        rows.append(_export(Mix(), (1, 4, side, side)))
    first, second = rows
    assert first.ok and second.ok, (first.reason, second.reason)
    assert first.extra["onnx_graph"] == "exported" and first.extra["onnx_graph_cached"] is True
    assert second.extra["onnx_graph"] == "reused" and "export_s" not in second.extra
    assert second.extra["onnx_graph_key"] == first.extra["onnx_graph_key"]
    assert second.extra["onnx_graph_exported_at"] == [1, 4, 6, 6]
    # Parity is checked at the new resolution, at both batch sizes.
    assert second.parity_checked_shapes == ((1, 4, 10, 10), (2, 4, 10, 10))
    assert second.parity_max_abs is not None and second.parity_max_abs <= 1e-4


@pytest.mark.onnx
def test_other_weights_get_their_own_graph() -> None:
    torch.manual_seed(0)
    _export(Mix(), (1, 4, 6, 6))
    torch.manual_seed(1)
    other = _export(Mix(), (1, 4, 10, 10))
    assert other.ok and other.extra["onnx_graph"] == "exported"


@pytest.mark.onnx
def test_a_graph_that_fails_elsewhere_falls_back_per_resolution() -> None:
    first = _export(WidthBranch(), (1, 2, 6, 6))
    assert first.ok and first.extra["onnx_graph"] == "exported"
    # At width 8 the shared graph still doubles: parity fails, this resolution gets its own export.
    second = _export(WidthBranch(), (1, 2, 6, 8))
    assert second.ok, second.reason
    assert second.extra["onnx_graph"] == "exported per resolution"
    reason = second.extra["onnx_per_resolution_reason"]
    assert reason.startswith("the graph exported at 6x6 failed at 6x8 (parity_failed")
    assert second.parity_checked_shapes[0] == (1, 2, 6, 8) and second.parity_max_abs == 0.0
    # Later resolutions of this setting go straight to their own export, with the same reason.
    third = _export(WidthBranch(), (1, 2, 6, 10))
    assert third.extra["onnx_graph"] == "exported per resolution"
    assert third.extra["onnx_per_resolution_reason"] == reason
    assert "export_spatial_attempt_s" not in third.extra


@pytest.mark.onnx
def test_export_files_are_removed_even_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert _export(Mix(), (1, 4, 6, 6)).ok
    assert list(tmp_path.iterdir()) == [] and len(EXPORTS) == 1

    def interrupted(module: nn.Module, example: torch.Tensor, path: Path, **kwargs: object) -> None:
        path.write_bytes(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(ort_backend, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _export(Mix(scale=2.0), (1, 4, 6, 6))
    assert list(tmp_path.iterdir()) == []
