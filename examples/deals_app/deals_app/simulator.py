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

Endpoints: ``/token`` (free), ``/deal`` (5 tokens a page of up to 150),
``/product`` (Keepa's cost rules), ``/listings/2021-08-01/restrictions``
(SP-API: 5 requests/s, burst 10, ``QuotaExceeded``), and ``/_sim/stats``
(the counters, no key needed).
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

from .catalog import Catalog, from_unix_ms, to_unix_ms
from .serving import LocalServer

__all__ = ["KeepaSimulator", "Response", "SimConfig", "SimulatorServer"]

DEAL_PAGE_SIZE = 150
DEAL_PAGE_COST = 5
MAX_ASINS = 100
SP_RATE = 5.0
SP_BURST = 10.0
RESTRICTIONS_PATH = "/listings/2021-08-01/restrictions"
_ASIN_RE = re.compile(r"^[A-Z0-9]{10}$")
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

    def _fields(self, consumed: int, began: float) -> dict[str, Any]:
        elapsed = self.elapsed()
        self._refill(elapsed)
        refill_in = int(60000 - (elapsed * 1000) % 60000)
        return {
            "timestamp": self._start_ms + int(elapsed * 1000),
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
        with self._lock:
            self._counters.requests += 1
            self._counters.by_endpoint[path] = self._counters.by_endpoint.get(path, 0) + 1
        if path == RESTRICTIONS_PATH:
            if method != "GET":
                return Response(405, _sp_error("MethodNotAllowed", f"{method} is not allowed here"))
            return self._restrictions(query, hdrs)
        if path not in ("/token", "/deal", "/product"):
            return self._keepa_error(404, "notFound", f"no such endpoint: {path}", time.monotonic())
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
            work = self._deal_work(query) if path == "/deal" else self._product_work(query)
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
            else:
                c.products_served += len(payload["products"])
            body = self._fields(cost, began)
        body.update(payload)
        return Response(200, body)

    def _deal_work(self, query: dict[str, str]) -> Callable[[], tuple[dict[str, Any], int]]:
        raw = query.get("selection")
        if raw is None:
            raise _BadRequest("missing parameter: selection (a JSON deal query)")
        try:
            selection = json.loads(raw)
        except ValueError as exc:
            raise _BadRequest(f"selection is not valid JSON: {exc}") from None
        if not isinstance(selection, dict):
            raise _BadRequest("selection must be a JSON object")
        page = selection.get("page", 0)
        date_range = selection.get("dateRange", 0)
        if not isinstance(page, int) or page < 0:
            raise _BadRequest("selection.page must be a non-negative integer")
        if date_range not in _DATE_RANGES:
            raise _BadRequest("selection.dateRange must be 0, 1, 2 or 3")

        def work() -> tuple[dict[str, Any], int]:
            now = self.now_minute()
            deals = self.catalog.deals_between(now - _DATE_RANGES[date_range] * 1440, now)
            chunk = deals[page * DEAL_PAGE_SIZE : (page + 1) * DEAL_PAGE_SIZE]
            dr = [d.as_json(now) for d in chunk]
            return {"deals": {"dr": dr, "categoryIds": [], "categoryNames": [], "categoryCount": []}}, DEAL_PAGE_COST

        return work

    def _product_work(self, query: dict[str, str]) -> Callable[[], tuple[dict[str, Any], int]]:
        asins = [a.strip() for a in query.get("asin", "").split(",") if a.strip()]
        if not asins:
            raise _BadRequest("missing parameter: asin (comma-separated, up to 100)")
        if len(asins) > MAX_ASINS:
            raise _BadRequest(f"too many ASINs: {len(asins)} (at most {MAX_ASINS} per request)")
        bad = [a for a in asins if not _ASIN_RE.match(a)]
        if bad:
            raise _BadRequest(f"malformed ASIN: {bad[0]!r}")
        flags = {}
        for name in ("offers", "stock", "buybox", "rating", "update", "days", "history"):
            value = query.get(name)
            if value is None or value == "":
                continue
            try:
                flags[name] = int(value)
            except ValueError:
                raise _BadRequest(f"{name} must be an integer, got {value!r}") from None
        offers = flags.get("offers", 0)
        if offers and not 20 <= offers <= 100:
            raise _BadRequest("offers must be between 20 and 100")
        days = flags.get("days")
        if days is not None and days <= 0:
            raise _BadRequest("days must be positive")
        history = flags.get("history", 1) != 0

        def work() -> tuple[dict[str, Any], int]:
            now = self.now_minute()
            products = []
            cost = 0
            for asin in dict.fromkeys(asins):
                p = self.catalog.product(asin)
                one = 1
                entry: dict[str, Any] = {
                    "asin": asin,
                    "domainId": 1,
                    "title": p.title,
                    "rootCategory": p.root_category,
                    "lastUpdate": now,
                    "csv": p.history(days, self.catalog.origin) if history else None,
                }
                if offers:
                    pages = math.ceil(min(offers, p.offer_count) / 10)
                    one = 6 * pages if pages else 1
                    shown = min(offers, p.offer_count)
                    entry["offers"] = [{"offerId": i, "isPrime": i % 2 == 0} for i in range(shown)]
                    if flags.get("stock"):
                        one += 2
                        entry["stockPerCondition3rdFBA"] = [p.offer_count % 7] * 5
                if flags.get("buybox"):
                    one += 2
                if flags.get("rating"):
                    one += 1
                if flags.get("update") == 0:
                    one += 1
                if self.config.cost_noise:
                    with self._lock:
                        one += round(one * self._noise.uniform(0, self.config.cost_noise))
                cost += one
                products.append(entry)
            return {"products": products}, cost

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


def _sp_error(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "details": ""}]}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        response = self.server.simulator.handle(self.command, self.path, dict(self.headers.items()))
        data = json.dumps(response.body, separators=(",", ":")).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

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
