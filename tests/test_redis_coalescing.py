"""Coalescing: reserves made at once for one bucket go out in one script call, each with the result of its own.

Judged by arithmetic that knows nothing of the bucket: every request of a strict bucket made at one
instant, first-come first-served, starts exactly at ``now + max(0, S_i - capacity) / rate`` where
``S_i`` is the cost of it and of the admitted requests before it (a request whose wait would exceed
its ``timeout`` is refused and charges nothing). The same requests with coalescing off must come out
the same. The races (a caller cancelled while waiting in line, or after its call went out; the
server failing under a batch; a batch's reply dropped and the call retried) run on real servers.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_servers import RedisClusterServers, RedisServer
from test_redis_lost_replies import DroppingProxy, eventually

from tokenbucket import (
    AcquireTimeout,
    AsyncRedisBackend,
    AsyncTokenBucket,
    BackendError,
    PolicyMismatch,
    Rate,
    RedisBackend,
    TokenBucket,
)
from tokenbucket.backends._redis import BATCH_MAX
from tokenbucket.testing import ManualClock

pytestmark = [pytest.mark.redis]

RATE, CAPACITY = 4, 10  # tokens per second; delays are multiples of 1/4 s
RATE_TEXT = f"{RATE}/second"
WAITS = [None, 0.0, 1.1, 2.6, 3.9]  # timeouts never equal to a delay (so no rounding decides)
SOCKET_TIMEOUT = 1.0
"""A reserve whose timeout is shorter than this waits for its reply at most that long: it goes out alone."""


def expected(requests: list[tuple[int, float | None]]) -> list[Fraction | None]:
    """Each request's delay (None: refused), made at one instant on a full strict bucket, in this order."""
    spent = 0
    out: list[Fraction | None] = []
    for cost, wait in requests:
        delay = max(Fraction(0), Fraction(spent + cost - CAPACITY, RATE))
        if wait is not None and delay > wait:
            out.append(None)
            continue
        spent += cost
        out.append(delay)
    return out


class EvalshaSpy:
    """Counts the reserving script calls a client sends, and how many reserves each carries."""

    def __init__(self, client: Any) -> None:
        self.requests: list[int] = []
        original = client.evalsha

        def count(numkeys: int, keys_and_args: tuple[Any, ...]) -> None:
            carried = (len(keys_and_args) - numkeys - 2) // 3  # (0 for a script that reserves nothing)
            if carried:
                self.requests.append(carried)

        # Counted once answered: a call refused for NOSCRIPT is sent again.
        def evalsha(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            reply = original(sha, numkeys, *keys_and_args)
            count(numkeys, keys_and_args)
            return reply

        async def aevalsha(sha: str, numkeys: int, *keys_and_args: Any) -> Any:
            reply = await original(sha, numkeys, *keys_and_args)
            count(numkeys, keys_and_args)
            return reply

        client.evalsha = aevalsha if isinstance(client, redis.asyncio.Redis) else evalsha


async def reserve_each(
    bucket: AsyncTokenBucket, requests: list[tuple[int, float | None]], *, at_once: bool = True
) -> list[float | None]:
    """Each request's delay (None: refused), the requests made all at once or one after the other."""

    async def one(cost: int, wait: float | None) -> float | None:
        try:
            reservation = await bucket.reserve(cost, timeout=wait)
        except AcquireTimeout:
            return None
        return reservation.delay

    if not at_once:
        return [await one(cost, wait) for cost, wait in requests]
    # gather starts the tasks in order: the first goes out alone, the others join the line while it is out
    return list(await asyncio.gather(*(one(cost, wait) for cost, wait in requests)))


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    return redis_server.url


def async_backend(url: str, **kwargs: Any) -> AsyncRedisBackend:
    # Every timeout of WAITS is 0 or longer than the socket timeout: every reserve may join a line.
    client = redis.asyncio.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
    return AsyncRedisBackend(client, prefix=f"co{uuid.uuid4().hex[:8]}:", **kwargs)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.tuples(st.integers(0, CAPACITY), st.sampled_from(WAITS)), min_size=1, max_size=40))
def test_requests_made_at_once_start_as_made_one_by_one_first_come_first_served(
    url: str, requests: list[tuple[int, float | None]]
) -> None:
    async def run(coalesce: bool) -> tuple[list[float | None], list[int]]:
        backend = async_backend(url, coalesce=coalesce)
        spy = EvalshaSpy(backend.client)
        clock = ManualClock(1000.0)  # one instant for every request
        bucket = AsyncTokenBucket("fcfs", rate=RATE_TEXT, capacity=CAPACITY, backend=backend, clock=clock)
        try:
            # without coalescing, calls made at once on several connections reach the server in any order
            delays = await reserve_each(bucket, requests, at_once=coalesce)
            snap = await bucket.snapshot()
        finally:
            await backend.client.aclose()
        admitted = [cost for (cost, _), d in zip(requests, expected(requests), strict=True) if d is not None]
        assert snap.tokens == pytest.approx(CAPACITY - sum(admitted))
        return delays, spy.requests

    want = expected(requests)
    for coalesce in (True, False):
        delays, calls = asyncio.run(run(coalesce))
        assert [d is None for d in delays] == [w is None for w in want], coalesce
        for got, exact in zip(delays, want, strict=True):
            if exact is not None:
                assert got == pytest.approx(float(exact), abs=1e-9), (coalesce, delays, want)
        assert sum(calls) == len(requests)  # every request went out exactly once
        if coalesce:
            assert calls[0] == 1  # the first went out alone, straight away
            assert max(calls) <= BATCH_MAX
            if len(requests) > 2:
                assert len(calls) < len(requests)  # the others shared calls
        else:
            assert calls == [1] * len(requests)


def test_threads_share_calls_and_start_first_come_first_served(url: str) -> None:
    client = redis.Redis.from_url(url, max_connections=64)
    spy = EvalshaSpy(client)
    backend = RedisBackend(client, prefix="co-threads:")
    clock = ManualClock(50.0, autojump=False)
    bucket = TokenBucket("threads", rate=RATE_TEXT, capacity=CAPACITY, backend=backend, clock=clock)
    n = 48
    delays: list[float] = []
    barrier = threading.Barrier(n)

    def one() -> None:
        barrier.wait()
        delays.append(bucket.reserve(1).delay)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    # Whatever order the threads reached the server in, the i-th start is exactly (i - capacity) / rate.
    assert sorted(delays) == pytest.approx([max(0.0, (i - CAPACITY) / RATE) for i in range(1, n + 1)], abs=1e-9)
    assert sum(spy.requests) == n
    assert max(spy.requests) <= BATCH_MAX


def test_a_lone_caller_goes_straight_out_one_call_each(url: str) -> None:
    client = redis.Redis.from_url(url)
    spy = EvalshaSpy(client)
    bucket = TokenBucket("lone", rate="1000/second", backend=RedisBackend(client, prefix="co-lone:"))
    for _ in range(5):
        bucket.acquire(1)
    client.close()
    assert spy.requests == [1] * 5


def test_the_setting_is_checked_and_shown() -> None:
    with pytest.raises(TypeError, match="coalesce must be True or False"):
        RedisBackend(redis.Redis(), coalesce="yes")  # type: ignore[arg-type]
    assert RedisBackend(redis.Redis()).coalesce is True
    assert RedisBackend(redis.Redis(), coalesce=False).coalesce is False
    assert RedisBackend.from_url("redis://127.0.0.1:1/0", coalesce=False).coalesce is False


# ---------------------------------------------------------------- races, with the calls held at a gate


class AsyncGate:
    """Holds each reserving script call of a backend until the test lets it through (in the order they came)."""

    def __init__(self, backend: AsyncRedisBackend) -> None:
        self.arrived: list[asyncio.Event] = []
        original = backend._bucket

        async def gated(op: str, *args: Any, **kwargs: Any) -> Any:
            if op != "reserve":
                return await original(op, *args, **kwargs)
            opened = asyncio.Event()
            self.arrived.append(opened)
            await opened.wait()
            return await original(op, *args, **kwargs)

        backend._bucket = gated  # type: ignore[method-assign]

    async def wait_for(self, calls: int) -> None:
        for _ in range(10_000):
            if len(self.arrived) >= calls:
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"{len(self.arrived)} calls came, not {calls}")

    def open(self, call: int) -> None:
        self.arrived[call].set()


async def settle_down() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_caller_cancelled_while_waiting_in_line_is_never_charged(url: str) -> None:
    backend = async_backend(url)
    gate = AsyncGate(backend)
    bucket = AsyncTokenBucket("cancel-waiting", rate="1/hour", capacity=10, backend=backend)
    try:
        first = asyncio.create_task(bucket.acquire(1))
        await gate.wait_for(1)  # the first call is out (held)
        later = [asyncio.create_task(bucket.acquire(cost)) for cost in (2, 3, 4)]
        await settle_down()  # they wait in line
        later[1].cancel()  # the 3 never goes out
        gate.open(0)
        await gate.wait_for(2)
        gate.open(1)  # the call for 2 and 4
        await asyncio.gather(first, later[0], later[2])
        assert later[1].cancelled()
        assert (await bucket.snapshot()).tokens == pytest.approx(10 - 1 - 2 - 4, abs=0.01)
    finally:
        await backend.client.aclose()


async def test_a_caller_cancelled_after_its_call_went_out_is_given_its_tokens_back(url: str) -> None:
    backend = async_backend(url)
    gate = AsyncGate(backend)
    bucket = AsyncTokenBucket("cancel-out", rate="1/hour", capacity=10, backend=backend)
    try:
        first = asyncio.create_task(bucket.acquire(1))
        await gate.wait_for(1)
        later = [asyncio.create_task(bucket.acquire(cost)) for cost in (2, 3)]
        await settle_down()
        gate.open(0)
        await gate.wait_for(2)  # the call for 2 and 3 is out
        later[1].cancel()
        await settle_down()
        gate.open(1)
        await asyncio.gather(first, later[0])
        assert later[1].cancelled()
        for _ in range(500):  # the 3 was charged by the call, then given back in the background
            if (await bucket.snapshot()).tokens > 10 - 1 - 2 - 0.01:
                break
            await asyncio.sleep(0.01)
        assert (await bucket.snapshot()).tokens == pytest.approx(10 - 1 - 2, abs=0.01)
    finally:
        await backend.aclose()
        await backend.client.aclose()


async def test_a_policy_mismatch_reaches_every_caller_of_a_batch(url: str) -> None:
    backend = async_backend(url)
    await AsyncTokenBucket("mismatch", rate="5/minute", backend=backend).acquire(1)  # stored: 5/minute
    gate = AsyncGate(backend)
    other = AsyncTokenBucket("mismatch", rate="6/minute", backend=backend)
    try:
        tasks = [asyncio.create_task(other.acquire(1)) for _ in range(4)]
        await gate.wait_for(1)
        await settle_down()
        gate.open(0)
        await gate.wait_for(2)
        gate.open(1)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, PolicyMismatch) for r in results), results
        assert len(gate.arrived) == 2  # one call alone, one for the three others
    finally:
        await backend.client.aclose()


@pytest.mark.realtime
@pytest.mark.parametrize("mode", ["raise", "deny", "allow"])
async def test_a_server_gone_under_a_batch_answers_each_caller_per_on_unavailable(
    private_redis_server: RedisServer, mode: str
) -> None:
    backend = AsyncRedisBackend(
        redis.asyncio.Redis.from_url(private_redis_server.url, socket_connect_timeout=1), on_unavailable=mode
    )
    bucket = AsyncTokenBucket("gone", rate="1/hour", capacity=10, backend=backend)
    await bucket.acquire(1)  # connected, scripts loaded
    gate = AsyncGate(backend)
    try:
        tasks = [asyncio.create_task(bucket.acquire(1)) for _ in range(4)]
        await gate.wait_for(1)
        await settle_down()
        private_redis_server.kill()
        gate.open(0)
        await gate.wait_for(2)
        gate.open(1)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        want = {"raise": BackendError, "deny": AcquireTimeout}.get(mode)
        if want is None:
            assert not any(isinstance(r, BaseException) for r in results), results  # admitted, fail open
        else:
            assert all(isinstance(r, want) for r in results), results
    finally:
        await backend.client.aclose()


class SyncGate:
    """`AsyncGate` for threads."""

    def __init__(self, backend: RedisBackend) -> None:
        self.arrived: list[threading.Event] = []
        self._lock = threading.Lock()
        original = backend._bucket

        def gated(op: str, *args: Any, **kwargs: Any) -> Any:
            if op != "reserve":
                return original(op, *args, **kwargs)
            opened = threading.Event()
            with self._lock:
                self.arrived.append(opened)
            opened.wait(30)
            return original(op, *args, **kwargs)

        backend._bucket = gated  # type: ignore[method-assign]

    def wait_for(self, calls: int) -> None:
        assert eventually(lambda: len(self.arrived) >= calls, within=10)

    def open(self, call: int) -> None:
        self.arrived[call].set()


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.realtime
def test_threads_waiting_in_line_go_out_together_when_the_call_ahead_returns(url: str) -> None:
    client = redis.Redis.from_url(url)
    backend = RedisBackend(client, prefix="co-gate:")
    bucket = TokenBucket("gate", rate="1/hour", capacity=10, backend=backend)
    gate = SyncGate(backend)
    first = in_thread(lambda: bucket.acquire(1))
    gate.wait_for(1)
    later = [in_thread(lambda c=cost: bucket.acquire(c)) for cost in (2, 3)]  # type: ignore[misc]
    assert eventually(lambda: sum(len(w) for w in backend._lines.values()) == 2)  # both in line
    gate.open(0)
    gate.wait_for(2)  # one call for both
    gate.open(1)
    for thread, _ in [first, *later]:
        thread.join(10)
    assert [type(out[0]).__name__ for _, out in [first, *later]] == ["Grant"] * 3
    assert len(gate.arrived) == 2
    assert bucket.snapshot().tokens == pytest.approx(10 - 6, abs=0.01)
    assert backend._lines == {}  # the line closed
    client.close()


class Interrupting:
    """Stands in for the backend's `_Wakeup`: the n-th request's wait raises KeyboardInterrupt.

    ``when="at once"``: as the thread starts waiting in line; ``"on waking"``: once it is woken (with
    its outcome, or to send the next call), as a signal arriving just then would.
    """

    def __init__(self, victim: int, when: str) -> None:
        from tokenbucket.backends._redis import _Wakeup

        self._made = 0
        self._victim, self._when = victim, when
        self.interrupted = threading.Event()
        outer = self

        class Doomed(_Wakeup):
            def wait(self) -> None:
                if when == "on waking":
                    super().wait()
                outer.interrupted.set()
                raise KeyboardInterrupt

        self._plain, self._doomed = _Wakeup, Doomed

    def __call__(self) -> Any:
        self._made += 1
        return self._doomed() if self._made == self._victim else self._plain()


@pytest.mark.realtime
@pytest.mark.parametrize(
    ("victim", "when", "charged"),
    [
        (1, "at once", [1, 3, 4]),  # waiting in line: never goes out
        (1, "on waking", [1, 3, 4]),  # woken to send the next call: passes it on, never goes out itself
        (2, "on waking", [1, 2, 4]),  # woken with its outcome: its call went out, its tokens come back
    ],
)
def test_a_thread_interrupted_in_line_is_never_charged_and_never_stalls_the_others(
    url: str, monkeypatch: pytest.MonkeyPatch, victim: int, when: str, charged: list[int]
) -> None:
    import tokenbucket.backends._redis as backend_module

    interrupting = Interrupting(victim, when)
    monkeypatch.setattr(backend_module, "_Wakeup", interrupting)
    client = redis.Redis.from_url(url)
    backend = RedisBackend(client, prefix=f"co-int{uuid.uuid4().hex}:")
    bucket = TokenBucket("interrupted", rate="1/hour", capacity=20, backend=backend)
    gate = SyncGate(backend)
    first = in_thread(lambda: bucket.acquire(1))
    gate.wait_for(1)
    later = []
    for n, cost in enumerate((2, 3, 4), 1):  # made in this order: requests 1, 2, 3 of the line
        later.append(in_thread(lambda c=cost: bucket.acquire(c)))  # type: ignore[misc]

        def joined(n: int = n) -> bool:
            return sum(len(w) for w in backend._lines.values()) + interrupting.interrupted.is_set() >= n

        assert eventually(joined)
    gate.open(0)
    gate.wait_for(2)
    gate.open(1)
    if len(gate.arrived) > 2:  # (the request interrupted on waking with the call to send: the next one sent it)
        gate.open(2)
    for thread, _ in [first, *later]:
        thread.join(10)
        assert not thread.is_alive()
    outs = [out[0] for _, out in later]
    assert sum(isinstance(out, KeyboardInterrupt) for out in outs) == 1
    assert all(type(out).__name__ == "Grant" for out in outs if not isinstance(out, KeyboardInterrupt))
    assert eventually(lambda: bucket.snapshot().tokens == pytest.approx(20 - sum(charged), abs=0.01))
    assert backend._lines == {}
    backend.close()
    client.close()


@pytest.mark.realtime
def test_a_batch_retried_after_its_reply_was_dropped_is_charged_once(private_redis_server: RedisServer) -> None:
    direct = RedisBackend.from_url(private_redis_server.url, prefix="drop:")
    TokenBucket("batch", "1/hour", capacity=20, backend=direct).snapshot()  # loads nothing that matters
    TokenBucket("warm", "1/hour", capacity=20, backend=direct).acquire(1)  # loads the reserve script
    proxy = DroppingProxy(private_redis_server.port)
    try:
        with RedisBackend.from_url(proxy.url, prefix="drop:") as backend:  # retries once on a dropped connection
            bucket = TokenBucket("batch", "1/hour", capacity=20, backend=backend)
            gate = SyncGate(backend)
            first = in_thread(lambda: bucket.acquire(1))
            gate.wait_for(1)
            later = [in_thread(lambda: bucket.acquire(2)) for _ in range(3)]
            assert eventually(lambda: sum(len(w) for w in backend._lines.values()) == 3)
            gate.open(0)
            gate.wait_for(2)
            proxy.drop(b"*17\r\n$7\r\nEVALSHA")  # the call carrying the three: 3 keys, time, policy, 3 x 3 arguments
            gate.open(1)
            for thread, _ in [first, *later]:
                thread.join(10)
            assert proxy.dropped == 1  # the batch ran, its reply was lost, and the retry was answered
            assert all(type(out[0]).__name__ == "Grant" for _, out in later), later
        assert TokenBucket("batch", "1/hour", capacity=20, backend=direct).snapshot().tokens == pytest.approx(
            20 - 1 - 6, abs=0.01
        )
    finally:
        proxy.close()
        direct.close()


# ---------------------------------------------------------------- Redis Cluster


def test_on_a_cluster_each_bucket_has_its_own_line(redis_cluster: RedisClusterServers) -> None:
    client = redis_cluster.client()
    backend = RedisBackend(client, prefix="co-cluster:")
    clock = ManualClock(10.0, autojump=False)
    names = ["alpha", "beta", "gamma"]  # three slots
    buckets = {
        name: TokenBucket(name, rate=RATE_TEXT, capacity=CAPACITY, backend=backend, clock=clock) for name in names
    }
    delays: dict[str, list[float]] = {name: [] for name in names}
    barrier = threading.Barrier(30)

    def one(name: str) -> None:
        barrier.wait()
        delays[name].append(buckets[name].reserve(1).delay)

    threads = [threading.Thread(target=one, args=(names[i % 3],)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    for name in names:
        assert sorted(delays[name]) == pytest.approx([max(0.0, (i - CAPACITY) / RATE) for i in range(1, 11)], abs=1e-9)


async def test_on_a_cluster_asyncio_tasks_share_calls(redis_cluster: RedisClusterServers) -> None:
    client = redis.asyncio.cluster.RedisCluster.from_url(redis_cluster.url)
    backend = AsyncRedisBackend(client, prefix="co-acluster:")
    bucket = AsyncTokenBucket("tasks", rate=RATE_TEXT, capacity=CAPACITY, backend=backend, clock=ManualClock(5.0))
    requests = [(1, None)] * 30
    try:
        delays = await reserve_each(bucket, requests)
    finally:
        await client.aclose()
    assert delays == pytest.approx([float(d) for d in expected(requests) if d is not None], abs=1e-9)


# ---------------------------------------------------------------- no overspend, judged by the exact upstream


@pytest.mark.parametrize("frontend", ["threads", "asyncio"])
def test_many_callers_on_the_coalesced_path_never_overspend(url: str, frontend: str) -> None:
    """32 callers keep a bucket busy for 100 virtual rounds; every start is judged by the exact upstream.

    Each round, at one virtual instant, every caller whose last reservation has started reserves
    again, all at once (so they share calls); its start is that instant plus its delay, exactly.
    """
    from concurrent.futures import ThreadPoolExecutor

    from oracle import Upstream, replay

    rate, capacity, callers, rounds, step = 400.0, 5.0, 32, 100, 0.04  # about 16 callers ready each round
    clock = ManualClock(0.0, autojump=False)
    ledger: list[tuple[float, float, int]] = []
    free_at = [0.0] * callers  # when each caller's last reservation starts
    calls: list[int] = []

    def record(ready: list[int], delays: list[float], now: float) -> None:
        for i, delay in zip(ready, delays, strict=True):
            free_at[i] = now + delay
            ledger.append((now + delay, 1.0, len(ledger)))

    if frontend == "threads":
        client = redis.Redis.from_url(url, max_connections=callers)
        spy = EvalshaSpy(client)
        bucket = TokenBucket(
            "ledger",
            rate=Rate(rate),
            capacity=capacity,
            backend=RedisBackend(client, prefix=f"co-l{uuid.uuid4().hex}:"),
            clock=clock,
        )
        with ThreadPoolExecutor(callers) as pool:
            for _ in range(rounds):
                now = clock.now()
                ready = [i for i in range(callers) if free_at[i] <= now]
                record(ready, list(pool.map(lambda _: bucket.reserve(1).delay, ready)), now)
                clock.advance(step)
        client.close()
        calls = spy.requests
    else:

        async def main() -> list[int]:
            client = redis.asyncio.Redis.from_url(url, max_connections=callers)
            spy = EvalshaSpy(client)
            backend = AsyncRedisBackend(client, prefix=f"co-l{uuid.uuid4().hex}:")
            bucket = AsyncTokenBucket("ledger", rate=Rate(rate), capacity=capacity, backend=backend, clock=clock)

            async def delay() -> float:
                return (await bucket.reserve(1)).delay

            for _ in range(rounds):
                now = clock.now()
                ready = [i for i in range(callers) if free_at[i] <= now]
                record(ready, list(await asyncio.gather(*(delay() for _ in ready))), now)
                clock.advance(step)
            await client.aclose()
            return spy.requests

        calls = asyncio.run(main())
    horizon = rounds * step
    granted = sum(1 for t, _, _ in ledger if t <= horizon)
    assert granted >= 0.95 * (capacity + rate * horizon)  # the bucket was kept busy
    assert len(calls) < len(ledger) / 4  # on the coalesced path: calls carried several reserves
    violations = replay(Upstream(rate, capacity), ledger)
    assert not violations, [str(v) for v in violations[:5]]
