"""The shared Keepa quota: one tokenbucket bucket that every job pays from.

Every Keepa request goes through `tokenbucket.integrations.httpx.RateLimitedTransport`
on that bucket, which for each request:

1. acquires the estimated cost (blocking, first-come first-served, no
   "has enough tokens?" gate), priced by the bucket's `tokenbucket.CostModel`
   from the operation and the number of ASINs;
2. sends it;
3. settles the grant with the ``tokensConsumed`` Keepa reports (teaching the
   cost model) and syncs the bucket with ``tokensLeft``, less what is still in
   flight.

Batch sizes come from `tokenbucket.BatchPlanner` with a budget of
``max_debt + min_start`` tokens a request: the largest batch that may start as
soon as the balance is positive, and never one that can never start.

Keepa refills once a minute while the bucket refills continuously, so the
bucket can be ahead of Keepa by up to one minute of refill. The policy
therefore asks for ``min_start = refill + 1`` tokens (plus headroom for cost
surprises, see `keepa_policy`) before a call starts, which keeps Keepa's own
balance positive and so never earns a 429.

The bucket has two lanes: the recent-deals update calls in ``"urgent"``, the
backfill in ``"bulk"``, which leaves `KeepaQuota.bulk_hold` tokens to the
update, so an update never waits behind a backfill batch that waits for tokens.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from tokenbucket import BatchPlan, BatchPlanner, CostModel, MemoryBackend, Rate, TokenBucket
from tokenbucket.integrations.httpx import RateLimitedTransport

__all__ = [
    "PRIORS",
    "KeepaPolicy",
    "KeepaQuota",
    "ScaledClock",
    "Stopped",
    "describe_plan",
    "format_duration",
    "keepa_operation",
    "keepa_policy",
]

PRIORS = {"product": 20.0, "product_history": 20.0, "deal": 5.0}
"""Starting per-unit costs: Keepa's ≈20 tokens an ASIN with offers and stock (and, to be safe, for history
alone until the model has seen it); 5 a deal page."""


class Stopped(Exception):
    """The collector is stopping; raised out of a sleep (a waiting acquire refunds its cost)."""


class ScaledClock:
    """A clock running ``scale`` times faster than the wall clock, whose sleeps end early on stop.

    The collector lives in the upstream's time: with the simulator at
    ``--time-scale 300`` a Keepa minute passes in 0.2 s, and so does the
    bucket's. `sleep` raises `Stopped` as soon as ``stop`` is set, so a job
    waiting for tokens stops at once (and its reservation is refunded).
    """

    def __init__(self, scale: float = 1.0, stop: threading.Event | None = None) -> None:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError("time scale must be a positive number")
        self.scale = scale
        self.stop = stop or threading.Event()

    def now(self) -> float:
        """Scaled monotonic seconds."""
        return time.monotonic() * self.scale

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of scaled time; raise `Stopped` if the collector stops meanwhile."""
        if self.stop.wait(max(0.0, seconds) / self.scale):
            raise Stopped

    async def asleep(self, seconds: float) -> None:
        """Sleep a task ``seconds`` of scaled time."""
        if self.stop.is_set():
            raise Stopped
        await asyncio.sleep(max(0.0, seconds) / self.scale)


@dataclass(frozen=True, slots=True)
class KeepaPolicy:
    """The shared bucket's policy, derived from the plan's refill rate."""

    refill_per_minute: float
    capacity: float
    max_debt: float
    min_start: float


def keepa_policy(refill_per_minute: float, max_debt_minutes: float = 15.0) -> KeepaPolicy:
    """The policy for a Keepa plan of ``refill_per_minute`` tokens a minute.

    Capacity is an hour of refill (Keepa's bucket). A call may take the balance
    down to ``-max_debt`` (``max_debt_minutes`` of refill, at least one token),
    so no batch leaves the other jobs waiting longer than that for the debt to
    be repaid.

    A call starts only with ``min_start`` tokens in hand: one minute of refill
    plus one (Keepa refills once a minute, the bucket continuously; see the
    module docstring), plus a quarter of ``max_debt`` of headroom. A waiting
    request's start time is fixed when it is reserved; if a batch started
    before it turns out to cost more than estimated, its settle lowers the
    balance but not that start time. The headroom absorbs such surprises (up to
    a quarter of a batch) so Keepa's own balance is still positive when the
    request starts, and it never answers 429.
    """
    max_debt = max(1.0, max_debt_minutes * refill_per_minute)
    min_start = refill_per_minute + 1 + math.ceil(max_debt / 4)
    return KeepaPolicy(refill_per_minute, 60 * refill_per_minute, max_debt, min_start)


def keepa_operation(request: httpx.Request) -> tuple[str, float] | None:
    """Name a Keepa request for the cost model: ``(op, units)``, or None for a free one.

    ``/product`` with offers is ``product`` (≈ 6 tokens an offer page, plus
    stock), without is ``product_history`` (1 token an ASIN); ``/deal`` is
    ``deal`` (5 tokens a page); ``/token`` is free.
    """
    path = request.url.path.rstrip("/")
    if path.endswith("/product"):
        asins = [a for a in request.url.params.get("asin", "").split(",") if a]
        op = "product" if request.url.params.get("offers") else "product_history"
        return op, max(1, len(asins))
    if path.endswith("/deal"):
        return "deal", 1
    return None


class KeepaQuota:
    """The bucket every Keepa call of every job (and, on Redis, every process) pays from.

    Args:
        policy: See `keepa_policy`.
        backend: Where the bucket lives (`MemoryBackend` or `RedisBackend`).
        clock: The bucket's clock (`ScaledClock` in the simulator's time), or None
            for the backend's own clock.
        costs: The cost model; default a fresh `CostModel` seeded with `PRIORS`.
        name: The bucket's name.
        max_rps: Also cap Keepa calls at this many requests a second (of the
            bucket's clock), in the same reservation as the tokens: a second
            bucket, ``<name>:requests``, holding ``max(1, max_rps)`` requests,
            reserved with the token bucket in one step (`tokenbucket.BucketGroup`
            inside the transport), so a call never holds one while the other
            refuses. None: no cap. On Redis Cluster give ``name`` a hash tag
            (``"{keepa}"``) so both buckets share a slot.
    """

    def __init__(
        self,
        policy: KeepaPolicy,
        *,
        backend: Any = None,
        clock: ScaledClock | None = None,
        costs: CostModel | None = None,
        name: str = "keepa",
        max_rps: float | None = None,
    ) -> None:
        if max_rps is not None and not (max_rps > 0 and math.isfinite(max_rps)):
            raise ValueError(f"max_rps must be a positive number, got {max_rps!r}")
        self.policy = policy
        self.costs = costs if costs is not None else CostModel(prior=PRIORS)
        self.bucket = TokenBucket(
            name,
            rate=Rate(policy.refill_per_minute, per=60),
            capacity=policy.capacity,
            overdraft=policy.max_debt,
            min_start=policy.min_start,
            backend=backend if backend is not None else MemoryBackend(),
            clock=clock,
            cost_model=self.costs,
            lanes={"urgent": 0.0, "bulk": self.bulk_hold(policy)},
        )
        self.requests: TokenBucket | None = None
        if max_rps is not None:
            self.requests = TokenBucket(
                f"{name}:requests",
                rate=Rate(max_rps),
                capacity=max(1.0, max_rps),
                backend=self.bucket.backend,
                clock=clock,
            )
        self.planner = BatchPlanner(self.bucket, self.costs, max_cost=policy.max_debt + policy.min_start)
        self.last_plan: BatchPlan | None = None

    @staticmethod
    def bulk_hold(policy: KeepaPolicy) -> float:
        """The tokens the bulk lane (the backfill) leaves to the urgent one (the recent-deals update).

        One update batch's budget, ``max_debt + min_start``: an update that
        arrives while a backfill batch waits for tokens passes it, and the
        backfill still starts when it was due.
        """
        return policy.max_debt + policy.min_start

    def transport(self, inner: httpx.BaseTransport | None = None, *, lane: str | None = None) -> RateLimitedTransport:
        """An httpx transport that pays for every Keepa request from this bucket, in ``lane``.

        With ``max_rps`` the request cap is reserved with the tokens in one step,
        and such a combined reservation has no lanes yet: every job then waits
        first come, first served.
        """
        return RateLimitedTransport(
            inner if inner is not None else httpx.HTTPTransport(),
            self.bucket,
            cost=0,  # /token is free; everything else is named by keepa_operation
            operation=keepa_operation,
            max_retries=5,
            also=[] if self.requests is None else [(self.requests, 1)],
            lane=lane if self.requests is None else None,
        )

    def plan(self, op: str, pending: int, max_per_request: int = 100) -> BatchPlan:
        """The batch to fetch next; remembered for the progress display."""
        plan = self.planner.plan(op, pending, max_per_request)
        self.last_plan = plan
        return plan


def format_duration(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``3 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"


def describe_plan(plan: BatchPlan) -> str:
    """One short line for a batch plan (the planner's own explanation is longer)."""
    return (
        f"{plan.size} × {plan.op} of {plan.pending} pending, ≈{plan.per_unit:.1f} each = {plan.estimated_cost:.0f} "
        f"tokens (budget {plan.budget:.0f}), starts in {format_duration(plan.expected_wait)}"
    )
