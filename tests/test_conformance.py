"""The behaviour every backend and both front ends must share, in virtual time.

Each class runs against every backend in ``conftest.BACKENDS`` and both front
ends, with a bucket of one bandwidth and one of two (the same policy twice: it
must behave exactly alike); ``make_bucket`` builds a bucket on a `ManualClock`
(autojump: a wait moves the clock by exactly the delay the bucket asked for).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from tokenbucket import AcquireTimeout, ConfigurationError, CostExceedsCapacity, TokenBucketError
from tokenbucket.testing import ManualClock

Make = Callable[..., Any]


@pytest.fixture(params=[1, 2], ids=["one-limit", "two-limits"])
def bands(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def sync(bucket: Any, remaining: Any, **kwargs: Any) -> Any:
    """``bucket.sync``; for a bucket with several bandwidths (all alike here), the same report for each."""
    n = len(bucket.policies)
    if n > 1:
        remaining = (remaining,) * n
        if "rate" in kwargs:
            kwargs["rate"] = (kwargs["rate"],) * n
    return bucket.sync(remaining, **kwargs)


class TestAcquire:
    def test_full_bucket_grants_at_once(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("10/second")
        grant = bucket.acquire(10)
        assert grant.cost == 10
        assert grant.waited == 0
        assert clock.now() == 1000.0
        assert bucket.snapshot().tokens == pytest.approx(0.0)

    def test_waits_exactly_the_refill_time(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("10/second")
        bucket.acquire(10)
        grant = bucket.acquire(5)
        assert grant.waited == pytest.approx(0.5)
        assert clock.now() == pytest.approx(1000.5)

    def test_refill_is_capped_at_capacity(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("10/second", capacity=20)
        bucket.acquire(20)
        clock.advance(3600)
        assert bucket.snapshot().tokens == pytest.approx(20.0)

    def test_fractional_and_zero_costs(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("1/second", capacity=1)
        assert bucket.try_acquire(0.25) is not None
        assert bucket.try_acquire(0.75) is not None
        assert bucket.try_acquire(0.5) is None
        assert bucket.try_acquire(0) is not None
        assert bucket.snapshot().tokens == pytest.approx(0.0)

    def test_initial_balance(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("2/second", capacity=10, initial=0)
        assert bucket.try_acquire(1) is None
        grant = bucket.acquire(1)
        assert grant.waited == pytest.approx(0.5)


class TestFairness:
    def test_start_times_follow_arrival_order(self, make_bucket: Make) -> None:
        bucket = make_bucket("10/second", capacity=10)
        bucket.acquire(10)
        starts = [bucket.reserve(cost).start for cost in [1, 8, 1, 1, 3, 1]]
        assert starts == sorted(starts)

    def test_large_request_is_not_starved_by_small_ones(self, make_bucket: Make) -> None:
        bucket = make_bucket("10/second", capacity=10)
        bucket.acquire(10)
        big = bucket.reserve(8)
        smalls = [bucket.reserve(1) for _ in range(20)]
        assert big.delay == pytest.approx(0.8)
        assert all(s.start >= big.start for s in smalls)

    def test_wait_never_exceeds_cost_ahead_over_rate(self, make_bucket: Make) -> None:
        bucket = make_bucket("4/second", capacity=8)
        bucket.acquire(8)
        ahead = 0.0
        for cost in [3, 8, 1, 5]:
            res = bucket.reserve(cost)
            assert res.delay <= (cost + ahead) / 4 + 1e-9
            ahead += cost


class TestTimeout:
    def test_timeout_is_decided_up_front_and_charges_nothing(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("1/second", capacity=5)
        bucket.acquire(5)
        before = bucket.snapshot()
        with pytest.raises(AcquireTimeout) as info:
            bucket.acquire(3, timeout=2)
        assert info.value.retry_after == pytest.approx(3.0)
        assert isinstance(info.value, TimeoutError)
        assert clock.now() == 1000.0
        assert bucket.snapshot() == before

    def test_timeout_long_enough_waits(self, make_bucket: Make) -> None:
        bucket = make_bucket("1/second", capacity=5)
        bucket.acquire(5)
        assert bucket.acquire(3, timeout=3).waited == pytest.approx(3.0)

    def test_try_acquire_never_waits_and_charges_nothing_on_refusal(
        self, make_bucket: Make, clock: ManualClock
    ) -> None:
        bucket = make_bucket("1/second", capacity=2)
        assert bucket.try_acquire(2) is not None
        assert bucket.try_acquire(1) is None
        assert bucket.snapshot().tokens == pytest.approx(0.0)
        clock.advance(1)
        assert bucket.try_acquire(1) is not None

    def test_reserve_with_timeout(self, make_bucket: Make) -> None:
        bucket = make_bucket("1/second", capacity=2)
        bucket.acquire(2)
        with pytest.raises(AcquireTimeout):
            bucket.reserve(2, timeout=1)
        assert bucket.reserve(2, timeout=2).delay == pytest.approx(2.0)


class TestCapacity:
    def test_strict_cost_above_capacity_fails_at_once(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("5/minute", capacity=300)
        with pytest.raises(CostExceedsCapacity) as info:
            bucket.acquire(301)
        assert info.value.limit == 300
        assert clock.now() == 1000.0
        assert bucket.snapshot().tokens == 300

    def test_overdraft_limit(self, make_bucket: Make) -> None:
        bucket = make_bucket("5/minute", capacity=300, overdraft=100)
        assert bucket.try_acquire(400) is not None
        with pytest.raises(CostExceedsCapacity):
            bucket.acquire(401)

    def test_infinite_overdraft_accepts_any_cost(self, make_bucket: Make) -> None:
        bucket = make_bucket("5/minute", capacity=300, overdraft=math.inf)
        assert bucket.acquire(1000).waited == 0


class TestOverdraft:
    def test_keepa_rule_starts_while_positive_and_waits_out_debt(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("5/minute", capacity=300, overdraft=math.inf)
        bucket.acquire(300)
        assert bucket.snapshot().tokens == 0
        # The balance must be back to min_start (1 token) before the next start: 12 s at 5/minute.
        grant = bucket.acquire(1000)
        assert grant.waited == pytest.approx(12.0)
        snap = bucket.snapshot()
        assert snap.tokens == pytest.approx(-999.0)
        assert snap.debt == pytest.approx(999.0)
        assert snap.time_to_positive == pytest.approx(999 * 12)

    def test_finite_overdraft_needs_cost_minus_overdraft(self, make_bucket: Make) -> None:
        bucket = make_bucket("10/second", capacity=10, overdraft=5, min_start=1)
        bucket.acquire(10)
        # cost 8 needs a balance of max(1, 8 - 5) = 3
        assert bucket.acquire(8).waited == pytest.approx(0.3)
        assert bucket.snapshot().tokens == pytest.approx(-5.0)

    def test_min_start(self, make_bucket: Make) -> None:
        bucket = make_bucket("1/second", capacity=10, overdraft=math.inf, min_start=4)
        bucket.acquire(10)
        assert bucket.acquire(1).waited == pytest.approx(4.0)


class TestReservation:
    def test_cancel_refunds_before_start(self, make_bucket: Make) -> None:
        bucket = make_bucket("1/second", capacity=10)
        bucket.acquire(10)
        res = bucket.reserve(4)
        assert bucket.snapshot().promised == pytest.approx(4.0)
        assert res.cancel() == pytest.approx(4.0)
        snap = bucket.snapshot()
        assert snap.tokens == pytest.approx(0.0)
        assert snap.promised == 0
        assert res.cancel() == 0  # once only

    def test_cancel_after_start_refunds_nothing(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("1/second", capacity=10)
        bucket.acquire(10)
        res = bucket.reserve(4)
        clock.advance(5)
        assert res.cancel() == 0
        assert bucket.snapshot().tokens == pytest.approx(1.0)

    def test_refund_is_capped_at_capacity(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("1/second", capacity=10)
        bucket.acquire(10)
        res = bucket.reserve(10)  # starts at +10 s
        clock.advance(9.5)  # balance -0.5 (after the charge)
        assert res.cancel() == pytest.approx(10.0)
        assert bucket.snapshot().tokens == pytest.approx(9.5)

    def test_wait_returns_the_grant(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("2/second", capacity=2)
        bucket.acquire(2)
        res = bucket.reserve(2)
        assert res.delay == pytest.approx(1.0)
        grant = res.wait()
        assert grant.waited == pytest.approx(1.0)
        assert clock.now() == pytest.approx(1001.0)
        with pytest.raises(TokenBucketError):
            res.wait()

    def test_cancelled_reservation_cannot_be_waited(self, make_bucket: Make) -> None:
        bucket = make_bucket("2/second", capacity=2)
        bucket.acquire(2)
        res = bucket.reserve(2)
        res.cancel()
        with pytest.raises(TokenBucketError):
            res.wait()


class TestSettle:
    def test_settle_charges_the_difference(self, make_bucket: Make) -> None:
        bucket = make_bucket("5/minute", capacity=300, overdraft=math.inf)
        grant = bucket.acquire(20)
        snap = grant.settle(1000)
        assert snap.tokens == pytest.approx(-700.0)
        assert bucket.snapshot().debt == pytest.approx(700.0)

    def test_settle_is_idempotent(self, make_bucket: Make) -> None:
        bucket = make_bucket("5/minute", capacity=300, overdraft=math.inf)
        grant = bucket.acquire(20)
        grant.settle(23)
        grant.settle(23)
        assert bucket.snapshot().tokens == pytest.approx(277.0)
        grant.settle(20)
        assert bucket.snapshot().tokens == pytest.approx(280.0)

    def test_settle_refund_is_capped_at_capacity(self, make_bucket: Make) -> None:
        bucket = make_bucket("5/minute", capacity=300)
        grant = bucket.acquire(20)
        grant.settle(0)
        assert bucket.snapshot().tokens == pytest.approx(300.0)

    def test_settle_may_go_below_the_overdraft(self, make_bucket: Make) -> None:
        bucket = make_bucket("1/second", capacity=10, overdraft=5)
        grant = bucket.acquire(10)
        grant.settle(30)
        assert bucket.snapshot().tokens == pytest.approx(-20.0)

    def test_settle_rejects_bad_costs(self, make_bucket: Make) -> None:
        bucket = make_bucket("1/second", capacity=10)
        grant = bucket.acquire(1)
        for bad in (-1, math.nan, math.inf):
            with pytest.raises(ConfigurationError):
                grant.settle(bad)
        assert bucket.snapshot().tokens == pytest.approx(9.0)


class TestSync:
    def test_sync_adopts_the_upstream_balance(self, make_bucket: Make) -> None:
        bucket = make_bucket("5/minute", capacity=300, overdraft=math.inf)
        snap = sync(bucket, -12)
        assert snap.tokens == pytest.approx(-12.0)
        assert snap.debt == pytest.approx(12.0)

    def test_sync_subtracts_promised_tokens(self, make_bucket: Make) -> None:
        bucket = make_bucket("1/second", capacity=10)
        bucket.acquire(10)
        bucket.reserve(4)
        snap = sync(bucket, 2)
        assert snap.promised == pytest.approx(4.0)
        assert snap.tokens == pytest.approx(-2.0)

    def test_sync_with_the_prediction_changes_nothing(self, make_bucket: Make, clock: ManualClock) -> None:
        bucket = make_bucket("1/second", capacity=10)
        bucket.acquire(10)
        bucket.reserve(3)
        clock.advance(1)
        before = bucket.snapshot()
        after = sync(bucket, before.tokens + before.promised)
        assert after.tokens == pytest.approx(before.tokens)
        assert after.promised == pytest.approx(before.promised)

    def test_sync_caps_at_capacity(self, make_bucket: Make) -> None:
        bucket = make_bucket("1/second", capacity=10)
        assert sync(bucket, 50).tokens == 10

    def test_sync_rejects_non_finite(self, make_bucket: Make) -> None:
        bucket = make_bucket("1/second", capacity=10)
        with pytest.raises(ConfigurationError):
            sync(bucket, math.nan)
        with pytest.raises(TypeError):
            sync(bucket, "5")

    def test_sync_adopts_a_new_rate(self, make_bucket: Make) -> None:
        bucket = make_bucket("5/minute", capacity=300, overdraft=math.inf)
        snap = sync(bucket, -60, rate="10/minute")
        assert snap.time_to_positive == pytest.approx(360.0)
        assert bucket.rate.per_second == pytest.approx(10 / 60)


class TestSnapshot:
    def test_fields(self, make_bucket: Make) -> None:
        bucket = make_bucket("2/second", capacity=10, overdraft=math.inf)
        bucket.acquire(10)
        bucket.acquire(4)  # waits until balance 1, leaving -3
        bucket.reserve(2)  # waits for balance back to 1: promised
        snap = bucket.snapshot()
        assert snap.tokens == pytest.approx(-5.0)
        assert snap.promised == pytest.approx(2.0)
        assert snap.debt == pytest.approx(3.0)
        assert snap.time_to_positive == pytest.approx(2.5)
        assert snap.time_to_full == pytest.approx(7.5)
        assert snap.capacity == 10
        assert snap.overdraft == math.inf
        assert snap.rate.per_second == 2

    def test_snapshot_of_unknown_bucket_is_fresh(self, make_bucket: Make) -> None:
        snap = make_bucket("2/second", capacity=10).snapshot()
        assert (snap.tokens, snap.promised, snap.debt) == (10, 0, 0)


class TestBadInput:
    @pytest.mark.parametrize("cost", [-1, -0.5, math.nan, math.inf, -math.inf])
    def test_bad_cost_values(self, make_bucket: Make, cost: float) -> None:
        bucket = make_bucket()
        before = bucket.snapshot()
        for call in (bucket.acquire, bucket.try_acquire, bucket.reserve):
            with pytest.raises(ConfigurationError, match="cost"):
                call(cost)
        assert bucket.snapshot() == before

    @pytest.mark.parametrize("cost", ["1", None, True, [1]])
    def test_bad_cost_types(self, make_bucket: Make, cost: object) -> None:
        bucket = make_bucket()
        for call in (bucket.acquire, bucket.try_acquire, bucket.reserve):
            with pytest.raises(TypeError, match="cost"):
                call(cost)

    @pytest.mark.parametrize("timeout", [-1, math.nan])
    def test_bad_timeouts(self, make_bucket: Make, timeout: float) -> None:
        bucket = make_bucket()
        with pytest.raises(ConfigurationError, match="timeout"):
            bucket.acquire(1, timeout=timeout)
        assert bucket.snapshot().tokens == 10
