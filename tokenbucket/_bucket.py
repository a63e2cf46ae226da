"""`TokenBucket` and `AsyncTokenBucket`: the front ends that wait.

Both run the same flows. A flow is a generator that yields what it needs done
(a backend call, a sleep) and receives the result; `TokenBucket` drives it with
blocking calls, `AsyncTokenBucket` with awaits. The decisions (validation,
timeouts, refunds on interruption) are written once, in the flows.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from ._clock import Clock, SystemClock
from ._exceptions import AcquireTimeout, ConfigurationError, TokenBucketError
from ._model import Policy, Snapshot
from ._rate import Rate
from ._validate import check_cost, check_name, check_timeout
from .backends._base import AsyncBackend, Backend
from .backends._memory import MemoryBackend

__all__ = ["AsyncGrant", "AsyncReservation", "AsyncTokenBucket", "Grant", "Reservation", "TokenBucket"]

_T = TypeVar("_T")

_DEFAULT_BACKEND = MemoryBackend()
"""Buckets made without a backend share this one, so a name means one bucket per process."""


class _Call:
    """A backend operation a flow wants performed."""

    __slots__ = ("args", "method")

    def __init__(self, method: str, *args: Any) -> None:
        self.method = method
        self.args = args


class _Sleep:
    """A sleep a flow wants performed."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


_Op = _Call | _Sleep
_Flow = Generator[_Op, Any, _T]


class _GrantBase:
    """The data of a grant; `Grant` and `AsyncGrant` add ``settle``."""

    __slots__ = ("_bucket", "_charged", "cost", "waited")

    def __init__(self, bucket: _BucketBase, cost: float, waited: float) -> None:
        self._bucket = bucket
        self._charged = cost
        self.cost = cost
        self.waited = waited

    @property
    def charged(self) -> float:
        """Tokens charged for this request so far: the estimate, or the last settled cost."""
        return self._charged

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cost={self.cost:g}, waited={self.waited:.6g}, charged={self._charged:g})"

    def _settle_flow(self, actual_cost: float) -> _Flow[Snapshot]:
        actual = check_cost(actual_cost)
        delta = actual - self._charged
        bucket = self._bucket
        snap: Snapshot = yield _Call("settle", bucket.name, bucket.policy, delta, bucket._now())
        self._charged = actual
        return snap


class Grant(_GrantBase):
    """Permission to make one call, already charged to the bucket.

    Attributes:
        cost: The cost charged when the request was admitted (the estimate).
        waited: Seconds spent waiting before the start.
    """

    __slots__ = ()

    def settle(self, actual_cost: float) -> Snapshot:
        """Record what the call really cost; charge or refund the difference.

        Idempotent: settling again with the same cost changes nothing, and a
        later settle replaces the earlier one. A charge may take the balance
        below ``-overdraft``: it records what the upstream did.

        Returns:
            The bucket's snapshot after settling.

        Raises:
            ConfigurationError: ``actual_cost`` is negative, NaN or infinite (nothing changes).
        """
        result: Snapshot = _run(self._bucket, self._settle_flow(actual_cost))
        return result


class AsyncGrant(_GrantBase):
    """The asyncio twin of `Grant`: ``await grant.settle(actual_cost)``."""

    __slots__ = ()

    async def settle(self, actual_cost: float) -> Snapshot:
        """See `Grant.settle`."""
        result: Snapshot = await _arun(self._bucket, self._settle_flow(actual_cost))
        return result


_G = TypeVar("_G", Grant, AsyncGrant)


class _ReservationBase(Generic[_G]):
    """The data of a reservation; `Reservation` and `AsyncReservation` add ``wait`` and ``cancel``."""

    __slots__ = ("_bucket", "_made", "_rid", "_state", "cost", "delay", "start")

    def __init__(self, bucket: _BucketBase, cost: float, delay: float, rid: int | None, made: float) -> None:
        self._bucket = bucket
        self._rid = rid
        self._made = made
        self._state = "waiting"
        self.cost = cost
        self.delay = delay
        self.start = made + delay

    @property
    def state(self) -> str:
        """``"waiting"``, ``"started"`` (a grant was handed out) or ``"cancelled"``."""
        return self._state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cost={self.cost:g}, delay={self.delay:.6g}, state={self._state!r})"

    def _wait_flow(self) -> _Flow[_G]:
        if self._state == "cancelled":
            raise TokenBucketError("this reservation was cancelled; reserve again")
        if self._state == "started":
            raise TokenBucketError("this reservation already started; a reservation is waited for once")
        bucket = self._bucket
        remaining = self.start - bucket._clock.now()
        if remaining > 0:
            try:
                yield _Sleep(remaining)
            except BaseException:
                yield from self._cancel_flow()
                raise
        self._state = "started"
        return bucket._grant(self.cost, bucket._clock.now() - self._made)  # type: ignore[return-value]

    def _cancel_flow(self) -> _Flow[float]:
        if self._state != "waiting":
            return 0.0
        self._state = "cancelled"
        if self._rid is None:
            return 0.0
        bucket = self._bucket
        refunded: float = yield _Call("cancel", bucket.name, bucket.policy, self._rid, bucket._now())
        return refunded


class Reservation(_ReservationBase[Grant]):
    """Tokens charged for a request that may start at ``start`` (after ``delay`` seconds).

    Call `wait` to sleep until then and get the `Grant`, or `cancel` to give
    the tokens back. A reservation left alone simply starts on time: nothing
    is stored for it beyond its start, so a dead waiter leaves nothing behind.

    Attributes:
        cost: Tokens charged.
        delay: Seconds from the reservation to its start.
        start: The start time on the bucket's clock.
    """

    __slots__ = ()

    def wait(self) -> Grant:
        """Sleep until the start and return the grant.

        If the sleep is interrupted (``KeyboardInterrupt``, any exception) the
        reservation is cancelled and its cost refunded before the exception
        propagates.
        """
        result: Grant = _run(self._bucket, self._wait_flow())
        return result

    def cancel(self) -> float:
        """Give the tokens back if the reservation has not started.

        Returns:
            The tokens refunded (0 if it had started or was cancelled already).
        """
        result: float = _run(self._bucket, self._cancel_flow())
        return result


class AsyncReservation(_ReservationBase[AsyncGrant]):
    """The asyncio twin of `Reservation`: ``await res.wait()``, ``await res.cancel()``."""

    __slots__ = ()

    async def wait(self) -> AsyncGrant:
        """See `Reservation.wait`; cancelling the task refunds the reservation."""
        result: AsyncGrant = await _arun(self._bucket, self._wait_flow())
        return result

    async def cancel(self) -> float:
        """See `Reservation.cancel`."""
        result: float = await _arun(self._bucket, self._cancel_flow())
        return result


def _no_time() -> None:
    """The ``now`` passed to a store that keeps its own clock."""
    return None


class _BucketBase:
    """Configuration and flows shared by the two front ends."""

    _backend: Any

    def __init__(
        self,
        name: str,
        rate: Rate | str,
        *,
        capacity: float | None = None,
        overdraft: float = 0.0,
        min_start: float = 1.0,
        initial: float | None = None,
        backend: Backend | AsyncBackend | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = check_name(name)
        self.policy = Policy.build(rate, capacity, overdraft, min_start, initial)
        if backend is None:
            backend = _DEFAULT_BACKEND
        elif not callable(getattr(backend, "reserve", None)):
            raise TypeError(f"backend must implement tokenbucket.backends.Backend, not {type(backend).__name__}")
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must have now(), sleep() and asleep(), not {type(clock).__name__}")
        self._backend = backend
        self._clock: Clock = SystemClock() if clock is None else clock
        # A store with a shared clock (Redis TIME) keeps its own time unless the user chose a clock.
        pass_now = clock is not None or not getattr(backend, "server_clock", False)
        self._stamp: Callable[[], float | None] = self._clock.now if pass_now else _no_time

    @property
    def rate(self) -> Rate:
        """The refill rate."""
        return self.policy.rate

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds."""
        return self.policy.capacity

    @property
    def overdraft(self) -> float:
        """How far below zero a started request may take the balance."""
        return self.policy.overdraft

    @property
    def backend(self) -> Backend | AsyncBackend:
        """Where the state lives."""
        backend: Backend | AsyncBackend = self._backend
        return backend

    def __repr__(self) -> str:
        p = self.policy
        return (
            f"{type(self).__name__}({self.name!r}, rate={p.rate}, capacity={p.capacity:g}, "
            f"overdraft={p.overdraft:g}, backend={type(self._backend).__name__})"
        )

    def _now(self) -> float | None:
        return self._stamp()

    def _grant(self, cost: float, waited: float) -> Grant | AsyncGrant:
        raise NotImplementedError

    def _reservation(self, cost: float, delay: float, rid: int | None, made: float) -> Any:
        raise NotImplementedError

    def _reserve_flow(self, cost: float, timeout: float | None) -> _Flow[Any]:
        c = check_cost(cost)
        wait = check_timeout(timeout)
        admitted, seconds, rid = yield _Call("reserve", self.name, self.policy, c, wait, self._now())
        made = self._clock.now()
        if not admitted:
            raise AcquireTimeout(c, math.inf if wait is None else wait, seconds)
        return self._reservation(c, seconds, rid, made)

    def _try_flow(self, cost: float) -> _Flow[bool]:
        c = check_cost(cost)
        ticket: tuple[bool, float, int | None] = yield _Call("reserve", self.name, self.policy, c, 0.0, self._now())
        return ticket[0]

    def _acquire_flow(self, cost: float, timeout: float | None) -> _Flow[Any]:
        reservation: _ReservationBase[Any] = yield from self._reserve_flow(cost, timeout)
        grant = yield from reservation._wait_flow()
        return grant

    def _sync_flow(self, remaining: float, rate: Rate | str | None) -> _Flow[Snapshot]:
        if isinstance(remaining, bool) or not isinstance(remaining, (int, float)):
            raise TypeError(f"remaining must be a number, not {type(remaining).__name__}")
        if not math.isfinite(remaining):
            raise ConfigurationError(f"remaining must be a finite number, got {remaining!r}")
        policy = self.policy
        if rate is not None:
            new_rate = Rate.coerce(rate)
            if new_rate != policy.rate:
                policy = Policy.build(new_rate, policy.capacity, policy.overdraft, policy.min_start, policy.initial)
        snap: Snapshot = yield _Call("sync", self.name, policy, float(remaining), self._now())
        self.policy = policy
        return snap

    def _snapshot_flow(self) -> _Flow[Snapshot]:
        snap: Snapshot = yield _Call("snapshot", self.name, self.policy, self._now())
        return snap


def _run(bucket: _BucketBase, flow: _Flow[_T]) -> _T:
    """Drive a flow with blocking calls."""
    backend = bucket._backend
    clock = bucket._clock
    try:
        op = next(flow)
        while True:
            try:
                if type(op) is _Sleep:
                    clock.sleep(op.seconds)
                    result = None
                else:
                    result = getattr(backend, op.method)(*op.args)  # type: ignore[union-attr]
            except BaseException as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as stop:
        value: _T = stop.value
        return value


async def _arun(bucket: _BucketBase, flow: _Flow[_T]) -> _T:
    """Drive a flow with awaits; a sync backend (memory) is called directly."""
    backend = bucket._backend
    clock = bucket._clock
    is_async = inspect.iscoroutinefunction(backend.reserve)
    try:
        op = next(flow)
        while True:
            try:
                if type(op) is _Sleep:
                    await clock.asleep(op.seconds)
                    result = None
                else:
                    result = getattr(backend, op.method)(*op.args)  # type: ignore[union-attr]
                    if is_async:
                        result = await result
            except BaseException as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as stop:
        value: _T = stop.value
        return value


class TokenBucket(_BucketBase):
    """A token bucket shared by every thread (and, on Redis, every process) that uses its name.

    Requests are served first-come first-served: acquiring charges the cost at
    once and waits the computed delay, so a large request is never starved by
    a stream of small ones, and the waiting is one sleep, not a polling loop.

    Args:
        name: The bucket's name; buckets with one name on one backend share state.
        rate: A `Rate` or a string such as ``"5/minute"``.
        capacity: Most tokens held; default the rate's amount.
        overdraft: How far below zero a started request may take the balance:
            ``0`` (strict, the default), a number, or ``math.inf`` (Keepa's rule:
            start while the balance is at least ``min_start``).
        min_start: With an overdraft, the balance needed to start (default 1).
        initial: The balance of a bucket created or found missing; default ``capacity``.
        backend: Where the state lives: a `MemoryBackend` (default: one shared by
            this process) or a `RedisBackend`.
        clock: The clock to read and sleep on; default the monotonic clock.
            `tokenbucket.testing.ManualClock` gives virtual time.

    Raises:
        ConfigurationError: a policy value can never work.
        TypeError: an argument has the wrong type.
    """

    _backend: Backend

    def _grant(self, cost: float, waited: float) -> Grant:
        return Grant(self, cost, waited)

    def _reservation(self, cost: float, delay: float, rid: int | None, made: float) -> Reservation:
        return Reservation(self, cost, delay, rid, made)

    def acquire(self, cost: float = 1, *, timeout: float | None = None) -> Grant:
        """Charge ``cost`` tokens, sleep until the request may start, and return the grant.

        The timeout is decided up front: if the wait would exceed it, nothing is
        charged and `AcquireTimeout` is raised at once. An interrupted wait
        (``KeyboardInterrupt``, any exception) refunds the cost.

        Args:
            cost: Tokens the call will spend (zero or more, may be fractional).
            timeout: Longest acceptable wait in seconds; None waits as long as needed.

        Raises:
            CostExceedsCapacity: the cost can never start (raised at once; nothing charged).
            AcquireTimeout: the wait would exceed ``timeout`` (nothing charged).
            ConfigurationError: ``cost`` or ``timeout`` is negative, NaN or not a number.
            BackendError: the store failed.
        """
        result: Grant = _run(self, self._acquire_flow(cost, timeout))
        return result

    def try_acquire(self, cost: float = 1) -> Grant | None:
        """Take ``cost`` tokens if the request may start now; never blocks.

        Returns:
            The grant, or None (charging nothing) if the request would have to wait.

        Raises:
            CostExceedsCapacity: the cost can never start.
            ConfigurationError: ``cost`` is negative, NaN or infinite.
        """
        if type(cost) is not int or cost < 0:
            cost = check_cost(cost)
        if self._backend.reserve(self.name, self.policy, cost, 0.0, self._stamp())[0]:
            return Grant(self, cost, 0.0)
        return None

    def reserve(self, cost: float = 1, *, timeout: float | None = None) -> Reservation:
        """Charge ``cost`` now and return a `Reservation` saying when it may start.

        Use it to learn the wait before committing to it: ``res.delay``, then
        ``res.wait()`` or ``res.cancel()``.

        Raises:
            AcquireTimeout: the delay would exceed ``timeout`` (nothing charged).
            CostExceedsCapacity, ConfigurationError, BackendError: as `acquire`.
        """
        result: Reservation = _run(self, self._reserve_flow(cost, timeout))
        return result

    def sync(self, remaining: float, *, rate: Rate | str | None = None) -> Snapshot:
        """Adopt the balance the upstream reports.

        The bucket's balance becomes ``remaining`` minus the tokens promised to
        reservations that have not started; if the upstream reports exactly what
        the bucket predicts, nothing changes.

        Args:
            remaining: The upstream's balance (may be negative).
            rate: The refill rate the upstream reports, if any; this bucket object
                adopts it from now on.

        Returns:
            The snapshot after syncing.
        """
        result: Snapshot = _run(self, self._sync_flow(remaining, rate))
        return result

    def snapshot(self) -> Snapshot:
        """The bucket's balance, debt and timings now. Changes nothing."""
        result: Snapshot = _run(self, self._snapshot_flow())
        return result


class AsyncTokenBucket(_BucketBase):
    """The asyncio twin of `TokenBucket`: the same arguments and methods, awaitable.

    It accepts a sync backend that never blocks (`MemoryBackend`) or an async
    one (`RedisBackend` built on a ``redis.asyncio`` client). Cancelling a
    waiting task refunds its reservation.
    """

    _backend: Backend | AsyncBackend

    def _grant(self, cost: float, waited: float) -> AsyncGrant:
        return AsyncGrant(self, cost, waited)

    def _reservation(self, cost: float, delay: float, rid: int | None, made: float) -> AsyncReservation:
        return AsyncReservation(self, cost, delay, rid, made)

    async def acquire(self, cost: float = 1, *, timeout: float | None = None) -> AsyncGrant:
        """See `TokenBucket.acquire`; task cancellation refunds the cost."""
        result: AsyncGrant = await _arun(self, self._acquire_flow(cost, timeout))
        return result

    async def try_acquire(self, cost: float = 1) -> AsyncGrant | None:
        """See `TokenBucket.try_acquire`."""
        admitted: bool = await _arun(self, self._try_flow(cost))
        return AsyncGrant(self, float(cost), 0.0) if admitted else None

    async def reserve(self, cost: float = 1, *, timeout: float | None = None) -> AsyncReservation:
        """See `TokenBucket.reserve`."""
        result: AsyncReservation = await _arun(self, self._reserve_flow(cost, timeout))
        return result

    async def sync(self, remaining: float, *, rate: Rate | str | None = None) -> Snapshot:
        """See `TokenBucket.sync`."""
        result: Snapshot = await _arun(self, self._sync_flow(remaining, rate))
        return result

    async def snapshot(self) -> Snapshot:
        """See `TokenBucket.snapshot`."""
        result: Snapshot = await _arun(self, self._snapshot_flow())
        return result

