"""A Keepa-like API simulator, with an SP-API restriction check beside it.

`KeepaSimulator` is the service without HTTP: it takes a request (method,
path, query, headers) and returns a status, headers and a JSON body. It follows
Keepa's token rules (see ``/work/shared/KEEPA.md``):

* tokens refill once a minute by ``refill_rate``; the bucket holds ``60 × refill_rate``;
* a request runs while the balance is positive and its whole cost is charged
  afterwards, so the balance can go far below zero;
* at a balance of zero or less the answer is HTTP 429;
* every body carries ``timestamp``, ``tokensLeft``, ``refillIn``, ``refillRate``,
  ``tokenFlowReduction``, ``tokensConsumed`` and ``processingTimeInMs``.

`SimulatorServer` serves it over real HTTP (``ThreadingHTTPServer``) on a
loopback port; ``time_scale`` makes its clock run that many times faster than
the wall clock, so an hour of refill takes seconds.

Endpoints, as the public ``keepa`` client calls them: ``/token`` (free),
``/deal`` (5 tokens a page of up to 150; category, price and percent filters),
``/product`` (Keepa's cost rules; history with all 36 csv types, offers with
their offer and stock history, buy box, rating, stats, ``domain``, ``code``),
``/bestsellers`` (50), ``/category`` and ``/search?type=category`` (1),
``/seller`` (1 a seller), ``/query`` (10 + 1 per 100 ASINs; current price,
sales rank, category and title filters over a fixed window of the catalog),
``/listings/2021-08-01/restrictions`` (SP-API: 5 requests/s, burst 10,
``QuotaExceeded``), and ``/_sim/stats`` (the counters, no key needed).

``timestamp`` is the server's wall clock and ``refillIn`` real milliseconds,
at any time scale, so a client's own wait-for-refill logic works; data times
(Keepa minutes) run on the simulated clock. Memory is bounded (one counter
per endpoint) and so is every input (request target, body, ASIN and seller
lists).
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .catalog import (
    ALWAYS,
    BUYBOX_TYPES,
    CSV_LENGTH,
    RATING_TYPES,
    TRIPLES,
    Catalog,
    asin_for,
    from_unix_ms,
    to_unix_ms,
)
from .serving import LocalServer

__all__ = ["KeepaSimulator", "Response", "SimConfig", "SimulatorServer"]

DEAL_PAGE_SIZE = 150
DEAL_PAGE_COST = 5
MAX_ASINS = 100
SP_RATE = 5.0
SP_BURST = 10.0
RESTRICTIONS_PATH = "/listings/2021-08-01/restrictions"
BESTSELLERS_COST = 50
FINDER_COST = 10  # /query: 10 + 1 per 100 ASINs returned
FINDER_POOL = 500  # products the finder searches
STOREFRONT_EXTRA = 9  # /seller with storefront=1: assumed 10 a seller (KEEPA.md gives only 1 a seller)
MAX_SELLERS = 100
MAX_TARGET = 8192  # longest request line and query accepted, in bytes
MAX_BODY = 65536  # longest request body read
_KEEPA_PATHS = frozenset({"/token", "/deal", "/product", "/bestsellers", "/category", "/search", "/seller", "/query"})
_DOMAINS = frozenset({1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12})
_ASIN_RE = re.compile(r"^[A-Z0-9]{10}$")
_CODE_RE = re.compile(r"^[0-9]{10,13}$")
_SELLER_RE = re.compile(r"^A[A-Z0-9]{9,20}$")
_SELLER_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_CATEGORY_NAMES = {
    172282: "Electronics",
    1055398: "Home & Kitchen",
    3760911: "Beauty & Personal Care",
    165793011: "Toys & Games",
    228013: "Tools & Home Improvement",
    16310101: "Grocery & Gourmet Food",
    1064954: "Office Products",
    2619525011: "Appliances",
}
_DATE_RANGES = {0: 1, 1: 7, 2: 31, 3: 90}  # Keepa deal dateRange -> days
_ORIGIN_MINUTE = from_unix_ms(1767225600000)  # 2026-01-01 00:00 UTC: the world is the same on every run


@dataclass(slots=True)
class SimConfig:
    """How the simulator behaves.

    Attributes:
        api_key: The only key accepted (``key`` query parameter; SP-API: ``x-amz-access-token``).
        refill_rate: Tokens per minute (the plan); the bucket holds 60 times this.
        initial_tokens: Balance at start; default a full bucket.
        time_scale: How many times faster than the wall clock the simulator's clock runs.
        seed: Seeds all data.
        cost_noise: 0 for exact Keepa costs; ``p > 0`` adds up to ``p × cost`` (random) to each ASIN's cost.
        deals_per_hour: New deals per simulated hour.
        backlog_hours: Hours of deals present at start.
        latency: Wall seconds each request takes to process (between the balance check and the charge).
    """

    api_key: str = "demo-key"
    refill_rate: int = 20
    initial_tokens: int | None = None
    time_scale: float = 1.0
    seed: int = 1
    cost_noise: float = 0.0
    deals_per_hour: float = 30.0
    backlog_hours: float = 24.0
    latency: float = 0.0

    def __post_init__(self) -> None:
        if self.refill_rate <= 0:
            raise ValueError("refill_rate must be a positive number of tokens per minute")
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise ValueError("time_scale must be a positive number")
        if not 0 <= self.cost_noise <= 10:
            raise ValueError("cost_noise must be between 0 and 10")
        if self.latency < 0:
            raise ValueError("latency must not be negative")


@dataclass(slots=True)
class Response:
    """What the simulator answers: status, extra headers, JSON body."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Counters:
    """What the simulator has seen; `KeepaSimulator.stats` returns a copy as a dict."""

    requests: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    keepa_429: int = 0
    payment_required: int = 0
    bad_requests: int = 0
    tokens_charged: int = 0
    min_balance: float = math.inf
    products_served: int = 0
    deals_served: int = 0
    sp_requests: int = 0
    sp_429: int = 0
    in_flight: int = 0
    sp_in_flight: int = 0
    sp_max_in_flight: int = 0


class KeepaSimulator:
    """The simulated service, independent of HTTP. Thread-safe.

    Args:
        config: The behaviour; see `SimConfig`.
        clock: Wall seconds (default `time.monotonic`); the simulated time is
            ``start + (clock() - clock_at_start) × time_scale``. Pass a
            `tokenbucket.testing.ManualClock`'s ``now`` to drive it in virtual time.
    """

    def __init__(self, config: SimConfig | None = None, *, clock: Callable[[], float] | None = None) -> None:
        self.config = config or SimConfig()
        self._clock = clock or time.monotonic
        self._t0 = self._clock()
        self._wall0 = time.time()  # `timestamp` is the server's wall clock, as Keepa's is
        self._admitted: list[float] = []
        self._start_ms = to_unix_ms(_ORIGIN_MINUTE)
        self.catalog = Catalog(
            self.config.seed,
            _ORIGIN_MINUTE,
            deals_per_hour=self.config.deals_per_hour,
            backlog_hours=self.config.backlog_hours,
        )
        self._lock = threading.Lock()
        self._capacity = 60 * self.config.refill_rate
        start = self.config.initial_tokens
        self._tokens: float = float(self._capacity if start is None else start)
        self._refills = 0
        self._sp_tokens = SP_BURST
        self._sp_updated = 0.0
        self._counters = Counters(min_balance=self._tokens)
        self._noise = random.Random(f"{self.config.seed}:noise")

    # --- time -----------------------------------------------------------------------------------

    def admitted_at(self) -> list[float]:
        """The simulated second at which each Keepa call that was not refused was admitted, in order.

        What a test judges a client's request rate by, on the upstream's side.
        """
        with self._lock:
            return list(self._admitted)

    def elapsed(self) -> float:
        """Simulated seconds since start."""
        return (self._clock() - self._t0) * self.config.time_scale

    def now_ms(self) -> int:
        """Simulated unix time in milliseconds."""
        return self._start_ms + int(self.elapsed() * 1000)

    def now_minute(self) -> int:
        """Simulated Keepa minute."""
        return from_unix_ms(self.now_ms())

    # --- tokens ---------------------------------------------------------------------------------

    def _refill(self, elapsed: float) -> None:
        due = int(elapsed // 60)
        if due > self._refills:
            if self._tokens < self._capacity:
                added = (due - self._refills) * self.config.refill_rate
                self._tokens = min(float(self._capacity), self._tokens + added)
            self._refills = due

    def tokens(self) -> float:
        """The balance now (after any refill that is due)."""
        with self._lock:
            self._refill(self.elapsed())
            return self._tokens

    def wall_ms(self) -> int:
        """The server's wall clock in unix milliseconds (what ``timestamp`` says)."""
        return int((self._wall0 + (self._clock() - self._t0)) * 1000)

    def _fields(self, consumed: int, began: float) -> dict[str, Any]:
        elapsed = self.elapsed()
        self._refill(elapsed)
        # Milliseconds of real time to the next refill, at any time scale: a client that waits
        # timestamp + refillIn - now (as the keepa package does) wakes when the tokens are there.
        refill_in = math.ceil((60000 - (elapsed * 1000) % 60000) / self.config.time_scale)
        return {
            "timestamp": self.wall_ms(),
            "tokensLeft": math.floor(self._tokens),
            "refillIn": refill_in,
            "refillRate": self.config.refill_rate,
            "tokenFlowReduction": 0.0,
            "tokensConsumed": consumed,
            "processingTimeInMs": int((time.monotonic() - began) * 1000),
        }

    def stats(self) -> dict[str, Any]:
        """The counters, the balance and the simulated time, as plain JSON-ready data."""
        with self._lock:
            self._refill(self.elapsed())
            c = self._counters
            return {
                "requests": c.requests,
                "by_endpoint": dict(c.by_endpoint),
                "keepa_429": c.keepa_429,
                "payment_required": c.payment_required,
                "bad_requests": c.bad_requests,
                "tokens_charged": c.tokens_charged,
                "min_balance": c.min_balance,
                "products_served": c.products_served,
                "deals_served": c.deals_served,
                "sp_requests": c.sp_requests,
                "sp_429": c.sp_429,
                "in_flight": c.in_flight,
                "sp_max_in_flight": c.sp_max_in_flight,
                "tokens_left": self._tokens,
                "refill_rate": self.config.refill_rate,
                "capacity": self._capacity,
                "time_scale": self.config.time_scale,
                "simulated_seconds": self.elapsed(),
                "keepa_minute": from_unix_ms(self._start_ms + int(self.elapsed() * 1000)),
            }

    # --- dispatch -------------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Mapping[str, str] | None = None) -> Response:
        """Answer one request. ``target`` is the path with its query string."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if path == "/_sim/stats":  # not counted: reading the counters does not change them
            return Response(200, self.stats())
        known = path == RESTRICTIONS_PATH or path in _KEEPA_PATHS
        with self._lock:
            self._counters.requests += 1
            counted = path if known else "(other)"  # bounded: one counter per endpoint, one for the rest
            self._counters.by_endpoint[counted] = self._counters.by_endpoint.get(counted, 0) + 1
        if path == RESTRICTIONS_PATH:
            if method != "GET":
                return Response(405, _sp_error("MethodNotAllowed", f"{method} is not allowed here"))
            return self._restrictions(query, hdrs)
        if not known:
            return self._keepa_error(404, "notFound", f"no such endpoint: {path[:100]}", time.monotonic())
        if method not in ("GET", "POST"):
            return self._keepa_error(405, "methodNotAllowed", f"{method} is not allowed", time.monotonic())
        return self._keepa(path, query)

    def _keepa_error(self, status: int, kind: str, message: str, began: float) -> Response:
        with self._lock:
            if status == 402:
                self._counters.payment_required += 1
            elif status == 400:
                self._counters.bad_requests += 1
            body = self._fields(0, began)
        body["error"] = {"type": kind, "message": message}
        return Response(status, body)

    def _keepa(self, path: str, query: dict[str, str]) -> Response:
        began = time.monotonic()
        if query.get("key") != self.config.api_key:
            return self._keepa_error(402, "paymentRequired", "invalid or missing API key", began)
        if path == "/token":
            with self._lock:
                return Response(200, self._fields(0, began))
        try:
            work = self._work(path, query)
        except _BadRequest as exc:
            return self._keepa_error(400, "badRequest", str(exc), began)
        with self._lock:
            self._refill(self.elapsed())
            if self._tokens <= 0:
                self._counters.keepa_429 += 1
                body = self._fields(0, began)
                body["error"] = {"type": "tooManyRequests", "message": "not enough tokens"}
                return Response(429, body)
            self._counters.in_flight += 1
            self._admitted.append(self.elapsed())
        try:
            if self.config.latency:
                time.sleep(self.config.latency)
            payload, cost = work()
        finally:
            with self._lock:
                self._counters.in_flight -= 1
        with self._lock:
            self._refill(self.elapsed())
            self._tokens -= cost
            c = self._counters
            c.tokens_charged += cost
            c.min_balance = min(c.min_balance, self._tokens)
            if path == "/deal":
                c.deals_served += len(payload["deals"]["dr"])
            elif path == "/product":
                c.products_served += len(payload["products"])
            body = self._fields(cost, began)
        body.update(payload)
        return Response(200, body)

    def _work(self, path: str, query: dict[str, str]) -> Callable[[], tuple[dict[str, Any], int]]:
        """Validate a request (raising `_BadRequest`) and return what answers it: ``work() -> (payload, cost)``."""
        domain = _domain(query.get("domain", "1"))
        if path == "/deal":
            return self._deal_work(query)
        if path == "/product":
            return self._product_work(query, domain)
        if path == "/bestsellers":
            return self._bestsellers_work(query, domain)
        if path in ("/category", "/search"):
            return self._category_work(path, query, domain)
        if path == "/seller":
            return self._seller_work(query, domain)
        return self._finder_work(query, domain)  # /query

    def _deal_work(self, query: dict[str, str]) -> Callable[[], tuple[dict[str, Any], int]]:
        selection = _selection(query, "deal")
        page = selection.get("page", 0)
        date_range = selection.get("dateRange", 0)
        if not isinstance(page, int) or page < 0:
            raise _BadRequest("selection.page must be a non-negative integer")
        if date_range not in _DATE_RANGES:
            raise _BadRequest("selection.dateRange must be 0, 1, 2 or 3")
        _domain(str(selection.get("domainId", 1)))
        price_types = selection.get("priceTypes", [0])
        if isinstance(price_types, int):  # the keepa package sends a bare number
            price_types = [price_types]
        if not (isinstance(price_types, list) and len(price_types) == 1 and price_types[0] in range(CSV_LENGTH)):
            raise _BadRequest("selection.priceTypes must name one price type (0-35)")
        include = _id_set(selection, "includeCategories")
        exclude = _id_set(selection, "excludeCategories")
        current = _range(selection, "currentRange")
        percent = _range(selection, "deltaPercentRange")
        words = str(selection.get("titleSearch") or "").lower().split()

        def keep(d: Any) -> bool:
            pct = round(100 * (d.current - d.average) / d.average) if d.average else 0
            return (
                (include is None or d.root_category in include)
                and (exclude is None or d.root_category not in exclude)
                and (current is None or current[0] <= d.current <= current[1])
                and (percent is None or percent[0] <= -pct <= percent[1])  # a drop of 30% is 30
                and all(w in d.title.lower() for w in words)
            )

        def work() -> tuple[dict[str, Any], int]:
            now = self.now_minute()
            deals = [d for d in self.catalog.deals_between(now - _DATE_RANGES[date_range] * 1440, now) if keep(d)]
            chunk = deals[page * DEAL_PAGE_SIZE : (page + 1) * DEAL_PAGE_SIZE]
            dr = [d.as_json(now) for d in chunk]
            cats = sorted({d.root_category for d in chunk})
            body = {"dr": dr, "categoryIds": cats, "categoryNames": [_CATEGORY_NAMES.get(c, str(c)) for c in cats]}
            body["categoryCount"] = [sum(d.root_category == c for d in chunk) for c in cats]
            return {"deals": body}, DEAL_PAGE_COST

        return work

    def _product_work(self, query: dict[str, str], domain: int) -> Callable[[], tuple[dict[str, Any], int]]:
        codes = [c.strip() for c in query.get("code", "").split(",") if c.strip()]
        asins = [a.strip() for a in query.get("asin", "").split(",") if a.strip()]
        if asins and codes:
            raise _BadRequest("pass asin or code, not both")
        if not asins and not codes:
            raise _BadRequest("missing parameter: asin or code (comma-separated, up to 100)")
        items = asins or codes
        if len(items) > MAX_ASINS:
            raise _BadRequest(f"too many products: {len(items)} (at most {MAX_ASINS} per request)")
        bad = [a for a in asins if not _ASIN_RE.match(a)] + [c for c in codes if not _CODE_RE.match(c)]
        if bad:
            kind = "ASIN" if asins else "product code (UPC, EAN or ISBN-13: 10 to 13 digits)"
            raise _BadRequest(f"malformed {kind}: {bad[0][:20]!r}")
        flags = {}
        for name in ("offers", "stock", "buybox", "rating", "update", "days", "history", "stats", "only-live-offers"):
            value = query.get(name)
            if value is None or value == "":
                continue
            try:
                flags[name] = int(value)
            except ValueError:
                if name == "stats":  # a date range ("2025-01-01,2025-02-01") is allowed too
                    flags[name] = 180
                    continue
                raise _BadRequest(f"{name} must be an integer, got {value[:20]!r}") from None
        offers = flags.get("offers", 0)
        if offers and not 20 <= offers <= 100:
            raise _BadRequest("offers must be between 20 and 100")
        days = flags.get("days")
        if days is not None and days <= 0:
            raise _BadRequest("days must be positive")
        history = flags.get("history", 1) != 0
        buybox = bool(flags.get("buybox"))
        rating = bool(flags.get("rating"))
        stock = bool(flags.get("stock"))
        stats = flags.get("stats")

        def work() -> tuple[dict[str, Any], int]:
            now = self.now_minute()
            products = []
            cost = 0
            for item in dict.fromkeys(items):
                asin = item if asins else _asin_for_code(item)
                p = self.catalog.product(asin)
                types = ALWAYS | (RATING_TYPES if rating else frozenset()) | (BUYBOX_TYPES if buybox else frozenset())
                entry = _product_json(p, asin, domain, now, self.catalog.origin)
                entry["csv"] = p.history(days, self.catalog.origin, types=types) if history else None
                if codes:
                    entry["eanList" if len(item) == 13 else "upcList"] = [item]
                one = 1
                if offers:
                    pages = math.ceil(min(offers, p.offer_count) / 10)
                    one = 6 * pages if pages else 1
                    entry.update(_offers_json(self.config.seed, p, offers, stock, days, self.catalog.origin))
                    if stock:
                        one += 2
                elif buybox:
                    one += 2  # with offers the buy box comes free (Keepa: "ignored if offers is used")
                if buybox or offers:
                    entry.update(_buybox_json(self.config.seed, p, days, self.catalog.origin))
                if rating:
                    one += 1
                if stats:
                    entry["stats"] = _stats_json(p, self.catalog.origin, stock)
                if flags.get("update") == 0:
                    one += 1
                if self.config.cost_noise:
                    with self._lock:
                        one += round(one * self._noise.uniform(0, self.config.cost_noise))
                cost += one
                products.append(entry)
            return {"products": products}, cost

        return work

    def _bestsellers_work(self, query: dict[str, str], domain: int) -> Callable[[], tuple[dict[str, Any], int]]:
        category = _int(query, "category")
        if category is None:
            raise _BadRequest("missing parameter: category")

        def work() -> tuple[dict[str, Any], int]:
            rng = random.Random(f"{self.config.seed}:bestsellers:{domain}:{category}")
            asins = [asin_for(rng.randrange(10**6)) for _ in range(100)]
            body = {"domainId": domain, "lastUpdate": self.now_minute(), "categoryId": category, "asinList": asins}
            return {"bestSellersList": body}, BESTSELLERS_COST

        return work

    def _category_work(
        self, path: str, query: dict[str, str], domain: int
    ) -> Callable[[], tuple[dict[str, Any], int]]:
        if path == "/search":
            if query.get("type") != "category":
                raise _BadRequest("search type must be 'category' (product search is not simulated)")
            term = query.get("term", "").strip().lower()
            if not term:
                raise _BadRequest("missing parameter: term")
            ids = [c for c, name in _CATEGORY_NAMES.items() if all(w in name.lower() for w in term.split())]
        else:
            raw = query.get("category", "")
            try:
                ids = [int(c) for c in raw.split(",") if c.strip()]
            except ValueError:
                raise _BadRequest(f"category must be comma-separated ids, got {raw[:40]!r}") from None
            if not ids or len(ids) > 10:
                raise _BadRequest("category: between 1 and 10 ids")
            ids = [c for c in ids if c in _CATEGORY_NAMES or c == 0]

        def work() -> tuple[dict[str, Any], int]:
            cats = {str(c): _category_json(c, domain) for c in ids if c}
            if 0 in ids:  # the root: every top-level category
                cats.update({str(c): _category_json(c, domain) for c in _CATEGORY_NAMES})
            return {"categories": cats}, 1

        return work

    def _seller_work(self, query: dict[str, str], domain: int) -> Callable[[], tuple[dict[str, Any], int]]:
        ids = [s.strip() for s in query.get("seller", "").split(",") if s.strip()]
        if not ids or len(ids) > MAX_SELLERS:
            raise _BadRequest(f"seller: between 1 and {MAX_SELLERS} seller ids")
        bad = [i for i in ids if not _SELLER_RE.match(i)]
        if bad:
            raise _BadRequest(f"malformed seller id: {bad[0][:20]!r}")
        storefront = _int(query, "storefront") == 1

        def work() -> tuple[dict[str, Any], int]:
            now = self.now_minute()
            sellers = {i: _seller_json(self.config.seed, i, domain, now, storefront) for i in dict.fromkeys(ids)}
            return {"sellers": sellers}, len(sellers) * (1 + (STOREFRONT_EXTRA if storefront else 0))

        return work

    def _finder_work(self, query: dict[str, str], domain: int) -> Callable[[], tuple[dict[str, Any], int]]:
        selection = _selection(query, "product")
        per_page = selection.get("perPage", 50)
        page = selection.get("page", 0)
        if not (isinstance(per_page, int) and 50 <= per_page <= 10000) or not (isinstance(page, int) and page >= 0):
            raise _BadRequest("selection.perPage must be 50-10000 and selection.page non-negative")
        keep = _finder_filter(selection)

        def work() -> tuple[dict[str, Any], int]:
            # The finder searches a window of the catalog (FINDER_POOL products, the same for every query).
            pool = [asin_for(i) for i in range(FINDER_POOL)]
            found = [a for a in pool if keep(self.catalog.product(a))]
            asins = found[page * per_page : (page + 1) * per_page]
            return {"asinList": asins, "totalResults": len(found)}, FINDER_COST + math.ceil(len(asins) / 100)

        return work

    # --- SP-API ---------------------------------------------------------------------------------

    def _restrictions(self, query: dict[str, str], headers: dict[str, str]) -> Response:
        limit = {"x-amzn-RateLimit-Limit": f"{SP_RATE:.1f}"}
        if headers.get("x-amz-access-token") != self.config.api_key:
            return Response(403, _sp_error("Unauthorized", "Access to requested resource is denied."))
        missing = [p for p in ("asin", "sellerId", "marketplaceIds") if not query.get(p)]
        if missing:
            return Response(400, _sp_error("InvalidInput", f"missing parameter: {missing[0]}"), limit)
        with self._lock:
            self._counters.sp_requests += 1
            now = self.elapsed()
            self._sp_tokens = min(SP_BURST, self._sp_tokens + (now - self._sp_updated) * SP_RATE)
            self._sp_updated = now
            if self._sp_tokens < 1:
                self._counters.sp_429 += 1
                return Response(429, _sp_error("QuotaExceeded", "You exceeded your quota for the requested resource."))
            self._sp_tokens -= 1
            c = self._counters
            c.sp_in_flight += 1
            c.sp_max_in_flight = max(c.sp_max_in_flight, c.sp_in_flight)
        try:
            if self.config.latency:
                time.sleep(self.config.latency)
        finally:
            with self._lock:
                self._counters.sp_in_flight -= 1
        asin = query["asin"]
        roll = random.Random(f"{self.config.seed}:restriction:{asin}").random()
        reasons: list[dict[str, Any]] = []
        if not _ASIN_RE.match(asin) or roll >= 0.95:
            reasons.append({"reasonCode": "ASIN_NOT_FOUND", "message": "This ASIN is not in the catalog."})
        elif roll >= 0.9:
            reasons.append({"reasonCode": "NOT_ELIGIBLE", "message": "Not eligible for listing."})
        elif roll >= 0.7:
            reasons.append({"reasonCode": "APPROVAL_REQUIRED", "message": "You need approval to list.", "links": []})
        restrictions = (
            [{"marketplaceId": query["marketplaceIds"], "conditionType": "new_new", "reasons": reasons}]
            if reasons
            else []
        )
        return Response(200, {"restrictions": restrictions}, limit)


class _BadRequest(Exception):
    """A request the simulator rejects with HTTP 400."""


def _selection(query: dict[str, str], kind: str) -> dict[str, Any]:
    """The JSON object in the ``selection`` parameter, or `_BadRequest`."""
    raw = query.get("selection")
    if raw is None:
        raise _BadRequest(f"missing parameter: selection (a JSON {kind} query)")
    try:
        selection = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"selection is not valid JSON: {exc}") from None
    if not isinstance(selection, dict):
        raise _BadRequest("selection must be a JSON object")
    return selection


def _finder_filter(selection: dict[str, Any]) -> Callable[[Any], bool]:
    """What a product finder selection keeps: ``current_<TYPE>_gte`` / ``_lte`` for AMAZON, NEW, USED and
    SALES (the latest value of that history), ``rootCategory`` (one id or a list), ``title`` (words, any
    case). Other keys are accepted and not applied."""
    bounds: list[tuple[int, int, int]] = []  # (price type, low, high)
    for index, name in enumerate(("AMAZON", "NEW", "USED", "SALES")):
        low, high = selection.get(f"current_{name}_gte"), selection.get(f"current_{name}_lte")
        for value in (low, high):
            if value is not None and not isinstance(value, int):
                raise _BadRequest(f"selection.current_{name}_gte/lte must be integers")
        if low is not None or high is not None:
            bounds.append((index, -(10**12) if low is None else low, 10**12 if high is None else high))
    raw_roots = selection.get("rootCategory")
    if isinstance(raw_roots, (int, str)):
        raw_roots = [raw_roots]
    try:
        roots = None if raw_roots is None else [int(r) for r in raw_roots]  # ids as numbers or as strings
    except (TypeError, ValueError):
        raise _BadRequest("selection.rootCategory must be a category id or a list of them") from None
    words = str(selection.get("title") or "").lower().split()

    def keep(p: Any) -> bool:
        for index, low, high in bounds:
            series = p.csv[index]
            if not series or not low <= series[-1] <= high:
                return False
        return (roots is None or p.root_category in roots) and all(w in p.title.lower() for w in words)

    return keep


def _domain(text: str) -> int:
    """A Keepa domain id (1-12, not the reserved 0 and 7), or `_BadRequest`."""
    try:
        domain = int(text)
    except ValueError:
        raise _BadRequest(f"domain must be a Keepa domain id (1-12), got {text[:20]!r}") from None
    if domain not in _DOMAINS:
        raise _BadRequest(f"domain {domain} is not a Keepa marketplace (1-6, 8-12)")
    return domain


def _int(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer, got {value[:20]!r}") from None


def _id_set(selection: dict[str, Any], name: str) -> set[int] | None:
    value = selection.get(name)
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value) or len(value) > 500:
        raise _BadRequest(f"selection.{name} must be a list of category ids")
    return set(value)


def _range(selection: dict[str, Any], name: str) -> tuple[int, int] | None:
    value = selection.get(name)
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise _BadRequest(f"selection.{name} must be [min, max]")
    return value[0], value[1]


def _asin_for_code(code: str) -> str:
    """The ASIN a UPC/EAN/ISBN-13 stands for (the same one on every run)."""
    return asin_for(int(code) % 36**8)


def _product_json(p: Any, asin: str, domain: int, now: int, origin: int) -> dict[str, Any]:
    """A product's fixed fields, as Keepa's product object names them."""
    first = min((s[0] for s in p.csv if s), default=origin)
    return {
        "asin": asin,
        "domainId": domain,
        "productType": 0,
        "title": p.title,
        "rootCategory": p.root_category,
        "categories": [p.root_category],
        "trackingSince": first,
        "listedSince": first,
        "lastUpdate": now,
        "lastPriceChange": origin,
        "lastRatingUpdate": origin,
        "manufacturer": "Simulated",
        "brand": "Simulated",
    }


def _seller_id(rng: random.Random) -> str:
    return "A" + "".join(rng.choice(_SELLER_ALPHABET) for _ in range(13))


def _cut(series: list[int], step: int, days: int | None, origin: int) -> list[int]:
    start = -math.inf if days is None else origin - days * 1440
    out: list[int] = []
    for i in range(0, len(series), step):
        if start <= series[i] <= origin:
            out += series[i : i + step]
    return out


def _offers_json(seed: int, p: Any, wanted: int, stock: bool, days: int | None, origin: int) -> dict[str, Any]:
    """``offers`` and ``liveOffersOrder`` as Keepa sends them with ``offers=N`` (``stockCSV`` with ``stock=1``)."""
    rng = random.Random(f"{seed}:offers:{p.asin}")
    offers = []
    base = next((v for v in p.csv[1][1::2] if v > 0), 1999)
    for i in range(min(wanted, p.offer_count)):
        amazon = i == 0 and rng.random() < 0.5
        fba = amazon or rng.random() < 0.5
        minute = origin - rng.randint(30, 400) * 1440
        csv: list[int] = []
        stock_csv: list[int] = []
        price = max(99, int(base * rng.uniform(0.9, 1.3)))
        while minute <= origin:
            csv += (minute, price, 0 if fba else rng.choice((0, 399, 499)))
            stock_csv += (minute, rng.randint(0, 40))
            price = max(99, int(price * rng.uniform(0.95, 1.05)))
            minute += rng.randint(1, 20) * 1440
        offer: dict[str, Any] = {
            "offerId": i,
            "lastSeen": origin,
            "sellerId": "ATVPDKIKX0DER" if amazon else _seller_id(rng),
            "offerCSV": _cut(csv, 3, days, origin) or csv[-3:],
            "condition": 1 if rng.random() < 0.8 else rng.randint(2, 5),
            "conditionComment": None,
            "isPrime": fba,
            "isMAP": False,
            "isShippable": True,
            "isAddonItem": False,
            "isPreorder": False,
            "isWarehouseDeal": False,
            "isScam": False,
            "shipsFromChina": False,
            "isAmazon": amazon,
            "isFBA": fba,
            "isPrimeExcl": False,
            "minOrderQty": 1,
        }
        if stock:
            offer["stockCSV"] = _cut(stock_csv, 2, days, origin) or stock_csv[-2:]
        offers.append(offer)
    return {"offers": offers, "liveOffersOrder": [o["offerId"] for o in offers]}


def _buybox_json(seed: int, p: Any, days: int | None, origin: int) -> dict[str, Any]:
    """``buyBoxSellerIdHistory`` (``[minute, sellerId, ...]``) and ``buyBoxUsedHistory``
    (``[minute, sellerId, condition, isFBA, ...]``), strings as Keepa sends them."""
    rng = random.Random(f"{seed}:buybox:{p.asin}")
    sellers = [_seller_id(rng) for _ in range(3)] + ["ATVPDKIKX0DER"]
    new: list[str] = []
    used: list[str] = []
    start = origin - (days or 3 * 365) * 1440
    minute = start + rng.randint(0, 2000)
    while minute <= origin:
        new += (str(minute), rng.choice(sellers))
        used += (str(minute), rng.choice(sellers[:3]), str(rng.randint(2, 5)), rng.choice(("1", "0")))
        minute += rng.randint(2, 30) * 1440
    return {"buyBoxSellerIdHistory": new, "buyBoxUsedHistory": used}


def _stats_json(p: Any, origin: int, stock: bool) -> dict[str, Any]:
    """The statistics object: ``current``/``avg`` by price type (-1 none), ``min``/``max`` as
    ``[minute, value]`` or null, as Keepa sends them with ``stats=``."""
    current: list[int] = []
    average: list[int] = []
    lows: list[list[int] | None] = []
    highs: list[list[int] | None] = []
    for price_type, series in enumerate(p.csv):
        step = 3 if price_type in TRIPLES else 2
        points: list[tuple[int, int]] = [
            (series[i], series[i + 1]) for i in range(0, len(series), step) if series[i + 1] >= 0
        ]
        if not points:
            current.append(-1)
            average.append(-1)
            lows.append(None)
            highs.append(None)
            continue
        current.append(points[-1][1])
        average.append(round(sum(v for _, v in points) / len(points)))
        low = min(points, key=lambda m: m[1])
        high = max(points, key=lambda m: m[1])
        lows.append([low[0], low[1]])
        highs.append([high[0], high[1]])
    stats: dict[str, Any] = {"current": current, "avg": average, "avg30": average, "min": lows, "max": highs}
    if stock:
        stats["stockPerCondition3rdFBA"] = [p.offer_count % 7] * 5
        stats["stockPerConditionFBM"] = [p.offer_count % 5] * 5
    return stats


def _category_json(category: int, domain: int) -> dict[str, Any]:
    rng = random.Random(f"category:{domain}:{category}")
    return {
        "domainId": domain,
        "catId": category,
        "name": _CATEGORY_NAMES.get(category, str(category)),
        "contextFreeName": _CATEGORY_NAMES.get(category, str(category)),
        "children": [],
        "parent": 0,
        "highestRank": rng.randint(10**5, 10**7),
        "lowestRank": 1,
        "productCount": rng.randint(10**4, 10**7),
        "isBrowseNode": True,
    }


def _seller_json(seed: int, seller: str, domain: int, now: int, storefront: bool) -> dict[str, Any]:
    rng = random.Random(f"{seed}:seller:{seller}")
    entry: dict[str, Any] = {
        "sellerId": seller,
        "sellerName": f"Simulated Seller {seller[-4:]}",
        "domainId": domain,
        "trackedSince": now - rng.randint(100, 2000) * 1440,
        "lastUpdate": now,
        "lastRatingUpdate": now - rng.randint(0, 30) * 1440,
        "hasFBA": rng.random() < 0.6,
        "shipsFromChina": False,
        "currentRating": rng.randint(70, 100),
        "currentRatingCount": rng.randint(10, 50000),
        "ratingsLast30Days": rng.randint(0, 500),
    }
    if storefront:
        entry["asinList"] = [asin_for(rng.randrange(10**6)) for _ in range(rng.randint(1, 50))]
        entry["asinListLastSeen"] = [now] * len(entry["asinList"])
        entry["totalStorefrontAsins"] = [now, len(entry["asinList"])]
    return entry


def _error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _sp_error(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "details": ""}]}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

    def _serve(self) -> None:
        response = self._refusal()
        if response is None:
            response = self.server.simulator.handle(self.command, self.path, dict(self.headers.items()))
        else:
            self.close_connection = True  # whatever is left of the request is never read
        data = json.dumps(response.body, separators=(",", ":")).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _refusal(self) -> Response | None:
        """An answer for a request too big or malformed to handle (the body is read only if it is small)."""
        if len(self.path) > MAX_TARGET:
            return Response(414, _error_body("uriTooLong", f"the request target is over {MAX_TARGET} bytes"))
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        if not raw.strip().isdigit():
            message = f"Content-Length must be a number of bytes, got {raw[:20]!r}"
            return Response(400, _error_body("badRequest", message))
        length = int(raw)
        if length > MAX_BODY:
            return Response(413, _error_body("payloadTooLarge", f"the body is over {MAX_BODY} bytes"))
        if length:
            self.rfile.read(length)
        return None

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the counters say what happened."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    simulator: KeepaSimulator


class SimulatorServer(LocalServer):
    """The simulator on a real HTTP port; a context manager.

    Args:
        config: See `SimConfig`.
        host: The address to bind (default loopback).
        port: The port; 0 picks a free one (see `base_url` after `start`).
    """

    def __init__(self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.simulator = KeepaSimulator(config)
        server = _Server((host, port), _Handler)
        server.simulator = self.simulator
        super().__init__(server, "keepa-simulator")

    @property
    def base_url(self) -> str:
        """``http://host:port`` the server listens on."""
        host, port = self.address
        return f"http://{host}:{port}"

    def stats(self) -> dict[str, Any]:
        """The simulator's counters; see `KeepaSimulator.stats`."""
        return self.simulator.stats()

    def admitted_at(self) -> list[float]:
        """See `KeepaSimulator.admitted_at`."""
        return self.simulator.admitted_at()
