"""The local pre-check of TokenReview mode (issue 20): tokens the issuer's keys prove invalid get the
TokenReview's own answer (status, body, WWW-Authenticate) and no TokenReview is sent; everything
else is reviewed as before. Through both adapters in process, under gunicorn, and in ``review``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, jsonify
from werkzeug.test import Client

from flask_bindcar import AuthConfig, BindcarAuth, current_identity
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.config import ConfigError
from flask_bindcar.middleware import BindcarMiddleware
from flask_bindcar.review import review
from flask_bindcar.testing import FakeCluster
from tests.gunicorn_server import TARGETS

Answer = tuple[int, Any, str | None]
NS, SA = "zones", "updater"
CHALLENGE = 'Bearer realm="bindcar", error="invalid_token"'


def flask_client(kubeconfig: Path, **overrides: Any) -> Client:
    app = Flask("precheck")
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(kubeconfig), **overrides)

    @app.get("/zones")
    def zones() -> Any:
        return jsonify(caller=current_identity.username)

    return app.test_client()


def wsgi_client(kubeconfig: Path, **overrides: Any) -> Client:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"caller": environ["bindcar.identity"].username}).encode()]

    return Client(BindcarMiddleware(app, mode="tokenreview", kubeconfig=str(kubeconfig), **overrides))


ADAPTERS = {"flask": flask_client, "wsgi": wsgi_client}


def call(client: Client, token: str) -> Answer:
    answer = client.get("/zones", headers={"Authorization": f"Bearer {token}"})
    return answer.status_code, answer.get_json(), answer.headers.get("WWW-Authenticate")


def forged(c: FakeCluster) -> str:
    """Valid claims under this cluster's kid, signed by a key that is not its."""
    genuine = c.token(NS, SA, audiences=["bindcar"])
    claims = jwt.decode(genuine, options={"verify_signature": False})
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, foreign, algorithm="RS256", headers={"kid": jwt.get_unverified_header(genuine)["kid"]})


REFUSED: dict[str, tuple[Callable[[FakeCluster], str], str]] = {
    "forged": (forged, "go-jose/go-jose: error in cryptographic primitive"),
    "expired": (lambda c: c.token(NS, SA, audiences=["bindcar"], expires_in=-120), "service account token has expired"),
    "wrong audience": (
        lambda c: c.token(NS, SA, audiences=["other"]),
        'token audiences ["other"] is invalid for the target audiences ["bindcar"]',
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_refused_locally_with_the_tokenreviews_answer(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str, case: str
) -> None:
    mint, why = REFUSED[case]
    token = mint(fake_cluster)
    make = ADAPTERS[adapter]
    reviewed = call(make(fake_kubeconfig, token_precheck="off"), token)
    assert fake_cluster.review_requests == 1
    assert reviewed == (
        401,
        {"error": f"Token validation failed: [invalid bearer token, {why}]"},
        CHALLENGE,
    )
    client = make(fake_kubeconfig)  # auto, the default
    assert call(client, token) == reviewed
    assert call(client, token) == reviewed  # kept by the cache as the TokenReview's refusal is
    assert fake_cluster.review_requests == 1  # none sent for it


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_a_valid_token_is_still_reviewed_once(fake_cluster: FakeCluster, fake_kubeconfig: Path, adapter: str) -> None:
    token = fake_cluster.token(NS, SA, audiences=["bindcar"])
    client = ADAPTERS[adapter](fake_kubeconfig, token_precheck="on")
    ok = (200, {"caller": f"system:serviceaccount:{NS}:{SA}"}, None)
    assert call(client, token) == ok
    assert call(client, token) == ok  # a cache hit: no pre-check, no review
    assert fake_cluster.review_requests == 1
    fake_cluster.delete_service_account(NS, SA)  # revocation is the API server's to say
    other = fake_cluster.token(NS, "other", audiences=["bindcar"])
    fake_cluster.delete_service_account(NS, "other")
    status, body, _ = call(client, other)
    assert (status, body) == (
        401,
        {"error": 'Token validation failed: [invalid bearer token, serviceaccounts "other" not found]'},
    )
    assert fake_cluster.review_requests == 2


def test_off_sends_everything(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    client = wsgi_client(fake_kubeconfig, token_precheck="off")
    for mint, _ in REFUSED.values():
        call(client, mint(fake_cluster))
    assert fake_cluster.review_requests == len(REFUSED)


def test_a_rotated_key_is_accepted_after_one_refetch(
    fake_cluster: FakeCluster, make_auth: Callable[..., Authenticator], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flask_bindcar.precheck.MIN_REFETCH_INTERVAL", 0.0)
    auth = make_auth()
    auth.authenticate(f"Bearer {fake_cluster.token(NS, SA, audiences=['bindcar'])}")
    assert auth.precheck is not None and auth.precheck.store is not None
    assert auth.precheck.store.fetches == 1
    fake_cluster.rotate_signing_key()
    identity = auth.authenticate(f"Bearer {fake_cluster.token(NS, SA, audiences=['bindcar'], expires_in=3000)}")
    assert identity.username == f"system:serviceaccount:{NS}:{SA}"
    assert auth.precheck.store.fetches == 2
    assert fake_cluster.review_requests == 2


def test_an_unknown_kid_within_the_refetch_interval_goes_to_the_tokenreview(
    fake_cluster: FakeCluster, make_auth: Callable[..., Authenticator]
) -> None:
    """Keys fetched before a rotation cannot prove a new kid unknown: the API server says."""
    auth = make_auth()
    auth.authenticate(f"Bearer {fake_cluster.token(NS, SA, audiences=['bindcar'])}")
    fake_cluster.rotate_signing_key()
    auth.authenticate(f"Bearer {fake_cluster.token(NS, SA, audiences=['bindcar'], expires_in=3000)}")
    assert fake_cluster.review_requests == 2


def jane(fake_cluster: FakeCluster, tmp_path: Path) -> Path:
    """A caller that may review tokens but is no ServiceAccount: the issuer documents are not its to read."""
    return fake_cluster.write_kubeconfig(tmp_path / "jane", fake_cluster.add_caller("jane"))


DISCOVERY_403 = (
    'GET /.well-known/openid-configuration: HTTP 403 Forbidden: forbidden: User "jane" cannot get path '
    '"/.well-known/openid-configuration" (api_rejected)'
)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_auto_falls_back_with_one_warning_when_the_keys_cannot_be_read(
    fake_cluster: FakeCluster, tmp_path: Path, adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = ADAPTERS[adapter](jane(fake_cluster, tmp_path))
    with caplog.at_level(logging.WARNING, logger="flask_bindcar"):
        for _ in range(2):
            status, body, _ = call(client, fake_cluster.token(NS, SA, audiences=["bindcar"], expires_in=-120))
            assert (status, body) == (
                401,
                {"error": "Token validation failed: [invalid bearer token, service account token has expired]"},
            )
        assert call(client, fake_cluster.token(NS, SA, audiences=["bindcar"]))[0] == 200
    assert fake_cluster.review_requests == 3
    off = [r.getMessage() for r in caplog.records if "local pre-check off" in r.getMessage()]
    assert off == [f"local pre-check off: {DISCOVERY_403}"]


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_on_fails_closed_when_the_keys_cannot_be_read(fake_cluster: FakeCluster, tmp_path: Path, adapter: str) -> None:
    client = ADAPTERS[adapter](jane(fake_cluster, tmp_path), token_precheck="on")
    assert call(client, fake_cluster.token(NS, SA, audiences=["bindcar"])) == (
        401,
        {"error": f"Token validation failed: TokenReview API call failed: {DISCOVERY_403}"},
        CHALLENGE,
    )
    assert fake_cluster.review_requests == 0


def test_on_fails_closed_when_the_jwks_cannot_be_read(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    """With the issuer given, no discovery: the JWKS is what cannot be read."""
    from flask_bindcar.testing.oidc import ISSUER

    client = wsgi_client(jane(fake_cluster, tmp_path), token_precheck="on", token_issuers=ISSUER)
    status, body, _ = call(client, fake_cluster.token(NS, SA, audiences=["bindcar"]))
    assert (status, body) == (
        401,
        {
            "error": "Token validation failed: TokenReview API call failed: GET /openid/v1/jwks: HTTP 403 Forbidden: "
            'forbidden: User "jane" cannot get path "/openid/v1/jwks" (api_rejected)'
        },
    )


def test_the_settings(fake_kubeconfig: Path) -> None:
    config = AuthConfig.load(
        {"token_issuers": "https://a.example, https://b.example", "jwks_url": "https://keys.example/jwks"},
        environ={"BIND_TOKEN_PRECHECK": "ON"},
    )
    assert (config.token_precheck, config.token_issuers, config.jwks_url) == (
        "on",
        ("https://a.example", "https://b.example"),
        "https://keys.example/jwks",
    )
    assert AuthConfig.load({}, environ={"BIND_JWKS_URL": "/openid/v1/jwks"}).jwks_url == "/openid/v1/jwks"
    assert AuthConfig.load({}, environ={}).token_precheck == "auto"
    with pytest.raises(ConfigError, match="BIND_TOKEN_PRECHECK"):
        AuthConfig.load({}, environ={"BIND_TOKEN_PRECHECK": "sometimes"})
    with pytest.raises(ConfigError, match="BIND_JWKS_URL"):
        AuthConfig.load({}, environ={"BIND_JWKS_URL": "http://keys.example/jwks"})


def test_review_shows_the_pre_check(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    def lines(token: str, **overrides: Any) -> dict[str, tuple[str, str]]:
        config = AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig), **overrides}, environ={})
        report, _, _ = review(config, token)
        return {c.name: (c.status, c.detail) for c in report.checks}

    valid = fake_cluster.token(NS, SA, audiences=["bindcar"])
    kid = jwt.get_unverified_header(valid)["kid"]
    assert lines(valid)["local pre-check"] == (
        "pass",
        f"signature and claims verified (kid {kid}): the TokenReview decides",
    )
    assert fake_cluster.review_requests == 1
    expired = lines(fake_cluster.token(NS, SA, audiences=["bindcar"], expires_in=-120))
    assert expired["local pre-check"] == (
        "fail",
        "refused locally: Token validation failed: [invalid bearer token, service account token has expired]",
    )
    assert "token review" not in expired
    assert fake_cluster.review_requests == 1
    assert lines(valid, token_precheck="off")["local pre-check"] == ("pass", "off: token_precheck=off")
    assert lines("not-a-jwt")["local pre-check"][0] == "pass"
    assert lines("not-a-jwt")["local pre-check"][1].startswith("cannot decide: ")


@pytest.mark.parametrize("flavor", list(TARGETS))
def test_under_gunicorn(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, serve: Callable[..., Any], flavor: str
) -> None:
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(fake_kubeconfig)}
    expired = fake_cluster.token(NS, SA, audiences=["bindcar"], expires_in=-120)
    valid = fake_cluster.token(NS, SA, audiences=["bindcar"])
    path = {"flask": "/api/v1/zones", "wsgi": "/zones"}[flavor]
    with serve(TARGETS[flavor], env) as url:
        refused = requests.get(url + path, headers={"Authorization": f"Bearer {expired}"}, timeout=10)
        allowed = requests.get(url + path, headers={"Authorization": f"Bearer {valid}"}, timeout=10)
    assert refused.status_code == 401
    assert refused.json() == {
        "error": "Token validation failed: [invalid bearer token, service account token has expired]"
    }
    assert refused.headers["WWW-Authenticate"] == CHALLENGE
    assert allowed.status_code == 200
    assert fake_cluster.review_requests == 1


def test_tokens_the_keys_cannot_vouch_for_hold_at_most_one_callers_share(
    fake_cluster: FakeCluster, make_auth: Callable[..., Authenticator]
) -> None:
    """Forged tokens naming kids the issuer never had cannot be refused within the refetch interval
    (a key rotated in since the last fetch would make them valid), so they go to the TokenReview:
    but together they hold at most one caller's share of the slots, and a real caller with a fresh
    token still gets one while they flood."""
    import threading
    import time

    from flask_bindcar.errors import AuthError

    auth = make_auth(review_max_inflight=4, review_timeout=5)
    auth.authenticate(f"Bearer {fake_cluster.token(NS, SA, audiences=['bindcar'])}")  # the keys are loaded
    claims = jwt.decode(fake_cluster.token(NS, SA, audiences=["bindcar"]), options={"verify_signature": False})
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    made_up = [
        jwt.encode({**claims, "jti": f"j{n}"}, foreign, algorithm="RS256", headers={"kid": f"made-up-{n}"})
        for n in range(4)
    ]
    fake_cluster.latency = 1.0
    try:
        answers: list[str] = []

        def flood(token: str) -> None:
            try:
                auth.authenticate(f"Bearer {token}")
            except AuthError as e:
                answers.append(e.message)

        threads = [threading.Thread(target=flood, args=(t,)) for t in made_up]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 5
        while len(answers) < 2 and time.monotonic() < deadline:  # the two over the share wait 0.25 s, then give up
            time.sleep(0.01)
        assert auth.bulkhead.inflight == 2
        real = auth.authenticate(f"Bearer {fake_cluster.token(NS, 'real', audiences=['bindcar'])}")
        assert real.username == f"system:serviceaccount:{NS}:real"
        for t in threads:
            t.join()
    finally:
        fake_cluster.latency = 0.0
    overloaded = (
        "Token validation failed: TokenReview API call failed: overloaded: the review slots for tokens the "
        "issuer's keys cannot vouch for are in use (2 in flight)"
    )
    no_keys = "Token validation failed: [invalid bearer token, invalid signature, no keys found]"
    assert sorted(answers) == [overloaded, overloaded, no_keys, no_keys]


def test_auto_tries_the_keys_again_after_an_outage_rather_than_turning_off(
    fake_cluster: FakeCluster, make_auth: Callable[..., Authenticator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API server that does not answer when a process first needs the keys is an outage, not a
    cluster without published keys: the pre-check stays on and loads them once it answers."""
    from flask_bindcar.errors import AuthError

    monkeypatch.setattr("flask_bindcar.precheck.RETRY_INTERVAL", 0.0)
    auth = make_auth(review_timeout=0.5)
    with fake_cluster.faulty("hang"), pytest.raises(AuthError) as info:
        auth.authenticate(f"Bearer {fake_cluster.token(NS, SA, audiences=['bindcar'])}")
    assert info.value.message == "Token validation failed: TokenReview API call failed: no answer within 0.5s"
    before = fake_cluster.review_requests
    with pytest.raises(AuthError) as info:
        auth.authenticate(f"Bearer {forged(fake_cluster)}")
    assert info.value.message == (
        "Token validation failed: [invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"
    )
    assert fake_cluster.review_requests == before  # refused by the keys, loaded now
