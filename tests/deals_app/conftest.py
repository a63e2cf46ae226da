"""Fixtures for the deals app: an in-process simulator and a way to run the CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from deals_app.cli import main
from deals_app.simulator import SimConfig, SimulatorServer
from deals_testing import API_KEY


@pytest.fixture
def make_simulator() -> Iterator[Callable[..., SimulatorServer]]:
    """Starts simulators on free loopback ports (``make_simulator(time_scale=..., ...)``); stops them after."""
    started: list[SimulatorServer] = []

    def make(**options: object) -> SimulatorServer:
        options.setdefault("api_key", API_KEY)
        server = SimulatorServer(SimConfig(**options)).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Runs ``deals-app`` in this process: ``cli("run", "--once", ...) -> (status, stdout, stderr)``."""

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return run
