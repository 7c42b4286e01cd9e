"""The logic behind benchmarks/docker_check.sh: pass the host's pip set-up into a build, compare, scan, record.

Subcommands (the shell script calls them; each failure is one line on stderr and exit 1):
- `pip-context DIR`: read this machine's pip configuration (`pip config list`, PIP_* variables included) and
  write DIR/pip.conf with container-side paths, plus DIR/context.json. Prints the `podman build` arguments
  that pass it in, one per line: the config and the CA bundle as build secrets, local wheel folders and
  file:// indexes as read-only volumes under /mnt. Secrets and volumes exist only while a RUN step runs.
- `compare HOST_CSV CONTAINER_CSV CONTAINER_JSON`: the container's params and MACs equal the host's, row for row.
- `scan ROOTFS HISTORY DIR`: the built image holds no pip.conf, no mirror path and no local CA certificate.
- `report ...`: the figures, printed, and optionally recorded as Markdown (results/docker_check.md).
pip-context and scan use the standard library only; compare and report read the reports with attnbench's own
loader, from this checkout (the host run uses it too).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"

# ---------------------------------------------------------------- the host's pip configuration

#: Options that say where packages come from and how to reach it; the rest (user, target, cache-dir, log...)
#: would change the image itself or point at host paths, so they stay behind and are listed as dropped.
PASSED_KEYS = (
    "index-url",
    "extra-index-url",
    "find-links",
    "no-index",
    "trusted-host",
    "proxy",
    "timeout",
    "default-timeout",
    "retries",
    "constraint",
    "cert",
    "client-cert",
    "only-binary",
    "prefer-binary",
)
#: Keys whose presence means the host does not use pip's defaults to find packages.
INDEX_KEYS = ("index-url", "extra-index-url", "find-links", "no-index")
#: Where the context directory is mounted in a build step: it exists in every Debian/Ubuntu base, so the
#: mount leaves nothing behind (podman creates, and keeps, a missing mount point).
MOUNT_ROOT = "/mnt"
#: Build secret ids the Dockerfile reads (/run/secrets/<id>).
SECRET_CONF = "pip.conf"
SECRET_CA = "pip-ca"
#: pip's sections that apply to `pip install`, lowest precedence first; PIP_* variables (":env:") win.
SECTIONS = ("global", "install", ":env:")
CONFIG_LINE = re.compile(r"^(?P<section>:env:|[^.]+)\.(?P<key>[^=]+)=(?P<value>.*)$")


class CheckError(Exception):
    """A step of the check failed; the message is the one line the user sees."""


@dataclass
class PipContext:
    """What a build needs of the host's pip set-up, with container-side paths."""

    conf: dict[str, str] = field(default_factory=dict)  # pip.conf [global] as the build sees it
    mounts: dict[str, str] = field(default_factory=dict)  # host directory -> container directory
    files: dict[str, str] = field(default_factory=dict)  # host file -> name inside the context directory
    ca: str | None = None  # host CA bundle, passed as the pip-ca secret
    dropped: list[str] = field(default_factory=list)  # options not passed, with the reason
    torch_index: str | None = None  # the TORCH_INDEX build argument; None keeps the Dockerfile's default


def parse_config_list(text: str) -> dict[str, str]:
    """`pip config list` output -> the options `pip install` sees (PIP_* over [install] over [global])."""
    by_section: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        match = CONFIG_LINE.match(line.strip())
        if not match:
            continue
        try:
            value = ast.literal_eval(match["value"])  # pip prints values with repr()
        except (ValueError, SyntaxError):
            value = match["value"].strip("'\"")
        key = match["key"].strip().lower().replace("_", "-")
        by_section.setdefault(match["section"], {})[key] = str(value)
    merged: dict[str, str] = {}
    for section in SECTIONS:
        merged.update(by_section.get(section, {}))
    return merged


def _local_path(item: str, *, bare_paths: bool) -> Path | None:
    """The host path behind a file:// URL (or a bare path, where pip accepts one); None for remote URLs."""
    if item.startswith("file:"):
        return Path(unquote(urlparse(item).path))
    if "://" in item or not bare_paths:
        return None
    return Path(item).expanduser().absolute()


def _check_mountable(path: Path) -> None:
    if any(ch in str(path) for ch in ":,"):
        raise CheckError(f"pip-context: {path}: a ':' or ',' in a path cannot be passed as a podman volume")


def _mount(ctx: PipContext, host_dir: Path, kind: str) -> str:
    """The container directory that shows `host_dir` (one mount per host directory)."""
    _check_mountable(host_dir)
    key = str(host_dir)
    if key not in ctx.mounts:
        ctx.mounts[key] = (
            f"{MOUNT_ROOT}/{kind}-{sum(v.startswith(f'{MOUNT_ROOT}/{kind}-') for v in ctx.mounts.values()) + 1}"
        )
    return ctx.mounts[key]


def _index_item(ctx: PipContext, item: str) -> str | None:
    """An index URL as the build sees it: a file:// index is mounted from its parent (PEP 503 files sit beside
    `simple/`, reached by relative links), so `file:///opt/pypi/simple` becomes `file:///mnt/index-1/simple`."""
    path = _local_path(item, bare_paths=False)
    if path is None:
        return item
    if not path.is_dir():
        ctx.dropped.append(f"index {item} (not a directory here)")
        return None
    parent = path.parent if path.parent != path.parent.parent else path
    inside = _mount(ctx, parent, "index")
    rel = path.relative_to(parent).as_posix()
    return f"file://{inside}/{rel}" if rel != "." else f"file://{inside}"


def _find_links_item(ctx: PipContext, item: str) -> str | None:
    """A find-links entry as the build sees it: a local folder is mounted; a local file through its folder."""
    path = _local_path(item, bare_paths=True)
    if path is None:
        return item
    if path.is_dir():
        return _mount(ctx, path, "find-links")
    if path.is_file():
        return f"{_mount(ctx, path.parent, 'find-links')}/{path.name}"
    ctx.dropped.append(f"find-links {item} (not found here)")
    return None


def _file_item(ctx: PipContext, key: str, item: str) -> str | None:
    """A small local file (constraints, client certificate): copied into the context directory."""
    path = _local_path(item, bare_paths=True)
    if path is None:
        return item
    if not path.is_file():
        ctx.dropped.append(f"{key} {item} (not a file here)")
        return None
    name = f"{key}-{len(ctx.files) + 1}{path.suffix}"
    ctx.files[str(path)] = name
    return f"{MOUNT_ROOT}/{name}"


def plan_context(config: dict[str, str], torch_index: str | None = None) -> PipContext:
    """Translate the host's pip options into what a build step sees; host paths become mounts under /mnt.

    torch comes from `torch_index` when given; else from the host's own index set-up when it has one (a
    mirror serves the host the CPU wheel, as on the project's machines); else from the Dockerfile's default.
    """
    ctx = PipContext(torch_index=torch_index)
    for key, value in config.items():
        if key not in PASSED_KEYS:
            ctx.dropped.append(f"{key} (does not say where packages come from)")
            continue
        if key == "cert":
            ca = Path(value).expanduser()
            if not ca.is_file():
                raise CheckError(f"pip-context: cert {value}: not a file; pass a CA bundle file")
            ctx.ca = str(ca.absolute())
            continue
        items = value.split()
        if key in ("index-url", "extra-index-url"):
            moved = [_index_item(ctx, item) for item in items]
        elif key == "find-links":
            moved = [_find_links_item(ctx, item) for item in items]
        elif key in ("constraint", "client-cert"):
            moved = [_file_item(ctx, key, item) for item in items]
        else:
            moved = items or [value]
        kept = [item for item in moved if item is not None]
        if kept:
            ctx.conf[key] = " ".join(kept)
    if torch_index is None and any(key in ctx.conf for key in INDEX_KEYS):
        ctx.torch_index = ""
    return ctx


def build_args(ctx: PipContext, directory: Path) -> list[str]:
    """The `podman build` arguments that pass `ctx` in (written to `directory`) for the build steps only."""
    args = [] if ctx.torch_index is None else [f"--build-arg=TORCH_INDEX={ctx.torch_index}"]
    if ctx.conf:
        args.append(f"--secret=id={SECRET_CONF},src={directory / 'pip.conf'}")
    if ctx.ca:
        args.append(f"--secret=id={SECRET_CA},src={ctx.ca}")
    if ctx.mounts or ctx.files:
        # The context first, then the folders inside it: their mount points already exist in the
        # context directory, so nothing is created in the image.
        args.append(f"--volume={directory}:{MOUNT_ROOT}:ro")
        args += [f"--volume={host}:{inside}:ro" for host, inside in ctx.mounts.items()]
    return args


def write_context(ctx: PipContext, directory: Path) -> None:
    """Write pip.conf, the copied files, the mount points and context.json into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)  # a client certificate or a proxy password may be in here
    lines = ["[global]", *(f"{key} = {value}" for key, value in ctx.conf.items())]
    (directory / "pip.conf").write_text("\n".join(lines) + "\n")
    for host, name in ctx.files.items():
        shutil.copyfile(host, directory / name)
    for inside in ctx.mounts.values():
        (directory / Path(inside).relative_to(MOUNT_ROOT)).mkdir(exist_ok=True)
    (directory / "context.json").write_text(json.dumps(asdict(ctx), indent=1) + "\n")


def host_pip_config(python: str) -> dict[str, str]:
    """The host's effective `pip install` options, from the same python that runs the host side."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CheckError(f"pip-context: `{python} -m pip config list` failed: {proc.stderr.strip()[-200:]}")
    return parse_config_list(proc.stdout)


# ---------------------------------------------------------------- the counts, host against container

#: Besides the outcome, every count a row carries: params and each counter's MACs and FLOPs.
COUNT_PREFIXES = ("macs_", "flops_")


def _attnbench() -> Any:
    """attnbench of this checkout, the code the image was built from and the host run used."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import attnbench
    import attnbench.results  # attnbench.results.flat and the column names

    return attnbench


def key_columns() -> list[str]:
    """The columns that identify a row (module, geometry, backend, kwargs and every scenario field)."""
    results = _attnbench().results
    identity = {*results.IDENTITY_FIELDS, "kwargs", *results.SCENARIO_FIELDS}
    return [name for name in results.COLUMNS if name in identity]


def exact_columns(names: Iterable[str]) -> list[str]:
    """The columns that must match exactly: the status, params, and every MAC and FLOP count."""
    return ["status", "params", *(n for n in names if n.startswith(COUNT_PREFIXES))]


def load_report(path: Path) -> tuple[dict, list[dict]]:
    """(environment, rows as flat dicts: one value per column) of a CSV or JSON report, read by attnbench's own
    loader."""
    attnbench = _attnbench()
    try:
        loaded = attnbench.load_results(path)
    except Exception as exc:  # the loader's errors say what is wrong with the file
        raise CheckError(str(exc)) from None
    if not loaded.results:
        raise CheckError(f"{path}: no rows")
    return loaded.env, [attnbench.results.flat(row) for row in loaded.results]


def _label(row: dict) -> str:
    return f"{row['module']} {row['backend']} C={row['dim']} {row['height']}x{row['width']}"


def compare_rows(host: list[dict], container: list[dict], where: str, keys: Sequence[str]) -> list[str]:
    """One line per row present on one side only and per exact column that differs; empty when they agree."""
    host_k = {tuple(row[k] for k in keys): row for row in host}
    cont_k = {tuple(row[k] for k in keys): row for row in container}
    if len(host_k) != len(host) or len(cont_k) != len(container):
        return [f"{where}: duplicate rows"]
    problems = [f"{where}: {_label(host_k[k])} only on the host" for k in host_k.keys() - cont_k.keys()]
    problems += [f"{where}: {_label(cont_k[k])} only in the container" for k in cont_k.keys() - host_k.keys()]
    for key in sorted(host_k.keys() & cont_k.keys(), key=str):
        a_row, b_row = host_k[key], cont_k[key]
        for column in exact_columns(a_row):
            a, b = a_row[column], b_row.get(column)
            if a != b:
                problems.append(f"{where}: {_label(a_row)} {column}: host {a}, container {b}")
    return problems


def compare_reports(host_csv: Path, container_csv: Path, container_json: Path) -> dict:
    """Compare the container's CSV and JSON with the host's CSV; CheckError naming the first differences."""
    keys = key_columns()
    host_env, host_rows = load_report(host_csv)
    cont_env, cont_rows = load_report(container_csv)
    _, json_rows = load_report(container_json)
    problems = compare_rows(host_rows, cont_rows, "container CSV", keys)
    problems += compare_rows(host_rows, json_rows, "container JSON", keys)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckError("; ".join(problems[:3]) + more)
    return {
        "rows": len(host_rows),
        "ok": sum(row["status"] == "ok" for row in host_rows),
        "modules": len({row["module"] for row in host_rows}),
        "backends": len({row["backend"] for row in host_rows}),
        "columns": exact_columns(host_rows[0]),
        "host_env": host_env,
        "container_env": cont_env,
    }


# ---------------------------------------------------------------- nothing of the host left in the image

PIP_CONFIG_NAMES = ("pip.conf", "pip.ini")


def _pem_bodies(text: str) -> list[list[str]]:
    """The base64 lines of each certificate in a PEM bundle."""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", text, flags=re.DOTALL)
    return [[ln.strip() for ln in block.split() if ln.strip()] for block in blocks]


def local_ca_lines(ca_bundle: str | None, public_dirs: tuple[str, ...] = ("/usr/share/ca-certificates",)) -> list[str]:
    """One base64 line from each certificate of the host's bundle that no public CA package ships (a
    TLS-inspecting proxy's CA, a company root): finding one in the image means the bundle leaked."""
    if not ca_bundle:
        return []
    public: set[str] = set()
    for folder in public_dirs:
        for crt in Path(folder).rglob("*.crt") if Path(folder).is_dir() else ():
            public.update("".join(body) for body in _pem_bodies(crt.read_text(errors="replace")))
    local = [b for b in _pem_bodies(Path(ca_bundle).read_text(errors="replace")) if "".join(b) not in public]
    # A line from the middle (the key material), not the first ones, which many certificates share.
    return [body[len(body) // 2] for body in local if len(body) > 2]


def leak_strings(ctx: dict, directory: Path) -> list[str]:
    """Strings that must not appear anywhere in the image: host mirror paths and their build-time names."""
    strings = {str(directory), *ctx["mounts"], *ctx["mounts"].values(), *ctx["files"]}
    strings.update(f"{MOUNT_ROOT}/{name}" for name in ctx["files"].values())
    return sorted(strings)


def scan_image(rootfs: Path, history: Path, directory: Path) -> dict:
    """Look through the image's files and history for anything of the host's pip set-up."""
    ctx = json.loads((directory / "context.json").read_text())
    found = [str(p.relative_to(rootfs)) for name in PIP_CONFIG_NAMES for p in rootfs.rglob(name)]
    # A mount point podman had to create stays in the image as an empty file or folder: look for each by name.
    paths = [
        *ctx["mounts"],
        *ctx["mounts"].values(),
        *ctx["files"],
        *(f"{MOUNT_ROOT}/{n}" for n in ctx["files"].values()),
    ]
    found += [f"{path} exists" for path in paths if (rootfs / path.lstrip("/")).exists()]
    for inside in ("mnt", "run/secrets"):
        folder = rootfs / inside
        if folder.is_dir() and any(folder.iterdir()):
            found.append(f"/{inside} is not empty: {', '.join(sorted(p.name for p in folder.iterdir()))}")
    patterns = leak_strings(ctx, directory) + local_ca_lines(ctx["ca"])
    if patterns:
        pattern_file = directory / "leak-patterns.txt"
        pattern_file.write_text("\n".join(patterns) + "\n")
        proc = subprocess.run(
            ["grep", "-rlsF", "--devices=skip", "-f", str(pattern_file), str(rootfs), str(history)],
            capture_output=True,
            text=True,
            check=False,
        )
        found += [ln.replace(str(rootfs), "", 1) for ln in proc.stdout.splitlines()]
    if found:
        more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
        raise CheckError("the image holds host pip set-up: " + "; ".join(found[:3]) + more)
    return {"strings": len(leak_strings(ctx, directory)), "ca_certs": len(local_ca_lines(ctx["ca"]))}


# ---------------------------------------------------------------- the figures and the record


def dockerfile_sha256(path: Path = DOCKERFILE) -> str:
    """The Dockerfile's content hash: the record names the exact file it built. Line endings are normalised, so
    a checkout with CRLF endings hashes the same."""
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30).stdout
    except OSError:
        return "-"
    return out.strip().splitlines()[0] if out.strip() else "-"


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else "unknown CPU"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _torch_index_text(torch_index: str | None) -> str:
    if torch_index is None:
        return "the Dockerfile's `TORCH_INDEX`"
    return f"`TORCH_INDEX={torch_index}`" if torch_index else "`TORCH_INDEX=` (empty: torch from the pip configuration)"


def render_record(facts: dict) -> str:
    """results/docker_check.md: what was built and run, on what, with which figures."""
    host, cont, cmp_ = facts["host_env"], facts["container_env"], facts["comparison"]
    t = facts["timings"]
    ctx = facts["pip_context"]
    lines = [
        "# Docker image: built and run here",
        "",
        f"Measured {facts['date']} on {facts['cpu']} ({facts['cores']} logical cores), {facts['os']}; "
        f"`benchmarks/docker_check.sh --record results/docker_check.md` at commit {facts['commit']}. "
        f"Load average at the end (1, 5, 15 min): {', '.join(facts['load'])}: other jobs shared the cores, so "
        "the times are indicative.",
        "",
        f"Dockerfile sha256: `{facts['dockerfile_sha256']}` (tests/test_docker_check.py fails when the "
        "Dockerfile changes and this record does not).",
        "",
        "| step | what | seconds |",
        "|---|---|---:|",
        f"| tools | podman, runc, debootstrap ({t['tools_how']}) | {t['tools']:.1f} |",
        f"| base | Debian bookworm minbase by debootstrap, imported as `{facts['base']}` ({t['base_how']}) "
        f"| {t['base']:.1f} |",
        "| build | `podman build --no-cache --layers=false --format docker` of the Dockerfile, "
        f"`BASE_IMAGE={facts['base']}`, "
        f"{_torch_index_text(ctx['torch_index'])} | {t['build']:.1f} |",
        f"| run | `{facts['command']}` in the container, reports to a bind mount | {t['run']:.1f} |",
        f"| host | the same command on the host | {t['host']:.1f} |",
        f"| **total** | the whole script, with the smoke test, the image scan and the checks | {t['total']:.1f} |",
        "",
        f"Image `{facts['image']}`: {_gib(facts['image_size'])} ({facts['image_size']:,} bytes, `podman image "
        "inspect` Size). `podman run IMAGE` with no arguments prints the help and exits 0.",
        "",
        "## Counts: container against host",
        "",
        f"{cmp_['rows']} rows ({cmp_['modules']} modules x {cmp_['backends']} backends), {cmp_['ok']} ok. "
        f"Columns compared exactly: {', '.join(f'`{c}`' for c in cmp_['columns'])}. "
        "The container's CSV and JSON both equal the host's CSV: **no difference**. "
        "The container's reports re-render with `attnbench report`.",
        "",
        "| | host | container |",
        "|---|---|---|",
    ]
    for key in ("python", "torch", "onnxruntime", "onnx", "fvcore", "thop", "platform"):
        lines.append(f"| {key} | {host.get(key, '-')} | {cont.get(key, '-')} |")
    lines += [
        "",
        "## How the host's pip set-up went in, and stayed out",
        "",
        "The build steps saw this pip.conf as the `pip.conf` build secret"
        + (" and the host CA bundle as the `pip-ca` secret" if ctx["ca"] else "")
        + "; the folders came in as read-only volumes under /mnt:",
        "",
        "```ini",
        facts["pip_conf"].rstrip(),
        "```",
        "",
    ]
    lines += [f"- volume `{host_dir}` -> `{inside}`" for host_dir, inside in ctx["mounts"].items()]
    lines += [f"- dropped: {item}" for item in ctx["dropped"]]
    scan = facts["scan"]
    lines += [
        "",
        f"Scan of the built image (its files and `podman history`): no pip.conf or pip.ini, /mnt and "
        f"/run/secrets empty, none of {scan['strings']} host or mount paths, none of the host bundle's "
        f"{scan['ca_certs']} locally added CA certificate(s).",
        "",
        "Tools: " + "; ".join(facts["tools"]) + ".",
        "",
    ]
    return "\n".join(lines)


def gather_facts(args: argparse.Namespace) -> dict:
    """Everything the summary and the record show, from the run's files and the tools."""
    comparison = compare_reports(args.host_dir / "r.csv", args.container_dir / "r.csv", args.container_dir / "r.json")
    directory = args.context_dir
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    os_name = "unknown OS"
    if Path("/etc/os-release").is_file():
        match = re.search(r'^PRETTY_NAME="?([^"\n]+)', Path("/etc/os-release").read_text(), flags=re.MULTILINE)
        os_name = match.group(1) if match else os_name
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "os": f"{os_name}, kernel {os.uname().release}",
        "cores": os.cpu_count(),
        "load": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else ["-"] * 3,
        "commit": (commit or "-") + (" with uncommitted changes" if dirty.stdout.strip() else ""),
        "dockerfile_sha256": dockerfile_sha256(),
        "base": args.base,
        "image": args.image,
        "image_size": args.image_size,
        "command": args.command,
        "timings": {
            "tools": args.t_tools,
            "tools_how": args.tools_how,
            "base": args.t_base,
            "base_how": args.base_how,
            "build": args.t_build,
            "run": args.t_run,
            "host": args.t_host,
            "total": args.t_total,
        },
        "comparison": comparison,
        "host_env": comparison.pop("host_env"),
        "container_env": comparison.pop("container_env"),
        "pip_context": json.loads((directory / "context.json").read_text()),
        "pip_conf": (directory / "pip.conf").read_text(),
        "scan": json.loads((directory / "scan.json").read_text()),
        "tools": [
            _version(["podman", "--version"]),
            _version(["runc", "--version"]),
            _version(["debootstrap", "--version"]),
        ],
    }


def print_summary(facts: dict) -> None:
    """The few lines a person running the check reads."""
    t, cmp_ = facts["timings"], facts["comparison"]
    print(f"docker_check: image {facts['image']}: {_gib(facts['image_size'])}")
    print(
        f"docker_check: tools {t['tools']:.1f} s, base {t['base']:.1f} s ({t['base_how']}), build {t['build']:.1f} s, "
        f"container run {t['run']:.1f} s, host run {t['host']:.1f} s, total {t['total']:.1f} s"
    )
    print(
        f"docker_check: {cmp_['rows']} rows, params and MACs equal to the host's; "
        f"container python {facts['container_env'].get('python')}, torch {facts['container_env'].get('torch')}"
    )
    print(
        f"docker_check: image scan clean ({facts['scan']['strings']} paths, {facts['scan']['ca_certs']} local CA certs)"
    )


# ---------------------------------------------------------------- command line


def _cmd_pip_context(args: argparse.Namespace) -> None:
    ctx = plan_context(host_pip_config(args.python), args.torch_index)
    write_context(ctx, args.dir)
    print("\n".join(build_args(ctx, args.dir)))


def _cmd_compare(args: argparse.Namespace) -> None:
    summary = compare_reports(args.host_csv, args.container_csv, args.container_json)
    print(f"{summary['rows']} rows equal ({', '.join(summary['columns'])})")


def _cmd_scan(args: argparse.Namespace) -> None:
    result = scan_image(args.rootfs, args.history, args.dir)
    (args.dir / "scan.json").write_text(json.dumps(result) + "\n")


def _cmd_report(args: argparse.Namespace) -> None:
    facts = gather_facts(args)
    print_summary(facts)
    if args.record:
        args.record.write_text(render_record(facts))
        print(f"docker_check: wrote {args.record}")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a CheckError becomes one line on stderr and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pip-context")
    p.add_argument("dir", type=Path)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--torch-index", help="TORCH_INDEX for the build ('' = pip's configured index)")
    p.set_defaults(func=_cmd_pip_context)
    p = sub.add_parser("compare")
    for name in ("host_csv", "container_csv", "container_json"):
        p.add_argument(name, type=Path)
    p.set_defaults(func=_cmd_compare)
    p = sub.add_parser("scan")
    for name in ("rootfs", "history", "dir"):
        p.add_argument(name, type=Path)
    p.set_defaults(func=_cmd_scan)
    p = sub.add_parser("report")
    for name in ("host_dir", "container_dir", "context_dir"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=Path, required=True)
    for name in ("base", "base_how", "tools_how", "image", "command"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, required=True)
    p.add_argument("--image-size", type=int, required=True)
    for name in ("t_tools", "t_base", "t_build", "t_run", "t_host", "t_total"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, required=True)
    p.add_argument("--record", type=Path)
    p.set_defaults(func=_cmd_report)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except CheckError as exc:
        print(f"docker_check: {args.cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
