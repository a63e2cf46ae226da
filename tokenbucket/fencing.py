"""Fencing tokens: make a store refuse the writes of a holder that lost its lease.

A lease can be lost without its holder noticing in time: the process was
paused (GC, SIGSTOP, a swapped-out VM) past its TTL, another process acquired
the lease, and then the first one woke up and carried on writing. Checking
`tokenbucket.Lease.ensure_held` first narrows that window but cannot close it:
the pause can come right after the check. The store has to refuse the write.

Every acquisition gets a larger ``lease.fence``. A store that remembers the
largest fence it has seen per resource, and refuses writes carrying a smaller
one, is safe against any pause. This module does that for SQLite, in the same
transaction as the write:

    import sqlite3
    from tokenbucket import LeaseLock
    from tokenbucket.fencing import fenced_execute

    conn = sqlite3.connect("deals.db")
    with LeaseLock("backfill_deals", ttl=30, backend=backend) as lease:
        for batch in batches():
            fenced_execute(conn, "deals", lease.fence,
                           "INSERT OR REPLACE INTO deals(asin, price) VALUES (?, ?)", batch)

For other stores, the same idea is a conditional write: ``UPDATE ... WHERE
fence <= :fence`` in SQL, a compare-and-set in a key-value store.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any

from ._exceptions import LeaseLost

__all__ = ["DEFAULT_TABLE", "check_fence", "create_fence_table", "fenced_execute"]

DEFAULT_TABLE = "tokenbucket_fences"
"""The table that records the largest fence seen per resource."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _table(table: str) -> str:
    if not isinstance(table, str) or not _IDENTIFIER.match(table):
        raise ValueError(f"table must be a plain SQL identifier, got {table!r}")
    return table


def create_fence_table(conn: sqlite3.Connection, table: str = DEFAULT_TABLE) -> None:
    """Create the fence table if it does not exist: ``(resource TEXT PRIMARY KEY, fence INTEGER)``."""
    name = _table(table)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {name} (resource TEXT PRIMARY KEY, fence INTEGER NOT NULL)")


def check_fence(conn: sqlite3.Connection, resource: str, fence: int, table: str = DEFAULT_TABLE) -> None:
    """Record ``fence`` for ``resource``, or raise `LeaseLost` if a larger fence is recorded.

    Call it inside the transaction of the write it guards (it is a write
    itself, so SQLite serialises it with every other writer): if it raises,
    roll the transaction back. The same fence may write any number of times.

    Raises:
        LeaseLost: a later holder (larger fence) has written to ``resource``;
            the message gives both fences.
        TypeError: ``fence`` is not an int.
    """
    if isinstance(fence, bool) or not isinstance(fence, int):
        raise TypeError(f"fence must be an int, not {type(fence).__name__}")
    name = _table(table)
    cursor = conn.execute(
        f"INSERT INTO {name} (resource, fence) VALUES (?, ?) "
        f"ON CONFLICT(resource) DO UPDATE SET fence = excluded.fence WHERE excluded.fence >= {name}.fence",
        (resource, fence),
    )
    if cursor.rowcount == 0:
        row = conn.execute(f"SELECT fence FROM {name} WHERE resource = ?", (resource,)).fetchone()
        newer = row[0] if row else "?"
        raise LeaseLost(
            f"write to {resource!r} refused: fence {fence} is stale, a later holder wrote with fence {newer}"
        )


def fenced_execute(
    conn: sqlite3.Connection,
    resource: str,
    fence: int,
    sql: str,
    parameters: Sequence[Any] = (),
    *,
    table: str = DEFAULT_TABLE,
) -> int:
    """Run ``sql`` only if ``fence`` is not stale for ``resource``, in one transaction.

    Creates the fence table if needed, checks the fence (`check_fence`) and
    runs the statement, then commits; on any error everything is rolled back,
    so a stale holder changes nothing. For several statements, call
    `check_fence` yourself inside your own transaction.

    Returns:
        The number of rows the statement changed.

    Raises:
        LeaseLost: the fence is stale (nothing was written).
    """
    create_fence_table(conn, table)
    with conn:  # BEGIN ... COMMIT, or ROLLBACK if anything raises
        check_fence(conn, resource, fence, table)
        return conn.execute(sql, parameters).rowcount
