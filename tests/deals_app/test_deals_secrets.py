"""No ``deals-app`` output shows the ``--redis-url`` password, whatever the URL's form or the failure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from deals_app.store import Store

from tests.redis_servers import SECRET, RedisServer, secret_urls

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "deals.sqlite")
    Store(path).close()
    return path


@pytest.mark.parametrize("command", ["status", "dashboard"])
def test_no_password_in_errors(cli: Cli, db: str, locked_redis_server: RedisServer, command: str) -> None:
    for url in secret_urls(locked_redis_server.port, SECRET):
        extra = ["--port", "0"] if command == "dashboard" else []
        status, out, err = cli(command, "--db", db, "--redis-url", url, *extra)
        assert status == 1, (url, out, err)
        assert "deals-app: error:" in err
        assert SECRET not in out + err, (url, err)
        assert "Traceback" not in err


def test_right_password_works(cli: Cli, db: str, locked_redis_server: RedisServer) -> None:
    status, out, err = cli("status", "--db", db, "--redis-url", f"redis://:{SECRET}@127.0.0.1:{locked_redis_server.port}/0")
    assert status == 0, err
    assert SECRET not in out + err
