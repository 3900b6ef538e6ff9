"""One way to check a numeric argument, used by every layer (operator, rules, loss, integrations).

A number is any real scalar (Python int or float, numpy scalars) except bool; NaN is refused, and
so is an infinity unless the range says otherwise. The checked value comes back as a float, and a
refusal is a ValueError that names the argument and the accepted values.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, overload


def describe_range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """The accepted values in words: ``a number in [0, 1)``, ``a number > 1``, ``a number >= 0``."""
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


@overload
def check_number(
    name: str,
    value: object,
    *,
    low: float | None = ...,
    high: float | None = ...,
    low_open: bool = ...,
    high_open: bool = ...,
    allow_none: Literal[False] = ...,
    allow_infinity: bool = ...,
) -> float: ...
@overload
def check_number(
    name: str,
    value: object,
    *,
    low: float | None = ...,
    high: float | None = ...,
    low_open: bool = ...,
    high_open: bool = ...,
    allow_none: bool,
    allow_infinity: bool = ...,
) -> float | None: ...
def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
    allow_infinity: bool = False,
) -> float | None:
    """``value`` as a float if it is a number in the range; None if it is None and ``allow_none``.

    The range is [low, high], open at an end with ``low_open`` / ``high_open``; a missing end is
    unbounded. +-inf pass only with ``allow_infinity`` (and inside the range).

    >>> check_number("delta", 1, low=0.0, low_open=True)
    1.0
    >>> check_number("delta", 0.0, low=0.0, low_open=True)
    Traceback (most recent call last):
    ValueError: delta must be a finite number > 0, got 0.0
    """
    if value is None and allow_none:
        return None
    accepted = describe_range(low, high, low_open, high_open)
    if not allow_infinity and (low is None or high is None):
        accepted = accepted.replace("a number", "a finite number")
    if allow_none:
        accepted = f"None or {accepted}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    number = float(value)
    inside = not math.isnan(number) and (allow_infinity or math.isfinite(number))
    if low is not None:
        inside = inside and (number > low if low_open else number >= low)
    if high is not None:
        inside = inside and (number < high if high_open else number <= high)
    if not inside:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return number
