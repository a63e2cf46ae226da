"""Replies that never come: a retry charges once, a timeout bounds the call, a lost reserve is given back.

Real faults on a private redis-server: a TCP proxy between client and server drops the reply of a script
call (the script ran; the client never hears of it), and a SIGSTOPped server answers nothing at all.
Balances are read on a direct connection, never through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_servers import RedisServer

from tokenbucket import AcquireTimeout, AsyncTokenBucket, BackendError, RedisBackend, TokenBucket
from tokenbucket.backends import AsyncRedisBackend

pytestmark = [pytest.mark.redis, pytest.mark.realtime]

SLOW = "1/hour"  # so refill does not blur what was charged and given back


class DroppingProxy:
    """A TCP proxy to Redis that can drop the reply of the next script call and then refuse connections.

    ``drop(command)`` arms it: the next request containing ``command`` (``b"EVALSHA"``) is forwarded, its
    reply is swallowed and that connection closed. With ``refuse_for`` seconds, new connections are
    closed at once for that long after the drop (so the client's own retry fails too).
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed: bytes | None = None
        self._refuse_for = 0.0
        self._refuse_until = 0.0
        self.dropped = 0
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def drop(self, command: bytes = b"EVALSHA", *, refuse_for: float = 0.0) -> None:
        with self._lock:
            self._armed, self._refuse_for = command, refuse_for

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target))
            doomed = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, doomed), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, doomed), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, doomed: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self._armed is not None and self._armed in data.upper():
                        self._armed = None
                        doomed.set()
                upstream.sendall(data)
        except OSError:
            pass

    def _down(self, upstream: socket.socket, client: socket.socket, doomed: threading.Event) -> None:
        try:
            while data := upstream.recv(65536):
                if doomed.is_set():  # the script ran; its reply never reaches the client
                    with self._lock:
                        self.dropped += 1
                        self._refuse_until = time.monotonic() + self._refuse_for
                    break
                client.sendall(data)
        except OSError:
            pass
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def proxy(private_redis_server: RedisServer) -> Iterator[DroppingProxy]:
    p = DroppingProxy(private_redis_server.port)
    yield p
    p.close()


@pytest.fixture
def direct(private_redis_server: RedisServer) -> Iterator[RedisBackend]:
    """A backend that talks to the server itself; it also loads the scripts, so the proxied call is one EVALSHA."""
    backend = RedisBackend.from_url(private_redis_server.url, prefix="lost:")
    warm = TokenBucket("warm-up", SLOW, capacity=10, backend=backend)
    warm.acquire(1).settle(1)
    yield backend
    backend.close()


def balance(direct: RedisBackend, name: str, **policy: Any) -> Any:
    return TokenBucket(name, SLOW, capacity=10, backend=direct, **policy).snapshot()


def eventually(check: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_reserve_retried_after_its_reply_was_dropped_is_charged_once(
    proxy: DroppingProxy, direct: RedisBackend
) -> None:
    with RedisBackend.from_url(proxy.url, prefix="lost:") as backend:  # retries once on a dropped connection
        bucket = TokenBucket("once", SLOW, capacity=10, backend=backend)
        proxy.drop()
        grant = bucket.acquire(4)
        assert proxy.dropped == 1  # the script ran and its reply was lost: the retry answered
        assert balance(direct, "once").tokens == pytest.approx(6, abs=0.01)  # 10 - 4, not 10 - 8
        proxy.drop()
        grant.settle(7)  # 3 more than charged
        assert proxy.dropped == 2
        assert balance(direct, "once").tokens == pytest.approx(3, abs=0.01)  # settled once, not twice


def test_a_reserve_whose_reply_never_came_is_given_back(proxy: DroppingProxy, direct: RedisBackend) -> None:
    with RedisBackend.from_url(proxy.url, prefix="lost:") as backend:
        bucket = TokenBucket("given-back", SLOW, capacity=10, backend=backend)
        proxy.drop(refuse_for=1.0)  # the reply is lost and the retry cannot connect
        with pytest.raises(BackendError):
            bucket.acquire(4)
        assert balance(direct, "given-back").tokens == pytest.approx(6, abs=0.01)  # it ran: charged
        # Once Redis answers again the backend gives the tokens back by itself.
        assert eventually(lambda: balance(direct, "given-back").tokens > 9.99)


def test_a_lost_reservation_that_waits_is_cancelled(proxy: DroppingProxy, direct: RedisBackend) -> None:
    TokenBucket("queued", SLOW, capacity=10, backend=direct).acquire(10)  # drained: the next one waits
    with RedisBackend.from_url(proxy.url, prefix="lost:") as backend:
        bucket = TokenBucket("queued", SLOW, capacity=10, backend=backend)
        proxy.drop(refuse_for=1.0)
        with pytest.raises(BackendError):
            bucket.reserve(5)
        assert balance(direct, "queued").promised == 5
        assert eventually(lambda: balance(direct, "queued").promised == 0)
        assert balance(direct, "queued").tokens == pytest.approx(0, abs=0.01)


@pytest.mark.parametrize("frontend", ["sync", "async"])
def test_a_stalled_server_cannot_stretch_a_timeout(
    private_redis_server: RedisServer, direct: RedisBackend, frontend: str
) -> None:
    pid = private_redis_server.pid
    assert pid is not None
    url = private_redis_server.url

    def run_sync() -> float:
        with RedisBackend.from_url(url, prefix="lost:", socket_timeout=5) as backend:
            bucket = TokenBucket("stalled", SLOW, capacity=10, backend=backend)
            bucket.snapshot()
            os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            try:
                with pytest.raises(AcquireTimeout):
                    bucket.acquire(5, timeout=1)
                return time.monotonic() - started
            finally:
                os.kill(pid, signal.SIGCONT)
                assert eventually(lambda: balance(direct, "stalled").tokens > 9.99)  # never charged, or given back

    async def run_async() -> float:
        backend = AsyncRedisBackend.from_url(url, prefix="lost:", socket_timeout=5)
        try:
            bucket = AsyncTokenBucket("stalled", SLOW, capacity=10, backend=backend)
            await bucket.snapshot()
            os.kill(pid, signal.SIGSTOP)
            started = time.monotonic()
            try:
                with pytest.raises(AcquireTimeout):
                    await bucket.acquire(5, timeout=1)
                return time.monotonic() - started
            finally:
                os.kill(pid, signal.SIGCONT)
                for _ in range(200):  # the give-back runs on this loop
                    if (await bucket.snapshot()).tokens > 9.99:
                        break
                    await asyncio.sleep(0.05)
                assert (await bucket.snapshot()).tokens > 9.99
        finally:
            await backend.aclose()

    elapsed = run_sync() if frontend == "sync" else asyncio.run(run_async())
    print(f"{frontend}: acquire(timeout=1) on a SIGSTOPped server raised AcquireTimeout after {elapsed:.3f} s")
    assert elapsed < 1.5, f"acquire(timeout=1) took {elapsed:.2f} s on a stalled server"  # the socket's 5 s never


def test_the_give_back_never_runs_twice(proxy: DroppingProxy, direct: RedisBackend) -> None:
    """A claim is taken once: a second give-back of the same record refunds nothing."""
    with RedisBackend.from_url(proxy.url, prefix="lost:") as backend:
        bucket = TokenBucket("twice", SLOW, capacity=10, backend=backend)
        proxy.drop(refuse_for=0.5)
        with pytest.raises(BackendError):
            bucket.acquire(4)
        lost = list(backend._lost)
        assert eventually(lambda: balance(direct, "twice").tokens > 9.99)
        TokenBucket("twice", SLOW, capacity=10, backend=direct).acquire(3)
        for item in lost:
            backend._give_back(item)  # again: already claimed
        assert balance(direct, "twice").tokens == pytest.approx(7, abs=0.01)


def test_a_call_that_never_connected_has_nothing_to_give_back() -> None:
    from redis_servers import free_port

    with RedisBackend.from_url(f"redis://127.0.0.1:{free_port()}/0", on_unavailable="deny", connect_timeout=0.5) as b:
        bucket = TokenBucket("down", SLOW, capacity=10, backend=b)
        assert bucket.try_acquire(1) is None  # refused: Redis is not there
        assert b._lost == []  # the call never reached a server: no give-back to chase


def test_the_lost_reserves_kept_are_bounded(direct: RedisBackend) -> None:
    from tokenbucket.backends._redis import _LOST_LIMIT, _Lost

    policy = TokenBucket("bounded", SLOW, capacity=10, backend=direct).policy
    for i in range(_LOST_LIMIT + 5):
        direct._keep_lost(_Lost("bounded", policy, i.to_bytes(8, "little"), 1.0, None, 0.0))
    assert len(direct._lost) == _LOST_LIMIT
    assert direct._lost[0].call == (5).to_bytes(8, "little")  # the oldest were forgotten
    direct._lost.clear()
