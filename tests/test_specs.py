"""Your own module through the zoo's door: file and import specs, layouts, per-module kwargs, identity, the API."""

from __future__ import annotations

import hashlib
import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import attnbench
from attnbench import results as R
from attnbench.cli import parse_module_kw
from attnbench.errors import ModuleSpecError, UsageError
from attnbench.gate import compare_to_baseline
from attnbench.runner import RunOptions
from attnbench.sweep import Sweep
from attnbench.zoo.registry import get_spec
from attnbench.zoo.user import normalise
from tests.conftest import run_cli

#: A user's file: an image module (a depthwise gate), a token module (an MLP) and one that refuses some sides.
USER_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class GatedConv(nn.Module):
        def __init__(self, dim, kernel=3):
            super().__init__()
            self.conv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
            self.proj = nn.Conv2d(dim, dim, 1)

        def forward(self, x):
            return self.proj(x * torch.sigmoid(self.conv(x)))


    class TokenMLP(nn.Module):
        def __init__(self, dim, hidden=2):
            super().__init__()
            self.fc1 = nn.Linear(dim, dim * hidden)
            self.fc2 = nn.Linear(dim * hidden, dim)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))


    class Windowed(nn.Module):
        def __init__(self, dim, window=4):
            super().__init__()
            self.window = window
            self.proj = nn.Conv2d(dim, dim, 1)

        def forward(self, x):
            if x.shape[-1] % self.window:
                raise ValueError(f"width {x.shape[-1]} is not a multiple of the window {self.window}")
            return self.proj(x)


    def make_gate(dim, kernel=5):
        return GatedConv(dim, kernel)
    """
)
COUNTS = RunOptions(metrics=("params", "macs"), counters=("attnbench",))
#: Measured, briefly: latency on a tiny budget (memory is covered by the zoo's tests).
TINY = RunOptions(metrics=("params", "macs", "latency"), counters=("attnbench",), min_run_time=0.01)


def gated_params(c: int, k: int) -> int:
    """Depthwise k x k conv (weights + bias) and a 1 x 1 conv (weights + bias)."""
    return c * k * k + c + c * c + c


def gated_macs(b: int, c: int, h: int, w: int, k: int) -> int:
    """Depthwise conv: k*k per output; the gate x * sigmoid(.): 1 per element; the 1 x 1 conv: C per output."""
    return b * c * h * w * (k * k + 1 + c)


def gated_flops(b: int, c: int, h: int, w: int, k: int) -> int:
    """The convolutions are multiply-adds (2 FLOPs per MAC); the gate is a lone product (1 FLOP)."""
    return b * c * h * w * (2 * k * k + 1 + 2 * c)


def mlp_params(c: int, hidden: int) -> int:
    return 2 * c * c * hidden + c * hidden + c


def mlp_macs(b: int, c: int, h: int, w: int, hidden: int) -> int:
    """Two Linear layers over the N = H*W tokens."""
    return b * h * w * 2 * c * c * hidden


@pytest.fixture
def user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The user's file at models/attn.py under a fresh working directory; its spec prefix, as typed."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "attn.py").write_text(USER_FILE)
    monkeypatch.chdir(tmp_path)
    return "models/attn.py"


# ---------------------------------------------------------------- exact counts, both layouts, cpu and ort


@pytest.mark.parametrize(("dim", "res", "batch", "k"), [(16, (8, 8), 1, 3), (24, (8, 12), 2, 5)])
def test_image_module_counts_match_hand_formula(user_file: str, dim: int, res: tuple, batch: int, k: int) -> None:
    (row,) = attnbench.profile(f"{user_file}:GatedConv", dim, res, batch, kernel=k, options=COUNTS)
    assert row.ok, row.reason
    assert (row.module, row.layout) == ("models/attn.py:GatedConv", "image")
    assert row.params == gated_params(dim, k)
    assert row.macs_attnbench == gated_macs(batch, dim, *res, k)
    assert row.flops_attnbench == gated_flops(batch, dim, *res, k)
    assert row.macs_formula is None  # no hand formula is claimed for a user's module


@pytest.mark.parametrize(("dim", "res", "batch", "hidden"), [(16, (8, 8), 1, 2), (32, (4, 8), 2, 3)])
def test_token_module_counts_match_hand_formula(user_file: str, dim: int, res: tuple, batch: int, hidden: int) -> None:
    rows = attnbench.profile(f"{user_file}:TokenMLP", dim, res, batch, layout="tokens", hidden=hidden, options=COUNTS)
    (row,) = rows
    assert row.ok, row.reason
    assert row.layout == "tokens"
    assert row.params == mlp_params(dim, hidden)
    assert row.macs_attnbench == mlp_macs(batch, dim, *res, hidden)


@pytest.mark.onnx
def test_user_modules_are_measured_on_cpu_and_ort(user_file: str) -> None:
    rows = attnbench.profile(
        [f"{user_file}:GatedConv", f"{user_file}:TokenMLP"],
        16,
        8,
        backend=["cpu", "ort"],
        options=TINY,
        module_kwargs={"TokenMLP": {"hidden": 2}},
        layout="",
    )
    by = {(r.module, r.backend): r for r in rows}
    # TokenMLP takes tokens: in the image layout its first Linear meets W = 8 features, not C = 16, so it fails
    # with a reason that names the layout, while GatedConv is measured on both backends.
    for backend in ("cpu", "ort"):
        gated = by[("models/attn.py:GatedConv", backend)]
        assert gated.ok, gated.reason
        assert gated.params == gated_params(16, 3) and gated.macs_attnbench == gated_macs(1, 16, 8, 8, 3)
        assert gated.latency_median_s and gated.latency_median_s > 0
        mlp = by[("models/attn.py:TokenMLP", backend)]
        assert mlp.status == R.FAILED
        assert "layout image" in mlp.reason and "try --layout tokens" in mlp.reason
    assert by[("models/attn.py:GatedConv", "ort")].parity_max_abs is not None
    assert by[("models/attn.py:GatedConv", "ort")].parity_max_abs < 1e-4


@pytest.mark.onnx
def test_token_module_exports_to_ort_through_the_adapter(user_file: str) -> None:
    rows = attnbench.profile(f"{user_file}:TokenMLP", 16, (4, 8), backend=["cpu", "ort"], layout="tokens", options=TINY)
    assert [r.status for r in rows] == [R.OK, R.OK], [r.reason for r in rows]
    ort = rows[1]
    assert ort.exporter and ort.parity_max_abs is not None and ort.parity_max_abs < 1e-4
    assert ort.macs_attnbench == mlp_macs(1, 16, 4, 8, 2)


def test_factory_function_is_called_with_dim_and_kwargs(user_file: str) -> None:
    (row,) = attnbench.profile(f"{user_file}:make_gate", 16, 8, kernel=7, options=COUNTS)
    assert row.params == gated_params(16, 7)


# ---------------------------------------------------------------- the CLI: same rows, identity, failures


def test_cli_profile_of_a_file_spec_writes_normalised_identity_and_hash(
    user_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.csv"
    md = tmp_path / "r.md"
    code, stdout, err = run_cli(
        capsys,
        *f"profile ./{user_file}:GatedConv --dim 16 --res 8 --metrics params,macs -o {out} -o {md} --quiet".split(),
    )
    assert code == 0, err
    (row,) = R.load(out).results
    digest = hashlib.sha256((tmp_path / user_file).read_bytes()).hexdigest()[:12]
    assert row.module == "models/attn.py:GatedConv"
    assert row.source_hash == digest
    assert row.macs_attnbench == gated_macs(1, 16, 8, 8, 3)
    assert "models/attn.py:GatedConv" in stdout
    assert f"| models/attn.py:GatedConv | `{digest}` |" in md.read_text()


def test_zoo_rows_carry_the_hash_of_their_module_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import attnbench.zoo.modules.van_lka as van_lka

    (row,) = attnbench.profile("lka", 16, 8, options=COUNTS)
    assert row.source_hash == hashlib.sha256(Path(van_lka.__file__).read_bytes()).hexdigest()[:12]


def test_forward_failing_at_one_resolution_is_a_failed_row_and_the_sweep_goes_on(
    user_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.csv"
    code, _, err = run_cli(
        capsys,
        *f"profile {user_file}:Windowed --dim 16 --res 6 --res 8 --metrics params,macs -o {out} --quiet".split(),
    )
    assert code == 1, err
    rows = R.load(out).results
    assert [(r.width, r.status) for r in rows] == [(6, R.FAILED), (8, R.OK)]
    assert "width 6 is not a multiple of the window 4" in rows[0].reason
    assert "layout image" in rows[0].reason and "--layout tokens" in rows[0].reason
    assert "Traceback" not in err


def test_token_layout_failure_suggests_image(user_file: str) -> None:
    (row,) = attnbench.profile(f"{user_file}:GatedConv", 16, 8, layout="tokens", options=COUNTS)
    assert row.status == R.FAILED
    assert "layout tokens" in row.reason and "it got (1, 64, 16)" in row.reason and "--layout image" in row.reason


def test_import_path_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    code, _, err = run_cli(
        capsys, *f"profile torch.nn:Identity --dim 16 --res 8 --metrics params,macs -o {out} --quiet".split()
    )
    assert code == 0, err
    (row,) = R.load(out).results
    assert (row.module, row.params, row.macs_attnbench) == ("torch.nn:Identity", 0, 0)
    assert len(row.source_hash) == 12


def test_zoo_and_user_module_in_one_run_with_per_module_kwargs(
    user_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.csv"
    argv = (
        f"profile mhsa lka {user_file}:GatedConv --dim 16 --res 8 --metrics params,macs --quiet -o {out} "
        f"--kw mhsa@heads=4 --kw {user_file}:GatedConv@kernel=5 --layout image"
    )
    code, _, err = run_cli(capsys, *argv.split())
    assert code == 0, err
    rows = {r.module: r for r in R.load(out).results}
    assert json.loads(rows["mhsa"].kwargs) == {"heads": 4}
    assert rows["lka"].kwargs == ""
    assert json.loads(rows["models/attn.py:GatedConv"].kwargs) == {"kernel": 5}
    assert rows["models/attn.py:GatedConv"].params == gated_params(16, 5)
    assert rows["mhsa"].macs_attnbench == rows["mhsa"].macs_formula
    # --layout reaches the user's module only; the zoo keeps its own ("").
    assert [rows[m].layout for m in ("mhsa", "lka", "models/attn.py:GatedConv")] == ["", "", "image"]


def test_compare_accepts_specs_and_the_gate_matches_them_by_normalised_name(
    user_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base.csv"
    common = "--dim 16 --res 8 --metrics params,macs --quiet"
    code, _, err = run_cli(capsys, *f"compare {user_file}:GatedConv lka {common} -o {base}".split())
    assert code == 0, err
    absolute = tmp_path / user_file
    code, out, err = run_cli(capsys, *f"compare {absolute}:GatedConv lka {common} --baseline {base}".split())
    assert code == 0, err
    assert "gate: PASSED: 2 case(s) compared" in out


# ---------------------------------------------------------------- spec text: normalisation and --kw syntax


def test_the_same_file_typed_differently_is_one_module(user_file: str, tmp_path: Path) -> None:
    typed = [f"{user_file}:A", f"./{user_file}:A", "models//attn.py:A", f"models/../{user_file}:A"]
    typed.append(f"{tmp_path / user_file}:A")
    assert {normalise(t) for t in typed} == {"models/attn.py:A"}
    assert Sweep(tuple(typed)).modules == ("models/attn.py:A",)


def test_a_file_outside_the_working_directory_keeps_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert normalise("../elsewhere/attn.py:A") == f"{(tmp_path / 'elsewhere' / 'attn.py').as_posix()}:A"
    assert normalise("pkg.mod:Cls") == "pkg.mod:Cls" and normalise("mhsa") == "mhsa"


@pytest.mark.parametrize(
    ("item", "shared", "own"),
    [
        ("heads=4", {"heads": 4}, {}),
        ("mhsa@heads=4", {}, {"mhsa": {"heads": 4}}),
        ("models/attn.py:MyAttn@window=7", {}, {"models/attn.py:MyAttn": {"window": 7}}),
        ("pkg.mod:Cls@kernels=[3,5]", {}, {"pkg.mod:Cls": {"kernels": [3, 5]}}),
        # A path that holds '@' stays whole: the split is the first '@' followed by KEY=.
        ("vendor/@scope/attn.py:A@k=1", {}, {"vendor/@scope/attn.py:A": {"k": 1}}),
        ("name='a@b=c'", {"name": "a@b=c"}, {}),
        ("mhsa@name=x@y=z", {}, {"mhsa": {"name": "x@y=z"}}),
    ],
)
def test_kw_syntax_cannot_clash_with_paths(item: str, shared: dict, own: dict) -> None:
    assert parse_module_kw([item]) == (shared, own)


@pytest.mark.parametrize("item", ["@heads=4", "mhsa@4=4", "mhsa@heads", "heads"])
def test_malformed_kw_is_refused(item: str) -> None:
    with pytest.raises(UsageError, match="MODULE@KEY=VALUE"):
        parse_module_kw([item])


def test_module_kwargs_may_name_a_user_module_by_its_name_alone(user_file: str) -> None:
    sweep = Sweep((f"{user_file}:GatedConv", "lka"), module_kwargs={"GatedConv": {"kernel": 5}})
    assert sweep.kwargs_for("models/attn.py:GatedConv") == {"kernel": 5}
    assert sweep.kwargs_for("lka") == {}


# ---------------------------------------------------------------- resolution: caching, errors


def test_a_spec_is_imported_once_per_process(user_file: str) -> None:
    first = get_spec(f"{user_file}:GatedConv")
    assert get_spec(f"./{user_file}:GatedConv") is first
    assert get_spec(f"{user_file}:make_gate").factory(8).__class__ is first.factory  # same module object


def test_importing_a_file_runs_its_code_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "noisy.py").write_text(
        "import torch\nCALLS = []\nCALLS.append(1)\nclass A(torch.nn.Module):\n    def forward(self, x):\n"
        "        return x\n"
    )
    spec = get_spec("noisy.py:A")
    get_spec("noisy.py:A")
    assert __import__("sys").modules[spec.factory.__module__].CALLS == [1]


def test_sibling_files_import_as_under_pytest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pkg_a").mkdir()
    (tmp_path / "pkg_a" / "helpers_specs_test.py").write_text(
        "import torch\nclass Inner(torch.nn.Identity):\n    pass\n"
    )
    (tmp_path / "pkg_a" / "main.py").write_text(
        "import torch\nfrom helpers_specs_test import Inner\nclass Outer(torch.nn.Module):\n"
        "    def __init__(self, dim):\n        super().__init__()\n        self.inner = Inner()\n"
        "    def forward(self, x):\n        return self.inner(x)\n"
    )
    (row,) = attnbench.profile("pkg_a/main.py:Outer", 8, 4, options=COUNTS)
    assert row.ok and row.params == 0


@pytest.mark.parametrize(
    ("source", "spec", "needle"),
    [
        ("x = (\n", "f.py:A", "f.py:1: importing f.py failed: SyntaxError"),
        (
            "import torch\n\nraise RuntimeError('no GPU here')\n",
            "f.py:A",
            "f.py:3: importing f.py failed: RuntimeError: no GPU",
        ),
        ("import torch\nclass Attn(torch.nn.Module):\n    pass\n", "f.py:Atn", "did you mean Attn?"),
        ("import torch\nclass Attn(torch.nn.Module):\n    pass\n", "f.py:Zzz", "nn.Module classes there: Attn"),
        ("import torch\nclass Attn(torch.nn.Module):\n    pass\n", "f.py", "add :Name, e.g. f.py:Attn"),
        ("", "missing.py:A", "missing.py: no such file"),
        ("", "f.py:1A", "is not a Python name"),
        ("class A:\n    pass\n", "f.py:A", "not an nn.Module subclass"),
        ("import torch\nm = torch.nn.Identity()\n", "f.py:m", "nn.Module instance"),
    ],
)
def test_bad_specs_raise_one_line_naming_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, spec: str, needle: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.py").write_text(source)
    with pytest.raises(ModuleSpecError) as info:
        get_spec(spec)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_a_failed_import_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fix_me.py").write_text("x = (\n")
    with pytest.raises(ModuleSpecError):
        get_spec("fix_me.py:A")
    (tmp_path / "fix_me.py").write_text("import torch\nclass A(torch.nn.Identity):\n    pass\n")
    assert get_spec("fix_me.py:A").factory.__name__ == "A"


def test_constructor_refusing_one_dim_of_several_gives_an_invalid_row(user_file: str, tmp_path: Path) -> None:
    Path(tmp_path / "models" / "heads.py").write_text(
        "import torch\nclass H(torch.nn.Module):\n    def __init__(self, dim, heads=4):\n        super().__init__()\n"
        "        if dim % heads:\n            raise ValueError(f'dim {dim} % heads {heads} != 0')\n"
        "    def forward(self, x):\n        return x\n"
    )
    rows = attnbench.profile("models/heads.py:H", [16, 18], 8, options=COUNTS)
    assert [(r.dim, r.status) for r in rows] == [(16, R.OK), (18, R.INVALID)]
    assert "H(18) raised ValueError: dim 18 % heads 4 != 0" in rows[1].reason


# ---------------------------------------------------------------- the Python API: classes, instances, outputs


class Scale(nn.Module):
    """y = w * x with one weight per channel: C params, and one MAC per element (a tensor-by-tensor product)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w.expand_as(x)


def test_api_takes_a_class_and_names_it_by_import_path() -> None:
    (row,) = attnbench.profile(Scale, 16, 8, options=COUNTS)
    assert row.module == "tests.test_specs:Scale"
    assert (row.params, row.macs_attnbench) == (16, 16 * 8 * 8)
    assert get_spec("tests.test_specs:Scale").factory is Scale


def test_api_measures_an_instance_as_built() -> None:
    module = Scale(16)
    rows = attnbench.profile([module, "lka"], 16, [8, 16], options=COUNTS)
    assert [r.module for r in rows] == ["tests.test_specs:Scale (instance)"] * 2 + ["lka"] * 2
    assert [r.macs_attnbench for r in rows[:2]] == [16 * 64, 16 * 256]
    two = attnbench.profile([Scale(16), Scale(16)], 16, 8, options=COUNTS)
    assert [r.module for r in two] == ["tests.test_specs:Scale (instance)", "tests.test_specs:Scale (instance 2)"]


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        ({}, "pass dim="),
        ({"dim": [16, 32]}, "one value"),
        ({"dim": 16, "heads": 4}, "already built"),
    ],
)
def test_api_refuses_what_contradicts_an_instance(call: dict, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        attnbench.profile(Scale(16), res=8, options=COUNTS, **call)


def test_api_instance_with_the_wrong_dim_is_a_failed_row() -> None:
    (row,) = attnbench.profile(Scale(16), 32, 8, options=COUNTS)
    assert row.status == R.FAILED and "layout image" in row.reason


def test_api_rows_go_to_reports_plots_and_the_gate(tmp_path: Path) -> None:
    rows = attnbench.profile([Scale, "lka"], 16, [8, 16], options=COUNTS)
    attnbench.report.write(rows, {}, [tmp_path / "r.md", tmp_path / "r.csv", tmp_path / "r.json"])
    assert "tests.test_specs:Scale" in (tmp_path / "r.md").read_text()
    loaded = attnbench.load_results(tmp_path / "r.json")
    assert loaded.results == rows
    assert [p.name for p in attnbench.plot_scaling(rows, tmp_path / "plots")] == ["macs.png"]
    verdict = attnbench.compare_to_baseline(rows, tmp_path / "r.csv", env={})
    assert verdict.passed and verdict.compared_cases == 4


def test_gate_mentions_a_changed_source_hash_without_failing() -> None:
    rows = attnbench.profile([Scale, "lka"], 16, 8, options=COUNTS)
    base = [replace(r, source_hash="0" * 12) if r.module == "lka" else r for r in rows]
    verdict = compare_to_baseline(rows, base, env={})
    (change,) = verdict.changes
    assert (change.case, change.kind, change.failing) == ("lka", "source", False)
    assert verdict.passed
    # A count change still fails, whatever the hash says.
    changed = [replace(r, params=r.params + 1) for r in base]
    assert not compare_to_baseline(rows, changed, env={}).passed


def test_layout_for_the_zoo_alone_is_refused() -> None:
    with pytest.raises(UsageError, match="own modules"):
        Sweep(("lka", "mhsa"), layout="tokens").check(measures=False)


def test_public_api_names() -> None:
    for name in ("profile", "Result", "Case", "Sweep", "RunOptions", "report", "plot_scaling", "compare_to_baseline"):
        assert name in attnbench.__all__ and getattr(attnbench, name) is not None
