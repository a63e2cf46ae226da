"""Events: what a bucket or a lease did, told to the listeners that asked.

A listener is any callable taking one event (`Listener`). Give listeners to a
bucket with ``TokenBucket(..., listeners=[...])`` (or `TokenBucket.add_listener`);
a lease takes them the same way. Events are frozen, slotted dataclasses, so a
listener may keep them.

Bucket events (every one carries ``bucket``, the bucket's name, and ``time``,
the reading of the bucket's clock):

    Waiting       a request was charged and will start after ``delay`` seconds
    Granted       a request started (``waited`` seconds after it asked)
    TimedOut      a request was refused: it would wait longer than ``timeout``
                  (``timeout == 0`` for a ``try_acquire`` that found too few tokens)
    Cancelled     a waiting reservation was cancelled; ``refunded`` tokens came back
    Settled       a call's real cost was recorded: ``difference = actual - estimate``
    Synced        the upstream's balance was adopted: ``drift = remaining - predicted``
    DebtEntered   the upstream's balance went below zero (``debt`` tokens)
    DebtCleared   it is back at zero or above

Lease events are one class, `LeaseEvent`, whose ``kind`` is ``"acquired"``,
``"renewed"``, ``"released"``, ``"suspended"``, ``"lost"`` or ``"broken"``.

Guarantees:

* **Nothing is spent when nobody listens**: a bucket without listeners builds
  no event and makes no extra store call.
* Listeners run synchronously in the thread (or event loop) that caused the
  event, in the order they were added; keep them quick and non-blocking.
* A listener that raises does not disturb the bucket or the other listeners:
  the error is logged on the ``tokenbucket`` logger and dropped.
* The price of listening: one extra store call (a snapshot) after each grant,
  to see the balance, and one before each ``sync``, to compute the drift.
* ``DebtEntered``/``DebtCleared`` are noticed by the bucket object that
  listens, at its own operations; debt that clears by refill alone is
  reported at that object's next operation. Each bucket object keeps its own
  view, so on a shared store every process reports its own transitions, and
  threads racing on one object may, rarely, report one transition twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "BucketEvent",
    "Cancelled",
    "DebtCleared",
    "DebtEntered",
    "Emitter",
    "Event",
    "Granted",
    "LeaseEvent",
    "LeaseEventKind",
    "Listener",
    "LoggingListener",
    "Settled",
    "Synced",
    "TimedOut",
    "Waiting",
]

_log = logging.getLogger("tokenbucket")


@dataclass(frozen=True, slots=True)
class Event:
    """The base of every event: `BucketEvent` subclasses and `LeaseEvent`."""


@dataclass(frozen=True, slots=True)
class BucketEvent(Event):
    """The fields every bucket event has.

    Attributes:
        bucket: The bucket's name.
        time: When it happened, on the bucket's clock (virtual time under a
            `tokenbucket.testing.ManualClock`).
    """

    bucket: str
    time: float


@dataclass(frozen=True, slots=True)
class Waiting(BucketEvent):
    """A request was admitted and charged, and will start after ``delay`` seconds.

    Emitted by ``acquire`` and ``reserve`` only when the delay is positive.
    """

    cost: float
    delay: float


@dataclass(frozen=True, slots=True)
class Granted(BucketEvent):
    """A request started: the caller holds a grant of ``cost`` tokens.

    ``waited`` is the time from asking to starting (0 for an immediate start).
    """

    cost: float
    waited: float


@dataclass(frozen=True, slots=True)
class TimedOut(BucketEvent):
    """A request was refused because it would have waited longer than ``timeout``.

    Nothing was charged. ``timeout`` is 0 for a ``try_acquire`` that returned
    None; ``retry_after`` is when the request could have started.
    """

    cost: float
    timeout: float
    retry_after: float


@dataclass(frozen=True, slots=True)
class Cancelled(BucketEvent):
    """A reservation was cancelled before it started; ``refunded`` tokens came back."""

    cost: float
    refunded: float


@dataclass(frozen=True, slots=True)
class Settled(BucketEvent):
    """A call's real cost was recorded.

    Attributes:
        estimate: What had been charged for the call before this settle.
        actual: What the call really cost.
        difference: ``actual - estimate``: charged when positive, refunded when negative.
        tokens: The balance a new request sees after settling.
    """

    estimate: float
    actual: float
    difference: float
    tokens: float


@dataclass(frozen=True, slots=True)
class Synced(BucketEvent):
    """The upstream's reported balance was adopted.

    Attributes:
        remaining: The balance the upstream reported.
        predicted: The upstream balance the bucket expected just before
            (``tokens + promised``); read in a separate step, so under heavy
            concurrent use on a shared store it is approximate.
        drift: ``remaining - predicted``: negative when the upstream had charged
            more than the bucket knew.
        status: The HTTP status of the response that reported it, if the
            caller passed one (429 means the upstream refused a call).
    """

    remaining: float
    predicted: float
    drift: float
    status: int | None


@dataclass(frozen=True, slots=True)
class DebtEntered(BucketEvent):
    """The upstream's balance went below zero: ``debt`` tokens are owed."""

    debt: float


@dataclass(frozen=True, slots=True)
class DebtCleared(BucketEvent):
    """The upstream's balance is back at zero or above."""


LeaseEventKind = Literal["acquired", "renewed", "released", "suspended", "lost", "broken"]
"""What happened to a lease:

* ``acquired``: this holder took the lease (``fence`` is its fencing token);
* ``renewed``: the heartbeat extended it;
* ``released``: the holder gave it up;
* ``suspended``: renewing is failing but the local deadline has not passed;
* ``lost``: the deadline passed or the key is gone: the holder must stop;
* ``broken``: an operator broke the lease (emitted where it was broken).
"""


@dataclass(frozen=True, slots=True)
class LeaseEvent(Event):
    """Something happened to a lease.

    Attributes:
        kind: See `LeaseEventKind`.
        lease: The lease's name.
        time: When, on the lease's clock.
        fence: The fencing token of the holding this is about (0 if unknown).
        holder: Who holds (or held) it, for example ``"host:pid:task"``.
        reason: Free text for people, for example why renewal failed.
    """

    kind: LeaseEventKind
    lease: str
    time: float
    fence: int = 0
    holder: str = ""
    reason: str = ""


@runtime_checkable
class Listener(Protocol):
    """Anything that can be called with one event; plain functions qualify.

    It runs synchronously where the event happened, so it must be quick and
    must not block (an asyncio program calls it on the event loop). What it
    raises is logged and dropped.
    """

    def __call__(self, event: Event, /) -> None:
        """Receive one event."""
        ...


class Emitter:
    """Delivers events to listeners; what a bucket or a lease holds.

    Test it for truth before building an event, so that nothing is spent when
    nobody listens:

        if self._emitter:
            self._emitter.emit(LeaseEvent("renewed", name, clock.now(), fence, holder))

    Adding and removing listeners is safe from any thread (the list is
    replaced, never mutated while it is being walked).

    Args:
        listeners: The first listeners, called in this order.

    Raises:
        TypeError: a listener is not callable.
    """

    __slots__ = ("_listeners",)

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        found = tuple(listeners)
        for listener in found:
            _check_listener(listener)
        self._listeners = found

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The listeners, in call order."""
        return self._listeners

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def __len__(self) -> int:
        return len(self._listeners)

    def add(self, listener: Listener) -> None:
        """Call ``listener`` for every later event (after the ones already added)."""
        _check_listener(listener)
        self._listeners = (*self._listeners, listener)

    def remove(self, listener: Listener) -> None:
        """Stop calling ``listener``.

        Raises:
            ValueError: it was not added.
        """
        items = list(self._listeners)
        items.remove(listener)
        self._listeners = tuple(items)

    def emit(self, event: Event) -> None:
        """Call every listener with ``event``; a listener's exception is logged, not raised."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("tokenbucket: listener %r failed on %r", listener, event)


class Listened:
    """The listener management shared by buckets and lease locks.

    ``_events`` is None while nobody listens, so the objects spend nothing on
    events until a listener is added.
    """

    _events: Emitter | None

    def _init_listeners(self, listeners: Iterable[Listener]) -> None:
        emitter = Emitter(listeners)
        self._events = emitter if emitter else None

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The listeners told about this object's events, in call order."""
        return () if self._events is None else self._events.listeners

    def add_listener(self, listener: Listener) -> None:
        """Tell ``listener`` about every later event of this object (see `tokenbucket.Listener`).

        Raises:
            TypeError: ``listener`` is not callable.
        """
        emitter = Emitter() if self._events is None else self._events
        emitter.add(listener)
        self._events = emitter

    def remove_listener(self, listener: Listener) -> None:
        """Stop telling ``listener``; with no listener left, events cost nothing again.

        Raises:
            ValueError: ``listener`` was not added.
        """
        if self._events is None:
            raise ValueError(f"{listener!r} is not a listener of this object")
        self._events.remove(listener)
        if not self._events:
            self._events = None


def _check_listener(listener: object) -> None:
    if not callable(listener):
        raise TypeError(f"a listener must be callable with one event, not {type(listener).__name__}")


_LEASE_LEVELS: dict[str, int] = {
    "acquired": logging.INFO,
    "renewed": logging.DEBUG,
    "released": logging.INFO,
    "suspended": logging.WARNING,
    "lost": logging.ERROR,
    "broken": logging.WARNING,
}


def default_level(event: Event) -> int:
    """The logging level `LoggingListener` uses for ``event`` by default.

    Routine traffic is DEBUG (grants, waits, exact settles, syncs that agree
    within a token, a ``try_acquire`` that found too few tokens); things worth
    seeing in a normal log are INFO (a timeout, a settle or sync that changed
    the balance, entering or clearing debt, acquiring or releasing a lease);
    the upstream refusing a call (sync with status 429) and a lease whose
    renewal fails or that is broken are WARNING; a lease lost is ERROR.
    """
    if isinstance(event, LeaseEvent):
        return _LEASE_LEVELS.get(event.kind, logging.INFO)
    if isinstance(event, TimedOut):
        return logging.DEBUG if event.timeout == 0 else logging.INFO
    if isinstance(event, Settled):
        return logging.DEBUG if event.difference == 0 else logging.INFO
    if isinstance(event, Synced):
        if event.status == 429:
            return logging.WARNING
        return logging.DEBUG if abs(event.drift) < 1 else logging.INFO
    if isinstance(event, (DebtEntered, DebtCleared)):
        return logging.INFO
    return logging.DEBUG


def describe(event: Event) -> str:
    """One line saying what ``event`` means, for logs and consoles."""
    if isinstance(event, LeaseEvent):
        text = f"lease {event.lease!r} {event.kind}"
        if event.fence:
            text += f" (fence {event.fence})"
        if event.holder:
            text += f" by {event.holder}"
        return f"{text}: {event.reason}" if event.reason else text
    if not isinstance(event, BucketEvent):
        return repr(event)
    name = f"bucket {event.bucket!r}"
    if isinstance(event, Waiting):
        return f"{name}: charged {event.cost:g} tokens, starting in {event.delay:.3f} s"
    if isinstance(event, Granted):
        return f"{name}: granted {event.cost:g} tokens after waiting {event.waited:.3f} s"
    if isinstance(event, TimedOut):
        if event.timeout == 0:
            return f"{name}: {event.cost:g} tokens not available now (could start in {event.retry_after:.3f} s)"
        return (
            f"{name}: {event.cost:g} tokens would start in {event.retry_after:.3f} s, "
            f"beyond the timeout of {event.timeout:g} s; nothing charged"
        )
    if isinstance(event, Cancelled):
        return f"{name}: reservation of {event.cost:g} tokens cancelled, {event.refunded:g} refunded"
    if isinstance(event, Settled):
        return (
            f"{name}: settled at {event.actual:g} tokens (estimate {event.estimate:g}, "
            f"difference {event.difference:+g}); balance {event.tokens:.1f}"
        )
    if isinstance(event, Synced):
        status = f" (HTTP {event.status})" if event.status is not None else ""
        return (
            f"{name}: upstream reports {event.remaining:g} tokens{status}, predicted {event.predicted:.1f}, "
            f"drift {event.drift:+.1f}"
        )
    if isinstance(event, DebtEntered):
        return f"{name}: in debt by {event.debt:.1f} tokens"
    return f"{name}: debt cleared"


class LoggingListener:
    """Writes every event to a `logging.Logger` (default: the ``tokenbucket`` logger).

    The message is `describe`'s one line; the event itself is attached to the
    record as ``record.tokenbucket_event`` for structured handlers. Levels come
    from `default_level` unless overridden per event type.

    Args:
        logger: A logger or a logger name.
        levels: Level overrides, keyed by event class (for example
            ``{Granted: logging.INFO}``).
    """

    __slots__ = ("_levels", "logger")

    def __init__(
        self, logger: logging.Logger | str = "tokenbucket", *, levels: Mapping[type, int] | None = None
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self._levels = dict(levels or {})

    def level(self, event: Event) -> int:
        """The level ``event`` is logged at."""
        override = self._levels.get(type(event))
        return default_level(event) if override is None else override

    def __call__(self, event: Event, /) -> None:
        level = self.level(event)
        if self.logger.isEnabledFor(level):
            self.logger.log(level, "%s", describe(event), extra={"tokenbucket_event": event})

    def __repr__(self) -> str:
        return f"LoggingListener({self.logger.name!r})"


def debt_change(in_debt: bool, debt: float, bucket: str, time: float) -> DebtEntered | DebtCleared | None:
    """The debt event, if any, when a bucket last known ``in_debt`` now sees ``debt``."""
    if debt > 0 and not in_debt:
        return DebtEntered(bucket, time, debt)
    if debt <= 0 and in_debt:
        return DebtCleared(bucket, time)
    return None
