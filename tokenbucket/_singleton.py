"""`singleton`: run a job in at most one place at a time, on a lease that cannot become a ghost lock."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, cast

from ._exceptions import ConfigurationError, NotAcquired
from ._lease import AsyncLeaseLock, LeaseLock
from .backends._lease_base import AsyncLeaseBackend, LeaseBackend

__all__ = ["OnBusy", "singleton"]

_log = logging.getLogger("tokenbucket.lease")

OnBusy = Literal["skip", "raise", "wait"]
"""What a `singleton` job does when another run holds its lease."""

_F = TypeVar("_F", bound=Callable[..., Any])


def singleton(
    name: str,
    *,
    ttl: float,
    on_busy: OnBusy = "skip",
    timeout: float | None = None,
    backend: LeaseBackend | AsyncLeaseBackend | None = None,
    pass_lease: bool = False,
    **lock_options: Any,
) -> Callable[[_F], _F]:
    """Decorate a job (a function or a coroutine function) so that one run at a time holds lease ``name``.

    The run holds a `tokenbucket.LeaseLock` (an `tokenbucket.AsyncLeaseLock`
    for a coroutine function) for as long as it runs, renewed by the
    heartbeat; a run that crashes frees the lease within ``ttl``, so a job can
    never be skipped for ever because of a dead run.

    For example:

        @singleton("backfill_deals", ttl=30, backend=backend)
        def backfill() -> int: ...

        backfill()   # runs, or returns None at once if another run holds the lease

    Args:
        name: The lease's name.
        ttl: Seconds the lease lives without a renewal (required).
        on_busy: When another run holds the lease: ``"skip"`` returns None at
            once (logging who holds it), ``"raise"`` raises
            `tokenbucket.NotAcquired`, ``"wait"`` waits for it (at most
            ``timeout`` seconds, then `tokenbucket.NotAcquired`).
        timeout: With ``on_busy="wait"``, the longest wait; None for no limit.
        backend: Where the lease lives; default this process's memory backend.
        pass_lease: Call the job with the `tokenbucket.Lease` as its first
            argument (for ``lease.beat()`` and ``lease.fence``).
        **lock_options: Passed to the lock (``require_beat``, ``max_hold``, ``on_lost``,
            ``cancel_on_lost`` for coroutine functions, ...).

    Returns:
        The decorator. The wrapped job returns what the job returns, or None
        when skipped; it raises `tokenbucket.LeaseLost` if the lease was lost
        while the job ran. The lock is available as ``job.lock``.

    Raises:
        ConfigurationError: ``on_busy`` is not one of the three, or ``ttl`` is not positive.
        TypeError: ``ttl`` is missing or not a number.
    """
    if on_busy not in ("skip", "raise", "wait"):
        raise ConfigurationError(f"on_busy must be 'skip', 'raise' or 'wait', not {on_busy!r}")
    blocking = on_busy == "wait"
    if not blocking and timeout is not None:
        raise ConfigurationError("timeout applies only to on_busy='wait'")

    def decorate(func: _F) -> _F:
        if inspect.iscoroutinefunction(func):
            alock = AsyncLeaseLock(name, ttl=ttl, backend=backend, task=func.__qualname__, **lock_options)

            @functools.wraps(func)
            async def arun(*args: Any, **kwargs: Any) -> Any:
                try:
                    lease = await alock.acquire(blocking=blocking, timeout=timeout)
                except NotAcquired as exc:
                    if on_busy == "skip":
                        _log.info("skipped %s: %s", func.__qualname__, exc)
                        return None
                    raise
                async with lease:
                    call = cast(Callable[..., Awaitable[Any]], func)
                    return await (call(lease, *args, **kwargs) if pass_lease else call(*args, **kwargs))

            arun.lock = alock  # type: ignore[attr-defined]
            return cast(_F, arun)

        lock = LeaseLock(name, ttl=ttl, backend=backend, task=func.__qualname__, **lock_options)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                lease = lock.acquire(blocking=blocking, timeout=timeout)
            except NotAcquired as exc:
                if on_busy == "skip":
                    _log.info("skipped %s: %s", func.__qualname__, exc)
                    return None
                raise
            with lease:
                return func(lease, *args, **kwargs) if pass_lease else func(*args, **kwargs)

        run.lock = lock  # type: ignore[attr-defined]
        return cast(_F, run)

    return decorate
