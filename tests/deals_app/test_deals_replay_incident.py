"""``replay-incident`` shows, in numbers, the old configuration stalling and tokenbucket's progressing."""

from __future__ import annotations

import json
from collections.abc import Callable

from deals_app.incident import LEASE_TTL, replay, replay_lanes

Cli = Callable[..., tuple[int, str, str]]


def test_old_configuration_stalls_and_tokenbucket_progresses() -> None:
    old, new = replay(hours=3)

    # The gate starves the old collector once the watcher keeps the balance under 20: no deal after hour 1.
    assert old.per_hour[1:] == [0, 0]
    assert old.longest_stall >= 2.5 * 3600
    # tokenbucket's collector gets its turn every hour and collects several times as many deals.
    assert all(n > 0 for n in new.per_hour)
    assert new.collected > 2 * old.collected
    assert new.longest_stall < 3600

    # The ghost lock: the old backfill never runs again after its holder dies; the lease frees itself.
    assert old.backfill_stalled >= 1.5 * 3600
    assert LEASE_TTL <= new.backfill_stalled <= 600 + LEASE_TTL  # expiry, then the other worker's next try
    assert new.backfilled > old.backfilled

    # Debt stays within the policy (300 tokens + one minute of refill); the old code answers 429s by the dozen.
    assert new.peak_debt <= 300 + 20
    assert new.refused == 0
    assert old.refused > 10


def test_with_lanes_the_update_collects_more_and_waits_less() -> None:
    _, fifo = replay(hours=6)
    laned = replay_lanes(hours=6)
    assert laned.collected > fifo.collected  # the update's output: deals with their recent history
    median = [sorted(r.update_waits)[len(r.update_waits) // 2] for r in (laned, fifo)]
    assert median[0] < median[1]
    assert laned.backfilled > 0  # the bulk lane still progresses
    assert laned.refused == 0
    assert laned.peak_debt <= 300 + 20


def test_replay_is_deterministic() -> None:
    assert replay(hours=2, seed=5)[1].as_dict() == replay(hours=2, seed=5)[1].as_dict()


def test_cli_prints_the_table_and_json(cli: Cli) -> None:
    status, out, _ = cli("replay-incident", "--hours", "2")
    assert status == 0
    assert "old configuration" in out
    assert "tokenbucket" in out
    assert "backfill dead after its holder crashed" in out
    assert "with lanes" in out
    assert "update call wait, median" in out
    assert "longest stall: the longest stretch of virtual time in which no deal's history was fetched" in out
    status, out, _ = cli("replay-incident", "--hours", "2", "--json")
    assert status == 0
    data = json.loads(out)
    assert data["old"]["per_hour"][1] == 0
    assert data["tokenbucket"]["per_hour"][1] > 0
    assert data["lanes"]["update_longest_wait_seconds"] > 0


def test_cli_rejects_a_too_short_replay(cli: Cli) -> None:
    status, _, err = cli("replay-incident", "--hours", "1")
    assert status == 1
    assert "--hours must be between 2 and 72" in err
