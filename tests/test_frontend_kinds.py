"""Each front end takes the backends it can drive, says which to use otherwise, and names only public classes."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from tokenbucket import AsyncTokenBucket, MemoryBackend, TokenBucket
from tokenbucket.backends import AsyncRedisBackend, RedisBackend
from tokenbucket.testing import ManualClock


def test_a_sync_bucket_refuses_an_asyncio_backend_and_names_the_right_classes() -> None:
    backend = AsyncRedisBackend.from_url("redis://127.0.0.1:1/0")  # never connects: refused first
    with pytest.raises(TypeError, match=r"AsyncTokenBucket.*RedisBackend\.from_url"):
        TokenBucket("b", "5/minute", backend=backend)


def test_an_async_bucket_refuses_a_blocking_redis_backend_and_names_the_right_class() -> None:
    backend = RedisBackend.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match=r"block the event loop.*AsyncRedisBackend\.from_url"):
        AsyncTokenBucket("b", "5/minute", backend=backend)


def test_an_async_bucket_takes_the_memory_backend_which_never_blocks() -> None:
    bucket = AsyncTokenBucket("b", "5/minute", backend=MemoryBackend())
    assert asyncio.run(bucket.try_acquire(1)) is not None


@pytest.mark.parametrize("cls", [TokenBucket, AsyncTokenBucket])
def test_a_missing_argument_names_the_public_class(cls: type) -> None:
    expected = rf"^{cls.__name__}\.__init__\(\) missing 1 required positional argument: 'rate'"
    with pytest.raises(TypeError, match=expected):
        cls("b")


def test_a_blocking_wait_inside_a_running_event_loop_warns() -> None:
    bucket = TokenBucket("b", "1000/second", capacity=1, backend=MemoryBackend())

    async def main() -> None:
        bucket.acquire(1)  # no wait: nothing to warn about
        with pytest.warns(RuntimeWarning, match="inside a running event loop.*AsyncTokenBucket"):
            bucket.acquire(1)  # waits about 1 ms, blocking the loop

    asyncio.run(main())


def test_a_virtual_wait_inside_an_event_loop_does_not_warn() -> None:
    bucket = TokenBucket("b", "1/second", capacity=1, backend=MemoryBackend(), clock=ManualClock(0.0))

    async def main() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            bucket.acquire(1)
            bucket.acquire(1)  # a ManualClock sleep blocks nothing

    asyncio.run(main())
