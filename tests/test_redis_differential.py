"""The Lua scripts and ``tokenbucket._model`` agree, step by step.

Hypothesis generates a policy and a sequence of operations (reserve with and
without a wait limit, cancel, settle, sync, snapshot, steps of time, including
backwards); each runs through the pure model and through `RedisBackend` with
the same injected ``now``, and every reply must agree within 1e-9.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_servers import RedisServer

from tokenbucket import AsyncRedisBackend, CostExceedsCapacity, PolicyMismatch, Rate, RedisBackend, Snapshot
from tokenbucket import _model as model
from tokenbucket._model import BucketState, Policy

pytestmark = pytest.mark.redis


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def assert_same_snapshot(mine: Snapshot, theirs: Snapshot) -> None:
    for field in ("tokens", "promised", "debt", "time_to_positive", "time_to_full"):
        a, b = getattr(mine, field), getattr(theirs, field)
        assert close(a, b), f"{field}: model {a!r} != lua {b!r}"
    assert (mine.capacity, mine.rate, mine.overdraft) == (theirs.capacity, theirs.rate, theirs.overdraft)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    amount = draw(st.sampled_from([1, 5, 7, 10, 100, 300]))
    per = draw(st.sampled_from([1.0, 0.25, 60.0]))
    capacity = draw(st.one_of(st.none(), st.floats(0.5, 500, allow_nan=False)))
    cap = float(amount) if capacity is None else capacity
    overdraft = draw(st.sampled_from([0.0, 0.0, 3.5, 50.0, math.inf]))
    min_start = draw(st.floats(0, cap))
    initial = draw(st.one_of(st.none(), st.just(0.0), st.floats(-100, cap)))
    return Policy.build(Rate(amount, per), capacity, overdraft, min_start, initial)


@dataclass(frozen=True)
class Step:
    kind: str
    a: float = 0.0
    b: float | None = None


costs = st.one_of(st.integers(0, 40).map(float), st.floats(0, 600, allow_nan=False, allow_infinity=False))
steps = st.one_of(
    st.builds(Step, st.just("reserve"), costs, st.one_of(st.none(), st.floats(0, 120))),
    st.builds(Step, st.just("cancel"), st.integers(0, 30).map(float)),
    st.builds(Step, st.just("settle"), st.floats(-300, 300)),
    st.builds(Step, st.just("sync"), st.floats(-1000, 600)),
    st.builds(Step, st.just("snapshot")),
    st.builds(Step, st.just("time"), st.one_of(st.just(0.0), st.floats(0, 30), st.floats(0, 5000))),
    st.builds(Step, st.just("back"), st.floats(0, 5)),  # a host whose clock is behind
    st.builds(Step, st.just("reconfigure")),  # switch to the other policy of the test
    st.builds(Step, st.just("mismatch")),  # the other policy, without reconfiguring: refused
)


@pytest.fixture(scope="module")
def backend(redis_server: RedisServer) -> Iterator[RedisBackend]:
    client = redis_server.client()
    yield RedisBackend(client, prefix=f"diff{uuid.uuid4().hex[:8]}:")
    client.close()


def run(backend: Any, policy: Policy, ops: list[Step], start: float, other: Policy | None = None) -> None:
    """Apply ``ops`` to the model and to the backend and compare every answer.

    ``other`` is the policy a "reconfigure" step switches to (and back); a "mismatch"
    step uses it without reconfiguring, which must be refused and change nothing.
    """
    other = policy if other is None else other
    key = uuid.uuid4().hex
    state: BucketState | None = None  # the model's stored state; None until created
    now = start
    ids: list[tuple[int, int]] = []  # (model id, lua id) of every reservation that had to wait
    next_id = 1

    def stored() -> BucketState:
        return model.fresh(policy, now) if state is None else state

    for op in ops:
        if op.kind == "reconfigure":
            state = model.fresh(other, now) if state is None else model.reconfigure(state, policy, other, now)
            policy, other = other, policy
            assert_same_snapshot(model.snapshot(state, policy, now), backend.reconfigure(key, policy, now))
            continue
        if op.kind == "mismatch":
            if state is not None and other.fingerprint() != policy.fingerprint():
                with pytest.raises(PolicyMismatch) as raised:
                    backend.snapshot(key, other, now)
                assert raised.value.stored == policy.fingerprint()
                assert raised.value.requested == other.fingerprint()
            continue
        if op.kind == "time":
            now += op.a
        elif op.kind == "back":
            now -= op.a
        elif op.kind == "reserve":
            try:
                result = model.reserve(stored(), policy, now, op.a, op.b, next_id)
            except CostExceedsCapacity:
                with pytest.raises(CostExceedsCapacity):
                    backend.reserve(key, policy, op.a, op.b, now)
                continue
            admitted, seconds, rid = backend.reserve(key, policy, op.a, op.b, now)
            state = result.state
            if isinstance(result, model.Rejected):
                assert not admitted
                assert rid is None
                assert close(seconds, result.retry_after), (seconds, result.retry_after)
            else:
                assert admitted
                assert close(seconds, result.delay), (seconds, result.delay)
                assert (rid is None) == (result.rid is None)
                if result.rid is not None:
                    assert rid is not None
                    ids.append((result.rid, rid))
                    next_id += 1
        elif op.kind == "cancel":
            mine, theirs = ids[int(op.a) % len(ids)] if ids else (10**9, 10**9)
            cancelled = model.cancel(stored(), policy, now, mine)
            state = cancelled.state
            refunded = backend.cancel(key, policy, theirs, now)
            assert close(refunded, cancelled.refunded), (refunded, cancelled.refunded)
        elif op.kind == "settle":
            state = model.settle(stored(), policy, now, op.a)
            assert_same_snapshot(model.snapshot(state, policy, now), backend.settle(key, policy, op.a, now))
        elif op.kind == "sync":
            state = model.sync(stored(), policy, now, op.a)
            assert_same_snapshot(model.snapshot(state, policy, now), backend.sync(key, policy, op.a, now))
        else:
            assert_same_snapshot(model.snapshot(stored(), policy, now), backend.snapshot(key, policy, now))
    assert_same_snapshot(model.snapshot(stored(), policy, now), backend.snapshot(key, policy, now))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    policy=policies(),
    other=policies(),
    ops=st.lists(steps, max_size=40),
    start=st.sampled_from([0.0, 1000.0, 1.7e9]),
)
def test_lua_matches_the_model(
    backend: RedisBackend, policy: Policy, other: Policy, ops: list[Step], start: float
) -> None:
    run(backend, policy, ops, start, other)


def test_a_known_sequence_with_waiting_reservations(backend: RedisBackend) -> None:
    """A fixed Keepa-like run, so a failure here reads without hypothesis' shrinking."""
    policy = Policy.build(Rate(5, 60.0), 300, math.inf, 1.0, None)
    ops = [
        Step("reserve", 20),
        Step("settle", 980),
        Step("reserve", 20, None),
        Step("reserve", 7.5, None),
        Step("time", 100),
        Step("reserve", 3, 10),  # rejected: would wait too long
        Step("cancel", 1),
        Step("sync", -500),
        Step("snapshot"),
        Step("time", 20000),
        Step("cancel", 0),  # started long ago: no refund
        Step("reserve", 301),
    ]
    run(backend, policy, ops, 1000.0)


def test_ttl_is_set_with_injected_time(backend: RedisBackend, redis_server: RedisServer) -> None:
    """Durations, not absolute times: a virtual clock at 0 or in 2100 gives the same sensible TTL."""
    policy = Policy.build(Rate(10, 1.0), 100)
    client: Any = redis_server.client()
    try:
        for now in (0.0, 4.1e9):
            key = uuid.uuid4().hex
            backend.reserve(key, policy, 50, None, now)  # half empty: 5 s to refill, plus idle_ttl (and slack)
            ttl = client.pttl(backend.bucket_keys(key)[0])
            assert 5000 + 60000 - 1000 < ttl <= 5000 + 60000 + 60000
    finally:
        client.close()


class SyncOverAsync:
    """Drives an `AsyncRedisBackend` from sync code, so `run` checks the asyncio twin too."""

    def __init__(self, backend: AsyncRedisBackend, loop: asyncio.AbstractEventLoop) -> None:
        self._backend = backend
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._backend, name)
        return lambda *args: self._loop.run_until_complete(method(*args))


@pytest.fixture(scope="module")
def async_backend(redis_server: RedisServer) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    backend = AsyncRedisBackend.from_url(redis_server.url, prefix=f"adiff{uuid.uuid4().hex[:8]}:")
    yield SyncOverAsync(backend, loop)
    loop.run_until_complete(backend.aclose())
    loop.close()


@settings(max_examples=60, deadline=None)
@given(policy=policies(), ops=st.lists(steps, max_size=30), start=st.sampled_from([0.0, 1.7e9]))
def test_async_backend_matches_the_model(async_backend: Any, policy: Policy, ops: list[Step], start: float) -> None:
    run(async_backend, policy, ops, start)
