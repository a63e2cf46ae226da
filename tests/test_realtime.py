"""Real-time checks of the scenario where other rate limiters starve a large request.

Rate 10/s, capacity 10: four workers loop on 1-token acquires while one caller
wants 8. First-come first-served means the 8 waits at most for what was
charged before it: its FIFO bound is (8 + the queue ahead) / rate, well under
2 s. These are the only wall-clock tests in the suite.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tokenbucket import AsyncTokenBucket, MemoryBackend, TokenBucket

pytestmark = pytest.mark.realtime


def test_large_request_served_within_fifo_bound_among_threads() -> None:
    bucket = TokenBucket("starve", "10/second", capacity=10, backend=MemoryBackend())
    stop = threading.Event()

    def small_worker() -> None:
        while not stop.is_set():
            bucket.acquire(1)

    workers = [threading.Thread(target=small_worker, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.3)  # let the small callers drain the bucket and queue up
    started = time.monotonic()
    grant = bucket.acquire(8)
    elapsed = time.monotonic() - started
    stop.set()
    for w in workers:
        w.join(timeout=5)
    assert elapsed < 2.0
    assert grant.waited < 2.0


async def test_large_request_served_within_fifo_bound_among_tasks() -> None:
    bucket = AsyncTokenBucket("starve", "10/second", capacity=10, backend=MemoryBackend())
    stop = asyncio.Event()

    async def small_worker() -> None:
        while not stop.is_set():
            await bucket.acquire(1)

    workers = [asyncio.create_task(small_worker()) for _ in range(4)]
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await bucket.acquire(8)
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), 5)
    assert elapsed < 2.0


async def test_cancelled_task_refunds_in_real_time() -> None:
    bucket = AsyncTokenBucket("refund", "10/second", capacity=10, backend=MemoryBackend())
    await bucket.acquire(10)
    waiter = asyncio.create_task(bucket.acquire(5))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    snap = await bucket.snapshot()
    assert snap.promised == 0
    assert snap.tokens > 0  # the 5 tokens came back; only refill since then is added
    assert snap.tokens < 2
