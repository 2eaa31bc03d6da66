"""pytest-flask and flask-bindcar's plugin together: in this suite, and in a user's project in either
loading order (tests/pytest_flask_example.py, the example docs/testing.md shows)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.testing import FlaskClient

from flask_bindcar import BindcarAuth, auth_required, current_identity
from flask_bindcar.testing import FakeCluster
from tests.gunicorn_server import ROOT, base_environment

EXTERNAL_DNS = "system:serviceaccount:dns-system:external-dns"


@pytest.fixture
def app(fake_kubeconfig: Path) -> Flask:
    """For pytest-flask's ``client``: only ``@auth_required`` views are guarded."""
    app = Flask(__name__)
    app.config.update(
        BINDCAR_AUTH_MODE="tokenreview", BINDCAR_KUBECONFIG=str(fake_kubeconfig), BINDCAR_PROTECT_ALL=False
    )

    @app.get("/api/v1/me")
    @auth_required
    def me() -> Any:
        return jsonify(caller=current_identity.username)

    @app.get("/api/v1/open")
    def open_view() -> Any:
        return jsonify(caller=current_identity.username if current_identity else None)

    BindcarAuth(app)
    return app


def test_a_caller_does_not_outlive_its_request(client: FlaskClient, fake_cluster: FakeCluster) -> None:
    # pytest-flask keeps one request context pushed for the whole test, so every request of its
    # client shares one app context and one ``g``: the identity must live with the request.
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).get_json() == {"caller": EXTERNAL_DNS}

    response = client.get("/api/v1/me")
    assert (response.status_code, response.get_json()) == (401, {"error": "Missing Authorization header"})
    assert client.get("/api/v1/open").get_json() == {"caller": None}
    assert not current_identity  # nor does the test itself see it


PLUGINS = ["flask_bindcar.pytest_plugin", "pytest_flask.plugin"]
LOADING = {  # this suite itself runs with both loaded as installed (entry points)
    "bindcar first": ["-p", PLUGINS[0], "-p", PLUGINS[1]],
    "pytest-flask first": ["-p", PLUGINS[1], "-p", PLUGINS[0]],
}


def test_a_users_project_with_both_plugins_in_either_order(tmp_path: Path) -> None:
    """The example's tests pass with the two plugins loaded in each order."""
    runs = {}
    for name, args in LOADING.items():
        project = tmp_path / name.replace(" ", "-")
        project.mkdir()
        (project / "test_zones.py").write_text((ROOT / "tests" / "pytest_flask_example.py").read_text())
        (project / "pytest.ini").write_text("[pytest]\nlive_server_scope = function\n")
        env = {**base_environment(), "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
        runs[name] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for name, proc in runs.items():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}:\n{output}"
        assert output.splitlines()[-1].startswith("2 passed"), f"{name}:\n{output}"
