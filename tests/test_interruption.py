"""A waiter interrupted by KeyboardInterrupt, an exception or task cancellation refunds its cost."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from tokenbucket import AsyncTokenBucket, MemoryBackend, TokenBucket
from tokenbucket.testing import ManualClock


class InterruptingClock(ManualClock):
    """A clock whose sleeps are interrupted, like Ctrl-C during ``time.sleep``."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(0.0)
        self.exc = exc

    def sleep(self, seconds: float) -> None:
        raise self.exc


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")])
def test_interrupted_sync_wait_refunds(exc: BaseException) -> None:
    clock = InterruptingClock(exc)
    bucket = TokenBucket("k", "1/second", capacity=10, backend=MemoryBackend(), clock=clock)
    bucket.acquire(10)
    with pytest.raises(type(exc)):
        bucket.acquire(5)
    snap = bucket.snapshot()
    assert snap.tokens == pytest.approx(0.0)
    assert snap.promised == 0


def test_blocked_thread_waits_for_virtual_time() -> None:
    clock = ManualClock(0.0, autojump=False)
    bucket = TokenBucket("k", "1/second", capacity=2, backend=MemoryBackend(), clock=clock)
    bucket.acquire(2)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (bucket.acquire(1), done.set()))
    thread.start()
    assert not done.wait(0.05)
    clock.advance(0.5)
    assert not done.wait(0.05)
    clock.advance(0.5)
    assert done.wait(5)
    thread.join()


async def test_cancelled_task_refunds_and_others_keep_their_place() -> None:
    clock = ManualClock(0.0, autojump=False)
    bucket = AsyncTokenBucket("k", "1/second", capacity=10, overdraft=0, backend=MemoryBackend(), clock=clock)
    await bucket.acquire(10)
    first = asyncio.create_task(bucket.acquire(4))
    second = asyncio.create_task(bucket.acquire(2))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert (await bucket.snapshot()).promised == pytest.approx(6.0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    snap = await bucket.snapshot()
    assert snap.promised == pytest.approx(2.0)
    # The refund is the 4 tokens less what refills between the cancelled start (4 s) and the start of the
    # request still waiting (6 s): 2, since a full bucket could have lost those (model.cancel).
    assert snap.tokens == pytest.approx(-4.0)
    clock.advance(6)  # the second request keeps the start it was promised
    grant = await asyncio.wait_for(second, 5)
    assert grant.waited == pytest.approx(6.0)


async def test_async_reservation_cancel_and_settle() -> None:
    bucket = AsyncTokenBucket("k", "5/minute", capacity=300, overdraft=math.inf, clock=ManualClock())
    grant = await bucket.acquire(20)
    snap = await grant.settle(23)
    assert snap.tokens == pytest.approx(277.0)
    res = await bucket.reserve(400)
    assert res.delay == 0
    res2 = await bucket.reserve(1)
    assert res2.delay > 0
    assert await res2.cancel() == pytest.approx(1.0)
    assert await bucket.try_acquire(1) is None
