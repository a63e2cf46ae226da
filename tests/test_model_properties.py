"""Properties of the pure model (`tokenbucket._model`), checked with hypothesis.

(a) no overspend, (b) FIFO, (c) no starvation, (d) cancel keeps (a); and a
state machine comparing the float model with a reference in exact arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tokenbucket import CostExceedsCapacity, Rate
from tokenbucket import _model as m

EPS = 1e-6


def policy(rate: float, capacity: float, overdraft: float = 0.0, min_start: float = 1.0) -> m.Policy:
    return m.Policy.build(Rate(rate), capacity, overdraft, min(min_start, capacity))


arrivals = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5, allow_nan=False),  # gap since the previous arrival
        st.floats(min_value=0, max_value=1, allow_nan=False),  # cost as a fraction of the largest allowed
        st.booleans(),  # cancel this one right after reserving it, if it waits
    ),
    min_size=1,
    max_size=60,
)


@dataclass
class Run:
    starts: list[tuple[float, float]] = field(default_factory=list)  # (start, cost) of requests not cancelled
    delays: list[tuple[float, float, float]] = field(default_factory=list)  # (delay, cost, cost ahead)


def simulate(p: m.Policy, plan: list[tuple[float, float, bool]], cancels: bool) -> Run:
    state = m.fresh(p, 0.0)
    now = 0.0
    run = Run()
    limit = p.capacity if p.overdraft == 0 else min(p.capacity + p.overdraft, 3 * p.capacity)
    for rid, (gap, frac, cancel) in enumerate(plan):
        now += gap
        cost = frac * limit
        ahead = m.advance(state, p, now).promised
        result = m.reserve(state, p, now, cost, None, rid)
        assert isinstance(result, m.Reserved)
        state = result.state
        run.delays.append((result.delay, cost, ahead))
        if cancels and cancel and result.rid is not None:
            state = m.cancel(state, p, now, rid).state
        else:
            run.starts.append((result.start, cost))
    return run


def assert_no_overspend(p: m.Policy, starts: list[tuple[float, float]]) -> None:
    ordered = sorted(starts)
    allowance = p.capacity + (p.overdraft if p.overdraft != math.inf else 0)
    for i in range(len(ordered)):
        spent = 0.0
        for j in range(i, len(ordered)):
            spent += ordered[j][1]
            window = ordered[j][0] - ordered[i][0]
            assert spent <= allowance + p.refill * window + EPS * max(1.0, spent)


rates = st.sampled_from([0.5, 1.0, 5 / 60, 10.0, 1000.0])
capacities = st.sampled_from([1.0, 10.0, 300.0])


@settings(max_examples=150, deadline=None)
@given(rate=rates, capacity=capacities, plan=arrivals, cancels=st.booleans())
def test_strict_never_overspends_and_is_fifo(rate: float, capacity: float, plan: list, cancels: bool) -> None:
    p = policy(rate, capacity)
    run = simulate(p, plan, cancels)
    assert_no_overspend(p, run.starts)  # (a), and (d) when cancels
    starts = [s for s, _ in run.starts]
    assert starts == sorted(starts)  # (b)


@settings(max_examples=150, deadline=None)
@given(rate=rates, capacity=capacities, plan=arrivals)
def test_strict_no_starvation(rate: float, capacity: float, plan: list) -> None:
    p = policy(rate, capacity)
    run = simulate(p, plan, cancels=False)
    for delay, cost, ahead in run.delays:  # (c)
        assert delay <= (cost + ahead) / p.refill + EPS


@settings(max_examples=150, deadline=None)
@given(
    rate=rates,
    capacity=capacities,
    overdraft=st.sampled_from([1.0, 50.0, 1000.0]),
    plan=arrivals,
    cancels=st.booleans(),
)
def test_overdraft_never_overspends_and_is_fifo(
    rate: float, capacity: float, overdraft: float, plan: list, cancels: bool
) -> None:
    p = policy(rate, capacity, overdraft)
    run = simulate(p, plan, cancels)
    assert_no_overspend(p, run.starts)
    starts = [s for s, _ in run.starts]
    assert starts == sorted(starts)


@settings(max_examples=100, deadline=None)
@given(rate=rates, plan=arrivals)
def test_keepa_rule_starts_only_with_a_positive_balance(rate: float, plan: list) -> None:
    p = policy(rate, 300.0, math.inf, 1.0)
    state = m.fresh(p, 0.0)
    now = 0.0
    for rid, (gap, frac, _) in enumerate(plan):
        now += gap
        cost = frac * 1000
        result = m.reserve(state, p, now, cost, None, rid)
        assert isinstance(result, m.Reserved)
        # at the start, every earlier request has started: the balance then, before this charge, is >= 1
        balance_at_start = m.refill_tokens(m.advance(state, p, now).tokens, now, result.start, p)
        assert balance_at_start >= 1 - EPS
        state = result.state


def test_cost_above_the_limit_is_refused_without_state() -> None:
    p = policy(1.0, 10.0, 5.0)
    with pytest.raises(CostExceedsCapacity):
        m.reserve(m.fresh(p, 0.0), p, 0.0, 15.5, None, 1)
    with pytest.raises(CostExceedsCapacity):
        m.try_take(10.0, 0.0, 0.0, 15.5, p)


def test_rejected_charges_nothing() -> None:
    p = policy(1.0, 10.0)
    state = m.BucketState(0.0, 0.0)
    result = m.reserve(state, p, 0.0, 5.0, 4.9, 1)
    assert isinstance(result, m.Rejected)
    assert result.retry_after == pytest.approx(5.0)
    assert result.state.tokens == 0.0


@pytest.mark.parametrize(
    ("rate", "seconds"),
    [(1 / (365 * 86400), 10 * 365 * 86400.0), (1e6, 1e-6), (1e6, 3 * 365 * 86400.0), (5 / 60, 1e9)],
)
def test_extreme_rates_and_elapsed_times(rate: float, seconds: float) -> None:
    p = policy(rate, 100.0)
    state = m.BucketState(-50.0, 0.0)
    expected = min(100.0, -50.0 + rate * seconds)
    assert m.snapshot(state, p, seconds).tokens == pytest.approx(expected, rel=1e-12, abs=1e-9)
    result = m.reserve(state, p, 0.0, 100.0, None, 1)
    assert isinstance(result, m.Reserved)
    assert result.delay == pytest.approx(150.0 / rate, rel=1e-12)


def test_no_drift_over_a_million_operations() -> None:
    p = policy(1000.0, 10.0)
    tokens, updated = 10.0, 0.0
    step = 1 / 1000  # exactly the refill of one token
    for i in range(1, 1_000_001):
        now = i * step
        left = m.try_take(tokens, updated, now, 1.0, p)
        assert left is not None
        tokens, updated = left, now
    assert tokens == pytest.approx(9.0, abs=1e-6)


def test_time_never_goes_backwards() -> None:
    p = policy(1.0, 10.0)
    state = m.BucketState(0.0, 100.0)
    assert m.advance(state, p, 50.0) == state
    assert m.try_take(0.0, 100.0, 50.0, 1.0, p) is None


# --- the model against a reference in exact arithmetic -------------------------------------------

Q = Fraction


class Reference:
    """The bucket semantics of DESIGN.md, written plainly in exact arithmetic."""

    def __init__(self, rate: Q, capacity: Q, overdraft: Q | None, min_start: Q) -> None:
        self.rate, self.capacity, self.overdraft, self.min_start = rate, capacity, overdraft, min_start
        self.tokens = capacity
        self.now = Q(0)
        self.pending: dict[int, tuple[Q, Q]] = {}  # rid -> (start, cost)

    def at(self, now: Q) -> None:
        if now > self.now:
            if self.tokens < self.capacity:
                self.tokens = min(self.capacity, self.tokens + (now - self.now) * self.rate)
            self.now = now
        self.pending = {r: sc for r, sc in self.pending.items() if sc[0] > self.now}

    def level(self, cost: Q) -> Q:
        if self.overdraft == 0:
            return cost
        if self.overdraft is None:  # infinite
            return self.min_start
        return max(self.min_start, cost - self.overdraft)

    def reserve(self, cost: Q, max_wait: Q | None, rid: int) -> tuple[bool, Q]:
        start = self.now if self.tokens >= self.level(cost) else self.now + (self.level(cost) - self.tokens) / self.rate
        if self.pending:
            start = max(start, max(s for s, _ in self.pending.values()))
        delay = start - self.now
        if max_wait is not None and delay > max_wait:
            return False, delay
        self.tokens -= cost
        if start > self.now:
            self.pending[rid] = (start, cost)
        return True, delay

    def cancel(self, rid: int) -> Q:
        if rid not in self.pending:
            return Q(0)
        start, cost = self.pending.pop(rid)
        # What is left of the refund when the last remaining reservation starts: a full bucket stops refilling.
        last = max((s for s, _ in self.pending.values()), default=start)
        give = max(Q(0), cost - max(Q(0), last - start) * self.rate)
        new = max(self.tokens, min(self.capacity, self.tokens + give))
        refunded, self.tokens = new - self.tokens, new
        return refunded

    def settle(self, delta: Q) -> None:
        if delta >= 0:
            self.tokens -= delta
            return
        last = max((s for s, _ in self.pending.values()), default=self.now)
        give = max(Q(0), -delta - (last - self.now) * self.rate)
        self.tokens = max(self.tokens, min(self.capacity, self.tokens + give))

    def sync(self, remaining: Q) -> None:
        self.tokens = min(self.capacity, remaining - sum((c for _, c in self.pending.values()), Q(0)))


amounts = st.integers(min_value=0, max_value=400).map(lambda n: Q(n, 4))


class ModelMatchesReference(RuleBasedStateMachine):
    @initialize(
        rate=st.sampled_from([Q(1, 4), Q(5, 60), Q(1), Q(10), Q(1000)]),
        capacity=st.sampled_from([Q(1), Q(10), Q(300)]),
        overdraft=st.sampled_from([Q(0), Q(5), Q(100), None]),
        min_start=st.sampled_from([Q(0), Q(1), Q(1, 2)]),
    )
    def setup(self, rate: Q, capacity: Q, overdraft: Q | None, min_start: Q) -> None:
        self.ref = Reference(rate, capacity, overdraft, min_start)
        self.policy = m.Policy.build(
            Rate(float(rate)), float(capacity), math.inf if overdraft is None else float(overdraft), float(min_start)
        )
        self.state = m.fresh(self.policy, 0.0)
        self.now = Q(0)
        self.next_rid = 1

    def _limit(self) -> Q | None:
        if self.ref.overdraft is None:
            return None
        return self.ref.capacity + self.ref.overdraft

    @rule(step=st.integers(min_value=0, max_value=4000).map(lambda n: Q(n, 8)))
    def tick(self, step: Q) -> None:
        self.now += step
        self.ref.at(self.now)

    @rule(cost=amounts, max_wait=st.one_of(st.none(), amounts))
    def reserve(self, cost: Q, max_wait: Q | None) -> None:
        limit = self._limit()
        rid = self.next_rid
        self.next_rid += 1
        if limit is not None and cost > limit:
            with pytest.raises(CostExceedsCapacity):
                m.reserve(self.state, self.policy, float(self.now), float(cost), None, rid)
            return
        result = m.reserve(
            self.state, self.policy, float(self.now), float(cost), None if max_wait is None else float(max_wait), rid
        )
        admitted, delay = self.ref.reserve(cost, max_wait, rid)
        # near a max_wait boundary, float rounding may decide either way: only compare clear cases
        if max_wait is not None and abs(delay - max_wait) < Q(1, 10**6):
            assume(isinstance(result, m.Reserved) == admitted)
        assert isinstance(result, m.Reserved) == admitted
        if isinstance(result, m.Reserved):
            assert result.delay == pytest.approx(float(delay), rel=1e-9, abs=1e-7)
            self.state = result.state
        else:
            assert result.retry_after == pytest.approx(float(delay), rel=1e-9, abs=1e-7)

    @precondition(lambda self: bool(self.ref.pending))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.ref.pending)))
        result = m.cancel(self.state, self.policy, float(self.now), rid)
        refunded = self.ref.cancel(rid)
        assert result.refunded == pytest.approx(float(refunded), rel=1e-9, abs=1e-7)
        self.state = result.state

    @rule(delta=st.integers(min_value=-200, max_value=800).map(lambda n: Q(n, 4)))
    def settle(self, delta: Q) -> None:
        self.state = m.settle(self.state, self.policy, float(self.now), float(delta))
        self.ref.settle(delta)

    @rule(remaining=st.integers(min_value=-2000, max_value=1200).map(lambda n: Q(n, 4)))
    def sync(self, remaining: Q) -> None:
        self.state = m.sync(self.state, self.policy, float(self.now), float(remaining))
        self.ref.sync(remaining)

    @invariant()
    def same_balance(self) -> None:
        if not hasattr(self, "ref"):
            return
        snap = m.snapshot(self.state, self.policy, float(self.now))
        promised = sum((c for _, c in self.ref.pending.values()), Q(0))
        assert snap.tokens == pytest.approx(float(self.ref.tokens), rel=1e-9, abs=1e-6)
        assert snap.promised == pytest.approx(float(promised), rel=1e-9, abs=1e-6)
        assert snap.debt == pytest.approx(float(max(Q(0), -(self.ref.tokens + promised))), rel=1e-9, abs=1e-6)


ModelMatchesReference.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_model_matches_exact_reference = ModelMatchesReference.TestCase
