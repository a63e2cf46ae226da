"""Reading what an upstream says about its quota, from a response's headers or body.

Every parser here is a pure function over plain values (a mapping of header
names to values, the body's bytes) and returns a frozen `UpstreamReport`, or
None when the response says nothing it understands. A malformed value is
ignored with a debug log on the ``tokenbucket.reconcile`` logger; a parser
never raises because of what an upstream sent.

Understood:

* Keepa's JSON body: ``tokensLeft``, ``tokensConsumed``, ``refillIn`` (ms),
  ``refillRate`` (tokens per minute), ``timestamp`` (ms) — `parse_keepa`.
* The IETF fields of draft-ietf-httpapi-ratelimit-headers-10:
  ``RateLimit: "default";r=50;t=30`` and ``RateLimit-Policy: "default";q=100;w=60``
  (Structured Field lists), and the earlier drafts' ``RateLimit: limit=100,
  remaining=50, reset=30`` — `parse_ratelimit`.
* The common ``X-RateLimit-Limit/Remaining/Reset`` (also ``RateLimit-*`` and
  ``X-Rate-Limit-*``), with a reset given as a delay, epoch seconds or epoch
  milliseconds (told apart by size) — `parse_x_ratelimit`.
* ``Retry-After`` as seconds or an HTTP-date — `parse_retry_after`.
* Amazon SP-API's ``x-amzn-RateLimit-Limit`` (requests per second) — `parse_amzn_ratelimit`.

`KeepaReconciler` and `HeaderReconciler` bundle them for the httpx transports.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, runtime_checkable

from ._rate import Rate

__all__ = [
    "HeaderReconciler",
    "KeepaReconciler",
    "Reconciler",
    "UpstreamReport",
    "parse_amzn_ratelimit",
    "parse_headers",
    "parse_keepa",
    "parse_ratelimit",
    "parse_retry_after",
    "parse_x_ratelimit",
]

log = logging.getLogger("tokenbucket.reconcile")

Headers = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class UpstreamReport:
    """What an upstream said about its quota in one response, normalized.

    Every field but ``source`` is None when the response did not say.

    Attributes:
        source: Which convention it came from: ``"keepa"``, ``"ratelimit"``,
            ``"x-ratelimit"``, ``"retry-after"``, ``"x-amzn-ratelimit"``, or
            several joined with ``+``.
        remaining: The upstream's balance after this request (may be negative for Keepa).
        consumed: What this request cost.
        limit: The quota (most tokens or requests in the window / bucket).
        refill_rate: How fast the quota comes back.
        reset_after: Seconds until more quota is made available.
        retry_after: Seconds the upstream asks the client to wait before retrying.
        policy: The name of the policy reported (IETF fields).
        timestamp: The upstream's clock, in Unix seconds (Keepa).
        limits: Every service limit the response reported, each as its own
            report, when there were several (IETF ``RateLimit`` with several
            members); the fields above are then those of the one with the
            least remaining quota. Empty otherwise.
    """

    source: str
    remaining: float | None = None
    consumed: float | None = None
    limit: float | None = None
    refill_rate: Rate | None = None
    reset_after: float | None = None
    retry_after: float | None = None
    policy: str | None = None
    timestamp: float | None = None
    limits: tuple[UpstreamReport, ...] = ()

    def merge(self, other: UpstreamReport | None) -> UpstreamReport:
        """This report, with fields it lacks taken from ``other``."""
        if other is None:
            return self
        changes: dict[str, Any] = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name != "source" and mine in (None, ()) and theirs not in (None, ()):
                changes[f.name] = theirs
        if not changes:
            return self
        return replace(self, source=f"{self.source}+{other.source}", **changes)


def _lower(headers: Headers) -> dict[str, str]:
    """Header names folded to lower case (bytes decoded as Latin-1)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.decode("latin-1").lower() if isinstance(name, bytes) else str(name).lower()
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------
# Structured Field lists (RFC 8941), the part the RateLimit fields use.

_Bare = int | float | str | bytes | bool
_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*")
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_NUMBER = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,3})?")


class _Token(str):
    """A Structured Field token (as opposed to a string)."""

    __slots__ = ()


class _SF:
    """A cursor over one field value; every method raises ValueError on bad syntax."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.i < len(self.text) and self.text[self.i] in chars:
            self.i += 1

    def bare(self) -> _Bare:
        c = self.peek()
        if c == '"':
            return self.string()
        if c == ":":
            end = self.text.index(":", self.i + 1)
            raw = self.text[self.i + 1 : end]
            self.i = end + 1
            return base64.b64decode(raw, validate=True)
        if c == "?":
            flag = self.text[self.i + 1 : self.i + 2]
            if flag not in ("0", "1"):
                raise ValueError("bad boolean")
            self.i += 2
            return flag == "1"
        match = _NUMBER.match(self.text, self.i)
        if match:
            self.i = match.end()
            return float(match.group()) if match.group(1) else int(match.group())
        match = _TOKEN.match(self.text, self.i)
        if match:
            self.i = match.end()
            return _Token(match.group())
        raise ValueError(f"unexpected {c!r} at {self.i}")

    def string(self) -> str:
        out = []
        self.i += 1
        while self.i < len(self.text):
            c = self.text[self.i]
            self.i += 1
            if c == "\\":
                nxt = self.text[self.i : self.i + 1]
                if nxt not in ('"', "\\"):
                    raise ValueError("bad escape")
                out.append(nxt)
                self.i += 1
            elif c == '"':
                return "".join(out)
            elif not " " <= c <= "~":
                raise ValueError("bad character in string")
            else:
                out.append(c)
        raise ValueError("unterminated string")

    def params(self) -> dict[str, _Bare]:
        params: dict[str, _Bare] = {}
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            match = _KEY.match(self.text, self.i)
            if not match:
                raise ValueError("bad parameter key")
            self.i = match.end()
            value: _Bare = True
            if self.peek() == "=":
                self.i += 1
                value = self.bare()
            params[match.group()] = value
        return params

    def item_list(self) -> list[tuple[_Bare, dict[str, _Bare]]]:
        members: list[tuple[_Bare, dict[str, _Bare]]] = []
        self.skip(" \t")
        while self.i < len(self.text):
            if self.peek() == "(":
                raise ValueError("inner lists are not used by these fields")
            item = self.bare()
            members.append((item, self.params()))
            self.skip(" \t")
            if self.i >= len(self.text):
                break
            if self.peek() != ",":
                raise ValueError(f"expected ',' at {self.i}")
            self.i += 1
            self.skip(" \t")
            if self.i >= len(self.text):
                raise ValueError("trailing comma")
        return members


def _sf_list(text: str) -> list[tuple[_Bare, dict[str, _Bare]]]:
    return _SF(text.strip()).item_list()


def _nonneg(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return float(value)


_OLD_DRAFT = re.compile(r"^\s*(?:(?:limit|remaining|reset)\s*=\s*[0-9]+\s*,?\s*)+$", re.IGNORECASE)


def parse_ratelimit(headers: Headers) -> UpstreamReport | None:
    """Read the IETF ``RateLimit`` and ``RateLimit-Policy`` fields.

    With several service limits, the one with the least remaining quota is
    reported (it is the one that throttles first), and every one in ``limits``;
    each takes ``limit`` and ``refill_rate`` (``q`` per ``w`` seconds) from the
    policy of the same name.
    """
    h = _lower(headers)
    value = h.get("ratelimit")
    if value is None:
        return None
    if _OLD_DRAFT.match(value):
        pairs = dict(p.replace(" ", "").lower().split("=") for p in value.split(",") if p.strip())
        return UpstreamReport(
            "ratelimit",
            remaining=_number(pairs["remaining"]) if "remaining" in pairs else None,
            limit=_number(pairs["limit"]) if "limit" in pairs else None,
            reset_after=_number(pairs["reset"]) if "reset" in pairs else None,
        )
    try:
        limits = _sf_list(value)
    except (ValueError, IndexError) as exc:
        log.debug("ignoring malformed RateLimit field %r: %s", value, exc)
        return None
    members: list[tuple[float, str, dict[str, _Bare]]] = []
    for name, params in limits:
        remaining = _nonneg(params.get("r"))
        if not isinstance(name, str) or remaining is None:
            log.debug("ignoring RateLimit member %r without a valid r parameter", name)
            continue
        members.append((remaining, name, params))
    if not members:
        return None
    quotas: dict[str, tuple[float | None, Rate | None]] = {}
    policy_text = h.get("ratelimit-policy")
    if policy_text is not None:
        try:
            policies = _sf_list(policy_text)
        except (ValueError, IndexError) as exc:
            log.debug("ignoring malformed RateLimit-Policy field %r: %s", policy_text, exc)
            policies = []
        for pname, pparams in policies:
            if isinstance(pname, str) and pname not in quotas:
                limit = _nonneg(pparams.get("q"))
                window = _nonneg(pparams.get("w"))
                quotas[pname] = (limit, Rate(limit, per=window) if limit and window else None)
    reports = [
        UpstreamReport(
            "ratelimit",
            remaining=remaining,
            limit=quotas.get(name, (None, None))[0],
            refill_rate=quotas.get(name, (None, None))[1],
            reset_after=_nonneg(params.get("t")),
            policy=name,
        )
        for remaining, name, params in members
    ]
    least = reports[min(range(len(members)), key=lambda i: members[i][0])]
    return replace(least, limits=tuple(reports)) if len(reports) > 1 else least


# ---------------------------------------------------------------------------
# Legacy headers, Retry-After, SP-API.

_LEGACY_PREFIXES = ("x-ratelimit-", "x-rate-limit-", "ratelimit-")
_LEADING_NUMBER = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)")


def _reset_seconds(text: str, now: float) -> float | None:
    """A reset value as seconds from now: a delay, epoch seconds or epoch ms (by size), or an HTTP-date."""
    value = _number(text)
    if value is None:
        return _http_date(text, now)
    if value >= 1e12:  # epoch milliseconds (after 2001)
        return max(0.0, value / 1000.0 - now)
    if value >= 1e9:  # epoch seconds (after 2001); no quota window is 30 years long
        return max(0.0, value - now)
    return value if value >= 0 else None


def parse_x_ratelimit(headers: Headers, *, now: float | None = None) -> UpstreamReport | None:
    """Read ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (or the ``RateLimit-*`` / ``X-Rate-Limit-*`` forms).

    ``Reset`` may be seconds from now, Unix seconds or Unix milliseconds; values
    from 10⁹ up are taken as timestamps. A value like ``100, 100;w=60`` counts
    by its leading number.

    Args:
        headers: The response headers (any case).
        now: The current Unix time; default `time.time`.
    """
    h = _lower(headers)
    found: dict[str, float] = {}
    reset_text = None
    for prefix in _LEGACY_PREFIXES:
        for field in ("limit", "remaining"):
            text = h.get(prefix + field)
            if text is None or field in found:
                continue
            match = _LEADING_NUMBER.match(text)
            if match:
                found[field] = float(match.group(1))
            else:
                log.debug("ignoring malformed %s%s header %r", prefix, field, text)
        if reset_text is None:
            reset_text = h.get(prefix + "reset")
    reset = None
    if reset_text is not None:
        reset = _reset_seconds(reset_text, time.time() if now is None else now)
        if reset is None:
            log.debug("ignoring malformed rate-limit reset header %r", reset_text)
    if not found and reset is None:
        return None
    return UpstreamReport(
        "x-ratelimit", remaining=found.get("remaining"), limit=found.get("limit"), reset_after=reset
    )


def _http_date(text: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: a delay in seconds, or an HTTP-date.

    Returns None (with a debug log) for a malformed value; a date in the past is 0.

    Args:
        value: The header's value.
        now: The current Unix time; default `time.time`.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    seconds = _http_date(text, time.time() if now is None else now)
    if seconds is None:
        log.debug("ignoring malformed Retry-After header %r", value)
    return seconds


def parse_amzn_ratelimit(headers: Headers) -> UpstreamReport | None:
    """Read SP-API's ``x-amzn-RateLimit-Limit``: the sustained rate, in requests per second."""
    text = _lower(headers).get("x-amzn-ratelimit-limit")
    if text is None:
        return None
    value = _number(text)
    if value is None or value <= 0:
        log.debug("ignoring malformed x-amzn-RateLimit-Limit header %r", text)
        return None
    return UpstreamReport("x-amzn-ratelimit", refill_rate=Rate(value, per=1.0))


def parse_headers(headers: Headers, *, now: float | None = None) -> UpstreamReport | None:
    """Every header convention this module knows, merged (IETF fields first, then legacy, SP-API, Retry-After)."""
    report: UpstreamReport | None = None
    retry = parse_retry_after(_lower(headers).get("retry-after"), now=now)
    parts = [parse_ratelimit(headers), parse_x_ratelimit(headers, now=now), parse_amzn_ratelimit(headers)]
    if retry is not None:
        parts.append(UpstreamReport("retry-after", retry_after=retry))
    for part in parts:
        if part is not None:
            report = part if report is None else report.merge(part)
    return report


# ---------------------------------------------------------------------------
# Keepa.


def _field(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        if value is not None:
            log.debug("ignoring malformed Keepa field %s=%r", name, value)
        return None
    return float(value)


def parse_keepa(body: bytes | str | Mapping[str, Any] | None) -> UpstreamReport | None:
    """Read Keepa's token fields from a response body (JSON bytes, text, or an already decoded object).

    ``remaining`` is ``tokensLeft`` (negative when in debt), ``consumed``
    ``tokensConsumed``, ``refill_rate`` ``refillRate`` per minute,
    ``reset_after`` ``refillIn`` in seconds, ``timestamp`` in Unix seconds.
    When the balance is below 1, ``retry_after`` is the time until it is
    positive again: the next refill plus ``|tokensLeft| / refillRate`` minutes.
    """
    if body is None:
        return None
    if isinstance(body, (bytes, str)):
        try:
            decoded = json.loads(body)
        except ValueError as exc:
            log.debug("ignoring a body that is not JSON: %s", exc)
            return None
    else:
        decoded = body
    if not isinstance(decoded, Mapping):
        log.debug("ignoring a JSON body that is not an object")
        return None
    left = _field(decoded, "tokensLeft")
    if left is None:
        return None
    per_minute = _field(decoded, "refillRate")
    refill_in = _field(decoded, "refillIn")
    reset = refill_in / 1000.0 if refill_in is not None and refill_in >= 0 else None
    rate = Rate(per_minute, per=60.0) if per_minute is not None and per_minute > 0 else None
    retry = None
    if left < 1 and per_minute is not None and per_minute > 0:
        minutes = (1 - left) / per_minute
        if math.isfinite(minutes):  # a rate too small to wait out says nothing usable
            retry = (reset or 0.0) + (math.ceil(minutes) - 1) * 60.0
    stamp = _field(decoded, "timestamp")
    consumed = _field(decoded, "tokensConsumed")
    return UpstreamReport(
        "keepa",
        remaining=left,
        consumed=consumed if consumed is not None and consumed >= 0 else None,
        refill_rate=rate,
        reset_after=reset,
        retry_after=retry,
        timestamp=stamp / 1000.0 if stamp is not None else None,
    )


# ---------------------------------------------------------------------------
# Reconcilers: what the transports call.


@runtime_checkable
class Reconciler(Protocol):
    """Turns one response into an `UpstreamReport` (or None).

    ``needs_body`` tells a transport whether it must read the body first; a
    reconciler that needs only headers leaves streaming responses unread.
    """

    needs_body: bool

    def __call__(self, status: int, headers: Headers, body: bytes | None) -> UpstreamReport | None:
        """Report what the response says about the quota."""
        ...


class HeaderReconciler:
    """Reads only headers (`parse_headers`): IETF, legacy, SP-API and Retry-After.

    Args:
        now: A function returning the current Unix time (for HTTP-dates and
            epoch resets); default `time.time`.
    """

    needs_body = False

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self._now: Callable[[], float] = time.time if now is None else now

    def __call__(self, status: int, headers: Headers, body: bytes | None) -> UpstreamReport | None:
        """See `Reconciler`."""
        return parse_headers(headers, now=self._now())

    def __repr__(self) -> str:
        return "HeaderReconciler()"


class KeepaReconciler(HeaderReconciler):
    """Reads Keepa's JSON body (`parse_keepa`), completed by the headers (`parse_headers`)."""

    needs_body = True

    def __call__(self, status: int, headers: Headers, body: bytes | None) -> UpstreamReport | None:
        """See `Reconciler`."""
        report = parse_keepa(body)
        from_headers = parse_headers(headers, now=self._now())
        if report is None:
            return from_headers
        return report.merge(from_headers)

    def __repr__(self) -> str:
        return "KeepaReconciler()"
