"""Events on buckets: order, numbers, listeners, logging, and no cost without listeners."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest

from tokenbucket import (
    AcquireTimeout,
    AsyncTokenBucket,
    BucketEvent,
    Cancelled,
    DebtCleared,
    DebtEntered,
    Event,
    Granted,
    LeaseEvent,
    Listener,
    LoggingListener,
    MemoryBackend,
    Settled,
    Synced,
    TimedOut,
    TokenBucket,
    Waiting,
)
from tokenbucket._events import Emitter, default_level, describe
from tokenbucket.testing import ManualClock


def keepa(clock: ManualClock, **kwargs: Any) -> TokenBucket:
    """5/minute (a token every 12 s), capacity 300, unlimited overdraft."""
    return TokenBucket(
        "keepa", "5/minute", capacity=300, overdraft=math.inf, backend=MemoryBackend(clock), clock=clock, **kwargs
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event, /) -> None:
        self.events.append(event)


class CountingBackend(MemoryBackend):
    """A memory backend that counts the operations the front end asks for."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.calls: list[str] = []

    def reserve(self, *args: Any) -> Any:
        self.calls.append("reserve")
        return super().reserve(*args)

    def snapshot(self, *args: Any) -> Any:
        self.calls.append("snapshot")
        return super().snapshot(*args)

    def sync(self, *args: Any) -> Any:
        self.calls.append("sync")
        return super().sync(*args)


def test_keepa_story_in_order_with_numbers() -> None:
    clock = ManualClock()
    rec = Recorder()
    bucket = keepa(clock, listeners=[rec])
    assert isinstance(rec, Listener)
    grant = bucket.acquire(1000)  # 300 -> -700
    grant.settle(1010)  # the upstream charged 10 more: -710
    res = bucket.reserve(20)  # needs the balance at 1: 711 tokens = 8532 s
    waited = res.wait()  # autojump: the clock moves to 8532
    bucket.sync(-25, status=429)  # predicted 1 - 20 = -19: drift -6
    clock.advance(27 * 12)  # back to +2 by refill alone (Keepa's rule needs 1 to start)
    assert bucket.try_acquire(0) is not None  # the next operation notices the debt is gone
    assert rec.events == [
        Granted("keepa", 0.0, 1000, 0.0),
        DebtEntered("keepa", 0.0, 700.0),
        Settled("keepa", 0.0, estimate=1000, actual=1010, difference=10, tokens=-710.0),
        Waiting("keepa", 0.0, cost=20, delay=8532.0),
        Granted("keepa", 8532.0, cost=20, waited=8532.0),
        Synced("keepa", 8532.0, remaining=-25.0, predicted=-19.0, drift=-6.0, status=429),
        Granted("keepa", 8856.0, cost=0, waited=0.0),
        DebtCleared("keepa", 8856.0),
    ]
    assert waited.waited == 8532.0
    assert all(isinstance(e, BucketEvent) for e in rec.events)


def test_timeout_cancel_and_try_miss() -> None:
    clock = ManualClock()
    rec = Recorder()
    bucket = TokenBucket("s", "1/second", capacity=10, backend=MemoryBackend(clock), clock=clock, listeners=[rec])
    bucket.acquire(10)
    with pytest.raises(AcquireTimeout):
        bucket.acquire(4, timeout=3)  # would wait 4 s
    assert bucket.try_acquire(1) is None  # would wait 1 s
    res = bucket.reserve(2)
    assert res.cancel() == 2
    assert rec.events[1:] == [
        TimedOut("s", 0.0, cost=4, timeout=3.0, retry_after=4.0),
        TimedOut("s", 0.0, cost=1, timeout=0.0, retry_after=1.0),
        Waiting("s", 0.0, cost=2, delay=2.0),
        Cancelled("s", 0.0, cost=2, refunded=2.0),
    ]


def test_sync_that_agrees_has_no_drift() -> None:
    clock = ManualClock()
    rec = Recorder()
    bucket = keepa(clock, listeners=[rec])
    bucket.acquire(100)
    clock.advance(60)  # +5
    bucket.sync(205)
    assert rec.events[-1] == Synced("keepa", 60.0, remaining=205.0, predicted=205.0, drift=0.0, status=None)
    with pytest.raises(TypeError, match="status"):
        bucket.sync(1, status="429")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_async_bucket_emits_the_same_events() -> None:
    clock = ManualClock()
    rec = Recorder()
    bucket = AsyncTokenBucket(
        "keepa", "5/minute", capacity=300, overdraft=math.inf, backend=MemoryBackend(clock), clock=clock,
        listeners=[rec],
    )  # fmt: skip
    await bucket.acquire(1000)
    await bucket.acquire(20)
    assert await bucket.try_acquire(5) is None
    assert rec.events == [
        Granted("keepa", 0.0, 1000, 0.0),
        DebtEntered("keepa", 0.0, 700.0),
        Waiting("keepa", 0.0, cost=20, delay=8412.0),
        Granted("keepa", 8412.0, cost=20, waited=8412.0),
        TimedOut("keepa", 8412.0, cost=5, timeout=0.0, retry_after=19 * 12 + 12),
    ]


@pytest.mark.asyncio
async def test_cancelled_task_reports_its_refund() -> None:
    clock = ManualClock(autojump=False)
    rec = Recorder()
    bucket = AsyncTokenBucket("s", "1/second", capacity=10, backend=MemoryBackend(clock), clock=clock, listeners=[rec])
    await bucket.acquire(10)
    waiting = asyncio.Event()
    bucket.add_listener(lambda event: waiting.set() if isinstance(event, Waiting) else None)
    task = asyncio.create_task(bucket.acquire(3))
    await waiting.wait()  # the task is charged and asleep on the manual clock
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.events[1:] == [Waiting("s", 0.0, cost=3, delay=3.0), Cancelled("s", 0.0, cost=3, refunded=3.0)]
    assert (await bucket.snapshot()).tokens == 0


def test_no_listener_means_no_extra_store_calls() -> None:
    clock = ManualClock()
    quiet_backend = CountingBackend(clock)
    quiet = TokenBucket("q", "1/second", capacity=10, backend=quiet_backend, clock=clock)
    quiet.acquire(1)
    quiet.try_acquire(1)
    quiet.sync(5)
    assert quiet_backend.calls == ["reserve", "reserve", "sync"]
    assert quiet.listeners == ()
    loud_backend = CountingBackend(clock)
    loud = TokenBucket("l", "1/second", capacity=10, backend=loud_backend, clock=clock, listeners=[Recorder()])
    loud.acquire(1)
    loud.try_acquire(1)
    loud.sync(5)
    # one snapshot after each grant (for debt events), one before the sync (for the drift)
    assert loud_backend.calls == ["reserve", "snapshot", "reserve", "snapshot", "snapshot", "sync"]


def test_add_and_remove_listeners() -> None:
    clock = ManualClock()
    bucket = keepa(clock)
    first, second = Recorder(), Recorder()
    bucket.add_listener(first)
    bucket.add_listener(second)
    assert bucket.listeners == (first, second)
    bucket.acquire(1)
    bucket.remove_listener(first)
    bucket.acquire(1)
    assert len(first.events) == 1
    assert len(second.events) == 2
    bucket.remove_listener(second)
    assert bucket.listeners == ()
    with pytest.raises(ValueError, match="not a listener"):
        bucket.remove_listener(second)
    with pytest.raises(TypeError, match="callable"):
        bucket.add_listener(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        keepa(clock, listeners=["nope"])


def test_a_failing_listener_is_logged_and_does_not_disturb(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: Event, /) -> None:
        raise RuntimeError("listener bug")

    clock = ManualClock()
    rec = Recorder()
    bucket = keepa(clock, listeners=[broken, rec])
    with caplog.at_level(logging.ERROR, logger="tokenbucket"):
        grant = bucket.acquire(5)
    assert grant.cost == 5
    assert [type(e) for e in rec.events] == [Granted]
    assert "listener bug" in caplog.text


def test_logging_listener_levels_and_messages(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    bucket = keepa(clock, listeners=[LoggingListener()])
    with caplog.at_level(logging.DEBUG, logger="tokenbucket"):
        bucket.acquire(1000)
        bucket.sync(-750, status=429)
    got = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert got == [
        (logging.DEBUG, "bucket 'keepa': granted 1000 tokens after waiting 0.000 s"),
        (logging.INFO, "bucket 'keepa': in debt by 700.0 tokens"),
        (logging.WARNING, "bucket 'keepa': upstream reports -750 tokens (HTTP 429), predicted -700.0, drift -50.0"),
    ]
    assert isinstance(caplog.records[0].tokenbucket_event, Granted)  # type: ignore[attr-defined]


def test_logging_listener_overrides_and_quiet_logger(caplog: pytest.LogCaptureFixture) -> None:
    listener = LoggingListener("tokenbucket.custom", levels={Granted: logging.INFO})
    assert listener.level(Granted("b", 0.0, 1, 0.0)) == logging.INFO
    with caplog.at_level(logging.INFO, logger="tokenbucket.custom"):
        listener(Granted("b", 0.0, 1, 0.0))
        listener(Waiting("b", 0.0, 1, 2.0))  # DEBUG: below the level, not formatted
    assert [r.name for r in caplog.records] == ["tokenbucket.custom"]


@pytest.mark.parametrize(
    ("event", "level"),
    [
        (TimedOut("b", 0, 1, 0.0, 1.0), logging.DEBUG),
        (TimedOut("b", 0, 1, 5.0, 9.0), logging.INFO),
        (Settled("b", 0, 5, 5, 0, 1), logging.DEBUG),
        (Settled("b", 0, 5, 7, 2, 1), logging.INFO),
        (Synced("b", 0, 1, 1.5, -0.5, None), logging.DEBUG),
        (Synced("b", 0, 1, 9, -8, None), logging.INFO),
        (DebtCleared("b", 0), logging.INFO),
        (LeaseEvent("acquired", "l", 0, 3, "h:1"), logging.INFO),
        (LeaseEvent("renewed", "l", 0, 3, "h:1"), logging.DEBUG),
        (LeaseEvent("suspended", "l", 0, 3, "h:1"), logging.WARNING),
        (LeaseEvent("lost", "l", 0, 3, "h:1"), logging.ERROR),
        (LeaseEvent("broken", "l", 0, 3, "h:1"), logging.WARNING),
    ],
)
def test_default_levels(event: Event, level: int) -> None:
    assert default_level(event) == level


def test_lease_event_description_and_emitter() -> None:
    event = LeaseEvent("lost", "backfill", 12.0, fence=7, holder="web1:42:main", reason="key gone")
    assert describe(event) == "lease 'backfill' lost (fence 7) by web1:42:main: key gone"
    emitter = Emitter()
    assert not emitter
    assert len(emitter) == 0
    rec = Recorder()
    emitter.add(rec)
    assert emitter
    emitter.emit(event)
    assert rec.events == [event]
    emitter.remove(rec)
    assert not emitter


def test_events_are_frozen() -> None:
    event = Granted("b", 0.0, 1, 0.0)
    with pytest.raises(AttributeError):
        event.cost = 2  # type: ignore[misc]
