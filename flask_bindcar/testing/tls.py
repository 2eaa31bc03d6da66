"""FakeCluster's HTTPS server: the TLS handshake per connection, every connection dropped at stop.

`TLSServer` does each TLS handshake in the connection's own thread (one slow client blocks no
one) and drops every open connection when the stand-in stops, as a stopped API server does. It
holds the cluster its handler (`flask_bindcar.testing.server.Handler`) answers for.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask_bindcar.testing.state import ClusterState


class TLSServer(ThreadingHTTPServer):
    """Does the TLS handshake in each connection's own thread, so one slow client blocks no one."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        ctx: ssl.SSLContext,
        cluster: ClusterState,
    ):
        self.ssl_context = ctx
        self.cluster = cluster
        self._connections: set[Any] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self._connections_lock:
            self._connections.add(conn)
        try:
            super().finish_request(conn, client_address)
        except (ssl.SSLError, OSError):
            return
        finally:
            with self._connections_lock:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        """Drop every open connection, as a stopped API server does; keep-alive ones included."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections dropped by clients are normal here; keep stderr quiet."""
