"""A ``"token-bucket"`` strategy for `limits`, so for Flask-Limiter and SlowAPI too.

Import this module once, anywhere before the rate limiter is built (for example
next to the app's imports), and name the strategy:

    import tokenbucket.integrations.limits  # registers "token-bucket"

    limiter = Limiter(get_remote_address, app=app, strategy="token-bucket",
                      storage_uri="redis://localhost:6379/0")

Every limit then becomes a real token bucket: a limit of ``N per T`` holds at
most ``N`` tokens (the burst) and refills continuously at ``N / T`` tokens a
second, so a client that has been quiet may burst ``N`` requests, and one that
keeps calling gets a steady ``N / T`` a second, not ``N`` at the start of each
window. A request of cost ``c`` is admitted when the bucket holds ``c`` tokens;
a rejected request is charged nothing. A cost above ``N`` is never admitted.

The bucket lives in the storage the limiter already uses:

* limits' ``MemoryStorage`` (sync or ``limits.aio``): a `tokenbucket.MemoryBackend`
  kept per storage object, so every strategy built on one storage shares the
  buckets.
* limits' ``RedisStorage`` (``redis://``, ``rediss://``, ``redis+unix://``, and
  the ``redis+sentinel://`` and ``redis+cluster://`` variants) and the ``limits.aio`` ``RedisStorage`` built with
  ``implementation="redispy"`` (``async+redis://``): the storage's own Redis
  client with tokenbucket's `tokenbucket.RedisBackend` (`tokenbucket.AsyncRedisBackend`),
  keys named ``{<key_prefix>:tokenbucket:<limit key>}:*``. Every key has a TTL:
  a bucket that is full again disappears a minute later. Time comes from Redis
  ``TIME``, one clock for every host.

``storage.reset()`` (Flask-Limiter's ``limiter.reset()``) does not reach the
buckets (limits deletes its own keys only); `TokenBucketRateLimiter.clear`
refills one bucket.

Several limits at once: Flask-Limiter and SlowAPI split ``"10/second;600/hour"``
into two limits and call ``hit`` once for each, in order, so the first is charged
when the second refuses (with every strategy). `TokenBucketRateLimiter.hit_all`
takes the limits together, as the bandwidths of one bucket: all or nothing, in
one atomic step.

Other storages raise ``NotImplementedError`` when the strategy is built, as
limits' own strategies do for storages they do not support.

What the frameworks read (`TokenBucketRateLimiter.get_window_stats`):
``remaining`` is the whole tokens left; ``reset_time`` is the wall-clock time at
which ``remaining`` next grows by one (now, when the bucket is full). On a
rejected request that is when a request of cost 1 will be admitted, so the
``Retry-After`` that Flask-Limiter and SlowAPI derive from it is the honest wait,
and ``X-RateLimit-Reset`` is that time.

Registration is idempotent: importing this module again, or calling `register`
again, changes nothing. It replaces any other strategy registered under the
same name (importing this module is how a user asks for this one). limits has
an open proposal for a token bucket of its own (alisaifee/limits#364); it uses
the same name, the same class name for the sync strategy, and the same meaning
(burst = amount, refill = amount per expiry, a refused hit takes nothing, a new
bucket is full), so code written against this strategy keeps working if limits
ships one.

Failures of the store: with ``wrap_exceptions=True`` on the limits storage
they are raised as ``limits.errors.StorageError`` (the tokenbucket
`tokenbucket.BackendError` is its ``__cause__``), otherwise as
`tokenbucket.BackendError`; either way Flask-Limiter's in-memory fallback and
``swallow_errors`` work as with limits' own strategies.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
import time
import weakref
from collections.abc import Generator, Iterator, Sequence
from functools import lru_cache
from typing import Any, TypeVar, cast

import limits.aio.strategies
import limits.strategies
from limits import RateLimitItem
from limits.errors import StorageError
from limits.util import WindowStats

from .._clock import Clock
from .._exceptions import BackendError
from .._model import Policy, Snapshot
from .._rate import Rate
from .._validate import check_cost
from ..backends import MemoryBackend
from ..backends._base import band_keys

__all__ = [
    "STRATEGY_NAME",
    "AsyncTokenBucketRateLimiter",
    "TokenBucketRateLimiter",
    "backend_for",
    "register",
    "window_stats",
]

STRATEGY_NAME = "token-bucket"
"""The name under which the strategies are registered with limits."""

_T = TypeVar("_T")

_backends: weakref.WeakKeyDictionary[object, Any] = weakref.WeakKeyDictionary()
_backends_lock = threading.Lock()


def backend_for(storage: object) -> Any:
    """The tokenbucket backend that holds the buckets of a limits storage.

    One backend per storage object, made on first use: every strategy built on
    the same storage shares the same buckets.

    Args:
        storage: A limits storage (sync or ``limits.aio``).

    Returns:
        A `tokenbucket.MemoryBackend` for a memory storage; a Redis backend on
        the storage's own client for a Redis storage.

    Raises:
        NotImplementedError: the storage is of a kind the strategy does not support.
    """
    with _backends_lock:
        backend = _backends.get(storage)
        if backend is None:
            backend = _backends[storage] = _make_backend(storage)
        return backend


def _make_backend(storage: object) -> Any:
    from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
    from limits.aio.storage import RedisStorage as AsyncRedisStorage
    from limits.storage import MemoryStorage, RedisStorage

    if isinstance(storage, (MemoryStorage, AsyncMemoryStorage)):
        return MemoryBackend()
    if isinstance(storage, RedisStorage):
        server = getattr(storage, "target_server", "redis")  # "valkey" since limits 4.3
        if server != "redis":
            raise NotImplementedError(f"the token-bucket strategy needs a redis-py client, not {server}")
        return _redis_backend(storage.get_connection(), storage.key_prefix)
    if isinstance(storage, AsyncRedisStorage):
        from limits.aio.storage.redis.redispy import RedispyBridge

        bridge = getattr(storage, "bridge", None)
        if type(bridge) is not RedispyBridge:
            raise NotImplementedError(
                "the token-bucket strategy on limits.aio RedisStorage needs the redis-py client: "
                "build the storage with implementation='redispy' "
                "(for example storage_from_string('async+redis://...', implementation='redispy'))"
            )
        return _redis_backend(bridge.get_connection(), bridge.key_prefix)
    raise NotImplementedError(
        f"the token-bucket strategy is not implemented for storage of type {type(storage).__name__}; "
        "use a memory or Redis storage"
    )


def _redis_backend(client: Any, key_prefix: str) -> Any:
    import redis.asyncio

    from ..backends import AsyncRedisBackend, RedisBackend

    prefix = f"{key_prefix}:tokenbucket:"
    if isinstance(client, redis.asyncio.Redis):
        return AsyncRedisBackend(client, prefix=prefix)
    return RedisBackend(client, prefix=prefix)


@lru_cache(maxsize=1024)
def _policy(amount: int, per: float) -> Policy:
    return Policy.build(Rate(amount, per=per))


def _policy_for(item: RateLimitItem) -> Policy | None:
    """The bucket policy of a limit: burst ``amount``, refill ``amount`` per expiry; None for a zero limit."""
    if item.amount <= 0:
        return None
    return _policy(item.amount, float(item.get_expiry()))


def _parts(
    items: Sequence[RateLimitItem], identifiers: tuple[str, ...], cost: float
) -> list[tuple[str, Policy, float]] | None:
    """The ``(key, policy, cost)`` of each limit of one bucket of several bandwidths; None if one never admits.

    The bucket is named by every limit's key, so it is its own (it shares no
    state with `hit` on one of the limits), and its bandwidths' keys share one
    hash slot on Redis Cluster.
    """
    if isinstance(items, RateLimitItem) or not items:
        raise TypeError("hit_all and test_all take a non-empty sequence of limits (limits.parse_many)")
    policies = [_policy_for(item) for item in items]
    if any(policy is None or cost > policy.capacity for policy in policies):
        return None
    keys = band_keys("+".join(item.key_for(*identifiers) for item in items), len(policies))
    return [(key, policy, cost) for key, policy in zip(keys, policies, strict=True) if policy is not None]


def window_stats(snapshot: Snapshot, wall_now: float) -> WindowStats:
    """Describe a bucket the way limits' strategies do.

    Pure arithmetic on a snapshot taken at wall-clock time ``wall_now``.

    Returns:
        ``WindowStats(reset_time, remaining)``: ``remaining`` is the whole
        tokens left (never negative); ``reset_time`` is the wall-clock time
        when ``remaining`` next grows by one, or ``wall_now`` when the bucket
        is full.
    """
    tokens = snapshot.tokens
    capacity = snapshot.capacity
    whole = max(0, math.floor(tokens))
    if tokens >= capacity:
        return WindowStats(wall_now, whole)
    target = min(capacity, whole + 1)
    return WindowStats(wall_now + (target - tokens) / snapshot.rate.per_second, whole)


_Op = tuple[Any, ...]
"""A backend call a flow wants made: ``(method name, *arguments)``."""

_Flow = Generator[_Op, Any, _T]


class _Core:
    """What the sync and async strategies share: the backend, the clock, and the flows.

    Each operation is written once, as a generator that yields the backend
    calls it needs and returns the answer; `TokenBucketRateLimiter` drives it
    with plain calls, `AsyncTokenBucketRateLimiter` with awaits (as
    `tokenbucket.TokenBucket` and `tokenbucket.AsyncTokenBucket` do).
    """

    storage: Any

    clock: Clock | None
    """The clock the buckets' time is read on; may be set after the strategy is built.

    None (the default) uses the store's own clock: Redis ``TIME``, or the
    process's monotonic clock in memory. Set a `tokenbucket.testing.ManualClock`
    to drive the buckets in virtual time in tests (before the first request: a
    bucket keeps the time of the clock that last touched it). Only the buckets'
    arithmetic uses it: ``reset_time`` is always reported on the wall clock
    (`time.time`).
    """

    def _setup(self, storage: Any, clock: Clock | None) -> None:
        self._backend = backend_for(storage)
        self.clock = clock

    def _now(self) -> float | None:
        clock = self.clock
        return None if clock is None else clock.now()

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """Raise store failures the way the limits storage is configured to."""
        try:
            yield
        except BackendError as exc:
            if getattr(self.storage, "wrap_exceptions", False):
                raise StorageError(exc) from exc
            raise

    def _hit_flow(self, item: RateLimitItem, identifiers: tuple[str, ...], cost: int) -> _Flow[bool]:
        key, policy, c = item.key_for(*identifiers), _policy_for(item), check_cost(cost)
        if policy is None or c > policy.capacity:
            return False
        ticket = yield ("reserve", key, policy, c, 0.0, self._now())
        return bool(ticket[0])

    def _hit_all_flow(self, items: Sequence[RateLimitItem], identifiers: tuple[str, ...], cost: int) -> _Flow[bool]:
        parts = _parts(items, identifiers, check_cost(cost))
        if parts is None:
            return False
        if len(parts) == 1:
            ticket = yield ("reserve", *parts[0], 0.0, self._now())
        else:
            ticket = yield ("reserve_all", parts, 0.0, self._now())
        return bool(ticket[0])

    def _test_all_flow(self, items: Sequence[RateLimitItem], identifiers: tuple[str, ...], cost: int) -> _Flow[bool]:
        parts = _parts(items, identifiers, check_cost(cost))
        if parts is None:
            return False
        for key, policy, c in parts:
            snap: Snapshot = yield ("snapshot", key, policy, self._now())
            if snap.tokens < c:
                return False
        return True

    def _test_flow(self, item: RateLimitItem, identifiers: tuple[str, ...], cost: int) -> _Flow[bool]:
        key, policy, c = item.key_for(*identifiers), _policy_for(item), check_cost(cost)
        if policy is None or c > policy.capacity:
            return False
        snap: Snapshot = yield ("snapshot", key, policy, self._now())
        return snap.tokens >= c

    def _stats_flow(self, item: RateLimitItem, identifiers: tuple[str, ...]) -> _Flow[WindowStats]:
        policy = _policy_for(item)
        if policy is None:
            return WindowStats(time.time(), 0)
        snap: Snapshot = yield ("snapshot", item.key_for(*identifiers), policy, self._now())
        return window_stats(snap, time.time())

    def _clear_flow(self, item: RateLimitItem, identifiers: tuple[str, ...]) -> _Flow[None]:
        policy = _policy_for(item)
        if policy is not None:
            yield ("sync", item.key_for(*identifiers), policy, policy.capacity, self._now())

    def _run(self, flow: _Flow[_T]) -> _T:
        """Drive a flow with plain calls."""
        try:
            op = next(flow)
            while True:
                with self._translate():
                    result = getattr(self._backend, op[0])(*op[1:])
                op = flow.send(result)
        except StopIteration as stop:
            value: _T = stop.value
            return value

    async def _arun(self, flow: _Flow[_T]) -> _T:
        """Drive a flow with awaits (a memory backend, which never blocks, is called directly)."""
        try:
            op = next(flow)
            while True:
                with self._translate():
                    result = getattr(self._backend, op[0])(*op[1:])
                    if inspect.isawaitable(result):
                        result = await result
                op = flow.send(result)
        except StopIteration as stop:
            value: _T = stop.value
            return value


class TokenBucketRateLimiter(_Core, limits.strategies.RateLimiter):
    """A limits strategy that is a real token bucket (see the module docs).

    Args:
        storage: A limits memory or Redis storage.
        clock: See `clock`; default the store's own clock.

    Raises:
        NotImplementedError: the storage is of a kind the strategy does not support.
    """

    def __init__(self, storage: Any, *, clock: Clock | None = None) -> None:
        super().__init__(storage)
        self._setup(storage, clock)

    def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        """Take ``cost`` tokens if the bucket holds them; never blocks.

        Returns:
            True if the tokens were taken; False (taking nothing) otherwise,
            and always for a cost above the limit's amount.

        Raises:
            tokenbucket.ConfigurationError: ``cost`` is negative or not finite.
        """
        return self._run(self._hit_flow(item, identifiers, cost))

    def test(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        """Whether `hit` with ``cost`` would succeed now. Takes nothing."""
        return self._run(self._test_flow(item, identifiers, cost))

    def hit_all(self, items: Sequence[RateLimitItem], *identifiers: str, cost: int = 1) -> bool:
        """Take ``cost`` from every limit of ``items`` at once, or from none; never blocks.

        ``items`` is a sequence of limits, such as ``limits.parse_many("10/second;600/hour")``.
        They are the bandwidths of one bucket, in one atomic step (one round trip
        on Redis, Cluster included): a limit that refuses leaves every other one
        uncharged, which calling `hit` once per limit cannot promise.

        Returns:
            True if every limit admitted the request; False (taking nothing) otherwise.

        Raises:
            TypeError: ``items`` is not a non-empty sequence of limits.
            tokenbucket.ConfigurationError: ``cost`` is negative or not finite.
        """
        return self._run(self._hit_all_flow(items, identifiers, cost))

    def test_all(self, items: Sequence[RateLimitItem], *identifiers: str, cost: int = 1) -> bool:
        """Whether `hit_all` with ``cost`` would succeed now. Takes nothing."""
        return self._run(self._test_all_flow(items, identifiers, cost))

    def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        """``(reset_time, remaining)``: see `window_stats`. Takes nothing."""
        return self._run(self._stats_flow(item, identifiers))

    def clear(self, item: RateLimitItem, *identifiers: str) -> None:
        """Refill the bucket to its capacity."""
        self._run(self._clear_flow(item, identifiers))


class AsyncTokenBucketRateLimiter(_Core, limits.aio.strategies.RateLimiter):
    """The ``limits.aio`` twin of `TokenBucketRateLimiter`: the same methods, awaitable.

    Args:
        storage: A ``limits.aio`` memory storage, or Redis storage built with
            ``implementation="redispy"``.
        clock: See `TokenBucketRateLimiter.clock`.
    """

    def __init__(self, storage: Any, *, clock: Clock | None = None) -> None:
        super().__init__(storage)
        self._setup(storage, clock)

    async def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        """See `TokenBucketRateLimiter.hit`."""
        return await self._arun(self._hit_flow(item, identifiers, cost))

    async def test(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        """See `TokenBucketRateLimiter.test`."""
        return await self._arun(self._test_flow(item, identifiers, cost))

    async def hit_all(self, items: Sequence[RateLimitItem], *identifiers: str, cost: int = 1) -> bool:
        """See `TokenBucketRateLimiter.hit_all`."""
        return await self._arun(self._hit_all_flow(items, identifiers, cost))

    async def test_all(self, items: Sequence[RateLimitItem], *identifiers: str, cost: int = 1) -> bool:
        """See `TokenBucketRateLimiter.test_all`."""
        return await self._arun(self._test_all_flow(items, identifiers, cost))

    async def get_window_stats(self, item: RateLimitItem, *identifiers: str) -> WindowStats:
        """See `TokenBucketRateLimiter.get_window_stats`."""
        return await self._arun(self._stats_flow(item, identifiers))

    async def clear(self, item: RateLimitItem, *identifiers: str) -> None:
        """See `TokenBucketRateLimiter.clear`."""
        await self._arun(self._clear_flow(item, identifiers))


def register() -> None:
    """Register the strategies with limits under ``"token-bucket"``. Idempotent.

    Called when this module is imported; call it again only if something
    replaced the entries since.
    """
    cast(dict[str, Any], limits.strategies.STRATEGIES)[STRATEGY_NAME] = TokenBucketRateLimiter
    cast(dict[str, Any], limits.aio.strategies.STRATEGIES)[STRATEGY_NAME] = AsyncTokenBucketRateLimiter


register()
