"""CostModel: conservative per-unit estimates that learn, and buckets that price by operation."""

from __future__ import annotations

import json
import math
import random
import threading
import uuid

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbucket import (
    AsyncTokenBucket,
    BackendError,
    ConfigurationError,
    CostModel,
    MemoryBackend,
    MemoryCostStore,
    RedisCostStore,
    TokenBucket,
)
from tokenbucket.testing import ManualClock

# --------------------------------------------------------------------------- estimates


def test_prior_prices_an_operation_before_anything_is_observed() -> None:
    model = CostModel(prior={"product": 20})
    assert model.estimate("product", 10) == 200
    assert model.estimate("product") == 20
    assert model.estimate("product", 0) == 0
    assert model.operations() == ["product"]
    assert "product" in model
    assert "deal" not in model


def test_unknown_operation_without_prior_is_a_clear_error() -> None:
    model = CostModel(prior={"product": 20})
    with pytest.raises(ConfigurationError, match=r"no cost known for operation 'deal'.*prior"):
        model.estimate("deal", 1)


def test_observed_operation_without_prior_is_known() -> None:
    model = CostModel()
    model.observe("deal", 1, 5)
    assert model.estimate("deal", 3) == 15


def test_prior_counts_until_warmup_then_observations_rule() -> None:
    model = CostModel(prior={"product": 20}, warmup=3)
    model.observe("product", 10, 100)  # 10 per unit
    assert model.per_unit("product") == 20  # prior still counts: the larger wins
    model.observe("product", 10, 120)
    assert model.per_unit("product") == 20
    model.observe("product", 10, 110)
    assert model.per_unit("product") == 12  # warm: the max of the window


def test_a_prior_below_observations_never_lowers_the_estimate() -> None:
    model = CostModel(prior={"product": 1}, warmup=5)
    model.observe("product", 2, 50)
    assert model.per_unit("product") == 25


@settings(max_examples=200, deadline=None)
@given(
    window=st.integers(1, 12),
    costs=st.lists(
        st.tuples(st.integers(1, 100), st.floats(0, 10_000, allow_nan=False, allow_infinity=False)),
        min_size=1,
        max_size=60,
    ),
)
def test_estimate_is_never_below_any_recent_per_unit_cost(window: int, costs: list[tuple[int, float]]) -> None:
    model = CostModel(prior={"product": 3}, window=window, warmup=2)
    per_unit: list[float] = []
    for units, actual in costs:
        model.observe("product", units, actual)
        per_unit.append(actual / units)
        estimate = model.per_unit("product")
        assert all(estimate >= p for p in per_unit[-window:])
        assert estimate in per_unit[-window:] or (len(per_unit) < min(2, window) and estimate == 3)
        assert model.estimate("product", 7) == pytest.approx(estimate * 7)


def test_converges_to_the_top_of_the_noise_and_forgets_a_bad_prior() -> None:
    rng = random.Random(5)
    model = CostModel(prior={"product": 60}, window=30)
    for _ in range(200):
        units = rng.randint(1, 20)
        actual = sum(rng.randint(18, 22) for _ in range(units))
        model.observe("product", units, actual)
    per_unit = model.per_unit("product")
    assert 20 < per_unit <= 22  # an upper estimate of a mean of 20, never above the worst seen


def test_quantile_below_one_is_between_the_median_and_the_max() -> None:
    model = CostModel(window=100, quantile=0.9, warmup=0)
    for cost in range(1, 101):
        model.observe("op", 1, cost)
    assert model.per_unit("op") == 90


def test_window_keeps_only_recent_observations() -> None:
    model = CostModel(window=3, warmup=0)
    for cost in (50, 10, 10, 10):
        model.observe("op", 1, cost)
    assert model.per_unit("op") == 10  # the 50 fell out of the window


def test_observe_returns_the_new_estimate() -> None:
    model = CostModel(prior={"op": 5}, warmup=0)
    assert model.observe("op", 4, 36) == 9


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda m: m.observe("op", 0, 10), ConfigurationError),
        (lambda m: m.observe("op", -1, 10), ConfigurationError),
        (lambda m: m.observe("op", 1, -5), ConfigurationError),
        (lambda m: m.observe("op", 1, math.nan), ConfigurationError),
        (lambda m: m.observe("op", 1, math.inf), ConfigurationError),
        (lambda m: m.observe("", 1, 1), ConfigurationError),
        (lambda m: m.observe(3, 1, 1), TypeError),
        (lambda m: m.observe("op", "2", 1), TypeError),
        (lambda m: m.estimate("op", -1), ConfigurationError),
        (lambda m: m.estimate("op", math.nan), ConfigurationError),
    ],
)
def test_bad_input_is_rejected_and_records_nothing(call, error) -> None:  # type: ignore[no-untyped-def]
    model = CostModel(prior={"op": 5}, warmup=0)
    with pytest.raises(error):
        call(model)
    assert model.to_dict()["observations"] == {}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"prior": {"op": -1}}, ConfigurationError),
        ({"prior": {"op": math.nan}}, ConfigurationError),
        ({"prior": {"": 1}}, ConfigurationError),
        ({"prior": [("op", 1)]}, TypeError),
        ({"window": 0}, ConfigurationError),
        ({"window": 2.5}, TypeError),
        ({"quantile": 0}, ConfigurationError),
        ({"quantile": 1.5}, ConfigurationError),
        ({"warmup": -1}, ConfigurationError),
        ({"store": object()}, TypeError),
    ],
)
def test_bad_settings_are_rejected(kwargs, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        CostModel(**kwargs)


# --------------------------------------------------------------------------- serialization


def test_round_trips_through_dict_and_json() -> None:
    model = CostModel(prior={"product": 20, "deal": 5}, window=4, quantile=0.75, warmup=1)
    for cost in (12, 30, 18, 16, 25):
        model.observe("product", 2, cost)
    model.observe("seller", 3, 3)
    for copy in (CostModel.from_dict(model.to_dict()), CostModel.from_json(model.to_json())):
        assert copy.to_dict() == model.to_dict()
        for op in ("product", "deal", "seller"):
            assert copy.estimate(op, 9) == model.estimate(op, 9)
    assert json.loads(model.to_json())["observations"]["product"] == [15, 9, 8, 12.5]


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"format": "something else"},
        {"format": "tokenbucket.CostModel/1", "observations": {"op": "many"}},
        {"format": "tokenbucket.CostModel/1", "observations": {"op": [-1]}},
        {"format": "tokenbucket.CostModel/1", "window": "20"},
        {"format": "tokenbucket.CostModel/1", "prior": {"op": -3}},
    ],
)
def test_from_dict_rejects_what_to_dict_never_writes(data: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        CostModel.from_dict(data)


def test_from_json_rejects_text_that_is_not_json() -> None:
    with pytest.raises(ConfigurationError):
        CostModel.from_json("{not json")


# --------------------------------------------------------------------------- sharing


def test_models_sharing_a_store_learn_together() -> None:
    store = MemoryCostStore()
    a = CostModel(store=store, refresh=0, warmup=0)
    b = CostModel(prior={"product": 1}, store=store, refresh=0, warmup=0)
    a.observe("product", 1, 30)
    assert b.per_unit("product") == 30
    assert b.operations() == ["product"]


@pytest.mark.redis
def test_redis_store_shares_learning_between_workers(redis_client: redis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}costs"
    try:
        a = CostModel(prior={"product": 20}, store=RedisCostStore(redis_client, key), refresh=0, warmup=0, window=5)
        b = CostModel(prior={"product": 20}, store=RedisCostStore(redis_client, key), refresh=0, warmup=0, window=5)
        a.observe("product", 4, 100)
        assert b.per_unit("product") == 25
        for cost in (10, 11, 12, 13, 14, 15):
            b.observe("product", 1, cost)
        assert a.per_unit("product") == 15
        assert a.to_dict()["observations"]["product"] == [11, 12, 13, 14, 15]
        assert 0 < redis_client.pttl(key) <= 7 * 86400 * 1000
    finally:
        redis_client.delete(key)


@pytest.mark.redis
def test_redis_store_loses_no_observation_under_concurrency(redis_client: redis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}costs"
    store = RedisCostStore(redis_client, key, ttl=60)
    models = [CostModel(store=store, window=1000, warmup=0) for _ in range(4)]

    def work(model: CostModel, base: int) -> None:
        for i in range(50):
            model.observe("op", 1, base + i)

    threads = [threading.Thread(target=work, args=(m, 1000 * k)) for k, m in enumerate(models)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        values = store.load()["op"]
        assert sorted(values) == sorted(1000 * k + i for k in range(4) for i in range(50))
        assert 0 < redis_client.pttl(key) <= 60_000
    finally:
        redis_client.delete(key)


def test_redis_store_failure_is_a_backend_error() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    model = CostModel(prior={"op": 3}, store=None)
    store = RedisCostStore(client, f"t{uuid.uuid4().hex}")
    with pytest.raises(BackendError) as info:
        store.append("op", 1.0, 5)
    assert isinstance(info.value.__cause__, redis.RedisError)
    with pytest.raises(BackendError):
        CostModel(store=store)
    assert model.per_unit("op") == 3
    client.close()


# --------------------------------------------------------------------------- buckets priced by operation


def _bucket(model: CostModel | None = None, **kwargs: object) -> TokenBucket:
    return TokenBucket(
        f"b-{uuid.uuid4().hex[:8]}",
        "5/minute",
        capacity=300,
        overdraft=math.inf,
        backend=MemoryBackend(),
        clock=ManualClock(0.0),
        cost_model=model,
        **kwargs,  # type: ignore[arg-type]
    )


def test_acquire_by_operation_charges_the_estimate_and_settle_teaches_the_model() -> None:
    model = CostModel(prior={"product": 20}, warmup=0)
    bucket = _bucket(model)
    grant = bucket.acquire(op="product", units=10)
    assert (grant.cost, grant.op, grant.units) == (200, "product", 10)
    assert bucket.snapshot().tokens == 100
    grant.settle(150)
    assert bucket.snapshot().tokens == 150  # corrected by the difference
    assert model.per_unit("product") == 15  # and learned
    grant.settle(150)
    grant.settle(170)
    assert model.to_dict()["observations"]["product"] == [15]  # the first settle teaches, once
    assert bucket.snapshot().tokens == 130


def test_settle_without_observing_corrects_the_bucket_only() -> None:
    model = CostModel(prior={"product": 20}, warmup=0)
    bucket = _bucket(model)
    grant = bucket.acquire(op="product", units=5)
    grant.settle(0, observe=False)
    assert bucket.snapshot().tokens == 300
    assert model.to_dict()["observations"] == {}


def test_try_acquire_and_reserve_carry_the_operation() -> None:
    model = CostModel(prior={"product": 20}, warmup=0)
    bucket = _bucket(model)
    grant = bucket.try_acquire(op="product", units=3)
    assert grant is not None
    assert (grant.cost, grant.op, grant.units) == (60, "product", 3)
    reservation = bucket.reserve(op="product", units=2)
    waited = reservation.wait()
    assert (waited.cost, waited.op) == (40, "product")
    waited.settle(30)
    assert model.per_unit("product") == 15


def test_explicit_cost_with_an_operation_still_teaches() -> None:
    model = CostModel(prior={"product": 20}, warmup=0)
    bucket = _bucket(model)
    grant = bucket.acquire(25, op="product", units=1)
    assert grant.cost == 25
    grant.settle(12)
    assert model.per_unit("product") == 12


def test_plain_costs_are_unchanged() -> None:
    bucket = _bucket(CostModel(prior={"product": 20}))
    grant = bucket.try_acquire(1)
    assert grant is not None
    assert grant.cost == 1
    assert grant.op is None
    assert grant.units is None
    assert bucket.acquire().cost == 1
    assert bucket.snapshot().tokens == 298


def test_operation_pricing_errors_charge_nothing() -> None:
    bucket = _bucket(None)
    with pytest.raises(ConfigurationError, match="needs a cost model"):
        bucket.acquire(op="product", units=2)
    with pytest.raises(ConfigurationError, match="units= needs op="):
        bucket.acquire(units=2)
    with pytest.raises(ConfigurationError, match="units= needs op="):
        bucket.acquire(3, units=2)
    priced = _bucket(CostModel(prior={"product": 20}))
    with pytest.raises(ConfigurationError, match="no cost known"):
        priced.try_acquire(op="deal")
    with pytest.raises(ConfigurationError):
        priced.reserve(op="product", units=-1)
    assert bucket.snapshot().tokens == 300
    assert priced.snapshot().tokens == 300
    with pytest.raises(TypeError):
        _bucket("not a model")  # type: ignore[arg-type]


async def test_async_bucket_prices_by_operation_and_learns() -> None:
    model = CostModel(prior={"product": 20}, warmup=0)
    bucket = AsyncTokenBucket(
        "async-cost", "5/minute", capacity=300, backend=MemoryBackend(), clock=ManualClock(0.0), cost_model=model
    )
    grant = await bucket.acquire(op="product", units=4)
    assert (grant.cost, grant.op) == (80, "product")
    await grant.settle(100)
    assert model.per_unit("product") == 25
    tried = await bucket.try_acquire(op="product", units=2)
    assert tried is not None
    assert tried.cost == 50
    assert tried.units == 2
    reservation = await bucket.reserve(op="product", units=1)
    started = await reservation.wait()
    assert started.op == "product"
    assert (await bucket.snapshot()).tokens == pytest.approx(300 - 100 - 50 - 25)


def test_cost_none_means_the_estimate_only_with_an_operation() -> None:
    bucket = _bucket(CostModel(prior={"product": 20}))
    assert bucket.acquire(None, op="product", units=2).cost == 40
    with pytest.raises(TypeError, match="cost"):
        bucket.acquire(None)
    with pytest.raises(TypeError, match="cost"):
        bucket.try_acquire(None)
