"""Bad input gives one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from deals_app.cli import main
from deals_app.simulator import SimulatorServer
from deals_testing import API_KEY, deals_app_command

Cli = Callable[..., tuple[int, str, str]]
TOKEN_FIELDS = {
    "timestamp": 1,
    "tokensLeft": 100,
    "refillIn": 1000,
    "refillRate": 5,
    "tokenFlowReduction": 0,
    "tokensConsumed": 0,
    "processingTimeInMs": 0,
}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("deals-app: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def fake_upstream() -> Iterator[Callable[[dict[str, tuple[int, bytes]]], str]]:
    """Serves fixed answers per path; returns the base URL."""
    servers: list[ThreadingHTTPServer] = []

    def serve(answers: dict[str, tuple[int, bytes]]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = answers.get(self.path.split("?")[0], (404, b"{}"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def run_args(base_url: str, db: Path, *extra: str) -> tuple[str, ...]:
    return ("run", "--base-url", base_url, "--api-key", API_KEY, "--once", "--db", str(db), "--plain", *extra)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--bogus"], "the following arguments are required"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["explode"], "invalid choice: 'explode'"),
        (["demo", "--time-scale", "-3"], "must be a positive number"),
        (["demo", "--duration", "soon"], "not a number: 'soon'"),
        (["demo", "--jobs", "update,nope"], "unknown job 'nope'"),
        (["run", "--base-url", "http://h", "--domain", "XX"], "unknown Keepa domain 'XX'; choose from US, GB"),
        (["demo", "--refill-rate", "-5"], "must be a positive whole number"),
        (["simulator", "--port", "70000"], "a port is between 0 and 65535"),
    ],
)
def test_bad_flags_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_unreachable_upstream(cli: Cli, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    status, _, err = cli(*run_args(f"http://127.0.0.1:{port}", tmp_path / "d.sqlite"))
    assert status == 1
    assert "cannot reach http://127.0.0.1" in one_error_line(err)


def test_bad_api_key_is_reported_from_the_402(
    cli: Cli, make_simulator: Callable[..., SimulatorServer], tmp_path: Path
) -> None:
    server = make_simulator()
    status, _, err = cli(
        "run", "--base-url", server.base_url, "--api-key", "wrong", "--once", "--db", str(tmp_path / "d.sqlite")
    )
    assert status == 1
    line = one_error_line(err)
    assert "API key was refused" in line
    assert "402" in line
    assert server.stats()["payment_required"] == 1


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ({"/token": (200, b"<html>gateway</html>")}, "not JSON"),
        ({"/token": (200, b"[1, 2]")}, "expected a JSON object"),
        ({"/token": (200, b'{"tokensLeft": 5}')}, "without the token field(s) timestamp"),
        (
            {
                "/token": (200, json.dumps(TOKEN_FIELDS).encode()),
                "/deal": (200, json.dumps({**TOKEN_FIELDS, "deals": {"dr": [{"title": "no asin"}]}}).encode()),
            },
            "deals.dr is not a list of deals",
        ),
        (
            {
                "/token": (200, json.dumps(TOKEN_FIELDS).encode()),
                "/deal": (500, json.dumps({**TOKEN_FIELDS, "error": {"message": "boom"}}).encode()),
            },
            "HTTP 500: boom",
        ),
    ],
)
def test_malformed_responses(
    cli: Cli,
    fake_upstream: Callable[[dict[str, tuple[int, bytes]]], str],
    tmp_path: Path,
    answers: dict[str, tuple[int, bytes]],
    message: str,
) -> None:
    url = fake_upstream(answers)
    status, _, err = cli(*run_args(url, tmp_path / "d.sqlite", "--jobs", "update"))
    assert status == 1
    assert message in one_error_line(err)


def test_bad_simulator_setting(cli: Cli) -> None:
    status, _, err = cli("demo", "--cost-noise", "50")
    assert status == 1
    assert "bad simulator setting: cost_noise must be between 0 and 10" in one_error_line(err)


@pytest.mark.parametrize("command", ["status", "dashboard"])
def test_status_and_dashboard_without_a_database(cli: Cli, tmp_path: Path, command: str) -> None:
    status, _, err = cli(command, "--db", str(tmp_path / "missing.sqlite"))
    assert status == 1
    assert "no database at" in one_error_line(err)


def test_unusable_database_path(cli: Cli, make_simulator: Callable[..., SimulatorServer], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    status, _, err = cli(*run_args(make_simulator().base_url, tmp_path / "file" / "d.sqlite"))
    assert status == 1
    assert "cannot open the database" in one_error_line(err)


def test_unreachable_redis(cli: Cli, make_simulator: Callable[..., SimulatorServer], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_simulator()
    status, _, err = cli(
        *run_args(server.base_url, tmp_path / "d.sqlite", "--redis-url", f"redis://127.0.0.1:{port}/0")
    )
    assert status == 1
    assert "cannot use Redis" in one_error_line(err)


def test_console_script_reports_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        deals_app_command("status", "--db", str(tmp_path / "none.sqlite")), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert one_error_line(proc.stderr).startswith("deals-app: error: no database at")
