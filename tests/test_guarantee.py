"""The guarantee, judged against an exact upstream (tests/oracle.py), through the public API only.

Every call that really starts (``res.wait()`` returned) is logged with the virtual time it returned
at and its real cost (the settled cost for a refunding settle, else the charged cost); the ledger is
replayed offline through `oracle.Upstream`, which must find every start affordable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import Upstream, replay

from tokenbucket import AcquireTimeout, CostExceedsCapacity, Rate, TokenBucketError
from tokenbucket.testing import ManualClock

Make = Callable[..., Any]


class Ledger:
    """Drives one bucket and logs the starts."""

    def __init__(self, bucket: Any, clock: ManualClock) -> None:
        self.bucket = bucket
        self.clock = clock
        self.entries: dict[int, list[Any]] = {}  # order -> [t, real cost, order]
        self.order = 0

    def start(self, res: Any) -> Any:
        if res.start > self.clock.now():
            self.clock.set(res.start)
        grant = res.wait()
        self.entries[self.order] = [Fraction(self.clock.now()), Fraction(grant.cost), self.order]
        self.order += 1
        return self.order - 1, grant

    def settle(self, key: int, grant: Any, actual: float) -> None:
        grant.settle(actual)
        self.entries[key][1] = Fraction(actual)

    def violations(self, upstream: Upstream) -> list[Any]:
        return replay(upstream, [tuple(e) for e in self.entries.values()])  # type: ignore[misc]


# --------------------------------------------------------------------------- named regressions


@pytest.mark.parametrize("overdraft", [0, 200])
def test_cancel_of_a_middle_reservation_does_not_double_spend(
    make_bucket: Make, clock: ManualClock, overdraft: float
) -> None:
    """capacity 100, 1/s, full: reserve 100 ×3 (starts +0, +100, +200); cancel the middle; reserve 100 again.

    On main the new reservation starts beside the third: 200 tokens at one instant from a bucket of 100.
    """
    kwargs = {"overdraft": overdraft, "min_start": 1} if overdraft else {}
    bucket = make_bucket("1/second", capacity=100, **kwargs)
    ledger = Ledger(bucket, clock)
    first = bucket.reserve(100)
    x = bucket.reserve(100)
    y = bucket.reserve(100)
    ledger.start(first)
    x.cancel()
    z = bucket.reserve(100)
    for res in sorted([y, z], key=lambda r: r.start):
        ledger.start(res)
    found = ledger.violations(Upstream(Fraction(1), Fraction(100), overdraft, now=Fraction(1000)))
    assert not found, [str(v) for v in found] + [f"y.start={y.start} z.start={z.start}"]


def test_refunding_settle_while_a_reservation_waits_does_not_double_spend(
    make_bucket: Make, clock: ManualClock
) -> None:
    bucket = make_bucket("1/second", capacity=100)
    ledger = Ledger(bucket, clock)
    first = bucket.reserve(100)
    y = bucket.reserve(100)
    key, grant = ledger.start(first)
    ledger.settle(key, grant, 0)
    z = bucket.reserve(100)
    for res in sorted([y, z], key=lambda r: r.start):
        ledger.start(res)
    found = ledger.violations(Upstream(Fraction(1), Fraction(100), now=Fraction(1000)))
    assert not found, [str(v) for v in found] + [f"y.start={y.start} z.start={z.start}"]


# --------------------------------------------------------------------------- generated sequences

POLICIES = [
    # (rate per second, capacity, overdraft)
    (1, 10, 0),
    (3, 5, 0),
    (0.5, 0.75, 0),  # strict capacity below one token
    (2.5, 7.5, 0),
    (1, 10, 5),
    (2, 4, 2.5),
    (1, 10, math.inf),
]

op = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 12), st.none() | st.sampled_from([0, 1, 5, 20])),
    st.tuples(st.just("start"), st.integers(0, 20)),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("settle"), st.integers(0, 20), st.sampled_from([0, 0.25, 0.5, 1])),
    st.tuples(st.just("advance"), st.sampled_from([0, 0.5, 1, 3, 10])),
)


def scaled(cost: int, capacity: float) -> float:
    """A cost on a scale of the capacity: 0 .. 1.2 capacity."""
    return cost * capacity / 10


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(policy=st.sampled_from(POLICIES), ops=st.lists(op, max_size=25))
def test_every_start_is_affordable_upstream(
    make_bucket: Make, clock: ManualClock, policy: tuple[float, float, float], ops: list[tuple[Any, ...]]
) -> None:
    rate, capacity, overdraft = policy
    kwargs: dict[str, Any] = {"capacity": capacity}
    if overdraft:
        kwargs.update(overdraft=overdraft, min_start=1)
    bucket = make_bucket(Rate(rate, 1), **kwargs)
    born = clock.now()
    ledger = Ledger(bucket, clock)
    waiting: list[Any] = []
    started: list[tuple[int, Any]] = []
    log: list[str] = []
    for o in ops:
        kind = o[0]
        if kind == "reserve":
            cost = scaled(o[1], capacity)
            try:
                waiting.append(bucket.reserve(cost, timeout=o[2]))
                at = waiting[-1].start - born
                log.append(f"t={clock.now() - born:g} reserve({cost:g}, timeout={o[2]}) -> start +{at:g}")
            except AcquireTimeout:
                log.append(f"t={clock.now() - born:g} reserve({cost:g}, timeout={o[2]}) -> timeout")
            except CostExceedsCapacity:
                assert cost > capacity + (overdraft if overdraft else 0)
        elif kind == "start" and waiting:
            res = waiting.pop(o[1] % len(waiting))
            started.append(ledger.start(res))
            log.append(f"t={clock.now() - born:g} start #{started[-1][0]} cost {res.cost:g}")
        elif kind == "cancel" and waiting:
            res = waiting.pop(o[1] % len(waiting))
            refunded = res.cancel()
            log.append(f"t={clock.now() - born:g} cancel(cost {res.cost:g}) refunded {refunded:g}")
            with pytest.raises(TokenBucketError):
                res.wait()
        elif kind == "settle" and started:
            key, grant = started.pop(o[1] % len(started))
            actual = grant.cost * o[2]
            ledger.settle(key, grant, actual)
            log.append(f"t={clock.now() - born:g} settle #{key} {grant.cost:g} -> {actual:g}")
        elif kind == "advance":
            clock.advance(o[1])
    for res in sorted(waiting, key=lambda r: r.start):
        started.append(ledger.start(res))
        log.append(f"t={clock.now() - born:g} start #{started[-1][0]} cost {res.cost:g} (drain)")
    found = ledger.violations(Upstream(Fraction(rate), Fraction(capacity), overdraft, now=Fraction(born)))
    assert not found, "\n".join(str(v) for v in found) + "\n" + "\n".join(log)
