"""tokenbucket: share a metered API quota among many jobs, threads and hosts.

A token bucket in memory or on Redis, with first-come first-served blocking
acquire (sync and asyncio), overdraft and debt that mirror upstreams like
Keepa, reservations, refunds, settling the real cost after a call, and syncing
with what the upstream reports.
"""

from __future__ import annotations

from ._bucket import AsyncGrant, AsyncReservation, AsyncTokenBucket, Grant, Reservation, TokenBucket
from ._exceptions import (
    AcquireTimeout,
    BackendError,
    ConfigurationError,
    CostExceedsCapacity,
    LeaseError,
    LeaseLost,
    NotAcquired,
    TokenBucketError,
)
from ._model import Snapshot
from ._rate import Rate
from .backends import MemoryBackend

__version__ = "0.1.0"

__all__ = [
    "AcquireTimeout",
    "AsyncGrant",
    "AsyncReservation",
    "AsyncTokenBucket",
    "BackendError",
    "ConfigurationError",
    "CostExceedsCapacity",
    "Grant",
    "LeaseError",
    "LeaseLost",
    "MemoryBackend",
    "NotAcquired",
    "Rate",
    "Reservation",
    "Snapshot",
    "TokenBucket",
    "TokenBucketError",
    "__version__",
]
