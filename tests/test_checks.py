"""Numeric arguments: one treatment of bool, NaN, infinity and numpy scalars, and messages that
name the argument and the accepted values."""

import math

import numpy as np
import pytest

from bandpo.checks import check_number


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.5), np.float64(0.25), np.int64(1)])
def test_real_scalars_of_every_kind_come_back_as_float(value):
    checked = check_number("x", value, low=0.0, high=1.0)
    assert type(checked) is float and checked == float(value)


@pytest.mark.parametrize(
    "value, message",
    [
        (True, "x must be a number in [0, 1], got True"),
        (np.bool_(True), "x must be a number in [0, 1], got"),
        ("0.5", "x must be a number in [0, 1], got '0.5'"),
        (None, "x must be a number in [0, 1], got None"),
        (math.nan, "x must be a number in [0, 1], got nan"),
        (1.5, "x must be a number in [0, 1], got 1.5"),
        (-0.0001, "x must be a number in [0, 1], got -0.0001"),
    ],
)
def test_anything_else_is_refused_by_name(value, message):
    with pytest.raises(ValueError) as error:
        check_number("x", value, low=0.0, high=1.0)
    assert message in str(error.value)


def test_open_ends_and_one_sided_ranges():
    assert check_number("eps", 0.0, low=0.0, high=1.0, high_open=True) == 0.0
    with pytest.raises(ValueError, match=r"eps must be a number in \[0, 1\), got 1"):
        check_number("eps", 1, low=0.0, high=1.0, high_open=True)
    with pytest.raises(ValueError, match="c must be a finite number > 1, got 1"):
        check_number("c", 1, low=1.0, low_open=True)


def test_infinity_only_where_allowed():
    with pytest.raises(ValueError, match="c must be a finite number > 1, got inf"):
        check_number("c", math.inf, low=1.0, low_open=True)
    assert check_number("cap", math.inf, low=1.0, allow_infinity=True) == math.inf
    with pytest.raises(ValueError, match=r"delta must be a number in \[1e-06, 1000\], got inf"):
        check_number("delta", math.inf, low=1e-6, high=1e3, allow_infinity=True)


def test_none_only_where_allowed():
    assert check_number("cap", None, low=1.0, allow_none=True) is None
    with pytest.raises(ValueError, match="cap must be None or a finite number >= 1, got 0.5"):
        check_number("cap", 0.5, low=1.0, allow_none=True)
