"""Key rotation on both clusters (issue 20, item 4): after ``rotate_signing_key()`` (FakeCluster's
new key; on RealCluster kube-apiserver restarted with a new ``--service-account-signing-key-file``
and both public keys), an app in TokenReview mode with the pre-check on accepts the tokens of the
old key and of the new one, and refuses a token signed by a key the cluster never had with the
TokenReview's own answer, locally.

The app is not restarted: its `KeyStore` learns the new key when a token names a ``kid`` it lacks
(one refetch). A refetch starts at most once per `MIN_REFETCH_INTERVAL` (5 s) after the last one,
and these tests wait that interval out (`wait_out_refetch_interval`) rather than shorten it:
before it has passed, a token of a ``kid`` the kept keys lack goes to the TokenReview instead
(tests/test_precheck.py shows that case).

The tokens are minted by the cluster (TokenRequest on the real one); only the forged ones are
signed here, with a key of their own.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, jsonify
from flask.testing import FlaskClient

from flask_bindcar import BindcarAuth, current_identity
from flask_bindcar.jwks import KeyStore, key_id, parse_jwks
from flask_bindcar.precheck import MIN_REFETCH_INTERVAL, PreCheck
from flask_bindcar.testing import Cluster, FakeCluster
from tests.conftest import WATCH, RecordingRealCluster

CHALLENGE = 'Bearer realm="bindcar", error="invalid_token"'
CRYPTO_FAILURE = "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"
NO_KEYS = "[invalid bearer token, invalid signature, no keys found]"
ASSETS = os.environ.get("KUBEBUILDER_ASSETS")
"""Read as the module is imported: the autouse ``clean_environment`` fixture removes KUBE*
variables before each test, so a RealCluster started inside one would not find its binaries."""


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.cluster)])
def rotating_cluster(request: pytest.FixtureRequest, log_dir: Path) -> Iterator[Cluster]:
    """``any_cluster``'s pattern (the stand-in, then under ``--cluster`` a real kube-apiserver), but
    the real one is this test's own: a rotation restarts kube-apiserver and leaves two keys
    published, which the session's shared ``real_cluster`` must not show the other tests
    (tests/test_key_fetch.py expects its one key). Its logs join the run's, for the leak check."""
    if request.param == "fake":
        yield request.getfixturevalue("fake_cluster")
        return
    with RecordingRealCluster(assets=ASSETS) as cluster:
        WATCH.add(cluster.caller_token)
        try:
            yield cluster
        finally:
            for path in cluster.workdir.glob("*.log"):
                shutil.copyfile(path, log_dir / f"rotated-real-cluster-{request.node.name}-{path.name}")


def make_app(cluster: Cluster, tmp_path: Path) -> Flask:
    """The app under test: TokenReview mode, the pre-check ``on``, its identity as the answer."""
    app = Flask("rotation")
    BindcarAuth(
        app, mode="tokenreview", kubeconfig=str(cluster.write_kubeconfig(tmp_path / "kubeconfig")), token_precheck="on"
    )

    @app.get("/whoami")
    def whoami() -> Any:
        i = current_identity
        assert i is not None
        return jsonify(
            method=i.method,
            username=i.username,
            uid=i.uid,
            groups=list(i.groups),
            audiences=list(i.audiences),
            namespace=i.namespace,
            service_account=i.service_account,
            credential_id=i.credential_id,
        )

    return app


def call(client: FlaskClient, token: str) -> tuple[int, Any, str | None]:
    answer = client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    return answer.status_code, answer.get_json(), answer.headers.get("WWW-Authenticate")


def store_of(app: Flask) -> KeyStore:
    precheck: PreCheck | None = app.extensions["bindcar"].authenticator(app).precheck
    assert precheck is not None and precheck.store is not None
    return precheck.store


def wait_out_refetch_interval(store: KeyStore) -> None:
    """Sleep until the store may fetch its keys again: `MIN_REFETCH_INTERVAL` (the shipped value,
    not shortened) after its last fetch."""
    assert store.min_refetch_interval == MIN_REFETCH_INTERVAL == 5.0
    age = store.age
    assert age is not None
    time.sleep(max(0.0, store.min_refetch_interval - age + 0.05))


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def published_kids(cluster: Cluster) -> list[str]:
    """The ``kid``s of the cluster's ``/openid/v1/jwks``, read as its default caller reads them."""
    answer = requests.get(
        cluster.url + "/openid/v1/jwks",
        headers={"Authorization": f"Bearer {cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return list(parse_jwks(answer.content).kids)


def token_review(cluster: Cluster, token: str) -> tuple[int, dict[str, Any]]:
    """The cluster's own TokenReview of ``token`` for the app's audience: the HTTP status, and
    ``status.authenticated`` (left out when false, as Go omits it) and ``status.error``."""
    answer = requests.post(
        cluster.url + "/apis/authentication.k8s.io/v1/tokenreviews",
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": ["bindcar"]},
        },
        headers={"Authorization": f"Bearer {cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=30,
    )
    status = answer.json()["status"]
    return answer.status_code, {"authenticated": status.get("authenticated", False), "error": status.get("error")}


def tokenreviews_served(cluster: Cluster) -> int:
    """TokenReviews the cluster has served: FakeCluster counts them; kube-apiserver says so in its
    own ``apiserver_request_total`` (since it last started: a rotation restarts it)."""
    if isinstance(cluster, FakeCluster):
        return cluster.review_requests
    metrics = str(cluster.api("GET", "/metrics"))
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("apiserver_request_total{") and 'resource="tokenreviews"' in line
    )


def test_tokens_of_the_old_and_the_new_key_are_accepted_after_a_rotation(
    rotating_cluster: Cluster, tmp_path: Path
) -> None:
    c = rotating_cluster
    namespace = f"dns-{uuid.uuid4().hex[:6]}"
    sa = c.create_service_account(namespace, "external-dns")
    warm_up = WATCH.add(c.token(namespace, "external-dns", audiences=["bindcar"]))
    old = WATCH.add(c.token(namespace, "external-dns", audiences=["bindcar"]))  # presented only after the rotation
    [first] = published_kids(c)
    assert kid(warm_up) == kid(old) == first

    client = make_app(c, tmp_path).test_client()
    app = client.application

    def accepted(token: str) -> tuple[int, Any, None]:
        identity = {
            "method": "tokenreview",
            "username": f"system:serviceaccount:{namespace}:external-dns",
            "uid": sa.uid,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
            "audiences": ["bindcar"],
            "namespace": namespace,
            "service_account": "external-dns",
            "credential_id": f"JTI={claims(token)['jti']}",
        }
        return 200, identity, None

    assert call(client, warm_up) == accepted(warm_up)
    store = store_of(app)
    assert (store.fetches, store.describe()["kids"]) == (1, [first])

    second = c.rotate_signing_key()
    assert second != first
    assert published_kids(c) == [first, second]  # kube-apiserver publishes every --service-account-key-file
    new = WATCH.add(c.token(namespace, "external-dns", audiences=["bindcar"]))
    assert kid(new) == second
    served = tokenreviews_served(c)

    wait_out_refetch_interval(store)
    assert call(client, new) == accepted(new)
    assert (store.fetches, store.describe()["kids"]) == (2, [first, second])  # one refetch, no restart
    assert call(client, old) == accepted(old)  # the old key is still one the cluster accepts
    assert store.fetches == 2
    # Each token passed the pre-check and still got its TokenReview: revocation is the API server's to say.
    assert tokenreviews_served(c) - served == 2


def forge(template: str, header: dict[str, str], key: rsa.RSAPrivateKey) -> str:
    """``template``'s claims (a genuine token's), signed by ``key`` with ``header``."""
    return jwt.encode(claims(template), key, algorithm="RS256", headers=header)


def test_a_token_signed_by_a_key_the_cluster_never_had_is_refused_locally(
    rotating_cluster: Cluster, tmp_path: Path
) -> None:
    """After a rotation, a forged token (a genuine token's claims, signed by another key) is refused
    with exactly the TokenReview's answer, whatever ``kid`` it carries, and no TokenReview is sent
    (counted by the cluster: FakeCluster, or kube-apiserver's own request counter). A ``kid`` the cluster never
    published costs one refetch of the keys, once the interval since the last one has passed."""
    c = rotating_cluster
    namespace = f"dns-{uuid.uuid4().hex[:6]}"
    first = kid(c.caller_token)
    second = c.rotate_signing_key()
    template = WATCH.add(c.token(namespace, "external-dns", audiences=["bindcar"]))
    assert published_kids(c) == [first, second] and kid(template) == second
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = {
        "the new key's kid": (forge(template, {"kid": second}, foreign), CRYPTO_FAILURE),
        "the old key's kid": (forge(template, {"kid": first}, foreign), CRYPTO_FAILURE),
        "no kid: every key tried": (forge(template, {}, foreign), CRYPTO_FAILURE),
        "its own kid, never published": (forge(template, {"kid": key_id(foreign.public_key())}, foreign), NO_KEYS),
    }

    client = make_app(c, tmp_path).test_client()
    call(client, template)  # the keys loaded, the client built
    served = tokenreviews_served(c)
    answers = {}
    for case, (token, _) in forged.items():
        if case == "its own kid, never published":
            wait_out_refetch_interval(store_of(client.application))
        answers[case] = call(client, token)
    assert store_of(client.application).fetches == 2  # the load, and the refetch for the unknown kid
    assert tokenreviews_served(c) == served  # none sent for any of them

    for case, (token, error) in forged.items():
        assert answers[case] == (401, {"error": f"Token validation failed: {error}"}, CHALLENGE), case
        # ... which is, word for word, what the cluster's TokenReview says of that token.
        assert token_review(c, token) == (201, {"authenticated": False, "error": error}), case
