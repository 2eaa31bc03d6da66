"""A Flask service protected by ``BindcarAuth``, configured from the environment as in the seed."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask, jsonify

from flask_bindcar import BindcarAuth, auth_exempt, current_identity

# Everything at DEBUG, the kubernetes client included: the suite checks no token reaches a log.
logging.basicConfig(level=logging.DEBUG)

app = Flask(__name__)
BindcarAuth(app)


@app.get("/api/v1/zones")
def zones() -> Any:
    return jsonify(zones=[], caller=current_identity.username, method=current_identity.method)


@app.get("/api/v1/health")
@auth_exempt
def health() -> Any:
    return jsonify(status="ok")


# A review at import, as an app checking its own setup at startup would: under ``gunicorn --preload``
# it runs before the fork and leaves a client with an open connection that no worker may share.
if os.environ.get("TEST_REVIEW_AT_IMPORT"):
    startup = app.test_client().get(
        "/api/v1/zones", headers={"Authorization": f"Bearer {os.environ['TEST_REVIEW_AT_IMPORT']}"}
    )
    assert startup.status_code == 200, startup.get_data(as_text=True)
