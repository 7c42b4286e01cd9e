"""Do the tests catch the bugs they guard against? Mutation testing (mutmut 3) of the code whose numbers users trust.

For each target (a source file, or some functions of one), mutmut plants one small bug at a time (an operator,
a constant, a condition flipped...) and runs the tests that cover the function it changed, chosen from the
target's own test files: a mutant the tests fail on is killed, one they pass on survived. The score is the share
killed (a timeout, the tests running 30x longer than clean, counts as killed: the bug made them loop) among the
mutants that could be killed. Every survivor is listed with its diff and its treatment: the test that now kills
it, or why it is equivalent (no test can tell it from the original), or why mutmut cannot test it (code run at
import, before mutmut switches a mutant on).

Each target runs in its own copy of the sources (scratch/mutation/<target>/, git-ignored), where mutmut keeps
its results: a second run re-tests only the functions that changed. Run one target while changing its code:
    python benchmarks/mutation.py timing            # then read results/mutation.md, or:
    python benchmarks/mutation.py timing --show     # the survivors' diffs on the terminal, no file written
Every target (slow: about an hour on the shared 2-core VM): python benchmarks/mutation.py --all

Needs mutmut (pip install -e '.[mutation]'); not part of the test suite or CI. Writes results/mutation.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "scratch" / "mutation"
#: This script's record of a target's runs (wall time, load), beside mutmut's results in its scratch copy.
RUNS = "attnbench-runs.json"
KILLED = ("killed", "timeout")
#: mutmut's exit-code meanings (mutmut/stats.py), read off its .meta files.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout"}
STATUS |= {-24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


@dataclasses.dataclass(frozen=True)
class Target:
    """Some functions of one source file and the test files that cover them."""

    name: str
    source: str
    tests: tuple[str, ...]
    #: mutmut's mangled names of the functions to mutate (x_<function>, xǁ<Class>ǁ<method>); () = all of them.
    functions: tuple[str, ...] = ()
    #: Test selection inside those files (pytest -k), when only some of their tests cover the target.
    keyword: str = ""

    @property
    def module(self) -> str:
        return self.source.removesuffix(".py").replace("/", ".")

    def patterns(self) -> list[str]:
        """mutmut's mutant-name globs for this target."""
        return [f"{self.module}.{f}__mutmut_*" for f in self.functions or ("*",)]


TARGETS = (
    Target(
        "counting.rules",
        "attnbench/counting/rules.py",
        ("tests/counting/test_rules.py", "tests/counting/test_dispatch.py"),
    ),
    Target(
        "counting.dispatch",
        "attnbench/counting/dispatch.py",
        ("tests/counting/test_dispatch.py", "tests/counting/test_rules.py"),
        # The functions that book the numbers (about half the file's 818 mutants: the whole does not fit in a
        # run on the shared VM); the rest is counting.dispatch.runs.
        functions=(
            "x__op_name",
            "x__owners",
            "x__report",
            "xǁDispatchCounterǁ__torch_dispatch__",
            "xǁDispatchCounterǁ_product",
            "xǁDispatchCounterǁ_book",
            "xǁDispatchCounterǁ_promote",
            "xǁDispatchCounterǁ_credited",
            "xǁDispatchCounterǁ_current_stack",
            "xǁDispatchCounterǁclaim",
            "xǁDispatchCounterǁ_remember",
            "xǁDispatchCounterǁ_recall",
            "xǁDispatchCounterǁ_follow",
            "xǁDispatchCounterǁ_list",
            "xǁDispatchCounterǁ_track",
        ),
    ),
    Target(
        "counting.dispatch.runs",
        "attnbench/counting/dispatch.py",
        (
            "tests/counting/test_dispatch.py",
            "tests/counting/test_fallback.py",
            "tests/counting/test_base.py",
            "tests/counting/test_init.py",
            "tests/counting/test_rules.py",
        ),
        # The rest of the engine: the runs and their fallback to the CPU, the kernel choice, the hooks' set-up
        # and the tensors' identities (`total`, `total_flops` and cpu_attention_choice are decorated: not mutated).
        functions=(
            "x__storage_key",
            "x__cdata",
            "x__tensors",
            "x__decomposes",
            "x__in_backward",
            "x__run",
            "x__stand_in",
            "x__cpu_takes_flash",
            "x__run_train",
            "x_count_dispatch",
            "x__count",
            "xǁDispatchCounterǁ__init__",
            "xǁDispatchCounterǁnote_output",
            "xǁDispatchCounterǁattach",
            "xǁDispatchCounterǁdetach",
            "xǁDispatchCounterǁ_push",
            "xǁDispatchCounterǁ_pop",
            "xǁDispatchCounterǁexclude",
            "xǁDispatchCounterǁuncounted_ops",
        ),
    ),
    Target("counting.params", "attnbench/counting/params.py", ("tests/counting/test_params.py",)),
    Target(
        "gate",
        "attnbench/gate.py",
        ("tests/test_gate.py",),
        functions=(
            "x_default_tolerance",
            "x__spread",
            "x__latency",
            "x__latency_changes",
            "x__instructions",
            "x__instruction_tolerance",
            "x__instruction_changes",
            "x__row_changes",
            "xǁGatedǁchange",
            "xǁVerdictǁpassed",
            "xǁVerdictǁinconclusive",
            "xǁGateSettingsǁcheck",
        ),
    ),
    Target(
        "timing",
        "attnbench/timing.py",
        ("tests/test_timing.py",),
        functions=(
            "x_quantile",
            "x_median_ci_ranks",
            "x_median_ci_rel",
            "x_summarize",
            "x_stop_reason",
            "x_calls_for_block",
            "xǁTimingStatsǁ*",
            "xǁTimingBudgetǁproblem",
        ),
    ),
    Target(
        "ort parity",
        "attnbench/backends/ort.py",
        ("tests/backends/test_ort.py",),
        functions=("x_parity_limit", "xǁOrtPreparedǁ_check_parity", "xǁOrtPreparedǁ_reset_parity"),
        # The parity tests that need no export (a stub session feeds _check_parity its outputs): every test that
        # exports takes 10-40 s on the shared VM; those check the same function through a real session.
        keyword="parity and not onnx",
    ),
    Target(
        "memory",
        "attnbench/memory.py",
        ("tests/test_memory.py",),
        functions=("x_peak_of_events", "x__is_cpu_event", "x_cpu_peak_bytes", "x_cuda_peak"),
    ),
    Target(
        "store",
        "attnbench/store.py",
        ("tests/test_store.py",),
        functions=("x__parse", "x__integer", "x__format", "x_csv_text", "x__csv_cells", "x_csv_line", "x__typed"),
    ),
)

#: Functions mutmut cannot test: they run when the module is imported (decorators filling the rule tables),
#: before mutmut switches a mutant on, so every mutant of them "survives". What they build is checked by the
#: tests named (bugs planted by hand in each, at import, fail them: see results/mutation.md).
IMPORT_TIME = {
    "attnbench.counting.rules.x_macs": "tests/counting/test_rules.py::test_an_operator_has_one_rule",
    "attnbench.counting.rules.x_products": "tests/counting/test_rules.py::test_every_rule_is_named_where_it_is_defined",
    "attnbench.counting.rules.x__register": "tests/counting/test_rules.py::test_an_operator_has_one_rule",
    "attnbench.counting.rules.x__present": (
        "tests/counting/test_rules.py::test_attention_kernels_of_some_builds_only_are_counted_where_present"
    ),
    "attnbench.counting.rules.x__names": "tests/counting/test_rules.py::test_op_category",
}

#: Survivors no test can tell from the original, by (function, the mutated line as mutmut shows it): why.
EQUIVALENT: dict[tuple[str, str], str] = {
    (
        "attnbench.counting.rules.x_summed_inputs",
        'mask = _arg(args, kwargs, 10, "output_mask", (True, False, False))',
    ): "only the mask's third entry (the bias gradient) is read: the default's first two are never used",
    (
        "attnbench.counting.rules.x_summed_inputs",
        'mask = _arg(args, kwargs, 10, "output_mask", (False, True, False))',
    ): "only the mask's third entry (the bias gradient) is read: the default's first two are never used",
    **dict.fromkeys(
        [
            (
                "attnbench.counting.rules.x_op_category",
                'base = name.rstrip("_") if (name.endswith("_") and not name.startswith("_")) or True else name',
            ),
            (
                "attnbench.counting.rules.x_op_category",
                'base = name.rstrip("_") if name.endswith("_") or not name.startswith("_") else name',
            ),
            (
                "attnbench.counting.rules.x_op_category",
                'base = name.rstrip("_") if name.endswith("_") and not name.startswith("XX_XX") else name',
            ),
            ("attnbench.counting.rules.x_op_category", "category = _CATEGORY_OF.get(None) or _CATEGORY_OF.get(base)"),
        ],
        "the same category for every aten operator in torch 2.13: none of the 16 whose name starts and ends "
        "with '_' has a categorised stripped name, and the four categorised names ending in '_' (add_, sub_, "
        "zero_, fill_) share their category with their stripped name",
    ),
    (
        "attnbench.counting.rules.x_op_category",
        'base = name.rstrip("XX_XX") if name.endswith("_") and not name.startswith("_") else name',
    ): ("aten's operator names are lower case: stripping 'X' as well as '_' changes none"),
    (
        "attnbench.counting.rules.x_op_category",
        'if getattr(func, "is_view", False) or torch.Tag.inplace_view in tags and torch.Tag.view_copy in tags:',
    ): "no aten operator in torch 2.13 tagged inplace_view, neither a view nor view_copy, gets this far",
    (
        "attnbench.counting.rules.x_op_category",
        'if getattr(func, "is_view", None) or torch.Tag.inplace_view in tags or torch.Tag.view_copy in tags:',
    ): ("None and False are both false"),
    **dict.fromkeys(
        [
            (
                "attnbench.memory.x_cpu_peak_bytes",
                "with captured(), profile(activities=None, profile_memory=True) as prof:",
            ),
            ("attnbench.memory.x_cpu_peak_bytes", "with captured(), profile(profile_memory=True) as prof:"),
        ],
        "the profiler's default activities include the CPU, and only the CPU's memory events are kept",
    ),
    ("attnbench.memory.x_cpu_peak_bytes", 'if e.name() == "[memory]" or _is_cpu_event(e)'): (
        "the profiler's other CPU events (the operators) carry 0 bytes (torch 2.13): they change no running sum; "
        "a CPU case allocates no GPU memory whose events this would add"
    ),
    **dict.fromkeys(
        [
            (
                "attnbench.gate.x__instruction_changes",
                'why = (then if then.instructions is None else now).extra_dict.get("instructions_error", None)',
            ),
            (
                "attnbench.gate.x__instruction_changes",
                'why = (then if then.instructions is None else now).extra_dict.get("instructions_error", )',
            ),
        ],
        "no error recorded prints nothing either way: `why` is only tested for truth, and None and '' are false",
    ),
    **dict.fromkeys(
        [
            (
                "attnbench.counting.params.x_count_params",
                "for qualified, p in module.named_parameters(remove_duplicate=None):",
            ),
            (
                "attnbench.counting.params.x_count_params",
                "for qualified, p in module.named_parameters(remove_duplicate=True):",
            ),
        ],
        "the owner of each Parameter is the first name named_parameters() gives it (setdefault), and that name "
        "is the same with or without the later duplicates: both walk the modules in the same order (None is false)",
    ),
    **dict.fromkeys(
        [
            (
                "attnbench.counting.params.x_count_params",
                'key = qualified.split(".", )[0] if "." in qualified else "(self)"',
            ),
            (
                "attnbench.counting.params.x_count_params",
                'key = qualified.split(".", 2)[0] if "." in qualified else "(self)"',
            ),
        ],
        "only the first piece is kept: it is the same whatever the number of splits",
    ),
    ("attnbench.counting.params.x__owners", 'return [".".join(parts[:i]) for i in range(len(parts))]'): (
        "the extra prefix is '' (the root), which is never a key of by_module_nested: count_params skips it"
    ),
    **dict.fromkeys(
        [
            (
                "attnbench.backends.ort.x_parity_limit",
                "return min(PARITY_ATOL, PARITY_RTOL * scale) if 0 < scale <= 1 else PARITY_ATOL",
            ),
            (
                "attnbench.backends.ort.x_parity_limit",
                "return min(PARITY_ATOL, PARITY_RTOL * scale) if 0 < scale < 2 else PARITY_ATOL",
            ),
        ],
        "PARITY_RTOL equals PARITY_ATOL (1e-4): from |output| 1 up, min(PARITY_ATOL, PARITY_RTOL x scale) is "
        "PARITY_ATOL, so moving the relative range's top from 1 to 1 inclusive or to 2 changes no bound",
    ),
    **dict.fromkeys(
        [
            (
                "attnbench.backends.ort.xǁOrtPreparedǁ_check_parity",
                "diff = float(np.max(np.abs(out.astype(None) - refi.astype(np.float64)))) if out.size else 0.0",
            ),
            (
                "attnbench.backends.ort.xǁOrtPreparedǁ_check_parity",
                "diff = float(np.max(np.abs(out.astype(np.float64) - refi.astype(None)))) if out.size else 0.0",
            ),
        ],
        "numpy reads the dtype None as float64: astype(None) is astype(np.float64)",
    ),
    ("attnbench.backends.ort.xǁOrtPreparedǁ_check_parity", 'diff = float("INF")'): (
        "float() reads 'INF' as 'inf' (case-insensitive): the same infinity"
    ),
    **dict.fromkeys(
        [
            ("attnbench.counting.dispatch.xǁDispatchCounterǁ_credited", "hit = None"),
            ("attnbench.counting.dispatch.xǁDispatchCounterǁ_credited", "hit = self._credit.get(None)"),
            ("attnbench.counting.dispatch.xǁDispatchCounterǁ_credited", "self._credit[stack] = None"),
        ],
        "_credit only caches what a stack gives: a miss computes the same names and top-level key again",
    ),
    **dict.fromkeys(
        [
            (
                "attnbench.counting.dispatch.xǁDispatchCounterǁ_credited",
                'hit = (names, stack[0].split(".", 2)[0] if stack else "(self)")',
            ),
            (
                "attnbench.counting.dispatch.xǁDispatchCounterǁ_credited",
                'hit = (names, stack[0].split(".", None)[0] if stack else "(self)")',
            ),
            (
                "attnbench.counting.dispatch.xǁDispatchCounterǁ_credited",
                'hit = (names, stack[0].split(".", )[0] if stack else "(self)")',
            ),
        ],
        "only the first piece is kept: it is the same whatever the number of splits",
    ),
    **dict.fromkeys(
        [
            (
                "attnbench.counting.dispatch.xǁDispatchCounterǁ_current_stack",
                "return self._claims.get(node, None) if node is not None else ()",
            ),
            (
                "attnbench.counting.dispatch.xǁDispatchCounterǁ_current_stack",
                "return self._claims.get(node, ) if node is not None else ()",
            ),
            (
                "attnbench.counting.dispatch.xǁDispatchCounterǁ_current_stack",
                "return self._claims.get(node, ()) if node is not None else None",
            ),
        ],
        "a stack of None is credited as () is: no submodule, the root's '(self)' (_credited tests only its truth)",
    ),
    (
        "attnbench.counting.dispatch.xǁDispatchCounterǁ_current_stack",
        "return self._claims.get(node, ()) if (node is not None) or True else ()",
    ): ("claim never records None, so looking None up gives the default (), as the else branch does"),
    **dict.fromkeys(
        [
            ("attnbench.counting.dispatch.x__op_name", 'return str(getattr(func, "_overloadpacket", None))'),
            ("attnbench.counting.dispatch.x__op_name", 'return str(getattr(func, "_overloadpacket", ))'),
        ],
        "the dispatcher hands the mode OpOverloads, which all have _overloadpacket: the default is never used",
    ),
    ("attnbench.counting.dispatch.xǁDispatchCounterǁ_track", "self._products.pop(None, None)"): (
        "a dead storage's product entry is never used again: _recall checks that the storage is alive, and a new "
        "product at the same address replaces it; leaving it only keeps a dead entry"
    ),
    **dict.fromkeys(
        [
            ("attnbench.counting.dispatch.xǁDispatchCounterǁ_product", "macs = PRODUCT_RULES[packet](args, None, out)"),
            (
                "attnbench.counting.dispatch.xǁDispatchCounterǁ__torch_dispatch__",
                "self._product(func, name, stack, backward, args, None, out)",
            ),
            (
                "attnbench.counting.dispatch.xǁDispatchCounterǁ__torch_dispatch__",
                "self._follow(func, packet, args, None, out)",
            ),
            ("attnbench.counting.dispatch.xǁDispatchCounterǁ__torch_dispatch__", "macs = rule(args, None, out)"),
            (
                "attnbench.counting.dispatch.xǁDispatchCounterǁ_follow",
                "for t in summed_inputs(packet, args, None, out):",
            ),
        ],
        "the dispatcher passes an operator's keyword-only arguments alone as kwargs (dtype, device, out...): every "
        "operand these read (a product's factors, a MAC rule's operands, native_dropout's p and train, a sum's input, "
        "convolution_backward's output_mask) has no default and comes by position, and the only tensor a kwarg can "
        "hold is an out= one, which is written, never a source",
    ),
    (
        "attnbench.counting.dispatch.xǁDispatchCounterǁ__torch_dispatch__",
        "if rule is None and packet not in PRODUCT_RULES and packet not in OPAQUE and _decomposes(func, args, None):",
    ): (
        "_decomposes reads the device of the first tensor, which comes from args whenever the call has a tensor "
        "operand; it differs only for a composite factory given nothing but an out= tensor, which no module here calls"
    ),
    **dict.fromkeys(
        [
            ("attnbench.counting.dispatch.x__cpu_takes_flash", line)
            for line in (
                'q, k, v, mask = call["query"], call["key"], call["value"], call.get(None)',
                'q, k, v, mask = call["query"], call["key"], call["value"], call.get("XXattn_maskXX")',
                'q, k, v, mask = call["query"], call["key"], call["value"], call.get("ATTN_MASK")',
                "_stand_in(q), _stand_in(k), _stand_in(v), None,",
                "_stand_in(q), _stand_in(k), _stand_in(v), None if (mask is None) or True else _stand_in(mask),",
                'call.get("dropout_p", 0.0), call.get("is_causal", False), scale=None,',
                'call.get("dropout_p", 0.0), scale=call.get("scale"),',
                'call.get("dropout_p", 0.0), call.get("is_causal", False), )  # fmt: skip',
                'call.get("dropout_p", 0.0), call.get(None, False), scale=call.get("scale"),',
                'call.get("dropout_p", 0.0), call.get("XXis_causalXX", False), scale=call.get("scale"),',
                'call.get("dropout_p", 0.0), call.get("IS_CAUSAL", False), scale=call.get("scale"),',
                'call.get("dropout_p", 0.0), call.get("is_causal", True), scale=call.get("scale"),',
                'call.get("dropout_p", 0.0), call.get("is_causal", False), scale=call.get(None),',
                'call.get("dropout_p", 0.0), call.get("is_causal", False), scale=call.get("XXscaleXX"),',
                'call.get("dropout_p", 0.0), call.get("is_causal", False), scale=call.get("SCALE"),',
            )
        ],
        "torch 2.13's CPU choice (torch._fused_sdp_choice) does not read the mask, is_causal or the scale: flash "
        "with no mask, a bool, float, int or half mask, a transposed one, is_causal with and without a mask, a "
        "scale of 0.5 (it reads the dropout, the dimensions and the head sizes). They are passed on for a build "
        "whose choice reads them",
    ),
    **dict.fromkeys(
        [
            ("attnbench.counting.dispatch.x__stand_in", line)
            for line in (
                "row = torch.empty((1,) * (t.dim() - 1) + (t.shape[-1],), dtype=None)",
                "row = torch.empty((1,) * (t.dim() - 1) + (t.shape[-1],), )",
            )
        ],
        "the CPU choice takes flash for float32, float64, float16 and bfloat16 alike (torch 2.13): a float32 "
        "stand-in chooses as the attention's own dtype does",
    ),
    (
        "attnbench.counting.dispatch.x__stand_in",
        "row = torch.empty((1,) * (t.dim() - 2) + (t.shape[-1],), dtype=t.dtype)",
    ): "expand() adds the missing leading dimension: the stand-in has the same shape and strides",
    ("attnbench.counting.dispatch.x__decomposes", "return True"): (
        "an operator without a CompositeImplicitAutograd kernel answers decompose() with NotImplemented, and the "
        "engine then runs it as it would have"
    ),
    **dict.fromkeys(
        [
            ("attnbench.counting.dispatch.x__decomposes", "tensor = next(iter(_tensors((args, kwargs))), )"),
            (
                "attnbench.counting.dispatch.x__decomposes",
                "key = _BACKEND_KEYS.get(tensor.device.type) if (tensor is not None) or True else None",
            ),
        ],
        "they differ only for a composite operator called without a tensor: none of aten's overloads with a "
        "CompositeImplicitAutograd kernel lacks a tensor argument (all checked, torch 2.13)",
    ),
    ("attnbench.counting.dispatch.x__run_train", "counter.exclude(x)"): (
        "the leaf's storage is never an operator's output inside the count: x is its clone, and its gradient gets "
        "a storage of its own"
    ),
    ("attnbench.counting.dispatch.x__run_train", "counter.claim(None, ())  # what the root's own forward built"): (
        "an unclaimed autograd node is credited to () (the root) as a node claimed with () is"
    ),
    ("attnbench.counting.dispatch.x__run_train", "counter.claim(out, None)  # what the root's own forward built"): (
        "a stack of None is credited as () is: no submodule, the root's '(self)' (_credited tests only its truth)"
    ),
    ("attnbench.counting.dispatch.x__report", '-status="ok",'): (
        "the keyword dropped is status='ok', and MacReport's status defaults to 'ok'"
    ),
    ("attnbench.gate.x__latency", "strict: bool = True,"): (
        "the default is never used: _latency's one caller (_row_changes) passes settings.strict"
    ),
}


def busy_ticks() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [float(x) for x in f.readline().split()[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def mutmut_config(target: Target) -> str:
    """The [tool.mutmut] table for one target."""
    tests = list(target.tests) + (["-k", target.keyword] if target.keyword else [])
    lines = [
        "",
        "[tool.mutmut]",
        'source_paths = ["attnbench"]',
        f"only_mutate = [{json.dumps(target.source)}]",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        # -x: a mutant is killed at its first failing test; no cache files in the copied tests.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-q"]',
        # torch is not fork-safe once it has run: fork each mutant from a process that only imported the tests.
        'process_isolation = "forkserver"',
        "timeout_multiplier = 15.0",
    ]
    return "\n".join(lines) + "\n"


def prepare(target: Target) -> Path:
    """Copy the sources and tests into the target's scratch directory (mutmut's results there are kept)."""
    work = workdir(target)
    work.mkdir(parents=True, exist_ok=True)
    for folder in ("attnbench", "tests"):
        shutil.rmtree(work / folder, ignore_errors=True)
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(text + mutmut_config(target))
    return work


def not_killed(target: Target, work: Path) -> list[str]:
    """The target's mutants a previous run left alive or unchecked, by name."""
    meta = work / "mutants" / (target.source + ".meta")
    if not meta.exists():
        return []
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    names = [n for n, code in codes.items() if any(fnmatch.fnmatch(n, p) for p in target.patterns())]
    return [n for n in names if STATUS.get(codes[n], "suspicious") not in KILLED]


def workdir(target: Target) -> Path:
    """The target's scratch copy, where mutmut keeps its results and this script its runs."""
    return SCRATCH / target.name.replace(" ", "-")


def run_target(target: Target, jobs: int, retest: bool, stop_after: float | None = None) -> dict[str, Any]:
    """mutmut run over one target (or, with `retest`, over what it left alive); wall time and load meanwhile.

    With `stop_after` (seconds), mutmut is interrupted then: the mutants it finished keep their results, the
    others stay "not checked", and the run records how many it tested.
    """
    work = prepare(target)
    names = not_killed(target, work) if retest else target.patterns()
    if not names:  # mutmut given no names runs every mutant of the file
        raise SystemExit(f"{target.name}: nothing to test again (no earlier run in {work}, or none left alive)")
    busy0, total0 = busy_ticks()
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *names]
    env = {**os.environ, "PYTHONPATH": ""}
    # A background shell starts its jobs with SIGINT ignored, and mutmut would keep it so: restore the default.
    restore = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    proc = subprocess.Popen(
        cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=restore
    )
    try:
        output, stopped = proc.communicate(timeout=stop_after)[0], False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # mutmut stops its workers and keeps what it has finished
        output, stopped = proc.communicate()[0], True
    wall = time.perf_counter() - started
    busy1, total1 = busy_ticks()
    load = (busy1 - busy0) / max(total1 - total0, 1.0) * (os.cpu_count() or 1)
    if proc.returncode != 0 and not stopped:
        raise SystemExit(f"mutmut failed on {target.name} (exit {proc.returncode}):\n{output[-3000:]}")
    run = {"wall_s": round(wall, 1), "busy_cores": round(load, 2), "jobs": jobs, "date": time.strftime("%F %T")}
    run["tested"] = len(names) if retest else "all"
    if stopped:
        statuses = [m["status"] for m in read_results(target, work, diffs=False)]
        done = len(statuses) - statuses.count("not checked")
        run["tested"] = f"{done} of {len(statuses)} (stopped at the {stop_after:g} s limit)"
    runs_file = work / RUNS
    runs = json.loads(runs_file.read_text()) if retest and runs_file.exists() else []
    runs_file.write_text(json.dumps([*runs, run], indent=1) + "\n")
    return run


def read_results(target: Target, work: Path, diffs: bool = True) -> list[dict[str, Any]]:
    """Every mutant of the target: name, function, status, and (for the ones tested and not killed) its diff."""
    meta = json.loads((work / "mutants" / (target.source + ".meta")).read_text())
    out = []
    for name, code in sorted(meta["exit_code_by_key"].items(), key=lambda kv: natural(kv[0])):
        if not any(fnmatch.fnmatch(name, p) for p in target.patterns()):
            continue
        status = STATUS.get(code, "suspicious")
        row = {"name": name, "function": name.split("__mutmut_")[0], "status": status}
        if diffs and status not in (*KILLED, "not checked"):
            row["diff"] = show(work, name)
        out.append(row)
    return out


def natural(name: str) -> tuple[str, int]:
    """Sort mutants by function, then by number (mutant 10 after mutant 9)."""
    head, _, number = name.rpartition("__mutmut_")
    return head, int(number) if number.isdigit() else 0


def show(work: Path, name: str) -> str:
    """The mutant's diff, as `mutmut show` prints it (its header line dropped)."""
    proc = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("# ")]
    return "\n".join(lines).strip()


def changed_line(diff: str) -> str:
    """The mutated line of a diff ('+' side), stripped: the key of EQUIVALENT."""
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    # A mutant that only drops a line (a keyword argument) is known by that line, marked "-".
    return added[0] if added else "-" + removed[0] if removed else ""


def treatment(row: dict[str, Any]) -> tuple[str, str]:
    """(kind, why) for a mutant that was not killed: import time, equivalent, or a gap still open."""
    if row["function"] in IMPORT_TIME:
        return (
            "import time",
            f"runs at import, before mutmut switches a mutant on; checked by {IMPORT_TIME[row['function']]}",
        )
    if row["status"] == "not checked":
        return "not tested", "the run stopped (at its time limit) before it reached this mutant"
    why = EQUIVALENT.get((row["function"], changed_line(row.get("diff", ""))))
    if why:
        return "equivalent", why
    return "open", "no test catches it yet"


def score(mutants: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and the score: killed / (tested - equivalent - import time)."""
    kinds = [treatment(m)[0] if m["status"] not in KILLED else "killed" for m in mutants]
    killed, equivalent, untestable = kinds.count("killed"), kinds.count("equivalent"), kinds.count("import time")
    testable = len(mutants) - equivalent - untestable - kinds.count("not tested")
    return {
        "mutants": len(mutants),
        "killed": killed,
        "timeouts": sum(m["status"] == "timeout" for m in mutants),
        "equivalent": equivalent,
        "import_time": untestable,
        "open": kinds.count("open"),
        "not_tested": kinds.count("not tested"),
        "score": killed / testable if testable else None,
    }


def versions() -> dict[str, str]:
    """Python, torch, mutmut, pytest."""
    from importlib.metadata import version  # keeps this file importable for --help without the packages

    out = {"python": platform.python_version()}
    for package in ("torch", "mutmut", "pytest", "onnxruntime"):
        try:
            out[package] = version(package)
        except Exception:
            out[package] = "not installed"
    return out


def machine() -> str:
    """CPU model and core count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def tested(run: dict[str, Any]) -> str:
    """What a run tested: every mutant, or (a retest) how many again."""
    n = run.get("tested", "all")
    return f"{n}, {run['jobs']} at a time" if isinstance(n, str) else f"{n} again, {run['jobs']} at a time"


def markdown(report: dict[str, Any]) -> str:
    """results/mutation.md."""
    out = [
        "# Mutation testing: do the tests catch the bugs they guard against?",
        "",
        f"Machine: {report['machine']} (shared with other engineers' test runs). Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + f". Date: {report['date']}.",
        "",
        "Generated by `python benchmarks/mutation.py`; see docs/mutation.md. Score = killed / (mutants tested - "
        "equivalent - import time); a timeout (the tests ran far longer than clean) counts as killed. Load: the "
        "machine's busy cores, averaged over the target's run (all processes, mutmut's included); a target tested "
        "again after tests were added (--retest: only what the previous run left alive) lists each run.",
        "",
        "mutmut 3 does not mutate decorated functions (`@property`, `@functools.lru_cache`): of the functions "
        "listed, `TimingStats`' properties (`noisy`, `precision_met`, ...), `median_ci_ranks`, `Verdict.passed` / "
        "`inconclusive` and `Gated.change` have no mutants; docs/mutation.md says how they were checked instead.",
        "",
        "| target | functions mutated | tests | mutants | killed (timeouts) | equivalent | import time | open | "
        "not tested | score | wall (s) | load (busy cores) |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, t in report["targets"].items():
        s = score(t["mutants"])
        functions = ", ".join(f"`{f}`" for f in t["functions"]) or "all"
        pct = f"{s['score']:.1%}" if s["score"] is not None else "-"
        wall = " + ".join(f"{r['wall_s']} ({tested(r)})" for r in t["runs"])
        load = " / ".join(f"{r['busy_cores'] if r['busy_cores'] is not None else 'not recorded'}" for r in t["runs"])
        tests = ", ".join(t["tests"]) + (f" -k {json.dumps(t['keyword'])}" if t["keyword"] else "")
        out.append(
            f"| {name} | {functions} | {tests} | "
            f"{s['mutants']} | {s['killed']} ({s['timeouts']}) | {s['equivalent']} | {s['import_time']} | "
            f"{s['open']} | {s['not_tested']} | {pct} | {wall} | {load} |"
        )
    missing = [t.name for t in TARGETS if t.name not in report["targets"]]
    if missing:
        out += ["", "Not run this time: " + ", ".join(missing) + "."]
    out += ["", "## Mutants not killed, and why", ""]
    for name, t in report["targets"].items():
        rows = [m for m in t["mutants"] if m["status"] not in (*KILLED, "not checked")]
        out += [f"### {name}: {len(rows)}", ""]
        untested = [m["function"].rpartition(".")[2] for m in t["mutants"] if m["status"] == "not checked"]
        if untested:
            counts = ", ".join(f"`{f}` {untested.count(f)}" for f in dict.fromkeys(untested))
            out += [f"Not tested (the run stopped at its time limit): {len(untested)} ({counts}).", ""]
        for m in rows:
            kind, why = treatment(m)
            out += [f"- `{m['name']}` ({m['status']}; {kind}): {why}", "", "  ```diff"]
            out += [f"  {line}" for line in m.get("diff", "").splitlines()] + ["  ```", ""]
    return "\n".join(out).rstrip() + "\n"


def collect() -> dict[str, Any]:
    """Every target a run has left results for (in its scratch copy): its mutants and its runs."""
    out = {}
    for target in TARGETS:
        work = workdir(target)
        if (work / "mutants" / (target.source + ".meta")).exists() and (work / RUNS).exists():
            runs = json.loads((work / RUNS).read_text())
            out[target.name] = {**dataclasses.asdict(target), "runs": runs, "mutants": read_results(target, work)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help="targets to run: " + ", ".join(t.name for t in TARGETS))
    parser.add_argument("--all", action="store_true", help="run every target")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at a time (default 2)")
    parser.add_argument("--show", action="store_true", help="print the survivors; write no results file")
    parser.add_argument(
        "--retest", action="store_true", help="test again only what the last run left alive (after adding tests)"
    )
    parser.add_argument("--report", action="store_true", help="run nothing: rewrite the results from the last runs")
    parser.add_argument(
        "--stop-after",
        type=float,
        metavar="SECONDS",
        help="stop each target's mutmut run after this long, keeping what it tested (the rest: 'not tested')",
    )
    args = parser.parse_args()
    by_name = {t.name: t for t in TARGETS}
    unknown = [n for n in args.targets if n not in by_name]
    if unknown or not (args.targets or args.all or args.report):
        parser.error(f"name targets from: {', '.join(by_name)} (or --all); unknown: {unknown}")
    chosen = list(by_name.values()) if args.all else [by_name[n] for n in args.targets]
    for target in chosen:
        print(f"{target.name}: mutmut run ...", file=sys.stderr, flush=True)
        run = run_target(target, args.jobs, args.retest, args.stop_after)
        print(f"{target.name}: {score(read_results(target, workdir(target)))}, {run}", file=sys.stderr)
    targets = collect()
    if args.show:
        for name in (t.name for t in chosen):
            for m in targets[name]["mutants"]:
                if m["status"] not in (*KILLED, "not checked"):
                    print(f"{m['name']} ({m['status']}; {treatment(m)[0]})\n{m.get('diff', '')}\n")
        return
    # A target whose scratch copy is gone (scratch/ is disposable) keeps its results from the last report.
    record = ROOT / "results" / "mutation.json"
    kept = json.loads(record.read_text())["targets"] if record.exists() else {}
    targets = {t.name: targets.get(t.name) or kept.get(t.name) for t in TARGETS if t.name in {*targets, *kept}}
    report = {"machine": machine(), "versions": versions(), "date": time.strftime("%Y-%m-%d"), "targets": targets}
    record.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    (ROOT / "results" / "mutation.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
