"""`Rate`: how many tokens a bucket gains over how long."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ._exceptions import ConfigurationError
from ._validate import check_positive

__all__ = ["Rate"]


@dataclass(frozen=True, slots=True)
class Rate:
    """A refill rate: ``amount`` tokens every ``per`` seconds.

    ``Rate(5, per=60)`` and ``Rate.parse("5/minute")`` are the same rate. Rates
    are exact as given; `per_second` is derived.

    Args:
        amount: Tokens gained each period; finite and greater than zero.
        per: The period in seconds; finite and greater than zero (default 1).

    Raises:
        ConfigurationError: ``amount`` or ``per`` is zero, negative, NaN or infinite.
        TypeError: ``amount`` or ``per`` is not a number.
    """

    amount: float
    per: float = 1.0

    def __post_init__(self) -> None:
        check_positive("rate amount", self.amount)
        check_positive("rate period (per)", self.per)
        if not math.isfinite(self.amount / self.per) or self.amount / self.per == 0.0:
            raise ConfigurationError(f"rate {self.amount!r} per {self.per!r} s is not a usable number")

    @property
    def per_second(self) -> float:
        """Tokens gained per second."""
        return self.amount / self.per

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse a rate string with the `limits` grammar.

        Accepts ``"5/minute"``, ``"5 per minute"``, ``"300/hour"``, ``"10 per 2 minutes"``
        (units: second, minute, hour, day, month, year; limits counts a month as 30
        days and a year as 360).

        Raises:
            ConfigurationError: the string is not one rate (the message names it).
            TypeError: ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise TypeError(f"rate must be a Rate or a string like '5/minute', not {type(text).__name__}")
        if any(sep in text for sep in ";,|"):
            raise ConfigurationError(
                f"rate {text!r} holds several limits; give exactly one, like '5/minute' "
                "(a bucket takes several: TokenBucket(..., rate='10/second; 600/hour'))"
            )
        from limits import parse  # deferred: only parsing needs limits

        try:
            item = parse(text)
        except ValueError as exc:
            raise ConfigurationError(
                f"cannot parse rate {text!r}: expected '<amount>/<unit>' or '<amount> per <n> <units>', "
                "for example '5/minute' or '10 per 2 minutes'"
            ) from exc
        if item.amount <= 0:
            raise ConfigurationError(f"rate {text!r} has amount {item.amount}; it must be greater than zero")
        return cls(item.amount, per=float(item.get_expiry()))

    @classmethod
    def parse_many(cls, text: str) -> tuple[Rate, ...]:
        """Parse one or several rates: ``"10/second; 600/hour"`` (the `limits` grammar).

        The rates are separated by ``;``, ``,`` or ``|``, as `limits.parse_many`
        and Flask-Limiter read them; each is parsed as by `parse`.

        Raises:
            ConfigurationError: a piece is not a rate, or there is none.
            TypeError: ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise TypeError(f"rate must be a Rate or a string like '5/minute', not {type(text).__name__}")
        pieces = [piece.strip() for piece in re.split(r"[;,|]", text)]
        if not any(pieces):
            raise ConfigurationError(f"rate {text!r} names no limit; give one or more, like '10/second; 600/hour'")
        if not all(pieces):
            raise ConfigurationError(f"rate {text!r} has an empty limit between separators")
        return tuple(cls.parse(piece) for piece in pieces)

    @classmethod
    def coerce(cls, value: Rate | str) -> Rate:
        """Return ``value`` as a `Rate`, parsing strings.

        Raises:
            TypeError: ``value`` is neither a `Rate` nor a string.
            ConfigurationError: the string cannot be parsed.
        """
        if isinstance(value, Rate):
            return value
        return cls.parse(value)

    def __str__(self) -> str:
        return f"{self.amount:g}/{self.per:g}s"
