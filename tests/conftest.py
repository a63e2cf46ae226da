"""Shared fixtures.

The conformance suite runs every test class against every backend in
`BACKENDS` and both front ends in `FRONTENDS`. A backend named ``X`` other than
memory is provided by a fixture ``X_backend_factory`` returning
``factory(frontend) -> backend``.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_servers import SECRET, RedisClusterServers, RedisServer, keys_without_ttl
from workers import Worker

from tokenbucket import (
    AsyncGrant,
    AsyncRedisBackend,
    AsyncReservation,
    AsyncTokenBucket,
    MemoryBackend,
    RedisBackend,
    TokenBucket,
)
from tokenbucket.testing import ManualClock

BACKENDS = ["memory", "redis"]
FRONTENDS = ["sync", "async"]


class Blocking:
    """Drives an async object's coroutine methods to completion, so one test body serves both front ends."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._loop.run_until_complete(attr(*args, **kwargs))
            if isinstance(result, (AsyncGrant, AsyncReservation)):
                return Blocking(result, self._loop)
            return result

        return call

    def __repr__(self) -> str:
        return f"Blocking({self._target!r})"


@pytest.fixture(params=FRONTENDS)
def frontend(request: pytest.FixtureRequest) -> str:
    """``"sync"`` or ``"async"``."""
    return str(request.param)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


@pytest.fixture
def new_backend(backend_name: str, frontend: str, request: pytest.FixtureRequest) -> Callable[[], Any]:
    """Makes a fresh backend of the kind under test, suited to the front end."""
    if backend_name == "memory":
        return MemoryBackend
    factory = request.getfixturevalue(f"{backend_name}_backend_factory")
    return lambda: factory(frontend)


@pytest.fixture
def clock() -> ManualClock:
    """Virtual time, starting at 1000 s."""
    return ManualClock(1000.0)


@pytest.fixture
def event_loop_for_sync() -> Iterator[asyncio.AbstractEventLoop]:
    """A private loop for driving the async front end from a sync test body."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def bands() -> int:
    """How many bandwidths ``make_bucket`` gives a bucket: 1 here; a module may override it with a parameter."""
    return 1


@pytest.fixture
def make_bucket(
    new_backend: Callable[[], Any],
    frontend: str,
    clock: ManualClock,
    event_loop_for_sync: asyncio.AbstractEventLoop,
    bands: int,
) -> Callable[..., Any]:
    """``make_bucket(rate="10/second", **policy)`` -> a bucket on the backend and front end under test.

    The async front end is wrapped in `Blocking`, so tests call it like the sync one.
    Each call makes a bucket with a fresh name on a fresh backend unless ``name=`` / ``backend=`` are given.
    With ``bands`` = n > 1, the bucket has n bandwidths, each the policy asked for: it must behave
    exactly as the bucket with one (every bandwidth charged in one step, each binding alike).
    """

    def make(rate: Any = "10/second", **kwargs: Any) -> Any:
        if bands > 1:
            rate = [rate] * bands
            if kwargs.get("capacity") is not None:
                kwargs["capacity"] = [kwargs["capacity"]] * bands
        kwargs.setdefault("backend", new_backend())
        kwargs.setdefault("clock", clock)
        name = kwargs.pop("name", f"test-{uuid.uuid4().hex[:12]}")
        if frontend == "sync":
            return TokenBucket(name, rate, **kwargs)
        return Blocking(AsyncTokenBucket(name, rate, **kwargs), event_loop_for_sync)

    return make


# --------------------------------------------------------------------------- Redis
# Private redis-server processes (see tests/redis_servers.py); never the shared Redis on 6379.


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The suite's private redis-server (persistence off), shared by every test in the session.

    It has ``.port``, ``.url``, ``.client()``, ``.kill()`` and ``.restart()`` (same port, empty).
    Tests share it, so use fresh names or the ``redis_prefix`` fixture, and prefer
    ``private_redis_server`` for a test that kills it or needs it empty.
    At the end of the session no key may be left without a TTL: the teardown checks.
    """
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
        if server.running():
            client = server.client()
            try:
                leaked = keys_without_ttl(client)
            finally:
                client.close()
            assert not leaked, f"keys left without a TTL: {leaked[:20]}"
    finally:
        server.kill()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the suite's private redis-server, ``redis://127.0.0.1:<port>/0``."""
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A synchronous client (``decode_responses=False``) to the suite's private server, closed after the test."""
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, such as ``"t3f9c0a1b2d4e:"``."""
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def private_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, empty, killed after the test: for fault tests and exact counts."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def locked_redis_server(private_redis_server: RedisServer) -> RedisServer:
    """The private server with ``requirepass`` set to `redis_servers.SECRET` (for tests that no output shows it)."""
    client = private_redis_server.client()
    client.config_set("requirepass", SECRET)
    client.close()
    return private_redis_server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A private Redis Cluster of three masters (no replicas): ``.url``, ``.ports``, ``.startup_nodes``, ``.client()``.

    Started on first use, killed at the end of the session.
    """
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_backend_factory(
    redis_server: RedisServer, event_loop_for_sync: asyncio.AbstractEventLoop
) -> Iterator[Callable[[str], Any]]:
    """``factory(frontend)`` -> a Redis backend on the suite's server, with a fresh prefix each call.

    ``"sync"`` gives a `RedisBackend`, ``"async"`` an `AsyncRedisBackend` whose client is closed
    after the test on ``event_loop_for_sync`` (the loop the conformance suite drives it with).
    """
    sync_client = redis_server.client()
    async_backends: list[AsyncRedisBackend] = []

    def factory(frontend: str) -> RedisBackend | AsyncRedisBackend:
        prefix = f"t{uuid.uuid4().hex[:12]}:"
        if frontend == "sync":
            return RedisBackend(sync_client, prefix=prefix)
        if frontend == "async":
            backend = AsyncRedisBackend.from_url(redis_server.url, prefix=prefix)
            async_backends.append(backend)
            return backend
        raise ValueError(f"unknown front end {frontend!r}")

    yield factory
    sync_client.close()
    for backend in async_backends:
        event_loop_for_sync.run_until_complete(backend.aclose())


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Helper processes a test starts (tests/workers.py); killed and closed after it."""
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Any:
    """A fresh sync bucket store: in memory, or on the suite's private Redis server."""
    if request.param == "memory":
        return MemoryBackend()
    return request.getfixturevalue("redis_backend_factory")("sync")
