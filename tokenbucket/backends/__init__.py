"""Where bucket state lives: the backend protocols and the built-in stores.

`MemoryBackend` keeps state in this process; `RedisBackend` shares it through
Redis. A custom store implements `Backend` (or `AsyncBackend`) over the pure
arithmetic of `Policy` and the functions in ``tokenbucket._model``.
"""

from __future__ import annotations

from .._model import Policy, Snapshot
from ._base import BAND, AsyncBackend, Backend, ManyTicket, Ticket
from ._lease_base import AsyncLeaseBackend, LeaseBackend, LeaseInfo, LeaseOwner, LeaseReply
from ._memory import MemoryBackend
from ._redis import AsyncRedisBackend, RedisBackend
from ._redis_errors import redact_secret, redact_url
from ._slot_base import AsyncSlotBackend, SlotBackend, SlotReply, SlotsInfo

__all__ = [
    "AsyncBackend",
    "AsyncLeaseBackend",
    "AsyncRedisBackend",
    "AsyncSlotBackend",
    "BAND",
    "Backend",
    "LeaseBackend",
    "LeaseInfo",
    "LeaseOwner",
    "LeaseReply",
    "ManyTicket",
    "MemoryBackend",
    "Policy",
    "RedisBackend",
    "SlotBackend",
    "SlotReply",
    "SlotsInfo",
    "Snapshot",
    "Ticket",
    "redact_secret",
    "redact_url",
]
