"""Merge result files from several runs (shards, machines) into one set of rows, each naming its machine.

A row's machine is the label its run gave it (`Result.machine`); rows of older files, which have none, take
the label their file's environment gives (attnbench.env.machine_label), or `--label`. Two rows of the same case
from the same machine are a conflict: an error, or, with `latest`, the row of the newest file wins (by the
environment's `date_utc`; a file without a date counts as the oldest, and on a tie the file named later wins).
"""

from __future__ import annotations

import datetime as dt
import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from attnbench.backends import list_backends
from attnbench.env import machine_label
from attnbench.errors import UsageError
from attnbench.results import SCENARIO_FIELDS, Result, axes
from attnbench.store import SIDECAR_SUFFIX, LoadedResults
from attnbench.zoo.registry import list_modules

_GLOB_CHARS = "*?["
#: Env keys shown per source file in a merged report (what tells two runs of one machine apart).
SOURCE_KEYS = ("date_utc", "git_commit", "shard")
_OLDEST = dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def expand(patterns: Sequence[str]) -> list[Path]:
    """Files named or matched by globs ('shards/*.csv'), each once, in the order given (matches sorted).

    A glob matches reports only (.csv and .json, not a CSV's .meta.json sidecar); a sidecar named beside its
    CSV, as a shell's `shards/*` names it, is skipped too.
    """
    paths: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in _GLOB_CHARS) and not Path(pattern).exists():
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if _is_report(p))
            if not matches:
                raise UsageError(f"{pattern!r}: no .csv or .json report matches")
            paths += [Path(p) for p in matches]
        else:
            paths.append(Path(pattern))
    named = {p.resolve() for p in paths}
    unique: dict[Path, Path] = {}
    for path in paths:
        if path.name.endswith(SIDECAR_SUFFIX) and _csv_of(path).resolve() in named:
            continue
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _is_report(path: str) -> bool:
    return path.lower().endswith((".csv", ".json")) and not path.endswith(SIDECAR_SUFFIX)


def _csv_of(sidecar: Path) -> Path:
    return sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])


def source_label(loaded: LoadedResults, label: str | None = None) -> str:
    """The machine of a file's unlabelled rows: `label`, else the one its run recorded, else from its env."""

    if label:
        return label
    if loaded.env.get("machine"):
        return str(loaded.env["machine"])
    if loaded.env.get("cpu_model") or loaded.env.get("gpu"):
        return machine_label(loaded.env)
    # No environment at all (a CSV without its sidecar): nothing says it shares a machine with another file.
    return f"unknown machine ({Path(loaded.source).name})"


def labelled(loaded: LoadedResults, label: str | None = None) -> list[Result]:
    """The file's rows, each with a machine (rows that have one keep it)."""
    fallback = source_label(loaded, label)
    return [row if row.machine else replace(row, machine=fallback) for row in loaded.results]


def merge(sources: Sequence[LoadedResults], label: str | None = None, latest: bool = False) -> LoadedResults:
    """One set of rows from several files, ordered by machine (first file's first) then plan order.

    Raises UsageError for a case measured twice on one machine unless `latest`. One file comes back with its
    rows labelled, its order and its environment; several get an environment per machine.
    """
    if len(sources) == 1:
        only = sources[0]
        return LoadedResults(labelled(only, label), only.env, only.source)
    kept: dict[tuple[Any, ...], tuple[Result, dt.datetime, str]] = {}
    for source in sources:
        for row in labelled(source, label):
            date = _date(machine_env(source.env, row.machine))
            key = (row.machine, row.key)
            if key in kept:
                if not latest:
                    raise UsageError(
                        f"{row.label} on machine {row.machine!r} is in both {kept[key][2]} and "
                        f"{source.source}; pass --latest to keep the newest"
                    )
                if date < kept[key][1]:
                    continue
            kept[key] = (row, date, source.source)
    machines = _machine_envs(sources, label)
    sweep = common_sweep(sources)
    rows = plan_order([row for row, _, _ in kept.values()], list(machines), sweep)
    env: dict[str, Any] = {"machines": machines, "merged_from": [_source_record(s, label) for s in sources]}
    if sweep is not None:
        env["sweep"] = sweep
    return LoadedResults(rows, env, ", ".join(s.source for s in sources))


def _date(env: Mapping[str, Any]) -> dt.datetime:
    text = env.get("date_utc")
    if not isinstance(text, str):
        return _OLDEST
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return _OLDEST
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def machine_env(env: Mapping[str, Any], machine: str) -> Mapping[str, Any]:
    """The environment a machine's rows were measured in: per machine for a merged file, else the file's."""
    machines = env.get("machines")
    if isinstance(machines, Mapping) and isinstance(machines.get(machine), Mapping):
        return machines[machine]
    return env


def _machine_envs(sources: Sequence[LoadedResults], label: str | None) -> dict[str, dict[str, Any]]:
    """Each machine's environment, in order of first appearance: the newest run's when it ran several."""
    envs: dict[str, dict[str, Any]] = {}
    for source in sources:
        for machine in dict.fromkeys(row.machine for row in labelled(source, label)):
            env = dict(machine_env(source.env, machine))
            if machine not in envs or _date(env) >= _date(envs[machine]):
                envs[machine] = env
    return envs


def _source_record(source: LoadedResults, label: str | None) -> dict[str, Any]:
    """What a merged report says about one of its files: which machines, how many rows, when, which commit."""
    record: dict[str, Any] = {
        "file": source.source,
        "machines": list(dict.fromkeys(row.machine for row in labelled(source, label))),
        "rows": len(source.results),
    }
    record.update({key: source.env[key] for key in SOURCE_KEYS if key in source.env})
    return record


#: Where sweeps recorded by attnbench 0.1 kept the values of a scenario field (now sweep["scenarios"][field]).
LEGACY_SWEEP_KEYS = {
    "mode": "modes",
    "dtype": "dtypes",
    "threads": "threads",
    "channels_last": "channels_last",
    "compile": "compile",
    "allocator": "allocators",
}
#: Sweep record key of each geometry field.
GEOMETRY_KEYS = {"module": "modules", "dim": "dims", "res": "resolutions", "batch": "batches", "backend": "backends"}


def _given(sweep: Mapping[str, Any], field: str) -> list[Any]:
    """The values a recorded sweep lists for a field, in its order."""
    if field in GEOMETRY_KEYS:
        values = sweep.get(GEOMETRY_KEYS[field])
    else:
        values = (sweep.get("scenarios") or {}).get(field) or sweep.get(LEGACY_SWEEP_KEYS.get(field, ""))
    return [tuple(v) if isinstance(v, list) else v for v in values or ()]


def plan_order(rows: Sequence[Result], machines: Sequence[str], sweep: Mapping[str, Any] | None = None) -> list[Result]:
    """Rows by machine (in the given order), then as a Sweep plans them: module, dim, resolution, batch, kwargs,
    then the scenario fields in their order, then the backend. Values follow their order in `sweep` (the record a
    run writes into its environment), else the zoo's, each scenario field's choices and the backends' order and
    ascending values; so shards merged this way come out in the unsharded run's order."""

    sweep = sweep or {}
    defaults: dict[str, Sequence[Any]] = {"machine": machines, "module": list_modules(), "backend": list_backends()}
    defaults.update({name: a.choices or () for name, a in axes().items()})

    def ranks(field: str) -> dict[Any, int]:
        given = [] if field == "machine" else _given(sweep, field)
        return {value: i for i, value in enumerate(dict.fromkeys([*given, *defaults.get(field, ())]))}

    order = {field: ranks(field) for field in ("machine", *GEOMETRY_KEYS, *SCENARIO_FIELDS)}

    def at(field: str, value: Any) -> tuple[int, str]:
        # Unranked values come after the ranked ones, by their text (ints zero-padded, so they sort as numbers).
        return order[field].get(value, len(order[field])), _sortable(value)

    def key(r: Result) -> tuple[Any, ...]:
        geometry = (at("machine", r.machine), at("module", r.module), at("dim", r.dim))
        geometry += (at("res", (r.height, r.width)), at("batch", r.batch), (0, r.kwargs))
        scenario = tuple(at(name, getattr(r.scenario, name)) for name in SCENARIO_FIELDS)
        return (*geometry, *scenario, at("backend", r.backend))

    return sorted(rows, key=key)


def _sortable(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_sortable(v) for v in value)
    return f"{value:020d}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def common_sweep(sources: Sequence[LoadedResults]) -> dict[str, Any] | None:
    """The sweep the sources were planned from, when they all record the same one (shards of one command)."""
    sweeps = [s.env.get("sweep") for s in sources]
    first = sweeps[0]
    return dict(first) if isinstance(first, Mapping) and all(s == first for s in sweeps) else None


@dataclass(frozen=True)
class MachineInfo:
    """One machine of a report: its short alias (M1, M2, ...), label and environment."""

    alias: str
    label: str
    env: Mapping[str, Any]


def machines(rows: Sequence[Result], env: Mapping[str, Any]) -> list[MachineInfo]:
    """The machines of the rows in order of first appearance, aliased M1, M2, ... with their environments."""
    labels = list(dict.fromkeys(r.machine for r in rows if r.machine))
    return [MachineInfo(f"M{i}", label, machine_env(env, label)) for i, label in enumerate(labels, start=1)]
