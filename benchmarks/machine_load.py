"""How busy the whole machine is (all processes, from /proc/stat): recorded beside every timing benchmark."""

from __future__ import annotations

import os
import time


def busy_cores(seconds: float = 3.0) -> float:
    """Cores in use machine-wide, averaged over `seconds` (0 = idle, 2 = both cores of a 2-core VM busy)."""

    def read() -> tuple[float, float]:
        with open("/proc/stat") as f:
            ticks = [float(x) for x in f.readline().split()[1:9]]
        # user nice system idle iowait irq softirq steal: all but idle and iowait is busy.
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)

    busy0, total0 = read()
    time.sleep(seconds)
    busy1, total1 = read()
    return (busy1 - busy0) / max(total1 - total0, 1.0) * (os.cpu_count() or 1)
