"""Redis going away and coming back: errors within seconds, recovery without help, ``on_unavailable``.

Each test has a private redis-server it may kill and restart (same port, empty).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import threading
import time

import pytest
import redis
from redis_servers import RedisServer

from tokenbucket import (
    AcquireTimeout,
    AsyncRedisBackend,
    AsyncTokenBucket,
    BackendError,
    RedisBackend,
    TokenBucket,
)
from tokenbucket.testing import ManualClock

pytestmark = [pytest.mark.redis, pytest.mark.realtime]

FAIL_WITHIN = 10.0
"""Seconds a call may take to fail once the server is gone (the defaults aim at well under 5)."""


def test_killed_mid_run_raises_backend_error_within_seconds(private_redis_server: RedisServer) -> None:
    backend = RedisBackend.from_url(private_redis_server.url)
    bucket = TokenBucket("run", "1000/second", capacity=10, backend=backend)
    outcome: list[BaseException] = []
    failed_at: list[float] = []

    def worker() -> None:
        try:
            while True:
                bucket.acquire(1)
        except BaseException as exc:
            failed_at.append(time.monotonic())
            outcome.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    time.sleep(0.3)  # the worker is busy acquiring
    assert thread.is_alive()
    private_redis_server.kill()
    killed_at = time.monotonic()
    thread.join(FAIL_WITHIN + 5)
    assert not thread.is_alive(), "acquire hung after the server died"
    assert isinstance(outcome[0], BackendError), outcome
    assert isinstance(outcome[0].__cause__, redis.ConnectionError)
    assert failed_at[0] - killed_at < FAIL_WITHIN
    # Restarted: the same backend works again without any action.
    private_redis_server.restart()
    assert bucket.try_acquire(1) is not None
    backend.close()


def test_restart_loses_state_and_the_next_call_recreates_it(private_redis_server: RedisServer) -> None:
    clock = ManualClock()
    with RedisBackend.from_url(private_redis_server.url) as backend:
        bucket = TokenBucket(
            "k", "5/minute", capacity=300, overdraft=math.inf, initial=0, backend=backend, clock=clock
        )
        bucket.sync(200)
        assert bucket.snapshot().tokens == 200
        private_redis_server.restart()
        assert bucket.snapshot().tokens == 0  # lost: recreated per initial=0, not trusted full
        assert bucket.sync(150).tokens == 150  # and sync sets it right


def test_async_killed_raises_then_recovers(private_redis_server: RedisServer) -> None:
    async def main() -> None:
        async with AsyncRedisBackend.from_url(private_redis_server.url) as backend:
            bucket = AsyncTokenBucket("a", "10/second", backend=backend, clock=ManualClock())
            assert await bucket.try_acquire() is not None
            private_redis_server.kill()
            started = time.monotonic()
            with pytest.raises(BackendError, match="reserve on 'a'"):
                await bucket.acquire(1)
            assert time.monotonic() - started < FAIL_WITHIN
            private_redis_server.restart()
            assert await bucket.try_acquire() is not None

    asyncio.run(main())


def test_on_unavailable_raise_is_the_default(private_redis_server: RedisServer) -> None:
    with RedisBackend.from_url(private_redis_server.url) as backend:
        assert backend.on_unavailable == "raise"
        bucket = TokenBucket("r", "1/minute", capacity=1, backend=backend)
        private_redis_server.kill()
        with pytest.raises(BackendError):
            bucket.try_acquire()
        with pytest.raises(BackendError):
            bucket.acquire(1)


def test_on_unavailable_allow_admits_at_once(
    private_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with RedisBackend.from_url(private_redis_server.url, on_unavailable="allow") as backend:
        clock = ManualClock()
        bucket = TokenBucket("allow", "1/minute", capacity=1, backend=backend, clock=clock)
        assert bucket.try_acquire() is not None
        assert bucket.try_acquire() is None  # reachable: the bucket decides
        private_redis_server.kill()
        with caplog.at_level(logging.WARNING, logger="tokenbucket.redis"):
            for _ in range(3):
                assert bucket.try_acquire(1) is not None
            grant = bucket.acquire(1, timeout=0)
            assert grant.waited == 0
            assert clock.now() == 0  # no delay
            reservation = bucket.reserve(1)
            assert reservation.delay == 0
            assert reservation.cancel() == 0
        assert [r.message.split(";")[0] for r in caplog.records] == ["Redis unreachable"]  # once per outage
        with pytest.raises(BackendError):
            bucket.snapshot()  # only admission falls back
        private_redis_server.restart()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tokenbucket.redis"):
            assert bucket.try_acquire(1) is not None  # fresh, full bucket
            assert bucket.try_acquire(1) is None  # the bucket decides again
        assert any("reachable again" in r.message for r in caplog.records)


def test_on_unavailable_deny_behaves_as_a_timeout(private_redis_server: RedisServer) -> None:
    with RedisBackend.from_url(private_redis_server.url, on_unavailable="deny") as backend:
        bucket = TokenBucket("deny", "10/second", capacity=10, backend=backend, clock=ManualClock())
        assert bucket.try_acquire() is not None
        private_redis_server.kill()
        assert bucket.try_acquire() is None
        with pytest.raises(AcquireTimeout) as info:
            bucket.acquire(1)
        assert info.value.retry_after == 1.0
        with pytest.raises(AcquireTimeout):
            bucket.reserve(1, timeout=30)
        private_redis_server.restart()
        assert bucket.try_acquire() is not None


def test_on_unavailable_deny_async(private_redis_server: RedisServer) -> None:
    async def main() -> None:
        async with AsyncRedisBackend.from_url(private_redis_server.url, on_unavailable="deny") as backend:
            bucket = AsyncTokenBucket("deny", "10/second", backend=backend, clock=ManualClock())
            assert await bucket.try_acquire() is not None
            private_redis_server.kill()
            assert await bucket.try_acquire() is None
            with pytest.raises(AcquireTimeout):
                await bucket.acquire(1)

    asyncio.run(main())


def test_on_unavailable_allow_async(private_redis_server: RedisServer) -> None:
    async def main() -> None:
        async with AsyncRedisBackend.from_url(private_redis_server.url, on_unavailable="allow") as backend:
            bucket = AsyncTokenBucket("allow", "1/minute", capacity=1, backend=backend, clock=ManualClock())
            assert await bucket.try_acquire() is not None
            private_redis_server.kill()
            assert await bucket.try_acquire() is not None
            assert (await bucket.acquire(1)).waited == 0

    asyncio.run(main())


def test_a_frozen_server_times_out_instead_of_hanging(private_redis_server: RedisServer) -> None:
    """SIGSTOP: the connection stays open but nothing answers; the socket timeout ends the wait."""
    pid = private_redis_server.pid
    assert pid is not None
    with RedisBackend.from_url(private_redis_server.url, socket_timeout=1.0) as backend:
        bucket = TokenBucket("frozen", "10/second", backend=backend, clock=ManualClock())
        assert bucket.try_acquire() is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(BackendError, match="Timeout") as info:
                bucket.try_acquire()
            assert time.monotonic() - started < 1.0 + FAIL_WITHIN / 2  # one timeout: a timeout is not retried
            assert isinstance(info.value.__cause__, redis.TimeoutError)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert bucket.try_acquire() is not None


def test_restart_between_calls_is_invisible_to_the_next_call(private_redis_server: RedisServer) -> None:
    """The pooled connection went stale with the restart: one immediate retry on a new connection serves it."""
    with RedisBackend.from_url(private_redis_server.url) as backend:
        bucket = TokenBucket("stale", "10/second", backend=backend, clock=ManualClock())
        assert bucket.try_acquire() is not None
        private_redis_server.restart()
        assert bucket.try_acquire() is not None


def test_restart_between_async_calls_is_invisible_to_the_next_call(private_redis_server: RedisServer) -> None:
    async def main() -> None:
        async with AsyncRedisBackend.from_url(private_redis_server.url) as backend:
            bucket = AsyncTokenBucket("stale", "10/second", backend=backend, clock=ManualClock())
            assert await bucket.try_acquire() is not None
            private_redis_server.restart()
            assert await bucket.try_acquire() is not None

    asyncio.run(main())
