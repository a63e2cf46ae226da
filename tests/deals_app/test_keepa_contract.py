"""The public ``keepa`` client (the Keepa client most Python users run) against ``deals-app simulator``.

The client hard-codes ``https://api.keepa.com``; these tests send its requests to the simulator instead
(the sync client's ``requests.get``, the async client's aiohttp session), and call everything the client
exposes: its sync and async clients, typed and untyped answers, its parsing helpers, and its wait on 429.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from deals_app.catalog import from_unix_ms
from deals_app.simulator import SimulatorServer

keepa = pytest.importorskip("keepa", reason="the keepa client is a test dependency of the app (deals_app[test])")

KEY = "contract-key"
REAL = "https://api.keepa.com"
ASIN = "B000000007"


@pytest.fixture
def sim(make_simulator: Callable[..., SimulatorServer]) -> SimulatorServer:
    return make_simulator(api_key=KEY, refill_rate=600, time_scale=60.0, backlog_hours=2)


@pytest.fixture
def api(sim: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sync `keepa.Keepa` whose requests go to the simulator."""
    real_get = keepa.keepa_sync.requests.get

    def get(url: str, *args: Any, **kwargs: Any) -> Any:
        assert url.startswith(REAL)
        return real_get(sim.base_url + url[len(REAL) :], *args, **kwargs)

    monkeypatch.setattr(keepa.keepa_sync.requests, "get", get)
    return keepa.Keepa(KEY)


class _Session:
    """An aiohttp session whose ``get`` goes to the simulator (a wrapper: subclassing ClientSession warns)."""

    def __init__(self, base: str, aiohttp: Any) -> None:
        self._base = base
        self._session = aiohttp.ClientSession()

    async def __aenter__(self) -> _Session:
        await self._session.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.__aexit__(*exc)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self._session.get(self._base + url[len(REAL) :], **kwargs)


@pytest.fixture
def async_client(sim: SimulatorServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import aiohttp

    shim = types.SimpleNamespace(ClientSession=lambda: _Session(sim.base_url, aiohttp))
    monkeypatch.setattr(keepa.keepa_async, "aiohttp", shim)
    return


def test_the_default_query_parses_every_csv_type(api: Any, sim: SimulatorServer) -> None:
    product = api.query(ASIN, progress_bar=False)[0]  # history on: the client reads every csv index 0-35
    assert product["asin"] == ASIN
    assert len(product["csv"]) == 36
    data = product["data"]
    assert {"AMAZON", "NEW", "USED", "SALES", "NEW_FBM_SHIPPING", "COUNT_NEW"} <= set(data)
    assert len(data["NEW_FBM_SHIPPING"]) * 3 == len(product["csv"][7])  # triples: price + shipping
    assert 2022 <= data["AMAZON_time"][0].year <= data["AMAZON_time"][-1].year <= 2026  # 3 years to 2026-01-01
    assert api.tokens_left == sim.stats()["tokens_left"] // 1  # the client tracks the balance the server reports


def test_offers_stock_buybox_rating_stats_and_domain(api: Any) -> None:
    product = api.query(
        ASIN, offers=20, stock=True, buybox=True, rating=True, stats=90, domain="GB", progress_bar=False
    )[0]
    assert product["domainId"] == 2
    offers = product["offers"]
    assert offers, "this product has offers"
    for offer in offers:
        assert {"offerId", "sellerId", "offerCSV", "condition", "isFBA", "lastSeen", "stockCSV"} <= set(offer)
        history = keepa.convert_offer_history(offer["offerCSV"], to_datetime=False)
        assert len(history[0]) == len(offer["offerCSV"]) // 3
    assert product["liveOffersOrder"] == [o["offerId"] for o in offers]
    assert product["buyBoxSellerIdHistory"][1].startswith("A")
    used = keepa.process_used_buybox(product["buyBoxUsedHistory"])
    assert len(used) == len(product["buyBoxUsedHistory"]) // 4
    assert {"RATING", "COUNT_REVIEWS", "BUY_BOX_SHIPPING", "BUY_BOX_USED_SHIPPING"} <= set(product["data"])
    assert 1 <= max(product["data"]["RATING"]) <= 5  # the client scales 0-50 to stars
    assert "stockPerCondition3rdFBA" not in product  # it belongs to stats, not the product
    assert product["stats"]["stockPerCondition3rdFBA"]
    assert "AMAZON" in product["stats_parsed"]["current"]


def test_typed_answers_validate(api: Any) -> None:
    product = api.query(ASIN, offers=20, stock=True, buybox=True, typed=True, progress_bar=False)[0]
    assert product.asin == ASIN
    assert product.offers
    assert product.offers[0].offerCSV
    deals = api.deals({"page": 0, "domainId": 1, "priceTypes": [0]}, typed=True)
    assert deals.dr
    assert deals.dr[0].asin
    assert api.best_sellers_query("172282", typed=True).asinList
    categories = api.search_for_categories("electronics", typed=True)
    assert [c.name for c in categories.values()] == ["Electronics"]


def test_a_product_code_finds_its_product(api: Any) -> None:
    product = api.query("012345678905", product_code_is_asin=False, progress_bar=False)[0]
    assert product["upcList"] == ["012345678905"]
    assert len(product["asin"]) == 10


def test_deals_honour_the_filters(api: Any, sim: SimulatorServer) -> None:
    everything = api.deals({"page": 0, "domainId": 1})["dr"]  # the client sends priceTypes as a bare 0
    assert everything
    category = everything[0]["rootCat"]
    only = api.deals({"page": 0, "domainId": 1, "includeCategories": [category]})["dr"]
    assert only
    assert all(d["rootCat"] == category for d in only)
    others = api.deals({"page": 0, "domainId": 1, "excludeCategories": [category]})["dr"]
    assert all(d["rootCat"] != category for d in others)
    assert len(only) + len(others) == len(everything)
    cheap = api.deals({"page": 0, "domainId": 1, "currentRange": [0, 2000]})["dr"]
    assert all(d["current"][0] <= 2000 for d in cheap)


def test_bestsellers_categories_sellers_and_the_product_finder(api: Any, sim: SimulatorServer) -> None:
    assert len(api.best_sellers_query("172282")) == 100
    root = api.category_lookup(0)
    assert "172282" in root
    assert api.category_lookup(172282)["172282"]["name"] == "Electronics"
    sellers = api.seller_query("A2L77EE7U53NWQ", storefront=True)
    seller = sellers["A2L77EE7U53NWQ"]
    assert seller["sellerId"] == "A2L77EE7U53NWQ"
    assert seller["asinList"]
    everything = api.product_finder({"perPage": 500})
    found = api.product_finder({"current_SALES_lte": 20000, "rootCategory": ["172282", "1055398"], "perPage": 500})
    assert 0 < len(found) < len(everything)
    catalog = sim.simulator.catalog
    for asin in found:  # the filters are applied: the latest sales rank, the category
        product = catalog.product(asin)
        assert product.csv[3][-1] <= 20000
        assert product.root_category in (172282, 1055398)


def test_keepa_time_helpers_agree_with_the_simulator(api: Any) -> None:
    product = api.query(ASIN, progress_bar=False)[0]
    minute = product["lastUpdate"]
    when = keepa.keepa_minutes_to_time([minute])[0]
    assert from_unix_ms(when.timestamp() * 1000) == minute


def test_on_429_the_client_sleeps_until_the_refill_instead_of_spinning(
    make_simulator: Callable[..., SimulatorServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_simulator(api_key=KEY, refill_rate=20, time_scale=60.0, initial_tokens=0)
    real_get = keepa.keepa_sync.requests.get
    monkeypatch.setattr(
        keepa.keepa_sync.requests, "get", lambda url, *a, **k: real_get(server.base_url + url[len(REAL) :], *a, **k)
    )
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(keepa.keepa_sync.time, "sleep", sleep)
    api = keepa.Keepa(KEY)
    started = time.monotonic()
    product = api.query(ASIN, progress_bar=False)[0]  # balance 0: a 429 first, then a wait, then the data
    assert product["asin"] == ASIN
    stats = server.stats()
    assert stats["keepa_429"] <= 2, f"{stats['keepa_429']} requests answered 429: the client spun"
    assert slept
    assert all(s >= 1.0 for s in slept)
    assert time.monotonic() - started < 10


def test_the_async_client(async_client: None) -> None:
    async def main() -> tuple[Any, Any]:
        api = await keepa.AsyncKeepa.create(KEY)
        products = await api.query(ASIN, offers=20, progress_bar=False)
        deals = await api.deals({"page": 0, "domainId": 1})
        return products, deals

    products, deals = asyncio.run(main())
    assert products[0]["asin"] == ASIN
    assert "NEW_FBM_SHIPPING" in products[0]["data"]
    assert deals["dr"]


def test_the_clock_fields_are_the_servers_wall_clock_and_real_milliseconds(api: Any) -> None:
    api.update_status()
    assert abs(api.status.timestamp / 1000 - time.time()) < 5  # wall time, not the simulated 2026-01-01
    assert 0 < api.status.refillIn <= 1000  # a simulated minute is one real second at 60x
    assert api.time_to_refill <= 2.5
