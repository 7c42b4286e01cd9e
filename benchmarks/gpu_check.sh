#!/usr/bin/env bash
# Check attnbench's CUDA and ORT-CUDA backends on a machine with an NVIDIA GPU, in one command.
#
# It installs what is missing (into .venv-gpu, which sees the system's packages), then within a budget of
# 8 minutes:
#   1. runs the CUDA tests (pytest -m cuda);
#   2. checks CUDA timing against torch.utils.benchmark (within 3%) and CUDA peak memory against
#      torch.cuda.max_memory_allocated (exactly): benchmarks/gpu_check.py, figures in results/gpu_check.json;
#   3. runs `attnbench compare --all` on cuda and ort-cuda in float32, and on cuda in bfloat16 (ONNX Runtime
#      runs float32 only), in infer and train modes when this attnbench has --mode;
#   4. merges both runs into results/compare-cuda.{csv,md,json}, plots in results/plots-cuda/;
#   5. writes results/gpu_check.md: each step's status and time, rows per backend and dtype, the checks.
#
# usage: benchmarks/gpu_check.sh [--out DIR] [--no-install] [--budget SECONDS] [--dry-run] [--help]
#   --out DIR         where the results go (default: results)
#   --no-install      use $PYTHON as it is
#   --budget SECONDS  time for steps 1-4 (default: 480); a step that would start with < 10 s left is skipped
#   --dry-run         print each step's command and run nothing (no GPU needed)
# Environment: PYTHON (default python3), TORCH_VERSION (2.13.0), TORCH_INDEX (the PyTorch cu128 wheel index).
# Exit codes: 0 every step passed, or there is no GPU here (one line on stderr says so; nothing is written);
#             1 a step failed (the summary and the step's log say why); 2 bad arguments.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PROG="gpu_check.sh"
die() { echo "$PROG: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; }

out=results
install=1
budget=480
dry=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
        --no-install) install=0; shift ;;
        --budget)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--budget needs a whole number of seconds > 0, got '${2:-}'"
            budget=$2; shift 2 ;;
        --dry-run) dry=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -d "$out" ] || die "--out $out: no such directory"

PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
# This checkout's attnbench, whatever else the environment has installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# ---------------------------------------------------------------- is there a GPU?
if [ "$dry" -eq 0 ]; then
    gpu=""
    if command -v nvidia-smi >/dev/null 2>&1; then
        gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
        why="nvidia-smi lists no GPU"
    else
        why="nvidia-smi not found"
    fi
    if [ -z "$gpu" ]; then
        echo "$PROG: skipped: no CUDA GPU on this machine ($why); nothing checked, nothing written" >&2
        exit 0
    fi
    echo "$PROG: GPU: $gpu" >&2
fi

# ---------------------------------------------------------------- install what is missing
has() { "$PY" -c "$1" >/dev/null 2>&1; }
CUDA_TORCH='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
DEPS='import typer, rich, pandas, onnx, onnxruntime, onnxscript, fvcore, thop, matplotlib, pytest, hypothesis'
ORT_CUDA='import sys, onnxruntime as o; sys.exit(0 if "CUDAExecutionProvider" in o.get_available_providers() else 1)'

install_missing() {
    local venv=1
    if [ -x .venv-gpu/bin/python ] || "$PY" -m venv --system-site-packages .venv-gpu >/dev/null 2>&1; then
        PY=.venv-gpu/bin/python
    else
        echo "$PROG: no venv module for $PY: installing what is missing into it directly" >&2
        venv=0
    fi
    if ! has "$CUDA_TORCH"; then
        # --ignore-installed: a CPU build outside the venv (2.13.0+cpu) would otherwise satisfy torch==2.13.0.
        "$PY" -m pip install -q --ignore-installed "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX" || return 1
        has "$CUDA_TORCH" || { echo "$PROG: torch $TORCH_VERSION from $TORCH_INDEX sees no GPU" >&2; return 1; }
    fi
    has "$DEPS" || "$PY" -m pip install -q -e ".[dev]" || return 1
    if ! has "$ORT_CUDA"; then
        if [ "$venv" -eq 1 ]; then
            # onnxruntime and onnxruntime-gpu are one import package: the CPU build goes first (in the venv only).
            "$PY" -m pip uninstall -q -y onnxruntime >/dev/null 2>&1
            "$PY" -m pip install -q onnxruntime-gpu || echo "$PROG: onnxruntime-gpu did not install" >&2
        fi
        has "$ORT_CUDA" || echo "$PROG: no CUDAExecutionProvider: ort-cuda rows will be skipped" >&2
    fi
}

if [ "$dry" -eq 0 ]; then
    started=$SECONDS
    if [ "$install" -eq 1 ]; then
        install_missing || { echo "$PROG: error: installing failed (see above)" >&2; exit 1; }
    fi
    has "$CUDA_TORCH" || { echo "$PROG: error: $PY: torch cannot use the GPU that nvidia-smi lists" >&2; exit 1; }
    echo "$PROG: environment ready in $((SECONDS - started)) s ($PY)" >&2
fi

# ---------------------------------------------------------------- the steps
if [ "$dry" -eq 1 ]; then
    work="${TMPDIR:-/tmp}/gpu_check.XXXXXX"  # not created: nothing runs
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
fi
steps="$work/steps.tsv"
[ "$dry" -eq 1 ] || : >"$steps"
deadline=$((SECONDS + budget))
failed=()

# run_step NAME LIMIT_S COMMAND...: run with a time limit (SIGINT first: attnbench keeps the rows it finished).
run_step() {
    local name=$1 limit=$2
    shift 2
    if [ "$dry" -eq 1 ]; then
        printf '%s:' "$name"
        printf ' %q' "$@"
        printf '\n'
        return 0
    fi
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 10 ]; then
        printf '%s\tskipped\t0\tout of time (budget %s s)\n' "$name" "$budget" >>"$steps"
        failed+=("$name")
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "$PROG: $name (up to ${limit} s)" >&2
    local start=$SECONDS rc status
    timeout -s INT -k 15 "$limit" "$@" >"$work/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=pass ;;
        124 | 130 | 137) status="timeout after ${limit} s" ;;
        *) status="FAIL (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || failed+=("$name")
    local note
    note=$(grep -v '^[[:space:]]*$' "$work/$name.log" | tail -n 1 | cut -c1-200 | tr '\t' ' ')
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$note" >>"$steps"
    return "$rc"
}

attnbench=("$PY" -m attnbench.cli)
mode=()
if "${attnbench[@]}" compare --help 2>/dev/null | grep -q -- '--mode'; then
    mode=(--mode infer --mode train)
fi
# Short timing floors and a per-case limit keep 30 geometries x backends x dtypes x modes inside the budget;
# the attnbench counter alone (fvcore and thop count on the CPU and were checked there).
common=(--all --min-run-time 0.1 --time-limit 60 --counters attnbench --quiet "${mode[@]}")

run_step cuda-tests 90 "$PY" -m pytest -q -m cuda -p no:cacheprovider
run_step checks 60 "$PY" benchmarks/gpu_check.py check --out "$out/gpu_check.json"
run_step compare-fp32 190 "${attnbench[@]}" compare "${common[@]}" --backend cuda --backend ort-cuda \
    --dtype float32 -o "$work/fp32.csv"
run_step compare-bf16 100 "${attnbench[@]}" compare "${common[@]}" --backend cuda --dtype bfloat16 \
    -o "$work/bf16.csv"
parts=()
for part in "$work/fp32.csv" "$work/bf16.csv"; do
    [ "$dry" -eq 1 ] || [ -s "$part" ] && parts+=("$part")
done
if [ "${#parts[@]}" -gt 0 ]; then
    run_step merge 40 "${attnbench[@]}" report "${parts[@]}" -o "$out/compare-cuda.csv" \
        -o "$out/compare-cuda.md" -o "$out/compare-cuda.json" --plots "$out/plots-cuda"
fi
[ "$dry" -eq 1 ] && exit 0

"$PY" benchmarks/gpu_check.py summary --steps "$steps" --report "$out/compare-cuda.csv" \
    --checks "$out/gpu_check.json" --out "$out/gpu_check.md"
echo "$PROG: wrote $out/gpu_check.md; step logs in $work" >&2
if [ "${#failed[@]}" -gt 0 ]; then
    echo "$PROG: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "$PROG: passed" >&2
exit 0
