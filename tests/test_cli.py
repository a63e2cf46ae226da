"""The ``tokenbucket`` command, run as a subprocess against a private redis-server."""

from __future__ import annotations

import json
import math
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
from redis_servers import RedisClusterServers, RedisServer, free_port

from tokenbucket import LeaseLock, PolicyMismatch, RedisBackend, TokenBucket
from tokenbucket._cli import main

pytestmark = pytest.mark.redis

ROOT = Path(__file__).parent.parent


def tb(*args: str, url: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tokenbucket ARGS`` (the console script's code) and capture its output."""
    full_env = {k: v for k, v in os.environ.items() if k != "TOKENBUCKET_REDIS_URL"}
    full_env.update(env or {})
    command = [sys.executable, "-m", "tokenbucket", *args]
    if url is not None:
        command += ["--url", url]
    return subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=60)


def ok_json(*args: str, url: str, prefix: str) -> Any:
    result = tb(*args, "--prefix", prefix, "--json", url=url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # one line, never a traceback
    assert lines[0].startswith("tokenbucket: error: ")
    return lines[0]


@pytest.fixture
def backend(redis_server: RedisServer, redis_prefix: str) -> Iterator[RedisBackend]:
    b = RedisBackend.from_url(redis_server.url, prefix=redis_prefix)
    yield b
    b.close()


def test_console_script_is_declared() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"tokenbucket": "tokenbucket._cli:main"}


class TestLocks:
    def test_ls_inspect_and_break_with_the_expected_fence(
        self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str
    ) -> None:
        url = redis_server.url
        assert ok_json("locks", "ls", url=url, prefix=redis_prefix) == []
        lease = LeaseLock("backfill_deals", ttl=300, backend=backend, task="backfill", heartbeat=False).acquire()
        other = LeaseLock("nightly", ttl=300, backend=backend, heartbeat=False).acquire()

        listed = ok_json("locks", "ls", url=url, prefix=redis_prefix)
        assert [(e["name"], e["fence"]) for e in listed] == [
            ("backfill_deals", lease.fence),
            ("nightly", other.fence),
        ]
        seen = ok_json("locks", "inspect", "backfill_deals", url=url, prefix=redis_prefix)
        assert seen["task"] == "backfill"
        assert seen["pid"] == os.getpid()
        assert 0 < seen["expires_in"] <= 300

        wrong = str(lease.fence - 1)
        refused = tb("locks", "break", "backfill_deals", "--expect-fence", wrong, "--prefix", redis_prefix, url=url)
        line = one_error_line(refused)
        assert f"its fence is {lease.fence}, not {lease.fence - 1}" in line
        assert backend.lease_inspect("backfill_deals") is not None

        broken = ok_json(
            "locks", "break", "backfill_deals", "--expect-fence", str(lease.fence), url=url, prefix=redis_prefix
        )
        assert broken["broken"] is True
        assert broken["fence"] == lease.fence
        assert backend.lease_inspect("backfill_deals") is None
        assert backend.lease_wait("backfill_deals", 0.01) is True  # the break signalled waiters

        gone = tb("locks", "inspect", "backfill_deals", "--prefix", redis_prefix, url=url)
        assert "not held by anyone" in one_error_line(gone)
        text = tb("locks", "ls", "--prefix", redis_prefix, url=url)
        assert text.returncode == 0
        assert "nightly" in text.stdout
        assert f"task={other.info.owner.task}" in text.stdout
        other.release()

    def test_url_from_the_environment_and_errors_in_one_line(self, redis_server: RedisServer) -> None:
        env = {"TOKENBUCKET_REDIS_URL": redis_server.url}
        assert tb("locks", "ls", "--json", "--prefix", "nobody-uses-this:", env=env).stdout.strip() == "[]"
        assert "no Redis URL" in one_error_line(tb("locks", "ls"))
        down = tb("locks", "ls", "--timeout", "1", url=f"redis://127.0.0.1:{free_port()}/0")
        assert "Redis failed during connecting at redis://127.0.0.1:" in one_error_line(down)
        assert "Connection refused" in down.stderr
        usage = tb("locks", "break", "x", url=redis_server.url)
        assert usage.returncode == 2
        assert "--expect-fence" in usage.stderr


class TestCluster:
    """Pointed at one node of the 3-master test cluster, the CLI sees the whole cluster."""

    def test_every_command_sees_every_node(self, redis_cluster: RedisClusterServers, redis_prefix: str) -> None:
        client = redis_cluster.client()
        backend = RedisBackend(client, prefix=redis_prefix)
        try:
            names = [f"job-{i}" for i in range(8)]
            assert len({client.get_node_from_key(backend.lease_keys(n)[0]).port for n in names}) == 3
            leases = [LeaseLock(n, ttl=300, backend=backend, heartbeat=False).acquire() for n in names]
            bucket_names = [f"keepa-{i}" for i in range(4)]
            for name in bucket_names:
                TokenBucket(name, rate="5/minute", capacity=300, overdraft=math.inf, backend=backend).acquire(40)
            for url in (redis_cluster.url, f"redis://127.0.0.1:{redis_cluster.ports[2]}"):  # any node will do
                listed = ok_json("locks", "ls", url=url, prefix=redis_prefix)
                assert [e["name"] for e in listed] == names
                for lease in leases[:3]:
                    seen = ok_json("locks", "inspect", lease.name, url=url, prefix=redis_prefix)
                    assert seen["fence"] == lease.fence
                for name in bucket_names:
                    assert ok_json("status", name, url=url, prefix=redis_prefix)["tokens"] == pytest.approx(260, abs=1)
            synced = ok_json("sync", "keepa-1", "--remaining", "-7", url=redis_cluster.url, prefix=redis_prefix)
            assert synced["tokens"] == pytest.approx(-7, abs=0.1)
            watched = tb("watch", "keepa-2", "--count", "1", "--json", "--prefix", redis_prefix, url=redis_cluster.url)
            assert watched.returncode == 0, watched.stderr
            fence = str(leases[5].fence)
            flags = ("--expect-fence", fence, "--prefix", redis_prefix, "--cluster")
            broken = json.loads(tb("locks", "break", "job-5", *flags, "--json", url=redis_cluster.url).stdout)
            assert broken["broken"] is True
            assert backend.lease_inspect("job-5") is None
        finally:
            for key in client.scan_iter(match=f"{{{redis_prefix}*", target_nodes=client.ALL_NODES):
                client.delete(key)
            client.close()

    def test_ls_never_gives_a_partial_answer_when_a_node_does_not_answer(
        self, redis_cluster: RedisClusterServers, redis_prefix: str
    ) -> None:
        client = redis_cluster.client()
        backend = RedisBackend(client, prefix=redis_prefix)
        paused = redis_cluster.pids[2]
        try:
            lease = LeaseLock("held", ttl=60, backend=backend, heartbeat=False).acquire()
            os.kill(paused, signal.SIGSTOP)
            try:
                result = tb("locks", "ls", "--timeout", "0.5", "--prefix", redis_prefix, url=redis_cluster.url)
            finally:
                os.kill(paused, signal.SIGCONT)
            line = one_error_line(result)  # exit 1 with one line, never "no leases held" or a short list
            assert "listing leases" in line
            assert f"127.0.0.1:{redis_cluster.ports[2]}" in line  # it names the node that did not answer
            lease.release()
        finally:
            client.close()


class TestBuckets:
    def test_status_refuses_a_key_that_is_not_a_bucket(
        self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str
    ) -> None:
        client = redis_server.client()
        try:
            client.set(backend.bucket_keys("other")[0], b"someone else's value", ex=60)
            result = tb("status", "other", "--prefix", redis_prefix, url=redis_server.url)
        finally:
            client.close()
        assert result.returncode == 1
        assert "not the state of a tokenbucket bucket" in one_error_line(result)

    def test_status_reads_the_policy_stored_with_the_bucket(
        self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str
    ) -> None:
        bucket = TokenBucket("keepa", rate="5/minute", capacity=300, overdraft=math.inf, backend=backend)
        bucket.acquire(20).settle(640)
        status = ok_json("status", "keepa", url=redis_server.url, prefix=redis_prefix)
        assert status["capacity"] == 300
        assert status["overdraft"] == "inf"
        assert status["rate_per_second"] == pytest.approx(5 / 60)
        assert status["policy"] == "stored with the bucket"
        assert status["tokens"] == pytest.approx(-340, abs=1)
        assert status["debt"] == pytest.approx(340, abs=1)
        assert status["time_to_positive"] == pytest.approx(340 * 12, abs=15)
        assert status["time_to_full"] == pytest.approx(640 * 12, abs=15)
        text = tb("status", "keepa", "--prefix", redis_prefix, url=redis_server.url).stdout
        assert "5/minute" in text
        assert "time to positive  1 h 0" in text

    def test_sync_then_status(self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str) -> None:
        TokenBucket("keepa", rate="5/minute", capacity=300, overdraft=math.inf, backend=backend).acquire(10)
        synced = ok_json("sync", "keepa", "--remaining", "-12", url=redis_server.url, prefix=redis_prefix)
        assert synced["tokens"] == pytest.approx(-12, abs=0.1)
        snap = TokenBucket("keepa", rate="5/minute", capacity=300, overdraft=math.inf, backend=backend).snapshot()
        assert snap.tokens == pytest.approx(-12, abs=0.1)
        assert snap.debt == pytest.approx(12, abs=0.1)

    def test_a_policy_flag_that_differs_from_the_stored_policy_is_refused(
        self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str
    ) -> None:
        TokenBucket("keepa", rate="5/minute", capacity=300, overdraft=math.inf, backend=backend).acquire(10)
        flags = ("--remaining", "0", "--rate", "20/minute", "--prefix", redis_prefix)
        result = tb("sync", "keepa", *flags, url=redis_server.url)
        assert result.returncode != 0
        assert "is stored with policy" in one_error_line(result)
        snap = TokenBucket("keepa", rate="5/minute", capacity=300, overdraft=math.inf, backend=backend).snapshot()
        assert snap.tokens == pytest.approx(290, abs=0.1)  # unchanged

    def test_reconfigure_changes_the_stored_policy_and_keeps_the_balance(
        self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str
    ) -> None:
        old = TokenBucket("keepa", rate="5/minute", capacity=300, overdraft=math.inf, backend=backend)
        old.acquire(300).settle(340)  # 40 in debt
        changed = tb("reconfigure", "keepa", "--rate", "20/minute", "--prefix", redis_prefix, url=redis_server.url)
        assert changed.returncode == 0, changed.stderr
        assert "refill/s 0.0833333 -> 0.333333; the balance carried over" in changed.stdout
        new = TokenBucket("keepa", rate="20/minute", capacity=300, overdraft=math.inf, backend=backend)
        assert new.snapshot().tokens == pytest.approx(-40, abs=0.5)  # the debt is not forgotten
        with pytest.raises(PolicyMismatch):
            old.try_acquire(1)
        nothing = tb("reconfigure", "keepa", "--prefix", redis_prefix, url=redis_server.url)
        assert "say what to change" in one_error_line(nothing)
        missing = tb("reconfigure", "nobody", "--rate", "1/second", "--prefix", redis_prefix, url=redis_server.url)
        assert "no state in Redis" in one_error_line(missing)

    def test_sync_refuses_a_balance_out_of_range(self, redis_server: RedisServer, redis_prefix: str) -> None:
        for remaining in ("1e400", "-1e20", "nan"):
            result = tb("sync", "keepa", f"--remaining={remaining}", "--prefix", redis_prefix, url=redis_server.url)
            assert result.returncode != 0
            assert "--remaining must be" in one_error_line(result)

    def test_unknown_bucket_needs_the_policy_on_the_command_line(
        self, redis_server: RedisServer, redis_prefix: str
    ) -> None:
        missing = tb("status", "fresh", "--prefix", redis_prefix, url=redis_server.url)
        assert "no state in Redis" in one_error_line(missing)
        flags = ("--rate", "10/second", "--capacity", "50")
        given = ok_json("status", "fresh", *flags, url=redis_server.url, prefix=redis_prefix)
        assert given["tokens"] == 50
        assert given["policy"] == "from the command line"
        bad = tb("status", "fresh", "--rate", "fast", "--prefix", redis_prefix, url=redis_server.url)
        assert "cannot parse rate" in one_error_line(bad)

    def test_watch_refreshes_count_times(
        self, backend: RedisBackend, redis_server: RedisServer, redis_prefix: str
    ) -> None:
        TokenBucket("keepa", rate="5/minute", capacity=300, backend=backend).acquire(100)
        flags = ("--count", "3", "--interval", "0.05", "--json", "--prefix", redis_prefix)
        result = tb("watch", "keepa", *flags, url=redis_server.url)
        assert result.returncode == 0, result.stderr
        views = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(views) == 3
        assert all(v["capacity"] == 300 for v in views)
        assert views[0]["tokens"] <= views[-1]["tokens"] <= 300  # refilling


def test_watch_on_a_terminal_redraws_in_place(
    backend: RedisBackend, redis_server: RedisServer, redis_prefix: str
) -> None:
    TokenBucket("keepa", rate="5/minute", capacity=300, backend=backend).acquire(100)
    leader, follower = pty.openpty()
    try:
        command = [sys.executable, "-m", "tokenbucket", "watch", "keepa", "--count", "2", "--interval", "0.05"]
        command += ["--prefix", redis_prefix, "--url", redis_server.url]
        proc = subprocess.Popen(command, stdout=follower, stderr=subprocess.PIPE, cwd=ROOT)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the command exited
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(60) == 0
        assert proc.stderr is not None
        proc.stderr.close()
    finally:
        os.close(leader)
    screen = b"".join(chunks).decode()
    assert screen.count("bucket 'keepa'") == 2
    assert "\x1b[11F\x1b[J" in screen  # the second view is drawn over the first (11 lines up, cleared)


def test_simulate_is_wired_in(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["simulate", "--rate", "10/second", "--duration", "10s", "--job", "a:cost=1,every=1", "--json"])
    assert status == 0
    assert "jobs" in json.loads(capsys.readouterr().out)
