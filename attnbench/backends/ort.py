"""ONNX Runtime: export once per module setting (dynamo first, legacy fallback), verify, then time a session.

Export: torch.onnx.export(dynamo=True) with dynamic batch, H and W, falling back to dynamo=False (the
TorchScript exporter); which one produced the graph is recorded. The graph is exported from an example of
batch >= 2, because torch.export specialises a dimension of size 1 to a constant; H and W are left to the
exporter (Dim.AUTO), which keeps them symbolic unless the module's code fixes them.
Export once: a graph whose batch, H and W came out symbolic is kept (export_cache.EXPORTS, keyed by a
fingerprint of the module's classes, attributes and weights) and reused for the other resolutions of the
same module setting in this process. Parity is still checked at every resolution; where the shared graph
fails there (an exporter can report a dim symbolic and still bake the traced size into a Reshape), that
resolution and the setting's later ones are exported per resolution, and the row says why
(extra: onnx_graph, onnx_per_resolution_reason).
Verification (measurement.md, "ONNX export"): the session's output is compared with PyTorch's on the same
input (max abs diff <= PARITY_ATOL, and <= PARITY_RTOL x max|output| for outputs below 1); when the batch
axis came out symbolic (dim_param), a second batch size is run and compared too, because an exporter can
silently bake a traced size into the graph.
Session: intra_op_num_threads = threads (1 unless asked; ORT's default 0 takes every core),
inter_op_num_threads = 1, the graph optimisation level of the scenario's ort_opt_level (ORT_ENABLE_ALL unless
asked), ORT_SEQUENTIAL; warm-up >= ORT_WARMUP_MIN_CALLS runs, then the shared timing protocol. Failures are
statuses with reasons (export_failed, session_failed, parity_failed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnbench.backends.base import (
    STATUS_EXPORT_FAILED,
    STATUS_PARITY_FAILED,
    STATUS_SESSION_FAILED,
    SYNC_PER_CALL,
    Backend,
    CaseFailed,
    Job,
    Prepared,
    make_input,
    out_of_memory,
)
from attnbench.backends.cuda import busy_or_note, gpu_free_bytes, gpu_load_facts, release_gpu_memory
from attnbench.backends.export_cache import (
    EXPORTS,
    ORIGIN_DISK,
    ORIGIN_WORKER,
    ExportAnswer,
    Graph,
    module_fingerprint,
)
from attnbench.capture import captured
from attnbench.counting.base import tensor_outputs
from attnbench.memory import PeakMemory
from attnbench.results import Case, Scenario
from attnbench.scratch import scratch_dir
from attnbench.timing import Lane, Sync, TimingBudget
from attnbench.workers import WorkerError

#: Largest |ORT - PyTorch| accepted; float32 graphs of these modules agree to ~1e-6.
PARITY_ATOL = 1e-4
#: ...and, for outputs smaller than 1, at most this fraction of the largest |output|: an absolute bound alone
#: cannot fail for a module whose outputs are ~1e-5 (mhsa's upstream init), whatever ORT returns.
PARITY_RTOL = 1e-4
#: With --tf32 the CUDA provider rounds each matmul and convolution factor to TF32's 10-bit mantissa (unit
#: round-off 2**-11, about 4.9e-4) against PyTorch's true float32 reference: allow 1% of the largest |output|,
#: which a wrong graph (errors of the size of the output) still exceeds. Not yet measured on a GPU.
TF32_PARITY_RTOL = 1e-2
try:  # a dependency, but a machine may lack it: then available() says so rather than the import failing
    import onnx
    import onnxruntime as ort

    MISSING: ImportError | None = None
except ImportError as exc:  # pragma: no cover
    MISSING = exc

#: ORT prepares by running PyTorch at a second batch size (export and parity) and keeps its own arena: its
#: peak is a multiple of the eager estimate at the measured batch.
ORT_MEMORY_FACTOR = 2.0
#: measurement.md: the first ORT run was 1.1-6.6x the steady state; onnxruntime_perf_test drops it too.
ORT_WARMUP_MIN_CALLS = 10
#: Weights above this go to an external data file (protobuf's limit is 2 GiB per file).
EXTERNAL_DATA_BYTES = 2**30
INPUT_NAME = "x"
#: The graph's first output; a module returning several tensors (a tuple, list or dict) gets y, y1, y2, ...
OUTPUT_NAME = "y"


def output_names(count: int) -> list[str]:
    """The graph's output names for a module returning `count` tensors, in the module's order."""
    return [OUTPUT_NAME, *(f"{OUTPUT_NAME}{i}" for i in range(1, count))]


def numpy_outputs(out: Any) -> list[np.ndarray]:
    """Every tensor a module returned (a tensor, or a tuple, list or dict of them), as arrays in order."""
    return [t.detach().numpy() for _, t in tensor_outputs(out)]


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
        from torch.onnx._internal.exporter import _registration  # a private API of torch's exporter, absent elsewhere

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


def parity_limit(scale: float, tf32: bool = False) -> float:
    """Largest |ORT - PyTorch| accepted for outputs whose largest magnitude is `scale` (TF32: a share of it)."""
    if tf32 and scale > 0:
        return TF32_PARITY_RTOL * scale
    return min(PARITY_ATOL, PARITY_RTOL * scale) if 0 < scale < 1 else PARITY_ATOL


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    dynamic: bool = True,
    spatial: bool = False,
    outputs: Sequence[str] = (OUTPUT_NAME,),
) -> dict[str, Any]:
    """Export `module` to `path`, asking for a dynamic batch (`spatial`: batch, H and W); return what happened.

    The batch-only export tries dynamo, then legacy. The spatial export is dynamo only, with every dim
    Dim.AUTO: a module whose code fixes a size exports with that size (or with a symbolic name over a baked
    size, which only a run at another shape reveals) instead of failing; the caller verifies and falls back
    to the batch-only export. Raises CaseFailed(export_failed) with the exporters' errors and console tail.
    """
    _reuse_torchlib_registry()
    errors: list[str] = []
    info: dict[str, Any] = {}
    attempts = _attempts(module, example, path, (dynamic, spatial), list(outputs))
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
                if out_of_memory(exc):  # the machine's limit, not the exporter's: measure() reports an oom
                    raise
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


def _attempts(
    module: nn.Module, example: torch.Tensor, path: Path, dims: tuple[bool, bool], outputs: list[str]
) -> list[tuple[str, Callable[[], Any]]]:
    """The exports to try, in order: dynamo (with Dim.AUTO for batch, H and W when `spatial`), then legacy."""
    dynamic, spatial = dims
    auto = torch.export.Dim.AUTO
    dynamo_dims = {0: auto, 2: auto, 3: auto} if spatial else {0: torch.export.Dim("batch")}
    # One self-contained file where protobuf allows it, so the graph can be kept and reopened as bytes.
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    export = functools.partial(
        torch.onnx.export, module, (example,), str(path), input_names=[INPUT_NAME], output_names=outputs
    )
    dynamo = functools.partial(
        export,
        dynamo=True,
        dynamic_shapes=(dynamo_dims,) if dynamic else None,
        external_data=weight_bytes > EXTERNAL_DATA_BYTES,
        verbose=False,
    )
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)} if dynamic else None
    legacy = functools.partial(export, dynamo=False, dynamic_axes=axes)
    return [("dynamo", dynamo), ("legacy", legacy)][: 1 if spatial else 2]


def input_dims(path: Path) -> list[int | str]:
    """The graph input's dims: ints for fixed sizes (dim_value), names for symbolic ones (dim_param)."""

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in dims]


def _opset(path: Path) -> int | None:

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


#: --ort-opt-level -> the name of ONNX Runtime's GraphOptimizationLevel.
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def session_options(threads: int, opt_level: str = "all", log_severity: int = 3) -> Any:
    """SessionOptions: explicit threads, the graph optimisation level asked for, sequential execution, quiet logs."""

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Errors only (3) unless told: the session's warnings (e.g. unused initialisers) are not results.
    opts.log_severity_level = log_severity
    return opts


def export_inputs(shape: Sequence[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's input and one at another batch size (1 or 2): parity checks both, the export traces batch >= 2."""
    shape = tuple(shape)
    alt_batch = 2 if shape[0] == 1 else 1
    x = make_input(shape, torch.float32, seed)
    return x, make_input((alt_batch, *shape[1:]), torch.float32, seed + 1)


def export_graph(
    module: nn.Module,
    x: torch.Tensor,
    example: torch.Tensor,
    spatial: bool,
    opener: Callable[[str, str], Any] | None = None,
    outputs: list[str] | None = None,
) -> tuple[Graph, Any]:
    """Export `module` (traced on `example`, for inputs like `x`) as a Graph, and `opener(path, exporter)` on its file.

    `outputs` names the graph's outputs, one per tensor the module returns (output_names).

    The file lives in a temporary directory removed on every exit path; a graph over 2 GB keeps its weights in
    external files, so it has no bytes (it is opened from the file, and not kept for reuse).
    """
    batch = x.shape[0]
    with scratch_dir("attnbench-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        info = export_onnx(module, example, path, spatial=spatial, outputs=outputs)
        dims = input_dims(path)
        if not spatial and isinstance(dims[0], int) and dims[0] != batch:
            # The exporter fixed the batch to the example's: export again at the measured shape.
            first = {f"dynamic_attempt_{k}": v for k, v in info.items() if k != "export_s"}
            again = export_onnx(module, x, path, dynamic=False, outputs=outputs)
            again["export_s"] += info["export_s"]
            info = {
                **first,
                **again,
                "static_reexport_reason": f"dynamic batch requested, exporter fixed it to {dims[0]}",
            }
            dims = input_dims(path)
        single_file = [p.name for p in Path(tmp).iterdir()] == [path.name]
        graph = Graph(
            model=path.read_bytes() if single_file else b"",
            exporter=info["exporter"],
            dims=tuple(dims),
            opset=_opset(path),
            info=info,
            exported_at=tuple(x.shape),
        )
        opened = opener(str(path), graph.exporter) if opener is not None else None
    return graph, opened


def _mode_of(graph: Graph, first_use: bool, otherwise: str) -> str:
    """How a row got its graph: exported in a worker or read from the cache (its first user), else `otherwise`."""
    if not first_use:
        return otherwise
    return {ORIGIN_WORKER: "exported in a worker", ORIGIN_DISK: "from the cache"}.get(graph.origin, otherwise)


def export_setting(
    module: nn.Module, seed: int, key: str, shapes: list[tuple[int, ...]], spatial: bool
) -> ExportAnswer:
    """A worker's export of one module setting: one graph for every shape if `spatial` works, else one per shape.

    `module` was built again in the worker from its name and the run's seed; one that differs from the run's
    build (its fingerprint `key`) raises, and the run then exports in its own process. Parity is the run's to check.
    """
    if module_fingerprint(module) != key:
        raise RuntimeError("the module built in a worker differs from the run's build (not seeded alike)")
    answer = ExportAnswer()
    x, x_alt = export_inputs(shapes[0], seed)
    with torch.inference_mode():  # as the run names them: one graph output per tensor the module returns
        outputs = output_names(len(numpy_outputs(module(x))))
    if spatial:
        try:
            graph, _ = export_graph(module, x, x if x.shape[0] >= 2 else x_alt, spatial=True, outputs=outputs)
            if graph.spatial_dynamic:
                answer.spatial = graph
                return answer
            raise CaseFailed(STATUS_EXPORT_FAILED, f"the exporter fixed the input dims to {list(graph.dims)}")
        except CaseFailed as exc:
            answer.refused = f"dynamic H, W export: {exc.status}: {exc.reason}"
    for shape in shapes:
        x, x_alt = export_inputs(shape, seed)
        try:
            example = x if x.shape[0] >= 2 else x_alt
            answer.fixed[tuple(shape)], _ = export_graph(module, x, example, spatial=False, outputs=outputs)
        except CaseFailed as exc:
            answer.failed[tuple(shape)] = exc
    return answer


def cuda_provider_options(device_id: int, tf32: bool) -> dict[str, str]:
    """The CUDA execution provider's options: torch's current device, and TF32 as the scenario says.

    ORT's own default is TF32 on (`use_tf32{true}` in cuda_execution_provider_info.h): left alone, a "float32"
    row would be a TF32 one, compared with PyTorch's true float32 at 1e-4.
    """
    return {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0"}


def quiet_run_options() -> Any:
    """RunOptions that log errors only: a run's warnings would land on the terminal in the middle of a table."""
    options = ort.RunOptions()
    options.log_severity_level = 3
    return options


#: What ORT says at session start about nodes it did not put on the asked provider (kept in the row's extra).
_PLACEMENT = ("Memcpy nodes are added", "not assigned to the preferred execution providers")


def _placement_notes(console: str) -> list[str]:
    """ORT's lines about nodes placed off the asked provider (shape ops on the CPU, copies between them)."""
    lines = [_clean(ln) for ln in _ANSI.sub("", console).splitlines()]
    return [ln.split("] ", 1)[-1][:300] for ln in lines if any(p in ln for p in _PLACEMENT)]


#: The date and time ORT's log lines start with.
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ ")


def _with_console(reason: str, console: str, limit: int = 600) -> str:
    """A failure reason with what ONNX Runtime itself printed (why a provider did not load, for instance): its last
    whole lines, without their time stamps, within `limit` characters."""
    lines = [_STAMP.sub("", _clean(ln)) for ln in _ANSI.sub("", console).splitlines()]
    lines = [ln for ln in lines if ln and not any(n in ln for n in _NOISE)]
    said: list[str] = []
    for line in reversed(lines):
        if said and sum(len(s) + 3 for s in said) + len(line) > limit:
            break
        said.insert(0, line[-limit:])
    return f"{reason}; onnxruntime said: {' | '.join(said)}" if said else reason


def open_session(
    model: str | bytes, options: Any, provider: str, provider_options: dict[str, str] | None
) -> tuple[Any, str]:
    """(an ORT session that runs on `provider`, what ORT printed while starting it), or CaseFailed(session_failed)
    with ORT's own reason.

    ORT's fallbacks to the CPU are off: `enable_fallback=0` makes a provider that fails to start raise instead of
    the session being made again on the CPU, and disable_fallback() stops Run() from moving the session to the
    CPU after an EPFail (onnxruntime_inference_collection.py: InferenceSession.__init__ and Session.run). A
    provider whose library does not load is only logged by ORT, and the session starts without it: the check of
    get_providers() below turns that into a failure that quotes ORT's log line.
    """
    providers = [(provider, provider_options)] if provider_options else [provider]
    out = None
    try:
        with captured() as out:
            session = ort.InferenceSession(model, sess_options=options, providers=providers, enable_fallback=0)
            session.disable_fallback()
    except Exception as exc:
        if out_of_memory(exc):  # the GPU's arena could not hold the weights: measure() reports an oom
            raise
        console = (out.text + "\n" + "\n".join(out.warnings)) if out is not None else ""
        raise CaseFailed(STATUS_SESSION_FAILED, _with_console(_short(exc), console)) from None
    console = out.text + "\n" + "\n".join(out.warnings)
    running = session.get_providers()
    if running[0] != provider:
        why = f"{provider} did not start (the session runs on {running})"
        raise CaseFailed(STATUS_SESSION_FAILED, _with_console(why, console))
    taken = session.get_provider_options().get(provider, {})
    differs = {k: taken.get(k) for k, v in (provider_options or {}).items() if taken.get(k) != v}
    if differs:
        raise CaseFailed(STATUS_SESSION_FAILED, f"{provider} did not take {provider_options} (it has {differs})")
    return session, console


class OrtPrepared(Prepared):
    """A verified ONNX Runtime session over one input, from a graph exported once per module setting."""

    backend = "ort"

    def __init__(
        self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int, backend: OrtCpuBackend
    ) -> None:
        super().__init__()

        self.backend = backend.name
        threads = self.threads = scenario.threads
        self.opt_level = scenario.ort_opt_level
        self.dtype = "float32"
        self.tf32 = scenario.tf32
        provider = self.provider = backend.provider
        self.provider_options = backend.provider_options(scenario)
        was_training = module.training
        module.eval()
        try:
            shape = tuple(input_shape)
            x, x_alt = export_inputs(shape, seed)
            with torch.inference_mode():
                ref = numpy_outputs(module(x))
                ref_alt = numpy_outputs(module(x_alt))
            # Every tensor the module returns is an output of the graph, timed and checked.
            self.output_names = output_names(len(ref))
            self.extra.update(
                ort_provider=provider,
                ort_intra_op_num_threads=threads,
                ort_inter_op_num_threads=1,
                ort_graph_optimization_level=OPT_LEVELS[self.opt_level],
                ort_execution_mode="ORT_SEQUENTIAL",
                onnxruntime_version=ort.__version__,
            )
            self.x = x
            key = module_fingerprint(module)
            self.extra["onnx_graph_key"] = key[:12]
            shared = EXPORTS.get(key)
            if shared is not None and shared.dims[1] == shape[1]:
                try:
                    self._use(shared, _mode_of(shared, EXPORTS.claim(key), "reused"), self._open(shared.model))
                    self._check_parity(x, ref, x_alt, ref_alt, list(shared.dims))
                except CaseFailed as exc:
                    # The graph holds where it was exported but not here: this setting goes per resolution.
                    at, here = ("x".join(map(str, s[2:])) for s in (shared.exported_at, shape))
                    EXPORTS.refuse(key, f"the graph exported at {at} failed at {here} ({exc.status}: {exc.reason})")
                    self._reset_parity()
                    shared = None
            else:
                shared = None
            if shared is None:
                self._export_here(module, key, x, x_alt, ref, ref_alt)
            self._bind(x)
        finally:
            module.train(was_training)

    def _export_here(
        self,
        module: nn.Module,
        key: str,
        x: torch.Tensor,
        x_alt: torch.Tensor,
        ref: list[np.ndarray],
        ref_alt: list[np.ndarray],
    ) -> None:
        """Export at this resolution and verify: one graph for every resolution if possible, else this one's."""
        example = x if x.shape[0] >= 2 else x_alt
        why_not = EXPORTS.refused(key)
        if why_not is None and x.dim() != 4:
            why_not = f"input {tuple(x.shape)} has no H, W to leave dynamic"
        if why_not is None:
            started = time.perf_counter()
            try:
                graph, session = self._export(module, x, example, spatial=True)
            except CaseFailed as exc:
                why_not = f"dynamic H, W export: {exc.status}: {exc.reason}"
                EXPORTS.refuse(key, why_not, lasting=True)
                self.extra["export_spatial_attempt_s"] = time.perf_counter() - started
            else:
                why_not = self._try_spatial(graph, session, key, (x, ref, x_alt, ref_alt))
                if why_not is None:
                    return
                # Seconds the failed attempt cost, so that export time is accounted for in full.
                self.extra["export_spatial_attempt_s"] = time.perf_counter() - started
        # As in attnbench 0.1: a dynamic batch only, for this resolution.
        shape = tuple(x.shape)
        failure = EXPORTS.failure(key, shape)
        if failure is not None:
            raise failure
        fixed = EXPORTS.get_fixed(key, shape)
        if fixed is not None:
            graph, session = fixed, self._open(fixed.model, fixed.exporter)
            mode = _mode_of(fixed, EXPORTS.claim(key, shape), "reused per resolution")
        else:
            graph, session = self._export(module, x, example, spatial=False)
            EXPORTS.put_fixed(key, shape, graph)
            mode = "exported per resolution"
        self._use(graph, mode, session)
        self.extra["onnx_per_resolution_reason"] = why_not
        self._check_parity(x, ref, x_alt, ref_alt, list(graph.dims))

    def _try_spatial(self, graph: Graph, session: Any, key: str, checks: tuple[Any, ...]) -> str | None:
        """Use a graph just exported with H, W dynamic if it is one and holds here; else why not (refused)."""
        try:
            if not graph.spatial_dynamic:
                why = f"the exporter fixed the input dims to {list(graph.dims)}"
                EXPORTS.refuse(key, f"dynamic H, W export: {STATUS_EXPORT_FAILED}: {why}", lasting=True)
                raise CaseFailed(STATUS_EXPORT_FAILED, why)
            self._use(graph, "exported", session)
            self._check_parity(*checks, list(graph.dims))
        except CaseFailed as exc:
            why_not = f"dynamic H, W export: {exc.status}: {exc.reason}"
            EXPORTS.refuse(key, why_not)
            self._reset_parity()
            return why_not
        self.extra["onnx_graph_cached"] = EXPORTS.put(key, graph)
        return None

    def _export(self, module: nn.Module, x: torch.Tensor, example: torch.Tensor, spatial: bool) -> tuple[Graph, Any]:
        """Export (export_graph) and open a session on the graph."""
        return export_graph(module, x, example, spatial, opener=self._open, outputs=self.output_names)

    def _open(self, model: str | bytes, exporter: str | None = None) -> Any:
        """An ORT session on a graph file or its bytes; a session that cannot start raises session_failed."""
        # A device provider's session logs its warnings at start: ORT says there which nodes it put on the CPU
        # (shape computations, by design) and how many copies it added between the two.
        device = self.provider_options is not None
        options = session_options(self.threads, self.opt_level, log_severity=2 if device else 3)
        try:
            session, console = open_session(model, options, self.provider, self.provider_options)
        except CaseFailed as exc:
            exc.details["exporter"] = exporter or self.exporter
            raise
        if device:
            self.extra["ort_placement_warnings"] = _placement_notes(console)
        return session

    def _use(self, graph: Graph, mode: str, session: Any) -> None:
        """Make `graph` (opened as `session`) this case's graph and record where it came from."""
        self.session = session
        self.exporter = graph.exporter
        for stale in ("export_s", "export_fallback_reason", "static_reexport_reason", "onnx_graph_cached"):
            self.extra.pop(stale, None)
        if not mode.startswith("reused"):  # the export's seconds belong to the row that exported the graph
            info = dict(graph.info)
            if graph.origin == ORIGIN_DISK:  # exported by a run before: its seconds were not spent in this one
                info = {(f"cached_{k}" if k == "export_s" else k): v for k, v in info.items()}
            self.extra.update(info)
        self.extra.update(
            onnx_graph=mode,
            onnx_graph_exported_at=list(graph.exported_at),
            onnx_opset=graph.opset,
            onnx_input_dims=list(graph.dims),
            dynamic_batch=isinstance(graph.dims[0], str),
            onnx_dynamic_spatial=graph.spatial_dynamic,
        )

    def _reset_parity(self) -> None:
        """Forget a failed check's figures before the case is verified again on another graph."""
        self.parity_max_abs = None
        self.parity_checked_shapes = ()
        for name in ("parity_ref_max_abs", "parity_limit", "dynamic_batch_note"):
            self.extra.pop(name, None)

    def _run_numpy(self, x: torch.Tensor) -> list[np.ndarray]:
        return self.session.run(self.output_names, {INPUT_NAME: x.numpy()}, quiet_run_options())

    def _check_parity(
        self,
        x: torch.Tensor,
        ref: list[np.ndarray],
        x_alt: torch.Tensor,
        ref_alt: list[np.ndarray],
        dims: list[int | str],
    ) -> None:
        """Compare with PyTorch at the measured batch and, if the batch axis is symbolic, at a second one."""
        checks = [(x, ref)]
        if isinstance(dims[0], str):
            checks.append((x_alt, ref_alt))
        else:
            self.extra["dynamic_batch_note"] = f"exporter fixed the batch to {dims[0]}; checked that batch only"
        worst = 0.0
        checked: list[tuple[int, ...]] = []
        for xi, refs in checks:
            details = {"exporter": self.exporter, "parity_checked_shapes": tuple(checked), "extra": self.extra}
            try:
                # A graph that baked a traced size fails here by design (then another export is tried): ORT's
                # own error line about it is not for the terminal.
                with captured():
                    outs = self._run_numpy(xi)
            except Exception as exc:
                if out_of_memory(exc):  # the device's limit, not a wrong graph: measure() reports an oom
                    raise
                raise CaseFailed(
                    STATUS_PARITY_FAILED,
                    f"ORT run at input {tuple(xi.shape)} failed (graph input dims {dims}): {_short(exc)}",
                    **details,
                ) from None
            # Every output is checked, each against its own scale.
            for name, out, refi in zip(self.output_names, outs, refs, strict=True):
                worst = max(worst, self._compare(name, out, refi, xi, details))
            checked.append(tuple(xi.shape))
            self.parity_max_abs = worst
            self.parity_checked_shapes = tuple(checked)

    def _compare(self, name: str, out: np.ndarray, ref: np.ndarray, xi: torch.Tensor, details: dict[str, Any]) -> float:
        """max |ORT - PyTorch| of one output at one input; CaseFailed when its shape or values differ."""
        which = "" if len(self.output_names) == 1 else f" {name} (output {self.output_names.index(name)})"
        if out.shape != ref.shape:
            raise CaseFailed(
                STATUS_PARITY_FAILED,
                f"ORT output{which} shape {out.shape} != PyTorch {ref.shape} at input {tuple(xi.shape)}",
                **details,
            )
        diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if out.size else 0.0
        if not np.isfinite(diff):
            diff = float("inf")
        # The scale the difference is judged against: a tiny |output| makes any abs diff look good.
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        self.extra["parity_ref_max_abs"] = max(self.extra.get("parity_ref_max_abs", 0.0), scale)
        limit = parity_limit(scale, self.tf32)
        self.extra["parity_limit"] = min(self.extra.get("parity_limit", limit), limit)
        if diff > limit:
            raise CaseFailed(
                STATUS_PARITY_FAILED,
                f"max |ORT - PyTorch|{which} = {diff:.3g} > {limit:.3g} (max |output| {scale:.3g}) at input "
                f"{tuple(xi.shape)}",
                exporter=self.exporter,
                parity_max_abs=max(diff, self.parity_max_abs or 0.0),
                parity_checked_shapes=(*details["parity_checked_shapes"], tuple(xi.shape)),
                extra=self.extra,
            )
        return diff

    def _bind(self, x: torch.Tensor) -> None:
        """Prepare the zero-argument call that timing repeats."""
        feed = {INPUT_NAME: x.numpy()}
        self._call: Callable[[], Any] = functools.partial(self.session.run, self.output_names, feed)

    def run_once(self) -> Any:
        """One session run on the prepared input."""
        return self._call()

    def timed_callable(self) -> tuple[Callable[[], Any], Sync | None]:
        return self._call, None

    def timing_context(self) -> Any:

        return contextlib.nullcontext()

    def lane(self, budget: TimingBudget) -> Lane:
        """The shared protocol with at least ORT_WARMUP_MIN_CALLS warm-up runs."""
        budget = dataclasses.replace(budget, warmup_calls=max(budget.warmup_calls, ORT_WARMUP_MIN_CALLS))
        return super().lane(budget)

    def peak_memory(self) -> PeakMemory:
        """Not measured for ORT; the method string says why."""
        return PeakMemory(peak_bytes=None, method=ORT_PEAK_REASON)

    def close(self) -> None:
        """Drop the session (and with it ORT's arena)."""
        self.__dict__.pop("session", None)
        self.__dict__.pop("_call", None)


#: How ORT's CUDA runs are synchronised (recorded in every row and in the environment's backend facts).
ORT_CUDA_SYNC = (
    f"{SYNC_PER_CALL} (run_with_iobinding synchronises the provider's stream at the end of each run: ORT's "
    "default, disable_synchronize_execution_providers not set)"
)


class OrtCudaPrepared(OrtPrepared):
    """ORT on the CUDA execution provider, timed with IO binding (input and output stay on the GPU)."""

    def _bind(self, x: torch.Tensor) -> None:
        assert self.provider_options is not None
        device_id = self.device_id = int(self.provider_options["device_id"])
        # Inputs and outputs live on the device (torch's current one, as the session), so the timed call moves no
        # data over PCIe.
        self._x_dev = ort.OrtValue.ortvalue_from_numpy(x.numpy(), "cuda", device_id)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, self._x_dev)
        for name in self.output_names:  # every output of the module stays on the device
            binding.bind_output(name, "cuda", device_id)
        self._binding = binding
        # Each run ends with the provider's stream synchronised (OnRunEnd(sync_stream) in ORT's CUDA provider), so
        # a timed call is a whole call, as the cuda backend's; the run options only keep the logs quiet.
        self._call = functools.partial(self.session.run_with_iobinding, binding, quiet_run_options())
        self.extra.update(
            ort_io_binding=True,
            ort_cuda_options=self.session.get_provider_options().get(self.provider),
            timing_sync=ORT_CUDA_SYNC,
        )

    def device_busy_s(self) -> float | None:
        """The GPU's busy seconds per warmed-up run (CUPTI sees ORT's kernels too), then its clock and power."""
        busy = busy_or_note(self._call, self.extra)
        self.extra.update(gpu_load_facts(self.device_id))
        return busy

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
        "autocast": "ONNX Runtime runs the exported float32 graph: torch.autocast applies to the PyTorch backends",
    }
    # ONNX Runtime compiles nothing: a torch.compile mode means nothing to it (compile itself is refused); TF32 is a
    # setting of the CUDA provider, which this backend does not use.
    ignores: tuple[str, ...] = ("compile_mode", "tf32")
    parity = "ORT"
    marker = "s"
    provider = "CPUExecutionProvider"
    _prepared_cls: type[OrtPrepared] = OrtPrepared

    def available(self) -> tuple[bool, str]:
        """True when onnxruntime, onnx and the provider are importable/present."""
        if MISSING is not None:
            return False, f"{MISSING.name or MISSING} is not installed (pip install onnx onnxruntime onnxscript)"
        if self.provider not in ort.get_available_providers():
            return False, f"onnxruntime {ort.__version__} has no {self.provider} (has {ort.get_available_providers()})"
        return True, f"onnxruntime {ort.__version__} {self.provider}, onnx {onnx.__version__}"

    def prepare(self, module: nn.Module, input_shape: Sequence[int], scenario: Scenario, seed: int = 0) -> Prepared:
        """Export, open a session, verify parity; failures raise CaseFailed with a status (inference only)."""
        return self._prepared_cls(module, input_shape, scenario, seed, self)

    def cached(self, cache: Any) -> contextlib.AbstractContextManager[Any]:
        """Exported graphs (and refused spatial exports) read from and written to `cache` for the block."""
        return EXPORTS.attached(cache)

    def offload(self, module: nn.Module, cases: Sequence[Case], seed: int) -> list[Job]:
        """The export of this module setting for every shape of `cases` not already in the cache (a worker's job)."""
        if MISSING is not None:
            return []
        key = module_fingerprint(module)
        shapes = sorted({c.input_shape for c in cases})
        spatial = EXPORTS.refused(key) is None and all(len(s) == 4 for s in shapes)
        if spatial and EXPORTS.get(key) is not None:
            return []
        if not spatial:
            shapes = [s for s in shapes if EXPORTS.get_fixed(key, s) is None and EXPORTS.failure(key, s) is None]
        if not shapes:
            return []
        return [Job(f"onnx-export:{key}", "attnbench.backends.ort:export_setting", (seed, key, shapes, spatial))]

    def receive(self, job: Job, answer: Any) -> None:
        """The worker's graphs into the export cache; an export that killed its worker fails those shapes."""
        _, key, shapes, _ = job.args
        if isinstance(answer, ExportAnswer):
            EXPORTS.receive(key, answer)
        elif isinstance(answer, WorkerError):
            for shape in shapes:
                EXPORTS.fail(key, shape, CaseFailed(STATUS_EXPORT_FAILED, f"the export's worker process: {answer}"))
        # Anything else (a build that differs in the worker): prepare() exports in this process, as it always did.

    def provider_options(self, scenario: Scenario) -> dict[str, str] | None:
        """The provider's options for a session in `scenario` (None: the provider's defaults)."""
        return None

    def preparing(self, scenario: Scenario) -> str:
        """The export (unless a worker or a run before made the graph), the session and its parity check."""
        return "export, session, parity"

    def memory_estimate(self, eager_bytes: int | None, case: Case) -> int | None:
        """ORT prepares by running PyTorch at a second batch size (export and parity) and keeps its own arena."""
        if eager_bytes is None:
            return None
        return int(eager_bytes * ORT_MEMORY_FACTOR * max(1.0, 2 / case.batch))


#: What a provider probe found, per (provider, device): ORT lists a provider its package was built with even when
#: the provider's libraries (cuBLAS, cuDNN) do not load, so available() opens a one-node session once to see.
_PROBED: dict[tuple[str, int], str | None] = {}


def _probe_model() -> bytes:
    """A one-node float32 graph (y = x + x), the least a provider must run."""
    from onnx import TensorProto, helper  # onnx's graph builder: only a provider probe needs it

    x = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", [INPUT_NAME, INPUT_NAME], [OUTPUT_NAME])], "probe", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def probe_provider(provider: str, provider_options: dict[str, str] | None) -> str | None:
    """Why `provider` cannot start and run a one-node graph here, in ORT's own words; None when it can."""
    try:
        session, _ = open_session(_probe_model(), session_options(1), provider, provider_options)
        with captured():
            session.run([OUTPUT_NAME], {INPUT_NAME: np.ones(1, np.float32)}, quiet_run_options())
    except CaseFailed as exc:
        return exc.reason
    except Exception as exc:  # the provider started but cannot run (a driver too old for its CUDA, say)
        return _short(exc)
    return None


class OrtCudaBackend(OrtCpuBackend):
    """ONNX Runtime, CUDAExecutionProvider with IO binding."""

    name = "ort-cuda"
    description = "ONNX Runtime CUDAExecutionProvider with IO binding (untested without a GPU)"
    device = "cuda"
    memory_name = "GPU memory"
    marker = "D"
    provider = "CUDAExecutionProvider"
    ignores = ("compile_mode",)
    sync = ORT_CUDA_SYNC
    _prepared_cls = OrtCudaPrepared

    def free_memory(self) -> int | None:
        """Free memory of the GPU the session runs on (its arena allocates there, not in RAM)."""
        return gpu_free_bytes()

    def provider_options(self, scenario: Scenario) -> dict[str, str] | None:
        """torch's current device and the scenario's TF32 (ORT's default would be on)."""
        return cuda_provider_options(torch.cuda.current_device(), scenario.tf32)

    def available(self) -> tuple[bool, str]:
        """True only when the CUDA provider starts and runs a one-node graph on torch's current GPU (probed once)."""
        ok, reason = super().available()
        if not ok:
            return ok, reason
        if not torch.cuda.is_available():
            return False, f"onnxruntime {ort.__version__} has the CUDA provider but torch sees no CUDA device"
        device = torch.cuda.current_device()
        key = (self.provider, device)
        if key not in _PROBED:
            _PROBED[key] = probe_provider(self.provider, cuda_provider_options(device, tf32=False))
        why = _PROBED[key]
        if why is not None:
            return False, f"onnxruntime {ort.__version__} lists {self.provider}, but it cannot run here: {why}"
        return True, f"{reason} on GPU {device}"

    def cleanup_after_failure(self) -> None:
        """Free a failed session's objects (and with them its GPU arena) outside the handler, as the cuda backend."""
        release_gpu_memory()
