"""The base of FakeCluster's request handler: answers, faults, and the API's own authorization.

Every endpoint of the stand-in (`flask_bindcar.testing.reviews`, `flask_bindcar.testing.objects`)
answers through this class: JSON bodies and kube-apiserver's ``Status`` objects, the fault on
demand (`FakeCluster.faulty`), and the 401 or 403 kube-apiserver gives before it does anything
for a caller it does not know or RBAC does not allow.
"""

from __future__ import annotations

import json
import socket
import struct
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask_bindcar.testing.state import ClusterState
    from flask_bindcar.testing.tls import TLSServer


def failure(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def forbidden_status(
    user: str,
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> dict[str, Any]:
    """kube-apiserver's 403 Status for a request RBAC does not allow (its ``ForbiddenStatusError``)."""
    what = f"{resource}/{subresource}" if subresource else resource
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    why = f'User "{user}" cannot {verb} resource "{what}" in API group "{group}" {scope}'
    qualified = f"{resource}.{group}" if group else resource
    message = f'{qualified} "{name}" is forbidden: {why}' if name else f"{qualified} is forbidden: {why}"
    details: dict[str, Any] = {"name": name} if name else {}
    if group:
        details["group"] = group
    details["kind"] = resource
    return failure(403, "Forbidden", message, details)


class BaseHandler(BaseHTTPRequestHandler):
    """What every endpoint of the stand-in answers with."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: TLSServer
    server_version = "fake-kube-apiserver"

    def log_message(self, format: str, *args: Any) -> None:
        """Request lines are not logged: a stand-in must not print what tests send it."""

    @property
    def cluster(self) -> ClusterState:
        return self.server.cluster

    def _send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _apply_fault(self) -> bool:
        """Answer with the injected fault, if any. True when the request was answered."""
        fault = self.cluster.fault
        if fault is None or fault in ("no_user", "no_audiences"):
            return False
        if fault == "error500":
            self._send_json(
                500, failure(500, "InternalError", "Internal error occurred: etcdserver: request timed out")
            )
        elif fault == "garbage":
            data = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        elif fault == "hang":
            self.cluster._stopping.wait(self.cluster.hang_seconds)
            self.close_connection = True
        return True

    def _decode(self, raw: bytes, kind: str) -> dict[str, Any] | None:
        try:
            body = json.loads(raw)
        except ValueError as e:
            self._send_json(
                400, failure(400, "BadRequest", f"the body of the request could not be decoded: {e.__class__.__name__}")
            )
            return None
        if not isinstance(body, dict) or body.get("kind", kind) != kind or not isinstance(body.get("spec"), dict):
            self._send_json(400, failure(400, "BadRequest", f"the body of the request is not a valid {kind}"))
            return None
        return body

    def _may_create(self, resource: str, group: str) -> bool:
        """Whether the caller may create ``resource`` reviews (both need ``system:auth-delegator``);
        if not, the 401 or the 403 Status kube-apiserver sends has been answered."""
        caller = self.cluster._caller(self.headers.get("Authorization"))
        if caller is None:
            self._send_json(401, failure(401, "Unauthorized", "Unauthorized"))
            return False
        if not self.cluster.can_review(caller):
            self._send_json(403, forbidden_status(caller, "create", resource, group=group))
            return False
        return True

    def _authorize(
        self,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> bool:
        """Authenticate and authorize a request to the stand-in's own API, as kube-apiserver does
        before anything else; if refused, the 401 or the 403 Status has been answered."""
        caller = self.cluster._caller(self.headers.get("Authorization"))
        if caller is None:
            self._send_json(401, failure(401, "Unauthorized", "Unauthorized"))
            return False
        if not self.cluster.authorized(
            caller, verb, resource, group=group, namespace=namespace, name=name, subresource=subresource
        ):
            status = forbidden_status(
                caller, verb, resource, group=group, namespace=namespace, name=name, subresource=subresource
            )
            self._send_json(403, status)
            return False
        return True
