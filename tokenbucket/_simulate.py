"""What-if simulation: several jobs sharing one bucket, in virtual time.

`simulate` runs the real library (a `tokenbucket.TokenBucket` on a
`tokenbucket.MemoryBackend`, driven by a `tokenbucket.testing.ManualClock`), so
the figures are what the library would really do, not a re-implementation.
Hours of traffic take milliseconds.

Each job makes calls of one batch each. A run of the job arrives every N
seconds (``every=``), at random with a mean gap (``poisson=``, seeded), or
again as soon as the previous call started (``continuous``). A normal job
waits its turn (first-come first-served, ``reserve`` then ``wait``). A
**legacy gate** job (``gate=20``) does what the incident's code did:

    if not has_enough_tokens(20): return   # abort the run; never wait

and a **ghost lock** (``ghost_lock=T``) makes every run of a job from time T
on find its lock held by a holder that crashed and never expires (give
``lock_ttl=`` to see a lease with a TTL recover instead).

Reproduce the incident (a legacy gated deals job starved by a products job
that asks Keepa for 50 ASINs × 20 tokens at a time, plus a job behind a ghost
lock) with one command:

    tokenbucket simulate --rate 5/minute --capacity 300 --overdraft inf --duration 6h \\
        --job "products:cost=20,batch=50,continuous" \\
        --job "deals:cost=5,every=5m,gate=20" \\
        --job "backfill:cost=20,batch=5,every=1h,ghost_lock=3h"

(``python -m tokenbucket._simulate`` takes the same arguments.) The table shows
the deals job never running (73 runs aborted by the gate) while the products
job makes a call every 3 h 20 min and keeps the balance at or below zero all
but 24 seconds of the 6 hours: its first 1000-token call takes the full bucket
of 300 to -700, the second, started at a balance of 1, to -999 (the peak). The
backfill job runs once, loses the two runs still waiting at 3 h to the crash,
and every later run finds the ghost lock. ``--plot incident.png`` draws it. To
compare with the fix, drop ``gate=20`` (wait your turn), use ``batch=planner``
and add ``lock_ttl=90s``: every job then runs, and the table shows the waits
first-come first-served costs when a continuous job keeps the bucket busy.

Job specification (``--job``): ``NAME:key=value,...`` with keys

* ``cost`` (tokens per unit, default 1); ``batch`` (units per call: a number,
  ``planner`` for `tokenbucket.BatchPlanner`, or ``fit`` for the largest batch a
  full bucket pays for); ``max_batch`` (the upstream's limit per call, default 100);
* ``continuous`` (default), ``every=DURATION``, or ``poisson=MEAN_DURATION``;
  ``start=DURATION`` delays the first run; ``retry=DURATION`` is how soon a
  continuous job tries again after a skipped run (default 60 s);
* ``gate=TOKENS`` (legacy gate), ``ghost_lock=TIME``, ``lock_ttl=DURATION``;
* ``timeout=DURATION`` (a waiting job gives up a run that would wait longer);
* ``call_seconds=DURATION`` (how long a call takes; default 0);
* ``noise=FRACTION`` (the upstream charges the estimate × a uniform factor in
  ``[1 - noise, 1 + noise]``, rounded to whole tokens; default ``--noise``).

Durations are seconds or take a unit: ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ._exceptions import ConfigurationError
from ._simulation import JobResult, JobSpec, SimulationResult, parse_duration, plot, simulate

__all__ = [
    "JobResult",
    "JobSpec",
    "SimulationResult",
    "configure_parser",
    "main",
    "parse_duration",
    "plot",
    "run",
    "simulate",
]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` arguments to ``parser`` (used by the ``tokenbucket`` CLI)."""
    parser.description = "What-if: run jobs against one bucket in virtual time and report who starves."
    parser.epilog = (
        'job syntax: NAME:key=value,... e.g. "deals:cost=5,every=60,gate=20"; keys: cost, batch (N, planner, '
        "fit), max_batch, continuous, every, poisson, start, retry, gate, ghost_lock, lock_ttl, timeout, "
        "call_seconds, noise, lane (with --lane). Durations: 90s, 15m, 2h, 1d. Exit status: 0, 1 when a job "
        "starved, 2 on a bad configuration."
    )
    parser.add_argument("--rate", required=True, help="refill rate, e.g. 5/minute")
    parser.add_argument("--capacity", type=float, default=None, help="most tokens held (default: the rate's amount)")
    parser.add_argument("--overdraft", type=float, default=0.0, help="how far below zero a call may start (inf: Keepa)")
    parser.add_argument("--min-start", type=float, default=1.0, help="balance needed to start, with an overdraft")
    parser.add_argument("--initial", type=float, default=None, help="starting balance (default: full)")
    parser.add_argument("--duration", required=True, help="how long to simulate, e.g. 6h")
    parser.add_argument("--job", action="append", default=[], metavar="SPEC", help="a job (repeatable)")
    parser.add_argument(
        "--lane",
        action="append",
        default=[],
        metavar="NAME=TOKENS",
        help="a priority lane and the tokens held back from it, e.g. bulk=400 (repeatable); jobs name it: lane=bulk",
    )
    parser.add_argument("--noise", type=float, default=0.0, help="relative upstream cost noise, e.g. 0.2")
    parser.add_argument("--seed", type=int, default=0, help="random seed (noise, poisson arrivals)")
    parser.add_argument("--stall-after", default=None, help="flag jobs waiting longer (default: 3 × fill time)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--series", action="store_true", help="with --json, include the balance and progress series")
    parser.add_argument("--plot", metavar="FILE", default=None, help="draw the balance and progress to FILE.png|svg")


def _lanes(items: Sequence[str]) -> dict[str, float] | None:
    """``["urgent=0", "bulk=400"]`` as a lanes mapping; None for none."""
    lanes: dict[str, float] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        try:
            if not eq:
                raise ValueError(item)
            lanes[name.strip()] = float(raw)
        except ValueError:
            raise ConfigurationError(f"--lane {item!r}: give NAME=TOKENS, e.g. bulk=400") from None
    return lanes or None


def run(args: argparse.Namespace) -> int:
    """Run the simulation the parsed ``args`` describe; print the table or JSON.

    Returns:
        0 when no job starved, 1 when some job starved, 2 on a configuration error.
    """
    try:
        lanes = _lanes(args.lane)
        result = simulate(
            args.rate,
            args.job,
            duration=args.duration,
            capacity=args.capacity,
            overdraft=args.overdraft,
            min_start=args.min_start,
            initial=args.initial,
            noise=args.noise,
            seed=args.seed,
            stall_after=args.stall_after,
            lanes=lanes,
        )
        if args.plot:
            plot(result, args.plot)
    except (ConfigurationError, ImportError) as exc:
        print(f"tokenbucket simulate: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(series=args.series), indent=2))
    else:
        print(result.table())
        if args.plot:
            print(f"plot written to {args.plot}")
    return 1 if result.starved else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tokenbucket._simulate ...``: the same as ``tokenbucket simulate ...``."""
    parser = argparse.ArgumentParser(prog="tokenbucket simulate")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
