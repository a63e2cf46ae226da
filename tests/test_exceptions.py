"""The exception tree: builtin mixins, and exceptions that survive pickling (Celery, multiprocessing)."""

from __future__ import annotations

import pickle

import pytest

import tokenbucket
from tokenbucket import (
    AcquireTimeout,
    BackendError,
    ConfigurationError,
    CostExceedsCapacity,
    LeaseLost,
    NotAcquired,
    TokenBucketError,
    UpstreamRateLimited,
)


def test_tree() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(CostExceedsCapacity, ConfigurationError)
    assert issubclass(AcquireTimeout, TimeoutError)
    for name in tokenbucket.__all__:
        member = getattr(tokenbucket, name)
        if isinstance(member, type) and issubclass(member, BaseException):
            assert issubclass(member, TokenBucketError), name


@pytest.mark.parametrize(
    "exc",
    [
        CostExceedsCapacity(1000.0, 300.0),
        AcquireTimeout(5.0, 2.0, 3.5),
        UpstreamRateLimited(None, 3, "http://upstream/x"),
        NotAcquired("held by worker-3", None),
        LeaseLost("gone"),
        BackendError("redis down"),
        ConfigurationError("bad"),
    ],
)
def test_exceptions_pickle_round_trip(exc: TokenBucketError) -> None:
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.__dict__ == exc.__dict__


def test_cost_exceeds_capacity_rebuilds_from_its_args() -> None:
    """Celery's JSON result serializer stores ``args`` and calls ``type(exc)(*args)``."""
    exc = CostExceedsCapacity(1000.0, 300.0)
    back = type(exc)(*exc.args)
    assert str(back) == str(exc)
    assert back.__dict__ == exc.__dict__
