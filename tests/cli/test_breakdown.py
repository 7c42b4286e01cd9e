"""`--breakdown`: per geometry, params, MACs and FLOPs per nested submodule down to --depth, then the counter's
MACs per operator and what it saw but did not count; never cut on a narrow terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from attnbench import results as R
from attnbench.cli.breakdown import print_breakdowns
from attnbench.results import Case, Result, Scenario
from attnbench.zoo.build import validate
from tests.conftest import run_cli as run
from tests.samples import parse_rich


def breakdowns(rows: list[Result], width: int = 120, depth: int = 3) -> str:
    """What print_breakdowns prints for these rows on a console this wide."""
    buf = io.StringIO()
    print_breakdowns(rows, Console(file=buf, width=width), depth)
    return buf.getvalue()


def test_breakdown_lists_operators_modules_and_uncounted(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "profile", "lka", "--dim", "16", "--res", "8", "--metrics", "params,macs", "--breakdown", "--quiet"
    )
    assert code == 0, err
    assert "aten.conv2d" in out and "aten.mul" in out  # counted: the convs and the u * attn gate
    assert "conv_spatial" in out  # per submodule
    assert "seen but not counted" in out and "aten.clone" in out  # upstream's copy, listed, not a MAC
    assert out.index("lka C=16 8x8 B=1: per submodule, depth 3") > out.index("Status")  # after the summary


def test_the_submodule_table_holds_the_counts() -> None:
    text = breakdowns([Result.for_case(Case("lka", 16, 8, 8))])
    start = text.index("lka C=16 8x8 B=1: per submodule, depth 3")
    headers, rows = parse_rich(text[start:], anchor=2)
    assert headers == ["Module", "Type", "Params", "MACs", "FLOPs"]
    assert rows == [
        ["model", "LKA", "1.49 K", "93.2 K", "185 K"],
        ["conv0", "Conv2d", "416", "25.6 K", "51.2 K"],
        ["conv_spatial", "Conv2d", "800", "50.2 K", "100 K"],
        ["conv1", "Conv2d", "272", "16.4 K", "32.8 K"],
    ]
    spec, setting = validate("lka", 16, (8, 8))
    lines = text.splitlines()
    assert f"params {spec.params_formula(setting):,} (trainable 1,488; buffers, not counted: 0)" in lines
    assert f"MACs {spec.macs_formula(setting):,}  FLOPs 185,344" in " ".join(lines)


@pytest.mark.parametrize(
    ("depth", "names"), [(0, ["model"]), (1, ["model", "local_branches", "global_branch", "proj"])]
)
def test_depth_limits_the_levels(depth: int, names: list[str]) -> None:
    text = breakdowns([Result.for_case(Case("clo", 32, 16, 16))], depth=depth)
    assert f"clo C=32 16x16 B=1: per submodule, depth {depth}" in text
    _, rows = parse_rich(text[text.index("per submodule") :], anchor=2)
    assert [r[0] for r in rows] == names


def test_a_token_module_s_adapter_is_not_a_level() -> None:
    text = breakdowns([Result.for_case(Case("mhsa", 16, 8, 8))], depth=0)
    _, rows = parse_rich(text[text.index("per submodule") :], anchor=2)
    assert [(r[0], r[1]) for r in rows] == [("model", "TokensToImage"), ("inner", "ScaledDotProductAttention")]


def test_one_breakdown_per_geometry_and_mode_and_none_for_a_refused_case() -> None:
    rows = [
        Result.for_case(Case("lka", 16, 8, 8, backend="cpu")),
        Result.for_case(Case("lka", 16, 8, 8, backend="ort")),
        Result.for_case(Case("lka", 16, 8, 8, scenario=Scenario(dtype="bfloat16"))),
        Result.for_case(Case("lka", 16, 8, 8, scenario=Scenario(mode="train"))),
        Result.for_case(Case("clo", 16, 14, 14), status=R.INVALID, reason="window"),
    ]
    text = breakdowns(rows)
    assert text.count("lka C=16 8x8 B=1: per submodule") == 2  # infer and train; backends and dtypes share one
    assert "input (1, 16, 8, 8) on meta, mode infer" in text and "input (1, 16, 8, 8) on meta, mode train" in text
    assert "clo C=" not in text


@pytest.mark.parametrize("width", [50, 60, 80, 120])
def test_class_names_give_way_first_and_nothing_is_cut(width: int) -> None:
    text = breakdowns([Result.for_case(Case("clo", 32, 16, 16))], width=width)
    table = [line for line in text.splitlines() if line.startswith(("┃", "│"))]
    assert "…" not in text
    assert max(len(line) for line in table) <= width
    headers, rows = parse_rich(text[text.index("per submodule") :], anchor=2)
    assert headers[-3:] == ["Params", "MACs", "FLOPs"]
    assert rows[0][-3:] == ["6.02 K", "1.38 M", "2.75 M"]  # numbers whole
    assert ("Type" in headers) == (width >= 80)


def test_breakdown_by_type_gives_each_class_its_share(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, *"profile van --dim 16 --res 8 --metrics params,macs --breakdown --by type --quiet".split()
    )
    assert code == 0, err
    start = out.index("van C=16 8x8 B=1: per module class")
    headers, rows = parse_rich(out[start:], anchor=2)
    assert headers == ["Type", "Instances", "Params", "Params %", "MACs", "MACs %", "FLOPs"]
    by = {r[0]: r for r in rows}
    assert by["Conv2d"][1] == "5" and by["Conv2d"][3] == "100.0"  # every parameter is in a convolution
    assert by["LKA"][1] == "1" and float(by["LKA"][5]) < 100  # the attention's share of the MACs
    assert "classes nest" in out


def test_breakdown_on_a_measured_cpu_row_times_submodules_and_operators(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *"profile lka --dim 16 --res 8 --max-run-time 0.1 --breakdown --quiet".split())
    assert code == 0, err
    headers, rows = parse_rich(out[out.index("lka C=16 8x8 B=1: per submodule") :], anchor=2)
    assert headers[-1] == "Time %" and rows[0][-1] == "100.0"
    assert all(0 <= float(r[-1]) <= 100 for r in rows)
    table = out[out.index("aten operators per step (torch.profiler, 3 steps)") :]
    op_headers, ops = parse_rich(table, anchor=2)
    assert op_headers == ["Operator", "Calls", "Self [ms]", "Self %", "Total [ms]", "MACs", "GFLOP/s"]
    conv = next(r for r in ops if r[0] == "aten::conv2d")
    assert conv[1] == "3" and conv[5] == "92.2 K" and conv[6] != "-"  # the counter's MACs beside the profiler's time
    assert "against the run's unprofiled median" in " ".join(out.split())


def test_by_needs_breakdown_and_a_known_grouping(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *"profile lka --by type --metrics params".split())
    assert code == 2 and "--by type: only with --breakdown" in err
    code, _, err = run(capsys, *"profile lka --breakdown --by layer --metrics params".split())
    assert code == 2 and "--by layer: allowed: module, type" in err


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_operator_table_fits_the_terminal_without_cutting_a_name_or_number(width: int) -> None:
    from attnbench.breakdown import breakdown
    from attnbench.cli.breakdown import _print_times

    row = Result.for_case(Case("lka", 16, 8, 8), latency_median_s=1e-3)
    timed = breakdown(row).timed
    assert timed is not None
    buf = io.StringIO()
    _print_times(timed, row, Console(file=buf, width=width))
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines() if line.startswith("│")) <= width
    assert ("│ aten::conv2d" in text) == (width >= 120) and ("Total [ms]" in text) == (width >= 120)
