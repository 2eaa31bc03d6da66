"""A plain WSGI application, for ``flask_bindcar.middleware:wrap("tests.apps.wsgi_app:app")``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logging.basicConfig(level=logging.DEBUG)


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    identity = environ.get("bindcar.identity")
    if environ.get("REQUEST_METHOD") == "OPTIONS":  # as Flask answers it: no body, the methods allowed
        start_response("200 OK", [("Allow", "GET, HEAD, OPTIONS"), ("Content-Length", "0")])
        return [b""]
    if environ.get("PATH_INFO") == "/api/v1/health":
        body = {"status": "ok"}
    else:
        body = {"zones": [], "caller": identity.username, "method": identity.method}
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
