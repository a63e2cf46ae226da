"""Regression tests for the refund rule and the reservation lifecycle (DESIGN.md, "The guarantee").

Each scenario is the one a user hit: the expected start times are those of an exact upstream, worked by hand
in the comments (capacity 100, 1 token/s unless said otherwise).
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest

from tokenbucket import AsyncTokenBucket, MemoryBackend, Rate, TokenBucket, TokenBucketError
from tokenbucket.testing import ManualClock


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Any:
    """A fresh sync backend: in memory, or on the suite's private Redis server (with the test's virtual clock)."""
    if request.param == "memory":
        return MemoryBackend()
    return request.getfixturevalue("redis_backend_factory")("sync")


def _bucket(backend: Any, **policy: float) -> tuple[TokenBucket, ManualClock]:
    clock = ManualClock(0.0, autojump=False)
    bucket = TokenBucket("b", "1/second", capacity=100, backend=backend, clock=clock, **policy)
    return bucket, clock


@pytest.mark.parametrize("overdraft", [0.0, 200.0])
def test_cancel_never_lets_a_new_request_start_beside_a_waiting_one(store: Any, overdraft: float) -> None:
    bucket, _ = _bucket(store, overdraft=overdraft)
    first = bucket.reserve(100 + overdraft)  # starts at 0; the upstream holds 0 (or -200) after it
    x = bucket.reserve(100 + overdraft)
    y = bucket.reserve(100 + overdraft)
    step = 100 + overdraft  # each waits until the balance is back to 100 (the start level)
    assert (x.delay, y.delay) == (pytest.approx(step), pytest.approx(2 * step))
    assert first.delay == 0.0
    x.cancel()
    # Without x the upstream is full (100) by the time y starts and could not refill past it: a new request of
    # the same size can start only one step after y, never beside it.
    late = bucket.reserve(100 + overdraft)
    assert late.delay == pytest.approx(3 * step)


def test_refunding_settle_while_a_reservation_waits_keeps_the_queue_honest(store: Any) -> None:
    bucket, _ = _bucket(store)
    grant = bucket.acquire(100)
    bucket.reserve(100)  # starts at 100
    bucket.reserve(100)  # starts at 200
    grant.settle(0)  # the upstream kept its 100 tokens, but it is full at t=0 and cannot refill until t=100
    assert bucket.reserve(100).delay == pytest.approx(300.0)


def test_refunding_settle_long_after_the_start_gives_back_only_what_a_full_bucket_kept(store: Any) -> None:
    bucket, clock = _bucket(store)
    bucket.acquire(40)  # balance 60 at t=0
    grant = bucket.acquire(50)  # balance 10; the upstream charges 0 for it in truth
    clock.advance(60)  # the bucket believes 70; the upstream had 60 + 60 capped at 100 = 100
    bucket.acquire(70)  # believed 0; the upstream has 30
    grant.settle(0)  # 50 overpaid, but 30 of it was lost to the full bucket: at most 20 more may be given back
    snap = bucket.snapshot()
    assert snap.tokens <= 30.0 + 1e-9
    assert snap.tokens == pytest.approx(0.0 + max(0.0, 50 - (60 * 1.0 - 0)))


def test_the_last_reservation_in_line_gets_its_whole_cost_back(store: Any) -> None:
    bucket, _ = _bucket(store)
    bucket.acquire(100)
    r = bucket.reserve(30)
    assert r.cancel() == pytest.approx(30.0)
    assert bucket.snapshot().tokens == pytest.approx(0.0)


def test_a_strict_bucket_may_hold_less_than_one_token() -> None:
    clock = ManualClock(0.0, autojump=False)
    bucket = TokenBucket("half", Rate(0.5, 1), backend=MemoryBackend(), clock=clock)
    assert bucket.capacity == 0.5
    assert bucket.try_acquire(0.5) is not None
    assert bucket.try_acquire(0.5) is None


def test_memory_housekeeping_keeps_a_bucket_whose_rate_changed() -> None:
    clock = ManualClock(0.0, autojump=False)
    backend = MemoryBackend(clock=clock)
    bucket = TokenBucket("slow", "100/second", backend=backend, clock=clock)
    bucket.acquire(100)
    bucket.sync(0, rate="1/second")
    clock.advance(1.5)
    for i in range(3000):  # enough new buckets to trigger the sweep
        TokenBucket(f"other{i}", "1/second", backend=backend, clock=clock).try_acquire(0)
    assert bucket.snapshot().tokens == pytest.approx(1.5)


def test_cancel_during_wait_yields_no_grant() -> None:
    clock = ManualClock(0.0, autojump=False)
    bucket = TokenBucket("c", "1/second", capacity=1, backend=MemoryBackend(), clock=clock)
    bucket.acquire(1)
    res = bucket.reserve(1)
    outcome: list[object] = []
    sleeping = threading.Event()
    real_sleep = clock.sleep

    def sleep(seconds: float) -> None:
        sleeping.set()
        real_sleep(seconds)

    clock.sleep = sleep  # type: ignore[method-assign]

    def waiter() -> None:
        try:
            outcome.append(res.wait())
        except TokenBucketError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert sleeping.wait(5)
    assert res.cancel() == pytest.approx(1.0)
    assert res.cancel() == 0.0  # a refund is paid once
    clock.advance(2)
    thread.join(5)
    assert len(outcome) == 1
    assert isinstance(outcome[0], TokenBucketError)
    assert "cancelled" in str(outcome[0])
    assert bucket.snapshot().tokens == pytest.approx(1.0)  # refunded once, then capped at capacity


def test_two_concurrent_waits_on_one_reservation_give_one_grant() -> None:
    clock = ManualClock(0.0, autojump=False)
    bucket = TokenBucket("d", "1/second", capacity=1, backend=MemoryBackend(), clock=clock)
    bucket.acquire(1)
    res = bucket.reserve(1)
    results: list[object] = []
    gate = threading.Barrier(2)

    def waiter() -> None:
        gate.wait()
        try:
            results.append(res.wait())
        except TokenBucketError as exc:
            results.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(100):
        if results:
            break
        threading.Event().wait(0.01)
    clock.advance(2)
    for t in threads:
        t.join(5)
    grants = [r for r in results if not isinstance(r, BaseException)]
    assert len(results) == 2
    assert len(grants) == 1


async def test_async_cancel_during_wait_yields_no_grant_and_double_wait_is_refused() -> None:
    clock = ManualClock(0.0, autojump=False)
    bucket = AsyncTokenBucket("e", "1/second", capacity=1, backend=MemoryBackend(), clock=clock)
    await bucket.acquire(1)
    res = await bucket.reserve(1)
    first = asyncio.create_task(res.wait())
    await asyncio.sleep(0)
    with pytest.raises(TokenBucketError, match="already being waited for"):
        await res.wait()
    assert await res.cancel() == pytest.approx(1.0)
    clock.advance(2)
    with pytest.raises(TokenBucketError, match="cancelled"):
        await asyncio.wait_for(first, 5)
    assert math.isclose((await bucket.snapshot()).tokens, 1.0)
