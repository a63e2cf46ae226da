"""`LeaseLock` and `AsyncLeaseLock`: locks that cannot become ghost locks.

A lease is a lock with a mandatory TTL. While the holder makes progress a
heartbeat (a thread, or an asyncio task) renews it every ``ttl / 3``; a holder
that crashes, hangs (with ``require_beat=True``) or runs past ``max_hold``
stops renewing, and the store frees the lease when the TTL runs out. Every
acquisition gets a larger fencing number (``lease.fence``) so a store can
refuse the writes of a holder that lost its lease without knowing it (see
`tokenbucket.fencing`).

The holder's view of its lease moves one way:

    held ──renewal fails──> suspended ──local deadline passes──> lost
      │  <──renewal works──┘                                     ^
      └──key gone, or held by another token, or deadline passes──┘

A lost lease is never re-acquired behind the holder's back. The sync and
asyncio front ends run the same generator flows (as `tokenbucket.TokenBucket`
does); only the drivers differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import secrets
import socket
import threading
import weakref
from collections.abc import Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

from ._clock import Clock, SystemClock
from ._events import LeaseEvent, LeaseEventKind, Listened, Listener
from ._exceptions import BackendError, LeaseError, LeaseLost, NotAcquired
from ._flow import Call as _Call
from ._flow import adrive, drive
from ._validate import check_name, check_positive, check_timeout
from .backends._lease_base import AsyncLeaseBackend, LeaseBackend, LeaseInfo, LeaseOwner
from .backends._memory import MemoryBackend

__all__ = ["AsyncLease", "AsyncLeaseLock", "Lease", "LeaseLock", "LeaseState"]

_log = logging.getLogger("tokenbucket.lease")

_T = TypeVar("_T")

LeaseState = Literal["held", "suspended", "lost", "released"]
"""Where a holder stands: ``held``, ``suspended`` (renewal failing, deadline not passed), ``lost``, ``released``."""

_DEFAULT_BACKEND = MemoryBackend()
"""Locks made without a backend share this one, so a name means one lease per process."""

_WAKE_SLACK = 0.005
"""Seconds added to a holder's expiry before trying again, so the store has surely expired it."""


class _Wait:
    """A flow wants to wait, with the store's ``method(*args, seconds)``, until woken or ``seconds`` pass.

    ``lease_wait(name)`` wakes on a release; ``slot_wait(name, token)`` when the waiter may be served.
    """

    __slots__ = ("args", "method", "seconds")

    def __init__(self, method: str, args: tuple[str, ...], seconds: float) -> None:
        self.method = method
        self.args = args
        self.seconds = seconds


_Flow = Generator[_Call | _Wait, Any, _T]


def _drive(lock: _LockBase[Any], flow: _Flow[_T]) -> _T:
    """Drive a flow with blocking calls."""
    backend = lock._backend
    clock = lock._clock

    def perform(op: _Call | _Wait) -> Any:
        if isinstance(op, _Wait):
            if lock._custom_clock:
                clock.sleep(op.seconds)
                return False
            return getattr(backend, op.method)(*op.args, op.seconds)
        return getattr(backend, op.method)(*op.args)

    return drive(flow, perform)


async def _adrive(lock: _LockBase[Any], flow: _Flow[_T]) -> _T:
    """Drive a flow with awaits; a sync store (memory) is called directly and waited on without blocking."""
    backend = lock._backend
    clock = lock._clock
    is_async = inspect.iscoroutinefunction(getattr(backend, lock._needs))

    async def perform(op: _Call | _Wait) -> Any:
        if isinstance(op, _Wait):
            if lock._custom_clock:
                await clock.asleep(op.seconds)
                return False
            if is_async:
                return await getattr(backend, op.method)(*op.args, op.seconds)
            if hasattr(backend, op.method + "_async"):
                return await getattr(backend, op.method + "_async")(*op.args, op.seconds)
            wait: Callable[..., bool] = getattr(backend, op.method)
            return await asyncio.to_thread(wait, *op.args, op.seconds)
        result = getattr(backend, op.method)(*op.args)
        return (await result) if is_async else result

    return await adrive(flow, perform)


def _not_acquired(name: str, holder: LeaseInfo | None, waited: float | None) -> NotAcquired:
    who = f"is {holder.describe()}" if holder is not None else "is held by someone else"
    tail = "" if waited is None else f"; gave up after {waited:.3g} s"
    return NotAcquired(f"lease {name!r} {who}{tail}", holder)


class _LeaseBase:
    """The state of one acquisition; `Lease` and `AsyncLease` add the calls that talk to the store."""

    def __init__(self, lock: _LockBase[Any], token: str, info: LeaseInfo, sent: float) -> None:
        self._lock = lock
        self._token = token
        self._info = info
        self._clock: Clock = lock._clock
        self._mutex = threading.Lock()
        self._acquired_at = sent
        self._deadline = sent + lock.ttl
        self._last_beat = sent
        self._state: LeaseState = "held"
        self._reason = ""
        self._stop = threading.Event()
        self.name = lock.name
        self.fence = info.fence

    # ---- the holder's local view -------------------------------------------------------------

    @property
    def state(self) -> LeaseState:
        """``"held"``, ``"suspended"``, ``"lost"`` or ``"released"``: the holder's view, from its own clock.

        Reading it never talks to the store; a lease whose local deadline has
        passed is ``"lost"`` at once.
        """
        self._check_deadline()
        return self._state

    @property
    def info(self) -> LeaseInfo:
        """The lease as the store last reported it (owner, renewals, fence)."""
        return self._info

    @property
    def expires_in(self) -> float:
        """Seconds until the holder's local deadline (0 once lost or released)."""
        if self.state in ("lost", "released"):
            return 0.0
        return max(0.0, self._deadline - self._clock.now())

    @property
    def lost_reason(self) -> str:
        """Why the lease was lost (empty while it is not)."""
        return self._reason

    def ensure_held(self) -> None:
        """Raise `LeaseLost` unless the lease is still held (``held`` or ``suspended``).

        Never blocks and never talks to the store: it checks the holder's local
        deadline, which the store's expiry is never earlier than. Call it before
        each step that must not overlap with another holder, and pass
        ``lease.fence`` to the store that the step writes to.
        """
        state = self.state
        if state == "lost":
            raise LeaseLost(f"lease {self.name!r} (fence {self.fence}) was lost: {self._reason}")
        if state == "released":
            raise LeaseLost(f"lease {self.name!r} (fence {self.fence}) was released")

    def beat(self) -> None:
        """Record that the holder is making progress, then `ensure_held`.

        With ``require_beat=True`` the heartbeat renews only while the last
        beat is less than ``ttl`` old, and a renewal never carries the lease
        more than ``ttl`` past the last beat: a holder that stops beating
        loses the lease within ``ttl``.
        """
        self._last_beat = self._clock.now()
        self.ensure_held()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, fence={self.fence}, state={self.state!r})"

    # ---- transitions --------------------------------------------------------------------------

    def _check_deadline(self) -> None:
        if self._state in ("held", "suspended"):
            now = self._clock.now()
            if now >= self._deadline:
                self._lose(self._lapse_reason(now))

    def _lapse_reason(self, now: float) -> str:
        lock = self._lock
        if lock.max_hold is not None and now >= self._acquired_at + lock.max_hold:
            return f"it was held for max_hold={lock.max_hold:g} s"
        if lock.require_beat and now >= self._last_beat + lock.ttl:
            return f"the holder did not beat within ttl={lock.ttl:g} s (require_beat=True)"
        if self._state == "suspended":
            return "the TTL ran out while renewals were failing"
        return "the TTL ran out before a renewal reached the store"

    def _lose(self, reason: str) -> None:
        with self._mutex:
            if self._state not in ("held", "suspended"):
                return
            self._state = "lost"
            self._reason = reason
        self._stop.set()
        _log.warning("lease %r (fence %d) lost: %s", self.name, self.fence, reason)
        self._lock._emit("lost", self.fence, self._info.owner, reason)
        self._after_loss()
        callback = self._lock.on_lost
        if callback is not None:
            try:
                callback(self)
            except Exception:
                _log.exception("on_lost callback failed for lease %r", self.name)

    def _after_loss(self) -> None:
        """Hook for the asyncio variant (cancelling the holder's task)."""

    def _renew_ttl(self, now: float) -> float | None:
        """The TTL the next renewal may ask for, or None when the holder shows no progress."""
        lock = self._lock
        limit = now + lock.ttl
        if lock.require_beat:
            limit = min(limit, self._last_beat + lock.ttl)
        if lock.max_hold is not None:
            limit = min(limit, self._acquired_at + lock.max_hold)
        ttl = limit - now
        return ttl if ttl > 0.001 else None

    # ---- flows ----------------------------------------------------------------------------------

    def _renew_flow(self) -> _Flow[bool]:
        """Renew once if the holder shows progress. True if renewed; never raises for store failures."""
        self._check_deadline()
        if self._state not in ("held", "suspended"):
            return False
        sent = self._clock.now()
        ttl = self._renew_ttl(sent)
        if ttl is None:
            return False
        try:
            ok, info = yield _Call(self._lock._renew_op, self.name, self._token, ttl)
        except BackendError as exc:
            with self._mutex:
                suspend = self._state == "held"
                if suspend:
                    self._state = "suspended"
            if suspend:
                _log.warning("lease %r (fence %d) suspended: %s", self.name, self.fence, exc)
                self._lock._emit("suspended", self.fence, self._info.owner, str(exc))
            self._check_deadline()
            return False
        if not ok:
            if info is None:
                self._lose("the lease key is gone from the store (expired, deleted, broken or the store restarted)")
            else:
                self._lose(f"the store says the lease is now {info.describe()}")
            return False
        with self._mutex:
            if self._state not in ("held", "suspended"):
                return False
            self._state = "held"
            self._deadline = sent + ttl
            self._info = info
        self._lock._emit("renewed", self.fence, info.owner, f"renewal {info.renewals}")
        return True

    def _heartbeat_flow(self) -> _Flow[float | None]:
        """One heartbeat tick: renew if due; return the seconds until the next tick, or None to stop."""
        yield from self._renew_flow()
        self._check_deadline()
        if self._state not in ("held", "suspended"):
            return None
        now = self._clock.now()
        interval = self._lock.ttl / 3
        if self._state == "suspended":
            interval = min(interval, max(0.05, self._lock.ttl / 10))
        return max(0.001, min(interval, self._deadline - now))

    def _release_flow(self) -> _Flow[bool]:
        self._stop.set()
        self._check_deadline()
        with self._mutex:
            if self._state == "released":
                return False
            was_held = self._state in ("held", "suspended")
            self._state = "released" if was_held else self._state
        if not was_held:
            # Lost already; still remove the key in case it is ours after all (token-checked).
            with contextlib.suppress(BackendError):
                yield _Call(self._lock._release_op, self.name, self._token)
            return False
        ok: bool = yield _Call(self._lock._release_op, self.name, self._token)
        if ok:
            self._lock._emit("released", self.fence, self._info.owner, "")
        else:
            self._reason = "the store no longer had it when it was released"
        return ok


class Lease(_LeaseBase):
    """The handle of one acquisition of a `LeaseLock`: pass it around explicitly.

    Attributes:
        name: The lease's name.
        fence: This acquisition's fencing number: larger than every earlier
            acquisition's. Pass it with every write to a store that checks it
            (`tokenbucket.fencing`), so a holder that lost the lease cannot
            overwrite a newer holder's work.
    """

    def renew(self) -> bool:
        """Renew now (counts as a beat). Returns True if renewed.

        Raises:
            LeaseLost: the lease was lost or released.
        """
        self._last_beat = self._clock.now()
        self.ensure_held()
        ok: bool = _drive(self._lock, self._renew_flow())
        self.ensure_held()
        return ok

    def release(self) -> bool:
        """Stop the heartbeat and release the lease, waking the waiters. Idempotent.

        Returns:
            True if the lease was still held and is now released; False if it
            had been lost (or released) before.

        Raises:
            BackendError: the store could not be reached (the lease expires by itself within its TTL).
        """
        result: bool = _drive(self._lock, self._release_flow())
        return result

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _exit(self, self.release, exc)

    def _start_heartbeat(self) -> None:
        thread = threading.Thread(
            target=_heartbeat_thread,
            args=(weakref.ref(self), self._stop, self._lock.ttl / 3),
            name=f"tokenbucket-lease-heartbeat:{self.name}",
            daemon=True,
        )
        thread.start()


def _exit(lease: _LeaseBase, release: Callable[[], bool], exc: BaseException | None) -> None:
    """Leave a ``with`` block: release; raise `LeaseLost` if the body ran without the lease."""
    if lease._state == "released":
        return  # the body released it itself
    if exc is not None:
        try:
            release()
        except Exception:
            _log.exception("could not release lease %r after an error in its body", lease.name)
        return
    if not release():
        raise LeaseLost(f"lease {lease.name!r} (fence {lease.fence}) was lost while held: {lease.lost_reason}")


def _heartbeat_thread(ref: weakref.ref[Lease], stop: threading.Event, delay: float) -> None:
    """Renew while the lease is held and its handle alive; a dropped handle lets the lease lapse."""
    while not stop.wait(delay):
        lease = ref()
        if lease is None:
            return
        try:
            next_delay = _drive(lease._lock, lease._heartbeat_flow())
        except Exception:
            _log.exception("heartbeat of lease %r failed", lease.name)
            next_delay = delay
        del lease
        if next_delay is None:
            return
        delay = next_delay


_HEARTBEATS: set[asyncio.Task[None]] = set()
"""Running heartbeat tasks (the event loop keeps only weak references)."""


class AsyncLease(_LeaseBase):
    """The asyncio twin of `Lease`: ``await lease.renew()``, ``await lease.release()``, ``async with``.

    With ``cancel_on_lost=True`` on the lock, losing the lease cancels the task
    that acquired it; leaving ``async with`` then raises `LeaseLost` instead of
    the cancellation.
    """

    def __init__(self, lock: _LockBase[Any], token: str, info: LeaseInfo, sent: float) -> None:
        super().__init__(lock, token, info, sent)
        self._holder_task = asyncio.current_task()
        self._cancelled_by_loss = False
        self._heartbeat: asyncio.Task[None] | None = None

    def _after_loss(self) -> None:
        task = self._holder_task
        if not getattr(self._lock, "cancel_on_lost", False) or task is None or task.done():
            return
        try:
            current = asyncio.current_task()
        except RuntimeError:  # detected outside the loop's thread
            current = None
        if task is current:
            return  # the holder itself noticed: it gets LeaseLost, not a cancellation
        self._cancelled_by_loss = True
        loop = task.get_loop()
        loop.call_soon_threadsafe(task.cancel, f"lease {self.name!r} lost")

    async def renew(self) -> bool:
        """See `Lease.renew`."""
        self._last_beat = self._clock.now()
        self.ensure_held()
        ok: bool = await _adrive(self._lock, self._renew_flow())
        self.ensure_held()
        return ok

    async def release(self) -> bool:
        """See `Lease.release`."""
        task = self._heartbeat
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        result: bool = await _adrive(self._lock, self._release_flow())
        return result

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await _aexit(self, exc)

    def _start_heartbeat(self) -> None:
        task = asyncio.get_running_loop().create_task(
            _heartbeat_task(weakref.ref(self), self._lock.ttl / 3), name=f"tokenbucket-lease-heartbeat:{self.name}"
        )
        _HEARTBEATS.add(task)
        task.add_done_callback(_HEARTBEATS.discard)
        self._heartbeat = task


async def _aexit(lease: AsyncLease, exc: BaseException | None) -> None:
    if isinstance(exc, asyncio.CancelledError) and lease._cancelled_by_loss:
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):
            task.uncancel()
        await lease.release()
        raise LeaseLost(
            f"lease {lease.name!r} (fence {lease.fence}) was lost while held: {lease.lost_reason}"
        ) from exc
    if lease._state == "released":
        return  # the body released it itself
    if exc is not None:
        try:
            await lease.release()
        except Exception:
            _log.exception("could not release lease %r after an error in its body", lease.name)
        return
    if not await lease.release():
        raise LeaseLost(f"lease {lease.name!r} (fence {lease.fence}) was lost while held: {lease.lost_reason}")


async def _heartbeat_task(ref: weakref.ref[AsyncLease], delay: float) -> None:
    while True:
        await asyncio.sleep(delay)
        lease = ref()
        if lease is None or lease._stop.is_set():
            return
        try:
            next_delay = await _adrive(lease._lock, lease._heartbeat_flow())
        except Exception:
            _log.exception("heartbeat of lease %r failed", lease.name)
            next_delay = delay
        del lease
        if next_delay is None:
            return
        delay = next_delay


_L = TypeVar("_L", Lease, AsyncLease)


class _LockBase(Listened, Generic[_L]):
    """Configuration and the acquire flow shared by `LeaseLock` and `AsyncLeaseLock`."""

    _backend: Any
    _lease_class: type[_L]
    on_lost: Callable[[_L], object] | None
    _needs = "lease_acquire"
    """A method the store must have (and whether it is a coroutine function says sync or asyncio)."""
    _protocol = "tokenbucket.backends.LeaseBackend"
    _renew_op = "lease_renew"
    _release_op = "lease_release"
    _break_op = "lease_break"

    def __init__(
        self,
        name: str,
        *,
        ttl: float,
        backend: LeaseBackend | AsyncLeaseBackend | None = None,
        require_beat: bool = False,
        max_hold: float | None = None,
        heartbeat: bool = True,
        on_lost: Callable[[_L], object] | None = None,
        task: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        self.name = check_name(name)
        self.ttl = check_positive("ttl", ttl)
        self.max_hold = None if max_hold is None else check_positive("max_hold", max_hold)
        if backend is None:
            backend = _DEFAULT_BACKEND
        elif not callable(getattr(backend, self._needs, None)):
            raise TypeError(f"backend must implement {self._protocol}, not {type(backend).__name__}")
        if clock is not None and not isinstance(clock, Clock):
            raise TypeError(f"clock must have now(), sleep() and asleep(), not {type(clock).__name__}")
        if on_lost is not None and not callable(on_lost):
            raise TypeError(f"on_lost must be callable, not {type(on_lost).__name__}")
        if task is not None and not isinstance(task, str):
            raise TypeError(f"task must be a string, not {type(task).__name__}")
        self._backend = backend
        self._clock: Clock = SystemClock() if clock is None else clock
        self._custom_clock = clock is not None
        self.require_beat = bool(require_beat)
        self.heartbeat = bool(heartbeat)
        self.on_lost = on_lost
        self.task = task
        self._entered: dict[object, _L] = {}
        self._init_listeners(listeners)

    def _emit(self, kind: LeaseEventKind, fence: int, owner: LeaseOwner, reason: str) -> None:
        events = self._events
        if events is not None:
            holder = f"{owner.host}:{owner.pid}:{owner.task}"
            events.emit(LeaseEvent(kind, self.name, self._clock.now(), fence, holder, reason))

    @property
    def backend(self) -> LeaseBackend | AsyncLeaseBackend:
        """Where the lease lives."""
        backend: LeaseBackend | AsyncLeaseBackend = self._backend
        return backend

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, ttl={self.ttl:g}, backend={type(self._backend).__name__})"

    def _task_name(self) -> str:
        return threading.current_thread().name

    def _owner(self) -> LeaseOwner:
        return LeaseOwner(socket.gethostname(), os.getpid(), self.task or self._task_name())

    def _break_flow(self, expect_fence: int) -> _Flow[LeaseInfo]:
        if isinstance(expect_fence, bool) or not isinstance(expect_fence, int):
            raise TypeError(f"expect_fence must be an int, not {type(expect_fence).__name__}")
        reply: tuple[bool, LeaseInfo | None] = yield _Call(self._break_op, self.name, expect_fence)
        ok, info = reply
        if not ok or info is None:
            raise self._refused_break(expect_fence, info)
        self._emit("broken", info.fence, info.owner, f"broken with expect_fence={expect_fence}")
        return info

    def _refused_break(self, expect_fence: int, info: LeaseInfo | None) -> LeaseError:
        """Why nothing was broken: nobody holds the lease, or its fence is another."""
        if info is None:
            return LeaseError(f"lease {self.name!r} is not held by anyone; nothing to break")
        return LeaseError(
            f"lease {self.name!r} has fence {info.fence}, not {expect_fence}: it is {info.describe()}; "
            "nothing was broken (inspect it again and pass the fence you see)"
        )

    def _acquire_flow(self, blocking: bool, timeout: float | None) -> _Flow[_L]:
        if not isinstance(blocking, bool):
            raise TypeError(f"blocking must be True or False, not {type(blocking).__name__}")
        wait = check_timeout(timeout) if blocking else 0.0
        token = secrets.token_hex(16)
        owner = self._owner()
        clock = self._clock
        started = clock.now()
        deadline = math.inf if wait is None else started + wait
        while True:
            sent = clock.now()
            try:
                ok, info = yield _Call("lease_acquire", self.name, token, self.ttl, owner)
            except BackendError:
                raise
            except BaseException:
                # Interrupted (cancelled, KeyboardInterrupt) while asking: the store may have granted it
                # already. Give it back (token-checked, so nobody else's lease is touched).
                try:
                    yield _Call("lease_release", self.name, token)
                except Exception:
                    _log.warning("could not give back lease %r after an interrupted acquire", self.name)
                raise
            if ok:
                lease = self._lease_class(self, token, info, sent)
                self._emit("acquired", lease.fence, owner, "")
                return lease
            if not blocking:
                raise _not_acquired(self.name, info, None)
            left = deadline - clock.now()
            if left <= 0:
                raise _not_acquired(self.name, info, clock.now() - started)
            held_for = info.expires_in + _WAKE_SLACK if info is not None else _WAKE_SLACK
            yield _Wait("lease_wait", (self.name,), min(left, held_for))


class LeaseLock(_LockBase[Lease]):
    """A named lease shared by every thread (and, on Redis, every host) that uses the name.

    ``with lock as lease:`` acquires (blocking), starts the heartbeat, and
    releases on exit; ``lock.acquire()`` returns the `Lease` to release
    yourself. Leaving the ``with`` block normally raises `LeaseLost` if the
    lease was lost while the body ran.

    Guarantees:
        * Nothing is held for ever: the store frees the lease ``ttl`` seconds
          after its last renewal, so a crashed holder blocks others for at
          most ``ttl``.
        * The heartbeat renews every ``ttl / 3`` only while the holder makes
          progress: the lease is not released and its handle is alive, and,
          with ``require_beat=True``, `Lease.beat` was called within ``ttl``.
          ``max_hold`` caps the total time held.
        * Each acquisition's ``lease.fence`` is larger than every earlier one.
        * A lost lease is never re-acquired silently; the holder learns it from
          `Lease.ensure_held`, `Lease.beat`, ``on_lost``, or on leaving ``with``.

    Args:
        name: The lease's name.
        ttl: Seconds the lease lives without a renewal. Required: there is no
            "forever".
        backend: A `tokenbucket.backends.LeaseBackend` (`MemoryBackend`, the
            default one shared by this process, or `RedisBackend`).
        require_beat: Renew only while `Lease.beat` is called at least once per ``ttl``.
        max_hold: Most seconds one acquisition may be held; None for no cap.
        heartbeat: Renew automatically (a daemon thread). With False, call
            `Lease.renew` yourself.
        on_lost: Called with the lease when the holder learns it is lost (from
            the heartbeat thread, or the thread that noticed).
        task: The task label stored with the lease for operators; default the thread's name.
        clock: The clock for the holder's deadlines and waits; default the
            monotonic clock. With a custom clock (tests), waits sleep on it
            instead of listening for releases.
        listeners: Told about every lease event of this lock
            (`tokenbucket.LeaseEvent`: acquired, renewed, released, suspended,
            lost, broken); they run in the thread or task that caused it.

    Raises:
        ConfigurationError: ``ttl`` or ``max_hold`` is not a positive number.
        TypeError: an argument has the wrong type (``ttl=None`` included).
    """

    _backend: LeaseBackend
    _lease_class = Lease

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> Lease:
        """Acquire the lease and return its handle (with the heartbeat running).

        Waiting is woken by a release (not polling), or when the holder's
        lease would expire.

        Args:
            blocking: Wait for the lease; with False, try once.
            timeout: With ``blocking``, the longest wait in seconds; None waits as long as needed.

        Raises:
            NotAcquired: someone else holds it and waiting was not allowed or
                timed out; the message says who and until when.
            BackendError: the store failed.
        """
        lease: Lease = _drive(self, self._acquire_flow(blocking, timeout))
        if self.heartbeat:
            lease._start_heartbeat()
        return lease

    def inspect(self) -> LeaseInfo | None:
        """The lease held under this name now (by anyone), or None. Changes nothing."""
        info: LeaseInfo | None = self._backend.lease_inspect(self.name)
        return info

    def break_lease(self, expect_fence: int) -> LeaseInfo:
        """Remove the lease whoever holds it, only if its fence is ``expect_fence``; wake the waiters.

        For operators (the CLI's ``locks break``): inspect first, then break
        the acquisition you saw. The holder learns of it at its next renewal
        (``lost``), and its fenced writes are refused from then on.

        Returns:
            The lease that was broken.

        Raises:
            LeaseError: nobody holds the lease, or its fence is not ``expect_fence`` (nothing changed).
        """
        info: LeaseInfo = _drive(self, self._break_flow(expect_fence))
        return info

    def __enter__(self) -> Lease:
        me = threading.get_ident()
        if me in self._entered:
            raise LeaseError(
                f"lease {self.name!r} is already held by this thread through this lock: leases are not reentrant"
            )
        lease = self.acquire()
        self._entered[me] = lease
        return lease

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lease = self._entered.pop(threading.get_ident())
        lease.__exit__(exc_type, exc, tb)


class AsyncLeaseLock(_LockBase[AsyncLease]):
    """The asyncio twin of `LeaseLock`: ``async with lock as lease:``, ``await lock.acquire()``.

    The heartbeat is an asyncio task. It accepts a sync store that never
    blocks (`MemoryBackend`) or an async one (the Redis backend on a
    ``redis.asyncio`` client).

    The arguments are those of `LeaseLock` (``task`` defaults to the asyncio
    task's name, ``on_lost`` is called on the event loop), plus one:

    Args:
        cancel_on_lost: Cancel the task that acquired the lease when the lease
            is lost; leaving ``async with`` then raises `LeaseLost`.
    """

    _backend: LeaseBackend | AsyncLeaseBackend
    _lease_class = AsyncLease

    def __init__(
        self,
        name: str,
        *,
        ttl: float,
        backend: LeaseBackend | AsyncLeaseBackend | None = None,
        require_beat: bool = False,
        max_hold: float | None = None,
        heartbeat: bool = True,
        on_lost: Callable[[AsyncLease], object] | None = None,
        cancel_on_lost: bool = False,
        task: str | None = None,
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        super().__init__(
            name,
            ttl=ttl,
            backend=backend,
            require_beat=require_beat,
            max_hold=max_hold,
            heartbeat=heartbeat,
            on_lost=on_lost,
            task=task,
            clock=clock,
            listeners=listeners,
        )
        self.cancel_on_lost = bool(cancel_on_lost)

    def _task_name(self) -> str:
        current = asyncio.current_task()
        return current.get_name() if current is not None else threading.current_thread().name

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> AsyncLease:
        """See `LeaseLock.acquire`; cancelling the waiting task takes nothing."""
        lease: AsyncLease = await _adrive(self, self._acquire_flow(blocking, timeout))
        if self.heartbeat:
            lease._start_heartbeat()
        return lease

    async def inspect(self) -> LeaseInfo | None:
        """See `LeaseLock.inspect`."""
        result = self._backend.lease_inspect(self.name)
        if inspect.isawaitable(result):
            result = await result
        info: LeaseInfo | None = result
        return info

    async def break_lease(self, expect_fence: int) -> LeaseInfo:
        """See `LeaseLock.break_lease`."""
        result: LeaseInfo = await _adrive(self, self._break_flow(expect_fence))
        return result

    async def __aenter__(self) -> AsyncLease:
        me = asyncio.current_task()
        if me in self._entered:
            raise LeaseError(
                f"lease {self.name!r} is already held by this task through this lock: leases are not reentrant"
            )
        lease = await self.acquire()
        self._entered[me] = lease
        return lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lease = self._entered.pop(asyncio.current_task())
        await lease.__aexit__(exc_type, exc, tb)
