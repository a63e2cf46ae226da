"""Priority lanes: a bulk lane never takes what an urgent one needs, an urgent request passes waiting bulk
reservations, and bulk work still progresses on what is left.

Judged against an exact upstream (tests/oracle.py) through the public API, on MemoryBackend and a private
Redis; the Lua of ``bucket_reserve_lane`` is compared with ``tokenbucket._model`` step by step.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from oracle import Upstream, replay
from redis_servers import RedisServer

from tokenbucket import (
    AcquireTimeout,
    AsyncTokenBucket,
    ConfigurationError,
    CostExceedsCapacity,
    MemoryBackend,
    Rate,
    RedisBackend,
    TokenBucket,
    TokenBucketError,
)
from tokenbucket import _model as model
from tokenbucket._model import Policy
from tokenbucket.testing import ManualClock


def manual() -> ManualClock:
    return ManualClock(0.0, autojump=False)


# --------------------------------------------------------------------------- worked by hand


def test_an_urgent_request_passes_a_waiting_bulk_one(store: Any) -> None:
    clock = manual()
    bucket = TokenBucket("k", "1/second", capacity=10, lanes={"urgent": 0, "bulk": 4}, backend=store, clock=clock)
    assert bucket.reserve(6, lane="bulk").delay == 0  # leaves 4: the bulk lane's hold-back
    bulk = bucket.reserve(5, lane="bulk")
    assert bulk.delay == pytest.approx(5.0)  # it needs 5 + the 4 held back
    without_lanes = TokenBucket("plain", "1/second", capacity=10, backend=store, clock=clock)
    without_lanes.acquire(6)
    without_lanes.reserve(5)
    assert without_lanes.reserve(4).delay == pytest.approx(5.0)  # behind the waiting one
    assert bucket.reserve(4, lane="urgent").delay == 0  # passes it: the 4 held back are there now
    assert bucket.reserve(1, lane="urgent").delay == pytest.approx(6.0)  # the margin is used up: behind it
    assert bulk.start == pytest.approx(5.0)  # the bulk reservation kept its start time
    assert bucket.reserve(1).delay == pytest.approx(7.0)  # no lane: behind every earlier reservation


def test_bulk_leaves_the_hold_back_and_keeps_out_of_the_deep_overdraft(store: Any) -> None:
    clock = manual()
    bucket = TokenBucket(
        "keepa", "5/minute", capacity=300, overdraft=200, min_start=10, lanes={"bulk": 100},
        backend=store, clock=clock,
    )  # fmt: skip
    assert bucket.reserve(150, lane="bulk").delay == 0  # balance 300 >= 10 + 100: starts; -> 150
    assert bucket.reserve(150, lane="bulk").delay == 0  # 150 >= 110 and 150 - 150 >= -(200 - 100)
    res = bucket.reserve(100, lane="bulk")  # needs the balance at 110, and 0 - 100 >= -100: at 110
    assert res.delay == pytest.approx(110 / 5 * 60)
    assert bucket.reserve(200).delay == pytest.approx(110 / 5 * 60)  # no lane: FIFO behind it
    with pytest.raises(CostExceedsCapacity):
        bucket.acquire(401, lane="bulk")  # 300 - 100 + 200: the most the bulk lane can ever start


def test_lanes_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="no request of it could ever start"):
        TokenBucket("x", "1/second", capacity=10, lanes={"bulk": 11})
    with pytest.raises(ConfigurationError, match="zero or more"):
        TokenBucket("x", "1/second", capacity=10, lanes={"bulk": -1})
    with pytest.raises(ConfigurationError, match="one bandwidth"):
        TokenBucket("x", "1/second; 30/minute", lanes={"bulk": 1})
    with pytest.raises(TypeError, match="map lane names"):
        TokenBucket("x", "1/second", lanes=[("bulk", 1)])  # type: ignore[arg-type]
    bucket = TokenBucket("x", "1/second", capacity=10, lanes={"bulk": 5}, backend=MemoryBackend())
    assert bucket.lanes == {"bulk": 5.0}
    with pytest.raises(ConfigurationError, match="no lane 'urgent'"):
        bucket.acquire(1, lane="urgent")
    assert bucket.snapshot().tokens == 10  # nothing charged
    with pytest.raises(CostExceedsCapacity, match="less the 5 tokens its lane holds back"):
        bucket.try_acquire(6, lane="bulk")  # 10 - 5 held back: never
    assert bucket.try_acquire(5, lane="bulk") is not None
    with pytest.raises(AcquireTimeout):
        bucket.acquire(1, lane="bulk", timeout=0.5)  # 5 left, all held back: 1 s to wait


def test_cancelling_a_passed_bulk_reservation_refunds_it(store: Any) -> None:
    clock = manual()
    bucket = TokenBucket("k", "1/second", capacity=10, lanes={"urgent": 0, "bulk": 4}, backend=store, clock=clock)
    bucket.acquire(6, lane="bulk")
    bulk = bucket.reserve(5, lane="bulk")
    bucket.acquire(3, lane="urgent")
    assert bulk.cancel() == pytest.approx(5.0)  # the last in line: its whole cost
    with pytest.raises(TokenBucketError):
        bulk.wait()
    assert bucket.snapshot().tokens == pytest.approx(1.0)  # 10 - 6 - 3


def test_async_lanes() -> None:
    async def main() -> None:
        clock = manual()
        bucket = AsyncTokenBucket(
            "k", "1/second", capacity=10, lanes={"urgent": 0, "bulk": 4}, backend=MemoryBackend(), clock=clock
        )
        await bucket.acquire(6, lane="bulk")
        bulk = await bucket.reserve(5, lane="bulk")
        grant = await bucket.try_acquire(4, lane="urgent")
        assert grant is not None
        assert bulk.delay == pytest.approx(5.0)

    asyncio.run(main())


# --------------------------------------------------------------------------- the guarantees, generated

POLICIES = [(1, 10, 0), (3, 5, 0), (1, 10, 5), (2, 8, math.inf)]
cost = st.sampled_from([0, 1, 3, 5, 10])  # tenths of the capacity
op = st.one_of(
    st.tuples(st.sampled_from(["plain", "urgent", "bulk"]), cost, st.none() | st.sampled_from([0, 2, 20])),
    st.tuples(st.just("start"), st.integers(0, 20)),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("settle"), st.integers(0, 20), st.sampled_from([0, 0.5])),
    st.tuples(st.just("advance"), st.sampled_from([0, 0.5, 1, 3])),
)


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(policy=st.sampled_from(POLICIES), hold=st.sampled_from([2, 4]), ops=st.lists(op, max_size=30))
# Two urgent requests passing one waiting bulk reservation: together they must fit its margin.
@example(
    policy=(1, 10, 0), hold=4, ops=[("bulk", 6, None), ("bulk", 5, None), ("urgent", 3, None), ("urgent", 3, None)]
)
def test_every_start_is_affordable_with_lanes(
    store: Any, policy: tuple[float, float, float], hold: int, ops: list[tuple[Any, ...]]
) -> None:
    rate, capacity, overdraft = policy
    clock = manual()
    extra: dict[str, Any] = {"overdraft": overdraft, "min_start": 1} if overdraft else {}
    holds = {"urgent": 0.0, "bulk": capacity * hold / 10}
    bucket = TokenBucket(
        f"l{uuid.uuid4().hex[:8]}", Rate(rate), capacity=capacity, lanes=holds, backend=store, clock=clock, **extra
    )
    waiting: list[tuple[Any, str, int]] = []
    started: list[tuple[Any, list[Any]]] = []
    ledger: list[list[Any]] = []  # [start, real cost, place in line]
    line = 0
    log: list[str] = []
    for o in ops:
        if o[0] in ("plain", "urgent", "bulk"):
            c = o[1] * capacity / 10
            try:
                res = bucket.reserve(c, timeout=o[2], lane=None if o[0] == "plain" else o[0])
            except (AcquireTimeout, CostExceedsCapacity):
                continue
            waiting.append((res, o[0], line))
            log.append(f"t={clock.now():g} {o[0]} {c:g} -> start {res.start:g}")
            line += 1
        elif o[0] == "start" and waiting:
            res, _, place = waiting.pop(o[1] % len(waiting))
            clock.set(max(clock.now(), res.start))
            grant = res.wait()
            entry = [Fraction(res.start), Fraction(grant.cost), place]
            ledger.append(entry)
            started.append((grant, entry))
        elif o[0] == "cancel" and waiting:
            res, _, _ = waiting.pop(o[1] % len(waiting))
            res.cancel()
        elif o[0] == "settle" and started:
            grant, entry = started.pop(o[1] % len(started))
            grant.settle(grant.cost * o[2])
            entry[1] = Fraction(grant.cost * o[2])
        elif o[0] == "advance":
            clock.set(clock.now() + o[1])
    for res, _, place in sorted(waiting, key=lambda w: w[0].start):
        clock.set(max(clock.now(), res.start))
        grant = res.wait()
        ledger.append([Fraction(res.start), Fraction(grant.cost), place])
    upstream = Upstream(Fraction(rate), Fraction(capacity), overdraft, Fraction(1))
    found = replay(upstream, [tuple(e) for e in ledger])  # type: ignore[misc]
    assert not found, "\n".join(str(v) for v in found) + "\n" + "\n".join(log)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(costs=st.lists(st.tuples(st.sampled_from([1, 3, 5, 6]), st.sampled_from([0, 0.5, 2])), max_size=20))
def test_the_bulk_lane_alone_never_takes_the_hold_back(store: Any, costs: list[tuple[int, float]]) -> None:
    """Only bulk work: after every bulk call starts, the upstream still holds the hold-back (4 of 10)."""
    clock = manual()
    bucket = TokenBucket(f"b{uuid.uuid4().hex[:8]}", "1/second", capacity=10, lanes={"bulk": 4}, backend=store,
                         clock=clock)  # fmt: skip
    starts = []
    for c, dt in costs:
        clock.set(clock.now() + dt)
        starts.append((bucket.reserve(c, lane="bulk").start, c))
    upstream = Upstream(Fraction(1), Fraction(10))
    for t, c in sorted(starts, key=lambda e: e[0]):
        assert upstream.at(Fraction(t)) - c >= 4 - Fraction(1, 10**8), starts
        upstream.balance = upstream.at(Fraction(t)) - c


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["plain", "bulk", "advance"]), st.sampled_from([0, 1, 2, 5, 6])), max_size=9
    ),
    urgent=st.sampled_from([0, 1, 2, 3, 4]),
)
def test_urgent_work_within_the_margins_passes_bulk_as_if_it_were_not_there(
    ops: list[tuple[str, int]], urgent: int
) -> None:
    """If every waiting bulk reservation can spare its cost, an urgent request starts exactly when it would
    with those reservations never made."""
    p = Policy.build(Rate(1), 10)

    def run(skip: set[int]) -> tuple[Any, float, int]:
        state, now, rid = model.fresh(p, 0.0), 0.0, 0
        for kind, n in ops:
            if kind == "advance":
                now += n
                continue
            rid += 1
            if rid in skip:
                continue
            if kind == "plain":
                state = model.reserve(state, p, now, float(n), None, rid).state
            elif n + 4 <= 10:
                state = model.reserve_lane(state, p, now, float(n), 4.0, None, rid).state
        return state, now, rid

    with_bulk, now, rid = run(set())
    still = {q.rid for q in model.advance(with_bulk, p, now).pending}
    without_bulk, _, _ = run(still)  # the same, without the bulk reservations still waiting
    waiting = model.advance(with_bulk, p, now).pending
    if not waiting or any(q.hold == 0 for q in waiting) or any(q.margin < urgent for q in waiting):
        return  # nothing to pass, or a request without a lane waits (urgent waits behind those by design)
    passing = model.reserve_lane(with_bulk, p, now, float(urgent), 0.0, None, rid + 1)
    alone = model.reserve_lane(without_bulk, p, now, float(urgent), 0.0, None, rid + 1)
    assert isinstance(passing, model.Reserved)
    assert isinstance(alone, model.Reserved)
    assert passing.start == pytest.approx(alone.start)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    urgent_rate=st.sampled_from([0.1, 0.2, 0.5, 0.7]),
    urgent_cost=st.sampled_from([1, 2]),
    bulk_cost=st.sampled_from([3, 5, 8]),
)
def test_bulk_progresses_on_what_urgent_work_leaves(urgent_rate: float, urgent_cost: int, bulk_cost: int) -> None:
    """An urgent caller spends `urgent_rate` of a 1/s bucket in calls of `urgent_cost`; a bulk caller back to
    back gets the rest, and the urgent one never waits longer than its own refill needs."""
    clock = manual()
    # The hold-back covers the urgent work that arrives while one bulk call waits for its tokens (which come
    # at the leftover rate), plus one urgent call.
    hold = math.ceil(urgent_rate * bulk_cost / (1 - urgent_rate)) + urgent_cost + 1
    assume(hold + bulk_cost <= 20)
    bucket = TokenBucket(
        "shared", "1/second", capacity=20, lanes={"urgent": 0, "bulk": hold}, backend=MemoryBackend(), clock=clock
    )
    horizon = 2000.0
    every = urgent_cost / urgent_rate
    next_urgent, urgent_waits = 0.0, []
    bulk = bucket.reserve(bulk_cost, lane="bulk")
    bulk_tokens = 0.0
    while clock.now() < horizon:
        if next_urgent <= bulk.start:
            clock.set(max(clock.now(), next_urgent))
            res = bucket.reserve(urgent_cost, lane="urgent")
            urgent_waits.append(res.delay)
            next_urgent += every
        else:
            clock.set(max(clock.now(), bulk.start))
            bulk.wait()
            bulk_tokens += bulk_cost
            bulk = bucket.reserve(bulk_cost, lane="bulk")
    leftover = (1 - urgent_rate) * horizon
    assert bulk_tokens >= leftover - 20 - hold - 2 * bulk_cost  # the leftover rate, less a bucket and a call
    assert max(urgent_waits) <= urgent_cost + 1e-9  # at worst its own refill: never behind the bulk caller


# --------------------------------------------------------------------------- Lua == model


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    policy=st.sampled_from(POLICIES),
    steps=st.lists(
        st.tuples(st.sampled_from(["plain", "urgent", "bulk", "cancel", "advance"]), st.integers(0, 12)), max_size=25
    ),
)
def test_reserve_lane_lua_matches_the_model(
    redis_server: RedisServer, policy: tuple[float, float, float], steps: list[tuple[str, int]]
) -> None:
    rate, capacity, overdraft = policy
    p = Policy.build(Rate(rate), capacity, overdraft, 1.0, None)
    backend = RedisBackend.from_url(redis_server.url, prefix=f"d{uuid.uuid4().hex[:10]}:")
    key = "lanes"
    holds = {"urgent": 0.0, "bulk": capacity * 0.4}
    state = model.fresh(p, 0.0)
    now = 0.0
    rids: list[tuple[int, int]] = []  # (model rid, lua rid)
    rid = 0
    try:
        for kind, n in steps:
            if kind == "advance":
                now += n / 4
                continue
            if kind == "cancel":
                if rids:
                    mine, theirs = rids.pop(n % len(rids))
                    cancelled = model.cancel(state, p, now, mine)
                    state = cancelled.state
                    assert math.isclose(backend.cancel(key, p, theirs, now), cancelled.refunded, abs_tol=1e-9)
                continue
            c = n * capacity / 10
            rid += 1
            try:
                if kind == "plain":
                    result = model.reserve(state, p, now, c, None, rid)
                else:
                    result = model.reserve_lane(state, p, now, c, holds[kind], None, rid)
            except CostExceedsCapacity:
                hold = 0.0 if kind == "plain" else holds[kind]
                with pytest.raises(CostExceedsCapacity):
                    backend.reserve_lane(key, p, c, hold, None, now)
                continue
            assert isinstance(result, model.Reserved)
            state = result.state
            if kind == "plain":
                admitted, delay, theirs = backend.reserve(key, p, c, None, now)
            else:
                admitted, delay, theirs = backend.reserve_lane(key, p, c, holds[kind], None, now)
            assert admitted
            assert math.isclose(delay, result.delay, rel_tol=1e-9, abs_tol=1e-9), (kind, c, delay, result.delay)
            if result.rid is not None:
                assert theirs is not None
                rids.append((result.rid, theirs))
            snap = backend.snapshot(key, p, now)
            mine = model.snapshot(state, p, now)
            assert math.isclose(snap.tokens, mine.tokens, abs_tol=1e-9)
            assert math.isclose(snap.promised, mine.promised, abs_tol=1e-9)
    finally:
        backend.close()
