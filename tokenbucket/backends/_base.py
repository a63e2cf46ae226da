"""The backend protocols: the few atomic operations a store must offer.

A backend keeps bucket state and performs each operation atomically (in one
round trip for a remote store). It never waits: the front ends
(`tokenbucket.TokenBucket`, `tokenbucket.AsyncTokenBucket`) do the waiting.
Point the conformance suite in ``tests/`` at a new backend to check it.

Times: every operation takes ``now``. ``None`` means "use the store's own
clock" (Redis ``TIME``; the process's monotonic clock in memory). A front end
passes its own clock's reading when the backend has no clock of its own
(``server_clock`` is False) or when the user gave it a clock explicitly, for
virtual-time tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._exceptions import ConfigurationError
from .._model import Policy, Snapshot

__all__ = ["BAND", "AsyncBackend", "Backend", "ManyTicket", "Ticket", "band_keys", "check_parts"]

Ticket = tuple[bool, float, "int | None"]
"""The reply of ``reserve``: ``(admitted, seconds, rid)``.

When ``admitted`` is True the cost was charged and ``seconds`` is the delay
until the request may start; ``rid`` identifies the reservation when it has to
wait (pass it to ``cancel``), else None. When ``admitted`` is False nothing was
charged and ``seconds`` is the time until the request could start
(``retry_after``).
"""

BAND = "\x1f"
"""Bandwidth ``n`` (from 2) of a bucket with several is stored under the key ``f"{name}{BAND}{n}"``.

A store that shards keys (Redis Cluster) keeps those keys with ``name``'s, so
`Backend.reserve_all` can charge every bandwidth in one step.
"""

def band_keys(name: str, count: int) -> tuple[str, ...]:
    """The keys of the ``count`` bandwidths of bucket ``name``: ``name`` itself, then ``name{BAND}2``, ..."""
    return (name, *(f"{name}{BAND}{n}" for n in range(2, count + 1)))


ManyTicket = tuple[bool, float, "tuple[int | None, ...]"]
"""The reply of ``reserve_all``: ``(admitted, seconds, rids)``, one rid per part when admitted, else ``()``."""


def check_parts(parts: Sequence[tuple[str, Policy, float]]) -> list[str]:
    """The keys of a ``reserve_all``; `ConfigurationError` if there are none or one appears twice."""
    keys = [part[0] for part in parts]
    if not keys:
        raise ConfigurationError("reserve_all needs at least one bucket")
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ConfigurationError(f"reserve_all names a bucket more than once: {twice}; add its costs together")
    return keys


@runtime_checkable
class Backend(Protocol):
    """A synchronous store of bucket state.

    Every method is atomic with respect to every other caller of the same key,
    in every thread and (for shared stores) every process. A method that raises
    has changed nothing. Failures of the store are raised as
    `tokenbucket.BackendError`.

    The state remembers the policy it was created with (compare
    `Policy.fingerprint`): every method but ``reconfigure`` raises
    `tokenbucket.PolicyMismatch`, changing nothing, when ``policy`` is another.
    """

    @property
    def server_clock(self) -> bool:
        """True when ``now=None`` reads a clock shared by every client (Redis ``TIME``)."""
        ...

    def reserve(self, key: str, policy: Policy, cost: float, max_wait: float | None, now: float | None) -> Ticket:
        """Charge ``cost`` and return the delay, unless the delay would exceed ``max_wait``.

        Raises `tokenbucket.CostExceedsCapacity` (charging nothing) if the cost can never start.
        """
        ...

    def reserve_all(
        self, parts: Sequence[tuple[str, Policy, float]], max_wait: float | None, now: float | None
    ) -> ManyTicket:
        """Reserve ``cost`` in each ``(key, policy, cost)`` for one request, all or nothing (`_model.reserve_all`).

        One atomic step (one round trip): either every part is charged and
        the reply is the common delay with each part's rid, or none is (the
        delay would exceed ``max_wait``; the reply is the time until it could
        start). Each key appears once. Raises `tokenbucket.CostExceedsCapacity`
        or `tokenbucket.PolicyMismatch` for any part, charging nothing.
        """
        ...

    def reserve_lane(
        self, key: str, policy: Policy, cost: float, hold: float, max_wait: float | None, now: float | None
    ) -> Ticket:
        """`reserve` in a lane that leaves ``hold`` tokens to more urgent lanes (`_model.reserve_lane`).

        The request may start before waiting reservations of less urgent lanes
        (larger ``hold``) while each keeps its start time affordable. Raises
        `tokenbucket.CostExceedsCapacity` (charging nothing) if the lane can never
        start ``cost``. Needed only for buckets with lanes.
        """
        ...

    def cancel(self, key: str, policy: Policy, rid: int, now: float | None) -> float:
        """Cancel a waiting reservation and return the tokens refunded (0 if it had started)."""
        ...

    def settle(self, key: str, policy: Policy, delta: float, now: float | None) -> Snapshot:
        """Charge ``delta`` more (refund if negative) and return the new snapshot."""
        ...

    def sync(self, key: str, policy: Policy, remaining: float, now: float | None) -> Snapshot:
        """Adopt the upstream's reported balance and return the new snapshot."""
        ...

    def snapshot(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """Describe the bucket without changing it."""
        ...

    def reconfigure(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """Make ``policy`` the bucket's policy, carrying the balance over (`_model.reconfigure`)."""
        ...


@runtime_checkable
class AsyncBackend(Protocol):
    """The asyncio twin of `Backend`: the same operations, awaitable."""

    @property
    def server_clock(self) -> bool:
        """True when ``now=None`` reads a clock shared by every client."""
        ...

    async def reserve(self, key: str, policy: Policy, cost: float, max_wait: float | None, now: float | None) -> Ticket:
        """See `Backend.reserve`."""
        ...

    async def reserve_all(
        self, parts: Sequence[tuple[str, Policy, float]], max_wait: float | None, now: float | None
    ) -> ManyTicket:
        """See `Backend.reserve_all`."""
        ...

    async def reserve_lane(
        self, key: str, policy: Policy, cost: float, hold: float, max_wait: float | None, now: float | None
    ) -> Ticket:
        """See `Backend.reserve_lane`."""
        ...

    async def cancel(self, key: str, policy: Policy, rid: int, now: float | None) -> float:
        """See `Backend.cancel`."""
        ...

    async def settle(self, key: str, policy: Policy, delta: float, now: float | None) -> Snapshot:
        """See `Backend.settle`."""
        ...

    async def sync(self, key: str, policy: Policy, remaining: float, now: float | None) -> Snapshot:
        """See `Backend.sync`."""
        ...

    async def snapshot(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """See `Backend.snapshot`."""
        ...

    async def reconfigure(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """See `Backend.reconfigure`."""
        ...
