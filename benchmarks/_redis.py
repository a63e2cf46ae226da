"""A private redis-server for the benchmarks, and counting what an operation costs it.

The benchmarks never touch a shared server: `private_redis` starts
``redis-server --port <free> --save '' --appendonly no`` in a temporary
directory and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["RedisUnavailable", "count_commands", "free_port", "private_redis", "redis_backend_classes"]


class RedisUnavailable(Exception):
    """Redis (the server, the client, or our RedisBackend) cannot be used here; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Start a private redis-server and yield its URL; stop it on exit.

    Raises:
        RedisUnavailable: no ``redis-server`` on PATH, no redis-py, or it did not start.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise RedisUnavailable("redis-server not found on PATH")
    try:
        import redis
    except ImportError as exc:
        raise RedisUnavailable("redis-py not installed") from exc
    with tempfile.TemporaryDirectory(prefix="tb-bench-redis-") as tmp:
        port = free_port()
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(host="127.0.0.1", port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RedisUnavailable(f"redis-server did not start on port {port}") from None
                    time.sleep(0.02)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def redis_backend_classes() -> tuple[Any, Any]:
    """Our sync RedisBackend class and the asyncio one (which may be the same class).

    Raises:
        RedisUnavailable: tokenbucket has no RedisBackend yet (or redis-py is missing).
    """
    try:
        import tokenbucket
    except ImportError as exc:  # pragma: no cover - the project is always installed
        raise RedisUnavailable(f"tokenbucket not importable: {exc}") from exc
    sync_cls = getattr(tokenbucket, "RedisBackend", None)
    if sync_cls is None:
        raise RedisUnavailable("tokenbucket.RedisBackend is not available in this checkout")
    async_cls = getattr(tokenbucket, "AsyncRedisBackend", sync_cls)
    return sync_cls, async_cls


def _server_calls(client: Any) -> dict[str, tuple[int, int]]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in stats.items()}


def count_commands(url: str, op: Callable[[], object], n: int) -> tuple[float, float, str, float]:
    """Run ``op`` ``n`` times and count what it cost the server.

    Returns:
        ``(round_trips, commands, breakdown, server_us)`` per call: round trips
        counted on the client (packed sends of redis-py connections, so a
        pipeline is one), commands from ``INFO commandstats`` deltas (commands
        run inside a Lua script count too), the per-command breakdown as text,
        and the server's microseconds: a script's own time (which includes the
        commands it runs) plus the time of the commands sent directly.
    """
    import redis
    from redis.connection import AbstractConnection

    admin = redis.Redis.from_url(url)
    sends = 0
    original: Callable[..., None] = AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        original(self, command, check_health)

    try:
        before = _server_calls(admin)
        AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        try:
            for _ in range(n):
                op()
        finally:
            AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
        after = _server_calls(admin)
    finally:
        admin.close()
    delta = {
        k: (calls - before.get(k, (0, 0))[0], usec - before.get(k, (0, 0))[1])
        for k, (calls, usec) in after.items()
        if k != "info" and calls != before.get(k, (0, 0))[0]
    }
    total = sum(calls for calls, _ in delta.values()) / n
    parts = ", ".join(f"{k} {c / n:g}" for k, (c, _) in sorted(delta.items(), key=lambda kv: (-kv[1][0], kv[0])))
    scripted = {k for k in delta if k.startswith(("eval", "fcall"))}
    if scripted:  # a script's time includes its inner commands; count the direct ones by round trips
        usec = sum(delta[k][1] for k in scripted)
        direct = sends - sum(delta[k][0] for k in scripted)
        usec += sum(u for k, (c, u) in delta.items() if k not in scripted and c <= direct)
    else:
        usec = sum(u for _, u in delta.values())
    return sends / n, total, parts, usec / n
