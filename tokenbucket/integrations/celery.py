"""Celery helpers: spend a shared quota without blocking a worker, and one-at-a-time tasks.

A worker process that sleeps for a minute waiting for tokens is a worker that
runs nothing else for a minute. These helpers wait in the worker only for
short waits; a longer wait becomes a Celery retry scheduled for the moment the
tokens will be there, and the worker is free meanwhile:

    from tokenbucket import RedisBackend, TokenBucket
    from tokenbucket.integrations.celery import acquire_or_retry, spends

    keepa = TokenBucket("keepa", rate="20/minute", capacity=300, backend=RedisBackend.from_url(URL))

    @app.task(bind=True)
    def fetch(self, asins):
        grant = acquire_or_retry(self, keepa, cost=len(asins), max_wait=5)
        reply = call_keepa(asins)
        grant.settle(reply["tokensConsumed"])

    @app.task(bind=True)
    @spends(keepa, cost=lambda asins: len(asins), settle=lambda reply: reply["tokensConsumed"])
    def fetch_too(self, asins):
        return call_keepa(asins)

Two ways to wait longer than ``max_wait``:

* ``hold=True`` (the default): the cost is reserved now, first-come first-served,
  and the task is retried with ``countdown`` equal to the reservation's delay.
  The retried run finds its reservation in the message headers and starts
  without charging again. Because the tokens are held for it, a task is never
  overtaken by cheaper tasks that arrive while it waits: an expensive task is
  not starved. If the retry cannot be sent (``MaxRetriesExceededError``, broker
  down) the reservation is cancelled and its cost refunded. If the retried
  message is lost (a worker killed with early acknowledgement), the tokens
  stay spent: the bucket refills, nothing stays locked.
* ``hold=False``: nothing is charged; the task is retried after the
  `tokenbucket.AcquireTimeout.retry_after` the bucket computed. Cheaper, but a
  task that retries may find the tokens taken again by others.

Either way a quota wait uses one of the task's retries (Celery's
``max_retries``, 3 by default). Call these helpers once per run, at the start of
the task, before any side effect: a retried task runs again from the top.

In eager mode (``task_always_eager``, ``task.apply()``) and when the task
function is called directly there is no worker to hand the wait to: the call
blocks until the tokens are there, like `tokenbucket.TokenBucket.acquire`.

`singleton` is `tokenbucket.singleton` for tasks: a task runs at most once at
a time across every worker, under a `tokenbucket.LeaseLock` (a lease with a TTL
and a heartbeat, so a crashed worker's lock frees itself), and a busy run can
be retried later instead of skipped.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

from celery.exceptions import Retry  # type: ignore[import-untyped]

from .._bucket import Grant, TokenBucket, _priced
from .._exceptions import AcquireTimeout, ConfigurationError, NotAcquired
from .._lease import LeaseLock
from .._validate import check_nonnegative

__all__ = ["acquire_or_retry", "singleton", "spends"]

_log = logging.getLogger("tokenbucket.celery")

HEADER = "tokenbucket_reserved"
"""The message header that carries a reservation held across a retry."""

_R = TypeVar("_R")


def acquire_or_retry(
    task: Any,
    bucket: TokenBucket,
    cost: float | None = None,
    *,
    op: str | None = None,
    units: float = 1,
    max_wait: float = 10.0,
    hold: bool = True,
) -> Grant:
    """Charge ``cost`` to ``bucket`` for this task run, waiting in the worker at most ``max_wait`` seconds.

    Args:
        task: The bound task (``@app.task(bind=True)``, the ``self`` argument).
        bucket: The shared bucket (on a `tokenbucket.RedisBackend` when the
            workers run on several hosts or processes).
        cost: Tokens the run will spend; default 1, or with ``op`` the bucket's
            cost model's estimate.
        op: The operation, priced by the bucket's `tokenbucket.CostModel` (as
            in `tokenbucket.TokenBucket.acquire`); settling the grant teaches the model.
        units: How many units (items) the call covers, with ``op``.
        max_wait: The longest wait spent sleeping in the worker; a longer wait
            becomes a retry.
        hold: Keep the reservation across the retry (see the module docs).

    Returns:
        The `tokenbucket.Grant` for this run; call ``grant.settle(actual)``
        after the upstream call.

    Raises:
        celery.exceptions.Retry: the wait is longer than ``max_wait``; the task
            is rescheduled (let it propagate).
        celery.exceptions.MaxRetriesExceededError: the wait needs a retry and
            none is left; nothing stays charged.
        tokenbucket.CostExceedsCapacity: the cost can never start (nothing charged).
        tokenbucket.ConfigurationError: a bad ``cost``, ``units`` or ``max_wait``,
            or an ``op`` the bucket cannot price.
        tokenbucket.BackendError: the store failed.
    """
    wait_limit = check_nonnegative("max_wait", max_wait)
    if cost is None and op is None:
        cost = 1
    request = task.request
    carried = _take_carried(request, bucket, cost, op, units, wait_limit)
    if carried is not None:
        return carried
    if request.called_directly or request.is_eager:
        return bucket.acquire(cost, op=op, units=units)
    if not hold:
        try:
            reservation = bucket.reserve(cost, timeout=wait_limit, op=op, units=units)
        except AcquireTimeout as exc:
            _log.info(
                "task %s: %g tokens of %r in %.3g s; retrying then", task.name, exc.cost, bucket.name, exc.retry_after
            )
            raise task.retry(countdown=exc.retry_after) from None
        return reservation.wait()
    reservation = bucket.reserve(cost, op=op, units=units)
    if reservation.delay <= wait_limit:
        return reservation.wait()
    now = time.time()
    marker = {
        "bucket": bucket.name,
        "cost": reservation.cost,
        "asked": cost,
        "op": op,
        "units": units,
        "start": now + reservation.delay,
        "made": now,
        "retries": request.retries + 1,
    }
    headers = {**(request.headers or {}), HEADER: marker}
    _log.info(
        "task %s: %g tokens of %r reserved, starting in %.3g s; retrying then",
        task.name,
        reservation.cost,
        bucket.name,
        reservation.delay,
    )
    try:
        raise task.retry(countdown=reservation.delay, headers=headers)
    except Retry:
        raise
    except BaseException:
        reservation.cancel()
        raise


def _take_carried(
    request: Any, bucket: TokenBucket, cost: float | None, op: str | None, units: float, wait_limit: float
) -> Grant | None:
    """The grant of a reservation this run inherited from the run that retried it, if any (used once).

    It matches when the run asks the same bucket for the same thing (the same
    cost, or the same operation and units) on the retry the reservation was
    made for: a later retry for another reason charges afresh.
    """
    marker = (request.headers or {}).get(HEADER)
    if (
        not isinstance(marker, dict)
        or getattr(request, "_tokenbucket_taken", False)
        or marker.get("bucket") != bucket.name
        or marker.get("asked") != cost
        or marker.get("op") != op
        or marker.get("units") != units
        or marker.get("retries") != request.retries
    ):
        return None
    request._tokenbucket_taken = True
    early = float(marker["start"]) - time.time()
    if early > 0:  # delivered before its start (clock skew between hosts): wait the rest, never over max_wait
        time.sleep(min(early, wait_limit))
    grant = Grant(bucket, float(marker["cost"]), time.time() - float(marker["made"]))
    return _priced(grant, op, float(units))


def spends(
    bucket: TokenBucket | Callable[..., TokenBucket],
    cost: float | Callable[..., float] | None = None,
    *,
    op: str | None = None,
    units: float | Callable[..., float] = 1,
    max_wait: float = 10.0,
    hold: bool = True,
    settle: Callable[[Any], float] | None = None,
) -> Callable[[Callable[..., _R]], Callable[..., _R]]:
    """Decorate a bound task so each run first charges ``cost`` to ``bucket`` (`acquire_or_retry`).

    Put it under ``@app.task(bind=True)``.

    Args:
        bucket: The shared bucket, or a function of the task's arguments
            (without ``self``) returning it (for example one bucket per API key).
        cost: The cost, or a function of the task's arguments (without ``self``)
            returning it; default 1, or with ``op`` the cost model's estimate.
        op: The operation priced by the bucket's cost model.
        units: With ``op``, the units, or a function of the task's arguments returning them.
        max_wait: As `acquire_or_retry`.
        hold: As `acquire_or_retry`.
        settle: A function of the task's return value giving the actual cost;
            the grant is settled with it after a successful run.

    If the task raises, nothing is refunded: the upstream call may have been made.
    """

    def decorate(fn: Callable[..., _R]) -> Callable[..., _R]:
        @functools.wraps(fn)
        def run(task: Any, *args: Any, **kwargs: Any) -> _R:
            _check_bound(task, fn)
            the_bucket = bucket if isinstance(bucket, TokenBucket) else bucket(*args, **kwargs)
            c = cost(*args, **kwargs) if callable(cost) else cost
            n = units(*args, **kwargs) if callable(units) else units
            grant = acquire_or_retry(task, the_bucket, c, op=op, units=n, max_wait=max_wait, hold=hold)
            result = fn(task, *args, **kwargs)
            if settle is not None:
                grant.settle(settle(result))
            return result

        return run

    return decorate


def singleton(
    lock: str | LeaseLock,
    *,
    ttl: float | None = None,
    on_busy: Literal["skip", "retry", "raise", "wait"] = "skip",
    timeout: float | None = None,
    backend: Any = None,
    **lock_options: Any,
) -> Callable[[Callable[..., _R]], Callable[..., _R | None]]:
    """`tokenbucket.singleton` for a bound Celery task: one run at a time across every worker.

    Put it under ``@app.task(bind=True)``. The run holds the lease (a
    `tokenbucket.LeaseLock`) while the task body runs, renewed by its
    heartbeat, and releases it when the body returns or raises; a worker that
    dies frees it within the lease's TTL. Use a `tokenbucket.RedisBackend`
    when the workers are several processes or hosts.

    Args:
        lock: The lease's name (then ``ttl`` is required, as for
            `tokenbucket.singleton`), or a `tokenbucket.LeaseLock` built with
            the options you want (its own TTL, backend, clock).
        ttl: With a name, seconds the lease lives without a renewal.
        on_busy: When another run holds the lease: ``"skip"`` returns None at
            once (logged); ``"retry"`` retries the task when the holder's lease
            would expire (the holder's heartbeat may extend it: the run then
            retries again, using one of the task's retries each time);
            ``"raise"`` fails the run with `tokenbucket.NotAcquired`; ``"wait"``
            blocks the worker until the lease is free, at most ``timeout`` seconds.
        timeout: With ``on_busy="wait"``, the longest wait; None for no limit.
        backend: With a name, where the lease lives; default this process's memory backend.
        **lock_options: With a name, passed to `tokenbucket.LeaseLock`
            (``require_beat``, ``max_hold``, ``on_lost``, ...).

    Returns:
        The decorator; the wrapped task function's lock is ``.lock``.

    Raises:
        tokenbucket.LeaseLost: the lease was lost while the body ran (the body's
            result is not trusted).
        tokenbucket.ConfigurationError: ``on_busy`` is not one of the four, or
            ``timeout`` is given without ``on_busy="wait"``.
        TypeError: a name without ``ttl``, or options with a ready lock.
    """
    if on_busy not in ("skip", "retry", "raise", "wait"):
        raise ConfigurationError(f"on_busy must be 'skip', 'retry', 'raise' or 'wait', not {on_busy!r}")
    if timeout is not None and on_busy != "wait":
        raise ConfigurationError("timeout applies only to on_busy='wait'")
    if isinstance(lock, LeaseLock):
        if ttl is not None or backend is not None or lock_options:
            raise TypeError("give either a LeaseLock, or a name with ttl, backend and lock options; not both")
    elif ttl is None:
        raise TypeError("singleton(name) needs ttl=: a lease without a TTL could become a ghost lock")

    def decorate(fn: Callable[..., _R]) -> Callable[..., _R | None]:
        the_lock = (
            lock
            if isinstance(lock, LeaseLock)
            else LeaseLock(lock, ttl=cast(float, ttl), backend=backend, task=fn.__qualname__, **lock_options)
        )

        @functools.wraps(fn)
        def run(task: Any, *args: Any, **kwargs: Any) -> _R | None:
            _check_bound(task, fn)
            try:
                lease = the_lock.acquire(blocking=on_busy == "wait", timeout=timeout)
            except NotAcquired as exc:
                if on_busy == "skip":
                    _log.info("task %s skipped: %s", task.name, exc)
                    return None
                if on_busy != "retry":
                    raise
                countdown = exc.holder.expires_in if exc.holder is not None else the_lock.ttl
                _log.info("task %s: %s; retrying in %.3g s", task.name, exc, countdown)
                raise task.retry(countdown=countdown, exc=exc) from None
            with lease:
                return fn(task, *args, **kwargs)

        run.lock = the_lock  # type: ignore[attr-defined]
        return run

    return decorate


def _check_bound(task: Any, fn: Callable[..., Any]) -> None:
    if not hasattr(task, "request") or not hasattr(task, "retry"):
        raise TypeError(f"{fn.__qualname__} must be a bound task: decorate it with @app.task(bind=True)")
