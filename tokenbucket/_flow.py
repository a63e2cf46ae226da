"""Flows: logic written once as a generator, driven by blocking calls or by awaits.

A flow yields the operations it needs done (a store call, a sleep, a send)
and receives each result, or the exception it raised, at the ``yield``. The
decisions — validation, timeouts, refunds on interruption — live in the flow;
`drive` and `adrive` only perform operations, so the sync and async front ends
share every decision and differ only in how an operation is carried out (the
shape of httpx's ``auth_flow``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

__all__ = ["Call", "adrive", "drive"]

_O = TypeVar("_O")
_T = TypeVar("_T")


class Call:
    """A store operation a flow wants performed: ``getattr(store, method)(*args)``."""

    __slots__ = ("args", "method")

    def __init__(self, method: str, *args: Any) -> None:
        self.method = method
        self.args = args


def drive(flow: Generator[_O, Any, _T], perform: Callable[[_O], Any]) -> _T:
    """Run ``flow`` to its end, performing each operation with blocking ``perform``.

    An exception from ``perform`` (including ``KeyboardInterrupt``) is thrown
    into the flow at its ``yield``, so the flow can undo what it took.
    """
    try:
        op = next(flow)
        while True:
            try:
                result = perform(op)
            except BaseException as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as stop:
        value: _T = stop.value
        return value


async def adrive(flow: Generator[_O, Any, _T], perform: Callable[[_O], Awaitable[Any]]) -> _T:
    """Run ``flow`` to its end, awaiting ``perform`` for each operation.

    An exception from ``perform`` (including ``asyncio.CancelledError``) is
    thrown into the flow at its ``yield``, so the flow can undo what it took.
    """
    try:
        op = next(flow)
        while True:
            try:
                result = await perform(op)
            except BaseException as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(result)
    except StopIteration as stop:
        value: _T = stop.value
        return value
