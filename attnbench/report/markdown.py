"""The Markdown report: the summary table, notes, scaling, machines, failures, sources, convention, environment."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from attnbench import fmt
from attnbench import results as R
from attnbench.instructions import INSTRUCTIONS_METHOD
from attnbench.merge import machines as machines_of
from attnbench.report.columns import (
    ALLOC_MARK,
    LAUNCH_MARK,
    SHAPE_MARK,
    cross_columns,
    metric_label,
    summary_columns,
)
from attnbench.report.summary import (
    CONVENTION,
    RATIO_TOLERANCE,
    VARYING,
    backends_of,
    cross_hardware,
    flag,
    identity_text,
    present,
    roofs_by_machine,
    scaling,
    sort_summary,
    summary,
    varying,
    with_machine_aliases,
)
from attnbench.results import Result, axes
from attnbench.roofline import peaks_of
from attnbench.timing import LAUNCH_BOUND_FRACTION
from attnbench.zoo.registry import get_spec, list_modules
from attnbench.zoo.spec import SOURCE_HASH_DIGITS, Setting


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(
    results: Sequence[Result],
    env: Mapping[str, Any],
    title: str = "attnbench report",
    sort_by: str | None = None,
) -> str:
    """GitHub-ready report: the table, scaling exponents, failures with reasons, environment, convention."""
    lines = [f"# {title}", ""]
    table = with_machine_aliases(summary(results), results)
    if table.empty:
        lines += ["No results.", ""]
    else:
        lines += _summary_markdown(table, results, env, sort_by)
        notes = allocator_notes(results)
        if notes:
            lines += ["## Allocator", "", ALLOCATOR_NOTE, "", *[f"- {md_escape(n)}" for n in notes], ""]
        lines += _roof_markdown(results, env)
        lines += machines_markdown(results, env)
        lines += _scaling_markdown(results)
    lines += cross_hardware_markdown(results, env)
    lines += _failures_markdown(results)
    lines += _output_notes_markdown(results)
    lines += _sources_markdown(results)
    lines += ["## Counting convention", "", CONVENTION, "", *environment_markdown(results, env)]
    return "\n".join(lines)


def _summary_markdown(
    table: pd.DataFrame, results: Sequence[Result], env: Mapping[str, Any], sort_by: str | None
) -> list[str]:
    """The summary table, the scenario line under it, and the legend of what its columns and marks mean."""
    if sort_by:
        table = sort_summary(table, sort_by)
    cols = summary_columns(table, backends_of(results), roofs_by_machine(results, env), sort_by)
    lines = ["| " + " | ".join(md_escape(PAPER_HEADERS.get(c.header, c.header)) for c in cols) + " |"]
    lines.append("|" + "|".join("---" if c.justify == "left" else "---:" for c in cols) + "|")
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(md_escape(c.cell(r)) for c in cols) + " |")
    # The scenario fields that do not vary are not columns: the line under the table says them.
    return [*lines, "", scenario_text(table), "", _legend(results, cols), ""]


#: Headers that say what a paper's table calls the column: papers' "FLOPs" are multiply-adds.
PAPER_HEADERS = {"MACs": "MACs (papers' FLOPs)"}


def _legend(results: Sequence[Result], cols: Sequence[Any]) -> str:
    """What the summary table's MACs, latency, marks, memory, ratios and rates mean: only the parts that apply,
    short (docs/reading-results.md says the rest)."""
    headers = " ".join(c.header for c in cols)
    parts = []
    if "MACs" in headers:
        parts.append("MACs (papers' FLOPs): a paper's \"FLOPs\" are usually MACs: hold them here; 1 MAC = 2 FLOPs.")
    if any(present(r.latency_median_s) for r in results):
        parts.append(
            "Latency: median per call ± interquartile range, timed until the median is known within ±1% or the "
            "budget is spent."
        )
        marks = [
            ("`~` noisy (IQR/median > 10%, or the precision not reached)", any(flag(r.latency_noisy) for r in results)),
            ("`!` timed while other processes used the CPU", any(flag(r.latency_contended) for r in results)),
            (f"`{ALLOC_MARK}` > 10% slower with glibc's default allocator (see Allocator)", _slower(results)),
            (LAUNCH_LEGEND.rstrip("."), any(flag(r.latency_launch_bound) for r in results)),
        ]
        if any(shown for _, shown in marks):
            parts.append("Marks: " + "; ".join(text for text, shown in marks if shown) + ".")
    if any(present(r.instructions) for r in results):
        parts.append(f"instr/call: {INSTRUCTIONS_METHOD}.")
    if "Mem " in headers:
        parts.append("Mem: the peak of one step's activations and temporaries; weights and input excluded.")
    if "÷ours" in headers:
        parts.append(f"`under`/`over`: the counter differs from attnbench's by more than {RATIO_TOLERANCE:.0%}.")
    if "FLOP/s" in headers:
        parts.append("FLOP/s: counted FLOPs over the median latency; % peak: of the measured roof (below).")
    return " ".join([*parts, "More: docs/reading-results.md."])


def _slower(results: Sequence[Result]) -> bool:
    return any(flag(r.system_allocator_slower) for r in results)


def _scaling_markdown(results: Sequence[Result]) -> list[str]:
    """The exponents of cost ~ N^x per module series (nothing without two resolutions)."""
    frame = with_machine_aliases(scaling(results), results)
    if frame.empty:
        return []
    metrics = [c[: -len("_exp")] for c in frame.columns if c.endswith("_exp")]
    lines = [
        "## Scaling with N = H*W",
        "",
        "Exponent x in cost ~ N^x between the two largest resolutions (least-squares fit over "
        "all resolutions in brackets).",
        "",
    ]
    extra = varying(frame)
    heads = ["Module", "C", *(VARYING[c] for c in extra), "N range"]
    lines.append("| " + " | ".join(heads + [f"{metric_label(m)} exp" for m in metrics]) + " |")
    lines.append("|---|---:|" + "---:|" * len(extra) + "---:|" + "---:|" * len(metrics))
    for _, r in frame.iterrows():
        vals = []
        for m in metrics:
            e, f = r.get(f"{m}_exp"), r.get(f"{m}_fit")
            vals.append(fmt.MISSING if not present(e) else f"{fmt.ratio(e)} ({fmt.ratio(f)})")
        ids = [str(r["module"]), str(int(r["dim"]))]
        ids += [md_escape(identity_text(c, r[c])) for c in extra]
        lines.append("| " + " | ".join([*ids, f"{r['n_min']}..{r['n_max']}", *vals]) + " |")
    return [*lines, ""]


def _failures_markdown(results: Sequence[Result]) -> list[str]:
    """The cases that did not complete, each by its label (module, setting, backend, scenario off its defaults,
    kwargs), with its status and reason."""
    bad = [r for r in results if r.status != R.OK]
    if not bad:
        return []
    lines = ["## Cases that did not complete", "", "| Case | status | reason |", "|---|---|---|"]
    lines += [f"| {md_escape(r.label)} | {r.status} | {md_escape(r.reason)} |" for r in bad]
    return [*lines, ""]


def _output_notes_markdown(results: Sequence[Result]) -> list[str]:
    """Completed cases whose output deserves a note: a shape other than the input's (marked), several tensors."""
    notes = list(
        dict.fromkeys((r.module, r.dim, r.height, r.width, r.batch, r.reason) for r in results if r.ok and r.reason)
    )
    if not notes:
        return []
    marked = any(r.output_differs for r in results if r.ok and r.reason)
    legend = (
        f"`{SHAPE_MARK}` in the Status column: the output's shape differs from the input's (normal for a network, "
        "a mistake for a block)."
    )
    lines = [
        "## Notes on outputs",
        "",
        *([legend, ""] if marked else []),
        "| Module | C | H x W | B | note |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {md_escape(m)} | {d} | {h}x{w} | {b} | {md_escape(note)} |" for m, d, h, w, b, note in notes]
    return [*lines, ""]


def _sources_markdown(results: Sequence[Result]) -> list[str]:
    """The 'Module sources' section: each module's source hash, so a reader sees when the code changed."""
    pairs = list(dict.fromkeys((r.module, r.source_hash) for r in results if r.source_hash))
    if not pairs:
        return []
    lines = [
        "## Module sources",
        "",
        f"First {SOURCE_HASH_DIGITS} hex digits of the SHA-256 of the file that defines each module: another "
        "hash, other code.",
        "",
        "| Module | source hash |",
        "|---|---|",
    ]
    lines += [f"| {md_escape(module)} | `{digest}` |" for module, digest in pairs]
    return [*lines, ""]


def _roof_markdown(results: Sequence[Result], env: Mapping[str, Any]) -> list[str]:
    """The measured roof of each machine as a small Markdown table (nothing when no run measured one)."""
    machines = machines_of(results, env)
    named = [(m.alias, peaks_of(m.env)) for m in machines] if len(machines) > 1 else [("", peaks_of(env))]
    if not any(peaks for _, peaks in named):
        return []
    several = len(named) > 1
    lines = [
        "## Machine roof",
        "",
        "| "
        + ("machine | " if several else "")
        + "device | dtype | threads | peak compute [GFLOP/s] | bandwidth [GB/s] | ridge [FLOP/B] |",
        "|" + ("---|" if several else "") + "---|---|---:|---:|---:|---:|",
    ]
    for alias, peaks in named:
        for p in peaks:
            threads = str(p.threads) if p.device == "cpu" else "-"
            lines.append(
                "| " + (f"{alias} | " if several else "") + f"{p.device} | {p.dtype} | {threads} | "
                f"{fmt.sig(p.flops_per_s / 1e9)} | {fmt.sig(p.bytes_per_s / 1e9)} | {fmt.sig(p.ridge)} |"
            )
    method = next(p.method for _, peaks in named for p in peaks)
    return [*lines, "", f"Measured as the {method}.", ""]


#: What the Allocator section is about, once (its lines then say only the numbers).
ALLOCATOR_NOTE = (
    "attnbench pins glibc's allocator; a default PyTorch process does not, and these calls are more than 10% "
    "slower there (`--allocator system` times that state; docs/scenarios.md#the-allocator)."
)


LAUNCH_LEGEND = (
    f"`{LAUNCH_MARK}`: launch-bound: the GPU ran kernels and copies for less than "
    f"{LAUNCH_BOUND_FRACTION:.0%} of the call (profiler), so the host's launches and synchronisation set its "
    "latency, not the GPU's work."
)


def scenario_text(table: pd.DataFrame) -> str:
    """The scenario fields that are the same for every row, as one line (the varying ones are columns)."""
    if table.empty:
        return ""
    parts = []
    for key, ax in axes().items():
        if key in table and key not in varying(table):
            value = table[key].iloc[0]
            said = ax.say(bool(value) if ax.flag else value)
            if said:
                parts.append(said)
    return "Scenario: " + ", ".join(parts) + "." if parts else ""


def allocator_notes(results: Sequence[Result]) -> list[str]:
    """One short sentence per row whose latency a default (unpinned) glibc process would see > 10% slower."""
    notes = []
    for r in results:
        if not flag(r.system_allocator_slower) or not r.latency_median_s or not r.other_allocator_latency_s:
            continue
        system_headline = r.scenario.allocator == "system"
        system_s = r.latency_median_s if system_headline else r.other_allocator_latency_s
        pinned_s = r.other_allocator_latency_s if system_headline else r.latency_median_s
        faults = r.minor_faults_per_call if system_headline else r.other_allocator_faults_per_call
        processes = f" of {r.system_processes} fresh processes" if r.system_processes else ""
        which = f"the median{processes}" if system_headline else f"the slowest{processes}"
        notes.append(
            f"{r.label}: {fmt.seconds(system_s)} with glibc's default allocator ({which}), "
            f"{fmt.sig(system_s / pinned_s, 2)}x the pinned {fmt.seconds(pinned_s)}"
            + (f" ({faults:,.0f} page faults per call)" if faults is not None else "")
            + "."
        )
    return notes


def zoo_markdown() -> str:
    """The module table for the README, generated from the registry (kept in sync by a test)."""

    lines = [
        "| name | module | arXiv | official code | layout | default kwargs | params at C=64 |",
        "|---|---|---|---|---|---|---:|",
    ]
    for name in list_modules():
        spec = get_spec(name)
        ref = spec.reference
        kwargs = ", ".join(f"{k}={v}" for k, v in spec.defaults.items()) or "-"
        layout = spec.layout + (", resolution-bound" if spec.resolution_bound else "")
        res = spec.examples[0].res if spec.resolution_bound and spec.examples else (56, 56)
        try:
            params = f"{spec.params_formula(Setting(64, dict(spec.defaults), res[0], res[1])):,}"
            if spec.resolution_bound:
                params += f" (at {res[0]}x{res[1]})"
        except Exception:  # a default that refuses C=64 (EPSA needs C % 64 == 0 and takes it)
            params = "-"
        lines.append(
            f"| `{name}` | {md_escape(spec.title)} | [{ref.arxiv}](https://arxiv.org/abs/{ref.arxiv}) | "
            f"{ref.repo} `{ref.file}` `{md_escape(ref.cls)}` | {layout} | {md_escape(kwargs)} | {params} |"
        )
    return "\n".join(lines)


CROSS_NOTE = (
    "Median latency per call of the same case on each machine; `Mk÷M1` is machine k's time over the first "
    "machine's (below 1: faster than M1). The first machine is the first file's; order the files to choose it."
)


def cross_hardware_markdown(results: Sequence[Result], env: Mapping[str, Any]) -> list[str]:
    """The Markdown section comparing machines (none with fewer than two machines with latency)."""
    frame, machines = cross_hardware(results)
    if frame.empty:
        return []
    cols = cross_columns(frame, machines)
    lines = ["## Across machines", "", CROSS_NOTE, ""]
    lines.append("| " + " | ".join(md_escape(c.header) for c in cols) + " |")
    lines.append("|" + "|".join("---" if c.justify == "left" else "---:" for c in cols) + "|")
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(md_escape(c.cell(r)) for c in cols) + " |")
    return [*lines, ""]


def machines_markdown(results: Sequence[Result], env: Mapping[str, Any]) -> list[str]:
    """The legend of the machine aliases (M1, M2, ...) the tables use; none with fewer than two machines."""
    machines = machines_of(results, env)
    if len(machines) < 2:
        return []
    lines = ["## Machines", "", "| machine | label | date (UTC) | rows |", "|---|---|---|---:|"]
    for m in machines:
        rows = sum(r.machine == m.label for r in results)
        lines.append(f"| {m.alias} | {md_escape(m.label)} | {m.env.get('date_utc', '') or ''} | {rows} |")
    return [*lines, ""]


def environment_markdown(results: Sequence[Result], env: Mapping[str, Any]) -> list[str]:
    """The environment section: one key/value table, or one per machine and the source files of a merge."""

    def table(record: Mapping[str, Any]) -> list[str]:
        rows = ["| key | value |", "|---|---|"]
        for k, v in record.items():
            rows.append(f"| {k} | {md_escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))} |")
        return [*rows, ""]

    if not isinstance(env.get("machines"), Mapping):
        return ["## Environment", "", *table(env)]
    lines = ["## Environments", ""]
    for m in machines_of(results, env):
        lines += [f"### {m.alias}: {md_escape(m.label)}", "", *table(m.env)]
    sources = env.get("merged_from") or []
    if sources:
        lines += [
            "### Merged from",
            "",
            "| file | machines | rows | date (UTC) | git commit |",
            "|---|---|---:|---|---|",
        ]
        aliases = {m.label: m.alias for m in machines_of(results, env)}
        for s in sources:
            names = ", ".join(aliases.get(label, label) for label in s.get("machines", []))
            lines.append(
                f"| {md_escape(str(s.get('file', '')))} | {md_escape(names)} | {s.get('rows', '')} | "
                f"{s.get('date_utc', '')} | {s.get('git_commit', '')} |"
            )
        lines.append("")
    return lines
