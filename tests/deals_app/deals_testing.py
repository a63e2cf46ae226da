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


def keepa_rows(asin: str, csv: list[list[int] | None]) -> list[tuple[str, int, int, int, int | None]]:
    """``(asin, price_type, minute, value, shipping)`` rows of a product's ``csv``, read the way the public
    ``keepa`` client reads it (its ``csv_indices`` table: a type whose name has "SHIPPING" is
    ``[minute, price, shipping, ...]`` triples), independent of the store's own rule."""
    from keepa.utils import csv_indices

    triples = {index for index, name, _ in csv_indices if "SHIPPING" in name}
    rows: list[tuple[str, int, int, int, int | None]] = []
    for price_type, series in enumerate(csv):
        if not series:
            continue
        if price_type in triples:
            rows += [(asin, price_type, *series[i : i + 3]) for i in range(0, len(series), 3)]  # type: ignore[misc]
        else:
            rows += [(asin, price_type, series[i], series[i + 1], None) for i in range(0, len(series), 2)]
    return rows
