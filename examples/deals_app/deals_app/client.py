"""HTTP clients for the Keepa API and the SP-API restriction check.

They speak HTTP through httpx and turn every failure into one `AppError` with
a message a person can act on (unreachable upstream, refused key, malformed
answer), translated in one place (`_translate`). Rate limiting is the
transport's business: the collector gives `KeepaClient` tokenbucket's
`RateLimitedTransport` on the shared Keepa bucket.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tokenbucket import UpstreamRateLimited

__all__ = [
    "DEAL_PRICE_TYPE",
    "DOMAINS",
    "AppError",
    "KeepaClient",
    "KeepaReply",
    "KeyRefused",
    "NotEnoughTokens",
    "RestrictionClient",
    "SpQuotaExceeded",
]

TOKEN_FIELDS = ("timestamp", "tokensLeft", "refillIn", "refillRate", "tokensConsumed")


class AppError(Exception):
    """A failure the CLI reports as one line and a non-zero exit, never a traceback."""


class NotEnoughTokens(AppError):
    """Keepa answered 429: the balance is zero or less. Carries the reply so the caller can sync."""

    def __init__(self, reply: KeepaReply) -> None:
        self.reply = reply
        super().__init__(f"Keepa answered 429 (tokensLeft {reply.tokens_left}, refill in {reply.refill_in} ms)")


class SpQuotaExceeded(AppError):
    """The SP-API answered 429 QuotaExceeded."""


class KeyRefused(AppError):
    """The upstream refused the API key (HTTP 402 from Keepa): retrying cannot help."""


DOMAINS = {
    **{"US": 1, "GB": 2, "UK": 2, "DE": 3, "FR": 4, "JP": 5, "CA": 6},
    **{"IT": 8, "ES": 9, "IN": 10, "MX": 11, "BR": 12},
}
"""Keepa's marketplace ids (the ``domain`` of /product, the ``domainId`` of /deal). 0 and 7 are reserved."""

DEAL_PRICE_TYPE = 0
"""The price type a deal selection asks for (``priceTypes``: 0, AMAZON); the store reads deals by it."""


@dataclass(frozen=True, slots=True)
class KeepaReply:
    """A Keepa answer: the token fields and the rest of the body."""

    tokens_left: int
    refill_in: int
    refill_rate: int
    tokens_consumed: int
    timestamp: int
    body: dict[str, Any]


@contextmanager
def _translate(what: str, base_url: str) -> Iterator[None]:
    """Map httpx and JSON failures to `AppError`, naming the upstream."""
    try:
        yield
    except UpstreamRateLimited as exc:
        raise AppError(f"{base_url} kept answering 429 ({what}) after {exc.attempts} attempts") from exc
    except httpx.ConnectError as exc:
        raise AppError(f"cannot reach {base_url} ({what}): {exc}; is the upstream running?") from exc
    except httpx.TimeoutException as exc:
        raise AppError(f"{base_url} did not answer in time ({what}): {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise AppError(f"HTTP error talking to {base_url} ({what}): {exc}") from exc


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        snippet = response.text[:80].replace("\n", " ")
        raise AppError(
            f"malformed response from {response.request.url.host} ({what}): HTTP {response.status_code}, "
            f"not JSON: {snippet!r}"
        ) from None
    if not isinstance(body, dict):
        raise AppError(f"malformed response ({what}): expected a JSON object, got {type(body).__name__}")
    return body


class KeepaClient:
    """A small Keepa API client: ``/token``, ``/deal`` and ``/product``.

    Args:
        base_url: For example ``https://api.keepa.com`` or the simulator's URL.
        api_key: The access key (sent as the ``key`` query parameter).
        timeout: Seconds to wait for an answer.
        transport: An httpx transport (for example tokenbucket's rate-limited one); default httpx's.
        on_reply: Called with every reply (the collector logs the balance).
        domain: The Keepa marketplace id (see `DOMAINS`; 1 is amazon.com).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        on_reply: Callable[[KeepaReply], None] | None = None,
        domain: int = 1,
    ) -> None:
        if domain not in DOMAINS.values():
            raise ValueError(f"unknown Keepa domain {domain!r}; known: {sorted(set(DOMAINS.values()))}")
        self.domain = domain
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self._on_reply = on_reply
        self.last_reply: KeepaReply | None = None
        self.calls = 0

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _get(self, path: str, params: dict[str, Any]) -> KeepaReply:
        what = f"GET {path}"
        with _translate(what, self.base_url):
            response = self._http.get(path, params={"key": self._key, **params})
        body = _json(response, what)
        missing = [f for f in TOKEN_FIELDS if not isinstance(body.get(f), (int, float))]
        if missing:
            raise AppError(
                f"malformed response from {self.base_url} ({what}): HTTP {response.status_code} "
                f"without the token field(s) {', '.join(missing)}"
            )
        reply = KeepaReply(
            int(body["tokensLeft"]),
            int(body["refillIn"]),
            int(body["refillRate"]),
            int(body["tokensConsumed"]),
            int(body["timestamp"]),
            body,
        )
        self.calls += 1
        self.last_reply = reply
        if self._on_reply is not None:
            self._on_reply(reply)
        if response.status_code == 429:
            raise NotEnoughTokens(reply)
        if response.status_code != 200:
            error = body.get("error")
            message = (error.get("message") if isinstance(error, dict) else None) or response.reason_phrase
            if response.status_code == 402:
                raise KeyRefused(f"the API key was refused by {self.base_url} (HTTP 402 payment required: {message})")
            raise AppError(f"{self.base_url} rejected {what} (HTTP {response.status_code}: {message})")
        return reply

    def token_status(self) -> KeepaReply:
        """The free ``/token`` status (Keepa asks clients not to poll it: once at start is enough)."""
        return self._get("/token", {})

    def deals(self, page: int, *, date_range: int = 0) -> tuple[KeepaReply, list[dict[str, Any]]]:
        """One page of deals (5 tokens, up to 150 deals)."""
        selection = {"page": page, "dateRange": date_range, "domainId": self.domain, "priceTypes": [DEAL_PRICE_TYPE]}
        reply = self._get("/deal", {"selection": json.dumps(selection)})
        deals = reply.body.get("deals")
        dr = deals.get("dr") if isinstance(deals, dict) else None
        if not isinstance(dr, list) or not all(
            isinstance(d, dict) and isinstance(d.get("asin"), str) and isinstance(d.get("creationDate"), int)
            for d in dr
        ):
            raise AppError(f"malformed response from {self.base_url} (GET /deal): deals.dr is not a list of deals")
        return reply, dr

    def products(
        self, asins: Sequence[str], *, days: int | None, offers: int | None = 20, stock: bool = True
    ) -> tuple[KeepaReply, list[dict[str, Any]]]:
        """Products with price history (``history=1``); with ``offers``, offers and ``stock`` too; up to 100 ASINs."""
        params: dict[str, Any] = {"domain": self.domain, "asin": ",".join(asins), "history": 1}
        if offers:
            params["offers"] = offers
            if stock:
                params["stock"] = 1
        if days is not None:
            params["days"] = days
        reply = self._get("/product", params)
        products = reply.body.get("products")
        if not isinstance(products, list) or not all(
            isinstance(p, dict) and isinstance(p.get("asin"), str) and isinstance(p.get("csv") or [], list)
            for p in products
        ):
            raise AppError(f"malformed response from {self.base_url} (GET /product): products is not a list")
        return reply, products


class RestrictionClient:
    """SP-API ``getListingsRestrictions``: one ASIN a call.

    Args:
        base_url: The SP-API endpoint (the simulator serves it too).
        access_token: Sent as ``x-amz-access-token``.
        seller_id: The seller whose restrictions are checked.
        marketplace: The marketplace id (default amazon.com).
        timeout: Seconds to wait for an answer.
        transport: An httpx transport (the collector passes tokenbucket's rate-limited one).
    """

    def __init__(
        self,
        base_url: str,
        access_token: str,
        *,
        seller_id: str = "A2DEMOSELLER",
        marketplace: str = "ATVPDKIKX0DER",
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._seller = seller_id
        self._marketplace = marketplace
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers={"x-amz-access-token": access_token}, transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def check(self, asin: str) -> list[dict[str, Any]]:
        """The restriction reasons for ``asin`` (empty: it may be listed).

        Raises:
            SpQuotaExceeded: HTTP 429 QuotaExceeded.
            AppError: any other failure.
        """
        what = "GET restrictions"
        params = {
            "asin": asin,
            "sellerId": self._seller,
            "marketplaceIds": self._marketplace,
            "conditionType": "new_new",
        }
        with _translate(what, self.base_url):
            try:
                response = self._http.get("/listings/2021-08-01/restrictions", params=params)
            except UpstreamRateLimited as exc:
                raise SpQuotaExceeded(f"SP-API quota exceeded after {exc.attempts} attempts") from exc
        body = _json(response, what)
        if response.status_code == 429:
            raise SpQuotaExceeded(f"SP-API quota exceeded (limit {response.headers.get('x-amzn-RateLimit-Limit')}/s)")
        if response.status_code != 200:
            errors = body.get("errors") or [{}]
            first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
            raise AppError(
                f"SP-API rejected the restriction check (HTTP {response.status_code} "
                f"{first.get('code', '')}: {first.get('message', response.reason_phrase)})"
            )
        restrictions = body.get("restrictions")
        if not isinstance(restrictions, list):
            raise AppError("malformed SP-API response: restrictions is not a list")
        reasons: list[dict[str, Any]] = []
        for r in restrictions:
            if isinstance(r, dict) and isinstance(r.get("reasons"), list):
                reasons.extend(x for x in r["reasons"] if isinstance(x, dict))
        return reasons
