"""A tiny Flask app rate limited by Flask-Limiter with tokenbucket's ``"token-bucket"`` strategy.

Each client may burst 5 searches, then gets one every 12 seconds (5 per minute,
refilled continuously rather than all at once at the top of each minute).

Run a demonstration through Flask's test client (no server, no network)::

    python examples/integrations/flask_app.py

Serve it (``TOKENBUCKET_STORAGE_URI=redis://localhost:6379/0`` to share the
buckets between processes and hosts; the default is memory)::

    python examples/integrations/flask_app.py serve
"""

from __future__ import annotations

import os
import sys

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

import tokenbucket.integrations.limits  # noqa: F401  (registers the "token-bucket" strategy)

app = Flask(__name__)
limiter = Limiter(
    get_remote_address,
    app=app,
    strategy="token-bucket",
    storage_uri=os.environ.get("TOKENBUCKET_STORAGE_URI", "memory://"),
    headers_enabled=True,  # X-RateLimit-Limit / -Remaining / -Reset, and Retry-After
)


@app.route("/search")
@limiter.limit("5/minute")
def search() -> dict[str, str]:
    return {"result": "ok"}


@app.route("/export")
@limiter.limit("5/minute", cost=5)  # an export spends the whole burst
def export() -> dict[str, str]:
    return {"export": "started"}


def demo() -> None:
    """Seven quick searches from one client: five pass, then 429 with an honest Retry-After."""
    client = app.test_client()
    for n in range(1, 8):
        response = client.get("/search")
        print(
            f"search {n}: {response.status_code}"
            f"  remaining={response.headers['X-RateLimit-Remaining']}"
            f"  retry-after={response.headers['Retry-After']}"
        )


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        app.run()
    else:
        demo()
