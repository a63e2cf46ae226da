"""The lease store protocols: the atomic operations a store offers for lease locks.

A lease is a named lock with a mandatory expiry. The store keeps, per name, the
holder's random ``token`` (only the holder knows it), a fencing number that
grows with every acquisition, the owner's metadata, and the expiry. Every
change is checked against the token in one atomic step, so a holder can only
renew or release its own lease, and nothing can be held for ever: a holder
that stops renewing loses the lease when its TTL runs out.

The store keeps its own time (Redis ``TIME``; the backend's clock in memory);
TTLs are durations, so the holder's and the store's clocks need only tick at
the same rate. The front ends (`tokenbucket.LeaseLock`,
`tokenbucket.AsyncLeaseLock`) do the waiting and the heartbeat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["AsyncLeaseBackend", "LeaseBackend", "LeaseInfo", "LeaseOwner", "LeaseReply"]


@dataclass(frozen=True, slots=True)
class LeaseOwner:
    """Who holds (or asks for) a lease, as operators will see it.

    Attributes:
        host: The holder's host name.
        pid: The holder's process id.
        task: The holder's thread or asyncio task name, or a label the user chose.
    """

    host: str
    pid: int
    task: str


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A lease as stored: who holds it, since when, and for how much longer.

    The holder's secret token is never part of it.

    Attributes:
        name: The lease's name.
        fence: The fencing number of this acquisition; every acquisition of a
            name gets a larger one.
        owner: Host, pid and task of the holder.
        acquired: When it was acquired (Unix time, for display).
        renewed: When it was last renewed (Unix time; equal to ``acquired`` before the first renewal).
        renewals: How many times it was renewed.
        expires_in: Seconds until it expires unless renewed.
    """

    name: str
    fence: int
    owner: LeaseOwner
    acquired: float
    renewed: float
    renewals: int
    expires_in: float

    def describe(self) -> str:
        """One line for people: ``held by worker-3 pid 4121 task=backfill since 12:01:07, expires in 14 s``."""
        since = time.strftime("%H:%M:%S", time.localtime(self.acquired))
        o = self.owner
        return (
            f"held by {o.host} pid {o.pid} task={o.task} since {since}, "
            f"expires in {_seconds(self.expires_in)} (fence {self.fence}, {self.renewals} renewals)"
        )

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (the CLI's ``--json`` form)."""
        return {
            "name": self.name,
            "fence": self.fence,
            "host": self.owner.host,
            "pid": self.owner.pid,
            "task": self.owner.task,
            "acquired": self.acquired,
            "renewed": self.renewed,
            "renewals": self.renewals,
            "expires_in": self.expires_in,
        }


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


LeaseReply = tuple[bool, "LeaseInfo | None"]
"""The reply of ``lease_acquire``, ``lease_renew`` and ``lease_break``: ``(done, info)``.

When ``done`` is True, ``info`` describes the lease as the operation left it
(for ``lease_break``: the lease that was broken). When ``done`` is False,
``info`` describes whoever holds the name now, or is None when nobody does.
"""


@runtime_checkable
class LeaseBackend(Protocol):
    """A synchronous store of leases.

    Every method is one atomic step with respect to every other caller of the
    same name (in every thread and, for shared stores, every process), and a
    method that raises has changed nothing. Every stored key expires: nothing a
    crashed holder leaves behind outlives its TTL. Store failures are raised as
    `tokenbucket.BackendError`.
    """

    def lease_acquire(self, name: str, token: str, ttl: float, owner: LeaseOwner) -> LeaseReply:
        """Take the lease for ``ttl`` seconds if nobody holds it.

        On success the lease gets a fence larger than every earlier one for
        this name. Never waits.
        """
        ...

    def lease_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """Extend the lease to expire ``ttl`` seconds from now, if ``token`` still holds it.

        Never re-acquires: a lease that expired or is held by another token is
        reported as ``(False, current holder or None)`` and left alone.
        """
        ...

    def lease_release(self, name: str, token: str) -> bool:
        """Release the lease if ``token`` holds it, and wake the waiters. True if it did."""
        ...

    def lease_break(self, name: str, expect_fence: int) -> LeaseReply:
        """Remove the lease whoever holds it, only if its fence is ``expect_fence``; wake the waiters.

        An operator's tool: the fence makes sure the lease broken is the one
        that was inspected, not a newer acquisition.
        """
        ...

    def lease_inspect(self, name: str) -> LeaseInfo | None:
        """The lease held under ``name``, or None. Changes nothing."""
        ...

    def lease_list(self) -> list[LeaseInfo]:
        """Every lease held now, sorted by name. Changes nothing."""
        ...

    def lease_wait(self, name: str, timeout: float) -> bool:
        """Block until the lease is released or broken, or ``timeout`` seconds pass.

        Returns True when woken by a release. A wake-up is a hint, not a
        promise: the caller tries to acquire again either way.
        """
        ...


@runtime_checkable
class AsyncLeaseBackend(Protocol):
    """The asyncio twin of `LeaseBackend`: the same operations, awaitable."""

    async def lease_acquire(self, name: str, token: str, ttl: float, owner: LeaseOwner) -> LeaseReply:
        """See `LeaseBackend.lease_acquire`."""
        ...

    async def lease_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """See `LeaseBackend.lease_renew`."""
        ...

    async def lease_release(self, name: str, token: str) -> bool:
        """See `LeaseBackend.lease_release`."""
        ...

    async def lease_break(self, name: str, expect_fence: int) -> LeaseReply:
        """See `LeaseBackend.lease_break`."""
        ...

    async def lease_inspect(self, name: str) -> LeaseInfo | None:
        """See `LeaseBackend.lease_inspect`."""
        ...

    async def lease_list(self) -> list[LeaseInfo]:
        """See `LeaseBackend.lease_list`."""
        ...

    async def lease_wait(self, name: str, timeout: float) -> bool:
        """See `LeaseBackend.lease_wait`."""
        ...
