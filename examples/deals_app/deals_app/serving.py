"""A local HTTP server run in a background thread or in the foreground; shared by the simulator and the dashboard."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import TypeVar

_S = TypeVar("_S", bound="LocalServer")


class LocalServer:
    """Owns a `ThreadingHTTPServer`: serve it in a thread (`start`/`stop`, or ``with``) or in the foreground.

    Args:
        server: The bound HTTP server.
        thread_name: The name of the background thread.
    """

    def __init__(self, server: ThreadingHTTPServer, thread_name: str) -> None:
        self._server = server
        self._server.daemon_threads = True
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the server listens on."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self: _S) -> _S:
        """Serve in a background thread (once); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name=self._thread_name, daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until Ctrl-C, then close the port."""
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving and close the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
