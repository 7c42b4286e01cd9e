"""Result files: a plain CSV streamed row by row with a JSON sidecar, the JSON report, and reading both back.

The CSV is a header row, then one row per case, nothing else (pd.read_csv reads it as is); its schema version
and the run's environment go into a sidecar PATH.meta.json. A run appends each row as it finishes, one
`write` per row, so an interrupted or crashed run leaves a valid file of the rows it completed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock
    fcntl = None  # type: ignore[assignment]

from attnbench.errors import BaselineError, OutputLockedError
from attnbench.results import COLUMNS, REQUIRED_COLUMNS, SCENARIO_FIELDS, Result, column_types, flat, unflat

#: Bumped whenever a column is renamed or its meaning changes. Readers also read the versions in READABLE_SCHEMAS
#: (columns added since are filled with their defaults).
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
#: First line of a schema-1 CSV (environment as JSON on the same line); schema 2 writes a plain CSV and a sidecar.
LEGACY_CSV_MAGIC = "# attnbench-results"
#: Suffix of the sidecar that carries a CSV's schema and environment: results.csv -> results.csv.meta.json.
SIDECAR_SUFFIX = ".meta.json"
_TYPES = column_types()
_INT_FIELDS = {name for name, kind in _TYPES.items() if kind is int}
_FLOAT_FIELDS = {name for name, kind in _TYPES.items() if kind is float}
_BOOL_FIELDS = {name for name, kind in _TYPES.items() if kind is bool}
_NULLABLE = _INT_FIELDS | _FLOAT_FIELDS | _BOOL_FIELDS


#: What an empty scenario cell parses to: the field's default (a file from before the field existed).
_DEFAULT = object()


def _parse(name: str, text: str) -> Any:
    if text == "" and name in SCENARIO_FIELDS:
        return _DEFAULT
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
    writer.writerow(COLUMNS)
    for r in results:
        writer.writerow(_csv_cells(r))
    return buf.getvalue()


def _csv_cells(row: Result) -> list[str]:
    values = flat(row)
    return [_format(values[name]) for name in COLUMNS]


def csv_line(row: Result) -> str:
    """One row as a CSV line (with its newline), as csv_text writes it."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(_csv_cells(row))
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
    rows = [flat(r) for r in results]
    return json.dumps({"schema": SCHEMA_VERSION, "env": dict(env), "results": rows}, indent=2, default=str)


def write_csv(path: str | Path, results: Iterable[Result], env: Mapping[str, Any]) -> None:
    """Write a CSV report and its sidecar, each atomically."""
    atomic_write(Path(path), csv_text(results))
    atomic_write(sidecar(path), meta_text(env))


class CsvStream:
    """A CSV report written as rows arrive: sidecar and header first, then one appended line per row.

    Each row is one `write` to a file opened for appending, so a run that dies leaves every completed row and
    no half line; `finish` rewrites the file once, atomically, only if rows changed after they were streamed
    (the valgrind pass fills in instruction counts at the end).
    """

    def __init__(self, path: str | Path, env: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.env = dict(env)
        self._streamed: list[Result] = []
        atomic_write(sidecar(self.path), meta_text(self.env))
        atomic_write(self.path, csv_text([]))
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, row: Result) -> None:
        """Add one row at the end of the file."""
        os.write(self._fd, csv_line(row).encode("utf-8"))
        self._streamed.append(row)

    def finish(self, rows: list[Result], env: Mapping[str, Any] | None = None) -> None:
        """Close the file; rewrite it (and the sidecar) once if the final rows or environment differ."""
        self.close()
        if env is not None and dict(env) != self.env:
            atomic_write(sidecar(self.path), meta_text(env))
        if rows != self._streamed:
            atomic_write(self.path, csv_text(rows))

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
        if fcntl is None:  # pragma: no cover - no flock (Windows): nothing to lock with
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
    suffix = path.suffix.lower()  # -o X.CSV writes a CSV: it reads back as one
    if suffix == ".json":
        return _load_json(path, text)
    if suffix == ".csv":
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
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
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
            values = {name: _parse(name, text) for name, text in zip(header, row, strict=True) if name in _TYPES}
            rows.append(unflat({k: v for k, v in values.items() if v is not _DEFAULT}))
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
            values = {k: _typed(k, v) for k, v in row.items() if k in _TYPES}
            results.append(unflat(values))
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
