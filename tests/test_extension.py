"""The Flask extension, through Flask's test client: hooks, decorators, identity, rendering."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, jsonify

from flask_bindcar import AuthConfig, AuthError, BindcarAuth, auth_exempt, auth_required, current_identity
from flask_bindcar.testing import FakeCluster

WWW_NONE = 'Bearer realm="bindcar"'
WWW_REQUEST = 'Bearer realm="bindcar", error="invalid_request"'
WWW_TOKEN = 'Bearer realm="bindcar", error="invalid_token"'


def make_app(**overrides: Any) -> Flask:
    app = Flask(__name__)

    @app.get("/api/v1/zones")
    def zones() -> Any:
        if not current_identity:
            return jsonify(method=None)
        return jsonify(method=current_identity.method, username=current_identity.username)

    @app.get("/api/v1/health")
    @auth_exempt
    def health() -> Any:
        return jsonify(status="ok", authenticated=bool(current_identity))

    @app.delete("/api/v1/zones/<name>")
    @auth_required(service_accounts=["system:serviceaccount:dns-system:external-dns"])
    def delete_zone(name: str) -> Any:
        return jsonify(deleted=name, by=current_identity.username)

    @app.get("/api/v1/ns-only")
    @auth_required(namespaces="dns-system")
    def ns_only() -> Any:
        return jsonify(namespace=current_identity.namespace)

    @app.get("/api/v1/async")
    @auth_required
    async def async_view() -> Any:
        return jsonify(method=current_identity.method)

    BindcarAuth(app, **overrides)
    return app


def assert_401(response: Any, message: str, www: str) -> None:
    assert response.status_code == 401
    assert response.get_json() == {"error": message}
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["WWW-Authenticate"] == www


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_view_is_protected_by_default() -> None:
    client = make_app().test_client()
    assert_401(client.get("/api/v1/zones"), "Missing Authorization header", WWW_NONE)
    assert_401(
        client.get("/api/v1/zones", headers={"Authorization": "Token abc"}),
        "Invalid Authorization header format. Expected: Bearer <token>",
        WWW_REQUEST,
    )
    assert_401(client.get("/api/v1/zones", headers={"Authorization": "Bearer "}), "Empty token", WWW_REQUEST)
    response = client.get("/api/v1/zones", headers=bearer("valid-token"))
    assert response.status_code == 200
    assert response.get_json() == {"method": "basic", "username": None}


def test_unknown_paths_ask_for_credentials_before_saying_not_found() -> None:
    client = make_app().test_client()
    assert_401(client.get("/nowhere"), "Missing Authorization header", WWW_NONE)
    assert client.get("/nowhere", headers=bearer("t")).status_code == 404


def test_shared_secret() -> None:
    client = make_app(api_token="s3cret").test_client()
    assert_401(client.get("/api/v1/zones", headers=bearer("guess")), "Invalid API token", WWW_TOKEN)
    assert client.get("/api/v1/zones", headers=bearer("s3cret")).get_json()["method"] == "shared-secret"


PREFLIGHT = {"Origin": "https://ui.example", "Access-Control-Request-Method": "DELETE"}


def test_exempt_views_and_paths() -> None:
    client = make_app(exempt_paths="/api/v1/zones").test_client()
    assert client.get("/api/v1/health").get_json() == {"status": "ok", "authenticated": False}
    assert client.get("/api/v1/zones").get_json() == {"method": None}


def test_options_is_authenticated_like_any_method() -> None:
    client = make_app().test_client()
    assert_401(client.options("/api/v1/zones"), "Missing Authorization header", WWW_NONE)
    # Half a preflight is not a preflight.
    assert_401(
        client.options("/api/v1/zones", headers={"Origin": "https://ui.example"}),
        "Missing Authorization header",
        WWW_NONE,
    )
    assert_401(
        client.options("/api/v1/zones", headers={"Access-Control-Request-Method": "GET"}),
        "Missing Authorization header",
        WWW_NONE,
    )
    response = client.options("/api/v1/zones", headers=bearer("t"))
    assert response.status_code == 200
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_cors_preflight_passes_without_credentials() -> None:
    response = make_app().test_client().options("/api/v1/zones/example.com", headers=PREFLIGHT)
    assert response.status_code == 200
    assert set(response.headers["Allow"].split(", ")) == {"DELETE", "OPTIONS"}


def options_view_app(**config: Any) -> Flask:
    """A view that lists OPTIONS itself, under ``@auth_required`` with an allowlist."""
    app = Flask(__name__)
    app.config.update(config)

    @app.route("/api/v1/secrets", methods=["GET", "OPTIONS"])
    @auth_required(service_accounts=["system:serviceaccount:dns-system:external-dns"])
    def secrets() -> Any:
        return jsonify(secret="zone-transfer-key", by=current_identity.username if current_identity else None)

    BindcarAuth(app, mode="tokenreview", kubeconfig=config.get("kubeconfig"))
    return app


@pytest.mark.parametrize("protect_all", [True, False])
def test_a_view_listing_options_does_not_run_its_body_unauthenticated(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, protect_all: bool
) -> None:
    client = options_view_app(BINDCAR_PROTECT_ALL=protect_all, kubeconfig=str(fake_kubeconfig)).test_client()
    assert_401(client.options("/api/v1/secrets"), "Missing Authorization header", WWW_NONE)
    intruder = fake_cluster.token("default", "intruder", audiences=["bindcar"])
    assert_401(
        client.options("/api/v1/secrets", headers=bearer(intruder)),
        "Token validation failed: ServiceAccount not authorized: system:serviceaccount:default:intruder",
        WWW_TOKEN,
    )
    allowed = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    response = client.options("/api/v1/secrets", headers=bearer(allowed))
    assert response.get_json() == {"secret": "zone-transfer-key", "by": "system:serviceaccount:dns-system:external-dns"}
    # A preflight is answered as Flask answers OPTIONS, without running the view.
    preflight = client.options("/api/v1/secrets", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.data == b""
    assert set(preflight.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_a_preflight_to_an_unknown_path_asks_for_credentials() -> None:
    assert_401(
        make_app().test_client().options("/nowhere", headers=PREFLIGHT), "Missing Authorization header", WWW_NONE
    )


def test_protect_all_off_leaves_only_auth_required_views_guarded() -> None:
    app = make_app()
    app2 = Flask(__name__)
    app2.config["BINDCAR_PROTECT_ALL"] = False
    app2.view_functions.update(app.view_functions)
    app2.url_map = app.url_map
    BindcarAuth(app2)
    client = app2.test_client()
    assert client.get("/api/v1/zones").get_json() == {"method": None}  # open: no before_request guard
    assert_401(client.get("/api/v1/async"), "Missing Authorization header", WWW_NONE)
    assert client.get("/api/v1/async", headers=bearer("t")).get_json() == {"method": "basic"}


def test_async_view() -> None:
    client = make_app().test_client()
    assert client.get("/api/v1/async", headers=bearer("t")).get_json() == {"method": "basic"}


def test_per_view_policy_fails_closed_in_basic_mode() -> None:
    client = make_app().test_client()
    assert_401(
        client.delete("/api/v1/zones/example.com", headers=bearer("t")),
        "Token validation failed: ServiceAccount not authorized: (anonymous)",
        WWW_TOKEN,
    )
    assert_401(
        client.get("/api/v1/ns-only", headers=bearer("t")),
        "Token validation failed: Not a ServiceAccount: (anonymous)",
        WWW_TOKEN,
    )


def test_per_view_policy_in_tokenreview_mode(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    client = make_app(mode="tokenreview", kubeconfig=str(fake_kubeconfig)).test_client()
    external_dns = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    other = fake_cluster.token("dns-system", "other-app", audiences=["bindcar"])
    elsewhere = fake_cluster.token("default", "my-app", audiences=["bindcar"])

    assert client.delete("/api/v1/zones/example.com", headers=bearer(external_dns)).get_json() == {
        "deleted": "example.com",
        "by": "system:serviceaccount:dns-system:external-dns",
    }
    assert_401(
        client.delete("/api/v1/zones/example.com", headers=bearer(other)),
        "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app",
        WWW_TOKEN,
    )
    assert client.get("/api/v1/ns-only", headers=bearer(other)).get_json() == {"namespace": "dns-system"}
    assert_401(
        client.get("/api/v1/ns-only", headers=bearer(elsewhere)),
        "Token validation failed: ServiceAccount from unauthorized namespace: default",
        WWW_TOKEN,
    )
    assert client.get("/api/v1/zones", headers=bearer(elsewhere)).get_json() == {
        "method": "tokenreview",
        "username": "system:serviceaccount:default:my-app",
    }


def test_per_view_policy_arguments_are_validated_at_decoration() -> None:
    from flask_bindcar import ConfigError

    with pytest.raises(ConfigError, match=r"auth_required\(service_accounts=\.\.\.\): 'external-dns' is not valid"):
        auth_required(service_accounts=["external-dns"])


def test_errorhandler_401_overrides_rendering() -> None:
    app = make_app()

    @app.errorhandler(401)
    def unauthorized(e: AuthError) -> Any:
        return jsonify(problem=e.description, status=401), 401, {"WWW-Authenticate": e.www_authenticate_value}

    response = app.test_client().get("/api/v1/zones")
    assert response.status_code == 401
    assert response.get_json() == {"problem": "Missing Authorization header", "status": 401}
    assert response.headers["WWW-Authenticate"] == WWW_NONE


def test_blueprints_are_protected_and_may_exempt() -> None:
    bp = Blueprint("dns", __name__, url_prefix="/dns")

    @bp.get("/records")
    def records() -> Any:
        return jsonify(method=current_identity.method)

    @bp.get("/ping")
    @auth_exempt
    def ping() -> Any:
        return "pong"

    app = Flask(__name__)
    app.register_blueprint(bp)
    BindcarAuth().init_app(app)
    client = app.test_client()
    assert_401(client.get("/dns/records"), "Missing Authorization header", WWW_NONE)
    assert client.get("/dns/records", headers=bearer("t")).get_json() == {"method": "basic"}
    assert client.get("/dns/ping").data == b"pong"


def test_one_extension_serves_apps_with_their_own_config() -> None:
    auth = BindcarAuth()
    first, second = Flask("first"), Flask("second")
    second.config["BINDCAR_API_TOKEN"] = "s3cret"
    for app in (first, second):
        app.add_url_rule("/", "index", lambda: jsonify(method=current_identity.method))
        auth.init_app(app)
    assert first.extensions["bindcar"] is auth is second.extensions["bindcar"]
    assert auth.config(first).api_token is None
    assert auth.config(second).api_token == "s3cret"
    assert first.test_client().get("/", headers=bearer("x")).get_json() == {"method": "basic"}
    assert_401(second.test_client().get("/", headers=bearer("x")), "Invalid API token", WWW_TOKEN)


def test_basic_mode_without_secret_warns_once_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="flask_bindcar"):
        make_app()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("flask-bindcar is in Basic mode without BIND_API_TOKEN")
    [configuration] = [m for r in caplog.records if (m := r.getMessage()).startswith("flask-bindcar configuration: ")]
    logged = json.loads(configuration.removeprefix("flask-bindcar configuration: "))
    assert list(logged) == sorted(logged)  # one JSON object, keys sorted: diffable between deployments
    assert (logged["mode"], logged["api_token"], logged["audiences"]) == ("basic", "unset", ["bindcar"])


@pytest.mark.parametrize(
    ("settings", "warning"),
    [
        ({"mode": "basic"}, "BASIC_WARNING"),
        ({"mode": "basic", "api_token": "s3cret"}, None),
        ({"mode": "tokenreview"}, "NO_ALLOWLIST_WARNING"),
        ({"mode": "tokenreview", "allowed_namespaces": "dns-system"}, None),
        ({"mode": "tokenreview", "allowed_service_accounts": "system:serviceaccount:dns-system:external-dns"}, None),
    ],
)
def test_the_posture_warning_at_startup(
    settings: dict[str, Any], warning: str | None, fake_kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_bindcar import authenticator

    if settings["mode"] == "tokenreview":
        settings = {**settings, "kubeconfig": str(fake_kubeconfig)}
    with caplog.at_level("INFO", logger="flask_bindcar"):
        authenticator.Authenticator(AuthConfig.load(settings, environ={}))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ([getattr(authenticator, warning)] if warning else [])


def test_failures_are_logged_with_request_but_not_token(caplog: pytest.LogCaptureFixture) -> None:
    client = make_app(api_token="s3cret").test_client()
    with caplog.at_level("INFO", logger="flask_bindcar"):
        client.get("/api/v1/zones?x=1", headers=bearer("not-the-secret-xyz"))
    [record] = [r for r in caplog.records if r.getMessage().startswith("authentication failed")]
    assert record.getMessage() == (
        "authentication failed: Invalid API token "
        "[reason=invalid_api_token remote_addr=127.0.0.1 method=GET path='/api/v1/zones']"
    )
    assert "not-the-secret-xyz" not in caplog.text


def test_auth_required_without_the_extension_says_what_is_missing() -> None:
    app = Flask(__name__)

    @app.get("/zones")
    @auth_required
    def zones() -> Any:
        return {}

    app.testing = True
    with pytest.raises(RuntimeError) as info:
        app.test_client().get("/zones", headers=bearer("abc"))
    assert str(info.value) == "@auth_required needs BindcarAuth(app) or BindcarAuth().init_app(app) first"


def test_an_extension_asked_about_an_app_it_was_not_given() -> None:
    auth, other = BindcarAuth(Flask("first")), Flask("other")
    for ask in (auth.authenticator, auth.config):
        with pytest.raises(RuntimeError) as info:
            ask(other)
        assert str(info.value) == "BindcarAuth.init_app() was not called for this app"
