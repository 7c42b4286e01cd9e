"""`env`: the environment record (versions, devices, backends and counters), from package metadata or probed."""

from __future__ import annotations

import importlib.util
import json
from typing import Annotated, Any

import typer

from attnbench import env, fmt
from attnbench.backends.installed import installed_backends
from attnbench.cli.app import app, consoles


@app.command("env")
def env_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    probe: Annotated[
        bool,
        typer.Option(
            "--probe",
            help="Import torch and ONNX Runtime to check each backend, and measure the machine's peak compute and "
            "bandwidth (a few seconds): the record a run writes.",
        ),
    ] = False,
) -> None:
    """The environment record: versions, devices, and which backends and counters are available."""

    if probe:
        record = env.environment(threads=1, peaks=_probe_peaks())
    else:
        # From files and package metadata only, so this answers at once; --probe imports and measures.
        record = env.static_environment()
        record.update(env.nvidia_smi())
        record["available_backends"] = installed_backends()
    record["available_counters"] = {
        "attnbench": {"available": True, "reason": "built in (dispatch level, meta device)"},
        **{
            name: {
                "available": importlib.util.find_spec(module) is not None,
                "reason": f"{dist} {record.get(name) or 'not installed'}",
            }
            for name, module, dist in (("fvcore", "fvcore", "fvcore"), ("thop", "thop", "ultralytics-thop"))
        },
    }
    if as_json:
        print(json.dumps(record, indent=2, default=str))
        return
    for key, value in record.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            consoles.out.print(f"{key}:", highlight=False)
            for name, info in value.items():
                mark = {True: "yes", False: "no ", None: "?  "}[info.get("available")]
                consoles.out.print(f"  {name:20s} {mark}  {info.get('reason', '')}", highlight=False)
        elif isinstance(value, dict):
            consoles.out.print(f"{key:22s} " + ", ".join(f"{k}={v}" for k, v in value.items()), highlight=False)
        elif key == "peaks":
            for p in value:
                consoles.out.print(f"{'peak ' + p['device']:22s} {_peak_text(p)}", highlight=False)
        else:
            consoles.out.print(f"{key:22s} {value}", highlight=False)
    if not probe:
        consoles.err.print(
            "attnbench: backends judged from installed packages; --probe imports and checks them", style="dim"
        )


def _probe_peaks() -> list[tuple[str, str, int]]:
    """The roofs `env --probe` measures: the CPU at 1 thread, and the GPU when there is one."""
    import torch  # torch: without --probe, env answers without it

    keys = [("cpu", "float32", 1)]
    if torch.cuda.is_available():
        keys.append(("cuda", "float32", 0))
    return keys


def _peak_text(peak: dict[str, Any]) -> str:

    threads = f", {peak['threads']} thread{'s' if peak['threads'] > 1 else ''}" if peak["device"] == "cpu" else ""
    return (
        f"{fmt.si(peak['flops_per_s'], 'FLOP/s')}, {fmt.si(peak['bytes_per_s'], 'B/s')} "
        f"({peak['dtype']}{threads}; ridge {fmt.sig(peak['flops_per_s'] / peak['bytes_per_s'])} FLOP/B)"
    )
