"""A tiny FastAPI app rate limited by SlowAPI with tokenbucket's ``"token-bucket"`` strategy.

Each client may burst 5 searches, then gets one every 12 seconds.

Run a demonstration through Starlette's test client (no server, no network)::

    python examples/integrations/fastapi_app.py

Serve it with any ASGI server, for example ``uvicorn fastapi_app:app`` from
this folder (``TOKENBUCKET_STORAGE_URI=redis://localhost:6379/0`` to share the
buckets between processes and hosts; the default is memory).
"""

from __future__ import annotations

import os
import warnings

from fastapi import FastAPI, Request, Response
from slowapi import Limiter, _rate_limit_exceeded_handler
from slowapi.errors import RateLimitExceeded
from slowapi.util import get_remote_address

import tokenbucket.integrations.limits  # noqa: F401  (registers the "token-bucket" strategy)

limiter = Limiter(
    key_func=get_remote_address,
    strategy="token-bucket",
    storage_uri=os.environ.get("TOKENBUCKET_STORAGE_URI", "memory://"),
    headers_enabled=True,  # X-RateLimit-Limit / -Remaining / -Reset, and Retry-After
)
app = FastAPI()
app.state.limiter = limiter
app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]


@app.get("/search")
@limiter.limit("5/minute")
async def search(request: Request, response: Response) -> dict[str, str]:
    # SlowAPI needs the `request` argument, and `response` to add the headers to a 200.
    return {"result": "ok"}


def demo() -> None:
    """Seven quick searches from one client: five pass, then 429 with Retry-After."""
    with warnings.catch_warnings():
        # Starlette's test client prefers the httpx2 package and says so; httpx works.
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
        from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for n in range(1, 8):
            response = client.get("/search")
            print(
                f"search {n}: {response.status_code}"
                f"  remaining={response.headers['X-RateLimit-Remaining']}"
                f"  retry-after={response.headers['Retry-After']}"
            )


if __name__ == "__main__":
    demo()
