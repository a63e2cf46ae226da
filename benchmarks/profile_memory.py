"""Where the time of ``TokenBucket.try_acquire(1)`` on `MemoryBackend` goes.

Prints two views: cProfile's own-time table, and a breakdown by subtraction
(each layer timed alone with ``timeit``, best of several repeats), next to
token-bucket's ``Limiter.consume`` when it is installed.

Run: ``benchmarks/.venv/bin/python -m benchmarks.profile_memory [--calls 200000]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import threading
import time
import timeit
from collections.abc import Callable
from functools import partial

from tokenbucket import Grant, MemoryBackend, Rate, TokenBucket
from tokenbucket._model import try_take

from ._harness import PeerMissing, peer
from .sections import HUGE

__all__ = ["main"]


def _ns(call: Callable[[], object], number: int) -> float:
    """Nanoseconds per call: the best of seven repeats (the least disturbed by other work)."""
    return min(timeit.repeat(call, number=number, repeat=7)) / number * 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_memory", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args(argv)
    n: int = args.calls
    bucket = TokenBucket("profile", rate=Rate(HUGE), backend=MemoryBackend())
    assert bucket.try_acquire(1) is not None
    backend: MemoryBackend = bucket._backend  # type: ignore[assignment]
    policy = bucket.policy
    lock = threading.Lock()

    def with_lock() -> None:
        with lock:
            pass

    rows: list[tuple[str, Callable[[], object]]] = [
        ("TokenBucket.try_acquire(1)", partial(bucket.try_acquire, 1)),
        ("  MemoryBackend.reserve(...)", partial(backend.reserve, "profile", policy, 1, 0.0, time.monotonic())),
        ("    _model.try_take(...)", partial(try_take, 5.0, 1.0, 2.0, 1, policy)),
        ("    with threading.Lock(): pass", with_lock),
        ("  Grant(bucket, 1, 0.0)", partial(Grant, bucket, 1, 0.0)),
        ("  bucket._stamp() (time.monotonic)", bucket._stamp),
    ]
    try:
        tb: object = peer("token_bucket")
        limiter = tb.Limiter(HUGE, int(HUGE), tb.MemoryStorage())  # type: ignore[attr-defined]
        rows.append(("token-bucket Limiter.consume (no lock)", partial(limiter.consume, "k", 1)))
    except PeerMissing:
        rows.append(("token-bucket Limiter.consume", lambda: None))
    print(f"{'layer':45s} ns/call")
    for label, call in rows:
        print(f"{label:45s} {_ns(call, n):7.0f}")

    profile = cProfile.Profile()
    call = bucket.try_acquire
    profile.enable()
    for _ in range(n):
        call(1)
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(10)
    print(out.getvalue())


if __name__ == "__main__":
    main()
