"""`ConcurrencyLimit` and `AsyncConcurrencyLimit`: at most N calls in flight, with no ghost slots.

Every slot is a lease (see `tokenbucket.LeaseLock`): a mandatory TTL, a
heartbeat that renews it only while the holder makes progress, a fence that
grows with every acquisition, and the owner's metadata for operators. A holder
that is killed frees its slot within the TTL; one that is paused past it learns
that it lost the slot (`Slot.ensure_held`, ``on_lost``, or on leaving ``with``).

Waiting is first come, first served across every thread, task, process and host
sharing the store: a waiter joins one line and a slot goes only to the front of
it. Each waiter renews its place while it waits, so one that dies leaves the
line within the TTL.

A slot's release cannot be predicted, so unlike a token reservation a wait for
a slot cannot be refused up front: ``timeout`` is the longest a caller waits in
line. ``timeout=0`` (or ``blocking=False``) takes a free slot only if nobody is
waiting for it, and never waits.

With ``bucket=``, `ConcurrencyLimit.slot` also pays for the call from a token
bucket: it reserves the tokens first and sleeps until they are due *without*
holding a slot, then takes the slot. If the slot does not come within the
timeout, or the wait is interrupted, the tokens are given back (by the refund
rule of `tokenbucket.Grant.settle`), so neither is leaked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

from ._bucket import ESTIMATE, AsyncGrant, AsyncTokenBucket, Grant, TokenBucket
from ._clock import Clock
from ._events import Listener
from ._exceptions import ConfigurationError, LeaseError, NotAcquired
from ._flow import Call as _Call
from ._lease import _WAKE_SLACK, AsyncLease, Lease, _adrive, _drive, _Flow, _LockBase, _Wait
from ._validate import check_timeout
from .backends._lease_base import LeaseInfo
from .backends._slot_base import AsyncSlotBackend, SlotBackend, SlotsInfo

__all__ = ["AsyncConcurrencyLimit", "AsyncSlot", "ConcurrencyLimit", "Slot"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Slot(Lease):
    """One of the ``limit`` slots of a `ConcurrencyLimit`, held by this caller: a lease.

    ``slot.fence`` is larger than every earlier slot's of the same name;
    ``slot.grant`` is the token grant when the slot was taken with ``bucket=``
    (else None). Everything else is `Lease`'s: ``ensure_held()``, ``beat()``,
    ``renew()``, ``release()``, ``state``.
    """

    grant: Grant | None = None


class AsyncSlot(AsyncLease):
    """The asyncio twin of `Slot` (an `AsyncLease`); ``slot.grant`` is an `AsyncGrant` or None."""

    grant: AsyncGrant | None = None


def _check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit < 1:
        raise ConfigurationError(f"limit must be at least 1, got {limit!r}")
    return limit


class _LimitBase(_LockBase[Any]):
    """What the sync and asyncio limits share: the configuration and the acquire flow."""

    _needs = "slot_acquire"
    _accepts_async = True
    _protocol = "tokenbucket.backends.SlotBackend"
    _renew_op = "slot_renew"
    _release_op = "slot_release"
    _break_op = "slot_break"

    def __init__(
        self,
        name: str,
        *,
        limit: int,
        ttl: float,
        backend: SlotBackend | AsyncSlotBackend | None = None,
        require_beat: bool = False,
        max_hold: float | None = None,
        heartbeat: bool = True,
        on_lost: Callable[[Any], object] | None = None,
        task: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        checked = _check_limit(limit)
        super().__init__(
            name,
            ttl=ttl,
            backend=backend,  # type: ignore[arg-type]
            require_beat=require_beat,
            max_hold=max_hold,
            heartbeat=heartbeat,
            on_lost=on_lost,
            task=task,
            clock=clock,
            listeners=listeners,
        )
        self.limit = checked
        if not self._accepts_async and inspect.iscoroutinefunction(self._backend.slot_acquire):
            raise TypeError(
                f"{type(self).__name__} needs a blocking store, and {type(self._backend).__name__} is for "
                "asyncio: use AsyncConcurrencyLimit with it"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, limit={self.limit}, ttl={self.ttl:g}, "
            f"backend={type(self._backend).__name__})"
        )

    def _not_acquired(self, ahead: int, waited: float | None) -> NotAcquired:
        tail = "" if waited is None else f"; gave up after {waited:.3g} s"
        line = f", {ahead} ahead in line" if ahead else ""
        return NotAcquired(f"concurrency limit {self.name!r}: all {self.limit} slots are taken{line}{tail}", None)

    def _refused_break(self, expect_fence: int, info: LeaseInfo | None) -> LeaseError:
        return LeaseError(
            f"concurrency limit {self.name!r} has no slot with fence {expect_fence}; nothing was broken "
            "(inspect it again and pass a fence you see)"
        )

    def _slot_flow(self, blocking: bool, timeout: float | None) -> _Flow[Any]:
        if not isinstance(blocking, bool):
            raise TypeError(f"blocking must be True or False, not {type(blocking).__name__}")
        wait = check_timeout(timeout) if blocking else 0.0
        token = secrets.token_hex(16)
        owner = self._owner()
        clock = self._clock
        started = clock.now()
        deadline = math.inf if wait is None else started + wait
        wait_ttl = 0.0 if wait == 0 else self.ttl  # a caller that never waits does not join the line
        try:
            while True:
                sent = clock.now()
                granted, info, ahead, soonest = yield _Call(
                    "slot_acquire", self.name, token, self.limit, self.ttl, owner, wait_ttl
                )
                if granted:
                    slot = self._lease_class(self, token, info, sent)
                    self._emit("acquired", slot.fence, owner, "")
                    return slot
                left = deadline - clock.now()
                if left <= 0:
                    raise self._not_acquired(ahead, None if wait == 0 else clock.now() - started)
                nap = min(left, self.ttl / 3)  # ask again before the place in line expires
                if soonest is not None:
                    nap = min(nap, soonest + _WAKE_SLACK)
                yield _Wait("slot_wait", (self.name, token), nap)
        except NotAcquired:
            if wait_ttl > 0:
                yield _Call("slot_release", self.name, token)  # leave the line
            raise
        except BaseException:
            # Interrupted, or the store failed: leave the line, and give back a slot the store may have
            # granted to a reply that never arrived (token-checked: nobody else's slot is touched).
            with contextlib.suppress(Exception):
                yield _Call("slot_release", self.name, token)
            raise


class ConcurrencyLimit(_LimitBase):
    """At most ``limit`` calls in flight at once, across every thread (and, on Redis, every host) using the name.

    ``with limits.slot(timeout=30):`` waits in line for a slot, holds it
    (renewed by a heartbeat while the body runs) and gives it back on exit;
    ``@limit`` (or ``@limit.limited(timeout=...)``) does the same around every
    call of a function; ``limit.acquire()`` returns the `Slot` to release
    yourself.

    Guarantees:
        * At most ``limit`` slots are held at any moment, by the store's clock.
        * No slot is held for ever: the store frees a slot ``ttl`` seconds
          after its last renewal, so a crashed holder blocks a slot for at
          most ``ttl``; a waiter that died leaves the line within ``ttl``.
        * First come, first served: a slot goes to the caller that has waited
          longest (a caller that asks without waiting never takes a slot a
          waiter is owed).
        * Each slot's ``fence`` is larger than every earlier one; a holder that
          lost its slot learns it and is never given it back silently.

    Args:
        name: The limit's name; every user of the name must give the same ``limit``.
        limit: The most slots held at once (at least 1).
        ttl: Seconds a slot (and a waiter's place in line) lives without a
            renewal. Required: there is no "forever".
        backend: A `tokenbucket.backends.SlotBackend` (`MemoryBackend`, the
            default one shared by this process, or `RedisBackend`).
        require_beat: Renew only while `Slot.beat` is called at least once per ``ttl``.
        max_hold: Most seconds one slot may be held; None for no cap.
        heartbeat: Renew automatically (a daemon thread); with False, call `Slot.renew` yourself.
        on_lost: Called with the slot when its holder learns it is lost.
        task: The task label stored with each slot for operators; default the thread's name.
        clock: The clock for deadlines and waits; default the monotonic clock. With a
            custom clock (tests), waits sleep on it instead of listening for releases.
        listeners: Told about every slot's lease events (`tokenbucket.LeaseEvent`).

    Raises:
        ConfigurationError: ``limit`` below 1, ``ttl`` or ``max_hold`` not positive.
        TypeError: an argument has the wrong type.
    """

    _backend: SlotBackend
    _lease_class = Slot
    _accepts_async = False

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> Slot:
        """Wait in line for a slot and return it (with the heartbeat running).

        Args:
            blocking: Wait; with False, take a free slot nobody waits for, or fail at once.
            timeout: With ``blocking``, the longest wait in line, in seconds; None waits as
                long as needed.

        Raises:
            NotAcquired: no slot within the timeout (the caller left the line).
            BackendError: the store failed.
            ConfigurationError: the name is in use with another ``limit``.
        """
        slot: Slot = _drive(self, self._slot_flow(blocking, timeout))
        if self.heartbeat:
            slot._start_heartbeat()
        return slot

    @contextlib.contextmanager
    def slot(
        self,
        timeout: float | None = None,
        *,
        bucket: TokenBucket | None = None,
        cost: float | None = ESTIMATE,
        op: str | None = None,
        units: float = 1,
    ) -> Iterator[Slot]:
        """Hold a slot for the body of a ``with`` block; with ``bucket``, pay for the call from it too.

        With ``bucket``, the tokens (``cost``, ``op`` and ``units`` as in
        `TokenBucket.acquire`) are reserved first and waited for without a
        slot; then the slot is taken. ``timeout`` bounds the whole wait:
        the token reservation is refused up front if its delay alone exceeds
        it (`AcquireTimeout`, nothing charged), and the slot gets what is left.
        If the slot does not come, or the wait is interrupted, the tokens are
        given back. ``slot.grant`` is the token grant (settle it after the call).

        Raises:
            NotAcquired: no slot within the timeout (tokens given back).
            AcquireTimeout: the tokens alone would take longer than ``timeout``.
        """
        if bucket is not None and not isinstance(bucket, TokenBucket):
            raise TypeError(f"bucket must be a TokenBucket, not {type(bucket).__name__}")
        wait = check_timeout(timeout)
        grant: Grant | None = None
        left = wait
        if bucket is not None:
            began = self._clock.now()
            grant = bucket.acquire(cost, timeout=wait, op=op, units=units)
            if wait is not None:
                left = max(0.0, wait - (self._clock.now() - began))
        try:
            taken = self.acquire(timeout=left)
        except BaseException:
            if grant is not None:
                grant.settle(0, observe=False)  # the call never ran: give the tokens back
            raise
        taken.grant = grant
        with taken:
            yield taken

    def limited(self, timeout: float | None = None) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
        """A decorator: every call of the function holds a slot (waiting up to ``timeout`` for it)."""

        def decorate(fn: Callable[_P, _T]) -> Callable[_P, _T]:
            @functools.wraps(fn)
            def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
                with self.slot(timeout):
                    return fn(*args, **kwargs)

            return wrapper

        return decorate

    def __call__(self, fn: Callable[_P, _T]) -> Callable[_P, _T]:
        """``@limit``: `limited` with no timeout."""
        return self.limited()(fn)

    def inspect(self) -> SlotsInfo:
        """Who holds the slots, and how many wait. Changes nothing."""
        info: SlotsInfo = self._backend.slot_inspect(self.name)
        return info

    def break_slot(self, expect_fence: int) -> LeaseInfo:
        """Free the slot whose fence is ``expect_fence``, whoever holds it (for operators); see `LeaseLock.break_lease`.

        Raises:
            LeaseError: no slot has that fence (nothing changed).
        """
        info: LeaseInfo = _drive(self, self._break_flow(expect_fence))
        return info

    def __enter__(self) -> Slot:
        raise TypeError("use `with limit.slot(timeout=...) as slot:` (a limit has many holders, not one)")

    def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ always raises
        return None


class AsyncConcurrencyLimit(_LimitBase):
    """The asyncio twin of `ConcurrencyLimit`: ``async with limit.slot(timeout=...)``, ``@limit`` on coroutines.

    It accepts a sync store that never blocks (`MemoryBackend`) or an async one
    (`AsyncRedisBackend`). Cancelling a waiting task leaves the line; the heartbeat
    is an asyncio task. The arguments are those of `ConcurrencyLimit`.
    """

    _backend: SlotBackend | AsyncSlotBackend
    _lease_class = AsyncSlot

    def _task_name(self) -> str:
        current = asyncio.current_task()
        return current.get_name() if current is not None else threading.current_thread().name

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> AsyncSlot:
        """See `ConcurrencyLimit.acquire`; cancelling the waiting task leaves the line."""
        slot: AsyncSlot = await _adrive(self, self._slot_flow(blocking, timeout))
        if self.heartbeat:
            slot._start_heartbeat()
        return slot

    @contextlib.asynccontextmanager
    async def slot(
        self,
        timeout: float | None = None,
        *,
        bucket: AsyncTokenBucket | None = None,
        cost: float | None = ESTIMATE,
        op: str | None = None,
        units: float = 1,
    ) -> AsyncIterator[AsyncSlot]:
        """See `ConcurrencyLimit.slot` (``bucket`` is an `AsyncTokenBucket`)."""
        if bucket is not None and not isinstance(bucket, AsyncTokenBucket):
            raise TypeError(f"bucket must be an AsyncTokenBucket, not {type(bucket).__name__}")
        wait = check_timeout(timeout)
        grant: AsyncGrant | None = None
        left = wait
        if bucket is not None:
            began = self._clock.now()
            grant = await bucket.acquire(cost, timeout=wait, op=op, units=units)
            if wait is not None:
                left = max(0.0, wait - (self._clock.now() - began))
        try:
            taken = await self.acquire(timeout=left)
        except BaseException:
            if grant is not None:
                await asyncio.shield(grant.settle(0, observe=False))  # the call never ran
            raise
        taken.grant = grant
        async with taken:
            yield taken

    def limited(
        self, timeout: float | None = None
    ) -> Callable[[Callable[_P, Awaitable[_T]]], Callable[_P, Awaitable[_T]]]:
        """A decorator for coroutine functions: every call holds a slot."""

        def decorate(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
            @functools.wraps(fn)
            async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
                async with self.slot(timeout):
                    return await fn(*args, **kwargs)

            return wrapper

        return decorate

    def __call__(self, fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
        """``@limit`` on a coroutine function: `limited` with no timeout."""
        return self.limited()(fn)

    async def inspect(self) -> SlotsInfo:
        """See `ConcurrencyLimit.inspect`."""
        result = self._backend.slot_inspect(self.name)
        if asyncio.iscoroutine(result):
            result = await result
        info: SlotsInfo = result
        return info

    async def break_slot(self, expect_fence: int) -> LeaseInfo:
        """See `ConcurrencyLimit.break_slot`."""
        info: LeaseInfo = await _adrive(self, self._break_flow(expect_fence))
        return info
