"""tokenbucket: share a metered API quota among many jobs, threads and hosts.

A token bucket in memory or on Redis, with first-come first-served blocking
acquire (sync and asyncio), overdraft and debt that mirror upstreams like
Keepa, reservations, refunds, settling the real cost after a call, and syncing
with what the upstream reports.
"""

from __future__ import annotations

from ._bucket import AsyncGrant, AsyncReservation, AsyncTokenBucket, Grant, Reservation, TokenBucket
from ._cost import CostModel, CostStore, MemoryCostStore, RedisCostStore
from ._events import (
    BucketEvent,
    Cancelled,
    DebtCleared,
    DebtEntered,
    Event,
    Granted,
    LeaseEvent,
    Listener,
    LoggingListener,
    Settled,
    Synced,
    TimedOut,
    Waiting,
)
from ._exceptions import (
    AcquireTimeout,
    BackendError,
    ConfigurationError,
    CostExceedsCapacity,
    LeaseError,
    LeaseLost,
    NotAcquired,
    PolicyMismatch,
    TokenBucketError,
    UpstreamRateLimited,
)
from ._group import (
    AsyncBucketGroup,
    AsyncGroupGrant,
    AsyncGroupReservation,
    BucketGroup,
    GroupGrant,
    GroupReservation,
)
from ._lease import AsyncLease, AsyncLeaseLock, Lease, LeaseLock
from ._metrics import PrometheusMetrics
from ._model import Snapshot
from ._planner import BatchPlan, BatchPlanner
from ._rate import Rate
from ._reconcile import (
    HeaderReconciler,
    KeepaReconciler,
    Reconciler,
    UpstreamReport,
    parse_amzn_ratelimit,
    parse_headers,
    parse_keepa,
    parse_ratelimit,
    parse_retry_after,
    parse_x_ratelimit,
)
from ._simulation import JobResult, JobSpec, SimulationResult, simulate
from ._singleton import singleton
from ._slots import AsyncConcurrencyLimit, AsyncSlot, ConcurrencyLimit, Slot
from .backends import AsyncRedisBackend, MemoryBackend, RedisBackend

__version__ = "0.1.0"

__all__ = [
    "AcquireTimeout",
    "AsyncBucketGroup",
    "AsyncConcurrencyLimit",
    "AsyncGrant",
    "AsyncGroupGrant",
    "AsyncGroupReservation",
    "AsyncLease",
    "AsyncLeaseLock",
    "AsyncRedisBackend",
    "AsyncReservation",
    "AsyncSlot",
    "AsyncTokenBucket",
    "BackendError",
    "BatchPlan",
    "BatchPlanner",
    "BucketEvent",
    "BucketGroup",
    "Cancelled",
    "ConcurrencyLimit",
    "ConfigurationError",
    "CostExceedsCapacity",
    "CostModel",
    "CostStore",
    "DebtCleared",
    "DebtEntered",
    "Event",
    "Grant",
    "Granted",
    "GroupGrant",
    "GroupReservation",
    "HeaderReconciler",
    "JobResult",
    "JobSpec",
    "KeepaReconciler",
    "Lease",
    "LeaseError",
    "LeaseEvent",
    "LeaseLock",
    "LeaseLost",
    "Listener",
    "LoggingListener",
    "MemoryBackend",
    "MemoryCostStore",
    "NotAcquired",
    "PolicyMismatch",
    "PrometheusMetrics",
    "Rate",
    "Reconciler",
    "RedisBackend",
    "RedisCostStore",
    "Reservation",
    "Settled",
    "SimulationResult",
    "Slot",
    "Snapshot",
    "Synced",
    "TimedOut",
    "TokenBucket",
    "TokenBucketError",
    "UpstreamRateLimited",
    "UpstreamReport",
    "Waiting",
    "__version__",
    "parse_amzn_ratelimit",
    "parse_headers",
    "parse_keepa",
    "parse_ratelimit",
    "parse_retry_after",
    "parse_x_ratelimit",
    "simulate",
    "singleton",
]
