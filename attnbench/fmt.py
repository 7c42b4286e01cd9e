"""Numbers as people read them: three significant digits, SI or binary prefixes, units picked per column.

One formatter for every table, the Markdown report, plots and messages, so `2.5e+03 MiB` or `16777236.00 GiB`
cannot appear in one place while another reads `2.44 GiB`. Plain Python only: the fast commands import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

#: Significant digits of every printed measurement.
DIGITS = 3
#: What a cell shows when there is no number.
MISSING = "-"
#: Decimal prefixes for counts (params, MACs, FLOPs); "K" as the ML literature writes parameter counts.
SI_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))
#: Memory units for a column (KiB at least: a byte count of a tensor is never interesting below that).
BYTE_UNITS = (("KiB", 2.0**10), ("MiB", 2.0**20), ("GiB", 2.0**30), ("TiB", 2.0**40))
#: Units for a single byte figure in a message (the guard's estimate may be petabytes).
MESSAGE_BYTE_UNITS = (("B", 1.0), *BYTE_UNITS, ("PiB", 2.0**50), ("EiB", 2.0**60))
#: Time units for a column of seconds.
TIME_UNITS = (("µs", 1e-6), ("ms", 1e-3), ("s", 1.0))
#: Fixed notation is used from 10^-SMALLEST_EXP up to 10^LARGEST_EXP; outside that, scientific is clearer.
SMALLEST_EXP = 6
LARGEST_EXP = 15


def missing(value: Any) -> bool:
    """True for None, NaN and pandas' NA: no number to print."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and pd.NA (whose comparison is NA, which bool() refuses)
    except TypeError:
        return True


def sig(value: Any, digits: int = DIGITS) -> str:
    """0.000187 -> '0.000187', 10245 -> '10200', 1.5 -> '1.5': fixed notation, `digits` significant digits."""
    if missing(value):
        return MISSING
    v = float(value)
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    exp = math.floor(math.log10(abs(v)))
    rounded = round(v, digits - 1 - exp)
    if rounded == 0:
        return "0"
    exp = math.floor(math.log10(abs(rounded)))  # 999.6 rounds to 1000: one more integer digit
    if exp < -SMALLEST_EXP or exp >= LARGEST_EXP:
        return f"{v:.{digits - 1}e}"
    text = f"{rounded:.{max(0, digits - 1 - exp)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def si(value: Any, unit: str = "", digits: int = DIGITS) -> str:
    """12345678 -> '12.3 M', 5000000 -> '5.00 M' (decimal prefixes up to E, `digits` significant digits)."""
    if missing(value):
        return MISSING
    v = float(value)
    size = abs(float(sig(v, digits))) if math.isfinite(v) else 0.0  # the prefix of the rounded value
    for factor, prefix in SI_PREFIXES:
        if size >= factor:
            return f"{_keep_zeros(v / factor, digits)} {prefix}{unit}"
    return f"{sig(v, digits)} {unit}".rstrip()


def _keep_zeros(value: float, digits: int) -> str:
    """`value` at `digits` significant digits, trailing zeros kept (5.00, not 5: three digits were counted)."""
    text = sig(value, digits)
    if "e" in text:
        return text
    have = len(text.replace("-", "").replace(".", "").lstrip("0"))
    if have >= digits:
        return text
    return text + ("" if "." in text else ".") + "0" * (digits - have)


def pick_unit(values: Iterable[Any], units: Sequence[tuple[str, float]]) -> tuple[str, float]:
    """The unit a column (or a figure's axis) reads best in: the one whose values print shortest at three
    significant digits, padding zeros counted twice (39000 KiB reads worse than 38.1 MiB); on a tie, the
    largest unit the median is >= 1 of (500 µs, not 0.5 ms)."""
    present = sorted(abs(float(v)) for v in values if not missing(v) and float(v) != 0)
    if not present:
        return units[0]
    median = present[(len(present) - 1) // 2]
    costs = [max(_print_cost(v / factor) for v in present) for _, factor in units]
    tied = [i for i, cost in enumerate(costs) if cost == min(costs)]
    whole = [i for i in tied if median >= units[i][1]]
    return units[max(whole) if whole else min(tied)]


def _print_cost(value: float) -> int:
    """How long a value prints at DIGITS significant digits, each zero that only pads it counted twice."""
    text = sig(value)
    if "e" in text:
        return 10 * len(text)  # scientific notation only where no unit avoids it
    digits = len(text.split(".")[0].lstrip("-"))
    return len(text) + max(0, digits - DIGITS)


def in_unit(value: Any, factor: float, digits: int = DIGITS) -> str:
    """A value in base units (bytes, seconds) printed in the unit of size `factor`."""
    return MISSING if missing(value) else sig(float(value) / factor, digits)


def nbytes(value: Any) -> str:
    """One byte figure with its own binary unit: 17179869184 -> '16 GiB' (for messages, not columns)."""
    if missing(value):
        return MISSING
    v = float(value)
    if abs(v) < 1024:
        return f"{sig(v)} B"
    name, factor = pick_unit([v], MESSAGE_BYTE_UNITS)
    return f"{sig(v / factor)} {name}"


def seconds(value: Any) -> str:
    """One duration with its own unit: 0.00042 -> '420 µs'."""
    if missing(value):
        return MISSING
    name, factor = pick_unit([value], TIME_UNITS)
    return f"{sig(float(value) / factor)} {name}"


def sci(value: Any, digits: int = 2) -> str:
    """An error magnitude (a parity difference) in scientific notation: 3.9e-07. Tolerances read best so."""
    return MISSING if missing(value) else f"{float(value):.{digits - 1}e}"


def ratio(value: Any) -> str:
    """A ratio near 1 with two decimals (counter agreement, scaling exponents): 0.75."""
    return MISSING if missing(value) else f"{float(value):.2f}"


def percent(value: Any) -> str:
    """A fraction as a percentage, `DIGITS` significant digits: 0.0123 -> '1.23%'."""
    return MISSING if missing(value) else f"{sig(100 * float(value))}%"
