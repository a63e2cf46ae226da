"""A lease holder run as a separate process by tests/test_lease_redis.py.

Usage: python tests/lease_worker.py MODE URL PREFIX NAME TTL [extra...]

Modes (each prints JSON lines on stdout, flushed, for the test to read):
  hold     acquire, print {"fence": N}, then keep running (the heartbeat renews) until killed.
  stale    acquire, print {"fence": N}, then wait for a line on stdin; then report whether
           ensure_held() raised LeaseLost and whether a fenced SQLite write (extra[0] = db path)
           was refused: {"ensure_held": "...", "write": "..."}.
  hang     acquire with require_beat=True, print {"fence": N}, then hang without beating.
  contend  extra = ROUNDS LEDGER: ROUNDS times, take the lease (waiting), append "start" and
           "end" lines with pid and fence to LEDGER around a short critical section.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

from tokenbucket import LeaseLock, LeaseLost, RedisBackend
from tokenbucket.fencing import fenced_execute


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    mode, url, prefix, name, ttl_text, *extra = sys.argv[1:]
    ttl = float(ttl_text)
    backend = RedisBackend.from_url(url, prefix=prefix)
    if mode == "hold":
        lease = LeaseLock(name, ttl=ttl, backend=backend, task="hold").acquire(timeout=30)
        say(fence=lease.fence)
        while True:
            time.sleep(1)
    elif mode == "stale":
        lease = LeaseLock(name, ttl=ttl, backend=backend, task="stale").acquire(timeout=30)
        say(fence=lease.fence)
        sys.stdin.readline()
        try:
            lease.ensure_held()
            held = "held"
        except LeaseLost as exc:
            held = f"LeaseLost: {exc}"
        conn = sqlite3.connect(extra[0])
        try:
            fenced_execute(conn, "deals", lease.fence, "INSERT INTO deals (writer) VALUES (?)", ("stale",))
            wrote = "written"
        except LeaseLost as exc:
            wrote = f"refused: {exc}"
        say(ensure_held=held, write=wrote)
    elif mode == "hang":
        lease = LeaseLock(name, ttl=ttl, backend=backend, task="hang", require_beat=True).acquire(timeout=30)
        say(fence=lease.fence)
        time.sleep(600)  # the main thread hangs; the heartbeat thread is alive but sees no beat
    elif mode == "contend":
        rounds, ledger = int(extra[0]), extra[1]
        lock = LeaseLock(name, ttl=ttl, backend=backend, task="contend")
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        for _ in range(rounds):
            with lock as lease:
                os.write(fd, f"start {os.getpid()} {lease.fence}\n".encode())
                time.sleep(0.01)
                lease.ensure_held()
                os.write(fd, f"end {os.getpid()} {lease.fence}\n".encode())
        os.close(fd)
        say(done=rounds)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
