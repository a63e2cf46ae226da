"""`TokenBucket` and `AsyncTokenBucket`: the front ends that wait.

Both run the same flows. A flow is a generator that yields what it needs done
(a backend call, a sleep) and receives the result; `TokenBucket` drives it with
blocking calls, `AsyncTokenBucket` with awaits. The decisions (validation,
timeouts, refunds on interruption) are written once, in the flows.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import warnings
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from . import _events
from ._clock import Clock, SystemClock
from ._cost import CostModel
from ._events import Listened, Listener
from ._exceptions import AcquireTimeout, ConfigurationError, PolicyMismatch, TokenBucketError
from ._flow import Call as _Call
from ._flow import adrive, drive
from ._model import (
    Policy,
    Rates,
    Snapshot,
    build_policies,
    combine,
    lane_max_cost,
    parse_rates,
    per_rate,
    refundable,
)
from ._rate import Rate
from ._validate import MAX_AMOUNT, check_amount, check_cost, check_name, check_timeout
from .backends._base import BAND, AsyncBackend, Backend, Ticket, band_keys
from .backends._memory import MemoryBackend, _Slot

__all__ = ["AsyncGrant", "AsyncReservation", "AsyncTokenBucket", "Grant", "Reservation", "TokenBucket"]

_T = TypeVar("_T")

_DEFAULT_BACKEND = MemoryBackend()
"""Buckets made without a backend share this one, so a name means one bucket per process."""

_FAST_COST = 1_000_000
"""The largest whole-number cost the fast path takes (`_BucketBase._grant_now`); larger ones take the
ordinary path. Small enough for CPython to compare it as a one-digit int (a specialized comparison)."""

_new = object.__new__


class _Sleep:
    """A sleep a flow wants performed."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


_Op = _Call | _Sleep
_Flow = Generator[_Op, Any, _T]
_Rid = int | tuple[int | None, ...] | None
"""A reservation's id: one bandwidth's (None when it started at once), or one per bandwidth."""


class _GrantBase:
    """The data of a grant; `Grant` and `AsyncGrant` add ``settle``."""

    # ``_op`` and ``_units`` are set only for grants priced by a `CostModel`
    # (see `_priced`), so the plain-cost path does no extra work.
    __slots__ = ("_bucket", "_charged", "_learned", "_op", "_started", "_units", "cost", "waited")
    _learned: bool
    _op: str
    _units: float

    def __init__(self, bucket: _BucketBase, cost: float, waited: float, started: float | None = None) -> None:
        self._bucket = bucket
        self._charged = cost
        # When the call started, on the bucket's clock (a settle's refund depends on its age): the
        # reading the caller already made, if it made one on that clock.
        self._started = bucket._clock.now() if started is None else started
        self.cost = cost
        self.waited = waited

    @property
    def charged(self) -> float:
        """Tokens charged for this request so far: the estimate, or the last settled cost."""
        return self._charged

    @property
    def op(self) -> str | None:
        """The operation named when acquiring (``op=``), or None."""
        op: str | None = getattr(self, "_op", None)
        return op

    @property
    def units(self) -> float | None:
        """The units named when acquiring with ``op=``, or None."""
        units: float | None = getattr(self, "_units", None)
        return units

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cost={self.cost:g}, waited={self.waited:.6g}, charged={self._charged:g})"

    def _settle_flow(self, actual_cost: float, observe: bool = True) -> _Flow[Snapshot]:
        actual = check_cost(actual_cost, "actual_cost")
        delta = actual - self._charged
        bucket = self._bucket
        age = max(0.0, bucket._clock.now() - self._started) if delta < 0 else 0.0
        if bucket._bands is None:
            if delta < 0:  # give back only what the upstream can still have (see _model.refundable)
                delta = -refundable(bucket.policy, -delta, actual, age)
            snap: Snapshot = yield _Call("settle", bucket.name, bucket.policy, delta, bucket._now())
        else:  # each bandwidth by its own rule
            snaps = []
            for key, policy in zip(bucket._bands, bucket.policies, strict=True):
                change = -refundable(policy, -delta, actual, age) if delta < 0 else delta
                snaps.append((yield _Call("settle", key, policy, change, bucket._now())))
            snap = bucket._combine(snaps)
        estimate = self._charged
        self._charged = actual
        if bucket._events is not None:
            bucket._emit(_events.Settled(bucket.name, bucket._clock.now(), estimate, actual, delta, snap.tokens))
            bucket._note_debt(snap)
        op = getattr(self, "_op", None)
        if observe and op is not None and not getattr(self, "_learned", False) and self._units > 0:
            self._learned = True
            model = bucket._cost_model
            if model is not None:
                model.observe(op, self._units, actual)
        return snap


_GB = TypeVar("_GB", bound=_GrantBase)


def _priced(grant: _GB, op: str | None, units: float) -> _GB:
    """Mark ``grant`` as priced by the cost model for ``op`` on ``units`` units, so settling teaches the model."""
    if op is not None:
        grant._op = op
        grant._units = units
    return grant


class Grant(_GrantBase):
    """Permission to make one call, already charged to the bucket.

    Attributes:
        cost: The cost charged when the request was admitted (the estimate).
        waited: Seconds spent waiting before the start.
    """

    __slots__ = ()

    def settle(self, actual_cost: float, *, observe: bool = True) -> Snapshot:
        """Record what the call really cost; charge or refund the difference.

        Idempotent: settling again with the same cost changes nothing, and a
        later settle replaces the earlier one. A charge may take the balance
        below ``-overdraft``: it records what the upstream did. A refund gives
        back only what the upstream can still hold: tokens a full bucket
        could not have kept since the call started (at most ``rate`` per second
        of the time since, less the actual cost), or that reservations already
        waiting will need, are not returned, so a refund never lets a token be
        spent twice. On a Redis backend the call's start is read on this
        process's clock, so the refund can exceed the exact one by at most
        ``rate`` × the round trip of the reserve and the settle. For a grant
        acquired with ``op=``, the first settle also teaches the bucket's
        `CostModel` (``observe(op, units, actual_cost)``), unless ``observe``
        is False: pass that for a call that never ran (refused, failed to send),
        whose cost says nothing about the operation.

        Returns:
            The bucket's snapshot after settling.

        Raises:
            ConfigurationError: ``actual_cost`` is negative, NaN or infinite (nothing changes).
            BackendError: the store, or the cost model's shared store, failed.
        """
        result: Snapshot = _run(self._bucket, self._settle_flow(actual_cost, observe))
        return result


class AsyncGrant(_GrantBase):
    """The asyncio twin of `Grant`: ``await grant.settle(actual_cost)``."""

    __slots__ = ()

    async def settle(self, actual_cost: float, *, observe: bool = True) -> Snapshot:
        """See `Grant.settle`."""
        result: Snapshot = await _arun(self._bucket, self._settle_flow(actual_cost, observe))
        return result


_G = TypeVar("_G", Grant, AsyncGrant)


class _ReservationBase(Generic[_G]):
    """The data of a reservation; `Reservation` and `AsyncReservation` add ``wait`` and ``cancel``."""

    __slots__ = ("_bucket", "_claimed", "_lock", "_made", "_op", "_rid", "_state", "_units", "cost", "delay", "start")

    def __init__(self, bucket: _BucketBase, cost: float, delay: float, rid: _Rid, made: float) -> None:
        self._bucket = bucket
        self._rid = rid
        self._made = made
        # One owner of the state: every change happens under this lock, so a
        # reservation yields at most one grant and its refund is paid at most once.
        self._lock = threading.Lock()
        self._state = "waiting"
        self._claimed = False  # a wait() is in progress
        self._op: str | None = None
        self._units = 1.0
        self.cost = cost
        self.delay = delay
        self.start = made + delay

    @property
    def state(self) -> str:
        """``"waiting"``, ``"started"`` (a grant was handed out) or ``"cancelled"``."""
        return self._state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cost={self.cost:g}, delay={self.delay:.6g}, state={self._state!r})"

    def _claim(self) -> None:
        """Mark the reservation as being waited for; raise if it cannot yield a grant."""
        with self._lock:
            if self._state == "cancelled":
                raise TokenBucketError("this reservation was cancelled; reserve again")
            if self._state == "started":
                raise TokenBucketError("this reservation already started; a reservation is waited for once")
            if self._claimed:
                raise TokenBucketError("this reservation is already being waited for; it yields one grant")
            self._claimed = True

    def _begin(self) -> None:
        """Mark the claimed reservation as started; raise if it was cancelled meanwhile."""
        with self._lock:
            if self._state == "cancelled":
                raise TokenBucketError("this reservation was cancelled while it waited; no grant was made")
            self._state = "started"

    def _wait_flow(self) -> _Flow[_G]:
        self._claim()
        bucket = self._bucket
        remaining = self.start - bucket._clock.now()
        if remaining > 0:
            try:
                yield _Sleep(remaining)
            except BaseException:
                yield from self._cancel_flow()
                raise
        self._begin()
        grant = bucket._grant(self.cost, bucket._clock.now() - self._made)
        if bucket._events is not None:
            yield from bucket._granted_flow(grant.cost, grant.waited)
        return _priced(grant, self._op, self._units)  # type: ignore[return-value]

    def _cancel_flow(self) -> _Flow[float]:
        with self._lock:
            if self._state != "waiting":
                return 0.0
            self._state = "cancelled"
        bucket = self._bucket
        refunded: float = yield from bucket._cancel_flow(self._rid)
        if bucket._events is not None:
            bucket._emit(_events.Cancelled(bucket.name, bucket._clock.now(), self.cost, refunded))
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


class _Estimate:
    """The default ``cost``: the cost model's estimate for ``op``, or 1 without ``op``.

    A sentinel rather than None, so an explicit ``cost=None`` stays a type error.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "ESTIMATE"


ESTIMATE: Any = _Estimate()


def _no_time() -> None:
    """The ``now`` passed to a store that keeps its own clock."""
    return None


class _BucketBase(Listened):
    """Configuration and flows shared by the two front ends."""

    _backend: Any

    def _configure(
        self,
        name: str,
        rate: Rates,
        capacity: float | Sequence[float] | None,
        overdraft: float,
        min_start: float,
        initial: float | Sequence[float] | None,
        backend: Backend | AsyncBackend | None,
        clock: Clock | None,
        cost_model: CostModel | None,
        listeners: Iterable[Listener],
        lanes: Mapping[str, float] | None = None,
    ) -> None:
        self.name = check_name(name)
        if BAND in self.name:
            raise ConfigurationError(f"bucket name {name!r} must not contain {BAND!r}: it names a bucket's bandwidths")
        self._set_policies(build_policies(rate, capacity, overdraft, min_start, initial))
        self._lanes = self._check_lanes(lanes)
        if cost_model is not None and not isinstance(cost_model, CostModel):
            raise TypeError(f"cost_model must be a tokenbucket.CostModel, not {type(cost_model).__name__}")
        self._cost_model = cost_model
        if backend is None:
            backend = _DEFAULT_BACKEND
        elif not callable(getattr(backend, "reserve", None)):
            raise TypeError(f"backend must implement tokenbucket.backends.Backend, not {type(backend).__name__}")
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must have now(), sleep() and asleep(), not {type(clock).__name__}")
        self._backend = backend
        # A store whose operations are coroutines (redis.asyncio) is awaited; any other is called directly.
        self._awaits_store = inspect.iscoroutinefunction(backend.reserve)
        # One bandwidth on a store called directly: what the plain-ticket fast path needs (the number
        # of bandwidths never changes after this).
        self._direct = not self._awaits_store and self._bands is None
        self._clock: Clock = SystemClock() if clock is None else clock
        # A store with a shared clock (Redis TIME) keeps its own time unless the user chose a clock.
        pass_now = clock is not None or not getattr(backend, "server_clock", False)
        self._stamp: Callable[[], float | None] = self._clock.now if pass_now else _no_time
        self._init_listeners(listeners)
        self._in_debt = False
        # The fast path (see _grant_now): a MemoryBackend called directly with the bucket's clock
        # (one bandwidth), and the lock and slot it gave us, looked up again when they go stale.
        memory = self._direct and pass_now and isinstance(backend, MemoryBackend)
        self._memory: MemoryBackend | None = None
        if memory and type(backend).reserve is MemoryBackend.reserve:
            assert isinstance(backend, MemoryBackend)
            self._memory = backend
        self._fast: tuple[threading.Lock, _Slot] | None = None

    def _check_lanes(self, lanes: Mapping[str, float] | None) -> dict[str, float]:
        """The lanes, validated: each name with the tokens held back from it."""
        if lanes is None:
            return {}
        if not isinstance(lanes, Mapping):
            raise TypeError(f"lanes must map lane names to the tokens held back from them, not {type(lanes).__name__}")
        if lanes and self._bands is not None:
            raise ConfigurationError("lanes need a bucket of one bandwidth")
        checked: dict[str, float] = {}
        for lane, hold in lanes.items():
            if not isinstance(lane, str) or not lane:
                raise ConfigurationError(f"a lane's name must be a non-empty string, not {lane!r}")
            value = check_amount(f"lanes[{lane!r}]", hold)
            if value < 0:
                raise ConfigurationError(f"lanes[{lane!r}] must be zero or more tokens, got {hold!r}")
            if lane_max_cost(self.policy, value) < 0:
                raise ConfigurationError(
                    f"lane {lane!r} holds back {value:g} tokens: with capacity {self.policy.capacity:g} "
                    "no request of it could ever start"
                )
            checked[lane] = float(value)
        return checked

    @property
    def lanes(self) -> dict[str, float]:
        """Each lane's name with the tokens held back from it for more urgent lanes (empty: no lanes)."""
        return dict(self._lanes)

    def _hold(self, lane: str) -> float:
        hold = self._lanes.get(lane)
        if hold is None:
            known = ", ".join(repr(n) for n in self._lanes) or "none"
            raise ConfigurationError(f"bucket {self.name!r} has no lane {lane!r} (its lanes: {known})")
        return hold

    def _reserve_call(self, c: float, wait: float | None, lane: str | None) -> _Call:
        """The store call that reserves ``c``: in a lane, over the bandwidths, or plain."""
        if lane is not None:
            return _Call("reserve_lane", self.name, self.policy, c, self._hold(lane), wait, self._now())
        if self._bands is None:
            return _Call("reserve", self.name, self.policy, c, wait, self._now())
        return _Call("reserve_all", self._items(c), wait, self._now())

    def _set_policies(self, policies: tuple[Policy, ...]) -> None:
        self.policies = policies
        self.policy = policies[0]
        # The store keys of the bandwidths when there are several (the first is the name); else None.
        self._bands: tuple[str, ...] | None = None
        if len(policies) > 1:
            self._bands = band_keys(self.name, len(policies))

    @property
    def rate(self) -> Rate:
        """The refill rate (of the first bandwidth, when there are several: see `rates`)."""
        return self.policy.rate

    @property
    def rates(self) -> tuple[Rate, ...]:
        """The refill rate of each bandwidth: one for a plain bucket."""
        return tuple(p.rate for p in self.policies)

    @property
    def max_cost(self) -> float:
        """The largest cost that can ever start: the least ``capacity + overdraft`` of the bandwidths."""
        return min(p.max_cost for p in self.policies)

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds (in the first bandwidth, when there are several)."""
        return self.policy.capacity

    @property
    def overdraft(self) -> float:
        """How far below zero a started request may take the balance."""
        return self.policy.overdraft

    @property
    def cost_model(self) -> CostModel | None:
        """The `CostModel` that prices ``op=`` requests and learns from their settles, if any."""
        return self._cost_model

    @property
    def backend(self) -> Backend | AsyncBackend:
        """Where the state lives."""
        backend: Backend | AsyncBackend = self._backend
        return backend

    def __repr__(self) -> str:
        p = self.policy
        rates = "; ".join(str(q.rate) for q in self.policies)
        caps = "; ".join(f"{q.capacity:g}" for q in self.policies)
        return (
            f"{type(self).__name__}({self.name!r}, rate={rates}, capacity={caps}, "
            f"overdraft={p.overdraft:g}, backend={type(self._backend).__name__})"
        )

    def _items(self, cost: float) -> list[tuple[str, Policy, float]]:
        """The parts of a ``reserve_all`` charging ``cost`` to every bandwidth."""
        assert self._bands is not None
        return [(key, policy, cost) for key, policy in zip(self._bands, self.policies, strict=True)]

    def _cancel_flow(self, rid: _Rid) -> _Flow[float]:
        """Cancel a reservation's waiting parts; the tokens refunded (the least over the bandwidths)."""
        if rid is None:
            return 0.0
        if not isinstance(rid, tuple):
            refunded: float = yield _Call("cancel", self.name, self.policy, rid, self._now())
            return refunded
        assert self._bands is not None
        refunds = []
        for key, policy, part in zip(self._bands, self.policies, rid, strict=True):
            refunds.append(0.0 if part is None else (yield _Call("cancel", key, policy, part, self._now())))
        return min(refunds)

    def _combine(self, snaps: Sequence[Snapshot]) -> Snapshot:
        """One `Snapshot` of several bandwidths: the binding one's, with every one in ``bandwidths``."""
        return combine(snaps, self.policies)

    def _now(self) -> float | None:
        return self._stamp()

    def _emit(self, event: _events.Event) -> None:
        events = self._events
        if events is not None:
            events.emit(event)

    def _note_debt(self, snap: Snapshot) -> None:
        change = _events.debt_change(self._in_debt, snap.debt, self.name, self._clock.now())
        if change is not None:
            self._in_debt = not self._in_debt
            self._emit(change)

    def _granted_flow(self, cost: float, waited: float) -> _Flow[None]:
        """Tell listeners about a grant, then look at the balance for debt (listeners only)."""
        self._emit(_events.Granted(self.name, self._clock.now(), cost, waited))
        try:
            snap: Snapshot = yield from self._snapshot_flow()
        except Exception:  # the grant stands; a failed look at the balance only skips the debt event
            return
        self._note_debt(snap)

    def _grant_now(self, kind: type[_GB], cost: object) -> _GB | None:
        """The grant of a plain request (whole ``cost``, nobody listening) charged on the kept memory slot, or None.

        None means nothing was charged and the request takes the ordinary path:
        there is no kept slot, it went stale (the sweep dropped it, another object
        of the name or a ``reconfigure`` changed its policy), a reservation is
        waiting, or the request cannot start at once. The arithmetic is the
        backend's own (`_Slot.take`, `_model.try_take`), under the backend's lock,
        so this is `MemoryBackend.reserve` without the call and the dict lookup.
        """
        fast = self._fast
        if fast is None or self._events is not None:
            return None
        if cost is ESTIMATE:
            cost = 1  # what _price makes of it without op
        if type(cost) is not int or cost < 0 or cost > _FAST_COST:
            return None
        lock, slot = fast
        policy = self.policy
        stamp = self._stamp
        now: float = stamp()  # type: ignore[assignment]  # a float: _memory is set only when it is the clock
        lock.acquire()
        try:
            # (the cost as a float: the same values, and CPython's float-only fast paths in try_take)
            if slot.policy is not policy or not slot.take(now, cost + 0.0, policy):
                return None
        finally:
            lock.release()
        grant: _GB = _new(kind)  # what _GrantBase.__init__ does, without the cost of calling it
        grant._bucket = self
        grant._charged = cost
        grant._started = now
        grant.cost = cost
        grant.waited = 0.0
        return grant

    def _keep_slot(self) -> None:
        """After the ordinary path on a memory backend: keep its slot for `_grant_now` if it went stale."""
        memory = self._memory
        if memory is None:
            return
        fast = self._fast
        if fast is None or fast[1].policy is not self.policy:
            self._fast = memory._fast_slot(self.name, self.policy)

    def _plain_cost(self, cost: object, timeout: object, op: object, units: object) -> int | None:
        """The cost of a plain request, or None when it needs the full flow.

        A plain request has a whole-number cost (or the default, 1), no timeout,
        ``op`` or ``units``, on a bucket of one bandwidth nobody listens to: the
        flow would make exactly one ``reserve`` call and decide nothing else, so
        the front ends skip its machinery (the common, hot case).
        """
        if cost is ESTIMATE:
            cost = 1  # what _price makes of it when there is no op (checked below)
        if (
            type(cost) is int
            and 0 <= cost <= MAX_AMOUNT
            and timeout is None
            and op is None
            and units == 1
            and self._events is None
            and self._bands is None
        ):
            return cost
        return None

    def _plain_ticket(
        self, cost: object, timeout: object, op: object, units: object
    ) -> tuple[int, float, int | None, float | None] | None:
        """Reserve a plain request (`_plain_cost`) on a store that answers without awaiting.

        Returns ``(cost, delay, rid, now)``, ``now`` being the reading of the
        bucket's clock the call was made with (None for a store that keeps its
        own clock); None when the request needs the full flow or the store awaits.

        Raises:
            AcquireTimeout: the store refused (a Redis backend with ``on_unavailable="deny"``).
        """
        plain = self._plain_cost(cost, timeout, op, units) if self._direct else None
        if plain is None:
            return None
        now = self._stamp()
        ticket: Ticket = self._backend.reserve(self.name, self.policy, plain, None, now)
        self._keep_slot()
        admitted, seconds, rid = ticket
        if not admitted:
            raise AcquireTimeout(plain, math.inf, seconds)
        return plain, seconds, rid, now

    def _grant(self, cost: float, waited: float) -> Grant | AsyncGrant:
        raise NotImplementedError

    def _reservation(self, cost: float, delay: float, rid: _Rid, made: float) -> Any:
        raise NotImplementedError

    def _price(self, cost: float | None, op: str | None, units: float) -> float:
        """The cost of a request: ``cost`` if given, else the cost model's estimate for ``op``, else 1."""
        if op is None:
            if units != 1:
                raise ConfigurationError("units= needs op=: name the operation the cost model should price")
            return 1 if cost is ESTIMATE else check_cost(cost)
        model = self._cost_model
        if model is None:
            raise ConfigurationError(f"op={op!r} needs a cost model: TokenBucket(..., cost_model=CostModel(...))")
        estimate = model.estimate(op, units)  # validates op and units
        return estimate if cost is ESTIMATE or cost is None else check_cost(cost)

    def _reserve_flow(
        self,
        cost: float | None,
        timeout: float | None,
        op: str | None = None,
        units: float = 1,
        lane: str | None = None,
    ) -> _Flow[Any]:
        c = self._price(cost, op, units)
        wait = check_timeout(timeout)
        asked = self._clock.now() if wait else 0.0
        rid: _Rid
        admitted, seconds, rid = yield self._reserve_call(c, wait, lane)
        made = self._clock.now()
        if admitted and wait and seconds > 0 and rid is not None and (made - asked) + seconds > wait:
            # The round trip took so long that waiting the delay would overrun the timeout: the
            # timeout bounds the whole call, so give the reservation back and say so now.
            yield from self._cancel_flow(rid)
            admitted, seconds = False, seconds + (made - asked)
        if not admitted:
            if self._events is not None:
                self._emit(_events.TimedOut(self.name, made, c, math.inf if wait is None else wait, seconds))
            raise AcquireTimeout(c, math.inf if wait is None else wait, seconds)
        if self._events is not None and seconds > 0:
            self._emit(_events.Waiting(self.name, made, c, seconds))
        reservation = self._reservation(c, seconds, rid, made)
        if op is not None:
            reservation._op = op
            reservation._units = float(units)
        return reservation

    def _try_flow(
        self, cost: float | None, op: str | None = None, units: float = 1, lane: str | None = None
    ) -> _Flow[float | None]:
        c = self._price(cost, op, units)
        ticket: tuple[bool, float, Any] = yield self._reserve_call(c, 0.0, lane)
        if self._events is not None:
            if ticket[0]:
                yield from self._granted_flow(c, 0.0)
            else:
                self._emit(_events.TimedOut(self.name, self._clock.now(), c, 0.0, ticket[1]))
        return c if ticket[0] else None

    def _acquire_flow(
        self,
        cost: float | None,
        timeout: float | None,
        op: str | None = None,
        units: float = 1,
        lane: str | None = None,
    ) -> _Flow[Any]:
        reservation: _ReservationBase[Any] = yield from self._reserve_flow(cost, timeout, op, units, lane)
        grant = yield from reservation._wait_flow()
        return grant

    def _sync_flow(
        self, remaining: float | Sequence[float | None], rate: Rates | None, status: int | None = None
    ) -> _Flow[Snapshot]:
        values = self._per_band("remaining", remaining)
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise TypeError(f"status must be an int (an HTTP status) or None, not {type(status).__name__}")
        if rate is not None:
            rates = self._per_band("rate", rate)
            if any(r is not None and r.per_second != p.refill for r, p in zip(rates, self.policies, strict=True)):
                new = [p.rate if r is None else r for r, p in zip(rates, self.policies, strict=True)]
                yield from self._reconfigure_flow(new, None, None, None, None)
        snaps: list[Snapshot] = []
        for key, policy, value in zip(self._bands or (self.name,), self.policies, values, strict=True):
            if value is None:  # not reported: as it is
                snaps.append((yield _Call("snapshot", key, policy, self._now())))
                continue
            if self._events is None:
                snaps.append((yield _Call("sync", key, policy, value, self._now())))
                continue
            before: Snapshot = yield _Call("snapshot", key, policy, self._now())
            snaps.append((yield _Call("sync", key, policy, value, self._now())))
            predicted = before.tokens + before.promised
            self._emit(_events.Synced(self.name, self._clock.now(), value, predicted, value - predicted, status))
        snap = snaps[0] if self._bands is None else self._combine(snaps)
        if self._events is not None:
            self._note_debt(snap)
        return snap

    def _per_band(self, what: str, value: Any) -> list[Any]:
        """``remaining`` (floats) or ``rate`` (`Rate`) of a sync, one per bandwidth (None: not reported), validated."""

        def check(v: Any) -> Any:
            return float(check_amount(what, v)) if what == "remaining" else Rate.coerce(v)

        if self._bands is None:
            return [check(value)]
        n = len(self._bands)
        if isinstance(value, (str, Rate)) and what == "rate":
            value = parse_rates(value)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n:
            raise ConfigurationError(
                f"bucket {self.name!r} has {n} bandwidths: give {what} as a sequence of {n} "
                f"(None for one the upstream did not report), got {value!r}"
            )
        return [None if v is None else check(v) for v in value]

    def _reconfigure_flow(
        self,
        rate: Rates | None,
        capacity: float | Sequence[float] | None,
        overdraft: float | None,
        min_start: float | None,
        initial: float | Sequence[float] | None,
    ) -> _Flow[Snapshot]:
        old = self.policies
        n = len(old)
        rates = [p.rate for p in old] if rate is None else list(parse_rates(rate))
        if len(rates) != n:
            raise ConfigurationError(
                f"bucket {self.name!r} has {n} bandwidth(s) and the new rate {len(rates)}: "
                "reconfigure keeps the number of bandwidths (use another name for another shape)"
            )
        caps = (
            [p.capacity for p in old] if capacity is None else per_rate("capacity", capacity, n, scalar_for_all=False)
        )
        if initial is None:  # a default initial (the capacity) follows the capacity; another is kept
            inits = [c if p.initial == p.capacity else min(p.initial, c) for p, c in zip(old, caps, strict=True)]
        else:
            inits = per_rate("initial", initial, n, scalar_for_all=True)
        policies = tuple(
            Policy.build(
                r,
                c,
                p.overdraft if overdraft is None else overdraft,
                p.min_start if min_start is None else min_start,
                i,
            )
            for r, c, i, p in zip(rates, caps, inits, old, strict=True)
        )
        if not callable(getattr(self._backend, "reconfigure", None)):
            raise TypeError(f"{type(self._backend).__name__} cannot change a bucket's policy: it has no reconfigure()")
        snaps: list[Snapshot] = []
        for key, policy in zip(self._bands or (self.name,), policies, strict=True):
            snaps.append((yield _Call("reconfigure", key, policy, self._now())))
        self._set_policies(policies)
        return snaps[0] if self._bands is None else self._combine(snaps)

    def _follow_rate(self, mismatch: PolicyMismatch) -> bool:
        """Adopt the stored refill rate if it is all that differs from this object's policy; say if it was.

        For integrations that keep a bucket's rate in step with the upstream's
        (``sync_rate=True``): another process has synced a new upstream rate.
        A bucket with several bandwidths follows only its first.
        """
        stored, mine = mismatch.stored, self.policy.fingerprint()
        if mismatch.name != self.name or len(stored) != 5 or stored[:1] + stored[2:] != mine[:1] + mine[2:]:
            return False
        p = self.policy
        followed = Policy.build(Rate(stored[1], 1.0), p.capacity, p.overdraft, p.min_start, p.initial)
        self._set_policies((followed, *self.policies[1:]))
        return True

    def _snapshot_flow(self) -> _Flow[Snapshot]:
        if self._bands is None:
            snap: Snapshot = yield _Call("snapshot", self.name, self.policy, self._now())
            return snap
        snaps: list[Snapshot] = []
        for key, policy in zip(self._bands, self.policies, strict=True):
            snaps.append((yield _Call("snapshot", key, policy, self._now())))
        return self._combine(snaps)


def _run(bucket: _BucketBase, flow: _Flow[_T]) -> _T:
    """Drive a flow with blocking calls."""
    backend = bucket._backend
    clock = bucket._clock

    def perform(op: _Op) -> Any:
        if type(op) is _Sleep:
            if op.seconds > 0 and isinstance(clock, SystemClock) and asyncio._get_running_loop() is not None:
                warnings.warn(
                    f"TokenBucket {bucket.name!r} is about to block this thread for {op.seconds:.3g} s inside a "
                    "running event loop, stalling every task on it: use AsyncTokenBucket in async code",
                    RuntimeWarning,
                    stacklevel=5,
                )
            return clock.sleep(op.seconds)
        return getattr(backend, op.method)(*op.args)  # type: ignore[union-attr]

    return drive(flow, perform)


async def _arun(bucket: _BucketBase, flow: _Flow[_T]) -> _T:
    """Drive a flow with awaits; a store that never blocks (memory) is called directly."""
    backend = bucket._backend
    clock = bucket._clock
    awaits_store = bucket._awaits_store

    async def perform(op: _Op) -> Any:
        if type(op) is _Sleep:
            return await clock.asleep(op.seconds)
        result = getattr(backend, op.method)(*op.args)  # type: ignore[union-attr]
        return (await result) if awaits_store else result

    return await adrive(flow, perform)


class TokenBucket(_BucketBase):
    """A token bucket shared by every thread (and, on Redis, every process) that uses its name.

    Requests are served first-come first-served: acquiring charges the cost at
    once and waits the computed delay, so a large request is never starved by
    a stream of small ones, and the waiting is one sleep, not a polling loop.

    Args:
        name: The bucket's name; buckets with one name on one backend share state.
        rate: A `Rate` or a string such as ``"5/minute"``; for several limits
            at once (bandwidths), a string such as ``"10/second; 600/hour"`` or
            a sequence of rates. A request starts when every bandwidth allows
            it, and one atomic step charges them all.
        capacity: Most tokens held; default the rate's amount. With several
            rates, a sequence of one capacity per rate (default each amount).
        overdraft: How far below zero a started request may take the balance:
            ``0`` (strict, the default), a number, or ``math.inf`` (Keepa's rule:
            start while the balance is at least ``min_start``).
        min_start: With an overdraft, the balance needed to start (default 1).
        initial: The balance of a bucket created or found missing; default
            ``capacity``. With several rates, one number for all or one per rate.
        backend: Where the state lives: a `MemoryBackend` (default: one shared by
            this process) or a `RedisBackend`.
        clock: The clock to read and sleep on; default the monotonic clock.
            `tokenbucket.testing.ManualClock` gives virtual time.
        cost_model: A `CostModel` that prices requests named by operation
            (``acquire(op="product", units=10)``) and learns from their settles.
        listeners: Callables told about this bucket's events (`tokenbucket.Listener`,
            for example `tokenbucket.LoggingListener`); none by default, and then
            events cost nothing.
        lanes: Priority lanes: each lane's name with the tokens held back from
            it for more urgent lanes (``{"urgent": 0, "bulk": 60}``). A request
            in a lane (``acquire(cost, lane="bulk")``) starts only when the
            balance less its lane's hold-back allows it, so a bulk lane never
            takes the tokens an urgent one needs; and it may start before the
            waiting reservations of less urgent lanes while each of them keeps
            its start time (see the concepts page "Priority lanes"). A request
            without a lane waits behind every earlier reservation. One bandwidth only.

    Attributes:
        name: The bucket's name.
        policy: The validated rules (`tokenbucket.backends.Policy`): rate, capacity,
            overdraft, min_start, initial (of the first bandwidth, when there are several).
        policies: The policy of each bandwidth, in order: ``(policy,)`` for one.

    Raises:
        ConfigurationError: a policy value can never work.
        TypeError: an argument has the wrong type.
    """

    _backend: Backend

    def __init__(
        self,
        name: str,
        rate: Rates,
        *,
        capacity: float | Sequence[float] | None = None,
        overdraft: float = 0.0,
        min_start: float = 1.0,
        initial: float | Sequence[float] | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
        cost_model: CostModel | None = None,
        listeners: Iterable[Listener] = (),
        lanes: Mapping[str, float] | None = None,
    ) -> None:
        self._configure(
            name, rate, capacity, overdraft, min_start, initial, backend, clock, cost_model, listeners, lanes
        )
        if self._awaits_store:
            raise TypeError(
                f"TokenBucket needs a blocking backend, and {type(self._backend).__name__} is for asyncio: "
                "use AsyncTokenBucket with it, or TokenBucket with RedisBackend.from_url(...)"
            )

    def _grant(self, cost: float, waited: float) -> Grant:
        return Grant(self, cost, waited)

    def _reservation(self, cost: float, delay: float, rid: _Rid, made: float) -> Reservation:
        return Reservation(self, cost, delay, rid, made)

    def acquire(
        self,
        cost: float | None = ESTIMATE,
        *,
        timeout: float | None = None,
        op: str | None = None,
        units: float = 1,
        lane: str | None = None,
    ) -> Grant:
        """Charge ``cost`` tokens, sleep until the request may start, and return the grant.

        The timeout is decided up front: if the wait would exceed it, nothing is
        charged and `AcquireTimeout` is raised at once. An interrupted wait
        (``KeyboardInterrupt``, any exception) refunds the cost.

        Args:
            cost: Tokens the call will spend (zero or more, may be fractional).
                Default (or None with ``op``): the cost model's estimate for
                ``op`` on ``units``; 1 without ``op``.
            timeout: Longest acceptable wait in seconds, the round trip to the
                store included (a stalled Redis: `AcquireTimeout` in time, see
                `tokenbucket.RedisBackend.reserve`); None waits as long as needed.
            op: The operation, priced by the bucket's `CostModel`; the grant
                remembers it, and settling teaches the model.
            units: How many units (items) the call covers, with ``op``.
            lane: The lane to wait in (see ``lanes``); None for none: behind every
                earlier reservation, as in a bucket without lanes.

        Raises:
            CostExceedsCapacity: the cost can never start (raised at once; nothing charged).
            AcquireTimeout: the wait would exceed ``timeout`` (nothing charged).
            ConfigurationError: ``cost``, ``units`` or ``timeout`` is negative, NaN or
                not a number; ``op`` without a cost model, or unknown to it.
            BackendError: the store failed.
        """
        if lane is None and timeout is None and op is None and units == 1:
            grant = self._grant_now(Grant, cost)
            if grant is not None:
                return grant
        ticket = None if lane is not None else self._plain_ticket(cost, timeout, op, units)
        if ticket is None:
            result: Grant = _run(self, self._acquire_flow(cost, timeout, op, units, lane))
            return result
        plain, delay, rid, now = ticket
        if delay == 0.0:
            return Grant(self, plain, 0.0, now)
        return Reservation(self, plain, delay, rid, self._clock.now()).wait()

    def try_acquire(
        self, cost: float | None = ESTIMATE, *, op: str | None = None, units: float = 1, lane: str | None = None
    ) -> Grant | None:
        """Take ``cost`` tokens if the request may start now; never blocks.

        ``cost``, ``op``, ``units`` and ``lane`` are as in `acquire`.

        Returns:
            The grant, or None (charging nothing) if the request would have to wait.

        Raises:
            CostExceedsCapacity: the cost can never start.
            ConfigurationError: ``cost`` is negative, NaN or infinite; ``op`` cannot be priced.
        """
        if lane is None and op is None and units == 1:
            grant = self._grant_now(Grant, cost)
            if grant is not None:
                return grant
        if self._events is not None or self._bands is not None or lane is not None:  # else the direct path below
            charged: float | None = _run(self, self._try_flow(cost, op, units, lane))
            return None if charged is None else _priced(Grant(self, charged, 0.0), op, float(units))
        if type(cost) is not int or not 0 <= cost <= MAX_AMOUNT or op is not None:
            cost = self._price(cost, op, units)
        now = self._stamp()  # the bucket's clock, or None for a store that keeps its own
        admitted = self._backend.reserve(self.name, self.policy, cost, 0.0, now)[0]
        self._keep_slot()
        if not admitted:
            return None
        grant = Grant(self, cost, 0.0, now)
        return grant if op is None else _priced(grant, op, float(units))

    def reserve(
        self,
        cost: float | None = ESTIMATE,
        *,
        timeout: float | None = None,
        op: str | None = None,
        units: float = 1,
        lane: str | None = None,
    ) -> Reservation:
        """Charge ``cost`` now and return a `Reservation` saying when it may start.

        Use it to learn the wait before committing to it: ``res.delay``, then
        ``res.wait()`` or ``res.cancel()``. ``cost``, ``op``, ``units`` and ``lane`` are as in `acquire`.

        Raises:
            AcquireTimeout: the delay would exceed ``timeout`` (nothing charged).
            CostExceedsCapacity, ConfigurationError, BackendError: as `acquire`.
        """
        result: Reservation = _run(self, self._reserve_flow(cost, timeout, op, units, lane))
        return result

    def sync(
        self, remaining: float | Sequence[float | None], *, rate: Rates | None = None, status: int | None = None
    ) -> Snapshot:
        """Adopt the balance the upstream reports.

        The bucket's balance becomes ``remaining`` minus the tokens promised to
        reservations that have not started; if the upstream reports exactly what
        the bucket predicts, nothing changes.

        Args:
            remaining: The upstream's balance (may be negative). For a bucket
                with several bandwidths, a sequence with one balance per
                bandwidth, None for one the upstream did not report (left as it is).
            rate: The refill rate the upstream reports, if any. When it differs
                from this bucket's, the bucket adopts it first, in the store too
                (as `reconfigure` with ``rate=``: the balance carries over). With
                several bandwidths, a sequence of one rate (or None) per bandwidth.
            status: The HTTP status of the response that reported the balance, if any.
                Only listeners see it (`tokenbucket.Synced.status`; metrics count
                429-driven syncs); the balance adopted does not depend on it.

        Returns:
            The snapshot after syncing.
        """
        result: Snapshot = _run(self, self._sync_flow(remaining, rate, status))
        return result

    def reconfigure(
        self,
        *,
        rate: Rates | None = None,
        capacity: float | Sequence[float] | None = None,
        overdraft: float | None = None,
        min_start: float | None = None,
        initial: float | Sequence[float] | None = None,
    ) -> Snapshot:
        """Change this bucket's policy, in the store and in this object, carrying the balance over.

        Buckets of one name share one stored policy, and an object built with
        another one raises `tokenbucket.PolicyMismatch` on its first operation.
        This is the way to change it on purpose (a new plan upstream, a rollout
        of a new rate): atomically, the balance is brought up to now under the
        old policy and capped at the new capacity; waiting reservations keep
        their start times. Called with no arguments, it makes this object's own
        policy the stored one. Other objects of the name still holding the old
        policy then raise `PolicyMismatch` until they are rebuilt or reconfigured.

        Args:
            rate: The new rate; default this object's.
            capacity: The new capacity; default this object's (not the new rate's amount).
            overdraft: The new overdraft; default this object's.
            min_start: The new min_start; default this object's.
            initial: The new initial balance; default this object's, or the new
                capacity when this object's initial is its capacity.

        Returns:
            The snapshot under the new policy.

        Raises:
            ConfigurationError: the new policy can never work (nothing changes).
            TypeError: the backend has no ``reconfigure``.
            BackendError: the store failed.
        """
        result: Snapshot = _run(self, self._reconfigure_flow(rate, capacity, overdraft, min_start, initial))
        return result

    def snapshot(self) -> Snapshot:
        """The bucket's balance, debt and timings now. Changes nothing."""
        result: Snapshot = _run(self, self._snapshot_flow())
        return result


class AsyncTokenBucket(_BucketBase):
    """The asyncio twin of `TokenBucket`: the same arguments and methods, awaitable.

    It accepts a sync backend that never blocks (`MemoryBackend`) or an async
    one (`AsyncRedisBackend`); a `RedisBackend` would block the event loop on
    every call and is refused with a `TypeError`. Cancelling a waiting task
    refunds its reservation.
    """

    _backend: Backend | AsyncBackend

    def __init__(
        self,
        name: str,
        rate: Rates,
        *,
        capacity: float | Sequence[float] | None = None,
        overdraft: float = 0.0,
        min_start: float = 1.0,
        initial: float | Sequence[float] | None = None,
        backend: Backend | AsyncBackend | None = None,
        clock: Clock | None = None,
        cost_model: CostModel | None = None,
        listeners: Iterable[Listener] = (),
        lanes: Mapping[str, float] | None = None,
    ) -> None:
        self._configure(
            name, rate, capacity, overdraft, min_start, initial, backend, clock, cost_model, listeners, lanes
        )
        if not self._awaits_store and getattr(self._backend, "blocks_on_io", False):
            raise TypeError(
                f"AsyncTokenBucket would block the event loop on {type(self._backend).__name__}'s network calls: "
                "use AsyncRedisBackend.from_url(...) with it, or TokenBucket with this backend"
            )

    def _grant(self, cost: float, waited: float) -> AsyncGrant:
        return AsyncGrant(self, cost, waited)

    def _reservation(self, cost: float, delay: float, rid: _Rid, made: float) -> AsyncReservation:
        return AsyncReservation(self, cost, delay, rid, made)

    async def acquire(
        self,
        cost: float | None = ESTIMATE,
        *,
        timeout: float | None = None,
        op: str | None = None,
        units: float = 1,
        lane: str | None = None,
    ) -> AsyncGrant:
        """See `TokenBucket.acquire`; task cancellation refunds the cost."""
        if lane is None and timeout is None and op is None and units == 1:
            grant = self._grant_now(AsyncGrant, cost)
            if grant is not None:
                return grant
        if lane is not None:
            ticket = None
        elif self._awaits_store:  # a plain request on Redis: the flow's one call, awaited (see _plain_ticket)
            plain = self._plain_cost(cost, timeout, op, units)
            ticket = None
            if plain is not None:
                now = self._stamp()
                admitted, seconds, rid = await self._backend.reserve(self.name, self.policy, plain, None, now)  # type: ignore[misc]
                if not admitted:
                    raise AcquireTimeout(plain, math.inf, seconds)
                ticket = plain, seconds, rid, now
        else:
            ticket = self._plain_ticket(cost, timeout, op, units)
        if ticket is None:
            result: AsyncGrant = await _arun(self, self._acquire_flow(cost, timeout, op, units, lane))
            return result
        plain, delay, rid, now = ticket
        if delay == 0.0:
            return AsyncGrant(self, plain, 0.0, now)
        return await AsyncReservation(self, plain, delay, rid, self._clock.now()).wait()

    async def try_acquire(
        self, cost: float | None = ESTIMATE, *, op: str | None = None, units: float = 1, lane: str | None = None
    ) -> AsyncGrant | None:
        """See `TokenBucket.try_acquire`."""
        if lane is None and op is None and units == 1:
            grant = self._grant_now(AsyncGrant, cost)
            if grant is not None:
                return grant
        charged: float | None = await _arun(self, self._try_flow(cost, op, units, lane))
        self._keep_slot()
        if charged is None:
            return None
        return _priced(AsyncGrant(self, charged, 0.0), op, float(units))

    async def reserve(
        self,
        cost: float | None = ESTIMATE,
        *,
        timeout: float | None = None,
        op: str | None = None,
        units: float = 1,
        lane: str | None = None,
    ) -> AsyncReservation:
        """See `TokenBucket.reserve`."""
        result: AsyncReservation = await _arun(self, self._reserve_flow(cost, timeout, op, units, lane))
        return result

    async def sync(
        self, remaining: float | Sequence[float | None], *, rate: Rates | None = None, status: int | None = None
    ) -> Snapshot:
        """See `TokenBucket.sync`."""
        result: Snapshot = await _arun(self, self._sync_flow(remaining, rate, status))
        return result

    async def reconfigure(
        self,
        *,
        rate: Rates | None = None,
        capacity: float | Sequence[float] | None = None,
        overdraft: float | None = None,
        min_start: float | None = None,
        initial: float | Sequence[float] | None = None,
    ) -> Snapshot:
        """See `TokenBucket.reconfigure`."""
        result: Snapshot = await _arun(self, self._reconfigure_flow(rate, capacity, overdraft, min_start, initial))
        return result

    async def snapshot(self) -> Snapshot:
        """See `TokenBucket.snapshot`."""
        result: Snapshot = await _arun(self, self._snapshot_flow())
        return result
