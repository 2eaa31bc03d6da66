"""The README's code is real: each snippet is a file here or a test below, and it runs."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from werkzeug.test import Client

from example_app.app import create_app

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_snippets_are_the_files_and_tests_that_run() -> None:
    flask_block, wsgi_block, testing_block, real_block = python_blocks()
    assert flask_block == (ROOT / "example_app" / "readme_flask.py").read_text()
    assert wsgi_block == (ROOT / "example_app" / "readme_wsgi.py").read_text()
    source = Path(__file__).read_text()
    assert "\n" + testing_block.split("\n\n\n", 1)[1] in source
    real_source = (ROOT / "tests" / "test_real_cluster.py").read_text()
    assert real_block.startswith("from flask_bindcar.testing import RealCluster\n\n")
    assert textwrap.indent(real_block.split("\n\n", 1)[1], "    ") in real_source  # test_readme_snippet


def test_flask_snippet() -> None:
    from example_app.readme_flask import app

    client = app.test_client()
    assert client.get("/api/v1/zones").json == {"error": "Missing Authorization header"}
    assert client.get("/api/v1/zones", headers={"Authorization": "Bearer t"}).json == {"zones": [], "caller": None}
    response = client.delete("/api/v1/zones/example.com", headers={"Authorization": "Bearer t"})
    assert response.json == {"error": "Token validation failed: ServiceAccount not authorized: (anonymous)"}


def test_wsgi_snippet() -> None:
    from example_app.readme_wsgi import application

    client = Client(application)
    assert client.get("/api/v1/zones").json == {"error": "Missing Authorization header"}
    assert client.get("/api/v1/zones", headers={"Authorization": "Bearer t"}).json == {"caller": None}
    assert client.get("/healthz").json == {"caller": None}


# --8<-- [start:user-test]
def test_only_external_dns_may_delete_zones(fake_cluster, fake_kubeconfig, monkeypatch, tmp_path):
    monkeypatch.setenv("BIND_AUTH_MODE", "tokenreview")
    monkeypatch.setenv("KUBECONFIG", str(fake_kubeconfig))
    client = create_app(tmp_path).test_client()
    token = fake_cluster.token("dns-system", "other-app", audiences=["bindcar"])

    response = client.delete("/api/v1/zones/example.com", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert response.json == {
        "error": "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app"
    }


# --8<-- [end:user-test]
