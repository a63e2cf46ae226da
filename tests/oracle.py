"""An exact upstream, in `fractions.Fraction`, to judge buckets by (independent of `tokenbucket._model`).

The upstream's balance refills at ``rate`` and is capped at ``capacity``; each call that really
started pays its real cost at its start. `Upstream.start` checks that the call was affordable
(strict: balance >= cost; overdraft: balance >= min_start and balance - cost >= -overdraft) and
records a `Violation` with context when it was not. `replay` evaluates a ledger offline, because a
refunding settle comes after the start it corrects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction


def exact(x: float | int | Fraction) -> Fraction:
    """The exact value of a float (or int, or Fraction)."""
    return x if isinstance(x, Fraction) else Fraction(x)


@dataclass(frozen=True)
class Violation:
    time: Fraction
    cost: Fraction
    balance: Fraction
    order: int
    note: str

    def __str__(self) -> str:
        return (
            f"call #{self.order} at t={float(self.time):g} cost={float(self.cost):g} "
            f"found balance {float(self.balance):g}: {self.note}"
        )


@dataclass
class Upstream:
    rate: Fraction
    capacity: Fraction
    overdraft: float | Fraction = 0
    min_start: Fraction = Fraction(1)
    balance: Fraction | None = None
    now: Fraction = Fraction(0)
    violations: list[Violation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rate = exact(self.rate)
        self.capacity = exact(self.capacity)
        self.min_start = exact(self.min_start)
        if self.overdraft != math.inf:
            self.overdraft = exact(self.overdraft)
        self.balance = self.capacity if self.balance is None else exact(self.balance)
        self.now = exact(self.now)

    def at(self, t: float | Fraction) -> Fraction:
        """Bring the balance up to ``t`` (time never goes back) and return it."""
        t = exact(t)
        assert t >= self.now, f"the ledger goes back in time: {t} < {self.now}"
        assert self.balance is not None
        if self.balance < self.capacity:
            self.balance = min(self.capacity, self.balance + self.rate * (t - self.now))
        self.now = t
        return self.balance

    def start(self, t: float | Fraction, cost: float | Fraction, order: int = -1) -> None:
        """A call of real cost ``cost`` starts at ``t``: check it was affordable, then charge it.

        Affordable up to float rounding: a shortfall of at most ``capacity / 10**9`` (the
        bucket's documented slack, `Policy.slack`) is not a violation; anything more is.
        """
        cost = exact(cost)
        balance = self.at(t) + self.capacity / 10**9
        if self.overdraft == 0:
            if balance < cost:
                self.violations.append(Violation(self.now, cost, balance, order, "strict: balance < cost"))
        else:
            if balance < self.min_start:
                self.violations.append(Violation(self.now, cost, balance, order, "balance < min_start"))
            elif self.overdraft != math.inf and balance - cost < -self.overdraft:
                self.violations.append(Violation(self.now, cost, balance, order, "balance - cost < -overdraft"))
        self.balance -= cost

    def sync(self, t: float | Fraction, remaining: float | Fraction) -> None:
        """The upstream reports its balance (tests report exactly this balance)."""
        self.at(t)
        self.balance = exact(remaining)


def replay(upstream: Upstream, ledger: list[tuple[float | Fraction, float | Fraction, int]]) -> list[Violation]:
    """Replay ``(start time, real cost, grant order)`` entries in time order, ties in grant order."""
    for t, cost, order in sorted(ledger, key=lambda e: (exact(e[0]), e[2])):
        upstream.start(t, cost, order)
    return upstream.violations
