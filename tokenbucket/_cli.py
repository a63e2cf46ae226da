"""``tokenbucket``: the operator's command line.

Buckets and leases on Redis, seen and repaired from a shell:

    tokenbucket status keepa                       # balance, debt, time to positive / full, policy
    tokenbucket watch keepa --interval 2           # the same, refreshed in place
    tokenbucket sync keepa --remaining -12         # adopt the upstream's reported balance
    tokenbucket reconfigure keepa --rate 20/minute # change the stored policy, keeping the balance
    tokenbucket locks ls                           # every lease held (SCAN, never KEYS)
    tokenbucket locks inspect backfill_deals       # who holds it, since when, until when
    tokenbucket locks break backfill_deals --expect-fence 1795872303222
    tokenbucket slots ls restrictions              # who holds a concurrency limit's slots, how many wait
    tokenbucket slots break restrictions --expect-fence 1795872303230
    tokenbucket simulate --rate 5/minute ...       # what-if, in virtual time (no Redis)

The server is ``--url`` or ``$TOKENBUCKET_REDIS_URL`` (any node of a Redis
Cluster: the command sees the whole cluster, detected from the node or forced
with ``--cluster``; no output shows the URL's password); ``--prefix`` is the
key prefix the application uses (default ``tb:``). Every read command takes
``--json``. Errors (Redis unreachable, no such lease, a fence that does not
match) print one line on stderr and exit with status 1; usage errors exit 2.

``status``, ``watch`` and ``sync`` need the bucket's policy. The Redis
backend stores the policy with the bucket's state, so an operator need not
know it; ``--rate``, ``--capacity``, ``--overdraft``, ``--min-start`` and
``--initial`` are required for a bucket that has no state in Redis (never
used, or idle and full long enough to expire). Given for a stored bucket,
they must match its policy (else `PolicyMismatch`): ``reconfigure`` is the
command that changes it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ._exceptions import ConfigurationError, LeaseError, TokenBucketError
from ._model import Policy, Snapshot
from ._rate import Rate
from ._validate import check_amount
from .backends._lease_base import LeaseInfo

__all__ = ["build_parser", "main"]

URL_ENV = "TOKENBUCKET_REDIS_URL"


class CommandError(Exception):
    """A failure to report in one line (exit status 1)."""


# ------------------------------------------------------------------ formatting


def _duration(seconds: float) -> str:
    """``0.4 s``, ``14 s``, ``3 m 20 s``, ``2 h 05 m``, ``3 d 04 h`` (whole units truncated)."""
    if math.isinf(seconds):
        return "never"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f} s"
    whole = int(s)  # truncated, never rounded up: a view never promises more time than there is
    if whole < 60:
        return f"{whole} s"
    minutes, sec = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} m {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} m"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def _rate_text(per_second: float) -> str:
    """A refill rate in the unit that reads best: ``5/minute (0.0833 tokens/s)``."""
    for unit, seconds in (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400)):
        amount = per_second * seconds
        if amount >= 1 and abs(amount - round(amount)) < 1e-6 * amount:
            return f"{round(amount):g}/{unit} ({per_second:.6g} tokens/s)"
    return f"{per_second:.6g} tokens/s"


def _number(value: float) -> str | float:
    """A JSON-safe number: infinity as the string ``"inf"``."""
    return "inf" if math.isinf(value) else value


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


# ------------------------------------------------------------------ Redis access


def _backend(args: argparse.Namespace) -> Any:
    url = args.url or os.environ.get(URL_ENV)
    if not url:
        raise CommandError(f"no Redis URL: pass --url or set {URL_ENV}")
    try:
        from .backends._redis import RedisBackend
    except ImportError as exc:  # pragma: no cover - the redis extra is missing
        raise CommandError(f"the Redis client is not installed: pip install 'tokenbucket[redis]' ({exc})") from exc
    from .backends._redis_errors import map_redis_errors, redact_secret, redact_url, unreachable

    def connect(cluster: bool) -> Any:
        try:
            return RedisBackend.from_url(
                url, prefix=args.prefix, socket_timeout=args.timeout, connect_timeout=args.timeout, cluster=cluster
            )
        except (ValueError, ConfigurationError) as exc:
            raise CommandError(redact_secret(f"bad --url {redact_url(url)!r}: {exc}", url)) from None

    if args.cluster:
        return connect(True)
    backend = connect(False)
    # A node of a Redis Cluster holds only its slots: ask, and talk to the whole cluster if it is one.
    try:
        with map_redis_errors("connecting", backend.client):
            clustered = str(backend.client.info("cluster").get("cluster_enabled", 0)) == "1"
    except TokenBucketError as exc:
        if unreachable(exc):
            raise
        clustered = False  # INFO refused (an ACL): a cluster's operators pass --cluster
    if not clustered:
        return backend
    backend.close()
    return connect(True)


def _stored_policy(backend: Any, name: str) -> dict[str, float]:
    """The policy fields stored with the bucket's state (empty when the bucket has no state)."""
    from .backends._redis import map_redis_errors, parse_state

    key = backend.bucket_keys(name)[0]
    with map_redis_errors(f"reading the policy of bucket {name!r}", backend.client):
        raw = backend.client.get(key)
    try:
        state = parse_state(raw)
    except ValueError as exc:
        raise CommandError(f"bucket {name!r}: {exc}") from exc
    policy = ("cap", "refill", "overdraft", "min_start", "initial")
    return {} if state is None else {field: state[field] for field in policy}


def _policy(backend: Any, args: argparse.Namespace) -> tuple[Policy, str]:
    """The bucket's policy: what is stored, overridden by the command's flags. Also says where it came from."""
    stored = _stored_policy(backend, args.name)
    flags = any(v is not None for v in (args.rate, args.capacity, args.overdraft, args.min_start, args.initial))
    if not stored and args.rate is None:
        raise CommandError(
            f"bucket {args.name!r} has no state in Redis (never used, or idle and full so it expired), "
            "so its policy is not known: pass --rate (and --capacity, --overdraft if they differ from the defaults)"
        )
    try:
        rate = Rate.coerce(args.rate) if args.rate is not None else Rate(stored["refill"], 1.0)
        capacity = args.capacity if args.capacity is not None else stored.get("cap")
        overdraft = args.overdraft if args.overdraft is not None else stored.get("overdraft", 0.0)
        min_start = args.min_start if args.min_start is not None else stored.get("min_start", 1.0)
        initial = args.initial if args.initial is not None else stored.get("initial")
        policy = Policy.build(rate, capacity, overdraft, min_start, initial)
    except (ConfigurationError, TypeError) as exc:
        raise CommandError(f"bad policy for bucket {args.name!r}: {exc}") from exc
    source = "stored with the bucket" if stored else "from the command line"
    if stored and flags:
        source = "stored with the bucket, overridden by the command line"
    return policy, source


def _snapshot_dict(name: str, snap: Snapshot, policy: Policy, source: str) -> dict[str, Any]:
    return {
        "name": name,
        "tokens": snap.tokens,
        "promised": snap.promised,
        "debt": snap.debt,
        "time_to_positive": snap.time_to_positive,
        "time_to_full": snap.time_to_full,
        "rate_per_second": policy.refill,
        "capacity": policy.capacity,
        "overdraft": _number(policy.overdraft),
        "min_start": policy.min_start,
        "initial": policy.initial,
        "policy": source,
    }


def _snapshot_text(name: str, snap: Snapshot, policy: Policy, source: str) -> list[str]:
    overdraft = "inf (start while the balance is positive)" if math.isinf(policy.overdraft) else f"{policy.overdraft:g}"
    return [
        f"bucket {name!r}",
        f"  balance           {snap.tokens:.2f} tokens (what a new request sees)",
        f"  promised          {snap.promised:.2f} tokens (charged to reservations not started yet)",
        f"  debt              {snap.debt:.2f} tokens",
        f"  time to positive  {_duration(snap.time_to_positive)}",
        f"  time to full      {_duration(snap.time_to_full)}",
        f"  rate              {_rate_text(policy.refill)}",
        f"  capacity          {policy.capacity:g}",
        f"  overdraft         {overdraft}",
        f"  policy            {source}",
    ]


def _emit(out: TextIO, args: argparse.Namespace, data: Any, lines: list[str]) -> None:
    if args.json:
        out.write(json.dumps(data) + "\n")
    else:
        out.write("\n".join(lines) + "\n")
    out.flush()


# ------------------------------------------------------------------ commands


def _cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    backend = _backend(args)
    try:
        policy, source = _policy(backend, args)
        snap = backend.snapshot(args.name, policy, None)
    finally:
        backend.close()
    _emit(out, args, _snapshot_dict(args.name, snap, policy, source), _snapshot_text(args.name, snap, policy, source))
    return 0


def _cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    if args.interval <= 0:
        raise CommandError("--interval must be greater than zero")
    if args.count is not None and args.count < 1:
        raise CommandError("--count must be at least 1")
    backend = _backend(args)
    in_place = out.isatty() and not args.json
    shown = 0
    drawn = 0
    try:
        while True:
            policy, source = _policy(backend, args)
            snap = backend.snapshot(args.name, policy, None)
            lines = [*_snapshot_text(args.name, snap, policy, source), f"  updated           {_when(time.time())}"]
            if in_place and drawn:
                out.write(f"\x1b[{drawn}F\x1b[J")  # back to the first line of the last view, clear below
            _emit(out, args, _snapshot_dict(args.name, snap, policy, source), lines)
            drawn = len(lines)
            shown += 1
            if args.count is not None and shown >= args.count:
                return 0
            time.sleep(args.interval)
    finally:
        backend.close()


def _cmd_sync(args: argparse.Namespace, out: TextIO) -> int:
    try:
        remaining = check_amount("--remaining", args.remaining)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from exc
    backend = _backend(args)
    try:
        policy, source = _policy(backend, args)
        snap = backend.sync(args.name, policy, remaining, None)
    finally:
        backend.close()
    lines = [f"synced bucket {args.name!r} to the upstream's {args.remaining:g} tokens"]
    lines += _snapshot_text(args.name, snap, policy, source)
    _emit(out, args, _snapshot_dict(args.name, snap, policy, source), lines)
    return 0


def _cmd_reconfigure(args: argparse.Namespace, out: TextIO) -> int:
    if all(v is None for v in (args.rate, args.capacity, args.overdraft, args.min_start, args.initial)):
        raise CommandError("say what to change: --rate, --capacity, --overdraft, --min-start or --initial")
    backend = _backend(args)
    try:
        stored = _stored_policy(backend, args.name)
        if not stored:
            raise CommandError(f"bucket {args.name!r} has no state in Redis: there is no policy to change")
        policy, _ = _policy(backend, args)
        snap = backend.reconfigure(args.name, policy, None)
    finally:
        backend.close()
    changes = [
        f"{label} {stored[field]:g} -> {new:g}"
        for label, field, new in (
            ("refill/s", "refill", policy.refill),
            ("capacity", "cap", policy.capacity),
            ("overdraft", "overdraft", policy.overdraft),
            ("initial", "initial", policy.initial),
        )
        if stored[field] != new
    ]
    lines = [
        f"reconfigured bucket {args.name!r}: {', '.join(changes) or 'no change'}; the balance carried over",
        "bucket objects built with the old policy now raise PolicyMismatch: rebuild them with the new one",
    ]
    source = "changed by this command"
    lines += _snapshot_text(args.name, snap, policy, source)
    _emit(out, args, _snapshot_dict(args.name, snap, policy, source), lines)
    return 0


def _lease_lines(info: LeaseInfo) -> list[str]:
    o = info.owner
    return [
        f"lease {info.name!r}",
        f"  fence      {info.fence}",
        f"  holder     {o.host} pid {o.pid} task={o.task}",
        f"  acquired   {_when(info.acquired)}",
        f"  renewed    {_when(info.renewed)} ({info.renewals} renewals)",
        f"  expires in {_duration(info.expires_in)}",
    ]


def _cmd_locks_ls(args: argparse.Namespace, out: TextIO) -> int:
    backend = _backend(args)
    try:
        leases = backend.lease_list()
    finally:
        backend.close()
    lines = [f"{'NAME':<24} {'FENCE':>15}  {'HOLDER':<36} {'SINCE':<19}  {'EXPIRES':>8}  RENEWALS"]
    for info in leases:
        o = info.owner
        holder = f"{o.host} pid {o.pid} task={o.task}"
        lines.append(
            f"{info.name:<24} {info.fence:>15}  {holder:<36} {_when(info.acquired):<19}  "
            f"{_duration(info.expires_in):>8}  {info.renewals}"
        )
    if not leases:
        lines = ["no leases held"]
    _emit(out, args, [info.as_dict() for info in leases], lines)
    return 0


def _cmd_locks_inspect(args: argparse.Namespace, out: TextIO) -> int:
    backend = _backend(args)
    try:
        info = backend.lease_inspect(args.name)
    finally:
        backend.close()
    if info is None:
        raise CommandError(f"lease {args.name!r} is not held by anyone (no such lease)")
    _emit(out, args, info.as_dict(), _lease_lines(info))
    return 0


def _cmd_locks_break(args: argparse.Namespace, out: TextIO) -> int:
    backend = _backend(args)
    try:
        ok, info = backend.lease_break(args.name, args.expect_fence)
    finally:
        backend.close()
    if info is None:
        raise CommandError(f"lease {args.name!r} is not held by anyone; nothing to break")
    if not ok:
        raise CommandError(
            f"refusing to break lease {args.name!r}: its fence is {info.fence}, not {args.expect_fence} "
            f"(it is {info.describe()}); inspect it again"
        )
    lines = [f"broke lease {args.name!r} (fence {info.fence}), {info.describe()}; waiters were woken"]
    _emit(out, args, {"broken": True, **info.as_dict()}, lines)
    return 0


def _cmd_slots_ls(args: argparse.Namespace, out: TextIO) -> int:
    backend = _backend(args)
    try:
        found = backend.slot_inspect(args.name)
    finally:
        backend.close()
    if found.limit == 0:
        lines = [f"concurrency limit {args.name!r}: no slot held, nobody waiting"]
    else:
        lines = [
            f"concurrency limit {args.name!r}: {len(found.holders)} of {found.limit} slots held, "
            f"{found.waiting} waiting",
            f"{'FENCE':>15}  {'HOLDER':<36} {'SINCE':<19}  {'EXPIRES':>8}  RENEWALS",
        ]
        for info in found.holders:
            o = info.owner
            holder = f"{o.host} pid {o.pid} task={o.task}"
            lines.append(
                f"{info.fence:>15}  {holder:<36} {_when(info.acquired):<19}  "
                f"{_duration(info.expires_in):>8}  {info.renewals}"
            )
    _emit(out, args, found.as_dict(), lines)
    return 0


def _cmd_slots_break(args: argparse.Namespace, out: TextIO) -> int:
    backend = _backend(args)
    try:
        ok, info = backend.slot_break(args.name, args.expect_fence)
    finally:
        backend.close()
    if not ok or info is None:
        raise CommandError(
            f"concurrency limit {args.name!r} has no slot with fence {args.expect_fence}; nothing was broken "
            "(run slots ls again)"
        )
    lines = [f"broke the slot of {args.name!r} with fence {info.fence}, {info.describe()}; waiters were woken"]
    _emit(out, args, {"broken": True, **info.as_dict()}, lines)
    return 0


# ------------------------------------------------------------------ parser


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help=f"the Redis URL (default: ${URL_ENV})")
    common.add_argument("--prefix", default="tb:", help="the key prefix the application uses (default: tb:)")
    common.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for Redis (default: 3)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument(
        "--cluster",
        action="store_true",
        help="the URL names a node of a Redis Cluster (detected by itself when the node says so)",
    )
    return common


def _policy_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policy (overrides what is stored with the bucket)")
    group.add_argument("--rate", default=None, help="refill rate, e.g. 5/minute")
    group.add_argument("--capacity", type=float, default=None, help="most tokens held")
    group.add_argument("--overdraft", type=float, default=None, help="how far below zero a call may start (inf)")
    group.add_argument("--min-start", type=float, default=None, help="balance needed to start, with an overdraft")
    group.add_argument("--initial", type=float, default=None, help="balance of a new or lost bucket")


def build_parser() -> argparse.ArgumentParser:
    """The ``tokenbucket`` parser (status, watch, sync, reconfigure, locks, slots, simulate)."""
    parser = argparse.ArgumentParser(
        prog="tokenbucket", description="Inspect and repair tokenbucket buckets and leases on Redis."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _connection_options()

    status = commands.add_parser("status", parents=[common], help="a bucket's balance, debt and policy")
    status.add_argument("name", help="the bucket's name")
    _policy_options(status)
    status.set_defaults(handler=_cmd_status)

    watch = commands.add_parser("watch", parents=[common], help="status, refreshed in place")
    watch.add_argument("name", help="the bucket's name")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)")
    watch.add_argument("--count", type=int, default=None, help="stop after this many refreshes")
    _policy_options(watch)
    watch.set_defaults(handler=_cmd_watch)

    sync = commands.add_parser("sync", parents=[common], help="adopt the balance the upstream reports")
    sync.add_argument("name", help="the bucket's name")
    sync.add_argument("--remaining", type=float, required=True, help="the upstream's balance (may be negative)")
    _policy_options(sync)
    sync.set_defaults(handler=_cmd_sync)

    reconfigure = commands.add_parser(
        "reconfigure", parents=[common], help="change a live bucket's policy, carrying the balance over"
    )
    reconfigure.add_argument("name", help="the bucket's name")
    _policy_options(reconfigure)
    reconfigure.set_defaults(handler=_cmd_reconfigure)

    locks = commands.add_parser("locks", help="leases: ls, inspect, break")
    lock_commands = locks.add_subparsers(dest="locks_command", required=True, metavar="LOCKS_COMMAND")
    ls = lock_commands.add_parser("ls", parents=[common], help="every lease held (SCAN, never KEYS)")
    ls.set_defaults(handler=_cmd_locks_ls)
    inspect = lock_commands.add_parser("inspect", parents=[common], help="who holds a lease, since when")
    inspect.add_argument("name", help="the lease's name")
    inspect.set_defaults(handler=_cmd_locks_inspect)
    brk = lock_commands.add_parser(
        "break", parents=[common], help="remove a lease, only if its fence is the one you inspected"
    )
    brk.add_argument("name", help="the lease's name")
    brk.add_argument("--expect-fence", type=int, required=True, help="the fence shown by inspect")
    brk.set_defaults(handler=_cmd_locks_break)

    slots = commands.add_parser("slots", help="concurrency limits: ls, break")
    slot_commands = slots.add_subparsers(dest="slots_command", required=True, metavar="SLOTS_COMMAND")
    sls = slot_commands.add_parser("ls", parents=[common], help="who holds the slots of a limit, how many wait")
    sls.add_argument("name", help="the concurrency limit's name")
    sls.set_defaults(handler=_cmd_slots_ls)
    sbrk = slot_commands.add_parser(
        "break", parents=[common], help="free one slot, only if its fence is the one ls showed"
    )
    sbrk.add_argument("name", help="the concurrency limit's name")
    sbrk.add_argument("--expect-fence", type=int, required=True, help="the fence shown by slots ls")
    sbrk.set_defaults(handler=_cmd_slots_break)

    simulate = _simulate_module()
    if simulate is not None:
        sim = commands.add_parser("simulate", help="what-if: jobs sharing a bucket, in virtual time (no Redis)")
        simulate.configure_parser(sim)
        sim.set_defaults(handler=lambda args, out: simulate.run(args))
    return parser


def _simulate_module() -> Any:
    """``tokenbucket._simulate`` if it is present and importable, else None (the subcommand is left out)."""
    if importlib.util.find_spec("tokenbucket._simulate") is None:
        return None
    try:
        return importlib.import_module("tokenbucket._simulate")
    except ImportError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tokenbucket`` command; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args, sys.stdout)
        return status
    except (CommandError, TokenBucketError, LeaseError) as exc:
        message = f"tokenbucket: error: {exc}"
        url = getattr(args, "url", None) or os.environ.get(URL_ENV)
        if url:  # whatever a lower layer echoed, the password never reaches the screen
            from .backends._redis_errors import redact_secret

            message = redact_secret(message, url)
        print(message, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
