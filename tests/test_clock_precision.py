"""Time: one answer for a clock that steps back on every path, and start times that keep their precision on Redis."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from tokenbucket import RedisBackend, TokenBucket
from tokenbucket import _model as model
from tokenbucket.backends import Policy
from tokenbucket.backends._redis import parse_state

EPOCH = 1_780_000_000  # the Redis scripts count server time from here (lua/bucket.lua)


class SteppingClock:
    """A clock the test sets to any reading, backwards included (an NTP step, another host's clock)."""

    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    async def asleep(self, seconds: float) -> None:
        self.t += seconds


@pytest.mark.usefixtures("frontend")
def test_a_clock_that_steps_back_stands_still_on_every_path(make_bucket: Callable[..., Any]) -> None:
    clock = SteppingClock(1000.0)
    bucket = make_bucket("1/second", capacity=2, clock=clock)
    bucket.acquire(1)  # 1 left, stored at t=1000
    clock.t = 995.0  # five seconds back
    assert bucket.try_acquire(1) is not None  # the token that is there (the fast path)
    assert bucket.reserve(1).delay == 1  # one second from the stored time, not six from the clock's
    assert bucket.reserve(1).delay == 2  # the queued path says the same
    assert bucket.try_acquire(1) is None
    clock.t = 1000.5  # caught up: half a second of refill since 1000, and 3 tokens promised ahead
    assert bucket.snapshot().tokens == pytest.approx(-1.5)


policies = st.builds(
    Policy.build,
    rate=st.sampled_from(["1/second", "5/minute", "1000/second"]),
    capacity=st.sampled_from([1.0, 10.0, 300.0]),
    overdraft=st.sampled_from([0.0, 5.0, math.inf]),
    min_start=st.sampled_from([0.0, 1.0]),
)


@given(
    policy=policies,
    tokens=st.floats(-50, 300),
    updated=st.floats(0, 1e6),
    back=st.floats(0, 1e6),
    cost=st.floats(0, 20),
)
def test_the_fast_path_and_the_model_agree_when_the_clock_steps_back(
    policy: Policy, tokens: float, updated: float, back: float, cost: float
) -> None:
    tokens = min(tokens, policy.capacity)
    if cost > policy.max_cost:
        return
    now = updated - back
    taken = model.try_take(tokens, updated, now, cost, policy)
    result = model.reserve(model.BucketState(tokens, updated), policy, now, cost, 0.0, 1)
    if taken is None:
        assert isinstance(result, model.Rejected)
    else:
        assert isinstance(result, model.Reserved)
        assert result.delay == 0
        assert result.state.tokens == taken


# --------------------------------------------------------------------------- Redis's own clock


def _server_now(client: redis.Redis) -> float:
    sec, usec = client.time()
    return (int(sec) - EPOCH) + int(usec) / 1e6


@pytest.mark.redis
def test_start_times_keep_their_precision_on_the_server_clock(redis_client: redis.Redis, redis_prefix: str) -> None:
    # A 1e9/s bucket, drained: 100 tokens take 100 ns. At 1.8e9 s since 1970 a double
    # resolves 238 ns, so a start counted from 1970 rounds to "now"; from the epoch it does not.
    backend = RedisBackend(redis_client, prefix=redis_prefix)
    bucket = TokenBucket("fast", "1000000000/second", capacity=100, backend=backend)
    policy = backend._args(bucket.policy, None)[1]
    ahead = _server_now(redis_client) + 30  # stored 30 s ahead: the server's clock stands still there
    raw = struct.pack("<5d", 0.0, ahead, 0.0, -math.inf, EPOCH) + policy  # drained, nothing queued
    key = backend.bucket_keys("fast")[0]
    redis_client.set(key, raw, px=60_000)
    reservation = bucket.reserve(100)
    assert reservation.delay == pytest.approx(1e-7, rel=0.2)  # 100 ns, not 0
    reservation.cancel()


@pytest.mark.redis
def test_a_state_written_by_version_0_1_is_read_and_moved_to_the_epoch(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    backend = RedisBackend(redis_client, prefix=redis_prefix)
    bucket = TokenBucket("old", "10/second", capacity=10, backend=backend)
    policy = backend._args(bucket.policy, None)[1]
    absolute = EPOCH + _server_now(redis_client) - 0.5  # 0.5 s ago, counted from 1970 as 0.1 did
    key = backend.bucket_keys("old")[0]
    redis_client.set(key, struct.pack("<4d", 0.0, absolute, 7.0, -math.inf) + policy, px=60_000)
    assert bucket.try_acquire(1) is not None  # about 5 tokens refilled in the half second
    state = parse_state(redis_client.get(key))
    assert state is not None
    assert state["epoch"] == EPOCH
    assert state["last_id"] == 7
    assert 3.9 <= state["tokens"] <= 4.5
    assert abs(state["updated"] - _server_now(redis_client)) < 5
