"""The routes of FakeCluster's API.

`Handler`, the request handler its HTTPS server (`flask_bindcar.testing.tls`) runs, routes a
request to the review endpoints (`flask_bindcar.testing.reviews`) or the object endpoints
(`flask_bindcar.testing.objects`), and answers ``/version`` and everything unknown.
"""

from __future__ import annotations

from flask_bindcar.testing.handler import failure
from flask_bindcar.testing.objects import ObjectEndpoints
from flask_bindcar.testing.oidc import serve_documents
from flask_bindcar.testing.reviews import SAR_PATH, SSAR_PATH, TOKENREVIEW_PATH, ReviewEndpoints


class Handler(ReviewEndpoints, ObjectEndpoints):
    """The stand-in's request handler: its routes, over the endpoints of both kinds."""

    def parse_request(self) -> bool:
        """Count every request read (`FakeCluster.requests_seen`), whatever it asks."""
        with self.cluster._lock:
            self.cluster.requests_seen += 1
        return super().parse_request()

    def do_GET(self) -> None:
        if serve_documents(self) or self._core_api("GET") or self._object_api("GET"):
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
