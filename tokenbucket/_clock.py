"""Clocks: where the front ends read the time and how they sleep."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What a front end needs of a clock: a reading in seconds and a way to sleep.

    ``now`` must never go backwards. `tokenbucket.testing.ManualClock` is a
    clock under the test's control.
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


class SystemClock:
    """The process's monotonic clock (`time.monotonic`), with real sleeps."""

    now = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    @staticmethod
    async def asleep(seconds: float) -> None:
        """Suspend the calling task for ``seconds`` (`asyncio.sleep`)."""
        await asyncio.sleep(seconds)
