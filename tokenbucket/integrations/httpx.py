"""httpx transports that pay for each request from a token bucket.

``RateLimitedTransport`` (sync) and ``AsyncRateLimitedTransport`` wrap any
httpx transport. For each request they:

1. acquire its cost from the bucket (a number, a function of the request, or
   an operation priced by the bucket's `tokenbucket.CostModel`), waiting
   first-come first-served;
2. send it through the wrapped transport;
3. read the upstream's report with a reconciler (`tokenbucket.KeepaReconciler`
   reads the body, `tokenbucket.HeaderReconciler` only headers, so a streaming
   response stays unread), settle the grant with what the upstream charged
   and sync the bucket with the balance it reports;
4. on 429, sync, wait through the bucket and retry, at most ``max_retries``
   times; then raise `tokenbucket.UpstreamRateLimited` with the last report.

An exception from the wrapped transport propagates unchanged, after the
request's tokens are refunded. Both transports run the same flow (a generator
of steps, as httpx's own auth flows are); only the drivers differ.

Syncing while other requests are in flight: a response's balance leaves out
the requests the upstream had not processed yet, and may be older than a
response already handled. The transports keep, per bucket, a ledger of the
requests under way in this process. A report from a request that had the
bucket to itself (nothing else under way here from its reservation to its
response) is adopted as it is; any other report may only *lower* the
balance, counting every other started request as not yet charged. Between
exact reports the bucket tracks the upstream through settles (each estimate
replaced by the charge the upstream reported). Requests sent by other
processes are not in this ledger; their own responses correct the shared
balance.

A limit of any client-side bucket: a request is counted as spending its
tokens at its start time. If it reaches the upstream much later (a paused
process, an overloaded host) while the upstream sat full and wasted its
refill, requests bunched up behind the pause can overdraw a strict upstream;
a bucket whose depth (``capacity / rate``) is long compared with such pauses
never sees it.

This module imports httpx; install the ``httpx`` extra.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any

import httpx

from .._bucket import ESTIMATE, AsyncGrant, AsyncTokenBucket, Grant, TokenBucket
from .._exceptions import ConfigurationError, PolicyMismatch, UpstreamRateLimited
from .._flow import adrive, drive
from .._group import AsyncBucketGroup, BucketGroup
from .._model import Policy, Snapshot
from .._rate import Rate
from .._reconcile import KeepaReconciler, Reconciler, UpstreamReport
from .._validate import check_cost, check_timeout

__all__ = ["AsyncRateLimitedTransport", "RateLimitedTransport"]

Cost = float | Callable[[httpx.Request], float]
Operation = Callable[[httpx.Request], "tuple[str, float] | None"]


class _Entry:
    """One request paid through a transport, from its reservation to its response."""

    __slots__ = ("cost", "ended_before", "start")

    def __init__(self, cost: float, start: float, ended_before: int) -> None:
        self.cost = cost
        self.start = start
        self.ended_before = ended_before


class _Ledger:
    """The requests a bucket's transports have under way in this process.

    Reserving and registering, settling and closing an entry, and syncing all
    happen under ``lock`` (a thread lock for the sync transport, an asyncio
    lock for the async one), so a sync never sees a request that is in neither
    the bucket's promised tokens nor the ledger, nor one settled but still
    counted at its estimate.
    """

    MARGIN = 0.1
    """Seconds of slack when judging whether a reservation has started (counted twice rather than never)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._live: set[_Entry] = set()
        self._ended = 0
        self.lock = threading.Lock()
        self.alock: asyncio.Lock | None = None

    def async_lock(self) -> asyncio.Lock:
        with self._mutex:
            if self.alock is None:
                self.alock = asyncio.Lock()
            return self.alock

    def begin(self, cost: float, start: float) -> _Entry:
        with self._mutex:
            entry = _Entry(cost, start, self._ended)
            self._live.add(entry)
            return entry

    def end(self, entry: _Entry) -> None:
        with self._mutex:
            if entry in self._live:
                self._live.remove(entry)
                self._ended += 1

    def others(self, entry: _Entry, now: float) -> tuple[float, bool]:
        """The cost of the other requests started (sent or about to be), and whether ``entry`` was alone.

        Alone: no other request was under way here at any time during its life
        (none is under way now, and none ended since it was reserved but itself).
        """
        with self._mutex:
            started = math.fsum(e.cost for e in self._live if e is not entry and e.start <= now + self.MARGIN)
            others_now = any(e is not entry for e in self._live)
            ended_since = self._ended - entry.ended_before - (entry not in self._live)
            return started, not others_now and ended_since == 0


_LEDGERS: weakref.WeakKeyDictionary[Any, _Ledger] = weakref.WeakKeyDictionary()
_LEDGERS_LOCK = threading.Lock()


def _ledger_for(bucket: Any) -> _Ledger:
    with _LEDGERS_LOCK:
        ledger = _LEDGERS.get(bucket)
        if ledger is None:
            ledger = _LEDGERS[bucket] = _Ledger()
        return ledger


# The steps a flow asks its driver to perform.


class _Reserve:
    """Reserve the cost and register it in the ledger, atomically; returns ``(reservation, entry)``."""

    __slots__ = ("cost", "op", "units")

    def __init__(self, cost: float, op: str | None, units: float) -> None:
        self.cost = cost
        self.op = op
        self.units = units


class _Wait:
    __slots__ = ("reservation",)

    def __init__(self, reservation: Any) -> None:
        self.reservation = reservation


class _Send:
    __slots__ = ("request",)

    def __init__(self, request: httpx.Request) -> None:
        self.request = request


class _Read:
    __slots__ = ("response",)

    def __init__(self, response: httpx.Response) -> None:
        self.response = response


class _Close:
    __slots__ = ("response",)

    def __init__(self, response: httpx.Response) -> None:
        self.response = response


class _Finish:
    """Settle the grant (when the cost is known) and close its ledger entry, atomically with respect to syncs.

    A sync replaces the bucket's balance, counting a request under way at its
    estimate and a finished one at its actual cost; settling converts one into
    the other, so the two must happen together.
    """

    __slots__ = ("actual", "entry", "grant", "observe")

    def __init__(self, entry: _Entry, grant: Grant | AsyncGrant, actual: float | None, observe: bool) -> None:
        self.entry = entry
        self.grant = grant
        self.actual = actual
        self.observe = observe


class _Sync:
    """Sync the bucket to what ``report`` says (None: a refusal that said nothing, so empty)."""

    __slots__ = ("entry", "report")

    def __init__(self, entry: _Entry, report: UpstreamReport | None) -> None:
        self.entry = entry
        self.report = report


class _Sleep:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


_Step = _Reserve | _Wait | _Send | _Read | _Close | _Finish | _Sync | _Sleep
_Flow = Generator[_Step, Any, httpx.Response]


def _lowers(target: float, snapshot: Snapshot) -> bool:
    """Whether syncing to ``target`` would lower the bucket's balance."""
    return target - snapshot.promised < snapshot.tokens


def _limit_of(policies: Sequence[Policy], report: UpstreamReport) -> list[UpstreamReport | None]:
    """The reported limit that is each bandwidth's, or None where the upstream reported none.

    A limit is a bandwidth's when its refill rate is the bandwidth's (IETF
    ``RateLimit-Policy`` ``q``/``w``, Keepa's ``refillRate``) or, when it says
    no rate, when its ``limit`` is the bandwidth's capacity. A bucket of one
    bandwidth takes the report as it is (the least remaining of several limits).
    """
    if len(policies) == 1:
        return [report]
    left = [r for r in report.limits or (report,) if r.remaining is not None]
    found: list[UpstreamReport | None] = []
    for policy in policies:
        match = None
        for r in left:
            if r.refill_rate is not None:
                if math.isclose(r.refill_rate.per_second, policy.refill, rel_tol=1e-9):
                    match = r
            elif r.limit is not None and math.isclose(r.limit, policy.capacity, rel_tol=1e-9):
                match = r
            if match is not None:
                left.remove(match)
                break
        found.append(match)
    return found


class _RateLimitedBase:
    """Configuration and the request flow shared by both transports."""

    def __init__(
        self,
        transport: Any,
        bucket: TokenBucket | AsyncTokenBucket,
        *,
        cost: Cost = 1,
        operation: Operation | None = None,
        reconciler: Reconciler | None = None,
        max_retries: int = 3,
        timeout: float | None = None,
        sync_rate: bool = False,
        also: Sequence[tuple[Any, float]] = (),
        lane: str | None = None,
    ) -> None:
        if not callable(cost):
            check_cost(cost)
        if isinstance(also, (str, bytes)) or not isinstance(also, Sequence):
            raise TypeError("also must be a sequence of (bucket, cost) pairs")
        others = []
        for pair in also:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise TypeError(f"also must be a sequence of (bucket, cost) pairs, not {pair!r}")
            others.append((pair[0], check_cost(pair[1])))
        if operation is not None and not callable(operation):
            raise TypeError("operation must be a function of the request returning (op, units) or None")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int):
            raise TypeError(f"max_retries must be an int, not {type(max_retries).__name__}")
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be zero or more, got {max_retries!r}")
        self._transport = transport
        self._bucket = bucket
        self._cost = cost
        self._operation = operation
        self._reconciler: Reconciler = KeepaReconciler() if reconciler is None else reconciler
        self.max_retries = max_retries
        self._timeout = check_timeout(timeout)
        self.sync_rate = sync_rate
        self._ledger = _ledger_for(bucket)
        if lane is not None:
            if lane not in bucket.lanes:
                known = ", ".join(repr(n) for n in bucket.lanes) or "none"
                raise ConfigurationError(f"bucket {bucket.name!r} has no lane {lane!r} (its lanes: {known})")
            if others:
                raise ConfigurationError("lane= and also= cannot be combined: buckets reserved together have no lanes")
        self._lane = lane
        self._also_costs = tuple(c for _, c in others)
        self._group: BucketGroup | AsyncBucketGroup | None = None
        if others:
            kind = BucketGroup if isinstance(bucket, TokenBucket) else AsyncBucketGroup
            self._group = kind(bucket, *(b for b, _ in others))  # checks kinds, one backend, one clock

    @property
    def bucket(self) -> TokenBucket | AsyncTokenBucket:
        """The bucket requests are paid from."""
        return self._bucket

    def _sync_args(self, step: _Sync, started: float, snapshot: Snapshot | None) -> tuple[Any, Any] | None:
        """``(remaining, rate)`` for `TokenBucket.sync`, or None when there is nothing to sync.

        ``snapshot`` is None when the report is complete (no other request here
        during its life): it is adopted as it is. Otherwise the upstream's
        balance leaves out the requests it had not processed yet, and may
        already include some that are still under way here, or miss some that
        finished since: it is only used to lower the balance (see `_lowers`),
        counting the ``started`` tokens of every other request as not yet charged.
        A bucket of several bandwidths syncs each one the upstream reported
        (see `_limit_of`); a refusal that reported nothing empties every one.
        """
        policies = self._bucket.policies
        if step.report is None:
            found: list[UpstreamReport | None] = [None] * len(policies)
            remaining: list[float | None] = [0.0] * len(policies)
        else:
            found = _limit_of(policies, step.report)
            remaining = [None if r is None else r.remaining for r in found]
        bands = (None,) * len(policies) if snapshot is None else snapshot.bandwidths or (snapshot,)
        targets: list[float | None] = []
        rates: list[Rate | None] = []
        for r, left, snap in zip(found, remaining, bands, strict=True):
            target = None
            if left is not None:
                target = left if snap is None else left - started
                if snap is not None and not _lowers(target, snap):
                    target = None
            targets.append(target)
            rates.append(r.refill_rate if r is not None and target is not None and self.sync_rate else None)
        if all(t is None for t in targets):
            return None
        if len(policies) == 1:
            return targets[0], rates[0]
        return targets, rates

    def _lead(self, reservation: Any, step: _Reserve) -> tuple[Any, _Entry]:
        """The bucket's own reservation in ``reservation`` (a group's first part), named for the cost model,
        and its ledger entry."""
        if self._group is None:
            return reservation, self._ledger.begin(reservation.cost, reservation.start)
        lead = reservation.reservations[0]
        if step.op is not None:
            lead._op, lead._units = step.op, step.units
        return reservation, self._ledger.begin(lead.cost, reservation.start)

    def _price(self, request: httpx.Request) -> _Reserve:
        if self._operation is not None:
            named = self._operation(request)
            if named is not None:
                op, units = named
                return _Reserve(ESTIMATE, op, units)
        cost = self._cost(request) if callable(self._cost) else self._cost
        return _Reserve(cost, None, 1)

    def _flow(self, request: httpx.Request) -> _Flow:
        ledger = self._ledger
        reconciler = self._reconciler
        attempts = 0
        while True:
            attempts += 1
            reservation, entry = yield self._price(request)
            try:
                grant: Grant | AsyncGrant = yield _Wait(reservation)
            except BaseException:
                ledger.end(entry)  # the reservation refunded itself
                raise
            try:
                response: httpx.Response = yield _Send(request)
            except Exception:
                yield _Finish(entry, grant, 0.0, False)  # the request did not reach the upstream: refund
                raise
            except BaseException:
                ledger.end(entry)  # cancelled mid-request: it may have been charged
                raise
            throttled = response.status_code == 429
            body = None
            try:
                if reconciler.needs_body:
                    body = yield _Read(response)
                report = reconciler(response.status_code, response.headers, body)
            except BaseException:
                ledger.end(entry)
                yield _Close(response)
                raise
            actual = report.consumed if report is not None else None
            if actual is None and throttled:
                actual = 0.0
            # Only a successful answer says what the operation costs: a refusal or an error
            # (4xx/5xx, often "0 tokens consumed") is charged as reported but teaches the model nothing.
            yield _Finish(entry, grant, actual, response.is_success)
            if report is not None and report.remaining is not None:
                yield _Sync(entry, report)
            elif throttled:
                yield _Sync(entry, None)  # refused, balance unknown: take it as empty
            if not throttled:
                return response
            yield _Close(response)
            if attempts > self.max_retries:
                raise UpstreamRateLimited(report, attempts, str(request.url))
            if report is not None and report.remaining is None and report.retry_after:
                yield _Sleep(report.retry_after)


class RateLimitedTransport(_RateLimitedBase, httpx.BaseTransport):
    """A sync httpx transport that pays for each request from a `tokenbucket.TokenBucket`.

    Args:
        transport: The transport that sends requests (``httpx.HTTPTransport()``, a mock, ...).
        bucket: The bucket to pay from.
        cost: Tokens per request: a number, or a function of the request.
        operation: A function of the request returning ``(op, units)`` to have
            the bucket's cost model price it (and learn from the response), or
            None to fall back to ``cost``.
        reconciler: Reads the upstream's report; default `tokenbucket.KeepaReconciler`.
        max_retries: Retries after a 429 before raising `tokenbucket.UpstreamRateLimited`.
        timeout: Longest wait for tokens, in seconds (`tokenbucket.AcquireTimeout` beyond).
        also: Other buckets every request (every attempt, retries included) also
            pays from, as ``(bucket, cost)`` pairs: a requests-per-second cap
            beside a token quota. They are reserved with ``bucket`` in one
            atomic step (a `tokenbucket.BucketGroup`: all or nothing, on one
            backend); only ``bucket`` is settled and synced.
        lane: The bucket's lane every request waits in (see `tokenbucket.TokenBucket`'s
            ``lanes``): a backfill's client in ``"bulk"``, a latency-sensitive one in ``"urgent"``.
        sync_rate: Adopt the refill rate the upstream reports. The bucket's
            stored policy then follows the upstream (see `TokenBucket.reconfigure`),
            and a transport whose bucket meets a stored rate another process
            adopted follows it too, instead of raising `tokenbucket.PolicyMismatch`.

    For example:

        bucket = TokenBucket("keepa", rate="5/minute", capacity=300, cost_model=CostModel(prior={"product": 20}))
        transport = RateLimitedTransport(
            httpx.HTTPTransport(), bucket,
            operation=lambda r: ("product", len(r.url.params["asin"].split(","))),
        )
        client = httpx.Client(transport=transport)
    """

    def __init__(self, transport: httpx.BaseTransport, bucket: TokenBucket, **options: Any) -> None:
        if not isinstance(bucket, TokenBucket):
            raise TypeError(f"RateLimitedTransport needs a TokenBucket, not {type(bucket).__name__}")
        super().__init__(transport, bucket, **options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Pay for ``request``, send it, and reconcile the bucket with the response."""
        bucket: TokenBucket = self._bucket  # type: ignore[assignment]
        ledger = self._ledger
        group: BucketGroup | None = self._group  # type: ignore[assignment]

        def reserve(step: _Reserve) -> Any:
            if group is None:
                return bucket.reserve(step.cost, op=step.op, units=step.units, timeout=self._timeout, lane=self._lane)
            cost = bucket._price(step.cost, step.op, step.units)
            return group.reserve((cost, *self._also_costs), timeout=self._timeout)

        def perform(step: _Step) -> Any:
            if type(step) is _Reserve:
                with ledger.lock:
                    try:
                        res = reserve(step)
                    except PolicyMismatch as exc:  # another process synced a new upstream rate: follow it
                        if not (self.sync_rate and bucket._follow_rate(exc)):
                            raise
                        res = reserve(step)
                    return self._lead(res, step)
            if type(step) is _Wait:
                got = step.reservation.wait()
                return got.grants[0] if group is not None else got
            if type(step) is _Send:
                return self._transport.handle_request(step.request)
            if type(step) is _Read:
                return step.response.read()
            if type(step) is _Close:
                return step.response.close()
            if type(step) is _Finish:
                with ledger.lock:
                    if step.actual is not None:
                        step.grant.settle(step.actual, observe=step.observe)
                    return ledger.end(step.entry)
            if type(step) is _Sync:
                with ledger.lock:
                    started, alone = ledger.others(step.entry, bucket._clock.now())
                    args = self._sync_args(step, started, None if alone else bucket.snapshot())
                    if args is not None:
                        bucket.sync(args[0], rate=args[1])
                    return None
            assert type(step) is _Sleep
            return bucket._clock.sleep(step.seconds)

        response: httpx.Response = drive(self._flow(request), perform)
        return response

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()


class AsyncRateLimitedTransport(_RateLimitedBase, httpx.AsyncBaseTransport):
    """The asyncio twin of `RateLimitedTransport`, paying from a `tokenbucket.AsyncTokenBucket`.

    Takes the same arguments. Cancelling a request while it waits for tokens
    refunds them; cancelling it once sent keeps the charge (the upstream may
    have run it).
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, bucket: AsyncTokenBucket, **options: Any) -> None:
        if not isinstance(bucket, AsyncTokenBucket):
            raise TypeError(f"AsyncRateLimitedTransport needs an AsyncTokenBucket, not {type(bucket).__name__}")
        super().__init__(transport, bucket, **options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Pay for ``request``, send it, and reconcile the bucket with the response."""
        bucket: AsyncTokenBucket = self._bucket  # type: ignore[assignment]
        ledger = self._ledger
        lock = ledger.async_lock()
        group: AsyncBucketGroup | None = self._group  # type: ignore[assignment]

        async def reserve(step: _Reserve) -> Any:
            if group is None:
                return await bucket.reserve(
                    step.cost, op=step.op, units=step.units, timeout=self._timeout, lane=self._lane
                )
            cost = bucket._price(step.cost, step.op, step.units)
            return await group.reserve((cost, *self._also_costs), timeout=self._timeout)

        async def perform(step: _Step) -> Any:
            if type(step) is _Reserve:
                async with lock:
                    try:
                        res = await reserve(step)
                    except PolicyMismatch as exc:  # another process synced a new upstream rate: follow it
                        if not (self.sync_rate and bucket._follow_rate(exc)):
                            raise
                        res = await reserve(step)
                    return self._lead(res, step)
            if type(step) is _Wait:
                got = await step.reservation.wait()
                return got.grants[0] if group is not None else got
            if type(step) is _Send:
                return await self._transport.handle_async_request(step.request)
            if type(step) is _Read:
                return await step.response.aread()
            if type(step) is _Close:
                return await step.response.aclose()
            if type(step) is _Finish:
                async with lock:
                    if step.actual is not None:
                        await step.grant.settle(step.actual, observe=step.observe)  # type: ignore[misc]
                    return ledger.end(step.entry)
            if type(step) is _Sync:
                async with lock:
                    started, alone = ledger.others(step.entry, bucket._clock.now())
                    args = self._sync_args(step, started, None if alone else await bucket.snapshot())
                    if args is not None:
                        await bucket.sync(args[0], rate=args[1])
                    return None
            assert type(step) is _Sleep
            return await bucket._clock.asleep(step.seconds)

        response: httpx.Response = await adrive(self._flow(request), perform)
        return response

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()
