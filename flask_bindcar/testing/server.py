"""FakeCluster's HTTPS server: TLS per connection, and the routes of its API.

`TLSServer` does each TLS handshake in the connection's own thread (one slow client blocks no
one) and drops every open connection when the stand-in stops, as a stopped API server does.
`Handler` routes a request to the review endpoints (`flask_bindcar.testing.reviews`) or the object
endpoints (`flask_bindcar.testing.objects`), and answers ``/version`` and everything unknown.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from flask_bindcar.testing.handler import failure
from flask_bindcar.testing.objects import ObjectEndpoints
from flask_bindcar.testing.reviews import SAR_PATH, SSAR_PATH, TOKENREVIEW_PATH, ReviewEndpoints

if TYPE_CHECKING:
    from flask_bindcar.testing.cluster import FakeCluster


class TLSServer(ThreadingHTTPServer):
    """Does the TLS handshake in each connection's own thread, so one slow client blocks no one."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], ctx: ssl.SSLContext, cluster: FakeCluster
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


class Handler(ReviewEndpoints, ObjectEndpoints):
    """The stand-in's request handler: its routes, over the endpoints of both kinds."""

    def do_GET(self) -> None:
        if self._core_api("GET") or self._object_api("GET"):
            return
        if self.path.split("?")[0].rstrip("/") == "/version":
            if self._apply_fault():
                return
            self._send_json(
                200,
                {
                    "major": "1",
                    "minor": "31",
                    "gitVersion": "v1.31.0-fake",
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.22.5",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                },
            )
            return
        self._send_json(404, failure(404, "NotFound", "the server could not find the requested resource"))

    def do_DELETE(self) -> None:
        if not (self._core_api("DELETE") or self._object_api("DELETE")):
            self._send_json(404, failure(404, "NotFound", "the server could not find the requested resource"))

    def do_POST(self) -> None:
        route = self.path.split("?")[0]
        if self._core_api("POST") or self._object_api("POST"):
            return
        raw = self._read_body()
        if route == TOKENREVIEW_PATH:
            self._token_review(raw)
        elif route == SSAR_PATH:
            self._self_subject_access_review(raw)
        elif route == SAR_PATH:
            self._subject_access_review(raw)
        else:
            self._send_json(404, failure(404, "NotFound", "the server could not find the requested resource"))
