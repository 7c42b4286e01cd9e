"""The meta-first policy of the third-party counters (attnbench.counting.fallback): meta, else the CPU if the
case fits in memory, else no number; with a fake counter body that records where it ran."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench.counting import count_macs
from attnbench.counting.base import MacReport
from attnbench.counting.fallback import CounterBody, Policy, estimate_activation_bytes, run_meta_first
from attnbench.errors import InvalidCaseError
from tests.counting.helpers import Broken

#: Linear(8, 5) on a (4, 8) input: activations 4 x 5 float32 = 80 B; weights 45 x 4 = 180 B and input 32 x 4 =
#: 128 B. A CPU run needs 80 + 180 + 128 = 388 B.
SHAPE, ACTIVATIONS, NEED = (4, 8), 80, 388


def body_on(seen: list[str], fail_on: tuple[str, ...] = ()) -> CounterBody:
    """A counter body that records the device of each input it gets and fails on the listed device types."""

    def body(module: nn.Module, x: torch.Tensor, label: str) -> MacReport:
        seen.append(x.device.type)
        if x.device.type in fail_on:
            raise RuntimeError(f"no {x.device.type} kernel")
        return MacReport("fake", x.numel(), device=label, input_shape=tuple(x.shape))

    return body


def test_meta_first() -> None:
    seen: list[str] = []
    report = run_meta_first("fake", body_on(seen), nn.Linear(8, 5), SHAPE, "meta", None)
    assert (report.macs, report.device, seen) == (32, "meta", ["meta"])


def test_estimate_of_activations_from_the_attnbench_counter() -> None:
    assert estimate_activation_bytes(nn.Linear(8, 5), SHAPE) == ACTIVATIONS
    assert estimate_activation_bytes(Broken(), (1, 4)) is None  # fails on meta and on the CPU


@pytest.mark.parametrize("activation_bytes", [ACTIVATIONS, None])  # given by the caller, or estimated here
def test_cpu_when_meta_fails_and_the_case_fits(activation_bytes: int | None) -> None:
    seen: list[str] = []
    fits = run_meta_first("fake", body_on(seen, ("meta",)), nn.Linear(8, 5), SHAPE, "meta", activation_bytes, NEED)
    assert (fits.macs, fits.device, seen) == (32, "cpu (meta failed: RuntimeError: no meta kernel)", ["meta", "cpu"])
    seen.clear()
    fail_on_meta = body_on(seen, ("meta",))
    refused = run_meta_first("fake", fail_on_meta, nn.Linear(8, 5), SHAPE, "meta", activation_bytes, NEED - 1)
    assert (refused.status, refused.macs, refused.device, seen) == ("unavailable", None, "meta", ["meta"])
    expected = "meta failed (RuntimeError: no meta kernel); a CPU run would need about 0.0 GiB (limit 0.0 GiB)"
    assert refused.reason == expected


def test_no_cpu_run_without_an_estimate() -> None:
    seen: list[str] = []
    report = run_meta_first("fake", body_on(seen, ("meta",)), Broken(), (1, 4), "meta", None)
    assert (report.status, report.device, seen) == ("unavailable", "meta", ["meta"])
    assert report.reason == (
        "meta failed (RuntimeError: no meta kernel) and the activation memory of a CPU run could not be estimated"
    )


def test_failures_on_both_devices_or_on_a_chosen_device() -> None:
    seen: list[str] = []
    both = run_meta_first("fake", body_on(seen, ("meta", "cpu")), nn.Linear(8, 5), SHAPE, "meta", ACTIVATIONS)
    assert (both.status, both.device, seen) == ("failed", "cpu", ["meta", "cpu"])
    assert both.reason == "meta failed (RuntimeError: no meta kernel); cpu failed (RuntimeError: no cpu kernel)"
    seen.clear()
    chosen = run_meta_first("fake", body_on(seen, ("cpu",)), nn.Linear(8, 5), SHAPE, "cpu", ACTIVATIONS)
    assert (chosen.status, chosen.device, seen) == ("failed", "cpu", ["cpu"])  # no second try on a chosen device
    assert chosen.reason == "RuntimeError: no cpu kernel"


def test_invalid_case_is_not_a_counter_failure() -> None:
    def refuse(module: nn.Module, x: torch.Tensor, label: str) -> MacReport:
        raise InvalidCaseError("fake", "W % 2 == 0", "W=3 is odd")

    with pytest.raises(InvalidCaseError):
        run_meta_first("fake", refuse, nn.Linear(8, 5), SHAPE, "meta", ACTIVATIONS)


def test_fvcore_cpu_run_refused_when_too_big() -> None:
    # fvcore cannot trace convolutions on meta; a CPU run is refused when the activations would not fit
    conv = count_macs(nn.Conv2d(3, 4, 3), (1, 3, 8, 8), counter="fvcore", activation_bytes=10**12)
    assert conv.status == "unavailable" and "GiB" in conv.reason


def test_a_known_meta_refusal_goes_to_the_cpu_at_once_with_its_reason() -> None:
    seen: list[str] = []
    policy = Policy(meta_refusal=lambda m: "cannot trace it on meta")
    report = run_meta_first("fake", body_on(seen), nn.Linear(8, 5), SHAPE, "meta", ACTIVATIONS, policy=policy)
    assert seen == ["cpu"] and report.device == "cpu (meta failed: cannot trace it on meta)"


def test_a_reading_counter_counts_a_module_on_its_device_as_it_is_and_gives_it_back() -> None:
    module = nn.Linear(8, 5).train()
    got: list[nn.Module] = []

    def body(m: nn.Module, x: torch.Tensor, label: str) -> MacReport:
        got.append(m)
        assert not m.training  # counted in eval mode
        m.register_forward_hook(lambda *a: None)  # a counter that leaves a hook behind (fvcore on a failure)
        raise RuntimeError("trace failed")

    policy = Policy(reads_only=True)
    report = run_meta_first("fake", body, module, SHAPE, "cpu", ACTIVATIONS, policy=policy)
    assert got == [module] and report.status == "failed"  # no copy: the module itself
    assert module.training and not module._forward_hooks  # its mode and hooks as they came
    copied: list[nn.Module] = []
    run_meta_first("fake", lambda m, x, label: copied.append(m) or body_on([])(m, x, label), module, SHAPE, "meta",
                   ACTIVATIONS, policy=policy)  # fmt: skip
    assert copied[0] is not module  # on meta: a copy, as every counter gets
