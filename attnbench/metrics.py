"""The metrics a row carries, declared once: the column each reads, its unit, how a table shows it, whether the
gate judges it, and whether it is plotted. Tables, Markdown, plots and the gate iterate over METRICS.

Adding a metric is a Result column (attnbench.results), the code that fills it, and one declaration here. A metric
a table shows in a way of its own (latency with its spread and marks, the counters' ratios, the roofline's rates)
names its renderer in `cell`; attnbench.report.columns holds those few renderers.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How soon a secondary column goes on a narrow terminal (larger: sooner). Module, C, H x W, the varying
#: identity columns, the headline metric, the sorted-by column and Status never go. The costs a reader chooses a
#: module by (the other backends' latency, then memory) outlast the counts that any report repeats (MACs, params).
P_OTHER_LATENCY = 6  # cpu against ort is the point of a table of several backends
P_MEMORY = 8
P_MACS = 12
P_PARAMS = 14
P_COMPILE = 24  # torch.compile's first call: what a compiled run is about, beside its latency
P_THROUGHPUT = 25  # samples/s, shown when the batch or the thread count varies
P_INSTRUCTIONS = 26  # instructions per call: asked for explicitly (a gate on work)
P_OTHER_ALLOC = 32  # the latency in the other allocator state, where it is > 10% slower
P_FLOPS = 40
P_ACHIEVED = 45
P_PEAK_SHARE = 50
P_SPREAD = 60  # the ±IQR beside a median (folded away, the median stays)
P_PARITY = 65
P_CROSS_CHECK = 70  # fvcore÷ours, thop÷ours

#: The units a metric is printed in: "count" (SI prefixes: 12.3 M), "seconds" and "bytes" (one unit per
#: column, picked from its values), "plain" (three significant digits), "error" (scientific: 3.9e-07).
UNITS = ("count", "seconds", "bytes", "plain", "error")


@dataclass(frozen=True)
class Metric:
    """One quantity of a row: where it lives, how it is printed, judged and drawn."""

    #: What --sort and messages call it.
    name: str
    #: The Result column it reads.
    column: str
    #: One of UNITS.
    units: str
    #: Table header; "{backend}", "{unit}" and "{parity}" (what the backend's parity compares) are filled in.
    header: str
    #: How soon its column gives way on a narrow terminal.
    priority: int
    #: Per backend: the summary column it is pivoted into ("{backend}" filled in); "" = one value per row.
    pivot: str = ""
    #: Other per-backend values the table needs beside it: summary column pattern -> Result column.
    details: tuple[tuple[str, str], ...] = ()
    #: Counted exactly: any change against a baseline fails the gate.
    gate: bool = False
    #: Its lowest value among modules at one setting is highlighted (compare).
    best: bool = False
    #: File name of its scaling plot ("{backend}" filled in); "" = not plotted.
    plot: str = ""
    #: The plot's y-axis label ("{backend}", "{unit}" filled in).
    axis: str = ""
    #: Its name in the scaling table's exponent column ("{backend}" filled in); "" = no exponent.
    scaling: str = ""
    #: Shown only when one of these identity columns varies (throughput: batch or threads).
    when: tuple[str, ...] = ()
    #: A renderer of attnbench.report.columns for a metric shown in a way of its own ("" = by `units`).
    cell: str = ""
    #: Its name where one column holds every backend's value (the HTML report's table, chart titles).
    label: str = ""
    #: What it is, in one short sentence (the HTML report's header tips).
    doc: str = ""

    def summary_column(self, backend: str = "") -> str:
        """The summary column holding this metric (for one backend, if it is pivoted)."""
        return self.pivot.format(backend=backend) if self.pivot else self.column


METRICS: tuple[Metric, ...] = (
    Metric(
        "params",
        "params",
        "count",
        "Params",
        P_PARAMS,
        gate=True,
        best=True,
        label="params",
        doc="Parameters of the module (sum of numel), buffers excluded.",
    ),
    Metric(
        "macs",
        "macs_attnbench",
        "count",
        "MACs",
        P_MACS,
        gate=True,
        best=True,
        plot="macs.png",
        axis="MACs (attnbench counter)",
        scaling="MACs",
        label="MACs",
        doc="Multiply-accumulates of one forward (train: forward + backward), attnbench's counter.",
    ),
    Metric(
        "flops",
        "flops_attnbench",
        "count",
        "FLOPs",
        P_FLOPS,
        best=True,
        label="FLOPs",
        doc="The counter's exact FLOPs: 2 per multiply-add, 1 per lone product.",
    ),
    Metric(
        "fvcore",
        "macs_fvcore",
        "count",
        "fvcore÷ours",
        P_CROSS_CHECK,
        cell="counter_ratio",
        label="fvcore÷ours",
        doc="fvcore's MACs over attnbench's; under/over: off by more than 1%.",
    ),
    Metric(
        "thop",
        "macs_thop",
        "count",
        "thop÷ours",
        P_CROSS_CHECK,
        cell="counter_ratio",
        label="thop÷ours",
        doc="thop's MACs over attnbench's; under/over: off by more than 1%.",
    ),
    Metric(
        "memory",
        "peak_mem_bytes",
        "bytes",
        "Mem {backend} [{unit}]",
        P_MEMORY,
        pivot="mem_{backend}_bytes",
        best=True,
        plot="memory_{backend}.png",
        axis="peak memory {backend} [{unit}]",
        scaling="peak mem {backend}",
        label="peak memory",
        doc="Bytes allocated at the peak of one step: activations and temporaries, not weights or input.",
    ),
    Metric(
        "latency",
        "latency_median_s",
        "seconds",
        "{backend} [{unit}]",
        P_OTHER_LATENCY,
        pivot="latency_{backend}_s",
        details=(
            ("iqr_{backend}_s", "latency_iqr_s"),
            ("noisy_{backend}", "latency_noisy"),
            ("contended_{backend}", "latency_contended"),
            ("alloc_slower_{backend}", "system_allocator_slower"),
            ("launch_bound_{backend}", "latency_launch_bound"),
        ),
        best=True,
        plot="latency_{backend}.png",
        axis="latency {backend} [{unit}], median",
        scaling="latency {backend}",
        cell="latency",
        label="latency",
        doc="Median time per call over timed blocks, ± the interquartile range.",
    ),
    Metric(
        "instructions",
        "instructions",
        "count",
        "{backend} instr/call",
        P_INSTRUCTIONS,
        pivot="instr_{backend}",
        label="instr/call",
        doc="Instructions per forward, counted under valgrind (immune to load).",
    ),
    Metric(
        "throughput",
        "throughput_per_s",
        "plain",
        "{backend} [samples/s]",
        P_THROUGHPUT,
        pivot="throughput_{backend}_per_s",
        when=("batch", "threads"),
        label="throughput [samples/s]",
        doc="Batch over the median latency.",
    ),
    Metric(
        "other_allocator",
        "other_allocator_latency_s",
        "seconds",
        "{backend} [{unit}] {other}",
        P_OTHER_ALLOC,
        pivot="other_alloc_{backend}_s",
        cell="other_allocator",
        label="other allocator",
        doc="The latency in the other glibc allocator state, where it is more than 10% slower.",
    ),
    Metric(
        "compile",
        "compile_s",
        "plain",
        "{backend} compile [s]",
        P_COMPILE,
        pivot="compile_{backend}_s",
        label="compile [s]",
        doc="torch.compile's first call (compilation and one run), kept out of the latency.",
    ),
    Metric(
        "achieved",
        "flops_attnbench",
        "plain",
        "{backend} {unit}",
        P_ACHIEVED,
        cell="roofline",
        label="achieved",
        doc="The counted FLOPs over the median latency, and their share of the measured peak.",
    ),
    Metric(
        "parity",
        "parity_max_abs",
        "error",
        "{parity} max|Δ|",
        P_PARITY,
        pivot="parity_{backend}",
        label="max|Δ|",
        doc="Largest difference from PyTorch eager on the same input (ONNX Runtime, torch.compile).",
    ),
)
#: The metrics counted once per geometry (not per backend): a summary row takes the first value of its rows.
COUNTED = tuple(m for m in METRICS if not m.pivot and m.cell != "roofline")


def metric(name: str) -> Metric:
    """The metric declared under `name` (KeyError naming the declared ones)."""
    for m in METRICS:
        if m.name == name:
            return m
    raise KeyError(f"no metric {name!r}; declared: {', '.join(m.name for m in METRICS)}")


def gated_exactly() -> tuple[str, ...]:
    """The Result columns the gate compares exactly (any change fails)."""
    return tuple(m.column for m in METRICS if m.gate)
