"""Leases in this process: the `LeaseBackend` half of `MemoryBackend`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ._lease_base import LeaseInfo, LeaseOwner, LeaseReply

__all__ = ["MemoryLeaseStore"]


@dataclass(slots=True)
class _Held:
    """One held lease, changed in place under the store's lock."""

    token: str
    fence: int
    owner: LeaseOwner
    acquired: float
    renewed: float
    renewals: int
    expires: float  # on the backend's clock

    def info(self, name: str, now: float) -> LeaseInfo:
        return LeaseInfo(
            name, self.fence, self.owner, self.acquired, self.renewed, self.renewals, max(0.0, self.expires - now)
        )


class MemoryLeaseStore:
    """Leases kept in this process, safe across threads and asyncio tasks.

    Expired leases are dropped when they are next looked at, so a lease whose
    holder died (or hung) is free exactly ``ttl`` seconds after its last
    renewal, by the backend's clock. Fences count up from 1 per name for the
    life of the store. Waiters (threads or tasks, in any event loop) are woken
    when a lease is released or broken.

    The class that mixes this in provides ``_now`` (the clock) and calls
    `_init_leases` from its constructor.
    """

    _now: Callable[[], float]

    def _init_leases(self) -> None:
        self._lease_lock = threading.Lock()
        self._leases: dict[str, _Held] = {}
        self._fences: dict[str, int] = {}
        self._lease_waiters: dict[str, list[Callable[[], None]]] = {}

    def _live(self, name: str, now: float) -> _Held | None:
        held = self._leases.get(name)
        if held is not None and held.expires <= now:
            del self._leases[name]
            return None
        return held

    def _wake(self, name: str) -> None:
        for wake in self._lease_waiters.pop(name, ()):
            wake()

    def lease_acquire(self, name: str, token: str, ttl: float, owner: LeaseOwner) -> LeaseReply:
        """See `tokenbucket.backends.LeaseBackend.lease_acquire`."""
        with self._lease_lock:
            now = self._now()
            held = self._live(name, now)
            if held is not None:
                return False, held.info(name, now)
            fence = self._fences.get(name, 0) + 1
            self._fences[name] = fence
            wall = time.time()
            held = self._leases[name] = _Held(token, fence, owner, wall, wall, 0, now + ttl)
            return True, held.info(name, now)

    def lease_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """See `tokenbucket.backends.LeaseBackend.lease_renew`."""
        with self._lease_lock:
            now = self._now()
            held = self._live(name, now)
            if held is None or held.token != token:
                return False, None if held is None else held.info(name, now)
            held.expires = now + ttl
            held.renewed = time.time()
            held.renewals += 1
            return True, held.info(name, now)

    def lease_release(self, name: str, token: str) -> bool:
        """See `tokenbucket.backends.LeaseBackend.lease_release`."""
        with self._lease_lock:
            held = self._live(name, self._now())
            if held is None or held.token != token:
                return False
            del self._leases[name]
            self._wake(name)
            return True

    def lease_break(self, name: str, expect_fence: int) -> LeaseReply:
        """See `tokenbucket.backends.LeaseBackend.lease_break`."""
        with self._lease_lock:
            now = self._now()
            held = self._live(name, now)
            if held is None or held.fence != expect_fence:
                return False, None if held is None else held.info(name, now)
            del self._leases[name]
            self._wake(name)
            return True, held.info(name, now)

    def lease_inspect(self, name: str) -> LeaseInfo | None:
        """See `tokenbucket.backends.LeaseBackend.lease_inspect`."""
        with self._lease_lock:
            now = self._now()
            held = self._live(name, now)
            return None if held is None else held.info(name, now)

    def lease_list(self) -> list[LeaseInfo]:
        """See `tokenbucket.backends.LeaseBackend.lease_list`."""
        with self._lease_lock:
            now = self._now()
            names = sorted(self._leases)
            found = [self._live(name, now) for name in names]
            return [held.info(name, now) for name, held in zip(names, found, strict=True) if held is not None]

    def lease_wait(self, name: str, timeout: float) -> bool:
        """See `tokenbucket.backends.LeaseBackend.lease_wait`: a thread waits on an event."""
        event = threading.Event()
        with self._lease_lock:
            if self._live(name, self._now()) is None:
                return True  # free already (released between the caller's try and this wait)
            self._lease_waiters.setdefault(name, []).append(event.set)
        woken = event.wait(max(0.0, timeout))
        if not woken:
            self._forget(name, event.set)
        return woken

    async def lease_wait_async(self, name: str, timeout: float) -> bool:
        """`lease_wait` for a task: suspends the task, never the event loop's thread."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, fut)

        with self._lease_lock:
            if self._live(name, self._now()) is None:
                return True
            self._lease_waiters.setdefault(name, []).append(wake)
        try:
            await asyncio.wait_for(fut, max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        finally:
            self._forget(name, wake)
        return True

    def _forget(self, name: str, wake: Callable[[], None]) -> None:
        with self._lease_lock:
            waiters = self._lease_waiters.get(name)
            if waiters is not None and wake in waiters:
                waiters.remove(wake)
                if not waiters:
                    del self._lease_waiters[name]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
