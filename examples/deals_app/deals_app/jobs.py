"""The collector jobs, each built on tokenbucket and all sharing one Keepa quota.

* `Collector.update_recent_deals`: page through ``/deal``, then fetch the recent
  price history of new ASINs in batches the planner chooses.
* `Collector.backfill`: under the "backfill_deals" lease, fetch the full
  three-year history of every known deal, oldest first, checkpointing (with the
  lease's fence) in the same transaction as the data, so a crash resumes where
  it stopped and a stale holder can never move the checkpoint.
* `Collector.check_restrictions`: per-ASIN SP-API restriction checks on their
  own bucket (5 a second, burst 10), at most ``sp_concurrency`` in flight under
  a `tokenbucket.ConcurrencyLimit` shared by every collector on the backend.

Every Keepa call goes through tokenbucket's rate-limited httpx transport on one
bucket (acquire the estimate, call, settle, sync; see `deals_app.quota`), so the
jobs compete first-come first-served for one quota.
"""

from __future__ import annotations

import random
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tokenbucket import ConcurrencyLimit, LeaseLost

from .client import AppError, KeepaClient, KeepaReply, KeyRefused, RestrictionClient, SpQuotaExceeded
from .leases import LeaseHeld, backfill_lease
from .quota import KeepaQuota, ScaledClock, Stopped, describe_plan
from .simulator import DEAL_PAGE_SIZE
from .store import Store

__all__ = ["JOBS", "Collector", "JobSettings"]

JOBS = ("update", "backfill", "restrictions")
"""Job names as the CLI takes them (``--jobs update,backfill``)."""


@dataclass(slots=True)
class JobSettings:
    """Knobs of the jobs.

    Attributes:
        recent_days: History fetched for a new deal.
        full_days: History fetched by the backfill (three years).
        offers: The ``offers`` parameter of recent fetches (20: up to two offer pages, with stock).
        full_offers: The ``offers`` parameter of backfill fetches; None fetches history only (1 token an ASIN).
        max_per_request: Keepa's limit of ASINs per ``/product`` request.
        poll_seconds: Upstream seconds between passes of a job that has nothing to do.
        lease_ttl: The backfill lease's TTL in wall seconds.
        lease_wait: Longest wall-clock wait for the backfill lease each pass.
        retry_after: Upstream seconds before a failed job's first retry; each failure in a row doubles it
            (with jitter), up to ``poll_seconds``.
        sp_concurrency: SP-API restriction checks in flight at once, across every collector sharing the
            backend (a `tokenbucket.ConcurrencyLimit`); the job runs twice as many workers, so the limit binds.
    """

    recent_days: int = 90
    full_days: int = 1095
    offers: int = 20
    full_offers: int | None = None
    max_per_request: int = 100
    poll_seconds: float = 300.0
    lease_ttl: float = 30.0
    lease_wait: float = 1.0
    retry_after: float = 10.0
    sp_concurrency: int = 2


@dataclass(slots=True)
class JobStats:
    """What the jobs did; read by the progress display and the summary."""

    deal_pages: int = 0
    new_deals: int = 0
    recent_batches: int = 0
    full_batches: int = 0
    restriction_checks: int = 0
    sp_retries: int = 0
    lease_skips: int = 0
    activity: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # the first few failures, "job: message"
    failures: dict[str, int] = field(default_factory=dict)  # failures per job
    last_error: dict[str, str] = field(default_factory=dict)  # the latest failure per job


class Collector:
    """Runs the jobs in threads against one quota and one store.

    Args:
        keepa: The Keepa client.
        quota: The shared Keepa quota.
        store: The database.
        clock: The collector's clock (its ``stop`` event stops every job).
        restrictions: The SP-API client (paying from its own bucket through its transport),
            or None to skip restriction checks.
        backfill_keepa: The Keepa client of the backfill (its transport waits in the quota's
            ``"bulk"`` lane, ``keepa``'s in ``"urgent"``); default ``keepa``.
        lease_backend: Where the backfill lease lives.
        settings: See `JobSettings`.
    """

    def __init__(
        self,
        keepa: KeepaClient,
        quota: KeepaQuota,
        store: Store,
        *,
        clock: ScaledClock,
        restrictions: RestrictionClient | None = None,
        backfill_keepa: KeepaClient | None = None,
        lease_backend: Any = None,
        settings: JobSettings | None = None,
        debug: bool = False,
    ) -> None:
        self.keepa = keepa
        self.backfill_keepa = backfill_keepa if backfill_keepa is not None else keepa
        self.quota = quota
        self.store = store
        self.clock = clock
        self.stop = clock.stop
        self.restrictions = restrictions
        self.lease_backend = lease_backend
        self.settings = settings or JobSettings()
        self.stats = JobStats()
        self.debug = debug
        # Restriction checks in flight, across every collector on the backend; each slot is a lease, so a
        # crashed collector's slots come back within the TTL.
        self.sp_slots = ConcurrencyLimit(
            "sp-restrictions",
            limit=self.settings.sp_concurrency,
            ttl=self.settings.lease_ttl,
            backend=lease_backend,
            task="restrictions",
        )
        self._threads: list[threading.Thread] = []

    @property
    def keepa_calls(self) -> int:
        """Keepa calls made by every job."""
        clients = {id(c): c for c in (self.keepa, self.backfill_keepa)}
        return sum(c.calls for c in clients.values())

    @property
    def last_keepa_reply(self) -> KeepaReply | None:
        """The newest Keepa reply any job saw (by Keepa's own timestamp)."""
        replies = [r for r in (self.keepa.last_reply, self.backfill_keepa.last_reply) if r is not None]
        return max(replies, key=lambda r: r.timestamp, default=None)

    # --- the jobs: one pass each ----------------------------------------------------------------

    def update_recent_deals(self) -> int:
        """One pass: every ``/deal`` page, then recent histories of every new ASIN. Returns products fetched.

        While a backlog of histories is being fetched, the deal pages are read
        again every ``poll_seconds`` (upstream time), so new deals are found
        without waiting for the backlog to drain.
        """
        self._page_deals()
        paged = self.clock.now()
        fetched = 0
        s = self.settings
        while not self.stop.is_set():
            if self.clock.now() - paged >= s.poll_seconds:
                self._page_deals()
                paged = self.clock.now()
            pending = self.store.count_pending_recent()
            if pending == 0:
                break
            plan = self.quota.plan("product", pending, s.max_per_request)
            asins = self.store.pending_recent(plan.size)
            self.stats.activity["update"] = f"recent history: {describe_plan(plan)}"
            reply, products = self.keepa.products(asins, days=s.recent_days, offers=s.offers)
            self.store.save_products(products, full=False, cost=reply.tokens_consumed)
            self.stats.recent_batches += 1
            fetched += len(products)
        if not self.stop.is_set():
            self.stats.activity["update"] = "idle: waiting for new deals"
        return fetched

    def _page_deals(self) -> None:
        """Read every ``/deal`` page (5 tokens each) and store the deals."""
        page = 0
        while not self.stop.is_set():
            self.stats.activity["update"] = f"deal page {page}"
            _, deals = self.keepa.deals(page)
            self.stats.deal_pages += 1
            self.stats.new_deals += self.store.upsert_deals(deals)
            if len(deals) < DEAL_PAGE_SIZE:
                break
            page += 1

    def backfill(self) -> int:
        """One pass under the "backfill_deals" lease: full histories after the checkpoint. Returns products."""
        s = self.settings
        fetched = 0
        self.stats.activity["backfill"] = "waiting for the backfill_deals lease"
        try:
            with backfill_lease(self.lease_backend, ttl=s.lease_ttl, wait=s.lease_wait) as lease:
                while not self.stop.is_set():
                    position, _ = self.store.checkpoint("backfill")
                    pending = self.store.count_deals_after(position)
                    if pending == 0:
                        break
                    op = "product" if s.full_offers else "product_history"
                    plan = self.quota.plan(op, pending, s.max_per_request)
                    rows = self.store.deals_after(position, plan.size)
                    asins = [asin for _, asin in rows]
                    self.stats.activity["backfill"] = f"full history (fence {lease.fence}): {describe_plan(plan)}"
                    reply, products = self.backfill_keepa.products(asins, days=s.full_days, offers=s.full_offers)
                    checkpoint = ("backfill", rows[-1][0], lease.fence)
                    self.store.save_products(products, full=True, cost=reply.tokens_consumed, checkpoint=checkpoint)
                    lease.beat()
                    self.stats.full_batches += 1
                    fetched += len(products)
        except LeaseHeld:
            self.stats.lease_skips += 1
            self.stats.activity["backfill"] = "another backfill holds the lease; will retry"
            return 0
        except LeaseLost as exc:
            self.stats.activity["backfill"] = f"lost the lease to a newer holder ({exc}); will retry"
            return fetched
        if not self.stop.is_set():
            self.stats.activity["backfill"] = "idle: every known deal is backfilled"
        return fetched

    def check_restrictions(self) -> int:
        """One pass: an SP-API restriction check for every deal not yet checked. Returns checks made."""
        if self.restrictions is None:
            self.stats.activity["restrictions"] = "skipped: no SP-API endpoint (--sp-base-url)"
            return 0
        done = 0
        while not self.stop.is_set():
            asins = self.store.unchecked(20)
            if not asins:
                break
            results = []
            workers = 2 * self.settings.sp_concurrency
            with ThreadPoolExecutor(workers, thread_name_prefix="restrictions") as pool:
                checks = [pool.submit(self._check_one, asin) for asin in asins]
                for check in checks:
                    try:
                        found = check.result()
                    except SpQuotaExceeded:
                        # The transport already waited and retried through the bucket; back off once more.
                        self.stats.sp_retries += 1
                        continue
                    if found is not None:
                        results.append(found)
            if len(results) < len(asins) and not self.stop.is_set():
                self.clock.sleep(1.0)
            self.store.save_restrictions(results)
            self.stats.restriction_checks += len(results)
            done += len(results)
        if not self.stop.is_set():
            self.stats.activity["restrictions"] = "idle: every deal checked"
        return done

    def _check_one(self, asin: str) -> tuple[str, list[dict[str, Any]]] | None:
        """One restriction check, holding one of the limit's slots; None once the collector stops."""
        assert self.restrictions is not None
        if self.stop.is_set():
            return None
        with self.sp_slots.slot():
            self.stats.activity["restrictions"] = f"checking {asin}"
            return asin, self.restrictions.check(asin)

    # --- running --------------------------------------------------------------------------------

    def _loop(self, name: str, job: Callable[[], int], once: bool) -> None:
        """Run ``job`` until stopped. A failure is reported and retried with backoff; the other jobs go on.

        With ``once``, a failed job is reported and not retried. A refused API key stops every job:
        no retry can help.
        """
        s = self.settings
        in_a_row = 0
        try:
            while not self.stop.is_set():
                try:
                    job()
                except (Stopped, KeyRefused):
                    raise
                except Exception as exc:
                    in_a_row += 1
                    self._failed(name, exc)
                    if once:
                        return
                    delay = min(s.poll_seconds, s.retry_after * 2.0 ** min(in_a_row - 1, 40)) * random.uniform(0.5, 1.0)
                    self.stats.activity[name] = f"failed ({self.stats.last_error[name]}); retrying in {delay:.0f} s"
                    self.clock.sleep(delay)
                    continue
                in_a_row = 0
                if once:
                    return
                self.clock.sleep(s.poll_seconds)
        except Stopped:
            return
        except KeyRefused as exc:
            self._failed(name, exc)
            self.stop.set()

    def _failed(self, name: str, exc: Exception) -> None:
        if isinstance(exc, AppError):
            message = str(exc)
        else:
            message = traceback.format_exc() if self.debug else f"unexpected error: {type(exc).__name__}: {exc}"
        self.stats.failures[name] = self.stats.failures.get(name, 0) + 1
        self.stats.last_error[name] = message
        if len(self.stats.errors) < 20:
            self.stats.errors.append(f"{name}: {message}")

    def start(self, jobs: list[str], *, once: bool = False) -> None:
        """Start the named jobs (see `JOBS`): each in its own thread, or with ``once`` one pass of each in order.

        One pass each, in order (update first), means a ``--once`` run backfills
        and checks every deal the update found.
        """
        table = {"update": self.update_recent_deals, "backfill": self.backfill, "restrictions": self.check_restrictions}
        if once:
            ordered = [name for name in JOBS if name in jobs]
            t = threading.Thread(target=self._run_once, args=([(n, table[n]) for n in ordered],), name="jobs-once")
            t.daemon = True
            t.start()
            self._threads.append(t)
            return
        for name in jobs:
            t = threading.Thread(target=self._loop, args=(name, table[name], False), name=f"job-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _run_once(self, jobs: list[tuple[str, Callable[[], int]]]) -> None:
        for name, job in jobs:
            if self.stop.is_set():
                return
            self._loop(name, job, True)

    def alive(self) -> bool:
        """Whether any job thread is still running."""
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the job threads."""
        for t in self._threads:
            t.join(timeout)

    def close(self) -> None:
        """Close the HTTP clients and this thread's database connection."""
        self.keepa.close()
        if self.backfill_keepa is not self.keepa:
            self.backfill_keepa.close()
        if self.restrictions is not None:
            self.restrictions.close()
        self.store.close()
