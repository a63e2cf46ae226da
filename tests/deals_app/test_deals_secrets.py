"""No ``deals-app`` output shows the ``--redis-url`` password, whatever the URL's form or the failure."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from deals_app.cli import redact_url
from deals_app.store import Store

from tests.redis_servers import RedisServer, free_port

SECRET = "s3cr3t-pw"
Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "deals.sqlite")
    Store(path).close()
    return path


@pytest.fixture
def locked_server(private_redis_server: RedisServer) -> RedisServer:
    """The private server with ``requirepass SECRET`` set."""
    client = private_redis_server.client()
    client.config_set("requirepass", SECRET)
    client.close()
    return private_redis_server


def _urls(port: int) -> list[str]:
    return [
        f"redis://:wrong-{SECRET}@127.0.0.1:{port}/0",  # wrong password
        f"redis://default:wrong-{SECRET}@127.0.0.1:{port}/0",  # wrong password, with a user
        f"redis://127.0.0.1:{port}/0",  # no password, server wants one
        f"redis://:{SECRET}@127.0.0.1:{free_port()}/0",  # server down
        f"redis://:{SECRET}@127.0.0.1:notaport/0",  # bad port
        f"redis://:{SECRET}@127.0.0.1:99999/0",  # port out of range
        f"http://:{SECRET}@127.0.0.1:{port}/0",  # unknown scheme
        f"{SECRET}@127.0.0.1:{port}",  # no scheme
        f"redis://{SECRET}@127.0.0.1:{port}/0",  # lone userinfo
    ]


@pytest.mark.parametrize("command", ["status", "dashboard"])
def test_no_password_in_errors(cli: Cli, db: str, locked_server: RedisServer, command: str) -> None:
    for url in _urls(locked_server.port):
        extra = ["--port", "0"] if command == "dashboard" else []
        status, out, err = cli(command, "--db", db, "--redis-url", url, *extra)
        assert status == 1, (url, out, err)
        assert "deals-app: error:" in err
        assert SECRET not in out + err, (url, err)
        assert "Traceback" not in err


def test_right_password_works(cli: Cli, db: str, locked_server: RedisServer) -> None:
    status, out, err = cli("status", "--db", db, "--redis-url", f"redis://:{SECRET}@127.0.0.1:{locked_server.port}/0")
    assert status == 0, err
    assert SECRET not in out + err


def test_redact_url() -> None:
    assert redact_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://pw@h") == "redis://***@h"
    assert redact_url("pw@h:1") == "***@h:1"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("rediss://u:p@ss@h/0") == "rediss://u:***@h/0"
