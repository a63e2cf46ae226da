"""``deals-app replay-incident``: the old configuration next to tokenbucket's, in virtual time.

The incident: a deal collector shared a Keepa plan (20 tokens a minute) with a
price watcher that polls one product with offers every 30 seconds and calls
whenever Keepa accepts (balance above zero). The old collector

* checked ``has_enough_tokens(20)`` before each pass and gave up otherwise,
* fetched histories in fixed batches of 50 ASINs (≈ 600 tokens, unplanned),
* gave up a pass at the first 429, and
* guarded the backfill with a lock key without a TTL, whose holder crashed.

The replay runs the same world twice with `tokenbucket.testing.ManualClock`
driving the simulator's clock (`KeepaSimulator`, no HTTP): once with the old
code, once with the library (blocking first-come first-served acquire, the
batch planner, settle and sync, a lease with a TTL). Hours take milliseconds.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from tokenbucket import (
    BatchPlanner,
    CostModel,
    Lease,
    LeaseLock,
    MemoryBackend,
    NotAcquired,
    Rate,
    Reservation,
    TokenBucket,
)
from tokenbucket.testing import ManualClock

from .quota import PRIORS, KeepaQuota, keepa_policy
from .simulator import DEAL_PAGE_SIZE, KeepaSimulator, SimConfig

__all__ = ["IncidentResult", "replay", "replay_lanes", "report"]

REFILL = 20  # tokens a minute: the plan of the incident
OLD_BATCH = 50
OLD_GATE = 20
CRASH_AT = 3600.0  # the backfill holder dies one hour in
LEASE_TTL = 30.0
UPDATE_EVERY = 300.0
BACKFILL_EVERY = 600.0
WATCH_EVERY = 30.0

Job = Generator[float, None, None]
"""A job is a generator that yields how many virtual seconds to sleep."""
Paid = Callable[[str, str, int], Generator[float, None, tuple[int, dict[str, Any]]]]


@dataclass(slots=True)
class IncidentResult:
    """What one configuration achieved over the replay.

    Attributes:
        name: ``"old"`` or ``"tokenbucket"``.
        hours: Hours replayed.
        per_hour: Deals whose history was collected, per hour.
        backfilled: Deals whose full history the backfill collected.
        peak_debt: How far below zero the upstream's balance went (tokens).
        longest_stall: The longest time (s) deals waited with no history fetched.
        backfill_stalled: Time (s) the backfill could not run because of the lock.
        refused: 429 answers from the upstream.
        watch_calls: Calls the price watcher got through.
        update_waits: How long each of the recent-deals update's calls waited for its tokens (s):
            the update's latency while the backfill and the watcher run (tokenbucket's runs only).
    """

    name: str
    hours: int
    per_hour: list[int] = field(default_factory=list)
    backfilled: int = 0
    peak_debt: float = 0.0
    longest_stall: float = 0.0
    backfill_stalled: float = 0.0
    refused: int = 0
    watch_calls: int = 0
    update_waits: list[float] = field(default_factory=list)

    @property
    def update_longest_wait(self) -> float:
        """The longest wait of an update call (s); 0 when none was measured."""
        return max(self.update_waits, default=0.0)

    @property
    def update_mean_wait(self) -> float:
        """The mean wait of an update call (s); 0 when none was measured."""
        return sum(self.update_waits) / len(self.update_waits) if self.update_waits else 0.0

    @property
    def collected(self) -> int:
        """Deals with history at the end."""
        return sum(self.per_hour)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "hours": self.hours,
            "per_hour": self.per_hour,
            "collected": self.collected,
            "backfilled": self.backfilled,
            "peak_debt": self.peak_debt,
            "longest_stall_seconds": self.longest_stall,
            "backfill_stalled_seconds": self.backfill_stalled,
            "refused_429": self.refused,
            "watch_calls": self.watch_calls,
            "update_longest_wait_seconds": self.update_longest_wait,
            "update_mean_wait_seconds": self.update_mean_wait,
        }


class _World:
    """The upstream, the clock, the event queue and the bookkeeping shared by both configurations."""

    def __init__(self, name: str, hours: int, seed: int) -> None:
        self.clock = ManualClock()
        self.sim = KeepaSimulator(SimConfig(api_key="k", refill_rate=REFILL, seed=seed), clock=self.clock.now)
        self.end = hours * 3600.0
        self.result = IncidentResult(name, hours, [0] * hours)
        self.known: list[str] = []  # deals found, in order
        self.seen: set[str] = set()
        self.fetched: set[str] = set()
        self.backfill_position = 0
        self.last_progress = 0.0
        self.crashed_at: float | None = None
        self.ghosts: list[object] = []  # what crashed holders left behind (a dead process's lease stays stored)
        self.bucket: TokenBucket | None = None  # tokenbucket's configuration: the shared bucket
        self.recovered = False
        self._queue: list[tuple[float, int, Job]] = []
        self._order = itertools.count()

    # --- the upstream ---------------------------------------------------------------------------

    def call(self, target: str) -> tuple[int, dict[str, Any]]:
        response = self.sim.handle("GET", target)
        if response.status == 429:
            self.result.refused += 1
        self.result.peak_debt = max(self.result.peak_debt, -min(0.0, self.sim.stats()["min_balance"]))
        return response.status, response.body

    def deals_target(self, page: int) -> str:
        return f"/deal?key=k&selection={json.dumps({'page': page, 'dateRange': 0})}"

    def product_target(self, asins: list[str], *, offers: bool) -> str:
        extra = "&offers=20&stock=1" if offers else "&days=1095"
        return f"/product?key=k&asin={','.join(asins)}{extra}"

    def add_deals(self, body: dict[str, Any]) -> int:
        dr = body["deals"]["dr"]
        for deal in dr:
            if deal["asin"] not in self.seen:
                self.seen.add(deal["asin"])
                self.known.append(deal["asin"])
        return len(dr)

    def pending(self) -> list[str]:
        return [a for a in self.known if a not in self.fetched]

    def record_fetch(self, asins: list[str]) -> None:
        now = self.clock.now()
        self.note_stall(now)
        hour = min(int(now // 3600), self.result.hours - 1)
        for asin in asins:
            if asin not in self.fetched:
                self.fetched.add(asin)
                self.result.per_hour[hour] += 1
        self.last_progress = now

    def note_stall(self, now: float) -> None:
        self.result.longest_stall = max(self.result.longest_stall, now - self.last_progress)

    def crashed(self) -> None:
        """The backfill's lock holder died now."""
        self.crashed_at = self.clock.now()

    def lock_taken(self) -> None:
        """A backfill holds the lock now: if the holder had crashed, the backfill has recovered."""
        if self.crashed_at is not None and not self.recovered:
            self.recovered = True
            self.result.backfill_stalled = self.clock.now() - self.crashed_at

    # --- the event loop -------------------------------------------------------------------------

    def spawn(self, job: Job, at: float = 0.0) -> None:
        heapq.heappush(self._queue, (at, next(self._order), job))

    def run(self) -> IncidentResult:
        while self._queue:
            at, _, job = heapq.heappop(self._queue)
            if at > self.end:
                break
            self.clock.set(max(at, self.clock.now()))
            try:
                delay = next(job)
            except StopIteration:
                continue
            self.spawn(job, self.clock.now() + max(0.0, delay))
        self.clock.set(max(self.clock.now(), self.end))
        if self.pending():
            self.note_stall(self.end)
        if self.crashed_at is not None and not self.recovered:
            self.result.backfill_stalled = self.end - self.crashed_at
        return self.result


# --- the old configuration --------------------------------------------------------------------


def _old(world: _World) -> None:
    lock_key: dict[str, str] = {}  # a lock with no TTL: whoever sets it holds it until it deletes it
    tokens_left = [float(world.sim.tokens())]

    def remember(body: dict[str, Any]) -> None:
        tokens_left[0] = body["tokensLeft"]

    def update() -> Job:
        while True:
            if tokens_left[0] >= OLD_GATE:  # has_enough_tokens(20), from the last answer
                yield from _old_pass(world, remember)
            else:
                remember(world.call("/token?key=k")[1])  # the status poll Keepa asks clients not to make
            yield UPDATE_EVERY

    def backfill(crashes: bool) -> Job:
        while True:
            if "backfill_deals" not in lock_key:
                lock_key["backfill_deals"] = "worker-1"
                world.lock_taken()
                for _ in range(3):
                    batch = world.known[world.backfill_position : world.backfill_position + OLD_BATCH]
                    if not batch:
                        break
                    status, body = world.call(world.product_target(batch, offers=False))
                    remember(body)
                    if status != 200:
                        break
                    world.backfill_position += len(batch)
                    world.result.backfilled += len(batch)
                if crashes and world.clock.now() >= CRASH_AT:
                    world.crashed()
                    return  # the process dies holding the lock: the key stays for ever
                del lock_key["backfill_deals"]
            yield BACKFILL_EVERY

    world.spawn(update())
    world.spawn(backfill(crashes=True), at=60.0)  # worker 1: dies holding the lock at CRASH_AT
    world.spawn(backfill(crashes=False), at=90.0)  # worker 2: tries every 10 minutes
    world.spawn(_watch(world, None), at=15.0)


def _old_pass(world: _World, remember: Callable[[dict[str, Any]], None]) -> Job:
    page = 0
    while True:
        status, body = world.call(world.deals_target(page))
        remember(body)
        if status != 200:
            return
        if world.add_deals(body) < DEAL_PAGE_SIZE:
            break
        page += 1
        yield 1.0
    while world.pending():
        batch = world.pending()[:OLD_BATCH]
        status, body = world.call(world.product_target(batch, offers=True))
        remember(body)
        if status != 200:
            return  # a 429: give up until the next run
        world.record_fetch(batch)
        yield 2.0


def _watch(world: _World, paid: Paid | None) -> Job:
    """The other team's price watcher: one product with offers every 30 s."""
    i = 0
    while True:
        target = world.product_target([f"B{900000000 + i % 50:09d}"], offers=True)
        i += 1
        if paid is not None:
            status, _ = yield from paid(target, "product", 1)
        else:
            status, _ = world.call(target)  # Keepa runs it whenever the balance is positive
        if status == 200:
            world.result.watch_calls += 1
        yield WATCH_EVERY


# --- tokenbucket's configuration ----------------------------------------------------------------


def _new(world: _World, lanes: bool = False) -> None:
    """tokenbucket's configuration; with ``lanes``, the update calls in the urgent lane, the backfill and the
    price watcher in the bulk one (the deal collector's lanes, `deals_app.quota.KeepaQuota`)."""
    policy = keepa_policy(REFILL)
    costs = CostModel(prior=PRIORS)
    bucket = TokenBucket(
        "keepa",
        rate=Rate(REFILL, per=60),
        capacity=policy.capacity,
        overdraft=policy.max_debt,
        min_start=policy.min_start,
        backend=MemoryBackend(clock=world.clock),
        clock=world.clock,
        cost_model=costs,
        lanes={"urgent": 0.0, "bulk": KeepaQuota.bulk_hold(policy)} if lanes else None,
    )
    urgent, bulk = ("urgent", "bulk") if lanes else (None, None)
    planner = BatchPlanner(bucket, costs, max_cost=policy.max_debt + policy.min_start)
    world.bucket = bucket
    leases = MemoryBackend(clock=world.clock)

    in_flight: dict[int, Reservation] = {}  # the transport's ledger: charged here, not yet seen upstream
    tickets = itertools.count()

    def paid(
        target: str, op: str, units: int, lane: str | None = None, waits: list[float] | None = None
    ) -> Generator[float, None, tuple[int, dict[str, Any]]]:
        """What `RateLimitedTransport` does for each request, driven in virtual time."""
        while True:
            reservation = bucket.reserve(op=op, units=units, lane=lane)
            if waits is not None:
                waits.append(reservation.delay)
            ticket = next(tickets)
            in_flight[ticket] = reservation
            yield reservation.delay  # blocking, first-come first-served: the wait happens in virtual time
            grant = reservation.wait()
            status, body = world.call(target)
            del in_flight[ticket]
            grant.settle(body["tokensConsumed"], observe=status == 200)
            # Requests that have started here but not reached the upstream yet are not in its balance
            # (those still waiting are the bucket's own "promised" tokens).
            now = world.clock.now()
            unseen = sum(r.cost for r in in_flight.values() if r.start <= now)
            bucket.sync(body["tokensLeft"] - unseen)
            if status != 429:
                return status, body

    def update() -> Job:
        while True:
            page = 0
            while True:
                status, body = yield from paid(world.deals_target(page), "deal", 1, urgent, world.result.update_waits)
                if world.add_deals(body) < DEAL_PAGE_SIZE:
                    break
                page += 1
            while world.pending():
                plan = planner.plan("product", len(world.pending()))
                batch = world.pending()[: plan.size]
                target = world.product_target(batch, offers=True)
                status, body = yield from paid(target, "product", len(batch), urgent, world.result.update_waits)
                if status == 200:
                    world.record_fetch(batch)
            yield UPDATE_EVERY

    def backfill(crashes: bool) -> Job:
        lock = LeaseLock("backfill_deals", ttl=LEASE_TTL, backend=leases, clock=world.clock, heartbeat=False)
        while True:
            try:
                lease = lock.acquire(blocking=False)
            except NotAcquired:
                yield BACKFILL_EVERY
                continue
            world.lock_taken()
            alive = [True]
            world.spawn(heartbeat(lease, alive), world.clock.now() + LEASE_TTL / 3)
            while True:
                remaining = len(world.known) - world.backfill_position
                if remaining <= 0:
                    break
                plan = planner.plan("product_history", remaining)
                batch = world.known[world.backfill_position : world.backfill_position + plan.size]
                target = world.product_target(batch, offers=False)
                status, _ = yield from paid(target, "product_history", len(batch), bulk)
                if status == 200:
                    world.backfill_position += len(batch)
                    world.result.backfilled += len(batch)
                lease.beat()
                if crashes and world.clock.now() >= CRASH_AT:
                    alive[0] = False
                    world.ghosts.append(lease)
                    world.crashed()
                    return  # dies holding the lease: no more heartbeats, it expires LEASE_TTL seconds later
            alive[0] = False
            lease.release()
            yield BACKFILL_EVERY

    def heartbeat(lease: Lease, alive: list[bool]) -> Job:
        """The lease's heartbeat thread, in virtual time: renews every ttl/3 while its process lives."""
        while alive[0] and lease.renew():
            yield LEASE_TTL / 3

    world.spawn(update())
    world.spawn(backfill(crashes=True), at=60.0)  # worker 1: dies holding the lock at CRASH_AT
    world.spawn(backfill(crashes=False), at=90.0)  # worker 2: tries every 10 minutes
    world.spawn(_watch(world, functools.partial(paid, lane=bulk)), at=15.0)


def replay(hours: int = 6, seed: int = 1) -> tuple[IncidentResult, IncidentResult]:
    """Replay ``hours`` of the incident with both configurations; returns ``(old, new)``."""
    if hours < 2:
        raise ValueError("replay at least 2 hours: the crash happens one hour in")
    old = _World("old", hours, seed)
    _old(old)
    new = _World("tokenbucket", hours, seed)
    _new(new)
    return old.run(), new.run()


def replay_lanes(hours: int = 6, seed: int = 1) -> IncidentResult:
    """`replay`'s tokenbucket configuration with priority lanes: the update urgent, the backfill and watcher bulk."""
    if hours < 2:
        raise ValueError("replay at least 2 hours: the crash happens one hour in")
    laned = _World("tokenbucket with lanes", hours, seed)
    _new(laned, lanes=True)
    return laned.run()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def report(old: IncidentResult, new: IncidentResult, laned: IncidentResult | None = None) -> str:
    """The side-by-side table ``replay-incident`` prints (with ``laned``, a column for priority lanes)."""
    runs = [old, new] if laned is None else [old, new, laned]

    def row(name: str, cell: Callable[[IncidentResult], str]) -> tuple[str, ...]:
        return (name, *(cell(r) for r in runs))

    rows: list[tuple[str, ...]] = [
        row(f"hour {h + 1}: deals collected", lambda r, h=h: str(r.per_hour[h])) for h in range(old.hours)  # type: ignore[misc]
    ]
    rows += [
        row("deals collected in all", lambda r: str(r.collected)),
        row("deals backfilled", lambda r: str(r.backfilled)),
        row("peak debt (tokens)", lambda r: f"{r.peak_debt:.0f}"),
        row("debt bound", lambda r: "none" if r is old else f"{keepa_policy(REFILL).max_debt:.0f} + 1 min of refill"),
        row("longest stall", lambda r: _duration(r.longest_stall)),
        row("backfill dead after its holder crashed", lambda r: _duration(r.backfill_stalled)),
        row("429 answers", lambda r: str(r.refused)),
        row("price-watch calls", lambda r: str(r.watch_calls)),
        row("update call wait, median", lambda r: "-" if r is old else _duration(_median(r.update_waits))),
        row("update call wait, longest", lambda r: "-" if r is old else _duration(r.update_longest_wait)),
    ]
    width = max(len(r[0]) for r in rows)
    head = (
        f"Replay: {old.hours} h of virtual time, Keepa plan {REFILL} tokens/min (bucket {60 * REFILL}), "
        f"a price watcher every {WATCH_EVERY:.0f} s, the backfill holder crashing at {CRASH_AT / 3600:.0f} h"
    )
    titles = ["old configuration", "tokenbucket", "with lanes"][: len(runs)]
    sizes = [22, 22, 22][: len(runs)]
    lines = [head, "", f"{'':<{width}}" + "".join(f"  {t:>{n}}" for t, n in zip(titles, sizes, strict=True))]
    lines += [f"{r[0]:<{width}}" + "".join(f"  {c:>{n}}" for c, n in zip(r[1:], sizes, strict=True)) for r in rows]
    lines += [
        "",
        f"old: gate has_enough_tokens({OLD_GATE}), batches of {OLD_BATCH}, give up on 429, lock without TTL",
        f"tokenbucket: blocking FCFS acquire, BatchPlanner, settle + sync, LeaseLock(ttl={LEASE_TTL:g})",
        "The plan is oversubscribed (the watcher alone asks 24 tokens/min of 20): first-come first-served gives",
        "each job its turn, where the old code let whoever called first after a refill take everything.",
        "longest stall: the longest stretch of virtual time in which no deal's history was fetched",
        "(between two fetches, or from the last fetch to the end while deals still waited).",
    ]
    if laned is not None:
        lines += [
            "with lanes: the update calls in the urgent lane, the backfill and the watcher in the bulk lane,",
            f"which holds back {KeepaQuota.bulk_hold(keepa_policy(REFILL)):.0f} tokens: the update passes their "
            "waiting calls, collects more",
            "and waits less in the median. Its longest wait does not shrink: its own big batches put the plan in",
            "debt, and lanes pass waiting work, not debt already made.",
        ]
    if math.isfinite(new.longest_stall) and new.longest_stall < old.longest_stall:
        lines.append(
            f"=> the old configuration stalled for {_duration(old.longest_stall)}; "
            f"tokenbucket's never waited more than {_duration(new.longest_stall)}"
        )
    return "\n".join(lines)
