"""The collector's SQLite store.

Every write is an idempotent upsert keyed by what the row is about (a deal by
ASIN, a price point by ASIN, price type and Keepa minute), and every batch is
written in one transaction together with the checkpoint that says it is done.
So a collector killed at any point and restarted loses nothing (the batch that
was in flight is simply fetched again) and duplicates nothing.

The database runs in WAL mode so the dashboard and ``status`` can read while
the jobs write; each thread gets its own connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenbucket.fencing import check_fence, create_fence_table

__all__ = ["SHIPPING_TYPES", "Counts", "Store", "StoreError"]

SHIPPING_TYPES = frozenset({7, *range(18, 30), 32})
"""Keepa ``csv`` price types whose series are ``[minute, price, shipping, ...]`` triples.

NEW_FBM_SHIPPING (7), BUY_BOX_SHIPPING (18), the used, collectible, refurbished and eBay
"_SHIPPING" types (19-29) and BUY_BOX_USED_SHIPPING (32); every other type is
``[minute, value, ...]`` pairs. Values are cents (or a count, a rank, a rating); -1 means none.
"""

_VERSION = 1
"""The schema version (``PRAGMA user_version``): 1 added ``price_points.shipping``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deals (
    seq           INTEGER PRIMARY KEY,
    asin          TEXT NOT NULL UNIQUE,
    title         TEXT NOT NULL,
    root_cat      INTEGER,
    current_price INTEGER,
    avg_price     INTEGER,
    delta_percent INTEGER,
    creation_date INTEGER NOT NULL,
    last_update   INTEGER NOT NULL,
    first_seen    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS products (
    asin         TEXT PRIMARY KEY,
    title        TEXT,
    offer_count  INTEGER,
    recent_at    REAL,
    full_at      REAL,
    cost         INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS price_points (
    asin        TEXT NOT NULL,
    price_type  INTEGER NOT NULL,
    minute      INTEGER NOT NULL,
    value       INTEGER NOT NULL,
    shipping    INTEGER,
    PRIMARY KEY (asin, price_type, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS restrictions (
    asin        TEXT PRIMARY KEY,
    restricted  INTEGER NOT NULL,
    reasons     TEXT NOT NULL,
    checked_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    job         TEXT PRIMARY KEY,
    position    INTEGER NOT NULL,
    fence       INTEGER NOT NULL DEFAULT 0,
    updated_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS token_log (
    at          REAL NOT NULL,
    tokens_left REAL NOT NULL,
    job         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS token_log_at ON token_log (at);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""


class StoreError(Exception):
    """The database cannot be opened or used (the message says which file and why)."""


@dataclass(frozen=True, slots=True)
class Counts:
    """How much the store holds."""

    deals: int
    products_recent: int
    products_full: int
    price_points: int
    restrictions: int
    restricted: int


class Store:
    """The SQLite store. Safe to share between threads (one connection per thread).

    Args:
        path: The database file; created with its tables if missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            create_fence_table(conn)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        """Bring a database written by an older version up to `_VERSION`, in one transaction."""
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= _VERSION:
                return
            columns = {row[1] for row in conn.execute("PRAGMA table_info(price_points)")}
            if "shipping" not in columns:  # version 0 stored every series as pairs
                conn.execute("ALTER TABLE price_points ADD COLUMN shipping INTEGER")
            conn.execute(f"PRAGMA user_version = {_VERSION}")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: take the write lock up front, no upgrade deadlocks)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- writes ---------------------------------------------------------------------------------

    def upsert_deals(self, deals: Iterable[dict[str, Any]]) -> int:
        """Insert new deals and refresh known ones. Returns how many ASINs were new."""
        now = time.time()
        rows = []
        for d in deals:
            # A deal's current/avg/deltaPercent are indexed by price type, as the selection asked (priceTypes).
            current = d.get("current") or [-1]
            avg = (d.get("avg") or [[-1]])[0] or [-1]
            pct = (d.get("deltaPercent") or [[0]])[0] or [0]
            rows.append(
                (
                    d["asin"],
                    d.get("title") or "",
                    d.get("rootCat"),
                    current[0],
                    avg[0],
                    pct[0],
                    d["creationDate"],
                    d.get("lastUpdate", d["creationDate"]),
                    now,
                )
            )
        new = 0
        with self._tx() as conn:
            # Sequence numbers are handed out here, inside the write transaction, so they grow in
            # commit order with no gaps: the backfill's checkpoint "every deal up to seq N" means it.
            last = conn.execute("SELECT coalesce(max(seq), 0) FROM deals").fetchone()[0]
            for row in rows:
                updated = conn.execute(
                    """UPDATE deals SET title = ?, root_cat = ?, current_price = ?, avg_price = ?,
                           delta_percent = ?, last_update = max(last_update, ?) WHERE asin = ?""",
                    (row[1], row[2], row[3], row[4], row[5], row[7], row[0]),
                ).rowcount
                if not updated:
                    last += 1
                    new += 1
                    conn.execute(
                        """INSERT INTO deals (seq, asin, title, root_cat, current_price, avg_price, delta_percent,
                                              creation_date, last_update, first_seen)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                        (last, *row),
                    )
        return new

    def save_products(
        self,
        products: Sequence[dict[str, Any]],
        *,
        full: bool,
        cost: int,
        checkpoint: tuple[str, int, int] | None = None,
    ) -> int:
        """Store a batch of products and their price points in one transaction.

        Args:
            products: Keepa product objects (``asin``, ``title``, ``csv``, ``offers``); each
                ``csv`` series is read as pairs or, for `SHIPPING_TYPES`, triples.
            full: True for a full-history fetch (backfill), False for a recent one.
            cost: Tokens the batch cost, spread over its products for the record.
            checkpoint: ``(job, position, fence)`` to advance in the same transaction.

        Returns:
            The number of price points written (new or refreshed).

        Raises:
            tokenbucket.LeaseLost: the checkpoint's fence is older than one already used
                (a newer lease holder took over); nothing is written.
            StoreError: a ``csv`` series is malformed (the message names the ASIN and
                price type); nothing is written.
        """
        now = time.time()
        points: list[tuple[str, int, int, int, int | None]] = []
        prows = []
        share = round(cost / max(1, len(products)))
        for p in products:
            asin = p["asin"]
            points += _points(asin, p.get("csv") or [])
            offers = p.get("offers")
            prows.append((asin, p.get("title"), None if offers is None else len(offers), share))
        column = "full_at" if full else "recent_at"
        with self._tx() as conn:
            if checkpoint is not None:
                self._advance(conn, *checkpoint, now)
            conn.executemany(
                f"""INSERT INTO products (asin, title, offer_count, {column}, cost) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (asin) DO UPDATE SET title = excluded.title,
                        offer_count = coalesce(excluded.offer_count, products.offer_count),
                        {column} = excluded.{column}, cost = excluded.cost""",
                [(a, t, o, now, c) for a, t, o, c in prows],
            )
            conn.executemany(
                """INSERT INTO price_points (asin, price_type, minute, value, shipping) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT (asin, price_type, minute) DO UPDATE SET value = excluded.value,
                       shipping = excluded.shipping""",
                points,
            )
        return len(points)

    def save_restrictions(self, results: Iterable[tuple[str, list[dict[str, Any]]]]) -> None:
        """Store restriction results: ``(asin, reasons)``; no reasons means unrestricted."""
        now = time.time()
        rows = [(asin, int(bool(reasons)), json.dumps(reasons), now) for asin, reasons in results]
        with self._tx() as conn:
            conn.executemany(
                """INSERT INTO restrictions (asin, restricted, reasons, checked_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (asin) DO UPDATE SET restricted = excluded.restricted,
                       reasons = excluded.reasons, checked_at = excluded.checked_at""",
                rows,
            )

    def _advance(self, conn: sqlite3.Connection, job: str, position: int, fence: int, now: float) -> None:
        check_fence(conn, f"checkpoint:{job}", fence)
        conn.execute(
            """INSERT INTO checkpoints (job, position, fence, updated_at) VALUES (?, ?, ?, ?)
               ON CONFLICT (job) DO UPDATE SET position = max(checkpoints.position, excluded.position),
                   fence = excluded.fence, updated_at = excluded.updated_at""",
            (job, position, fence, now),
        )

    def log_tokens(self, tokens_left: float, job: str) -> None:
        """Record the upstream's balance (for the dashboard's chart); keeps the last day."""
        now = time.time()
        with self._tx() as conn:
            conn.execute("INSERT INTO token_log (at, tokens_left, job) VALUES (?, ?, ?)", (now, tokens_left, job))
            if int(now * 10) % 50 == 0:
                conn.execute("DELETE FROM token_log WHERE at < ?", (now - 86400,))

    def set_meta(self, key: str, value: Any) -> None:
        """Store a small JSON value (configuration the ``status`` command shows)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    # --- reads ----------------------------------------------------------------------------------

    def meta(self, key: str) -> Any:
        """A value stored with `set_meta`, or None."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def checkpoint(self, job: str) -> tuple[int, int]:
        """``(position, fence)`` of a job's checkpoint; ``(0, 0)`` if it never ran."""
        row = self._conn().execute("SELECT position, fence FROM checkpoints WHERE job = ?", (job,)).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    def checkpoints(self) -> list[tuple[str, int, int, float]]:
        """Every checkpoint: ``(job, position, fence, updated_at)``."""
        rows = self._conn().execute("SELECT job, position, fence, updated_at FROM checkpoints ORDER BY job")
        return [(str(j), int(p), int(f), float(u)) for j, p, f, u in rows]

    def pending_recent(self, limit: int) -> list[str]:
        """ASINs of deals whose recent history has not been fetched, oldest deal first."""
        rows = self._conn().execute(
            """SELECT d.asin FROM deals d LEFT JOIN products p ON p.asin = d.asin
               WHERE p.recent_at IS NULL ORDER BY d.seq LIMIT ?""",
            (limit,),
        )
        return [r[0] for r in rows]

    def count_pending_recent(self) -> int:
        """How many deals still wait for their recent history."""
        row = (
            self._conn()
            .execute(
                """SELECT COUNT(*) FROM deals d LEFT JOIN products p ON p.asin = d.asin
               WHERE p.recent_at IS NULL"""
            )
            .fetchone()
        )
        return int(row[0])

    def deals_after(self, seq: int, limit: int) -> list[tuple[int, str]]:
        """``(seq, asin)`` of deals after ``seq`` in the order they were first stored."""
        rows = self._conn().execute("SELECT seq, asin FROM deals WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [(int(r[0]), r[1]) for r in rows]

    def count_deals_after(self, seq: int) -> int:
        """How many deals come after ``seq``."""
        return int(self._conn().execute("SELECT COUNT(*) FROM deals WHERE seq > ?", (seq,)).fetchone()[0])

    def unchecked(self, limit: int) -> list[str]:
        """ASINs of deals with no restriction result yet, oldest first."""
        rows = self._conn().execute(
            """SELECT d.asin FROM deals d LEFT JOIN restrictions r ON r.asin = d.asin
               WHERE r.asin IS NULL ORDER BY d.seq LIMIT ?""",
            (limit,),
        )
        return [r[0] for r in rows]

    def counts(self) -> Counts:
        """Row counts for the progress display, ``status`` and the summary."""
        q = self._conn().execute
        return Counts(
            deals=q("SELECT COUNT(*) FROM deals").fetchone()[0],
            products_recent=q("SELECT COUNT(*) FROM products WHERE recent_at IS NOT NULL").fetchone()[0],
            products_full=q("SELECT COUNT(*) FROM products WHERE full_at IS NOT NULL").fetchone()[0],
            price_points=q("SELECT COUNT(*) FROM price_points").fetchone()[0],
            restrictions=q("SELECT COUNT(*) FROM restrictions").fetchone()[0],
            restricted=q("SELECT COUNT(*) FROM restrictions WHERE restricted = 1").fetchone()[0],
        )

    def latest_deals(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest deals with their price and restriction status."""
        rows = self._conn().execute(
            """SELECT d.asin, d.title, d.current_price, d.avg_price, d.delta_percent, d.creation_date,
                      r.restricted, (SELECT COUNT(*) FROM price_points pp WHERE pp.asin = d.asin)
               FROM deals d LEFT JOIN restrictions r ON r.asin = d.asin
               ORDER BY d.creation_date DESC, d.seq DESC LIMIT ?""",
            (limit,),
        )
        keys = ("asin", "title", "current", "average", "delta_percent", "creation_date", "restricted", "points")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def first_seen(self, limit: int = 200) -> list[tuple[str, float]]:
        """``(asin, unix time first stored)`` of the newest ``limit`` deals, newest first."""
        rows = self._conn().execute("SELECT asin, first_seen FROM deals ORDER BY seq DESC LIMIT ?", (limit,))
        return [(str(a), float(t)) for a, t in rows]

    def token_series(self, since: float) -> list[tuple[float, float]]:
        """``(unix time, tokens left)`` recorded since ``since``."""
        rows = self._conn().execute("SELECT at, tokens_left FROM token_log WHERE at >= ? ORDER BY at", (since,))
        return [(float(a), float(t)) for a, t in rows]

    def price_points(self, asin: str) -> list[tuple[int, int, int, int | None]]:
        """Every stored ``(price_type, minute, value, shipping)`` of one ASIN (shipping None for pairs)."""
        rows = self._conn().execute(
            """SELECT price_type, minute, value, shipping FROM price_points WHERE asin = ?
               ORDER BY price_type, minute""",
            (asin,),
        )
        return [(int(a), int(b), int(c), None if d is None else int(d)) for a, b, c, d in rows]


def _points(asin: str, csv: Sequence[Any]) -> list[tuple[str, int, int, int, int | None]]:
    """The rows of one product's ``csv``: pairs, or triples for `SHIPPING_TYPES`; null series skipped."""
    rows: list[tuple[str, int, int, int, int | None]] = []
    for price_type, series in enumerate(csv):
        if not series:
            continue
        step = 3 if price_type in SHIPPING_TYPES else 2
        if not isinstance(series, list) or len(series) % step or not all(isinstance(v, int) for v in series):
            shape = f"{len(series)} numbers" if isinstance(series, list) else type(series).__name__
            raise StoreError(
                f"product {asin}: csv[{price_type}] must be [minute, {'price, shipping' if step == 3 else 'value'}"
                f", ...] integers, got {shape}"
            )
        for i in range(0, len(series), step):
            rows.append((asin, price_type, series[i], series[i + 1], series[i + 2] if step == 3 else None))
    return rows
