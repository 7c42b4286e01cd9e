"""The cache across runs: keys that change with everything that changes an entry, entries rebuilt rather than
trusted when anything is wrong, least-recently-used eviction under the cap, and a cache that only ever saves time
(a directory it cannot use disables it with a note, never an error)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest

from attnbench import cache as C
from attnbench.cache import Cache, Cleared, Entry, KindInfo
from attnbench.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
#: The parts a caller keys an export on (what the lead passes: source, kwargs, weights, shapes).
PARTS: dict[str, Any] = {
    "source": "5f1e0c",
    "module": "lka",
    "kwargs": {"heads": 4, "kernels": (3, 5), "bias": True, "scale": 0.5, "act": None},
    "weights": "9a8b7c",
    "shape_policy": "dynamic H, W",
    "shape": (2, 16, 8, 8),
}


def _entry_path(cache: Cache, kind: str, key: str) -> Path:
    assert cache.root is not None
    return cache.root / kind / key[:2] / key


def _stored(tmp_path: Path, data: bytes = b"graph bytes", meta: dict[str, Any] | None = None) -> tuple[Cache, str]:
    """A cache holding one export entry under the key of PARTS."""
    cache = Cache(tmp_path / "cache")
    key = cache.key("exports", PARTS)
    assert cache.put("exports", key, data, meta if meta is not None else {"exporter": "dynamo"})
    return cache, key


# ---------------------------------------------------------------- round trip and where


def test_an_entry_comes_back_as_stored_from_its_own_file(tmp_path: Path) -> None:
    cache, key = _stored(tmp_path, b"\x00\x01 graph \xff" * 100, {"exporter": "dynamo", "dims": ["b", 16, "h", "w"]})
    assert cache.get("exports", key) == Entry(
        b"\x00\x01 graph \xff" * 100, {"exporter": "dynamo", "dims": ["b", 16, "h", "w"]}
    )
    path = _entry_path(cache, "exports", key)
    assert path.is_file() and path.read_bytes().startswith(C.MAGIC)
    assert cache.get("counts", key) is None  # kinds are apart
    assert cache.stats.as_dict() == {"hits": 1, "misses": 1, "rejected": 0, "stored": 1, "evicted": 0, "oversized": 0}


def test_an_absent_entry_is_a_miss(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    assert cache.get("exports", cache.key("exports", PARTS)) is None
    assert (cache.stats.misses, cache.stats.hits) == (1, 0)


@pytest.mark.parametrize(("kind", "key"), [("../x", "0" * 64), ("Exports", "0" * 64), ("exports", "../" + "0" * 61)])
def test_a_kind_or_key_that_could_leave_the_directory_is_refused(tmp_path: Path, kind: str, key: str) -> None:
    with pytest.raises(ValueError, match=r"cache (kind|key)"):
        Cache(tmp_path).get(kind, key)


def test_meta_that_is_not_json_is_the_callers_error(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with pytest.raises(TypeError):
        cache.put("counts", cache.key("counts", PARTS), b"", {"when": object()})


# ---------------------------------------------------------------- keys


def test_a_key_is_64_hex_digits_and_the_same_for_the_same_parts_in_any_order() -> None:
    cache = Cache(None)
    key = cache.key("exports", PARTS)
    assert len(key) == 64 and int(key, 16) >= 0
    assert cache.key("exports", dict(reversed(list(PARTS.items())))) == key
    assert Cache(Path("/elsewhere")).key("exports", PARTS) == key  # the directory is not part of it


def test_the_kind_and_the_format_version_change_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(None)
    key = cache.key("exports", PARTS)
    assert cache.key("counts", PARTS) != key
    monkeypatch.setattr(C, "FORMAT_VERSION", C.FORMAT_VERSION + 1)
    assert cache.key("exports", PARTS) != key


@pytest.mark.parametrize("package", list(C.versions()))
def test_every_version_the_key_covers_changes_it(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(None)
    key = cache.key("exports", PARTS)
    other = {**C.versions(), package: C.versions()[package] + ".1"}
    monkeypatch.setattr(C, "versions", lambda: other)
    assert cache.key("exports", PARTS) != key


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("source", "5f1e0d"),
        ("module", "van"),
        ("weights", "9a8b7d"),
        ("shape_policy", "batch only"),
        ("shape", (2, 16, 8, 16)),
        ("kwargs", {**PARTS["kwargs"], "heads": 8}),
        ("kwargs", {**PARTS["kwargs"], "kernels": [3, 5]}),  # a list is not the tuple it equals in JSON
        ("kwargs", {**PARTS["kwargs"], "bias": 1}),  # nor is 1 True
        ("kwargs", {**PARTS["kwargs"], "scale": 0.5000000000000001}),  # floats are kept exactly
        ("kwargs", {**PARTS["kwargs"], "act": "None"}),
        ("kwargs", {**PARTS["kwargs"], "extra": None}),
        ("kwargs", {"tuple": [3, 5]}),  # the tag that marks a tuple cannot be forged by a dict
    ],
)
def test_every_part_changes_the_key(part: str, value: Any) -> None:
    cache = Cache(None)
    assert cache.key("exports", {**PARTS, part: value}) != cache.key("exports", PARTS)


def test_tuples_lists_and_dicts_have_distinct_canonical_forms() -> None:
    forms = {C.canonical(v) for v in ((1, 2), [1, 2], {"tuple": [1, 2]}, [1.0, 2], [True, 2], {"1": 2})}
    assert len(forms) == 6
    assert C.canonical({"b": 1, "a": (2,)}) == b'{"dict":{"a":{"tuple":[2]},"b":1}}'


class Heads(IntEnum):
    FOUR = 4


@pytest.mark.parametrize(
    ("value", "error", "says"),
    [
        (float("nan"), ValueError, "parts.kwargs.x: nan has no exact JSON form"),
        (float("inf"), ValueError, "inf has no exact JSON form"),
        (Path("a.py"), TypeError, "parts.kwargs.x: a PosixPath has no exact JSON form"),
        (object(), TypeError, "an? object has no exact JSON form"),
        (b"bytes", TypeError, "a bytes has no exact JSON form"),
        ({1: "a"}, TypeError, r"parts.kwargs.x: key 1 is not a str"),
        ([1, {2, 3}], TypeError, r"parts.kwargs.x\[1\]: a set"),
        (Heads.FOUR, TypeError, "a Heads has no exact JSON form"),  # not silently the int 4
    ],
)
def test_a_value_without_an_exact_json_form_is_refused_naming_where(value: Any, error: type, says: str) -> None:
    with pytest.raises(error, match=says):
        Cache(None).key("exports", {"kwargs": {"x": value}})


def test_versions_are_read_from_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    found = C.versions()
    assert set(found) == {
        "python",
        "attnbench",
        "torch",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "fvcore",
        "ultralytics-thop",
    }
    import torch  # the test's own check against the imported package

    assert found["torch"] == torch.__version__
    assert found["python"] == ".".join(map(str, sys.version_info[:3]))
    monkeypatch.setitem(C.DISTRIBUTIONS, "nothing", ("attnbench-no-such-distribution",))
    C._versions.cache_clear()
    try:
        assert C.versions()["nothing"] == "absent"
    finally:
        C._versions.cache_clear()


def test_source_key_follows_every_byte_and_name_of_the_files(tmp_path: Path) -> None:
    a, b = tmp_path / "export.py", tmp_path / "count.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    key = C.source_key(a, b)
    assert C.source_key(str(a), str(b)) == key and len(key) == 32
    assert C.source_key(b, a) != key
    a.write_text("x = 2\n")
    assert C.source_key(a, b) != key


# ---------------------------------------------------------------- entries never trusted


def _flip(at: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    return lambda raw: raw[: at(raw)] + bytes([raw[at(raw)] ^ 0x01]) + raw[at(raw) + 1 :]


def _line(raw: bytes, n: int) -> int:
    """Where the header's line n (0: magic) starts."""
    start = 0
    for _ in range(n):
        start = raw.index(b"\n", start) + 1
    return start


#: A damage done to a valid entry file, and what the rejection says.
DAMAGES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "payload byte flipped": (_flip(lambda raw: len(raw) - 3), "checksum mismatch"),
    "meta byte flipped": (_flip(lambda raw: _line(raw, 3) + 2), "checksum mismatch"),
    "payload cut short": (lambda raw: raw[:-1], "header says"),
    "payload grown": (lambda raw: raw + b"x", "header says"),
    "header cut": (lambda raw: raw[: _line(raw, 3)], "truncated header"),
    "empty file": (lambda raw: b"", "bad magic"),
    "bad magic": (lambda raw: b"X" + raw[1:], "bad magic"),
    "other format version": (
        lambda raw: raw[: _line(raw, 1)] + b"%d" % (C.FORMAT_VERSION + 1) + raw[_line(raw, 2) - 1 :],
        f"format version {C.FORMAT_VERSION + 1}, not {C.FORMAT_VERSION}",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_entry_is_deleted_counted_and_rebuilt(tmp_path: Path, damage: str) -> None:
    harm, says = DAMAGES[damage]
    cache, key = _stored(tmp_path)
    path = _entry_path(cache, "exports", key)
    path.write_bytes(harm(path.read_bytes()))
    assert cache.get("exports", key) is None
    assert not path.exists()
    assert (cache.stats.rejected, cache.stats.misses, cache.stats.hits) == (1, 1, 0)
    assert len(cache.rejections) == 1 and says in cache.rejections[0]
    assert cache.put("exports", key, b"graph bytes", {})  # the caller rebuilds it
    assert cache.get("exports", key) == Entry(b"graph bytes", {})


def test_a_foreign_entry_is_rejected_and_the_original_kept(tmp_path: Path) -> None:
    cache, key = _stored(tmp_path)
    other = cache.key("exports", {**PARTS, "shape": (1, 16, 8, 8)})
    _entry_path(cache, "exports", other).parent.mkdir(parents=True, exist_ok=True)
    _entry_path(cache, "exports", other).write_bytes(_entry_path(cache, "exports", key).read_bytes())
    assert cache.get("exports", other) is None
    assert not _entry_path(cache, "exports", other).exists()
    assert "foreign entry" in cache.rejections[0]
    assert cache.get("exports", key) == Entry(b"graph bytes", {"exporter": "dynamo"})


def test_a_well_formed_entry_with_undecodable_meta_is_rejected() -> None:
    key = "ab" * 32
    meta, data = b"{not json", b"payload"
    body = b"%s\n%s\n%d\n" % (key.encode(), meta, len(data))
    check = C.hashlib.blake2b(body + data, digest_size=32).hexdigest().encode()
    raw = C.MAGIC + b"%d\n" % C.FORMAT_VERSION + body + check + b"\n" + data
    assert C.decode(raw, key) == "undecodable meta"
    assert C.decode(C.encode(key, data, {"a": 1}), key) == Entry(data, {"a": 1})


# ---------------------------------------------------------------- the cap


def _aged(cache: Cache, names: dict[str, float]) -> dict[str, str]:
    """Store one same-sized entry per name, each with the given mtime; their keys by name."""
    keys = {}
    for name, mtime in names.items():
        keys[name] = cache.key("counts", {"name": name})
        assert cache.put("counts", keys[name], b"x" * 1000, {})
        os.utime(_entry_path(cache, "counts", keys[name]), (mtime, mtime))
    return keys


def test_least_recently_used_entries_go_first_and_a_read_is_a_use(tmp_path: Path) -> None:
    size = len(C.encode("0" * 64, b"x" * 1000, {}))
    cache = Cache(tmp_path, max_bytes=int(3.4 * size))  # three fit; evicted down to 0.9 of it, three stay
    keys = _aged(cache, {"a": 1000.0, "b": 3000.0, "c": 2000.0})
    assert cache.get("counts", keys["a"]) is not None  # a: the oldest, now the most recently used
    keys.update(_aged(cache, {"d": time.time()}))
    alive = {n for n, k in keys.items() if _entry_path(cache, "counts", k).exists()}
    assert alive == {"a", "b", "d"} and cache.stats.evicted == 1  # c went
    keys.update(_aged(cache, {"e": time.time()}))
    alive = {n for n, k in keys.items() if _entry_path(cache, "counts", k).exists()}
    assert alive == {"a", "d", "e"} and cache.stats.evicted == 2  # then b
    assert cache.info().bytes == 3 * size


def test_eviction_spans_every_kind(tmp_path: Path) -> None:
    size = len(C.encode("0" * 64, b"x" * 1000, {}))
    cache = Cache(tmp_path, max_bytes=int(2.5 * size))
    old = cache.key("exports", {"old": 1})
    cache.put("exports", old, b"x" * 1000)
    os.utime(_entry_path(cache, "exports", old), (1000.0, 1000.0))
    _aged(cache, {"a": time.time(), "b": time.time()})
    assert not _entry_path(cache, "exports", old).exists()
    assert cache.info().kinds["counts"] == KindInfo(2, 2 * size)


def test_a_full_cache_is_evicted_down_to_its_low_water_mark(tmp_path: Path) -> None:
    size = len(C.encode("0" * 64, b"x" * 1000, {}))
    cache = Cache(tmp_path, max_bytes=10 * size)
    _aged(cache, {str(i): 1000.0 + i for i in range(11)})
    assert cache.stats.evicted == 2 and cache.info().bytes == 9 * size  # not just under the cap: 0.9 of it


def test_writes_walk_the_directory_only_when_the_cap_may_be_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks = []
    real = Cache._files
    monkeypatch.setattr(Cache, "_files", lambda self, kind=None: walks.append(kind) or real(self, kind))
    size = len(C.encode("0" * 64, b"x" * 1000, {}))
    cache = Cache(tmp_path, max_bytes=100 * size)
    _aged(cache, {str(i): 1000.0 + i for i in range(4)})
    assert len(walks) == 1  # the first write: how full is it?
    _aged(cache, {str(i): 2000.0 + i for i in range(4, 6)})
    assert len(walks) == 1  # 5 entries written since: 5% of the cap, not past it
    _aged(cache, {"6": 2006.0})
    assert len(walks) == 2
    other = Cache(tmp_path, max_bytes=6 * size)  # another process, with a smaller cap
    _aged(other, {"x": 3000.0})  # its first write walks, sees the 7 entries of the first, and evicts
    assert len(walks) == 3 and other.stats.evicted == 3 and other.info().entries == 5


def test_an_entry_larger_than_the_cap_is_not_stored_and_evicts_nothing(tmp_path: Path) -> None:
    cache, key = _stored(tmp_path)
    cache.max_bytes = 2000
    big = cache.key("exports", {"big": True})
    assert not cache.put("exports", big, b"x" * 2000)
    assert cache.get("exports", big) is None and cache.get("exports", key) is not None
    assert (cache.stats.oversized, cache.stats.evicted) == (1, 0)


@pytest.mark.parametrize(("text", "cap"), [("", C.DEFAULT_MAX_BYTES), ("512", 512 * 2**20), (" 0.5 ", 2**19), ("0", 0)])
def test_the_cap_follows_the_environment(text: str, cap: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(C.MAX_MB_ENV, text)
    assert C.max_bytes_from_env() == cap == Cache(None).max_bytes
    assert Cache(None, max_bytes=7).max_bytes == 7


@pytest.mark.parametrize("text", ["lots", "-1", "nan", "inf", "1e400"])
def test_a_bad_cap_in_the_environment_is_refused_naming_it(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(C.MAX_MB_ENV, text)
    with pytest.raises(UsageError, match=rf"^\$ATTNBENCH_CACHE_MAX_MB='{text}': expected a size in MiB >= 0"):
        Cache(None)


def test_temporary_files_of_dead_writers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    cache, key = _stored(tmp_path)
    shard = _entry_path(cache, "exports", key).parent
    dead, live = shard / ".dead.abc.tmp", shard / ".live.abc.tmp"
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    os.utime(dead, (1000.0, 1000.0))
    again = Cache(tmp_path / "cache")  # the next process: its first write walks the directory
    again.put("exports", again.key("exports", {"another": 1}), b"x")
    assert not dead.exists() and live.exists()
    assert cache.info().kinds["exports"].entries == 2  # temporaries are no entries


# ---------------------------------------------------------------- a cache that only saves time


def test_a_disabled_cache_reads_and_writes_nothing(tmp_path: Path) -> None:
    cache = Cache(None)
    key = cache.key("exports", PARTS)
    assert cache.get("exports", key) is None and cache.put("exports", key, b"x") is False
    assert cache.clear() == Cleared(0, 0) and not cache.enabled and not cache.ready()
    info = cache.info()
    assert (info.root, info.enabled, info.entries, info.bytes) == (None, False, 0, 0)
    assert cache.stats.as_dict() == C.CacheStats().as_dict()


def test_a_cache_under_a_file_is_disabled_with_a_note_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cache = Cache(tmp_path / "file" / "cache")
    key = cache.key("exports", PARTS)
    assert cache.put("exports", key, b"x") is False and cache.get("exports", key) is None
    assert not cache.enabled
    assert (
        cache.note == f"cache disabled: cannot use {tmp_path / 'file' / 'cache'} (Not a directory); running without it"
    )
    assert cache.record() == {
        "dir": str(tmp_path / "file" / "cache"),
        "enabled": False,
        "max_bytes": cache.max_bytes,
        "note": cache.note,
        **C.CacheStats().as_dict(),  # nothing looked up or stored: the cache was not in use
    }


needs_permissions = pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes past permission bits")


@needs_permissions
@pytest.mark.parametrize("mode", [0o500, 0o000], ids=["read-only", "unreadable"])
def test_a_directory_it_cannot_use_disables_the_cache_with_a_note(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(mode)
    try:
        cache = Cache(root)
        key = cache.key("exports", PARTS)
        assert cache.put("exports", key, b"x") is False and cache.get("exports", key) is None
        assert cache.note == f"cache disabled: cannot use {root} (Permission denied); running without it"
        assert cache.stats.stored == 0
    finally:
        root.chmod(0o700)


@needs_permissions
def test_a_directory_that_turns_read_only_mid_run_disables_the_cache(tmp_path: Path) -> None:
    cache, key = _stored(tmp_path)
    shard = _entry_path(cache, "exports", key).parent
    shard.chmod(0o500)
    try:
        assert cache.put("exports", key, b"new") is False
        assert cache.note is not None and "cannot write" in cache.note and "Permission denied" in cache.note
    finally:
        shard.chmod(0o700)


def test_a_write_that_fails_half_way_leaves_no_entry_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(tmp_path)
    key = cache.key("exports", PARTS)
    real_fdopen = os.fdopen

    def half_then_full(fd: int, mode: str) -> Any:
        file = real_fdopen(fd, mode)
        real_write = file.write
        file.write = lambda blob: (real_write(blob[: len(blob) // 2]), _raise(OSError(28, "No space left on device")))
        return file

    monkeypatch.setattr(C.os, "fdopen", half_then_full)
    assert cache.put("exports", key, b"x" * 10_000) is False
    shard = tmp_path / "exports" / key[:2]
    assert cache.note == f"cache disabled: cannot write {shard} (No space left on device); running without it"
    assert list(shard.iterdir()) == []  # neither a torn entry nor its temporary
    monkeypatch.undo()
    assert Cache(tmp_path).get("exports", key) is None


def _raise(exc: BaseException) -> None:
    raise exc


# ---------------------------------------------------------------- info, clear, stats


def test_info_counts_each_kinds_entries_and_bytes_and_ignores_what_is_not_ours(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    for i in range(3):
        cache.put("exports", cache.key("exports", {"i": i}), b"g" * (100 * i))
    cache.put("mine", cache.key("mine", {}), b"m")
    (tmp_path / "zoo-0123.json").write_text("[]")  # the zoo's catalog lives beside the entries
    (tmp_path / "exports" / "notes.txt").write_text("not an entry")
    files = {
        kind: [p for p in (tmp_path / kind).rglob("*") if p.is_file() and len(p.name) == 64]
        for kind in ("exports", "mine")
    }
    info = cache.info()
    assert info.kinds == {
        "exports": KindInfo(3, sum(p.stat().st_size for p in files["exports"])),
        "counts": KindInfo(0, 0),
        "mine": KindInfo(1, files["mine"][0].stat().st_size),
    }
    assert info.entries == 4 and info.bytes == sum(k.bytes for k in info.kinds.values())
    assert (info.root, info.enabled, info.note, info.max_bytes) == (tmp_path, True, None, C.DEFAULT_MAX_BYTES)
    assert info.versions == C.versions()


def test_clear_removes_one_kind_or_all_and_says_how_much(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    for kind, n in (("exports", 2), ("counts", 3)):
        for i in range(n):
            cache.put(kind, cache.key(kind, {"i": i}), b"x" * 10)
    (tmp_path / "zoo-0123.json").write_text("[]")
    counts = cache.info().kinds["counts"]
    assert cache.clear("counts") == Cleared(3, counts.bytes)
    assert cache.info().kinds["counts"] == KindInfo(0, 0) and cache.info().kinds["exports"].entries == 2
    assert not (tmp_path / "counts").exists()  # its empty directories pruned
    shard = next((tmp_path / "exports").iterdir())
    writing, dead = shard / ".writing.abc.tmp", shard / ".dead.abc.tmp"
    writing.write_bytes(b"half")
    dead.write_bytes(b"half")
    os.utime(dead, (1000.0, 1000.0))
    assert cache.clear().entries == 2 and cache.info().entries == 0
    assert writing.exists() and not dead.exists()  # another process's write in flight is left alone
    assert (tmp_path / "zoo-0123.json").exists()  # not an entry: left alone
    with pytest.raises(ValueError, match="cache kind"):
        cache.clear("../x")


def test_stats_add_up_across_workers() -> None:
    a, b = C.CacheStats(hits=1, misses=2, stored=3), C.CacheStats(hits=10, rejected=1, evicted=4, oversized=5)
    assert (a + b).as_dict() == {"hits": 11, "misses": 2, "rejected": 1, "stored": 3, "evicted": 4, "oversized": 5}


# ---------------------------------------------------------------- where


def test_default_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(C.CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert C.default_dir() == tmp_path / "mine"
    monkeypatch.delenv(C.CACHE_ENV)
    assert C.default_dir() == tmp_path / "xdg" / "attnbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert C.default_dir() == tmp_path / "home" / ".cache" / "attnbench"


def test_the_tests_never_use_the_real_home(cache_dir_of_this_test: Path) -> None:
    assert C.default_dir() == cache_dir_of_this_test
    assert not str(C.default_dir()).startswith(str(Path.home() / ".cache"))


@pytest.fixture
def cache_dir_of_this_test(_cache_dir: Path) -> Path:
    return _cache_dir


# ---------------------------------------------------------------- two processes, one cache

#: Each process stores and reads entries of a cache whose cap holds about 20, so that both evict all the time.
SHARER = """
import random, sys
from attnbench.cache import Cache, encode
cache = Cache(sys.argv[1], max_bytes=20 * len(encode("0" * 64, b"x" * 2000, {"n": 0})))
keys = [cache.key("counts", {"n": n}) for n in range(40)]
for step in range(300):
    n = random.randrange(40)
    entry = cache.get("counts", keys[n])
    assert entry is None or entry.data == bytes([n]) * 2000 and entry.meta == {"n": n}, n
    if entry is None:
        cache.put("counts", keys[n], bytes([n]) * 2000, {"n": n})
print(json.dumps(cache.stats.as_dict()))
"""


def test_two_processes_share_one_cache_without_a_bad_read(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = "import json\n" + SHARER
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    stats = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        stats.append(json.loads(out))
    # Writes are atomic: neither process ever read a partial or mixed entry.
    assert [s["rejected"] for s in stats] == [0, 0]
    assert all(s["hits"] > 0 and s["evicted"] > 0 for s in stats)
    # Each process keeps the cap at its own walks; a last write walks and brings the total within it.
    cap = 20 * len(C.encode("0" * 64, b"x" * 2000, {"n": 0}))
    last = Cache(tmp_path, max_bytes=cap)
    last.put("counts", last.key("counts", {"n": "last"}), b"x")
    assert last.info().bytes <= cap
