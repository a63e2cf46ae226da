"""Argument checks shared by every front end. Each raises before any state changes."""

from __future__ import annotations

import math

from ._exceptions import ConfigurationError

__all__ = [
    "MAX_AMOUNT",
    "check_amount",
    "check_cost",
    "check_name",
    "check_nonnegative",
    "check_positive",
    "check_timeout",
]

#: The largest number of tokens any one value may name (a cost, a capacity, a
#: finite overdraft, a reported balance). Far beyond any real quota, and small
#: enough that no sum of such values in a bucket's life leaves float range, so a
#: balance can never become infinite.
MAX_AMOUNT = 1e15


def _number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ConfigurationError(f"{what} is too large to be a number of tokens or seconds, got {value!r}") from None


def _bounded(what: str, number: float, value: object) -> float:
    if abs(number) > MAX_AMOUNT:
        raise ConfigurationError(f"{what} must be at most {MAX_AMOUNT:g} in size, got {value!r}")
    return number


def check_amount(what: str, value: object) -> float:
    """A number of tokens that may be negative (a reported balance): finite, at most `MAX_AMOUNT` in size."""
    number = _number(what, value)
    if not math.isfinite(number):
        raise ConfigurationError(f"{what} must be a finite number, got {value!r}")
    return _bounded(what, number, value)


def check_positive(what: str, value: object) -> float:
    """A finite number greater than zero."""
    number = _number(what, value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{what} must be a finite number greater than zero, got {value!r}")
    return number


def check_nonnegative(what: str, value: object, *, allow_inf: bool = False) -> float:
    """A number at least zero; infinity only when ``allow_inf``."""
    number = _number(what, value)
    if math.isnan(number) or number < 0 or (math.isinf(number) and not allow_inf):
        bound = "zero or more (math.inf allowed)" if allow_inf else "a finite number, zero or more"
        raise ConfigurationError(f"{what} must be {bound}, got {value!r}")
    return number


def check_cost(value: object, what: str = "cost") -> float:
    """A request cost: finite, zero or more, at most `MAX_AMOUNT`."""
    if type(value) is int and 0 <= value <= MAX_AMOUNT:  # the common case, checked cheaply
        return value
    return _bounded(what, check_nonnegative(what, value), value)


def check_timeout(value: object) -> float | None:
    """A timeout: None (wait as long as needed), or seconds, zero or more; math.inf means None."""
    if value is None:
        return None
    number = check_nonnegative("timeout", value, allow_inf=True)
    return None if math.isinf(number) else number


def check_name(value: object) -> str:
    """A bucket or lease name: a non-empty string."""
    if not isinstance(value, str):
        raise TypeError(f"name must be a string, not {type(value).__name__}")
    if not value:
        raise ConfigurationError("name must not be empty")
    return value
