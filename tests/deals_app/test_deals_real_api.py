"""`deals-app run` against the real Keepa: what it sends, what it skips, and how a failing job is handled."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from deals_app.client import AppError, KeyRefused
from deals_app.jobs import Collector, JobSettings
from deals_app.quota import ScaledClock, Stopped
from deals_app.simulator import SimulatorServer
from deals_app.store import Store
from deals_testing import API_KEY

Cli = Callable[..., tuple[int, str, str]]
TOKENS = {"timestamp": 1, "tokensLeft": 300, "refillIn": 1000, "refillRate": 5, "tokensConsumed": 0}


@pytest.fixture
def recording_upstream() -> Iterator[tuple[str, list[tuple[str, dict[str, list[str]]]]]]:
    """A Keepa stand-in that records every request's path and query and answers with no deals."""
    seen: list[tuple[str, dict[str, list[str]]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            seen.append((url.path, parse_qs(url.query)))
            body = {**TOKENS, "deals": {"dr": []}} if url.path == "/deal" else dict(TOKENS)
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_domain_and_price_types_are_sent(cli: Cli, recording_upstream: Any, tmp_path: Path) -> None:
    url, seen = recording_upstream
    argv = ("run", "--base-url", url, "--api-key", API_KEY, "--once", "--plain", "--db", str(tmp_path / "d.sqlite"))
    status, _out, err = cli(*argv, "--domain", "uk", "--jobs", "update")
    assert status == 0, err
    deal = next(query for path, query in seen if path == "/deal")
    assert json.loads(deal["selection"][0]) == {"page": 0, "dateRange": 0, "domainId": 2, "priceTypes": [0]}
    assert all(query["key"] == [API_KEY] for _, query in seen)


def test_the_key_comes_from_the_environment_or_is_asked_for(
    cli: Cli, recording_upstream: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = recording_upstream
    argv = ("run", "--base-url", url, "--once", "--plain", "--jobs", "update", "--db", str(tmp_path / "d.sqlite"))
    monkeypatch.delenv("KEEPA_API_KEY", raising=False)
    status, _, err = cli(*argv)
    assert status == 1
    assert "no Keepa API key: pass --api-key or set KEEPA_API_KEY" in err
    assert seen == []  # nothing was sent without a key
    monkeypatch.setenv("KEEPA_API_KEY", "from-the-env")
    status, _, err = cli(*argv)
    assert status == 0, err
    assert {query["key"][0] for _, query in seen} == {"from-the-env"}


def test_restriction_checks_need_an_sp_api_endpoint(
    cli: Cli, make_simulator: Callable[..., SimulatorServer], tmp_path: Path
) -> None:
    server = make_simulator(time_scale=1200.0, backlog_hours=1)
    db = tmp_path / "d.sqlite"
    argv = ("run", "--base-url", server.base_url, "--api-key", API_KEY, "--once", "--plain", "--time-scale", "1200")
    status, out, err = cli(*argv, "--db", str(db), "--jobs", "update,restrictions")
    assert status == 0, err
    assert "restriction checks    skipped: no SP-API endpoint (--sp-base-url)" in out
    assert server.stats()["sp_requests"] == 0  # the Keepa host was never asked an SP-API question
    assert Store(db).counts().deals > 0
    status, _, err = cli(*argv, "--db", str(db), "--sp-base-url", server.base_url)
    assert status == 1
    assert "--sp-base-url needs an access token" in err


class VirtualClock(ScaledClock):
    """Upstream time that only sleeps move: each sleep is recorded and passes at once."""

    def __init__(self) -> None:
        super().__init__(1.0, threading.Event())
        self.t = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if self.stop.is_set():
            raise Stopped
        with self._lock:
            self.sleeps.append(seconds)
            self.t += seconds


def _collector(poll: float = 300.0) -> Collector:
    settings = JobSettings(poll_seconds=poll, retry_after=10.0)
    return Collector(None, None, None, clock=VirtualClock(), settings=settings)  # type: ignore[arg-type]


def test_a_failing_job_is_retried_with_growing_backoff() -> None:
    collector = _collector()
    calls: list[float] = []

    def flaky() -> int:
        calls.append(collector.clock.now())
        if len(calls) <= 4:
            raise AppError(f"upstream hiccup {len(calls)}")
        collector.stop.set()
        return 0

    collector._loop("update", flaky, once=False)
    assert len(calls) == 5
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    for gap, base in zip(gaps, [10, 20, 40, 80], strict=True):
        assert base * 0.5 <= gap <= base  # doubling, with jitter
    assert collector.stats.failures == {"update": 4}
    assert collector.stats.last_error["update"] == "upstream hiccup 4"


def test_one_failing_job_does_not_stop_the_others() -> None:
    collector = _collector(poll=1.0)
    healthy = 0

    def broken() -> int:
        raise RuntimeError("a bug in one job")

    def working() -> int:
        nonlocal healthy
        healthy += 1
        if healthy == 50:
            collector.stop.set()
        return 1

    threads = [
        threading.Thread(target=collector._loop, args=("backfill", broken, False)),
        threading.Thread(target=collector._loop, args=("update", working, False)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert healthy == 50
    assert collector.stats.failures["backfill"] >= 1
    assert "unexpected error: RuntimeError: a bug in one job" in collector.stats.last_error["backfill"]


def test_a_refused_key_stops_every_job() -> None:
    collector = _collector()

    def refused() -> int:
        raise KeyRefused("the API key was refused")

    collector._loop("update", refused, once=False)
    assert collector.stop.is_set()
    assert collector.stats.failures == {"update": 1}
