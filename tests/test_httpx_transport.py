"""The httpx transports against a real local Keepa-like HTTP server, and their edge cases.

The server charges each request its real cost (units × a price drawn for the
request in [LOW, HIGH]: noise around the estimate), reports Keepa's token
fields in the body and the IETF RateLimit fields in the headers, and answers
429 when its balance is zero or less.

In strict mode a 429 can only come from an estimate below the real cost; the
cost model's estimate is the largest price in its window, so once it has seen
the top of the noise it never underestimates, and the prior (above the top)
covers the warm-up.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tokenbucket import (
    AcquireTimeout,
    AsyncTokenBucket,
    ConfigurationError,
    CostModel,
    HeaderReconciler,
    MemoryBackend,
    PolicyMismatch,
    Rate,
    TokenBucket,
    UpstreamRateLimited,
)
from tokenbucket.integrations.httpx import AsyncRateLimitedTransport, RateLimitedTransport
from tokenbucket.testing import ManualClock

# Fast, so the test spends little wall time waiting, yet with half a second of depth: a request scheduled to
# start at t but sent late (a loaded machine) finds a full upstream that wasted the refill the bucket counted on,
# so a lag longer than CAPACITY / RATE could overdraw it. Keepa's depth is an hour.
RATE = 600.0
CAPACITY = 300.0
LOW, HIGH = 8, 12  # the server's per-unit price, drawn per request, uniformly in [LOW, HIGH]


class KeepaLikeServer:
    """The upstream's own bucket: continuous refill, Keepa's rule (start while positive), 429 at <= 0."""

    def __init__(self, seed: int = 7) -> None:
        self.lock = threading.Lock()
        self.tokens = CAPACITY
        self.updated = time.monotonic()
        self.rng = random.Random(seed)
        self.served = 0
        self.throttled = 0
        self.last: tuple[float, float] = (CAPACITY, self.updated)  # (balance after the last charge, when)
        self.spend_before_next: float | None = None
        self.httpd: ThreadingHTTPServer | None = None

    def balance(self, at: float) -> float:
        """The balance at monotonic time ``at`` (no later charges)."""
        with self.lock:
            return min(CAPACITY, self.tokens + max(0.0, at - self.updated) * RATE)

    def spend_first(self, to: float) -> None:
        """Another consumer will have spent down to ``to`` just before the next request arrives."""
        with self.lock:
            self.spend_before_next = to

    def charge(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            now = time.monotonic()
            self.tokens = min(CAPACITY, self.tokens + (now - self.updated) * RATE)
            self.updated = now
            if self.spend_before_next is not None:
                self.tokens, self.spend_before_next = self.spend_before_next, None
            if path == "/token":
                cost = 0
            elif self.tokens <= 0:
                self.throttled += 1
                return 429, self._fields(0)
            else:
                units = len(query.get("asin", [""])[0].split(","))
                cost = units * self.rng.randint(LOW, HIGH)
                self.served += 1
            self.tokens -= cost
            self.last = (self.tokens, now)
            return 200, self._fields(cost)

    def _fields(self, consumed: int) -> dict[str, Any]:
        return {
            "timestamp": int(time.time() * 1000),
            "tokensLeft": self.tokens,
            "refillIn": 0,
            "refillRate": RATE * 60,
            "tokenFlowReduction": 0.0,
            "tokensConsumed": consumed,
            "processingTimeInMs": 0,
        }


def make_handler(server: KeepaLikeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            status, fields = server.charge(url.path, parse_qs(url.query))
            body = json.dumps(fields).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            left = max(0, math.floor(fields["tokensLeft"]))
            self.send_header("RateLimit", f'"tokens";r={left};t=0')
            self.send_header("RateLimit-Policy", f'"tokens";q={int(CAPACITY)};w={int(CAPACITY / RATE) or 1}')
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def keepa() -> Iterator[tuple[KeepaLikeServer, str]]:
    """A Keepa-like server on a free loopback port, served from a thread."""
    upstream = KeepaLikeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(upstream))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield upstream, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def product_units(request: httpx.Request) -> tuple[str, float] | None:
    if request.url.path != "/product":
        return None
    return "product", len(request.url.params["asin"].split(","))


def asins(n: int) -> str:
    return ",".join(f"B{i:09d}" for i in range(n))


def strict_bucket(cls: Any, model: CostModel) -> Any:
    name = f"keepa-{uuid.uuid4().hex[:8]}"
    return cls(name, Rate(RATE, 1), capacity=CAPACITY, backend=MemoryBackend(), cost_model=model)


def check_tracks_upstream(bucket_tokens: float, upstream: KeepaLikeServer, after: float) -> None:
    """Right after a lone request, the bucket holds what the upstream reported, plus refill since, never more."""
    reported, _ = upstream.last
    assert reported - 1e-6 <= bucket_tokens <= upstream.balance(after) + 1e-6


# --------------------------------------------------------------------------- against the real server


def test_threads_share_the_quota_without_a_single_429(keepa: tuple[KeepaLikeServer, str]) -> None:
    upstream, base = keepa
    model = CostModel(prior={"product": 20}, window=50, warmup=20)
    bucket = strict_bucket(TokenBucket, model)
    transport = RateLimitedTransport(httpx.HTTPTransport(), bucket, operation=product_units, cost=0)
    rng = random.Random(3)
    sizes = [[rng.randint(1, 4) for _ in range(12)] for _ in range(8)]
    errors: list[BaseException] = []

    with httpx.Client(transport=transport, base_url=base) as client:

        def worker(batch: list[int]) -> None:
            try:
                for n in batch:
                    response = client.get("/product", params={"asin": asins(n)})
                    assert response.status_code == 200
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(batch,)) for batch in sizes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert upstream.throttled == 0
        assert upstream.served == 96

        # The model learned the upstream's costs: an upper estimate, far below the prior.
        assert LOW < model.per_unit("product") <= HIGH

        # One lone request: the bucket then holds what the upstream holds.
        client.get("/product", params={"asin": asins(1)})
        tokens = bucket.snapshot().tokens
        check_tracks_upstream(tokens, upstream, time.monotonic())


async def test_tasks_share_the_quota_without_a_single_429(keepa: tuple[KeepaLikeServer, str]) -> None:
    upstream, base = keepa
    model = CostModel(prior={"product": 20}, window=50, warmup=20)
    bucket = strict_bucket(AsyncTokenBucket, model)
    transport = AsyncRateLimitedTransport(httpx.AsyncHTTPTransport(), bucket, operation=product_units)
    rng = random.Random(4)

    async with httpx.AsyncClient(transport=transport, base_url=base) as client:

        async def worker() -> None:
            for _ in range(12):
                response = await client.get("/product", params={"asin": asins(rng.randint(1, 4))})
                assert response.status_code == 200

        await asyncio.gather(*(worker() for _ in range(8)))
        assert upstream.throttled == 0
        assert upstream.served == 96
        assert LOW < model.per_unit("product") <= HIGH
        await client.get("/product", params={"asin": asins(2)})
        check_tracks_upstream((await bucket.snapshot()).tokens, upstream, time.monotonic())


def test_a_429_syncs_waits_through_the_bucket_and_retries(keepa: tuple[KeepaLikeServer, str]) -> None:
    upstream, base = keepa
    model = CostModel(prior={"product": 12})
    bucket = strict_bucket(TokenBucket, model)
    upstream.spend_first(-300)  # someone else spends it: the bucket does not know
    with httpx.Client(transport=RateLimitedTransport(httpx.HTTPTransport(), bucket, operation=product_units)) as client:
        response = client.get(f"{base}/product", params={"asin": asins(2)})
    assert response.status_code == 200
    assert upstream.throttled == 1
    assert upstream.served == 1


def test_header_reconciler_leaves_a_streamed_body_unread(keepa: tuple[KeepaLikeServer, str]) -> None:
    upstream, base = keepa
    bucket = strict_bucket(TokenBucket, CostModel(prior={"product": 12}))
    bucket.acquire(260)  # the bucket thinks 40 are left; the upstream still has 300
    transport = RateLimitedTransport(
        httpx.HTTPTransport(), bucket, operation=product_units, reconciler=HeaderReconciler()
    )
    with (
        httpx.Client(transport=transport) as client,
        client.stream("GET", f"{base}/product", params={"asin": asins(1)}) as response,
    ):
        assert not response.is_stream_consumed
        synced = bucket.snapshot().tokens
        body = json.loads(response.read())
    check_tracks_upstream(synced, upstream, time.monotonic())  # synced from the RateLimit header
    assert synced > 40
    assert body["tokensConsumed"] >= LOW


def test_keepa_reconciler_reads_a_streamed_body_and_the_caller_still_gets_it(
    keepa: tuple[KeepaLikeServer, str],
) -> None:
    _, base = keepa
    bucket = strict_bucket(TokenBucket, CostModel(prior={"product": 12}))
    transport = RateLimitedTransport(httpx.HTTPTransport(), bucket, operation=product_units)
    with (
        httpx.Client(transport=transport) as client,
        client.stream("GET", f"{base}/product", params={"asin": asins(3)}) as response,
    ):
        chunks = b"".join(response.iter_bytes())
    assert json.loads(chunks)["tokensConsumed"] >= 3 * LOW
    assert bucket.cost_model is not None
    assert bucket.cost_model.to_dict()["observations"]["product"]


# --------------------------------------------------------------------------- edge cases on httpx's MockTransport


def keepa_body(left: float, consumed: float, rate_per_minute: float = 300) -> dict[str, Any]:
    return {"tokensLeft": left, "tokensConsumed": consumed, "refillRate": rate_per_minute, "refillIn": 0}


def virtual_bucket(model: CostModel | None = None, **kwargs: Any) -> TokenBucket:
    return TokenBucket(
        f"mock-{uuid.uuid4().hex[:8]}",
        "5/second",
        capacity=100,
        backend=MemoryBackend(),
        clock=ManualClock(0.0),
        cost_model=model,
        **kwargs,
    )


def test_settles_with_the_upstream_charge_and_syncs_its_balance() -> None:
    bucket = virtual_bucket()
    transport = RateLimitedTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, json=keepa_body(left=37, consumed=9))),
        bucket,
        cost=lambda request: float(request.url.params["n"]),
    )
    with httpx.Client(transport=transport) as client:
        client.get("http://upstream/x", params={"n": "5"})
    assert bucket.snapshot().tokens == 37


def test_gives_up_after_the_retries_with_a_clear_error() -> None:
    calls = []

    def always_busy(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(429, json=keepa_body(left=-5, consumed=0), headers={"Retry-After": "1"})

    model = CostModel(prior={"product": 3})
    bucket = virtual_bucket(model)
    transport = RateLimitedTransport(httpx.MockTransport(always_busy), bucket, operation=product_units, max_retries=2)
    with httpx.Client(transport=transport) as client, pytest.raises(UpstreamRateLimited) as info:
        client.get("http://upstream/product", params={"asin": asins(2)})
    assert len(calls) == 3
    assert info.value.attempts == 3
    assert info.value.report is not None
    assert info.value.report.remaining == -5
    assert "429" in str(info.value)
    assert bucket.snapshot().tokens == -5  # synced with the refusal; the refused calls cost nothing
    assert model.to_dict()["observations"] == {}  # refusals teach the model nothing


@pytest.mark.parametrize("status", [400, 402, 500])
def test_error_answers_are_charged_but_teach_the_model_nothing(status: int) -> None:
    model = CostModel(prior={"product": 3})
    bucket = virtual_bucket(model)
    transport = RateLimitedTransport(
        httpx.MockTransport(lambda request: httpx.Response(status, json=keepa_body(left=40, consumed=0))),
        bucket,
        operation=product_units,
    )
    with httpx.Client(transport=transport) as client:
        response = client.get("http://upstream/product", params={"asin": asins(2)})
    assert response.status_code == status
    assert bucket.snapshot().tokens == 40
    assert model.to_dict()["observations"] == {}
    assert model.estimate("product", 2) == 6


def test_a_429_without_a_balance_waits_for_retry_after() -> None:
    clock = ManualClock(0.0)
    answers = iter([httpx.Response(429, headers={"Retry-After": "30"}), httpx.Response(200)])
    bucket = TokenBucket("retry-after", "5/second", capacity=100, backend=MemoryBackend(), clock=clock)
    transport = RateLimitedTransport(
        httpx.MockTransport(lambda request: next(answers)), bucket, reconciler=HeaderReconciler()
    )
    with httpx.Client(transport=transport) as client:
        assert client.get("http://upstream/").status_code == 200
    assert clock.now() >= 30


def test_transport_errors_propagate_unchanged_after_a_refund() -> None:
    failure = httpx.ConnectError("connection refused")

    def broken(request: httpx.Request) -> httpx.Response:
        raise failure

    model = CostModel(prior={"product": 10})
    bucket = virtual_bucket(model)
    transport = RateLimitedTransport(httpx.MockTransport(broken), bucket, operation=product_units)
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError) as info:
        client.get("http://upstream/product", params={"asin": asins(5)})
    assert info.value is failure
    assert bucket.snapshot().tokens == 100
    assert model.to_dict()["observations"] == {}


async def test_async_transport_errors_propagate_unchanged_after_a_refund() -> None:
    failure = httpx.ReadTimeout("slow")

    async def broken(request: httpx.Request) -> httpx.Response:
        raise failure

    bucket = AsyncTokenBucket("async-broken", "5/second", capacity=100, backend=MemoryBackend(), clock=ManualClock(0))
    transport = AsyncRateLimitedTransport(httpx.MockTransport(broken), bucket, cost=30)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.get("http://upstream/")
    assert info.value is failure
    assert (await bucket.snapshot()).tokens == 100


def test_a_wait_beyond_the_timeout_sends_nothing() -> None:
    sent = []
    bucket = virtual_bucket()
    bucket.acquire(100)
    transport = RateLimitedTransport(
        httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200)), bucket, cost=50, timeout=1
    )
    with httpx.Client(transport=transport) as client, pytest.raises(AcquireTimeout):
        client.get("http://upstream/")
    assert sent == []


def test_adopts_the_upstream_rate_only_when_asked() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=keepa_body(left=50, consumed=1, rate_per_minute=60))

    for sync_rate, expected in ((False, Rate(5, 1)), (True, Rate(60, 60))):
        bucket = virtual_bucket()
        transport = RateLimitedTransport(httpx.MockTransport(answer), bucket, sync_rate=sync_rate)
        with httpx.Client(transport=transport) as client:
            client.get("http://upstream/")
        assert bucket.rate == expected


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_transport_that_syncs_rates_follows_a_new_rate_another_process_adopted(kind: str) -> None:
    def upgraded(request: httpx.Request) -> httpx.Response:  # the plan went from 300 to 60 a minute
        return httpx.Response(200, json=keepa_body(left=50, consumed=1, rate_per_minute=60))

    first = virtual_bucket()
    backend, clock = first.backend, first._clock
    with httpx.Client(transport=RateLimitedTransport(httpx.MockTransport(upgraded), first, sync_rate=True)) as c:
        c.get("http://upstream/")  # this process saw the new rate and stored it
    assert first.rate == Rate(60, 60)

    def other(sync_rate: bool) -> Any:  # another process, still built with the old rate
        name = first.name
        if kind == "sync":
            bucket = TokenBucket(name, "5/second", capacity=100, backend=backend, clock=clock)
            return bucket, RateLimitedTransport(httpx.MockTransport(upgraded), bucket, sync_rate=sync_rate)
        abucket = AsyncTokenBucket(name, "5/second", capacity=100, backend=backend, clock=clock)
        return abucket, AsyncRateLimitedTransport(httpx.MockTransport(upgraded), abucket, sync_rate=sync_rate)

    async def get(transport: Any) -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get("http://upstream/")

    for sync_rate in (False, True):
        bucket, transport = other(sync_rate)
        if kind == "sync":
            with httpx.Client(transport=transport) as client:
                call: Callable[[], Any] = lambda: client.get("http://upstream/")  # noqa: E731
                if sync_rate:
                    call()
                else:
                    with pytest.raises(PolicyMismatch):
                        call()
        elif sync_rate:
            asyncio.run(get(transport))
        else:
            with pytest.raises(PolicyMismatch):
                asyncio.run(get(transport))
        assert bucket.rate.per_second == (1.0 if sync_rate else 5.0)  # followed only when it syncs rates


def test_rejects_bad_configuration() -> None:
    sync_bucket = virtual_bucket()
    async_bucket = AsyncTokenBucket("cfg", "5/second", backend=MemoryBackend())
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    with pytest.raises(TypeError):
        RateLimitedTransport(mock, async_bucket)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AsyncRateLimitedTransport(mock, sync_bucket)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_retries"):
        RateLimitedTransport(mock, sync_bucket, max_retries=-1)
    with pytest.raises(ValueError, match="cost"):
        RateLimitedTransport(mock, sync_bucket, cost=-1)


def test_an_older_report_never_raises_the_balance_a_newer_one_lowered() -> None:
    a_arrived = threading.Event()
    b_handled = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a":
            a_arrived.set()
            assert b_handled.wait(10)
            return httpx.Response(200, json=keepa_body(left=90, consumed=10))  # processed first, answered last
        return httpx.Response(200, json=keepa_body(left=50, consumed=10))

    bucket = virtual_bucket()
    with httpx.Client(transport=RateLimitedTransport(httpx.MockTransport(answer), bucket, cost=10)) as client:
        slow = threading.Thread(target=client.get, args=("http://upstream/a",))
        slow.start()
        assert a_arrived.wait(10)
        client.get("http://upstream/b")
        assert bucket.snapshot().tokens == 40  # 50 reported, minus /a still under way
        b_handled.set()
        slow.join()
    assert bucket.snapshot().tokens == 40  # /a's stale 90 is not adopted


def test_a_lone_request_adopts_the_report_as_it_is() -> None:
    bucket = virtual_bucket()
    answer = httpx.Response(200, json=keepa_body(left=95, consumed=3))
    with httpx.Client(transport=RateLimitedTransport(httpx.MockTransport(lambda r: answer), bucket, cost=10)) as c:
        bucket.acquire(50)  # the bucket thought 50 were gone; the upstream says otherwise
        c.get("http://upstream/")
    assert bucket.snapshot().tokens == 95


async def test_cancelling_a_request_that_waits_for_tokens_refunds_them() -> None:
    sent = []
    clock = ManualClock(0.0, autojump=False)
    bucket = AsyncTokenBucket("cancel", "1/second", capacity=10, backend=MemoryBackend(), clock=clock)
    await bucket.acquire(10)
    transport = AsyncRateLimitedTransport(
        httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200)), bucket, cost=5
    )
    async with httpx.AsyncClient(transport=transport) as client:
        task = asyncio.create_task(client.get("http://upstream/"))
        for _ in range(1000):  # let the task reserve and start waiting
            await asyncio.sleep(0)
            if (await bucket.snapshot()).promised:
                break
        assert (await bucket.snapshot()).promised == 5
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    snap = await bucket.snapshot()
    assert (snap.tokens, snap.promised) == (0, 0)  # the 5 charged for the wait came back
    assert sent == []


def test_importing_tokenbucket_does_not_import_httpx() -> None:
    code = "import sys, tokenbucket, tokenbucket.integrations; assert 'httpx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- buckets of several bandwidths


def several_bucket(rate: str, **kwargs: Any) -> TokenBucket:
    return TokenBucket(f"multi-{uuid.uuid4().hex[:8]}", rate, backend=MemoryBackend(), clock=ManualClock(0.0), **kwargs)


def test_each_bandwidth_syncs_to_the_ietf_limit_of_its_rate() -> None:
    bucket = several_bucket("10/second; 600/hour")
    headers = {
        "RateLimit": '"hour";r=400;t=100, "burst";r=3;t=1',  # the upstream's order need not be the bucket's
        "RateLimit-Policy": '"burst";q=10;w=1, "hour";q=600;w=3600',
    }
    transport = RateLimitedTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, headers=headers)), bucket, reconciler=HeaderReconciler()
    )
    with httpx.Client(transport=transport) as client:
        client.get("http://upstream/")
    assert [b.tokens for b in bucket.snapshot().bandwidths] == [3, 400]


def test_keepa_balance_syncs_the_bandwidth_of_its_refill_rate_only() -> None:
    bucket = several_bucket("5/minute; 6000/day", capacity=(300, 6000), overdraft=math.inf)
    body = keepa_body(left=-40, consumed=20, rate_per_minute=5)
    transport = RateLimitedTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, json=body)), bucket, cost=20
    )
    with httpx.Client(transport=transport) as client:
        client.get("http://upstream/")
    assert [b.tokens for b in bucket.snapshot().bandwidths] == [-40, 5980]  # the daily one: as charged


def test_a_bare_429_empties_every_bandwidth() -> None:
    clock = ManualClock(0.0)
    answers = iter([httpx.Response(429), httpx.Response(200)])
    bucket = TokenBucket("bare-429", "10/second; 600/hour", backend=MemoryBackend(), clock=clock)
    transport = RateLimitedTransport(
        httpx.MockTransport(lambda request: next(answers)), bucket, reconciler=HeaderReconciler()
    )
    with httpx.Client(transport=transport) as client:
        assert client.get("http://upstream/").status_code == 200
    assert clock.now() == pytest.approx(6.0)  # the retry waited for one token of the hour bandwidth (600/hour)


def test_also_pays_a_request_cap_in_the_same_reservation() -> None:
    """Keepa's tokens and a cap of 2 requests a second, one reservation: the cap spaces the calls out."""
    clock = ManualClock(0.0)
    store = MemoryBackend()
    tokens = TokenBucket("keepa-tokens", "5/minute", capacity=300, overdraft=math.inf, backend=store, clock=clock)
    cap = TokenBucket("keepa-requests", "2/second", backend=store, clock=clock)
    sent: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(clock.now())
        return httpx.Response(200, json=keepa_body(left=300 - 10 * len(sent), consumed=10, rate_per_minute=5))

    transport = RateLimitedTransport(httpx.MockTransport(answer), tokens, cost=10, also=[(cap, 1)])
    with httpx.Client(transport=transport) as client:
        for _ in range(5):
            client.get("http://upstream/")
    assert sent == [0, 0, pytest.approx(0.5), pytest.approx(1.0), pytest.approx(1.5)]
    assert tokens.snapshot().tokens == 250  # settled and synced to what the upstream said, as without a cap
    with pytest.raises(TypeError, match="pairs"):
        RateLimitedTransport(httpx.MockTransport(answer), tokens, also=[cap])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="different backends"):
        RateLimitedTransport(
            httpx.MockTransport(answer), tokens, also=[(TokenBucket("x", "1/second", backend=MemoryBackend()), 1)]
        )


@pytest.mark.asyncio
async def test_async_also_refunds_every_bucket_when_cancelled() -> None:
    clock = ManualClock(0.0, autojump=False)
    store = MemoryBackend()
    tokens = AsyncTokenBucket("a-tokens", "1/second", capacity=10, backend=store, clock=clock)
    cap = AsyncTokenBucket("a-requests", "1/second", capacity=1, initial=0, backend=store, clock=clock)
    transport = AsyncRateLimitedTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)), tokens, cost=4, also=[(cap, 1)]
    )
    async with httpx.AsyncClient(transport=transport) as client:
        task = asyncio.ensure_future(client.get("http://upstream/"))
        await asyncio.sleep(0.01)  # the request waits a second for the cap
        assert (await tokens.snapshot()).tokens == 5  # 4, and the 1 its full upstream loses in the wait
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await tokens.snapshot()).tokens == 10
    assert (await cap.snapshot()).tokens == 0


def test_a_transport_waits_in_its_lane() -> None:
    clock = ManualClock(0.0)
    bucket = TokenBucket(
        "laned", "1/second", capacity=10, lanes={"urgent": 0, "bulk": 4}, backend=MemoryBackend(), clock=clock
    )
    ok = httpx.MockTransport(lambda request: httpx.Response(200))
    bulk = RateLimitedTransport(ok, bucket, cost=6, lane="bulk", reconciler=HeaderReconciler())
    urgent = RateLimitedTransport(ok, bucket, cost=4, lane="urgent", reconciler=HeaderReconciler())
    with httpx.Client(transport=bulk) as client:
        client.get("http://upstream/")
    assert clock.now() == 0  # 10 - 6 leaves the 4 held back
    with httpx.Client(transport=urgent) as client:
        client.get("http://upstream/")
    assert clock.now() == 0  # urgent work takes the held-back tokens at once
    with pytest.raises(ConfigurationError, match="no lane 'batch'"):
        RateLimitedTransport(ok, bucket, lane="batch")
    other = TokenBucket("other", "1/second", backend=bucket.backend, clock=clock)
    with pytest.raises(ConfigurationError, match="cannot be combined"):
        RateLimitedTransport(ok, bucket, lane="bulk", also=[(other, 1)])
