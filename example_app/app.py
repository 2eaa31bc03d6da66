"""A bindcar-like DNS zone API protected by ``BindcarAuth``.

Zones are JSON files in ``ZONE_DATA_DIR`` (default ``./zone-data``), so a restart loses nothing.
Authentication is configured entirely by the seed's environment variables (``BIND_AUTH_MODE``,
``BIND_TOKEN_AUDIENCES``, ``BIND_ALLOWED_NAMESPACES``, ...). Deleting a zone is reserved to
``system:serviceaccount:dns-system:external-dns`` by a stricter per-view policy; with
``ZONE_AUTHZ=rbac`` (TokenReview mode) Kubernetes RBAC must also allow the caller to ``delete``
the zone (``zones.bindcar.firestoned.io``, by name), as ``deploy/rbac-zones.yaml`` grants it.

Run it with gunicorn: ``gunicorn -c example_app/gunicorn.conf.py 'example_app.app:create_app()'``.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException

from flask_bindcar import RBAC, BindcarAuth, auth_exempt, auth_required, current_identity
from flask_bindcar.errors import BindcarError

ZONE_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
ZONE_DELETERS = ["system:serviceaccount:dns-system:external-dns"]
ZONE_RBAC = RBAC(resource="zones", group="bindcar.firestoned.io", name="{name}")


class ZoneStore:
    """Zones as ``<name>.json`` files; writes go through a temporary file and a rename."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._path(name).read_text()))
        except FileNotFoundError:
            return None

    def create(self, zone: dict[str, Any]) -> bool:
        path = self._path(zone["name"])
        with self._lock:
            if path.exists():
                return False
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(zone, indent=2))
            tmp.replace(path)
        return True

    def delete(self, name: str) -> bool:
        with self._lock:
            try:
                self._path(name).unlink()
            except FileNotFoundError:
                return False
        return True


def caller() -> dict[str, Any]:
    return {"username": current_identity.username, "method": current_identity.method}


def create_app(data_dir: str | Path | None = None) -> Flask:
    app = Flask(__name__)
    store = ZoneStore(Path(data_dir or os.environ.get("ZONE_DATA_DIR", "zone-data")))
    delete_rbac = ZONE_RBAC if os.environ.get("ZONE_AUTHZ", "").strip().lower() == "rbac" else None
    BindcarAuth(app)

    @app.errorhandler(HTTPException)
    def json_error(e: HTTPException) -> Any:
        """Every HTTP error as ``{"error": ...}``, keeping its headers (``Retry-After``, ``Allow``, ...)."""
        if isinstance(e, BindcarError):  # flask-bindcar's 401, 403, 429 and 503 render themselves
            return e
        response = e.get_response()
        response.set_data(json.dumps({"error": e.description}))
        response.content_type = "application/json"
        return response

    def valid_name(name: str) -> str:
        if not ZONE_NAME.match(name):
            abort(400, description=f"Invalid zone name: {name!r}")
        return name

    @app.get("/api/v1/health")
    @auth_exempt
    def health() -> Any:
        return jsonify(status="healthy")

    @app.get("/api/v1/ready")
    @auth_exempt
    def ready() -> Any:
        return jsonify(status="ready")

    try:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    except ImportError:  # the metrics extra is not installed
        pass
    else:

        @app.get("/metrics")
        @auth_exempt
        def metrics() -> Any:
            return generate_latest(), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    @app.get("/api/v1/server/status")
    def server_status() -> Any:
        return jsonify(status="running", zones=len(store.names()), caller=caller())

    @app.get("/api/v1/zones")
    def list_zones() -> Any:
        return jsonify(zones=store.names(), caller=caller())

    @app.post("/api/v1/zones")
    def create_zone() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            abort(400, description='Expected a JSON object like {"name": "example.com", "records": []}')
        records = body.get("records", [])
        if not isinstance(records, list):
            abort(400, description="records must be a list")
        zone = {"name": valid_name(body["name"]), "records": records, "created_by": current_identity.username}
        if not store.create(zone):
            abort(409, description=f"Zone already exists: {zone['name']}")
        return jsonify(zone=zone, caller=caller()), 201

    @app.get("/api/v1/zones/<name>")
    def get_zone(name: str) -> Any:
        zone = store.get(valid_name(name))
        if zone is None:
            abort(404, description=f"Zone not found: {name}")
        return jsonify(zone=zone, caller=caller())

    @app.delete("/api/v1/zones/<name>")
    @auth_required(service_accounts=ZONE_DELETERS, rbac=delete_rbac)
    def delete_zone(name: str) -> Any:
        if not store.delete(valid_name(name)):
            abort(404, description=f"Zone not found: {name}")
        return jsonify(deleted=name, caller=caller())

    return app
