"""Private redis-server processes for the tests: a single server, and a three-master cluster.

Tests never touch a shared Redis. `RedisServer` runs ``redis-server --port <free> --save ""
--appendonly no`` in a temporary folder (through pytest-redis's ``RedisExecutor``, which builds
the command line and waits for the port) and adds what fault tests need: `RedisServer.kill`
(SIGKILL, the data is gone) and `RedisServer.restart` on the same port. `RedisClusterServers`
starts three ``--cluster-enabled yes`` nodes and joins them with ``redis-cli --cluster create``.

Every process is also killed when the Python process exits (mirakuru's exit hook), so an
interrupted run leaves nothing behind.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
import redis.cluster
from mirakuru import TCPExecutor
from mirakuru.exceptions import AlreadyRunning, ProcessExitedWithError, TimeoutExpired
from pytest_redis.executor import RedisExecutor

__all__ = ["RedisClusterServers", "RedisServer", "free_port", "keys_without_ttl"]

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
STARTUP_TIMEOUT = 30


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as redis-server does: TIME_WAIT is fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, also_free: int | None = None) -> int:
    """A TCP port nobody listens on (and ``port + also_free`` too, for a cluster bus)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 45000)
        if _port_is_free(port) and (also_free is None or _port_is_free(port + also_free)):
            return port
    raise RuntimeError("no free TCP port found")


def _owned_by(port: int, pid: int) -> bool:
    """Whether the server answering on ``port`` is process ``pid`` (not another run's server)."""
    client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        return int(client.info("server")["process_id"]) == pid
    except redis.RedisError:
        return False
    finally:
        client.close()


def _cluster_ok(info: Any) -> bool:
    """Whether a CLUSTER INFO reply (parsed to a dict by redis-py, or raw) says ``cluster_state:ok``."""
    if isinstance(info, dict):
        return str(info.get("cluster_state")) == "ok"
    return b"cluster_state:ok" in info


def keys_without_ttl(client: redis.Redis | redis.cluster.RedisCluster, match: str = "*") -> list[bytes]:
    """Every key (SCAN, never KEYS) that has no expiry."""
    found = []
    for key in client.scan_iter(match=match, count=1000):
        if client.pttl(key) == -1:
            found.append(key)
    return found


class RedisServer:
    """One private ``redis-server`` with persistence off, on a free port, in its own folder.

    Attributes:
        port: The TCP port (kept across `restart`).
        host: Always ``127.0.0.1``.
        directory: The server's working folder (log, socket).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = 0
        self._executor: RedisExecutor | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        ex = self._executor
        return ex.process.pid if ex is not None and ex.process is not None else None

    def _executor_for(self, port: int) -> RedisExecutor:
        return RedisExecutor(
            executable=REDIS_SERVER,
            databases=16,
            redis_timeout=0,
            loglevel="warning",
            host=self.host,
            port=port,
            save='""',  # one argument, `--save ""`: no RDB snapshots
            appendonly="no",
            startup_timeout=STARTUP_TIMEOUT,
            datadir=self.directory,
        )

    def start(self) -> RedisServer:
        """Start the server (on a new free port the first time, on the same port after that).

        Returns once it answers PING and is verified to be this process.
        """
        attempts = 1 if self.port else 5
        for _ in range(attempts):
            port = self.port or free_port()
            executor = self._executor_for(port)
            try:
                executor.start()
            except (AlreadyRunning, ProcessExitedWithError, TimeoutExpired):
                executor.kill()
                if attempts == 1:
                    raise
                continue
            if executor.process is not None and _owned_by(port, executor.process.pid):
                self._executor = executor
                self.port = port
                return self
            executor.kill()
            if attempts == 1:
                raise RuntimeError(f"port {port} is served by another redis-server")
        raise RuntimeError("could not start a private redis-server")

    def running(self) -> bool:
        """Whether the process is alive."""
        return self._executor is not None and self._executor.running()

    def kill(self) -> None:
        """SIGKILL the server: it stops at once and its data is gone."""
        if self._executor is not None:
            self._executor.kill()

    def stop(self) -> None:
        """Stop the server with SIGTERM (no data is saved: persistence is off)."""
        if self._executor is not None and self._executor.running():
            self._executor.stop()

    def restart(self) -> RedisServer:
        """Kill the server if it runs and start it again, empty, on the same port."""
        self.kill()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _port_is_free(self.port):  # the old socket may linger for a moment
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} did not become free")
            time.sleep(0.05)
        return self.start()

    def client(self, **options: Any) -> redis.Redis:
        """A new synchronous client to this server (the caller closes it)."""
        options.setdefault("socket_timeout", 5)
        options.setdefault("socket_connect_timeout", 2)
        return redis.Redis(host=self.host, port=self.port, **options)

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, running={self.running()})"


class RedisClusterServers:
    """Three private ``redis-server --cluster-enabled yes`` masters joined into one cluster (no replicas).

    Attributes:
        ports: The nodes' ports.
        host: Always ``127.0.0.1``.
    """

    size = 3

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.ports: list[int] = []
        self._executors: list[TCPExecutor] = []

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>`` of the first node (a cluster client finds the others)."""
        return f"redis://{self.host}:{self.ports[0]}"

    @property
    def pids(self) -> list[int]:
        """The nodes' process ids, in the order of `ports` (to SIGSTOP one and SIGCONT it)."""
        return [e.process.pid for e in self._executors if e.process is not None]

    @property
    def startup_nodes(self) -> list[redis.cluster.ClusterNode]:
        """Every node, for ``redis.cluster.RedisCluster(startup_nodes=...)``."""
        return [redis.cluster.ClusterNode(self.host, port) for port in self.ports]

    def start(self) -> RedisClusterServers:
        """Start the nodes, create the cluster and wait until every node reports ``cluster_state:ok``."""
        try:
            for _ in range(self.size):
                self._start_node()
            subprocess.run(
                [REDIS_CLI, "--cluster", "create", *(f"{self.host}:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=STARTUP_TIMEOUT,
            )
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self) -> None:
        for _ in range(5):
            port = free_port(also_free=10000)  # the cluster bus listens on port + 10000
            folder = self.directory / str(port)
            folder.mkdir(exist_ok=True)
            executor = TCPExecutor(
                [REDIS_SERVER, "--port", str(port), "--bind", self.host, "--save", "", "--appendonly", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-node-timeout", "5000", "--dir", str(folder),
                 "--logfile", str(folder / "redis.log")],
                host=self.host,
                port=port,
                timeout=STARTUP_TIMEOUT,
            )
            try:
                executor.start()
            except (AlreadyRunning, ProcessExitedWithError, TimeoutExpired):
                executor.kill()
                continue
            if executor.process is not None and _owned_by(port, executor.process.pid):
                self._executors.append(executor)
                self.ports.append(port)
                return
            executor.kill()
        raise RuntimeError("could not start a cluster node")

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for port in self.ports:
            client = redis.Redis(host=self.host, port=port, socket_timeout=2)
            try:
                while not _cluster_ok(client.execute_command("CLUSTER INFO")):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node {port} is not ready")
                    time.sleep(0.05)
            finally:
                client.close()

    def client(self, **options: Any) -> redis.cluster.RedisCluster:
        """A new synchronous cluster client (the caller closes it)."""
        options.setdefault("socket_timeout", 5)
        return redis.cluster.RedisCluster(startup_nodes=self.startup_nodes, **options)

    def stop(self) -> None:
        """Kill every node."""
        for executor in self._executors:
            executor.kill()
        self._executors.clear()

    def __repr__(self) -> str:
        return f"RedisClusterServers(ports={self.ports})"


SECRET = "s3cr3t-pw"
"""The password of the ``locked_redis_server`` fixture."""


def secret_urls(port: int, secret: str = SECRET) -> list[str]:
    """Redis URLs that carry ``secret`` as a password, in every form a user may type, each failing somehow.

    For tests that no output shows the password: ``port`` is a server with ``requirepass`` set.
    """
    return [
        f"redis://:wrong-{secret}@127.0.0.1:{port}/0",  # wrong password
        f"redis://default:wrong-{secret}@127.0.0.1:{port}/0",  # wrong password, with a user
        f"redis://127.0.0.1:{port}/0",  # no password, server wants one
        f"redis://:{secret}@127.0.0.1:{free_port()}/0",  # server down
        f"redis://:{secret}@127.0.0.1:notaport/0",  # bad port
        f"redis://:{secret}@127.0.0.1:99999/0",  # port out of range
        f"http://:{secret}@127.0.0.1:{port}/0",  # unknown scheme
        f"{secret}@127.0.0.1:{port}",  # no scheme
        f"redis://{secret}@127.0.0.1:{port}/0",  # lone userinfo
    ]
