"""What the PyTorch backends (cpu, cuda) share: the module set up for a scenario, the step that is timed, and
torch.compile with its compile time and its parity against eager.

A step is what one timed call does:
- infer: `module(x)` in eval mode under torch.inference_mode();
- train: `module.zero_grad(set_to_none=True); x.grad = None; out = module(x); out.sum().backward()` in train
  mode (a module returning several tensors, a tuple, list or dict, sums them all into the loss), with the input
  requiring grad. Setting the grads to None is INSIDE the timed step, as in a training loop, so each step
  allocates its gradients afresh (backward writes them rather than adding into old ones).
  The output stays referenced until the backward ends, as `out = model(x)` in a training loop keeps it.
Peak memory of a train step is read with the grads already None, so it counts everything the step allocates
above weights and input: the output, saved activations, temporaries, and the input and weight gradients.

Autocast (`scenario.autocast`): the float32 module runs every step, and the parity runs, under
torch.autocast(device, dtype), as timm's benchmark runs `--amp`; `--dtype` instead converts the whole module.

torch.compile (inductor, in `scenario.compile_mode`) compiles on the first call: `compile_s` is the wall time of
that first call (the forward, and in train mode the backward too, compiled and run once), kept apart from the timing.
Dynamo's caches are reset first, so every case compiles from scratch whatever ran before it (torch's on-disk inductor
cache is left as it is, as a user's process would find it). The compiled module is then compared with eager
in the same dtype on the same input (the output, and in train mode the input and weight gradients too), both
against the same step in float64: compiled must be about as close to it as eager is.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from attnbench.backends.base import (
    STATUS_COMPILE_FAILED,
    STATUS_PARITY_FAILED,
    TORCH_DTYPES,
    Backend,
    CaseFailed,
    Prepared,
    make_input,
    out_of_memory,
    torch_dtype,
)
from attnbench.capture import captured
from attnbench.counting.base import scalar_loss, tensor_outputs
from attnbench.errors import CaseTimeoutError
from attnbench.results import DTYPES, MODES, Scenario
from attnbench.timing import Sync

#: Compiled vs eager, same dtype, both against float64 on the same weights and input: for each compared tensor,
#: max|compiled - exact| <= max|eager - exact| + RTOL x the largest |exact| of its group (the output; the input
#: gradient; all parameter gradients together). Inductor fuses, reorders and upcasts inside fused bf16/fp16
#: kernels, so it may round differently from eager by a few units in the last place of the dtype (measured on
#: the zoo: results/compile_parity.md).
COMPILE_PARITY_RTOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
#: What the timing note of a train row says (in every row's extra and docs/scenarios.md).
TRAIN_STEP = "zero_grad(set_to_none=True), out = forward, out.sum().backward(); zero_grad inside the timed step"
INFER_STEP = "forward under torch.inference_mode(), eval mode"
DYNAMO_HINT = "Set TORCHDYNAMO_VERBOSE=1"


def short_error(exc: BaseException, limit: int = 400) -> str:
    """One line naming the exception and its innermost cause (dynamo wraps the real error)."""
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = f"{type(exc).__name__}: {exc}"
    if root is not exc:
        text = f"{type(exc).__name__} caused by {type(root).__name__}: {root}"
    # Dynamo appends how to get a longer trace to every error: advice, not the reason.
    text = " ".join(text.split(DYNAMO_HINT)[0].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def timed_out(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised from, is the case's time limit (attnbench.guards.time_limit)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CaseTimeoutError):
            return True
        seen.add(id(current))
        inner = getattr(current, "inner_exception", None)
        current = current.__cause__ or (inner if isinstance(inner, BaseException) else None)
    return False


def _graph_stats() -> dict[str, int]:
    from torch._dynamo.utils import counters  # a second to import: only compiled cases pay it

    return {
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
    }


class TorchBackend(Backend):
    """What the PyTorch backends (cpu, cuda) share: every mode and dtype, torch.compile in any of its modes,
    channels_last and autocast; ONNX Runtime's settings do not concern them."""

    dtypes = DTYPES
    modes = MODES
    compiles = True
    channels_last = True
    autocasts = True
    ignores = ("ort_opt_level",)
    parity = "compiled"

    def preparing(self, scenario: Scenario) -> str:
        """torch.compile's first call is the slow part of preparing a compiled case."""
        return "compiling" if scenario.compile else "preparing"

    def refusal(self, scenario: Scenario) -> str | None:
        """As Backend.refusal, and autocast only on a float32 module (`--dtype` converts the whole module)."""
        if scenario.autocast != "off" and scenario.dtype != "float32":
            return f"autocast runs a float32 module in mixed precision; --dtype {scenario.dtype} already converts it"
        return super().refusal(scenario)


class TorchPrepared(Prepared):
    """A module set up for one scenario on one device: dtype, memory format, mode, optionally compiled."""

    device: torch.device

    def _setup(self, module: nn.Module, input_shape: Sequence[int], seed: int, scenario: Scenario) -> None:
        """Copy and convert the module, draw the input, compile if asked (subclasses set threads first)."""
        self.scenario = scenario
        self.dtype = scenario.dtype
        self.train = self.scenario.mode == "train"
        tdtype = torch_dtype(scenario.dtype, type(module).__name__)
        fmt = torch.channels_last if self.scenario.channels_last else torch.contiguous_format
        self._original = module
        self._was_training = module.training
        # Anything that changes the module (dtype, device, memory format, grads) works on a copy, so the
        # caller's float32 CPU module is left as it was for the next case.
        if tdtype != torch.float32 or self.device.type != "cpu" or self.scenario.channels_last or self.train:
            module = copy.deepcopy(module).to(device=self.device, dtype=tdtype, memory_format=fmt)
        self.eager = module.train(self.train)
        self.module: nn.Module = self.eager
        x = make_input(input_shape, tdtype, seed, device=self.device)
        self.x = x.contiguous(memory_format=fmt) if x.dim() == 4 else x
        if self.train:
            self.x.requires_grad_(True)
        self.compile_s: float | None = None
        self.extra.update(
            mode=self.scenario.mode,
            step=TRAIN_STEP if self.train else INFER_STEP,
            memory_format="channels_last" if self.scenario.channels_last else "contiguous",
        )
        if self.scenario.autocast != "off":
            self.extra["autocast"] = f"torch.autocast({self.device.type!r}, dtype=torch.{self.scenario.autocast})"
        if self.scenario.compile:
            self._compile()

    # ------------------------------------------------------------ the step

    def _train_step(self) -> None:
        self.module.zero_grad(set_to_none=True)
        self.x.grad = None
        out = self.module(self.x)
        scalar_loss(out).backward()  # every output tensor: a tuple, list or dict is summed whole
        del out  # only now: the output is alive through the backward, as in a training loop

    def _step(self) -> Callable[[], Any]:
        """The zero-argument call one timed iteration makes."""
        # functools.partial keeps the per-call Python overhead of a forward to the module call itself.
        return self._train_step if self.train else functools.partial(self.module, self.x)

    def _autocast(self, on: bool = True) -> Any:
        """torch.autocast for the scenario's mixed precision, or (off, or none asked) a context that does nothing."""
        if not on or self.scenario.autocast == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=TORCH_DTYPES[self.scenario.autocast])

    def timing_context(self) -> Any:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.enable_grad() if self.train else torch.inference_mode())
        stack.enter_context(self._autocast())
        return stack

    def _sync(self) -> Sync | None:
        return None

    def timed_callable(self) -> tuple[Callable[[], Any], Sync | None]:
        return self._step(), self._sync()

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """torch's intra-op threads at the case's count for the block, then back to what they were."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def active(self) -> contextlib.AbstractContextManager[Any]:
        return self._threads()

    def run_once(self) -> Any:
        """One step (forward, or forward + backward in train mode), synchronised."""
        with self.running():
            out = self._step()()
        sync = self._sync()
        if sync is not None:
            sync()
        return out

    def _clear_grads(self) -> None:
        self.eager.zero_grad(set_to_none=True)
        self.x.grad = None

    def _profiled_step(self, peak: Callable[[Callable[[], Any]], Any]) -> Any:
        """Run `peak` over one warmed-up step, with the grads already None (so the step allocates them)."""
        with self.running():
            self._step()()  # warm: lazy state (workspaces, compiled code) exists before the measured step
            if self.train:
                self._clear_grads()
            return peak(self._step())

    # ------------------------------------------------------------ torch.compile

    def _compile(self) -> None:
        """torch.compile the module, time its first (compiling) call, and check it against eager."""
        import torch._dynamo  # a second to import: only compiled cases pay it

        torch._dynamo.reset()
        before = _graph_stats()
        t0 = time.perf_counter()
        try:
            with captured() as out:
                self.module = torch.compile(self.eager, mode=self.scenario.compile_mode)
                self.run_once()
        except Exception as exc:
            # Memory or the case's time running out while compiling is that, not a compiler's failure: measure()
            # and the runner report it as oom or timeout (dynamo may have wrapped it in its own error).
            if out_of_memory(exc) or timed_out(exc):
                raise
            raise CaseFailed(STATUS_COMPILE_FAILED, short_error(exc), extra=dict(self.extra)) from None
        self.compile_s = time.perf_counter() - t0
        after = _graph_stats()
        self.extra.update(
            compile_backend="inductor",
            compile_mode=self.scenario.compile_mode,
            compile_graphs=after["graphs"] - before["graphs"],
            compile_graph_breaks=after["graph_breaks"] - before["graph_breaks"],
            compile_s_includes="the first call: compilation plus one run",
        )
        if out.warnings:
            self.extra["compile_warnings"] = out.tail(300)
        self._check_compile_parity()

    def _outputs(
        self,
        module: nn.Module,
        seed: int,
        x: torch.Tensor | None = None,
        params: nn.Module | None = None,
        mixed: bool = True,
    ) -> dict[str, torch.Tensor]:
        """What parity compares: the output, and in train mode the input and parameter gradients."""
        x = self.x if x is None else x
        params = self.eager if params is None else params
        torch.manual_seed(seed)
        if not self.train:
            with torch.inference_mode(), self._autocast(mixed):
                return _named_outputs(module(x))
        params.zero_grad(set_to_none=True)
        x.grad = None
        with torch.enable_grad():
            with self._autocast(mixed):
                out = module(x)
            scalar_loss(out).backward()
        tensors = _named_outputs(out)
        if x.grad is not None:
            tensors["input grad"] = x.grad.detach().clone()
        for name, p in params.named_parameters():
            if p.grad is not None:
                tensors[f"grad of {name}"] = p.grad.detach().clone()
        params.zero_grad(set_to_none=True)
        x.grad = None
        return tensors

    def _exact(self) -> dict[str, torch.Tensor]:
        """The same step in float64 from the same (rounded) weights and input: what eager and compiled approximate."""
        module = copy.deepcopy(self.eager).to(torch.float64)
        x = self.x.detach().to(torch.float64).requires_grad_(self.train)
        return self._outputs(module, 0, x, module, mixed=False)

    def _check_compile_parity(self) -> None:
        """Compiled must be no further from the float64 result than eager is, give or take RTOL x the scale.

        Comparing with eager alone cannot tell which of the two is wrong: in bfloat16 eager itself can be off by
        percents. So each compared tensor is judged by max|compiled - exact| <= max|eager - exact| + RTOL x the
        largest |exact| of its group; the figure reported is max |compiled - eager|, as for ONNX Runtime.
        """
        eager = self._outputs(self.eager, 0)
        # Under autocast the arithmetic is the autocast dtype's: so is the tolerance.
        rtol = COMPILE_PARITY_RTOL[self.dtype if self.scenario.autocast == "off" else self.scenario.autocast]
        if self.train:
            # Two eager steps from different seeds: dropout makes them differ by about the values themselves, and
            # inductor draws its own random numbers, so no comparison can pass or fail honestly. Kernels that add
            # in a varying order (CUDA's atomic-add backward of convolutions and pooling) make them differ by
            # round-off only: that is within the tolerance, and the comparison goes on.
            spread = _relative_spread(eager, self._outputs(self.eager, 1))
            if spread > rtol:
                self.extra["compile_parity"] = "not checked: the module is random in train mode (e.g. dropout)"
                return
            if spread > 0:
                self.extra["compile_parity_eager_spread"] = spread
        compiled, exact = self._outputs(self.module, 0), self._exact()
        scales = _group_scales(exact)
        worst = {"name": "", "excess": -math.inf, "compiled": 0.0, "eager": 0.0}
        diff_max = 0.0
        for name, ref in exact.items():
            err_c, err_e = _max_diff(compiled[name], ref), _max_diff(eager[name], ref)
            diff_max = max(diff_max, _max_diff(compiled[name], eager[name]))
            scale = scales[_group(name)]
            excess = (err_c - err_e) / scale if scale > 0 else (0.0 if err_c <= err_e else math.inf)
            if excess > worst["excess"]:
                worst = {"name": name, "excess": excess, "compiled": err_c, "eager": err_e}
        self.parity_max_abs = diff_max
        self.parity_checked_shapes = (tuple(self.x.shape),)
        self.extra.update(
            compile_parity=f"against eager {self.dtype} and float64: " + ", ".join(exact),
            compile_parity_worst=worst["name"],
            compile_parity_excess=worst["excess"],
            compile_parity_err_compiled=worst["compiled"],
            compile_parity_err_eager=worst["eager"],
            compile_parity_rtol=rtol,
        )
        if not worst["excess"] <= rtol:
            raise CaseFailed(
                STATUS_PARITY_FAILED,
                f"compiled {self.dtype} is further from the float64 result than eager: {worst['name']} is off by "
                f"{worst['compiled']:.3g} (eager: {worst['eager']:.3g}), {worst['excess']:.3g} of the "
                f"{_group(worst['name'])} scale more (limit {rtol:g})",
                parity_max_abs=diff_max,
                extra=dict(self.extra),
            )

    # ------------------------------------------------------------ cleanup

    def _restore_module(self) -> None:
        """Give the caller's module back as it came: its mode, and no gradients left on it."""
        original = self.__dict__.get("_original")
        if original is None:
            return
        original.train(self.__dict__.get("_was_training", original.training))
        if self.__dict__.get("train"):
            with contextlib.suppress(Exception):
                self._clear_grads()
        for name in ("module", "eager", "x"):
            self.__dict__.pop(name, None)


def _named_outputs(out: Any) -> dict[str, torch.Tensor]:
    """What parity compares of a module's output: "output", or "output 0", "output logits", ... for several."""
    found = tensor_outputs(out)
    if len(found) == 1 and not found[0][0]:
        return {"output": found[0][1].detach().clone()}
    return {f"output {path}": t.detach().clone() for path, t in found}


def _group(name: str) -> str:
    # Parameter gradients share one scale: a gradient that is zero by construction (a bias cancelled by a
    # softmax) is round-off in eager and compiled alike, and only wrong if it is large next to the others.
    return "parameter gradients" if name.startswith("grad of ") else name


def _group_scales(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """The largest |value| in each group of compared tensors (the output, the input grad, all parameter grads)."""
    scales: dict[str, float] = {}
    for name, t in tensors.items():
        value = t.double().abs().max().item() if t.numel() else 0.0
        scales[_group(name)] = max(scales.get(_group(name), 0.0), value)
    return scales


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if b.numel() else 0.0


def _relative_spread(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest |a - b| of any compared tensor over its group's scale (inf when they do not even match up)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return math.inf
    scales = _group_scales(a)
    worst = 0.0
    for name in a:
        diff, scale = _max_diff(a[name], b[name]), scales[_group(name)]
        worst = max(worst, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))
    return worst
