"""Lease locks on a real, private redis-server, with holders in real processes.

Crashes are real: a holder process is SIGKILLed, SIGSTOPped past its TTL, or
hangs with its heartbeat thread alive; the server is restarted under a holder.
TTLs are 1-2 s; the only timing assertions are the bounds "freed within TTL
(plus slack)" that the feature promises.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_servers import RedisClusterServers, RedisServer, keys_without_ttl
from workers import Worker

from tokenbucket import (
    AsyncLeaseLock,
    AsyncRedisBackend,
    Lease,
    LeaseError,
    LeaseLock,
    LeaseLost,
    NotAcquired,
    RedisBackend,
)
from tokenbucket.backends import AsyncLeaseBackend, LeaseBackend

pytestmark = pytest.mark.redis

WORKER = str(Path(__file__).with_name("lease_worker.py"))
SLACK = 0.75
"""Seconds allowed beyond a TTL for process start-up noise on a loaded machine."""


@pytest.fixture
def backend(redis_server: RedisServer, redis_prefix: str) -> Iterator[RedisBackend]:
    b = RedisBackend.from_url(redis_server.url, prefix=redis_prefix)
    yield b
    b.close()


def all_keys_expire(client: redis.Redis, prefix: str) -> list[tuple[bytes, int]]:
    keys = [(key, client.pttl(key)) for key in client.scan_iter(match="{" + prefix + "*")]
    assert all(ttl > 0 for _, ttl in keys), keys
    return keys


def restart(server: RedisServer, backend: RedisBackend) -> None:
    """Restart the server, empty, on the same port.

    The client's idle sockets are closed first: the fixture checks the port is
    free by binding it without SO_REUSEADDR, which a half-closed connection
    of the killed server would block.
    """
    backend.client.connection_pool.disconnect()  # type: ignore[union-attr]
    server.restart()


def lease_worker(mode: str, url: str, prefix: str, name: str, ttl: float, *extra: str) -> Worker:
    """A lease holder in another process (tests/lease_worker.py)."""
    return Worker(WORKER, mode, url, prefix, name, str(ttl), *extra)


# ------------------------------------------------------------------ the store operations


class TestRedisLeaseStore:
    def test_operations_are_token_checked_and_every_key_expires(
        self, backend: RedisBackend, redis_client: redis.Redis, redis_prefix: str
    ) -> None:
        assert isinstance(backend, LeaseBackend)
        lock = LeaseLock("backfill", ttl=5, backend=backend, heartbeat=False, task="backfill")
        lease = lock.acquire()
        keys = dict(all_keys_expire(redis_client, redis_prefix))
        lease_key = f"{{{redis_prefix}lease:backfill}}:lease".encode()
        assert set(keys) == {lease_key, f"{{{redis_prefix}lease:backfill}}:fence".encode()}
        assert keys[lease_key] <= 5000

        with pytest.raises(NotAcquired, match=r"held by .* pid \d+ task=backfill since \d\d:\d\d:\d\d, expires in"):
            LeaseLock("backfill", ttl=5, backend=backend).acquire(blocking=False)
        refused, holder = backend.lease_renew("backfill", "not-the-token", 5)
        assert not refused
        assert holder is not None
        assert holder.fence == lease.fence
        assert backend.lease_release("backfill", "not-the-token") is False
        assert lease.renew() is True
        info = lock.inspect()
        assert info is not None
        assert info.renewals == 1
        assert info.fence == lease.fence
        assert [i.name for i in backend.lease_list()] == ["backfill"]

        assert lease.release() is True
        assert lock.inspect() is None
        assert backend.lease_list() == []
        all_keys_expire(redis_client, redis_prefix)  # the fence counter and the wake-up signal
        second = lock.acquire()
        assert second.fence == lease.fence + 1
        second.release()

    def test_renew_never_recreates_a_deleted_lease(
        self, backend: RedisBackend, redis_client: redis.Redis, redis_prefix: str
    ) -> None:
        lease = LeaseLock("job", ttl=5, backend=backend, heartbeat=False).acquire()
        redis_client.delete(backend.lease_keys("job")[0])
        with pytest.raises(LeaseLost, match="gone from the store"):
            lease.renew()
        assert backend.lease_inspect("job") is None

    def test_break_checks_the_fence(self, backend: RedisBackend) -> None:
        lock = LeaseLock("job", ttl=5, backend=backend, heartbeat=False)
        lease = lock.acquire()
        with pytest.raises(LeaseError, match="nothing was broken"):
            lock.break_lease(lease.fence - 1)
        assert lock.break_lease(lease.fence).fence == lease.fence
        with pytest.raises(LeaseLost):
            lease.renew()

    def test_fences_keep_growing_across_a_restart(self, private_redis_server: RedisServer) -> None:
        backend = RedisBackend.from_url(private_redis_server.url)
        try:
            before = LeaseLock("job", ttl=5, backend=backend, heartbeat=False).acquire().fence
            restart(private_redis_server, backend)
            after = LeaseLock("job", ttl=5, backend=backend, heartbeat=False).acquire().fence
            assert after > before
        finally:
            backend.close()

    def test_a_waiter_is_woken_by_the_release(self, backend: RedisBackend) -> None:
        holder = LeaseLock("job", ttl=60, backend=backend).acquire()
        got: list[Lease] = []
        waiter = threading.Thread(
            target=lambda: got.append(LeaseLock("job", ttl=5, backend=backend).acquire(timeout=20))
        )
        waiter.start()
        time.sleep(0.2)  # let it block in BLPOP
        holder.release()
        waiter.join(30)
        assert got
        assert got[0].fence == holder.fence + 1
        got[0].release()

    @pytest.mark.asyncio
    async def test_async_backend(self, redis_server: RedisServer, redis_prefix: str) -> None:
        backend = AsyncRedisBackend.from_url(redis_server.url, prefix=redis_prefix)
        try:
            assert isinstance(backend, AsyncLeaseBackend)
            lock = AsyncLeaseLock("job", ttl=60, backend=backend)
            holder = await lock.acquire()
            with pytest.raises(NotAcquired, match="task="):
                await lock.acquire(blocking=False)
            waiter = asyncio.create_task(AsyncLeaseLock("job", ttl=5, backend=backend).acquire(timeout=20))
            await asyncio.sleep(0.2)
            assert await holder.release() is True
            lease = await asyncio.wait_for(waiter, 30)
            assert lease.fence == holder.fence + 1
            assert [i.fence for i in await backend.lease_list()] == [lease.fence]
            assert (await lock.break_lease(lease.fence)).fence == lease.fence
            with pytest.raises(LeaseLost):
                await lease.renew()
        finally:
            await backend.aclose()


def test_leases_on_a_cluster(redis_cluster: RedisClusterServers, redis_prefix: str) -> None:
    client = redis_cluster.client()
    try:
        backend = RedisBackend(client, prefix=redis_prefix)
        names = [f"job-{i}" for i in range(8)]
        assert len({client.get_node_from_key(backend.lease_keys(n)[0]).port for n in names}) > 1
        for name in names:
            assert len({client.keyslot(k) for k in backend.lease_keys(name)}) == 1  # one hash tag
        leases = [LeaseLock(n, ttl=30, backend=backend, heartbeat=False).acquire() for n in names]
        assert [i.name for i in backend.lease_list()] == names  # SCAN on every master
        assert all(lease.renew() for lease in leases)
        assert all(lease.release() for lease in leases)
        assert backend.lease_list() == []
        assert keys_without_ttl(client, f"{{{redis_prefix}*") == []
    finally:
        client.close()


def test_async_lease_list_on_a_cluster_scans_every_master(
    redis_cluster: RedisClusterServers, redis_prefix: str
) -> None:
    async def scenario() -> list[str]:
        backend = AsyncRedisBackend.from_url(redis_cluster.url, cluster=True, prefix=redis_prefix)
        try:
            names = [f"job-{i}" for i in range(8)]
            leases = [await AsyncLeaseLock(n, ttl=30, backend=backend, heartbeat=False).acquire() for n in names]
            listed = [info.name for info in await backend.lease_list()]
            for lease in leases:
                await lease.release()
            return listed
        finally:
            await backend.aclose()

    client = redis_cluster.client()
    try:
        keys = RedisBackend(client, prefix=redis_prefix)
        ports = {client.get_node_from_key(keys.lease_keys(f"job-{i}")[0]).port for i in range(8)}
    finally:
        client.close()
    assert len(ports) == 3  # the names land on every master
    assert asyncio.run(scenario()) == [f"job-{i}" for i in range(8)]


# ------------------------------------------------------------------ crashed, paused and hung holders


@pytest.mark.realtime
class TestHolderFailures:
    def test_killed_holder_frees_the_lease_within_ttl(
        self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str, workers: list[Worker]
    ) -> None:
        ttl = 1.5
        worker = lease_worker("hold", redis_server.url, redis_prefix, "backfill", ttl)
        workers.append(worker)
        fence = worker.read()["fence"]
        time.sleep(ttl)  # it renews: still held past one TTL
        with pytest.raises(NotAcquired, match="task=hold"):
            LeaseLock("backfill", ttl=ttl, backend=backend).acquire(blocking=False)
        worker.signal(signal.SIGKILL)
        killed = time.monotonic()
        lease = LeaseLock("backfill", ttl=ttl, backend=backend).acquire(timeout=10)
        assert time.monotonic() - killed <= ttl + SLACK
        assert lease.fence > fence
        lease.release()

    def test_paused_holder_learns_it_lost_and_its_write_is_refused(
        self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str, workers: list[Worker], tmp_path: Path
    ) -> None:
        ttl = 1.0
        db = tmp_path / "deals.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE deals (writer TEXT)")
        conn.commit()
        worker = lease_worker("stale", redis_server.url, redis_prefix, "backfill", ttl, str(db))
        workers.append(worker)
        old_fence = worker.read()["fence"]
        worker.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        lease = LeaseLock("backfill", ttl=5, backend=backend).acquire(timeout=10)
        assert time.monotonic() - stopped <= ttl + SLACK
        assert lease.fence > old_fence
        from tokenbucket.fencing import fenced_execute

        fenced_execute(conn, "deals", lease.fence, "INSERT INTO deals (writer) VALUES (?)", ("new holder",))
        worker.signal(signal.SIGCONT)
        worker.send("go\n")
        report = worker.read()
        assert report["ensure_held"].startswith("LeaseLost")
        assert report["write"].startswith(f"refused: write to 'deals' refused: fence {old_fence} is stale")
        assert conn.execute("SELECT writer FROM deals").fetchall() == [("new holder",)]
        lease.ensure_held()  # the paused holder's return did not disturb the new one
        lease.release()

    def test_hung_holder_with_require_beat_frees_the_lease_within_ttl(
        self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str, workers: list[Worker]
    ) -> None:
        ttl = 1.5
        worker = lease_worker("hang", redis_server.url, redis_prefix, "backfill", ttl)
        workers.append(worker)
        fence = worker.read()["fence"]
        acquired = time.monotonic()
        lease = LeaseLock("backfill", ttl=ttl, backend=backend).acquire(timeout=10)
        assert time.monotonic() - acquired <= ttl + SLACK
        assert worker.proc.poll() is None  # the hung process is still alive, its heartbeat thread too
        assert lease.fence > fence
        lease.release()

    @pytest.mark.parametrize("fault", ["key deleted", "redis restarted", "redis down"])
    def test_holder_reaches_lost_within_ttl(self, private_redis_server: RedisServer, fault: str) -> None:
        ttl = 1.5
        backend = RedisBackend.from_url(private_redis_server.url, socket_timeout=1.0, connect_timeout=0.5)
        lost = threading.Event()
        try:
            lease = LeaseLock("backfill", ttl=ttl, backend=backend, on_lost=lambda _: lost.set()).acquire()
            started = time.monotonic()
            if fault == "key deleted":
                client = private_redis_server.client()
                client.delete(backend.lease_keys("backfill")[0])
                client.close()
            elif fault == "redis restarted":
                restart(private_redis_server, backend)
            else:
                private_redis_server.kill()
            assert lost.wait(ttl + SLACK + (time.monotonic() - started))
            assert lease.state == "lost"
            with pytest.raises(LeaseLost):
                lease.ensure_held()
            if fault == "redis down":
                assert "while renewals were failing" in lease.lost_reason  # it was suspended first
            else:
                assert backend.lease_inspect("backfill") is None  # never re-acquired behind the holder's back
        finally:
            backend.close()

    @pytest.mark.asyncio
    async def test_async_holder_is_cancelled_when_the_key_is_deleted(
        self, redis_server: RedisServer, redis_prefix: str
    ) -> None:
        backend = AsyncRedisBackend.from_url(redis_server.url, prefix=redis_prefix)
        client = redis_server.client()
        try:
            lock = AsyncLeaseLock("backfill", ttl=1.0, backend=backend, cancel_on_lost=True)
            leases: list[Any] = []

            async def body() -> None:
                async with lock as lease:
                    leases.append(lease)
                    client.delete(backend.lease_keys("backfill")[0])
                    await asyncio.sleep(10)

            with pytest.raises(LeaseLost, match="gone from the store"):
                await body()
            assert leases[0].state == "lost"
        finally:
            client.close()
            await backend.aclose()


@pytest.mark.realtime
def test_contending_processes_never_overlap(
    redis_server: RedisServer, redis_prefix: str, workers: list[Worker], tmp_path: Path
) -> None:
    processes, rounds = 4, 6
    ledger = tmp_path / "ledger.txt"
    for _ in range(processes):
        workers.append(lease_worker("contend", redis_server.url, redis_prefix, "shared", 2.0, str(rounds), str(ledger)))
    for worker in workers:
        assert worker.read() == {"done": rounds}
    lines = [line.split() for line in ledger.read_text().splitlines()]
    assert len(lines) == 2 * processes * rounds
    fences = []
    for start, end in zip(lines[::2], lines[1::2], strict=True):
        assert start[0] == "start"
        assert end[0] == "end"
        assert start[1:] == end[1:]  # the same process and acquisition, nobody in between
        fences.append(int(start[2]))
    assert fences == sorted(fences)
    assert len(set(fences)) == len(fences)
