"""A hostile Kubernetes API server: real TLS on 127.0.0.1, answering TokenReviews however a test says.

`FakeCluster` answers like kube-apiserver; this one answers like a broken or malicious server:
whatever bytes a test scripts, as slowly as it likes, echoing the token it was sent. Reached by
the official client through an ordinary kubeconfig (`HostileAPI.write_kubeconfig`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 500: "Internal"}


@dataclass
class Reply:
    """Raw bytes to send; from byte ``drip_from`` on, one byte every ``interval`` seconds."""

    raw: bytes
    drip_from: int | None = None
    interval: float = 0.5
    close: bool = False
    """Hang up once sent (a dripped reply always does): the end of an answer with no length."""


def http_reply(
    status: int = 201,
    body: bytes | str | Any = b"",
    *,
    reason: str | None = None,
    headers: dict[str, str] | None = None,
    drip: str | None = None,
    interval: float = 0.5,
) -> Reply:
    """An HTTP/1.1 response; a body that is not bytes or str is sent as JSON.

    ``drip`` is ``"head"`` (status line and headers dripped too) or ``"body"`` (headers at once).
    """
    if isinstance(body, str):
        data = body.encode()
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
    fields = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
    head = f"HTTP/1.1 {status} {reason if reason is not None else REASONS.get(status, 'Status')}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    raw = head.encode("latin-1") + data
    drip_from = {"head": 0, "body": len(head), None: None}[drip]
    return Reply(raw, drip_from, interval)


def token_review(status: Any) -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}


AUTHENTICATED = {
    "authenticated": True,
    "user": {
        "username": "system:serviceaccount:dns-system:external-dns",
        "uid": "0b8a5a8e-0000-4000-8000-000000000000",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:dns-system", "system:authenticated"],
    },
    "audiences": ["bindcar"],
}
"""A well-formed ``status`` vouching for ``dns-system/external-dns`` with the ``bindcar`` audience."""

Responder = Callable[[str], Reply]
"""From the token of a TokenReview to the reply."""


class HostileAPI:
    """A TLS server whose every TokenReview answer is ``responder(token)``."""

    def __init__(self, responder: Responder | None = None):
        self.responder: Responder = responder or (lambda token: http_reply(201, token_review(AUTHENTICATED)))
        self.requests = 0
        self._ca = trustme.CA()
        self._cert = self._ca.issue_cert("127.0.0.1")
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HostileAPI:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._cert.configure_cert(ctx)
        self._server = _Server(("127.0.0.1", 0), _Handler, ctx, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="hostile-api", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, directory: Path) -> Path:
        ca = directory / "hostile-ca.crt"
        self._ca.cert_pem.write_to_path(str(ca))
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "hostile", "cluster": {"server": self.url, "certificate-authority": str(ca)}}],
            "users": [{"name": "caller", "user": {"token": "caller-token-of-the-service"}}],
            "contexts": [{"name": "hostile", "context": {"cluster": "hostile", "user": "caller"}}],
            "current-context": "hostile",
        }
        path = directory / "hostile-kubeconfig"
        path.write_text(json.dumps(config))
        return path

    def _send(self, conn: socket.socket, reply: Reply) -> None:
        start = len(reply.raw) if reply.drip_from is None else reply.drip_from
        assert 0 <= start <= len(reply.raw), "drip_from is an offset into the reply"
        conn.sendall(reply.raw[:start])
        for i in range(start, len(reply.raw)):
            if self._stopping.wait(reply.interval):
                return
            conn.sendall(reply.raw[i : i + 1])


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, ctx: ssl.SSLContext, api: HostileAPI):
        self.ctx = ctx
        self.api = api
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()
        super().__init__(address, handler)

    def close_connections(self) -> None:
        with self.lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-reply is the point of these tests; keep stderr quiet."""


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        try:
            conn = self.server.ctx.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self.server.lock:
            self.server.connections.add(conn)
        try:
            reader = conn.makefile("rb")
            while True:  # keep-alive: one reply per request
                request_line = reader.readline(65537)
                if not request_line:
                    return
                length = 0
                while (line := reader.readline(65537)) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                body = reader.read(length) if length else b""
                try:
                    token = json.loads(body)["spec"]["token"]
                except (ValueError, KeyError, TypeError):
                    token = ""
                self.server.api.requests += 1
                reply = self.server.api.responder(token)
                self.server.api._send(conn, reply)
                if reply.drip_from is not None or reply.close:
                    return
        except OSError:
            return
        finally:
            with self.server.lock:
                self.server.connections.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """An ``https://`` address on 127.0.0.1 that never completes a connection.

    Its listen queue is full, so the kernel drops further SYNs: a client waits for a SYN-ACK that
    never comes, and only its own connect timeout ends the wait.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued: list[socket.socket] = []
    try:
        for _ in range(4):  # fill the accept queue
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            queued.append(s)
        yield f"https://127.0.0.1:{port}"
    finally:
        for s in [*queued, listener]:
            s.close()


@contextlib.contextmanager
def slow_handshake(interval: float = 0.2) -> Iterator[str]:
    """An ``https://`` address whose server accepts, reads the ClientHello and answers one byte every
    ``interval`` seconds: a TLS record that would take an hour to arrive, each read well within any timeout.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stopping = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            for byte in b"\x16\x03\x03\x40\x00" + b"\x02" * (1 << 14):  # a handshake record of 16 KiB
                if stopping.wait(interval):
                    return
                conn.sendall(bytes([byte]))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, name="slow-handshake", daemon=True).start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        listener.close()


def pointed_at(kubeconfig: Path, server: str) -> Path:
    """``kubeconfig`` with its cluster's server changed to ``server``, in place."""
    config = json.loads(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = server
    kubeconfig.write_text(json.dumps(config))
    return kubeconfig
