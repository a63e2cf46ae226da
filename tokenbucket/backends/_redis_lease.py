"""Leases on Redis: the `LeaseBackend` half of `RedisBackend` and `AsyncRedisBackend`.

Each operation is one ``EVALSHA`` of a token-checked script
(``lua/lease_<operation>.lua`` behind the prelude ``lua/lease.lua``, where the
keys are documented). Times are Redis ``TIME``. Waiters block on a signal
list (``BLPOP``) that a release or a break pushes to, instead of polling.
Listing uses ``SCAN`` (never ``KEYS``).

The sync and asyncio classes share key names, arguments and reply parsing
(`_LeaseKeys`); each method is the one round trip and nothing else.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Any

from .._exceptions import ConfigurationError
from ._lease_base import LeaseInfo, LeaseOwner, LeaseReply
from ._redis_errors import map_redis_errors

__all__ = ["AsyncRedisLeaseStore", "RedisLeaseStore", "lease_source"]

FENCE_TTL = 30 * 24 * 3600.0
"""Seconds a lease's fence counter outlives its last acquisition (it is re-seeded from TIME after that)."""

_SCAN_COUNT = 500


@functools.cache
def lease_source(name: str) -> str:
    """The text of ``lua/lease_<name>.lua`` with the prelude ``lua/lease.lua`` in front, ready for SCRIPT LOAD."""
    folder = resources.files("tokenbucket.backends").joinpath("lua")
    prelude = folder.joinpath("lease.lua").read_text(encoding="utf-8")
    return prelude + "\n" + folder.joinpath(f"lease_{name}.lua").read_text(encoding="utf-8")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _info(fields: list[Any]) -> LeaseInfo:
    """A `LeaseInfo` from a script's info array (see ``lua/lease.lua``)."""
    fence, host, pid, task, acquired, renewed, renewals, pttl, name = (_text(f) for f in fields[:9])
    return LeaseInfo(
        name=name,
        fence=int(fence),
        owner=LeaseOwner(host, int(pid), task),
        acquired=float(acquired),
        renewed=float(renewed),
        renewals=int(renewals),
        expires_in=max(0.0, int(pttl) / 1000),
    )


def _reply(reply: list[Any]) -> LeaseReply:
    done = int(reply[0]) == 1
    return done, (_info(reply[1:]) if len(reply) > 1 else None)


def _ms(seconds: float) -> str:
    """A TTL in whole milliseconds, rounded up (the store never frees a lease before the holder's deadline)."""
    return str(max(1, math.ceil(seconds * 1000)))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _LeaseKeys:
    """Key names, arguments and replies shared by the sync and asyncio stores."""

    _client: Any
    _prefix: str
    _lease_scripts: dict[str, Any]

    def lease_keys(self, name: str) -> tuple[str, str, str]:
        """The Redis keys of lease ``name``: holder hash, fence counter, signal list (one hash tag).

        Raises:
            ConfigurationError: ``name`` is empty.
            TypeError: ``name`` is not a string.
        """
        if not isinstance(name, str):
            raise TypeError(f"lease name must be a string, not {type(name).__name__}")
        if not name:
            raise ConfigurationError("lease name must not be empty")
        tag = "{" + self._prefix + "lease:" + name + "}"
        return f"{tag}:lease", f"{tag}:fence", f"{tag}:signal"

    def _lease_pattern(self) -> str:
        return "{" + _glob_escape(self._prefix) + "lease:*}:lease"

    def _lease_script(self, name: str) -> Any:
        scripts: dict[str, Any] | None = getattr(self, "_lease_scripts", None)
        if scripts is None:
            scripts = self._lease_scripts = {}
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = self._client.register_script(lease_source(name))
        return script

    def _acquire_args(self, name: str, token: str, ttl: float, owner: LeaseOwner) -> tuple[list[str], list[str]]:
        lease, fence, _ = self.lease_keys(name)
        fence_ttl = max(FENCE_TTL, 10 * ttl)
        args = [token, _ms(ttl), owner.host, str(owner.pid), owner.task, name, _ms(fence_ttl)]
        return [lease, fence], args

    def _wait_seconds(self, timeout: float) -> float:
        """A BLPOP timeout: positive (0 would block for ever), and within the client's socket timeout."""
        seconds = max(0.01, timeout)
        try:
            socket_timeout = self._client.connection_pool.connection_kwargs.get("socket_timeout")
        except AttributeError:  # a cluster client
            socket_timeout = None
        if socket_timeout:
            seconds = min(seconds, max(0.01, float(socket_timeout) - 0.5))
        return seconds


class RedisLeaseStore(_LeaseKeys):
    """`tokenbucket.backends.LeaseBackend` on a synchronous redis-py client (mixed into `RedisBackend`)."""

    def _run(self, script: str, keys: list[str], args: list[str], operation: str) -> Any:
        with map_redis_errors(operation, self._client):
            return self._lease_script(script)(keys, args)

    def lease_acquire(self, name: str, token: str, ttl: float, owner: LeaseOwner) -> LeaseReply:
        """See `tokenbucket.backends.LeaseBackend.lease_acquire`."""
        keys, args = self._acquire_args(name, token, ttl, owner)
        return _reply(self._run("acquire", keys, args, f"acquire of lease {name!r}"))

    def lease_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """See `tokenbucket.backends.LeaseBackend.lease_renew`."""
        keys = [self.lease_keys(name)[0]]
        return _reply(self._run("renew", keys, [token, _ms(ttl)], f"renewal of lease {name!r}"))

    def lease_release(self, name: str, token: str) -> bool:
        """See `tokenbucket.backends.LeaseBackend.lease_release`."""
        lease, _, signal = self.lease_keys(name)
        return int(self._run("release", [lease, signal], [token], f"release of lease {name!r}")) == 1

    def lease_break(self, name: str, expect_fence: int) -> LeaseReply:
        """See `tokenbucket.backends.LeaseBackend.lease_break`."""
        lease, _, signal = self.lease_keys(name)
        fence = str(int(expect_fence))
        return _reply(self._run("break", [lease, signal], [fence], f"break of lease {name!r}"))

    def lease_inspect(self, name: str) -> LeaseInfo | None:
        """See `tokenbucket.backends.LeaseBackend.lease_inspect`."""
        return _reply(self._run("inspect", [self.lease_keys(name)[0]], [], f"inspect of lease {name!r}"))[1]

    def lease_list(self) -> list[LeaseInfo]:
        """See `tokenbucket.backends.LeaseBackend.lease_list`: SCAN (never KEYS), then inspect each."""
        found: list[LeaseInfo] = []
        keys: set[str] = set()
        for node, where in _scan_targets(self._client):  # every primary of a cluster: never a partial answer
            with map_redis_errors(f"listing leases{where}", self._client):
                scan = self._client.scan_iter(match=self._lease_pattern(), count=_SCAN_COUNT, **node)
                keys.update(_text(k) for k in scan)
        with map_redis_errors("listing leases", self._client):
            for key in sorted(keys):
                reply = self._lease_script("inspect")([key], [])
                if int(reply[0]) == 1:
                    found.append(_info(reply[1:]))
        return sorted(found, key=lambda info: info.name)

    def lease_wait(self, name: str, timeout: float) -> bool:
        """See `tokenbucket.backends.LeaseBackend.lease_wait`: BLPOP on the signal list."""
        signal = self.lease_keys(name)[2]
        with map_redis_errors(f"waiting for lease {name!r}", self._client):
            return self._client.blpop([signal], timeout=self._wait_seconds(timeout)) is not None


def _scan_targets(client: Any) -> list[tuple[dict[str, Any], str]]:
    """Where a SCAN must go: ``({}, "")`` for one server; each primary of a cluster, named for errors."""
    if not hasattr(client, "get_primaries"):
        return [({}, "")]
    return [({"target_nodes": node}, f" on node {node.host}:{node.port}") for node in client.get_primaries()]


class AsyncRedisLeaseStore(_LeaseKeys):
    """`tokenbucket.backends.AsyncLeaseBackend` on a ``redis.asyncio`` client (mixed into `AsyncRedisBackend`)."""

    async def _run(self, script: str, keys: list[str], args: list[str], operation: str) -> Any:
        with map_redis_errors(operation, self._client):
            return await self._lease_script(script)(keys, args)

    async def lease_acquire(self, name: str, token: str, ttl: float, owner: LeaseOwner) -> LeaseReply:
        """See `tokenbucket.backends.LeaseBackend.lease_acquire`."""
        keys, args = self._acquire_args(name, token, ttl, owner)
        return _reply(await self._run("acquire", keys, args, f"acquire of lease {name!r}"))

    async def lease_renew(self, name: str, token: str, ttl: float) -> LeaseReply:
        """See `tokenbucket.backends.LeaseBackend.lease_renew`."""
        keys = [self.lease_keys(name)[0]]
        return _reply(await self._run("renew", keys, [token, _ms(ttl)], f"renewal of lease {name!r}"))

    async def lease_release(self, name: str, token: str) -> bool:
        """See `tokenbucket.backends.LeaseBackend.lease_release`."""
        lease, _, signal = self.lease_keys(name)
        return int(await self._run("release", [lease, signal], [token], f"release of lease {name!r}")) == 1

    async def lease_break(self, name: str, expect_fence: int) -> LeaseReply:
        """See `tokenbucket.backends.LeaseBackend.lease_break`."""
        lease, _, signal = self.lease_keys(name)
        fence = str(int(expect_fence))
        return _reply(await self._run("break", [lease, signal], [fence], f"break of lease {name!r}"))

    async def lease_inspect(self, name: str) -> LeaseInfo | None:
        """See `tokenbucket.backends.LeaseBackend.lease_inspect`."""
        reply = await self._run("inspect", [self.lease_keys(name)[0]], [], f"inspect of lease {name!r}")
        return _reply(reply)[1]

    async def lease_list(self) -> list[LeaseInfo]:
        """See `tokenbucket.backends.LeaseBackend.lease_list`: SCAN (never KEYS), then inspect each."""
        found: list[LeaseInfo] = []
        keys: set[str] = set()
        if hasattr(self._client, "get_primaries"):
            with map_redis_errors("listing leases", self._client):
                await self._client.initialize()  # an asyncio cluster client learns its nodes on first use
        for node, where in _scan_targets(self._client):
            with map_redis_errors(f"listing leases{where}", self._client):
                scan = self._client.scan_iter(match=self._lease_pattern(), count=_SCAN_COUNT, **node)
                keys.update([_text(k) async for k in scan])
        with map_redis_errors("listing leases", self._client):
            for key in sorted(keys):
                reply = await self._lease_script("inspect")([key], [])
                if int(reply[0]) == 1:
                    found.append(_info(reply[1:]))
        return sorted(found, key=lambda info: info.name)

    async def lease_wait(self, name: str, timeout: float) -> bool:
        """See `tokenbucket.backends.LeaseBackend.lease_wait`: BLPOP on the signal list."""
        signal = self.lease_keys(name)[2]
        with map_redis_errors(f"waiting for lease {name!r}", self._client):
            return await self._client.blpop([signal], timeout=self._wait_seconds(timeout)) is not None
