"""Case and Result: the one flat record every measurement becomes, and its CSV/JSON/DataFrame round trip."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnbench.errors import BaselineError, OutputLockedError

if TYPE_CHECKING:
    import pandas as pd

#: Bumped whenever a column is renamed or its meaning changes. Readers also read the versions in READABLE_SCHEMAS
#: (columns added since are filled with their defaults).
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
#: First line of a schema-1 CSV (environment as JSON on the same line); schema 2 writes a plain CSV and a sidecar.
LEGACY_CSV_MAGIC = "# attnbench-results"
#: Suffix of the sidecar that carries a CSV's schema and environment: results.csv -> results.csv.meta.json.
SIDECAR_SUFFIX = ".meta.json"

# Row statuses. "ok" is the only one whose numbers are all valid.
OK = "ok"
INVALID = "invalid"  # the module's constraints refuse the case (nothing ran)
FAILED = "failed"  # an exception inside the case
OOM = "oom"
SKIPPED = "skipped"  # backend unavailable here, or a combination it cannot run
GUARDED = "guarded"  # refused by the memory guard (estimate above free memory)
TIMEOUT = "timeout"
COMPILE_FAILED = "compile_failed"  # torch.compile raised (the reason says where)
#: Cases refused by design (reported with their reason), as opposed to cases that failed.
REFUSED = (INVALID, SKIPPED, GUARDED)

#: What a user's module takes and returns unless told otherwise: (B, C, H, W) maps; zoo modules keep their own.
DEFAULT_USER_LAYOUT = "image"
USER_LAYOUTS = ("image", "tokens")

#: Defaults of the scenario fields: eager float32 inference, 1 thread, pinned allocator.
DEFAULT_MODE = "infer"
DEFAULT_DTYPE = "float32"
DEFAULT_ALLOCATOR = "pinned"


@dataclass(frozen=True)
class Case:
    """What to measure: one module at one geometry, in one scenario, on one backend."""

    module: str  # a zoo name or a module spec as typed (normalised), e.g. "models/attn.py:MyAttn"
    dim: int
    height: int
    width: int
    batch: int = 1
    backend: str = "cpu"
    dtype: str = DEFAULT_DTYPE
    threads: int = 1
    kwargs: tuple[tuple[str, Any], ...] = ()
    mode: str = DEFAULT_MODE  # "infer" (eval, no grad) or "train" (train mode, forward + backward)
    channels_last: bool = False
    compile: bool = False  # torch.compile (inductor)
    layout: str = ""  # "" = the module's own; "image" or "tokens" for a user module
    allocator: str = DEFAULT_ALLOCATOR  # which allocator state the headline latency is taken in

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


#: Fields a Case and a Result share: the identity of a row.
CASE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Case))


@dataclass(frozen=True)
class Result:
    """One flat, frozen row: identity, counts, latency, memory, status. Base units (s, bytes, MACs, FLOPs)."""

    module: str
    dim: int
    height: int
    width: int
    batch: int
    backend: str
    dtype: str
    threads: int
    kwargs: str  # JSON of the non-default kwargs given by the user
    mode: str = DEFAULT_MODE
    channels_last: bool = False
    compile: bool = False
    layout: str = ""
    allocator: str = DEFAULT_ALLOCATOR
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
    #: The same call in the other allocator state (system when the headline is pinned, and the reverse), cpu only.
    other_allocator_latency_s: float | None = None
    other_allocator_faults_per_call: float | None = None
    #: Median latency in the system (glibc default) state over that in the pinned state.
    system_allocator_slowdown: float | None = None
    #: True when the system state is > 10% slower in both the median and the fastest call (marked in tables).
    system_allocator_slower: bool | None = None
    compile_s: float | None = None  # torch.compile: the first (compiling) call's wall time, apart from latency
    instructions: int | None = None  # Callgrind instructions per forward call (cpu, 1 thread); a work measure
    peak_mem_bytes: int | None = None
    peak_mem_method: str = ""
    reserved_mem_bytes: int | None = None
    parity_max_abs: float | None = None
    exporter: str = ""
    seconds: float | None = None  # wall time of this row's measurement (or of building and counting, if only counted)
    extra: str = ""  # JSON of backend-specific details

    @classmethod
    def for_case(cls, case: Case, **values: Any) -> Result:
        """A row carrying the case's identity plus the given values."""
        identity = {name: getattr(case, name) for name in CASE_FIELDS}
        identity["kwargs"] = json.dumps(case.kwargs_dict, sort_keys=True) if case.kwargs else ""
        return cls(**identity, **values)

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity used to match rows across runs (baseline comparison, merging)."""
        return tuple(getattr(self, name) for name in KEY_FIELDS)

    @property
    def ok(self) -> bool:
        """True when the row was measured without error."""
        return self.status == OK


def case_of(row: Result) -> Case:
    """The Case a row measured (to measure it again)."""
    values = {name: getattr(row, name) for name in CASE_FIELDS}
    kwargs = json.loads(row.kwargs) if row.kwargs else {}
    values["kwargs"] = tuple(sorted((k, _hashable(v)) for k, v in kwargs.items()))
    return Case(**values)


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


RESULT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Result))
KEY_FIELDS = CASE_FIELDS
#: Columns a file must have to be read as results (the rest default when missing).
REQUIRED_FIELDS = ("module", "dim", "height", "width", "batch", "backend", "dtype", "threads", "kwargs")
_INT_FIELDS = {f.name for f in fields(Result) if "int" in str(f.type) and "float" not in str(f.type)}
_FLOAT_FIELDS = {f.name for f in fields(Result) if "float" in str(f.type)}
_BOOL_FIELDS = {f.name for f in fields(Result) if "bool" in str(f.type)}
_NULLABLE = _INT_FIELDS | _FLOAT_FIELDS | _BOOL_FIELDS


def to_frame(results: Iterable[Result]) -> pd.DataFrame:
    """Rows as a DataFrame with one column per Result field (nullable ints stay exact)."""
    import pandas as pd  # here, not at the top: the quick commands (list, info, env) never need pandas

    frame = pd.DataFrame([dataclasses.asdict(r) for r in results], columns=list(RESULT_FIELDS))
    for name in _INT_FIELDS:
        frame[name] = frame[name].astype("Int64")
    return frame


def _parse(name: str, text: str) -> Any:
    if text == "" or (name in _NULLABLE and text.lower() in ("nan", "<na>", "none")):
        return None if name in _NULLABLE else ""
    if name in _BOOL_FIELDS:
        if text not in ("True", "False"):
            raise ValueError(f"column {name}: {text!r} is not True/False")
        return text == "True"
    if name in _INT_FIELDS:
        return _integer(name, text)
    if name in _FLOAT_FIELDS:
        return float(text)
    return text


def _integer(name: str, text: str) -> int:
    """An int column's value; integral floats ("39940108.0", as pandas writes nullable ints) are accepted."""
    try:
        return int(text)
    except ValueError:
        value = float(text)  # raises for garbage, with the text in the message
        if not value.is_integer():
            raise ValueError(f"column {name}: {text!r} is not an integer") from None
        return int(value)


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_text(results: Iterable[Result]) -> str:
    """Plain CSV: a header row and one row per case, nothing else (pd.read_csv reads it as is)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_FIELDS)
    for r in results:
        writer.writerow([_format(getattr(r, name)) for name in RESULT_FIELDS])
    return buf.getvalue()


def meta_text(env: Mapping[str, Any]) -> str:
    """The sidecar of a CSV report: schema version and environment."""
    return json.dumps({"schema": SCHEMA_VERSION, "env": dict(env)}, indent=2, sort_keys=True, default=str) + "\n"


def sidecar(path: str | Path) -> Path:
    """Where the sidecar of a CSV report lives: PATH.meta.json."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def json_text(results: Iterable[Result], env: Mapping[str, Any]) -> str:
    """JSON report: {"schema", "env", "results": [rows]}."""
    rows = [dataclasses.asdict(r) for r in results]
    return json.dumps({"schema": SCHEMA_VERSION, "env": dict(env), "results": rows}, indent=2, default=str)


def write_csv(path: str | Path, results: Iterable[Result], env: Mapping[str, Any]) -> None:
    """Write a CSV report and its sidecar, each atomically."""
    atomic_write(Path(path), csv_text(results))
    atomic_write(sidecar(path), meta_text(env))


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        # mkstemp makes the file private (0600); a report gets the permissions a plain open() would give.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class OutputLock:
    """An exclusive lock on a report path for one run, so two runs writing the same file cannot both do so.

    Every write replaces the whole file with the writer's rows (atomic_write), so a second writer would
    silently drop the first one's rows. The lock is an flock on a hidden `.NAME.lock` file beside the report;
    the kernel releases it when the process dies, and `release()` removes the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise OutputLockedError naming the process that holds it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock (Windows): nothing to lock with
            return
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputLockedError(
                    f"output {self.path}: another attnbench run (pid {holder}) is writing it; "
                    "wait for it to finish or write elsewhere"
                ) from None
            # A run that was finishing may have removed the file between our open and our lock: lock the new one.
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and let go of the lock (a no-op when not held)."""
        if self._fd is None:
            return
        self.lock_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


@dataclass
class LoadedResults:
    """Rows and environment read back from a CSV or JSON report (env is empty when unknown)."""

    results: list[Result]
    env: dict[str, Any] = field(default_factory=dict)
    #: Where the rows came from (for messages and merged reports).
    source: str = ""


def load(path: str | Path) -> LoadedResults:
    """Read a CSV or JSON report written by attnbench (or re-saved by pandas); refuse anything else."""
    path = Path(path)
    if not path.exists():
        raise BaselineError(f"{path}: no such file")
    if path.is_dir():
        raise BaselineError(f"{path}: is a directory, expected a .csv or .json report")
    text = _read(path)
    if path.suffix == ".json":
        return _load_json(path, text)
    if path.suffix == ".csv":
        return _load_csv(path, text)
    raise BaselineError(f"{path}: unknown report format {path.suffix!r}; expected .csv or .json")


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: cannot read ({exc})") from None
    if not text.strip():
        raise BaselineError(f"{path}: file is empty")
    return text


def _check_schema(path: Path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict) or "schema" not in meta:
        raise BaselineError(f"{path}: not an attnbench report (no schema version)")
    if meta["schema"] not in READABLE_SCHEMAS:
        raise BaselineError(
            f"{path}: schema version {meta['schema']!r}, this attnbench reads "
            f"{', '.join(map(str, READABLE_SCHEMAS))}; re-run to regenerate"
        )
    env = meta.get("env", {})
    return env if isinstance(env, dict) else {}


def _load_csv(path: Path, text: str) -> LoadedResults:
    first, _, rest = text.partition("\n")
    if first.startswith(LEGACY_CSV_MAGIC):  # schema 1: the environment on the first line
        try:
            meta = json.loads(first[len(LEGACY_CSV_MAGIC) :].strip())
        except json.JSONDecodeError as exc:
            raise BaselineError(f"{path}: corrupt header line ({exc.msg})") from None
        env, body, first_line = _check_schema(path, meta), rest, 2
    else:
        env, body, first_line = _sidecar_env(path), text, 1
    reader = csv.reader(io.StringIO(body))
    try:
        header = next(reader)
    except StopIteration:
        raise BaselineError(f"{path}: no header row") from None
    missing = [name for name in REQUIRED_FIELDS if name not in header]
    if missing:
        raise BaselineError(f"{path}: not an attnbench CSV (missing column(s) {', '.join(missing)})")
    rows = []
    for lineno, row in enumerate(reader, start=first_line + 1):
        if not row:
            continue
        if len(row) != len(header):
            raise BaselineError(f"{path}: line {lineno} has {len(row)} fields, header has {len(header)}")
        try:
            # Columns attnbench does not know (a pandas index, a user's notes) are ignored.
            values = {name: _parse(name, text) for name, text in zip(header, row, strict=True) if name in RESULT_FIELDS}
            rows.append(Result(**values))
        except (ValueError, TypeError) as exc:
            raise BaselineError(f"{path}: line {lineno}: {exc}") from None
    return LoadedResults(rows, env, str(path))


def _sidecar_env(path: Path) -> dict[str, Any]:
    """The environment from a CSV's sidecar; {} (unknown) when there is none."""
    meta_path = sidecar(path)
    if not meta_path.exists():
        return {}
    try:
        meta = json.loads(_read(meta_path))
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{meta_path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None
    return _check_schema(meta_path, meta)


def _load_json(path: Path, text: str) -> LoadedResults:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: corrupt JSON ({exc.msg} at line {exc.lineno})") from None
    env = _check_schema(path, data)
    rows = data.get("results")
    if not isinstance(rows, list):
        raise BaselineError(f"{path}: no 'results' list")
    results = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BaselineError(f"{path}: results[{index}] is not an object")
        try:
            values = {k: _typed(k, v) for k, v in row.items() if k in RESULT_FIELDS}
            results.append(Result(**values))
        except (TypeError, ValueError) as exc:
            raise BaselineError(f"{path}: results[{index}]: {exc}") from None
    return LoadedResults(results, env, str(path))


def _typed(name: str, value: Any) -> Any:
    """A JSON value checked against its column's type (ints stay ints, no strings where numbers belong)."""
    if value is None:
        if name in _INT_FIELDS | _FLOAT_FIELDS | _BOOL_FIELDS:
            return None
        raise ValueError(f"column {name} is null")
    if name in _BOOL_FIELDS:
        ok = isinstance(value, bool)
    elif name in _INT_FIELDS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif name in _FLOAT_FIELDS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"column {name}: {value!r} is not of the column's type")
    return float(value) if name in _FLOAT_FIELDS else value
