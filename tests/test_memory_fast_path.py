"""The memory fast path: a bucket charging the slot it keeps, racing the paths that invalidate it.

`TokenBucket.try_acquire` / ``acquire`` (and the async twins) keep the lock and
slot of their `MemoryBackend` and charge it without a ``reserve`` call. These
tests let threads hit that path while the slow paths interleave (listeners
added mid-way, ``reconfigure``, another object of the name, the idle sweep
dropping the slot) and check the ledger against an independent count: the
grants handed out never exceed the capacity plus the rate times the virtual
time that passed.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tokenbucket import AsyncTokenBucket, Granted, MemoryBackend, PolicyMismatch, TokenBucket
from tokenbucket.testing import ManualClock

CAPACITY = 50
RATE = f"{CAPACITY}/second"


def _flood(backend: MemoryBackend, tag: str, n: int = 1100) -> None:
    """Create enough idle full buckets on ``backend`` that its idle sweep runs."""
    other = TokenBucket(f"{tag}-0", "1/second", backend=backend)
    for i in range(n):
        backend.reserve(f"{tag}-{i}", other.policy, 0, None, None)


def test_the_fast_path_is_taken_and_charges_the_store() -> None:
    clock = ManualClock()
    backend = MemoryBackend()
    bucket = TokenBucket("fp", RATE, backend=backend, clock=clock)
    assert bucket.try_acquire(1) is not None  # the ordinary path; keeps the slot
    assert bucket._fast is not None
    granted = sum(bucket.try_acquire(1) is not None for _ in range(2 * CAPACITY))
    assert granted == CAPACITY - 1
    assert backend.snapshot("fp", bucket.policy, clock.now()).tokens == 0


def test_a_slot_dropped_by_the_sweep_is_not_charged_again() -> None:
    clock = ManualClock()
    backend = MemoryBackend(clock)
    a = TokenBucket("swept", RATE, backend=backend, clock=clock)
    b = TokenBucket("swept", RATE, backend=backend, clock=clock)
    assert a.try_acquire(CAPACITY) is not None
    clock.advance(10.0)  # full again, idle: the sweep may drop it
    kept = a._fast
    assert kept is not None
    _flood(backend, "swept-other")
    assert backend._slots.get("swept") is not kept[1]  # dropped (and maybe recreated)
    granted = 0
    for _ in range(CAPACITY):
        granted += a.try_acquire(1) is not None
        granted += b.try_acquire(1) is not None
    assert granted == CAPACITY  # one ledger, not the dropped slot and a fresh one


def test_another_object_reconfiguring_the_name_is_seen_at_once() -> None:
    clock = ManualClock()
    backend = MemoryBackend()
    a = TokenBucket("rc", RATE, backend=backend, clock=clock)
    b = TokenBucket("rc", RATE, backend=backend, clock=clock)
    assert a.try_acquire(1) is not None
    assert a.acquire(1) is not None
    b.reconfigure(rate="5/second")
    with pytest.raises(PolicyMismatch):
        a.try_acquire(1)
    with pytest.raises(PolicyMismatch):
        a.acquire(1)
    a.reconfigure(rate="5/second")
    assert a.try_acquire(1) is not None


def test_a_listener_added_after_the_slot_is_kept_hears_every_grant() -> None:
    events: list[Any] = []
    bucket = TokenBucket("ls", RATE, backend=MemoryBackend(), clock=ManualClock())
    assert bucket.try_acquire(1) is not None
    assert bucket.acquire(1) is not None
    bucket.add_listener(events.append)
    assert bucket.try_acquire(1) is not None
    assert bucket.acquire(1) is not None
    assert [type(e) for e in events if isinstance(e, Granted)] == [Granted, Granted]


def test_a_subclass_that_overrides_reserve_sees_every_request() -> None:
    calls: list[float] = []

    class Counting(MemoryBackend):
        def reserve(self, *args: Any) -> Any:
            calls.append(args[2])
            return super().reserve(*args)

    bucket = TokenBucket("sub", RATE, backend=Counting(), clock=ManualClock())
    for _ in range(5):
        assert bucket.try_acquire(1) is not None
        assert bucket.acquire(1) is not None
    assert len(calls) == 10


def test_a_waiting_reservation_keeps_its_place() -> None:
    clock = ManualClock()
    bucket = TokenBucket("wait", RATE, backend=MemoryBackend(), clock=clock)
    assert bucket.try_acquire(CAPACITY) is not None
    res = bucket.reserve(1)  # waits 1/50 s
    assert res.delay > 0
    clock.advance(res.delay / 2)
    assert bucket.try_acquire(1) is None  # behind the reservation
    clock.advance(1.0)
    assert bucket.try_acquire(1) is not None
    assert res.wait().waited > 0


def test_async_fast_path_shares_the_ledger() -> None:
    clock = ManualClock()
    backend = MemoryBackend()

    async def main() -> int:
        bucket = AsyncTokenBucket("aio-fp", RATE, backend=backend, clock=clock)
        other = TokenBucket("aio-fp", RATE, backend=backend, clock=clock)
        granted = 0
        for _ in range(CAPACITY):
            granted += (await bucket.try_acquire(1)) is not None
            granted += other.try_acquire(1) is not None
        return granted

    assert asyncio.run(main()) == CAPACITY


class _Ledger:
    """The grants handed out, counted outside the library."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.granted = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.granted += n


def _worker(bucket: TokenBucket, ledger: _Ledger, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        while not stop.is_set():
            if bucket.try_acquire(1) is not None:
                ledger.add(1)
    except BaseException as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


@pytest.mark.parametrize("phased", [True, False], ids=["between-uses", "racing"])
def test_threads_never_overspend_while_slow_paths_interleave(phased: bool) -> None:
    clock = ManualClock()
    backend = MemoryBackend(clock)
    buckets = [TokenBucket("race", RATE, backend=backend, clock=clock) for _ in range(3)]
    ledger = _Ledger()
    errors: list[BaseException] = []
    events: list[Any] = []
    rounds = 12
    drops = 0
    for rnd in range(rounds):
        stop = threading.Event()
        workers = [threading.Thread(target=_worker, args=(buckets[i % 2], ledger, stop, errors)) for i in range(4)]
        for w in workers:
            w.start()
        if phased:  # the slow path happens between two runs of the fast path, which drain the bucket
            threading.Event().wait(0.03)
            stop.set()
            for w in workers:
                w.join()
        action = rnd % 4
        if action == 0:
            before = backend._slots.get("race")
            clock.advance(1.0)  # full again (drained before): the sweep drops the slot unless a worker takes first
            _flood(backend, f"race-{rnd}")
            drops += backend._slots.get("race") is not before
        elif action == 1:
            buckets[rnd % 3].reconfigure()  # the same numbers, a new policy object in the store
            clock.advance(0.5)
        elif action == 2:
            listener = events.append
            buckets[rnd % 3].add_listener(listener)
            clock.advance(0.5)
            buckets[rnd % 3].remove_listener(listener)
        else:
            fresh = TokenBucket("race", RATE, backend=backend, clock=clock)  # another object takes the slot
            if fresh.try_acquire(1) is not None:
                ledger.add(1)
            clock.advance(0.5)
        if not phased:
            threading.Event().wait(0.03)
            stop.set()
            for w in workers:
                w.join()
    assert not errors
    if phased:  # the workers were stopped while the clock filled the bucket: the sweep dropped it
        assert drops > 0
    allowed = CAPACITY + CAPACITY * clock.now()  # full at the start, plus the refill since
    left = backend.snapshot("race", buckets[0].policy, clock.now()).tokens
    # Handed out plus still there is at most what ever came in: no grant was charged to a
    # dropped slot (its tokens would show up again in the live one) or charged twice.
    assert ledger.granted > 0
    assert ledger.granted + left <= allowed + 1e-6
