"""`PrometheusMetrics`: bucket and lease metrics for Prometheus (``pip install tokenbucket[metrics]``).

It is a listener (counters and the wait histogram follow the events) and a
collector (the balance, debt and promised tokens are read with a snapshot at
scrape time, so they are current even when nothing happens):

    from prometheus_client import start_http_server
    metrics = PrometheusMetrics()
    bucket = TokenBucket("keepa", "5/minute", capacity=300, overdraft=math.inf)
    metrics.track(bucket)                           # gauges + events of this bucket
    lock = LeaseLock("backfill", ttl=30, backend=..., listeners=[metrics])
    start_http_server(9100)

Metric names (with the default namespace ``tokenbucket``; label ``bucket`` is
the bucket's name):

* gauges read at scrape: ``tokenbucket_tokens``, ``tokenbucket_debt_tokens``,
  ``tokenbucket_promised_tokens``, ``tokenbucket_capacity_tokens``,
  ``tokenbucket_time_to_positive_seconds`` (for a bucket of several
  bandwidths, those of the one that binds, as `TokenBucket.snapshot` reports);
* counters: ``tokenbucket_grants_total``, ``tokenbucket_granted_tokens_total``,
  ``tokenbucket_timeouts_total`` (``acquire``/``reserve`` refused up front),
  ``tokenbucket_try_acquire_misses_total``, ``tokenbucket_cancellations_total``,
  ``tokenbucket_settles_total``, ``tokenbucket_settle_extra_tokens_total`` and
  ``tokenbucket_settle_refunded_tokens_total`` (what settling charged or gave back),
  ``tokenbucket_syncs_total``, ``tokenbucket_throttled_syncs_total`` (syncs
  reported with HTTP status 429), ``tokenbucket_debt_entries_total``;
* ``tokenbucket_sync_drift_tokens``: the last sync's drift (reported − predicted);
* histogram ``tokenbucket_wait_seconds``: how long granted requests waited;
* leases (labels ``lease``, ``holder``): ``tokenbucket_lease_state`` (an enum:
  held, suspended, lost, released, broken), ``tokenbucket_lease_fence``,
  ``tokenbucket_lease_renewals_total``.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._events import (
    BucketEvent,
    Cancelled,
    DebtEntered,
    Event,
    Granted,
    LeaseEvent,
    Settled,
    Synced,
    TimedOut,
)
from ._exceptions import ConfigurationError
from ._model import Snapshot

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["DEFAULT_WAIT_BUCKETS", "PrometheusMetrics"]

_log = logging.getLogger("tokenbucket")

DEFAULT_WAIT_BUCKETS: tuple[float, ...] = (0.0, 0.01, 0.1, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))
"""Histogram bounds for waits, in seconds: from immediate to the hours a Keepa debt can take."""

_LEASE_STATES = ("held", "suspended", "lost", "released", "broken")
_STATE_OF_KIND = {
    "acquired": "held",
    "renewed": "held",
    "suspended": "suspended",
    "lost": "lost",
    "released": "released",
    "broken": "broken",
}


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - the extra is installed for the tests
        raise ImportError("PrometheusMetrics needs prometheus-client: pip install 'tokenbucket[metrics]'") from exc
    return prometheus_client


class PrometheusMetrics:
    """Prometheus metrics for buckets and leases; a `tokenbucket.Listener` and a collector.

    Guarantees: a scrape never changes a bucket (it reads `snapshot`); a bucket
    whose store fails at scrape time is left out of that scrape (and logged), the
    others are still reported; receiving an event never raises and never blocks.

    Args:
        registry: Where to register; default prometheus-client's global ``REGISTRY``.
            Use a private ``CollectorRegistry()`` for tests or several exporters.
        namespace: The prefix of every metric name.
        wait_buckets: Bounds of the wait histogram, in seconds.

    Raises:
        ImportError: prometheus-client is not installed.
        ValueError: the names are already registered in ``registry`` (one
            `PrometheusMetrics` per registry and namespace).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "tokenbucket",
        wait_buckets: Sequence[float] = DEFAULT_WAIT_BUCKETS,
    ) -> None:
        pc = _prometheus()
        reg = pc.REGISTRY if registry is None else registry
        self.registry: CollectorRegistry = reg
        self.namespace = namespace
        self._lock = threading.Lock()
        self._tracked: dict[str, Any] = {}
        ns = namespace

        def counter(name: str, doc: str, labels: Sequence[str] = ("bucket",)) -> Any:
            return pc.Counter(f"{ns}_{name}", doc, list(labels), registry=reg)

        self._grants = counter("grants", "Requests granted (started).")
        self._granted_tokens = counter("granted_tokens", "Tokens charged to granted requests (the estimates).")
        self._timeouts = counter("timeouts", "Requests refused up front because the wait would exceed the timeout.")
        self._misses = counter("try_acquire_misses", "try_acquire calls that found too few tokens.")
        self._cancels = counter("cancellations", "Reservations cancelled before they started.")
        self._settles = counter("settles", "Grants settled with the real cost.")
        self._settle_extra = counter("settle_extra_tokens", "Tokens charged by settling above the estimate.")
        self._settle_refund = counter("settle_refunded_tokens", "Tokens given back by settling below the estimate.")
        self._syncs = counter("syncs", "Balances adopted from the upstream.")
        self._throttled = counter("throttled_syncs", "Syncs reported with HTTP status 429 (the upstream refused).")
        self._debts = counter("debt_entries", "Times the upstream's balance went below zero.")
        self._drift = pc.Gauge(f"{ns}_sync_drift_tokens", "The last sync's drift: reported minus predicted.",
                               ["bucket"], registry=reg)  # fmt: skip
        self._waits = pc.Histogram(
            f"{ns}_wait_seconds", "Seconds granted requests waited.", ["bucket"], buckets=list(wait_buckets),
            registry=reg,
        )  # fmt: skip
        self._lease_state = pc.Enum(
            f"{ns}_lease_state", "Each lease holder's state.", ["lease", "holder"], states=list(_LEASE_STATES),
            registry=reg,
        )  # fmt: skip
        self._lease_fence = pc.Gauge(f"{ns}_lease_fence", "The fencing token of each lease holding.",
                                     ["lease", "holder"], registry=reg)  # fmt: skip
        self._lease_renewals = counter("lease_renewals", "Lease renewals by the heartbeat.", ("lease", "holder"))
        reg.register(_SnapshotCollector(self))

    # -- buckets ----------------------------------------------------------------------------------
    def track(self, bucket: Any) -> None:
        """Report ``bucket``'s balance at every scrape and count its events.

        Adds this object as a listener of the bucket (once). Tracking a second
        bucket object with the same name replaces the first for the gauges.

        Raises:
            TypeError: ``bucket`` is not a `TokenBucket` or `AsyncTokenBucket`.
            ConfigurationError: an `AsyncTokenBucket` on an asyncio store (a scrape
                cannot await it): track a `TokenBucket` with a sync client of the
                same store and name for the gauges instead.
        """
        from ._bucket import AsyncTokenBucket, TokenBucket

        if not isinstance(bucket, (TokenBucket, AsyncTokenBucket)):
            raise TypeError(f"track() takes a TokenBucket or AsyncTokenBucket, not {type(bucket).__name__}")
        if isinstance(bucket, AsyncTokenBucket) and inspect.iscoroutinefunction(bucket.backend.snapshot):
            raise ConfigurationError(
                "a scrape cannot await an asyncio store: track a TokenBucket on a synchronous client of the same "
                f"store for the gauges of {bucket.name!r} (listeners=[metrics] on this one still counts its events)"
            )
        if self not in bucket.listeners:
            bucket.add_listener(self)
        with self._lock:
            tracked = dict(self._tracked)
            tracked[bucket.name] = bucket
            self._tracked = tracked

    def untrack(self, bucket: Any) -> None:
        """Stop reporting ``bucket``'s gauges and stop listening to it (its counters stay)."""
        with self._lock:
            name = bucket.name
            tracked = dict(self._tracked)
            if tracked.get(name) is bucket:
                del tracked[name]
            self._tracked = tracked
        if self in getattr(bucket, "listeners", ()):
            bucket.remove_listener(self)

    def _snapshots(self) -> Iterator[tuple[str, Snapshot]]:
        from ._bucket import _run

        for name, bucket in sorted(self._tracked.items()):
            try:
                # Driven with blocking calls: an AsyncTokenBucket is tracked only on a store that never blocks.
                snap = _run(bucket, bucket._snapshot_flow())
            except Exception:
                _log.warning("tokenbucket: cannot read bucket %r for metrics; left out of this scrape", name,
                             exc_info=True)  # fmt: skip
                continue
            yield name, snap

    # -- events -----------------------------------------------------------------------------------
    def __call__(self, event: Event, /) -> None:
        """Count one event (the `tokenbucket.Listener` interface)."""
        try:
            self._count(event)
        except Exception:  # never disturb the caller over metrics
            _log.exception("tokenbucket: metrics failed on %r", event)

    def _count(self, event: Event) -> None:
        if isinstance(event, LeaseEvent):
            labels = (event.lease, event.holder)
            self._lease_state.labels(*labels).state(_STATE_OF_KIND.get(event.kind, "held"))
            if event.fence:
                self._lease_fence.labels(*labels).set(event.fence)
            if event.kind == "renewed":
                self._lease_renewals.labels(*labels).inc()
            return
        if not isinstance(event, BucketEvent):
            return
        name = event.bucket
        if isinstance(event, Granted):
            self._grants.labels(name).inc()
            self._granted_tokens.labels(name).inc(event.cost)
            self._waits.labels(name).observe(event.waited)
        elif isinstance(event, TimedOut):
            (self._misses if event.timeout == 0 else self._timeouts).labels(name).inc()
        elif isinstance(event, Cancelled):
            self._cancels.labels(name).inc()
        elif isinstance(event, Settled):
            self._settles.labels(name).inc()
            if event.difference > 0:
                self._settle_extra.labels(name).inc(event.difference)
            elif event.difference < 0:
                self._settle_refund.labels(name).inc(-event.difference)
        elif isinstance(event, Synced):
            self._syncs.labels(name).inc()
            self._drift.labels(name).set(event.drift)
            if event.status == 429:
                self._throttled.labels(name).inc()
        elif isinstance(event, DebtEntered):
            self._debts.labels(name).inc()

    def __repr__(self) -> str:
        return f"PrometheusMetrics(namespace={self.namespace!r}, tracking={sorted(self._tracked)!r})"


class _SnapshotCollector:
    """Reads the tracked buckets' snapshots when Prometheus scrapes."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return list(self._families([]))

    def collect(self) -> list[Any]:
        return list(self._families(list(self._metrics._snapshots())))

    def _families(self, snaps: list[tuple[str, Snapshot]]) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        ns = self._metrics.namespace
        specs: list[tuple[str, str, Callable[[Snapshot], float]]] = [
            ("tokens", "The balance a new request sees (after every reservation).", lambda s: s.tokens),
            ("debt_tokens", "How far below zero the upstream's own balance is.", lambda s: s.debt),
            ("promised_tokens", "Tokens charged to reservations that have not started.", lambda s: s.promised),
            ("capacity_tokens", "The most tokens the bucket holds.", lambda s: s.capacity),
            ("time_to_positive_seconds", "Seconds until the balance is back to zero.", lambda s: s.time_to_positive),
        ]
        for suffix, doc, read in specs:
            family = GaugeMetricFamily(f"{ns}_{suffix}", doc, labels=["bucket"])
            for name, snap in snaps:
                family.add_metric([name], float(read(snap)))
            yield family
