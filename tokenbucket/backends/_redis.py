"""`RedisBackend` and `AsyncRedisBackend`: bucket state shared through Redis.

Every bucket operation is one ``EVALSHA`` of a Lua script from
``tokenbucket/backends/lua/`` (package data shared by both classes), so each is
atomic and costs one round trip. The scripts implement the arithmetic of
``tokenbucket._model`` exactly; a differential test keeps the two identical.

redis-py is imported only when a backend is built, so ``import tokenbucket``
works without the ``redis`` extra.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import random
import re
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from .._exceptions import BackendError, ConfigurationError, CostExceedsCapacity, PolicyMismatch
from .._model import Policy, Snapshot, describe, lane_max_cost, refundable
from .._validate import check_nonnegative, check_positive
from ._base import BAND, ManyTicket, Ticket, check_parts
from ._redis_errors import describe_server, map_redis_errors, unreachable
from ._redis_lease import AsyncRedisLeaseStore, RedisLeaseStore
from ._redis_slots import AsyncRedisSlotStore, RedisSlotStore

if TYPE_CHECKING:
    from types import TracebackType

    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster

    SyncClient = redis.Redis | redis.cluster.RedisCluster
    AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

__all__ = ["AsyncRedisBackend", "OnUnavailable", "RedisBackend", "lua_source", "map_redis_errors", "parse_state"]

OnUnavailable = Literal["raise", "allow", "deny"]
"""What ``reserve`` does when Redis cannot be reached; see `RedisBackend`."""

_ON_UNAVAILABLE = ("raise", "allow", "deny")

UNAVAILABLE_RETRY_AFTER = 1.0
"""The ``retry_after`` of a request denied because Redis is unreachable (``on_unavailable="deny"``)."""

_log = logging.getLogger("tokenbucket.redis")

_CACHE_LIMIT = 4096


@functools.cache
def lua_source(name: str) -> str:
    """The text of the Lua script ``lua/<name>.lua`` shipped with the package.

    A ``bucket_*`` script is returned with the shared prelude ``bucket.lua``
    in front of it, ready for ``SCRIPT LOAD``, and before that the line
    setting the prelude's ``WRITES`` (false only for ``bucket_snapshot``),
    ``ADOPT`` (true only for ``bucket_reconfigure``), ``RECORDS`` (``'each'`` for
    ``bucket_reserve``, ``'reserve'`` for ``bucket_reserve_lane``, ``'settle'`` for
    ``bucket_settle``: the scripts that remember their calls; else false) and
    ``REFUNDS`` (true for ``bucket_cancel``, ``bucket_settle``, ``bucket_void``).

    Raises:
        FileNotFoundError: there is no such script.
    """
    folder = resources.files("tokenbucket.backends").joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name.startswith("bucket_"):
        writes = "false" if name == "bucket_snapshot" else "true"
        prelude = folder.joinpath("bucket.lua").read_text(encoding="utf-8")
        adopt = "true" if name == "bucket_reconfigure" else "false"
        records = {"bucket_reserve": "'each'", "bucket_reserve_lane": "'reserve'", "bucket_settle": "'settle'"}.get(
            name, "false"
        )
        refunds = "true" if name in ("bucket_cancel", "bucket_settle", "bucket_void") else "false"
        flags = f"local WRITES, ADOPT, RECORDS, REFUNDS = {writes}, {adopt}, {records}, {refunds}"
        text = f"{flags}\n{prelude}\n{text}"
    return text


_POLICY = struct.Struct("<6d")
"""A policy as the bucket scripts take it (ARGV[2], see ``lua/bucket.lua``)."""

_STATE = struct.Struct("<11d")
_STATE_FIELDS = (
    *("tokens", "updated", "last_id", "last_start", "epoch"),
    *("cap", "refill", "overdraft", "min_start", "initial", "idle_ms"),  # the policy, as in ARGV[2]
)
_STATE_0_1 = struct.Struct("<10d")
"""The state as tokenbucket 0.1 wrote it: no epoch (times count from 0)."""

_MISMATCH = re.compile(r"tokenbucket-policy (\S+) (\S+) (\S+) (\S+) (\S+)")
"""The error a bucket script returns for a policy other than the stored one (see ``lua/bucket.lua``)."""

_MISMATCH_PART = re.compile(r"tokenbucket-policy (\S+) (\S+) (\S+) (\S+) (\S+) (\d+)")
"""The same error from ``lua/reserve_all.lua``, which adds the number of the part (from 1)."""


def parse_state(raw: bytes | None) -> dict[str, float] | None:
    """The fields of a bucket key's value (``{<prefix><name>}:bucket``, see ``lua/bucket.lua``); None if missing.

    The fields are ``tokens``, ``updated``, ``last_id``, ``last_start`` (absent
    when no reservation waits), ``epoch`` (what ``updated`` and ``last_start``
    count from: ``1.78e9`` on the server's clock, 0 on a client's), and the
    policy: ``cap``, ``refill``, ``overdraft``, ``min_start``, ``initial``,
    ``idle_ms``. For operators (the CLI).

    Raises:
        ValueError: ``raw`` is not a bucket's state.
    """
    if raw is None:
        return None
    if isinstance(raw, bytes) and len(raw) == _STATE_0_1.size:
        old = _STATE_0_1.unpack(raw)
        raw = _STATE.pack(*old[:4], 0.0, *old[4:])
    if not isinstance(raw, bytes) or len(raw) < _STATE.size or (len(raw) - _STATE.size) % 16:
        raise ValueError(f"not the state of a tokenbucket bucket ({_STATE.size} bytes, 16 more per call): {raw[:99]!r}")
    state = dict(zip(_STATE_FIELDS, _STATE.unpack(raw[: _STATE.size]), strict=True))
    if state["last_start"] == -math.inf:
        del state["last_start"]
    return state


_POOL_SIZE = 100
"""Connections a client made by ``from_url`` opens at most; more callers wait for a free one."""


GIVE_BACK_SECONDS = 600.0
"""How long a backend keeps trying to give back the tokens of a reserve whose reply was lost."""

_MEND_EVERY = 0.5
"""Seconds between attempts to give back the tokens of reserves whose reply was lost."""


@dataclass(frozen=True)
class _Lost:
    """A reserve whose reply never came: it may or may not have run. Its tokens are given back later."""

    key: str
    policy: Policy
    call: bytes  # the call's id (the ring of lua/bucket.lua)
    cost: float
    now: float | None  # the time the call was made with (None: the server's clock)
    sent: float  # time.monotonic() when it was sent


_LOST_LIMIT = 10_000
"""Lost reserves a backend remembers at most, to give back."""

BATCH_MAX = 16
"""The most reserves one coalesced call carries: half the 32 calls the ring of ``lua/bucket.lua``
remembers, so a batch retried after a dropped connection still finds each of its calls there."""

_Outcome = Ticket | BaseException
"""What a reserve that went out in a coalesced call comes to: its ticket, or the error to raise."""


class _Wakeup:
    """A waiting thread's turn: `wait` blocks until `wake` (a second `wake` does nothing).

    A bare lock, held from the start, is the cheapest thing a thread can block on (an Event is
    a Condition and a lock); `wake` is called under the backend's lines lock.
    """

    __slots__ = ("_lock", "_woken")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._woken = False

    def wait(self) -> None:
        self._lock.acquire()

    def wake(self) -> None:
        if not self._woken:
            self._woken = True
            self._lock.release()


class _Request:
    """A reserve waiting in its bucket's line to go out with the next coalesced call.

    ``args`` are its ARGV (see ``lua/bucket_reserve.lua``: time, policy, cost,
    max_wait, call id); ``ready`` is woken (a `_Wakeup`) or resolved (an
    asyncio future) once its ``outcome`` is known, or, for threads, when it is
    to lead the next call (``batch``: the requests that call carries).
    """

    __slots__ = ("abandoned", "args", "batch", "cost", "outcome", "ready")

    def __init__(self, cost: float, args: list[bytes], ready: Any) -> None:
        self.cost = cost
        self.args = args
        self.ready = ready
        self.batch: list[_Request] | None = None
        self.outcome: _Outcome | None = None
        self.abandoned = False  # its caller stopped waiting after it went out: its tokens are given back


def _maybe_ran(exc: BackendError) -> bool:
    """Whether the call behind ``exc`` may have reached Redis (not a connection that was never made)."""
    return " connecting to " not in str(exc.__cause__)


def _timed_out(exc: BackendError) -> bool:
    """Whether the call behind ``exc`` ran out of time waiting for its reply."""
    import redis.exceptions

    return isinstance(exc.__cause__, (redis.exceptions.TimeoutError, asyncio.TimeoutError, TimeoutError))


def _client_options(
    socket_timeout: float, connect_timeout: float, options: dict[str, Any], *, cluster: bool, asyncio: bool
) -> dict[str, Any]:
    """Defaults for clients made by ``from_url``: a dead server fails within seconds."""
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    defaults: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    if not cluster:
        # from_url builds a pool that waits for a free connection (bounded) instead of failing at once
        # when every one is in use: many callers in one process are a busy client, not an outage.
        defaults["max_connections"] = _POOL_SIZE
        defaults["timeout"] = socket_timeout + connect_timeout  # the longest wait for a free connection
        # Retry once, at once, and only when the connection failed (a restarted server, a dropped idle
        # socket). A timeout is not retried: the script may have run, and running it twice would charge twice.
        if asyncio:
            from redis.asyncio.retry import Retry as AsyncRetry

            defaults["retry"] = AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        else:
            from redis.retry import Retry

            defaults["retry"] = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    defaults.update(options)
    return defaults


class _RedisCommon:
    """Configuration, key names and the encoding of arguments and replies, shared by both classes."""

    server_clock = True
    """Redis ``TIME`` is one clock for every host: front ends pass ``now=None`` unless given a clock."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        on_unavailable: OnUnavailable,
        idle_ttl: float,
        coalesce: bool,
        owns_client: bool,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
        if "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"prefix {prefix!r} must not contain braces: the backend wraps '<prefix><name>' in a hash tag"
            )
        if on_unavailable not in _ON_UNAVAILABLE:
            raise ConfigurationError(f"on_unavailable must be 'raise', 'allow' or 'deny', not {on_unavailable!r}")
        idle = check_nonnegative("idle_ttl", idle_ttl)
        if not isinstance(coalesce, bool):
            raise TypeError(f"coalesce must be True or False, not {coalesce!r}")
        self._client = client
        self._coalesce = coalesce
        # The reserves waiting to go out, per line (bucket key, packed policy, time): a line is
        # present while a reserve of it is out, and lists the requests that arrived meanwhile.
        self._lines: dict[tuple[str, bytes, bytes], list[_Request]] = {}
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        self._socket_timeout: float = kwargs.get("socket_timeout") or math.inf
        self._prefix = prefix
        self._on_unavailable: OnUnavailable = on_unavailable
        self._idle_ttl = idle
        self._idle_ms = math.ceil(idle * 1000)
        self._owns_client = owns_client
        self._scripts: dict[str, Any] = {}
        self._keys: dict[str, tuple[str, str, str]] = {}
        self._policies: dict[Policy, bytes] = {}
        self._wire: dict[str, list[bytes]] = {}
        self._outage = False
        self._lost: list[_Lost] = []
        self._closed = False  # set by close()/aclose(): the give-back stops
        from redis.exceptions import NoScriptError

        self._noscript = NoScriptError
        # A cluster client routes one script by its keys: reserve_all checks they share a slot.
        import redis.asyncio.cluster
        import redis.cluster

        self._cluster = isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))

    @property
    def prefix(self) -> str:
        """The text in front of every bucket name in key names."""
        return self._prefix

    @property
    def on_unavailable(self) -> OnUnavailable:
        """What ``reserve`` does when Redis is unreachable: ``"raise"``, ``"allow"`` or ``"deny"``."""
        return self._on_unavailable

    @property
    def idle_ttl(self) -> float:
        """Seconds a full bucket with nothing pending is kept before Redis expires it."""
        return self._idle_ttl

    @property
    def coalesce(self) -> bool:
        """Whether reserves made at once in this process for one bucket go out as one script call."""
        return self._coalesce

    def __repr__(self) -> str:
        return f"{type(self).__name__}({describe_server(self._client)}, prefix={self._prefix!r})"

    def bucket_keys(self, name: str) -> tuple[str, str, str]:
        """The Redis keys of bucket ``name``: its state hash, queue (sorted set) and costs hash.

        They share the hash tag ``{<prefix><name>}``, so a bucket lives in one
        Redis Cluster slot. Each key carries a TTL. Bandwidth ``n`` of a bucket
        with several (key ``<name>\\x1f<n>``) has the keys of ``name`` with
        ``:<n>`` after them, in the same slot.

        Raises:
            ConfigurationError: ``name`` is empty, or would make an empty hash tag.
        """
        keys = self._keys.get(name)
        if keys is None:
            if not isinstance(name, str):
                raise TypeError(f"name must be a string, not {type(name).__name__}")
            base, _, band = name.partition(BAND)  # a bandwidth lives beside its bucket: one hash tag
            tag = "{" + self._prefix + base + "}"
            if not base or tag.startswith("{}"):
                raise ConfigurationError(f"bucket name {name!r} with prefix {self._prefix!r} makes an empty hash tag")
            end = f":{band}" if band else ""
            keys = (f"{tag}:bucket{end}", f"{tag}:queue{end}", f"{tag}:costs{end}")
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            self._keys[name] = keys
        return keys

    def _wire_keys(self, name: str) -> list[bytes]:
        """`bucket_keys`, encoded once."""
        keys = self._wire.get(name)
        if keys is None:
            keys = [k.encode() for k in self.bucket_keys(name)]
            if len(self._wire) >= _CACHE_LIMIT:
                self._wire.clear()
            self._wire[name] = keys
        return keys

    def _lane_keys(self, name: str) -> list[bytes]:
        """`_wire_keys` and the bucket's lanes hash (``lua/bucket_reserve_lane.lua``)."""
        keys = self._wire_keys(name)
        return [*keys, keys[0].replace(b":bucket", b":lanes", 1)]

    def _lane_args(
        self, policy: Policy, cost: float, hold: float, max_wait: float | None, now: float | None, call: bytes
    ) -> list[bytes]:
        limit = lane_max_cost(policy, hold)
        if cost > limit:  # before any round trip: nothing charged
            raise CostExceedsCapacity(cost, max(0.0, limit), hold)
        wait = b"" if max_wait is None else repr(float(max_wait)).encode()
        return self._args(policy, now, repr(cost).encode(), repr(float(hold)).encode(), wait, call)

    def _args(self, policy: Policy, now: float | None, *extra: bytes) -> list[bytes]:
        """ARGV for a bucket script (see ``lua/bucket.lua``), encoded once so redis-py sends them as they are."""
        packed = self._policies.get(policy)
        if packed is None:
            packed = _POLICY.pack(*policy.fingerprint(), self._idle_ms)
            if len(self._policies) >= _CACHE_LIMIT:
                self._policies.clear()
            self._policies[policy] = packed
        return [b"" if now is None else repr(float(now)).encode(), packed, *extra]

    @staticmethod
    def _call_id() -> bytes:
        """A new id for one reserve or settle: 8 random bytes (the ring of ``lua/bucket.lua``)."""
        return random.getrandbits(64).to_bytes(8, "little")

    def _deadline(self, max_wait: float | None) -> float | None:
        """The longest a reserve with ``max_wait`` may wait for its reply, when shorter than the socket's."""
        if not max_wait or max_wait >= self._socket_timeout:
            return None
        return max_wait

    def _lose(self, lost: _Lost) -> None:
        """Remember a reserve whose reply was lost, to give its tokens back when Redis answers again."""
        raise NotImplementedError

    def _keep_lost(self, lost: _Lost) -> None:
        """Add ``lost`` to the list; past `_LOST_LIMIT` the oldest is forgotten (its tokens stay spent)."""
        if len(self._lost) >= _LOST_LIMIT:
            dropped = self._lost.pop(0)
            _log.warning("too many lost reserves to give back; %g tokens on %r stay spent", dropped.cost, dropped.key)
        self._lost.append(lost)

    def _mend_soon(self) -> None:
        """Make sure the lost reserves are being given back."""
        raise NotImplementedError

    def _unanswered(self, exc: BackendError, lost: _Lost, deadline: float | None) -> Ticket:
        """The ticket of a reserve that got no reply (or raise): a stalled or unreachable Redis."""
        if not unreachable(exc):
            raise exc
        if _maybe_ran(exc):
            self._lose(lost)
        if deadline is not None and _timed_out(exc):
            return False, UNAVAILABLE_RETRY_AFTER, None  # its caller's timeout ran out on the round trip
        if self._on_unavailable == "raise":
            raise exc
        return self._fallback(exc, lost.key)

    def _answered(self, reply: Any) -> Ticket:
        """The ticket of a reserve that got its reply; Redis answers, so the lost ones can be given back."""
        if self._outage:
            self._recovered()
        if self._lost:
            self._mend_soon()
        return _AT_ONCE if reply is None else _ticket(reply)

    def _unanswered_all(
        self,
        exc: BackendError,
        parts: Sequence[tuple[str, Policy, float]],
        call: bytes,
        now: float | None,
        deadline: float | None,
    ) -> ManyTicket:
        """`_unanswered` for ``reserve_all``: every part is given back (``bucket_void`` is per bucket).

        Raises the `PolicyMismatch` the script reported for a part, if that is what ``exc`` is.
        """
        mismatch = _mismatch_all(exc, parts)
        if mismatch is not None:
            raise mismatch from None
        sent = time.monotonic()
        lost = [_Lost(key, policy, call, cost, now, sent) for key, policy, cost in parts]
        if unreachable(exc) and _maybe_ran(exc):
            for more in lost[1:]:  # (`_unanswered` keeps the first)
                self._lose(more)
        admitted, seconds, _ = self._unanswered(exc, lost[0], deadline)
        return admitted, seconds, (None,) * len(parts) if admitted else ()

    def _take_batch(self, line: tuple[str, bytes, bytes]) -> list[_Request] | None:
        """The requests of ``line`` the next call carries (up to `BATCH_MAX`), or None when none waits.

        With none waiting the line is closed: the next reserve goes straight out. Called under the lines' lock.
        """
        waiting = self._lines[line]
        if not waiting:
            del self._lines[line]
            return None
        batch = waiting[:BATCH_MAX]
        del waiting[:BATCH_MAX]
        return batch

    def _batch_outcomes(
        self, key: str, policy: Policy, now: float | None, batch: list[_Request], reply: Any, sent: float
    ) -> list[_Outcome]:
        """The outcome of each request of a coalesced call from its reply, or from the `BackendError` it raised."""
        if not isinstance(reply, BackendError):
            self._answered(None)
            return [_ticket(each) for each in reply.split(b"," if isinstance(reply, bytes) else ",")]
        outcomes: list[_Outcome] = []
        for request in batch:
            lost = _Lost(key, policy, request.args[-1], request.cost, now, sent)
            try:
                outcomes.append(self._unanswered(reply, lost, None))
            except BackendError as exc:
                outcomes.append(exc)
        return outcomes

    def _abandon(self, key: str, policy: Policy, now: float | None, request: _Request, sent: float) -> None:
        """Give back the tokens of a request that went out and whose caller stopped waiting."""
        outcome = request.outcome  # (giving back is idempotent: a call given back already gets nothing more)
        if isinstance(outcome, tuple) and outcome[0]:
            self._lose(_Lost(key, policy, request.args[-1], request.cost, now, sent))

    def _reserve_args(
        self, policy: Policy, cost: float, max_wait: float | None, now: float | None, call: bytes
    ) -> list[bytes]:
        policy.check(cost)  # CostExceedsCapacity before any round trip: nothing charged
        wait = b"" if max_wait is None else repr(float(max_wait)).encode()
        return self._args(policy, now, repr(cost).encode(), wait, call)

    def _reserve_all_args(
        self, parts: Sequence[tuple[str, Policy, float]], max_wait: float | None, now: float | None, call: bytes
    ) -> tuple[list[bytes], list[bytes]]:
        """KEYS and ARGV for ``lua/reserve_all.lua``, after every check (nothing charged when one fails)."""
        check_parts(parts)
        for _, policy, cost in parts:
            policy.check(cost)
        keys = [k for key, _, _ in parts for k in self._wire_keys(key)]
        if self._cluster:
            from redis.crc import key_slot

            slots = {key_slot(k) for k in keys}
            if len(slots) > 1:
                names = [key for key, _, _ in parts]
                raise ConfigurationError(
                    f"buckets {names} are in different Redis Cluster slots, so they cannot be reserved in one step: "
                    "give them one hash-tag group, a name that starts with the same '{group}' "
                    "(for example '{tenant-42}:requests' and '{tenant-42}:tokens')"
                )
        args = [
            b"" if now is None else repr(float(now)).encode(),
            b"" if max_wait is None else repr(float(max_wait)).encode(),
            call,
        ]
        for _, policy, cost in parts:
            args += self._args(policy, None, repr(cost).encode())[1:]
        return keys, args

    def _script(self, name: str) -> Any:
        """The redis-py script object for ``lua/<name>.lua`` (EVALSHA, reloaded on NOSCRIPT)."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._client.register_script(lua_source(name))
        return script

    def _fallback(self, exc: BackendError, key: str) -> Ticket:
        """The ticket ``reserve`` returns when Redis is unreachable and ``on_unavailable`` is not "raise"."""
        if not self._outage:
            self._outage = True
            _log.warning(
                "Redis unreachable; %s requests for bucket %r until it is back: %s",
                "admitting" if self._on_unavailable == "allow" else "denying",
                key,
                exc,
            )
        if self._on_unavailable == "allow":
            return True, 0.0, None
        return False, UNAVAILABLE_RETRY_AFTER, None

    def _recovered(self) -> None:
        if self._outage:
            self._outage = False
            _log.warning("Redis reachable again: %s", describe_server(self._client))


_AT_ONCE: Ticket = (True, 0.0, None)
_AT_ONCE_REPLIES = (b"1 0 0", "1 0 0")
_VOID_REPLIES = (b"void", "void")


def _to_lead(batch: list[_Request] | None) -> None:
    """Wake the first thread of ``batch`` to send the call for it (threads; under the lines lock)."""
    if batch:
        batch[0].batch = batch
        batch[0].ready.wake()


def _ticket(reply: Any) -> Ticket:
    """A `Ticket` from ``bucket_reserve``'s ``"<admitted> <seconds> <id>"`` (bytes, or str when decoding)."""
    if reply in _AT_ONCE_REPLIES:  # the common reply, without parsing
        return _AT_ONCE
    if reply in _VOID_REPLIES:  # a call its client had given up on: it charged nothing
        return False, UNAVAILABLE_RETRY_AFTER, None
    admitted, seconds, rid = reply.split()
    return admitted in (b"1", "1"), float(seconds), (int(rid) or None)


def _mismatch(exc: BackendError, key: str, args: list[bytes]) -> PolicyMismatch | None:
    """The `PolicyMismatch` a bucket script reported in ``exc``, if that is what it reports."""
    found = _MISMATCH.search(str(exc.__cause__))
    if found is None:
        return None
    stored = tuple(float(field) for field in found.groups())
    return PolicyMismatch(key, stored, _POLICY.unpack(args[1])[:5])


def _mismatch_all(exc: BackendError, parts: Sequence[tuple[str, Policy, float]]) -> PolicyMismatch | None:
    """The `PolicyMismatch` ``reserve_all.lua`` reported in ``exc`` (it names the part), if it reports one."""
    found = _MISMATCH_PART.search(str(exc.__cause__))
    if found is None:
        return None
    key, policy, _ = parts[int(found.group(6)) - 1]
    return PolicyMismatch(key, tuple(float(field) for field in found.groups()[:5]), policy.fingerprint())


def _tickets(reply: Any) -> ManyTicket:
    """A `ManyTicket` from ``reserve_all``'s ``"<admitted> <seconds> <id> ..."``."""
    if reply in _VOID_REPLIES:
        return False, UNAVAILABLE_RETRY_AFTER, ()
    admitted, seconds, *ids = reply.split()
    if admitted not in (b"1", "1"):
        return False, float(seconds), ()
    return True, float(seconds), tuple(int(rid) or None for rid in ids)


def _describe(reply: Any, policy: Policy) -> Snapshot:
    """A `Snapshot` from a script's ``"<tokens> <promised>"``."""
    tokens, promised = reply.split()
    return describe(float(tokens), float(promised), policy)


class RedisBackend(RedisLeaseStore, RedisSlotStore, _RedisCommon):
    """Bucket state in Redis, shared by every thread, process and host that uses it.

    Build it from a URL or around a client you configured:

        backend = RedisBackend.from_url("redis://localhost:6379/0", prefix="tb:")
        backend = RedisBackend(client=redis.Redis(...))          # or redis.cluster.RedisCluster(...)
        bucket = TokenBucket("keepa", rate="5/minute", capacity=300, overdraft=math.inf, backend=backend)

    Every operation is atomic and one round trip (``EVALSHA``; the script is
    loaded again by itself after a ``SCRIPT FLUSH`` or a restart). Use
    `AsyncRedisBackend` with `tokenbucket.AsyncTokenBucket`.

    Where the state lives: per bucket, three keys sharing the hash tag
    ``{<prefix><name>}`` (see `bucket_keys`), so the backend works on Redis
    Cluster. Every key has a TTL: at least the time until the bucket is full
    again or its last waiting reservation starts, whichever is later, plus
    ``idle_ttl``; at most that plus ``max(idle_ttl, 1 s)`` of slack, which
    lets most operations skip resetting TTLs. A full, idle bucket therefore
    disappears within ``2 × idle_ttl`` and Redis holds nothing for buckets
    nobody uses.

    Lost state: if the keys vanish (eviction, or a restart without
    persistence) the next operation recreates the bucket with ``initial``
    tokens, as for a new bucket. ``initial = capacity`` (the default) trusts
    that the upstream refilled meanwhile: after a crash the callers may
    spend a full bucket at once, which can overrun an upstream that was in
    debt. ``initial = 0`` is the safe choice when the upstream punishes
    overruns: the bucket refills from empty (a wait of ``capacity / rate``),
    and also after an idle spell longer than ``idle_ttl`` (to ``2 × idle_ttl``). Either way,
    ``sync(remaining)`` with the upstream's reported balance corrects it.
    Reservation ids come from a per-bucket counter seeded from the server
    clock, so an id issued before a loss never matches one issued after.

    Time: the scripts read Redis ``TIME``, one clock for every host, so
    hosts with skewed clocks agree (``server_clock`` is True). When a front
    end passes ``now`` (it was given a clock, such as
    `tokenbucket.testing.ManualClock`) the scripts use that instead; TTLs are
    durations, so they stay sensible with any clock.

    Redis unreachable: every redis-py failure is raised as
    `tokenbucket.BackendError` naming the operation and the server
    (password redacted), with the redis-py error as ``__cause__``. One
    caveat no remote store escapes: after a *timeout* the script may still
    have run on the server (the reply was lost, not the command), so a
    timed-out ``reserve`` may have charged its cost. That is why the client
    made by `from_url` retries a failed connection but never a timeout.
    ``on_unavailable`` decides what ``reserve`` (and so ``acquire``,
    ``try_acquire``) does when the server cannot be reached (connection
    refused, reset or timed out); a server that answers with an error always
    raises:

    * ``"raise"`` (default): raise `tokenbucket.BackendError`.
    * ``"allow"``: admit at once without charging anything (fail open; the
      upstream's own limit is the only guard meanwhile).
    * ``"deny"``: refuse as if the wait were too long: ``acquire`` raises
      `tokenbucket.AcquireTimeout` with ``retry_after`` of one second, and
      ``try_acquire`` returns None (fail closed).

    Many callers in one process (``coalesce``, on by default): a reserve
    made while another reserve of the same bucket is out waits in the
    bucket's line, and the requests waiting there go out together in the
    next call (at most 16), which reserves for each in arrival order
    at one server time: the result of one call per request in that order,
    in fewer round trips. A lone reserve goes straight out. A reserve whose
    reply wait its ``max_wait`` bounds (shorter than the socket timeout),
    ``reserve_lane`` and ``reserve_all`` always go out on their own. A
    caller interrupted while waiting in line is charged nothing; one whose
    call went out has its tokens given back as for a lost reply.

    A warning is logged (logger ``tokenbucket.redis``) when an outage starts
    and when it ends. ``cancel``, ``settle``, ``sync`` and ``snapshot``
    raise `tokenbucket.BackendError` in every mode, except that ``cancel``
    returns 0 (no refund) when the mode is not "raise", so an interrupted
    wait is not turned into a second error.

    Args:
        client: A ``redis.Redis`` or ``redis.cluster.RedisCluster``; either
            ``decode_responses`` setting works. The backend does not close a
            client it was given.
        prefix: Put in front of every bucket name in key names (default ``"tb:"``); no braces.
        on_unavailable: ``"raise"``, ``"allow"`` or ``"deny"`` (see above).
        idle_ttl: Seconds a full bucket with nothing pending is kept (default 60).
        coalesce: Send the reserves that callers of this backend make at once
            for one bucket in one call (default True; see above); False sends
            each in a call of its own.

    Raises:
        TypeError: ``client`` is not a synchronous redis-py client, or ``coalesce`` is not a bool.
        ConfigurationError: ``prefix``, ``on_unavailable`` or ``idle_ttl`` has a bad value.
    """

    blocks_on_io = True
    """Every call waits on the network: `tokenbucket.AsyncTokenBucket` refuses it (use `AsyncRedisBackend`)."""

    def __init__(
        self,
        client: SyncClient,
        *,
        prefix: str = "tb:",
        on_unavailable: OnUnavailable = "raise",
        idle_ttl: float = 60.0,
        coalesce: bool = True,
        _owns_client: bool = False,
    ) -> None:
        import redis.asyncio
        import redis.asyncio.cluster

        if isinstance(client, (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)):
            raise TypeError("RedisBackend needs a synchronous client; use AsyncRedisBackend for redis.asyncio")
        if not callable(getattr(client, "register_script", None)):
            raise TypeError(f"client must be a redis.Redis or redis.cluster.RedisCluster, not {type(client).__name__}")
        super().__init__(
            client,
            prefix=prefix,
            on_unavailable=on_unavailable,
            idle_ttl=idle_ttl,
            coalesce=coalesce,
            owns_client=_owns_client,
        )
        # A client with a pool of its own connections (not a cluster's, not a single shared one) lets a
        # reserve wait for its reply no longer than its caller's timeout.
        self._by_connection = hasattr(client, "connection_pool") and getattr(client, "connection", None) is None
        self._lost_lock = threading.Lock()
        self._lines_lock = threading.Lock()
        self._mend_lock = threading.Lock()  # one give-back pass at a time
        self._mender: threading.Thread | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "tb:",
        on_unavailable: OnUnavailable = "raise",
        idle_ttl: float = 60.0,
        coalesce: bool = True,
        cluster: bool = False,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        **options: Any,
    ) -> RedisBackend:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        The client made here fails within seconds when the server is down: it
        waits at most ``connect_timeout`` to connect and ``socket_timeout`` for
        a reply, and retries once, at once, only when the connection failed
        (so a restarted server is picked up by the next call). `close` closes it.
        Its pool holds up to 100 connections (``max_connections=`` changes
        that); when all are in use a caller waits for a free one, up to
        ``socket_timeout + connect_timeout`` seconds, and running out of that
        wait is a `BackendError`, never "unreachable": ``on_unavailable``
        applies only to a server that cannot be reached.

        Args:
            url: The server's URL.
            prefix: As for the constructor.
            on_unavailable: As for the constructor.
            idle_ttl: As for the constructor.
            coalesce: As for the constructor.
            cluster: Connect with ``redis.cluster.RedisCluster`` (``url`` names one node).
            socket_timeout: Seconds to wait for a reply.
            connect_timeout: Seconds to wait for a connection.
            **options: Passed to ``from_url`` of the redis-py client; they win over the defaults above.

        Raises:
            ImportError: redis-py is missing (install ``tokenbucket[redis]``).
            ConfigurationError: a timeout or another argument has a bad value.
        """
        check_positive("socket_timeout", socket_timeout)
        check_positive("connect_timeout", connect_timeout)
        kwargs = _client_options(socket_timeout, connect_timeout, options, cluster=cluster, asyncio=False)
        client: SyncClient
        if cluster:
            import redis.cluster

            client = redis.cluster.RedisCluster.from_url(url, **kwargs)
        else:
            import redis

            client = redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(url, **kwargs))
        return cls(
            client,
            prefix=prefix,
            on_unavailable=on_unavailable,
            idle_ttl=idle_ttl,
            coalesce=coalesce,
            _owns_client=True,
        )

    @property
    def client(self) -> SyncClient:
        """The redis-py client."""
        client: SyncClient = self._client
        return client

    def close(self) -> None:
        """Close the client if `from_url` made it; a client passed in is left to its owner.

        Tokens of reserves whose reply was lost are given back first, if Redis answers
        (one try; the background thread stops).
        """
        self._mend_once()
        self._closed = True
        if self._owns_client:
            self._client.close()
            # RedisCluster.close() keeps its nodes' pooled sockets: disconnect them as well.
            disconnect = getattr(self._client, "disconnect_connection_pools", None)
            if disconnect is not None:
                disconnect()

    def __enter__(self) -> RedisBackend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def run_script(self, name: str, keys: list[str], args: list[Any], operation: str) -> Any:
        """Run ``lua/<name>.lua`` with EVALSHA; redis-py failures become `tokenbucket.BackendError`.

        For stores built on this backend (leases). ``operation`` names the
        step in error messages.
        """
        with map_redis_errors(operation, self._client):
            return self._script(name)(keys, args)

    def _bucket(self, op: str, key: str, args: list[bytes], deadline: float | None = None) -> Any:
        """Run ``bucket_<op>.lua`` for bucket ``key``: one EVALSHA (the script object reloads it on NOSCRIPT).

        ``deadline`` bounds the wait for the reply (seconds), where the client allows.
        """
        script = self._script("bucket_" + op)
        keys = self._wire_keys(key) if op != "reserve_lane" else self._lane_keys(key)
        try:
            with map_redis_errors(op, self._client, key):
                if deadline is not None:
                    return self._evalsha_within(deadline, script, keys, args)
                try:
                    return self._client.evalsha(script.sha, len(keys), *keys, *args)
                except self._noscript:
                    return script(keys, args)
        except BackendError as exc:
            mismatch = _mismatch(exc, key, args)
            if mismatch is None:
                raise
            raise mismatch from None

    def _deadline(self, max_wait: float | None) -> float | None:
        """See `_RedisCommon._deadline`; only a client whose connections this backend can use directly."""
        return super()._deadline(max_wait) if self._by_connection else None

    def _evalsha_within(self, seconds: float, script: Any, keys: list[bytes], args: list[bytes]) -> Any:
        """EVALSHA on a connection of the pool, waiting at most ``seconds`` for the reply.

        A connection whose reply did not come in time is closed, never handed to
        another call (the reply may still arrive).
        """
        from redis.exceptions import ResponseError

        pool = self._client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                return connection.read_response(timeout=seconds)
            except self._noscript:
                connection.send_command("SCRIPT", "LOAD", script.script)
                connection.read_response(timeout=seconds)
                connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                return connection.read_response(timeout=seconds)
        except ResponseError:
            raise
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def reserve(self, key: str, policy: Policy, cost: float, max_wait: float | None, now: float | None) -> Ticket:
        """See `tokenbucket.backends.Backend.reserve`; when Redis is unreachable, see ``on_unavailable``.

        The call carries an id the script remembers (with the last 32 charging
        calls of the bucket), so a retry after a dropped connection never
        charges twice. With ``max_wait`` shorter than the socket timeout, the
        reply is awaited at most ``max_wait`` (a stalled server: not admitted,
        so the caller's `tokenbucket.AcquireTimeout` comes in time). A reserve
        whose reply never came is given back in the background once Redis
        answers: cancelled if it waits, refunded if it started.

        With ``coalesce`` (the default), a reserve made while another one of
        the same bucket is out waits for it and goes out with the others that
        arrived meanwhile, in one call (see the class docstring); a lone one
        goes straight out.
        """
        call = self._call_id()
        args = self._reserve_args(policy, cost, max_wait, now, call)
        if self._coalesce and self._deadline(max_wait) is None:  # (a bounded reply wait goes out alone)
            return self._coalesced(key, policy, cost, args, now)
        return self._charge("reserve", key, policy, cost, args, call, now, max_wait)

    # ------------------------------------------------------------ coalescing

    def _coalesced(self, key: str, policy: Policy, cost: float, args: list[bytes], now: float | None) -> Ticket:
        """Reserve in the bucket's line: straight out when nothing of it is out, else with the next call.

        The thread whose call comes back hands the line to the first request
        waiting, which sends the call for the requests waiting then.
        """
        line = (key, args[1], args[0])
        lock = self._lines_lock
        with lock:
            waiting = self._lines.get(line)
            if waiting is None:
                self._lines[line] = waiting = []
                mine = None
            else:
                mine = _Request(cost, args, _Wakeup())
                waiting.append(mine)
        if mine is None:
            try:
                return self._charge("reserve", key, policy, cost, args, args[-1], now, None)
            finally:
                with lock:  # (the line's list: empty unless requests came meanwhile)
                    if waiting:
                        _to_lead(self._take_batch(line))
                    else:
                        del self._lines[line]
        try:
            mine.ready.wait()
        except BaseException:
            self._leave(line, key, policy, now, mine)
            raise
        if mine.batch is not None:  # this thread sends the next call
            self._send_batch(line, key, policy, now, mine.batch)
        outcome = mine.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        return outcome

    def _hand_on(self, line: tuple[str, bytes, bytes]) -> None:
        """Wake the first request waiting in ``line`` to send the next call, or close the line."""
        with self._lines_lock:
            _to_lead(self._take_batch(line))

    def _send_batch(
        self, line: tuple[str, bytes, bytes], key: str, policy: Policy, now: float | None, batch: list[_Request]
    ) -> None:
        """Send one call reserving for every request of ``batch``, in order, and give each its outcome."""
        sent = time.monotonic()
        try:
            if len(batch) == 1:
                request = batch[0]
                ticket = self._charge("reserve", key, policy, request.cost, request.args, request.args[-1], now, None)
                outcomes: list[_Outcome] = [ticket]
            else:
                args = batch[0].args[:2]
                for request in batch:
                    args += request.args[2:]
                try:
                    reply: Any = self._bucket("reserve", key, args)
                except BackendError as exc:
                    if isinstance(exc, PolicyMismatch):
                        raise
                    reply = exc
                outcomes = self._batch_outcomes(key, policy, now, batch, reply, sent)
        except Exception as exc:  # (PolicyMismatch): every request of the call gets it
            outcomes = [exc] * len(batch)
        except BaseException:  # interrupted (KeyboardInterrupt) with the reply not read
            for request in batch:
                self._lose(_Lost(key, policy, request.args[-1], request.cost, now, sent))
            gone = BackendError(f"the call reserving on bucket {key!r} was interrupted before its reply came")
            with self._lines_lock:
                for request in batch:
                    request.outcome = gone
                    request.ready.wake()
            self._hand_on(line)
            raise
        self._hand_on(line)
        abandoned = []
        with self._lines_lock:
            for request, outcome in zip(batch, outcomes, strict=True):
                request.outcome = outcome
                if request.abandoned:
                    abandoned.append(request)
                request.ready.wake()
        for request in abandoned:
            self._abandon(key, policy, now, request, sent)

    def _leave(
        self, line: tuple[str, bytes, bytes], key: str, policy: Policy, now: float | None, mine: _Request
    ) -> None:
        """A waiting caller was interrupted: take its request out, or pass on the call it was to send."""
        with self._lines_lock:
            waiting = self._lines.get(line)
            if waiting is not None and mine in waiting:
                waiting.remove(mine)  # it never went out: nothing was charged
                return
            batch, mine.batch = mine.batch, None
            if batch is not None and mine.outcome is None:  # it was to send the next call: the next one sends it
                rest = [request for request in batch if request is not mine]
                _to_lead(rest or self._take_batch(line))
                return
            mine.abandoned = True
            done = mine.outcome is not None
        if done:  # its call came back already
            self._abandon(key, policy, now, mine, time.monotonic())

    def _charge(
        self,
        op: str,
        key: str,
        policy: Policy,
        cost: float,
        args: list[bytes],
        call: bytes,
        now: float | None,
        max_wait: float | None,
    ) -> Ticket:
        """Run a charging script (``reserve``, ``reserve_lane``); a reply that never came is given back later."""
        deadline = self._deadline(max_wait)
        try:
            reply = self._bucket(op, key, args, deadline)
        except BackendError as exc:
            return self._unanswered(exc, _Lost(key, policy, call, cost, now, time.monotonic()), deadline)
        return self._answered(reply)

    def reserve_lane(
        self, key: str, policy: Policy, cost: float, hold: float, max_wait: float | None, now: float | None
    ) -> Ticket:
        """See `tokenbucket.backends.Backend.reserve_lane`: one EVALSHA (``lua/bucket_reserve_lane.lua``).

        A reply that never came is handled as in `reserve`.
        """
        call = self._call_id()
        args = self._lane_args(policy, cost, hold, max_wait, now, call)
        return self._charge("reserve_lane", key, policy, cost, args, call, now, max_wait)

    def reserve_all(
        self, parts: Sequence[tuple[str, Policy, float]], max_wait: float | None, now: float | None
    ) -> ManyTicket:
        """See `tokenbucket.backends.Backend.reserve_all`: one EVALSHA (``lua/reserve_all.lua``).

        On Redis Cluster every bucket must be in one slot (names that start
        with one ``{group}``), else `tokenbucket.ConfigurationError` before
        anything is sent. A reply that never came is handled as in `reserve`:
        each part is given back once Redis answers, and ``on_unavailable``
        decides the answer meanwhile.
        """
        call = self._call_id()
        keys, args = self._reserve_all_args(parts, max_wait, now, call)
        deadline = self._deadline(max_wait)
        script = self._script("reserve_all")
        try:
            with map_redis_errors("reserve_all", self._client, parts[0][0]):
                if deadline is not None:
                    reply = self._evalsha_within(deadline, script, keys, args)
                else:
                    try:
                        reply = self._client.evalsha(script.sha, len(keys), *keys, *args)
                    except self._noscript:
                        reply = script(keys, args)
        except BackendError as exc:
            return self._unanswered_all(exc, parts, call, now, deadline)
        self._answered(None)
        return _tickets(reply)

    # ------------------------------------------------------------ reserves whose reply was lost

    def _lose(self, lost: _Lost) -> None:
        with self._lost_lock:
            self._keep_lost(lost)
        self._mend_soon()

    def _mend_soon(self) -> None:
        """Make sure a thread is giving back the lost reserves."""
        with self._lost_lock:
            if self._lost and not self._closed and (self._mender is None or not self._mender.is_alive()):
                self._mender = threading.Thread(target=self._mend, name="tokenbucket-give-back", daemon=True)
                self._mender.start()

    def _mend(self) -> None:
        while not self._closed and self._mend_once():
            time.sleep(_MEND_EVERY)

    def _mend_once(self) -> bool:
        """Try to give back every lost reserve once; True while some remain.

        One pass at a time: a pass already running (the thread's) is not waited
        for, so `close` never blocks on a server that does not answer.
        """
        if not self._mend_lock.acquire(blocking=False):
            return True
        try:
            with self._lost_lock:
                batch = list(self._lost)
            for lost in batch:
                try:
                    self._give_back(lost)
                except Exception as exc:  # Redis still away (or worse): keep trying for a while
                    if time.monotonic() - lost.sent < GIVE_BACK_SECONDS:
                        continue
                    _log.warning("could not give back a lost reserve of %g on %r: %s", lost.cost, lost.key, exc)
                with self._lost_lock:
                    if lost in self._lost:  # (unless the bound forgot it meanwhile)
                        self._lost.remove(lost)
            with self._lost_lock:
                return bool(self._lost)
        finally:
            self._mend_lock.release()

    def _give_back(self, lost: _Lost) -> None:
        """Take back a lost reserve's tokens, once, in one step (``bucket_void.lua``)."""
        give = refundable(lost.policy, lost.cost, 0.0, time.monotonic() - lost.sent)
        self._bucket("void", lost.key, self._args(lost.policy, lost.now, lost.call, repr(give).encode()))

    def cancel(self, key: str, policy: Policy, rid: int, now: float | None) -> float:
        """See `tokenbucket.backends.Backend.cancel`."""
        args = self._args(policy, now, str(int(rid)).encode())
        try:
            reply = self._bucket("cancel", key, args)
        except BackendError as exc:
            if self._on_unavailable == "raise" or not unreachable(exc):
                raise
            return 0.0
        return float(reply)

    def settle(self, key: str, policy: Policy, delta: float, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.settle`; a retry never applies it twice."""
        args = self._args(policy, now, repr(delta).encode())
        reply = self._bucket("settle", key, [*args, self._call_id()])
        return _describe(reply, policy)

    def sync(self, key: str, policy: Policy, remaining: float, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.sync`."""
        args = self._args(policy, now, repr(remaining).encode())
        reply = self._bucket("sync", key, args)
        return _describe(reply, policy)

    def snapshot(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.snapshot`. Writes nothing."""
        args = self._args(policy, now)
        reply = self._bucket("snapshot", key, args)
        return _describe(reply, policy)

    def reconfigure(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.reconfigure`."""
        reply = self._bucket("reconfigure", key, self._args(policy, now))
        return _describe(reply, policy)


class AsyncRedisBackend(AsyncRedisLeaseStore, AsyncRedisSlotStore, _RedisCommon):
    """The asyncio twin of `RedisBackend`, on a ``redis.asyncio`` client, for `tokenbucket.AsyncTokenBucket`.

    The same scripts, keys, arguments and guarantees; every operation is
    awaitable:

        backend = AsyncRedisBackend.from_url("redis://localhost:6379/0", prefix="tb:")
        bucket = AsyncTokenBucket("keepa", rate="5/minute", backend=backend)
        ...
        await backend.aclose()

    Where the state lives, what happens when it is lost, which clock is read,
    what ``on_unavailable`` does and how reserves made at once are coalesced:
    as for `RedisBackend`.

    Args:
        client: A ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``.
            The backend does not close a client it was given.
        prefix: Put in front of every bucket name in key names (default ``"tb:"``); no braces.
        on_unavailable: ``"raise"``, ``"allow"`` or ``"deny"`` (see above).
        idle_ttl: Seconds a full bucket with nothing pending is kept (default 60).
        coalesce: As for `RedisBackend`: the reserves that tasks make at once
            for one bucket go out in one call (default True).

    Raises:
        TypeError: ``client`` is not a redis-py asyncio client, or ``coalesce`` is not a bool.
        ConfigurationError: ``prefix``, ``on_unavailable`` or ``idle_ttl`` has a bad value.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        prefix: str = "tb:",
        on_unavailable: OnUnavailable = "raise",
        idle_ttl: float = 60.0,
        coalesce: bool = True,
        _owns_client: bool = False,
    ) -> None:
        import redis.asyncio
        import redis.asyncio.cluster

        if not isinstance(client, (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)):
            raise TypeError(
                "AsyncRedisBackend needs a redis.asyncio client, not "
                f"{type(client).__name__}; use RedisBackend for a synchronous one"
            )
        super().__init__(
            client,
            prefix=prefix,
            on_unavailable=on_unavailable,
            idle_ttl=idle_ttl,
            coalesce=coalesce,
            owns_client=_owns_client,
        )
        self._mender: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()  # the coalesced calls out now

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "tb:",
        on_unavailable: OnUnavailable = "raise",
        idle_ttl: float = 60.0,
        coalesce: bool = True,
        cluster: bool = False,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        **options: Any,
    ) -> AsyncRedisBackend:
        """See `RedisBackend.from_url`; makes a ``redis.asyncio`` client, closed by `aclose`."""
        check_positive("socket_timeout", socket_timeout)
        check_positive("connect_timeout", connect_timeout)
        kwargs = _client_options(socket_timeout, connect_timeout, options, cluster=cluster, asyncio=True)
        client: AsyncClient
        if cluster:
            import redis.asyncio.cluster

            client = redis.asyncio.cluster.RedisCluster.from_url(url, **kwargs)
        else:
            import redis.asyncio

            client = redis.asyncio.Redis.from_pool(redis.asyncio.BlockingConnectionPool.from_url(url, **kwargs))
        return cls(
            client,
            prefix=prefix,
            on_unavailable=on_unavailable,
            idle_ttl=idle_ttl,
            coalesce=coalesce,
            _owns_client=True,
        )

    @property
    def client(self) -> AsyncClient:
        """The redis-py asyncio client."""
        client: AsyncClient = self._client
        return client

    async def aclose(self) -> None:
        """Close the client if `from_url` made it; a client passed in is left to its owner.

        Tokens of reserves whose reply was lost are given back first, if Redis answers
        (one try; the background task stops).
        """
        mender, self._mender = self._mender, None
        if mender is not None:
            mender.cancel()
        await self._mend_once()
        self._closed = True
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncRedisBackend:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def run_script(self, name: str, keys: list[str], args: list[Any], operation: str) -> Any:
        """See `RedisBackend.run_script`."""
        with map_redis_errors(operation, self._client):
            return await self._script(name)(keys, args)

    async def _bucket(self, op: str, key: str, args: list[bytes], deadline: float | None = None) -> Any:
        """See `RedisBackend._bucket`; ``deadline`` bounds the reply on every client."""
        script = self._script("bucket_" + op)
        keys = self._wire_keys(key) if op != "reserve_lane" else self._lane_keys(key)
        try:
            with map_redis_errors(op, self._client, key):
                if deadline is None:
                    return await self._evalsha(script, keys, args)
                try:
                    return await asyncio.wait_for(self._evalsha(script, keys, args), deadline)
                except asyncio.TimeoutError as exc:  # (not an OSError before Python 3.11): say it as redis-py would
                    import redis.exceptions

                    raise redis.exceptions.TimeoutError(f"no reply within {deadline:g} s") from exc
        except BackendError as exc:
            mismatch = _mismatch(exc, key, args)
            if mismatch is None:
                raise
            raise mismatch from None

    async def _evalsha(self, script: Any, keys: list[bytes], args: list[bytes]) -> Any:
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except self._noscript:
            return await script(keys, args)

    async def reserve(self, key: str, policy: Policy, cost: float, max_wait: float | None, now: float | None) -> Ticket:
        """See `RedisBackend.reserve`."""
        call = self._call_id()
        args = self._reserve_args(policy, cost, max_wait, now, call)
        if self._coalesce and self._deadline(max_wait) is None:  # (a bounded reply wait goes out alone)
            return await self._coalesced(key, policy, cost, args, now)
        return await self._charge("reserve", key, policy, cost, args, call, now, max_wait)

    # ------------------------------------------------------------ coalescing

    async def _coalesced(self, key: str, policy: Policy, cost: float, args: list[bytes], now: float | None) -> Ticket:
        """See `RedisBackend._coalesced`; the next call goes out from a task of its own."""
        line = (key, args[1], args[0])
        waiting = self._lines.get(line)
        if waiting is None:
            self._lines[line] = waiting = []
            try:
                return await self._charge("reserve", key, policy, cost, args, args[-1], now, None)
            finally:
                if waiting:  # (the line's list: empty unless requests came meanwhile)
                    self._hand_on(line, key, policy, now)
                else:
                    del self._lines[line]
        mine = _Request(cost, args, asyncio.get_running_loop().create_future())
        waiting.append(mine)
        try:
            ticket: Ticket = await mine.ready
        except asyncio.CancelledError:
            if mine in waiting:
                waiting.remove(mine)  # it never went out: nothing was charged
            else:
                mine.abandoned = True  # its call is out: its tokens are given back when the reply comes
            raise
        return ticket

    def _hand_on(self, line: tuple[str, bytes, bytes], key: str, policy: Policy, now: float | None) -> None:
        """Send the next call of ``line`` for the requests waiting in it, or close the line."""
        batch = self._take_batch(line)
        if batch is not None:
            task = asyncio.get_running_loop().create_task(self._send_batch(line, key, policy, now, batch))
            self._sending.add(task)  # (the loop keeps only a weak reference)
            task.add_done_callback(self._sending.discard)

    async def _send_batch(
        self, line: tuple[str, bytes, bytes], key: str, policy: Policy, now: float | None, batch: list[_Request]
    ) -> None:
        """See `RedisBackend._send_batch`."""
        sent = time.monotonic()
        try:
            if len(batch) == 1:
                request = batch[0]
                ticket = await self._charge(
                    "reserve", key, policy, request.cost, request.args, request.args[-1], now, None
                )
                outcomes: list[_Outcome] = [ticket]
            else:
                args = batch[0].args[:2]
                for request in batch:
                    args += request.args[2:]
                try:
                    reply: Any = await self._bucket("reserve", key, args)
                except BackendError as exc:
                    if isinstance(exc, PolicyMismatch):
                        raise
                    reply = exc
                outcomes = self._batch_outcomes(key, policy, now, batch, reply, sent)
        except Exception as exc:  # (PolicyMismatch): every request of the call gets it
            outcomes = [exc] * len(batch)
        except BaseException:  # the task was cancelled (the loop is closing) with the reply not read
            for request in batch:
                self._lose(_Lost(key, policy, request.args[-1], request.cost, now, sent))
                request.ready.cancel()
            raise
        finally:
            self._hand_on(line, key, policy, now)
        for request, outcome in zip(batch, outcomes, strict=True):
            request.outcome = outcome
            future = request.ready
            if request.abandoned or future.done():
                self._abandon(key, policy, now, request, sent)
            elif isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

    async def _charge(
        self,
        op: str,
        key: str,
        policy: Policy,
        cost: float,
        args: list[bytes],
        call: bytes,
        now: float | None,
        max_wait: float | None,
    ) -> Ticket:
        """See `RedisBackend._charge`."""
        deadline = self._deadline(max_wait)
        try:
            reply = await self._bucket(op, key, args, deadline)
        except BackendError as exc:
            return self._unanswered(exc, _Lost(key, policy, call, cost, now, time.monotonic()), deadline)
        return self._answered(reply)

    async def reserve_lane(
        self, key: str, policy: Policy, cost: float, hold: float, max_wait: float | None, now: float | None
    ) -> Ticket:
        """See `RedisBackend.reserve_lane`."""
        call = self._call_id()
        args = self._lane_args(policy, cost, hold, max_wait, now, call)
        return await self._charge("reserve_lane", key, policy, cost, args, call, now, max_wait)

    async def reserve_all(
        self, parts: Sequence[tuple[str, Policy, float]], max_wait: float | None, now: float | None
    ) -> ManyTicket:
        """See `RedisBackend.reserve_all`."""
        call = self._call_id()
        keys, args = self._reserve_all_args(parts, max_wait, now, call)
        deadline = self._deadline(max_wait)
        script = self._script("reserve_all")
        try:
            with map_redis_errors("reserve_all", self._client, parts[0][0]):
                if deadline is None:
                    reply = await self._evalsha(script, keys, args)
                else:
                    try:
                        reply = await asyncio.wait_for(self._evalsha(script, keys, args), deadline)
                    except asyncio.TimeoutError as exc:
                        import redis.exceptions

                        raise redis.exceptions.TimeoutError(f"no reply within {deadline:g} s") from exc
        except BackendError as exc:
            return self._unanswered_all(exc, parts, call, now, deadline)
        self._answered(None)
        return _tickets(reply)

    # ------------------------------------------------------------ reserves whose reply was lost

    def _lose(self, lost: _Lost) -> None:
        self._keep_lost(lost)
        self._mend_soon()

    def _mend_soon(self) -> None:
        """Make sure a task on the running loop is giving back the lost reserves."""
        if self._lost and not self._closed and (self._mender is None or self._mender.done()):
            self._mender = asyncio.get_running_loop().create_task(self._mend(), name="tokenbucket-give-back")

    async def _mend(self) -> None:
        for _ in itertools.count():  # until every lost reserve is given back (or has expired)
            if not await self._mend_once():
                return
            await asyncio.sleep(_MEND_EVERY)

    async def _mend_once(self) -> bool:
        """See `RedisBackend._mend_once`."""
        for lost in list(self._lost):
            try:
                await self._give_back(lost)
            except Exception as exc:
                if time.monotonic() - lost.sent < GIVE_BACK_SECONDS:
                    continue
                _log.warning("could not give back a lost reserve of %g on bucket %r: %s", lost.cost, lost.key, exc)
            if lost in self._lost:
                self._lost.remove(lost)
        return bool(self._lost)

    async def _give_back(self, lost: _Lost) -> None:
        """See `RedisBackend._give_back`."""
        give = refundable(lost.policy, lost.cost, 0.0, time.monotonic() - lost.sent)
        await self._bucket("void", lost.key, self._args(lost.policy, lost.now, lost.call, repr(give).encode()))

    async def cancel(self, key: str, policy: Policy, rid: int, now: float | None) -> float:
        """See `tokenbucket.backends.Backend.cancel`."""
        args = self._args(policy, now, str(int(rid)).encode())
        try:
            reply = await self._bucket("cancel", key, args)
        except BackendError as exc:
            if self._on_unavailable == "raise" or not unreachable(exc):
                raise
            return 0.0
        return float(reply)

    async def settle(self, key: str, policy: Policy, delta: float, now: float | None) -> Snapshot:
        """See `RedisBackend.settle`."""
        args = self._args(policy, now, repr(delta).encode())
        reply = await self._bucket("settle", key, [*args, self._call_id()])
        return _describe(reply, policy)

    async def sync(self, key: str, policy: Policy, remaining: float, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.sync`."""
        args = self._args(policy, now, repr(remaining).encode())
        reply = await self._bucket("sync", key, args)
        return _describe(reply, policy)

    async def snapshot(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.snapshot`. Writes nothing."""
        args = self._args(policy, now)
        reply = await self._bucket("snapshot", key, args)
        return _describe(reply, policy)

    async def reconfigure(self, key: str, policy: Policy, now: float | None) -> Snapshot:
        """See `tokenbucket.backends.Backend.reconfigure`."""
        reply = await self._bucket("reconfigure", key, self._args(policy, now))
        return _describe(reply, policy)
