#!/usr/bin/env bash
# Check attnbench's CUDA and ORT-CUDA backends on a machine with an NVIDIA GPU, in one command, in at most 6 minutes.
#
# Made for the lent GPU machine (docs/gpu-check.md): its python3 already holds a CUDA torch and it reaches no
# network, so nothing is installed from one. What that python3 lacks (fvcore, ultralytics-thop and their small
# pure-Python dependencies) travels as wheels that --prepare downloads beforehand, where there is network, into
# .gpu-wheels/ (git ignores it; the device tool carries it). Within its budget it:
#   0. checks that python3 has a CUDA torch, installs the carried wheels into a scratch folder (pip --no-index);
#   1. runs the CUDA tests (pytest -m cuda);
#   2. checks CUDA timing against torch.utils.benchmark (within 3%) and CUDA peak memory against
#      torch.cuda.max_memory_allocated (exactly): benchmarks/gpu_check.py;
#   3. runs `attnbench compare --all` on cuda and ort-cuda in float32 and on cuda in bfloat16, infer and train;
#   4. merges them into results/compare-cuda.{csv,md,json} with plots in results/plots-cuda/;
#   5. writes results/gpu_check.md (each step's status and time, rows per backend, the checks, and what it could
#      not check, e.g. ort-cuda without onnxruntime-gpu), then one archive of the results and every log:
#      $OUT/gpu_check.tar.gz when OUT is set (the device tool's output folder), else DIR/gpu_check.tar.gz.
#
# usage: benchmarks/gpu_check.sh [--out DIR] [--budget SECONDS] [--prepare] [--dry-run] [--help]
#   --out DIR         where the results go (default: results)
#   --budget SECONDS  time for the steps (default and most: 350, the sum of their limits, so that the whole
#                     check ends within 6 minutes); a step that would start with < 10 s left is skipped, and
#                     each step stops at its own limit
#   --prepare         download the wheels to carry into .gpu-wheels/ (needs pip and network; run it here)
#   --dry-run         print the plan for a machine whose python3 has a CUDA torch, and run nothing
# Environment: PYTHON (default python3).
# Exit codes: 0 every step passed, or there is no GPU here (one line on stderr says so; nothing is written);
#             1 a step failed, or python3 has no CUDA torch (the summary and the step's log say why);
#             2 bad arguments.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PROG="gpu_check.sh"
die() { echo "$PROG: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; }

# What the lent machine's python3 lacks (its package list: /work/.library/device/KINDS.md), pinned to the versions
# attnbench is tested with. All pure Python (py3-none-any), under 1 MiB together.
CARRY=(fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor==3.3.0 ultralytics-thop==2.2.3)
WHEELS=.gpu-wheels
# Each step's limit in seconds, in order; they add up to the default budget, which leaves 10 s of the 6 minutes
# for what runs around the steps (nvidia-smi, the archive).
STEPS=(setup cuda-tests checks compare-fp32 compare-bf16 merge summary)
declare -A LIMIT=([setup]=20 [cuda-tests]=45 [checks]=45 [compare-fp32]=130 [compare-bf16]=70 [merge]=25
    [summary]=15)
MAX_BUDGET=350

out=results
budget=$MAX_BUDGET
dry=0
prepare=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
        --budget)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--budget needs a whole number of seconds > 0, got '${2:-}'"
            [ "$2" -le "$MAX_BUDGET" ] || die "--budget $2: at most $MAX_BUDGET s, so that a second try fits"
            budget=$2; shift 2 ;;
        --dry-run) dry=1; shift ;;
        --prepare) prepare=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ -d "$out" ] || die "--out $out: no such directory"

PY=${PYTHON:-python3}

# ---------------------------------------------------------------- --prepare: the wheels to carry
if [ "$prepare" -eq 1 ]; then
    mkdir -p "$WHEELS" || exit 1
    # pip wheel takes a published wheel as it is and builds the two that PyPI has as sources only (fvcore, iopath).
    "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "${CARRY[@]}" || { echo "$PROG: error: pip wheel failed" >&2; exit 1; }
    echo "$PROG: carried wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)):"
    ls -1 "$WHEELS"
    exit 0
fi

# ---------------------------------------------------------------- the plan
total=0
for step in "${STEPS[@]}"; do total=$((total + LIMIT[$step])); done
[ "$total" -le "$MAX_BUDGET" ] || die "the step limits add up to $total s, over $MAX_BUDGET s"
attnbench=("$PY" -m attnbench.cli)
# Short timing floors and budgets and a per-case limit keep 30 geometries x modes x backends inside the steps'
# limits; the attnbench counter alone (fvcore and thop count on the CPU and were checked there).
common=(--all --warmup 0.05 --min-run-time 0.05 --max-run-time 0.2 --time-limit 30 --counters attnbench --quiet
    --mode infer --mode train)

if [ "$dry" -eq 1 ]; then
    work="${TMPDIR:-/tmp}/gpu_check.XXXXXX"  # not created: nothing runs
    echo "$PROG plan, for a machine whose $PY already has a CUDA torch (a dry run: nothing runs)"
    echo "install from the network: none; torch: $PY's own"
    present=()
    for spec in "${CARRY[@]}"; do
        name=${spec%%==*}
        ls "$WHEELS"/"${name//-/_}"-*.whl >/dev/null 2>&1 && present+=("$name")
    done
    echo "carried wheels ($WHEELS/, made by --prepare; ${#present[@]} of ${#CARRY[@]} there): ${CARRY[*]}"
    printf 'step limits:'
    for step in "${STEPS[@]}"; do printf ' %s %s s,' "$step" "${LIMIT[$step]}"; done
    printf ' %s s in all (budget %s s; with the GPU check and the archive around them, at most 360 s)\n' "$total" \
        "$budget"
else
    # ------------------------------------------------------------ is there a GPU?
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
    work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
fi
steps="$work/steps.tsv"
logs="$work/logs"
# This checkout's attnbench first, whatever else the environment has; then the carried wheels.
site="$work/site"
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
[ "$dry" -eq 1 ] || { : >"$steps"; mkdir -p "$logs"; }
start=$SECONDS
deadline=$((start + budget))
failed=()

# run_step NAME COMMAND...: run with the step's limit (SIGINT first: attnbench keeps the rows it finished).
run_step() {
    local name=$1 limit=${LIMIT[$1]}
    shift
    if [ "$dry" -eq 1 ]; then
        printf '%s (%s s):' "$name" "$limit"
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
    local began=$SECONDS rc status
    timeout -s INT -k 5 "$((limit - 5 > 1 ? limit - 5 : 1))" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=pass ;;
        124 | 130 | 137) status="timeout after ${limit} s" ;;
        *) status="FAIL (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || failed+=("$name")
    local note
    note=$(grep -v '^[[:space:]]*$' "$logs/$name.log" | tail -n 1 | cut -c1-200 | tr '\t|' '  ')
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - began))" "$note" >>"$steps"
    return "$rc"
}

# setup: python3 must hold a CUDA torch (none is installed); the carried wheels go to a scratch folder.
if run_step setup "$PY" benchmarks/gpu_check.py setup --wheels "$WHEELS" --site "$site"; then
    # Only the files that hold CUDA tests: collecting the whole suite would take a third of the step.
    mapfile -t cuda_files < <(grep -rlE --include='*.py' '^@pytest\.mark\.cuda\b' tests | sort)
    run_step cuda-tests "$PY" -m pytest -q -m cuda -p no:cacheprovider "${cuda_files[@]}"
    run_step checks "$PY" benchmarks/gpu_check.py check --out "$out/gpu_check.json"
    run_step compare-fp32 "${attnbench[@]}" compare "${common[@]}" --backend cuda --backend ort-cuda \
        --dtype float32 -o "$work/fp32.csv"
    run_step compare-bf16 "${attnbench[@]}" compare "${common[@]}" --backend cuda --dtype bfloat16 \
        -o "$work/bf16.csv"
    parts=()
    for part in "$work/fp32.csv" "$work/bf16.csv"; do
        if [ "$dry" -eq 1 ] || [ -s "$part" ]; then parts+=("$part"); fi
    done
    if [ "${#parts[@]}" -gt 0 ]; then
        run_step merge "${attnbench[@]}" report "${parts[@]}" -o "$out/compare-cuda.csv" \
            -o "$out/compare-cuda.md" -o "$out/compare-cuda.json" --plots "$out/plots-cuda"
    fi
fi
run_step summary "$PY" benchmarks/gpu_check.py summary --steps "$steps" --report "$out/compare-cuda.csv" \
    --checks "$out/gpu_check.json" --out "$out/gpu_check.md"
if [ "$dry" -eq 1 ]; then
    echo "then: one archive of $out/gpu_check.md, gpu_check.json, compare-cuda.*, plots-cuda/ and every step's log:" \
        "\$OUT/gpu_check.tar.gz when OUT is set, else $out/gpu_check.tar.gz"
    exit 0
fi

# ---------------------------------------------------------------- one archive of results and logs
dest=${OUT:-$out}
mkdir -p "$work/gpu_check" && cp -r "$logs" "$steps" "$work/gpu_check/"
for f in gpu_check.md gpu_check.json compare-cuda.csv compare-cuda.csv.meta.json compare-cuda.md compare-cuda.json \
    plots-cuda; do
    [ -e "$out/$f" ] && cp -r "$out/$f" "$work/gpu_check/"
done
tar -czf "$dest/gpu_check.tar.gz" -C "$work" gpu_check && echo "$PROG: archive: $dest/gpu_check.tar.gz" >&2
[ -s "$out/gpu_check.md" ] && cat "$out/gpu_check.md"
echo "$PROG: $((SECONDS - start)) s; logs in $logs" >&2
if [ "${#failed[@]}" -gt 0 ]; then
    echo "$PROG: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "$PROG: passed" >&2
exit 0
