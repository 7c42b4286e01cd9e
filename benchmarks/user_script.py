"""What a user would otherwise write: fvcore, thop, torch.onnx.export, onnxruntime and torch.utils.benchmark
by hand, for the same cases as `attnbench compare --all` (C=64 at 14, 28, 56; cpu and ort; 1 thread; 1 s of
timed calls per case). Used by benchmarks/cli_overhead.py as the reference wall time. Prints its wall time.

`--warmup` adds the explicit warm-up that attnbench does and shared/reference/measurement.md asks for
(Timer's own warm-up is one call): >= 10 calls and >= 0.25 s before each timer.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import onnxruntime as ort
import torch
import torch.utils.benchmark as tb
from fvcore.nn import FlopCountAnalysis
from thop import profile

import attnbench

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)


def warm(fn: object, enabled: bool) -> None:
    """Call fn for >= 10 calls and >= 0.25 s (attnbench's warm-up), when enabled."""
    if not enabled:
        return
    start, calls = time.perf_counter(), 0
    while calls < 10 or time.perf_counter() - start < 0.25:
        fn()  # type: ignore[operator]
        calls += 1


def main() -> None:
    """Run every case the plain way and print the wall time."""
    warmup = "--warmup" in sys.argv
    started = time.perf_counter()
    torch.set_num_threads(1)
    out = tempfile.mkdtemp()
    for name in attnbench.list_modules():
        for side in (14, 28, 56):
            try:
                attnbench.validate(name, 64, side)
            except attnbench.InvalidCaseError:
                continue
            model = attnbench.build(name, 64, side).eval()
            x = torch.randn(1, 64, side, side)
            FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False).total()
            profile(copy.deepcopy(model), inputs=(x,), verbose=False)
            with torch.inference_mode():
                warm(functools.partial(model, x), warmup)
                tb.Timer("model(x)", globals={"model": model, "x": x}, num_threads=1).blocked_autorange(
                    min_run_time=1.0
                )
            path = os.path.join(out, f"{name}-{side}.onnx")
            torch.onnx.export(model, (x,), path, dynamo=True)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x.numpy()}
            warm(functools.partial(sess.run, None, feed), warmup)
            tb.Timer("sess.run(None, feed)", globals={"sess": sess, "feed": feed}, num_threads=1).blocked_autorange(
                min_run_time=1.0
            )
    print(f"wall_s={time.perf_counter() - started:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
