"""ConcurrencyLimit: at most N in flight, first come first served, no ghost slots.

The store contract is checked on MemoryBackend and a private Redis alike; the
front ends with threads, tasks and processes (a ledger of enter/exit times);
crashes are real (SIGKILL, SIGSTOP, a Redis restart).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_servers import RedisClusterServers, RedisServer
from workers import Worker

from tokenbucket import (
    AcquireTimeout,
    AsyncConcurrencyLimit,
    AsyncRedisBackend,
    AsyncTokenBucket,
    ConcurrencyLimit,
    ConfigurationError,
    LeaseError,
    LeaseLost,
    MemoryBackend,
    NotAcquired,
    RedisBackend,
    TokenBucket,
)
from tokenbucket._cli import main as cli_main
from tokenbucket.backends import LeaseOwner
from tokenbucket.testing import ManualClock

WORKER = str(Path(__file__).with_name("slot_worker.py"))
SLACK = 0.75
"""Seconds allowed beyond a TTL for process start-up noise on a loaded machine."""
OWNER = LeaseOwner("host", 1, "test")


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A sync slot store: a fresh MemoryBackend, or the suite's private Redis with a fresh prefix."""
    if request.param == "memory":
        yield MemoryBackend()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    backend = RedisBackend.from_url(server.url, prefix=f"t{uuid.uuid4().hex[:10]}:")
    yield backend
    backend.close()


def tokens(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


# --------------------------------------------------------------------------- the store contract


def test_the_line_is_served_in_order_and_a_try_never_jumps_it(store: Any) -> None:
    a, b, w1, w2, x = tokens(5)
    assert store.slot_acquire("api", a, 2, 30, OWNER, 30)[0]
    assert store.slot_acquire("api", b, 2, 30, OWNER, 30)[0]
    granted, _, ahead, soonest = store.slot_acquire("api", w1, 2, 30, OWNER, 30)
    assert (granted, ahead) == (False, 0)
    assert soonest == pytest.approx(30, abs=1)
    assert store.slot_acquire("api", w2, 2, 30, OWNER, 30)[:3] == (False, None, 1)
    assert store.slot_release("api", a)
    assert not store.slot_acquire("api", x, 2, 30, OWNER, 0)[0]  # the free slot is w1's
    assert not store.slot_acquire("api", w2, 2, 30, OWNER, 30)[0]  # and w2 is behind w1
    granted, info, _, _ = store.slot_acquire("api", w1, 2, 30, OWNER, 30)
    assert granted
    assert info.name == "api"
    assert store.slot_acquire("api", w1, 2, 30, OWNER, 30)[0]  # asking again reports the same slot
    found = store.slot_inspect("api")
    assert (found.limit, len(found.holders), found.waiting) == (2, 2, 1)
    fences = [h.fence for h in found.holders]
    assert fences == sorted(fences)
    assert store.slot_release("api", b)
    assert store.slot_acquire("api", w2, 2, 30, OWNER, 30)[0]
    assert not store.slot_release("api", x)  # never held


def test_fences_grow_and_break_checks_the_fence(store: Any) -> None:
    a, b = tokens(2)
    first = store.slot_acquire("api", a, 1, 30, OWNER, 30)[1]
    assert store.slot_break("api", first.fence + 100) == (False, None)
    ok, broken = store.slot_break("api", first.fence)
    assert ok
    assert broken.fence == first.fence
    assert store.slot_renew("api", a, 30) == (False, None)  # never given back behind the holder's back
    second = store.slot_acquire("api", b, 1, 30, OWNER, 30)[1]
    assert second.fence > first.fence


def test_another_limit_for_the_same_name_is_refused_while_in_use(store: Any) -> None:
    a, b = tokens(2)
    store.slot_acquire("api", a, 2, 30, OWNER, 30)
    with pytest.raises(ConfigurationError, match="limit=2, not 3"):
        store.slot_acquire("api", b, 3, 30, OWNER, 30)
    assert store.slot_inspect("api").waiting == 0  # nothing changed
    store.slot_release("api", a)
    assert store.slot_acquire("api", b, 3, 30, OWNER, 30)[0]  # unused: the new limit is adopted


def test_dead_holders_and_waiters_expire() -> None:
    clock = ManualClock(0.0, autojump=False)
    store = MemoryBackend(clock)
    a, w, x = tokens(3)
    store.slot_acquire("api", a, 1, 10, OWNER, 10)
    store.slot_acquire("api", w, 1, 10, OWNER, 5)  # a waiter that will never ask again
    clock.set(9.0)
    assert not store.slot_acquire("api", x, 1, 10, OWNER, 10)[0]  # a still holds; w is ahead of x... until t=5
    assert store.slot_inspect("api").waiting == 1
    clock.set(10.0)
    assert store.slot_acquire("api", x, 1, 10, OWNER, 10)[0]  # a expired, w left the line at t=5
    assert store.slot_renew("api", a, 10) == (False, None)


@pytest.mark.realtime
def test_every_redis_key_expires(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    backend = RedisBackend.from_url(redis_server.url, prefix=prefix)
    client = redis_server.client()
    try:
        a, w = tokens(2)
        backend.slot_acquire("api", a, 1, 0.3, OWNER, 0.3)
        backend.slot_acquire("api", w, 1, 0.3, OWNER, 0.3)
        keys = list(client.scan_iter(match="{" + prefix + "*"))
        assert len(keys) >= 5
        assert all(client.pttl(k) > 0 for k in keys)
        time.sleep(1.6)
        left = [k for k in client.scan_iter(match="{" + prefix + "*") if not k.endswith(b":fence")]
        assert left == []
    finally:
        client.close()
        backend.close()


# --------------------------------------------------------------------------- the front ends


def _ledger_overlap(ledger: list[tuple[float, int]]) -> int:
    """The most slots held at once, from (time, +1 enter / -1 exit) events."""
    most = now = 0
    for _, step in sorted(ledger, key=lambda e: (e[0], e[1])):  # exits before enters at the same instant
        now += step
        most = max(most, now)
    return most


def test_threads_are_served_in_the_order_they_joined(store: Any) -> None:
    """One slot cycles while eight threads wait in line: each is served in the order it joined."""
    limit = ConcurrencyLimit(f"fifo-{uuid.uuid4().hex[:6]}", limit=2, ttl=10, backend=store)
    served: list[tuple[int, int]] = []  # (fence, who): fences grow in the order the store granted
    lock = threading.Lock()
    holders = [limit.acquire(), limit.acquire()]

    def work(i: int) -> None:
        with limit.slot(timeout=30) as slot, lock:
            served.append((slot.fence, i))

    threads = []
    for i in range(8):  # each joins the line only after the one before it has
        thread = threading.Thread(target=work, args=(i,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 10
        while limit.inspect().waiting < i + 1:
            assert time.monotonic() < deadline
            time.sleep(0.002)
    holders[0].release()  # one slot: served strictly one after the other
    for thread in threads:
        thread.join()
    holders[1].release()
    assert [who for _, who in sorted(served)] == list(range(8))


def test_threads_never_exceed_the_limit(store: Any) -> None:
    limit = ConcurrencyLimit(f"threads-{uuid.uuid4().hex[:6]}", limit=2, ttl=10, backend=store)
    ledger: list[tuple[float, int]] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            with limit.slot(timeout=30):
                with lock:
                    ledger.append((time.monotonic(), 1))
                time.sleep(0.005)
                with lock:
                    ledger.append((time.monotonic(), -1))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ledger) == 60
    assert _ledger_overlap(ledger) <= 2
    assert limit.inspect().holders == ()


def test_a_timeout_leaves_the_line_and_a_try_fails_at_once() -> None:
    clock = ManualClock(0.0)
    store = MemoryBackend(clock)
    limit = ConcurrencyLimit("one", limit=1, ttl=60, backend=store, clock=clock, heartbeat=False)
    held = limit.acquire()
    with pytest.raises(NotAcquired, match="all 1 slots are taken; gave up after 5 s"):
        limit.acquire(timeout=5)
    assert clock.now() == pytest.approx(5.0)
    assert limit.inspect().waiting == 0  # it left the line
    with pytest.raises(NotAcquired):
        limit.acquire(blocking=False)
    with pytest.raises(NotAcquired):
        limit.acquire(timeout=0)
    assert clock.now() == pytest.approx(5.0)  # neither waited
    held.release()
    assert limit.acquire(blocking=False).fence > held.fence


def test_a_holder_that_stops_renewing_frees_its_slot_within_ttl() -> None:
    clock = ManualClock(0.0)
    store = MemoryBackend(clock)
    limit = ConcurrencyLimit("one", limit=1, ttl=10, backend=store, clock=clock, heartbeat=False)
    ghost = limit.acquire()  # never renewed, never released: a crashed holder
    slot = limit.acquire(timeout=60)
    assert clock.now() == pytest.approx(10.0, abs=0.1)
    assert ghost.state == "lost"
    with pytest.raises(LeaseLost):
        ghost.ensure_held()
    assert slot.fence > ghost.fence


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 1"):
        ConcurrencyLimit("x", limit=0, ttl=1)
    with pytest.raises(TypeError, match="limit must be an int"):
        ConcurrencyLimit("x", limit=2.5, ttl=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ConcurrencyLimit("x", limit=1, ttl=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SlotBackend"):
        ConcurrencyLimit("x", limit=1, ttl=1, backend=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="use AsyncConcurrencyLimit"):
        ConcurrencyLimit("x", limit=1, ttl=1, backend=AsyncRedisBackend.from_url("redis://localhost:1/0"))
    limit = ConcurrencyLimit("x", limit=1, ttl=1, backend=MemoryBackend())
    with pytest.raises(TypeError, match=r"limit\.slot"), limit:
        pass
    with pytest.raises(LeaseError, match="no slot with fence 7"):
        limit.break_slot(7)


def test_decorator_and_a_body_that_raises() -> None:
    limit = ConcurrencyLimit("deco", limit=1, ttl=10, backend=MemoryBackend())
    seen: list[int] = []

    @limit
    def call(x: int) -> int:
        seen.append(len(limit.inspect().holders))
        return x * 2

    @limit.limited(timeout=0)
    def fail() -> None:
        raise ValueError("boom")

    assert call(21) == 42
    assert seen == [1]
    with pytest.raises(ValueError, match="boom"):
        fail()
    assert limit.inspect().holders == ()  # given back on the error


def test_slot_with_tokens_waits_for_them_without_a_slot_and_gives_them_back_without_one() -> None:
    clock = ManualClock(0.0)
    store = MemoryBackend(clock)
    bucket = TokenBucket("api", "1/second", capacity=5, initial=0, backend=store, clock=clock)
    limit = ConcurrencyLimit("api", limit=1, ttl=60, backend=store, clock=clock, heartbeat=False)
    held_while_sleeping: list[int] = []
    sleep = clock.sleep

    def watching_sleep(seconds: float) -> None:
        held_while_sleeping.append(len(limit.inspect().holders))
        sleep(seconds)

    clock.sleep = watching_sleep  # type: ignore[method-assign]
    with limit.slot(timeout=10, bucket=bucket, cost=3) as slot:
        assert slot.grant is not None
        assert slot.grant.cost == 3
        assert clock.now() == pytest.approx(3.0)
    assert held_while_sleeping == [0]  # it slept for the tokens holding no slot
    other = limit.acquire()
    with pytest.raises(NotAcquired), limit.slot(timeout=2.5, bucket=bucket, cost=2):
        pass
    assert clock.now() == pytest.approx(5.5)  # 2 s for the tokens, then 0.5 s in line
    # Given back by the refund rule of settle: the 2 tokens less what the upstream may have lost at its cap
    # in the 0.5 s since they were due (0.5); with 0.5 s of refill: 0 + 0.5 + 1.5.
    assert bucket.snapshot().tokens == pytest.approx(2.0)
    with pytest.raises(AcquireTimeout), limit.slot(timeout=1, bucket=bucket, cost=5):
        pass
    other.release()


def test_release_and_break_race_frees_the_slot_once() -> None:
    """Two threads: the holder releases while an operator breaks the same slot. One of them wins."""
    for _ in range(50):
        store = MemoryBackend()
        limit = ConcurrencyLimit("race", limit=1, ttl=30, backend=store, heartbeat=False)
        slot = limit.acquire()
        outcome: dict[str, Any] = {}
        barrier = threading.Barrier(2)

        def release(slot: Any = slot, barrier: Any = barrier, outcome: Any = outcome) -> None:
            barrier.wait()
            outcome["released"] = slot.release()

        def brk(slot: Any = slot, barrier: Any = barrier, outcome: Any = outcome, limit: Any = limit) -> None:
            barrier.wait()
            try:
                limit.break_slot(slot.fence)
                outcome["broken"] = True
            except LeaseError:
                outcome["broken"] = False

        threads = [threading.Thread(target=release), threading.Thread(target=brk)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcome["released"] != outcome["broken"]
        assert limit.inspect().holders == ()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_async_tasks_respect_the_limit_and_a_cancelled_waiter_leaves_the_line(
    kind: str, redis_server: RedisServer
) -> None:
    async def main() -> None:
        backend: Any = MemoryBackend()
        if kind == "redis":
            backend = AsyncRedisBackend.from_url(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}:")
        limit = AsyncConcurrencyLimit("tasks", limit=3, ttl=10, backend=backend)
        inflight = peak = 0

        @limit
        async def work() -> None:
            nonlocal inflight, peak
            inflight += 1
            peak = max(peak, inflight)
            await asyncio.sleep(0.01)
            inflight -= 1

        await asyncio.gather(*(work() for _ in range(12)))
        assert peak == 3
        held = [await limit.acquire() for _ in range(3)]
        waiter = asyncio.ensure_future(limit.acquire())
        while (await limit.inspect()).waiting == 0:  # noqa: ASYNC110 - the store is what is watched
            await asyncio.sleep(0.005)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        found = await limit.inspect()
        assert (len(found.holders), found.waiting) == (3, 0)
        for slot in held:
            await slot.release()
        async with limit.slot(timeout=1) as slot:
            assert slot.state == "held"
        if kind == "redis":
            await backend.aclose()

    asyncio.run(main())


def test_async_slot_with_tokens() -> None:
    async def main() -> None:
        clock = ManualClock(0.0)
        store = MemoryBackend(clock)
        bucket = AsyncTokenBucket("api", "1/second", capacity=5, initial=0, backend=store, clock=clock)
        limit = AsyncConcurrencyLimit("api", limit=1, ttl=60, backend=store, clock=clock, heartbeat=False)
        async with limit.slot(timeout=10, bucket=bucket, cost=2) as slot:
            assert slot.grant is not None
            assert clock.now() == pytest.approx(2.0)
        other = await limit.acquire()
        with pytest.raises(NotAcquired):
            async with limit.slot(timeout=3, bucket=bucket, cost=1):
                pass
        # 1 s for the token, 2 s in line: as long as its upstream could have sat full, so none came back
        assert (await bucket.snapshot()).tokens == pytest.approx(2.0)
        await other.release()

    asyncio.run(main())


def test_slots_on_a_cluster(redis_cluster: RedisClusterServers) -> None:
    backend = RedisBackend.from_url(redis_cluster.url, cluster=True, prefix=f"t{uuid.uuid4().hex[:10]}:")
    try:
        for name in ("a", "b", "c", "d"):  # several names, so several slots of the cluster
            limit = ConcurrencyLimit(name, limit=2, ttl=5, backend=backend)
            first, second = limit.acquire(), limit.acquire()
            with pytest.raises(NotAcquired):
                limit.acquire(timeout=0.05)
            first.release()
            assert limit.acquire(timeout=1).fence > second.fence
    finally:
        backend.close()


# --------------------------------------------------------------------------- crashes, pauses, restarts


def slot_worker(mode: str, url: str, prefix: str, name: str, limit: int, ttl: float, *extra: str) -> Worker:
    """A slot holder in another process (tests/slot_worker.py)."""
    return Worker(WORKER, mode, url, prefix, name, str(limit), str(ttl), *extra)


@pytest.mark.realtime
def test_a_killed_holder_frees_its_slot_within_ttl(redis_server: RedisServer, workers: list[Worker]) -> None:
    prefix, ttl = f"t{uuid.uuid4().hex[:10]}:", 1.5
    backend = RedisBackend.from_url(redis_server.url, prefix=prefix)
    try:
        worker = slot_worker("hold", redis_server.url, prefix, "restrictions", 1, ttl)
        workers.append(worker)
        fence = worker.read()["fence"]
        time.sleep(ttl)  # it renews: still held past one TTL
        limit = ConcurrencyLimit("restrictions", limit=1, ttl=ttl, backend=backend)
        assert [h.owner.task for h in limit.inspect().holders] == ["hold"]
        worker.signal(signal.SIGKILL)
        killed = time.monotonic()
        slot = limit.acquire(timeout=10)
        assert time.monotonic() - killed <= ttl + SLACK
        assert slot.fence > fence
        slot.release()
    finally:
        backend.close()


@pytest.mark.realtime
def test_a_paused_holder_learns_it_lost_its_slot(redis_server: RedisServer, workers: list[Worker]) -> None:
    prefix, ttl = f"t{uuid.uuid4().hex[:10]}:", 1.0
    backend = RedisBackend.from_url(redis_server.url, prefix=prefix)
    try:
        worker = slot_worker("stale", redis_server.url, prefix, "restrictions", 1, ttl)
        workers.append(worker)
        old = worker.read()["fence"]
        worker.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        slot = ConcurrencyLimit("restrictions", limit=1, ttl=5, backend=backend).acquire(timeout=10)
        assert time.monotonic() - stopped <= ttl + SLACK
        assert slot.fence > old
        worker.signal(signal.SIGCONT)
        worker.send("go\n")
        assert worker.read()["ensure_held"].startswith("LeaseLost")
        slot.ensure_held()  # the paused holder's return did not disturb the new one
        slot.release()
    finally:
        backend.close()


@pytest.mark.realtime
def test_a_restart_loses_every_slot_and_the_limit_works_again(private_redis_server: RedisServer) -> None:
    ttl = 1.5
    backend = RedisBackend.from_url(private_redis_server.url, socket_timeout=1.0, connect_timeout=0.5)
    lost = threading.Event()
    try:
        limit = ConcurrencyLimit("restrictions", limit=1, ttl=ttl, backend=backend, on_lost=lambda _: lost.set())
        slot = limit.acquire()
        backend.client.connection_pool.disconnect()  # type: ignore[union-attr]
        private_redis_server.restart()
        assert lost.wait(ttl + SLACK)
        with pytest.raises(LeaseLost):
            slot.ensure_held()
        again = limit.acquire(timeout=5)  # the empty server: a free slot, and never the old one back
        assert again.state == "held"
        again.release()
    finally:
        backend.close()


@pytest.mark.realtime
def test_processes_never_exceed_the_limit(redis_server: RedisServer, workers: list[Worker], tmp_path: Path) -> None:
    prefix, processes, rounds, slots = f"t{uuid.uuid4().hex[:10]}:", 5, 6, 2
    ledger = tmp_path / "ledger.txt"
    for _ in range(processes):
        workers.append(slot_worker("contend", redis_server.url, prefix, "shared", slots, 5.0, str(rounds), str(ledger)))
    for worker in workers:
        assert worker.read() == {"done": rounds}
    lines = [line.split() for line in ledger.read_text().splitlines()]
    assert len(lines) == 2 * processes * rounds
    events = [(float(t), 1 if kind == "enter" else -1) for kind, t, _, _ in lines]
    assert _ledger_overlap(events) == slots  # never more, and the limit was used
    fences = [int(f) for kind, _, _, f in lines if kind == "enter"]
    assert len(set(fences)) == len(fences)


# --------------------------------------------------------------------------- the CLI


def test_cli_slots_ls_and_break(redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    backend = RedisBackend.from_url(redis_server.url, prefix=prefix)
    try:
        limit = ConcurrencyLimit("restrictions", limit=2, ttl=30, backend=backend, task="check", heartbeat=False)
        slot = limit.acquire()
        common = ["--url", redis_server.url, "--prefix", prefix]
        assert cli_main(["slots", "ls", "restrictions", *common]) == 0
        out = capsys.readouterr().out
        assert "1 of 2 slots held, 0 waiting" in out
        assert f"{slot.fence}" in out
        assert "task=check" in out
        assert cli_main(["slots", "ls", "restrictions", "--json", *common]) == 0
        found = json.loads(capsys.readouterr().out)
        assert (found["limit"], found["held"], found["holders"][0]["fence"]) == (2, 1, slot.fence)
        assert cli_main(["slots", "break", "restrictions", "--expect-fence", str(slot.fence + 1), *common]) == 1
        assert "no slot with fence" in capsys.readouterr().err
        assert cli_main(["slots", "break", "restrictions", "--expect-fence", str(slot.fence), *common]) == 0
        assert "broke the slot" in capsys.readouterr().out
        assert cli_main(["slots", "ls", "restrictions", *common]) == 0
        assert "no slot held, nobody waiting" in capsys.readouterr().out
        with pytest.raises(LeaseLost):
            slot.renew()
    finally:
        backend.close()
