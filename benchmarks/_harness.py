"""Timing, statistics and report pieces shared by the benchmark sections.

Every throughput figure is taken the same way: each library's operation is
timed in chunks of about `Sizes.chunk` seconds, the libraries take turns chunk
by chunk (the order rotates every round), and the reported figure is the
median over `Sizes.rounds` rounds. On a shared, noisy machine this keeps a
slow moment from landing on one library only.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.metadata
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "PeerMissing",
    "Sizes",
    "Target",
    "SectionReport",
    "amedian_rates",
    "fmt_ms",
    "fmt_rate",
    "fmt_ratio",
    "median_rates",
    "overspend",
    "peer",
    "peer_version",
    "percentile",
    "table",
    "target_rows",
]


@dataclass(frozen=True)
class Sizes:
    """How big a run is. `Sizes.full` for the report, `Sizes.quick` for the smoke test."""

    quick: bool
    rounds: int
    chunk: float
    fair_rounds: int
    fair_warmup: float
    fair_limit: float
    fair_rate: float
    acc_waiters: int
    acc_rounds: int
    acc_rate: float
    acc_seconds: float
    scale_procs: tuple[int, ...]
    scale_seconds: float
    scale_rate: float
    scale_rounds: int
    footprint_keys: int
    conc_callers: int
    conc_warmup: float
    conc_window: float
    ledger_rate: float
    ledger_capacity: float
    ledger_seconds: float

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            quick=False,
            rounds=7,
            chunk=0.25,
            fair_rounds=3,
            fair_warmup=1.0,
            fair_limit=10.0,
            fair_rate=10.0,
            acc_waiters=100,
            acc_rounds=3,
            acc_rate=1000.0,
            acc_seconds=2.0,
            scale_procs=(1, 2, 4, 8),
            scale_seconds=2.0,
            scale_rate=2000.0,
            scale_rounds=3,
            footprint_keys=1_000_000,
            conc_callers=64,
            conc_warmup=0.2,
            conc_window=0.5,
            ledger_rate=10000.0,
            ledger_capacity=20.0,
            ledger_seconds=2.0,
        )

    @classmethod
    def quick_sizes(cls) -> Sizes:
        return cls(
            quick=True,
            rounds=2,
            chunk=0.01,
            fair_rounds=1,
            fair_warmup=0.05,
            fair_limit=0.3,
            fair_rate=100.0,
            acc_waiters=10,
            acc_rounds=1,
            acc_rate=200.0,
            acc_seconds=0.2,
            scale_procs=(2,),
            scale_seconds=0.2,
            scale_rate=500.0,
            scale_rounds=1,
            footprint_keys=10_000,
            conc_callers=16,
            conc_warmup=0.02,
            conc_window=0.03,
            ledger_rate=500.0,
            ledger_capacity=20.0,
            ledger_seconds=0.2,
        )


@dataclass
class Target:
    """A goal for one of our figures and whether this run met it.

    ``figure`` is None when it could not be measured (a peer or Redis was
    missing); then ``met`` is None too.
    """

    what: str
    goal: str
    figure: float | None
    shown: str
    met: bool | None

    @classmethod
    def at_least(cls, what: str, figure: float | None, goal: float, shown: str) -> Target:
        met = None if figure is None else figure >= goal
        return cls(what, f"≥ {goal:g}", figure, shown, met)

    @classmethod
    def at_most(cls, what: str, figure: float | None, goal: float, shown: str, unit: str = "") -> Target:
        met = None if figure is None else figure <= goal
        return cls(what, f"≤ {goal:g}{unit}", figure, shown, met)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


@dataclass
class SectionReport:
    """One section of the report: Markdown lines, our own figures, and targets.

    ``figures`` holds our numbers by name (the smoke test checks that they are
    sane); ``notes`` explain the method and anything that was unavailable.
    """

    key: str
    title: str
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"## {self.title}", ""]
        for note in self.notes:
            out.extend([note, ""])
        out.extend(self.lines)
        if self.targets:
            out.extend(["", *table(["target", "goal", "this run", "verdict"], target_rows(self.targets))])
        return "\n".join(out).rstrip() + "\n"


def target_rows(targets: Sequence[Target]) -> list[list[str]]:
    return [[t.what, t.goal, t.shown, t.verdict] for t in targets]


class PeerMissing(Exception):
    """A peer library is not installed in this environment."""


def peer(module: str) -> object:
    """Import a peer's module or raise `PeerMissing` (reported as "peer not installed")."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerMissing(module) from exc


def peer_version(dist: str) -> str:
    """A distribution's version, or "not installed"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _time_calls(op: Callable[[], object], n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        op()
    return time.perf_counter() - start


def _calibrate(op: Callable[[], object], chunk: float) -> int:
    """Calls of ``op`` that take about ``chunk`` seconds (at least 50)."""
    n = 50
    while True:
        elapsed = _time_calls(op, n)
        if elapsed >= chunk / 4 or n >= 10_000_000:
            return max(50, int(n * chunk / max(elapsed, 1e-9)))
        n *= 4


def median_rates(ops: dict[str, Callable[[], object]], sizes: Sizes) -> dict[str, float]:
    """Calls per second of each operation: median of interleaved rounds."""
    counts = {name: _calibrate(op, sizes.chunk) for name, op in ops.items()}
    samples: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for r in range(sizes.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(counts[name] / _time_calls(ops[name], counts[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


async def _atime_calls(op: Callable[[], Awaitable[object]], n: int) -> float:
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        await op()
    return time.perf_counter() - start


async def amedian_rates(ops: dict[str, Callable[[], Awaitable[object]]], sizes: Sizes) -> dict[str, float]:
    """The asyncio twin of `median_rates`: awaits per second, in one event loop."""
    counts: dict[str, int] = {}
    for name, op in ops.items():
        n = 50
        while True:
            elapsed = await _atime_calls(op, n)
            if elapsed >= sizes.chunk / 4 or n >= 10_000_000:
                counts[name] = max(50, int(n * sizes.chunk / max(elapsed, 1e-9)))
                break
            n *= 4
    samples: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for r in range(sizes.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(counts[name] / await _atime_calls(ops[name], counts[name]))
    await asyncio.sleep(0)
    return {name: statistics.median(s) for name, s in samples.items()}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def overspend(starts: Sequence[float], t0: float, rate: float, initial: float) -> int:
    """Tokens started beyond the allowance, for requests of one token each.

    The allowance at time ``t`` is ``initial + rate × (t - t0)``: the most a
    bucket created at ``t0`` can have handed out by then. Returns the largest
    number of starts, at any moment, beyond it (0 when the bucket kept its word).
    """
    worst = 0
    for k, t in enumerate(sorted(starts), start=1):
        allowed = math.floor(initial + rate * max(0.0, t - t0) + 1e-9)
        worst = max(worst, k - allowed)
    return worst


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table as lines."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out.extend("| " + " | ".join(row) + " |" for row in rows)
    return out


def fmt_rate(value: float) -> str:
    """Operations per second, rounded for reading: ``812k/s``."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M/s"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k/s" if value >= 1e5 else f"{value / 1e3:.1f}k/s"
    return f"{value:.0f}/s"


def fmt_ratio(value: float) -> str:
    """A ratio such as ``1.42×``."""
    return f"{value:.2f}×"


def fmt_ms(seconds: float) -> str:
    """Seconds shown as milliseconds."""
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.2f} ms"
