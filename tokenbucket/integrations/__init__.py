"""Integrations with other libraries.

Each submodule imports its third-party dependency when it is imported, never
before: ``import tokenbucket`` and ``import tokenbucket.integrations`` import
none of them.

* `tokenbucket.integrations.limits`: a ``"token-bucket"`` strategy for `limits`,
  so Flask-Limiter and SlowAPI users can write ``strategy="token-bucket"``.
* `tokenbucket.integrations.celery`: acquire a shared quota in Celery tasks
  without blocking a worker for long, and one-at-a-time tasks.
* `tokenbucket.integrations.httpx`: ``RateLimitedTransport`` and
  ``AsyncRateLimitedTransport`` pay for each request from a bucket, settle and
  sync from the upstream's response, and retry 429s through the bucket.
"""

from __future__ import annotations
