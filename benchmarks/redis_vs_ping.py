"""How close a Redis-backed acquire comes to the cheapest possible round trip.

Times, on one connection to a private redis-server and in the same run,
redis-py's ``PING`` and tokenbucket's sync ``acquire`` / ``try_acquire``
on `RedisBackend` (a bucket that never runs dry, so no call sleeps), and
prints each as a ratio of PING's rate. Every one of them is one round trip;
the ratio is what the Lua script and our Python cost on top.

Run: ``.venv/bin/python -m benchmarks.redis_vs_ping [--seconds 1.5] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from benchmarks._redis import private_redis


def rate(call: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``call`` over about ``seconds``."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            call()
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def latency(call: Callable[[], object], n: int) -> float:
    """The median seconds of one call, over ``n`` calls timed one by one (robust to a busy machine)."""
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    args = parser.parse_args()

    import redis

    from tokenbucket import RedisBackend, TokenBucket

    with private_redis() as url:
        client = redis.Redis.from_url(url, single_connection_client=True)
        backend = RedisBackend(client, prefix="bench:")
        bucket = TokenBucket("bench", "1000000000/second", backend=backend)
        calls: dict[str, Callable[[], object]] = {
            "PING": client.ping,
            "acquire": bucket.acquire,
            "try_acquire": bucket.try_acquire,
        }
        for call in calls.values():  # warm up: connect, load the scripts
            rate(call, 0.2)
        results: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits all alike
            for name, call in calls.items():
                results[name].append(rate(call, args.seconds))
        client.close()
    ping = statistics.median(results["PING"])
    for name, values in results.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:12s} {median:10.0f}/s  {median / ping:5.2f}x PING   (rounds: {rounds})")


if __name__ == "__main__":
    main()
