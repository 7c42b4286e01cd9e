"""ONNX Runtime: export (dynamo first, legacy fallback), verify against PyTorch, then time a session.

Export: torch.onnx.export(dynamo=True) with a dynamic batch dimension, falling back to dynamo=False (the
TorchScript exporter); which one produced the graph is recorded. The graph is exported from an example of
batch >= 2, because torch.export specialises a dimension of size 1 to a constant.
Verification (measurement.md, "ONNX export"): the session's output is compared with PyTorch's on the same
input (max abs diff <= PARITY_ATOL, and <= PARITY_RTOL x max|output| for outputs below 1); when the batch
axis came out symbolic (dim_param), a second batch size is run and compared too, because an exporter can
silently bake a traced size into the graph.
Session: intra_op_num_threads = threads (1 unless asked; ORT's default 0 takes every core),
inter_op_num_threads = 1, ORT_ENABLE_ALL, ORT_SEQUENTIAL; warm-up >= ORT_WARMUP_MIN_CALLS runs, then the
shared timing protocol. Failures are statuses with reasons (export_failed, session_failed, parity_failed).
"""

from __future__ import annotations

import functools
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnbench.backends._capture import captured
from attnbench.backends.base import (
    STATUS_EXPORT_FAILED,
    STATUS_PARITY_FAILED,
    STATUS_SESSION_FAILED,
    Backend,
    CaseFailed,
    Prepared,
    Scenario,
    make_input,
)
from attnbench.memory import PeakMemory
from attnbench.timing import (
    DEFAULT_MIN_RUN_TIME,
    WARMUP_MIN_CALLS,
    WARMUP_MIN_S,
    Clock,
    Sync,
    TimingStats,
)

#: Largest |ORT - PyTorch| accepted; float32 graphs of these modules agree to ~1e-6.
PARITY_ATOL = 1e-4
#: ...and, for outputs smaller than 1, at most this fraction of the largest |output|: an absolute bound alone
#: cannot fail for a module whose outputs are ~1e-5 (mhsa's upstream init), whatever ORT returns.
PARITY_RTOL = 1e-4
#: measurement.md: the first ORT run was 1.1-6.6x the steady state; onnxruntime_perf_test drops it too.
ORT_WARMUP_MIN_CALLS = 10
INPUT_NAME = "x"
OUTPUT_NAME = "y"
#: Why ORT rows carry no peak memory.
ORT_PEAK_REASON = (
    "not measured: ONNX Runtime serves tensors from its own arena with a pre-planned memory pattern, so a "
    "per-forward peak is not observable from outside the session without a debug build (ORT_MEMORY_PROFILE)"
)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Console lines that are noise in a failure reason.
_NOISE = ("torchvision is not installed",)


def _clean(text: str) -> str:
    return " ".join(_ANSI.sub("", text).split())


def _short(exc: BaseException, limit: int = 400) -> str:
    """One line: the exception and, when it wraps another, the innermost cause (where the real reason is)."""
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    head = _clean(f"{type(exc).__name__}: {exc}")
    if root is not exc:
        cause = _clean(f"{type(root).__name__}: {root}")
        head = head[: max(80, limit - len(cause) - 12)] + (" ... caused by " if len(head) > 80 else " caused by ")
        head += cause
    return head if len(head) <= limit else head[: limit - 3] + "..."


def _console_tail(text: str, limit: int = 300) -> str:
    lines = [ln for ln in _ANSI.sub("", text).splitlines() if ln.strip() and not any(n in ln for n in _NOISE)]
    return " ".join(" | ".join(lines).split())[-limit:]


_REGISTRY_CACHED = False


def _reuse_torchlib_registry() -> None:
    """Build the dynamo exporter's aten-to-ONNX registry once per process instead of once per export.

    torch 2.13 rebuilds it from onnxscript's torchlib on every torch.onnx.export(dynamo=True) call: about
    0.35 s of the 0.85 s an export of a zoo module takes here. Each call gets its own copy of the cached
    registry, so a caller that registers custom ops cannot taint later exports. This touches a private
    API: if it is not there, exports simply stay as they were.
    """
    global _REGISTRY_CACHED
    if _REGISTRY_CACHED:
        return
    _REGISTRY_CACHED = True
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.from_torchlib.__func__
        built: dict[Any, Any] = {}

        def from_torchlib(cls: Any, *args: Any, **kwargs: Any) -> Any:
            key = (cls, args, tuple(sorted(kwargs.items())))
            if key not in built:
                built[key] = original(cls, *args, **kwargs)
            copy = cls.__new__(cls)
            copy.__dict__.update(built[key].__dict__)
            copy.functions = {op: list(metas) for op, metas in built[key].functions.items()}
            return copy

        _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    except (ImportError, AttributeError):
        pass


def parity_limit(scale: float) -> float:
    """Largest |ORT - PyTorch| accepted for outputs whose largest magnitude is `scale`."""
    return min(PARITY_ATOL, PARITY_RTOL * scale) if 0 < scale < 1 else PARITY_ATOL


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, dynamic: bool = True) -> dict[str, Any]:
    """Export `module` to `path` (dynamo, else legacy), asking for a dynamic batch axis; return what happened.

    Raises CaseFailed(export_failed) with both exporters' errors and the captured console tail.
    """
    _reuse_torchlib_registry()
    errors: list[str] = []
    info: dict[str, Any] = {}
    attempts: list[tuple[str, Callable[[], Any]]] = [
        (
            "dynamo",
            functools.partial(
                torch.onnx.export,
                module,
                (example,),
                str(path),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None,
                verbose=False,
            ),
        ),
        (
            "legacy",
            functools.partial(
                torch.onnx.export,
                module,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None,
            ),
        ),
    ]
    for exporter, run in attempts:
        t0 = time.perf_counter()
        # The dynamo exporter prints progress lines and the legacy one a deprecation warning: keep them in
        # a buffer, and quote them only when the export fails.
        with captured() as cap:
            try:
                with torch.no_grad():
                    run()
                ok = path.exists()
                if not ok:
                    errors.append(f"{exporter}: no file written")
            except Exception as exc:
                ok = False
                errors.append(f"{exporter}: {_short(exc)}")
        if ok:
            info.update(exporter=exporter, export_s=time.perf_counter() - t0)
            if errors:
                info["export_fallback_reason"] = "; ".join(errors)
            return info
        console = _console_tail(cap.text + "\n" + "\n".join(cap.warnings))
        errors[-1] += f" [console: {console}]" if console else ""
    raise CaseFailed(STATUS_EXPORT_FAILED, "; ".join(errors))


def input_dims(path: Path) -> list[int | str]:
    """The graph input's dims: ints for fixed sizes (dim_value), names for symbolic ones (dim_param)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in dims]


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def session_options(threads: int) -> Any:
    """SessionOptions with explicit threads, full graph optimisation, sequential execution, quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Errors only: the session's warnings (e.g. unused initialisers) are not results.
    opts.log_severity_level = 3
    return opts


class OrtPrepared(Prepared):
    """An exported, verified ONNX Runtime session over one input."""

    backend = "ort"

    def __init__(
        self,
        module: nn.Module,
        input_shape: Sequence[int],
        threads: int,
        seed: int,
        provider: str,
        backend_name: str,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        self.backend = backend_name
        self.threads = threads
        self.dtype = "float32"
        self.provider = provider
        was_training = module.training
        module.eval()
        try:
            shape = tuple(input_shape)
            batch = shape[0]
            alt_batch = 2 if batch == 1 else 1
            x = make_input(shape, torch.float32, seed)
            x_alt = make_input((alt_batch, *shape[1:]), torch.float32, seed + 1)
            example = x if batch >= 2 else x_alt
            with torch.inference_mode():
                ref = module(x).numpy()
                ref_alt = module(x_alt).numpy()
            with tempfile.TemporaryDirectory(prefix="attnbench-onnx-") as tmp:
                path = Path(tmp) / "model.onnx"
                info = export_onnx(module, example, path)
                dims = input_dims(path)
                if isinstance(dims[0], int) and dims[0] != batch:
                    # The exporter fixed the batch to the example's: export again at the measured shape.
                    first = {f"dynamic_attempt_{k}": v for k, v in info.items() if k != "export_s"}
                    info = {
                        **first,
                        **export_onnx(module, x, path, dynamic=False),
                        "static_reexport_reason": f"dynamic batch requested, exporter fixed it to {dims[0]}",
                    }
                    dims = input_dims(path)
                self.exporter = info["exporter"]
                self.extra.update(info)
                self.extra.update(
                    onnx_opset=_opset(path),
                    onnx_input_dims=dims,
                    dynamic_batch=isinstance(dims[0], str),
                    ort_provider=provider,
                    ort_intra_op_num_threads=threads,
                    ort_inter_op_num_threads=1,
                    ort_graph_optimization_level="ORT_ENABLE_ALL",
                    ort_execution_mode="ORT_SEQUENTIAL",
                    onnxruntime_version=ort.__version__,
                )
                try:
                    with captured():
                        # The CUDA EP hands the nodes it lacks to the CPU EP, as ORT deployments do.
                        providers = (
                            [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
                        )
                        self.session = ort.InferenceSession(
                            str(path), sess_options=session_options(threads), providers=providers
                        )
                except Exception as exc:
                    raise CaseFailed(STATUS_SESSION_FAILED, _short(exc), exporter=self.exporter) from None
                # ORT quietly falls back to the CPU when a provider cannot start: that row would time the CPU.
                if self.session.get_providers()[0] != provider:
                    raise CaseFailed(
                        STATUS_SESSION_FAILED,
                        f"{provider} did not start (session runs on {self.session.get_providers()})",
                        exporter=self.exporter,
                    )
            self.x = x
            self._check_parity(x, ref, x_alt, ref_alt, dims)
            self._bind(x)
        finally:
            module.train(was_training)

    def _run_numpy(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]

    def _check_parity(
        self, x: torch.Tensor, ref: np.ndarray, x_alt: torch.Tensor, ref_alt: np.ndarray, dims: list[int | str]
    ) -> None:
        """Compare with PyTorch at the measured batch and, if the batch axis is symbolic, at a second one."""
        checks = [(x, ref)]
        if isinstance(dims[0], str):
            checks.append((x_alt, ref_alt))
        else:
            self.extra["dynamic_batch_note"] = f"exporter fixed the batch to {dims[0]}; checked that batch only"
        worst = 0.0
        checked: list[tuple[int, ...]] = []
        for xi, refi in checks:
            details = {"exporter": self.exporter, "parity_checked_shapes": tuple(checked), "extra": self.extra}
            try:
                out = self._run_numpy(xi)
            except Exception as exc:
                raise CaseFailed(
                    STATUS_PARITY_FAILED,
                    f"ORT run at input {tuple(xi.shape)} failed (graph input dims {dims}): {_short(exc)}",
                    **details,
                ) from None
            if out.shape != refi.shape:
                raise CaseFailed(
                    STATUS_PARITY_FAILED,
                    f"ORT output shape {out.shape} != PyTorch {refi.shape} at input {tuple(xi.shape)}",
                    **details,
                )
            diff = float(np.max(np.abs(out.astype(np.float64) - refi.astype(np.float64)))) if out.size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
            worst = max(worst, diff)
            # The scale the difference is judged against: a tiny |output| makes any abs diff look good.
            scale = float(np.max(np.abs(refi))) if refi.size else 0.0
            self.extra["parity_ref_max_abs"] = max(self.extra.get("parity_ref_max_abs", 0.0), scale)
            checked.append(tuple(xi.shape))
            self.parity_max_abs = worst
            self.parity_checked_shapes = tuple(checked)
            limit = parity_limit(scale)
            self.extra["parity_limit"] = min(self.extra.get("parity_limit", limit), limit)
            if diff > limit:
                raise CaseFailed(
                    STATUS_PARITY_FAILED,
                    f"max |ORT - PyTorch| = {diff:.3g} > {limit:.3g} (max |output| {scale:.3g}) at input "
                    f"{tuple(xi.shape)}",
                    exporter=self.exporter,
                    parity_max_abs=worst,
                    parity_checked_shapes=tuple(checked),
                    extra=self.extra,
                )

    def _bind(self, x: torch.Tensor) -> None:
        """Prepare the zero-argument call that timing repeats."""
        feed = {INPUT_NAME: x.numpy()}
        self._call: Callable[[], Any] = functools.partial(self.session.run, [OUTPUT_NAME], feed)

    def run_once(self) -> Any:
        """One session run on the prepared input."""
        return self._call()

    def _timed_callable(self) -> tuple[Callable[[], Any], Sync | None]:
        return self._call, None

    def _timing_context(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def time(
        self,
        min_run_time: float = DEFAULT_MIN_RUN_TIME,
        warmup_s: float = WARMUP_MIN_S,
        warmup_calls: int = WARMUP_MIN_CALLS,
        clock: Clock | None = None,
    ) -> TimingStats:
        """The shared protocol with at least ORT_WARMUP_MIN_CALLS warm-up runs."""
        return super().time(min_run_time, warmup_s, max(warmup_calls, ORT_WARMUP_MIN_CALLS), clock)

    def peak_memory(self) -> PeakMemory:
        """Not measured for ORT; the method string says why."""
        return PeakMemory(peak_bytes=None, method=ORT_PEAK_REASON)

    def close(self) -> None:
        """Drop the session (and with it ORT's arena)."""
        self.__dict__.pop("session", None)
        self.__dict__.pop("_call", None)


class OrtCudaPrepared(OrtPrepared):
    """ORT on the CUDA execution provider, timed with IO binding (input and output stay on the GPU)."""

    def _bind(self, x: torch.Tensor) -> None:
        import onnxruntime as ort

        # Inputs and outputs live on the device, so the timed call moves no data over PCIe.
        self._x_dev = ort.OrtValue.ortvalue_from_numpy(x.numpy(), "cuda", 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, self._x_dev)
        binding.bind_output(OUTPUT_NAME, "cuda", 0)
        self._binding = binding
        # run_with_iobinding synchronises the compute stream at its end by default: host timing is valid.
        self._call = functools.partial(self.session.run_with_iobinding, binding)
        self.extra.update(ort_io_binding=True, ort_cuda_options=self.session.get_provider_options().get(self.provider))

    def close(self) -> None:
        """Drop binding, device input and session."""
        for name in ("_binding", "_x_dev"):
            self.__dict__.pop(name, None)
        super().close()


class OrtCpuBackend(Backend):
    """ONNX Runtime, CPUExecutionProvider."""

    name = "ort"
    description = "ONNX Runtime CPUExecutionProvider (dynamo export, parity-checked, explicit intra-op threads)"
    dtypes = ("float32",)
    why_not = {  # noqa: RUF012 (a ClassVar in Backend)
        "train": "ONNX Runtime runs inference here: no training (no backward graph is exported)",
        "compile": "ONNX Runtime runs the exported graph: torch.compile applies to the PyTorch backends",
        "channels_last": "ONNX Runtime chooses its own layouts: channels_last applies to the PyTorch backends",
    }
    provider = "CPUExecutionProvider"
    _prepared_cls: type[OrtPrepared] = OrtPrepared

    def available(self) -> tuple[bool, str]:
        """True when onnxruntime, onnx and the provider are importable/present."""
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"{exc.name or exc} is not installed (pip install onnx onnxruntime onnxscript)"
        if self.provider not in ort.get_available_providers():
            return False, f"onnxruntime {ort.__version__} has no {self.provider} (has {ort.get_available_providers()})"
        return True, f"onnxruntime {ort.__version__} {self.provider}, onnx {onnx.__version__}"

    def prepare(
        self,
        module: nn.Module,
        input_shape: Sequence[int],
        dtype: str = "float32",
        threads: int = 1,
        seed: int = 0,
        scenario: Scenario | None = None,
    ) -> Prepared:
        """Export, open a session, verify parity; failures raise CaseFailed with a status (inference only)."""
        return self._prepared_cls(module, input_shape, threads, seed, self.provider, self.name)


class OrtCudaBackend(OrtCpuBackend):
    """ONNX Runtime, CUDAExecutionProvider with IO binding."""

    name = "ort-cuda"
    description = "ONNX Runtime CUDAExecutionProvider with IO binding (untested without a GPU)"
    provider = "CUDAExecutionProvider"
    _prepared_cls = OrtCudaPrepared

    def available(self) -> tuple[bool, str]:
        """True only with a CUDA-enabled onnxruntime build and a visible GPU."""
        ok, reason = super().available()
        if ok and not torch.cuda.is_available():
            return False, "onnxruntime has the CUDA provider but torch sees no CUDA device"
        return ok, reason
