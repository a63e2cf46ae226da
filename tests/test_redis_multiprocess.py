"""Several processes share one bucket on Redis: the rate holds across processes, and is used fully.

Four spawned processes acquire mixed costs from one bucket (server clock, real
time) for a few seconds and record when each request was allowed to start.
For every window of the merged ledger, the tokens started never exceed
``capacity + rate × window``, and the throughput reaches 90 % of the rate.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import uuid
from typing import Any

import pytest
from redis_servers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.realtime]

RATE = 200.0  # tokens per second
CAPACITY = 40.0  # 0.2 s of refill: room for a process that wakes a little late on a busy machine
PROCESSES = 4
RUN = 2.5  # seconds of contention
ALLOWANCE = 0.002  # seconds, for reading clocks


def worker(url: str, name: str, seed: int, ready: Any, go: Any, begin_at: Any, out: Any) -> None:
    """Acquire from ``begin`` until ``begin + RUN``; report ``(low, high, cost)`` per start (low <= start <= high)."""
    from tokenbucket import RedisBackend, TokenBucket

    rng = random.Random(seed)
    ledger = []
    with RedisBackend.from_url(url) as backend:
        bucket = TokenBucket(name, f"{RATE:g}/second", capacity=CAPACITY, backend=backend)
        bucket.snapshot()  # connect and load the scripts before the start
        ready.put(seed)
        go.wait()
        begin = begin_at.value
        time.sleep(max(0.0, begin - time.time()))
        while True:
            cost = rng.choice([1, 1, 2, 3, 5, 8, 13])
            before = time.time()
            reservation = bucket.reserve(cost)
            after = time.time()
            # The server started it at (its TIME when the script ran) + delay, and the script ran between
            # `before` and `after`; redis-server runs on this host, so TIME and time.time() are one clock.
            low, high = before + reservation.delay, after + reservation.delay
            if low > begin + RUN:
                reservation.cancel()
                break
            reservation.wait()
            ledger.append((low, high, float(cost)))
    out.put(ledger)


def worst_excess(entries: list[tuple[float, float, float]]) -> float:
    """How far the busiest window of ``entries`` (sorted ``(low, high, cost)``) exceeds capacity + rate x window.

    Start times are known to lie in [low, high], so the entries whose low is in [low_i, low_j] started
    within max(high) - low_i of each other.
    """
    worst = -CAPACITY
    for i in range(len(entries)):
        tokens = 0.0
        highest = entries[i][1]
        for j in range(i, len(entries)):
            tokens += entries[j][2]
            highest = max(highest, entries[j][1])
            window = highest - entries[i][0] + ALLOWANCE
            worst = max(worst, tokens - (CAPACITY + RATE * window))
    return worst


def run_processes(target: Any, url: str, name: str, count: int, lead: float) -> tuple[float, list[Any]]:
    """Start ``count`` spawned ``target`` processes, release them together ``lead`` s later; their results."""
    ctx = multiprocessing.get_context("spawn")
    out, ready, go, begin_at = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=target, args=(url, name, seed, ready, go, begin_at, out)) for seed in range(count)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)  # every process is up and connected
    begin = begin_at.value = time.time() + lead
    go.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return begin, results


def test_processes_share_the_rate(redis_server: RedisServer) -> None:
    begin, ledgers = run_processes(worker, redis_server.url, f"mp-{uuid.uuid4().hex}", PROCESSES, 0.2)
    entries = sorted(e for ledger in ledgers for e in ledger)
    assert all(ledger for ledger in ledgers), "every process got some requests through"

    worst = worst_excess(entries)
    assert worst <= 1e-9, f"the ledger exceeds capacity + rate x window by {worst:.3f} tokens"

    # Throughput: after the initial burst the bucket refills at RATE, and the waiting processes use all of it.
    started = sum(cost for low, _, cost in entries if begin <= low <= begin + RUN)
    assert started - CAPACITY >= 0.9 * RATE * RUN, f"{started:g} tokens in {RUN} s at {RATE:g}/s"


THREADS = 8
BUSY_PROCESSES = 8


def busy_worker(url: str, name: str, seed: int, ready: Any, go: Any, begin_at: Any, out: Any) -> None:
    """Threads that acquire, time out and cancel at random; report ``(low, high, cost)`` per started request."""
    import threading

    from tokenbucket import AcquireTimeout, RedisBackend, TokenBucket

    ledger: list[tuple[float, float, float]] = []
    counts = {"cancelled": 0, "timed_out": 0}
    lock = threading.Lock()
    with RedisBackend.from_url(url) as backend:
        bucket = TokenBucket(name, f"{RATE:g}/second", capacity=CAPACITY, backend=backend)
        bucket.snapshot()
        ready.put(seed)
        go.wait()
        begin = begin_at.value

        def thread(n: int) -> None:
            rng = random.Random(seed * 100 + n)
            time.sleep(max(0.0, begin - time.time()))
            while True:
                cost = rng.choice([1, 1, 2, 3, 5, 8, 13])
                roll = rng.random()
                before = time.time()
                try:
                    reservation = bucket.reserve(cost, timeout=0.05 if roll < 0.25 else None)
                except AcquireTimeout:
                    with lock:
                        counts["timed_out"] += 1
                    if time.time() > begin + RUN:
                        break
                    continue
                after = time.time()
                low, high = before + reservation.delay, after + reservation.delay
                if low > begin + RUN:
                    reservation.cancel()
                    break
                if roll > 0.75 and low - time.time() > 0.03:
                    # Cancel while waiting, at least 20 ms before the start: it never started.
                    time.sleep(rng.uniform(0.0, low - time.time() - 0.02))
                    reservation.cancel()
                    with lock:
                        counts["cancelled"] += 1
                    continue
                reservation.wait()
                with lock:
                    ledger.append((low, high, float(cost)))

        threads = [threading.Thread(target=thread, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    out.put((ledger, counts))


def test_processes_and_threads_that_cancel_and_time_out_never_overspend(redis_server: RedisServer) -> None:
    _, results = run_processes(busy_worker, redis_server.url, f"mp-busy-{uuid.uuid4().hex}", BUSY_PROCESSES, 0.3)
    entries = sorted(e for ledger, _ in results for e in ledger)
    cancelled = sum(c["cancelled"] for _, c in results)
    timed_out = sum(c["timed_out"] for _, c in results)
    assert cancelled > 0, "some reservations were cancelled while they waited"
    assert timed_out > 0, "some requests timed out"
    worst = worst_excess(entries)
    print(
        f"\n{BUSY_PROCESSES} processes x {THREADS} threads: {len(entries)} starts, {cancelled} cancelled, "
        f"{timed_out} timed out; worst window exceeds capacity + rate x window by {worst:.3f} tokens"
    )
    assert worst <= 1e-9, f"the ledger exceeds capacity + rate x window by {worst:.3f} tokens"
