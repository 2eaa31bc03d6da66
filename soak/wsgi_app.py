"""A plain WSGI app for the middleware flavour of the soak: the zone API's read path, no Flask.

``flask_bindcar.middleware:wrap("soak.wsgi_app:app")`` guards it; it answers who asked, as the
example app's ``GET /api/v1/zones`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    identity = environ.get("bindcar.identity")
    body = json.dumps({"zones": [], "caller": getattr(identity, "username", None)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
