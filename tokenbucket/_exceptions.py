"""The exceptions tokenbucket raises.

Every exception derives from `TokenBucketError`, so one ``except`` clause catches
them all. Builtin mixins let callers who do not know this library still catch
the right thing (a bad argument is a ``ValueError``, a timeout a ``TimeoutError``):

    TokenBucketError
    ├── ConfigurationError (ValueError)    bad policy, bad argument value
    │   ├── CostExceedsCapacity            a cost that can never start
    │   └── PolicyMismatch                 one bucket name, two policies
    ├── AcquireTimeout (TimeoutError)      the wait would exceed the timeout
    ├── BackendError                       the store (Redis) failed
    ├── UpstreamRateLimited                the upstream kept answering 429 after the retries
    └── LeaseError
        ├── NotAcquired                    someone else holds the lease
        └── LeaseLost                      the holder no longer holds it
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._reconcile import UpstreamReport
    from .backends._lease_base import LeaseInfo

__all__ = [
    "AcquireTimeout",
    "BackendError",
    "ConfigurationError",
    "CostExceedsCapacity",
    "LeaseError",
    "LeaseLost",
    "NotAcquired",
    "PolicyMismatch",
    "TokenBucketError",
    "UpstreamRateLimited",
]


class TokenBucketError(Exception):
    """The root of every exception raised by tokenbucket."""


class ConfigurationError(TokenBucketError, ValueError):
    """A policy or an argument has a value that can never work.

    Raised before any state changes. Every number of tokens (a cost, a settled
    cost, a reported balance, a capacity, a finite overdraft) must be finite and
    at most ``1e15`` in size, far beyond any real quota: so no sum of them can
    leave float range and a balance is never infinite. A number too large for a
    float (``10**400``) is this error, never a raw `OverflowError`.
    """


class CostExceedsCapacity(ConfigurationError):
    """The requested cost can never start under the bucket's policy.

    In strict mode a cost above ``capacity`` can never start; with an overdraft
    ``D``, a cost above ``capacity + D``. Raised at once, never after a wait,
    and nothing is charged.

    In a lane that holds back ``hold`` tokens, ``hold`` less.

    Attributes:
        cost: The cost that was asked for.
        limit: The largest cost the policy can ever start (in the lane, for a lane).
        hold: The tokens the request's lane holds back (0 without a lane).
    """

    def __init__(self, cost: float, limit: float, hold: float = 0.0) -> None:
        # The arguments are the exception's args, so pickle and Celery's result
        # serializer rebuild it as it was, with cost, limit and hold.
        super().__init__(cost, limit, hold) if hold else super().__init__(cost, limit)
        self.cost = cost
        self.limit = limit
        self.hold = hold

    def __str__(self) -> str:
        where = f"capacity + overdraft, less the {self.hold:g} tokens its lane holds back" if self.hold else (
            "capacity + overdraft"
        )
        return (
            f"cost {self.cost:g} can never start: the most this bucket can ever start is {self.limit:g} "
            f"({where}); split the work into smaller requests"
        )


def _format_policy(fingerprint: tuple[float, ...]) -> str:
    """A policy fingerprint ``(capacity, refill, overdraft, min_start, initial)`` in words."""
    capacity, refill, overdraft, min_start, initial = fingerprint
    words = f"capacity {capacity:g}, refill {refill:.6g}/s, overdraft {overdraft:g}"
    if overdraft:
        words += f", min_start {min_start:g}"
    return f"{words}, initial {initial:g}"


class PolicyMismatch(ConfigurationError):
    """A bucket object's policy differs from the one its name is stored with.

    Buckets with one name on one backend share one balance, so they must share
    one policy: the stored state remembers it, and an operation from an object
    built with another is refused before any state changes. To change a live
    bucket's policy on purpose, call ``reconfigure()`` (`tokenbucket.TokenBucket.reconfigure`):
    it carries the balance over.

    Attributes:
        name: The bucket's name.
        stored: The stored policy, as `tokenbucket.backends.Policy.fingerprint`
            gives it: ``(capacity, refill per second, overdraft, min_start, initial)``.
        requested: This object's policy, in the same form.
    """

    def __init__(self, name: str, stored: tuple[float, ...], requested: tuple[float, ...]) -> None:
        super().__init__(name, stored, requested)
        self.name = name
        self.stored = tuple(stored)
        self.requested = tuple(requested)

    def __str__(self) -> str:
        return (
            f"bucket {self.name!r} is stored with policy ({_format_policy(self.stored)}), but this object has "
            f"({_format_policy(self.requested)}): build every bucket of one name with one policy, or call "
            "reconfigure() to change the stored one (the balance carries over)"
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
        limit = f"beyond the timeout of {timeout:g} s" if timeout != float("inf") else "and the store refused to wait"
        super().__init__(f"cost {cost:g} would start in {retry_after:.3f} s, {limit} (nothing was charged)")

    def __reduce__(self) -> tuple[type[AcquireTimeout], tuple[float, float, float]]:
        # TimeoutError (an OSError) reinterprets several args, so pickle rebuilds it from the attributes.
        return type(self), (self.cost, self.timeout, self.retry_after)


class BackendError(TokenBucketError):
    """The backend (for example Redis) failed; the original error is ``__cause__``."""


class UpstreamRateLimited(TokenBucketError):
    """The upstream answered 429 (Too Many Requests) on every attempt.

    Raised by the httpx transports after syncing the bucket with each answer,
    waiting through the bucket and retrying the allowed number of times.

    Attributes:
        report: What the last 429 said about the quota (a
            `tokenbucket.UpstreamReport`), or None if it said nothing readable.
        attempts: How many requests were sent.
        url: The request's URL, as text.
    """

    def __init__(self, report: UpstreamReport | None, attempts: int, url: str) -> None:
        self.report = report
        self.attempts = attempts
        self.url = url
        said = f"; it reported {report}" if report is not None else ""
        super().__init__(f"{url} answered 429 Too Many Requests on all {attempts} attempts{said}")

    def __reduce__(self) -> tuple[type[UpstreamRateLimited], tuple[UpstreamReport | None, int, str]]:
        return type(self), (self.report, self.attempts, self.url)


class LeaseError(TokenBucketError):
    """The root of lease errors."""


class NotAcquired(LeaseError):
    """The lease is held by someone else, or every slot of a `ConcurrencyLimit` is taken
    (and waiting was not allowed or timed out).

    The message says who holds the lease and when it expires, or how many wait for a slot.

    Attributes:
        holder: The holder's `tokenbucket.backends.LeaseInfo` as last seen, or None.
    """

    def __init__(self, message: str, holder: LeaseInfo | None = None) -> None:
        self.holder = holder
        super().__init__(message)

    def __reduce__(self) -> tuple[type[NotAcquired], tuple[str, LeaseInfo | None]]:
        return type(self), (str(self), self.holder)


class LeaseLost(LeaseError):
    """The holder no longer holds the lease: it expired, was broken, or the key is gone."""
