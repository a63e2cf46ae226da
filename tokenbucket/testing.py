"""Helpers for tests and simulations: `ManualClock`, virtual time you drive."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading

from ._exceptions import ConfigurationError
from ._validate import check_nonnegative

__all__ = ["ManualClock"]


class ManualClock:
    """A clock that moves only when told to, for tests and simulations.

    Pass it as ``clock=`` to `tokenbucket.TokenBucket` or
    `tokenbucket.AsyncTokenBucket` (and to `tokenbucket.MemoryBackend`), and
    hours of refill take microseconds. Time never goes backwards.

    With ``autojump=True`` (the default) a sleep moves the clock forward by its
    duration at once: right for one waiter at a time. With ``autojump=False``
    sleepers (threads or tasks) block until `advance` or `set` moves the clock
    past their deadline, so a test can place several waiters and then let
    time pass.

    Args:
        start: The first reading, in seconds.
        autojump: Whether sleeping moves the clock by itself.
    """

    def __init__(self, start: float = 0.0, *, autojump: bool = True) -> None:
        self._now = check_nonnegative("start", start)
        self.autojump = autojump
        self._cond = threading.Condition()
        self._order = itertools.count()
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        """The current virtual time in seconds."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (zero or more) and wake due sleepers.

        Returns:
            The new time.
        """
        step = check_nonnegative("seconds", seconds)
        return self.set(self._now + step)

    def set(self, when: float) -> float:
        """Move the clock to ``when`` and wake due sleepers.

        Raises:
            ConfigurationError: ``when`` is earlier than now (time never goes backwards).
        """
        if when < self._now:
            raise ConfigurationError(f"ManualClock cannot go back from {self._now} to {when}")
        with self._cond:
            self._now = when
            self._cond.notify_all()
            while self._waiters and self._waiters[0][0] <= when:
                _, _, fut = heapq.heappop(self._waiters)
                loop = fut.get_loop()
                loop.call_soon_threadsafe(_resolve, fut)
        return when

    def sleep(self, seconds: float) -> None:
        """Sleep in virtual time: jump there, or wait until the clock is advanced."""
        deadline = self._now + max(0.0, seconds)
        if self.autojump:
            if deadline > self._now:
                self.set(deadline)
            return
        with self._cond:
            while self._now < deadline:
                self._cond.wait()

    async def asleep(self, seconds: float) -> None:
        """Sleep a task in virtual time: jump there, or wait until the clock is advanced."""
        deadline = self._now + max(0.0, seconds)
        if self.autojump:
            if deadline > self._now:
                self.set(deadline)
            await asyncio.sleep(0)
            return
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._cond:
            heapq.heappush(self._waiters, (deadline, next(self._order), fut))
        await fut

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r}, autojump={self.autojump!r})"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
