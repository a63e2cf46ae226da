"""The public names are a contract: this pins them."""

from __future__ import annotations

import tokenbucket
import tokenbucket.backends
import tokenbucket.testing

EXPECTED = [
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


def test_all_is_pinned_and_sorted() -> None:
    assert tokenbucket.__all__ == EXPECTED
    assert sorted(tokenbucket.__all__) == tokenbucket.__all__


def test_every_exported_name_exists_and_is_public() -> None:
    for name in tokenbucket.__all__:
        member = getattr(tokenbucket, name)
        if name != "__version__":
            assert member.__module__.startswith("tokenbucket"), name


def test_backends_and_testing_exports() -> None:
    assert sorted(tokenbucket.backends.__all__) == tokenbucket.backends.__all__
    protocols = ["BAND", "AsyncBackend", "Backend", "ManyTicket", "MemoryBackend", "Policy", "Snapshot", "Ticket"]
    protocols += ["AsyncSlotBackend", "SlotBackend", "SlotReply", "SlotsInfo"]
    for name in [*protocols, "redact_secret", "redact_url"]:
        assert name in tokenbucket.backends.__all__
    assert tokenbucket.testing.__all__ == ["ManualClock"]
