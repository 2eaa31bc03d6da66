"""Issue 18, items 1-4: requests that must never reach the application unauthenticated or unjudged,
and one caller who must not starve the others.

1. A CORS preflight through the WSGI middleware: the wrapped app never runs without credentials.
2. Path authorization and paths a normaliser would rewrite (dot segments, empty segments, encoded
   slashes): refused with 400 before any review, in both adapters.
3. A method outside the known set: 405 before any review, in both adapters.
4. One authenticated caller flooding unique paths under path authorization: the others are served.

Each case runs in process (werkzeug's test client) and under a real gunicorn process.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, jsonify
from werkzeug.test import Client

from flask_bindcar import RBAC, BindcarAuth, BindcarMiddleware, auth_required, current_identity
from flask_bindcar.errors import ConfigError
from flask_bindcar.testing import FakeCluster
from tests.gunicorn_server import TARGETS

Serve = Callable[..., AbstractContextManager[str]]
PREFLIGHT = {"Origin": "https://ui.example", "Access-Control-Request-Method": "DELETE"}
MISSING = {"error": "Missing Authorization header"}
DOT = {"error": "Invalid request path: dot segments are not allowed"}
EMPTY = {"error": "Invalid request path: empty segments are not allowed"}
ENCODED = {"error": "Invalid request path: encoded slashes and backslashes are not allowed"}
BACKSLASH = {"error": "Invalid request path: backslashes are not allowed"}
DOUBLE = {"error": "Invalid request path: percent-encoded characters are not allowed after decoding"}
KNOWN_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class Recorder:
    """A plain WSGI app that answers every method, and remembers each request it ran."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"secret": "the protected body"}']


def caller(cluster: FakeCluster, *, path_grant: str | None = None) -> str:
    """A ServiceAccount's token; with ``path_grant``, RBAC lets it ``get`` and ``delete`` that path."""
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    if path_grant is not None:
        cluster.allow("system:serviceaccount:dns-system:external-dns", ["get", "delete", "create"], path=path_grant)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- 1. CORS preflight through the middleware ---------------------------------------------------------


def test_middleware_authenticates_a_preflight_and_never_runs_the_app_without_credentials(
    fake_cluster: FakeCluster, fake_kubeconfig: Path
) -> None:
    app = Recorder()
    client = Client(BindcarMiddleware(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig)))

    response = client.options("/api/v1/zones", headers=PREFLIGHT)

    assert (response.status_code, response.json) == (401, MISSING)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="bindcar"'
    assert app.seen == []
    # With credentials the preflight is a request like any other.
    token = caller(fake_cluster)
    assert client.options("/api/v1/zones", headers={**PREFLIGHT, **bearer(token)}).status_code == 200
    assert app.seen == [("OPTIONS", "/api/v1/zones")]


def test_middleware_answers_preflights_itself_when_told_to(fake_kubeconfig: Path) -> None:
    """``cors_preflight="answer"``: 204 from the middleware, and still the app never runs."""
    app = Recorder()
    client = Client(
        BindcarMiddleware(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig), cors_preflight="answer")
    )

    response = client.options("/api/v1/zones", headers=PREFLIGHT)

    assert response.status_code == 204
    assert response.data == b""
    assert response.headers["Vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    assert "Access-Control-Allow-Origin" not in response.headers
    assert app.seen == []
    # Half a preflight is a plain OPTIONS: authenticated.
    half = client.options("/api/v1/zones", headers={"Origin": "https://ui.example"})
    assert (half.status_code, half.json) == (401, MISSING)
    assert app.seen == []


def test_flask_can_authenticate_preflights_too(fake_kubeconfig: Path) -> None:
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig), cors_preflight="authenticate")
    ran: list[str] = []

    @app.route("/api/v1/zones", methods=["GET", "OPTIONS"])
    def zones() -> Any:
        ran.append("zones")
        return jsonify(secret="the protected body")

    response = app.test_client().options("/api/v1/zones", headers=PREFLIGHT)

    assert (response.status_code, response.json) == (401, MISSING)
    assert ran == []


def test_cors_preflight_setting_values() -> None:
    from flask_bindcar import AuthConfig

    assert AuthConfig.load({}, environ={}).cors_preflight is None
    assert AuthConfig.load({}, environ={"BIND_CORS_PREFLIGHT": " Answer "}).cors_preflight == "answer"
    with pytest.raises(ConfigError) as e:
        AuthConfig.load({}, environ={"BIND_CORS_PREFLIGHT": "pass"})
    assert str(e.value) == "BIND_CORS_PREFLIGHT='pass' is not valid: expected 'authenticate' or 'answer'"


# -- 2. paths a normaliser would rewrite, under path authorization ----------------------------------------


def flask_client(kubeconfig: Path, **settings: Any) -> tuple[Client, list[str]]:
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(kubeconfig), **settings)
    ran: list[str] = []

    @app.route("/<path:anything>", methods=["GET", "DELETE", "CREATE", "PROPFIND"])
    def everything(anything: str) -> Any:
        ran.append(anything)
        return jsonify(secret="the protected body", caller=current_identity.username)

    return Client(app), ran


def wsgi_client(kubeconfig: Path, **settings: Any) -> tuple[Client, list[tuple[str, str]]]:
    app = Recorder()
    return Client(BindcarMiddleware(app, mode="tokenreview", kubeconfig=str(kubeconfig), **settings)), app.seen


CLIENTS = {"flask": flask_client, "wsgi": wsgi_client}

BAD_PATHS = [
    ("/public/../admin", DOT),
    ("/public/%2e%2e/admin", DOT),
    ("/public/%2E%2E/admin", DOT),
    ("/public/./../admin", DOT),
    ("/public/./admin", DOT),
    ("/public/..", DOT),
    ("/public/..;/admin", DOT),
    ("/public//admin", EMPTY),
    ("/public///admin", EMPTY),
    ("/public/admin//", EMPTY),
    ("/public/%2F../admin", ENCODED),
    ("/public%2fadmin", ENCODED),
    ("/public/%5C..%5Cadmin", ENCODED),
    ("/public/..\\admin", BACKSLASH),
    ("/public/%252e%252e/admin", DOUBLE),
    ("/public/%252Fadmin", DOUBLE),
]


@pytest.mark.parametrize("adapter", list(CLIENTS))
@pytest.mark.parametrize(("path", "body"), BAD_PATHS)
def test_a_path_a_normaliser_would_rewrite_is_400_before_any_review(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str, path: str, body: dict[str, str]
) -> None:
    token = caller(fake_cluster, path_grant="/public/*")
    client, ran = CLIENTS[adapter](fake_kubeconfig, rbac=RBAC(path=True))
    reviews, access_reviews = fake_cluster.reviews_served, len(fake_cluster.access_reviews)

    response = client.get(path, headers=bearer(token))

    assert (response.status_code, response.json) == (400, body)
    assert response.headers["Content-Type"] == "application/json"
    assert ran == []
    assert (fake_cluster.reviews_served, len(fake_cluster.access_reviews)) == (reviews, access_reviews)


@pytest.mark.parametrize("adapter", list(CLIENTS))
def test_canonical_paths_are_reviewed_exactly_as_the_app_receives_them(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str
) -> None:
    token = caller(fake_cluster, path_grant="/public/*")
    client, ran = CLIENTS[adapter](fake_kubeconfig, rbac=RBAC(path=True))

    for path in ("/public/zones", "/public/zones/", "/public/a.b/..c/c..", "/public/%7Euser"):
        assert client.get(path, headers=bearer(token)).status_code == 200, path
    denied = client.get("/admin", headers=bearer(token))
    assert (denied.status_code, denied.json) == (
        403,
        {"error": "Forbidden: system:serviceaccount:dns-system:external-dns cannot get /admin"},
    )
    reviewed = [spec["nonResourceAttributes"]["path"] for spec in fake_cluster.access_reviews]
    assert reviewed == ["/public/zones", "/public/zones/", "/public/a.b/..c/c..", "/public/~user", "/admin"]
    received = [r if isinstance(r, str) else r[1] for r in ran]
    expected = ["public/zones", "public/zones/", "public/a.b/..c/c..", "public/~user"]
    assert received == (expected if adapter == "flask" else ["/" + p for p in expected])


@pytest.mark.parametrize("adapter", list(CLIENTS))
def test_without_path_authorization_paths_are_the_apps_business(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str
) -> None:
    token = caller(fake_cluster)
    client, ran = CLIENTS[adapter](fake_kubeconfig)
    assert client.get("/public/../admin", headers=bearer(token)).status_code == 200
    assert len(ran) == 1


def test_a_per_view_path_rule_refuses_too(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    token = caller(fake_cluster, path_grant="/public/*")
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig), protect_all=False)
    ran: list[str] = []

    @app.get("/public/<path:rest>")
    @auth_required(rbac=RBAC(path=True))
    def public(rest: str) -> Any:
        ran.append(rest)
        return jsonify(ok=True)

    response = app.test_client().get("/public/../admin", headers=bearer(token))
    assert (response.status_code, response.json) == (400, DOT)
    assert ran == []


# -- 3. methods outside the known set -----------------------------------------------------------------------


@pytest.mark.parametrize("adapter", list(CLIENTS))
@pytest.mark.parametrize("method", ["CREATE", "PROPFIND", "TRACE", "get"])
def test_an_unknown_method_is_405_before_any_review(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str, method: str
) -> None:
    if (adapter, method) == ("flask", "get"):
        pytest.skip("Flask's request object upper-cases the method: its routing and RBAC both see GET")
    token = caller(fake_cluster, path_grant="/api/*")
    client, ran = CLIENTS[adapter](fake_kubeconfig, rbac=RBAC(path=True))
    reviews = fake_cluster.reviews_served

    response = client.open("/api/v1/zones", method=method, headers=bearer(token))

    assert (response.status_code, response.json) == (405, {"error": f"Method not allowed: {method}"})
    assert response.headers["Allow"] == KNOWN_METHODS
    assert response.headers["Content-Type"] == "application/json"
    assert ran == []
    assert fake_cluster.reviews_served == reviews
    assert fake_cluster.access_reviews == []


@pytest.mark.parametrize("adapter", list(CLIENTS))
def test_the_method_set_can_grow(fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str) -> None:
    token = caller(fake_cluster)
    fake_cluster.allow("system:serviceaccount:dns-system:external-dns", "propfind", path="/dav/*")
    methods = "GET,HEAD,OPTIONS,PROPFIND"
    client, ran = CLIENTS[adapter](fake_kubeconfig, rbac=RBAC(path=True), allowed_methods=methods)
    assert client.open("/dav/x", method="PROPFIND", headers=bearer(token)).status_code == 200
    assert len(ran) == 1
    refused = client.open("/dav/x", method="DELETE", headers=bearer(token))
    assert (refused.status_code, refused.json) == (405, {"error": "Method not allowed: DELETE"})
    assert refused.headers["Allow"] == "GET, HEAD, OPTIONS, PROPFIND"


def test_allowed_methods_setting() -> None:
    from flask_bindcar import AuthConfig

    assert AuthConfig.load({}, environ={}).allowed_methods == tuple(KNOWN_METHODS.split(", "))
    loaded = AuthConfig.load({}, environ={"BIND_ALLOWED_METHODS": "get,\npropfind"})
    assert loaded.allowed_methods == ("GET", "PROPFIND")
    with pytest.raises(ConfigError) as e:
        AuthConfig.load({}, environ={"BIND_ALLOWED_METHODS": "GET,BAD METHOD"})
    assert str(e.value) == "BIND_ALLOWED_METHODS: 'BAD METHOD' is not valid: expected HTTP methods such as GET"


# -- items 1-3 under a real gunicorn process ---------------------------------------------------------------


def raw_request(url: str, request_line: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send ``request_line`` as written (no client-side normalisation of the path); status and body."""
    host, port = url.removeprefix("http://").split(":")
    lines = [request_line, f"Host: {host}:{port}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("flavor", list(TARGETS))
def test_under_gunicorn(serve: Serve, fake_cluster: FakeCluster, fake_kubeconfig: Path, flavor: str) -> None:
    token = caller(fake_cluster, path_grant="/public/*")
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(fake_kubeconfig), "BIND_AUTHZ": "path"}
    with serve(TARGETS[flavor], env) as url:
        preflight = requests.options(url + "/api/v1/zones", headers=PREFLIGHT, timeout=30)
        bad_paths = [
            raw_request(url, f"GET {path} HTTP/1.1", bearer(token))
            for path in (
                "/public/../admin",
                "/public/%2e%2e/admin",
                "/public/./../admin",
                "/public/%2F..%2Fadmin",
                "//public/admin",
            )
        ]
        method = raw_request(url, "CREATE /public/zones HTTP/1.1", bearer(token))
    if flavor == "wsgi":
        assert (preflight.status_code, preflight.json()) == (401, MISSING)
    else:  # Flask's own OPTIONS answer; the view never runs (test_seed_e2e)
        assert (preflight.status_code, preflight.content) == (200, b"")
    assert [(status, body.decode()) for status, body in bad_paths] == [
        (400, '{"error": "Invalid request path: dot segments are not allowed"}'),
        (400, '{"error": "Invalid request path: dot segments are not allowed"}'),
        (400, '{"error": "Invalid request path: dot segments are not allowed"}'),
        (400, '{"error": "Invalid request path: encoded slashes and backslashes are not allowed"}'),
        (400, '{"error": "Invalid request path: empty segments are not allowed"}'),
    ]
    assert method == (405, b'{"error": "Method not allowed: CREATE"}')
    assert fake_cluster.access_reviews == []


def test_one_callers_flood_leaves_the_others_served_under_gunicorn(
    serve: Serve, fake_cluster: FakeCluster, fake_kubeconfig: Path
) -> None:
    """The issue's numbers: one caller asks about unique paths with 12 threads at an API latency of
    200 ms; 10 other callers, one after another, are all served. ``/api/*`` is every authenticated
    user's to ``get`` (kube-apiserver's ``system:discovery``), so every request needs only its review."""
    flooder = fake_cluster.token("flood", "flooder", audiences=["bindcar"])
    others = [fake_cluster.token("dns-system", f"caller-{i}", audiences=["bindcar"]) for i in range(10)]
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(fake_kubeconfig), "BIND_AUTHZ": "path"}
    with serve(TARGETS["flask"], env, threads=16) as url:
        assert requests.get(url + "/api/v1/zones", headers=bearer(flooder), timeout=30).status_code == 200
        fake_cluster.latency = 0.2
        stop = threading.Event()
        flood: list[tuple[int, str]] = []

        def flood_thread() -> None:
            while not stop.is_set():
                r = requests.get(f"{url}/api/v1/zones/{uuid.uuid4().hex}", headers=bearer(flooder), timeout=30)
                flood.append((r.status_code, r.text))

        threads = [threading.Thread(target=flood_thread) for _ in range(12)]
        for t in threads:
            t.start()
        try:
            served = [requests.get(url + "/api/v1/zones", headers=bearer(t), timeout=30) for t in others]
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert [(r.status_code, r.json()["caller"]) for r in served] == [
        (200, f"system:serviceaccount:dns-system:caller-{i}") for i in range(10)
    ]
    overloaded = (
        '{"error": "Authorization unavailable: SubjectAccessReview API call failed: overloaded: this caller\'s '
        'share of the review slots is in use (2 in flight)"}'
    )
    assert {status for status, _ in flood} <= {404, 503}
    assert {text for status, text in flood if status == 503} <= {overloaded}
