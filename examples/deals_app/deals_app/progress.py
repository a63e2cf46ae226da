"""The collector's progress display and closing summary.

On a terminal the display redraws a few lines in place; otherwise it prints a
plain line every few seconds, so logs and CI output stay readable.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any, TextIO

from .jobs import Collector
from .quota import describe_plan, format_duration

__all__ = ["Progress", "describe_plan", "display_lines", "format_duration", "plain_lines", "summary_lines"]


class Progress:
    """Shows the collector's state while it runs.

    Args:
        collector: The running collector.
        upstream_seconds: Returns the upstream seconds elapsed (for the header).
        out: Where to write (default stdout).
        interactive: Redraw in place; default: ``out`` is a terminal.
        every: Seconds between plain lines when not interactive.
    """

    def __init__(
        self,
        collector: Collector,
        *,
        upstream_seconds: Callable[[], float],
        out: TextIO | None = None,
        interactive: bool | None = None,
        every: float = 5.0,
    ) -> None:
        self.collector = collector
        self.upstream_seconds = upstream_seconds
        self.out = out or sys.stdout
        self.interactive = self.out.isatty() if interactive is None else interactive
        self.every = every
        self._drawn = 0
        self._started = time.monotonic()
        self._last_line = -1e9

    def _state(self) -> dict[str, Any]:
        c = self.collector
        counts = c.store.counts()
        snap = c.quota.bucket.snapshot()
        reply = c.last_keepa_reply
        return {
            "wall": time.monotonic() - self._started,
            "sim": self.upstream_seconds(),
            "counts": counts,
            "tokens": snap.tokens,
            "capacity": snap.capacity,
            "debt": snap.debt,
            "promised": snap.promised,
            "ttp": snap.time_to_positive,
            "upstream": None if reply is None else reply.tokens_left,
            "calls": c.keepa_calls,
            "plan": c.quota.last_plan,
            "activity": dict(c.stats.activity),
            "sp_calls": c.stats.restriction_checks + c.stats.sp_retries,
        }

    def tick(self) -> None:
        """Redraw (terminal) or print a few plain lines if it is time (otherwise)."""
        s = self._state()
        if self.interactive:
            self._draw(s)
        elif s["wall"] - self._last_line >= self.every:
            self._last_line = s["wall"]
            print("\n".join(plain_lines(s)), file=self.out, flush=True)

    def _draw(self, s: dict[str, Any]) -> None:
        width = max(40, min(120, shutil.get_terminal_size((80, 24)).columns - 1))
        lines = display_lines(s, width=width)
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)


def _wrap(head: str, text: str, width: int, indent: int | None = None) -> list[str]:
    """``head`` then ``text``, wrapped (never cut) to ``width`` columns, continuation lines indented."""
    more = " " * (len(head) if indent is None else indent)
    return textwrap.wrap(
        text, width=width, initial_indent=head, subsequent_indent=more, break_on_hyphens=False
    ) or [head.rstrip()]


def _numbers(s: dict[str, Any]) -> tuple[str, str, str]:
    n = s["counts"]
    upstream = "?" if s["upstream"] is None else f"{s['upstream']}"
    stored = (
        f"deals {n.deals}, recent histories {n.products_recent}, backfilled {n.products_full}, "
        f"checked {n.restrictions}"
    )
    balance = (
        f"Keepa balance {upstream} (last reply); debt {s['debt']:.0f}; waiting calls hold {s['promised']:.0f}; "
        f"next call can start in {format_duration(s['ttp'])} upstream time"
    )
    calls = f"Keepa calls {s['calls']}, SP-API checks {s.get('sp_calls', 0)}"
    return stored, balance, calls


def plain_lines(s: dict[str, Any], *, width: int = 80) -> list[str]:
    """The periodic lines printed when the output is not a terminal; none longer than ``width``."""
    stored, balance, calls = _numbers(s)
    head = f"[{s['wall']:5.1f} s wall, upstream +{format_duration(s['sim'])}] "
    return _wrap(head, stored, width, indent=4) + _wrap("    ", f"{balance}; {calls}", width)


def display_lines(s: dict[str, Any], *, width: int = 80) -> list[str]:
    """The live display's lines, wrapped to ``width`` columns (80 by default) so nothing is cut off."""
    stored, balance, calls = _numbers(s)
    bar_width = 20
    fill = max(0.0, min(1.0, s["tokens"] / s["capacity"])) if s["capacity"] else 0.0
    bar = "█" * round(fill * bar_width) + "·" * (bar_width - round(fill * bar_width))
    plan = s["plan"]
    lines = _wrap("", f"deals-app   wall {s['wall']:.1f} s   upstream time +{format_duration(s['sim'])}", width)
    lines += _wrap("  stored   ", stored, width)
    lines += _wrap("  bucket   ", f"[{bar}] {s['tokens']:.0f} / {s['capacity']:.0f} after waiting calls", width)
    lines += _wrap("  balance  ", balance, width)
    lines += _wrap("  calls    ", calls, width)
    lines += _wrap("  plan     ", describe_plan(plan) if plan else "(none yet)", width)
    for job in ("update", "backfill", "restrictions"):
        if job in s["activity"]:
            lines += _wrap(f"  {job:<12} ", s["activity"][job], width)
    return lines


def summary_lines(
    collector: Collector, *, wall: float, upstream_seconds: float, sim_stats: dict[str, Any] | None
) -> list[str]:
    """The closing summary: what was collected, what it cost, how low the balance went."""
    c = collector
    n = c.store.counts()
    q = c.quota
    policy = q.policy
    lines = [
        f"Summary: {wall:.1f} s wall, {format_duration(upstream_seconds)} of upstream time",
        f"  deals stored          {n.deals}",
        f"  recent histories      {n.products_recent} products ({c.stats.recent_batches} batches)",
        f"  full histories        {n.products_full} products ({c.stats.full_batches} batches, checkpoint "
        f"{c.store.checkpoint('backfill')[0]})",
        f"  price points          {n.price_points}",
        f"  restriction checks    {n.restrictions} ({n.restricted} restricted)"
        if c.restrictions is not None or n.restrictions
        else "  restriction checks    skipped: no SP-API endpoint (--sp-base-url)",
        f"  Keepa calls           {c.keepa_calls} by the collector",
        f"  SP-API calls          {c.stats.restriction_checks + c.stats.sp_retries} restriction checks "
        f"(retries included)",
    ]
    learned = []
    for op in ("product", "product_history", "deal"):
        try:
            learned.append(f"{op} {q.costs.per_unit(op):.1f}")
        except Exception:
            continue
    lines += _wrap(f"  {'learned cost per unit':<22}", f"{', '.join(learned)} (prior 20 an ASIN, 5 a deal page)", 80)
    if sim_stats is not None:
        keepa_requests = sim_stats["requests"] - sim_stats["sp_requests"]
        keepa_429_text = (
            "No call found Keepa at zero or below (0 429s)."
            if sim_stats["keepa_429"] == 0
            else f"{sim_stats['keepa_429']} calls found Keepa at zero or below (429)."
        )
        requests = (
            f"{keepa_requests} Keepa (charged {sim_stats['tokens_charged']} tokens), "
            f"{sim_stats['sp_requests']} SP-API (free, own 5/s limit)"
        )
        lowest = (
            f"{sim_stats['min_balance']:.0f} tokens, Keepa's own count just after it charged a call. A call "
            f"starts only with {policy.min_start:.0f} tokens in the bucket, sized to leave at most "
            f"{policy.max_debt:.0f} of debt at its estimated cost; Keepa charges the real cost after the call "
            f"and refills once a minute, so its count can dip below that. {keepa_429_text}"
        )
        lines += _wrap("  upstream requests     ", requests, 80)
        lines.append(f"  upstream 429s         {sim_stats['keepa_429']} Keepa, {sim_stats['sp_429']} SP-API")
        lines += _wrap("  lowest Keepa balance  ", lowest, 80)
    snap = q.bucket.snapshot()
    now = (
        f"{snap.tokens:.0f} tokens ({snap.promised:.0f} held by waiting calls), debt {snap.debt:.0f}, "
        f"positive in {format_duration(snap.time_to_positive)}"
    )
    lines += _wrap("  bucket now            ", now, 80)
    for job, count in sorted(c.stats.failures.items()):
        times = "once" if count == 1 else f"{count} times"
        lines += _wrap("  failed job            ", f"{job}, {times}; last: {c.stats.last_error[job]}", 80)
    lines.append(f"  database              {c.store.path}")
    return lines
