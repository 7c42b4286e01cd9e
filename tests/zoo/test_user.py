"""Your own module through the zoo's door: file and import specs, their names, the errors that name file and line,
the ad-hoc spec, and the same specs through the command line."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from attnbench import results as R
from attnbench import store
from attnbench.cli.options import parse_module_kw
from attnbench.errors import ModuleSpecError, UsageError
from attnbench.sweep import Sweep
from attnbench.zoo import user
from attnbench.zoo.registry import get_spec
from attnbench.zoo.spec import Setting
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
    """Two Linear layers with biases: C -> C*hidden -> C."""
    return 2 * c * c * hidden + c * hidden + c


def mlp_macs(b: int, c: int, h: int, w: int, hidden: int) -> int:
    """Two Linear layers over the N = H*W tokens."""
    return b * h * w * 2 * c * c * hidden


def write_user_file(root: Path) -> str:
    """The user's file at root/models/attn.py; its spec prefix, as typed from root."""
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "attn.py").write_text(USER_FILE)
    return "models/attn.py"


@pytest.fixture
def user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The user's file at models/attn.py under a fresh working directory; its spec prefix, as typed."""
    monkeypatch.chdir(tmp_path)
    return write_user_file(tmp_path)


COUNTS = "--dim 16 --res 8 --metrics params,macs --quiet"


# ---------------------------------------------------------------- spec text: normalisation


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


def test_what_counts_as_a_spec() -> None:
    assert user.is_spec("a.py:A") and user.is_spec("pkg.mod:A") and not user.is_spec("mhsa")
    assert user.looks_like_spec("attn.py") and user.looks_like_spec("pkg.mod") and user.looks_like_spec("a/b")
    assert not user.looks_like_spec("mhsa") and not user.looks_like_spec("a.py:A")


def test_cache_key_is_where_the_code_lives(user_file: str, tmp_path: Path) -> None:
    real = (tmp_path / user_file).resolve()
    assert user.cache_key(f"./{user_file}:A") == user.cache_key(f"{tmp_path / user_file}:A") == f"{real}:A"
    assert user.cache_key(" pkg.mod:A ") == "pkg.mod:A"


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


# ---------------------------------------------------------------- loading the code


def test_importing_a_file_runs_its_code_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "noisy.py").write_text(
        "import torch\nCALLS = []\nCALLS.append(1)\nclass A(torch.nn.Module):\n    def forward(self, x):\n"
        "        return x\n"
    )
    spec = get_spec("noisy.py:A")
    get_spec("noisy.py:A")
    assert sys.modules[spec.factory.__module__].CALLS == [1]
    assert spec.factory.__module__.startswith(user.PRIVATE_PREFIX)


def test_sibling_files_import_as_under_pytest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import attnbench
    from attnbench.settings import RunOptions

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
    options = RunOptions(metrics=("params", "macs"), counters=("attnbench",))
    (row,) = attnbench.profile("pkg_a/main.py:Outer", 8, 4, options=options)
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
        ("x = 3\n", "f.py:x", "is of type int, not an nn.Module subclass or a factory"),
        ("x = 3\n", "f.py:Zzz", "it has no nn.Module class"),
        ("", "missing.py", "no such file, and a spec needs :Name"),
        ("", "attnbench_no_such_pkg.attn:MyAttn", "no module named 'attnbench_no_such_pkg'"),
        ("", "pkg.mod", "add :Name, e.g. pkg.mod:MyAttention"),
        ("", "a-b.c:A", "neither a .py file nor a dotted module path"),
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


def test_a_directory_is_not_a_file_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pkg.py").mkdir()
    with pytest.raises(ModuleSpecError, match=r"pkg\.py: is a directory"):
        get_spec("pkg.py:A")


def test_an_error_inside_an_imported_package_names_its_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "attnbench_broken_pkg").mkdir()
    (tmp_path / "attnbench_broken_pkg" / "__init__.py").write_text("")
    (tmp_path / "attnbench_broken_pkg" / "attn.py").write_text("import torch\n\n\nraise ImportError('needs CUDA')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleSpecError) as info:
        get_spec("attnbench_broken_pkg.attn:A")
    assert "attnbench_broken_pkg/attn.py:4: importing attnbench_broken_pkg.attn failed: ImportError: needs CUDA" in (
        str(info.value)
    )


# ---------------------------------------------------------------- the ad-hoc spec


def test_a_user_spec_has_no_formulas_and_judges_kwargs_by_calling_the_constructor(user_file: str) -> None:
    spec = get_spec(f"{user_file}:GatedConv")
    assert spec.adhoc and spec.params_formula is None and spec.macs_formula is None
    assert (spec.name, spec.layout, spec.defaults) == ("models/attn.py:GatedConv", "image", {})
    assert spec.title == "GatedConv (models/attn.py)"
    assert (spec.reference.file, spec.reference.cls) == ("models/attn.py", "GatedConv")
    assert spec.source_hash == hashlib.sha256(USER_FILE.encode()).hexdigest()[:12]
    (constraint,) = spec.constraints
    assert constraint.name == "constructor" and not constraint.needs_resolution
    assert constraint.check(Setting(16, {"kernel": 5})) is None
    reason = constraint.check(Setting(16, {"haeds": 2}))
    assert reason is not None and reason.startswith("GatedConv(16, haeds=2) raised TypeError")
    assert "(it takes: dim, kernel)" in reason
    module = spec.builder(16, None, kernel=5)
    assert sum(p.numel() for p in module.parameters()) == gated_params(16, 5)


def test_constructor_reason_passes_the_users_message_on() -> None:
    class Picky(nn.Module):
        def __init__(self, dim: int, heads: int = 4) -> None:
            super().__init__()
            if dim % heads:
                raise ValueError(f"dim {dim} % heads {heads} != 0")

    assert user.constructor_reason(Picky, 16, {}) is None
    assert user.constructor_reason(Picky, 18, {}) == (
        "Picky(18) raised ValueError: dim 18 % heads 4 != 0 (built as Name(dim, **kwargs): --dim is its first "
        "argument; write Name(...) in the spec to build it as written)"
    )

    def not_a_module(dim: int) -> Any:
        return [dim]

    reason = user.constructor_reason(not_a_module, 8, {})
    assert reason is not None
    assert reason.startswith("not_a_module(8) returned an object of type list, not an nn.Module (built as Name(dim")


def test_a_constructor_that_needs_real_tensors_is_judged_on_the_cpu() -> None:
    class NeedsData(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.scale = float(torch.ones(dim).sum().item())  # .item() fails on the meta device

    assert user.constructor_reason(NeedsData, 8, {}) is None


class Scale(nn.Module):
    """y = w * x with one weight per channel."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def make_scale(dim: int) -> Scale:
    """A factory function, as a spec may name one."""
    return Scale(dim)


def test_objects_are_named_as_their_specs_would_be() -> None:
    assert user.spec_for_object(Scale).name == "tests.zoo.test_user:Scale"
    assert user.spec_for_object(make_scale).name == "tests.zoo.test_user:make_scale"
    instance = Scale(4)
    spec = user.spec_for_object(instance)
    assert spec.name == "tests.zoo.test_user:Scale (instance)" and spec.constraints == ()
    assert spec.builder(99, None) is instance  # an instance is measured as built
    taken = {"tests.zoo.test_user:Scale (instance)", "tests.zoo.test_user:Scale (instance 2)"}
    assert user.spec_for_object(Scale(4), taken).name == "tests.zoo.test_user:Scale (instance 3)"
    with pytest.raises(ModuleSpecError, match=r"not an nn\.Module subclass"):
        user.spec_for_object(int)


# ---------------------------------------------------------------- through the command line


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
    (row,) = store.load(out).results
    digest = hashlib.sha256((tmp_path / user_file).read_bytes()).hexdigest()[:12]
    assert row.module == "models/attn.py:GatedConv"
    assert row.source_hash == digest
    assert row.macs_attnbench == gated_macs(1, 16, 8, 8, 3)
    assert "models/attn.py:GatedConv" in stdout
    assert f"| models/attn.py:GatedConv | `{digest}` |" in md.read_text()


def test_forward_failing_at_one_resolution_is_a_failed_row_and_the_sweep_goes_on(
    user_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.csv"
    code, _, err = run_cli(
        capsys,
        *f"profile {user_file}:Windowed --dim 16 --res 6 --res 8 --metrics params,macs -o {out} --quiet".split(),
    )
    assert code == 1, err
    rows = store.load(out).results
    assert [(r.width, r.status) for r in rows] == [(6, R.FAILED), (8, R.OK)]
    assert "width 6 is not a multiple of the window 4" in rows[0].reason
    # The real cause, and no layout hint: the module runs in no other layout either (the input's shape was fine).
    assert "layout image" in rows[0].reason and "--layout" not in rows[0].reason
    assert "Traceback" not in err


def test_import_path_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    code, _, err = run_cli(
        capsys, *f"profile torch.nn:Identity --dim 16 --res 8 --metrics params,macs -o {out} --quiet".split()
    )
    assert code == 0, err
    (row,) = store.load(out).results
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
    rows = {r.module: r for r in store.load(out).results}
    assert json.loads(rows["mhsa"].kwargs) == {"heads": 4}
    assert rows["lka"].kwargs == ""
    assert json.loads(rows["models/attn.py:GatedConv"].kwargs) == {"kernel": 5}
    assert rows["models/attn.py:GatedConv"].params == gated_params(16, 5)
    assert rows["mhsa"].macs_attnbench == rows["mhsa"].macs_formula
    # --layout reaches the user's module only; the zoo keeps its own ("").
    assert [rows[m].scenario.layout for m in ("mhsa", "lka", "models/attn.py:GatedConv")] == ["", "", "image"]


def test_compare_accepts_specs_and_the_gate_matches_them_by_normalised_name(
    user_file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base.csv"
    code, _, err = run_cli(capsys, *f"compare {user_file}:GatedConv lka {COUNTS} -o {base}".split())
    assert code == 0, err
    absolute = tmp_path / user_file
    code, out, err = run_cli(capsys, *f"compare {absolute}:GatedConv lka {COUNTS} --baseline {base}".split())
    assert code == 0, err
    assert "gate: PASSED: 2 case(s) compared" in out


def test_info_of_a_user_module_says_where_it_is_and_how_it_is_called(
    user_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "info", f"./{user_file}:GatedConv")
    assert code == 0, err
    digest = hashlib.sha256(USER_FILE.encode()).hexdigest()[:12]
    assert "models/attn.py:GatedConv: your own module" in out
    assert f"source:     models/attn.py (sha256 {digest}...)" in out
    assert "called as:  GatedConv(dim, kernel=3), first argument = channels C" in out


# ---------------------------------------------------------------- explicit calls, packages, one build

#: A network's file: a factory without a dim (as timm's and the papers' are), one that loads weights when its
#: first argument is truthy, and a constructor that needs real tensors (a drop-path schedule through .item()).
NETWORK_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    BUILDS = []


    class Net(nn.Module):
        def __init__(self, in_chans=3, width=8, depth=2, num_classes=10):
            super().__init__()
            rates = [x.item() for x in torch.linspace(0, 0.1, depth)]  # fails on the meta device
            BUILDS.append(depth)  # a build that got past the meta device's failure
            self.stem = nn.Conv2d(in_chans, width, 3, stride=2, padding=1)
            self.blocks = nn.Sequential(*[nn.Conv2d(width, width, 3, padding=1) for _ in rates])
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))


    def net_tiny(pretrained=False, **kwargs):
        if pretrained:
            raise RuntimeError("would download weights")
        return Net(**kwargs)
    """
)


def net_params(c: int, width: int, depth: int, classes: int) -> int:
    """Stem conv, depth 3x3 convs, the head: weights and biases."""
    return (c * 9 * width + width) + depth * (width * 9 * width + width) + (width * classes + classes)


@pytest.fixture
def network_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NETWORK_FILE)
    return "net.py"


def test_an_explicit_call_is_built_as_written_with_no_dim(network_file: str) -> None:
    spec = get_spec(f"{network_file}:net_tiny( pretrained = False, depth=3 )")
    assert spec.name == "net.py:net_tiny(pretrained=False, depth=3)"  # canonical text: one module however typed
    module = spec.builder(16, None)  # the dim is not passed: 16 would be the input's channels only
    assert sum(p.numel() for p in module.parameters()) == net_params(3, 8, 3, 10)
    assert user.normalise("net.py:net_tiny(depth=3)") != user.normalise("net.py:net_tiny(depth=2)")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("net_tiny(depth=open('x'))", "argument \"open('x')\" is not a Python literal"),
        ("net_tiny(*[1])", "write each argument out"),
        ("net_tiny(depth=", "is not valid Python"),
    ],
)
def test_a_call_that_is_not_literals_is_refused_in_one_line(network_file: str, call: str, message: str) -> None:
    with pytest.raises(ModuleSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_spec(f"{network_file}:{call})" if call.endswith("=") else f"{network_file}:{call}")


def test_the_name_dim_form_refuses_a_pretrained_first_argument_and_says_which_form(network_file: str) -> None:
    spec = get_spec(f"{network_file}:net_tiny")
    reason = spec.constraints[0].check(Setting(3, {}))
    assert reason == (
        "net_tiny(3) would pass --dim as pretrained=3 (built as Name(dim, **kwargs): --dim is its first argument; "
        "write Name(...) in the spec to build it as written)"
    )
    reason = get_spec(f"{network_file}:Net(width=-1)").constraints[0].check(Setting(3, {}))
    assert reason is not None and reason.startswith("Net(width=-1) raised RuntimeError")
    assert reason.endswith("(built as written in the spec, with no dim: --dim gives only the input's channels)")


def test_a_network_is_built_once_and_its_output_noted(network_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"{network_file}:Net(depth=2)"
    code, out, err = run_cli(capsys, "profile", spec, "--dim", "3", "--res", "16", "--metrics", "params,macs",
                             "--quiet", "-o", "net.csv")  # fmt: skip
    assert code == 0, err
    builds = user.load_file(network_file).BUILDS  # the file as this process imported it (once)
    assert builds == [2]  # the constructor check's CPU build is the one counted: built once
    (row,) = store.load("net.csv").results
    assert row.params == net_params(3, 8, 2, 10) and row.output_shapes == "(1, 10)" and row.output_differs
    assert row.built_on.startswith("cpu (meta build failed: RuntimeError: Tensor.item() cannot be called on meta")
    assert row.counted_on_attnbench == "meta" and row.count_s_attnbench > 0
    assert {row.counted_on_fvcore.split(" ")[0], row.counted_on_thop.split(" ")[0]} <= {"meta", "cpu"}
    assert "≠" in out and "output (1, 10) differs from the input (1, 3, 16, 16)" in err


PACKAGE_INIT = "from .layers import Double  # a relative import, as a repository's models/ package has\n"
PACKAGE_LAYERS = textwrap.dedent(
    """
    from torch import nn


    class Double(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.conv = nn.Conv2d(dim, 2 * dim, 1)

        def forward(self, x):
            return self.conv(x)
    """
)
PACKAGE_NET = "from .layers import Double\n\n\ndef build(dim=4):\n    return Double(dim)\n"


def write_package(root: Path, name: str) -> Path:
    """root/repo/name/ with __init__.py, layers.py and net.py (relative imports); the net.py path."""
    folder = root / "repo" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(PACKAGE_INIT)
    (folder / "layers.py").write_text(PACKAGE_LAYERS)
    (folder / "net.py").write_text(PACKAGE_NET)
    return folder / "net.py"


def test_a_file_in_a_package_is_imported_as_part_of_it(tmp_path: Path) -> None:
    name = f"pkg_{tmp_path.name.replace('-', '_')}"
    net = write_package(tmp_path, name)
    module = get_spec(f"{net}:build(dim=4)").builder(4, None)
    assert type(module).__module__ == f"{name}.layers"  # the package's own module, by its own name
    assert sum(p.numel() for p in module.parameters()) == 4 * 8 + 8
    other = write_package(tmp_path / "elsewhere", name)  # another package of the same name
    with pytest.raises(ModuleSpecError, match=f"its package '{name}' .* has the name of a package this process"):
        get_spec(f"{other}:build()")


OUTPUTS_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.nn import functional as F


    class ImagePair(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.conv = nn.Conv2d(dim, dim, 1)

        def forward(self, x):
            return self.conv(x), x.mean(1)  # (B, C, H, W) and (B, H, W)


    class TokenPair(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.mha = nn.MultiheadAttention(dim, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x)  # (out, attention weights), as nn.MultiheadAttention returns them


    class SpatialReduction(nn.Module):
        # PVT's attention: queries from every token, keys and values from a map reduced by a strided conv.
        def __init__(self, dim, heads=2, sr=2):
            super().__init__()
            self.heads = heads
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
            self.sr = nn.Conv2d(dim, dim, sr, stride=sr)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x, H, W):
            B, N, C = x.shape
            q = self.q(x).reshape(B, N, self.heads, C // self.heads).transpose(1, 2)
            r = self.sr(x.transpose(1, 2).reshape(B, C, H, W)).flatten(2).transpose(1, 2)
            k, v = self.kv(r).reshape(B, -1, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(B, N, C))
    """
)


def test_tuple_outputs_run_in_both_layouts_on_cpu_and_ort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("outs.py").write_text(OUTPUTS_FILE)
    rows = []
    for spec, layout in (("outs.py:ImagePair", "image"), ("outs.py:TokenPair", "tokens")):
        argv = f"profile {spec} --layout {layout} --dim 8 --res 4 --backend cpu --backend ort --max-run-time 0.05"
        code, _, err = run_cli(capsys, *argv.split(), "--metrics", "params,macs,latency", "-o", f"{layout}.csv", "-q")
        assert code == 0, err
        rows += store.load(f"{layout}.csv").results
    assert [(r.backend, r.status) for r in rows] == [("cpu", R.OK), ("ort", R.OK)] * 2
    assert rows[0].output_shapes == "0: (1, 8, 4, 4); 1: (1, 4, 4)" and not rows[0].output_differs
    assert rows[2].output_shapes == "0: (1, 8, 4, 4); 1: (1, 16, 16)"  # the adapter converted the first back
    assert "the tokens adapter converted the first back" in rows[2].reason
    assert all(r.latency_median_s for r in rows) and rows[1].parity_max_abs < 1e-5


def test_tokens_hw_profiles_a_pvt_style_attention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("outs.py").write_text(OUTPUTS_FILE)
    code, _, err = run_cli(capsys, *f"profile outs.py:SpatialReduction --layout tokens-hw {COUNTS} -o r.csv".split())
    assert code == 0, err
    (row,) = store.load("r.csv").results
    c, n, m = 16, 64, 16  # 8x8 tokens; keys and values from the 4x4 reduced map
    linears = n * c * c + m * 2 * c * c + n * c * c
    assert row.macs_attnbench == linears + m * c * c * 4 + 2 * n * m * c  # sr conv: each output sums 2x2xC
    assert row.output_shapes == "(1, 16, 8, 8)" and not row.output_differs
    code, _, err = run_cli(capsys, *f"profile outs.py:SpatialReduction --layout tokens {COUNTS}".split())
    assert code == 1 and "it runs with --layout tokens-hw" in err  # the input was the problem: say which layout
