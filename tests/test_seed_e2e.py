"""The seed guide's examples, end to end: an app served by gunicorn, configured by environment
variables exactly as in the seed, the stand-in as the cluster, ``requests`` as the client.

Every test runs twice: a Flask app with ``BindcarAuth(app)``, and a plain WSGI app wrapped by
``gunicorn 'flask_bindcar.middleware:wrap("tests.apps.wsgi_app:app")'``.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from flask_bindcar.testing import DEFAULT_CALLER, FakeCluster
from tests.gunicorn_server import TARGETS

ZONES = "/api/v1/zones"
Serve = Callable[..., AbstractContextManager[str]]


@pytest.fixture(params=sorted(TARGETS))
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(
    flavor: str, serve: Serve, fake_cluster: FakeCluster, fake_kubeconfig: Path
) -> Callable[..., AbstractContextManager[str]]:
    """``with server(**env) as url:`` — the app under gunicorn, TokenReview against the stand-in."""

    @contextmanager
    def start(**env: str) -> Iterator[str]:
        settings = {"KUBECONFIG": str(fake_kubeconfig), **env}
        if flavor == "wsgi":  # the Flask app exempts its probe with @auth_exempt instead
            settings["BIND_AUTH_EXEMPT_PATHS"] = "/api/v1/health"
        with serve(TARGETS[flavor], settings) as url:
            yield url

    return start


def call(url: str, token: str | None = None, *, header: str | None = None, path: str = ZONES) -> requests.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if header is not None:
        headers["Authorization"] = header
    return requests.get(url + path, headers=headers, timeout=30)


def assert_ok(response: requests.Response, caller: str | None, method: str = "tokenreview") -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"zones": [], "caller": caller, "method": method}


def assert_401(response: requests.Response, error: str) -> None:
    assert response.status_code == 401
    assert response.json() == {"error": error}
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="bindcar"')


def assert_header_errors(url: str) -> None:
    """The first three rows of the seed's Error Messages table."""
    assert_401(call(url), "Missing Authorization header")
    assert_401(call(url, header="Basic dXNlcjpwYXNz"), "Invalid Authorization header format. Expected: Bearer <token>")
    assert_401(call(url, header="Bearer "), "Empty token")


def test_basic_mode(server: Any) -> None:
    """Basic Mode (default): presence and format only; any non-empty token passes."""
    with server(KUBECONFIG="/nonexistent") as url:
        assert_header_errors(url)
        assert_ok(call(url, "invalid-token"), None, "basic")
        assert_ok(call(url, header="bearer anything"), None, "basic")
        assert call(url, path="/api/v1/health").json() == {"status": "ok"}


def test_basic_mode_with_shared_secret(server: Any) -> None:
    with server(BIND_API_TOKEN="s3cret-token") as url:
        assert_401(call(url, "wrong"), "Invalid API token")
        assert_ok(call(url, "s3cret-token"), None, "shared-secret")


def test_development_profile(server: Any, fake_cluster: FakeCluster) -> None:
    """Relaxed: audience bindcar, every namespace and ServiceAccount."""
    with server(BIND_AUTH_MODE="tokenreview", BIND_TOKEN_AUDIENCES="bindcar") as url:
        assert_header_errors(url)
        token = fake_cluster.token("default", "my-app", audiences=["bindcar"])
        assert_ok(call(url, token), "system:serviceaccount:default:my-app")
        assert call(url, path="/api/v1/health").json() == {"status": "ok"}


def test_testing_invalid_tokens(server: Any) -> None:
    """Testing Invalid Tokens: ``curl -H "Authorization: Bearer invalid-token"``."""
    with server(BIND_AUTH_MODE="tokenreview") as url:
        assert_401(call(url, "invalid-token"), "Token validation failed: token not authenticated")


def test_expired_token(server: Any, fake_cluster: FakeCluster) -> None:
    with server(BIND_AUTH_MODE="tokenreview") as url:
        token = fake_cluster.token("default", "my-app", audiences=["bindcar"], expires_in=-120)
        assert_401(
            call(url, token), "Token validation failed: [invalid bearer token, service account token has expired]"
        )


def test_audience_validation(server: Any, fake_cluster: FakeCluster) -> None:
    """Test audience validation: a token without audience fails, one with --audience=bindcar succeeds."""
    audiences = "bindcar,https://bindcar.dns-system.svc.cluster.local"
    with server(BIND_AUTH_MODE="tokenreview", BIND_TOKEN_AUDIENCES=audiences) as url:
        no_audience = fake_cluster.token("default", "my-app")  # kubectl create token my-app
        assert_401(
            call(url, no_audience),
            'Token validation failed: [invalid bearer token, token audiences ["https://kubernetes.default.svc.'
            'cluster.local"] is invalid for the target audiences ["bindcar" "https://bindcar.dns-system.svc.'
            'cluster.local"]]',
        )
        with_audience = fake_cluster.token("default", "my-app", audiences=["bindcar"])
        assert_ok(call(url, with_audience), "system:serviceaccount:default:my-app")
        service_audience = fake_cluster.token(
            "default", "my-app", audiences=["https://bindcar.dns-system.svc.cluster.local"]
        )
        assert_ok(call(url, service_audience), "system:serviceaccount:default:my-app")


def test_namespace_restriction(server: Any, fake_cluster: FakeCluster) -> None:
    """Test namespace restriction: export BIND_ALLOWED_NAMESPACES="dns-system"."""
    with server(BIND_AUTH_MODE="tokenreview", BIND_ALLOWED_NAMESPACES="dns-system") as url:
        allowed = fake_cluster.token("dns-system", "test-sa", audiences=["bindcar"])
        assert_ok(call(url, allowed), "system:serviceaccount:dns-system:test-sa")
        blocked = fake_cluster.token("default", "test-sa", audiences=["bindcar"])
        assert_401(call(url, blocked), "Token validation failed: ServiceAccount from unauthorized namespace: default")


def test_service_account_allowlist(server: Any, fake_cluster: FakeCluster) -> None:
    """Test service account allowlist: only external-dns in dns-system."""
    allowlist = "system:serviceaccount:dns-system:external-dns"
    with server(BIND_AUTH_MODE="tokenreview", BIND_ALLOWED_SERVICE_ACCOUNTS=allowlist) as url:
        allowed = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
        assert_ok(call(url, allowed), "system:serviceaccount:dns-system:external-dns")
        blocked = fake_cluster.token("dns-system", "other-app", audiences=["bindcar"])
        assert_401(
            call(url, blocked),
            "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app",
        )


def test_configmap_newline_separated_allowlist(server: Any, fake_cluster: FakeCluster) -> None:
    """ConfigMap Alternative: the ``allowed-service-accounts: |`` value, newline-separated, as written."""
    value = (
        "system:serviceaccount:dns-system:external-dns\n"
        "system:serviceaccount:dns-system:cert-manager\n"
        "system:serviceaccount:dns-system:ingress-dns\n"
    )
    with server(BIND_AUTH_MODE="tokenreview", BIND_ALLOWED_SERVICE_ACCOUNTS=value) as url:
        for name in ("external-dns", "cert-manager", "ingress-dns"):
            token = fake_cluster.token("dns-system", name, audiences=["bindcar"])
            assert_ok(call(url, token), f"system:serviceaccount:dns-system:{name}")
        other = fake_cluster.token("dns-system", "other-app", audiences=["bindcar"])
        assert_401(
            call(url, other),
            "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app",
        )


def test_staging_profile(server: Any, fake_cluster: FakeCluster) -> None:
    """Moderate: audience bindcar, namespaces dns-system and test-system."""
    env = {"BIND_AUTH_MODE": "tokenreview", "BIND_TOKEN_AUDIENCES": "bindcar"}
    with server(**env, BIND_ALLOWED_NAMESPACES="dns-system,test-system") as url:
        for namespace in ("dns-system", "test-system"):
            token = fake_cluster.token(namespace, "app", audiences=["bindcar"])
            assert_ok(call(url, token), f"system:serviceaccount:{namespace}:app")
        token = fake_cluster.token("kube-system", "app", audiences=["bindcar"])
        assert_401(call(url, token), "Token validation failed: ServiceAccount from unauthorized namespace: kube-system")


def test_production_profile(server: Any, fake_cluster: FakeCluster) -> None:
    """Strict: two audiences, one namespace, one ServiceAccount."""
    env = {
        "BIND_AUTH_MODE": "tokenreview",
        "BIND_TOKEN_AUDIENCES": "bindcar,https://bindcar.dns-system.svc.cluster.local",
        "BIND_ALLOWED_NAMESPACES": "dns-system",
        "BIND_ALLOWED_SERVICE_ACCOUNTS": "system:serviceaccount:dns-system:external-dns",
    }
    with server(**env) as url:
        token = fake_cluster.token(
            "dns-system", "external-dns", audiences=["https://bindcar.dns-system.svc.cluster.local"]
        )
        assert_ok(call(url, token), "system:serviceaccount:dns-system:external-dns")
        cert_manager = fake_cluster.token("dns-system", "cert-manager", audiences=["bindcar"])
        assert_401(
            call(url, cert_manager),
            "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:cert-manager",
        )
        default_ns = fake_cluster.token("default", "external-dns", audiences=["bindcar"])
        assert_401(
            call(url, default_ns), "Token validation failed: ServiceAccount from unauthorized namespace: default"
        )


def test_error_rows_from_the_kubernetes_side(server: Any, fake_cluster: FakeCluster) -> None:
    """The remaining rows of the Error Messages table: client, API call, missing user information."""
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with server(BIND_AUTH_MODE="tokenreview", BIND_TOKEN_CACHE_TTL="0", BIND_TOKEN_REVIEW_TIMEOUT="1") as url:
        # The first request starts building the client, which counts toward its 1 s deadline: on a
        # loaded machine it may end there (test_hardening), so the rows below start from a built one.
        call(url, token)
        with fake_cluster.faulty("no_user"):
            assert_401(call(url, token), "Token validation failed: No user information in TokenReview response")
        fake_cluster.revoke_token_review(DEFAULT_CALLER)
        assert_401(
            call(url, token),
            "Token validation failed: TokenReview API call failed: HTTP 403 Forbidden: tokenreviews.authentication."
            'k8s.io is forbidden: User "system:serviceaccount:dns-system:bindcar" cannot create resource '
            '"tokenreviews" in API group "authentication.k8s.io" at the cluster scope',
        )
        fake_cluster.grant_token_review(DEFAULT_CALLER)
        with fake_cluster.faulty("hang"):
            assert_401(call(url, token), "Token validation failed: TokenReview API call failed: no answer within 1s")
        with fake_cluster.faulty("garbage"):
            assert_401(call(url, token), "Token validation failed: TokenReview API call failed: response is not JSON")
        assert_ok(call(url, token), "system:serviceaccount:dns-system:external-dns")


def test_failed_to_create_kubernetes_client(server: Any, fake_cluster: FakeCluster, tmp_path: Path) -> None:
    missing = tmp_path / "missing-kubeconfig"
    with server(BIND_AUTH_MODE="tokenreview", KUBECONFIG=str(missing)) as url:
        token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
        assert_401(
            call(url, token),
            f"Token validation failed: Failed to create Kubernetes client: kubeconfig {missing} does not exist",
        )


def raw_request(url: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """Send header bytes as given (duplicates, non-ASCII) that ``requests`` would refuse or merge."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("GET", ZONES)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    response = conn.getresponse()
    return response.status, response.read()


def test_malformed_headers_on_the_wire(server: Any, fake_cluster: FakeCluster) -> None:
    invalid = b'{"error": "Invalid Authorization header format. Expected: Bearer <token>"}'
    with server(BIND_AUTH_MODE="tokenreview") as url:
        token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"]).encode()
        two_headers = [(b"Authorization", b"Bearer " + token), (b"Authorization", b"Bearer " + token)]
        assert raw_request(url, two_headers) == (401, invalid)
        assert raw_request(url, [(b"Authorization", "Bearer tök€n".encode())]) == (401, invalid)
        assert raw_request(url, [(b"Authorization", b"Bearer \xff\xfe")]) == (401, invalid)
        status, body = raw_request(url, [(b"Authorization", b"Bearer " + token)])
        assert (status, json.loads(body)["caller"]) == (200, "system:serviceaccount:dns-system:external-dns")
    assert fake_cluster.reviews_served == 1


def test_options_needs_a_token_but_a_cors_preflight_does_not(
    server: Any, fake_cluster: FakeCluster, flavor: str
) -> None:
    """OPTIONS is authenticated like GET. In Flask a CORS preflight (Origin + Access-Control-Request-Method)
    gets Flask's own OPTIONS answer; the middleware never runs the wrapped app without credentials, so
    there a preflight is authenticated too (issue 18)."""
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "GET"}
    with server(BIND_AUTH_MODE="tokenreview") as url:
        for headers in ({}, {"Origin": "https://ui.example"}, {"Access-Control-Request-Method": "GET"}):
            assert_401(requests.options(url + ZONES, headers=headers, timeout=30), "Missing Authorization header")
        token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
        response = requests.options(url + ZONES, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert response.status_code == 200
        assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
        response = requests.options(url + ZONES, headers=preflight, timeout=30)
        if flavor == "wsgi":
            assert_401(response, "Missing Authorization header")
        else:
            assert response.status_code == 200
            assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
            assert response.content == b""
    assert fake_cluster.reviews_served == 1


def test_preloaded_app_with_several_workers(serve: Serve, fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    """``gunicorn --preload``: the app is built, and reviews once, before the fork; each worker builds its
    own client rather than share the parent's open connection."""
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    env = {
        "BIND_AUTH_MODE": "tokenreview",
        "KUBECONFIG": str(fake_kubeconfig),
        "BIND_TOKEN_CACHE_TTL": "0",
        "TEST_REVIEW_AT_IMPORT": token,
    }
    with serve(TARGETS["flask"], env, workers=2, preload=True) as url, ThreadPoolExecutor(8) as pool:
        # Concurrent, so that both workers answer: sharing one TLS connection corrupts its stream.
        for response in pool.map(lambda _: call(url, token), range(40)):
            assert_ok(response, "system:serviceaccount:dns-system:external-dns")
    # The startup review, then the workers' own; concurrent requests share one (single flight).
    assert 1 < fake_cluster.reviews_served <= 41
