"""`MemoryBackend`: bucket state in this process."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence

from .. import _model
from .._clock import Clock
from .._exceptions import PolicyMismatch
from .._model import BucketState, Policy, Snapshot, try_take
from .._rate import Rate
from ._base import ManyTicket, Ticket, check_parts
from ._memory_lease import MemoryLeaseStore
from ._memory_slots import MemorySlotStore

__all__ = ["MemoryBackend"]


class _Slot:
    """One bucket's state, updated in place under the backend's lock.

    A front end may keep a slot to charge it directly (`MemoryBackend._fast_slot`):
    under the backend's lock it checks that ``policy`` is still its own (a slot the
    idle sweep dropped has `_DROPPED`, one reconfigured or taken over by another
    object of the name has another policy), then calls `take`.
    """

    __slots__ = ("pending", "policy", "tokens", "updated")

    def __init__(self, policy: Policy, now: float) -> None:
        state = _model.fresh(policy, now)
        self.tokens = state.tokens
        self.updated = state.updated
        self.pending = state.pending
        self.policy = policy

    def state(self) -> BucketState:
        return BucketState(self.tokens, self.updated, self.pending)

    def take(self, now: float, cost: float, policy: Policy) -> bool:
        """Charge ``cost`` if nothing waits and the request may start at once (`_model.try_take`); say if it did.

        The caller holds the backend's lock and has checked that ``policy`` is the slot's.
        When it says False nothing changed; `_model.reserve` decides the request.
        """
        if self.pending:
            return False
        left = try_take(self.tokens, self.updated, now, cost, policy)
        if left is None:
            return False
        self.tokens = left
        if now > self.updated:
            self.updated = now
        return True

    def store(self, state: BucketState) -> None:
        self.tokens = state.tokens
        self.updated = state.updated
        self.pending = state.pending


class MemoryBackend(MemoryLeaseStore, MemorySlotStore):
    """Bucket state in this process: safe across threads and asyncio tasks.

    Any number of keys may be used. A bucket that is full, has no waiting
    reservation, and would be recreated full (``initial == capacity``) is
    dropped now and then, so memory stays bounded by the buckets in use;
    the next use recreates it exactly as it was.

    Every operation holds one lock for a few microseconds and never blocks
    otherwise, so the asyncio front end calls it directly.

    A bucket remembers its policy: an operation from a bucket object built
    with another policy raises `tokenbucket.PolicyMismatch` and changes
    nothing (``reconfigure`` changes it on purpose).

    It also keeps leases for `tokenbucket.LeaseLock` and
    `tokenbucket.AsyncLeaseLock` (it implements
    `tokenbucket.backends.LeaseBackend`; see ``_memory_lease.MemoryLeaseStore``)
    and the slots of `tokenbucket.ConcurrencyLimit` (`tokenbucket.backends.SlotBackend`).

    Args:
        clock: Reads the time when a front end passes ``now=None``;
            default `time.monotonic`.
    """

    server_clock = False

    def __init__(self, clock: Clock | None = None) -> None:
        self._now = time.monotonic if clock is None else clock.now
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._ids = itertools.count(1)
        self._sweep_at = 1024
        self._init_leases()
        self._init_slots()

    def __len__(self) -> int:
        """The number of buckets held right now."""
        return len(self._slots)

    def _slot(self, key: str, policy: Policy, now: float) -> _Slot:
        """The slot of ``key``, created with ``policy`` if missing; `PolicyMismatch` if it has another."""
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= self._sweep_at:
                self._sweep(now)
            slot = self._slots[key] = _Slot(policy, now)
        elif slot.policy is not policy:
            _same(key, slot, policy)
        return slot

    def _sweep(self, now: float) -> None:
        """Drop idle full buckets. Amortized O(1) per bucket created.

        A bucket is dropped only when it is provably full under the policy last
        used on it (a sync that changed the rate counts), so recreating it
        later gives back exactly the state it had.
        """
        idle = [
            key
            for key, s in self._slots.items()
            if not s.pending
            and s.policy.initial >= s.policy.capacity
            and _model.refill_tokens(s.tokens, s.updated, now, s.policy) >= s.policy.capacity
        ]
        for key in idle:
            self._slots.pop(key).policy = _DROPPED  # a front end holding it must look it up again
        self._sweep_at = max(1024, 2 * len(self._slots))

    def reserve(self, key: str, policy: Policy, cost: float, max_wait: float | None, now: float | None) -> Ticket:
        """See `tokenbucket.backends.Backend.reserve`."""
        with self._lock:
            if now is None:
                now = self._now()
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slot(key, policy, now)
            elif slot.policy is not policy:
                _same(key, slot, policy)
            if slot.take(now, cost, policy):
                return _AT_ONCE
            result = _model.reserve(slot.state(), policy, now, cost, max_wait, next(self._ids))
            slot.store(result.state)
            if isinstance(result, _model.Rejected):
                return False, result.retry_after, None
            return True, result.delay, result.rid

    def _fast_slot(self, key: str, policy: Policy) -> tuple[threading.Lock, _Slot] | None:
        """The lock and the slot of ``key`` if it exists with ``policy``, for a front end's fast path.

        `tokenbucket.TokenBucket` keeps them to charge a request that may start at
        once without a call to `reserve` (same arithmetic: `_Slot.take`), and looks
        again whenever the slot's policy is no longer ``policy`` (see `_Slot`).
        A subclass that overrides `reserve` gets None: its own reserve must see every request.
        """
        if type(self).reserve is not MemoryBackend.reserve or "reserve" in vars(self):
            return None
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.policy is not policy:
                return None
            return self._lock, slot

    def reserve_lane(
        self, key: str, policy: Policy, cost: float, hold: float, max_wait: float | None, now: float | None
    ) -> Ticket:
        """See `tokenbucket.backends.Backend.reserve_lane`."""
        with self._lock:
            if now is None:
                now = self._now()
            slot = self._slot(key, policy, now)
            result = _model.reserve_lane(slot.state(), policy, now, cost, hold, max_wait, next(self._ids))
            slot.store(result.state)
            if isinstance(result, _model.Rejected):
                return False, result.retry_after, None
            return True, result.delay, result.rid

    def reserve_all(
        self, parts: Sequence[tuple[str, Policy, float]], max_wait: float | None, now: float | None
    ) -> ManyTicket:
        """See `tokenbucket.backends.Backend.reserve_all`."""
        keys = check_parts(parts)
        with self._lock:
            if now is None:
                now = self._now()
            slots = [self._slot(key, policy, now) for key, policy, _ in parts]
            result = _model.reserve_all(
                [(slot.state(), policy, cost) for slot, (_, policy, cost) in zip(slots, parts, strict=True)],
                now,
                max_wait,
                [next(self._ids) for _ in keys],
            )
            for slot, state in zip(slots, result.states, strict=True):
                slot.store(state)
            if isinstance(result, _model.RejectedAll):
                return False, result.retry_after, ()
            return True, result.delay, result.rids

    def cancel(self, key: str, policy: Policy, rid: int, now: float | None) -> float:
        """See `tokenbucket.backends.Backend.cancel`."""
        with self._lock:
            if now is None:
                now = self._now()
            slot = self._slot(key, policy, now)
            result = _model.cancel(slot.state(), policy, now, rid)
            slot.store(result.state)
            return result.refunded

    def settle(self, key: str, policy: Policy, delta: float, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.settle`."""
        with self._lock:
            if now is None:
                now = self._now()
            slot = self._slot(key, policy, now)
            state = _model.settle(slot.state(), policy, now, delta)
            slot.store(state)
            return _model.snapshot(state, policy, now)

    def sync(self, key: str, policy: Policy, remaining: float, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.sync`."""
        with self._lock:
            if now is None:
                now = self._now()
            slot = self._slot(key, policy, now)
            state = _model.sync(slot.state(), policy, now, remaining)
            slot.store(state)
            return _model.snapshot(state, policy, now)

    def snapshot(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.snapshot`."""
        with self._lock:
            if now is None:
                now = self._now()
            slot = self._slots.get(key)
            if slot is None:
                return _model.snapshot(_model.fresh(policy, now), policy, now)
            if slot.policy is not policy:
                _same(key, slot, policy)
            return _model.snapshot(slot.state(), policy, now)

    def reconfigure(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.reconfigure`."""
        with self._lock:
            if now is None:
                now = self._now()
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slot(key, policy, now)
            else:
                slot.store(_model.reconfigure(slot.state(), slot.policy, policy, now))
                slot.policy = policy
            return _model.snapshot(slot.state(), policy, now)


_AT_ONCE: Ticket = (True, 0.0, None)

_DROPPED = Policy.build(Rate(1, 1.0))
"""The policy of a slot the sweep dropped: no bucket has it, so a front end holding the slot looks again."""


def _same(key: str, slot: _Slot, policy: Policy) -> None:
    """Let ``policy`` use ``slot`` if it is the policy the slot has (another object of it); else raise."""
    stored = slot.policy.fingerprint()
    requested = policy.fingerprint()
    if stored != requested:
        raise PolicyMismatch(key, stored, requested)
    slot.policy = policy
