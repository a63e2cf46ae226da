"""Simulator and collector together at a fast time scale: data lands, no 429s, debt within the policy."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from deals_app.client import KeepaClient
from deals_app.quota import KeepaQuota, ScaledClock, keepa_policy
from deals_app.simulator import SimulatorServer
from deals_app.store import Store
from deals_testing import API_KEY, keepa_rows

SCALE = "1200"


def expected_points(server: SimulatorServer, asin: str, days: int | None) -> set[tuple[int, int, int, int | None]]:
    sim = server.simulator
    csv = sim.catalog.product(asin).history(days, sim.catalog.origin)
    return {row[1:] for row in keepa_rows(asin, csv)}


def test_collector_fills_the_store_without_a_single_429(
    make_simulator: Callable[..., SimulatorServer], cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    server = make_simulator(time_scale=float(SCALE), refill_rate=20, backlog_hours=6)
    db = tmp_path / "deals.sqlite"
    status, out, err = cli(
        "run",
        "--base-url",
        server.base_url,
        "--api-key",
        API_KEY,
        "--sp-base-url",
        server.base_url,
        "--sp-token",
        API_KEY,
        "--once",
        "--db",
        str(db),
        "--time-scale",
        SCALE,
        "--plain",
    )
    assert status == 0, err
    assert "Summary" in out
    # The balance is explained: what waiting calls hold, and the debt of calls already made.
    assert "held by waiting calls" in out.split("Summary")[1]
    summary = [line for line in out.split("Summary")[1].splitlines() if "database" not in line]  # (a long tmp path)
    assert all(len(line) <= 80 for line in summary), [line for line in summary if len(line) > 80]
    stats = server.stats()
    store = Store(db)
    counts = store.counts()

    # Every deal of the last day is stored, with its recent and full history, and checked for restrictions.
    assert counts.deals >= 181  # 6 h backlog at 30 an hour, plus the one at the start, plus new ones
    assert counts.products_full == counts.deals
    assert counts.restrictions == counts.deals
    assert counts.products_recent == counts.deals
    position, fence = store.checkpoint("backfill")
    assert position == counts.deals  # seq numbers have no gaps
    assert fence >= 1
    for seq, asin in store.deals_after(0, 1000)[::17]:
        assert set(store.price_points(asin)) == expected_points(server, asin, None), (seq, asin)

    # The upstream never refused a call, and the balance never went below what the policy allows.
    assert stats["keepa_429"] == 0
    assert stats["sp_429"] == 0
    policy = keepa_policy(20)
    assert stats["min_balance"] >= -(policy.max_debt + policy.refill_per_minute)
    assert stats["tokens_charged"] > 1200  # more than a full bucket: the run lived on refill and debt
    assert stats["by_endpoint"]["/token"] == 1  # one status call at start, no polling


def test_status_reports_counts_checkpoint_and_the_last_balance(
    make_simulator: Callable[..., SimulatorServer], cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    server = make_simulator(time_scale=1200.0, refill_rate=100, backlog_hours=2)
    db = str(tmp_path / "deals.sqlite")
    status, _, err = cli(
        "run",
        "--base-url",
        server.base_url,
        "--api-key",
        API_KEY,
        "--once",
        "--db",
        db,
        "--time-scale",
        "1200",
        "--jobs",
        "update,backfill",
    )
    assert status == 0, err
    n = Store(db).counts().deals
    assert n >= 61  # two hours at 30 an hour, the one at the start, and any that appeared meanwhile
    status, out, _ = cli("status", "--db", db)
    assert status == 0
    assert f"deals {n}, recent histories {n}, backfilled {n}" in out
    assert "bucket (from last upstream reply)" in out
    assert f"checkpoint backfill: deal #{n}" in out
    status, out, _ = cli("status", "--db", db, "--json")
    data = json.loads(out)
    assert data["counts"]["deals"] == n
    assert data["policy"]["refill_per_minute"] == 100


def test_demo_runs_and_ends_with_a_summary(cli: Callable[..., tuple[int, str, str]], tmp_path: Path) -> None:
    status, out, err = cli("demo", "--duration", "3", "--db", str(tmp_path / "demo.sqlite"), "--plain")
    assert status == 0, err
    assert "Keepa-like simulator on http://127.0.0.1:" in out
    assert "Summary:" in out
    assert "upstream 429s" in out
    assert "deals stored" in out


def test_demo_summary_counts_keepa_and_sp_api_apart_and_explains_the_balance(
    cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    status, out, err = cli("demo", "--duration", "3", "--db", str(tmp_path / "demo.sqlite"), "--plain")
    assert status == 0, err
    summary = out[out.index("Summary:") :]
    requests = re.search(r"upstream requests +(\d+) Keepa \(charged (\d+) tokens\), (\d+) SP-API", summary)
    assert requests is not None, summary
    keepa, sp = int(requests.group(1)), int(requests.group(3))
    calls = int(re.search(r"Keepa calls +(\d+)", summary).group(1))  # type: ignore[union-attr]
    checks = int(re.search(r"SP-API calls +(\d+)", summary).group(1))  # type: ignore[union-attr]
    assert keepa == calls + 1  # the collector's calls and its start-up /token probe
    assert sp == checks
    assert "lowest Keepa balance" in summary
    text = " ".join(summary.split())
    assert "just after it charged a call" in text
    assert "at most 300 of debt at its estimated cost" in text
    assert "charges the real cost after the call" in text
    assert "No call found Keepa at zero or below (0 429s)." in text or "(429)." in text


def _progress_state() -> dict[str, object]:
    from deals_app.store import Counts

    return {
        "wall": 15.2,
        "sim": 4620.0,
        "counts": Counts(745, 156, 57, 223792, 745, 244),
        "tokens": -250.0,
        "capacity": 1200.0,
        "debt": 145.0,
        "promised": 105.0,
        "ttp": 750.0,
        "upstream": 814,
        "calls": 16,
        "sp_calls": 745,
        "plan": None,
        "activity": {
            "update": "recent history: 25 × product of 589 pending, ≈12.3 each = 308 tokens (budget 396), "
            "starts in 12.5 min",
            "backfill": "full history (fence 1): 100 × product_history of 388 pending",
        },
    }


def test_live_display_and_plain_lines_fit_80_columns_with_the_key_numbers() -> None:
    from deals_app.progress import display_lines, plain_lines

    state = _progress_state()
    for lines in (display_lines(state, width=80), plain_lines(state)):
        assert lines
        assert max(len(line) for line in lines) <= 80, lines
        text = " ".join(" ".join(lines).split())
        for number in (
            "deals 745",
            "backfilled 57",
            "Keepa balance 814",
            "debt 145",
            "Keepa calls 16",
            "SP-API checks 745",
            "12.5 min",
        ):
            assert number in text, (number, text)
    assert "starts in 12.5 min" in " ".join(" ".join(display_lines(state)).split())  # wrapped, not cut


def _most_in_a_window(times: list[float], window: float) -> int:
    """The most calls admitted within any ``window`` seconds (two pointers over the sorted times)."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] > window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_max_rps_caps_keepa_calls_from_every_thread(make_simulator: Callable[..., SimulatorServer]) -> None:
    """Four threads share one quota with --max-rps 2: judged by the simulator's own clock of admitted calls,
    never more than the burst of 2 plus 2 a second (with a second of slack for the loopback's latency at this
    time scale: 200 ms of real time, so a loaded machine's stall of a thread does not bunch calls past it),
    and no 429. A plan with plenty of tokens, so the request cap is what binds."""
    scale = 5.0
    server = make_simulator(time_scale=scale, refill_rate=3000, backlog_hours=1)
    clock = ScaledClock(scale)
    quota = KeepaQuota(keepa_policy(3000), clock=clock, max_rps=2)
    client = KeepaClient(server.base_url, API_KEY, transport=quota.transport())
    quota.bucket.sync(client.token_status().tokens_left)
    threads = [threading.Thread(target=lambda: [client.deals(0) for _ in range(8)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    times = server.admitted_at()
    assert len(times) == 32
    for window in (1.0, 5.0, 10.0):
        assert _most_in_a_window(times, window) <= 2 + 2 * (window + 1.0), (window, times)
    assert times[-1] - times[0] >= (32 - 2) / 2 - 1.0  # and no faster on average
    assert server.stats()["keepa_429"] == 0


def test_run_takes_max_rps(
    make_simulator: Callable[..., SimulatorServer], cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    """``deals-app run --max-rps 0.5``: one call every 2 s of the upstream's time, after a burst of 1."""
    scale = "20"
    server = make_simulator(time_scale=float(scale), refill_rate=3000, backlog_hours=6)
    db = tmp_path / "deals.sqlite"
    args = ["--api-key", API_KEY, "--once", "--time-scale", scale, "--plain", "--db", str(db), "--max-rps", "0.5"]
    status, _, err = cli("run", "--base-url", server.base_url, *args)
    assert status == 0, err
    times = server.admitted_at()
    assert len(times) >= 5
    for window in (1.0, 5.0):
        assert _most_in_a_window(times, window) <= 1 + 0.5 * (window + 1.0), (window, times)
    assert server.stats()["keepa_429"] == 0
    assert Store(db).meta("keepa_policy")["max_rps"] == 0.5


def test_restriction_checks_never_exceed_the_concurrency_limit(
    make_simulator: Callable[..., SimulatorServer], cli: Callable[..., tuple[int, str, str]], tmp_path: Path
) -> None:
    """Four workers check restrictions under a limit of 2: the simulator, counting requests in flight on its
    side, never sees more than 2 at once, and sees 2 (the limit is what binds)."""
    server = make_simulator(time_scale=1200.0, refill_rate=20, backlog_hours=2, latency=0.01)
    db = tmp_path / "deals.sqlite"
    args = ["--api-key", API_KEY, "--sp-base-url", server.base_url, "--sp-token", API_KEY, "--once"]
    args += ["--db", str(db), "--time-scale", "1200", "--plain", "--sp-concurrency", "2"]
    status, _, err = cli("run", "--base-url", server.base_url, *args)
    assert status == 0, err
    stats = server.stats()
    counts = Store(db).counts()
    assert counts.restrictions == counts.deals > 0
    assert stats["sp_max_in_flight"] == 2
    assert stats["sp_429"] == 0


def test_the_update_passes_a_backfill_batch_that_waits_for_tokens(
    make_simulator: Callable[..., SimulatorServer],
) -> None:
    """The collector's two Keepa clients wait in the quota's lanes: with the balance low, a backfill batch
    waits for the bulk lane's hold-back, and a deal page (the update) asked for after it is admitted first
    (judged by the simulator's own log of admitted calls)."""
    scale = 600.0
    server = make_simulator(time_scale=scale, refill_rate=20, backlog_hours=3)
    clock = ScaledClock(scale)
    quota = KeepaQuota(keepa_policy(20), clock=clock)
    update = KeepaClient(server.base_url, API_KEY, transport=quota.transport(lane="urgent"))
    backfill = KeepaClient(server.base_url, API_KEY, transport=quota.transport(lane="bulk"))
    quota.bucket.sync(update.token_status().tokens_left)
    _, deals = update.deals(0)
    asins = [d["asin"] for d in deals]
    while update.last_reply is None or update.last_reply.tokens_left > 300:  # below what the bulk lane needs
        update.products(asins[:40], days=30)
    assert update.last_reply.tokens_left < quota.bulk_hold(keepa_policy(20)) + keepa_policy(20).min_start
    batch = asins[50:52]
    done: list[str] = []
    waiter = threading.Thread(target=lambda: (backfill.products(batch, days=30), done.append("backfill")))
    waiter.start()
    deadline = time.monotonic() + 10
    while quota.bucket.snapshot().promised == 0:  # the backfill batch is reserved and waits
        assert time.monotonic() < deadline
        time.sleep(0.001)
    asked = clock.now()
    update.deals(0)
    update_took = clock.now() - asked
    done.append("update")
    waiter.join()
    backfill_took = clock.now() - asked
    assert done == ["update", "backfill"]
    # In upstream seconds: the update went at once; the backfill batch waited for the bulk lane's tokens.
    assert update_took < 60, update_took
    assert backfill_took > 300, backfill_took
    assert server.stats()["keepa_429"] == 0
    update.close()
    backfill.close()
