"""The token-bucket arithmetic, and nothing else.

This module is sans-IO: it never reads a clock, sleeps, locks, or talks to a
store. Every function takes the current time ``now`` (seconds, from whatever
clock the caller owns) and returns a new frozen value; the caller persists it.
The Redis Lua scripts implement exactly this arithmetic, and a differential
test keeps the two identical.

State is the balance ``tokens`` as a new request sees it (every reservation
already charged), the time it was brought up to date, and the reservations that
have not started yet (``pending``, sorted by start time). The upstream's own
balance is ``tokens + promised``, where ``promised`` is what the pending
reservations will spend when they start.

Admission rule for a request of cost ``c`` (see `Policy.start_level`):

* strict (``overdraft == 0``): it starts when the balance is at least ``c``;
* overdraft ``D``: it starts when the balance is at least ``min_start`` and
  ``balance - c >= -D``.

A request is charged when it is reserved and starts no earlier than every
request reserved before it, so service is first-come first-served.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from ._exceptions import ConfigurationError, CostExceedsCapacity
from ._rate import Rate
from ._validate import check_amount, check_cost, check_nonnegative, check_positive

__all__ = [
    "BucketState",
    "Cancelled",
    "Pending",
    "Policy",
    "Rates",
    "Rejected",
    "RejectedAll",
    "Reserved",
    "ReservedAll",
    "Snapshot",
    "advance",
    "build_policies",
    "cancel",
    "combine",
    "describe",
    "earliest_start",
    "fresh",
    "lane_max_cost",
    "parse_rates",
    "per_rate",
    "reconfigure",
    "refill_tokens",
    "refundable",
    "reserve",
    "reserve_all",
    "reserve_lane",
    "settle",
    "snapshot",
    "sync",
    "try_take",
]


SLACK = 1e-9
"""`Policy.slack` as a fraction of the capacity (the Lua scripts use the same)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules of one bucket. Build it with `Policy.build`, which validates.

    Attributes:
        rate: The refill rate.
        capacity: The most tokens the bucket holds.
        overdraft: How far below zero a started request may take the balance
            (``0`` strict, ``math.inf`` Keepa's rule).
        min_start: With an overdraft, the balance a request needs to start.
        initial: The balance of a bucket that is created or found missing.
        refill: ``rate.per_second``, precomputed.
        slack: The shortfall that is float rounding, not a shortfall:
            ``capacity × 1e-9``. Refilling in pieces (a second and a half, then
            half a second) can leave the balance a few units in the last place
            below what one piece gives, and a request that is due must not
            wait for it. A start is never short by more than this.
    """

    rate: Rate
    capacity: float
    overdraft: float
    min_start: float
    initial: float
    refill: float
    slack: float

    @classmethod
    def build(
        cls,
        rate: Rate | str,
        capacity: float | None = None,
        overdraft: float = 0.0,
        min_start: float = 1.0,
        initial: float | None = None,
    ) -> Policy:
        """Validate and build a policy.

        Args:
            rate: A `Rate` or a rate string such as ``"5/minute"``.
            capacity: Most tokens held; default the rate's amount.
            overdraft: ``0`` (strict), a positive number, or ``math.inf``.
            min_start: Balance needed to start, used only with an overdraft;
                between 0 and ``capacity``.
            initial: Balance of a new or lost bucket; default ``capacity``; at most ``capacity``.

        Raises:
            ConfigurationError: a value can never work (the message names it).
            TypeError: a value has the wrong type.
        """
        rate = Rate.coerce(rate)
        cap = check_cost(rate.amount if capacity is None else check_positive("capacity", capacity), "capacity")
        debt = check_nonnegative("overdraft", overdraft, allow_inf=True)
        if not math.isinf(debt):
            check_cost(debt, "overdraft")
        start = check_nonnegative("min_start", min_start)
        if debt > 0 and start > cap:
            raise ConfigurationError(f"min_start {start:g} exceeds capacity {cap:g}: no request could ever start")
        if initial is None:
            init = cap
        else:
            init = check_amount("initial", initial)
            if init > cap:
                raise ConfigurationError(f"initial must be no greater than capacity {cap:g}, got {initial!r}")
        return cls(rate, float(cap), debt, start, init, rate.per_second, float(cap) * SLACK)

    @property
    def max_cost(self) -> float:
        """The largest cost that can ever start: ``capacity + overdraft``."""
        return self.capacity + self.overdraft

    def start_level(self, cost: float) -> float:
        """The balance a request of ``cost`` needs before it may start."""
        if self.overdraft == 0.0:
            return cost
        return max(self.min_start, cost - self.overdraft)

    def fingerprint(self) -> tuple[float, float, float, float, float]:
        """The numbers that decide what the bucket does, as stores remember them.

        ``(capacity, refill, overdraft, min_start, initial)``, with ``min_start``
        0 in a strict bucket (where it plays no part). Two policies with one
        fingerprint are the same policy: ``"5/minute"`` and ``"300/hour"`` are.
        """
        return (self.capacity, self.refill, self.overdraft, self.min_start if self.overdraft else 0.0, self.initial)

    def check(self, cost: float) -> None:
        """Raise `CostExceedsCapacity` if ``cost`` can never start."""
        if cost > self.capacity + self.overdraft:
            raise CostExceedsCapacity(cost, self.max_cost)


class Pending(NamedTuple):
    """A reservation that has not started: it starts at ``start`` and will spend ``cost``.

    A reservation made in a lane (`reserve_lane`) also keeps its lane's
    ``hold`` (tokens held back from that lane) and its ``margin``: how many
    tokens requests of more urgent lanes may still take before its start
    without making it unaffordable. Other reservations have ``hold`` 0 and
    are never passed.
    """

    start: float
    cost: float
    rid: int
    hold: float = 0.0
    margin: float = 0.0


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket's stored state.

    Attributes:
        tokens: The balance a new request sees (may be negative).
        updated: The time the balance was last brought up to date.
        pending: Reservations not yet started, sorted by start time.
    """

    tokens: float
    updated: float
    pending: tuple[Pending, ...] = ()

    @property
    def promised(self) -> float:
        """Tokens charged to reservations that have not started."""
        return math.fsum(p.cost for p in self.pending)


@dataclass(frozen=True, slots=True)
class Reserved:
    """The request was admitted and charged.

    Attributes:
        state: The new state to store.
        start: When the request may start (the clock of ``now``).
        delay: ``start - now``, never negative.
        rid: The reservation id if the request has to wait (so it can be cancelled), else None.
    """

    state: BucketState
    start: float
    delay: float
    rid: int | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """The request would wait longer than allowed; nothing was charged.

    Attributes:
        state: The state brought up to date (storing it is optional).
        retry_after: Seconds until the request could start.
    """

    state: BucketState
    retry_after: float


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The outcome of a cancel: ``refunded`` is 0 when the reservation had started or was unknown."""

    state: BucketState
    refunded: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a bucket looks like at one moment.

    Attributes:
        tokens: The balance a new request sees: after every reservation.
        promised: Charged to reservations that have not started yet. For a
            bucket held for another bandwidth or bucket (`reserve_all`), it
            includes the refill its upstream loses at capacity meanwhile, so
            the upstream's balance now is ``min(capacity, tokens + promised)``.
        debt: How far below zero the upstream's own balance is:
            ``max(0, -(tokens + promised))``.
        time_to_positive: Seconds until ``tokens`` is back to zero.
        time_to_full: Seconds until ``tokens`` reaches ``capacity``.
        capacity: The most tokens the bucket holds.
        rate: The refill rate.
        overdraft: How far below zero a started request may go.
        bandwidths: For a bucket with several bandwidths, the snapshot of
            each, in order (the fields above are those of the binding one);
            empty for a bucket with one.
        binding: The index in ``bandwidths`` of the one that binds: the one
            a request of one token would wait for longest (ties: the lowest
            balance for its capacity). 0 for a bucket with one.
    """

    tokens: float
    promised: float
    debt: float
    time_to_positive: float
    time_to_full: float
    capacity: float
    rate: Rate
    overdraft: float
    bandwidths: tuple[Snapshot, ...] = ()
    binding: int = 0


Rates = Rate | str | Sequence[Rate | str]
"""One rate or several: a `Rate`, a string (``"5/minute"``, ``"10/second; 600/hour"``), or a sequence of them."""


def build_policies(
    rate: Rates,
    capacity: float | Sequence[float] | None = None,
    overdraft: float = 0.0,
    min_start: float = 1.0,
    initial: float | Sequence[float] | None = None,
) -> tuple[Policy, ...]:
    """The policy of each bandwidth of a bucket: one per rate, validated (`Policy.build`).

    ``capacity`` is a sequence with one value per rate (or one number for a
    single rate; default each rate's amount). ``initial`` is one number for
    every bandwidth or one per rate. ``overdraft`` and ``min_start`` hold for
    every bandwidth.

    Raises:
        ConfigurationError: a value can never work, or the counts differ.
        TypeError: a value has the wrong type.
    """
    rates = parse_rates(rate)
    caps = per_rate("capacity", capacity, len(rates), scalar_for_all=False)
    inits = per_rate("initial", initial, len(rates), scalar_for_all=True)
    return tuple(Policy.build(r, c, overdraft, min_start, i) for r, c, i in zip(rates, caps, inits, strict=True))


def parse_rates(rate: Rates) -> tuple[Rate, ...]:
    """The rates of ``rate``: one `Rate`, a string of one or several, or a sequence of them."""
    if isinstance(rate, Rate):
        return (rate,)
    if isinstance(rate, str):
        return Rate.parse_many(rate)
    if isinstance(rate, Sequence):
        rates = tuple(Rate.coerce(r) for r in rate)
        if not rates:
            raise ConfigurationError("rate names no limit: give a rate, or a non-empty sequence of them")
        return rates
    raise TypeError(f"rate must be a Rate, a string or a sequence of them, not {type(rate).__name__}")


def per_rate(what: str, value: object, n: int, *, scalar_for_all: bool) -> list[Any]:
    """``value`` once per rate: a sequence of ``n``, or (for one rate, or ``scalar_for_all``) one value for all."""
    if value is None:
        return [None] * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        if n == 1 or scalar_for_all:
            return [value] * n
        raise ConfigurationError(f"{what} must give one value per rate ({n} rates), got {value!r}")
    if len(value) != n:
        raise ConfigurationError(f"{what} must give one value per rate: {n} rates, {len(value)} values in {value!r}")
    return list(value)


def combine(snaps: Sequence[Snapshot], policies: Sequence[Policy]) -> Snapshot:
    """The `Snapshot` of a bucket with several bandwidths: the binding one's, with ``bandwidths`` filled in."""

    def pressure(i: int) -> tuple[float, float]:
        p, snap = policies[i], snaps[i]
        wait = max(0.0, p.start_level(min(1.0, p.max_cost)) - snap.tokens) / p.refill
        return wait, -snap.tokens / p.capacity

    binding = max(range(len(snaps)), key=pressure)
    return replace(snaps[binding], bandwidths=tuple(snaps), binding=binding)


def fresh(policy: Policy, now: float) -> BucketState:
    """The state of a bucket that is created now (or was found missing)."""
    return BucketState(policy.initial, now)


def refill_tokens(tokens: float, updated: float, now: float, policy: Policy) -> float:
    """The balance at ``now``: ``tokens`` plus ``refill × elapsed``, capped at capacity.

    Time never goes backwards: a ``now`` before ``updated`` adds nothing.
    """
    if tokens >= policy.capacity or now <= updated:
        return tokens
    return min(policy.capacity, tokens + (now - updated) * policy.refill)


def try_take(tokens: float, updated: float, now: float, cost: float, policy: Policy) -> float | None:
    """The balance after charging ``cost`` if the request may start at once, else None.

    The arithmetic of `refill_tokens` and `reserve`, written out flat for a
    bucket with nothing pending: stores use it as their fast path. Raises
    `CostExceedsCapacity` like `reserve`.
    """
    # Ordered for the hot path (one bandwidth, strict, a cost within capacity): the
    # comparisons put the float first and the sum ``cap + overdraft`` is formed only
    # for a cost above capacity (overdraft >= 0, so below it the cost always fits).
    cap = policy.capacity
    if cap < cost and cap + policy.overdraft < cost:
        raise CostExceedsCapacity(cost, cap + policy.overdraft)
    if tokens < cap and now > updated:
        tokens += (now - updated) * policy.refill
        if tokens > cap:
            tokens = cap
    debt = policy.overdraft
    if debt == 0.0:
        return tokens - cost if tokens >= cost - policy.slack else None
    slack = policy.slack
    if tokens >= policy.min_start - slack and tokens - cost >= -debt - slack:
        return tokens - cost
    return None


def advance(state: BucketState, policy: Policy, now: float) -> BucketState:
    """Bring ``state`` up to ``now``: refill, and forget reservations that have started."""
    if now <= state.updated:
        return state
    pending = state.pending
    if pending and pending[0].start <= now:
        pending = tuple(p for p in pending if p.start > now)
    return BucketState(refill_tokens(state.tokens, state.updated, now, policy), now, pending)


def reserve(
    state: BucketState, policy: Policy, now: float, cost: float, max_wait: float | None, rid: int
) -> Reserved | Rejected:
    """Reserve ``cost`` tokens, first-come first-served.

    Args:
        state: The stored state (from `fresh` if none).
        policy: The bucket's rules.
        now: The current time.
        cost: Tokens the request will spend; zero or more.
        max_wait: Longest acceptable delay in seconds; None for no limit.
        rid: The id to record if the reservation has to wait.

    Returns:
        `Reserved` with the delay, or `Rejected` (nothing charged) if the delay
        would exceed ``max_wait``.

    Raises:
        CostExceedsCapacity: ``cost`` can never start under ``policy``.
    """
    policy.check(cost)
    now = max(now, state.updated)  # a clock that stepped back: time stands still until it catches up
    s = advance(state, policy, now)
    t0 = s.updated
    start = earliest_start(s, policy, cost)
    delay = max(0.0, start - now)
    if max_wait is not None and delay > max_wait:
        return Rejected(s, delay)
    if start > t0:
        return Reserved(BucketState(s.tokens - cost, t0, (*s.pending, Pending(start, cost, rid))), start, delay, rid)
    return Reserved(BucketState(s.tokens - cost, t0, s.pending), start, delay, None)


def lane_max_cost(policy: Policy, hold: float) -> float:
    """The largest cost a lane holding back ``hold`` tokens can ever start (negative: none)."""
    if policy.overdraft == 0.0:
        return policy.capacity - hold
    if policy.min_start + hold > policy.capacity:
        return -1.0
    return policy.capacity - hold + policy.overdraft


def _after(start: float) -> float:
    """``start``, or the next float when a wait would round to none (a wait is never zero)."""
    return start + math.ldexp(1.0, math.frexp(start)[1] - 53)


def reserve_lane(
    state: BucketState, policy: Policy, now: float, cost: float, hold: float, max_wait: float | None, rid: int
) -> Reserved | Rejected:
    """Reserve ``cost`` in a lane that leaves ``hold`` tokens to more urgent lanes.

    A request in a lane starts when the upstream's balance, less ``hold``,
    reaches its start level (`Policy.start_level`): a lane with a larger
    ``hold`` never takes the tokens a more urgent one needs. It waits behind
    every earlier reservation of its own or a more urgent lane (first come,
    first served), and may start before the reservations of less urgent lanes
    while each keeps enough margin to stay affordable at its own start; their
    start times never move, and their margins shrink by what it takes.

    The upstream's balance at ``t``, not counting reservations that start
    after ``t`` (they have not been charged there), is ``tokens + refill ×
    (t - now) + their costs``: that is what the request is judged on.

    Raises:
        CostExceedsCapacity: ``cost`` can never start in this lane.
    """
    limit = lane_max_cost(policy, hold)
    if cost > limit:
        raise CostExceedsCapacity(cost, max(0.0, limit), hold)
    now = max(now, state.updated)
    s = advance(state, policy, now)
    t0 = s.updated
    need = policy.start_level(cost) + hold
    pending = s.pending
    floor = max((p.start for p in pending if p.hold <= hold), default=t0)
    start = math.inf
    cuts = sorted({floor, *(p.start for p in pending if p.start > floor)})
    for i, a in enumerate(cuts):
        passed = [p for p in pending if p.start > a]  # not started by any time in [a, next cut)
        if any(p.hold <= hold or p.margin < cost - policy.slack for p in passed):
            continue
        balance = s.tokens + (a - t0) * policy.refill + math.fsum(p.cost for p in passed)
        short = balance < need - policy.slack  # a shortfall within the slack is rounding
        t = a + (need - balance) / policy.refill if short else a
        if short and t == a:  # a wait too short for a float at a: still a wait, of one step
            t = _after(a)
        if i + 1 == len(cuts) or t < cuts[i + 1]:
            start = t
            break
    delay = max(0.0, start - now)
    if max_wait is not None and delay > max_wait:
        return Rejected(s, delay)
    after = [p._replace(margin=p.margin - cost) if p.start > start else p for p in pending]
    if start <= t0:
        return Reserved(BucketState(s.tokens - cost, t0, tuple(after)), start, delay, None)
    later = math.fsum(p.cost for p in pending if p.start > start)
    balance = s.tokens + (start - t0) * policy.refill + later
    mine = Pending(start, cost, rid, hold, balance - policy.start_level(cost))
    ordered = tuple(sorted((*after, mine), key=lambda p: p.start))
    return Reserved(BucketState(s.tokens - cost, t0, ordered), start, delay, rid)


def earliest_start(state: BucketState, policy: Policy, cost: float) -> float:
    """When a request of ``cost`` may start in ``state`` (brought up to date): first-come first-served."""
    t0 = state.updated
    level = policy.start_level(cost)
    start = t0
    if state.tokens < level - policy.slack:
        start = t0 + (level - state.tokens) / policy.refill
        if start == t0:  # a wait too short for a float at t0: it is still a wait, of one step
            start = t0 + math.ldexp(1.0, math.frexp(t0)[1] - 53)
    if state.pending and state.pending[-1].start > start:
        start = state.pending[-1].start  # never ahead of an earlier reservation
    return start


@dataclass(frozen=True, slots=True)
class ReservedAll:
    """Every part of a `reserve_all` was admitted and charged.

    Attributes:
        states: The new state of each part, in order.
        start: When the request may start: the latest of the parts' own starts.
        delay: ``start - now``, never negative.
        rids: Each part's reservation id if it waits, else None.
    """

    states: tuple[BucketState, ...]
    start: float
    delay: float
    rids: tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class RejectedAll:
    """A `reserve_all` would wait longer than allowed; no part was charged.

    Attributes:
        states: Each part's state brought up to date (storing them is optional).
        retry_after: Seconds until the request could start.
    """

    states: tuple[BucketState, ...]
    retry_after: float


def reserve_all(
    parts: Sequence[tuple[BucketState, Policy, float]],
    now: float,
    max_wait: float | None,
    rids: Sequence[int],
) -> ReservedAll | RejectedAll:
    """Reserve a cost in each of several buckets for one request, all or nothing.

    The request starts when every bucket allows it: at the latest of the
    starts `reserve` would give in each, and it waits behind every earlier
    reservation in every bucket (each bucket stays first-come first-served).
    One bucket is charged its cost and holds a reservation until that common
    start. While it holds it, the upstream of that bucket has not been charged
    yet and may fill to capacity, after which it stops refilling: those lost
    tokens, ``balance + refill × (start - now) - capacity`` when positive, are
    charged too, so the bucket's balance at the start is what its upstream
    will have. (With one part this is `reserve`: its own start is the common one.)

    Args:
        parts: ``(state, policy, cost)`` for each bucket, each bucket once.
        now: The current time.
        max_wait: Longest acceptable delay; None for no limit.
        rids: One id per part, recorded for the parts that have to wait.

    Raises:
        CostExceedsCapacity: a cost can never start under its bucket's policy
            (checked for every part before anything is computed).
    """
    if len(rids) != len(parts):
        raise ValueError(f"reserve_all needs one id per part: {len(parts)} parts, {len(rids)} ids")
    for _, policy, cost in parts:
        policy.check(cost)
    for state, _, _ in parts:
        now = max(now, state.updated)  # one clock for every part; a step back stands still
    states = [advance(state, policy, now) for state, policy, _ in parts]
    own = [earliest_start(s, policy, cost) for s, (_, policy, cost) in zip(states, parts, strict=True)]
    start = max(own, default=now)
    delay = max(0.0, start - now)
    if max_wait is not None and delay > max_wait:
        return RejectedAll(tuple(states), delay)
    after: list[BucketState] = []
    ids: list[int | None] = []
    for s, mine, (_, policy, cost), rid in zip(states, own, parts, rids, strict=True):
        charge = cost
        if start > mine:  # held past its own start: charge what its upstream loses to the cap meanwhile
            charge += max(0.0, s.tokens + (start - now) * policy.refill - policy.capacity)
        if start > now:
            after.append(BucketState(s.tokens - charge, now, (*s.pending, Pending(start, charge, rid))))
            ids.append(rid)
        else:
            after.append(BucketState(s.tokens - charge, now, s.pending))
            ids.append(None)
    return ReservedAll(tuple(after), start, delay, tuple(ids))


def cancel(state: BucketState, policy: Policy, now: float, rid: int) -> Cancelled:
    """Cancel reservation ``rid``; if it has not started, refund what no later reservation needs.

    The reservations behind it keep their start times. Had the cancelled one
    never been made, the upstream would have ``cost`` more tokens at its start,
    but a full bucket stops refilling, so by the start of the last remaining
    reservation at most ``cost - refill × (last - start)`` of them are still
    there (Go's ``Reservation.Cancel``). Only that much is given back, so a
    refund never lets a new request start where the upstream would not have
    the tokens. The last reservation in line gets its whole cost back.
    """
    s = advance(state, policy, now)
    for i, p in enumerate(s.pending):
        if p.rid == rid:
            rest = s.pending[:i] + s.pending[i + 1 :]
            give = p.cost
            if rest and rest[-1].start > p.start:
                give = max(0.0, give - (rest[-1].start - p.start) * policy.refill)
            tokens = min(policy.capacity, s.tokens + give)
            refunded = max(0.0, tokens - s.tokens)
            return Cancelled(BucketState(max(tokens, s.tokens), s.updated, rest), refunded)
    return Cancelled(s, 0.0)


def refundable(policy: Policy, overpaid: float, actual: float, age: float) -> float:
    """How much of ``overpaid`` a settle may give back, ``age`` seconds after the call started.

    The call was charged ``actual + overpaid`` when it started; the upstream
    charged ``actual``. The upstream's balance has been the higher by
    ``overpaid`` ever since, except while it sat at capacity (a full bucket
    stops refilling). It started at most at ``capacity - actual`` and refills
    at ``refill``, so it can have been full for at most ``age - actual / refill``
    seconds, losing at most ``refill`` tokens of the difference per second.
    """
    if overpaid <= 0.0:
        return 0.0
    lost = max(0.0, age * policy.refill - actual)
    return max(0.0, overpaid - lost)


def settle(state: BucketState, policy: Policy, now: float, delta: float) -> BucketState:
    """Charge ``delta`` more tokens after a call, or refund ``-delta``.

    A charge may take the balance below ``-overdraft``: it records what the
    upstream did. A refund (see `refundable` for how much a call may claim)
    is capped at capacity, and while reservations wait it gives back only what
    is left of it when the last of them starts, as `cancel` does: the tokens
    may be gone to a full bucket by then.
    """
    s = advance(state, policy, now)
    if delta >= 0:
        return BucketState(s.tokens - delta, s.updated, s.pending)
    give = -delta
    if s.pending:
        give = max(0.0, give - (s.pending[-1].start - s.updated) * policy.refill)
    return BucketState(max(s.tokens, min(policy.capacity, s.tokens + give)), s.updated, s.pending)


def sync(state: BucketState, policy: Policy, now: float, remaining: float) -> BucketState:
    """Make the upstream's reported balance the truth.

    The new balance is ``remaining - promised`` (capped at capacity): if the
    upstream reports exactly what the bucket predicts, nothing changes.
    """
    s = advance(state, policy, now)
    return BucketState(min(policy.capacity, remaining - s.promised), s.updated, s.pending)


def reconfigure(state: BucketState, old: Policy, new: Policy, now: float) -> BucketState:
    """Carry a bucket's balance over from policy ``old`` to ``new``.

    The state is brought up to ``now`` under ``old`` (what the bucket had
    refilled so far is its own), then the balance is capped at the new
    capacity. Waiting reservations keep their start times and their charges.
    """
    s = advance(state, old, now)
    return BucketState(min(new.capacity, s.tokens), s.updated, s.pending)


def snapshot(state: BucketState, policy: Policy, now: float) -> Snapshot:
    """Describe the bucket at ``now``."""
    s = advance(state, policy, now)
    return describe(s.tokens, s.promised, policy)


def describe(tokens: float, promised: float, policy: Policy) -> Snapshot:
    """The `Snapshot` of a bucket whose balance is ``tokens`` with ``promised`` held by waiting reservations."""
    return Snapshot(
        tokens=tokens,
        promised=promised,
        debt=max(0.0, -(tokens + promised)),
        time_to_positive=max(0.0, -tokens) / policy.refill,
        time_to_full=max(0.0, policy.capacity - tokens) / policy.refill,
        capacity=policy.capacity,
        rate=policy.rate,
        overdraft=policy.overdraft,
    )
