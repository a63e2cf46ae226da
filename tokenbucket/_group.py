"""`BucketGroup` and `AsyncBucketGroup`: one request that must pass several buckets, all or nothing.

A tenant's quota and the global one, requests per minute and LLM tokens per
minute: the request starts when every bucket allows it, and one atomic step of
the store (`tokenbucket.backends.Backend.reserve_all`, one round trip on Redis)
charges each bucket its own cost, or none of them. Every bucket stays
first-come first-served, and the timeout is decided up front from the latest of
the buckets' start times. The flows are written once and driven by blocking
calls or by awaits, as the buckets' own (see ``_bucket``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from . import _events
from ._bucket import (
    AsyncGrant,
    AsyncReservation,
    AsyncTokenBucket,
    Grant,
    Reservation,
    TokenBucket,
    _arun,
    _BucketBase,
    _Flow,
    _Rid,
    _run,
    _Sleep,
)
from ._clock import SystemClock
from ._exceptions import AcquireTimeout, ConfigurationError
from ._flow import Call as _Call
from ._model import Policy, Snapshot
from ._validate import check_cost, check_timeout

__all__ = [
    "AsyncBucketGroup",
    "Costs",
    "AsyncGroupGrant",
    "AsyncGroupReservation",
    "BucketGroup",
    "GroupGrant",
    "GroupReservation",
]

_G = TypeVar("_G", Grant, AsyncGrant)
_R = TypeVar("_R", Reservation, AsyncReservation)

Costs = float | Sequence[float]
"""One cost for every bucket of a group, or one per bucket, in order."""


class _GrantsBase(Generic[_G]):
    """The grants of one request, one per bucket; `GroupGrant` and `AsyncGroupGrant` add ``settle``."""

    __slots__ = ("grants", "waited")

    def __init__(self, grants: tuple[_G, ...], waited: float) -> None:
        self.grants: tuple[_G, ...] = grants
        self.waited = waited

    @property
    def costs(self) -> tuple[float, ...]:
        """The cost charged to each bucket when the request was admitted."""
        return tuple(g.cost for g in self.grants)

    def __repr__(self) -> str:
        costs = ", ".join(f"{c:g}" for c in self.costs)
        return f"{type(self).__name__}(costs=({costs}), waited={self.waited:.6g})"

    def _settle_flow(self, actual_costs: Sequence[float | None]) -> _Flow[tuple[Snapshot | None, ...]]:
        actual = _settled(actual_costs, len(self.grants))
        snaps: list[Snapshot | None] = []
        for grant, cost in zip(self.grants, actual, strict=True):
            snaps.append(None if cost is None else (yield from grant._settle_flow(cost)))
        return tuple(snaps)


class GroupGrant(_GrantsBase[Grant]):
    """Permission to make one call that every bucket of a `BucketGroup` has charged.

    Attributes:
        grants: One `Grant` per bucket, in the group's order; settle one alone
            with ``grants[i].settle(cost)``.
        waited: Seconds spent waiting before the start.
    """

    __slots__ = ()

    def settle(self, actual_costs: Sequence[float | None]) -> tuple[Snapshot | None, ...]:
        """Record what the call really cost in each bucket (None: leave that one as charged).

        Each bucket is settled as by `Grant.settle` (a refund gives back only
        what its upstream can still hold).

        Returns:
            Each bucket's snapshot after settling (None where left as charged).

        Raises:
            ConfigurationError: not one cost per bucket, or a cost is negative, NaN or infinite
                (checked for all before any is settled).
        """
        result: tuple[Snapshot | None, ...] = _run(self.grants[0]._bucket, self._settle_flow(actual_costs))
        return result


class AsyncGroupGrant(_GrantsBase[AsyncGrant]):
    """The asyncio twin of `GroupGrant`: ``await grant.settle(actual_costs)``."""

    __slots__ = ()

    async def settle(self, actual_costs: Sequence[float | None]) -> tuple[Snapshot | None, ...]:
        """See `GroupGrant.settle`."""
        result: tuple[Snapshot | None, ...] = await _arun(self.grants[0]._bucket, self._settle_flow(actual_costs))
        return result


class _GroupReservationBase(Generic[_R, _G]):
    """One reservation in each bucket of a group, for one request that starts at ``start``."""

    __slots__ = ("delay", "reservations", "start")

    def __init__(self, reservations: tuple[_R, ...], delay: float) -> None:
        self.reservations: tuple[_R, ...] = reservations
        self.delay = delay
        self.start = reservations[0].start

    @property
    def state(self) -> str:
        """``"waiting"``, ``"started"``, or ``"cancelled"`` when any part was cancelled."""
        states = {r.state for r in self.reservations}
        return "cancelled" if "cancelled" in states else states.pop() if len(states) == 1 else "waiting"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(buckets={len(self.reservations)}, delay={self.delay:.6g}, state={self.state!r})"

    def _grants(self, grants: tuple[Any, ...], waited: float) -> Any:
        raise NotImplementedError

    def _wait_flow(self) -> _Flow[Any]:
        parts = self.reservations
        lead = parts[0]._bucket
        try:
            for part in parts:
                part._claim()
            remaining = self.start - lead._clock.now()
            if remaining > 0:
                yield _Sleep(remaining)
            for part in parts:
                part._begin()
        except BaseException:
            # Not every bucket can go (a part cancelled, an interrupted sleep): the call cannot
            # start, so no part keeps its tokens.
            for part in parts:
                yield from part._cancel_flow()
            raise
        grants = []
        for part in parts:
            bucket = part._bucket
            grant = bucket._grant(part.cost, bucket._clock.now() - part._made)
            if bucket._events is not None:
                yield from bucket._granted_flow(grant.cost, grant.waited)
            grants.append(grant)
        return self._grants(tuple(grants), grants[0].waited)

    def _cancel_flow(self) -> _Flow[tuple[float, ...]]:
        refunds = []
        for part in self.reservations:
            refunds.append((yield from part._cancel_flow()))
        return tuple(refunds)


class GroupReservation(_GroupReservationBase[Reservation, Grant]):
    """Tokens charged in every bucket of a `BucketGroup` for a request that may start at ``start``.

    Attributes:
        reservations: One `Reservation` per bucket, in the group's order.
            Cancelling one alone refunds that bucket; the group's `wait` then
            fails and cancels the others.
        delay: Seconds from the reservation to its start.
        start: The start time on the buckets' clock.
    """

    __slots__ = ()

    def _grants(self, grants: tuple[Any, ...], waited: float) -> GroupGrant:
        return GroupGrant(grants, waited)

    def wait(self) -> GroupGrant:
        """Sleep until the start and return the grants.

        If the sleep is interrupted, or a part was cancelled, every part is
        cancelled (and refunded) before the exception propagates.

        Raises:
            TokenBucketError: a part was cancelled, or already waited for.
        """
        result: GroupGrant = _run(self.reservations[0]._bucket, self._wait_flow())
        return result

    def cancel(self) -> tuple[float, ...]:
        """Give back every part that has not started; the tokens refunded in each bucket."""
        result: tuple[float, ...] = _run(self.reservations[0]._bucket, self._cancel_flow())
        return result


class AsyncGroupReservation(_GroupReservationBase[AsyncReservation, AsyncGrant]):
    """The asyncio twin of `GroupReservation`: ``await res.wait()``, ``await res.cancel()``."""

    __slots__ = ()

    def _grants(self, grants: tuple[Any, ...], waited: float) -> AsyncGroupGrant:
        return AsyncGroupGrant(grants, waited)

    async def wait(self) -> AsyncGroupGrant:
        """See `GroupReservation.wait`; cancelling the task refunds every part."""
        result: AsyncGroupGrant = await _arun(self.reservations[0]._bucket, self._wait_flow())
        return result

    async def cancel(self) -> tuple[float, ...]:
        """See `GroupReservation.cancel`."""
        result: tuple[float, ...] = await _arun(self.reservations[0]._bucket, self._cancel_flow())
        return result


class _GroupBase:
    """Validation and flows shared by the two groups."""

    _kind: type[_BucketBase]

    def __init__(self, *buckets: Any) -> None:
        if not buckets:
            raise ConfigurationError(f"{type(self).__name__} needs at least one bucket")
        for bucket in buckets:
            if not isinstance(bucket, self._kind):
                raise TypeError(
                    f"{type(self).__name__} takes {self._kind.__name__} objects, not {type(bucket).__name__}"
                )
        lead = buckets[0]
        names = [b.name for b in buckets]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"a group names a bucket more than once: {names}")
        for bucket in buckets[1:]:
            if bucket._backend is not lead._backend:
                raise ConfigurationError(
                    f"buckets {lead.name!r} and {bucket.name!r} are on different backends: a group's buckets "
                    "are reserved in one atomic step, so they must share one backend object"
                )
            same_clock = bucket._clock is lead._clock or (
                type(bucket._clock) is SystemClock and type(lead._clock) is SystemClock
            )
            if not same_clock:
                raise ConfigurationError(
                    f"buckets {lead.name!r} and {bucket.name!r} have different clocks: a group waits on one clock"
                )
        if not callable(getattr(lead._backend, "reserve_all", None)):
            raise TypeError(f"{type(lead._backend).__name__} cannot reserve several buckets at once: no reserve_all()")
        self.buckets: tuple[Any, ...] = buckets
        self._lead: _BucketBase = lead

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(b.name) for b in self.buckets)})"

    def _costs(self, costs: Costs) -> list[float]:
        n = len(self.buckets)
        if isinstance(costs, (int, float)) and not isinstance(costs, bool):
            return [check_cost(costs)] * n
        if isinstance(costs, (str, bytes)) or not isinstance(costs, Sequence):
            raise TypeError(f"costs must be a number or a sequence of one per bucket, not {type(costs).__name__}")
        if len(costs) != n:
            raise ConfigurationError(f"costs must give one cost per bucket: {n} buckets, {len(costs)} costs")
        return [check_cost(c) for c in costs]

    def _split(self, rids: tuple[int | None, ...]) -> list[_Rid]:
        """Each bucket's part of the rids of a ``reserve_all`` (a tuple for a bucket with several bandwidths)."""
        out: list[_Rid] = []
        at = 0
        for bucket in self.buckets:
            width = 1 if bucket._bands is None else len(bucket._bands)
            part = rids[at : at + width]
            out.append(part[0] if bucket._bands is None else tuple(part))
            at += width
        return out

    def _reserve_flow(self, costs: Costs, timeout: float | None) -> _Flow[tuple[list[Any], float]]:
        cs = self._costs(costs)
        wait = check_timeout(timeout)
        lead = self._lead
        items: list[tuple[str, Policy, float]] = []
        for bucket, cost in zip(self.buckets, cs, strict=True):
            items.extend([(bucket.name, bucket.policy, cost)] if bucket._bands is None else bucket._items(cost))
        asked = lead._clock.now() if wait else 0.0
        admitted, seconds, rids = yield _Call("reserve_all", items, wait, lead._now())
        made = lead._clock.now()
        if admitted:
            split = self._split(rids)
            if wait and seconds > 0 and (made - asked) + seconds > wait:  # the round trip ate the timeout
                for bucket, rid in zip(self.buckets, split, strict=True):
                    yield from bucket._cancel_flow(rid)
                admitted, seconds = False, seconds + (made - asked)
        if not admitted:
            limit = math.inf if wait is None else wait
            for bucket, cost in zip(self.buckets, cs, strict=True):
                if bucket._events is not None:
                    bucket._emit(_events.TimedOut(bucket.name, made, cost, limit, seconds))
            raise AcquireTimeout(sum(cs), limit, seconds)
        parts = []
        for bucket, cost, rid in zip(self.buckets, cs, split, strict=True):
            if bucket._events is not None and seconds > 0:
                bucket._emit(_events.Waiting(bucket.name, made, cost, seconds))
            parts.append(bucket._reservation(cost, seconds, rid, made))
        return parts, seconds

    def _try_flow(self, costs: Costs) -> _Flow[list[float] | None]:
        cs = self._costs(costs)
        lead = self._lead
        items: list[tuple[str, Policy, float]] = []
        for bucket, cost in zip(self.buckets, cs, strict=True):
            items.extend([(bucket.name, bucket.policy, cost)] if bucket._bands is None else bucket._items(cost))
        admitted, seconds, _ = yield _Call("reserve_all", items, 0.0, lead._now())
        for bucket, cost in zip(self.buckets, cs, strict=True):
            if bucket._events is not None:
                if admitted:
                    yield from bucket._granted_flow(cost, 0.0)
                else:
                    bucket._emit(_events.TimedOut(bucket.name, bucket._clock.now(), cost, 0.0, seconds))
        return cs if admitted else None


class BucketGroup(_GroupBase):
    """Several `TokenBucket` objects that one request must pass together, all or nothing.

    ``BucketGroup(tenant, everyone)`` with ``group.acquire((1, 1))``, or
    requests and LLM tokens with ``group.acquire((1, estimate))`` and
    ``grant.settle((1, actual))`` after the call. Each bucket is charged its
    own cost in one atomic step of the store, or none is: a request is never
    charged to one limit while another refuses it. Every bucket stays
    first-come first-served, debt and overdraft work as in one bucket, and the
    guarantee of one bucket holds in each (see the concepts page).

    The buckets must share one backend object (and one clock). On Redis
    Cluster they must also share a slot: give their names one hash-tag group,
    the same leading ``{group}`` (``"{tenant-42}:requests"``,
    ``"{tenant-42}:tokens"``); otherwise reserving is a `ConfigurationError`,
    never a partial charge.

    Args:
        *buckets: The buckets, in the order costs are given.

    Raises:
        ConfigurationError: no bucket, a bucket twice, or different backends or clocks.
        TypeError: not `TokenBucket` objects, or a backend without ``reserve_all``.
    """

    _kind = TokenBucket

    def reserve(self, costs: Costs, *, timeout: float | None = None) -> GroupReservation:
        """Charge every bucket its cost now and return when the request may start.

        Args:
            costs: One cost for every bucket, or a sequence of one per bucket.
            timeout: Longest acceptable wait (decided up front, from the latest
                of the buckets' starts); None waits as long as needed.

        Raises:
            AcquireTimeout: the wait would exceed ``timeout`` (no bucket charged).
            CostExceedsCapacity: a cost can never start in its bucket (none charged).
            ConfigurationError: not one cost per bucket, or a cost or timeout is invalid.
            BackendError: the store failed.
        """
        parts, delay = _run(self._lead, self._reserve_flow(costs, timeout))
        return GroupReservation(tuple(parts), delay)

    def acquire(self, costs: Costs, *, timeout: float | None = None) -> GroupGrant:
        """`reserve`, then sleep until the start: the grants. An interrupted wait refunds every bucket."""
        return self.reserve(costs, timeout=timeout).wait()

    def try_acquire(self, costs: Costs) -> GroupGrant | None:
        """Charge every bucket if the request may start now; else None, charging nothing. Never blocks."""
        charged = _run(self._lead, self._try_flow(costs))
        if charged is None:
            return None
        return GroupGrant(tuple(Grant(b, c, 0.0) for b, c in zip(self.buckets, charged, strict=True)), 0.0)


class AsyncBucketGroup(_GroupBase):
    """The asyncio twin of `BucketGroup`, for `AsyncTokenBucket` objects: the same methods, awaitable."""

    _kind = AsyncTokenBucket

    async def reserve(self, costs: Costs, *, timeout: float | None = None) -> AsyncGroupReservation:
        """See `BucketGroup.reserve`."""
        parts, delay = await _arun(self._lead, self._reserve_flow(costs, timeout))
        return AsyncGroupReservation(tuple(parts), delay)

    async def acquire(self, costs: Costs, *, timeout: float | None = None) -> AsyncGroupGrant:
        """See `BucketGroup.acquire`; cancelling the task refunds every bucket."""
        reservation = await self.reserve(costs, timeout=timeout)
        return await reservation.wait()

    async def try_acquire(self, costs: Costs) -> AsyncGroupGrant | None:
        """See `BucketGroup.try_acquire`."""
        charged = await _arun(self._lead, self._try_flow(costs))
        if charged is None:
            return None
        return AsyncGroupGrant(tuple(AsyncGrant(b, c, 0.0) for b, c in zip(self.buckets, charged, strict=True)), 0.0)


def _settled(actual_costs: object, n: int) -> list[float | None]:
    """The actual costs of a group settle: one per bucket (None: as charged), all checked first."""
    if isinstance(actual_costs, (str, bytes)) or not isinstance(actual_costs, Sequence):
        raise TypeError(
            f"actual_costs must be a sequence of one cost (or None) per bucket, not {type(actual_costs).__name__}"
        )
    if len(actual_costs) != n:
        raise ConfigurationError(f"actual_costs must give one cost per bucket: {n} buckets, {len(actual_costs)} costs")
    return [None if c is None else check_cost(c, "actual_cost") for c in actual_costs]
