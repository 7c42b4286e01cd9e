"""benchmarks/docker_check: the host's pip set-up passed to a build, the count comparison, the leak scan, the record.

The container build itself runs in benchmarks/docker_check.sh (minutes, needs podman); these tests cover the
logic it relies on, and keep results/docker_check.md tied to the Dockerfile it built.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from attnbench import results as R
from attnbench import store

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "results" / "docker_check.md"

_spec = importlib.util.spec_from_file_location("docker_check", ROOT / "benchmarks" / "docker_check.py")
dc = importlib.util.module_from_spec(_spec)
sys.modules["docker_check"] = dc  # dataclasses look their module up while the class is built
_spec.loader.exec_module(dc)


# ---------------------------------------------------------------- pip configuration


def test_config_list_precedence_env_over_install_over_global() -> None:
    text = "\n".join(
        [
            "global.index-url='https://global.example/simple'",
            "global.timeout='10'",
            "global.retries='3'",
            "install.timeout='20'",
            "install.retries='4'",
            ":env:.retries='5'",
            ":env:.find_links='/w'",
            "download.index-url='https://ignored.example/simple'",
        ]
    )
    assert dc.parse_config_list(text) == {
        "index-url": "https://global.example/simple",
        "timeout": "20",
        "retries": "5",
        "find-links": "/w",  # underscores normalised, as pip does
    }


def test_local_mirror_becomes_mounts_under_mnt(tmp_path: Path) -> None:
    (tmp_path / "pypi" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("not read here\n")
    ctx = dc.plan_context(
        {
            "index-url": "https://proxy.example/simple",
            "extra-index-url": f"file://{tmp_path}/pypi/simple file://{tmp_path}/gone/simple",
            "find-links": f"{tmp_path}/wheels https://links.example/",
            "constraint": str(constraints),
            "cert": str(ca),
            "trusted-host": "proxy.example",
            "user": "true",
            "cache-dir": "/root/.cache/pip",
        }
    )
    assert ctx.conf == {
        "index-url": "https://proxy.example/simple",
        # a PEP 503 index is mounted from its parent: files sit beside simple/, reached by relative links
        "extra-index-url": "file:///mnt/index-1/simple",
        "find-links": "/mnt/find-links-1 https://links.example/",
        "constraint": "/mnt/constraint-1.txt",
        "trusted-host": "proxy.example",
    }
    assert ctx.mounts == {str(tmp_path / "pypi"): "/mnt/index-1", str(tmp_path / "wheels"): "/mnt/find-links-1"}
    assert ctx.files == {str(constraints): "constraint-1.txt"}
    assert ctx.ca == str(ca)
    assert [d.split()[0] for d in ctx.dropped] == ["index", "user", "cache-dir"]
    assert ctx.torch_index == ""  # the host's own index serves torch, as it does on the host


def test_torch_index_default_and_override(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x\n")
    assert dc.plan_context({"cert": str(ca)}).torch_index is None  # CA only: the Dockerfile's default index
    assert dc.plan_context({}).torch_index is None
    assert (
        dc.plan_context({"index-url": "https://m/simple"}, torch_index="https://t/whl").torch_index == "https://t/whl"
    )


def test_a_ca_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(dc.CheckError, match=r"cert .*not a file"):
        dc.plan_context({"cert": str(tmp_path)})


def test_build_args_and_context_directory(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    ctx = dc.plan_context({"find-links": str(tmp_path / "wheels"), "cert": __file__})
    out = tmp_path / "ctx"
    dc.write_context(ctx, out)
    assert dc.build_args(ctx, out) == [
        "--build-arg=TORCH_INDEX=",
        f"--secret=id=pip.conf,src={out}/pip.conf",
        f"--secret=id=pip-ca,src={__file__}",
        f"--volume={out}:/mnt:ro",  # the context before the folders mounted inside it
        f"--volume={tmp_path}/wheels:/mnt/find-links-1:ro",
    ]
    conf = configparser.ConfigParser()
    conf.read(out / "pip.conf")
    assert dict(conf["global"]) == {"find-links": "/mnt/find-links-1"}
    assert (out / "find-links-1").is_dir()  # the mount point exists outside the image
    assert oct(out.stat().st_mode & 0o777) == "0o700"


def test_no_pip_configuration_passes_nothing(tmp_path: Path) -> None:
    ctx = dc.plan_context({})
    assert dc.build_args(ctx, tmp_path) == []


# ---------------------------------------------------------------- counts


def _result(module: str, backend: str = "cpu", scenario: R.Scenario | None = None, **values: object) -> R.Result:
    case = R.Case(module, 64, 16, 16, backend=backend, scenario=scenario or R.Scenario())
    counts = {"params": 100, "macs_attnbench": 2000, "macs_fvcore": 1900, "macs_thop": 1900, "flops_attnbench": 4000}
    return R.Result.for_case(case, **(counts | values))


def _rows(*results: R.Result) -> list[dict]:
    return [R.flat(r) for r in results]


def test_the_exact_columns_are_status_and_every_count() -> None:
    columns = dc.exact_columns(R.COLUMNS)
    assert columns[:2] == ["status", "params"]
    assert {"macs_attnbench", "macs_fvcore", "macs_thop", "macs_formula", "flops_attnbench"} <= set(columns)
    assert not {"latency_median_s", "peak_mem_bytes", "machine", "seconds"} & set(columns)


def test_rows_are_matched_on_identity_kwargs_and_every_scenario_field() -> None:
    keys = dc.key_columns()
    assert keys[:6] == list(R.IDENTITY_FIELDS) and {"kwargs", *R.SCENARIO_FIELDS} <= set(keys)
    assert not {"status", "params", "machine"} & set(keys)
    bf16 = _result("lka", scenario=R.Scenario(dtype="bfloat16"), macs_thop=1901)
    assert dc.compare_rows(_rows(_result("lka"), bf16), _rows(bf16, _result("lka")), "c", keys) == []


def test_equal_runs_compare_clean() -> None:
    rows = _rows(_result("lka"), _result("lka", "ort"))
    assert dc.compare_rows(rows, _rows(_result("lka"), _result("lka", "ort")), "c", dc.key_columns()) == []


def test_timings_and_machine_may_differ() -> None:
    host = _rows(_result("lka", latency_median_s=0.001, machine="host"))
    container = _rows(_result("lka", latency_median_s=0.002, machine="container"))
    assert dc.compare_rows(host, container, "c", dc.key_columns()) == []


def test_a_count_difference_names_module_backend_and_column() -> None:
    host = _rows(_result("lka"), _result("mhsa"))
    problems = dc.compare_rows(host, _rows(_result("lka", macs_thop=1901), _result("mhsa")), "c", dc.key_columns())
    assert problems == ["c: lka cpu C=64 16x16 macs_thop: host 1900, container 1901"]


def test_a_missing_row_or_a_status_change_is_a_difference() -> None:
    host = _rows(_result("lka"), _result("mhsa"))
    assert dc.compare_rows(host, _rows(_result("lka")), "c", dc.key_columns()) == [
        "c: mhsa cpu C=64 16x16 only on the host"
    ]
    failed = _rows(_result("lka"), _result("mhsa", status="failed"))
    assert dc.compare_rows(host, failed, "c", dc.key_columns()) == [
        "c: mhsa cpu C=64 16x16 status: host ok, container failed"
    ]


def test_compare_reports_reads_attnbench_files(tmp_path: Path) -> None:
    rows = [_result("lka"), _result("mhsa", status="invalid", params=None, macs_attnbench=None)]
    env = {"python": "3.11.2"}
    for name in ("host.csv", "cont.csv"):
        store.write_csv(tmp_path / name, rows, env)
    (tmp_path / "cont.json").write_text(store.json_text(rows, env))
    summary = dc.compare_reports(tmp_path / "host.csv", tmp_path / "cont.csv", tmp_path / "cont.json")
    assert (summary["rows"], summary["ok"], summary["modules"], summary["backends"]) == (2, 1, 2, 1)
    assert summary["container_env"] == env
    (tmp_path / "cont.json").write_text(store.json_text([rows[0], _result("mhsa", status="invalid")], env))
    with pytest.raises(dc.CheckError, match="container JSON: mhsa cpu C=64 16x16 params: host None, container 100"):
        dc.compare_reports(tmp_path / "host.csv", tmp_path / "cont.csv", tmp_path / "cont.json")
    (tmp_path / "cont.csv").write_text("")
    with pytest.raises(dc.CheckError, match="empty"):
        dc.compare_reports(tmp_path / "host.csv", tmp_path / "cont.csv", tmp_path / "cont.json")


# ---------------------------------------------------------------- the image holds nothing of the host


def _pem(lines: list[str]) -> str:
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


PUBLIC_CERT = ["MIIBpublic0", "AAAApublic1", "BBBBpublic2", "CCCCpublic3"]
LOCAL_CERT = ["MIIBlocal00", "AAAAlocal01", "DDDDlocal02", "EEEElocal03"]


def test_local_ca_lines_are_those_no_public_package_ships(tmp_path: Path) -> None:
    (tmp_path / "public" / "mozilla").mkdir(parents=True)
    (tmp_path / "public" / "mozilla" / "a.crt").write_text(_pem(PUBLIC_CERT))
    bundle = tmp_path / "bundle.crt"
    bundle.write_text(_pem(PUBLIC_CERT) + _pem(LOCAL_CERT))
    assert dc.local_ca_lines(str(bundle), (str(tmp_path / "public"),)) == ["DDDDlocal02"]
    assert dc.local_ca_lines(None) == []


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A clean fake image root, its history, and the context of a build that mounted /opt/wheels."""
    rootfs = tmp_path / "rootfs"
    for folder in ("mnt", "run/secrets", "usr/lib/python3/dist-packages/pip", "etc/ssl/certs"):
        (rootfs / folder).mkdir(parents=True)
    (rootfs / "usr/lib/python3/dist-packages/pip/__init__.py").write_text("# pip\n")
    (rootfs / "etc/ssl/certs/ca-certificates.crt").write_text(_pem(PUBLIC_CERT))
    history = tmp_path / "history.txt"
    history.write_text("/bin/sh -c python3 -m pip install .\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    bundle = tmp_path / "bundle.crt"
    bundle.write_text(_pem(LOCAL_CERT))
    ctx = dc.plan_context({"find-links": str(wheels), "cert": str(bundle)})
    dc.write_context(ctx, tmp_path / "ctx")
    return rootfs, history, tmp_path / "ctx"


def test_a_clean_image_passes_the_scan(built: tuple[Path, Path, Path]) -> None:
    rootfs, history, ctx = built
    result = dc.scan_image(rootfs, history, ctx)
    assert result["strings"] >= 3 and result["ca_certs"] == 1  # ctx dir, host folder, /mnt/find-links-1


@pytest.mark.parametrize(
    ("path", "content", "found"),
    [
        ("etc/pip.conf", "[global]\n", "etc/pip.conf"),
        ("root/.config/pip/pip.conf", "", "pip.conf"),
        ("mnt/find-links-1", None, "/mnt/find-links-1 exists"),  # a mount point left behind
        ("usr/lib/python3/dist-packages/x/direct_url.json", '{"url": "file:///mnt/find-links-1/x.whl"}', "direct_url"),
        ("usr/local/share/ca-certificates/proxy.crt", _pem(LOCAL_CERT), "proxy.crt"),
        ("run/secrets/pip-ca", "", "/run/secrets is not empty"),
    ],
)
def test_the_scan_finds_what_the_host_left(
    built: tuple[Path, Path, Path], path: str, content: str | None, found: str
) -> None:
    rootfs, history, ctx = built
    target = rootfs / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        target.mkdir()
    else:
        target.write_text(content)
    with pytest.raises(dc.CheckError, match=re.escape(found)):
        dc.scan_image(rootfs, history, ctx)


def test_the_scan_reads_the_history(built: tuple[Path, Path, Path]) -> None:
    rootfs, history, ctx = built
    wheels = json.loads((ctx / "context.json").read_text())["mounts"]
    history.write_text(f"/bin/sh -c pip install --find-links {next(iter(wheels))} torch\n")
    with pytest.raises(dc.CheckError, match="history"):
        dc.scan_image(rootfs, history, ctx)


# ---------------------------------------------------------------- the record


def test_the_record_states_what_the_freshness_test_reads(tmp_path: Path) -> None:
    env = {"python": "3.11.2", "torch": "2.13.0+cpu"}
    facts = {
        "date": "2026-01-01T00:00:00+00:00",
        "cpu": "CPU",
        "cores": 2,
        "os": "Debian",
        "commit": "abc1234",
        "load": ["1.0", "1.0", "1.0"],
        "dockerfile_sha256": dc.dockerfile_sha256(),
        "base": "localhost/base",
        "image": "localhost/img",
        "image_size": 3 * 2**30,
        "command": "attnbench compare --all",
        "timings": dict.fromkeys(("tools", "base", "build", "run", "host", "total"), 1.0)
        | {"tools_how": "present", "base_how": "reused"},
        "comparison": {
            "rows": 20,
            "ok": 20,
            "modules": 10,
            "backends": 2,
            "columns": dc.exact_columns(R.COLUMNS),
        },
        "host_env": env,
        "container_env": env,
        "pip_context": {"mounts": {"/opt/wheels": "/mnt/find-links-1"}, "ca": None, "dropped": [], "torch_index": ""},
        "pip_conf": "[global]\nfind-links = /mnt/find-links-1\n",
        "scan": {"strings": 3, "ca_certs": 0},
        "tools": ["podman version 4.3.1"],
    }
    text = dc.render_record(facts)
    assert f"Dockerfile sha256: `{dc.dockerfile_sha256()}`" in text
    assert "3.00 GiB" in text and "20 rows (10 modules x 2 backends), 20 ok" in text
    assert "`TORCH_INDEX=` (empty" in text and "volume `/opt/wheels` -> `/mnt/find-links-1`" in text


def test_dockerfile_hash_ignores_line_endings(tmp_path: Path) -> None:
    (tmp_path / "lf").write_bytes(b"FROM x\nRUN y\n")
    (tmp_path / "crlf").write_bytes(b"FROM x\r\nRUN y\r\n")
    assert dc.dockerfile_sha256(tmp_path / "lf") == dc.dockerfile_sha256(tmp_path / "crlf")


def test_the_record_is_of_this_dockerfile() -> None:
    """results/docker_check.md names the sha256 of the Dockerfile it built; a content hash, because a fresh
    clone gives every file the same mtime and a shallow clone has no commit history to compare."""
    match = re.search(r"Dockerfile sha256: `([0-9a-f]{64})`", RECORD.read_text())
    assert match, f"{RECORD.name} records no Dockerfile hash"
    assert match.group(1) == dc.dockerfile_sha256(), (
        "the Dockerfile changed since results/docker_check.md was made: "
        "run benchmarks/docker_check.sh --record results/docker_check.md"
    )
