"""The benchmark sections. Each ``bench_*`` function takes `Sizes` and returns a `SectionReport`.

A peer that is not installed is reported as "peer not installed" (the smoke
test runs these functions in the project's own venv, where most peers are
absent); a missing Redis is reported as "not available". Neither raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import multiprocessing
import os
import queue
import statistics
import threading
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from tokenbucket import AcquireTimeout, AsyncTokenBucket, BucketGroup, MemoryBackend, Rate, TokenBucket
from tokenbucket.backends import Policy

from ._harness import (
    PeerMissing,
    SectionReport,
    Sizes,
    Target,
    amedian_rates,
    fmt_ms,
    fmt_rate,
    fmt_ratio,
    median_rates,
    overspend,
    peer,
    percentile,
    table,
)
from ._redis import RedisUnavailable, count_commands, private_redis, redis_backend_classes

__all__ = [
    "SECTIONS",
    "bench_accuracy",
    "bench_asyncio",
    "bench_concurrent",
    "bench_fairness",
    "bench_footprint",
    "bench_memory",
    "bench_redis",
    "bench_scale",
]

HUGE = 1e9
"""A rate (tokens per second) and capacity so large that every acquire succeeds."""

OURS = "tokenbucket"
NOT_INSTALLED = "peer not installed"


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Op:
    """One library's operation: ``call`` is timed, ``ok`` checks a result once before timing."""

    algorithm: str
    call: Callable[[], Any]
    ok: Callable[[Any], bool]
    close: Callable[[], Any] | None = None
    """Closes the client the peer made for itself, if it made one."""


def _truthy(result: Any) -> bool:
    return bool(result)


def _not_limited(result: Any) -> bool:
    return not result.limited


def _failed(exc: BaseException) -> str:
    """A one-line account of a failure, for a table cell."""
    text = " ".join(str(exc).split())
    return f"failed: {type(exc).__name__}: {text[:160]}"


def _verify(label: str, op: _Op) -> None:
    for _ in range(10):
        if not op.ok(op.call()):
            raise RuntimeError(f"{label}: an acquire was refused; the benchmark's rate is meant to admit every call")


# ---------------------------------------------------------------------------
# 1. In memory, one thread


def _mem_token_bucket() -> _Op:
    tb: Any = peer("token_bucket")
    limiter = tb.Limiter(HUGE, int(HUGE), tb.MemoryStorage())
    return _Op("token bucket", partial(limiter.consume, "k", 1), _truthy)


def _mem_limits() -> _Op:
    limits: Any = peer("limits")
    limiter = limits.strategies.FixedWindowRateLimiter(limits.storage.MemoryStorage())
    return _Op("fixed window", partial(limiter.hit, limits.RateLimitItemPerSecond(int(HUGE)), "k"), _truthy)


def _mem_pyrate() -> _Op:
    pr: Any = peer("pyrate_limiter")
    bucket = pr.StateBucket([pr.Rate(int(HUGE), pr.Duration.SECOND)], algorithm=pr.TokenBucket())
    limiter = pr.Limiter(bucket)
    return _Op("token bucket (StateBucket)", partial(limiter.try_acquire, "k", 1, False), _truthy)


def _mem_throttled() -> _Op:
    th: Any = peer("throttled")
    quota = th.per_sec(int(HUGE), burst=int(HUGE))
    limiter = th.Throttled(key="k", using="token_bucket", quota=quota, store=th.MemoryStore())
    return _Op("token bucket (MemoryStore)", partial(limiter.limit, "k", 1), _not_limited)


_MEMORY_PEERS: dict[str, tuple[Callable[[], _Op], float]] = {
    "token-bucket": (_mem_token_bucket, 1.0),
    "limits": (_mem_limits, 4.0),
    "pyrate-limiter": (_mem_pyrate, 5.0),
    "throttled-py": (_mem_throttled, 5.0),
}
"""Peer name → (adapter, target: ours must be at least this many times faster)."""


def bench_memory(sizes: Sizes) -> SectionReport:
    """1. ``try_acquire(1)`` calls per second in memory, one thread, vs the peers."""
    rep = SectionReport("memory", "1. In memory, one thread: `try_acquire(1)`")
    rep.notes.append(
        f"Ours: `TokenBucket(..., rate=Rate({HUGE:g}), backend=MemoryBackend()).try_acquire(1)` (always admitted). "
        "Peers with the same huge rate: token-bucket `Limiter.consume`, limits `FixedWindowRateLimiter.hit` on "
        "`MemoryStorage`, pyrate-limiter `Limiter.try_acquire(blocking=False)` on a token-bucket `StateBucket`, "
        "throttled-py `Throttled.limit` (token bucket, `MemoryStore`). "
        f"Median of {sizes.rounds} interleaved rounds of ~{sizes.chunk:g} s each."
    )
    rep.notes.append(
        "Ours holds a lock for each call, so threads never overspend; token-bucket's `MemoryStorage` takes no "
        'lock (its docstring: race conditions are "mitigated but not completely eliminated").'
    )
    bucket = TokenBucket(_unique("mem"), rate=Rate(HUGE), backend=MemoryBackend())
    ops: dict[str, _Op] = {OURS: _Op("token bucket, FCFS", partial(bucket.try_acquire, 1), _truthy)}
    missing: list[str] = []
    for name, (make, _goal) in _MEMORY_PEERS.items():
        try:
            ops[name] = make()
        except PeerMissing:
            missing.append(name)
    for name, op in ops.items():
        _verify(name, op)
    rates = median_rates({name: op.call for name, op in ops.items()}, sizes)
    ours = rates[OURS]
    rep.figures["ours_ops_per_s"] = ours
    rows = [[OURS, ops[OURS].algorithm, fmt_rate(ours), "1.00×"]]
    for name, (_make, goal) in _MEMORY_PEERS.items():
        if name in missing:
            rows.append([name, "", NOT_INSTALLED, "n/a"])
            rep.targets.append(Target.at_least(f"memory: ours vs {name}", None, goal, NOT_INSTALLED))
            continue
        ratio = ours / rates[name]
        rows.append([name, ops[name].algorithm, fmt_rate(rates[name]), fmt_ratio(ratio)])
        rep.targets.append(Target.at_least(f"memory: ours ÷ {name} ops/s", ratio, goal, fmt_ratio(ratio)))
    rep.lines.extend(table(["library", "algorithm", "calls/s", "ours ÷ this"], rows))
    return rep


# ---------------------------------------------------------------------------
# 2. asyncio, one task


def bench_asyncio(sizes: Sizes) -> SectionReport:
    """2. ``await acquire(1)`` per second in one task, no waiting, vs aiolimiter."""
    rep = SectionReport("asyncio", "2. asyncio, one task, no waiting: `await acquire(1)`")
    rep.notes.append(
        f"Ours: `await AsyncTokenBucket(..., rate=Rate({HUGE:g}), backend=MemoryBackend()).acquire(1)`; "
        f"aiolimiter: `await AsyncLimiter({HUGE:g}, 1).acquire(1)`. Median of {sizes.rounds} interleaved rounds."
    )

    async def run() -> tuple[dict[str, float], bool]:
        bucket = AsyncTokenBucket(_unique("aio"), rate=Rate(HUGE), backend=MemoryBackend())
        ops: dict[str, Callable[[], Awaitable[object]]] = {OURS: partial(bucket.acquire, 1)}
        have_peer = True
        try:
            aiolimiter: Any = peer("aiolimiter")
            ops["aiolimiter"] = partial(aiolimiter.AsyncLimiter(HUGE, 1).acquire, 1)
        except PeerMissing:
            have_peer = False
        return await amedian_rates(ops, sizes), have_peer

    rates, have_peer = asyncio.run(run())
    ours = rates[OURS]
    rep.figures["ours_ops_per_s"] = ours
    rows = [[OURS, fmt_rate(ours), "1.00×"]]
    if have_peer:
        ratio = ours / rates["aiolimiter"]
        rows.append(["aiolimiter", fmt_rate(rates["aiolimiter"]), fmt_ratio(ratio)])
        rep.targets.append(Target.at_least("asyncio: ours ÷ aiolimiter awaits/s", ratio, 1.0, fmt_ratio(ratio)))
    else:
        rows.append(["aiolimiter", NOT_INSTALLED, "n/a"])
        rep.targets.append(Target.at_least("asyncio: ours vs aiolimiter", None, 1.0, NOT_INSTALLED))
    rep.lines.extend(table(["library", "awaits/s", "ours ÷ this"], rows))
    return rep


# ---------------------------------------------------------------------------
# 3. Redis, one client


def _redis_peers(url: str, *, blocking: bool = False) -> dict[str, Callable[[], _Op]]:
    """limits, pyrate-limiter and throttled-py on Redis; ``blocking`` makes pyrate-limiter wait for its lock.

    pyrate-limiter's ``try_acquire(blocking=False)`` refuses at once, without asking Redis, when another
    thread holds its limiter's lock: under concurrent callers it must block to measure its store.
    """

    def limits_op() -> _Op:
        limits: Any = peer("limits")
        storage = limits.storage.RedisStorage(url)
        limiter = limits.strategies.FixedWindowRateLimiter(storage)
        hit = partial(limiter.hit, limits.RateLimitItemPerSecond(int(HUGE)), "k")
        return _Op("fixed window", hit, _truthy, storage.storage.close)

    def pyrate_op() -> _Op:
        pr: Any = peer("pyrate_limiter")
        import redis

        client = redis.Redis.from_url(url)
        store = pr.RedisStateStore(client, _unique("pyrate"))
        bucket = pr.StateBucket([pr.Rate(int(HUGE), pr.Duration.SECOND)], algorithm=pr.TokenBucket(), store=store)
        limiter = pr.Limiter(bucket)
        how = "token bucket (RedisStateStore)" + (", `blocking=True`" if blocking else "")
        return _Op(how, partial(limiter.try_acquire, "k", 1, blocking), _truthy, client.close)

    def throttled_op() -> _Op:
        th: Any = peer("throttled")
        quota = th.per_sec(int(HUGE), burst=int(HUGE))
        limiter = th.Throttled(key="k", using="token_bucket", quota=quota, store=th.RedisStore(server=url))
        return _Op("token bucket (RedisStore)", partial(limiter.limit, _unique("k"), 1), _not_limited)

    return {"limits": limits_op, "pyrate-limiter": pyrate_op, "throttled-py": throttled_op}


_FLOOR = "floor: TIME + GET + SET"

_FLOOR_LUA = """
local t = redis.call('TIME')
redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', 60000)
return '1 0 0'
"""
"""The commands any bucket script with the server's clock and a stored state must run, and nothing else."""

_REDIS_PEERS_GOAL = 1.0
_PING_GOAL = 0.85
_FLOOR_GOAL = 0.95
"""Ours must reach this share of the floor script's calls per second (same client, same parser)."""
_FLOOR_US_GOAL = 1.2
"""Ours' server time per acquire may be at most this many times the floor script's."""
_HIREDIS = f"{OURS} on hiredis"
_TWO_BANDS = f"{OURS}, 2 bandwidths"
_GROUP = f"{OURS}, group of 2 buckets"
_MULTI_GOAL = 1.3
"""A 2-bandwidth acquire may take at most this many times a 1-bandwidth one (it is one round trip too)."""


def bench_redis(sizes: Sizes) -> SectionReport:
    """3. Acquires per second on Redis with one client, PING as the limit, commands per acquire."""
    rep = SectionReport("redis", "3. Redis, one client")
    rep.notes.append(
        f"Ours: `TokenBucket(..., rate=Rate({HUGE:g}), backend=RedisBackend(client=redis.Redis(...))).acquire(1)` "
        "(the ratios are to this), and `try_acquire(1)` on the same bucket; "
        "`PING` is redis-py's `ping()` on the same client (and connection): the physical limit of one round trip. "
        "Round trips are counted on the client (a pipeline is one); server commands come from "
        "`INFO commandstats` deltas and include the commands a Lua script runs; server µs is the script's own "
        "time (its inner commands included) or the command's. "
        "A private `redis-server --save '' --appendonly no` on a free port; "
        f"median of {sizes.rounds} interleaved rounds. token-bucket and aiolimiter have no Redis store. "
        "Ours and PING use redis-py's pure-Python reply parser; the peers use redis-py's default (hiredis when "
        f"it is installed). '{_HIREDIS}' (present when hiredis is installed: `pip install "
        "'tokenbucket[redis-fast]'`) is the same acquire on the hiredis parser, and the one scored against the "
        "best peer, so both read replies with the same parser (without hiredis, ours and the peers all use the "
        "pure-Python one)."
    )
    rep.notes.append(
        f"'{_FLOOR}' is not a library: it is `EVALSHA` of a script that runs only the commands any bucket "
        "script with the server's clock and a stored state must run (read the clock, read the state, write it "
        "back with its TTL), with an 80-byte value and our acquire's keys and arguments, and no arithmetic. "
        "It bounds what such a design can reach against PING; ours is scored against it on the same client "
        f"(at least {_FLOOR_GOAL:.0%} of its calls/s, at most {_FLOOR_US_GOAL:g}× its server µs)."
    )
    try:
        with private_redis() as url:
            import redis
            from redis._parsers import _HiredisParser, _RESP2Parser  # the two reply parsers redis-py has
            from redis.utils import HIREDIS_AVAILABLE

            # Ours and PING on redis-py's pure-Python parser; with hiredis installed (tokenbucket[redis-fast])
            # one more row runs the same acquire on the hiredis parser, in the same run.
            client = redis.Redis.from_url(url, parser_class=_RESP2Parser)
            hiredis = bool(HIREDIS_AVAILABLE)
            fast_client = redis.Redis.from_url(url, parser_class=_HiredisParser) if hiredis else None
            ops: dict[str, _Op] = {}
            ours_note = ""
            try:
                backend_cls, _ = redis_backend_classes()
                bucket = TokenBucket(_unique("redis"), rate=Rate(HUGE), backend=backend_cls(client=client))
                ops[OURS] = _Op("token bucket, FCFS (Lua)", partial(bucket.acquire, 1), _truthy)
                ops[f"{OURS} try_acquire(1)"] = _Op("the same, never waits", partial(bucket.try_acquire, 1), _truthy)
                two = TokenBucket(
                    _unique("redis"), rate=[Rate(HUGE), Rate(HUGE, per=60)], backend=backend_cls(client=client)
                )
                ops[_TWO_BANDS] = _Op("burst + sustained, one step", partial(two.acquire, 1), _truthy)
                shared = backend_cls(client=client)
                tag = _unique("group")
                group = BucketGroup(
                    TokenBucket(f"{{{tag}}}:a", rate=Rate(HUGE), backend=shared),
                    TokenBucket(f"{{{tag}}}:b", rate=Rate(HUGE), backend=shared),
                )
                ops[_GROUP] = _Op("all or nothing, one step", partial(group.acquire, (1, 1)), _truthy)
                if fast_client is not None:
                    fast = TokenBucket(_unique("redis"), rate=Rate(HUGE), backend=backend_cls(client=fast_client))
                    ops[_HIREDIS] = _Op("the same, hiredis parser", partial(fast.acquire, 1), _truthy)
            except RedisUnavailable as exc:
                ours_note = f"not available ({exc})"
            for name in [name for name in ops if name.startswith(OURS)]:
                try:
                    _verify(name, ops[name])
                except Exception as exc:  # our backend broken: report it, still measure the peers
                    ours_note = _failed(exc)
                    del ops[name]
            ops["redis-py PING"] = _Op("one round trip", client.ping, _truthy)
            floor = client.register_script(_FLOOR_LUA)
            floor_keys = [f"{{{_unique('floor')}}}:{part}" for part in ("bucket", "queue", "costs")]
            floor_args = [b"", b"\0" * 80, b"1", b""]
            ops[_FLOOR] = _Op("a script with no logic", partial(floor, floor_keys, floor_args), _truthy)
            missing: list[str] = []
            peers: list[str] = []
            for name, make in _redis_peers(url).items():
                try:
                    ops[name] = make()
                    peers.append(name)
                except PeerMissing:
                    missing.append(name)
            for name, op in ops.items():
                _verify(name, op)
            rates = median_rates({name: op.call for name, op in ops.items()}, sizes)
            counts = {name: count_commands(url, op.call, 20 if sizes.quick else 2000) for name, op in ops.items()}
            client.close()
            for op in ops.values():
                if op.close is not None:
                    op.close()
            if fast_client is not None:
                fast_client.close()
    except RedisUnavailable as exc:
        rep.lines.append(f"Redis not available: {exc}.")
        return rep
    ours = rates.get(OURS)
    rows: list[list[str]] = []
    if ours is None:
        rows.append([OURS, "", ours_note, "", "", "", ""])
    for name, op in ops.items():
        trips, cmds, parts, usec = counts[name]
        ratio = "1.00×" if name == OURS else ("n/a" if ours is None else fmt_ratio(ours / rates[name]))
        rows.append(
            [name, op.algorithm, fmt_rate(rates[name]), ratio, f"{trips:g}", f"{cmds:g} ({parts})", f"{usec:.1f}"]
        )
    rows.extend([name, "", NOT_INSTALLED, "n/a", "", "", ""] for name in missing)
    headers = ["library", "algorithm", "calls/s", "ours ÷ this", "round trips / call", "server commands / call"]
    rep.lines.extend(table([*headers, "server µs / call"], rows))
    best = max(peers, key=lambda name: rates[name]) if peers else None
    if ours is None:
        rep.targets.append(Target.at_least("redis: ours ÷ PING calls/s", None, _PING_GOAL, ours_note))
        return rep
    of_ping = ours / rates["redis-py PING"]
    floor_of_ping = rates[_FLOOR] / rates["redis-py PING"]
    rep.figures["ours_ops_per_s"] = ours
    rep.figures["ours_round_trips"] = counts[OURS][0]
    rep.figures["ours_of_ping"] = of_ping
    rep.lines.extend(
        ["", f"Ours reaches {of_ping:.0%} of the PING rate; the floor script reaches {floor_of_ping:.0%}."]
    )
    if _TWO_BANDS in rates:
        cost = ours / rates[_TWO_BANDS]  # time per 2-bandwidth acquire ÷ time per 1-bandwidth acquire
        rep.figures["two_bands_cost"] = cost
        rep.lines.append(
            f"A 2-bandwidth acquire takes {cost:.2f}× a 1-bandwidth one ({counts[_TWO_BANDS][0]:g} round trip); "
            f"a group of 2 buckets {ours / rates[_GROUP]:.2f}×."
        )
        trips = counts[_TWO_BANDS][0]
        goal = _MULTI_GOAL
        rep.targets.append(Target.at_most("redis: 2-bandwidth acquire ÷ 1-bandwidth time", cost, goal, f"{cost:.2f}×"))
        rep.targets.append(Target.at_most("redis: round trips per 2-bandwidth acquire", trips, 1, f"{trips:g}"))
    if _HIREDIS in rates:
        rep.figures["hiredis_speedup"] = rates[_HIREDIS] / ours
        rep.lines.append(f"With hiredis, ours runs at {rates[_HIREDIS] / ours:.2f}× its pure-Python-parser rate.")
    of_floor = ours / rates[_FLOOR]
    floor_us = counts[OURS][3] / counts[_FLOOR][3] if counts[_FLOOR][3] > 0 else None
    rep.figures["ours_of_floor"] = of_floor
    if floor_us is not None:
        rep.figures["ours_server_us_of_floor"] = floor_us
    if "limits" in rates and rates[_FLOOR] < rates["limits"]:
        _, lim_cmds, lim_parts, lim_us = counts["limits"]
        rep.lines.append(
            f"The floor script itself ran below limits in this run ({fmt_rate(rates[_FLOOR])} against "
            f"{fmt_rate(rates['limits'])}): limits' fixed window costs the server {lim_cmds:g} commands "
            f"({lim_parts}, {lim_us:.1f} µs) per call against the floor's {counts[_FLOOR][1]:g} "
            f"({counts[_FLOOR][3]:.1f} µs), and "
            f"it reads replies with {'hiredis' if hiredis else 'the pure-Python parser'} while the floor uses "
            "the pure-Python parser."
        )
    rep.targets.append(Target.at_most("redis: round trips per acquire", counts[OURS][0], 1, f"{counts[OURS][0]:g}"))
    rep.targets.append(Target.at_least("redis: ours ÷ PING calls/s", of_ping, _PING_GOAL, f"{of_ping:.2f}×"))
    rep.targets.append(Target.at_least("redis: ours ÷ floor calls/s", of_floor, _FLOOR_GOAL, f"{of_floor:.2f}×"))
    rep.targets.append(
        Target.at_most(
            "redis: ours' server µs ÷ the floor's",
            floor_us,
            _FLOOR_US_GOAL,
            "n/a" if floor_us is None else f"{floor_us:.2f}× ({counts[OURS][3]:.1f} ÷ {counts[_FLOOR][3]:.1f} µs)",
        )
    )
    # The peers read replies with redis-py's default parser (hiredis when installed): ours is scored on
    # the same one, so the ratio compares the libraries and not the parsers.
    same = _HIREDIS if hiredis else OURS
    what = f"redis: ours ({'hiredis' if hiredis else 'pure-Python parser'}) ÷ the best peer (same parser) calls/s"
    if best is None:
        rep.targets.append(Target.at_least(what, None, _REDIS_PEERS_GOAL, NOT_INSTALLED))
    elif same not in rates:
        rep.targets.append(Target.at_least(what, None, _REDIS_PEERS_GOAL, f"not measured ({same} row missing)"))
    else:
        vs_best = rates[same] / rates[best]
        shown = f"{fmt_ratio(vs_best)} ({best})"
        if rates[_FLOOR] < rates[best]:
            shown += f"; the floor ran at {rates[_FLOOR] / rates[best]:.2f}× {best} (pure-Python parser)"
        rep.targets.append(Target.at_least(what, vs_best, _REDIS_PEERS_GOAL, shown))
    return rep


# ---------------------------------------------------------------------------
# 3b. Redis, many concurrent callers in one process

_CONC_GOAL = 3.0
"""Ours (coalescing on) must complete this many times the calls of the one-connection PING loop, and of limits."""
_PING_ONE = "redis-py PING loop, one connection"
_PING_MANY = "redis-py PING"
_NO_COALESCE = f"{OURS}, coalesce=False"
_SCRIPTS = ("evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro")


@dataclass
class _Load:
    """One library under the concurrent load: ``callers`` threads (or tasks) each loop on ``call``."""

    what: str
    call: Callable[[], Any]
    callers: int
    ok: Callable[[Any], bool] = _truthy
    """Whether a result was a grant: only grants count (a refused call is counted apart)."""


@dataclass
class _Window:
    """What the callers did in one measuring run."""

    rate: float
    """Grants per second, all callers together, over the window."""
    scripts: float
    """Script runs on the server (``EVALSHA`` and kin, from ``INFO commandstats``) per call, over the whole run."""
    refused: float
    """The share of calls that were refused, over the whole run."""


def _script_runs(admin: Any) -> int:
    stats: dict[str, Any] = admin.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.removeprefix("cmdstat_") in _SCRIPTS)


def _window(scripts: int, done: list[int], refused: list[int], c0: int, c1: int, secs: float) -> _Window:
    calls = max(1, sum(done) + sum(refused))
    return _Window((c1 - c0) / secs, scripts / calls, sum(refused) / calls)


def _threads_window(load: _Load, admin: Any, sizes: Sizes) -> _Window:
    """``load.callers`` threads loop on ``load.call``: grants per second over the window after the warm-up."""
    go, stop = threading.Event(), threading.Event()
    done = [0] * load.callers
    refused = [0] * load.callers
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        call, ok, n, no = load.call, load.ok, 0, 0
        go.wait()
        try:
            while not stop.is_set():
                if ok(call()):
                    n += 1
                    done[i] = n
                else:
                    no += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        refused[i] = no

    # Every thread is started (and parked) before any runs: starting a thread waits for the GIL, which
    # busy threads would hold for a switch interval each.
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(load.callers)]
    for t in threads:
        t.start()
    s0 = _script_runs(admin)
    go.set()
    try:
        time.sleep(sizes.conc_warmup)
        c0, t0 = sum(done), time.perf_counter()
        time.sleep(sizes.conc_window)
        t1, c1 = time.perf_counter(), sum(done)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    if errors:
        raise errors[0]
    return _window(_script_runs(admin) - s0, done, refused, c0, c1, t1 - t0)


async def _tasks_window(load: _Load, admin: Any, sizes: Sizes) -> _Window:
    """The asyncio twin of `_threads_window`: ``load.callers`` tasks in this event loop."""
    stop = False
    done = [0] * load.callers
    refused = [0] * load.callers

    async def loop(i: int) -> None:
        call, ok, n = load.call, load.ok, 0
        while not stop:
            if ok(await call()):
                n += 1
                done[i] = n
            else:
                refused[i] += 1

    s0 = _script_runs(admin)  # a blocking INFO, before any task runs
    tasks = [asyncio.create_task(loop(i)) for i in range(load.callers)]
    try:
        await asyncio.sleep(sizes.conc_warmup)
        c0, t0 = sum(done), time.perf_counter()
        await asyncio.sleep(sizes.conc_window)
        t1, c1 = time.perf_counter(), sum(done)
    finally:
        stop = True
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return _window(_script_runs(admin) - s0, done, refused, c0, c1, t1 - t0)


def _rotations(names: list[str], rounds: int) -> list[list[str]]:
    """The order of each round: the libraries interleaved, starting one later every round."""
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(rounds)]


def _median_window(samples: list[_Window]) -> _Window:
    return _Window(
        statistics.median(w.rate for w in samples),
        statistics.median(w.scripts for w in samples),
        max(w.refused for w in samples),
    )


def _conc_threads(url: str, sizes: Sizes) -> tuple[dict[str, _Load], dict[str, str], dict[str, _Window]]:
    """Every library under the threads load; returns the loads, the unavailable ones, and the median windows."""
    import redis

    n = sizes.conc_callers
    sync_cls, _ = redis_backend_classes()
    client = redis.Redis.from_url(url, max_connections=2 * n)  # redis-py's default parser and pool
    lone = redis.Redis.from_url(url)
    admin = redis.Redis.from_url(url)
    loads: dict[str, _Load] = {}
    missing: dict[str, str] = {}
    closers: list[Callable[[], Any]] = [client.close, lone.close, admin.close]
    try:
        for name, coalesce in ((OURS, True), (_NO_COALESCE, False)):
            bucket = TokenBucket(_unique("conc"), rate=Rate(HUGE), backend=sync_cls(client, coalesce=coalesce))
            loads[name] = _Load("`bucket.acquire(1)`", partial(bucket.acquire, 1), n)
        for name, make in _redis_peers(url, blocking=True).items():
            try:
                op = make()
            except PeerMissing:
                missing[name] = NOT_INSTALLED
                continue
            loads[name] = _Load(op.algorithm, op.call, n, op.ok)
            if op.close is not None:
                closers.append(op.close)
        loads[_PING_MANY] = _Load("`client.ping()`", client.ping, n)
        loads[_PING_ONE] = _Load("`client.ping()`, one caller", lone.ping, 1)
        for name, load in loads.items():
            _verify(name, _Op("", load.call, load.ok))
        samples: dict[str, list[_Window]] = {name: [] for name in loads}
        for order in _rotations(list(loads), sizes.rounds):
            for name in order:
                samples[name].append(_threads_window(loads[name], admin, sizes))
    finally:
        for close in closers:
            close()
    return loads, missing, {name: _median_window(s) for name, s in samples.items()}


def _conc_tasks(url: str, sizes: Sizes) -> tuple[dict[str, _Load], dict[str, str], dict[str, _Window]]:
    """The asyncio twin of `_conc_threads`: every library under ``conc_callers`` tasks in one event loop."""
    import redis
    import redis.asyncio as aredis

    n = sizes.conc_callers
    _, async_cls = redis_backend_classes()

    async def run() -> tuple[dict[str, _Load], dict[str, str], dict[str, _Window]]:
        client = aredis.Redis.from_url(url, max_connections=2 * n)
        lone = aredis.Redis.from_url(url)
        admin = redis.Redis.from_url(url)
        loads: dict[str, _Load] = {}
        missing: dict[str, str] = {}
        closers: list[Callable[[], Awaitable[Any]]] = [client.aclose, lone.aclose]
        try:
            for name, coalesce in ((OURS, True), (_NO_COALESCE, False)):
                backend = async_cls(client, coalesce=coalesce)
                bucket = AsyncTokenBucket(_unique("conc"), rate=Rate(HUGE), backend=backend)
                loads[name] = _Load("`await bucket.acquire(1)`", partial(bucket.acquire, 1), n)
            try:
                limits: Any = peer("limits")
                aio_storage: Any = peer("limits.aio.storage")
                aio_strategies: Any = peer("limits.aio.strategies")
                storage = aio_storage.RedisStorage(f"async+{url}", implementation="redispy", max_connections=2 * n)
                closers.append(storage.bridge.storage.aclose)
                limiter = aio_strategies.FixedWindowRateLimiter(storage)
                item = limits.RateLimitItemPerSecond(int(HUGE))
                loads["limits"] = _Load("fixed window: `await limiter.hit(...)`", partial(limiter.hit, item, "k"), n)
            except PeerMissing:
                missing["limits"] = NOT_INSTALLED
            loads[_PING_MANY] = _Load("`await client.ping()`", client.ping, n)
            loads[_PING_ONE] = _Load("`await client.ping()`, one caller", lone.ping, 1)
            for name, load in loads.items():
                for _ in range(10):
                    if not await load.call():
                        raise RuntimeError(f"{name}: a call was refused; the benchmark's rate admits every call")
            samples: dict[str, list[_Window]] = {name: [] for name in loads}
            for order in _rotations(list(loads), sizes.rounds):
                for name in order:
                    samples[name].append(await _tasks_window(loads[name], admin, sizes))
        finally:
            for close in closers:
                await close()
            admin.close()
        return loads, missing, {name: _median_window(s) for name, s in samples.items()}

    return asyncio.run(run())


@dataclass
class _Ledger:
    achieved: float
    overspend: int
    starts: int
    scripts: float
    """Script runs on the server per acquire: below 1 when calls carried several reserves."""


def _ledger_summary(starts: list[float], t0: float, t_end: float, sizes: Sizes, scripts: int) -> _Ledger:
    rate, capacity = sizes.ledger_rate, sizes.ledger_capacity
    served = sum(1 for t in starts if t <= t_end)
    return _Ledger(
        achieved=(served - capacity) / (rate * (t_end - t0)),
        overspend=overspend(starts, t0, rate, capacity),
        starts=len(starts),
        scripts=scripts / max(1, len(starts)),
    )


def _ledger_threads(url: str, sizes: Sizes) -> _Ledger:
    """``conc_callers`` threads loop ``acquire(1)`` on one finite Redis bucket (full at start); when each returned."""
    import redis

    sync_cls, _ = redis_backend_classes()
    client = redis.Redis.from_url(url, max_connections=2 * sizes.conc_callers)
    admin = redis.Redis.from_url(url)
    try:
        c0 = _script_runs(admin)
        t0 = time.monotonic()  # before the state exists: the allowance is never too small
        bucket = TokenBucket(
            _unique("ledger"),
            rate=Rate(sizes.ledger_rate),
            capacity=sizes.ledger_capacity,
            backend=sync_cls(client=client),
        )
        t_end = t0 + sizes.ledger_seconds
        stamps: list[list[float]] = [[] for _ in range(sizes.conc_callers)]
        errors: list[BaseException] = []

        def loop(mine: list[float]) -> None:
            try:
                while time.monotonic() < t_end:
                    bucket.acquire(1)
                    mine.append(time.monotonic())
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=loop, args=(mine,), daemon=True) for mine in stamps]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=sizes.ledger_seconds + 30)
        if errors:
            raise errors[0]
        scripts = _script_runs(admin) - c0
    finally:
        client.close()
        admin.close()
    return _ledger_summary([s for mine in stamps for s in mine], t0, t_end, sizes, scripts)


def _ledger_tasks(url: str, sizes: Sizes) -> _Ledger:
    """The asyncio twin of `_ledger_threads`: ``conc_callers`` tasks in one event loop."""
    import redis
    import redis.asyncio as aredis

    _, async_cls = redis_backend_classes()

    async def run() -> _Ledger:
        client = aredis.Redis.from_url(url, max_connections=2 * sizes.conc_callers)
        admin = redis.Redis.from_url(url)
        try:
            c0 = _script_runs(admin)
            t0 = time.monotonic()
            bucket = AsyncTokenBucket(
                _unique("ledger"),
                rate=Rate(sizes.ledger_rate),
                capacity=sizes.ledger_capacity,
                backend=async_cls(client=client),
            )
            t_end = t0 + sizes.ledger_seconds
            starts: list[float] = []

            async def loop() -> None:
                while time.monotonic() < t_end:
                    await bucket.acquire(1)
                    starts.append(time.monotonic())

            await asyncio.wait_for(
                asyncio.gather(*(loop() for _ in range(sizes.conc_callers))), sizes.ledger_seconds + 30
            )
            scripts = _script_runs(admin) - c0
        finally:
            await client.aclose()
            admin.close()
        return _ledger_summary(starts, t0, t_end, sizes, scripts)

    return asyncio.run(run())


def _thread_wakeups(callers: int, seconds: float) -> float:
    """Wake-ups per second of ``callers`` threads that do nothing but wait to be woken, 16 at a time.

    One more thread wakes the waiting ones in turns, as a coalesced call's reply does; no Redis,
    no work. Each caller that is a thread must be woken once per call, so this bounds what any
    design reaches with that many threads on this machine and this Python.
    """
    mutex = threading.Lock()
    waiting: list[threading.Lock] = []
    queued = threading.Semaphore(0)
    woken = [0] * callers
    stop = time.monotonic() + seconds

    def caller(i: int) -> None:
        while time.monotonic() < stop:
            turn = threading.Lock()
            turn.acquire()
            with mutex:
                waiting.append(turn)
            queued.release()
            turn.acquire()
            woken[i] += 1

    def waker() -> None:
        while any(t.is_alive() for t in threads):
            queued.acquire(timeout=0.05)
            with mutex:
                batch = waiting[:16]
                del waiting[:16]
            for turn in batch:
                turn.release()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    began = time.monotonic()
    for t in threads:
        t.start()
    wake = threading.Thread(target=waker, daemon=True)
    wake.start()
    for t in threads:
        t.join()
    wake.join()
    return sum(woken) / (time.monotonic() - began)


def bench_concurrent(sizes: Sizes) -> SectionReport:
    """3b. Many callers in one process on one Redis bucket: total calls per second, and the ledger."""
    n = sizes.conc_callers
    rep = SectionReport("concurrent", f"3b. Redis, {n} concurrent callers in one process")
    rep.notes.append(
        f"{n} asyncio tasks in one event loop, then {n} threads, each looping on one call with no pause; the figure "
        "is the calls all of them completed together per second, counted over a window of "
        f"{sizes.conc_window:g} s after a warm-up of {sizes.conc_warmup:g} s, median of {sizes.rounds} rounds "
        "(the libraries take turns, the order rotating every round). "
        f"Ours: `acquire(1)` on one bucket of rate {HUGE:g}/s (never waits), `AsyncTokenBucket` on "
        "`AsyncRedisBackend(client=redis.asyncio.Redis(...))` or `TokenBucket` on "
        f"`RedisBackend(client=redis.Redis(...))`, one client whose pool holds up to {2 * n} connections. "
        "'coalesce=False' is the same with coalescing turned off: each reserve is its own script call. "
        "Peers under the same load: limits `FixedWindowRateLimiter.hit` (asyncio: `limits.aio` with "
        "`RedisStorage('async+redis://...', implementation='redispy')`), and for threads also pyrate-limiter and "
        "throttled-py as in section 3 (pyrate-limiter with `blocking=True`: without it, a call that finds its "
        "limiter's lock taken by another thread is refused at once, without asking Redis). Only granted calls "
        "count; a row says so when any was refused. "
        f"'{_PING_MANY}' is `ping()` from all {n} callers on one client; '{_PING_ONE}' is one caller's "
        "sequential `ping()`: the most round trips one caller can make, the limit coalescing is meant to pass. "
        "Every client uses redis-py's default reply parser (hiredis when installed) and default pool class. "
        "'scripts run / call' is the server's script calls (`EVALSHA` and kin, `INFO commandstats`) from the "
        "first caller's start to the last one's end ÷ the calls made meanwhile: below 1, several calls shared "
        "one script run. "
        "A private `redis-server --save '' --appendonly no`."
    )
    rep.notes.append(
        f"Ledger: the same {n} callers loop `acquire(1)` on one bucket of {sizes.ledger_rate:g} tokens/s, capacity "
        f"{sizes.ledger_capacity:g} (full at start), with the backend's defaults (coalescing on), "
        f"for {sizes.ledger_seconds:g} s, and record when each `acquire` returned (`time.monotonic()`). Overspend = "
        "the most starts, at any moment t, beyond `capacity + rate × (t − t0)`, t0 read just before the bucket "
        "was created (must be 0). Achieved ÷ rate = (starts by the end − capacity) ÷ (rate × duration). Scripts "
        "run / acquire below 1 means calls carried several reserves: the ledger judges the coalesced path."
    )
    try:
        with private_redis() as url:
            redis_backend_classes()  # RedisUnavailable when this checkout has no Redis backend
            measured = {"asyncio": _conc_tasks(url, sizes), "threads": _conc_threads(url, sizes)}
            ledgers = {"asyncio": _ledger_tasks(url, sizes), "threads": _ledger_threads(url, sizes)}
            wakeups = _thread_wakeups(n, 0.2 if sizes.quick else 1.0)
    except RedisUnavailable as exc:
        rep.lines.append(f"Redis not available: {exc}.")
        return rep
    for mode, (loads, missing, windows) in measured.items():
        ours = windows[OURS].rate
        rows: list[list[str]] = []
        for name, load in loads.items():
            w = windows[name]
            scripts = f"{w.scripts:.3g}" if w.scripts > 0 else "–"
            rate = fmt_rate(w.rate) + (f" ({w.refused:.1%} of calls refused)" if w.refused > 0 else "")
            rows.append([name, load.what, str(load.callers), rate, fmt_ratio(ours / w.rate), scripts])
        rows.extend([name, "", "", why, "n/a", ""] for name, why in missing.items())
        rep.lines.extend([f"**{mode}**", ""])
        headers = ["library", "each caller loops on", "callers", "calls/s (all callers)", "ours ÷ this"]
        rep.lines.extend(table([*headers, "scripts run / call"], rows))
        rep.lines.append("")
        of_one = ours / windows[_PING_ONE].rate
        of_many = ours / windows[_PING_MANY].rate
        rep.figures[f"{mode}_ours_ops_per_s"] = ours
        rep.figures[f"{mode}_ours_of_ping_one"] = of_one
        rep.figures[f"{mode}_ours_of_ping_many"] = of_many
        line = (
            f"{mode}: ours completes {of_one:.2f}× the one-connection PING loop and {of_many:.2f}× PING from "
            f"{n} callers, with {windows[OURS].scripts:.3g} script run(s) per acquire"
        )
        if _NO_COALESCE in windows:
            off = windows[_NO_COALESCE]
            rep.figures[f"{mode}_coalesce_speedup"] = ours / off.rate
            line += f"; with coalescing off, {off.rate / windows[_PING_ONE].rate:.2f}× the PING loop"
        if mode == "threads":
            rep.figures["threads_wakeups_per_s"] = wakeups
            line += (
                f". The ceiling of {n} threads here: threads that do nothing but wait to be woken, 16 at a time "
                f"(no Redis, no work), reach {fmt_rate(wakeups)} wake-ups, {wakeups / windows[_PING_ONE].rate:.2f}× "
                f"the PING loop; ours reaches {ours / wakeups:.0%} of that"
            )
        rep.lines.extend([line + ".", ""])
        what = f"concurrent {mode}: ours ÷ one-connection PING loop calls/s"
        rep.targets.append(Target.at_least(what, of_one, _CONC_GOAL, fmt_ratio(of_one)))
        what = f"concurrent {mode}: ours ÷ limits calls/s, {n} callers"
        if "limits" in windows:
            ratio = ours / windows["limits"].rate
            rep.targets.append(Target.at_least(what, ratio, _CONC_GOAL, fmt_ratio(ratio)))
        else:
            rep.targets.append(Target.at_least(what, None, _CONC_GOAL, missing.get("limits", NOT_INSTALLED)))
    rows = []
    for mode, ledger in ledgers.items():
        figures = [f"{ledger.starts:,}", f"{ledger.achieved:.4f}", f"{ledger.scripts:.3g}", str(ledger.overspend)]
        rows.append([mode, str(n), *figures])
        rep.figures[f"ledger_{mode}_achieved"] = ledger.achieved
        rep.figures[f"ledger_{mode}_overspend"] = ledger.overspend
        what = f"concurrent {mode}: overspend, {n} callers on {sizes.ledger_rate:g}/s"
        rep.targets.append(Target.at_most(what, ledger.overspend, 0, str(ledger.overspend)))
    rep.lines.extend(["**Ledger**", ""])
    headers = ["callers as", "callers", "starts", "achieved ÷ rate", "scripts run / acquire"]
    rep.lines.extend(table([*headers, "overspend (tokens)"], rows))
    return rep


# ---------------------------------------------------------------------------
# 4. Fairness: the starvation scenario

_SMALL_THREADS = 4
_BIG = 8
_CAPACITY = 10
_POLL = 0.01
"""The sleep between tries of the retry loop that emulates blocking for non-blocking peers."""


@dataclass
class _Starver:
    """One library in the starvation scenario.

    ``make(rate)`` returns ``(small, big)``: ``small()`` takes one token (it may
    block for a while), ``big(limit)`` tries to take 8 within ``limit`` seconds
    and says whether it was served. For asyncio both are coroutine functions.
    """

    how: str
    make: Callable[[float], tuple[Callable[[], Any], Callable[[float], Any]]]
    is_async: bool = False


def _retry_loop(try_take: Callable[[int], bool]) -> tuple[Callable[[], bool], Callable[[float], bool]]:
    def small() -> bool:
        if try_take(1):
            return True
        time.sleep(_POLL)
        return False

    def big(limit: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if try_take(_BIG):
                return True
            time.sleep(_POLL)
        return False

    return small, big


def _starve_ours(rate: float) -> tuple[Callable[[], Any], Callable[[float], bool]]:
    bucket = TokenBucket(_unique("fair"), rate=Rate(rate), capacity=_CAPACITY, backend=MemoryBackend())

    def big(limit: float) -> bool:
        try:
            bucket.acquire(_BIG, timeout=limit)
        except AcquireTimeout:
            return False
        return True

    return partial(bucket.acquire, 1), big


def _starve_ours_async(rate: float) -> tuple[Callable[[], Any], Callable[[float], Any]]:
    bucket = AsyncTokenBucket(_unique("fair"), rate=Rate(rate), capacity=_CAPACITY, backend=MemoryBackend())

    async def big(limit: float) -> bool:
        try:
            await bucket.acquire(_BIG, timeout=limit)
        except AcquireTimeout:
            return False
        return True

    return partial(bucket.acquire, 1), big


def _starve_pyrate(rate: float) -> tuple[Callable[[], Any], Callable[[float], bool]]:
    pr: Any = peer("pyrate_limiter")
    bucket = pr.StateBucket([pr.Rate(int(rate), pr.Duration.SECOND, burst=_CAPACITY)], algorithm=pr.TokenBucket())
    limiter = pr.Limiter(bucket)

    def big(limit: float) -> bool:
        return bool(limiter.try_acquire("k", _BIG, blocking=True, timeout=limit))

    return partial(limiter.try_acquire, "k", 1, True, 1.0), big


def _starve_throttled(rate: float) -> tuple[Callable[[], Any], Callable[[float], bool]]:
    th: Any = peer("throttled")
    quota = th.per_sec(int(rate), burst=_CAPACITY)
    limiter = th.Throttled(key="k", using="token_bucket", quota=quota, store=th.MemoryStore())

    def big(limit: float) -> bool:
        return not limiter.limit("k", _BIG, timeout=limit).limited

    def small() -> bool:
        return not limiter.limit("k", 1, 1.0).limited

    return small, big


def _starve_token_bucket(rate: float) -> tuple[Callable[[], Any], Callable[[float], bool]]:
    tb: Any = peer("token_bucket")
    limiter = tb.Limiter(rate, _CAPACITY, tb.MemoryStorage())
    return _retry_loop(lambda n: bool(limiter.consume("k", n)))


def _starve_limits(rate: float) -> tuple[Callable[[], Any], Callable[[float], bool]]:
    limits: Any = peer("limits")
    limiter = limits.strategies.FixedWindowRateLimiter(limits.storage.MemoryStorage())
    item = limits.RateLimitItemPerSecond(int(rate))
    return _retry_loop(lambda n: bool(limiter.hit(item, "k", cost=n)))


def _starve_aiolimiter(rate: float) -> tuple[Callable[[], Any], Callable[[float], Any]]:
    aiolimiter: Any = peer("aiolimiter")
    limiter = aiolimiter.AsyncLimiter(_CAPACITY, _CAPACITY / rate)

    async def big(limit: float) -> bool:
        try:
            await asyncio.wait_for(limiter.acquire(_BIG), limit)
        except asyncio.TimeoutError:
            return False
        return True

    async def small() -> bool:
        await limiter.acquire(1)
        return True

    return small, big


_STARVERS: dict[str, _Starver] = {
    f"{OURS} (threads)": _Starver("`acquire` blocks (FCFS reservation)", _starve_ours),
    f"{OURS} (asyncio)": _Starver("`await acquire` (FCFS reservation)", _starve_ours_async, is_async=True),
    "pyrate-limiter": _Starver("`try_acquire(blocking=True)`, token-bucket `StateBucket`", _starve_pyrate),
    "throttled-py": _Starver("`limit(timeout=...)` waits, token bucket", _starve_throttled),
    "token-bucket": _Starver(f"non-blocking: retry loop, {_POLL * 1e3:g} ms sleep", _starve_token_bucket),
    "limits": _Starver(f"non-blocking fixed window: retry loop, {_POLL * 1e3:g} ms sleep", _starve_limits),
    "aiolimiter": _Starver("`await acquire` (asyncio)", _starve_aiolimiter, is_async=True),
}


def _starve_threads(
    small: Callable[[], Any], big: Callable[[float], bool], sizes: Sizes, warmup: float
) -> tuple[float | None, float]:
    stop = threading.Event()
    taken = [0] * _SMALL_THREADS

    def loop(i: int) -> None:
        while not stop.is_set():
            if small():
                taken[i] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(_SMALL_THREADS)]
    began = time.monotonic()
    for t in threads:
        t.start()
    try:
        time.sleep(warmup)
        start = time.monotonic()
        served = big(sizes.fair_limit)
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        ended = time.monotonic()
        for t in threads:
            t.join(timeout=5)
    share = sum(taken) / (_CAPACITY + sizes.fair_rate * (ended - began))
    return (elapsed if served and elapsed <= sizes.fair_limit else None), share


async def _starve_tasks(
    small: Callable[[], Any], big: Callable[[float], Any], sizes: Sizes, warmup: float
) -> tuple[float | None, float]:
    stop = False
    taken = 0

    async def loop() -> None:
        nonlocal taken
        while not stop:
            if await small():
                taken += 1

    began = time.monotonic()
    tasks = [asyncio.create_task(loop()) for _ in range(_SMALL_THREADS)]
    try:
        await asyncio.sleep(warmup)
        start = time.monotonic()
        served = await big(sizes.fair_limit)
        elapsed = time.monotonic() - start
    finally:
        stop = True
        ended = time.monotonic()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    share = taken / (_CAPACITY + sizes.fair_rate * (ended - began))
    return (elapsed if served and elapsed <= sizes.fair_limit else None), share


def _warmup(sizes: Sizes, round_no: int) -> float:
    """When the large request arrives in round ``round_no``: a different phase of the refill each round.

    The phases are spread over one capacity's worth of refill (one window for
    limits), so a fixed window that happens to reset just as the request
    arrives cannot decide the result.
    """
    period = _CAPACITY / sizes.fair_rate
    return sizes.fair_warmup + period * (round_no + 0.5) / sizes.fair_rounds


def bench_fairness(sizes: Sizes) -> SectionReport:
    """4. How long a request of 8 tokens waits behind four threads taking 1 token each."""
    rate = sizes.fair_rate
    limit = sizes.fair_limit
    rep = SectionReport("fairness", "4. Fairness: a large request among small ones")
    ideal = (_BIG + _SMALL_THREADS) / rate
    rep.notes.append(
        f"Rate {rate:g}/s, capacity {_CAPACITY}; {_SMALL_THREADS} threads (tasks for asyncio) loop taking 1 token; "
        f"after {_warmup(sizes, 0):.2f} s (a later phase of the refill each round) one caller asks for {_BIG}. "
        "Time until it is served, median of "
        f"{sizes.fair_rounds} rounds; 'not served within {limit:g} s' is a result (a library that starves once "
        f"is not run again). First-come first-served serves it after about ({_BIG} + {_SMALL_THREADS} queued) / "
        f"rate = {ideal:.2f} s. token-bucket and limits cannot block: the fair emulation is a retry loop with a "
        f"{_POLL * 1e3:g} ms sleep, for the small callers and the large one alike. limits uses its fixed window of "
        f"{int(rate)} per second. 'Small callers' share' = tokens they took ÷ (capacity + rate × round length), "
        "what the bucket could give in the round (median): a large request served at once next to a low share "
        "means the small callers were leaving tokens unused."
    )
    rows: list[list[str]] = []
    for name, starver in _STARVERS.items():
        try:
            starver.make(rate)
        except PeerMissing:
            rows.append([name, starver.how, NOT_INSTALLED, "", ""])
            continue
        results: list[float | None] = []
        shares: list[float] = []
        for r in range(sizes.fair_rounds):
            small, big = starver.make(rate)
            warmup = _warmup(sizes, r)
            if starver.is_async:
                served_after, share = asyncio.run(_starve_tasks(small, big, sizes, warmup))
            else:
                served_after, share = _starve_threads(small, big, sizes, warmup)
            results.append(served_after)
            shares.append(share)
            if results[-1] is None:
                break
        rounds = ", ".join("not served" if r is None else f"{r:.2f} s" for r in results)
        if any(r is None for r in results):
            verdict = f"**not served within {limit:g} s**"
        else:
            served = [r for r in results if r is not None]
            verdict = f"{statistics.median(served):.2f} s"
            if name.startswith(OURS):
                key = "ours_threads_s" if "threads" in name else "ours_asyncio_s"
                rep.figures[key] = statistics.median(served)
        rows.append([name, starver.how, verdict, rounds, f"{statistics.median(shares):.2f}"])
    headers = ["library", "how it waits", f"{_BIG}-token request served after", "rounds"]
    rep.lines.extend(table([*headers, "small callers' share"], rows))
    return rep


# ---------------------------------------------------------------------------
# 5. Accuracy under load


@dataclass
class _Accuracy:
    achieved: float
    p50: float
    p99: float
    overspend: int
    starts: int
    waited: float


def _accuracy_summary(records: list[tuple[float, float, float]], t0: float, t_end: float, rate: float) -> _Accuracy:
    starts = [actual for _, actual, _ in records]
    served = sum(1 for t in starts if t <= t_end)
    late = [actual - scheduled for scheduled, actual, _ in records]
    return _Accuracy(
        achieved=served / (rate * (t_end - t0)),
        p50=percentile(late, 50),
        p99=percentile(late, 99),
        overspend=overspend(starts, t0, rate, 0.0),
        starts=len(starts),
        waited=sum(1 for *_, delay in records if delay > 0) / max(1, len(records)),
    )


def _accuracy_threads(bucket: TokenBucket, waiters: int, seconds: float) -> _Accuracy:
    t0 = time.monotonic()  # read before the state exists, so the allowance is never too small
    bucket.reserve(0)  # creates the state
    t_end = t0 + seconds
    records: list[tuple[float, float, float]] = []

    def waiter() -> None:
        while True:
            res = bucket.reserve(1)
            if res.start > t_end:
                res.cancel()
                return
            res.wait()
            records.append((res.start, time.monotonic(), res.delay))

    threads = [threading.Thread(target=waiter, daemon=True) for _ in range(waiters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 30)
    return _accuracy_summary(records, t0, t_end, bucket.rate.per_second)


async def _accuracy_tasks(bucket: AsyncTokenBucket, waiters: int, seconds: float) -> _Accuracy:
    t0 = time.monotonic()
    await bucket.reserve(0)
    t_end = t0 + seconds
    records: list[tuple[float, float, float]] = []

    async def waiter() -> None:
        while True:
            res = await bucket.reserve(1)
            if res.start > t_end:
                await res.cancel()
                return
            await res.wait()
            records.append((res.start, time.monotonic(), res.delay))

    await asyncio.wait_for(asyncio.gather(*(waiter() for _ in range(waiters))), seconds + 30)
    return _accuracy_summary(records, t0, t_end, bucket.rate.per_second)


def _run_memory_threads(n: int, rate: float, secs: float) -> _Accuracy:
    return _accuracy_threads(TokenBucket(_unique("acc"), rate=Rate(rate), initial=0, backend=MemoryBackend()), n, secs)


def _run_memory_tasks(n: int, rate: float, secs: float) -> _Accuracy:
    bucket = AsyncTokenBucket(_unique("acc"), rate=Rate(rate), initial=0, backend=MemoryBackend())
    return asyncio.run(_accuracy_tasks(bucket, n, secs))


def _run_redis_threads(url: str, n: int, rate: float, secs: float) -> _Accuracy:
    import redis

    sync_cls, _ = redis_backend_classes()
    client = redis.Redis.from_url(url)
    try:
        bucket = TokenBucket(_unique("acc"), rate=Rate(rate), initial=0, backend=sync_cls(client=client))
        return _accuracy_threads(bucket, n, secs)
    finally:
        client.close()


def _run_redis_tasks(url: str, n: int, rate: float, secs: float) -> _Accuracy:
    import redis.asyncio as aredis

    _, async_cls = redis_backend_classes()

    async def run() -> _Accuracy:
        client = aredis.Redis.from_url(url)
        try:
            bucket = AsyncTokenBucket(_unique("acc"), rate=Rate(rate), initial=0, backend=async_cls(client=client))
            return await _accuracy_tasks(bucket, n, secs)
        finally:
            await client.aclose()

    return asyncio.run(run())


_ACC_GOALS = {"memory": (0.99, 0.005), "redis": (0.97, 0.010)}
"""Store → (least achieved ÷ rate, most p99 lateness in seconds)."""


def bench_accuracy(sizes: Sizes) -> SectionReport:
    """5. Achieved rate, wake-up lateness and overspend with many concurrent waiters."""
    n, rate, secs = sizes.acc_waiters, sizes.acc_rate, sizes.acc_seconds
    rep = SectionReport("accuracy", "5. Accuracy under load")
    rep.notes.append(
        f"{n} concurrent waiters (threads, then asyncio tasks) loop `res = bucket.reserve(1); res.wait()` on one "
        f"bucket of {rate:g} tokens/s that starts empty (`initial=0`), for {secs:g} s. Achieved rate = starts by "
        "the end ÷ (rate × duration). Lateness = the moment `wait()` returned minus `res.start` (the scheduled "
        "start on the bucket's clock). Overspend = the most tokens started, at any moment t, beyond "
        "`rate × (t − t0)` with t0 read just before the bucket was created (must be 0). "
        f"Median of {sizes.acc_rounds} rounds (the four set-ups take turns); overspend is the worst round. "
        "'had to wait' is the share of reservations with a delay: near 100% the bucket set the pace; much lower, "
        "the waiters could not reserve fast enough (the client, not the bucket, limited the rate)."
    )
    runs: dict[tuple[str, str], Callable[[], _Accuracy]] = {
        ("memory", "threads"): partial(_run_memory_threads, n, rate, secs),
        ("memory", "asyncio"): partial(_run_memory_tasks, n, rate, secs),
    }
    rows: list[list[str]] = []
    unavailable: list[list[str]] = []
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(private_redis())
            redis_backend_classes()
        except RedisUnavailable as exc:
            unavailable.append(["redis", f"not available ({exc})", "", "", "", ""])
        else:
            runs[("redis", "threads")] = partial(_run_redis_threads, url, n, rate, secs)
            runs[("redis", "asyncio")] = partial(_run_redis_tasks, url, n, rate, secs)
        samples: dict[tuple[str, str], list[_Accuracy]] = {key: [] for key in runs}
        for _ in range(sizes.acc_rounds):
            for key, run in runs.items():
                if key in samples:
                    try:
                        samples[key].append(run())
                    except Exception as exc:  # reported in the table; the other set-ups still run
                        del samples[key]
                        unavailable.append([f"{key[0]}, {key[1]}", _failed(exc), "", "", "", ""])
    for (store, mode), accs in samples.items():
        achieved = statistics.median(a.achieved for a in accs)
        p50 = statistics.median(a.p50 for a in accs)
        p99 = statistics.median(a.p99 for a in accs)
        spent = max(a.overspend for a in accs)
        p99s = ", ".join(fmt_ms(a.p99) for a in accs)
        waited = statistics.median(a.waited for a in accs)
        rows.append(
            [f"{store}, {mode}", f"{achieved:.4f}", f"{waited:.0%}", fmt_ms(p50), f"{fmt_ms(p99)} ({p99s})", str(spent)]
        )
        label = f"{store}_{mode}"
        rep.figures[f"{label}_achieved"] = achieved
        rep.figures[f"{label}_p99_s"] = p99
        rep.figures[f"{label}_overspend"] = spent
        goal_rate, goal_p99 = _ACC_GOALS[store]
        rep.targets.append(
            Target.at_least(f"accuracy {store}/{mode}: achieved ÷ rate", achieved, goal_rate, f"{achieved:.4f}")
        )
        rep.targets.append(
            Target.at_most(f"accuracy {store}/{mode}: lateness p99", p99 * 1e3, goal_p99 * 1e3, fmt_ms(p99), " ms")
        )
        rep.targets.append(Target.at_most(f"accuracy {store}/{mode}: overspend", spent, 0, str(spent)))
    rep.lines.extend(
        table(
            [
                "store, waiters",
                "achieved ÷ rate",
                "had to wait",
                "lateness p50",
                "lateness p99 (each round)",
                "overspend (tokens)",
            ],
            rows + unavailable,
        )
    )
    return rep


# ---------------------------------------------------------------------------
# 6. Scale: processes on one Redis bucket


def _scale_worker(url: str, names: list[tuple[str, float, float]], seconds: float, barrier: Any, results: Any) -> None:
    """A process hammering Redis buckets with ``try_acquire(1)``, one phase per bucket in ``names``.

    Each phase starts when every worker and the parent pass ``barrier``, lasts
    ``seconds``, and puts ``(admitted, calls, stamps)`` on ``results``:
    ``stamps`` are the monotonic times when admitted calls returned (when the
    caller could start).
    """
    try:
        sync_cls, _ = redis_backend_classes()
        backend = sync_cls.from_url(url)
        now = time.monotonic
        for name, rate, capacity in names:
            bucket = TokenBucket(name, rate=Rate(rate), capacity=capacity, initial=0, backend=backend)
            bucket.snapshot()  # connected and scripts loaded before the start line
            try_acquire = bucket.try_acquire
            barrier.wait(timeout=120)
            end = now() + seconds
            calls = 0
            stamps: list[float] = []
            while now() < end:
                calls += 1
                if try_acquire(1) is not None:
                    stamps.append(now())
            results.put((len(stamps), calls, stamps))
    except BaseException as exc:  # tell the parent at once instead of letting it wait out its timeouts
        results.put(_failed(exc))
        barrier.abort()
        raise


def _collect(results: Any, workers: list[Any], timeout: float) -> list[tuple[int, int, list[float]]]:
    """One result from each worker; raises at once with the first worker's failure."""
    got: list[tuple[int, int, list[float]]] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(workers):
        try:
            item = results.get(timeout=0.5)
        except queue.Empty:
            if time.monotonic() > deadline or any(w.exitcode not in (None, 0) for w in workers):
                raise RuntimeError("a scale worker died without a result") from None
            continue
        if isinstance(item, str):
            raise RuntimeError(f"a scale worker {item}")
        got.append(item)
    return got


@dataclass
class _Phase:
    """What the workers of one phase did together."""

    admitted: int
    calls: int
    overspend: int


def _scale_run(url: str, procs: int, rate: float, seconds: float) -> tuple[_Phase, _Phase]:
    """Run ``procs`` workers: an unlimited phase, then one limited to ``rate`` (capacity rate/10, empty at start)."""
    sync_cls, _ = redis_backend_classes()
    phases = [(_unique("scale-free"), HUGE, HUGE), (_unique("scale-rate"), rate, rate / 10)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_scale_worker, args=(url, phases, seconds, barrier, results), daemon=True)
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    out: list[_Phase] = []
    backend = sync_cls.from_url(url)
    try:
        for name, phase_rate, capacity in phases:
            bucket = TokenBucket(name, rate=Rate(phase_rate), capacity=capacity, initial=0, backend=backend)
            t0 = time.monotonic()  # before the state exists: the allowance is never too small
            bucket.try_acquire(0)
            try:
                barrier.wait(timeout=120)
            except threading.BrokenBarrierError:
                _collect(results, workers, 5.0)  # raises with the worker's failure
                raise
            got = _collect(results, workers, seconds + 120)
            stamps = [s for g in got for s in g[2]]
            spent = overspend(stamps, t0, phase_rate, 0.0)
            out.append(_Phase(sum(g[0] for g in got), sum(g[1] for g in got), spent))
    finally:
        backend.close()
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    return out[0], out[1]


def bench_scale(sizes: Sizes) -> SectionReport:
    """6. Several processes on one Redis bucket: aggregate acquires per second and overspend."""
    secs, rate = sizes.scale_seconds, sizes.scale_rate
    rep = SectionReport("scale", "6. Scale: processes sharing one Redis bucket")
    rep.notes.append(
        f"N processes (spawned; {os.cpu_count()} CPUs) loop `try_acquire(1)` on one Redis bucket, each with its "
        f"own `RedisBackend.from_url(...)`, in two phases of {secs:g} s. Unlimited: a rate of {HUGE:g}/s, so the "
        f"figure is throughput. Limited: {rate:g} tokens/s, capacity {rate / 10:g}, starting empty; overspend = "
        "the most grants, at any moment t, beyond `rate × (t − t0)`, t0 read just before the bucket was created "
        "(a grant counts when `try_acquire` returned). "
        f"Median of {sizes.scale_rounds} rounds (the process counts take turns); overspend is the worst round."
    )
    try:
        with private_redis() as url:
            redis_backend_classes()
            runs: dict[int, list[tuple[_Phase, _Phase]]] = {procs: [] for procs in sizes.scale_procs}
            order = list(sizes.scale_procs)
            for r in range(sizes.scale_rounds):
                k = r % len(order)
                for procs in order[k:] + order[:k]:
                    runs[procs].append(_scale_run(url, procs, rate, secs))
    except RedisUnavailable as exc:
        rep.lines.append(f"Redis not available: {exc}.")
        return rep
    rows: list[list[str]] = []
    base: float | None = None
    for procs, results in runs.items():
        ops = statistics.median(free.admitted / secs for free, _ in results)
        calls = statistics.median(limited.calls / secs for _, limited in results)
        share = statistics.median(limited.admitted / (rate * secs) for _, limited in results)
        spent = max(limited.overspend for _, limited in results)
        base = ops if base is None else base
        rows.append([str(procs), fmt_rate(ops), fmt_ratio(ops / base), fmt_rate(calls), f"{share:.3f}", str(spent)])
        rep.figures[f"p{procs}_ops_per_s"] = ops
        rep.figures[f"p{procs}_overspend"] = spent
        rep.targets.append(Target.at_most(f"scale {procs} processes: overspend", spent, 0, str(spent)))
    headers = ["processes", "unlimited: acquires/s", f"vs {order[0]} process(es)", "limited: calls/s"]
    rep.lines.extend(table([*headers, "limited: granted ÷ (rate × duration)", "overspend (tokens)"], rows))
    return rep


# ---------------------------------------------------------------------------
# 7. Memory per bucket


def _fill(backend: MemoryBackend, policy: Policy, n: int) -> None:
    reserve = backend.reserve
    for i in range(n):
        reserve(f"user:{i}", policy, 1.0, 0.0, None)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return -1


def bench_footprint(sizes: Sizes) -> SectionReport:
    """7. Bytes per bucket with many keys in the memory backend."""
    n = sizes.footprint_keys
    rep = SectionReport("footprint", "7. Memory: bytes per bucket in `MemoryBackend`")
    rep.notes.append(
        f"{n:,} keys (`user:<i>`), each charged 1 token of a 10-token bucket refilling 1/hour, so none is idle and "
        "dropped. Python allocations counted with `tracemalloc` (key string, dict entry, state); RSS delta from "
        "a separate fill without tracemalloc."
    )
    policy = Policy.build(Rate(1, per=3600), capacity=10)
    gc.collect()
    rss0 = _rss()
    backend = MemoryBackend()
    _fill(backend, policy, n)
    gc.collect()
    rss = (_rss() - rss0) / n if rss0 >= 0 else math.nan
    held = len(backend)
    del backend
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        backend = MemoryBackend()
        _fill(backend, policy, n)
        gc.collect()
        traced = (tracemalloc.get_traced_memory()[0] - before) / n
        del backend
    finally:
        tracemalloc.stop()
    rep.figures["bytes_per_bucket"] = traced
    rep.lines.extend(
        table(
            ["keys", "buckets held", "tracemalloc bytes / bucket", "RSS bytes / bucket"],
            [[f"{n:,}", f"{held:,}", f"{traced:.0f}", "n/a" if math.isnan(rss) else f"{rss:.0f}"]],
        )
    )
    return rep


SECTIONS: dict[str, Callable[[Sizes], SectionReport]] = {
    "memory": bench_memory,
    "asyncio": bench_asyncio,
    "redis": bench_redis,
    "concurrent": bench_concurrent,
    "fairness": bench_fairness,
    "accuracy": bench_accuracy,
    "scale": bench_scale,
    "footprint": bench_footprint,
}
"""Every section by the name ``--only`` takes, in report order."""
