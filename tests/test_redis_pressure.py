"""Many callers on one Redis backend: a busy client is never taken for a server that is down.

Real time on the server's clock (every caller shares Redis TIME); bounds are generous, and what is asserted
is the behaviour (no error, no fail-open), not a speed.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from redis_servers import RedisServer

from tokenbucket import AsyncTokenBucket, RedisBackend, TokenBucket
from tokenbucket.backends import AsyncRedisBackend

MODES = ["raise", "deny", "allow"]
RATE, CAPACITY, RUN = 20.0, 40.0, 1.5


@pytest.mark.parametrize("mode", MODES)
async def test_250_tasks_on_a_small_pool_get_no_errors_and_no_fail_open(redis_server: RedisServer, mode: str) -> None:
    # 10 connections for 250 tasks: redis-py's default pool would raise MaxConnectionsError at once.
    backend = AsyncRedisBackend.from_url(
        redis_server.url, prefix=f"p{uuid.uuid4().hex[:8]}:", on_unavailable=mode, max_connections=10
    )
    bucket = AsyncTokenBucket("busy", f"{int(RATE)}/second", capacity=CAPACITY, backend=backend)
    errors: list[BaseException] = []
    granted = 0
    start = time.monotonic()

    async def caller() -> None:
        nonlocal granted
        while time.monotonic() - start < RUN:
            try:
                if await bucket.try_acquire(1) is not None:
                    granted += 1
            except Exception as exc:
                errors.append(exc)
                return
            await asyncio.sleep(0.005)

    try:
        await asyncio.gather(*(caller() for _ in range(250)))
    finally:
        await backend.aclose()
    elapsed = time.monotonic() - start
    print(f"250 tasks, {mode}: {granted} granted, bound {CAPACITY + RATE * elapsed:.1f}, {len(errors)} errors")
    assert errors == []
    assert 0 < granted <= CAPACITY + RATE * elapsed + 1


@pytest.mark.parametrize("mode", MODES)
def test_200_threads_on_a_small_pool_get_no_errors_and_no_fail_open(redis_server: RedisServer, mode: str) -> None:
    backend = RedisBackend.from_url(
        redis_server.url, prefix=f"p{uuid.uuid4().hex[:8]}:", on_unavailable=mode, max_connections=10
    )
    bucket = TokenBucket("busy", f"{int(RATE)}/second", capacity=CAPACITY, backend=backend)
    errors: list[BaseException] = []
    granted = [0]
    lock = threading.Lock()
    start = time.monotonic()

    def caller() -> None:
        while time.monotonic() - start < RUN:
            try:
                ok = bucket.try_acquire(1) is not None
            except Exception as exc:
                errors.append(exc)
                return
            if ok:
                with lock:
                    granted[0] += 1
            time.sleep(0.005)

    threads = [threading.Thread(target=caller) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    backend.close()
    elapsed = time.monotonic() - start
    print(f"200 threads, {mode}: {granted[0]} granted, bound {CAPACITY + RATE * elapsed:.1f}, {len(errors)} errors")
    assert errors == []
    assert 0 < granted[0] <= CAPACITY + RATE * elapsed + 1
