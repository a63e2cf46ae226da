"""Deterministic Keepa-like data: deals, products and price histories from a seed.

Everything here is a pure function of the seed (and, for deals, of the Keepa
minute asked about), so the simulator, the tests and a rerun after a crash all
see exactly the same data.

Keepa time is minutes since 2011-01-01 UTC; `to_unix_ms` and `from_unix_ms`
convert.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

__all__ = [
    "ALWAYS",
    "BUYBOX_TYPES",
    "CSV_LENGTH",
    "KEEPA_EPOCH_OFFSET",
    "PRICE_TYPES",
    "RATING_TYPES",
    "TRIPLES",
    "Catalog",
    "Deal",
    "Product",
    "from_unix_ms",
    "to_unix_ms",
]

KEEPA_EPOCH_OFFSET = 21564000
"""Keepa minute 0 is this many minutes after the unix epoch (2011-01-01 UTC)."""

PRICE_TYPES = ("AMAZON", "NEW", "USED", "SALES")
"""The first ``csv`` indexes: 0 AMAZON, 1 NEW, 2 USED (cents), 3 SALES rank."""

CSV_LENGTH = 36
"""Entries in a product's ``csv`` (Keepa's price types 0-35; ``null`` where there is no data)."""

ALWAYS = frozenset({0, 1, 2, 3, 7, 11})
"""Types every history has: the four above, NEW_FBM_SHIPPING (7, triples) and COUNT_NEW (11)."""

RATING_TYPES = frozenset({16, 17})
"""RATING and COUNT_REVIEWS: sent with ``rating=1``."""

BUYBOX_TYPES = frozenset({18, 32})
"""BUY_BOX_SHIPPING and BUY_BOX_USED_SHIPPING (triples): sent with ``buybox=1`` (or ``offers``)."""

TRIPLES = frozenset({7, *range(18, 30), 32})
"""Types whose series are ``[minute, price, shipping, ...]`` (Keepa's "_SHIPPING" types)."""

_ASIN_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_HISTORY_DAYS = 3 * 365
_MINUTES_PER_DAY = 1440
_TITLE_WORDS = (
    "Wireless",
    "Compact",
    "Stainless",
    "Organic",
    "Portable",
    "Smart",
    "Classic",
    "Deluxe",
    "Mini",
    "Pro",
    "Kettle",
    "Headphones",
    "Backpack",
    "Blender",
    "Lamp",
    "Charger",
    "Notebook",
    "Drill",
    "Mug",
    "Speaker",
)
_CATEGORIES = (172282, 1055398, 3760911, 165793011, 228013, 16310101, 1064954, 2619525011)


def to_unix_ms(keepa_minute: int) -> int:
    """Unix milliseconds of a Keepa minute."""
    return (keepa_minute + KEEPA_EPOCH_OFFSET) * 60000


def from_unix_ms(unix_ms: float) -> int:
    """The Keepa minute containing a unix time in milliseconds."""
    return int(unix_ms // 60000) - KEEPA_EPOCH_OFFSET


def asin_for(index: int) -> str:
    """The ASIN of catalog entry ``index``: ``B0`` and eight base-36 digits."""
    digits = []
    n = index
    for _ in range(8):
        n, r = divmod(n, 36)
        digits.append(_ASIN_ALPHABET[r])
    return "B0" + "".join(reversed(digits))


@dataclass(frozen=True, slots=True)
class Product:
    """One product as the simulator knows it.

    Attributes:
        asin: The ASIN.
        title: A generated title.
        root_category: A Keepa root category id.
        offer_count: Marketplace offers listed (decides what ``offers=`` costs).
        csv: Full history by price type (`CSV_LENGTH` entries, empty where there is none):
            Keepa ``[minute, value, ...]`` pairs, or triples for `TRIPLES`.
    """

    asin: str
    title: str
    root_category: int
    offer_count: int
    csv: tuple[tuple[int, ...], ...]

    def history(
        self, days: int | None, until: int, *, types: frozenset[int] = ALWAYS
    ) -> list[list[int] | None]:
        """The ``csv`` as Keepa sends it: the series of ``types`` cut to the last ``days`` days before
        Keepa minute ``until``, ``None`` for every other type (and for a series left empty)."""
        start = -math.inf if days is None else until - days * _MINUTES_PER_DAY
        out: list[list[int] | None] = []
        for price_type, series in enumerate(self.csv):
            step = 3 if price_type in TRIPLES else 2
            cut: list[int] = []
            if price_type in types:
                for i in range(0, len(series), step):
                    if start <= series[i] <= until:
                        cut.extend(series[i : i + step])
            out.append(cut or None)
        return out


@dataclass(frozen=True, slots=True)
class Deal:
    """One deal: an ASIN whose price dropped, found at ``creation_date`` (Keepa minutes)."""

    index: int
    asin: str
    title: str
    root_category: int
    current: int
    average: int
    creation_date: int

    def as_json(self, now: int) -> dict[str, object]:
        """The deal as Keepa's ``/deal`` returns it (prices for AMAZON, NEW, USED; -1 unknown)."""
        delta = self.current - self.average
        pct = round(100 * delta / self.average) if self.average else 0
        return {
            "asin": self.asin,
            "title": self.title,
            "rootCat": self.root_category,
            "categories": [self.root_category],
            "current": [self.current, self.current + 150, -1, 4200],
            "delta": [[delta, delta, -1, 0]],
            "deltaPercent": [[pct, pct, -1, 0]],
            "avg": [[self.average, self.average + 150, -1, 4200]],
            "creationDate": self.creation_date,
            "lastUpdate": max(self.creation_date, now - (self.index % 7)),
        }


class Catalog:
    """The simulator's world, derived from ``seed``.

    Deals are created at a steady pace: deal ``i`` appears at
    ``origin + i * 60 / deals_per_hour`` (Keepa minutes), so a collector that
    keeps running keeps finding new deals. Price histories end at ``origin``
    and never change, so fetching a product twice gives the same points.

    Args:
        seed: Seeds every value.
        origin: The Keepa minute at which the world starts (the simulator's start).
        deals_per_hour: New deals per hour of simulated time.
        backlog_hours: Hours of deals already present at ``origin``.
    """

    def __init__(self, seed: int, origin: int, *, deals_per_hour: float = 30.0, backlog_hours: float = 24.0) -> None:
        if deals_per_hour <= 0:
            raise ValueError("deals_per_hour must be positive")
        self.seed = seed
        self.origin = origin
        self.deals_per_hour = deals_per_hour
        self.backlog = int(backlog_hours * deals_per_hour)
        self._deals: dict[int, Deal] = {}

    def _rng(self, *parts: object) -> random.Random:
        return random.Random(":".join(str(p) for p in (self.seed, *parts)))

    def deal_time(self, index: int) -> int:
        """The Keepa minute at which deal ``index`` appears (index 0 is the oldest of the backlog)."""
        return self.origin + math.floor((index - self.backlog) * 60 / self.deals_per_hour)

    def deals_between(self, start: int, end: int) -> list[Deal]:
        """Deals created in Keepa minutes ``[start, end]``, newest first."""
        per_minute = self.deals_per_hour / 60
        first = max(0, math.floor((start - self.origin) * per_minute) + self.backlog - 1)
        out: list[Deal] = []
        i = first
        while True:
            t = self.deal_time(i)
            if t > end:
                break
            if t >= start:
                out.append(self.deal(i))
            i += 1
        out.reverse()
        return out

    def deal(self, index: int) -> Deal:
        """Deal number ``index``; its ASIN is catalog entry ``index``. Cheap: no price history is built."""
        cached = self._deals.get(index)
        if cached is not None:
            return cached
        asin = asin_for(index)
        rng = self._rng("deal", index)
        title = " ".join(rng.choice(_TITLE_WORDS) for _ in range(3))
        avg = rng.randint(900, 25000)
        current = max(99, int(avg * rng.uniform(0.55, 0.9)))
        deal = Deal(index, asin, title, rng.choice(_CATEGORIES), current, avg, self.deal_time(index))
        self._deals[index] = deal
        return deal

    def product(self, asin: str) -> Product:
        """The product for ``asin`` (any well-formed ASIN has one); generated once per process."""
        return _product(self.seed, self.origin, asin)


@functools.lru_cache(maxsize=20000)
def _product(seed: int, origin: int, asin: str) -> Product:
    rng = random.Random(f"{seed}:product:{asin}")
    title = " ".join(rng.choice(_TITLE_WORDS) for _ in range(3))
    series: list[tuple[int, ...]] = []
    base = rng.randint(900, 25000)
    for price_type in range(len(PRICE_TYPES)):
        points: list[int] = []
        minute = origin - _HISTORY_DAYS * _MINUTES_PER_DAY + rng.randint(0, 3000)
        value = base if price_type < 3 else rng.randint(500, 90000)
        while minute <= origin:
            if price_type == 2 and rng.random() < 0.15:
                points.extend((minute, -1))  # no used offer for a while
            else:
                points.extend((minute, value))
            step = 0.9 + 0.2 * rng.random()
            value = max(99, int(value * step)) if price_type < 3 else max(1, int(value * step))
            minute += 2 * _MINUTES_PER_DAY + int(rng.random() * 10 * _MINUTES_PER_DAY)
        series.append(tuple(points))
    category, offer_count = rng.choice(_CATEGORIES), rng.choice((0, 3, 8, 14, 25, 40))
    # The other types come from a generator of their own, so the four above stay as they always were.
    more = random.Random(f"{seed}:product-more:{asin}")
    csv: list[tuple[int, ...]] = [*series, *([()] * (CSV_LENGTH - len(series)))]
    new_series = series[1]
    csv[7] = _with_shipping(new_series, more)  # NEW_FBM_SHIPPING: the NEW price, plus shipping
    csv[18] = _with_shipping(series[0], more)  # BUY_BOX_SHIPPING: Amazon's price holds the buy box
    csv[32] = _with_shipping(series[2], more)  # BUY_BOX_USED_SHIPPING
    csv[11] = _walk(new_series[0::2], more, offer_count or 1, 0, 60)  # COUNT_NEW
    csv[16] = _walk(new_series[0::2], more, more.randint(30, 48), 10, 50)  # RATING, 0-50
    csv[17] = _walk(new_series[0::2], more, more.randint(5, 900), 0, 1_000_000, grow=True)  # COUNT_REVIEWS
    return Product(asin, title, category, offer_count, tuple(csv))


def _with_shipping(pairs: tuple[int, ...], rng: random.Random) -> tuple[int, ...]:
    """``[minute, price, ...]`` as ``[minute, price, shipping, ...]``; no offer (-1) has no shipping (-1)."""
    out: list[int] = []
    for i in range(0, len(pairs), 2):
        price = pairs[i + 1]
        out += (pairs[i], price, -1 if price < 0 else rng.choice((0, 0, 399, 499, 599)))
    return tuple(out)


def _walk(
    minutes: tuple[int, ...], rng: random.Random, start: int, low: int, high: int, *, grow: bool = False
) -> tuple[int, ...]:
    """A count or rating at each of ``minutes``: a bounded random walk (only upwards with ``grow``)."""
    out: list[int] = []
    value = start
    for minute in minutes:
        out += (minute, value)
        step = rng.randint(0, max(1, value // 20)) if grow else rng.randint(-2, 2)
        value = min(high, max(low, value + step))
    return tuple(out)
