"""jwt mode (issue 20, item 2): no TokenReview at all. A token is verified with the issuer's
published keys, its identity built as the TokenReview would build it, and refused with the
TokenReview's own answer; a lifetime cap stands in for the revocation it cannot see.

Against the real FakeCluster (its discovery document, its /openid/v1/jwks, its SubjectAccessReview),
through both adapters in process, under gunicorn, in ``doctor`` and in ``review``. ``responses``
stands in for an issuer URL only, which is fetched with ``requests``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, jsonify
from werkzeug.test import Client

from flask_bindcar import RBAC, AuthConfig, BindcarAuth, Identity, auth_required, current_identity
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.config import ConfigError
from flask_bindcar.doctor import doctor
from flask_bindcar.middleware import BindcarMiddleware
from flask_bindcar.review import review
from flask_bindcar.testing import ISSUER, FakeCluster
from flask_bindcar.testing.interface import bound_token_claims
from tests.conftest import WATCH
from tests.gunicorn_server import TARGETS

Answer = tuple[int, Any, str | None]
NS, SA = "zones", "updater"
USER = f"system:serviceaccount:{NS}:{SA}"
CHALLENGE = 'Bearer realm="bindcar", error="invalid_token"'
NOT_AUTHENTICATED = {"error": "Token validation failed: token not authenticated"}
CAPPED = {"error": "Token validation failed: token issued more than 3607s ago (the jwt mode's lifetime cap)"}
NO_IAT = {"error": "Token validation failed: token has no iat claim (the jwt mode's lifetime cap needs one)"}
YEAR = 365 * 86400


def identity_json(identity: Identity) -> dict[str, Any]:
    return {
        "method": identity.method,
        "username": identity.username,
        "uid": identity.uid,
        "groups": list(identity.groups),
        "namespace": identity.namespace,
        "service_account": identity.service_account,
        "pod_name": identity.pod_name,
        "pod_uid": identity.pod_uid,
        "credential_id": identity.credential_id,
        "audiences": list(identity.audiences),
    }


def flask_client(**settings: Any) -> Client:
    app = Flask("jwt_mode")
    BindcarAuth(app, **{"mode": "jwt", **settings})

    @app.get("/zones")
    def zones() -> Any:
        return jsonify(identity_json(current_identity))

    return app.test_client()


def wsgi_client(**settings: Any) -> Client:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(identity_json(environ["bindcar.identity"])).encode()]

    return Client(BindcarMiddleware(app, **{"mode": "jwt", **settings}))


ADAPTERS = {"flask": flask_client, "wsgi": wsgi_client}


def call(client: Client, token: str) -> Answer:
    answer = client.get("/zones", headers={"Authorization": f"Bearer {token}"})
    return answer.status_code, answer.get_json(), answer.headers.get("WWW-Authenticate")


def signed(cluster: FakeCluster, **changes: Any) -> str:
    """A token of ``NS/SA`` for ``bindcar``, signed by the cluster, with some claims changed (None removes one)."""
    sa = cluster.create_service_account(NS, SA)
    claims = bound_token_claims(sa, ["bindcar"], 3600)
    claims.update(changes)
    return WATCH.add(cluster.sign({k: v for k, v in claims.items() if v is not None}))


def forged(c: FakeCluster) -> str:
    """Valid claims under this cluster's kid, signed by a key that is not its."""
    genuine = c.token(NS, SA, audiences=["bindcar"])
    claims = jwt.decode(genuine, options={"verify_signature": False})
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = jwt.get_unverified_header(genuine)["kid"]
    return WATCH.add(jwt.encode(claims, foreign, algorithm="RS256", headers={"kid": kid}))


REFUSED: dict[str, tuple[Callable[[FakeCluster], str], dict[str, str]]] = {
    "forged": (
        forged,
        {"error": "Token validation failed: [invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"},
    ),
    "expired": (
        lambda c: c.token(NS, SA, audiences=["bindcar"], expires_in=-120),
        {"error": "Token validation failed: [invalid bearer token, service account token has expired]"},
    ),
    "wrong audience": (
        lambda c: c.token(NS, SA, audiences=["other"]),
        {
            "error": 'Token validation failed: [invalid bearer token, token audiences ["other"] is invalid for the '
            'target audiences ["bindcar"]]'
        },
    ),
    "another issuer": (lambda c: signed(c, iss="https://issuer.example"), NOT_AUTHENTICATED),
    "garbage": (lambda c: "not-a-jwt", NOT_AUTHENTICATED),
}


# -- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_a_valid_token_is_accepted_without_a_token_review(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str
) -> None:
    token = fake_cluster.token(NS, SA, audiences=["bindcar"], pod="web-0")
    client = ADAPTERS[adapter](kubeconfig=str(fake_kubeconfig))
    expected = {
        "method": "jwt",
        "username": USER,
        "uid": fake_cluster.service_accounts[(NS, SA)].uid,
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated"],
        "namespace": NS,
        "service_account": SA,
        "pod_name": "web-0",
        "pod_uid": fake_cluster.pods[(NS, "web-0")].uid,
        "credential_id": "JTI=" + jwt.decode(token, options={"verify_signature": False})["jti"],
        "audiences": ["bindcar"],
    }
    assert call(client, token) == (200, expected, None)
    assert call(client, token) == (200, expected, None)  # a cache hit
    assert fake_cluster.review_requests == 0


def test_the_identity_is_the_token_reviews_but_for_the_method(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    token = fake_cluster.token(NS, SA, audiences=["bindcar", "dns"], pod="web-0")

    def admitted(mode: str) -> Identity:
        config = AuthConfig.load(
            {"mode": mode, "kubeconfig": str(fake_kubeconfig), "audiences": "dns,bindcar"}, environ={}
        )
        return Authenticator(config).authenticate(f"Bearer {token}")

    local = admitted("jwt")
    assert fake_cluster.review_requests == 0
    reviewed = admitted("tokenreview")
    assert fake_cluster.review_requests == 1
    assert local.method == "jwt"
    assert local == replace(reviewed, method="jwt")


# -- refused, as a TokenReview refuses --------------------------------------------------------


@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_refused_with_the_token_reviews_answer(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str, case: str
) -> None:
    mint, body = REFUSED[case]
    token = mint(fake_cluster)
    client = ADAPTERS[adapter](kubeconfig=str(fake_kubeconfig))
    assert call(client, token) == (401, body, CHALLENGE)
    assert call(client, token) == (401, body, CHALLENGE)
    assert fake_cluster.review_requests == 0
    reviewed = ADAPTERS[adapter](mode="tokenreview", kubeconfig=str(fake_kubeconfig), token_precheck="off")
    assert call(reviewed, token) == (401, body, CHALLENGE)  # what the API server answers
    assert fake_cluster.review_requests == 1


def test_a_legacy_secret_token_is_not_authenticated(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    """Only the API server can say whether its Secret still exists: unknown here, so refused."""
    client = wsgi_client(kubeconfig=str(fake_kubeconfig))
    assert call(client, fake_cluster.legacy_token(NS, SA)) == (401, NOT_AUTHENTICATED, CHALLENGE)
    assert fake_cluster.review_requests == 0


# -- the lifetime cap --------------------------------------------------------------------------


def test_the_lifetime_cap(fake_cluster: FakeCluster, fake_kubeconfig: Path, caplog: pytest.LogCaptureFixture) -> None:
    """kube-apiserver extends projected tokens to a year; jwt mode cannot see their revocation."""
    now = int(time.time())
    extended = signed(fake_cluster, iat=now - 4000, nbf=now - 4000, exp=now + YEAR)
    young = signed(fake_cluster, iat=now - 3000, nbf=now - 3000, exp=now + YEAR)
    no_iat = signed(fake_cluster, iat=None)
    client = wsgi_client(kubeconfig=str(fake_kubeconfig))
    with caplog.at_level(logging.WARNING, logger="flask_bindcar"):
        assert call(client, extended) == (401, CAPPED, CHALLENGE)
    assert call(client, young)[0] == 200
    assert call(client, no_iat) == (401, NO_IAT, CHALLENGE)
    assert any(
        "token issued more than 3607s ago" in r.getMessage() and "reason=lifetime_cap" in r.getMessage()
        for r in caplog.records
    )
    assert call(wsgi_client(kubeconfig=str(fake_kubeconfig), jwt_max_token_lifetime=5000), extended)[0] == 200
    uncapped = wsgi_client(kubeconfig=str(fake_kubeconfig), jwt_max_token_lifetime=0)
    assert call(uncapped, extended)[0] == 200
    assert call(uncapped, no_iat)[0] == 200
    assert fake_cluster.review_requests == 0


def test_the_cache_keeps_no_token_past_the_cap(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    now = int(time.time())
    token = signed(fake_cluster, iat=now - 58, nbf=now - 58, exp=now + 3600)  # capped at now + 2
    client = wsgi_client(kubeconfig=str(fake_kubeconfig), jwt_max_token_lifetime=60, cache_ttl=30)
    assert call(client, token)[0] == 200
    time.sleep(max(0.0, now + 2.2 - time.time()))
    capped = {"error": "Token validation failed: token issued more than 60s ago (the jwt mode's lifetime cap)"}
    assert call(client, token) == (401, capped, CHALLENGE)


def test_the_cap_counts_as_a_failure_of_the_callers_credential() -> None:
    from flask_bindcar.errors import CREDENTIAL_REASONS

    assert "lifetime_cap" in CREDENTIAL_REASONS


# -- keys ---------------------------------------------------------------------------------------


def test_a_rotated_key_is_picked_up(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flask_bindcar.precheck.MIN_REFETCH_INTERVAL", 0.0)
    client = wsgi_client(kubeconfig=str(fake_kubeconfig))
    old = fake_cluster.token(NS, SA, audiences=["bindcar"])
    assert call(client, old)[0] == 200
    fake_cluster.rotate_signing_key()
    new = fake_cluster.token(NS, SA, audiences=["bindcar"], expires_in=3000)
    assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
    assert call(client, new)[0] == 200
    assert call(client, fake_cluster.token(NS, "other", audiences=["bindcar"], expires_in=3000))[0] == 200
    before_rotation = fake_cluster.issuer.keys[0]
    older = jwt.encode(
        bound_token_claims(fake_cluster.create_service_account(NS, "old"), ["bindcar"], 3600),
        before_rotation,
        algorithm="RS256",
        headers={"kid": jwt.get_unverified_header(old)["kid"]},
    )
    assert call(client, WATCH.add(older))[0] == 200  # the old key still verifies, as kube-apiserver's does
    assert fake_cluster.review_requests == 0


def test_a_kid_the_keys_lack_within_the_refetch_interval_is_refused_but_not_kept(
    fake_cluster: FakeCluster, fake_kubeconfig: Path
) -> None:
    auth = Authenticator(AuthConfig.load({"mode": "jwt", "kubeconfig": str(fake_kubeconfig)}, environ={}))
    assert auth.authenticate(f"Bearer {fake_cluster.token(NS, SA, audiences=['bindcar'])}").method == "jwt"
    fake_cluster.rotate_signing_key()
    new = f"Bearer {fake_cluster.token(NS, SA, audiences=['bindcar'], expires_in=3000)}"
    with pytest.raises(Exception) as refused:
        auth.authenticate(new)
    assert refused.value.message == (  # type: ignore[attr-defined]
        "Token validation failed: [invalid bearer token, invalid signature, no keys found]"
    )
    assert auth.local is not None and auth.local.keys.store is not None
    auth.local.keys.store.min_refetch_interval = 0.0  # the interval has passed
    assert auth.authenticate(new).username == USER  # the refusal was not kept by the cache
    assert fake_cluster.review_requests == 0


def jane(fake_cluster: FakeCluster, tmp_path: Path) -> Path:
    """A caller that is no ServiceAccount: the issuer's documents are not its to read."""
    return fake_cluster.write_kubeconfig(tmp_path / "jane", fake_cluster.add_caller("jane"))


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_keys_that_cannot_be_had_fail_closed(fake_cluster: FakeCluster, tmp_path: Path, adapter: str) -> None:
    client = ADAPTERS[adapter](kubeconfig=str(jane(fake_cluster, tmp_path)))
    body = {
        "error": "Token validation failed: TokenReview API call failed: GET /.well-known/openid-configuration: "
        'HTTP 403 Forbidden: forbidden: User "jane" cannot get path "/.well-known/openid-configuration" '
        "(api_rejected)"
    }
    assert call(client, fake_cluster.token(NS, SA, audiences=["bindcar"])) == (401, body, CHALLENGE)
    assert fake_cluster.review_requests == 0


def test_a_client_that_cannot_be_built_fails_closed(tmp_path: Path) -> None:
    """A kubeconfig that cannot be read: every token gets the client's failure, never a 500."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("not: [a kubeconfig")
    client = wsgi_client(kubeconfig=str(kubeconfig))
    status, body, challenge = call(client, "a.b.c")
    assert (status, challenge) == (401, CHALLENGE)
    assert body["error"].startswith("Token validation failed: Failed to create Kubernetes client: kubeconfig ")


# -- the issuer URL, fetched with requests ---------------------------------------------------


@pytest.fixture
def issuer_url(fake_cluster: FakeCluster) -> Iterator[responses.RequestsMock]:
    """The cluster's issuer, https://kubernetes.default.svc.cluster.local, serving its documents as a
    managed cluster's public issuer URL does."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(
            ISSUER + "/.well-known/openid-configuration",
            json={"issuer": ISSUER, "jwks_uri": ISSUER + "/openid/v1/jwks"},
        )
        mock.add_callback(
            responses.GET,
            ISSUER + "/openid/v1/jwks",
            callback=lambda _: (200, {}, json.dumps(fake_cluster.issuer.jwks())),
        )
        yield mock


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_outside_the_cluster_the_keys_come_from_the_issuer_url(
    fake_cluster: FakeCluster, issuer_url: responses.RequestsMock, adapter: str
) -> None:
    """No kubeconfig, no API server: a service out of the cluster's reach verifies its tokens."""
    client = ADAPTERS[adapter](token_issuers=ISSUER)
    status, body, _ = call(client, fake_cluster.token(NS, SA, audiences=["bindcar"]))
    assert (status, body["username"], body["method"]) == (200, USER, "jwt")
    assert call(client, REFUSED["expired"][0](fake_cluster)) == (401, REFUSED["expired"][1], CHALLENGE)
    assert [c.request.url for c in issuer_url.calls] == [
        ISSUER + "/.well-known/openid-configuration",
        ISSUER + "/openid/v1/jwks",
    ]
    assert fake_cluster.review_requests == 0


def test_a_discovery_document_of_another_issuer_is_refused(
    fake_cluster: FakeCluster, issuer_url: responses.RequestsMock
) -> None:
    issuer_url.replace(
        responses.GET,
        ISSUER + "/.well-known/openid-configuration",
        json={"issuer": "https://evil.example", "jwks_uri": "https://evil.example/jwks"},
    )
    client = wsgi_client(token_issuers=ISSUER)
    assert call(client, fake_cluster.token(NS, SA, audiences=["bindcar"])) == (
        401,
        {
            "error": "Token validation failed: TokenReview API call failed: the discovery document names "
            "'https://evil.example', not the issuer 'https://kubernetes.default.svc.cluster.local'"
        },
        CHALLENGE,
    )


def test_an_issuer_url_that_fails_fails_closed(fake_cluster: FakeCluster, issuer_url: responses.RequestsMock) -> None:
    issuer_url.replace(responses.GET, ISSUER + "/.well-known/openid-configuration", status=500)
    client = wsgi_client(token_issuers=ISSUER)
    assert call(client, fake_cluster.token(NS, SA, audiences=["bindcar"])) == (
        401,
        {
            "error": "Token validation failed: TokenReview API call failed: GET "
            "https://kubernetes.default.svc.cluster.local/.well-known/openid-configuration: HTTP 500"
        },
        CHALLENGE,
    )


# -- RBAC, allowlists, pod binding -------------------------------------------------------------


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_rbac_asks_the_api_server(fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str) -> None:
    fake_cluster.allow(USER, "get", path="/zones")
    client = ADAPTERS[adapter](kubeconfig=str(fake_kubeconfig), rbac=RBAC(path=True))
    assert call(client, fake_cluster.token(NS, SA, audiences=["bindcar"]))[0] == 200
    other = f"system:serviceaccount:{NS}:other"
    answer = client.get("/zones", headers={"Authorization": f"Bearer {fake_cluster.token(NS, 'other', ['bindcar'])}"})
    assert (answer.status_code, answer.get_json()) == (403, {"error": f"Forbidden: {other} cannot get /zones"})
    assert fake_cluster.access_reviews_served == 2
    assert fake_cluster.review_requests == 0


def test_a_views_own_rbac_without_an_api_server_is_503(
    fake_cluster: FakeCluster, issuer_url: responses.RequestsMock
) -> None:
    """Seen only at request time: the view's RBAC cannot be asked, which says nothing of the caller."""
    app = Flask("jwt_rbac")
    BindcarAuth(app, mode="jwt", token_issuers=ISSUER)

    @app.get("/zones")
    @auth_required(rbac=RBAC(path=True))
    def zones() -> Any:
        return jsonify(ok=True)

    token = fake_cluster.token(NS, SA, audiences=["bindcar"])
    answer = app.test_client().get("/zones", headers={"Authorization": f"Bearer {token}"})
    assert (answer.status_code, answer.get_json(), answer.headers["Retry-After"]) == (
        503,
        {
            "error": "Authorization unavailable: SubjectAccessReview API call failed: Failed to create Kubernetes "
            "client: no kubeconfig at ~/.kube/config and not running in a cluster (KUBERNETES_SERVICE_HOST is unset)"
        },
        "1",
    )


def test_allowlists_and_pod_binding_apply(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    client = wsgi_client(kubeconfig=str(fake_kubeconfig), allowed_namespaces="dns-system", require_pod=True)
    assert call(client, fake_cluster.token(NS, SA, audiences=["bindcar"], pod="web-0")) == (
        401,
        {"error": f"Token validation failed: ServiceAccount from unauthorized namespace: {NS}"},
        CHALLENGE,
    )
    assert call(client, fake_cluster.token("dns-system", SA, audiences=["bindcar"])) == (
        401,
        {"error": "Token validation failed: token is not bound to a pod"},
        CHALLENGE,
    )
    assert call(client, fake_cluster.token("dns-system", SA, audiences=["bindcar"], pod="web-1"))[0] == 200
    assert fake_cluster.review_requests == 0


# -- configuration ---------------------------------------------------------------------------


def test_the_settings(fake_kubeconfig: Path) -> None:
    config = AuthConfig.load({}, environ={"BIND_AUTH_MODE": "JWT", "KUBECONFIG": str(fake_kubeconfig)})
    assert (config.mode, config.jwt_max_token_lifetime) == ("jwt", 3607)
    config = AuthConfig.load(
        {},
        {"BINDCAR_AUTH_MODE": "jwt", "BINDCAR_JWT_MAX_TOKEN_LIFETIME": "600"},
        environ={"BIND_TOKEN_ISSUER": "https://issuer.example"},
    )
    assert (config.mode, config.jwt_max_token_lifetime) == ("jwt", 600)
    assert AuthConfig.load({}, environ={"BIND_JWT_MAX_TOKEN_LIFETIME": "0"}).jwt_max_token_lifetime == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"mode": "jwt", "token_issuers": "http://issuer.example"},
            "token_issuers='http://issuer.example' is not valid: expected an https:// URL: jwt mode without "
            "BIND_JWKS_URL fetches the issuer's discovery document and keys from it, and keys fetched in clear "
            "text could be anyone's",
        ),
        (
            {"mode": "jwt", "token_issuers": "https://issuer.example", "rbac": "path"},
            "rbac needs the API server, and none is configured (no KUBE_API_SERVER, no KUBECONFIG, no "
            "~/.kube/config, not in a cluster): jwt mode verifies tokens without it, but a SubjectAccessReview "
            "is the API server's to answer",
        ),
        (
            {"mode": "jwt"},
            "mode=jwt without BIND_TOKEN_ISSUER needs the API server, and none is configured (no "
            "KUBE_API_SERVER, no KUBECONFIG, no ~/.kube/config, not in a cluster): it names the issuer and "
            "publishes its keys; set BIND_TOKEN_ISSUER to the issuer's https URL to fetch them from there",
        ),
        (
            {"mode": "jwt", "token_issuers": "https://issuer.example", "jwks_url": "/openid/v1/jwks"},
            "jwks_url='/openid/v1/jwks' needs the API server, and none is configured (no KUBE_API_SERVER, no "
            "KUBECONFIG, no ~/.kube/config, not in a cluster): it is a path of the API server; give an https URL",
        ),
        ({"jwt_max_token_lifetime": "-1"}, "jwt_max_token_lifetime='-1' is not valid: expected a whole number"),
        ({"jwt_max_token_lifetime": "an hour"}, "jwt_max_token_lifetime='an hour' is not valid: expected a whole"),
        ({"mode": "kerberos"}, "mode='kerberos' is not valid: expected 'basic', 'tokenreview' or 'jwt'"),
    ],
)
def test_what_cannot_work_stops_the_app_at_startup(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        AuthConfig.load(settings, environ={})
    assert str(e.value).startswith(message)


def test_outside_the_cluster_it_needs_requests_not_the_kubernetes_client() -> None:
    code = (
        "import sys; sys.modules['kubernetes'] = None\n"
        "from flask_bindcar import AuthConfig, ConfigError\n"
        "env = {'BIND_AUTH_MODE': 'jwt', 'BIND_TOKEN_ISSUER': 'https://issuer.example'}\n"
        "print(AuthConfig.load(environ=env).mode)\n"
        "sys.modules['requests'] = None\n"
        "try:\n"
        "    AuthConfig.load(environ=env)\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "jwt",
        "BIND_AUTH_MODE=jwt fetches the issuer's keys over https with requests: pip install 'flask-bindcar[jwt]'",
    ]


def test_an_api_server_found_anywhere_serves_rbac(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"mode": "jwt", "token_issuers": "https://issuer.example", "rbac": "path"}
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert AuthConfig.load(settings, environ={}).rbac is not None
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    (Path.home() / ".kube").mkdir()
    (Path.home() / ".kube" / "config").write_text("{}")
    assert AuthConfig.load(settings, environ={}).rbac is not None


# -- what it gives up, said at startup, in doctor and in review ------------------------------


def test_one_startup_warning_says_what_jwt_mode_cannot_see(
    fake_kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="flask_bindcar"):
        Authenticator(
            AuthConfig.load({"mode": "jwt", "kubeconfig": str(fake_kubeconfig), "allowed_namespaces": NS}, environ={})
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "flask-bindcar is in jwt mode: tokens are verified with the issuer's published keys and no TokenReview is "
        "sent, so a deleted ServiceAccount or pod is noticed only when its token expires or passes the lifetime cap "
        "(BIND_JWT_MAX_TOKEN_LIFETIME=3607s)"
    ]


def test_doctor_shows_the_issuer_and_the_keys(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    config = AuthConfig.load({"mode": "jwt", "kubeconfig": str(fake_kubeconfig), "allowed_namespaces": NS}, environ={})
    report = doctor(config, threads=8, authorization=False)
    checks = {c.name: c for c in report.checks}
    assert report.ok, report.text()
    assert checks["configuration"].detail == "jwt mode"
    kid = jwt.get_unverified_header(fake_cluster.caller_token)["kid"]
    keys = checks["signing keys"]
    assert (keys.status, keys.detail) == ("pass", f"1 key of {ISSUER} from /openid/v1/jwks (through the API server)")
    assert keys.lines == [f"kid {kid}", "fetched 0s ago; again after an hour, or for a token naming a kid they lack"]
    assert next(c.detail for c in report.checks if c.name == "posture").startswith("flask-bindcar is in jwt mode")
    assert "token review" not in checks and "permission" not in checks
    assert fake_cluster.review_requests == 0


def test_doctor_when_the_keys_cannot_be_had(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    config = AuthConfig.load({"mode": "jwt", "kubeconfig": str(jane(fake_cluster, tmp_path))}, environ={})
    report = doctor(config, threads=8, authorization=False)
    keys = {c.name: c for c in report.checks}["signing keys"]
    assert not report.ok
    assert keys.status == "fail"
    assert keys.detail.startswith('GET /.well-known/openid-configuration: HTTP 403 Forbidden: forbidden: User "jane"')


def test_review_shows_the_local_verification(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    config = AuthConfig.load({"mode": "jwt", "kubeconfig": str(fake_kubeconfig)}, environ={})

    def steps(token: str) -> dict[str, tuple[str, str]]:
        report, _, _ = review(config, token)
        return {c.name: (c.status, c.detail) for c in report.checks}

    valid = fake_cluster.token(NS, SA, audiences=["bindcar"])
    claims = jwt.decode(valid, options={"verify_signature": False})
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(claims["exp"], claims["iat"] + 3607)))
    accepted = steps(valid)
    assert accepted["local verification"] == (
        "pass",
        f"signature and claims verified (kid {jwt.get_unverified_header(valid)['kid']}), accepted until {until}: "
        "no TokenReview (jwt mode)",
    )
    assert "token review" not in accepted
    assert accepted["result"] == ("pass", f"allowed as {USER}")
    expired = steps(REFUSED["expired"][0](fake_cluster))
    assert expired["local verification"] == ("fail", "refused locally: " + REFUSED["expired"][1]["error"])
    now = int(time.time())
    capped = steps(signed(fake_cluster, iat=now - 4000, nbf=now - 4000, exp=now + YEAR))
    assert capped["local verification"] == ("fail", "refused locally: " + CAPPED["error"])
    assert fake_cluster.review_requests == 0


# -- under gunicorn --------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", list(TARGETS))
def test_under_gunicorn(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, serve: Callable[..., Any], flavor: str
) -> None:
    env = {"BIND_AUTH_MODE": "jwt", "KUBECONFIG": str(fake_kubeconfig), "BIND_ALLOWED_NAMESPACES": NS}
    expired = REFUSED["expired"][0](fake_cluster)
    valid = fake_cluster.token(NS, SA, audiences=["bindcar"])
    path = {"flask": "/api/v1/zones", "wsgi": "/zones"}[flavor]
    with serve(TARGETS[flavor], env, workers=2) as url:
        refused = requests.get(url + path, headers={"Authorization": f"Bearer {expired}"}, timeout=10)
        allowed = [requests.get(url + path, headers={"Authorization": f"Bearer {valid}"}, timeout=10) for _ in range(4)]
    assert (refused.status_code, refused.json(), refused.headers["WWW-Authenticate"]) == (
        401,
        REFUSED["expired"][1],
        CHALLENGE,
    )
    assert [(a.status_code, a.json()["caller"], a.json()["method"]) for a in allowed] == [(200, USER, "jwt")] * 4
    assert fake_cluster.review_requests == 0


def test_a_made_up_uuid_token_costs_nothing(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    client = wsgi_client(kubeconfig=str(fake_kubeconfig))
    for _ in range(3):
        assert call(client, str(uuid.uuid4()))[:2] == (401, NOT_AUTHENTICATED)
    assert fake_cluster.review_requests == 0
