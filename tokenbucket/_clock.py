"""Clocks: where the front ends read the time and how they sleep."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What a front end needs of a clock: a reading in seconds and a way to sleep.

    ``now`` should never go backwards; if it does, a bucket's time stands
    still until the clock catches up (no refill, and waits counted from the
    stored time). `tokenbucket.testing.ManualClock` is a clock under the
    test's control.
    """

    def now(self) -> float:
        """Seconds on this clock."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


# The longest single sleep asked of the OS: time.sleep refuses lengths past about 9e9 s (and
# threading.TIMEOUT_MAX), while a bucket deep in debt can ask for a wait longer than that.
_CHUNK = 1e9  # about 31 years


class SystemClock:
    """The process's monotonic clock (`time.monotonic`), with real sleeps."""

    now = staticmethod(time.monotonic)

    @staticmethod
    def sleep(seconds: float) -> None:
        """Block the calling thread for ``seconds`` (`time.sleep`, in bounded chunks: any length works)."""
        if seconds <= _CHUNK:
            time.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, _CHUNK))

    @staticmethod
    async def asleep(seconds: float) -> None:
        """Suspend the calling task for ``seconds`` (`asyncio.sleep`, in bounded chunks: any length works)."""
        chunks, rest = divmod(seconds, _CHUNK)
        for _ in range(int(chunks)):
            await asyncio.sleep(_CHUNK)
        await asyncio.sleep(rest)
