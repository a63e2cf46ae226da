"""Celery tasks that share one metered API quota, and a task that runs one at a time.

Every worker, on every host, draws from one token bucket in Redis. A task whose
tokens are a long way off is rescheduled for the moment they will be there
(keeping its place in line) instead of sleeping in the worker.

From this folder, start a worker, then send some tasks::

    celery -A celery_tasks worker --pool=solo --loglevel=info
    python celery_tasks.py

``CELERY_BROKER_URL`` (default ``redis://localhost:6379/0``) is the broker and
result backend; ``TOKENBUCKET_REDIS_URL`` (default: the broker's URL) holds the
bucket and the lease.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from tokenbucket import LeaseLock, RedisBackend, TokenBucket
from tokenbucket.integrations.celery import acquire_or_retry, singleton, spends

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
REDIS_URL = os.environ.get("TOKENBUCKET_REDIS_URL", BROKER_URL)

app = Celery("celery_tasks", broker=BROKER_URL, backend=BROKER_URL)
app.conf.broker_connection_retry_on_startup = True

backend = RedisBackend.from_url(REDIS_URL, prefix="example:")
# The upstream allows bursts of 10 calls' worth of tokens and refills 1 token a second.
quota = TokenBucket("upstream-api", rate="60/minute", capacity=10, backend=backend)


def call_upstream(items: list[str]) -> dict[str, Any]:
    """Stands in for the real API call; like Keepa, it reports what it really charged."""
    return {"items": items, "tokens_consumed": len(items) + 1}


@app.task(bind=True, max_retries=10)
@spends(quota, cost=lambda items: len(items), settle=lambda reply: reply["tokens_consumed"], max_wait=1.0)
def fetch(self: Any, items: list[str]) -> dict[str, Any]:
    """Charged ``len(items)`` before it runs, settled with what the upstream reported."""
    return call_upstream(items)


@app.task(bind=True, max_retries=10)
def fetch_by_hand(self: Any, items: list[str]) -> dict[str, Any]:
    """The same, spelled out: acquire (or be rescheduled), call, settle."""
    grant = acquire_or_retry(self, quota, cost=len(items), max_wait=1.0)
    reply = call_upstream(items)
    grant.settle(reply["tokens_consumed"])
    return reply


@app.task(bind=True)
@singleton("nightly-backfill", ttl=30, backend=backend)
def backfill(self: Any) -> str:
    """At most one backfill at a time across every worker; a second one skips (returns None)."""
    return "backfilled"


def main() -> None:
    started = time.monotonic()
    batches = [[f"item-{n}-{k}" for k in range(3)] for n in range(5)]
    results = [fetch.delay(batch) for batch in batches]
    results.append(fetch_by_hand.delay(["last-1", "last-2"]))
    for result in results:
        reply = result.get(timeout=60)
        print(f"{reply['items'][0]}..: charged {reply['tokens_consumed']} tokens")
    print(f"6 calls in {time.monotonic() - started:.1f} s; bucket now: {quota.snapshot().tokens:.1f} tokens")

    with LeaseLock("nightly-backfill", ttl=30, backend=backend):
        print("backfill while another holds the lease:", backfill.delay().get(timeout=30))
    print("backfill when free:", backfill.delay().get(timeout=30))


if __name__ == "__main__":
    main()
