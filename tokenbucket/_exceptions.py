"""The exceptions tokenbucket raises.

Every exception derives from `TokenBucketError`, so one ``except`` clause catches
them all. Builtin mixins let callers who do not know this library still catch
the right thing (a bad argument is a ``ValueError``, a timeout a ``TimeoutError``)::

    TokenBucketError
    ├── ConfigurationError (ValueError)    bad policy, bad argument value
    │   └── CostExceedsCapacity            a cost that can never start
    ├── AcquireTimeout (TimeoutError)      the wait would exceed the timeout
    ├── BackendError                       the store (Redis) failed
    └── LeaseError
        ├── NotAcquired                    someone else holds the lease
        └── LeaseLost                      the holder no longer holds it
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeout",
    "BackendError",
    "ConfigurationError",
    "CostExceedsCapacity",
    "LeaseError",
    "LeaseLost",
    "NotAcquired",
    "TokenBucketError",
]


class TokenBucketError(Exception):
    """The root of every exception raised by tokenbucket."""


class ConfigurationError(TokenBucketError, ValueError):
    """A policy or an argument has a value that can never work.

    Raised before any state changes.
    """


class CostExceedsCapacity(ConfigurationError):
    """The requested cost can never start under the bucket's policy.

    In strict mode a cost above ``capacity`` can never start; with an overdraft
    ``D``, a cost above ``capacity + D``. Raised at once, never after a wait,
    and nothing is charged.

    Attributes:
        cost: The cost that was asked for.
        limit: The largest cost the policy can ever start.
    """

    def __init__(self, cost: float, limit: float) -> None:
        self.cost = cost
        self.limit = limit
        super().__init__(
            f"cost {cost:g} can never start: the most this bucket can ever start is {limit:g} "
            "(capacity + overdraft); split the work into smaller requests"
        )


class AcquireTimeout(TokenBucketError, TimeoutError):
    """The request would have to wait longer than its timeout.

    Decided up front: nothing was charged.

    Attributes:
        retry_after: Seconds until the request could start, if nothing else
            is charged meanwhile.
        cost: The cost that was asked for.
        timeout: The timeout that was exceeded.
    """

    def __init__(self, cost: float, timeout: float, retry_after: float) -> None:
        self.cost = cost
        self.timeout = timeout
        self.retry_after = retry_after
        super().__init__(
            f"cost {cost:g} would start in {retry_after:.3f} s, beyond the timeout of {timeout:g} s "
            "(nothing was charged)"
        )


class BackendError(TokenBucketError):
    """The backend (for example Redis) failed; the original error is ``__cause__``."""


class LeaseError(TokenBucketError):
    """The root of lease errors."""


class NotAcquired(LeaseError):
    """The lease is held by someone else (and waiting was not allowed or timed out)."""


class LeaseLost(LeaseError):
    """The holder no longer holds the lease: it expired, was broken, or the key is gone."""
