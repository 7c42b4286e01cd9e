"""A small, made-up but realistic result set for the views (tables, Markdown, plots): no measuring needed; and
readers of the tables the views print (rich on a terminal, Markdown in a report)."""

from __future__ import annotations

import re

from attnbench import results as R
from attnbench.results import Case, Result

#: (module, params, MACs at 14x14, exponent of N, cpu latency at 14x14 [s], peak memory at 14x14 [bytes])
MODULES = [
    ("acmix", 17_822, 4_998_784, 1.0, 3.47e-3, 8_561_280),
    ("mhsa", 16_640, 8_130_000, 1.92, 6.47e-4, 2_610_000),
    ("models/attn.py:MyAttention", 9_024, 1_740_000, 1.0, 5.29e-4, 200_000),
    ("clo", 21_248, 3_950_000, 1.28, 9.4e-4, 1_450_000),
]
SIDES = (14, 28, 56)
BACKENDS = ("cpu", "ort")
#: A roof as `attnbench` records it in env["peaks"].
ENV = {
    "cpu_model": "test cpu",
    "peaks": [
        {
            "device": "cpu",
            "dtype": "float32",
            "threads": 1,
            "flops_per_s": 1.5e11,
            "bytes_per_s": 6e9,
            "method": "best call of square float32 matmuls (512, 1024) and of a 256 MiB copy",
        }
    ],
}


def sample_results() -> list[Result]:
    """Four modules x three resolutions x two backends; clo refuses 14x14, mhsa's ORT export fails at 56x56.

    Latencies run from 47 µs to 10.2 s and memory up to 2.5 GiB, so units must be picked per column.
    """
    rows = []
    for module, params, macs14, exponent, latency14, mem14 in MODULES:
        for side in SIDES:
            scale = (side / 14) ** (2 * exponent)
            macs = int(macs14 * scale)
            for backend in BACKENDS:
                case = Case(module, 64, side, side, backend=backend)
                if module == "clo" and side == 14:
                    rows.append(Result.for_case(case, status=R.INVALID, reason="H, W % window_size == 0"))
                    continue
                if module == "mhsa" and side == 56 and backend == "ort":
                    rows.append(
                        Result.for_case(
                            case, status=R.FAILED, reason="export failed", params=params, macs_attnbench=macs
                        )
                    )
                    continue
                latency = latency14 * scale * (0.5 if backend == "ort" else 1.0)
                if module == "mhsa" and side == 56 and backend == "cpu":
                    latency = 10.2  # a slow case: seconds in a column of milliseconds
                rows.append(
                    Result.for_case(
                        case,
                        params=params,
                        macs_attnbench=macs,
                        macs_fvcore=int(macs * (0.75 if module == "acmix" else 1.0)),
                        macs_thop=macs,
                        flops_attnbench=2 * macs + 1000,
                        latency_median_s=latency,
                        latency_iqr_s=latency * 0.02,
                        latency_noisy=module == "acmix" and side == 28,
                        peak_mem_bytes=int(mem14 * scale) if backend == "cpu" else None,
                        parity_max_abs=3.9e-7 if backend == "ort" else None,
                    )
                )
    return rows


def scaling_results(exponent: float, module: str = "m") -> list[Result]:
    """Three resolutions on cpu and ort whose MACs and latency grow as N**exponent and memory as N."""
    out = []
    for side in (8, 16, 32):
        n = side * side
        for backend in ("cpu", "ort"):
            out.append(
                Result.for_case(
                    Case(module, 16, side, side, backend=backend),
                    params=100,
                    macs_attnbench=int(n**exponent),
                    macs_fvcore=int(n**exponent) // 2,
                    macs_thop=int(n**exponent),
                    latency_median_s=1e-6 * n**exponent,
                    latency_iqr_s=1e-8,
                    peak_mem_bytes=4 * n,
                )
            )
    return out


def parse_rich(text: str, anchor: int = 1) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the first rich table in `text`; a row's wrapped lines are joined back.

    A line whose cell in column `anchor` (a number that is never empty) is blank continues the row above.
    """
    headers: list[str] = []
    rows: list[list[str]] = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("┃"):
            cells = [c.strip() for c in line.strip("┃").split("┃")]
            headers = cells if not headers else [f"{a} {b}".strip() for a, b in zip(headers, cells, strict=True)]
            in_table = True
        elif line.startswith("│") and in_table:
            cells = [c.strip() for c in line.strip("│").split("│")]
            if rows and not cells[anchor]:
                rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
            else:
                rows.append(cells)
        elif line.startswith("└") and in_table:
            break
    return headers, rows


def squeeze(text: str) -> str:
    """Text without whitespace: a cell folded inside a word joins back to the same characters."""
    return "".join(text.split())


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table of a Markdown report as rows of cells (header first, separator dropped), each checked to be
    well formed: as many cells in every line, a separator of dashes under the header."""
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.startswith("|"):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    tables = []
    for table in (b for b in blocks if b):
        width = len(_cells(table[0]))
        assert all(line.endswith("|") and len(_cells(line)) == width for line in table), table
        assert set(table[1].replace("|", "").replace(":", "")) == {"-"}, table[1]
        tables.append([_cells(line) for line in [table[0], *table[2:]]])
    return tables


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table line; an escaped pipe stays inside its cell."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
