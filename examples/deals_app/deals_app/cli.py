"""The ``deals-app`` command line.

Commands: ``demo`` (simulator and collector in one process, bounded time),
``run`` (the collector against a real upstream), ``simulator`` (serve the
Keepa-like simulator), ``status``, ``replay-incident`` and ``dashboard``.

Every failure a user can cause (bad flags, unreachable upstream, refused key,
malformed answers, an unusable database) ends with one ``deals-app: error:``
line and a non-zero exit; ``--debug`` shows tracebacks for the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

import tokenbucket
from tokenbucket import HeaderReconciler, MemoryBackend, TokenBucket, TokenBucketError
from tokenbucket.backends import redact_secret, redact_url
from tokenbucket.integrations.httpx import RateLimitedTransport

from . import __version__, incident
from .client import DOMAINS, AppError, KeepaClient, RestrictionClient
from .dashboard import DashboardServer
from .jobs import JOBS, Collector, JobSettings
from .leases import LeaseView, list_leases
from .progress import Progress, summary_lines
from .quota import KeepaQuota, ScaledClock, format_duration, keepa_policy
from .simulator import SimConfig, SimulatorServer
from .store import Store, StoreError

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_ERROR = 1


class _Parser(argparse.ArgumentParser):
    """argparse that exits with one clear line (and the usage) on a bad flag."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"deals-app: error: {message}\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is between 0 and 65535, got {text!r}")
    return value


KEY_ENV = "KEEPA_API_KEY"
SP_ENV = "SP_API_ACCESS_TOKEN"


def _domain(text: str) -> int:
    code = text.strip().upper()
    if code not in DOMAINS:
        raise argparse.ArgumentTypeError(f"unknown Keepa domain {text!r}; choose from {', '.join(DOMAINS)}")
    return DOMAINS[code]


def _jobs(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in JOBS]
    if unknown or not names:
        bad = unknown[0] if unknown else text
        raise argparse.ArgumentTypeError(f"unknown job {bad!r}; choose from {', '.join(JOBS)}")
    return names


def _add_collector_flags(p: argparse.ArgumentParser, *, db_default: str | None) -> None:
    where = f"default {db_default}" if db_default else "default: a fresh temporary file"
    p.add_argument("--db", default=db_default, help=f"SQLite database file ({where})")
    p.add_argument("--redis-url", help="share the bucket and the lease through Redis (default: in memory)")
    p.add_argument("--jobs", type=_jobs, default=list(JOBS), help=f"comma-separated jobs (default {','.join(JOBS)})")
    p.add_argument(
        "--max-debt-minutes",
        type=_nonnegative,
        default=15.0,
        metavar="MIN",
        help="how far below zero a call may take the balance, in minutes of refill (default 15)",
    )
    p.add_argument(
        "--max-rps",
        type=_positive,
        default=None,
        metavar="N",
        help="also cap Keepa calls at N requests a second of the upstream's time, reserved with the tokens",
    )
    p.add_argument(
        "--sp-concurrency",
        type=_positive_int,
        default=2,
        metavar="N",
        help="SP-API restriction checks in flight at once, across every collector on the backend (default 2)",
    )
    p.add_argument("--lease-ttl", type=_positive, default=30.0, metavar="SEC", help="backfill lease TTL (default 30)")
    p.add_argument(
        "--lease-wait",
        type=_nonnegative,
        default=1.0,
        metavar="SEC",
        help="longest wait for the backfill lease per pass (default 1)",
    )
    p.add_argument(
        "--poll",
        type=_positive,
        default=300.0,
        metavar="SEC",
        help="upstream seconds between passes of an idle job (default 300)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = _Parser(prog="deals-app", description="Reference deal collector built on tokenbucket.")
    parser.add_argument("--version", action="version", version=f"deals-app {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    demo = sub.add_parser("demo", help="run the simulator and the collector together for a bounded time")
    demo.add_argument("--duration", type=_positive, default=60.0, metavar="SEC", help="wall seconds (default 60)")
    demo.add_argument("--time-scale", type=_positive, default=300.0, help="simulator speed-up (default 300)")
    demo.add_argument(
        "--refill-rate", type=_positive_int, default=20, help="Keepa plan: tokens per minute (default 20)"
    )
    demo.add_argument("--cost-noise", type=_nonnegative, default=0.2, help="random extra cost (default 0.2)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--plain", action="store_true", help="plain periodic lines even on a terminal")
    _add_collector_flags(demo, db_default=None)

    run = sub.add_parser("run", help="run the collector against an upstream (Keepa or the simulator)")
    run.add_argument("--base-url", required=True, help="Keepa API base URL, e.g. https://api.keepa.com")
    run.add_argument("--api-key", default=None, help=f"Keepa API key (default: ${KEY_ENV})")
    run.add_argument("--domain", type=_domain, default="US", help="Keepa marketplace: US, GB, DE, FR, JP, ... (US)")
    run.add_argument(
        "--sp-base-url", help="SP-API endpoint for restriction checks (default: none; the restrictions job is skipped)"
    )
    run.add_argument("--sp-token", default=None, help=f"SP-API access token, with --sp-base-url (default: ${SP_ENV})")
    run.add_argument("--time-scale", type=_positive, default=1.0, help="the upstream's speed-up (simulator only)")
    run.add_argument("--once", action="store_true", help="one pass of each job, then exit")
    run.add_argument("--duration", type=_positive, metavar="SEC", help="stop after this many wall seconds")
    run.add_argument("--timeout", type=_positive, default=30.0, help="HTTP timeout in seconds (default 30)")
    run.add_argument("--plain", action="store_true", help="plain periodic lines even on a terminal")
    _add_collector_flags(run, db_default="deals.sqlite")

    sim = sub.add_parser("simulator", help="serve the Keepa-like simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 picks a free one)")
    sim.add_argument("--time-scale", type=_positive, default=1.0)
    sim.add_argument("--refill-rate", type=_positive_int, default=20)
    sim.add_argument("--cost-noise", type=_nonnegative, default=0.0)
    sim.add_argument("--api-key", default="demo-key")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--deals-per-hour", type=_positive, default=30.0)
    sim.add_argument("--latency", type=_nonnegative, default=0.0, help="wall seconds per request")

    status = sub.add_parser("status", help="bucket snapshot, leases and their holders, row counts")
    status.add_argument("--db", default="deals.sqlite")
    status.add_argument("--redis-url")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    dash = sub.add_parser("dashboard", help="a small read-only web page: deals, token balance, lease holders")
    dash.add_argument("--db", default="deals.sqlite")
    dash.add_argument("--redis-url", help="show the leases held in this Redis")
    dash.add_argument("--host", default="127.0.0.1")
    dash.add_argument("--port", type=_port, default=8766, help="port (default 8766; 0 picks a free one)")
    dash.add_argument("--hours", type=_positive, default=6.0, help="hours of token balance to chart (default 6)")

    replay = sub.add_parser("replay-incident", help="replay the incident: the old configuration next to tokenbucket's")
    replay.add_argument("--hours", type=_positive_int, default=6, help="hours of virtual time (default 6, at least 2)")
    replay.add_argument("--seed", type=int, default=1)
    replay.add_argument("--json", action="store_true", help="machine-readable output")

    return parser


# --- wiring ----------------------------------------------------------------------------------------


def _backend(redis_url: str | None) -> Any:
    if redis_url is None:
        return MemoryBackend()
    shown = redact_url(redis_url)
    try:
        backend = tokenbucket.RedisBackend.from_url(redis_url)
        backend.lease_list()  # fail here, with a clear message, if Redis is not there
    except TokenBucketError as exc:
        raise AppError(redact_secret(f"cannot use Redis at {shown}: {exc}", redis_url)) from None
    except ValueError as exc:
        raise AppError(redact_secret(f"bad --redis-url {shown!r}: {exc}", redis_url)) from None
    return backend


def _open_store(path: str | None) -> Store:
    if path is None:
        path = str(Path(tempfile.mkdtemp(prefix="deals-app-")) / "deals.sqlite")
    try:
        return Store(path)
    except StoreError as exc:
        raise AppError(str(exc)) from exc


def _collector(
    args: argparse.Namespace,
    *,
    base_url: str,
    api_key: str,
    sp_base_url: str | None,
    sp_token: str | None,
    time_scale: float,
    timeout: float = 30.0,
    domain: int = 1,
) -> Collector:
    store = _open_store(args.db)
    stop = threading.Event()
    clock = ScaledClock(time_scale, stop)
    backend = _backend(args.redis_url)
    # One free status call to learn the plan (Keepa asks clients not to poll /token); from then on
    # every reply keeps the bucket in sync.
    probe = KeepaClient(base_url, api_key, timeout=timeout)
    try:
        first = probe.token_status()
    finally:
        probe.close()
    policy = keepa_policy(first.refill_rate, args.max_debt_minutes)
    # Redis keeps time with its TIME command when the upstream runs at wall speed.
    bucket_clock = None if (args.redis_url and time_scale == 1.0) else clock
    quota = KeepaQuota(policy, backend=backend, clock=bucket_clock, max_rps=args.max_rps)
    quota.bucket.sync(first.tokens_left)
    store.set_meta(
        "keepa_policy",
        {
            "refill_per_minute": policy.refill_per_minute,
            "capacity": policy.capacity,
            "max_debt": policy.max_debt,
            "min_start": policy.min_start,
            "max_rps": args.max_rps,
            "time_scale": time_scale,
            "base_url": base_url,
        },
    )
    def keepa_client(lane: str) -> KeepaClient:
        return KeepaClient(
            base_url,
            api_key,
            timeout=timeout,
            transport=quota.transport(lane=lane),
            on_reply=lambda reply: store.log_tokens(reply.tokens_left, "keepa"),
            domain=domain,
        )

    keepa = keepa_client("urgent")  # the recent-deals update
    keepa.last_reply = first
    backfill_keepa = keepa_client("bulk")
    restrictions = None
    if sp_base_url and sp_token:  # restriction checks only with an SP-API endpoint and its credentials
        sp_bucket = TokenBucket("sp-restrictions", rate="5/second", capacity=10, backend=backend, clock=bucket_clock)
        sp_transport = RateLimitedTransport(httpx.HTTPTransport(), sp_bucket, cost=1, reconciler=HeaderReconciler())
        restrictions = RestrictionClient(sp_base_url, sp_token, timeout=timeout, transport=sp_transport)
    settings = JobSettings(
        poll_seconds=args.poll,
        lease_ttl=args.lease_ttl,
        lease_wait=args.lease_wait,
        sp_concurrency=args.sp_concurrency,
    )
    return Collector(
        keepa,
        quota,
        store,
        clock=clock,
        backfill_keepa=backfill_keepa,
        restrictions=restrictions,
        lease_backend=backend,
        settings=settings,
        debug=args.debug,
    )


def _drive(collector: Collector, progress: Progress, duration: float | None) -> float:
    """Show progress until the jobs finish, fail, or ``duration`` passes; returns wall seconds."""
    started = time.monotonic()
    try:
        while collector.alive():
            progress.tick()
            if duration is not None and time.monotonic() - started >= duration:
                break
            time.sleep(0.25 if progress.interactive else 0.1)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the jobs (waiting requests are refunded)", file=sys.stderr, flush=True)
    finally:
        collector.stop.set()
        collector.join(timeout=30)
    progress.tick()
    return time.monotonic() - started


def _sim_config(**options: Any) -> SimConfig:
    try:
        return SimConfig(**options)
    except ValueError as exc:
        raise AppError(f"bad simulator setting: {exc}") from exc


def cmd_demo(args: argparse.Namespace) -> int:
    config = _sim_config(
        refill_rate=args.refill_rate, time_scale=args.time_scale, cost_noise=args.cost_noise, seed=args.seed
    )
    with SimulatorServer(config) as server:
        sim = server.simulator
        print(
            f"deals-app demo: Keepa-like simulator on {server.base_url} at {args.time_scale:g}×\n"
            f"  ({args.refill_rate} tokens/min, bucket {60 * args.refill_rate}); collecting for {args.duration:g} s",
            flush=True,
        )
        collector = _collector(
            args,
            base_url=server.base_url,
            api_key=config.api_key,
            sp_base_url=server.base_url,
            sp_token=config.api_key,
            time_scale=args.time_scale,
        )
        print(f"database: {collector.store.path}", flush=True)
        progress = Progress(collector, upstream_seconds=sim.elapsed, interactive=False if args.plain else None)
        collector.start(args.jobs)
        wall = _drive(collector, progress, args.duration)
        stats = sim.stats()
        print("\n".join(summary_lines(collector, wall=wall, upstream_seconds=sim.elapsed(), sim_stats=stats)))
        collector.close()
    if collector.stats.errors:
        print(f"deals-app: error: {collector.stats.errors[0]}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    api_key = args.api_key or os.environ.get(KEY_ENV)
    if not api_key:
        raise AppError(f"no Keepa API key: pass --api-key or set {KEY_ENV}")
    sp_token = args.sp_token or os.environ.get(SP_ENV)
    if args.sp_base_url and not sp_token:
        raise AppError(f"--sp-base-url needs an access token: pass --sp-token or set {SP_ENV}")
    collector = _collector(
        args,
        base_url=args.base_url,
        api_key=api_key,
        sp_base_url=args.sp_base_url,
        sp_token=sp_token,
        time_scale=args.time_scale,
        timeout=args.timeout,
        domain=args.domain,
    )
    started = time.monotonic()
    progress = Progress(
        collector,
        upstream_seconds=lambda: (time.monotonic() - started) * args.time_scale,
        interactive=False if args.plain else None,
        every=10.0,
    )
    collector.start(args.jobs, once=args.once)
    wall = _drive(collector, progress, args.duration)
    print("\n".join(summary_lines(collector, wall=wall, upstream_seconds=wall * args.time_scale, sim_stats=None)))
    collector.close()
    if collector.stats.errors:
        print(f"deals-app: error: {collector.stats.errors[0]}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def cmd_simulator(args: argparse.Namespace) -> int:
    config = _sim_config(
        api_key=args.api_key,
        refill_rate=args.refill_rate,
        time_scale=args.time_scale,
        seed=args.seed,
        cost_noise=args.cost_noise,
        deals_per_hour=args.deals_per_hour,
        latency=args.latency,
    )
    try:
        server = SimulatorServer(config, host=args.host, port=args.port)
    except OSError as exc:
        raise AppError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    print(
        f"Keepa-like simulator on {server.base_url} (key {config.api_key!r}, {config.refill_rate} tokens/min, "
        f"{config.time_scale:g}×); counters at {server.base_url}/_sim/stats; Ctrl-C stops",
        flush=True,
    )
    server.serve_forever()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise AppError(f"no database at {args.db} (run the collector first, or pass --db)")
    store = _open_store(args.db)
    counts = store.counts()
    policy = store.meta("keepa_policy")
    backend = _backend(args.redis_url) if args.redis_url else None
    bucket: dict[str, Any] = {}
    if backend is not None and policy is not None:
        b = TokenBucket(
            "keepa",
            rate=tokenbucket.Rate(policy["refill_per_minute"], per=60),
            capacity=policy["capacity"],
            overdraft=policy["max_debt"],
            min_start=policy["min_start"],
            backend=backend,
            # A collector in a sped-up upstream's time keeps the bucket on its scaled clock; read it the same way.
            clock=None if policy.get("time_scale", 1.0) == 1.0 else ScaledClock(policy["time_scale"]),
        )
        snap = b.snapshot()
        bucket = {
            "source": "redis",
            "tokens": snap.tokens,
            "debt": snap.debt,
            "promised": snap.promised,
            "time_to_positive": snap.time_to_positive,
            "capacity": snap.capacity,
        }
    else:
        series = store.token_series(0)
        if series:
            at, left = series[-1]
            bucket = {"source": "last upstream reply", "tokens": left, "at": at}
    leases = [dataclasses.asdict(lease) for lease in list_leases(backend)] if backend is not None else []
    checkpoints = [{"job": j, "position": p, "fence": f, "updated_at": u} for j, p, f, u in store.checkpoints()]
    data = {
        "counts": dataclasses.asdict(counts),
        "bucket": bucket,
        "policy": policy,
        "leases": leases,
        "checkpoints": checkpoints,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    c = data["counts"]
    print(f"database {store.path}")
    print(
        f"  deals {c['deals']}, recent histories {c['products_recent']}, backfilled {c['products_full']}, "
        f"price points {c['price_points']}, restriction checks {c['restrictions']} ({c['restricted']} restricted)"
    )
    if bucket:
        extra = (
            f", debt {bucket['debt']:.0f}, positive in {format_duration(bucket['time_to_positive'])}"
            if "debt" in bucket
            else f" ({time.strftime('%H:%M:%S', time.localtime(bucket['at']))})"
        )
        print(f"bucket (from {bucket['source']}): {bucket['tokens']:.0f} tokens{extra}")
    else:
        print("bucket: no upstream reply recorded yet")
    if leases:
        for lease in leases:
            print(
                f"lease {lease['name']}: fence {lease['fence']}, held by {lease['holder']}, "
                f"expires in {lease['expires_in']:.1f} s"
            )
    else:
        print(
            "leases: none held"
            + ("" if backend is not None else " (without --redis-url, leases live inside the collector process)")
        )
    for cp in data["checkpoints"]:
        print(f"checkpoint {cp['job']}: deal #{cp['position']} (fence {cp['fence']})")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise AppError(f"no database at {args.db} (run the collector first, or pass --db)")
    store = _open_store(args.db)
    backend = _backend(args.redis_url) if args.redis_url else None
    leases: Callable[[], list[LeaseView] | None] = (lambda: list_leases(backend)) if backend else (lambda: None)
    try:
        server = DashboardServer(store, leases, host=args.host, port=args.port, hours=args.hours)
    except OSError as exc:
        raise AppError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    print(f"dashboard on {server.url} (read-only; Ctrl-C stops)", flush=True)
    server.serve_forever()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    if not 2 <= args.hours <= 72:
        raise AppError(f"--hours must be between 2 and 72, got {args.hours}")
    old, new = incident.replay(args.hours, args.seed)
    laned = incident.replay_lanes(args.hours, args.seed)
    if args.json:
        print(json.dumps({"old": old.as_dict(), "tokenbucket": new.as_dict(), "lanes": laned.as_dict()}, indent=2))
    else:
        print(incident.report(old, new, laned))
    return 0


_COMMANDS = {
    "demo": cmd_demo,
    "run": cmd_run,
    "simulator": cmd_simulator,
    "status": cmd_status,
    "replay-incident": cmd_replay,
    "dashboard": cmd_dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``deals-app``; returns the exit status. No message shows the ``--redis-url`` password."""
    args = build_parser().parse_args(argv)
    url = getattr(args, "redis_url", None) or ""
    try:
        return _COMMANDS[args.command](args)
    except (AppError, TokenBucketError) as exc:
        print(redact_secret(f"deals-app: error: {exc}", url), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("deals-app: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``deals-app ... | head``): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            raise
        print(
            redact_secret(
                f"deals-app: error: unexpected {type(exc).__name__}: {exc} (run with --debug for details)", url
            ),
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
