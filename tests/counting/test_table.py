"""The nested breakdown (attnbench.counting.table): rows and the rich table of params, MACs and FLOPs."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from attnbench.counting import breakdown_table, count_macs, count_params
from attnbench.counting.table import BreakdownRow, breakdown_rows
from tests.counting.helpers import Net

SHAPE = (1, 3, 4, 4)


TOTAL_MACS = 1728 + 2 * 256 + 8


def test_rows_to_depth_two() -> None:
    rows = breakdown_rows(count_params(Net()), count_macs(Net(), SHAPE), max_depth=2)
    assert rows == [
        BreakdownRow(0, "model", "", "Net", 162, TOTAL_MACS, 2 * TOTAL_MACS),
        BreakdownRow(1, "stem", "stem", "Conv2d", 112, 1728, 3456),
        BreakdownRow(1, "blocks", "blocks", "Sequential", 40, 512, 1024),
        BreakdownRow(2, "0", "blocks.0", "Block", 20, 256, 512),
        BreakdownRow(2, "1", "blocks.1", "Block", 20, 256, 512),
        BreakdownRow(1, "head", "head", "Linear", 10, 8, 16),
    ]


def test_depth_limits() -> None:
    params, macs = count_params(Net()), count_macs(Net(), SHAPE)
    assert [r.qualified for r in breakdown_rows(params, macs, 0)] == [""]
    assert len(breakdown_rows(params, macs, 3)) == 1 + 9
    with pytest.raises(ValueError, match="max_depth"):
        breakdown_rows(params, macs, -1)


def render(table: object, width: int = 100) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(table)
    return console.file.getvalue().splitlines()  # type: ignore[attr-defined]


def test_table_rows_indentation_and_numbers() -> None:
    lines = render(breakdown_table(count_params(Net()), count_macs(Net(), SHAPE), max_depth=3))
    body = [line for line in lines if line.startswith("│")]
    cells = [[c.strip() for c in line.strip("│").split("│")] for line in body]
    names = [line.strip("│").split("│")[0].rstrip() for line in body]
    assert names == [
        " model",
        "   stem",
        "   blocks",
        "     0",
        "       conv",
        "       act",
        "     1",
        "       conv",
        "       act",
        "   head",
    ]
    assert cells[0] == ["model", "Net", "162", "2,248", "4,496"]
    assert cells[4] == ["conv", "Conv2d", "20", "256", "512"]
    assert cells[5] == ["act", "ReLU", "0", "0", "0"]
    header = next(line for line in lines if "Module" in line)
    assert [h.strip() for h in header.strip("┃").split("┃")] == ["Module", "Type", "Params", "MACs", "FLOPs"]


def test_table_with_a_compact_formatter_and_a_train_count() -> None:
    report = count_macs(Net(), SHAPE, mode="train")
    table = breakdown_table(count_params(Net()), report, max_depth=1, fmt=lambda n: f"{n / 1e3:.2f}k")
    lines = render(table)
    assert "training step" in (table.title or "")
    stem = next(line for line in lines if "stem" in line)
    # the stem's input is the step's input, so it costs grad_input too: 3 x 1728 MACs
    assert "5.18k" in stem and f"{2 * 3 * 1728 / 1e3:.2f}k" in stem


def test_table_without_nested_figures_shows_dashes() -> None:
    lines = render(breakdown_table(count_params(Net()), count_macs(Net(), SHAPE, counter="thop"), max_depth=1))
    head = next(line for line in lines if "head" in line)
    assert [c.strip() for c in head.strip("│").split("│")][-2:] == ["-", "-"]
    root = next(line for line in lines if "model" in line)
    assert "2,248" in root  # thop agrees on the total of convs and linears


def test_table_of_a_failed_count() -> None:
    failed = count_macs(Net(), SHAPE, counter="fvcore", mode="train")
    rows = breakdown_rows(count_params(Net()), failed, 1)
    assert rows[0].macs is None and all(r.macs is None and r.flops is None for r in rows)


def test_table_without_types_fits_a_narrow_terminal() -> None:
    table = breakdown_table(count_params(Net()), count_macs(Net(), SHAPE), fmt=lambda n: f"{n / 1e3:.1f}k", types=False)
    lines = render(table, width=40)
    assert max(len(line) for line in lines) <= 40
    header = next(line for line in lines if "Module" in line)
    assert [h.strip() for h in header.strip("┃").split("┃")] == ["Module", "Params", "MACs", "FLOPs"]
    assert any(line.startswith("│       conv ") for line in lines)
