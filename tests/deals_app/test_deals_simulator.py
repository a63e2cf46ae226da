"""The Keepa-like simulator follows Keepa's token rules and SP-API's rate limit (virtual time)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import httpx
import pytest
from deals_app.catalog import Catalog, from_unix_ms, to_unix_ms
from deals_app.simulator import KeepaSimulator, SimConfig, SimulatorServer

from tokenbucket.testing import ManualClock

KEY = "k"
TOKEN_FIELDS = {
    "timestamp",
    "tokensLeft",
    "refillIn",
    "refillRate",
    "tokenFlowReduction",
    "tokensConsumed",
    "processingTimeInMs",
}


def make(clock: ManualClock, **options: object) -> KeepaSimulator:
    return KeepaSimulator(SimConfig(api_key=KEY, **options), clock=clock.now)  # type: ignore[arg-type]


def product(sim: KeepaSimulator, asins: list[str], **params: object) -> tuple[int, dict[str, object]]:
    query = "&".join(f"{k}={v}" for k, v in {"key": KEY, "asin": ",".join(asins), **params}.items())
    r = sim.handle("GET", f"/product?{query}")
    return r.status, r.body


def test_keepa_time_round_trips() -> None:
    assert to_unix_ms(0) == 21564000 * 60000
    assert from_unix_ms(to_unix_ms(7889760)) == 7889760


def test_every_body_carries_the_token_fields() -> None:
    sim = make(ManualClock(), refill_rate=5)
    assert sim.handle("GET", "/token?key=k").body["tokensLeft"] == 300  # bucket = 60 × rate
    for target in ("/token?key=k", "/token?key=bad", "/product?key=k&asin=B000000001", "/nope?key=k"):
        body = sim.handle("GET", target).body
        assert body.keys() >= TOKEN_FIELDS, target


def test_refill_is_per_minute_and_capped_at_an_hour() -> None:
    clock = ManualClock()
    sim = make(clock, refill_rate=5, initial_tokens=0)
    clock.advance(59.9)
    body = sim.handle("GET", "/token?key=k").body
    assert body["tokensLeft"] == 0
    assert body["refillIn"] == 100
    clock.advance(0.1)
    assert sim.handle("GET", "/token?key=k").body["tokensLeft"] == 5
    clock.advance(3 * 3600)
    assert sim.handle("GET", "/token?key=k").body["tokensLeft"] == 300


def test_a_call_runs_while_positive_is_charged_after_and_429s_at_zero() -> None:
    clock = ManualClock()
    sim = make(clock, refill_rate=5, initial_tokens=3)
    asins = [f"B{i:09d}" for i in range(10)]
    status, body = product(sim, asins, offers=20, stock=1)
    assert status == 200
    consumed = body["tokensConsumed"]
    assert isinstance(consumed, int)
    assert consumed > 10
    assert body["tokensLeft"] == 3 - consumed  # far below zero: charged after
    status, body = product(sim, asins[:1])
    assert status == 429
    assert body["tokensConsumed"] == 0
    assert body["tokensLeft"] == 3 - consumed
    assert "error" in body
    stats = sim.stats()
    assert stats["keepa_429"] == 1
    assert stats["min_balance"] == 3 - consumed
    assert stats["tokens_charged"] == consumed


def test_product_costs_follow_keepa() -> None:
    sim = make(ManualClock(), refill_rate=100)
    catalog: Catalog = sim.catalog
    asins = [f"B{i:09d}" for i in range(30)]
    _, plain = product(sim, asins)
    assert plain["tokensConsumed"] == 30  # 1 an ASIN; history and days are free
    _, history = product(sim, asins, days=90, history=1)
    assert history["tokensConsumed"] == 30
    _, offers = product(sim, asins, offers=20, stock=1, buybox=1)
    expected = 0
    for a in asins:
        pages = -(-min(20, catalog.product(a).offer_count) // 10)
        expected += (6 * pages if pages else 1) + 2  # offer pages, stock; the buy box is free with offers
    assert offers["tokensConsumed"] == expected
    _, buybox = product(sim, asins, buybox=1)
    assert buybox["tokensConsumed"] == 3 * len(asins)  # 1 a product, +2 for the buy box without offers


def test_product_history_is_keepa_csv_and_cut_by_days() -> None:
    sim = make(ManualClock())
    _, full = product(sim, ["B000000007"])
    _, recent = product(sim, ["B000000007"], days=30)
    full_csv = full["products"][0]["csv"]  # type: ignore[index]
    recent_csv = recent["products"][0]["csv"]  # type: ignore[index]
    assert len(full_csv) == 36  # every price type, null where there is no data
    assert [i for i, series in enumerate(full_csv) if series] == [0, 1, 2, 3, 7, 11]
    for price_type, (series, cut) in enumerate(zip(full_csv, recent_csv, strict=True)):
        if series is None:
            assert cut is None
            continue
        step = 3 if price_type == 7 else 2  # NEW_FBM_SHIPPING: [minute, price, shipping, ...]
        assert len(series) % step == 0
        if step == 3:
            series = [v for i, v in enumerate(series) if i % 3 != 2]
            cut = [v for i, v in enumerate(cut) if i % 3 != 2]
        minutes = series[0::2]
        assert minutes == sorted(minutes)
        assert len(cut) < len(series)
        assert cut == series[len(series) - len(cut) :]
        assert all(m >= sim.catalog.origin - 30 * 1440 for m in cut[0::2])


def test_bad_requests_are_rejected_without_charge() -> None:
    sim = make(ManualClock())
    too_many = [f"B{i:09d}" for i in range(101)]
    assert product(sim, too_many)[0] == 400
    assert product(sim, ["nope"])[0] == 400
    assert product(sim, ["B000000001"], offers=5)[0] == 400
    assert sim.handle("GET", "/deal?key=k&selection={bad").status == 400
    assert sim.handle("DELETE", "/token?key=k").status == 405
    assert sim.stats()["tokens_charged"] == 0


def test_bad_key_is_402_with_an_error_body() -> None:
    sim = make(ManualClock())
    r = sim.handle("GET", "/product?key=wrong&asin=B000000001")
    assert r.status == 402
    assert r.body["error"]["type"] == "paymentRequired"
    assert sim.stats()["payment_required"] == 1


def test_deals_cost_five_a_page_of_150_and_keep_coming() -> None:
    clock = ManualClock()
    sim = make(clock, deals_per_hour=60, backlog_hours=4)  # 240 deals before the start, one at it

    def page(n: int) -> dict[str, object]:
        sel = json.dumps({"page": n, "dateRange": 0})
        r = sim.handle("GET", f"/deal?key=k&selection={sel}")
        assert r.status == 200
        assert r.body["tokensConsumed"] == 5
        return r.body

    first = page(0)["deals"]["dr"]  # type: ignore[index]
    second = page(1)["deals"]["dr"]  # type: ignore[index]
    assert len(first) == 150
    assert len(second) == 91
    created = [d["creationDate"] for d in first + second]
    assert created == sorted(created, reverse=True)  # newest first
    assert {
        "asin",
        "title",
        "rootCat",
        "categories",
        "current",
        "delta",
        "deltaPercent",
        "avg",
        "creationDate",
        "lastUpdate",
    } <= first[0].keys()
    clock.advance(3600)
    assert [len(page(n)["deals"]["dr"]) for n in range(3)] == [150, 150, 1]  # type: ignore[index]


def test_data_is_deterministic_from_the_seed() -> None:
    a = make(ManualClock(), seed=3)
    b = make(ManualClock(), seed=3)
    c = make(ManualClock(), seed=4)
    assert product(a, ["B000000009"])[1]["products"] == product(b, ["B000000009"])[1]["products"]
    assert product(a, ["B000000009"])[1]["products"] != product(c, ["B000000009"])[1]["products"]


def test_cost_noise_makes_costs_vary_but_never_below_keepa() -> None:
    sim = make(ManualClock(), cost_noise=0.5, refill_rate=1000)
    exact = make(ManualClock(), refill_rate=1000)
    asins = [f"B{i:09d}" for i in range(20)]
    base = product(exact, asins, offers=20)[1]["tokensConsumed"]
    seen = {product(sim, asins, offers=20)[1]["tokensConsumed"] for _ in range(5)}
    assert len(seen) > 1
    assert all(isinstance(s, int) and s >= base for s in seen)  # type: ignore[operator]


def test_sp_api_restrictions_rate_limit_5_per_second_burst_10() -> None:
    clock = ManualClock()
    sim = make(clock)
    target = "/listings/2021-08-01/restrictions?asin=B000000001&sellerId=S&marketplaceIds=ATVPDKIKX0DER"
    headers = {"x-amz-access-token": KEY}
    ok = [sim.handle("GET", target, headers) for _ in range(10)]
    assert all(r.status == 200 for r in ok)
    assert ok[0].headers["x-amzn-RateLimit-Limit"] == "5.0"
    refused = sim.handle("GET", target, headers)
    assert refused.status == 429
    assert refused.body["errors"][0]["code"] == "QuotaExceeded"
    clock.advance(1.0)
    assert [sim.handle("GET", target, headers).status for _ in range(6)] == [200] * 5 + [429]
    assert sim.handle("GET", target, {"x-amz-access-token": "bad"}).status == 403
    codes = set()
    for i in range(200):
        clock.advance(1.0)
        r = sim.handle("GET", target.replace("B000000001", f"B{i:09d}"), headers)
        codes.update(reason["reasonCode"] for x in r.body["restrictions"] for reason in x["reasons"])
    assert codes == {"APPROVAL_REQUIRED", "ASIN_NOT_FOUND", "NOT_ELIGIBLE"}
    assert sim.stats()["sp_429"] == 2


def test_served_over_http_with_counters(make_simulator: object) -> None:
    server = make_simulator(time_scale=60)  # type: ignore[operator]
    with httpx.Client(base_url=server.base_url) as client:
        r = client.get("/token", params={"key": "test-key"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert client.get("/token", params={"key": "nope"}).status_code == 402
        stats = client.get("/_sim/stats").json()
    assert stats["requests"] == 2
    assert stats["payment_required"] == 1
    assert stats["time_scale"] == 60


@pytest.mark.parametrize("scale", [1.0, 600.0])
def test_time_scale_speeds_up_the_clock(scale: float) -> None:
    clock = ManualClock()
    sim = make(clock, time_scale=scale)
    clock.advance(2.0)
    assert sim.elapsed() == pytest.approx(2.0 * scale)


def _raw(server: SimulatorServer, request: bytes) -> bytes:
    """Send ``request`` as it is and return the whole answer (the server closes after a refusal)."""
    host, port = server.address
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_and_malformed_requests_are_refused_without_reading_them(
    make_simulator: Callable[..., SimulatorServer],
) -> None:
    server = make_simulator()
    for length, status in ((b"-1", b"400"), (b"abc", b"400"), (b"99999999999", b"413")):
        answer = _raw(server, b"POST /token?key=x HTTP/1.1\r\nHost: h\r\nContent-Length: " + length + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]  # answered at once, never waiting for a body
    answer = _raw(server, b"GET /token?key=" + b"x" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414")


def test_counters_stay_bounded_whatever_the_paths() -> None:
    sim = make(ManualClock())
    for i in range(500):
        sim.handle("GET", f"/nothing-{i}?key=nope")
    assert len(sim.stats()["by_endpoint"]) == 1
    assert sim.stats()["by_endpoint"]["(other)"] == 500
