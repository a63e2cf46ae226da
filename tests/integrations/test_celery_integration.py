"""The Celery helpers with a real worker: a private redis-server is the broker, the result
backend and the store of the buckets and leases.

The worker runs in a thread of this process (``celery.contrib.testing.worker``), consuming
from the broker like any worker: retries are real messages with a countdown. Waits are kept
to a second or two; assertions are about order and counts, not durations.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.exceptions import MaxRetriesExceededError
from redis_servers import RedisServer

from tokenbucket import (
    ConfigurationError,
    CostExceedsCapacity,
    CostModel,
    LeaseLock,
    NotAcquired,
    RedisBackend,
    TokenBucket,
)
from tokenbucket.integrations.celery import acquire_or_retry, singleton, spends

pytestmark = [
    pytest.mark.redis,
    pytest.mark.realtime,
    # Celery's result store opens a subscription connection from AsyncResult.__del__ and leaves the
    # socket to the garbage collector; the worker fixture collects them before the module ends.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

RESULT_TIMEOUT = 30

_backend: dict[str, RedisBackend] = {}
"""The Redis backend the tasks use, set by the ``worker`` fixture (the tasks run in this process)."""


def _bucket(name: str, rate: str, capacity: float) -> TokenBucket:
    return TokenBucket(name, rate, capacity=capacity, backend=_backend["redis"])


def _lock(name: str, ttl: float) -> LeaseLock:
    return LeaseLock(name, ttl=ttl, backend=_backend["redis"])


app = Celery("tb_celery_test", set_as_current=False)


@app.task(bind=True, max_retries=3)
def spend(
    self: Any, bucket: str, rate: str, capacity: float, cost: float, max_wait: float, hold: bool
) -> dict[str, Any]:
    started = time.time()
    grant = acquire_or_retry(self, _bucket(bucket, rate, capacity), cost, max_wait=max_wait, hold=hold)
    return {"retries": self.request.retries, "started": started, "granted": time.time(), "cost": grant.cost}


@app.task(bind=True, max_retries=5)
def spend_then_fail_once(self: Any, bucket: str) -> dict[str, Any]:
    acquire_or_retry(self, _bucket(bucket, "1/second", 1), 1, max_wait=0.1)
    if self.request.retries == 1:  # the run that inherited the reservation fails (say, the upstream said 503)
        raise self.retry(countdown=0)
    return {"retries": self.request.retries}


@app.task(bind=True, max_retries=0)
def spend_no_retries(self: Any, bucket: str, rate: str, capacity: float, cost: float) -> None:
    acquire_or_retry(self, _bucket(bucket, rate, capacity), cost, max_wait=0.1)


@app.task(bind=True, max_retries=3)
@spends(
    lambda bucket, asins: _bucket(bucket, "1/second", 5),
    cost=lambda bucket, asins: len(asins),
    settle=lambda reply: reply["tokens_consumed"],
)
def fetch(self: Any, bucket: str, asins: list[str]) -> dict[str, Any]:
    return {"asins": asins, "tokens_consumed": 2 * len(asins)}


MODEL = CostModel(prior={"product": 10}, warmup=1)
"""Prices ``product`` calls for the ``priced`` task; the worker runs in this process, so the test sees it learn."""


def _priced_bucket(name: str) -> TokenBucket:
    return TokenBucket(name, "30/second", capacity=30, backend=_backend["redis"], cost_model=MODEL)


@app.task(bind=True, max_retries=3)
@spends(
    lambda bucket, n: _priced_bucket(bucket),
    op="product",
    units=lambda bucket, n: n,
    settle=lambda reply: reply["tokens_consumed"],
    max_wait=0.2,
)
def priced(self: Any, bucket: str, n: int) -> dict[str, Any]:
    return {"tokens_consumed": 2 * n, "retries": self.request.retries}


@app.task
def quick() -> float:
    return time.time()


_tasks: dict[str, Any] = {}
"""Tasks whose decorators need the Redis backend, registered by the ``worker`` fixture."""


def _register_singleton_tasks(backend: RedisBackend) -> None:
    @app.task(bind=True, max_retries=5, name="exclusive_skip")
    @singleton("celery-test-skip", ttl=10, backend=backend)
    def exclusive_skip(self: Any) -> str:
        return "ran"

    @app.task(bind=True, max_retries=5, name="exclusive_retry")
    @singleton("celery-test-retry", ttl=10, on_busy="retry", backend=backend)
    def exclusive_retry(self: Any) -> dict[str, Any]:
        return {"retries": self.request.retries}

    _tasks.update(skip=exclusive_skip, retry=exclusive_retry)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this module's own: Celery's broker keys have no TTL, so not the shared one."""
    server = RedisServer(Path(tmp_path_factory.mktemp("celery-redis"))).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def worker(broker: RedisServer) -> Iterator[Any]:
    app.conf.update(
        broker_url=broker.url,
        result_backend=broker.url,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=None,  # results stored with SET, not the SETEX redis-py 8 deprecates
        # Fail fast, not after 20 s of reconnecting, if a stray result is collected after the server is gone.
        result_backend_transport_options={"retry_policy": {"max_retries": 1}},
    )
    client = broker.client()
    _backend["redis"] = RedisBackend(client, prefix="celerytest:")
    _register_singleton_tasks(_backend["redis"])
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=20) as running:
            yield running
    finally:
        _backend.pop("redis")
        client.close()
        # Finalize the AsyncResults left in reference cycles (they unsubscribe from the result store)
        # while Redis is still up, rather than at some later test's garbage collection; then close
        # the result store's subscription connection and the app's connections.
        gc.collect()
        app.backend.result_consumer.stop()
        app.backend.client.connection_pool.disconnect()
        app.close()


def _name() -> str:
    return f"b-{uuid.uuid4().hex[:10]}"


class TestAcquireOrRetry:
    def test_long_waits_become_retries_that_keep_their_reservation(self, worker: Any) -> None:
        """Cost 1 on a bucket of 1 refilling 1/s: the 2nd and 3rd runs are rescheduled, once each."""
        name = _name()
        results = [spend.delay(name, "1/second", 1, 1, 0.2, True) for _ in range(3)]
        meanwhile = quick.delay()  # sent last; the single worker is free while the others wait
        runs = [r.get(timeout=RESULT_TIMEOUT) for r in results]
        done_quick = meanwhile.get(timeout=RESULT_TIMEOUT)
        assert [run["retries"] for run in runs] == [0, 1, 1]
        # The retried runs start only after the quick task finished: the worker did not sleep for them.
        assert done_quick < runs[1]["started"]
        assert done_quick < runs[2]["started"]
        # First come, first served: the reservations were made in order and kept.
        assert runs[0]["granted"] <= runs[1]["granted"] <= runs[2]["granted"]
        # Nothing was charged twice: three costs of 1, so nothing is promised and the balance is above -1.
        snap = _bucket(name, "1/second", 1).snapshot()
        assert snap.promised == 0
        assert snap.tokens > -1

    def test_a_retry_for_another_reason_pays_again(self, worker: Any) -> None:
        """The reservation is good for the one retry it was made for, not for every later run."""
        name = _name()
        _bucket(name, "1/second", 1).acquire(1)  # empty: the next token is a second away
        run = spend_then_fail_once.delay(name).get(timeout=RESULT_TIMEOUT)
        # retries 1 inherited the reservation and failed; retries 2 reserved again (about a second away, held);
        # retries 3 inherited that one. Reusing the first reservation would have ended at retries 2.
        assert run == {"retries": 3}

    def test_without_hold_nothing_is_charged_while_waiting(self, worker: Any) -> None:
        name = _name()
        bucket = _bucket(name, "1/hour", 1)
        bucket.acquire(1)  # empty for an hour
        result = spend.delay(name, "1/hour", 1, 1, 0.1, False)
        # One hour away: the run is rescheduled (an ETA message) and charges nothing.
        deadline = time.monotonic() + RESULT_TIMEOUT
        while result.state != "RETRY" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert result.state == "RETRY"
        snap = bucket.snapshot()
        assert snap.tokens == pytest.approx(0, abs=0.01)
        assert snap.promised == 0
        result.revoke()

    def test_a_retry_that_cannot_be_sent_refunds(self, worker: Any) -> None:
        name = _name()
        bucket = _bucket(name, "1/hour", 1)
        bucket.acquire(1)
        result = spend_no_retries.delay(name, "1/hour", 1, 1)
        with pytest.raises(MaxRetriesExceededError):
            result.get(timeout=RESULT_TIMEOUT)
        snap = bucket.snapshot()
        assert snap.promised == 0
        assert snap.tokens == pytest.approx(0, abs=0.01)  # the reservation of 1 was given back

    def test_cost_that_can_never_start_fails_at_once(self, worker: Any) -> None:
        result = spend.delay(_name(), "1/second", 5, 6, 1.0, True)
        # Celery rebuilds the exception from its args: the caller gets CostExceedsCapacity itself.
        with pytest.raises(CostExceedsCapacity, match="cost 6 can never start") as info:
            result.get(timeout=RESULT_TIMEOUT)
        assert (info.value.cost, info.value.limit) == (6, 5)
        assert result.state == "FAILURE"


class TestSpends:
    def test_charges_the_cost_and_settles_the_actual(self, worker: Any) -> None:
        name = _name()
        reply = fetch.delay(name, ["a", "b"]).get(timeout=RESULT_TIMEOUT)
        assert reply == {"asins": ["a", "b"], "tokens_consumed": 4}
        snap = _bucket(name, "1/second", 5).snapshot()
        assert snap.tokens == pytest.approx(1, abs=0.5)  # 5 - 4 settled, plus under a second of refill

    def test_operations_priced_by_the_cost_model_across_a_retry(self, worker: Any) -> None:
        name = _name()
        _priced_bucket(name).acquire(30)  # empty: the estimate of 3 products (30 tokens) is a second away
        reply = priced.delay(name, 3).get(timeout=RESULT_TIMEOUT)
        assert reply == {"tokens_consumed": 6, "retries": 1}
        # The retried run's grant was priced: settling it taught the model 2 per product ...
        assert MODEL.per_unit("product") == 2
        # ... and refunded the 24 tokens the estimate had overcharged.
        assert _priced_bucket(name).snapshot().tokens > 20

    def test_needs_a_bound_task(self) -> None:
        @spends(TokenBucket(_name(), "1/second"))
        def plain(x: int) -> int:
            return x

        with pytest.raises(TypeError, match="bind=True"):
            plain(1)


class TestSingleton:
    def test_skips_while_another_holds_the_lease(self, worker: Any) -> None:
        task = _tasks["skip"]
        with _lock("celery-test-skip", 10):  # another holder, here in the test process
            assert task.delay().get(timeout=RESULT_TIMEOUT) is None
        assert task.delay().get(timeout=RESULT_TIMEOUT) == "ran"
        assert _lock("celery-test-skip", 10).inspect() is None  # the run released it

    def test_retries_when_the_holder_is_done(self, worker: Any) -> None:
        held = LeaseLock("celery-test-retry", ttl=1, backend=_backend["redis"], heartbeat=False).acquire()
        run = _tasks["retry"].delay().get(timeout=RESULT_TIMEOUT)  # the held lease expires within 1 s
        assert run["retries"] >= 1
        assert held.release() is False  # it had expired: the task got it without breaking anyone's lease

    def test_a_ready_lock_and_bad_arguments(self) -> None:
        from tokenbucket import MemoryBackend

        eager = Celery("tb_eager_singleton", set_as_current=False)
        eager.conf.task_always_eager = True
        lock = LeaseLock(_name(), ttl=30, backend=MemoryBackend(), heartbeat=False)

        @eager.task(bind=True)
        @singleton(lock, on_busy="raise")
        def job(self: Any) -> str:
            assert lock.inspect() is not None  # held while the body runs
            return "done"

        assert job.delay().get() == "done"
        with lock, pytest.raises(NotAcquired):
            job.delay().get()
        with pytest.raises(TypeError, match="needs ttl"):
            singleton("no-ttl")
        with pytest.raises(TypeError, match="not both"):
            singleton(lock, ttl=5)
        with pytest.raises(ConfigurationError, match="on_busy"):
            singleton("x", ttl=5, on_busy="later")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="timeout"):
            singleton("x", ttl=5, timeout=3)

    def test_needs_a_bound_task(self) -> None:
        @singleton(f"plain-{uuid.uuid4().hex}", ttl=5)
        def plain(x: int) -> int:
            return x

        with pytest.raises(TypeError, match="bind=True"):
            plain(1)


class TestEager:
    def test_eager_and_direct_calls_wait_in_place(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from tokenbucket import MemoryBackend
        from tokenbucket.testing import ManualClock

        clock = ManualClock(0)
        bucket = TokenBucket(_name(), "1/second", capacity=1, backend=MemoryBackend(), clock=clock)
        eager = Celery("tb_eager", set_as_current=False)
        eager.conf.task_always_eager = True

        @eager.task(bind=True)
        def use(self: Any) -> float:
            return acquire_or_retry(self, bucket, 1, max_wait=0).waited

        assert use.delay().get() == 0
        assert use.delay().get() == pytest.approx(1.0)  # waited (in virtual time) instead of retrying
        assert use() == pytest.approx(1.0)
        assert clock.now() == pytest.approx(2.0)
