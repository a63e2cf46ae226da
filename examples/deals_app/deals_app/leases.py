"""The backfill's lease: `tokenbucket.LeaseLock` named "backfill_deals".

A lease has a TTL and is renewed by a heartbeat while its holder runs, so a
holder that crashes blocks the others for at most the TTL: the next backfill
takes over. Each acquisition gets a larger fence, and the store refuses a
checkpoint written with an older one (`tokenbucket.fencing.check_fence`), so a
holder that was paused past its TTL can never move the checkpoint back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tokenbucket import Lease, LeaseLock, NotAcquired

__all__ = ["LEASE_NAME", "LeaseHeld", "LeaseView", "backfill_lease", "list_leases"]

LEASE_NAME = "backfill_deals"


class LeaseHeld(Exception):
    """Someone else holds the lease and the wait for it ran out."""


@dataclass(frozen=True, slots=True)
class LeaseView:
    """A lease as ``status`` and the dashboard show it."""

    name: str
    fence: int
    holder: str
    expires_in: float
    renewals: int


@contextmanager
def backfill_lease(backend: Any, *, ttl: float, wait: float, task: str = "backfill") -> Iterator[Lease]:
    """Hold the "backfill_deals" lease for the body (heartbeat running); yields the `tokenbucket.Lease`.

    Args:
        backend: The tokenbucket backend holding leases (memory or Redis).
        ttl: Lease TTL in seconds.
        wait: Longest wait for a lease held by someone else.
        task: Shown as the holder's task.

    Raises:
        LeaseHeld: the lease stayed held for ``wait`` seconds.
        tokenbucket.LeaseLost: the lease was lost while the body ran.
    """
    lock = LeaseLock(LEASE_NAME, ttl=ttl, backend=backend, task=task)
    try:
        lease = lock.acquire(timeout=wait)
    except NotAcquired as exc:
        raise LeaseHeld(str(exc)) from exc
    with lease:
        yield lease


def list_leases(backend: Any) -> list[LeaseView]:
    """Every lease held now in ``backend``, with its holder."""
    return [
        LeaseView(i.name, i.fence, f"{i.owner.host} pid {i.owner.pid} task={i.owner.task}", i.expires_in, i.renewals)
        for i in backend.lease_list()
    ]
