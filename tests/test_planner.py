"""BatchPlanner: the largest batch that fits the budget, never one that can never start."""

from __future__ import annotations

import math
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbucket import (
    AsyncTokenBucket,
    BatchPlan,
    BatchPlanner,
    ConfigurationError,
    CostExceedsCapacity,
    CostModel,
    MemoryBackend,
    TokenBucket,
)
from tokenbucket.testing import ManualClock


def keepa_bucket(model: CostModel | None = None, **policy: object) -> TokenBucket:
    options: dict[str, object] = {"capacity": 300, "overdraft": math.inf}
    options.update(policy)
    return TokenBucket(
        f"plan-{uuid.uuid4().hex[:8]}",
        "5/minute",
        backend=MemoryBackend(),
        clock=ManualClock(0.0),
        cost_model=model,
        **options,  # type: ignore[arg-type]
    )


def test_the_incident_numbers_explain_why_fifty_is_wrong() -> None:
    bucket = keepa_bucket(CostModel(prior={"product": 20}))
    plan = BatchPlanner(bucket).plan("product", 50)
    assert isinstance(plan, BatchPlan)
    assert (plan.size, plan.estimated_cost, plan.budget) == (15, 300, 300)
    assert "50 × 20 = 1000 tokens = 200 min of refill, 3.3 buckets" in plan.explanation
    assert "15 × 20 = 300 tokens" in plan.explanation
    assert str(plan) == plan.explanation
    assert "\n" not in plan.explanation
    with pytest.raises(AttributeError):
        plan.size = 50  # type: ignore[misc]


def test_a_fixed_batch_that_can_never_fit_fails_at_start_up() -> None:
    bucket = keepa_bucket(CostModel(prior={"product": 20, "deal": 5}))
    with pytest.raises(ConfigurationError, match=r"fixed_size=50 can never fit for 'product'.*use at most 15"):
        BatchPlanner(bucket, fixed_size=50)
    planner = BatchPlanner(bucket, fixed_size=50, ops=["deal"])  # 250 tokens: fits
    assert planner.plan("deal", 80).size == 50
    assert planner.plan("deal", 7).size == 7
    assert BatchPlanner(bucket, fixed_size=50, max_cost=1000).plan("product", 60).size == 50


def test_a_fixed_batch_fails_when_the_model_learns_it_no_longer_fits() -> None:
    model = CostModel(prior={"product": 20}, warmup=0)
    bucket = keepa_bucket(model)
    planner = BatchPlanner(bucket, fixed_size=15)
    assert planner.plan("product", 40).size == 15
    model.observe("product", 10, 250)  # 25 a unit: 15 cost 375 > 300
    with pytest.raises(ConfigurationError, match="can never fit"):
        planner.plan("product", 40)


def test_nothing_pending_plans_nothing() -> None:
    plan = BatchPlanner(keepa_bucket(CostModel(prior={"product": 20}))).plan("product", 0)
    assert plan.size == 0
    assert plan.estimated_cost == 0
    assert "nothing pending" in plan.explanation


def test_all_pending_when_they_fit_and_the_upstream_limit_caps() -> None:
    planner = BatchPlanner(keepa_bucket(CostModel(prior={"product": 1})))
    assert planner.plan("product", 7).size == 7
    capped = planner.plan("product", 500, max_per_request=100)
    assert capped.size == 100
    assert "limit per request" in capped.explanation


def test_one_item_over_budget_still_plans_one_if_it_can_start() -> None:
    planner = BatchPlanner(keepa_bucket(CostModel(prior={"bestsellers": 50})), max_cost=10)
    plan = planner.plan("bestsellers", 3)
    assert plan.size == 1
    assert "smallest batch" in plan.explanation


def test_one_item_that_can_never_start_raises() -> None:
    bucket = keepa_bucket(CostModel(prior={"huge": 400}), overdraft=0)
    with pytest.raises(CostExceedsCapacity):
        BatchPlanner(bucket).plan("huge", 1)


def test_budget_by_wait_counts_the_balance_and_the_refill() -> None:
    clock = ManualClock(0.0)
    bucket = TokenBucket("wait", "1/second", capacity=200, backend=MemoryBackend(), clock=clock)
    bucket.acquire(100)  # 100 left
    planner = BatchPlanner(bucket, CostModel(prior={"op": 10}), max_wait=50)
    plan = planner.plan("op", 40)
    assert plan.size == 15
    assert plan.budget == 150
    assert plan.expected_wait == pytest.approx(50)
    both = BatchPlanner(bucket, CostModel(prior={"op": 10}), max_wait=50, max_cost=80)
    assert both.plan("op", 40).size == 8


def test_budget_by_wait_in_debt_still_plans_one() -> None:
    bucket = keepa_bucket(CostModel(prior={"product": 20}))
    bucket.acquire(300)
    bucket.sync(-500)  # deep in debt: any wait budget of a few minutes is already spent
    plan = BatchPlanner(bucket, max_wait=60).plan("product", 40)
    assert plan.size == 1
    assert plan.estimated_cost == 20
    assert "planning 1" in plan.explanation


def test_expected_wait_comes_from_the_snapshot() -> None:
    bucket = keepa_bucket(CostModel(prior={"product": 20}), overdraft=0)
    bucket.acquire(290)  # 10 left, strict: 15 × 20 needs 300 → 290 tokens at 5/min = 58 min
    plan = BatchPlanner(bucket).plan("product", 50)
    assert plan.size == 15
    assert plan.expected_wait == pytest.approx(290 / (5 / 60))
    assert "expected start in 58 min" in plan.explanation


def test_planner_needs_a_model_and_good_arguments() -> None:
    with pytest.raises(ConfigurationError, match="needs a CostModel"):
        BatchPlanner(keepa_bucket())
    with pytest.raises(TypeError):
        BatchPlanner(object(), CostModel(prior={"op": 1}))
    planner = BatchPlanner(keepa_bucket(), CostModel(prior={"op": 1}))
    for bad in (-1, 1.5, True):
        with pytest.raises((ConfigurationError, TypeError)):
            planner.plan("op", bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        planner.plan("op", 3, max_per_request=0)
    with pytest.raises(ConfigurationError):
        BatchPlanner(keepa_bucket(), CostModel(prior={"op": 1}), max_cost=0)
    with pytest.raises(ConfigurationError):
        BatchPlanner(keepa_bucket(), CostModel(prior={"op": 1}), fixed_size=0)


async def test_async_bucket_plans_with_aplan() -> None:
    bucket = AsyncTokenBucket(
        "aplan",
        "5/minute",
        capacity=300,
        overdraft=math.inf,
        backend=MemoryBackend(),
        clock=ManualClock(0.0),
        cost_model=CostModel(prior={"product": 20}),
    )
    planner = BatchPlanner(bucket)
    assert (await planner.aplan("product", 50)).size == 15
    with pytest.raises(TypeError, match="aplan"):
        planner.plan("product", 50)


# --------------------------------------------------------------------------- properties

policies = st.fixed_dictionaries(
    {
        "capacity": st.integers(1, 1000),
        "overdraft": st.one_of(st.just(0), st.integers(1, 1000), st.just(math.inf)),
        "spent": st.integers(0, 2000),
    }
)
budgets = st.one_of(st.none(), st.floats(0.5, 5000), st.just(math.inf))


def _planner(policy: dict[str, float], per_unit: float, max_cost: float | None) -> BatchPlanner:
    bucket = TokenBucket(
        f"p-{uuid.uuid4().hex[:8]}",
        "1/second",
        capacity=policy["capacity"],
        overdraft=policy["overdraft"],
        min_start=0,
        backend=MemoryBackend(),
        clock=ManualClock(0.0),
    )
    spent = min(policy["spent"], bucket.policy.max_cost)
    if spent:
        bucket.acquire(spent)
    return BatchPlanner(bucket, CostModel(prior={"op": per_unit}), max_cost=max_cost)


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    per_unit=st.floats(0, 600),
    pending=st.integers(0, 500),
    max_per_request=st.integers(1, 200),
    budget=budgets,
)
def test_never_plans_a_batch_that_can_never_start(
    policy: dict[str, float], per_unit: float, pending: int, max_per_request: int, budget: float | None
) -> None:
    planner = _planner(policy, per_unit, budget)
    bucket = planner._bucket
    try:
        plan = planner.plan("op", pending, max_per_request)
    except CostExceedsCapacity:
        assert pending > 0
        assert per_unit > bucket.policy.max_cost
        return
    assert plan.estimated_cost <= bucket.policy.max_cost
    assert 0 <= plan.size <= min(pending, max_per_request)
    assert (plan.size >= 1) == (pending >= 1)
    if plan.size > 1:
        assert plan.estimated_cost <= plan.budget
    bucket.reserve(plan.estimated_cost)  # the batch can really be charged (no CostExceedsCapacity)


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    per_unit=st.floats(0.01, 600),
    pending=st.integers(0, 500),
    max_per_request=st.integers(1, 200),
    budgets=st.lists(st.floats(0.5, 5000), min_size=2, max_size=2).map(sorted),
)
def test_a_larger_budget_never_plans_a_smaller_batch(
    policy: dict[str, float], per_unit: float, pending: int, max_per_request: int, budgets: list[float]
) -> None:
    small, large = budgets
    try:
        a = _planner(policy, per_unit, small).plan("op", pending, max_per_request)
    except CostExceedsCapacity:
        return
    b = _planner(policy, per_unit, large).plan("op", pending, max_per_request)
    assert a.size <= b.size
    if a.size < b.size:
        assert b.estimated_cost > small or a.size == min(pending, max_per_request)


def test_every_bandwidth_bounds_the_batch_and_its_start() -> None:
    """5/minute with a bucket of 300, and a daily cap of 200: the daily one binds, and names the plan."""
    clock = ManualClock(0.0)
    bucket = TokenBucket(
        f"plan-{uuid.uuid4().hex[:8]}",
        "5/minute; 200/day",
        capacity=(300, 200),
        backend=MemoryBackend(),
        clock=clock,
        cost_model=CostModel(prior={"product": 20}),
    )
    plan = BatchPlanner(bucket).plan("product", 50)
    assert (plan.size, plan.budget) == (10, 200)
    bucket.acquire(190)  # the minute bandwidth holds 110, the daily one 10
    plan = BatchPlanner(bucket, max_wait=3600).plan("product", 50)
    # within an hour: 300 by the minute bandwidth (capped), 10 + 8.3 by the daily one: not even one item
    assert plan.size == 1
    assert "exceeds what is there within max_wait 60 min (18.3333 tokens)" in plan.explanation
    assert plan.expected_wait == pytest.approx((20 - 10) / (200 / 86400))  # the daily bandwidth's wait
    with pytest.raises(ConfigurationError, match="fixed_size=15 can never fit"):
        BatchPlanner(bucket, fixed_size=15)  # 300 tokens: fits the minute bandwidth, not the daily one
