"""The one number formatter: three significant digits, prefixes and units, never e+NN in ordinary ranges."""

from __future__ import annotations

import pytest

from attnbench import fmt


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.000187, "0.000187"),
        (10245, "10200"),
        (1.5, "1.5"),
        (999.6, "1000"),  # rounding adds a digit: no '1e+03'
        (0.0469, "0.0469"),
        (66.0, "66"),
        (0, "0"),
        (-2.345, "-2.35"),
        (None, "-"),
        (float("nan"), "-"),
    ],
)
def test_sig_is_fixed_notation_with_three_digits(value: float | None, text: str) -> None:
    assert fmt.sig(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12_345_678, "12.3 M"),
        (999, "999"),
        (1.5e9, "1.50 G"),
        (999_600, "1.00 M"),  # rounds up into the next prefix, not '1e+03 K'
        (3.6e16, "36.0 P"),  # was '3.6e+04 T'
        (17_822, "17.8 K"),
        (4_998_784, "5.00 M"),  # three significant digits: was '5 M'
        (355, "355"),
        (None, "-"),
    ],
)
def test_si_prefixes(value: float | None, text: str) -> None:
    assert fmt.si(value) == text


@pytest.mark.parametrize("exponent", range(-5, 19))
@pytest.mark.parametrize("mantissa", [1.0, 2.5, 9.996])
def test_no_exponent_notation_in_ordinary_ranges(exponent: int, mantissa: float) -> None:
    value = mantissa * 10.0**exponent
    texts = [fmt.si(value), fmt.nbytes(value)]  # counts and byte figures: any size up to exa
    if exponent < 12:  # plain numbers and durations: what a column or a message would ever hold
        texts += [fmt.sig(value), fmt.seconds(value)]
        assert float(fmt.sig(value)) == pytest.approx(value, rel=5e-3)  # three significant digits
    for text in texts:
        assert "e+" not in text and "e-" not in text, text
    number, _, prefix = fmt.si(value).partition(" ")
    factor = {p: f for f, p in fmt.SI_PREFIXES}.get(prefix, 1.0)
    assert float(number) * factor == pytest.approx(value, rel=5e-3)


def test_memory_unit_is_picked_per_column() -> None:
    column = [0.191 * 2**20, 2.5e3 * 2**20]  # 0.191 MiB and 2500 MiB: was '2.5e+03' in a MiB column
    unit, factor = fmt.pick_unit(column, fmt.BYTE_UNITS)
    assert unit == "MiB"
    assert [fmt.in_unit(v, factor) for v in column] == ["0.191", "2500"]
    # The shortest values win, a padding zero counted twice: 3070, 5120 and 1 MiB, not 0.000977 GiB.
    assert fmt.pick_unit([3 * 2**30, 5 * 2**30, 2**20], fmt.BYTE_UNITS)[0] == "MiB"
    assert fmt.pick_unit([191 * 2**10, 39000 * 2**10, 700 * 2**10], fmt.BYTE_UNITS)[0] == "MiB"  # not 39000 KiB
    assert fmt.pick_unit([4096, 8192], fmt.BYTE_UNITS)[0] == "KiB"
    assert fmt.pick_unit([1e6 * 2**20, 2**20], fmt.BYTE_UNITS)[0] == "GiB"  # not 1000000 MiB
    assert fmt.pick_unit([None], fmt.BYTE_UNITS)[0] == "KiB"


def test_time_unit_is_picked_per_column() -> None:
    unit, factor = fmt.pick_unit([10.2, 0.066, 0.0012], fmt.TIME_UNITS)  # was '1.02e+04 ±66' ms
    assert (unit, fmt.in_unit(10.2, factor), fmt.in_unit(0.0012, factor)) == ("s", "10.2", "0.0012")
    assert fmt.pick_unit([0.0955e-3, 0.259], fmt.TIME_UNITS)[0] == "ms"  # 0.0955 and 259, not 95.5 and 259000
    assert fmt.pick_unit([5e-4], fmt.TIME_UNITS)[0] == "µs"  # a tie: 500 µs rather than 0.5 ms
    assert fmt.pick_unit([4.69e-5, 0.182], fmt.TIME_UNITS)[0] == "ms"  # 182000 µs would be too many digits
    assert fmt.pick_unit([4.69e-5], fmt.TIME_UNITS)[0] == "µs"
    assert fmt.pick_unit([12.0, 30.0], fmt.TIME_UNITS)[0] == "s"


def test_message_bytes_pick_their_own_unit() -> None:
    assert fmt.nbytes(16777236 * 2**30) == "16 PiB"  # the guard printed '16777236.00 GiB'
    assert fmt.nbytes(3 * 2**30) == "3 GiB"
    assert fmt.nbytes(512) == "512 B"
    assert fmt.seconds(0.00042) == "420 µs"


def test_errors_and_ratios() -> None:
    assert fmt.sci(3.9e-7) == "3.9e-07"
    assert fmt.ratio(0.7512) == "0.75"
    assert fmt.percent(0.0123) == "1.23%"
    assert fmt.missing(float("nan")) and fmt.missing(None) and not fmt.missing(0)


def test_a_unit_follows_the_prefix() -> None:
    assert fmt.si(1.5e11, "FLOP/s") == "150 GFLOP/s"
    assert fmt.si(6e9, "B/s") == "6.00 GB/s"
    assert fmt.si(12, "B") == "12 B"
    assert fmt.si(0.5, "s", digits=2) == "0.5 s"


def test_beyond_ordinary_ranges_exponent_notation_is_honest() -> None:
    assert fmt.sig(1.5e-9) == "1.50e-09"  # rather than '0' or a row of zeros
    assert fmt.sig(2.5e15) == "2.50e+15"
    assert fmt.sig(1e-9, 2) == "1.0e-09"
    assert fmt.sig(float("inf")) == "inf"


def test_every_formatter_prints_a_missing_value_as_a_dash() -> None:
    import pandas as pd

    for value in (None, float("nan"), pd.NA):
        assert fmt.missing(value)
        texts = [fmt.sig(value), fmt.si(value), fmt.in_unit(value, 1e-3), fmt.nbytes(value), fmt.seconds(value)]
        texts += [fmt.sci(value), fmt.ratio(value), fmt.percent(value)]
        assert set(texts) == {fmt.MISSING} == {"-"}


def test_in_unit_divides_by_the_unit() -> None:
    assert fmt.in_unit(0.0123, 1e-3) == "12.3"
    assert fmt.in_unit(3 * 2**20, 2**20) == "3"
    assert fmt.in_unit(0.0123, 1e-3, 2) == "12"
