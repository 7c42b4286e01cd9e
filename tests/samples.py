"""A small, made-up but realistic result set for the views (tables, Markdown, plots): no measuring needed."""

from __future__ import annotations

from attnbench import results as R
from attnbench.results import Case, Result

#: (module, params, MACs at 14x14, exponent of N, cpu latency at 14x14 [s], peak memory at 14x14 [bytes])
MODULES = [
    ("acmix", 17_822, 4_998_784, 1.0, 3.47e-3, 8_561_280),
    ("mhsa", 16_640, 8_130_000, 1.92, 6.47e-4, 2_610_000),
    ("models/attn.py:MyAttention", 9_024, 1_740_000, 1.0, 5.29e-4, 200_000),
    ("clo", 21_248, 3_950_000, 1.28, 9.4e-4, 1_450_000),
]
SIDES = (14, 28, 56)
BACKENDS = ("cpu", "ort")
#: A roof as `attnbench` records it in env["peaks"].
ENV = {
    "cpu_model": "test cpu",
    "peaks": [
        {
            "device": "cpu",
            "dtype": "float32",
            "threads": 1,
            "flops_per_s": 1.5e11,
            "bytes_per_s": 6e9,
            "method": "best call of square float32 matmuls (512, 1024) and of a 256 MiB copy",
        }
    ],
}


def sample_results() -> list[Result]:
    """Four modules x three resolutions x two backends; clo refuses 14x14, mhsa's ORT export fails at 56x56.

    Latencies run from 47 µs to 10.2 s and memory up to 2.5 GiB, so units must be picked per column.
    """
    rows = []
    for module, params, macs14, exponent, latency14, mem14 in MODULES:
        for side in SIDES:
            scale = (side / 14) ** (2 * exponent)
            macs = int(macs14 * scale)
            for backend in BACKENDS:
                case = Case(module, 64, side, side, backend=backend)
                if module == "clo" and side == 14:
                    rows.append(Result.for_case(case, status=R.INVALID, reason="H, W % window_size == 0"))
                    continue
                if module == "mhsa" and side == 56 and backend == "ort":
                    rows.append(
                        Result.for_case(
                            case, status=R.FAILED, reason="export failed", params=params, macs_attnbench=macs
                        )
                    )
                    continue
                latency = latency14 * scale * (0.5 if backend == "ort" else 1.0)
                if module == "mhsa" and side == 56 and backend == "cpu":
                    latency = 10.2  # a slow case: seconds in a column of milliseconds
                rows.append(
                    Result.for_case(
                        case,
                        params=params,
                        macs_attnbench=macs,
                        macs_fvcore=int(macs * (0.75 if module == "acmix" else 1.0)),
                        macs_thop=macs,
                        flops_attnbench=2 * macs + 1000,
                        latency_median_s=latency,
                        latency_iqr_s=latency * 0.02,
                        latency_noisy=module == "acmix" and side == 28,
                        peak_mem_bytes=int(mem14 * scale) if backend == "cpu" else None,
                        parity_max_abs=3.9e-7 if backend == "ort" else None,
                    )
                )
    return rows
