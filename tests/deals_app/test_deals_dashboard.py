"""The dashboard renders its chart and its table in a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from deals_app.catalog import Catalog
from deals_app.dashboard import DashboardServer, token_chart
from deals_app.leases import LeaseView
from deals_app.store import Store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with the flags that keep it offline and quiet."""
    assert Path(CHROMIUM).exists(), "headless Chromium is needed: apt-get install -y chromium"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def png_colours(path: Path) -> int:
    """How many distinct colours an 8-bit RGB(A) PNG has (a tiny decoder: enough for a screenshot)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    channels = 3
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, _height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8
            assert colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for row in range(len(raw) // (stride + 1)):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            ul = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else ul)) & 0xFF
        if row % 4 == 0:
            colours.update(bytes(line[i : i + 3]) for i in range(0, stride, channels * 4))
        prev = line
    return len(colours)


@pytest.fixture
def filled_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "deals.sqlite")
    catalog = Catalog(1, 7889760)
    deals = catalog.deals_between(7889760 - 600, 7889760)
    store.upsert_deals(d.as_json(7889760) for d in deals)
    product = catalog.product(deals[0].asin)
    store.save_products(
        [{"asin": product.asin, "title": product.title, "csv": product.history(90, 7889760)}], full=False, cost=12
    )
    store.save_restrictions([(deals[0].asin, [{"reasonCode": "APPROVAL_REQUIRED"}]), (deals[1].asin, [])])
    for i, left in enumerate([1200, 900, 400, -150, -290, 60, 310, 700]):
        store.log_tokens(left, "keepa")
        with store._tx() as conn:  # spread the samples over the last hour
            conn.execute(
                "UPDATE token_log SET at = ? WHERE rowid = (SELECT max(rowid) FROM token_log)",
                (time.time() - 3600 + i * 450,),
            )
    return store


def test_chart_svg_marks_zero_and_handles_no_data() -> None:
    svg = token_chart([(0.0, 100.0), (60.0, -50.0), (120.0, 20.0)])
    assert svg.startswith('<svg id="token-chart"')
    assert "<polyline" in svg
    assert 'stroke-dasharray="4 3"' in svg  # the zero line
    assert "no upstream replies" in token_chart([])


@pytest.mark.slow
def test_dashboard_renders_chart_and_table_in_chromium(filled_store: Store, tmp_path: Path) -> None:
    leases = [LeaseView("backfill_deals", 7, "worker-3 pid 4121 task=backfill", 21.5, 4)]
    with DashboardServer(filled_store, lambda: leases) as server:
        shot = tmp_path / "dashboard.png"
        dom = chromium(tmp_path, "--dump-dom", f"--screenshot={shot}", "--window-size=1000,900", server.url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert '<svg id="token-chart"' in page
    assert "<polyline" in page
    assert page.count("<tr>") >= 11  # header + 10 deals
    assert 'id="deals"' in page
    assert "worker-3 pid 4121 task=backfill" in page
    assert "APPROVAL_REQUIRED" not in page  # reasons stay in the database; the table says "restricted"
    assert "restricted</td>" in page
    assert shot.exists()
    assert png_colours(shot) > 8  # not a blank page: text, table lines, the chart's blue and red


def _seconds(clock: str) -> int:
    h, m, s = (int(part) for part in clock.split(":"))
    return h * 3600 + m * 60 + s


@pytest.mark.slow
def test_dashboard_reads_as_a_person_reads_it(filled_store: Store, tmp_path: Path) -> None:
    """What is on screen: the chart's title names the span its axis shows, the red band has a legend,
    deals with a history show their real price-point count, and the page has one clock (UTC wall time)."""
    filled_store.set_meta("keepa_policy", {"max_debt": 300.0, "time_scale": 300.0})
    with DashboardServer(filled_store, lambda: None, hours=6.0) as server:
        shot = tmp_path / "dashboard.png"
        dom = chromium(tmp_path, "--dump-dom", f"--screenshot={shot}", "--window-size=1100,1400", server.url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert png_colours(shot) > 8
    title = re.search(r'<h2 id="chart-title">([^<]*)</h2>', page)
    assert title is not None
    # The data span one hour less 7.5 minutes (8 samples 450 s apart): the title says so, not "6 h".
    assert "over 52.5 min" in title.group(1), title.group(1)
    ticks = re.findall(r'class="axis-time"[^>]*>(\d\d:\d\d:\d\d)<', page)
    assert len(ticks) == 2
    span = (_seconds(ticks[1]) - _seconds(ticks[0])) % 86400
    assert span == 3150
    assert f"{ticks[0]}–{ticks[1]} UTC" in title.group(1)
    assert "52.5 min shown" in page
    legend = re.search(r'<ul id="chart-legend"[^>]*>(.*?)</ul>', page, re.S)
    assert legend is not None
    assert "debt" in legend.group(1)
    assert "300" in legend.group(1)
    assert "tokens left" in legend.group(1)
    points = [int(p.replace(",", "")) for p in re.findall(r'<td class="num points">([\d,]+)</td>', page)]
    assert points == [len(filled_store.price_points(asin)) for asin in [_history_asin(filled_store)]]
    assert points[0] > 0
    assert "not fetched yet" in page
    # One clock: every time of day on the page is UTC wall time; the upstream's clock appears only labelled.
    assert "upstream clock, 300× fast" in page
    assert "found (UTC)" not in page
    assert "refreshed" in page
    assert re.search(r"refreshed \d\d:\d\d:\d\d UTC", page)


def _history_asin(store: Store) -> str:
    return next(d["asin"] for d in store.latest_deals(25) if d["points"])
