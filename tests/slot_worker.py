"""A concurrency-limit slot holder run as a separate process by tests/test_concurrency_limit.py.

Usage: python tests/slot_worker.py MODE URL PREFIX NAME LIMIT TTL [extra...]

Modes (each prints JSON lines on stdout, flushed, for the test to read):
  hold     take a slot, print {"fence": N}, then keep running (the heartbeat renews) until killed.
  stale    take a slot, print {"fence": N}, wait for a line on stdin, then report whether
           ensure_held() raised: {"ensure_held": "..."}.
  contend  extra = ROUNDS LEDGER: ROUNDS times, take a slot (waiting), append "enter"/"exit"
           lines with the monotonic time, pid and fence to LEDGER around a short critical section.
"""

from __future__ import annotations

import json
import os
import sys
import time

from tokenbucket import ConcurrencyLimit, LeaseLost, RedisBackend


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    mode, url, prefix, name, limit_text, ttl_text, *extra = sys.argv[1:]
    backend = RedisBackend.from_url(url, prefix=prefix)
    limit = ConcurrencyLimit(name, limit=int(limit_text), ttl=float(ttl_text), backend=backend, task=mode)
    if mode == "hold":
        slot = limit.acquire(timeout=30)  # kept: a dropped handle would let the slot lapse
        say(fence=slot.fence)
        while True:
            time.sleep(1)
    elif mode == "stale":
        slot = limit.acquire(timeout=30)
        say(fence=slot.fence)
        sys.stdin.readline()
        try:
            slot.ensure_held()
            held = "held"
        except LeaseLost as exc:
            held = f"LeaseLost: {exc}"
        say(ensure_held=held)
    elif mode == "contend":
        rounds, ledger = int(extra[0]), extra[1]
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        for _ in range(rounds):
            with limit.slot(timeout=60) as slot:
                os.write(fd, f"enter {time.monotonic():.6f} {os.getpid()} {slot.fence}\n".encode())
                time.sleep(0.02)
                slot.ensure_held()
                os.write(fd, f"exit {time.monotonic():.6f} {os.getpid()} {slot.fence}\n".encode())
        os.close(fd)
        say(done=rounds)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
