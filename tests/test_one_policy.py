"""One name, one policy: a second policy for a stored bucket is refused, and `reconfigure` changes it on purpose.

Every test runs on memory and Redis, sync and asyncio (the ``make_bucket`` fixture), in virtual time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from tokenbucket import ConfigurationError, PolicyMismatch, Rate
from tokenbucket.testing import ManualClock

pytestmark = pytest.mark.usefixtures("frontend")


def twin(make_bucket: Callable[..., Any], first: Any, rate: str, **policy: Any) -> Any:
    """Another bucket object with ``first``'s name on ``first``'s backend."""
    return make_bucket(rate, name=first.name, backend=first.backend, **policy)


def test_a_second_policy_for_one_name_is_refused_naming_both(make_bucket: Callable[..., Any]) -> None:
    keepa = make_bucket("5/minute", capacity=300, overdraft=math.inf)
    keepa.acquire(100)
    wrong = twin(make_bucket, keepa, "20/minute", capacity=300, overdraft=math.inf)
    calls: list[Callable[[], Any]] = [
        lambda: wrong.acquire(1),
        lambda: wrong.try_acquire(1),
        lambda: wrong.reserve(1),
        lambda: wrong.sync(50),
        wrong.snapshot,
    ]
    for call in calls:
        with pytest.raises(PolicyMismatch) as raised:
            call()
        message = str(raised.value)
        assert "refill 0.0833333/s" in message
        assert "refill 0.333333/s" in message
        assert "reconfigure()" in message
        assert raised.value.name == keepa.name
        assert raised.value.stored == (300.0, 5 / 60, math.inf, 1.0, 300.0)
        assert raised.value.requested == (300.0, 20 / 60, math.inf, 1.0, 300.0)
        assert isinstance(raised.value, ConfigurationError)
    assert keepa.snapshot().tokens == 200  # nothing the refused calls did changed the balance


@pytest.mark.parametrize(
    ("field", "value"), [("capacity", 50), ("overdraft", 10), ("min_start", 5), ("initial", 0)]
)
def test_every_field_of_the_policy_counts(make_bucket: Callable[..., Any], field: str, value: float) -> None:
    first = make_bucket("10/minute", capacity=100, overdraft=20, min_start=1)
    first.acquire(1)
    policy: dict[str, Any] = {"capacity": 100, "overdraft": 20, "min_start": 1, field: value}
    with pytest.raises(PolicyMismatch):
        twin(make_bucket, first, "10/minute", **policy).try_acquire(1)


def test_one_policy_written_two_ways_is_one_policy(make_bucket: Callable[..., Any]) -> None:
    first = make_bucket("5/minute", capacity=5)
    first.acquire(3)
    second = twin(make_bucket, first, "300/hour", capacity=5.0, min_start=0)  # min_start plays no part when strict
    assert second.try_acquire(2) is not None
    assert first.try_acquire(1) is None  # one balance: both drew from it


def test_reconfigure_carries_the_balance_over(make_bucket: Callable[..., Any], clock: ManualClock) -> None:
    bucket = make_bucket("5/minute", capacity=300, overdraft=math.inf, initial=0)
    bucket.sync(-40)  # in debt, as the upstream says
    snap = bucket.reconfigure(rate="20/minute")  # the plan was upgraded
    assert snap.tokens == -40
    assert snap.rate == Rate(20, 60)
    assert bucket.rate == Rate(20, 60)
    clock.advance(60)
    assert bucket.snapshot().tokens == pytest.approx(-20)  # refilling at the new rate
    upgraded = twin(make_bucket, bucket, "20/minute", capacity=300, overdraft=math.inf, initial=0)
    assert upgraded.snapshot().tokens == pytest.approx(-20)  # a process built with the new policy shares it


def test_after_a_reconfigure_an_object_with_the_old_policy_is_refused(make_bucket: Callable[..., Any]) -> None:
    old = make_bucket("5/minute", capacity=10)
    new = twin(make_bucket, old, "10/minute", capacity=10)
    old.acquire(4)
    with pytest.raises(PolicyMismatch):
        new.acquire(1)
    new.reconfigure()  # no arguments: this object's own policy becomes the stored one
    assert new.try_acquire(1) is not None
    with pytest.raises(PolicyMismatch):
        old.try_acquire(1)
    assert new.snapshot().tokens == 5  # 10 - 4 - 1: the balance carried over


def test_reconfigure_caps_the_balance_at_a_smaller_capacity(make_bucket: Callable[..., Any]) -> None:
    bucket = make_bucket("10/minute", capacity=10)
    snap = bucket.reconfigure(capacity=4)
    assert (snap.tokens, snap.capacity) == (4, 4)
    assert bucket.policy.initial == 4  # a default initial (the capacity) follows the capacity
    assert bucket.try_acquire(4) is not None
    assert bucket.try_acquire(1) is None


def test_reconfigure_keeps_waiting_reservations(make_bucket: Callable[..., Any], clock: ManualClock) -> None:
    bucket = make_bucket("1/second", capacity=2)
    bucket.acquire(2)
    waiting = bucket.reserve(2)  # starts in 2 s
    assert waiting.delay == 2
    bucket.reconfigure(rate="2/second")
    assert bucket.snapshot().promised == 2  # still charged, still in line
    later = bucket.reserve(1)  # the balance is -2: 1.5 s at the new rate (3 s at the old), but never ahead
    assert later.delay == 2
    clock.advance(2)
    waiting.wait()


def test_a_bad_reconfigure_changes_nothing(make_bucket: Callable[..., Any]) -> None:
    bucket = make_bucket("10/minute", capacity=10)
    bucket.acquire(3)
    with pytest.raises(ConfigurationError):
        bucket.reconfigure(capacity=-1)
    with pytest.raises(ConfigurationError):
        bucket.reconfigure(overdraft=1, min_start=20)  # min_start above capacity: nothing could start
    assert bucket.policy.capacity == 10
    assert bucket.snapshot().tokens == 7


def test_sync_with_a_new_rate_changes_the_stored_policy(make_bucket: Callable[..., Any]) -> None:
    bucket = make_bucket("5/minute", capacity=300, overdraft=math.inf)
    bucket.sync(120, rate="10/minute")  # the upstream reports a new refill rate with its balance
    upgraded = twin(make_bucket, bucket, "10/minute", capacity=300, overdraft=math.inf)
    assert upgraded.snapshot().tokens == 120
