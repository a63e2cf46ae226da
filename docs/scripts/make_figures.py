"""Draw the documentation's figures from the real bucket, in virtual time.

Run from the repository root (needs the ``plot`` extra, matplotlib)::

    .venv/bin/python docs/scripts/make_figures.py

Every number plotted comes from `tokenbucket.TokenBucket` driven by a
`tokenbucket.testing.ManualClock`: nothing here re-implements the arithmetic.
The SVGs are written to ``docs/img/`` and committed; the output is
deterministic, so running the script again changes nothing unless the model
changed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tokenbucket import MemoryBackend, TokenBucket
from tokenbucket.testing import ManualClock

OUT = Path(__file__).resolve().parent.parent / "img"
KEEPA = {"rate": "5/minute", "capacity": 300}

plt.rcParams.update(
    {
        "svg.hashsalt": "tokenbucket-docs",  # stable ids: re-running changes nothing
        "svg.fonttype": "none",  # text stays text (smaller, selectable)
        "font.family": "sans-serif",
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
)


PREVIEW: Path | None = None  # --preview DIR: also write PNGs there, to look at


def _save(fig: plt.Figure, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    if PREVIEW is not None:
        fig.savefig(PREVIEW / path.with_suffix(".png").name, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def upstream_balance(bucket: TokenBucket) -> float:
    """The balance as the upstream sees it now: ``tokens + promised``."""
    snap = bucket.snapshot()
    return snap.tokens + snap.promised


def back_to_back(
    bucket: TokenBucket,
    clock: ManualClock,
    cost: float,
    horizon: float,
    step: float = 30.0,
    actual: Callable[[int], float] | None = None,
) -> tuple[list[float], list[float], list[float]]:
    """One caller making calls of ``cost`` one after another until ``horizon``.

    Returns the sampled times, the upstream balance at those times, and the
    start time of every call. ``actual(i)`` is what call ``i`` really cost
    (settled right after it starts); default: the estimate.
    """
    times: list[float] = []
    balance: list[float] = []
    starts: list[float] = []
    i = 0
    while clock.now() < horizon:
        res = bucket.reserve(cost)
        while clock.now() < min(res.start, horizon):
            times.append(clock.now())
            balance.append(upstream_balance(bucket))  # tokens + promised: the waiting call has not spent yet
            clock.advance(min(step, res.start - clock.now()))
        if res.start > horizon:
            res.cancel()
            break
        times.append(clock.now())
        balance.append(upstream_balance(bucket))
        grant = res.wait()
        starts.append(clock.now())
        if actual is not None:
            grant.settle(actual(i))
        times.append(clock.now())
        balance.append(upstream_balance(bucket))
        i += 1
    return times, balance, starts


def strict_vs_overdraft() -> Path:
    """Calls of 100 tokens back to back for four hours, strict and with Keepa's overdraft."""
    horizon = 4 * 3600.0
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for label, overdraft, colour in (
        ("strict (overdraft=0)", 0.0, "tab:blue"),
        ("Keepa rule (overdraft=math.inf)", math.inf, "tab:orange"),
    ):
        clock = ManualClock()
        bucket = TokenBucket("fig", **KEEPA, overdraft=overdraft, clock=clock, backend=MemoryBackend())
        t, b, starts = back_to_back(bucket, clock, 100, horizon)
        ax.plot([x / 3600 for x in t], b, color=colour, label=f"{label}: {len(starts)} calls")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("hours")
    ax.set_ylabel("balance (tokens)")
    ax.set_title("One caller, calls of 100 tokens back to back (5 tokens/minute, capacity 300)")
    ax.legend(loc="upper right", frameon=False)
    return _save(fig, "strict-vs-overdraft.svg")


def two_bandwidths() -> Path:
    """One caller as fast as allowed by a burst limit (2/second, 10 at most) and a sustained one (30/minute)."""
    clock = ManualClock()
    bucket = TokenBucket(
        "fig", rate="2/second; 30/minute", capacity=(10, 30), clock=clock, backend=MemoryBackend()
    )
    horizon, step = 150.0, 0.25
    times: list[float] = []
    levels: list[list[float]] = [[], []]
    starts: list[float] = []
    res = bucket.reserve(1)
    while clock.now() <= horizon:
        while res.start <= clock.now():
            res.wait()
            starts.append(clock.now())
            res = bucket.reserve(1)
        times.append(clock.now())
        for level, band in zip(levels, bucket.snapshot().bandwidths, strict=True):
            # The upstream's view: the waiting call has not spent yet; while it waits for the other
            # bandwidth, this one's upstream sits at its capacity (promised includes what it loses there).
            level.append(min(band.capacity, band.tokens + band.promised))
        clock.advance(step)
    fig, (ax, calls) = plt.subplots(2, 1, figsize=(8, 4.8), sharex=True, height_ratios=(3, 2))
    ax.plot(times, levels[0], color="tab:blue", label="burst bandwidth: 2/second, capacity 10")
    ax.plot(times, levels[1], color="tab:orange", label="sustained bandwidth: 30/minute, capacity 30")
    ax.set_ylabel("balance (tokens)")
    ax.set_title("One caller as fast as allowed: the burst limit binds first, then the sustained one")
    ax.legend(loc="upper right", frameon=False)
    calls.step(starts, range(1, len(starts) + 1), where="post", color="black", label=f"calls made: {len(starts)}")
    calls.plot([0, horizon], [10, 10 + 2 * horizon], color="tab:blue", linestyle=":", label="burst limit alone")
    calls.plot([0, horizon], [30, 30 + horizon / 2], color="tab:orange", linestyle=":", label="sustained limit alone")
    calls.set_ylim(0, 30 + horizon / 2 + 10)
    calls.set_xlabel("seconds")
    calls.set_ylabel("calls")
    calls.legend(loc="upper left", frameon=False)
    return _save(fig, "two-bandwidths.svg")


def fairness() -> Path:
    """Small callers that use up the whole refill, and one backfill job of 20 tokens.

    "check and retry": every caller polls ``try_acquire`` each 10 s, so whoever fits
    first goes first (in practice: the smallest). "first come, first served":
    every caller uses ``reserve``/``acquire`` when it arrives.
    """
    horizon = 3 * 3600.0
    small_cost, big_cost, big_at = 5.0, 20.0, 600.0
    arrivals = [60.0 * k for k in range(int(horizon // 60))]

    def polling() -> tuple[list[tuple[float, float]], float | None]:
        clock = ManualClock()
        bucket = TokenBucket("fair", **KEEPA, initial=0, clock=clock, backend=MemoryBackend())
        waiting: list[float] = []  # arrival times of small callers not yet served
        small_waits: list[tuple[float, float]] = []
        big_done: float | None = None
        t = 0.0
        while t < horizon:
            clock.set(t)
            if t in arrivals:
                waiting.append(t)
            # each waiting caller retries; the small ones fit first
            for arrived in list(waiting):
                if bucket.try_acquire(small_cost):
                    waiting.remove(arrived)
                    small_waits.append((arrived, t - arrived))
            if big_done is None and t >= big_at and bucket.try_acquire(big_cost):
                big_done = t - big_at
            t += 10.0
        return small_waits, big_done

    def fifo() -> tuple[list[tuple[float, float]], float | None]:
        clock = ManualClock()
        bucket = TokenBucket("fair", **KEEPA, initial=0, clock=clock, backend=MemoryBackend())
        small_waits: list[tuple[float, float]] = []
        big_done: float | None = None
        events = sorted([(a, small_cost) for a in arrivals] + [(big_at, big_cost)])
        for at, cost in events:
            clock.set(at)
            res = bucket.reserve(cost)  # what acquire() does first; it then sleeps res.delay
            if cost == big_cost:
                big_done = res.delay
            else:
                small_waits.append((at, res.delay))
        return small_waits, big_done

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True, layout="constrained")
    for ax, (title, run) in zip(
        axes,
        (("check and retry (whoever fits first)", polling), ("first come, first served (tokenbucket)", fifo)),
        strict=True,
    ):
        small, big = run()
        ax.plot(
            [a / 60 for a, _ in small],
            [w / 60 for _, w in small],
            ".",
            color="tab:blue",
            markersize=3,
            label="small calls (5 tokens, one a minute)",
        )
        if big is None:
            ax.plot(
                [big_at / 60, horizon / 60],
                [0, (horizon - big_at) / 60],
                color="tab:red",
                label="backfill (20 tokens): still waiting",
            )
            ax.annotate(
                "never starts",
                xy=(horizon / 60, (horizon - big_at) / 60),
                xytext=(-75, -25),
                textcoords="offset points",
                color="tab:red",
                ha="right",
            )
        else:
            ax.plot(
                [big_at / 60],
                [big / 60],
                "o",
                color="tab:red",
                label=f"backfill (20 tokens): waited {big / 60:.0f} min",
            )
        ax.set_title(title)
        ax.set_xlabel("arrival (minutes)")
        ax.legend(loc="upper left", frameon=False, fontsize=8)
    axes[0].set_ylabel("wait (minutes)")
    fig.suptitle(
        "The refill (5 tokens/minute) is all taken by small calls; a 20-token job arrives at minute 10", fontsize=10
    )
    return _save(fig, "fairness.svg")


# The case study: the incident's three jobs, as run by ``tokenbucket simulate``.
BUCKET_ARGS = ["--rate", "5/minute", "--capacity", "300", "--overdraft", "inf", "--duration", "12h"]
INCIDENT_JOBS = [
    "products:cost=20,batch=50,every=2h",
    "deals:cost=5,every=10m,gate=20",
    "backfill:cost=20,batch=5,every=1h,ghost_lock=3h",
]
FIXED_JOBS = [
    "products:cost=20,batch=planner,every=2h",
    "deals:cost=5,every=10m",
    "backfill:cost=20,batch=5,every=1h,ghost_lock=3h,lock_ttl=90s",
]


def simulate(jobs: list[str]) -> dict[str, object]:
    """Run ``tokenbucket simulate ... --json --series`` and return its result.

    The command exits with 1 when a job starved (the incident's run does), 0 otherwise.
    """
    exe = shutil.which("tokenbucket", path=str(Path(sys.executable).parent)) or shutil.which("tokenbucket")
    command = [exe, "simulate"] if exe else [sys.executable, "-W", "ignore", "-m", "tokenbucket._simulate"]
    for job in jobs:
        command += ["--job", job]
    proc = subprocess.run(
        [*command, *BUCKET_ARGS, "--json", "--series"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr}")
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def case_study() -> list[Path]:
    """Balance and progress over 12 hours: the incident's configuration and the fixed one."""
    runs = (
        ("the incident: batch of 50, gate, ghost lock", INCIDENT_JOBS, "tab:red"),
        ("fixed: planned batches, waiting, lease with TTL", FIXED_JOBS, "tab:green"),
    )
    results = [(label, simulate(jobs), colour) for label, jobs, colour in runs]

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for label, result, colour in results:
        series = result["balance"]
        assert isinstance(series, list)
        ax.step([t / 3600 for t, _ in series], [b for _, b in series], where="post", color=colour, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("hours")
    ax.set_ylabel("upstream balance (tokens)")
    ax.set_title("Keepa-like quota (5 tokens/minute, bucket 300), three jobs, tokenbucket simulate", pad=28)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=9)
    balance = _save(fig, "case-balance.svg")

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), layout="constrained")
    names = ("products", "deals", "backfill")
    for ax, name in zip(axes, names, strict=True):
        for label, result, colour in results:
            jobs = result["jobs"]
            assert isinstance(jobs, list)
            job = next(j for j in jobs if j["name"] == name)
            points = [(0.0, 0)] + [(t, n) for t, n in job["progress"]] + [(12 * 3600.0, job["units"])]
            ax.step(
                [t / 3600 for t, _ in points],
                [n for _, n in points],
                where="post",
                color=colour,
                label=label.split(":")[0],
            )
        ax.set_title(f"{name}: items done")
        ax.set_xlabel("hours")
    axes[0].legend(loc="upper left", frameon=False, fontsize=8)
    progress = _save(fig, "case-progress.svg")
    return [balance, progress]


def lanes() -> Path:
    """The deal collector's two Keepa jobs for 12 hours, first come first served and with priority lanes."""
    from tokenbucket import simulate as run

    shape = {"capacity": 1200, "overdraft": 300, "min_start": 96, "duration": "12h", "seed": 1}
    runs = (
        ("first come, first served", "", {}, "tab:red"),
        ("lanes: update urgent, backfill bulk (holds back 800)", "lane", {"urgent": 0, "bulk": 800}, "tab:green"),
    )
    fig, (ax, waits) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained", width_ratios=(3, 1))
    bars = []
    for label, lane, lanes_, colour in runs:
        jobs = ["backfill:cost=20,batch=planner,continuous", "update:cost=20,batch=5,every=10m"]
        if lane:
            jobs = [jobs[0] + ",lane=bulk", jobs[1] + ",lane=urgent"]
        result = run("20/minute", jobs, lanes=lanes_ or None, **shape)  # type: ignore[arg-type]
        by = {job.name: job for job in result.jobs}
        for name, style in (("update", "-"), ("backfill", ":")):
            job = by[name]
            xs = [0.0] + [t / 3600 for t, _ in job.progress] + [12.0]
            ys = [0] + [u for _, u in job.progress]
            ys.append(ys[-1])
            ax.step(xs, ys, where="post", color=colour, linestyle=style, label=f"{name}, {label}")
        bars.append((label.split(":")[0], by["update"].longest_wait / 60, colour))
    ax.set_xlabel("hours")
    ax.set_ylabel("items fetched")
    ax.set_title("20 tokens/minute, bucket 1200, overdraft 300: tokenbucket simulate", fontsize=10)
    ax.legend(loc="upper left", frameon=False, fontsize=7)
    waits.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    waits.set_ylabel("minutes")
    waits.set_title("the update's longest wait", fontsize=10)
    waits.tick_params(axis="x", labelsize=8)
    return _save(fig, "lanes.svg")


def concurrency() -> Path:
    """Six workers asking a slot a second apart, three calls of 10 s each, under a limit of 2.

    Driven through the real store of `ConcurrencyLimit` (`MemoryBackend`'s slots, in virtual time): a
    worker asks, waits in line if it must, and asks again when a release serves it.
    """
    import heapq

    from tokenbucket.backends import LeaseOwner

    clock = ManualClock(0.0, autojump=False)
    store = MemoryBackend(clock)
    owner = LeaseOwner("host", 1, "figure")
    events: list[tuple[float, int, str, int]] = [(i * 1.0, i, "ask", i) for i in range(6)]  # (time, order, kind, who)
    heapq.heapify(events)
    order = 6
    calls_left = dict.fromkeys(range(6), 3)
    waiting: list[int] = []
    spans: list[tuple[int, float, float]] = []
    while events:
        t, _, kind, who = heapq.heappop(events)
        clock.set(max(clock.now(), t))
        asking = [who] if kind == "ask" else []
        if kind == "done":
            store.slot_release("fig", f"w{who}")
            calls_left[who] -= 1
            if calls_left[who]:
                heapq.heappush(events, (clock.now() + 0.5, order, "ask", who))
                order += 1
            asking = list(waiting)  # a release may serve the front of the line
        for w in asking:
            if store.slot_acquire("fig", f"w{w}", 2, 60.0, owner, 60.0)[0]:
                if w in waiting:
                    waiting.remove(w)
                spans.append((w, clock.now(), clock.now() + 10.0))
                heapq.heappush(events, (clock.now() + 10.0, order, "done", w))
                order += 1
            elif w not in waiting:
                waiting.append(w)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    colours = plt.get_cmap("tab10")
    for w, began, ended in spans:
        ax.barh(w, ended - began, left=began, color=colours(w), edgecolor="white")
    ax.set_yticks(range(6), [f"worker {w}" for w in range(6)])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("ConcurrencyLimit(limit=2): two at a time, served in the order they asked", fontsize=10)
    return _save(fig, "concurrency.svg")


FIGURES: dict[str, Callable[[], Path | list[Path]]] = {
    "case-study": case_study,
    "strict-vs-overdraft": strict_vs_overdraft,
    "fairness": fairness,
    "two-bandwidths": two_bandwidths,
    "lanes": lanes,
    "concurrency": concurrency,
}


def main(argv: list[str]) -> int:
    """``make_figures.py [--out DIR] [--preview DIR] [NAME ...]``: write the SVGs (to ``docs/img`` by default)."""
    global OUT, PREVIEW
    while argv[:1] in (["--out"], ["--preview"]):
        where = Path(argv[1])
        if argv[0] == "--out":
            OUT = where
        else:
            PREVIEW = where
            PREVIEW.mkdir(parents=True, exist_ok=True)
        argv = argv[2:]
    names = argv or list(FIGURES)
    for name in names:
        print(FIGURES[name]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
