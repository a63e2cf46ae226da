"""No ``tokenbucket`` command shows the Redis password, whatever the URL's form or the failure."""

from __future__ import annotations

import pytest
from redis_servers import SECRET, RedisServer, secret_urls

from tokenbucket._cli import URL_ENV, main
from tokenbucket.backends import redact_secret, redact_url

pytestmark = pytest.mark.redis


COMMANDS = [
    ["status", "keepa", "--rate", "5/minute", "--timeout", "0.5"],
    ["watch", "keepa", "--rate", "5/minute", "--count", "1", "--interval", "0", "--timeout", "0.5"],
    ["sync", "keepa", "--remaining", "3", "--rate", "5/minute", "--timeout", "0.5"],
    ["locks", "ls", "--timeout", "0.5"],
    ["locks", "inspect", "backfill", "--timeout", "0.5"],
    ["locks", "break", "backfill", "--expect-fence", "1", "--timeout", "0.5"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_no_password_in_any_output(
    locked_redis_server: RedisServer, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    for url in secret_urls(locked_redis_server.port, SECRET):
        status = main([*command, "--url", url])
        out, err = capsys.readouterr()
        assert status == 1, (url, out, err)
        assert err.startswith("tokenbucket: error: ")
        assert "Traceback" not in err
        assert SECRET not in out + err, (url, err)


def test_no_password_when_the_url_comes_from_the_environment(
    locked_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for url in secret_urls(locked_redis_server.port, SECRET):
        monkeypatch.setenv(URL_ENV, url)
        assert main(["locks", "ls", "--timeout", "0.5"]) == 1
        out, err = capsys.readouterr()
        assert SECRET not in out + err, (url, err)


def test_the_right_password_works_and_is_not_shown(
    locked_redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{locked_redis_server.port}/0"
    assert main(["status", "keepa", "--rate", "5/minute", "--url", url]) == 0
    out, err = capsys.readouterr()
    assert "keepa" in out
    assert SECRET not in out + err


def test_redact_url_hides_the_password_in_every_form() -> None:
    assert redact_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://pw@h") == "redis://***@h"  # a lone userinfo is most likely a password
    assert redact_url("pw@h:1") == "***@h:1"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("rediss://u:p@ss@h/0") == "rediss://u:***@h/0"  # an unescaped @ in the password


def test_redact_secret_scrubs_what_a_lower_layer_echoed() -> None:
    url = "redis://:hunter2@h:notaport/0"
    assert redact_secret("invalid literal for int(): 'hunter2@h:notaport'", url) == (
        "invalid literal for int(): '***@h:notaport'"
    )
    assert redact_secret("nothing secret here", "redis://h/0") == "nothing secret here"
