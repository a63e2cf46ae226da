"""Numbers outside float range, or beyond any real quota, are refused before any state changes.

Every amount a user gives (a cost, a settled cost, a reported balance, a capacity, an overdraft) is checked
once, in the front end, into a finite float no larger than `MAX_AMOUNT`; so a balance can never become
infinite, and a huge wait sleeps in bounded chunks instead of crashing in `time.sleep`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from tokenbucket import ConfigurationError, Rate, TokenBucket
from tokenbucket._clock import SystemClock
from tokenbucket._validate import MAX_AMOUNT

HUGE = 10**400  # an int no float can hold


def _unchanged(bucket: Any, before: Any) -> None:
    after = bucket.snapshot()
    assert (after.tokens, after.promised) == (before.tokens, before.promised)


@pytest.mark.parametrize("cost", [HUGE, 10**16, 1e300, math.inf])
def test_a_cost_beyond_any_quota_is_refused_and_the_bucket_stays_usable(
    make_bucket: Callable[..., Any], cost: float
) -> None:
    bucket = make_bucket("5/minute", overdraft=math.inf)
    before = bucket.snapshot()
    with pytest.raises(ConfigurationError, match="cost"):
        bucket.acquire(cost)
    with pytest.raises(ConfigurationError, match="cost"):
        bucket.reserve(cost)
    with pytest.raises(ConfigurationError, match="cost"):
        bucket.try_acquire(cost)
    _unchanged(bucket, before)
    assert bucket.try_acquire(1) is not None  # not -inf: still usable


@pytest.mark.parametrize("actual", [HUGE, 10**40, 1e308, -1, math.nan])
def test_settling_an_impossible_cost_is_refused_and_changes_nothing(
    make_bucket: Callable[..., Any], actual: float
) -> None:
    bucket = make_bucket("5/minute", overdraft=math.inf)
    grant = bucket.acquire(1)
    before = bucket.snapshot()
    with pytest.raises(ConfigurationError, match="actual_cost"):
        grant.settle(actual)
    _unchanged(bucket, before)
    snap = grant.settle(3)  # the grant can still be settled for real
    assert snap.tokens == before.tokens - 2


@pytest.mark.parametrize("remaining", [HUGE, -HUGE, 1e300, -1e16, math.inf, -math.inf, math.nan])
def test_a_reported_balance_out_of_range_is_refused(make_bucket: Callable[..., Any], remaining: float) -> None:
    bucket = make_bucket("5/minute", overdraft=math.inf)
    before = bucket.snapshot()
    with pytest.raises(ConfigurationError, match="remaining"):
        bucket.sync(remaining)
    _unchanged(bucket, before)


def test_the_deepest_reportable_debt_still_gives_a_finite_wait(make_bucket: Callable[..., Any]) -> None:
    bucket = make_bucket("5/minute", overdraft=math.inf)
    snap = bucket.sync(-MAX_AMOUNT)
    assert math.isfinite(snap.tokens)
    assert math.isfinite(snap.time_to_positive)
    reservation = bucket.reserve(1)
    assert reservation.delay == pytest.approx((MAX_AMOUNT + 1) * 12, rel=1e-9)
    reservation.cancel()


@pytest.mark.parametrize(
    ("policy", "what"),
    [
        ({"capacity": 10**16}, "capacity"),
        ({"capacity": HUGE}, "capacity"),
        ({"overdraft": 1e16}, "overdraft"),
        ({"overdraft": HUGE}, "overdraft"),
        ({"initial": -HUGE}, "initial"),
        ({"initial": -1e16}, "initial"),
        ({"initial": math.nan}, "initial"),
    ],
)
def test_a_policy_beyond_any_quota_is_refused(policy: dict[str, float], what: str) -> None:
    with pytest.raises(ConfigurationError, match=what):
        TokenBucket("n", "5/minute", **policy)


def test_a_rate_out_of_float_range_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="rate amount"):
        Rate(HUGE)
    with pytest.raises(ConfigurationError, match="capacity"):
        TokenBucket("n", Rate(1e16))  # the default capacity is the rate's amount


def test_an_infinite_overdraft_is_still_accepted() -> None:
    assert TokenBucket("n", "5/minute", overdraft=math.inf).overdraft == math.inf


class _FakeTime:
    """time.monotonic / time.sleep stand-ins: sleeping advances the clock, and refuses what the OS would."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if seconds > 9e9:
            raise OverflowError("sleep length is too large")
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def test_a_wait_longer_than_the_os_allows_sleeps_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeTime()
    monkeypatch.setattr(time, "monotonic", fake.monotonic)
    monkeypatch.setattr(time, "sleep", fake.sleep)
    SystemClock.sleep(1.2e13)  # what a 5/minute bucket after sync(-1e12) asks for
    assert fake.now == pytest.approx(1000.0 + 1.2e13)
    assert max(fake.sleeps) <= 1e9
    fake.sleeps.clear()
    SystemClock.sleep(0.25)  # a short wait is one plain sleep
    assert fake.sleeps == [0.25]


def test_an_async_wait_longer_than_the_os_allows_sleeps_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeTime()
    monkeypatch.setattr(time, "monotonic", fake.monotonic)
    monkeypatch.setattr(asyncio, "sleep", fake.asleep)
    with pytest.raises(StopIteration):  # the fake never suspends, so one step runs the whole wait
        SystemClock.asleep(1.2e13).send(None)
    assert fake.now == pytest.approx(1000.0 + 1.2e13)
    assert max(fake.sleeps) <= 1e9
