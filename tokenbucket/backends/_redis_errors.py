"""Mapping redis-py failures to `tokenbucket.BackendError`, shared by the Redis bucket and lease backends.

Its own module so that ``_redis`` and ``_redis_lease`` both import it and not
each other. redis-py is imported only when an error is mapped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._exceptions import BackendError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["describe_server", "map_redis_errors", "redact_secret", "redact_url", "unreachable"]


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***``, for any URL form, malformed ones included.

    ``redis://user:pw@host`` becomes ``redis://user:***@host`` and
    ``redis://:pw@host`` becomes ``redis://:***@host``; a lone userinfo
    (``redis://pw@host``, a common slip for ``:pw``) is hidden whole. A URL
    without userinfo is returned as it is.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    userinfo, _, host = authority.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    auth = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{auth}@{host}{slash}{path}"


def _secret(url: str) -> str | None:
    """The part of ``url`` that `redact_url` hides, if any."""
    _, sep, rest = url.partition("://")
    authority = (rest if sep else url).partition("/")[0]
    if "@" not in authority:
        return None
    userinfo = authority.rpartition("@")[0]
    return userinfo.partition(":")[2] or userinfo or None


def redact_secret(text: str, url: str) -> str:
    """``text`` with the password of ``url`` replaced by ``***`` wherever it occurs.

    For messages built by lower layers that may echo a URL or its parts
    (a parser's error, a client's repr).
    """
    secret = _secret(url)
    return text.replace(secret, "***") if secret else text


def describe_server(client: Any) -> str:
    """Where ``client`` points, for error messages; a password is shown as ``***``."""
    try:
        if hasattr(client, "get_nodes"):  # a cluster client (sync or asyncio)
            nodes = sorted(f"{node.host}:{node.port}" for node in client.get_nodes())
            more = f" and {len(nodes) - 3} more" if len(nodes) > 3 else ""
            return f"redis cluster {', '.join(nodes[:3])}{more}"
        kwargs = client.connection_pool.connection_kwargs
        db = kwargs.get("db", 0)
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}?db={db}"
        scheme = "rediss" if "SSL" in client.connection_pool.connection_class.__name__ else "redis"
        user = kwargs.get("username") or ""
        auth = f"{user}:***@" if kwargs.get("password") else (f"{user}@" if user else "")
        return f"{scheme}://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"
    except Exception:  # a client of an unknown shape: say what it is rather than fail
        return f"a {type(client).__name__}"


class map_redis_errors:
    """Translate redis-py (and socket) failures into `tokenbucket.BackendError`.

    The one place where foreign errors become ours: the message names the
    operation and the server (password redacted); the original error is the
    ``__cause__``. Other exceptions (cancellation, our own errors) pass through.
    A context manager (a class rather than a generator: it wraps every call):

        with map_redis_errors("reserve on 'keepa'", client):
            client.evalsha(...)

    Args:
        operation: What was being done, in words ("reserve on 'keepa'").
        client: The redis-py client, to name the server.
        key: If given, the message says ``<operation> on <key>`` (formatted only on failure).
    """

    __slots__ = ("_client", "_key", "_operation")

    def __init__(self, operation: str, client: Any, key: str | None = None) -> None:
        self._operation = operation
        self._client = client
        self._key = key

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, BackendError):
            return
        import redis.exceptions

        if not isinstance(exc, (redis.exceptions.RedisError, OSError)):
            return
        detail = str(exc) or type(exc).__name__
        operation = self._operation if self._key is None else f"{self._operation} on {self._key!r}"
        raise BackendError(
            f"Redis failed during {operation} at {describe_server(self._client)}: {type(exc).__name__}: {detail}"
        ) from exc


def unreachable(exc: BaseException) -> bool:
    """Whether a `BackendError` means Redis could not be reached (not a refusal or a bug)."""
    import redis.exceptions

    cause = exc.__cause__
    if isinstance(cause, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
        return False
    # A busy client is not a server that is down: every connection of the pool is in use
    # (MaxConnectionsError, or a blocking pool's wait that ran out, which redis-py raises as a
    # plain ConnectionError with this message). Falling back here would fail open on a healthy server.
    if isinstance(cause, redis.exceptions.MaxConnectionsError) or str(cause) == "No connection available.":
        return False
    return isinstance(cause, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError))
