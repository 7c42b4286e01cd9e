"""Scaling plots: MACs, latency and peak memory against the number of tokens, one line per module, log-log."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnbench.report import SERIES_KEY, VARYING, backends_of, identity_text, summary, varying
from attnbench.results import Result

#: Legend labels longer than this many characters go in one column.
LONG_LABEL = 32


def plot_scaling(results: Sequence[Result], out_dir: str | Path) -> list[Path]:
    """Write one PNG per metric present (macs.png, latency_<backend>.png, memory_<backend>.png); return paths."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or in Docker
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    table = summary(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if table.empty:
        return []
    metrics: list[tuple[str, str, float, str]] = [("macs_attnbench", "MACs (attnbench)", 1.0, "macs.png")]
    for b in backends_of(results):
        metrics.append((f"latency_{b}_s", f"latency {b} [ms], median", 1e3, f"latency_{b}.png"))
        metrics.append((f"mem_{b}_bytes", f"peak memory {b} [MiB]", 1 / 2**20, f"memory_{b}.png"))
    written = []
    for column, label, scale, name in metrics:
        if column not in table or table[column].notna().sum() == 0:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        # One line per module setting and scenario: mixing batches, kwargs or modes in one line would zig-zag.
        varies = [k for k in varying(table) if k != "kwargs" or table["kwargs"].astype(bool).any()]
        styles = machine_styles(table)
        colors: dict[str, str] = {}
        for key, grp in table.groupby(SERIES_KEY, sort=False, dropna=False):
            ident = dict(zip(SERIES_KEY, key, strict=True))
            grp = grp[grp[column].notna()].sort_values("tokens")
            if grp.empty:
                continue
            # With several machines, a series keeps its colour on every machine; the line style names the machine.
            # An empty value (no kwargs, a zoo module's own layout) says nothing: left out of the label.
            shown = [(k, identity_text(k, ident[k])) for k in varies if k != "machine" or not styles]
            parts = [f"C={ident['dim']}"] + [f"{VARYING[k]}={text}" for k, text in shown if text]
            series = f"{ident['module']} ({', '.join(parts)})"
            new = series not in colors
            color = colors.setdefault(series, f"C{len(colors) % 10}")
            ax.plot(
                grp["tokens"],
                grp[column].astype(float) * scale,
                marker="o",
                color=color,
                linestyle=styles.get(ident["machine"], "-"),
                label=series if new else "_nolegend_",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N = H x W")
        ax.set_ylabel(label)
        ax.set_title(f"{label} against N")
        ax.grid(True, which="both", alpha=0.3)
        # Two columns of long labels (a user's module path) would run off the figure: one column then.
        longest = max((len(text) for text in ax.get_legend_handles_labels()[1]), default=0)
        series_legend = ax.legend(fontsize=7, ncol=1 if longest > LONG_LABEL else 2)
        if styles:
            ax.add_artist(series_legend)
            handles = [Line2D([], [], color="black", linestyle=s, label=m) for m, s in styles.items()]
            ax.legend(handles=handles, fontsize=6, loc="lower right", title="machine", title_fontsize=7)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


#: Line styles of the machines of a plot, in order of first appearance (a fifth machine reuses the first).
MACHINE_STYLES = ("-", "--", ":", "-.")


def machine_styles(table: Any) -> dict[str, str]:
    """{machine label: line style} when the summary holds several machines, else {} (every line solid)."""
    labels = [m for m in dict.fromkeys(table["machine"]) if m] if "machine" in table else []
    if len(labels) < 2:
        return {}
    return {m: MACHINE_STYLES[i % len(MACHINE_STYLES)] for i, m in enumerate(labels)}
