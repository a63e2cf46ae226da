"""The ``"token-bucket"`` limits strategy, directly and through Flask-Limiter and SlowAPI.

Bucket time is a `ManualClock` set on the strategy; the wall clock
(`time.time`, which limits, Flask-Limiter and SlowAPI read for headers) is
pinned to follow it, so every header value is exact.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import limits
import limits.aio.strategies
import limits.strategies
import pytest
from fastapi import Request, Response  # module level: FastAPI resolves the endpoints' annotations here
from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
from limits.storage import storage_from_string

import tokenbucket.integrations.limits as tb_limits
from tokenbucket import ConfigurationError
from tokenbucket.integrations.limits import AsyncTokenBucketRateLimiter, TokenBucketRateLimiter, window_stats
from tokenbucket.testing import ManualClock

WALL0 = 1_800_000_000.5
"""Wall-clock time at virtual time 0 (a half second, so Flask-Limiter's rounding is visible and exact)."""


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """Virtual time for the buckets, with `time.time` pinned to it."""
    clock = ManualClock(100.0)
    monkeypatch.setattr(time, "time", lambda: WALL0 + clock.now())
    return clock


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def storage_uri(request: pytest.FixtureRequest) -> str:
    """A limits storage URI: memory, or the suite's private Redis server."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def key_prefix() -> str:
    """A limits key prefix no other test uses, so tests sharing the Redis server never share a bucket."""
    return f"T{uuid.uuid4().hex[:12]}"


@pytest.fixture
def strategy(storage_uri: str, key_prefix: str, clock: ManualClock) -> Iterator[TokenBucketRateLimiter]:
    storage = storage_from_string(storage_uri, key_prefix=key_prefix)
    yield TokenBucketRateLimiter(storage, clock=clock)
    storage.reset()


FIVE_PER_MINUTE = limits.parse("5/minute")  # a token every 12 s


class TestRegistration:
    def test_registered_for_sync_and_async(self) -> None:
        assert limits.strategies.STRATEGIES["token-bucket"] is TokenBucketRateLimiter
        assert limits.aio.strategies.STRATEGIES["token-bucket"] is AsyncTokenBucketRateLimiter

    def test_idempotent(self) -> None:
        before = dict(limits.strategies.STRATEGIES)
        tb_limits.register()
        tb_limits.register()
        assert before == limits.strategies.STRATEGIES
        assert limits.aio.strategies.STRATEGIES["token-bucket"] is AsyncTokenBucketRateLimiter

    def test_replaces_another_strategy_of_the_same_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(limits.strategies.STRATEGIES, "token-bucket", limits.strategies.FixedWindowRateLimiter)
        tb_limits.register()
        assert limits.strategies.STRATEGIES["token-bucket"] is TokenBucketRateLimiter

    def test_unsupported_storage_is_refused(self) -> None:
        class Elsewhere:
            pass

        with pytest.raises(NotImplementedError, match="not implemented for storage of type Elsewhere"):
            tb_limits.backend_for(Elsewhere())


class TestStrategy:
    def test_burst_is_the_amount_then_refusals_charge_nothing(
        self, strategy: TokenBucketRateLimiter, clock: ManualClock
    ) -> None:
        assert [strategy.hit(FIVE_PER_MINUTE, "k") for _ in range(7)] == [True] * 5 + [False] * 2
        clock.advance(12)  # exactly one token back: the refused hits took nothing
        assert strategy.hit(FIVE_PER_MINUTE, "k")
        assert not strategy.hit(FIVE_PER_MINUTE, "k")

    def test_refills_continuously_not_per_window(self, strategy: TokenBucketRateLimiter, clock: ManualClock) -> None:
        for _ in range(5):
            strategy.hit(FIVE_PER_MINUTE, "k")
        clock.advance(30)  # half the period: 2.5 tokens, where a fixed window would give 0 or 5
        assert [strategy.hit(FIVE_PER_MINUTE, "k") for _ in range(3)] == [True, True, False]

    def test_idle_refill_is_capped_at_the_amount(self, strategy: TokenBucketRateLimiter, clock: ManualClock) -> None:
        strategy.hit(FIVE_PER_MINUTE, "k")
        clock.advance(3600)
        assert sum(strategy.hit(FIVE_PER_MINUTE, "k") for _ in range(10)) == 5

    def test_identifiers_and_limits_are_separate_buckets(self, strategy: TokenBucketRateLimiter) -> None:
        for _ in range(5):
            assert strategy.hit(FIVE_PER_MINUTE, "alice")
        assert not strategy.hit(FIVE_PER_MINUTE, "alice")
        assert strategy.hit(FIVE_PER_MINUTE, "bob")
        assert strategy.hit(limits.parse("5/hour"), "alice")

    def test_cost(self, strategy: TokenBucketRateLimiter, clock: ManualClock) -> None:
        assert strategy.hit(FIVE_PER_MINUTE, "k", cost=3)
        assert not strategy.hit(FIVE_PER_MINUTE, "k", cost=3)  # 2 left
        assert strategy.hit(FIVE_PER_MINUTE, "k", cost=2)
        assert strategy.hit(FIVE_PER_MINUTE, "k", cost=0)
        clock.advance(3600)
        assert not strategy.hit(FIVE_PER_MINUTE, "k", cost=6)  # above the burst: never
        assert not strategy.test(FIVE_PER_MINUTE, "k", cost=6)
        assert strategy.get_window_stats(FIVE_PER_MINUTE, "k").remaining == 5
        with pytest.raises(ConfigurationError):
            strategy.hit(FIVE_PER_MINUTE, "k", cost=-1)

    def test_test_takes_nothing(self, strategy: TokenBucketRateLimiter) -> None:
        for _ in range(4):
            strategy.hit(FIVE_PER_MINUTE, "k")
        assert strategy.test(FIVE_PER_MINUTE, "k")
        assert strategy.test(FIVE_PER_MINUTE, "k")
        assert not strategy.test(FIVE_PER_MINUTE, "k", cost=2)
        assert strategy.hit(FIVE_PER_MINUTE, "k")
        assert not strategy.test(FIVE_PER_MINUTE, "k")

    def test_window_stats(self, strategy: TokenBucketRateLimiter, clock: ManualClock) -> None:
        now = WALL0 + clock.now()
        assert strategy.get_window_stats(FIVE_PER_MINUTE, "k") == (now, 5)  # full: nothing to wait for
        strategy.hit(FIVE_PER_MINUTE, "k", cost=5)
        stats = strategy.get_window_stats(FIVE_PER_MINUTE, "k")
        assert stats.remaining == 0
        assert stats.reset_time == pytest.approx(now + 12)  # when a cost-1 hit will pass
        clock.advance(18)  # 1.5 tokens
        stats = strategy.get_window_stats(FIVE_PER_MINUTE, "k")
        assert stats.remaining == 1
        assert stats.reset_time == pytest.approx(now + 24)  # the second whole token
        clock.set(stats.reset_time - WALL0 - 0.001)
        assert not strategy.hit(FIVE_PER_MINUTE, "k", cost=2)
        clock.set(stats.reset_time - WALL0)
        assert strategy.hit(FIVE_PER_MINUTE, "k", cost=2)

    def test_clear_refills(self, strategy: TokenBucketRateLimiter) -> None:
        strategy.hit(FIVE_PER_MINUTE, "k", cost=5)
        strategy.clear(FIVE_PER_MINUTE, "k")
        assert strategy.get_window_stats(FIVE_PER_MINUTE, "k").remaining == 5

    def test_strategies_on_one_storage_share_buckets(
        self, storage_uri: str, key_prefix: str, clock: ManualClock
    ) -> None:
        storage = storage_from_string(storage_uri, key_prefix=key_prefix)
        try:
            one = TokenBucketRateLimiter(storage, clock=clock)
            two = limits.strategies.STRATEGIES["token-bucket"](storage)
            assert isinstance(two, TokenBucketRateLimiter)
            two.clock = clock
            one.hit(FIVE_PER_MINUTE, "k", cost=4)
            assert two.get_window_stats(FIVE_PER_MINUTE, "k").remaining == 1
        finally:
            storage.reset()

    def test_zero_limit_admits_nothing(self, strategy: TokenBucketRateLimiter) -> None:
        zero = limits.parse("0/minute")
        assert not strategy.hit(zero, "k")
        assert not strategy.test(zero, "k")
        assert strategy.get_window_stats(zero, "k").remaining == 0


class TestWindowStatsArithmetic:
    @pytest.mark.parametrize(
        ("tokens", "remaining", "wait"),
        [(10.0, 10, 0.0), (9.5, 9, 0.25), (0.0, 0, 0.5), (0.2, 0, 0.4), (-3.0, 0, 2.0)],
    )
    def test_next_whole_token(self, tokens: float, remaining: int, wait: float) -> None:
        from tokenbucket import Rate
        from tokenbucket.backends import Policy

        policy = Policy.build(Rate(2, per=1), capacity=10)
        from tokenbucket import _model

        snap = _model.snapshot(_model.BucketState(tokens, 0.0), policy, 0.0)
        stats = window_stats(snap, 1000.0)
        assert stats.remaining == remaining
        assert stats.reset_time == pytest.approx(1000.0 + wait)


class TestAsyncStrategy:
    @pytest.fixture
    def aio_strategy(self, clock: ManualClock) -> AsyncTokenBucketRateLimiter:
        return AsyncTokenBucketRateLimiter(AsyncMemoryStorage(), clock=clock)

    async def _scenario(self, strategy: AsyncTokenBucketRateLimiter, clock: ManualClock) -> None:
        assert [await strategy.hit(FIVE_PER_MINUTE, "k") for _ in range(6)] == [True] * 5 + [False]
        assert not await strategy.test(FIVE_PER_MINUTE, "k")
        stats = await strategy.get_window_stats(FIVE_PER_MINUTE, "k")
        assert stats == (pytest.approx(WALL0 + clock.now() + 12), 0)
        clock.advance(12)
        assert await strategy.test(FIVE_PER_MINUTE, "k")
        assert await strategy.hit(FIVE_PER_MINUTE, "k")
        await strategy.clear(FIVE_PER_MINUTE, "k")
        assert (await strategy.get_window_stats(FIVE_PER_MINUTE, "k")).remaining == 5

    @pytest.mark.asyncio
    async def test_memory(self, aio_strategy: AsyncTokenBucketRateLimiter, clock: ManualClock) -> None:
        await self._scenario(aio_strategy, clock)

    @pytest.mark.asyncio
    async def test_built_by_name(self, clock: ManualClock) -> None:
        strategy = limits.aio.strategies.STRATEGIES["token-bucket"](AsyncMemoryStorage())
        assert isinstance(strategy, AsyncTokenBucketRateLimiter)
        strategy.clock = clock
        await self._scenario(strategy, clock)


# --------------------------------------------------------------------------- Flask-Limiter


def _flask_app(storage_uri: str, key_prefix: str, **limiter_options: Any) -> tuple[Any, Any]:
    from flask import Flask
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    app = Flask(__name__)
    limiter = Limiter(
        get_remote_address,
        app=app,
        strategy="token-bucket",
        storage_uri=storage_uri,
        key_prefix=key_prefix,
        headers_enabled=True,
        **limiter_options,
    )

    @app.route("/search")
    @limiter.limit("5/minute")
    def search() -> str:
        return "ok"

    @app.route("/export")
    @limiter.limit("5/minute", cost=2)
    def export() -> str:
        return "big"

    return app, limiter


class TestFlaskLimiter:
    @pytest.fixture
    def flask_client(self, storage_uri: str, key_prefix: str, clock: ManualClock) -> Iterator[Any]:
        app, limiter = _flask_app(storage_uri, key_prefix)
        assert isinstance(limiter.limiter, TokenBucketRateLimiter)
        limiter.limiter.clock = clock
        yield app.test_client()
        limiter.reset()

    def test_headers_and_429(self, flask_client: Any, clock: ManualClock) -> None:
        for left in [4, 3, 2, 1, 0]:
            response = flask_client.get("/search")
            assert response.status_code == 200
            assert response.headers["X-RateLimit-Limit"] == "5"
            assert response.headers["X-RateLimit-Remaining"] == str(left)
        refused = flask_client.get("/search")
        assert refused.status_code == 429
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        # The next token comes in 12 s; Flask-Limiter rounds the reset up to a whole second.
        assert refused.headers["X-RateLimit-Reset"] == str(int(WALL0 + clock.now() + 12 + 1))
        assert refused.headers["Retry-After"] == "12"

    def test_retry_after_is_honest(self, flask_client: Any, clock: ManualClock) -> None:
        for _ in range(5):
            flask_client.get("/search")
        retry_after = int(flask_client.get("/search").headers["Retry-After"])
        clock.advance(retry_after - 0.5)
        assert flask_client.get("/search").status_code == 429
        clock.advance(0.5)
        assert flask_client.get("/search").status_code == 200

    def test_steady_rate_after_the_burst(self, flask_client: Any, clock: ManualClock) -> None:
        statuses = [flask_client.get("/search").status_code for _ in range(5)]
        for _ in range(10):  # two minutes at one request every 12 s: all pass
            clock.advance(12)
            statuses.append(flask_client.get("/search").status_code)
        assert statuses == [200] * 15

    def test_cost(self, flask_client: Any) -> None:
        assert [flask_client.get("/export").status_code for _ in range(3)] == [200, 200, 429]
        assert flask_client.get("/search").status_code == 200  # a separate limit (scope per endpoint)


# --------------------------------------------------------------------------- SlowAPI (FastAPI / Starlette)


def _fastapi_app(storage_uri: str, key_prefix: str) -> tuple[Any, Any]:
    from fastapi import FastAPI
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address

    limiter = Limiter(
        key_func=get_remote_address,
        strategy="token-bucket",
        storage_uri=storage_uri,
        key_prefix=key_prefix,
        headers_enabled=True,
    )
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.get("/search")
    @limiter.limit("5/minute")
    async def search(request: Request, response: Response) -> dict[str, str]:
        return {"result": "ok"}

    return app, limiter


# Starlette's test client warns that it prefers httpx2 to httpx; the warning is about the test client only.
@pytest.mark.filterwarnings(
    "ignore:Using `httpx` with `starlette.testclient` is deprecated:starlette.exceptions.StarletteDeprecationWarning"
)
class TestSlowAPI:
    @pytest.fixture
    def api_client(self, storage_uri: str, key_prefix: str, clock: ManualClock) -> Iterator[Any]:
        from fastapi.testclient import TestClient

        app, limiter = _fastapi_app(storage_uri, key_prefix)
        assert isinstance(limiter.limiter, TokenBucketRateLimiter)
        limiter.limiter.clock = clock
        with TestClient(app) as client:
            yield client
        limiter.reset()

    def test_headers_and_429(self, api_client: Any, clock: ManualClock) -> None:
        for left in [4, 3, 2, 1, 0]:
            response = api_client.get("/search")
            assert response.status_code == 200
            assert response.headers["X-RateLimit-Limit"] == "5"
            assert response.headers["X-RateLimit-Remaining"] == str(left)
        refused = api_client.get("/search")
        assert refused.status_code == 429
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert float(refused.headers["X-RateLimit-Reset"]) == pytest.approx(WALL0 + clock.now() + 12 + 1)
        assert refused.headers["Retry-After"] == "13"  # SlowAPI adds a second and truncates

    def test_retry_after_lets_the_next_request_through(self, api_client: Any, clock: ManualClock) -> None:
        for _ in range(5):
            api_client.get("/search")
        retry_after = int(api_client.get("/search").headers["Retry-After"])
        clock.advance(retry_after)
        assert api_client.get("/search").status_code == 200
        assert api_client.get("/search").status_code == 429


# --------------------------------------------------------------------------- Redis specifics


@pytest.mark.redis
class TestRedis:
    def test_server_clock_and_real_headers(self, redis_url: str, key_prefix: str) -> None:
        """No test clock: the buckets run on Redis TIME; one token an hour makes the numbers exact enough."""
        from flask import Flask
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        app = Flask(__name__)
        limiter = Limiter(
            get_remote_address,
            app=app,
            strategy="token-bucket",
            storage_uri=redis_url,
            key_prefix=key_prefix,
            headers_enabled=True,
        )

        @app.route("/report")
        @limiter.limit("3/3hours")
        def report() -> str:
            return "ok"

        client = app.test_client()
        assert [client.get("/report").status_code for _ in range(4)] == [200, 200, 200, 429]
        refused = client.get("/report")
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert 3599 <= int(refused.headers["Retry-After"]) <= 3600
        limiter.reset()

    def test_buckets_are_shared_through_redis(self, redis_url: str, key_prefix: str, clock: ManualClock) -> None:
        """Two storages (two processes' worth of clients) on one server see one bucket."""
        one = TokenBucketRateLimiter(storage_from_string(redis_url, key_prefix=key_prefix), clock=clock)
        two = TokenBucketRateLimiter(storage_from_string(redis_url, key_prefix=key_prefix), clock=clock)
        assert one.hit(FIVE_PER_MINUTE, "k", cost=3)
        assert two.hit(FIVE_PER_MINUTE, "k", cost=2)
        assert not one.hit(FIVE_PER_MINUTE, "k")
        assert two.get_window_stats(FIVE_PER_MINUTE, "k").remaining == 0

    def test_every_key_has_a_ttl(self, redis_url: str, key_prefix: str, redis_client: Any) -> None:
        strategy = TokenBucketRateLimiter(storage_from_string(redis_url, key_prefix=key_prefix))
        strategy.hit(FIVE_PER_MINUTE, "k")
        keys = list(redis_client.scan_iter(match=f"{{{key_prefix}:tokenbucket:*"))
        assert keys
        assert all(redis_client.pttl(key) > 0 for key in keys)

    @pytest.mark.asyncio
    async def test_async_storage(self, redis_url: str, key_prefix: str, clock: ManualClock) -> None:
        storage = storage_from_string(
            redis_url.replace("redis://", "async+redis://"), implementation="redispy", key_prefix=key_prefix
        )
        strategy = AsyncTokenBucketRateLimiter(storage, clock=clock)
        await TestAsyncStrategy()._scenario(strategy, clock)
        await storage.bridge.get_connection().aclose()

    def test_store_failure_is_raised_as_limits_storage_error(self, private_redis_server: Any, key_prefix: str) -> None:
        from limits.errors import StorageError

        from tokenbucket import BackendError

        wrapped = TokenBucketRateLimiter(
            storage_from_string(private_redis_server.url, key_prefix=key_prefix, wrap_exceptions=True)
        )
        raw = TokenBucketRateLimiter(storage_from_string(private_redis_server.url, key_prefix=key_prefix))
        assert wrapped.hit(FIVE_PER_MINUTE, "k")
        private_redis_server.kill()
        with pytest.raises(StorageError) as caught:
            wrapped.hit(FIVE_PER_MINUTE, "k")
        assert isinstance(caught.value.__cause__, BackendError)
        with pytest.raises(BackendError):
            raw.get_window_stats(FIVE_PER_MINUTE, "k")

    def test_flask_limiter_falls_back_to_memory_when_redis_dies(
        self, private_redis_server: Any, key_prefix: str
    ) -> None:
        app, limiter = _flask_app(private_redis_server.url, key_prefix, in_memory_fallback_enabled=True)
        client = app.test_client()
        assert client.get("/search").status_code == 200
        private_redis_server.kill()
        # The fallback is a memory storage with the same strategy: a fresh bucket of 5.
        assert [client.get("/search").status_code for _ in range(6)] == [200] * 5 + [429]
        assert isinstance(limiter.limiter, TokenBucketRateLimiter)
        assert limiter.limiter.storage is not limiter.storage


class TestConcurrency:
    def test_threads_never_take_more_than_the_burst(self, strategy: TokenBucketRateLimiter) -> None:
        """Eight threads race for a limit of 100 an hour: exactly 100 hits pass (time is frozen)."""
        limit = limits.parse("100/hour")
        passed: list[bool] = []
        lock = threading.Lock()

        def worker() -> None:
            mine = [strategy.hit(limit, "shared") for _ in range(40)]
            with lock:
                passed.extend(mine)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(passed) == 320
        assert sum(passed) == 100


def test_importing_tokenbucket_imports_no_framework() -> None:
    code = (
        "import sys, tokenbucket, tokenbucket.integrations; "
        "bad = [m for m in ('celery', 'flask', 'flask_limiter', 'slowapi', 'starlette', 'limits.strategies', "
        "'limits.aio') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.redis
@pytest.mark.slow
def test_redis_cluster_storage(redis_cluster: Any, key_prefix: str, clock: ManualClock) -> None:
    """limits' ``redis+cluster://`` storage: the buckets' keys share a hash tag, so each lives in one slot."""
    nodes = ",".join(f"{node.host}:{node.port}" for node in redis_cluster.startup_nodes)
    storage = storage_from_string(f"redis+cluster://{nodes}", key_prefix=key_prefix)
    strategy = TokenBucketRateLimiter(storage, clock=clock)
    for ident in ("a", "b", "c", "d"):  # several buckets, so several slots
        assert [strategy.hit(FIVE_PER_MINUTE, ident) for _ in range(6)] == [True] * 5 + [False]
    clock.advance(12)
    assert strategy.hit(FIVE_PER_MINUTE, "a")
    assert strategy.get_window_stats(FIVE_PER_MINUTE, "b").remaining == 1
    storage.get_connection().close()


# --------------------------------------------------------------------------- several limits at once

BURST_AND_HOUR = limits.parse_many("2/second;5/hour")


class TestSeveralLimits:
    def test_hit_all_is_all_or_nothing(self, strategy: TokenBucketRateLimiter, clock: ManualClock) -> None:
        assert [strategy.hit_all(BURST_AND_HOUR, "k") for _ in range(3)] == [True, True, False]
        clock.advance(1)  # the burst limit is full again; the hour limit holds 3
        assert [strategy.hit_all(BURST_AND_HOUR, "k") for _ in range(3)] == [True, True, False]
        clock.advance(1)  # the hour limit holds 1 (+ 2 s of 5/hour): the burst limit is not charged past it
        assert strategy.hit_all(BURST_AND_HOUR, "k")
        assert not strategy.test_all(BURST_AND_HOUR, "k")
        assert not strategy.hit_all(BURST_AND_HOUR, "k")
        clock.advance(3600 / 5)  # one more token of the hour limit; the burst limit is full
        assert strategy.test_all(BURST_AND_HOUR, "k")
        assert strategy.hit_all(BURST_AND_HOUR, "k")

    def test_hit_one_by_one_charges_the_first_when_the_second_refuses(self, strategy: TokenBucketRateLimiter) -> None:
        """What frameworks do with every strategy (hit per limit, in order), and why hit_all exists."""
        burst, hour = limits.parse_many("5/second;1/hour")
        assert strategy.hit(burst, "k")
        assert strategy.hit(hour, "k")
        assert strategy.hit(burst, "k")
        assert not strategy.hit(hour, "k")
        assert strategy.get_window_stats(burst, "k").remaining == 3  # charged though the request was refused
        assert strategy.hit_all([burst, hour], "j")  # a fresh pair of limits admits once an hour
        assert not strategy.hit_all([burst, hour], "j")
        assert [strategy.hit(burst, "j") for _ in range(5)] == [True] * 5  # separate from the pair's bucket

    def test_costs_above_any_limit_and_bad_input(self, strategy: TokenBucketRateLimiter) -> None:
        assert not strategy.hit_all(BURST_AND_HOUR, "k", cost=3)
        assert strategy.hit_all(BURST_AND_HOUR, "k", cost=2)
        assert strategy.hit_all(BURST_AND_HOUR[:1], "one")  # one limit: as hit
        with pytest.raises(TypeError, match="non-empty sequence"):
            strategy.hit_all(BURST_AND_HOUR[0], "k")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="non-empty sequence"):
            strategy.test_all([], "k")

    @pytest.mark.asyncio
    async def test_async_hit_all(self, storage_uri: str, key_prefix: str, clock: ManualClock) -> None:
        options: dict[str, Any] = {} if storage_uri == "memory://" else {"implementation": "redispy"}
        storage = storage_from_string("async+" + storage_uri, key_prefix=key_prefix, **options)
        strategy = AsyncTokenBucketRateLimiter(storage, clock=clock)
        assert [await strategy.hit_all(BURST_AND_HOUR, "k") for _ in range(3)] == [True, True, False]
        assert not await strategy.test_all(BURST_AND_HOUR, "k")
        clock.advance(1)
        assert await strategy.test_all(BURST_AND_HOUR, "k")
        if storage_uri != "memory://":
            await storage.bridge.get_connection().aclose()


def test_hit_all_on_redis_cluster_is_one_slot(redis_cluster: Any, key_prefix: str, clock: ManualClock) -> None:
    nodes = ",".join(f"{node.host}:{node.port}" for node in redis_cluster.startup_nodes)
    storage = storage_from_string(f"redis+cluster://{nodes}", key_prefix=key_prefix)
    strategy = TokenBucketRateLimiter(storage, clock=clock)
    for ident in ("a", "b", "c", "d"):  # several buckets, so several slots; each bucket's limits in one
        assert [strategy.hit_all(BURST_AND_HOUR, ident) for _ in range(3)] == [True, True, False]
    storage.get_connection().close()
