"""``deals-app dashboard``: one small read-only page about the collector.

It shows the latest deals, the upstream's token balance over the last hours
as an inline SVG chart (drawn here, no JavaScript), the lease holders and the
row counts. It only reads the database (and, with ``--redis-url``, the leases),
so it can run beside the collector.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .catalog import to_unix_ms
from .leases import LeaseView
from .quota import format_duration
from .serving import LocalServer
from .store import Store

__all__ = ["DashboardServer", "chart_legend", "render_page", "token_chart"]

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2430; background: #fafbfc; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.muted { color: #687385; } .counts span { margin-right: 18px; }
table { border-collapse: collapse; background: #fff; } th, td { padding: 4px 10px; border-bottom: 1px solid #e3e6ea; }
th { text-align: left; background: #f0f2f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.down { color: #0a7d32; } .restricted { color: #b3261e; }
svg { background: #fff; border: 1px solid #e3e6ea; }
.legend { list-style: none; padding: 0; margin: 6px 0; color: #687385; }
.legend li { display: inline-block; margin-right: 18px; }
.swatch { display: inline-block; width: 18px; height: 10px; margin-right: 6px; vertical-align: middle; }
.swatch.dashed { height: 0; border-top: 2px dashed #b3261e; }
"""


def token_chart(series: Sequence[tuple[float, float]], *, width: int = 720, height: int = 220) -> str:
    """An inline SVG line chart of ``(unix time, tokens left)``, with the zero line marked."""
    pad_l, pad_r, pad_t, pad_b = 56, 12, 12, 28
    if not series:
        return (
            f'<svg id="token-chart" width="{width}" height="{height}" role="img" aria-label="token balance">'
            f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle" fill="#687385">'
            "no upstream replies recorded yet</text></svg>"
        )
    t0, t1 = series[0][0], series[-1][0]
    span_t = max(t1 - t0, 1e-9)
    lo = min(0.0, min(v for _, v in series))
    hi = max(0.0, max(v for _, v in series))
    span_v = max(hi - lo, 1.0)

    def x(t: float) -> float:
        return pad_l + (t - t0) / span_t * (width - pad_l - pad_r)

    def y(v: float) -> float:
        return pad_t + (hi - v) / span_v * (height - pad_t - pad_b)

    points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in series)
    zero = y(0.0)
    parts = [
        f'<svg id="token-chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="token balance over time">',
        f'<rect x="{pad_l}" y="{zero:.1f}" width="{width - pad_l - pad_r}" height="{max(0.0, y(lo) - zero):.1f}" '
        'fill="#fdecea"/>',
        f'<line x1="{pad_l}" y1="{zero:.1f}" x2="{width - pad_r}" y2="{zero:.1f}" stroke="#b3261e" '
        'stroke-dasharray="4 3"/>',
        f'<polyline points="{points}" fill="none" stroke="#1f6feb" stroke-width="2"/>',
    ]
    for value in (hi, 0.0, lo) if lo < 0 else (hi, 0.0):
        parts.append(
            f'<text x="{pad_l - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11" fill="#687385">'
            f"{value:.0f}</text>"
        )
    for t in (t0, t1):
        parts.append(
            f'<text class="axis-time" x="{x(t):.1f}" y="{height - 8}" text-anchor="{"start" if t == t0 else "end"}" '
            f'font-size="11" fill="#687385">{_clock(t)}</text>'
        )
    parts.append(
        f'<text x="{(pad_l + width - pad_r) / 2:.1f}" y="{height - 8}" text-anchor="middle" font-size="11" '
        f'fill="#687385">wall clock (UTC), {format_duration(t1 - t0)} shown</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _clock(t: float) -> str:
    """The page's one clock: wall time, UTC."""
    return time.strftime("%H:%M:%S", time.gmtime(t))


def chart_legend(max_debt: float | None) -> str:
    """The chart's legend (HTML): the line, the zero line and the red debt band."""
    bound = f"; the policy lets a call start only if it leaves at most {max_debt:.0f}" if max_debt else ""
    return (
        '<ul id="chart-legend" class="legend">'
        '<li><span class="swatch" style="background:#1f6feb"></span>tokens left, as each Keepa reply reported</li>'
        '<li><span class="swatch dashed"></span>zero</li>'
        '<li><span class="swatch" style="background:#fdecea;border:1px solid #b3261e"></span>'
        f"debt: below zero, borrowed from the next refills{bound}</li></ul>"
    )


def _price(cents: Any) -> str:
    return "—" if not isinstance(cents, int) or cents < 0 else f"${cents / 100:,.2f}"


def _seen(store: Store) -> dict[str, float]:
    """When the collector first stored each of the newest deals (wall time)."""
    return dict(store.first_seen(200))


def render_page(store: Store, leases: Sequence[LeaseView] | None, *, hours: float = 6.0) -> str:
    """The dashboard's HTML (read-only: nothing is written).

    One clock on the page: wall time in UTC (the refresh time, the chart's axis,
    when each deal was stored). The upstream's own time appears once, labelled,
    in the "listed" column, because a sped-up simulator's clock runs ahead.
    """
    counts = store.counts()
    policy = store.meta("keepa_policy") or {}
    scale = float(policy.get("time_scale", 1.0))
    series = store.token_series(time.time() - hours * 3600)
    deals = store.latest_deals(25)
    seen = _seen(store)
    listed_head = "listed (UTC)" if scale == 1.0 else f"listed (upstream clock, {scale:g}× fast)"
    rows = []
    for d in deals:
        restricted = {None: "not checked", 0: "no", 1: "restricted"}[d["restricted"]]
        listed = time.strftime("%Y-%m-%d %H:%M", time.gmtime(to_unix_ms(d["creation_date"]) / 1000))
        at = seen.get(d["asin"])
        stored = _clock(at) if at is not None else "—"
        points = (
            f'<td class="num points">{d["points"]:,}</td>'
            if d["points"]
            else '<td class="num points muted">not fetched yet</td>'
        )
        rows.append(
            "<tr>"
            f"<td><code>{html.escape(d['asin'])}</code></td><td>{html.escape(d['title'])}</td>"
            f'<td class="num">{_price(d["current"])}</td><td class="num">{_price(d["average"])}</td>'
            f'<td class="num down">{d["delta_percent"]}%</td><td>{stored}</td><td class="muted">{listed}</td>'
            f"{points}"
            f'<td class="{"restricted" if d["restricted"] else ""}">{restricted}</td>'
            "</tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="9" class="muted">no deals stored yet</td></tr>')
    if leases is None:
        lease_html = '<p class="muted">Leases live in the collector process (memory backend); pass --redis-url.</p>'
    elif not leases:
        lease_html = '<p id="leases">No lease is held.</p>'
    else:
        items = "".join(
            f"<tr><td>{html.escape(v.name)}</td><td>{html.escape(v.holder)}</td><td class='num'>{v.fence}</td>"
            f"<td class='num'>{v.expires_in:.1f} s</td><td class='num'>{v.renewals}</td></tr>"
            for v in leases
        )
        lease_html = (
            '<table id="leases"><tr><th>lease</th><th>holder</th><th>fence</th><th>expires in</th>'
            f"<th>renewals</th></tr>{items}</table>"
        )
    last = f"{series[-1][1]:.0f} tokens" if series else "unknown"
    if series:
        t0, t1 = series[0][0], series[-1][0]
        chart_title = (
            f"Token balance over {format_duration(t1 - t0)}, {_clock(t0)}–{_clock(t1)} UTC "
            f"({len(series)} Keepa replies; now {last})"
        )
        if scale != 1.0:
            chart_title += f" = {format_duration((t1 - t0) * scale)} of upstream time"
    else:
        chart_title = f"Token balance (no Keepa reply in the past {hours:g} h)"
    with_history = sum(1 for d in deals if d["points"])
    checkpoint = store.checkpoint("backfill")[0]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deals-app dashboard</title>
<meta http-equiv="refresh" content="10"><style>{_STYLE}</style></head>
<body>
<h1>deals-app</h1>
<p class="muted">{html.escape(str(store.path))} · refreshed {_clock(time.time())} UTC · read-only</p>
<p class="counts"><span>deals <b id="count-deals">{counts.deals}</b></span>
<span>recent histories <b>{counts.products_recent}</b></span><span>backfilled <b>{counts.products_full}</b>
(checkpoint #{checkpoint})</span><span>price points <b>{counts.price_points}</b></span>
<span>restriction checks <b>{counts.restrictions}</b> ({counts.restricted} restricted)</span></p>
<h2 id="chart-title">{chart_title}</h2>
{token_chart(series)}
{chart_legend(policy.get("max_debt"))}
<h2>Lease holders</h2>
{lease_html}
<h2>Latest deals</h2>
<p class="muted">points: the price points stored for the deal's product ({with_history} of these {len(deals)} have a
history; the collector fetches histories in the order deals were found, so the newest wait their turn).</p>
<table id="deals"><tr><th>ASIN</th><th>title</th><th>price</th><th>average</th><th>change</th>
<th>stored (UTC)</th><th>{listed_head}</th><th>points</th><th>restricted</th></tr>
{"".join(rows)}
</table>
</body></html>
"""


class DashboardServer(LocalServer):
    """Serves the dashboard on a loopback port; a context manager.

    Args:
        store: The database to read.
        leases: Returns the leases held now, or None when they cannot be seen from here.
        host: Address to bind.
        port: Port; 0 picks a free one.
        hours: How many hours of balance the chart shows.
    """

    def __init__(
        self,
        store: Store,
        leases: Callable[[], Sequence[LeaseView] | None],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hours: float = 6.0,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/", "/index.html"):
                    self.send_error(404)
                    return
                try:
                    body = render_page(outer.store, outer.leases(), hours=outer.hours).encode()
                    status = 200
                except Exception as exc:  # the page says what went wrong instead of dropping the connection
                    body = f"<!doctype html><p>dashboard error: {html.escape(str(exc))}</p>".encode()
                    status = 500
                finally:
                    outer.store.close()  # this request's thread ends here: close its connection
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.store = store
        self.leases = leases
        self.hours = hours
        super().__init__(ThreadingHTTPServer((host, port), Handler), "dashboard")

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        host, port = self.address
        return f"http://{host}:{port}/"
