"""Issue 18, items 6-10: the smaller findings of the adversarial review, each with the test that showed it.

6. The failure limit keys on the client address: said at startup and by ``doctor``.
7. ``@auth_required`` above ``@app.route``: a `ConfigError`, never a silently unprotected view.
8. ``@auth_required`` reuses only an identity its own `Authenticator` admitted.
9. An app-wide rule naming a view argument: checked against the URL map, not a 503 per request.
10. ``REMOTE_USER`` only as flask-bindcar sets it; the first review's deadline covers building the client.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request
from werkzeug.test import Client

from flask_bindcar import RBAC, AuthConfig, BindcarAuth, BindcarMiddleware, auth_required
from flask_bindcar.config import FAILURE_LIMIT_WARNING
from flask_bindcar.errors import ConfigError
from flask_bindcar.testing import FakeCluster

SA = "system:serviceaccount:dns-system:external-dns"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- 6 ---------------------------------------------------------------------------------------------------


def test_the_failure_limit_says_what_it_keys_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "flask_bindcar")
    BindcarMiddleware(lambda e, s: [], api_token="s3cret", failure_limit="20/minute")
    expected = (
        "BIND_AUTH_FAILURE_LIMIT=20/60s counts failures per client address (REMOTE_ADDR): behind a proxy, a "
        "sidecar or an ingress every caller shares one address, and one client's bad tokens get every caller a "
        "429. Turn it on only where REMOTE_ADDR is the caller's own address."
    )
    assert FAILURE_LIMIT_WARNING.format(limit="20/60s") == expected
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [expected]
    assert expected in AuthConfig.load({"failure_limit": "20/minute"}, environ={}).posture_warnings()
    assert not any("REMOTE_ADDR" in w for w in AuthConfig.load({}, environ={}).posture_warnings())


# -- 7 ---------------------------------------------------------------------------------------------------


def test_auth_required_above_the_route_is_a_config_error(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    app = Flask(__name__)
    app.testing = True  # the error propagates, rather than being a 500
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig), protect_all=False)

    @auth_required(service_accounts=SA)  # wrong: above the route
    @app.get("/secrets")
    def secrets() -> Any:
        return jsonify(secret="the protected body")

    other = fake_cluster.token("default", "someone", audiences=["bindcar"])
    with pytest.raises(ConfigError) as e:
        app.test_client().get("/secrets", headers=bearer(other))
    assert str(e.value) == (
        "@auth_required is written above @app.route for secrets: the route registered the unprotected function. "
        "Put @app.route(...) first (outermost), @auth_required(...) below it"
    )


def test_the_flask_doctor_reports_the_decorator_order(fake_kubeconfig: Path) -> None:
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig))

    @auth_required(rbac=RBAC(resource="zones"))
    @app.delete("/zones")
    def zones() -> Any:
        return jsonify(ok=True)

    result = app.test_cli_runner().invoke(args=["bindcar", "doctor"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: @auth_required is written above @app.route for zones: the route registered the unprotected "
        "function. Put @app.route(...) first (outermost), @auth_required(...) below it\n"
    )


def test_the_right_order_passes(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig), protect_all=False)

    @app.get("/secrets")
    @auth_required(service_accounts=SA)
    def secrets() -> Any:
        return jsonify(secret="the protected body")

    other = fake_cluster.token("default", "someone", audiences=["bindcar"])
    response = app.test_client().get("/secrets", headers=bearer(other))
    assert (response.status_code, response.json) == (
        401,
        {"error": "Token validation failed: ServiceAccount not authorized: system:serviceaccount:default:someone"},
    )


# -- 8 ---------------------------------------------------------------------------------------------------


def test_a_view_does_not_trust_an_identity_another_layer_left(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    """An outer middleware in Basic mode, the Flask guard off: a garbage token must not reach the view."""
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig), protect_all=False)
    ran: list[str] = []

    @app.get("/zones")
    @auth_required
    def zones() -> Any:
        ran.append("zones")
        return jsonify(zones=[])

    outer = Client(BindcarMiddleware(app.wsgi_app))  # Basic mode: any well-formed token
    response = outer.get("/zones", headers=bearer("garbage"))

    assert (response.status_code, response.json) == (401, {"error": "Token validation failed: token not authenticated"})
    assert ran == []
    valid = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    assert outer.get("/zones", headers=bearer(valid)).status_code == 200
    assert ran == ["zones"]


def test_the_guards_own_identity_is_reused_not_reviewed_again(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig), cache_ttl=0)

    @app.get("/zones")
    @auth_required(namespaces="dns-system")
    def zones() -> Any:
        return jsonify(zones=[])

    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    before = fake_cluster.reviews_served
    assert app.test_client().get("/zones", headers=bearer(token)).status_code == 200
    assert fake_cluster.reviews_served - before == 1


# -- 9 ---------------------------------------------------------------------------------------------------


def test_an_app_wide_rule_naming_a_missing_view_argument_is_a_config_error(fake_kubeconfig: Path) -> None:
    app = Flask(__name__)
    app.testing = True
    app.config["BINDCAR_AUTHZ"] = RBAC(resource="zones", name="{name}")
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig))

    @app.get("/zones/<name>")
    def zone(name: str) -> Any:
        return jsonify(zone=name)

    @app.get("/zones")
    def zones() -> Any:
        return jsonify(zones=[])

    @app.get("/health")
    @auth_required(rbac=RBAC(resource="health"))
    def health() -> Any:
        return jsonify(ok=True)

    with pytest.raises(ConfigError) as e:
        app.test_client().get("/zones/example.com", headers=bearer("whatever"))
    assert str(e.value) == (
        "BINDCAR_AUTHZ: RBAC{'resource': 'zones', 'name': '{name}'} names view arguments that these routes lack: "
        "/static/<path:filename> (no name); /zones (no name). Give them their own @auth_required(rbac=...), "
        "exempt them, or use rules without view arguments app-wide"
    )


def test_an_unmatched_url_gets_its_404_after_authentication(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    app = Flask(__name__, static_folder=None)
    app.config["BINDCAR_AUTHZ"] = RBAC(resource="zones", name="{name}")
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig))

    @app.get("/zones/<name>")
    def zone(name: str) -> Any:
        return jsonify(zone=name)

    client = app.test_client()
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    assert client.get("/nowhere").status_code == 401
    assert client.get("/nowhere", headers=bearer(token)).status_code == 404
    assert client.delete("/zones/example.com", headers=bearer(token)).status_code == 405
    assert fake_cluster.access_reviews == []


# -- 10 --------------------------------------------------------------------------------------------------


def remote_user_app() -> Flask:
    app = Flask(__name__)

    @app.get("/<path:anything>")
    def anything(anything: str) -> Any:
        return jsonify(remote_user=request.environ.get("REMOTE_USER"))

    return app


@pytest.mark.parametrize("adapter", ["flask", "wsgi"])
def test_remote_user_is_only_what_flask_bindcar_sets(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str
) -> None:
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    forged = {"REMOTE_USER": "system:admin"}

    def client(**settings: Any) -> Client:
        app = remote_user_app()
        if adapter == "flask":
            BindcarAuth(app, exempt_paths="/health", **settings)
            return Client(app)
        return Client(BindcarMiddleware(app, exempt_paths="/health", **settings))

    basic = client()
    assert basic.get("/zones", headers=bearer("any"), environ_overrides=forged).json == {"remote_user": None}
    assert basic.get("/health", environ_overrides=forged).json == {"remote_user": None}
    reviewed = client(mode="tokenreview", kubeconfig=str(fake_kubeconfig))
    assert reviewed.get("/zones", headers=bearer(token), environ_overrides=forged).json == {"remote_user": SA}
    assert reviewed.get("/health", environ_overrides=forged).json == {"remote_user": None}


def test_the_first_review_ends_within_the_timeout_even_while_the_client_is_built(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    """A kubeconfig whose credential plugin takes 2 s: with a 1 s timeout, the first review ends at the deadline."""
    plugin = tmp_path / "slow-credential.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": fake_cluster.caller_token},
    }
    plugin.write_text(f"import json, time\ntime.sleep(2)\nprint(json.dumps({credential!r}))\n")
    kubeconfig = fake_cluster.write_kubeconfig(tmp_path / "kubeconfig")
    config = json.loads(kubeconfig.read_text())
    config["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin)],
            "interactiveMode": "Never",
        }
    }
    kubeconfig.write_text(json.dumps(config))
    app = remote_user_app()
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(kubeconfig), review_timeout=1)
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])

    response = app.test_client().get("/zones", headers=bearer(token))

    assert (response.status_code, response.json) == (
        401,
        {"error": "Token validation failed: TokenReview API call failed: no answer within 1s"},
    )
    assert fake_cluster.reviews_served == 0
