"""A TCP proxy in front of kube-apiserver that can make it slow: the soak's "slow API server" fault.

The app's kubeconfig points here instead of at kube-apiserver. TLS passes through untouched (the
serving certificate names 127.0.0.1, whatever the port); while ``delay`` is above 0, every chunk
the app sends is held that long before it goes on, so each call (and each new connection's
handshake) takes longer, as a loaded or distant control plane would. The harness itself talks to
kube-apiserver directly, so minting tokens and changing grants are not slowed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class SlowProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; `delay` seconds are added to each chunk sent."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.delay = 0.0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="soak-proxy", daemon=True)

    def __enter__(self) -> SlowProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._server.close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:  # kube-apiserver is down: the app sees the connection closed
                client.close()
                continue
            upstream.settimeout(None)
            for src, dst, slow in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, slow), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if slow and self.delay > 0:
                    time.sleep(self.delay)
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
