"""SIGKILL the collector mid-batch and run it again: nothing lost, nothing duplicated, no checkpoint gap."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from deals_app.simulator import SimulatorServer
from deals_app.store import Store
from deals_testing import API_KEY, keepa_rows, spawn

SCALE = "600"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def expected(server: SimulatorServer, asin: str) -> set[tuple[int, int, int, int | None]]:
    sim = server.simulator
    csv = sim.catalog.product(asin).history(None, sim.catalog.origin)
    return {row[1:] for row in keepa_rows(asin, csv)}


def check_consistent(store: Store, server: SimulatorServer) -> int:
    """Every deal up to the checkpoint has its full history, exactly; returns the checkpoint."""
    position, _ = store.checkpoint("backfill")
    conn = sqlite3.connect(store.path)
    try:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM deals ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1))  # deal numbers have no holes
        missing = conn.execute(
            "SELECT d.asin FROM deals d JOIN products p USING (asin) WHERE d.seq <= ? AND p.full_at IS NULL "
            "UNION SELECT d.asin FROM deals d LEFT JOIN products p USING (asin) WHERE d.seq <= ? AND p.asin IS NULL",
            (position, position),
        ).fetchall()
        assert missing == [], f"deals up to checkpoint {position} without their full history: {missing[:5]}"
        dupes = conn.execute(
            "SELECT COUNT(*) - COUNT(DISTINCT asin || ':' || price_type || ':' || minute) FROM price_points"
        ).fetchone()[0]
        assert dupes == 0
        asins = [r[0] for r in conn.execute("SELECT asin FROM deals WHERE seq <= ? ORDER BY seq", (position,))]
    finally:
        conn.close()
    for asin in asins:
        assert set(store.price_points(asin)) == expected(server, asin), asin
    return position


def test_sigkill_mid_batch_then_rerun(
    make_simulator: Callable[..., SimulatorServer], cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    server = make_simulator(time_scale=float(SCALE), refill_rate=60, backlog_hours=6, latency=0.15)
    db = tmp_path / "deals.sqlite"
    args = (
        "run",
        "--base-url",
        server.base_url,
        "--api-key",
        API_KEY,
        "--once",
        "--db",
        str(db),
        "--time-scale",
        SCALE,
        "--jobs",
        "update,backfill",
        "--plain",
    )
    child = spawn(*args, log=tmp_path / "first.log")
    try:
        wait_for(db.exists, 30, "the database")
        store = Store(db)
        # Wait until the backfill has committed a batch and has the next one in flight, then kill.
        wait_for(lambda: store.checkpoint("backfill")[0] > 0, 60, "a backfill checkpoint")
        products_before = server.stats()["by_endpoint"]["/product"]
        wait_for(
            lambda: server.stats()["in_flight"] > 0 and server.stats()["by_endpoint"]["/product"] > products_before,
            30,
            "a batch in flight",
        )
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    at_kill = check_consistent(store, server)
    total = store.counts().deals
    assert 0 < at_kill < total  # killed part-way through the backfill

    status, _, err = cli(*args)
    assert status == 0, err
    final = check_consistent(store, server)
    counts = store.counts()
    assert final == counts.deals >= total  # resumed and finished: every deal backfilled
    assert counts.products_full == counts.deals
    assert server.stats()["keepa_429"] == 0
