"""A Flask app's tests with pytest-flask's fixtures and flask-bindcar's ``fake_cluster``.

pytest-flask makes ``client`` and ``live_server`` from your ``app`` fixture; ``fake_cluster`` and
``fake_kubeconfig`` come with flask-bindcar's ``testing`` extra. ``live_server`` serves the app from
another process; for an ``app`` made per test, set ``live_server_scope = function`` in pytest's ini.

Not collected by this repository's suite: tests/test_pytest_flask.py runs it as a user's project
would, with the two plugins loaded in either order.
"""

import pytest
import requests

from example_app.app import create_app

EXTERNAL_DNS = "system:serviceaccount:dns-system:external-dns"


@pytest.fixture
def app(fake_kubeconfig, monkeypatch, tmp_path):
    monkeypatch.setenv("BIND_AUTH_MODE", "tokenreview")
    monkeypatch.setenv("KUBECONFIG", str(fake_kubeconfig))
    return create_app(tmp_path / "zones")


@pytest.fixture
def token(fake_cluster):
    return fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])


def test_with_the_test_client(client, token):
    response = client.get("/api/v1/zones", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert response.json == {"zones": [], "caller": {"username": EXTERNAL_DNS, "method": "tokenreview"}}


def test_with_a_live_server(live_server, token):
    url = live_server.url("/api/v1/zones")

    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    assert response.status_code == 200
    assert response.json()["caller"]["username"] == EXTERNAL_DNS
    assert requests.get(url, timeout=10).json() == {"error": "Missing Authorization header"}
