"""Kill the backfill's lease holder: a waiting backfill takes over within the lease TTL (Redis)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from deals_app.leases import LEASE_NAME
from deals_app.simulator import SimulatorServer
from deals_app.store import Store
from deals_testing import API_KEY, spawn

from tokenbucket import RedisBackend

TTL = 3.0


def holder_pid(backend: RedisBackend) -> int | None:
    for info in backend.lease_list():
        if info.name == LEASE_NAME:
            return info.owner.pid
    return None


def renewals(backend: RedisBackend) -> int:
    infos = [info for info in backend.lease_list() if info.name == LEASE_NAME]
    return infos[0].renewals if infos else -1


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.redis
@pytest.mark.slow
def test_a_crashed_backfill_holder_is_replaced_within_the_ttl(
    make_simulator: Callable[..., SimulatorServer],
    private_redis_server: object,
    cli: Callable[..., tuple[int, str, str]],
    tmp_path: Path,
) -> None:
    url: str = private_redis_server.url  # type: ignore[attr-defined]
    server = make_simulator(time_scale=600.0, refill_rate=20, backlog_hours=10, latency=0.5)
    db = tmp_path / "deals.sqlite"
    store = Store(db)
    sim = server.simulator
    store.upsert_deals(d.as_json(sim.now_minute()) for d in sim.catalog.deals_between(0, sim.now_minute()))
    deals = store.counts().deals
    args = (
        "run",
        "--base-url",
        server.base_url,
        "--api-key",
        API_KEY,
        "--db",
        str(db),
        "--time-scale",
        "600",
        "--jobs",
        "backfill",
        "--redis-url",
        url,
        "--lease-ttl",
        str(TTL),
        "--plain",
        "--max-debt-minutes",
        "1",
    )  # small batches (≈ 40 ASINs): the walk takes a while
    backend = RedisBackend.from_url(url)

    first = spawn(*args, "--lease-wait", "0", log=tmp_path / "first.log")
    second = None
    try:
        wait_for(lambda: holder_pid(backend) == first.pid, 30, "the first backfill to take the lease")
        wait_for(lambda: store.checkpoint("backfill")[0] > 0, 30, "the first backfill's first checkpoint")
        first_fence = store.checkpoint("backfill")[1]
        status, out, _ = cli("status", "--db", str(db), "--redis-url", url, "--json")
        assert status == 0
        leases = json.loads(out)["leases"]
        assert [(lease["name"], lease["fence"]) for lease in leases] == [(LEASE_NAME, first_fence)]
        assert f"pid {first.pid} task=backfill" in leases[0]["holder"]

        second = spawn(*args, "--once", "--lease-wait", "60", log=tmp_path / "second.log")
        # The live holder's heartbeat renews the lease (every TTL/3), so the second backfill waits.
        wait_for(lambda: renewals(backend) >= 2, 3 * TTL, "two renewals by the first backfill's heartbeat")
        assert holder_pid(backend) == first.pid

        first.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        first.wait(timeout=30)
        wait_for(lambda: holder_pid(backend) == second.pid, TTL + 10, "the second backfill to take over")
        took_over = time.monotonic() - killed
        assert took_over <= TTL + 2.5, f"took {took_over:.2f} s to take over a lease with a TTL of {TTL} s"

        assert second.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        backend.close()
    position, fence = store.checkpoint("backfill")
    assert fence > first_fence  # the new holder wrote with a newer fence
    assert position == deals  # and finished the walk from where the dead holder stopped
    assert store.counts().products_full == deals
    after = RedisBackend.from_url(url)
    assert holder_pid(after) is None  # released on exit: nothing left behind
    after.close()
