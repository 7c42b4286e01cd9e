"""The one vocabulary and the records every run speaks: Scenario, Case, Result, statuses.

A `Case` is what to measure: one module at one geometry (dim, H, W, batch, kwargs) on one backend, in one
`Scenario`. A `Scenario` holds every setting of how the module runs beyond its geometry (mode, dtype, threads,
memory format, compile, layout, allocator, ...): one frozen object that travels whole, like
torch.utils.benchmark's TaskSpec. Each of its fields is an `Axis`: a CLI option, a sweep dimension, a CSV
column, a table column when it varies, a word in a row's label and in the report's scenario line, all derived
from the field's metadata here. Adding a scenario axis is one field below plus the backend that runs it.

A `Result` is the one flat, frozen row a case becomes: identity, counts, latency, memory, status, in base units
(seconds, bytes, MACs, FLOPs). Files and frames flatten its Scenario into one column per field (attnbench.store).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# ---------------------------------------------------------------- statuses

OK = "ok"  # the only status whose numbers are all valid
INVALID = "invalid"  # the module's constraints refuse the case (nothing ran)
FAILED = "failed"  # an exception inside the case
OOM = "oom"
SKIPPED = "skipped"  # backend unavailable here, or a combination it cannot run
GUARDED = "guarded"  # refused by the memory guard (estimate above free memory)
TIMEOUT = "timeout"
COMPILE_FAILED = "compile_failed"  # torch.compile raised (the reason says where)
EXPORT_FAILED = "export_failed"
SESSION_FAILED = "session_failed"
PARITY_FAILED = "parity_failed"
#: Cases refused by design (reported with their reason), as opposed to cases that failed.
REFUSED = (INVALID, SKIPPED, GUARDED)

# ---------------------------------------------------------------- the vocabulary of a scenario

#: "infer": eval mode, no grad; "train": train mode, forward + backward of output.sum().
MODES = ("infer", "train")
DTYPES = ("float32", "float16", "bfloat16")
#: Short names people type for a dtype.
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
#: Which allocator a CPU row's headline latency is taken under (see attnbench.sysalloc): glibc pinned by attnbench
#: in its own process, glibc at its defaults in fresh processes, or jemalloc / tcmalloc loaded with LD_PRELOAD.
ALLOCATORS = ("pinned", "system", "jemalloc", "tcmalloc")
#: What a user's module takes and returns unless told otherwise: (B, C, H, W) maps; zoo modules keep their own.
DEFAULT_USER_LAYOUT = "image"
#: image: (B, C, H, W) in and out; tokens: (B, N, C), N = H*W; tokens-hw: forward(x, H, W) with x (B, N, C), as PVT,
#: SegFormer and Swin blocks take it (attnbench.zoo.adapters).
USER_LAYOUTS = ("image", "tokens", "tokens-hw")
#: The layouts that feed tokens (B, N, C): channels_last, a memory format of (B, C, H, W) maps, means nothing there.
TOKEN_LAYOUTS = ("tokens", "tokens-hw")
#: torch.compile's modes (torch.compile(mode=...)).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Mixed precision as timm's benchmark runs it (--amp): torch.autocast around a float32 module.
AUTOCAST = ("off", "bfloat16", "float16")
#: ONNX Runtime's graph optimisation levels (SessionOptions.graph_optimization_level).
ORT_OPT_LEVELS = ("disable", "basic", "extended", "all")
#: The backend of a counts-only row: nothing ran the module.
NO_BACKEND = "none"


@dataclass(frozen=True)
class Axis:
    """What a Scenario field is to the rest of the house: its option, values, header, label and words."""

    #: The CLI option that sets it ("--dtype"); repeating the option sweeps it.
    option: str
    help: str
    #: The values it takes (None: any int >= 1).
    choices: tuple[Any, ...] | None = None
    #: Column header when it varies within a table.
    header: str = ""
    #: How a row's label shows a value other than the default (" {}" appends the value).
    label: str = " {}"
    #: How the report's scenario line names each value; a value missing here is said with `word` ("" or no
    #: `word`: not said at all, a quiet default).
    words: Mapping[Any, str] = field(default_factory=dict)
    word: str = ""
    #: Other names accepted on the command line for a value (fp16 -> float16).
    aliases: Mapping[str, Any] = field(default_factory=dict)
    #: Another field that must be on (truthy) for this one to mean anything; off, this one is its default.
    requires: str = ""

    def parse(self, text: str) -> Any:
        """A value from its text on the command line (ValueError naming the allowed values)."""
        text = text.strip()
        if self.choices is None:
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{self.option} {text!r}: must be an int >= 1") from None
            if value < 1:
                raise ValueError(f"{self.option} {value}: must be an int >= 1")
            return value
        if isinstance(self.choices[0], bool):
            value = _BOOL_WORDS.get(text.lower())
        else:
            value = self.aliases.get(text.lower(), text)
        if value not in self.choices:
            allowed = "on, off" if isinstance(self.choices[0], bool) else ", ".join(map(str, self.choices))
            raise ValueError(f"{self.option} {text!r}: allowed: {allowed}")
        return value

    def check(self, value: Any) -> str | None:
        """Why `value` cannot be this field's (None when it can)."""
        if self.choices is None:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
            return None if ok else f"{self.option} {value!r}: must be an int >= 1"
        if value in self.choices and type(value) is type(self.choices[0]):
            return None
        return f"{self.option} {value!r}: allowed: {', '.join(map(str, self.choices))}"

    def say(self, value: Any) -> str:
        """The value in the report's scenario line ("" when it goes unsaid)."""
        return self.words.get(value, self.word.format(value) if self.word else "")

    @property
    def flag(self) -> bool:
        """True for an on/off field (--compile): given alone it means on."""
        return self.choices is not None and isinstance(self.choices[0], bool)


_BOOL_WORDS = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
_ON_OFF = (False, True)


def _axis(default: Any, **meta: Any) -> Any:
    return field(default=default, metadata={"axis": Axis(**meta)})


@dataclass(frozen=True)
class Scenario:
    """How a module runs beyond its geometry; every field is an axis a sweep can vary (see Axis)."""

    dtype: str = _axis(
        "float32",
        option="--dtype",
        help="The whole module and input in this dtype (bf16 and fp16 are accepted)",
        choices=DTYPES,
        header="dtype",
        aliases=DTYPE_ALIASES,
        words={d: d for d in DTYPES},
    )
    threads: int = _axis(
        1,
        option="--threads",
        help="Intra-op threads of torch and ONNX Runtime",
        header="threads",
        label=" t={}",
        words={1: "1 thread"},
        word="{} threads",
    )
    mode: str = _axis(
        "infer",
        option="--mode",
        help="Inference (infer: eval, no grad) or a training step (train: forward + backward of output.sum())",
        choices=MODES,
        header="mode",
        words={"infer": "inference", "train": "training (forward + backward)"},
    )
    channels_last: bool = _axis(
        False,
        option="--channels-last",
        help="Module and input in channels_last (image-layout modules)",
        choices=_ON_OFF,
        header="ch-last",
        label=" channels_last",
        words={True: "channels_last", False: "contiguous"},
    )
    compile: bool = _axis(
        False,
        option="--compile",
        help="torch.compile (inductor); its compile time is kept apart",
        choices=_ON_OFF,
        header="compiled",
        label=" compiled",
        words={True: "torch.compile", False: "eager"},
    )
    layout: str = _axis(
        "",
        option="--layout",
        help="What your own modules take: image (B, C, H, W), tokens (B, N, C) or tokens-hw (forward(x, H, W), x "
        "(B, N, C)); zoo modules keep their own",
        choices=("", *USER_LAYOUTS),
        header="layout",
        label=" layout={}",
    )
    allocator: str = _axis(
        "pinned",
        option="--allocator",
        help="Which allocator the CPU latency is measured under: pinned (glibc pinned by attnbench: stable), system "
        "(glibc's defaults, as in a plain PyTorch process: the median of several fresh processes), jemalloc or "
        "tcmalloc (LD_PRELOAD; skipped where not installed)",
        choices=ALLOCATORS,
        header="alloc",
        label=" allocator={}",
        words={
            "pinned": "pinned allocator",
            "system": "system allocator",
            "jemalloc": "jemalloc (LD_PRELOAD)",
            "tcmalloc": "tcmalloc (LD_PRELOAD)",
        },
    )
    compile_mode: str = _axis(
        "default",
        option="--compile-mode",
        help="torch.compile's mode (with --compile)",
        choices=COMPILE_MODES,
        header="compile mode",
        label=" compile_mode={}",
        words={m: f"compile mode {m}" for m in COMPILE_MODES[1:]},
        requires="compile",
    )
    autocast: str = _axis(
        "off",
        option="--autocast",
        help="Mixed precision: torch.autocast around the float32 module, as timm's --amp",
        choices=AUTOCAST,
        header="autocast",
        label=" autocast={}",
        aliases=DTYPE_ALIASES,
        words={"bfloat16": "autocast bfloat16", "float16": "autocast float16"},
    )
    ort_opt_level: str = _axis(
        "all",
        option="--ort-opt-level",
        help="ONNX Runtime's graph optimisation level",
        choices=ORT_OPT_LEVELS,
        header="ORT opt",
        label=" ort_opt={}",
        words={level: f"ORT graph optimisation {level}" for level in ORT_OPT_LEVELS[:-1]},
    )
    tf32: bool = _axis(
        False,
        option="--tf32",
        help="TensorFloat-32 for float32 matmuls and convolutions on CUDA (torch and ONNX Runtime); off: true float32",
        choices=_ON_OFF,
        header="TF32",
        label=" tf32",
        words={True: "TF32 on"},
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            reason = axis(f.name).check(getattr(self, f.name))
            if reason:
                raise ValueError(reason)

    def settled(self) -> Scenario:
        """The same scenario with every field whose `requires` is off put back to its default."""
        idle = {
            f.name: f.default
            for f in fields(self)
            if axis(f.name).requires and not getattr(self, axis(f.name).requires)
        }
        return dataclasses.replace(self, **idle) if idle else self

    def changed(self) -> dict[str, Any]:
        """The fields that differ from their defaults, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def label(self) -> str:
        """The fields that differ from their defaults, as a row's label shows them (' bfloat16 t=2 train')."""
        return "".join(axis(name).label.format(value) for name, value in self.changed().items())


#: The scenario fields, in order: CSV columns, table columns and label parts follow it.
SCENARIO_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Scenario))
SCENARIO_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Scenario)}


def axis(name: str) -> Axis:
    """The Axis of a Scenario field."""
    return _AXES[name]


_AXES: dict[str, Axis] = {f.name: f.metadata["axis"] for f in fields(Scenario)}


def axes() -> dict[str, Axis]:
    """Every scenario field's Axis, in field order."""
    return dict(_AXES)


# ---------------------------------------------------------------- what to measure, and the row it becomes


def frozen(value: Any) -> Any:
    """Lists and tuples, nested too, as tuples (so a Case stays hashable); check_case turns them back."""
    return tuple(frozen(v) for v in value) if isinstance(value, list | tuple) else value


def frozen_kwargs(kwargs: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Kwargs as a sorted tuple of (key, hashable value) pairs."""
    return tuple(sorted((k, frozen(v)) for k, v in (kwargs or {}).items()))


@dataclass(frozen=True)
class Case:
    """What to measure: one module at one geometry, on one backend, in one scenario."""

    module: str  # a zoo name or a module spec as typed (normalised), e.g. "models/attn.py:MyAttn"
    dim: int
    height: int
    width: int
    batch: int = 1
    backend: str = "cpu"
    kwargs: tuple[tuple[str, Any], ...] = ()
    scenario: Scenario = field(default_factory=Scenario)

    @property
    def kwargs_dict(self) -> dict[str, Any]:
        """The kwargs as a dict (stored as a tuple so Case stays hashable)."""
        return dict(self.kwargs)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(B, C, H, W) of the input tensor."""
        return (self.batch, self.dim, self.height, self.width)

    @property
    def tokens(self) -> int:
        """N = H * W."""
        return self.height * self.width

    @property
    def geometry(self) -> tuple[Any, ...]:
        """What the cases sharing one build have in common (the layout decides what is built)."""
        return (self.module, self.dim, self.height, self.width, self.batch, self.kwargs, self.scenario.layout)

    @property
    def label(self) -> str:
        """The case as short text: 'sk C=64 28x28 B=1 cpu bfloat16 t=2 {"kernels": [3, 5]}'."""
        return _label(self.module, self.dim, self.height, self.width, self.batch, self.backend, self.scenario) + (
            f" {kwargs_text(self.kwargs)}" if self.kwargs else ""
        )


def kwargs_text(kwargs: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> str:
    """Kwargs as a row stores them: JSON with sorted keys ('' when there are none)."""
    pairs = dict(kwargs.items() if isinstance(kwargs, Mapping) else kwargs)
    return json.dumps(pairs, sort_keys=True) if pairs else ""


def _label(module: str, dim: int, height: int, width: int, batch: int, backend: str, scenario: Scenario) -> str:
    return f"{module} C={dim} {height}x{width} B={batch} {backend}{scenario.label()}"


@dataclass(frozen=True)
class Result:
    """One flat, frozen row: identity, counts, latency, memory, status. Base units (s, bytes, MACs, FLOPs)."""

    module: str
    dim: int
    height: int
    width: int
    batch: int
    backend: str
    kwargs: str  # JSON of the non-default kwargs given by the user
    scenario: Scenario = field(default_factory=Scenario)
    status: str = OK
    reason: str = ""
    machine: str = ""  # short label of the machine and versions that measured the row
    source_hash: str = ""  # short hash of the module's source file(s), so a reader sees the code changed
    params: int | None = None
    macs_attnbench: int | None = None
    macs_fvcore: int | None = None
    macs_thop: int | None = None
    macs_formula: int | None = None
    flops_attnbench: int | None = None  # exact FLOPs: 2 per multiply-add, 1 per lone product
    uncounted_attnbench: str = ""
    uncounted_fvcore: str = ""
    counter_notes: str = ""
    #: Where each counter ran: "meta", or the CPU fallback and why ("cpu (meta failed: ...)"); "" when it did not.
    counted_on_attnbench: str = ""
    counted_on_fvcore: str = ""
    counted_on_thop: str = ""
    #: Seconds each counter took (its failed meta attempt and its CPU fallback included).
    count_s_attnbench: float | None = None
    count_s_fvcore: float | None = None
    count_s_thop: float | None = None
    #: Where the counted module was built: "meta" (no weights), or "cpu (meta build failed: ...)"; and how long.
    built_on: str = ""
    build_s: float | None = None
    #: The module's output shape(s) in the counted forward: "(1, 1000)", or "0: (1, 196, 64); 1: (...)" for a
    #: tuple, list or dict of tensors (attnbench.counting.base.output_shapes).
    output_shapes: str = ""
    #: True when an output's shape differs from the input's: normal for a network, a mistake for a block.
    output_differs: bool | None = None
    latency_median_s: float | None = None
    latency_iqr_s: float | None = None
    latency_p10_s: float | None = None
    latency_min_s: float | None = None
    latency_calls: int | None = None
    latency_noisy: bool | None = None  # IQR/median > 10%, or the median not known to the asked precision in budget
    latency_contended: bool | None = None  # other processes used > 5% of a core while timing
    latency_ci_rel: float | None = None  # half-width of the 95% CI on the median / median (achieved precision)
    throughput_per_s: float | None = None  # samples per second: batch / median latency
    minor_faults_per_call: float | None = None  # in the headline allocator state (`allocator`)
    #: The same call in the other allocator state, cpu only: with the pinned headline, the system state of the
    #: slowest of the fresh processes that measured it (its median and faults; the faults of the one with the
    #: most when none was timed); with any other headline, the pinned state (this process).
    other_allocator_latency_s: float | None = None
    other_allocator_faults_per_call: float | None = None
    #: The slowest fresh process's median latency in the system (glibc default) state over the pinned median.
    system_allocator_slowdown: float | None = None
    #: True when any fresh process in the system state is > 10% slower than pinned in both the median and the
    #: fastest call, with enough extra page faults to cost that (marked in tables).
    system_allocator_slower: bool | None = None
    compile_s: float | None = None  # torch.compile: the first (compiling) call's wall time, apart from latency
    instructions: int | None = None  # Callgrind instructions per forward call (cpu, 1 thread); a work measure
    peak_mem_bytes: int | None = None
    peak_mem_method: str = ""
    #: CUDA: the caching allocator's max_memory_reserved() during the step, a total (weights, input, cached blocks),
    #: where peak_mem_bytes is a delta above what was allocated before the step.
    reserved_mem_bytes: int | None = None
    parity_max_abs: float | None = None
    exporter: str = ""
    seconds: float | None = None  # wall time of this row's measurement (or of building and counting, if only counted)
    extra: str = ""  # JSON of backend-specific details
    # Columns added since schema 2 go last, so that a reader by position still finds the others where they were.
    latency_p90_s: float | None = None  # percentiles of the blocks' per-call times (see TimingStats)
    latency_p99_s: float | None = None
    latency_first_s: float | None = None  # the first call, cold (see TimingStats.first_call_s)
    #: Latency over the reference module's at the same setting (attnbench.ratios), and its 95% interval.
    latency_ratio: float | None = None
    latency_ratio_lo: float | None = None
    latency_ratio_hi: float | None = None
    latency_ratio_wide: bool | None = None  # the interval is wider than +-5% of the ratio
    ratio_reference: str = ""  # the module the ratio is taken to
    ratio_rounds: int | None = None  # rounds timed together it rests on (0: timed apart, from the two medians)
    #: GPU busy (kernels and copies, from the profiler) for less than LAUNCH_BOUND_FRACTION of the median call: the
    #: host's launches, not the GPU, set the time (cuda, ort-cuda only).
    latency_launch_bound: bool | None = None
    #: The system (glibc default) state over fresh processes, cpu only (attnbench.sysalloc): how many processes
    #: measured it, the fastest and slowest of their medians (None where none was timed: too few extra faults to
    #: cost 10%), and the fewest and most minor page faults per call they took.
    system_processes: int | None = None
    system_latency_lo_s: float | None = None
    system_latency_hi_s: float | None = None
    system_faults_lo_per_call: float | None = None
    system_faults_hi_per_call: float | None = None

    @classmethod
    def for_case(cls, case: Case, **values: Any) -> Result:
        """A row carrying the case's identity plus the given values."""
        identity = {name: getattr(case, name) for name in IDENTITY_FIELDS}
        return cls(**identity, kwargs=kwargs_text(case.kwargs), scenario=case.scenario, **values)

    @property
    def case(self) -> Case:
        """The Case this row measured (to measure it again)."""
        kwargs = json.loads(self.kwargs) if self.kwargs else {}
        identity = {name: getattr(self, name) for name in IDENTITY_FIELDS}
        return Case(**identity, kwargs=frozen_kwargs(kwargs), scenario=self.scenario)

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity used to match rows across runs (baseline comparison, merging)."""
        return (*(getattr(self, name) for name in IDENTITY_FIELDS), self.kwargs, self.scenario)

    @property
    def ok(self) -> bool:
        """True when the row was measured without error."""
        return self.status == OK

    @property
    def label(self) -> str:
        """The row's case as short text: module, setting, backend, the scenario fields off their defaults, kwargs."""
        text = _label(self.module, self.dim, self.height, self.width, self.batch, self.backend, self.scenario)
        return text + (f" {self.kwargs}" if self.kwargs else "")

    @property
    def extra_dict(self) -> dict[str, Any]:
        """The backend-specific details as a dict."""
        return json.loads(self.extra) if self.extra else {}


#: A row's identity besides its kwargs and scenario: what a Case and a Result share.
IDENTITY_FIELDS = ("module", "dim", "height", "width", "batch", "backend")
#: The flat columns of a row, as files and frames hold them: the scenario spread into one column per field, in
#: schema 2's order (the kwargs sit after threads); fields added to Scenario since then follow allocator.
COLUMNS: tuple[str, ...] = (
    *IDENTITY_FIELDS,
    *SCENARIO_FIELDS[:2],
    "kwargs",
    *SCENARIO_FIELDS[2:],
    *(f.name for f in fields(Result) if f.name not in (*IDENTITY_FIELDS, "kwargs", "scenario")),
)
#: Columns a file must have to be read as results (the rest default when missing).
REQUIRED_COLUMNS = ("module", "dim", "height", "width", "batch", "backend", "dtype", "threads", "kwargs")


def flat(row: Result) -> dict[str, Any]:
    """A row as one value per column (COLUMNS), its scenario spread out."""
    values = {f.name: getattr(row, f.name) for f in fields(row) if f.name != "scenario"}
    values.update(dataclasses.asdict(row.scenario))
    return {name: values[name] for name in COLUMNS}


def unflat(values: Mapping[str, Any]) -> Result:
    """A row from one value per column (missing scenario fields take their defaults)."""
    scenario = Scenario(**{k: values[k] for k in SCENARIO_FIELDS if k in values})
    return Result(scenario=scenario, **{k: v for k, v in values.items() if k not in SCENARIO_DEFAULTS})


def column_types() -> dict[str, type]:
    """Each column's type: int, float, bool or str (a nullable number is its number type)."""
    types: dict[str, type] = {}
    for f in fields(Result):
        if f.name == "scenario":
            types.update({s.name: type(s.default) for s in fields(Scenario)})
        else:
            text = str(f.type)
            types[f.name] = bool if "bool" in text else float if "float" in text else int if "int" in text else str
    return {name: types[name] for name in COLUMNS}


def to_frame(results: Iterable[Result]) -> pd.DataFrame:
    """Rows as a DataFrame with one column per COLUMNS entry (nullable ints stay exact)."""
    import pandas as pd  # here, not at the top: the quick commands (list, info, env) never need pandas

    frame = pd.DataFrame([flat(r) for r in results], columns=list(COLUMNS))
    for name, kind in column_types().items():
        if kind is int and name not in SCENARIO_FIELDS:
            frame[name] = frame[name].astype("Int64")
    return frame
