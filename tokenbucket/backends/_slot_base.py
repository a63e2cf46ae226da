"""The slot store protocols: the atomic operations a store offers for concurrency limits.

A concurrency limit of ``N`` keeps, per name, at most ``N`` holders (each a
lease: a random token only the holder knows, a fence that grows with every
acquisition, the owner's metadata, an expiry) and a line of waiters in the order
they first asked. A slot is granted only to the front of the line: a waiter is
served when fewer than ``N`` slots are held and fewer waiters are ahead of it
than slots are free. Waiters expire too (each renews its place by asking again),
so a waiter that died leaves the line within its TTL, and a holder that died
frees its slot within its TTL. Every change is one atomic step; nothing stored
outlives the TTLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._lease_base import LeaseInfo, LeaseOwner, LeaseReply

__all__ = ["AsyncSlotBackend", "SlotBackend", "SlotReply", "SlotsInfo"]

SlotReply = tuple[bool, "LeaseInfo | None", int, "float | None"]
"""The reply of ``slot_acquire``: ``(granted, info, ahead, soonest)``.

When ``granted``, ``info`` describes the new slot (its fence, owner, expiry).
Otherwise ``ahead`` is how many waiters are in line before the caller, and
``soonest`` the seconds until the soonest holder's slot expires (None when no
slot is held): the latest a waiter needs to look again.
"""


@dataclass(frozen=True, slots=True)
class SlotsInfo:
    """A concurrency limit as stored: who holds its slots, and how many wait.

    Attributes:
        name: The limit's name.
        limit: The most slots held at once (0 when nothing is stored).
        holders: Each held slot, as a `LeaseInfo`, by fence.
        waiting: How many callers are in line for a slot.
    """

    name: str
    limit: int
    holders: tuple[LeaseInfo, ...]
    waiting: int

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (the CLI's ``--json`` form)."""
        return {
            "name": self.name,
            "limit": self.limit,
            "held": len(self.holders),
            "waiting": self.waiting,
            "holders": [h.as_dict() for h in self.holders],
        }


@runtime_checkable
class SlotBackend(Protocol):
    """A synchronous store of concurrency-limit slots.

    Every method is one atomic step for the name, and a method that raises has
    changed nothing. Store failures are raised as `tokenbucket.BackendError`.
    """

    def slot_acquire(
        self, name: str, token: str, limit: int, ttl: float, owner: LeaseOwner, wait_ttl: float
    ) -> SlotReply:
        """Take a slot for ``ttl`` seconds if the caller is at the front of the line and one is free.

        A caller not yet in line joins at its end when ``wait_ttl > 0`` (and
        keeps its place, renewed for ``wait_ttl`` seconds, when it asks again);
        with ``wait_ttl == 0`` it only takes a slot that no waiter is owed.
        Asking again with the token of a slot already held reports that slot.

        Raises:
            ConfigurationError: the name is in use with another ``limit``.
        """
        ...

    def slot_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """Extend the slot held by ``token`` to expire ``ttl`` seconds from now. Never re-acquires."""
        ...

    def slot_release(self, name: str, token: str) -> bool:
        """Give back the slot of ``token``, or its place in line, and wake the waiters now served.

        True if ``token`` held a slot.
        """
        ...

    def slot_break(self, name: str, expect_fence: int) -> LeaseReply:
        """Free the slot whose fence is ``expect_fence``, whoever holds it (an operator's tool)."""
        ...

    def slot_inspect(self, name: str) -> SlotsInfo:
        """The holders and the length of the line. Changes nothing."""
        ...

    def slot_wait(self, name: str, token: str, timeout: float) -> bool:
        """Block until the waiter ``token`` may be served, or ``timeout`` seconds pass.

        A wake-up is a hint: the caller asks again either way.
        """
        ...


@runtime_checkable
class AsyncSlotBackend(Protocol):
    """The asyncio twin of `SlotBackend`: the same operations, awaitable."""

    async def slot_acquire(
        self, name: str, token: str, limit: int, ttl: float, owner: LeaseOwner, wait_ttl: float
    ) -> SlotReply:
        """See `SlotBackend.slot_acquire`."""
        ...

    async def slot_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """See `SlotBackend.slot_renew`."""
        ...

    async def slot_release(self, name: str, token: str) -> bool:
        """See `SlotBackend.slot_release`."""
        ...

    async def slot_break(self, name: str, expect_fence: int) -> LeaseReply:
        """See `SlotBackend.slot_break`."""
        ...

    async def slot_inspect(self, name: str) -> SlotsInfo:
        """See `SlotBackend.slot_inspect`."""
        ...

    async def slot_wait(self, name: str, token: str, timeout: float) -> bool:
        """See `SlotBackend.slot_wait`."""
        ...
