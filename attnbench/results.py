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
from typing import Any

import pandas as pd

from attnbench.errors import BaselineError

#: Bumped whenever a column is renamed or its meaning changes; readers refuse other versions.
SCHEMA_VERSION = 1
#: First line of every CSV report, followed by the environment as JSON on the same line.
CSV_MAGIC = "# attnbench-results"

# Row statuses. "ok" is the only one whose numbers are all valid.
OK = "ok"
INVALID = "invalid"  # the module's constraints refuse the case (nothing ran)
FAILED = "failed"  # an exception inside the case
OOM = "oom"
SKIPPED = "skipped"  # backend unavailable here
GUARDED = "guarded"  # refused by the memory guard (estimate above free memory)
TIMEOUT = "timeout"
#: Cases refused by design (reported with their reason), as opposed to cases that failed.
REFUSED = (INVALID, SKIPPED, GUARDED)


@dataclass(frozen=True)
class Case:
    """What to measure: one module at one geometry on one backend."""

    module: str
    dim: int
    height: int
    width: int
    batch: int = 1
    backend: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    kwargs: tuple[tuple[str, Any], ...] = ()

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


@dataclass(frozen=True)
class Result:
    """One flat, frozen row: identity, counts, latency, memory, status. Base units (s, bytes, MACs)."""

    module: str
    dim: int
    height: int
    width: int
    batch: int
    backend: str
    dtype: str
    threads: int
    kwargs: str  # JSON of the non-default kwargs given by the user
    status: str = OK
    reason: str = ""
    params: int | None = None
    macs_attnbench: int | None = None
    macs_fvcore: int | None = None
    macs_thop: int | None = None
    macs_formula: int | None = None
    uncounted_attnbench: str = ""
    uncounted_fvcore: str = ""
    counter_notes: str = ""
    latency_median_s: float | None = None
    latency_iqr_s: float | None = None
    latency_p10_s: float | None = None
    latency_min_s: float | None = None
    latency_calls: int | None = None
    latency_noisy: bool | None = None
    latency_contended: bool | None = None  # other processes used > 5% of a core while timing
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
        return cls(
            module=case.module,
            dim=case.dim,
            height=case.height,
            width=case.width,
            batch=case.batch,
            backend=case.backend,
            dtype=case.dtype,
            threads=case.threads,
            kwargs=json.dumps(case.kwargs_dict, sort_keys=True) if case.kwargs else "",
            **values,
        )

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity used to match rows across runs (baseline comparison)."""
        return (
            self.module,
            self.dim,
            self.height,
            self.width,
            self.batch,
            self.backend,
            self.dtype,
            self.threads,
            self.kwargs,
        )

    @property
    def ok(self) -> bool:
        """True when the row was measured without error."""
        return self.status == OK


RESULT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Result))
KEY_FIELDS = ("module", "dim", "height", "width", "batch", "backend", "dtype", "threads", "kwargs")
_INT_FIELDS = {f.name for f in fields(Result) if "int" in str(f.type) and "float" not in str(f.type)}
_FLOAT_FIELDS = {f.name for f in fields(Result) if "float" in str(f.type)}
_BOOL_FIELDS = {f.name for f in fields(Result) if "bool" in str(f.type)}


def to_frame(results: Iterable[Result]) -> pd.DataFrame:
    """Rows as a DataFrame with one column per Result field (nullable ints stay exact)."""
    frame = pd.DataFrame([dataclasses.asdict(r) for r in results], columns=list(RESULT_FIELDS))
    for name in _INT_FIELDS:
        frame[name] = frame[name].astype("Int64")
    return frame


def _parse(name: str, text: str) -> Any:
    if text == "":
        return None if name in _INT_FIELDS | _FLOAT_FIELDS | _BOOL_FIELDS else ""
    if name in _BOOL_FIELDS:
        if text not in ("True", "False"):
            raise ValueError(f"column {name}: {text!r} is not True/False")
        return text == "True"
    if name in _INT_FIELDS:
        return int(text)
    if name in _FLOAT_FIELDS:
        return float(text)
    return text


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_text(results: Iterable[Result], env: Mapping[str, Any]) -> str:
    """CSV report: a magic line carrying schema version and environment, a header, one row per case."""
    buf = io.StringIO()
    meta = {"schema": SCHEMA_VERSION, "env": dict(env)}
    buf.write(f"{CSV_MAGIC} {json.dumps(meta, sort_keys=True, default=str)}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(RESULT_FIELDS)
    for r in results:
        writer.writerow([_format(getattr(r, name)) for name in RESULT_FIELDS])
    return buf.getvalue()


def json_text(results: Iterable[Result], env: Mapping[str, Any]) -> str:
    """JSON report: {"schema", "env", "results": [rows]}."""
    rows = [dataclasses.asdict(r) for r in results]
    return json.dumps({"schema": SCHEMA_VERSION, "env": dict(env), "results": rows}, indent=2, default=str)


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


@dataclass
class LoadedResults:
    """Rows and environment read back from a CSV or JSON report."""

    results: list[Result]
    env: dict[str, Any] = field(default_factory=dict)


def load(path: str | Path) -> LoadedResults:
    """Read a CSV or JSON report written by attnbench; refuse anything else with a BaselineError."""
    path = Path(path)
    if not path.exists():
        raise BaselineError(f"{path}: no such file")
    if path.is_dir():
        raise BaselineError(f"{path}: is a directory, expected a .csv or .json report")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: cannot read ({exc})") from None
    if not text.strip():
        raise BaselineError(f"{path}: file is empty")
    if path.suffix == ".json":
        return _load_json(path, text)
    if path.suffix == ".csv":
        return _load_csv(path, text)
    raise BaselineError(f"{path}: unknown report format {path.suffix!r}; expected .csv or .json")


def _check_schema(path: Path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict) or "schema" not in meta:
        raise BaselineError(f"{path}: not an attnbench report (no schema version)")
    if meta["schema"] != SCHEMA_VERSION:
        raise BaselineError(
            f"{path}: schema version {meta['schema']!r}, this attnbench reads {SCHEMA_VERSION}; re-run to regenerate"
        )
    env = meta.get("env", {})
    return env if isinstance(env, dict) else {}


def _load_csv(path: Path, text: str) -> LoadedResults:
    first, _, rest = text.partition("\n")
    if not first.startswith(CSV_MAGIC):
        raise BaselineError(f"{path}: not an attnbench CSV (first line must start with {CSV_MAGIC!r})")
    try:
        meta = json.loads(first[len(CSV_MAGIC) :].strip())
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}: corrupt header line ({exc.msg})") from None
    env = _check_schema(path, meta)
    reader = csv.reader(io.StringIO(rest))
    try:
        header = next(reader)
    except StopIteration:
        raise BaselineError(f"{path}: no header row") from None
    missing = [name for name in KEY_FIELDS if name not in header]
    if missing:
        raise BaselineError(f"{path}: missing column(s) {', '.join(missing)}")
    rows = []
    for lineno, row in enumerate(reader, start=3):
        if not row:
            continue
        if len(row) != len(header):
            raise BaselineError(f"{path}: line {lineno} has {len(row)} fields, header has {len(header)}")
        try:
            values = {name: _parse(name, text) for name, text in zip(header, row, strict=True) if name in RESULT_FIELDS}
            rows.append(Result(**values))
        except (ValueError, TypeError) as exc:
            raise BaselineError(f"{path}: line {lineno}: {exc}") from None
    return LoadedResults(rows, env)


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
    return LoadedResults(results, env)


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
