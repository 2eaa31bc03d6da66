"""The benchmark's app: one route, with flask-bindcar when ``BENCH_AUTH=1`` (configured by BIND_*)."""

from __future__ import annotations

import os

from flask import Flask

from flask_bindcar import BindcarAuth


def create_app() -> Flask:
    app = Flask(__name__)
    app.add_url_rule("/api/v1/zones", "zones", lambda: "ok")
    if os.environ.get("BENCH_AUTH") == "1":
        BindcarAuth(app)
    return app
