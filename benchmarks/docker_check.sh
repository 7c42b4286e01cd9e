#!/usr/bin/env bash
# Build the CPU image from the Dockerfile as it stands, run it, and check it against the host.
#
#   benchmarks/docker_check.sh [--record results/docker_check.md] [--refresh-base]
#
# 1. tools:   podman, runc and debootstrap (apt-get installs them when missing; needs root).
# 2. base:    a Debian bookworm minbase made by debootstrap, so no image registry is needed. Cached as a tar
#             in ~/.cache/attnbench/ and as the podman image localhost/attnbench-base:bookworm.
# 3. pip:     this machine's pip configuration (index, find-links folders, file:// indexes, CA bundle,
#             constraints) goes into the build as build secrets and read-only volumes, never into the image.
# 4. build:   `podman build --no-cache --layers=false` with BASE_IMAGE=<the base>: every step runs afresh,
#             and no intermediate image is kept (one layer on top of the base).
# 5. smoke:   the image with no arguments prints the help and exits 0; its torch is a CPU build.
# 6. scan:    the image's files and history hold no pip.conf, mirror path or local CA certificate.
# 7. run:     `attnbench compare` at a small setting in the container, reports to a bind-mounted directory.
# 8. host:    the same command on the host, with this checkout's code.
# 9. valid:   the container's CSV and JSON re-render with `attnbench report`; the Markdown has every module.
# 10. compare: params and MACs (every counter) and status equal the host's, row for row.
# Prints the image size and the build and run times; --record writes them as Markdown.
# Each failure is one line, `docker_check: STEP: why`, and exit 1 (2 for a bad argument).
#
# Environment: PYTHON (default python3, with attnbench's dependencies installed), DEBIAN_MIRROR (default
# http://deb.debian.org/debian), ATTNBENCH_TORCH_INDEX (the TORCH_INDEX build argument; by default empty when
# pip here has its own index set-up, which then serves torch as it does on the host, else the Dockerfile's).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
HELPER="$ROOT/benchmarks/docker_check.py"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/attnbench"
BASE_TAR="$CACHE/debian-bookworm-minbase.tar"
BASE_IMAGE="localhost/attnbench-base:bookworm"
IMAGE="localhost/attnbench:check"
# crun and the systemd cgroup manager fail in sandboxed VMs without systemd; runc with cgroupfs works
# everywhere podman does as root.
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)
# The default nproc limit (32768) is above what such a VM lets a container set; host networking avoids
# needing a bridge (and its iptables) for pip and apt.
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network host)
# A small setting of the main job: every module once, both CPU backends, at most 0.1 s timed per case.
COMPARE=(compare --all --dim 64 --res 16 --backend cpu --backend ort --max-run-time 0.1 --quiet)

record=""
refresh_base=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --record) [[ $# -ge 2 ]] || { echo "docker_check: error: --record needs a file" >&2; exit 2; }
                  record="$(realpath -m "$2")"; shift 2 ;;
        --refresh-base) refresh_base=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "docker_check: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

work="$(mktemp -d "${TMPDIR:-/tmp}/attnbench-docker-check.XXXXXX")"
mounted=""
keep_logs=0  # set when a failure line names a log in $work
cleanup() {
    [[ -n "$mounted" ]] && "${PODMAN[@]}" image unmount "$IMAGE" >/dev/null 2>&1
    [[ $keep_logs -eq 1 ]] || rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "docker_check: $1: $2" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# The last non-empty line of a log, less the helper's own "docker_check: STEP: " prefix.
last_line() { grep -v '^[[:space:]]*$' "$1" | tail -n 1 | sed 's/^docker_check: [a-z-]*: //' | cut -c1-300; }
# step NAME LOG CMD...: run CMD with its output in LOG; on failure, one line with the log's last line.
step() {
    local name="$1" log="$2"; shift 2
    local rc=0
    "$@" >"$log" 2>&1 || rc=$?
    [[ $rc -eq 0 ]] || { keep_logs=1; fail "$name" "$(last_line "$log") (exit $rc; log: $log)"; }
}

# ---- 1. tools
t_start="$(now)"
t0="$t_start"
tools_how="present"
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [[ ${#missing[@]} -gt 0 ]]; then
    [[ $(id -u) -eq 0 ]] || fail tools "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
    command -v apt-get >/dev/null || fail tools "missing ${missing[*]} and no apt-get to install them"
    step tools "$work/apt-update.log" apt-get update -q
    step tools "$work/apt-install.log" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends podman runc debootstrap
    tools_how="installed by apt-get: ${missing[*]}"
fi
t_tools="$(since "$t0")"
command -v "$PY" >/dev/null || fail tools "no $PY (set PYTHON to a python with attnbench's dependencies)"

# ---- 2. base
t0="$(now)"
if [[ $refresh_base -eq 1 ]]; then
    rm -f "$BASE_TAR"
    "${PODMAN[@]}" image rm -f "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    base_how="reused"
else
    if [[ -s "$BASE_TAR" ]]; then
        base_how="imported from $BASE_TAR"
    else
        base_how="made by debootstrap from $MIRROR"
        step base "$work/debootstrap.log" debootstrap --variant=minbase bookworm "$work/rootfs" "$MIRROR"
        # Package lists and downloaded .debs only make the base bigger; a build runs apt-get update itself.
        rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/archives/"*.deb
        mkdir -p "$CACHE"
        step base "$work/tar.log" tar --numeric-owner -C "$work/rootfs" -cf "$BASE_TAR.tmp" .
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$work/rootfs"
    fi
    step base "$work/import.log" "${PODMAN[@]}" import "$BASE_TAR" "$BASE_IMAGE"
fi
t_base="$(since "$t0")"

# ---- 3. pip: the host's configuration, as build secrets and read-only volumes
torch_arg=()
[[ -n "${ATTNBENCH_TORCH_INDEX+set}" ]] && torch_arg=(--torch-index "$ATTNBENCH_TORCH_INDEX")
"$PY" "$HELPER" pip-context "$work/pip" "${torch_arg[@]}" >"$work/pip-args" 2>"$work/pip.log" \
    || fail pip "$(last_line "$work/pip.log")"
mapfile -t pip_args <"$work/pip-args"

# ---- 4. build
old_id="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
t0="$(now)"
step build "$work/build.log" "${PODMAN[@]}" build --no-cache --layers=false --format docker "${LIMITS[@]}" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" "${pip_args[@]}" -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
t_build="$(since "$t0")"
new_id="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
    "${PODMAN[@]}" image rm "$old_id" >/dev/null 2>&1 || true  # the previous check's image, now untagged
fi
size="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")"

# ---- 5. smoke: `docker run IMAGE` prints the help and exits 0; torch is the CPU build
run=("${PODMAN[@]}" run --rm "${LIMITS[@]}" --health-cmd none)  # no systemd here to host a health timer
step smoke "$work/help.log" "${run[@]}" "$IMAGE"
grep -q '^Usage: attnbench' "$work/help.log" || fail smoke "no arguments did not print the help: $(last_line "$work/help.log")"
step smoke "$work/torch.log" "${run[@]}" --entrypoint python3 "$IMAGE" -c \
    'import torch; assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build"; print(torch.__version__)'

# ---- 6. scan: nothing of the host's pip set-up in the image
"${PODMAN[@]}" history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" >"$work/history.txt" 2>&1 \
    || fail scan "podman history: $(last_line "$work/history.txt")"
rootfs="$("${PODMAN[@]}" image mount "$IMAGE" 2>"$work/mount.log")" || fail scan "podman image mount: $(last_line "$work/mount.log")"
mounted=1
"$PY" "$HELPER" scan "$rootfs" "$work/history.txt" "$work/pip" 2>"$work/scan.log" || fail scan "$(last_line "$work/scan.log")"
"${PODMAN[@]}" image unmount "$IMAGE" >/dev/null 2>&1 && mounted=""

# ---- 7. run in the container, reports to a bind mount
mkdir -p "$work/container" "$work/host"
out_args=(-o /out/r.csv -o /out/r.json -o /out/r.md)
t0="$(now)"
step run "$work/run.log" "${run[@]}" --volume "$work/container:/out" "$IMAGE" "${COMPARE[@]}" "${out_args[@]}"
t_run="$(since "$t0")"

# ---- 8. the same on the host, with this checkout's code
t0="$(now)"
step host "$work/host.log" env PYTHONPATH="$ROOT" "$PY" -m attnbench.cli "${COMPARE[@]}" \
    -o "$work/host/r.csv" -o "$work/host/r.json" -o "$work/host/r.md"
t_host="$(since "$t0")"

# ---- 9. the container's reports are valid: they re-render, and the Markdown names every module
for suffix in csv json; do
    step valid "$work/valid-$suffix.log" env PYTHONPATH="$ROOT" "$PY" -m attnbench.cli report \
        "$work/container/r.$suffix" -o "$work/valid-$suffix.md"
done
for module in $(PYTHONPATH="$ROOT" "$PY" -c 'import attnbench; print(" ".join(attnbench.list_modules()))'); do
    grep -qE "^\|[^|]*\b$module\b" "$work/container/r.md" || fail valid "the container's r.md has no row for $module"
done

# ---- 10. compare, print the figures, record
step compare "$work/compare.log" "$PY" "$HELPER" compare "$work/host/r.csv" "$work/container/r.csv" "$work/container/r.json"
record_arg=()
[[ -n "$record" ]] && record_arg=(--record "$record")
"$PY" "$HELPER" report --host-dir "$work/host" --container-dir "$work/container" --context-dir "$work/pip" \
    --base "$BASE_IMAGE" --base-how "$base_how" --image "$IMAGE" --image-size "$size" \
    --command "attnbench ${COMPARE[*]}" --tools-how "$tools_how" --t-tools "$t_tools" --t-base "$t_base" --t-build "$t_build" --t-run "$t_run" \
    --t-host "$t_host" --t-total "$(since "$t_start")" "${record_arg[@]}" 2>"$work/report.log" || fail report "$(last_line "$work/report.log")"
echo "docker_check: ok"
