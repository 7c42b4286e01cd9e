"""A cache across runs for what is slow to make and the same every time: ONNX exports and counts.

Entries live under one directory (`default_dir()`: $ATTNBENCH_CACHE_DIR, else $XDG_CACHE_HOME/attnbench, else
~/.cache/attnbench), one file per entry at `<root>/<kind>/<key[:2]>/<key>`. A key is a digest of everything that
changes the entry: its kind, this file format, the versions of the packages that make it (`versions()`), and the
caller's parts (module source, kwargs, weights fingerprint, shapes, ...) as canonical JSON.

An entry is never trusted: its header repeats the key and carries a checksum, and a file that is not exactly
what was asked for (corrupt, truncated, foreign, of another format) is deleted and reported as a miss, so the
caller rebuilds it. Writes are atomic (a temporary file in the same directory, then os.replace), so several
attnbench processes (shards run in parallel) may share one cache; reads and eviction tolerate files vanishing
under them. The cache has a size cap: once a write takes it past the cap, the least recently used entries (a
read refreshes an entry's mtime) are removed down to LOW_WATER of it.

A cache directory that cannot be read or written disables the cache with a one-line `note`, never an error that
ends a run: the cache only saves time. Plain Python only: `attnbench cache info` imports it without torch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from attnbench import __version__
from attnbench.errors import UsageError

#: Environment variable naming the cache directory (the zoo's catalog lives there too).
CACHE_ENV = "ATTNBENCH_CACHE_DIR"
#: Environment variable overriding the size cap, in MiB.
MAX_MB_ENV = "ATTNBENCH_CACHE_MAX_MB"
#: The size cap unless $ATTNBENCH_CACHE_MAX_MB says otherwise. The zoo's ten ONNX graphs at 56x56 took 40 MiB at
#: C=64 (da alone 38 MiB) and 73 MiB at C=256 (dynamo exporter, torch 2.13, this project's VM), so 1 GiB keeps
#: a dozen such sweeps' exports before the least recently used go.
DEFAULT_MAX_BYTES = 2**30
#: The entry file format: a change to the layout below bumps it, and older entries are then rebuilt.
FORMAT_VERSION = 1
#: The first bytes of every entry file.
MAGIC = b"attnbench-cache\n"
#: The kinds of entry attnbench stores (`cache clear --kind` offers these).
KINDS = ("exports", "counts")
#: The packages whose versions every key covers, by the distributions that provide them (first installed wins).
DISTRIBUTIONS = {
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxscript": ("onnxscript",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "fvcore": ("fvcore",),
    "ultralytics-thop": ("ultralytics-thop",),
}
#: Eviction brings the cache down to this fraction of its cap, so that a full cache is not walked at every write.
LOW_WATER = 0.9
#: A process walks the directory again (and evicts) once it has written this fraction of the cap since its last
#: walk, or sooner when its own count says the cap is passed; other processes' writes are seen at the next walk.
#: Walking at every write made 3000 writes of 1.5 KB take 210 s on this project's loaded 2-core VM; so, 4.6 s.
RESCAN_FRACTION = 0.05
#: A temporary file older than this was left by a process that died mid-write: eviction removes it.
STALE_TEMP_S = 3600.0

_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_KEY = re.compile(r"[0-9a-f]{64}")
_TEMP_SUFFIX = ".tmp"


# ---------------------------------------------------------------- where, and what keys cover


def default_dir() -> Path:
    """The cache directory: $ATTNBENCH_CACHE_DIR, else $XDG_CACHE_HOME/attnbench, else ~/.cache/attnbench."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "attnbench"
    try:
        home = Path.home()
    except (KeyError, RuntimeError):  # no $HOME and no passwd entry (containers run under arbitrary uids)
        return Path(tempfile.gettempdir()) / f"attnbench-cache-{os.getuid()}"
    return home / ".cache" / "attnbench"


def max_bytes_from_env() -> int:
    """The size cap: $ATTNBENCH_CACHE_MAX_MB (MiB) when set, else DEFAULT_MAX_BYTES; a bad value is a UsageError."""
    text = os.environ.get(MAX_MB_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        mib = float(text)
    except ValueError:
        mib = math.nan
    if not (math.isfinite(mib) and mib >= 0):
        raise UsageError(f"${MAX_MB_ENV}={text!r}: expected a size in MiB >= 0 (e.g. 512)")
    return int(mib * 2**20)


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    # importlib.metadata costs some 50 ms that `list` and `info` need not pay (they import this file via settings).
    from importlib import metadata

    found = {"python": platform.python_version(), "attnbench": __version__}
    for name, dists in DISTRIBUTIONS.items():
        found[name] = "absent"
        for dist in dists:
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return tuple(found.items())


def versions() -> dict[str, str]:
    """The versions every key covers: python, attnbench and the packages that export and count ("absent": none).

    Read from package metadata, not by importing the packages (torch alone takes seconds); attnbench's own is
    the running code's `__version__`, which `source_key()` refines between releases."""
    return dict(_versions())


def source_key(*paths: Path | str) -> str:
    """A digest of the given source files' names and bytes: pass the files whose code shapes an entry."""
    digest = hashlib.blake2b(digest_size=16)
    for path in map(Path, paths):
        data = path.read_bytes()
        digest.update(f"{path.name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def canonical(value: Any) -> bytes:
    """The exact, canonical JSON of a key's parts (sorted keys); a value without an exact JSON form is refused.

    JSON has no tuple and only string keys, so the encoding tags them: every mapping becomes {"dict": ...} and
    every tuple {"tuple": [...]}, and (1, 2), [1, 2] and {"tuple": [1, 2]} get three different texts. Types other
    than None, bool, int, float (finite), str, list, tuple and str-keyed mappings raise TypeError (NaN and inf:
    ValueError) instead of being str()-ed into a key that might collide or change between runs."""
    return json.dumps(_exact(value, "parts"), sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _exact(value: Any, where: str) -> Any:
    kind = type(value)  # exact types: a subclass (an IntEnum, a str subclass) would lose what it is in JSON
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"cache key {where}: {value!r} has no exact JSON form")
        return value
    if kind is list:
        return [_exact(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is tuple:
        return {"tuple": [_exact(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, Mapping):
        bad = [k for k in value if type(k) is not str]
        if bad:
            raise TypeError(f"cache key {where}: key {bad[0]!r} is not a str (JSON keys are strings)")
        return {"dict": {k: _exact(v, f"{where}.{k}") for k, v in value.items()}}
    raise TypeError(
        f"cache key {where}: a {kind.__name__} has no exact JSON form; "
        "give None, bool, int, float, str, or lists, tuples and str-keyed dicts of them"
    )


# ---------------------------------------------------------------- entry files


@dataclass(frozen=True)
class Entry:
    """What a cache hit returns: the payload and the meta stored with it."""

    data: bytes
    meta: dict[str, Any]


def encode(key: str, data: bytes, meta: Mapping[str, Any]) -> bytes:
    """An entry file: magic, format version, key, meta (one JSON line), payload length, checksum, then payload.

    The blake2b checksum covers the key, meta and length lines and the payload, so a flipped byte anywhere past
    the magic is caught."""
    body = b"%s\n%s\n%d\n" % (key.encode(), json.dumps(dict(meta), sort_keys=True, allow_nan=False).encode(), len(data))
    check = hashlib.blake2b(body + data, digest_size=32).hexdigest().encode()
    return MAGIC + b"%d\n" % FORMAT_VERSION + body + check + b"\n" + data


def decode(raw: bytes, key: str) -> Entry | str:
    """The entry in an entry file's bytes if it is exactly the one asked for, else why not (one line)."""
    if not raw.startswith(MAGIC):
        return "not an attnbench cache entry (bad magic)"
    lines = raw[len(MAGIC) :].split(b"\n", 5)
    if len(lines) < 6:
        return "truncated header"
    version, got_key, meta_line, length, check, data = lines
    if version != b"%d" % FORMAT_VERSION:
        return f"format version {version[:16].decode(errors='replace')}, not {FORMAT_VERSION}"
    if got_key != key.encode():
        return "foreign entry (its key is not the one asked for)"
    if not length.isdigit() or int(length) != len(data):
        return f"payload of {len(data)} bytes, header says {length[:24].decode(errors='replace')}"
    body = b"%s\n%s\n%s\n" % (got_key, meta_line, length)
    if hashlib.blake2b(body + data, digest_size=32).hexdigest().encode() != check:
        return "checksum mismatch"
    try:
        meta = json.loads(meta_line)
    except ValueError:
        return "undecodable meta"
    if not isinstance(meta, dict):
        return "meta is not a JSON object"
    return Entry(data, meta)


# ---------------------------------------------------------------- what the cache reports


@dataclass
class CacheStats:
    """What one process's cache did, for the run's record (workers' stats are added up with `+`)."""

    hits: int = 0
    #: Lookups that found no usable entry (the rejected ones included): the caller built afresh.
    misses: int = 0
    #: Entries found corrupt, truncated, foreign or of another format: deleted, then rebuilt by the caller.
    rejected: int = 0
    stored: int = 0
    #: Entries removed to keep the cache within its cap.
    evicted: int = 0
    #: Entries not stored because they alone exceed the cap.
    oversized: int = 0

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def as_dict(self) -> dict[str, int]:
        """The counters as plain data."""
        return asdict(self)


@dataclass(frozen=True)
class KindInfo:
    """One kind's share of the cache."""

    entries: int
    bytes: int


@dataclass(frozen=True)
class CacheInfo:
    """What `attnbench cache info` shows: where, whether in use, what each kind holds, the cap, the versions."""

    root: Path | None
    enabled: bool
    note: str | None
    kinds: dict[str, KindInfo]
    max_bytes: int
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        """Entries of every kind."""
        return sum(k.entries for k in self.kinds.values())

    @property
    def bytes(self) -> int:
        """Bytes of every kind's entry files."""
        return sum(k.bytes for k in self.kinds.values())


@dataclass(frozen=True)
class Cleared:
    """What `clear` removed."""

    entries: int
    bytes: int


@dataclass(frozen=True)
class _File:
    mtime: float
    size: int
    path: Path
    kind: str
    temp: bool


# ---------------------------------------------------------------- the cache


class Cache:
    """Entries by kind and key under one directory, within a size cap; `root=None` is a disabled cache."""

    def __init__(self, root: Path | str | None, max_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        #: The size cap in bytes (None: $ATTNBENCH_CACHE_MAX_MB, else DEFAULT_MAX_BYTES).
        self.max_bytes = max_bytes_from_env() if max_bytes is None else max_bytes
        self.stats = CacheStats()
        #: Why the cache is not in use (one line), once a read or write of its directory failed.
        self.note: str | None = None
        #: Why each rejected entry was rejected, in the order found.
        self.rejections: list[str] = []
        self._usable: bool | None = None  # unknown until the directory is first used
        self._on_disk: int | None = None  # bytes found at the last walk of the directory (None: not walked yet)
        self._written = 0  # bytes this process wrote since that walk

    @property
    def enabled(self) -> bool:
        """True unless the cache was switched off (root None) or its directory failed (see `note`)."""
        return self.root is not None and self.note is None

    def ready(self) -> bool:
        """Make the directory and check it can be read and written (once); False, with a `note`, if not.

        get and put call it; call it before a run to learn at once whether the cache is in use."""
        if self._usable is None:
            self._usable = self._probe()
        return self._usable and self.enabled

    def key(self, kind: str, parts: Mapping[str, Any]) -> str:
        """The key of an entry: a digest of its kind, the format, `versions()` and `parts` as canonical JSON."""
        _check_kind(kind)
        text = canonical({"kind": kind, "format": FORMAT_VERSION, "versions": versions(), "parts": dict(parts)})
        return hashlib.blake2b(text, digest_size=32).hexdigest()

    def get(self, kind: str, key: str) -> Entry | None:
        """The entry stored under kind and key, or None (absent, or rejected and deleted: rebuild it)."""
        path = self._path(kind, key)
        if not self.ready():
            return None
        try:
            with open(path, "rb") as f:
                raw, inode = f.read(), os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except OSError as exc:
            self.stats.misses += 1
            self._disable(f"cannot read {path} ({exc.strerror or exc})")
            return None
        found = decode(raw, key)
        if isinstance(found, str):
            self._reject(path, inode, found)
            return None
        # Least recently used: a read counts as a use. The file may be evicted by another process meanwhile:
        # the entry read is whole all the same.
        with contextlib.suppress(OSError):
            os.utime(path)
        self.stats.hits += 1
        return found

    def put(self, kind: str, key: str, data: bytes, meta: Mapping[str, Any] | None = None) -> bool:
        """Store data (and its JSON meta) under kind and key, then evict beyond the cap; True if stored."""
        path = self._path(kind, key)
        if not self.ready():
            return False
        blob = encode(key, data, meta or {})
        if len(blob) > self.max_bytes:
            self.stats.oversized += 1
            return False
        if not self._write(path, blob):
            return False
        self.stats.stored += 1
        self._written += len(blob)
        if (
            self._on_disk is None
            or self._on_disk + self._written > self.max_bytes
            or self._written > RESCAN_FRACTION * self.max_bytes
        ):
            self._evict()
        return True

    def info(self) -> CacheInfo:
        """What the cache holds, per kind (every known kind listed, empty ones too), its cap and its versions."""
        kinds = {k: KindInfo(0, 0) for k in KINDS}
        for f in self._files():
            if not f.temp:
                had = kinds.get(f.kind, KindInfo(0, 0))
                kinds[f.kind] = KindInfo(had.entries + 1, had.bytes + f.size)
        note = self.note
        if note is None and self.root is not None and self.root.exists():
            try:
                os.listdir(self.root)
            except OSError as exc:
                note = f"cannot read {self.root} ({exc.strerror or exc})"
        return CacheInfo(self.root, self.root is not None and note is None, note, kinds, self.max_bytes, versions())

    def clear(self, kind: str | None = None) -> Cleared:
        """Remove every entry (of one kind); other processes' writes in flight are left alone."""
        if kind is not None:
            _check_kind(kind)
        entries = size = 0
        now = time.time()
        for f in list(self._files(kind)):
            if f.temp and now - f.mtime <= STALE_TEMP_S:
                continue
            if _unlink(f.path) and not f.temp:
                entries, size = entries + 1, size + f.size
        self._prune(kind)
        self._on_disk = None  # walk again at the next write
        return Cleared(entries, size)

    def record(self) -> dict[str, Any]:
        """The cache's part of a run's environment record: where, whether in use, the cap and what it did (add
        the workers' `stats` to this process's first)."""
        root = str(self.root) if self.root is not None else None
        return {
            "dir": root,
            "enabled": self.enabled,
            "max_bytes": self.max_bytes,
            "note": self.note,
            **self.stats.as_dict(),
        }

    # ------------------------------------------------------------ inside

    def _path(self, kind: str, key: str) -> Path:
        _check_kind(kind)
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"cache key {key!r}: expected 64 lower-case hex digits (from Cache.key)")
        return (self.root or Path()) / kind / key[:2] / key

    def _probe(self) -> bool:
        if self.root is None:
            return False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            os.listdir(self.root)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-", suffix=_TEMP_SUFFIX):
                pass
        except OSError as exc:
            self._disable(f"cannot use {self.root} ({exc.strerror or exc})")
            return False
        return True

    def _disable(self, why: str) -> None:
        if self.note is None:
            self.note = f"cache disabled: {why}; running without it"

    def _reject(self, path: Path, inode: int, why: str) -> None:
        self.stats.rejected += 1
        self.stats.misses += 1
        self.rejections.append(f"{path.parent.parent.name}/{path.name[:12]}: {why}")
        try:
            # Only the file that was read: another process may have put a good entry there since.
            if os.stat(path).st_ino == inode:
                path.unlink()
        except OSError:
            pass

    def _write(self, path: Path, blob: bytes) -> bool:
        for _ in range(2):  # a `cache clear` in another process may remove the empty directory under us: again
            tmp = None
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:16]}.", suffix=_TEMP_SUFFIX)
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)
                return True
            except FileNotFoundError:
                _unlink(tmp)
            except OSError as exc:
                _unlink(tmp)
                self._disable(f"cannot write {path.parent} ({exc.strerror or exc})")
                return False
        return False

    def _evict(self) -> None:
        """Walk the directory; past the cap, remove least recently used entries (all kinds together) down to
        LOW_WATER of it."""
        now = time.time()
        files = []
        for f in self._files():
            if not f.temp:
                files.append(f)
            elif now - f.mtime > STALE_TEMP_S:
                _unlink(f.path)  # left by a process that died mid-write
        total = sum(f.size for f in files)
        if total > self.max_bytes:
            for f in sorted(files, key=lambda f: (f.mtime, f.path.name)):
                if total <= LOW_WATER * self.max_bytes:
                    break
                if _unlink(f.path):
                    self.stats.evicted += 1
                total -= f.size  # gone either way: another process may have evicted it first
        self._on_disk, self._written = total, 0

    def _files(self, kind: str | None = None) -> Iterator[_File]:
        """Every entry file and temporary file (of one kind, or all); what vanishes meanwhile is skipped."""
        if self.root is None:
            return
        for kind_dir in _scandir(self.root):
            if not _KIND.fullmatch(kind_dir.name) or kind not in (None, kind_dir.name):
                continue
            for shard in _scandir(kind_dir.path):
                for item in _scandir(shard.path) if len(shard.name) == 2 else ():
                    temp = item.name.startswith(".") and item.name.endswith(_TEMP_SUFFIX)
                    if not (temp or _KEY.fullmatch(item.name)):
                        continue  # not ours
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    yield _File(st.st_mtime, st.st_size, Path(item.path), kind_dir.name, temp)

    def _prune(self, kind: str | None) -> None:
        """Remove the empty directories `clear` left (a non-empty one stays)."""
        if self.root is None:
            return
        for kind_dir in _scandir(self.root):
            if _KIND.fullmatch(kind_dir.name) and kind in (None, kind_dir.name):
                for shard in _scandir(kind_dir.path):
                    _rmdir(shard.path)
                _rmdir(kind_dir.path)


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ValueError(f"cache kind {kind!r}: expected lower-case letters, digits, '-' or '_' (e.g. exports)")


def _scandir(path: Path | str) -> list[os.DirEntry[str]]:
    """The subdirectories and files of path, or none when it vanished or cannot be read."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _unlink(path: Path | str | None) -> bool:
    """Remove a file; False when it was gone already (or cannot be removed)."""
    if path is None:
        return False
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _rmdir(path: str) -> None:
    with contextlib.suppress(OSError):  # not empty, or gone
        os.rmdir(path)
