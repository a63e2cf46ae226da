"""`RedisBackend` and `AsyncRedisBackend`: keys, TTLs, lost state, errors, one command per operation, cluster."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.crc import key_slot
from redis_servers import RedisClusterServers, RedisServer, free_port, keys_without_ttl

from tokenbucket import (
    AsyncRedisBackend,
    AsyncTokenBucket,
    BackendError,
    ConfigurationError,
    CostExceedsCapacity,
    RedisBackend,
    TokenBucket,
)
from tokenbucket.backends import Policy
from tokenbucket.backends._redis import lua_source, parse_state
from tokenbucket.testing import ManualClock

pytestmark = pytest.mark.redis


@pytest.fixture
def backend(redis_client: redis.Redis, redis_prefix: str) -> RedisBackend:
    return RedisBackend(redis_client, prefix=redis_prefix)


def keepa(backend: Any, clock: ManualClock, name: str = "keepa", **kw: Any) -> TokenBucket:
    kw.setdefault("capacity", 300)
    kw.setdefault("overdraft", math.inf)
    return TokenBucket(name, "5/minute", backend=backend, clock=clock, **kw)


# ------------------------------------------------------------------ packaging and construction


def test_importing_tokenbucket_does_not_import_redis() -> None:
    code = "import sys, tokenbucket; assert 'redis' not in sys.modules, sorted(m for m in sys.modules if 'redis' in m)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scripts_are_package_data_with_headers() -> None:
    for op in ("reserve", "cancel", "settle", "sync", "snapshot", "reconfigure", "void"):
        text = lua_source(f"bucket_{op}")
        flag, text = text.split("\n", 1)
        writes = "false" if op == "snapshot" else "true"  # only snapshot merely reads
        adopt = "true" if op == "reconfigure" else "false"  # only reconfigure replaces the policy
        # the two that are not idempotent; a reserve carries one call id per request it reserves for
        records = {"reserve": "'each'", "settle": "'settle'"}.get(op, "false")
        refunds = "true" if op in ("cancel", "settle", "void") else "false"  # the ones that give tokens back
        assert flag == f"local WRITES, ADOPT, RECORDS, REFUNDS = {writes}, {adopt}, {records}, {refunds}"
        assert text.startswith("-- tokenbucket: the bucket arithmetic")  # then the shared prelude
        body = text.split("-- bucket_" + op + ":", 1)[1]
        assert "Reply:" in body


def test_exported_from_both_packages() -> None:
    import tokenbucket
    import tokenbucket.backends

    assert tokenbucket.RedisBackend is tokenbucket.backends.RedisBackend is RedisBackend
    assert tokenbucket.AsyncRedisBackend is tokenbucket.backends.AsyncRedisBackend is AsyncRedisBackend
    assert RedisBackend.server_clock is True


def test_bad_configuration_is_refused(redis_client: redis.Redis) -> None:
    with pytest.raises(ConfigurationError, match="braces"):
        RedisBackend(redis_client, prefix="{tb}:")
    with pytest.raises(ConfigurationError, match="on_unavailable"):
        RedisBackend(redis_client, on_unavailable="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="idle_ttl"):
        RedisBackend(redis_client, idle_ttl=-1)
    with pytest.raises(TypeError, match="prefix"):
        RedisBackend(redis_client, prefix=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncRedisBackend"):
        RedisBackend(redis.asyncio.Redis())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RedisBackend"):
        AsyncRedisBackend(redis_client)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"redis\.Redis"):
        RedisBackend(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="socket_timeout"):
        RedisBackend.from_url("redis://127.0.0.1:1/0", socket_timeout=0)
    with pytest.raises(ConfigurationError, match="empty hash tag"):
        RedisBackend(redis_client, prefix="").bucket_keys("}x")


def test_from_url_makes_a_client_that_it_closes(redis_url: str, redis_prefix: str) -> None:
    with RedisBackend.from_url(redis_url, prefix=redis_prefix) as backend:
        bucket = TokenBucket("a", "10/minute", backend=backend, clock=ManualClock())
        assert bucket.try_acquire(10) is not None
        assert bucket.try_acquire(1) is None
        pool = backend.client.connection_pool
        assert pool.connection_kwargs["socket_connect_timeout"] == 2.0
        assert isinstance(pool, redis.BlockingConnectionPool)  # busy callers wait for a connection
        assert pool.max_connections == 100
        assert pool._connections  # the bucket calls above used one
    assert all(conn._sock is None for conn in pool._connections)  # closed with the backend
    assert repr(backend) == f"RedisBackend({redis_url}, prefix={redis_prefix!r})"


# ------------------------------------------------------------------ keys and TTLs


def test_keys_share_one_hash_tag_and_all_expire(backend: RedisBackend, redis_client: redis.Redis) -> None:
    clock = ManualClock(1000)
    bucket = keepa(backend, clock)
    bucket.acquire(300)
    waiting = bucket.reserve(20)  # has to wait: a queue entry
    keys = backend.bucket_keys("keepa")
    assert keys == tuple(f"{{{backend.prefix}keepa}}:{part}" for part in ("bucket", "queue", "costs"))
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert all(redis_client.exists(k) for k in keys)
    ttls = [redis_client.pttl(k) for k in keys]
    # 320 tokens to refill at 5/minute (3840 s) plus the 60 s idle_ttl, plus at most 60 s of slack; all alike
    assert all(3900 * 1000 - 2000 < ttl <= 3960 * 1000 for ttl in ttls), ttls
    assert max(ttls) - min(ttls) < 1000
    assert waiting.cancel() == 20
    assert not redis_client.exists(keys[1], keys[2])  # an empty queue leaves no key
    assert keys_without_ttl(redis_client, f"{{{backend.prefix}*") == []


def test_full_bucket_keeps_only_idle_ttl(redis_client: redis.Redis, redis_prefix: str) -> None:
    backend = RedisBackend(redis_client, prefix=redis_prefix, idle_ttl=0)
    bucket = TokenBucket("idle", "10/second", backend=backend, clock=ManualClock())
    bucket.acquire(0)
    assert 0 < redis_client.pttl(backend.bucket_keys("idle")[0]) <= 2000  # the one-second minimum, and slack


def test_huge_debt_gets_a_finite_ttl(backend: RedisBackend, redis_client: redis.Redis) -> None:
    bucket = keepa(backend, ManualClock())
    bucket.acquire(1).settle(1e15)  # the largest settle allowed (tokenbucket._validate.MAX_AMOUNT)
    assert bucket.snapshot().debt > 9e14
    month = 30 * 86400 * 1000
    assert month < redis_client.pttl(backend.bucket_keys("keepa")[0]) <= month + 60_000  # 30 days + idle_ttl


def test_a_reservation_far_ahead_keeps_its_queue_for_at_most_30_days(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    bucket = keepa(backend, ManualClock())
    bucket.sync(-1e9)  # a billion tokens of debt: 380 years at 5 a minute
    waiting = bucket.reserve(10)
    assert waiting.delay > 1e10
    month = 30 * 86400 * 1000
    for key in backend.bucket_keys("keepa"):
        assert month < redis_client.pttl(key) <= month + 60_000


def test_many_waiters_are_forgotten_once_started(backend: RedisBackend, redis_client: redis.Redis) -> None:
    clock = ManualClock()
    bucket = TokenBucket("q", "100/second", capacity=1, backend=backend, clock=clock)
    reservations = [bucket.reserve(1) for _ in range(3000)]
    assert bucket.snapshot().promised == 2999
    assert redis_client.zcard(backend.bucket_keys("q")[1]) == 2999
    clock.advance(15)  # half of them started
    assert bucket.snapshot().promised == 1499
    assert reservations[1].cancel() == 0  # started: nothing to refund
    assert reservations[-1].cancel() == 1
    assert redis_client.zcard(backend.bucket_keys("q")[1]) == 1498
    clock.advance(100)
    assert bucket.snapshot().promised == 0
    assert redis_client.zcard(backend.bucket_keys("q")[1]) == 1498  # a snapshot writes nothing
    assert bucket.try_acquire(1) is not None  # a writer forgets what has started
    assert not redis_client.exists(*backend.bucket_keys("q")[1:])


def test_a_snapshot_of_an_unknown_bucket_creates_nothing(backend: RedisBackend, redis_client: redis.Redis) -> None:
    bucket = TokenBucket("never", "5/minute", backend=backend, clock=ManualClock())
    assert bucket.snapshot().tokens == 5
    assert not redis_client.exists(*backend.bucket_keys("never"))


# ------------------------------------------------------------------ lost state


def test_lost_state_is_recreated_per_initial_and_sync_corrects_it(
    backend: RedisBackend, redis_client: redis.Redis
) -> None:
    clock = ManualClock(50)
    bucket = keepa(backend, clock, initial=0)
    assert bucket.snapshot().tokens == 0
    bucket.sync(250)
    assert bucket.snapshot().tokens == 250
    redis_client.delete(*backend.bucket_keys("keepa"))  # evicted
    assert bucket.snapshot().tokens == 0  # conservative: recreated empty
    assert bucket.try_acquire(1) is None
    assert bucket.sync(120).tokens == 120  # the upstream's word wins
    full = keepa(backend, clock, name="full")
    full.acquire(200)
    redis_client.delete(*backend.bucket_keys("full"))
    assert full.snapshot().tokens == 300  # default initial = capacity: recreated full


def test_reservation_ids_are_not_reused_after_a_loss(backend: RedisBackend, redis_client: redis.Redis) -> None:
    policy = Policy.build("1/second", 1)
    first = backend.reserve("ids", policy, 1, None, 10.0)
    second = backend.reserve("ids", policy, 1, None, 10.0)
    assert first[2] is None
    assert second[1] == 1.0
    assert second[2] is not None
    redis_client.delete(*backend.bucket_keys("ids"))
    backend.reserve("ids", policy, 1, None, 10.0)
    third = backend.reserve("ids", policy, 1, None, 10.0)
    assert third[2] is not None
    assert third[2] != second[2]
    assert backend.cancel("ids", policy, second[2], 10.0) == 0  # the old id refunds nothing
    assert backend.cancel("ids", policy, third[2], 10.0) == 1


def test_scripts_are_reloaded_after_script_flush(backend: RedisBackend, redis_client: redis.Redis) -> None:
    bucket = keepa(backend, ManualClock())
    bucket.acquire(5)
    redis_client.script_flush()
    assert bucket.snapshot().tokens == 295
    bucket.acquire(5).settle(6)
    assert bucket.snapshot().tokens == 289


def test_decode_responses_client_works(redis_server: RedisServer, redis_prefix: str) -> None:
    client = redis_server.client(decode_responses=True)
    try:
        bucket = keepa(RedisBackend(client, prefix=redis_prefix), ManualClock())
        bucket.acquire(300)
        res = bucket.reserve(10)
        assert res.delay == 12  # overdraft: one token to start, at 5/minute
        assert res.cancel() == 10
        assert bucket.sync(-5).debt == 5
    finally:
        client.close()


def test_server_clock_is_used_without_a_clock(backend: RedisBackend, redis_client: redis.Redis) -> None:
    bucket = TokenBucket("srv", "10/minute", backend=backend)
    assert [bucket.try_acquire() is not None for _ in range(11)] == [True] * 10 + [False]
    sec, usec = redis_client.time()
    state = parse_state(redis_client.get(backend.bucket_keys("srv")[0]))
    assert state is not None
    assert state["epoch"] == 1_780_000_000  # server times count from the scripts' epoch
    updated = state["epoch"] + state["updated"]
    assert abs(updated - (sec + usec / 1e6)) < 60  # stamped with Redis TIME, not the monotonic clock


def test_cost_beyond_capacity_costs_no_round_trip(backend: RedisBackend, redis_client: redis.Redis) -> None:
    bucket = TokenBucket("big", "5/minute", capacity=10, backend=backend, clock=ManualClock())
    with pytest.raises(CostExceedsCapacity):
        bucket.acquire(11)
    assert not redis_client.exists(*backend.bucket_keys("big"))


# ------------------------------------------------------------------ errors


def test_errors_name_the_operation_and_server_without_the_password() -> None:
    port = free_port()
    backend = RedisBackend.from_url(f"redis://alice:s3cret@127.0.0.1:{port}/2")
    bucket = TokenBucket("keepa", "5/minute", backend=backend, clock=ManualClock())
    with pytest.raises(BackendError) as info:
        bucket.acquire(1)
    message = str(info.value)
    assert "reserve on 'keepa'" in message
    assert f"redis://alice:***@127.0.0.1:{port}/2" in message
    assert "s3cret" not in message
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    for call in (bucket.snapshot, lambda: bucket.sync(3)):
        with pytest.raises(BackendError, match=r"127\.0\.0\.1"):
            call()
    backend.close()


def test_a_server_error_is_a_backend_error_even_when_allowing(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    backend = RedisBackend(redis_client, prefix=redis_prefix, on_unavailable="allow")
    redis_client.set(backend.bucket_keys("wrong")[0], "not a bucket", ex=60)
    bucket = TokenBucket("wrong", "5/minute", backend=backend, clock=ManualClock())
    with pytest.raises(BackendError, match="reserve on 'wrong'") as info:
        bucket.try_acquire()
    assert isinstance(info.value.__cause__, redis.ResponseError)
    assert "does not hold the state of a bucket" in str(info.value)
    assert redis_client.get(backend.bucket_keys("wrong")[0]) == b"not a bucket"  # never overwritten


# ------------------------------------------------------------------ one command per operation


class Monitor:
    """Records the commands clients send to a server (MONITOR), leaving out those scripts run."""

    def __init__(self, server: RedisServer) -> None:
        self._client = server.client()
        self._poke = server.client()
        self._mark = f"mark-{uuid.uuid4().hex}"
        self._poke.ping()  # connect now, so its handshake is not seen

    def __enter__(self) -> Monitor:
        self._monitor = self._client.monitor().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._monitor.__exit__(*exc)
        self._client.close()
        self._poke.close()

    def commands(self) -> list[str]:
        """The commands sent since the last call (MONITOR, ECHO and script internals left out)."""
        self._poke.echo(self._mark)
        seen = []
        while True:
            entry = self._monitor.next_command()
            if self._mark in entry["command"]:
                return seen
            if entry["client_type"] != "lua":
                seen.append(entry["command"].split()[0].upper())


def test_each_sync_operation_is_one_command(private_redis_server: RedisServer) -> None:
    backend = RedisBackend.from_url(private_redis_server.url)
    clock = ManualClock()
    bucket = keepa(backend, clock, capacity=10, overdraft=0)
    for warm in (True, False):  # the first round opens the connection and loads the scripts
        with Monitor(private_redis_server) as monitor:
            expect = (lambda: monitor.commands() is not None) if warm else (lambda: monitor.commands() == ["EVALSHA"])
            grant = bucket.try_acquire(4)
            assert grant is not None
            assert expect()
            assert bucket.try_acquire(7) is None
            assert expect()
            bucket.acquire(7)  # waits, in virtual time: still one command
            assert expect()
            reservation = bucket.reserve(3)
            assert expect()
            reservation.cancel()
            assert expect()
            grant.settle(5)
            assert expect()
            bucket.sync(2)
            assert expect()
            bucket.snapshot()
            assert expect()
        clock.advance(100)
    backend.close()


def test_each_async_operation_is_one_command(private_redis_server: RedisServer) -> None:
    async def main() -> list[list[str]]:
        rounds = []
        async with AsyncRedisBackend.from_url(private_redis_server.url) as backend:
            clock = ManualClock()
            bucket = AsyncTokenBucket("k", "5/minute", capacity=10, backend=backend, clock=clock)
            await bucket.snapshot()  # connect
            for _ in range(2):
                with Monitor(private_redis_server) as monitor:
                    seen = []
                    grant = await bucket.try_acquire(4)
                    assert grant is not None
                    seen += monitor.commands()
                    await bucket.acquire(7)
                    seen += monitor.commands()
                    reservation = await bucket.reserve(3)
                    await reservation.cancel()
                    seen += monitor.commands()
                    await grant.settle(5)
                    await bucket.sync(2)
                    await bucket.snapshot()
                    seen += monitor.commands()
                    rounds.append(seen)
                clock.advance(100)
        return rounds

    rounds = asyncio.run(main())
    assert rounds[1] == ["EVALSHA"] * 7


# ------------------------------------------------------------------ asyncio


def test_async_backend_on_the_async_front_end(redis_url: str, redis_prefix: str) -> None:
    async def main() -> None:
        async with AsyncRedisBackend.from_url(redis_url, prefix=redis_prefix) as backend:
            clock = ManualClock(autojump=False)
            bucket = AsyncTokenBucket(
                "keepa", "5/minute", capacity=300, overdraft=math.inf, backend=backend, clock=clock
            )
            await (await bucket.acquire(20)).settle(1000)
            task = asyncio.create_task(bucket.acquire(5))
            await asyncio.sleep(0.05)
            assert (await bucket.snapshot()).promised == 5
            task.cancel()  # a cancelled waiter refunds
            with pytest.raises(asyncio.CancelledError):
                await task
            snap = await bucket.snapshot()
            assert snap.promised == 0
            assert snap.tokens == 300 - 1000

    asyncio.run(main())


# ------------------------------------------------------------------ cluster


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServers) -> Iterator[redis.cluster.RedisCluster]:
    client = redis_cluster.client()
    yield client
    client.close()


def test_cluster_sync(cluster_client: redis.cluster.RedisCluster, redis_prefix: str) -> None:
    backend = RedisBackend(cluster_client, prefix=redis_prefix)
    names = [f"bucket-{i}" for i in range(12)]
    slots = {cluster_client.keyslot(backend.bucket_keys(n)[0]) for n in names}
    nodes = {cluster_client.get_node_from_key(backend.bucket_keys(n)[0]).port for n in names}
    assert len(slots) > 1
    assert len(nodes) > 1  # the buckets really are spread over the masters
    for name in names:
        clock = ManualClock()
        bucket = keepa(backend, clock, name=name, overdraft=0)
        bucket.acquire(300)
        assert bucket.reserve(10).delay == 120
        bucket.acquire(5)  # waits behind the reservation, in virtual time
        assert clock.now() == 180
    cluster_client.script_flush()  # every node forgets the scripts; the next call reloads them
    for name in names:
        bucket = keepa(backend, clock, name=name, overdraft=0)
        snap = bucket.snapshot()
        assert snap.promised == 0
        assert snap.tokens == pytest.approx(0, abs=1e-9)
        assert bucket.sync(100).tokens == 100
    for name in names:
        keys = backend.bucket_keys(name)
        assert len({cluster_client.keyslot(k) for k in keys}) == 1
    assert keys_without_ttl(cluster_client, f"{{{redis_prefix}*") == []


def test_cluster_async(redis_cluster: RedisClusterServers, redis_prefix: str) -> None:
    async def main() -> None:
        client = redis.asyncio.cluster.RedisCluster(host=redis_cluster.host, port=redis_cluster.ports[0])
        try:
            backend = AsyncRedisBackend(client, prefix=redis_prefix)
            clock = ManualClock()
            for i in range(6):
                bucket = AsyncTokenBucket(f"a{i}", "10/second", capacity=10, backend=backend, clock=clock)
                await bucket.acquire(10)
                before = clock.now()
                await bucket.acquire(5)
                assert clock.now() - before == pytest.approx(0.5)
                assert (await bucket.snapshot()).tokens == pytest.approx(0)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_cluster_from_url(redis_cluster: RedisClusterServers, redis_prefix: str) -> None:
    with RedisBackend.from_url(redis_cluster.url, prefix=redis_prefix, cluster=True) as backend:
        bucket = TokenBucket("u", "10/minute", backend=backend, clock=ManualClock())
        assert bucket.try_acquire(10) is not None
        assert bucket.try_acquire(1) is None
        assert "redis cluster" in repr(backend)


# ------------------------------------------------------------------ threads


def test_threads_share_one_bucket_fairly(backend: RedisBackend) -> None:
    """Many threads reserving at once: every token is accounted for, nothing is lost to races."""
    clock = ManualClock()
    bucket = TokenBucket("threads", "10/second", capacity=10, backend=backend, clock=clock)
    delays: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            res = bucket.reserve(1)
            with lock:
                delays.append(res.delay)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 200 tokens at 10/s with 10 in the bucket: the delays are exactly 0 (x10), 0.1, 0.2, ... 19.0
    assert sorted(round(d, 9) for d in delays) == [0.0] * 10 + [round(0.1 * i, 9) for i in range(1, 191)]


def test_async_cluster_from_url(redis_cluster: RedisClusterServers, redis_prefix: str) -> None:
    async def main() -> None:
        async with AsyncRedisBackend.from_url(redis_cluster.url, prefix=redis_prefix, cluster=True) as backend:
            assert isinstance(backend.client, redis.asyncio.cluster.RedisCluster)
            bucket = AsyncTokenBucket("u", "10/minute", backend=backend, clock=ManualClock())
            assert await bucket.try_acquire(10) is not None
            assert await bucket.try_acquire(1) is None

    asyncio.run(main())


def test_servers_are_named_without_secrets() -> None:
    from tokenbucket.backends._redis import describe_server

    unix = redis.Redis(unix_socket_path="/run/redis.sock", db=3, password="pw")
    tls = redis.Redis.from_url("rediss://bob:hunter2@cache.example:6380/1")
    anonymous = redis.Redis(host="h", port=1, password="pw")
    try:
        assert describe_server(unix) == "unix:///run/redis.sock?db=3"
        assert describe_server(tls) == "rediss://bob:***@cache.example:6380/1"
        assert describe_server(anonymous) == "redis://:***@h:1/0"
        assert describe_server(object()) == "a object"
    finally:
        for client in (unix, tls, anonymous):
            client.close()
