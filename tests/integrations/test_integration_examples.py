"""The integration examples in ``examples/integrations/`` run as their docstrings say.

The Celery example runs a real ``celery worker`` process against a private redis-server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_servers import RedisServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "integrations"

DEMO_LINES = [
    "search 1: 200  remaining=4  retry-after=",
    "search 5: 200  remaining=0  retry-after=",
    "search 6: 429  remaining=0  retry-after=",
    "search 7: 429  remaining=0  retry-after=",
]


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("example", ["flask_app.py", "fastapi_app.py"])
def test_web_examples_limit_with_token_buckets(example: str) -> None:
    out = _run(["-W", "error::DeprecationWarning", example])
    for line in DEMO_LINES:
        assert line in out
    retry_after = [int(line.rsplit("=", 1)[1]) for line in out.splitlines() if " 429 " in line]
    assert all(11 <= seconds <= 13 for seconds in retry_after)  # the next token of 5/minute: 12 s


@pytest.fixture
def celery_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.mark.redis
@pytest.mark.realtime
@pytest.mark.slow
def test_celery_example_with_a_real_worker(celery_redis: RedisServer) -> None:
    env = {**os.environ, "CELERY_BROKER_URL": celery_redis.url}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_tasks",
            "worker",
            "--pool=solo",
            "--loglevel=info",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=EXAMPLES,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out = _run(["celery_tasks.py"], env=env, timeout=90)
    finally:
        worker.terminate()
        try:
            log, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            log, _ = worker.communicate()
    assert out.count("charged") == 6, log
    assert "item-0-0..: charged 4 tokens" in out
    assert "last-1..: charged 3 tokens" in out
    assert "backfill while another holds the lease: None" in out
    assert "backfill when free: backfilled" in out
    # 5 batches of 3 and one of 2 (settled at one more each) on 10 tokens refilling 1/s: some had to
    # wait longer than max_wait=1 s, and the worker rescheduled them, holding their reservations.
    assert "reserved, starting in" in log
    assert "Retry in" in log
    assert "Traceback" not in log
