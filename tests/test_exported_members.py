"""The public names are a contract: this pins them."""

from __future__ import annotations

import tokenbucket
import tokenbucket.backends
import tokenbucket.testing

EXPECTED = [
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
    for name in ["AsyncBackend", "Backend", "MemoryBackend", "Policy", "Snapshot", "Ticket"]:
        assert name in tokenbucket.backends.__all__
    assert tokenbucket.testing.__all__ == ["ManualClock"]
