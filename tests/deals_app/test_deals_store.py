"""The store reads Keepa's csv the way Keepa documents it: pairs, or triples for the types with shipping."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from deals_app.store import SHIPPING_TYPES, Store, StoreError
from deals_testing import keepa_rows

keepa_utils = pytest.importorskip("keepa.utils", reason="the keepa client is a test dependency of the app")


def real_shaped_csv() -> list[list[int] | None]:
    """A product's csv as Keepa sends it: 36 entries, null where there is no data, -1 for 'no offer'."""
    csv: list[list[int] | None] = [None] * 36
    csv[0] = [8000000, 1999, 8000600, -1, 8001200, 1899]  # AMAZON: pairs, out of stock in between
    csv[1] = [8000000, 2099, 8000900, 1949]  # NEW
    csv[3] = [8000000, 15234, 8000600, 9876]  # SALES rank
    csv[7] = [8000000, 1999, 499, 8000600, 1899, 0]  # NEW_FBM_SHIPPING: price, shipping
    csv[16] = [8000000, 45]  # RATING
    csv[18] = [8000100, 2150, 0, 8000700, -1, -1]  # BUY_BOX_SHIPPING, no buy box later
    csv[32] = [8000200, 1200, 399]  # BUY_BOX_USED_SHIPPING
    return csv


def test_the_store_splits_pairs_and_triples_as_the_keepa_client_does(tmp_path: Path) -> None:
    store = Store(tmp_path / "deals.sqlite")
    csv = real_shaped_csv()
    written = store.save_products([{"asin": "B0REALDATA", "title": "t", "csv": csv}], full=True, cost=1)
    stored = store.price_points("B0REALDATA")
    assert written == len(stored) == 13
    assert set(stored) == {row[1:] for row in keepa_rows("B0REALDATA", csv)}
    assert (7, 8000000, 1999, 499) in stored  # the triple the old store misread as three pairs
    # The client's own parser agrees on the times and on price + shipping, type by type.
    parsed = keepa_utils.parse_csv(csv, to_datetime=False, out_of_stock_as_nan=False)
    for index, name, isfloat in keepa_utils.csv_indices:
        points = [p for p in stored if p[0] == index]
        if not csv[index]:
            assert not points
            assert name not in parsed
            continue
        times = keepa_utils.keepa_minutes_to_time([p[1] for p in points], to_datetime=False)
        assert list(times) == list(parsed[f"{name}_time"]), name
        totals = [p[2] + (p[3] or 0) for p in points]
        scale = (10 if name == "RATING" else 1) / 100 if isfloat else 1
        assert [round(t * scale, 6) for t in totals] == [round(float(v), 6) for v in parsed[name]], name


def test_shipping_types_are_the_clients_shipping_types() -> None:
    assert {index for index, name, _ in keepa_utils.csv_indices if "SHIPPING" in name} == SHIPPING_TYPES


def test_a_malformed_series_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "deals.sqlite")
    csv = real_shaped_csv()
    csv[18] = [8000100, 2150, 0, 8000700]  # a triple type with a dangling entry
    products = [{"asin": "B0OK", "csv": real_shaped_csv()}, {"asin": "B0BROKEN", "csv": csv}]
    with pytest.raises(StoreError, match=r"B0BROKEN.*csv\[18\].*price, shipping.*4 numbers"):
        store.save_products(products, full=True, cost=2)
    assert store.counts().price_points == 0
    assert store.price_points("B0OK") == []


def test_a_version_0_database_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE price_points (asin TEXT NOT NULL, price_type INTEGER NOT NULL, minute INTEGER NOT NULL, "
        "value INTEGER NOT NULL, PRIMARY KEY (asin, price_type, minute)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO price_points VALUES ('B0OLD', 0, 8000000, 1999)")
    conn.commit()
    conn.close()
    store = Store(path)
    assert store.price_points("B0OLD") == [(0, 8000000, 1999, None)]  # kept, with no shipping
    store.save_products([{"asin": "B0NEW", "csv": real_shaped_csv()}], full=True, cost=1)
    assert (7, 8000000, 1999, 499) in store.price_points("B0NEW")
    assert store._conn().execute("PRAGMA user_version").fetchone()[0] == 1
