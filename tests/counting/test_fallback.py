"""The meta-first policy of the third-party counters (attnbench.counting.fallback): meta, else the CPU if the
case fits in memory, else no number; with a fake counter body that records where it ran."""

from __future__ import annotations

from torch import nn

from attnbench.counting import count_macs


def test_fvcore_cpu_run_refused_when_too_big() -> None:
    # fvcore cannot trace convolutions on meta; a CPU run is refused when the activations would not fit
    conv = count_macs(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), counter="fvcore", activation_bytes=10**12)
    assert conv.status == "unavailable" and "GiB" in conv.reason
