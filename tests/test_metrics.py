"""`PrometheusMetrics`: checked by scraping the exposition text."""

from __future__ import annotations

import logging
import math
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from tokenbucket import (
    AcquireTimeout,
    AsyncTokenBucket,
    ConfigurationError,
    LeaseEvent,
    MemoryBackend,
    PrometheusMetrics,
    TokenBucket,
)
from tokenbucket.testing import ManualClock


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(generate_latest(registry).decode())


def b(name: str) -> tuple[tuple[str, str], ...]:
    return (("bucket", name),)


@pytest.fixture
def setup() -> tuple[CollectorRegistry, PrometheusMetrics, ManualClock, TokenBucket]:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    clock = ManualClock()
    bucket = TokenBucket(
        "keepa", "5/minute", capacity=300, overdraft=math.inf, backend=MemoryBackend(clock), clock=clock
    )
    metrics.track(bucket)
    return registry, metrics, clock, bucket


def test_gauges_are_read_at_scrape_time(setup: Any) -> None:
    registry, _, clock, bucket = setup
    got = scrape(registry)
    assert got[("tokenbucket_tokens", b("keepa"))] == 300
    assert got[("tokenbucket_debt_tokens", b("keepa"))] == 0
    assert got[("tokenbucket_capacity_tokens", b("keepa"))] == 300
    bucket.acquire(1000)  # -700
    bucket.reserve(20)  # reserved behind it: tokens -720, 20 promised
    got = scrape(registry)
    assert got[("tokenbucket_tokens", b("keepa"))] == -720
    assert got[("tokenbucket_promised_tokens", b("keepa"))] == 20
    assert got[("tokenbucket_debt_tokens", b("keepa"))] == 700
    assert got[("tokenbucket_time_to_positive_seconds", b("keepa"))] == 720 * 12
    clock.advance(600)  # +50 by refill, with no event at all
    assert scrape(registry)[("tokenbucket_debt_tokens", b("keepa"))] == 650


def test_counters_and_wait_histogram(setup: Any) -> None:
    registry, _, clock, bucket = setup
    grant = bucket.acquire(1000)  # from 300 to -700
    grant.settle(990)  # refund 10: -690
    bucket.acquire(20)  # waits (1 + 690) × 12 = 8292 s
    assert bucket.try_acquire(5) is None
    with pytest.raises(AcquireTimeout):
        bucket.acquire(5, timeout=60)
    res = bucket.reserve(5)
    res.cancel()
    bucket.sync(-30, status=429)  # predicted 1 - 20 = -19: drift -11
    bucket.sync(-30)
    got = scrape(registry)
    assert got[("tokenbucket_grants_total", b("keepa"))] == 2
    assert got[("tokenbucket_granted_tokens_total", b("keepa"))] == 1020
    assert got[("tokenbucket_try_acquire_misses_total", b("keepa"))] == 1
    assert got[("tokenbucket_timeouts_total", b("keepa"))] == 1
    assert got[("tokenbucket_cancellations_total", b("keepa"))] == 1
    assert got[("tokenbucket_settles_total", b("keepa"))] == 1
    assert got[("tokenbucket_settle_refunded_tokens_total", b("keepa"))] == 10
    assert got[("tokenbucket_syncs_total", b("keepa"))] == 2
    assert got[("tokenbucket_throttled_syncs_total", b("keepa"))] == 1
    assert got[("tokenbucket_sync_drift_tokens", b("keepa"))] == 0  # the second sync agreed
    assert got[("tokenbucket_debt_entries_total", b("keepa"))] == 1
    assert got[("tokenbucket_wait_seconds_count", b("keepa"))] == 2
    assert got[("tokenbucket_wait_seconds_sum", b("keepa"))] == 8292
    assert got[("tokenbucket_wait_seconds_bucket", (("bucket", "keepa"), ("le", "0.0")))] == 1
    assert got[("tokenbucket_wait_seconds_bucket", (("bucket", "keepa"), ("le", "3600.0")))] == 1
    assert got[("tokenbucket_wait_seconds_bucket", (("bucket", "keepa"), ("le", "14400.0")))] == 2
    assert clock.now() == 8292


def test_lease_holder_state(setup: Any) -> None:
    registry, metrics, _, _ = setup
    holder = (("holder", "web1:42:main"), ("lease", "backfill"))
    metrics(LeaseEvent("acquired", "backfill", 0.0, fence=7, holder="web1:42:main"))
    metrics(LeaseEvent("renewed", "backfill", 10.0, fence=7, holder="web1:42:main"))
    metrics(LeaseEvent("renewed", "backfill", 20.0, fence=7, holder="web1:42:main"))
    got = scrape(registry)
    state = {k[1][-1][1]: v for k, v in got.items() if k[0] == "tokenbucket_lease_state"}
    assert state == {"held": 1, "suspended": 0, "lost": 0, "released": 0, "broken": 0}
    assert got[("tokenbucket_lease_fence", holder)] == 7
    assert got[("tokenbucket_lease_renewals_total", holder)] == 2
    metrics(LeaseEvent("suspended", "backfill", 30.0, fence=7, holder="web1:42:main"))
    metrics(LeaseEvent("lost", "backfill", 40.0, fence=7, holder="web1:42:main", reason="deadline passed"))
    got = scrape(registry)
    lost = ("tokenbucket_lease_state", (*holder, ("tokenbucket_lease_state", "lost")))
    held = ("tokenbucket_lease_state", (*holder, ("tokenbucket_lease_state", "held")))
    assert got[lost] == 1
    assert got[held] == 0


def test_http_scrape(setup: Any) -> None:
    registry, _, _, bucket = setup
    bucket.acquire(100)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    got = samples(text)
    assert got[("tokenbucket_tokens", b("keepa"))] == 200
    assert got[("tokenbucket_grants_total", b("keepa"))] == 1


def test_track_and_untrack(setup: Any) -> None:
    registry, metrics, clock, bucket = setup
    metrics.track(bucket)  # twice: still one listener
    assert bucket.listeners == (metrics,)
    other = TokenBucket("other", "1/second", capacity=10, backend=MemoryBackend(clock), clock=clock)
    metrics.track(other)
    assert ("tokenbucket_tokens", b("other")) in scrape(registry)
    metrics.untrack(other)
    other.acquire(1)
    got = scrape(registry)
    assert ("tokenbucket_tokens", b("other")) not in got
    assert ("tokenbucket_grants_total", b("other")) not in got
    assert other.listeners == ()
    with pytest.raises(TypeError):
        metrics.track("keepa")


@pytest.mark.asyncio
async def test_async_bucket_on_memory_is_tracked(setup: Any) -> None:
    registry, metrics, clock, _ = setup
    abucket = AsyncTokenBucket("async", "1/second", capacity=10, backend=MemoryBackend(clock), clock=clock)
    metrics.track(abucket)
    await abucket.acquire(4)
    got = scrape(registry)
    assert got[("tokenbucket_tokens", b("async"))] == 6
    assert got[("tokenbucket_grants_total", b("async"))] == 1


@pytest.mark.asyncio
async def test_a_bucket_of_several_bandwidths_reports_the_binding_one(setup: Any) -> None:
    registry, metrics, clock, _ = setup
    sync = TokenBucket("gh", "10/second; 100/hour", backend=MemoryBackend(clock), clock=clock)
    asynchronous = AsyncTokenBucket("gh-async", "10/second; 5/hour", backend=MemoryBackend(clock), clock=clock)
    metrics.track(sync)
    metrics.track(asynchronous)
    sync.acquire(8)  # 2 left of the burst, 92 of the hour
    await asynchronous.acquire(4)  # 6 of the burst, 1 of the hour
    got = scrape(registry)
    assert (got[("tokenbucket_tokens", b("gh"))], got[("tokenbucket_capacity_tokens", b("gh"))]) == (2, 10)
    assert (got[("tokenbucket_tokens", b("gh-async"))], got[("tokenbucket_capacity_tokens", b("gh-async"))]) == (1, 5)


def test_async_store_cannot_be_scraped() -> None:
    class AsyncStore(MemoryBackend):
        async def snapshot(self, *args: Any) -> Any:  # type: ignore[override]
            return super().snapshot(*args)

    metrics = PrometheusMetrics(CollectorRegistry())
    bucket = AsyncTokenBucket("a", "1/second", backend=AsyncStore())
    with pytest.raises(ConfigurationError, match="cannot await"):
        metrics.track(bucket)


def test_a_failing_store_is_left_out_of_the_scrape(setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(MemoryBackend):
        def snapshot(self, *args: Any) -> Any:
            raise OSError("store down")

    registry, metrics, _, _ = setup
    metrics.track(TokenBucket("broken", "1/second", backend=Broken()))
    with caplog.at_level(logging.WARNING, logger="tokenbucket"):
        got = scrape(registry)
    assert ("tokenbucket_tokens", b("keepa")) in got
    assert ("tokenbucket_tokens", b("broken")) not in got
    assert "cannot read bucket 'broken'" in caplog.text


def test_one_exporter_per_registry_and_namespace() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusMetrics(registry)
    PrometheusMetrics(registry, namespace="quota")  # another namespace is fine
    text = generate_latest(registry).decode()
    assert "# TYPE quota_grants_total counter" in text
    assert "# TYPE tokenbucket_grants_total counter" in text


def test_a_real_lease_lock_reports_its_holder_state() -> None:
    from tokenbucket import LeaseLock

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    clock = ManualClock()
    lock = LeaseLock(
        "backfill_deals", ttl=30, backend=MemoryBackend(clock), clock=clock, heartbeat=False, listeners=[metrics]
    )

    def states() -> dict[str, float]:
        got = scrape(registry)
        return {dict(k[1])["tokenbucket_lease_state"]: v for k, v in got.items() if k[0] == "tokenbucket_lease_state"}

    with lock as lease:
        assert states()["held"] == 1
        fences = [v for k, v in scrape(registry).items() if k[0] == "tokenbucket_lease_fence"]
        assert fences == [lease.fence]
    assert states() == {"held": 0, "suspended": 0, "lost": 0, "released": 1, "broken": 0}
