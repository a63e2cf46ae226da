"""Concurrency-limit slots on Redis: the `SlotBackend` half of `RedisBackend` and `AsyncRedisBackend`.

Each operation is one ``EVALSHA`` of ``lua/slot_<operation>.lua`` behind the
prelude ``lua/slots.lua`` (where the keys are documented): every key of a name
shares one hash tag, so a limit lives in one Redis Cluster slot. Times are
Redis ``TIME``. A waiter blocks (``BLPOP``) on a list of its own that is pushed
when it may be served, instead of polling.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

from .._exceptions import BackendError, ConfigurationError
from ._lease_base import LeaseOwner, LeaseReply
from ._redis_errors import map_redis_errors
from ._redis_lease import FENCE_TTL, _info, _LeaseKeys, _ms, _reply
from ._slot_base import SlotReply, SlotsInfo

__all__ = ["AsyncRedisSlotStore", "RedisSlotStore", "slot_source"]

_MISMATCH = "tokenbucket-slots limit "


@functools.cache
def slot_source(name: str) -> str:
    """The text of ``lua/slot_<name>.lua`` with the prelude ``lua/slots.lua`` in front."""
    folder = resources.files("tokenbucket.backends").joinpath("lua")
    prelude = folder.joinpath("slots.lua").read_text(encoding="utf-8")
    return prelude + "\n" + folder.joinpath(f"slot_{name}.lua").read_text(encoding="utf-8")


def _slot_reply(reply: list[Any]) -> SlotReply:
    if int(reply[0]) == 1:
        return True, _info(reply[1:]), 0, None
    soonest = int(reply[2])
    return False, None, int(reply[1]), None if soonest < 0 else max(0.0, soonest / 1000)


def _slots_info(name: str, reply: list[Any]) -> SlotsInfo:
    limit, waiting, n = int(reply[0]), int(reply[1]), int(reply[2])
    holders = sorted((_info(reply[3 + 9 * i : 12 + 9 * i]) for i in range(n)), key=lambda info: info.fence)
    return SlotsInfo(name, limit, tuple(holders), waiting)


def _limit_mismatch(name: str, limit: int, exc: BackendError) -> ConfigurationError | None:
    text = str(exc.__cause__ or exc)
    at = text.find(_MISMATCH)
    if at < 0:
        return None
    stored = text[at + len(_MISMATCH) :].split()[0]
    return ConfigurationError(
        f"concurrency limit {name!r} is in use with limit={stored}, not {limit}: every user of a name must "
        "give the same limit (change it when no slot is held or awaited)"
    )


class _SlotKeys(_LeaseKeys):
    """Key names, arguments and replies shared by the sync and asyncio stores (BLPOP timeouts as for leases)."""

    _slot_scripts: dict[str, Any]

    def slot_keys(self, name: str) -> list[str]:
        """The Redis keys of concurrency limit ``name`` (one hash tag), as ``lua/slots.lua`` lists them."""
        if not isinstance(name, str):
            raise TypeError(f"a concurrency limit's name must be a string, not {type(name).__name__}")
        if not name:
            raise ConfigurationError("a concurrency limit's name must not be empty")
        tag = "{" + self._prefix + "slots:" + name + "}"
        return [f"{tag}:{part}" for part in ("holders", "owners", "line", "alive", "meta", "fence")]

    def _wake_key(self, name: str, token: str) -> str:
        return self.slot_keys(name)[0][: -len(":holders")] + ":wake:" + token

    def _slot_script(self, name: str) -> Any:
        scripts: dict[str, Any] | None = getattr(self, "_slot_scripts", None)
        if scripts is None:
            scripts = {}
            self._slot_scripts = scripts
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = self._client.register_script(slot_source(name))
        return script

    @staticmethod
    def _slot_acquire_args(
        name: str, token: str, limit: int, ttl: float, owner: LeaseOwner, wait_ttl: float
    ) -> list[str]:
        wait = "0" if wait_ttl <= 0 else _ms(wait_ttl)
        fence_ttl = _ms(max(FENCE_TTL, 10 * ttl))
        return [token, str(int(limit)), _ms(ttl), wait, owner.host, str(owner.pid), owner.task, name, fence_ttl]


class RedisSlotStore(_SlotKeys):
    """`tokenbucket.backends.SlotBackend` on a synchronous redis-py client (mixed into `RedisBackend`)."""

    def _run_slot(self, script: str, name: str, args: list[str], operation: str) -> Any:
        with map_redis_errors(operation, self._client):
            return self._slot_script(script)(self.slot_keys(name), args)

    def slot_acquire(
        self, name: str, token: str, limit: int, ttl: float, owner: LeaseOwner, wait_ttl: float
    ) -> SlotReply:
        """See `tokenbucket.backends.SlotBackend.slot_acquire`."""
        args = self._slot_acquire_args(name, token, limit, ttl, owner, wait_ttl)
        try:
            reply = self._run_slot("acquire", name, args, f"acquire of a slot of {name!r}")
        except BackendError as exc:
            mismatch = _limit_mismatch(name, limit, exc)
            if mismatch is not None:
                raise mismatch from None
            raise
        return _slot_reply(reply)

    def slot_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """See `tokenbucket.backends.SlotBackend.slot_renew`."""
        return _reply(self._run_slot("renew", name, [token, _ms(ttl), name], f"renewal of a slot of {name!r}"))

    def slot_release(self, name: str, token: str) -> bool:
        """See `tokenbucket.backends.SlotBackend.slot_release`."""
        return int(self._run_slot("release", name, [token], f"release of a slot of {name!r}")) == 1

    def slot_break(self, name: str, expect_fence: int) -> LeaseReply:
        """See `tokenbucket.backends.SlotBackend.slot_break`."""
        args = [str(int(expect_fence)), name]
        return _reply(self._run_slot("break", name, args, f"break of a slot of {name!r}"))

    def slot_inspect(self, name: str) -> SlotsInfo:
        """See `tokenbucket.backends.SlotBackend.slot_inspect`."""
        return _slots_info(name, self._run_slot("inspect", name, [name], f"inspect of {name!r}"))

    def slot_wait(self, name: str, token: str, timeout: float) -> bool:
        """See `tokenbucket.backends.SlotBackend.slot_wait`: BLPOP on the waiter's own list."""
        with map_redis_errors(f"waiting for a slot of {name!r}", self._client):
            return self._client.blpop([self._wake_key(name, token)], timeout=self._wait_seconds(timeout)) is not None


class AsyncRedisSlotStore(_SlotKeys):
    """`tokenbucket.backends.AsyncSlotBackend` on a ``redis.asyncio`` client (mixed into `AsyncRedisBackend`)."""

    async def _run_slot(self, script: str, name: str, args: list[str], operation: str) -> Any:
        with map_redis_errors(operation, self._client):
            return await self._slot_script(script)(self.slot_keys(name), args)

    async def slot_acquire(
        self, name: str, token: str, limit: int, ttl: float, owner: LeaseOwner, wait_ttl: float
    ) -> SlotReply:
        """See `tokenbucket.backends.SlotBackend.slot_acquire`."""
        args = self._slot_acquire_args(name, token, limit, ttl, owner, wait_ttl)
        try:
            reply = await self._run_slot("acquire", name, args, f"acquire of a slot of {name!r}")
        except BackendError as exc:
            mismatch = _limit_mismatch(name, limit, exc)
            if mismatch is not None:
                raise mismatch from None
            raise
        return _slot_reply(reply)

    async def slot_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """See `tokenbucket.backends.SlotBackend.slot_renew`."""
        args = [token, _ms(ttl), name]
        return _reply(await self._run_slot("renew", name, args, f"renewal of a slot of {name!r}"))

    async def slot_release(self, name: str, token: str) -> bool:
        """See `tokenbucket.backends.SlotBackend.slot_release`."""
        return int(await self._run_slot("release", name, [token], f"release of a slot of {name!r}")) == 1

    async def slot_break(self, name: str, expect_fence: int) -> LeaseReply:
        """See `tokenbucket.backends.SlotBackend.slot_break`."""
        args = [str(int(expect_fence)), name]
        return _reply(await self._run_slot("break", name, args, f"break of a slot of {name!r}"))

    async def slot_inspect(self, name: str) -> SlotsInfo:
        """See `tokenbucket.backends.SlotBackend.slot_inspect`."""
        return _slots_info(name, await self._run_slot("inspect", name, [name], f"inspect of {name!r}"))

    async def slot_wait(self, name: str, token: str, timeout: float) -> bool:
        """See `tokenbucket.backends.SlotBackend.slot_wait`: BLPOP on the waiter's own list."""
        with map_redis_errors(f"waiting for a slot of {name!r}", self._client):
            key = self._wake_key(name, token)
            return await self._client.blpop([key], timeout=self._wait_seconds(timeout)) is not None
