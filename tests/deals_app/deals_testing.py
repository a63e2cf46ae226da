"""Helpers shared by the deals app's tests (fixtures are in ``conftest.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

API_KEY = "test-key"


def deals_app_command(*args: str) -> list[str]:
    """The argv that runs ``deals-app`` in a child process with this interpreter."""
    return [sys.executable, "-m", "deals_app.cli", *args]


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``deals-app`` as a child process, its output going to ``log``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        return subprocess.Popen(deals_app_command(*args), stdout=out, stderr=subprocess.STDOUT, env=env)
