"""Shared fixtures.

The conformance suite runs every test class against every backend in
`BACKENDS` and both front ends in `FRONTENDS`. A backend named ``X`` other than
memory is provided by a fixture ``X_backend_factory`` returning
``factory(frontend) -> backend``.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tokenbucket import AsyncGrant, AsyncReservation, AsyncTokenBucket, MemoryBackend, TokenBucket
from tokenbucket.testing import ManualClock

BACKENDS = ["memory"]
FRONTENDS = ["sync", "async"]


class Blocking:
    """Drives an async object's coroutine methods to completion, so one test body serves both front ends."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._loop.run_until_complete(attr(*args, **kwargs))
            if isinstance(result, (AsyncGrant, AsyncReservation)):
                return Blocking(result, self._loop)
            return result

        return call

    def __repr__(self) -> str:
        return f"Blocking({self._target!r})"


@pytest.fixture(params=FRONTENDS)
def frontend(request: pytest.FixtureRequest) -> str:
    """``"sync"`` or ``"async"``."""
    return str(request.param)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


@pytest.fixture
def new_backend(backend_name: str, frontend: str, request: pytest.FixtureRequest) -> Callable[[], Any]:
    """Makes a fresh backend of the kind under test, suited to the front end."""
    if backend_name == "memory":
        return MemoryBackend
    factory = request.getfixturevalue(f"{backend_name}_backend_factory")
    return lambda: factory(frontend)


@pytest.fixture
def clock() -> ManualClock:
    """Virtual time, starting at 1000 s."""
    return ManualClock(1000.0)


@pytest.fixture
def event_loop_for_sync() -> Iterator[asyncio.AbstractEventLoop]:
    """A private loop for driving the async front end from a sync test body."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def make_bucket(
    new_backend: Callable[[], Any], frontend: str, clock: ManualClock, event_loop_for_sync: asyncio.AbstractEventLoop
) -> Callable[..., Any]:
    """``make_bucket(rate="10/second", **policy)`` -> a bucket on the backend and front end under test.

    The async front end is wrapped in `Blocking`, so tests call it like the sync one.
    Each call makes a bucket with a fresh name on a fresh backend unless ``name=`` / ``backend=`` are given.
    """

    def make(rate: str = "10/second", **kwargs: Any) -> Any:
        kwargs.setdefault("backend", new_backend())
        kwargs.setdefault("clock", clock)
        name = kwargs.pop("name", f"test-{uuid.uuid4().hex[:12]}")
        if frontend == "sync":
            return TokenBucket(name, rate, **kwargs)
        return Blocking(AsyncTokenBucket(name, rate, **kwargs), event_loop_for_sync)

    return make
