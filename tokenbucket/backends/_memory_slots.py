"""Concurrency-limit slots in this process: the `SlotBackend` half of `MemoryBackend`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._exceptions import ConfigurationError
from ._lease_base import LeaseOwner, LeaseReply
from ._memory_lease import _Held, _resolve
from ._slot_base import SlotReply, SlotsInfo

__all__ = ["MemorySlotStore"]


@dataclass(slots=True)
class _Limit:
    """One concurrency limit's holders and line, changed in place under the store's lock."""

    limit: int
    holders: dict[str, _Held] = field(default_factory=dict)
    line: dict[str, float] = field(default_factory=dict)  # token -> expiry, in the order they joined


class MemorySlotStore:
    """Slots kept in this process, safe across threads and asyncio tasks.

    Expired holders and waiters are dropped when the name is next looked at.
    Fences count up from 1 per name for the life of the store. A waiter is
    woken (a thread's event, a task's future) when it is at the front of the
    line and a slot is free.

    The class that mixes this in provides ``_now`` and calls `_init_slots`.
    """

    _now: Callable[[], float]

    def _init_slots(self) -> None:
        self._slot_lock = threading.Lock()
        self._limits: dict[str, _Limit] = {}
        self._slot_fences: dict[str, int] = {}
        self._slot_waiters: dict[tuple[str, str], Callable[[], None]] = {}

    def _live_limit(self, name: str, now: float) -> _Limit | None:
        """The limit's state with the expired dropped; None (and forgotten) when nothing is left."""
        state = self._limits.get(name)
        if state is None:
            return None
        for token in [t for t, h in state.holders.items() if h.expires <= now]:
            del state.holders[token]
        for token in [t for t, expires in state.line.items() if expires <= now]:
            del state.line[token]
        if not state.holders and not state.line:
            del self._limits[name]
            return None
        return state

    def _serve(self, name: str, state: _Limit) -> None:
        """Wake the waiters at the front of the line that a free slot now awaits."""
        free = state.limit - len(state.holders)
        for token in list(state.line)[: max(0, free)]:
            wake = self._slot_waiters.get((name, token))
            if wake is not None:
                wake()

    def slot_acquire(
        self, name: str, token: str, limit: int, ttl: float, owner: LeaseOwner, wait_ttl: float
    ) -> SlotReply:
        """See `tokenbucket.backends.SlotBackend.slot_acquire`."""
        with self._slot_lock:
            now = self._now()
            state = self._live_limit(name, now)
            if state is None:
                state = self._limits[name] = _Limit(limit)
            elif state.limit != limit:
                raise ConfigurationError(
                    f"concurrency limit {name!r} is in use with limit={state.limit}, not {limit}: every user "
                    "of a name must give the same limit (change it when no slot is held or awaited)"
                )
            held = state.holders.get(token)
            if held is not None:
                return True, held.info(name, now), 0, None
            free = limit - len(state.holders)
            order = list(state.line)
            ahead = order.index(token) if token in state.line else len(order)
            if ahead < free:
                state.line.pop(token, None)
                fence = self._slot_fences[name] = self._slot_fences.get(name, 0) + 1
                wall = time.time()
                held = state.holders[token] = _Held(token, fence, owner, wall, wall, 0, now + ttl)
                return True, held.info(name, now), 0, None
            if wait_ttl > 0:
                state.line[token] = now + wait_ttl  # a token in line keeps its place
            elif not state.holders and not state.line:
                del self._limits[name]
            soonest = min((h.expires for h in state.holders.values()), default=None)
            return False, None, ahead, None if soonest is None else max(0.0, soonest - now)

    def slot_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """See `tokenbucket.backends.SlotBackend.slot_renew`."""
        with self._slot_lock:
            now = self._now()
            state = self._live_limit(name, now)
            held = None if state is None else state.holders.get(token)
            if held is None:
                return False, None
            held.expires = now + ttl
            held.renewed = time.time()
            held.renewals += 1
            return True, held.info(name, now)

    def slot_release(self, name: str, token: str) -> bool:
        """See `tokenbucket.backends.SlotBackend.slot_release`."""
        with self._slot_lock:
            state = self._live_limit(name, self._now())
            if state is None:
                return False
            held = state.holders.pop(token, None) is not None
            state.line.pop(token, None)
            self._serve(name, state)
            if not state.holders and not state.line:
                del self._limits[name]
            return held

    def slot_break(self, name: str, expect_fence: int) -> LeaseReply:
        """See `tokenbucket.backends.SlotBackend.slot_break`."""
        with self._slot_lock:
            now = self._now()
            state = self._live_limit(name, now)
            for token, held in ({} if state is None else state.holders).items():
                if held.fence == expect_fence:
                    assert state is not None
                    del state.holders[token]
                    self._serve(name, state)
                    return True, held.info(name, now)
            return False, None

    def slot_inspect(self, name: str) -> SlotsInfo:
        """See `tokenbucket.backends.SlotBackend.slot_inspect`."""
        with self._slot_lock:
            now = self._now()
            state = self._live_limit(name, now)
            if state is None:
                return SlotsInfo(name, 0, (), 0)
            holders = sorted((h.info(name, now) for h in state.holders.values()), key=lambda i: i.fence)
            return SlotsInfo(name, state.limit, tuple(holders), len(state.line))

    def _may_be_served(self, name: str, token: str) -> bool:
        state = self._live_limit(name, self._now())
        if state is None or token not in state.line:
            return True  # not in line (expired, or never joined): asking again will say
        return list(state.line).index(token) < state.limit - len(state.holders)

    def slot_wait(self, name: str, token: str, timeout: float) -> bool:
        """See `tokenbucket.backends.SlotBackend.slot_wait`: a thread waits on an event."""
        event = threading.Event()
        with self._slot_lock:
            if self._may_be_served(name, token):
                return True
            self._slot_waiters[(name, token)] = event.set
        try:
            return event.wait(max(0.0, timeout))
        finally:
            with self._slot_lock:
                self._slot_waiters.pop((name, token), None)

    async def slot_wait_async(self, name: str, token: str, timeout: float) -> bool:
        """`slot_wait` for a task: suspends the task, never the event loop's thread."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, fut)

        with self._slot_lock:
            if self._may_be_served(name, token):
                return True
            self._slot_waiters[(name, token)] = wake
        try:
            await asyncio.wait_for(fut, max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        finally:
            with self._slot_lock:
                self._slot_waiters.pop((name, token), None)
        return True
