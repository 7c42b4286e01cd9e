"""The bad-input matrix: CLI invocations that must each end in one line on stderr and exit code 2.

Plain data, shared by tests/cli/test_main.py and benchmarks/robustness.py. `{tmp}` is replaced by a scratch
directory; every entry also writes `-o {tmp}/out.csv` unless it is about the output path, so the test can
check that nothing was written.
"""

from __future__ import annotations

# (id, argv, a word the error line must contain)
BAD_INPUTS: list[tuple[str, list[str], str]] = [
    ("unknown-module", ["profile", "acmx"], "did you mean acmix"),
    ("unknown-module-info", ["info", "lkaa"], "unknown module"),
    ("unknown-backend", ["profile", "lka", "--backend", "tpu"], "allowed: cpu"),
    ("dim-zero", ["profile", "lka", "--dim", "0"], "--dim"),
    ("dim-negative", ["profile", "lka", "--dim", "-8"], "--dim"),
    ("dim-not-int", ["profile", "lka", "--dim", "2.5"], "dim"),
    ("dim-not-divisible-by-heads", ["profile", "mhsa", "--dim", "60"], "heads"),
    ("heads-zero", ["profile", "mhsa", "--kw", "heads=0"], "heads"),
    ("heads-negative", ["profile", "mhsa", "--kw", "heads=-2"], "heads"),
    ("heads-wrong-type", ["profile", "mhsa", "--kw", "heads=four"], "int"),
    ("heads-float", ["profile", "mhsa", "--kw", "heads=2.5"], "int"),
    ("kernel-even", ["profile", "sk", "--kw", "kernels=[2,3]"], "odd"),
    ("kernel-even-acmix", ["profile", "acmix", "--kw", "kernel_att=4"], "kernel_att"),
    ("kernel-not-list", ["profile", "sk", "--kw", "kernels=3"], "list"),
    ("kw-unknown-key", ["profile", "lka", "--kw", "heads=4"], "allowed"),
    ("kw-malformed", ["profile", "mhsa", "--kw", "heads"], "KEY=VALUE"),
    ("kw-bad-key", ["profile", "mhsa", "--kw", "=4"], "KEY=VALUE"),
    ("res-zero", ["profile", "lka", "--res", "0"], "--res"),
    ("res-negative", ["profile", "lka", "--res", "-4"], "--res"),
    ("res-garbage", ["profile", "lka", "--res", "abc"], "--res"),
    ("res-three-sides", ["profile", "lka", "--res", "4x4x4"], "--res"),
    ("res-not-window-multiple", ["profile", "clo", "--res", "14"], "window"),
    ("res-too-small-acmix", ["profile", "acmix", "--res", "3"], "acmix"),
    ("batch-zero", ["profile", "lka", "--batch", "0"], "--batch"),
    ("batch-negative", ["profile", "lka", "--batch", "-1"], "--batch"),
    ("threads-zero", ["profile", "lka", "--threads", "0"], "--threads"),
    ("metrics-unknown", ["profile", "lka", "--metrics", "params,speed"], "allowed"),
    ("counters-unknown", ["profile", "lka", "--counters", "ptflops"], "allowed"),
    ("sort-unknown", ["compare", "lka", "sk", "--sort", "speed"], "sort"),
    ("min-run-time-negative", ["profile", "lka", "--min-run-time", "-1"], "min-run-time"),
    ("max-run-time-zero", ["profile", "lka", "--max-run-time", "0"], "max-run-time"),
    ("precision-zero", ["profile", "lka", "--precision", "0"], "precision"),
    ("precision-whole", ["profile", "lka", "--precision", "1"], "precision"),
    ("gate-metric-unknown", ["compare", "lka", "--gate-metric", "cycles"], "gate-metric"),
    ("time-limit-negative", ["profile", "lka", "--time-limit", "-1"], "time-limit"),
    ("dtype-unknown", ["profile", "lka", "--dtype", "int8"], "dtype"),
    ("mode-unknown", ["profile", "lka", "--mode", "eval"], "--mode 'eval': allowed: infer, train"),
    ("allocator-unknown", ["profile", "lka", "--allocator", "mimalloc"], "allowed: pinned, system, jemalloc, tcmalloc"),
    ("dtype-alias-unknown", ["profile", "lka", "--dtype", "bf17"], "--dtype 'bf17': allowed: float32, float16"),
    ("threads-not-int", ["profile", "lka", "--threads", "two"], "--threads 'two': must be an int >= 1"),
    ("autocast-unknown", ["profile", "lka", "--autocast", "int8"], "--autocast 'int8': allowed: off, bfloat16"),
    ("compile-mode-unknown", ["profile", "lka", "--compile-mode", "fast"], "allowed: default, reduce-overhead, max"),
    ("ort-opt-level-unknown", ["profile", "lka", "--ort-opt-level", "max"], "allowed: disable, basic, extended, all"),
    ("compile-not-on-off", ["profile", "lka", "--compile=maybe"], "--compile 'maybe': allowed: on, off"),
    ("channels-last-not-on-off", ["profile", "lka", "--channels-last=sideways"], "--channels-last 'sideways'"),
    ("warmup-negative", ["profile", "lka", "--warmup", "-1"], "--warmup"),
    ("compare-nothing", ["compare"], "--all"),
    ("profile-nothing", ["profile"], "module"),
    ("cuda-alone-without-gpu", ["profile", "lka", "--backend", "cuda"], "cuda"),
    ("output-unknown-suffix", ["profile", "lka", "-o", "{tmp}/out.xlsx"], "unknown format"),
    ("output-no-suffix", ["profile", "lka", "-o", "{tmp}/out"], "unknown format"),
    ("output-is-directory", ["profile", "lka", "-o", "{tmp}/dir.csv"], "is a directory"),
    ("output-directory-without-suffix", ["profile", "lka", "-o", "{tmp}"], "is a directory"),
    ("output-missing-parent", ["profile", "lka", "-o", "{tmp}/nope/out.csv"], "does not exist"),
    ("output-unwritable", ["profile", "lka", "-o", "/proc/attnbench.csv"], "not writable"),
    ("plots-is-file", ["profile", "lka", "--plots", "{tmp}/file.txt"], "--plots"),
    ("plots-uncreatable", ["profile", "lka", "--plots", "/proc/attnbench-plots"], "--plots"),
    ("all-and-names", ["profile", "lka", "--all"], "--all"),
    ("depth-without-breakdown", ["profile", "lka", "--depth", "2"], "--breakdown"),
    ("depth-negative", ["profile", "lka", "--breakdown", "--depth", "-1"], "--depth"),
    ("output-twice", ["profile", "lka", "-o", "{tmp}/twice.csv", "-o", "{tmp}/twice.csv"], "given twice"),
    ("baseline-missing", ["compare", "lka", "--baseline", "{tmp}/none.csv"], "no such file"),
    ("baseline-empty", ["compare", "lka", "--baseline", "{tmp}/empty.csv"], "empty"),
    ("baseline-corrupt", ["compare", "lka", "--baseline", "{tmp}/corrupt.csv"], "not an attnbench CSV"),
    ("baseline-other-schema", ["compare", "lka", "--baseline", "{tmp}/schema.csv"], "schema version"),
    ("baseline-is-directory", ["compare", "lka", "--baseline", "{tmp}/dir.csv"], "directory"),
    ("tolerance-negative", ["compare", "lka", "--tolerance", "-0.1"], "tolerance"),
    ("tolerance-minus-one", ["compare", "lka", "--tolerance", "-1"], "--tolerance must be a fraction in [0, 10)"),
    ("tolerance-too-large", ["compare", "lka", "--tolerance", "10"], "--tolerance must be a fraction in [0, 10)"),
    ("gate-metric-x", ["compare", "lka", "--gate-metric", "x"], "--gate-metric 'x': allowed: wall, instructions"),
    ("report-missing", ["report", "{tmp}/none.csv"], "no such file"),
    ("report-corrupt", ["report", "{tmp}/corrupt.csv"], "not an attnbench CSV"),
    ("shard-zero", ["profile", "lka", "--shard", "0/3"], "--shard '0/3'"),
    ("shard-past-count", ["compare", "lka", "--shard", "4/3"], "1 <= K <= N"),
    ("shard-garbage", ["profile", "lka", "--shard", "x"], "K/N"),
    ("shard-of-zero", ["profile", "lka", "--shard", "1/0"], "--shard '1/0'"),
    ("shard-no-slash", ["profile", "lka", "--shard", "3"], "K/N"),
    ("label-empty", ["profile", "lka", "--label", " "], "--label"),
    ("report-glob-matches-nothing", ["report", "{tmp}/none-*.csv"], "no .csv or .json report matches"),
    ("report-label-empty", ["report", "{tmp}/corrupt.csv", "--label", ""], "--label"),
    ("spec-missing-file", ["profile", "{tmp}/nope.py:MyAttn"], "no such file"),
    ("spec-syntax-error", ["profile", "{tmp}/syntax_error.py:MyAttn"], "syntax_error.py:4"),
    ("spec-import-error", ["profile", "{tmp}/import_error.py:MyAttn"], "import_error.py:2"),
    ("spec-name-not-found", ["profile", "{tmp}/user.py:MyAtn"], "did you mean MyAttn"),
    ("spec-without-name", ["profile", "{tmp}/user.py"], "user.py:MyAttn"),
    ("spec-package-missing", ["profile", "attnbench_no_such_pkg.attn:MyAttn"], "no module named"),
    ("spec-not-a-module", ["profile", "{tmp}/user.py:Plain"], "not an nn.Module"),
    ("spec-constructor-raises", ["profile", "{tmp}/user.py:MyAttn", "--kw", "heads=3"], "not divisible by heads 3"),
    ("spec-constructor-bad-kwarg", ["profile", "{tmp}/user.py:MyAttn", "--kw", "haeds=2"], "unexpected keyword"),
    ("layout-for-zoo-only", ["profile", "lka", "--layout", "tokens"], "own modules"),
    ("layout-unknown", ["profile", "{tmp}/user.py:MyAttn", "--layout", "nchw"], "--layout"),
    ("kw-for-module-not-in-run", ["profile", "lka", "--kw", "mhsa@heads=4"], "not a module of this run"),
    ("kw-shared-one-module-lacks", ["profile", "mhsa", "lka", "--kw", "heads=4"], "MODULE@heads"),
    ("unknown-option", ["profile", "lka", "--speed", "9"], "--speed"),
    ("unknown-command", ["benchmark", "lka"], "benchmark"),
]


def prepare(tmp: str) -> None:
    """Create the files and directories the matrix refers to under `tmp`."""
    import os

    os.makedirs(f"{tmp}/dir.csv", exist_ok=True)
    with open(f"{tmp}/file.txt", "w") as handle:
        handle.write("x")
    open(f"{tmp}/empty.csv", "w").close()
    with open(f"{tmp}/corrupt.csv", "w") as handle:
        handle.write("module,dim\nlka,1,2,3\n")
    with open(f"{tmp}/schema.csv", "w") as handle:
        handle.write('# attnbench-results {"schema": 0, "env": {}}\nmodule,dim\n')
    for name, text in USER_FILES.items():
        with open(f"{tmp}/{name}", "w") as handle:
            handle.write(text)


#: A user's module files for the spec entries: a good one, one that does not parse, one whose import fails.
USER_FILES = {
    "user.py": (
        "import torch\n\n\nclass MyAttn(torch.nn.Module):\n"
        "    def __init__(self, dim, heads=2):\n"
        "        super().__init__()\n"
        "        if dim % heads:\n"
        "            raise ValueError(f'dim {dim} is not divisible by heads {heads}')\n"
        "        self.proj = torch.nn.Conv2d(dim, dim, 1)\n\n"
        "    def forward(self, x):\n"
        "        return self.proj(x)\n\n\n"
        "class Plain:\n"
        "    pass\n"
    ),
    "syntax_error.py": "import torch\n\n\nclass MyAttn(torch.nn.Module)\n    pass\n",
    "import_error.py": "import torch\nimport attnbench_no_such_dependency\n",
}


def argv_for(argv: list[str], tmp: str) -> list[str]:
    """The entry's argv with {tmp} filled in, plus a CSV output (unless it tests outputs) and quiet mode."""
    args = [a.replace("{tmp}", tmp) for a in argv]
    if args and args[0] in ("profile", "compare") and "-o" not in args:
        args += ["-o", f"{tmp}/out.csv"]
    if args and args[0] in ("profile", "compare"):
        args += ["--quiet"]
    return args
