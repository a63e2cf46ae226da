"""Several limits in one reservation: bandwidths of one bucket, and buckets reserved together.

Judged against exact upstreams (tests/oracle.py, one per bucket and bandwidth), by hand-worked
scenarios, and step by step between the Lua of ``reserve_all`` and ``tokenbucket._model``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from oracle import Upstream, replay
from redis_servers import RedisClusterServers, RedisServer

from tokenbucket import (
    AcquireTimeout,
    AsyncBucketGroup,
    AsyncTokenBucket,
    BucketGroup,
    ConfigurationError,
    CostExceedsCapacity,
    MemoryBackend,
    PolicyMismatch,
    Rate,
    RedisBackend,
    TokenBucket,
    TokenBucketError,
)
from tokenbucket import _model as model
from tokenbucket._model import BucketState, Policy
from tokenbucket.testing import ManualClock


def manual() -> ManualClock:
    return ManualClock(0.0, autojump=False)


# --------------------------------------------------------------------------- several bandwidths on one bucket


def test_burst_then_sustained(store: Any) -> None:
    clock = manual()
    bucket = TokenBucket("api", "10/second; 30/minute", backend=store, clock=clock)
    assert [p.capacity for p in bucket.policies] == [10, 30]
    assert sum(bucket.try_acquire() is not None for _ in range(20)) == 10  # the burst limit binds
    assert bucket.snapshot().binding == 0
    assert bucket.reserve(1, timeout=0.1).cancel() == 1
    for t in (1, 2):  # the burst bandwidth is full again each second; the minute one gains 0.5 a second
        clock.set(t)
        assert sum(bucket.try_acquire() is not None for _ in range(20)) == 10
    clock.set(3)  # minute bandwidth: 30 - 30 + 1.5 = 1.5
    assert bucket.try_acquire() is not None
    assert bucket.try_acquire() is None  # 0.5 left in the minute bandwidth, 9 in the burst one
    snap = bucket.snapshot()
    assert snap.binding == 1
    assert snap.rate == Rate(30, 60)
    assert snap.tokens == pytest.approx(0.5)
    assert [b.tokens for b in snap.bandwidths] == [pytest.approx(9), pytest.approx(0.5)]
    assert bucket.reserve(1).delay == pytest.approx(1.0)  # half a token at 0.5 a second


def test_capacities_and_errors() -> None:
    with pytest.raises(ConfigurationError, match="one value per rate"):
        TokenBucket("x", "10/second; 600/hour", capacity=10)
    with pytest.raises(ConfigurationError, match="2 rates, 3 values"):
        TokenBucket("x", "10/second; 600/hour", capacity=(1, 2, 3))
    with pytest.raises(ConfigurationError, match="empty limit"):
        TokenBucket("x", "10/second;;600/hour")
    with pytest.raises(ConfigurationError, match="must not contain"):
        TokenBucket("a\x1fb", "1/second")
    with pytest.raises(ConfigurationError, match="several limits"):
        Rate.parse("10/second; 600/hour")
    bucket = TokenBucket("x", [Rate(10), "600/hour"], capacity=(20, 900), initial=5, backend=MemoryBackend())
    assert [(p.capacity, p.initial) for p in bucket.policies] == [(20, 5), (900, 5)]
    with pytest.raises(CostExceedsCapacity):
        bucket.acquire(21)
    assert bucket.max_cost == 20
    assert Rate.parse_many("10 per second, 600/hour | 5000/day") == (Rate(10), Rate(600, 3600), Rate(5000, 86400))


def test_sync_takes_one_report_per_bandwidth(store: Any) -> None:
    clock = manual()
    bucket = TokenBucket("gh", "10/second; 600/hour", backend=store, clock=clock)
    snap = bucket.sync((None, 42))
    assert [b.tokens for b in snap.bandwidths] == [10, 42]
    snap = bucket.sync((3, None), rate=(None, "1200/hour"))
    assert [b.tokens for b in snap.bandwidths] == [3, 42]
    assert bucket.rates == (Rate(10), Rate(1200, 3600))
    with pytest.raises(ConfigurationError, match="2 bandwidths"):
        bucket.sync(5)
    with pytest.raises(ConfigurationError, match="finite"):
        bucket.sync((1, math.nan))
    assert [b.tokens for b in bucket.snapshot().bandwidths] == [3, 42]  # nothing changed


def test_settle_and_reconfigure_every_bandwidth(store: Any) -> None:
    clock = manual()
    bucket = TokenBucket("llm", "100/minute; 1000/hour", backend=store, clock=clock, overdraft=math.inf)
    grant = bucket.acquire(50)
    snap = grant.settle(80)
    assert [b.tokens for b in snap.bandwidths] == [20, 920]
    snap = bucket.reconfigure(capacity=(200, 2000))
    assert [b.capacity for b in snap.bandwidths] == [200, 2000]
    with pytest.raises(ConfigurationError, match="keeps the number of bandwidths"):
        bucket.reconfigure(rate="5/second")
    other = TokenBucket("llm", "100/minute; 1000/hour", backend=store, clock=clock, overdraft=math.inf)
    with pytest.raises(PolicyMismatch):
        other.acquire(1)


def test_a_bandwidth_refusing_charges_no_other(store: Any) -> None:
    clock = ManualClock(0.0)  # autojump: the blocking acquire below sleeps in virtual time
    bucket = TokenBucket("b", "10/second; 20/minute", backend=store, clock=clock)
    bucket.acquire(10)
    bucket.acquire(10, timeout=1.0)  # the burst refills in 1 s; the minute bandwidth is now empty
    before = bucket.snapshot()
    with pytest.raises(AcquireTimeout) as info:
        bucket.acquire(5, timeout=10)
    assert info.value.retry_after == pytest.approx(15.0 - 1.0, abs=1e-6)  # 5 tokens at 1/3 s, from t=1
    assert bucket.snapshot() == before


# --------------------------------------------------------------------------- buckets reserved together


def test_group_is_all_or_nothing(store: Any) -> None:
    clock = manual()
    tenant = TokenBucket("tenant-7", "2/second", capacity=4, backend=store, clock=clock)
    everyone = TokenBucket("global", "10/second", backend=store, clock=clock)
    group = BucketGroup(tenant, everyone)
    grant = group.acquire((4, 4))
    assert grant.costs == (4, 4)
    with pytest.raises(AcquireTimeout):
        group.acquire(1, timeout=0.1)  # the tenant needs 0.5 s: neither is charged
    assert everyone.snapshot().tokens == pytest.approx(6.0)
    assert group.try_acquire((1, 1)) is None
    assert everyone.snapshot().tokens == pytest.approx(6.0)
    with pytest.raises(CostExceedsCapacity):
        group.acquire((1, 11))
    assert (tenant.snapshot().tokens, everyone.snapshot().tokens) == (pytest.approx(0.0), pytest.approx(6.0))
    res = group.reserve((1, 1))
    assert res.delay == pytest.approx(0.5)  # the tenant's start, the later one
    # The global bucket holds its token until then; its upstream, uncharged, fills to 10 by t=0.5 and loses
    # the 11th token of refill, so that token is charged too (the loss rule of reserve_all).
    assert everyone.snapshot().promised == pytest.approx(2.0)
    clock.set(res.start)
    grants = res.wait()
    assert [g.cost for g in grants.grants] == [1, 1]
    with pytest.raises(ConfigurationError, match="one cost per bucket"):
        group.acquire((1, 2, 3))
    with pytest.raises(ConfigurationError, match="more than once"):
        BucketGroup(tenant, tenant)


def test_a_held_bucket_keeps_its_line(store: Any) -> None:
    """A request waiting for one bucket holds its place in the other: later requests there wait behind it."""
    clock = manual()
    a = TokenBucket("a", "1/second", capacity=10, backend=store, clock=clock)
    b = TokenBucket("b", "1/second", capacity=10, initial=0, backend=store, clock=clock)
    res = BucketGroup(a, b).reserve((1, 5))
    assert res.delay == pytest.approx(5.0)
    later = a.reserve(1)
    assert later.delay == pytest.approx(5.0)  # FIFO in a: never ahead of the group's request


def test_a_held_full_bucket_charges_what_its_upstream_loses() -> None:
    """Worked by hand: a (10/s, capacity 10) is full; b needs 3 s. The group's request holds a's token until t=3.

    a's upstream is not charged until t=3 and sits at its capacity of 10 meanwhile; after the start it holds 9.
    A request of 10 on a alone must therefore wait 0.1 s past t=3, not start beside the group's.
    """
    clock = manual()
    store = MemoryBackend()
    a = TokenBucket("a", "10/second", backend=store, clock=clock)
    b = TokenBucket("b", "1/second", capacity=10, initial=-2, backend=store, clock=clock)
    res = BucketGroup(a, b).reserve((1, 1))
    assert res.delay == pytest.approx(3.0)
    assert a.reserve(10).delay == pytest.approx(3.1)


def test_cancelling_one_part_cancels_the_request(store: Any) -> None:
    clock = manual()
    a = TokenBucket("a", "1/second", capacity=10, backend=store, clock=clock)
    b = TokenBucket("b", "1/second", capacity=10, initial=0, backend=store, clock=clock)
    res = BucketGroup(a, b).reserve((2, 2))
    assert res.reservations[1].cancel() == pytest.approx(2.0)
    with pytest.raises(TokenBucketError, match="cancelled"):
        res.wait()
    assert res.state == "cancelled"
    assert a.snapshot().tokens == pytest.approx(10.0)  # the other part was given back too
    assert res.cancel() == (0.0, 0.0)  # once only


def test_group_of_multi_bandwidth_buckets(store: Any) -> None:
    clock = manual()
    requests = TokenBucket("{acme}:requests", "5/second; 100/minute", backend=store, clock=clock)
    tokens = TokenBucket("{acme}:tokens", "1000/minute", overdraft=math.inf, backend=store, clock=clock)
    group = BucketGroup(requests, tokens)
    grant = group.acquire((1, 800))
    snaps = grant.settle((None, 1500))  # the LLM used more tokens than estimated
    assert snaps[0] is None
    assert snaps[1] is not None
    assert snaps[1].tokens == pytest.approx(-500.0)
    res = group.reserve((1, 10))
    assert res.delay == pytest.approx(30.06)  # from -500 to min_start (1): 501 tokens at 1000/minute
    assert res.reservations[0].start == res.start
    # Held 30 s past its own start, each bandwidth of the request bucket is charged the refill its full
    # upstream loses meanwhile, so at the start it holds what its upstream will: 5 - 1 and 100 - 1.
    assert [b.promised for b in requests.snapshot().bandwidths] == [pytest.approx(150.3), pytest.approx(50.1)]
    clock.set(res.start)
    res.wait()
    assert [b.tokens for b in requests.snapshot().bandwidths] == [pytest.approx(4), pytest.approx(99)]


def _race_once() -> None:
    clock = ManualClock(0.0, autojump=False)
    release = threading.Event()
    clock.sleep = lambda seconds: release.wait(1.0)  # type: ignore[method-assign, assignment, return-value]
    store = MemoryBackend()
    a = TokenBucket("a", "1/second", capacity=5, backend=store, clock=clock)
    b = TokenBucket("b", "1/second", capacity=5, initial=0, backend=store, clock=clock)
    res = BucketGroup(a, b).reserve((1, 1))
    outcome: dict[str, Any] = {}

    def waiter() -> None:
        try:
            outcome["grant"] = res.wait()
        except TokenBucketError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=waiter)
    thread.start()
    refunds = res.cancel()
    release.set()
    thread.join()
    assert ("grant" in outcome) != (sum(refunds) > 0)
    assert a.snapshot().tokens == pytest.approx(5.0 if sum(refunds) else 4.0)


def test_group_wait_and_cancel_race_gives_one_outcome() -> None:
    """Two threads: one waits on a group reservation, one cancels it. Either a grant or a refund, never both."""
    for _ in range(50):
        _race_once()


def test_groups_need_one_backend_and_kind() -> None:
    with pytest.raises(ConfigurationError, match="different backends"):
        BucketGroup(
            TokenBucket("a", "1/second", backend=MemoryBackend()), TokenBucket("b", "1/second", backend=MemoryBackend())
        )
    with pytest.raises(TypeError, match="TokenBucket objects"):
        BucketGroup(AsyncTokenBucket("a", "1/second"))
    with pytest.raises(ConfigurationError, match="at least one"):
        BucketGroup()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_async_group_cancelled_task_refunds_every_bucket(kind: str, redis_server: RedisServer) -> None:
    from tokenbucket import AsyncRedisBackend

    async def main() -> None:
        backend: Any = (
            MemoryBackend()
            if kind == "memory"
            else AsyncRedisBackend.from_url(redis_server.url, prefix=f"g{uuid.uuid4().hex[:8]}:")
        )
        a = AsyncTokenBucket("a", "1/second", capacity=10, backend=backend)
        b = AsyncTokenBucket("b", "1/second", capacity=10, initial=0, backend=backend)
        group = AsyncBucketGroup(a, b)
        task = asyncio.ensure_future(group.acquire((3, 3)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await a.snapshot()).tokens == pytest.approx(10.0, abs=0.01)
        assert (await b.snapshot()).promised == 0
        grant = await group.try_acquire((1, 0))
        assert grant is not None
        assert (await grant.settle((0, 0)))[0] is not None
        if kind == "redis":
            await backend.aclose()

    asyncio.run(main())


# --------------------------------------------------------------------------- Redis specifics


def test_redis_reserve_all_is_one_round_trip(redis_server: RedisServer) -> None:
    client = redis_server.client()
    backend = RedisBackend(client, prefix=f"rt{uuid.uuid4().hex[:8]}:")
    bucket = TokenBucket("api", "10/second; 600/hour", backend=backend)
    calls = []
    original = client.evalsha

    def counting(*args: Any) -> Any:
        calls.append(args[0])
        return original(*args)

    client.evalsha = counting  # type: ignore[method-assign]
    assert bucket.try_acquire() is not None
    bucket.acquire(2)
    assert len(calls) == 2
    client.close()


def test_redis_mismatch_names_the_part(redis_server: RedisServer) -> None:
    client = redis_server.client()
    backend = RedisBackend(client, prefix=f"mm{uuid.uuid4().hex[:8]}:")
    TokenBucket("api", "10/second; 600/hour", backend=backend).acquire(1)
    with pytest.raises(PolicyMismatch) as info:
        TokenBucket("api", "10/second; 900/hour", backend=backend).acquire(1)
    assert info.value.name == "api\x1f2"
    client.close()


@pytest.mark.redis
def test_cluster_needs_one_hash_tag_group(redis_cluster: RedisClusterServers) -> None:
    backend = RedisBackend.from_url(redis_cluster.url, cluster=True, prefix=f"c{uuid.uuid4().hex[:6]}:")
    try:
        apart = BucketGroup(
            TokenBucket("tenant-1", "1/second", backend=backend), TokenBucket("all", "5/second", backend=backend)
        )
        with pytest.raises(ConfigurationError, match="hash-tag group"):
            apart.acquire(1)
        together = BucketGroup(
            TokenBucket("{t1}:requests", "1/second", backend=backend),
            TokenBucket("{t1}:tokens", "5/second; 100/minute", backend=backend),
        )
        assert together.try_acquire((1, 5)) is not None
        assert together.try_acquire((1, 1)) is None
    finally:
        backend.close()


# --------------------------------------------------------------------------- the guarantee, in every upstream

POLICIES = [(1, 10), (3, 5), (0.5, 0.75), (2.5, 7.5), (1, 4)]

cost = st.sampled_from([0, 1, 3, 5, 10, 12])  # tenths of the capacity: nothing, a little, a full bucket, too much
op = st.one_of(
    st.tuples(st.just("group"), cost, cost, st.none() | st.sampled_from([0, 1, 5, 20])),
    st.tuples(st.just("alone"), st.integers(0, 1), cost, st.none() | st.sampled_from([0, 2])),
    st.tuples(st.just("start"), st.integers(0, 20)),
    st.tuples(st.just("cancel"), st.integers(0, 20), st.integers(0, 2)),
    st.tuples(st.just("settle"), st.integers(0, 20), st.sampled_from([0, 0.5, 1])),
    st.tuples(st.just("advance"), st.sampled_from([0, 0.5, 1, 3, 10])),
)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pa=st.sampled_from(POLICIES),
    pb=st.lists(st.sampled_from(POLICIES), min_size=1, max_size=2),
    overdraft=st.sampled_from([0, 0, 3, math.inf]),
    ops=st.lists(op, max_size=30),
)
# A full bucket held for another, then a full-size request on it alone: the loss rule's case, rare at random.
@example(
    pa=(1, 10), pb=[(1, 10)], overdraft=0, ops=[("alone", 1, 10, None), ("group", 1, 5, None), ("alone", 0, 10, None)]
)
def test_every_start_is_affordable_in_every_upstream(
    store: Any, pa: tuple[float, float], pb: list[tuple[float, float]], overdraft: float, ops: list[tuple[Any, ...]]
) -> None:
    clock = manual()
    tag = uuid.uuid4().hex[:8]
    od: dict[str, Any] = {"overdraft": overdraft, "min_start": 0.5} if overdraft else {}
    a = TokenBucket(f"a{tag}", Rate(pa[0]), capacity=pa[1], backend=store, clock=clock)
    b = TokenBucket(f"b{tag}", [Rate(r) for r, _ in pb], capacity=[c for _, c in pb], backend=store, clock=clock, **od)
    group = BucketGroup(a, b)
    buckets = [a, b]
    upstreams = [
        [Upstream(Fraction(pa[0]), Fraction(pa[1]))],
        [Upstream(Fraction(r), Fraction(c), overdraft, Fraction(1, 2)) for r, c in pb],
    ]
    ledgers: list[list[list[Any]]] = [[], []]  # per bucket: [t, real cost, order]
    waiting: list[tuple[str, Any, int]] = []  # ("group" | "alone", reservation, bucket index)
    started: list[tuple[int, Any, list[Any]]] = []
    line: dict[int, int] = {}  # id(reservation) -> its place in line
    log: list[str] = []
    limit_b = min(c for _, c in pb) + (overdraft or 0)

    def scaled(cost: int, capacity: float) -> float:
        return cost * capacity / 10

    def start(kind: str, res: Any, which: int) -> None:
        # A call starts at its reservation's start (a caller who sits on a grant past it is outside the
        # guarantee: a full upstream stops refilling meanwhile); calls starting together go in line order.
        if res.start > clock.now():
            clock.set(res.start)
        try:
            got = res.wait()
        except TokenBucketError:
            assert kind == "group"  # a part was cancelled: no grant, and the other parts were given back
            return
        grants = got.grants if kind == "group" else [got]
        owners = [0, 1] if kind == "group" else [which]
        for i, grant in zip(owners, grants, strict=True):
            entry = [Fraction(res.start), Fraction(grant.cost), line[id(res)]]
            ledgers[i].append(entry)
            started.append((i, grant, entry))
        log.append(f"t={clock.now():g} start {kind} {[g.cost for g in grants]} (from t={res.start:g})")

    for o in ops:
        if o[0] == "group":
            costs = (scaled(o[1], pa[1]), scaled(o[2], min(c for _, c in pb)))
            try:
                waiting.append(("group", group.reserve(costs, timeout=o[3]), -1))
                line[id(waiting[-1][1])] = len(line)
                log.append(f"t={clock.now():g} group{costs} -> +{waiting[-1][1].delay:g}")
            except AcquireTimeout:
                log.append(f"t={clock.now():g} group{costs} -> timeout")
            except CostExceedsCapacity:
                assert costs[0] > pa[1] or costs[1] > limit_b
        elif o[0] == "alone":
            bucket = buckets[o[1]]
            cost = scaled(o[2], pa[1] if o[1] == 0 else min(c for _, c in pb))
            try:
                waiting.append(("alone", bucket.reserve(cost, timeout=o[3]), o[1]))
                line[id(waiting[-1][1])] = len(line)
                log.append(f"t={clock.now():g} {'ab'[o[1]]}.reserve({cost:g}) -> +{waiting[-1][1].delay:g}")
            except AcquireTimeout:
                pass
            except CostExceedsCapacity:
                assert cost > (pa[1] if o[1] == 0 else limit_b)
        elif o[0] == "start" and waiting:
            start(*waiting.pop(o[1] % len(waiting)))
        elif o[0] == "cancel" and waiting:
            kind, res, which = waiting[o[1] % len(waiting)]
            if kind == "group" and o[2] < 2:
                res.reservations[o[2]].cancel()  # one part: the request can no longer start
                log.append(f"t={clock.now():g} cancel part {o[2]}")
            else:
                waiting.remove((kind, res, which))
                res.cancel()
                log.append(f"t={clock.now():g} cancel {kind}")
        elif o[0] == "settle" and started:
            i, grant, entry = started.pop(o[1] % len(started))
            actual = grant.cost * o[2]
            grant.settle(actual)
            entry[1] = Fraction(actual)
            log.append(f"t={clock.now():g} settle {'ab'[i]} {grant.cost:g} -> {actual:g}")
        elif o[0] == "advance":
            clock.set(clock.now() + o[1])
    for entry in sorted(waiting, key=lambda w: w[1].start):
        start(*entry)
    found = []
    for i, ups in enumerate(upstreams):
        for up in ups:
            found += replay(up, [tuple(e) for e in ledgers[i]])  # type: ignore[misc]
    assert not found, "\n".join(str(v) for v in found) + "\n" + "\n".join(log)


# --------------------------------------------------------------------------- Lua == model, step by step


@pytest.fixture(scope="module")
def diff_backend(redis_server: RedisServer) -> Iterator[RedisBackend]:
    client = redis_server.client()
    yield RedisBackend(client, prefix=f"diffall{uuid.uuid4().hex[:8]}:")
    client.close()


many_steps = st.lists(
    st.one_of(
        st.tuples(st.just("all"), st.lists(st.floats(0, 12), min_size=3, max_size=3), st.none() | st.floats(0, 30)),
        st.tuples(st.just("one"), st.integers(0, 2), st.floats(0, 12)),
        st.tuples(st.just("cancel"), st.integers(0, 2), st.integers(0, 10)),
        st.tuples(st.just("time"), st.floats(-2, 20)),
    ),
    max_size=25,
)


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rates=st.lists(st.sampled_from([0.5, 1.0, 3.0, 10.0]), min_size=3, max_size=3),
    overdraft=st.sampled_from([0.0, 4.0, math.inf]),
    steps=many_steps,
)
def test_reserve_all_lua_matches_the_model(
    diff_backend: RedisBackend, rates: list[float], overdraft: float, steps: list[tuple[Any, ...]]
) -> None:
    tag = uuid.uuid4().hex[:8]
    keys = [f"{{{tag}}}k{i}" for i in range(3)]
    policies = [Policy.build(Rate(r), 10, overdraft, 1.0, 5) for r in rates]
    states = {k: model.fresh(p, 100.0) for k, p in zip(keys, policies, strict=True)}
    rids: dict[str, list[int]] = {k: [] for k in keys}
    now = 100.0
    next_id = iter(range(1, 10**6))
    # The model's ids are its own; reservations are matched by position in each bucket's list.
    lua_rids: dict[str, list[int]] = {k: [] for k in keys}
    for k, p in zip(keys, policies, strict=True):
        diff_backend.sync(k, p, 5.0, now)
    for step in steps:
        if step[0] == "time":
            now = max(0.0, now + step[1])
            continue
        if step[0] == "all":
            parts = [(states[k], p, c) for k, p, c in zip(keys, policies, step[1], strict=True)]
            try:
                mine = model.reserve_all(parts, now, step[2], [next(next_id) for _ in keys])
            except CostExceedsCapacity:
                with pytest.raises(CostExceedsCapacity):
                    diff_backend.reserve_all(list(zip(keys, policies, step[1], strict=True)), step[2], now)
                continue
            admitted, seconds, theirs = diff_backend.reserve_all(
                list(zip(keys, policies, step[1], strict=True)), step[2], now
            )
            if isinstance(mine, model.RejectedAll):
                assert not admitted
                assert math.isclose(seconds, mine.retry_after, rel_tol=1e-9, abs_tol=1e-9)
            else:
                assert admitted
                assert math.isclose(seconds, mine.delay, rel_tol=1e-9, abs_tol=1e-9)
                for k, r, t in zip(keys, mine.rids, theirs, strict=True):
                    assert (r is None) == (t is None)
                    if r is not None and t is not None:
                        rids[k].append(r)
                        lua_rids[k].append(t)
            for k, s in zip(keys, mine.states, strict=True):
                states[k] = s
        elif step[0] == "one":
            k, p = keys[step[1]], policies[step[1]]
            try:
                result = model.reserve(states[k], p, now, step[2], None, next(next_id))
            except CostExceedsCapacity:
                continue
            admitted, seconds, rid = diff_backend.reserve(k, p, step[2], None, now)
            assert isinstance(result, model.Reserved)
            assert admitted
            assert math.isclose(seconds, result.delay, rel_tol=1e-9, abs_tol=1e-9)
            states[k] = result.state
            if result.rid is not None and rid is not None:
                rids[k].append(result.rid)
                lua_rids[k].append(rid)
        else:
            k, p = keys[step[1]], policies[step[1]]
            if not rids[k]:
                continue
            at = step[2] % len(rids[k])
            cancelled = model.cancel(states[k], p, now, rids[k].pop(at))
            refunded = diff_backend.cancel(k, p, lua_rids[k].pop(at), now)
            assert math.isclose(refunded, cancelled.refunded, rel_tol=1e-9, abs_tol=1e-9)
            states[k] = cancelled.state
        for k, p in zip(keys, policies, strict=True):
            expected = model.snapshot(states[k], p, now)
            got = diff_backend.snapshot(k, p, now)
            assert math.isclose(got.tokens, expected.tokens, rel_tol=1e-9, abs_tol=1e-9), (k, step)
            assert math.isclose(got.promised, expected.promised, rel_tol=1e-9, abs_tol=1e-9), (k, step)


def test_model_reserve_all_with_one_part_is_reserve() -> None:
    policy = Policy.build("2/second", 10, 0.0, 1.0, 3)
    state = BucketState(3.0, 0.0)
    for cost in (1, 3, 5, 9.5):
        one = model.reserve(state, policy, 1.0, cost, None, 7)
        many = model.reserve_all([(state, policy, cost)], 1.0, None, [7])
        assert isinstance(one, model.Reserved)
        assert isinstance(many, model.ReservedAll)
        assert (many.states[0], many.delay, many.rids[0]) == (one.state, one.delay, one.rid)
        state = one.state
