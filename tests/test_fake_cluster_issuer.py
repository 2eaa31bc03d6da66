"""The stand-in's ServiceAccount issuer: the kid its tokens carry, the keys it publishes, and key
rotation (a second key signs, the first still verifies), as kube-apiserver does it.

What both clusters answer alike is in tests/test_contract.py; rotation on both clusters (the real
one restarts kube-apiserver), seen through an app with the pre-check on, in
tests/test_key_rotation.py.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_bindcar.jwks import key_id, parse_jwks
from flask_bindcar.testing import FakeCluster


def review(cluster: FakeCluster, token: str) -> dict[str, Any]:
    """A TokenReview for the ``bindcar`` audience: the status code and ``status``."""
    response = requests.post(
        cluster.url + "/apis/authentication.k8s.io/v1/tokenreviews",
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": ["bindcar"]},
        },
        headers={"Authorization": f"Bearer {cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=10,
    )
    return {
        "code": response.status_code,
        "authenticated": response.json()["status"].get("authenticated", False),
        "error": response.json()["status"].get("error"),
    }


def published_kids(cluster: FakeCluster) -> list[str]:
    response = requests.get(
        cluster.url + "/openid/v1/jwks",
        headers={"Authorization": f"Bearer {cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=10,
    )
    assert response.status_code == 200
    return list(parse_jwks(response.content).kids)


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def forged(cluster: FakeCluster, header: dict[str, Any]) -> str:
    claims = jwt.decode(cluster.token("zones", "updater", audiences=["bindcar"]), options={"verify_signature": False})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256", headers=header)


ACCEPTED = {"code": 201, "authenticated": True, "error": None}


def test_tokens_carry_kube_apiservers_key_id(fake_cluster: FakeCluster) -> None:
    token = fake_cluster.token("zones", "updater", audiences=["bindcar"])
    [published] = parse_jwks(
        requests.get(
            fake_cluster.url + "/openid/v1/jwks",
            headers={"Authorization": f"Bearer {fake_cluster.caller_token}"},
            verify=str(fake_cluster.ca_path),
            timeout=10,
        ).content
    ).keys
    assert kid(token) == published.kid == key_id(published.key)
    assert kid(fake_cluster.caller_token) == published.kid


def test_rotation_old_tokens_still_verify_new_tokens_use_the_new_key(fake_cluster: FakeCluster) -> None:
    c = fake_cluster
    old = c.token("zones", "updater", audiences=["bindcar"])
    [first] = published_kids(c)

    second = c.rotate_signing_key()
    new = c.token("zones", "updater", audiences=["bindcar"])

    assert (kid(old), kid(new)) == (first, second)
    assert first != second
    assert published_kids(c) == [first, second]
    assert review(c, old) == ACCEPTED
    assert review(c, new) == ACCEPTED
    assert jwt.decode(new, c.public_key_pem, algorithms=["RS256"], audience="bindcar")["sub"] == (
        "system:serviceaccount:zones:updater"
    )


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ({"kid": "made-up"}, "[invalid bearer token, invalid signature, no keys found]"),
        ({}, "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"),
        ({"kid": "<first>"}, "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"),
    ],
    ids=["a made-up kid", "no kid: every key tried", "the old key's kid"],
)
def test_a_token_signed_by_neither_key_is_refused(
    fake_cluster: FakeCluster, header: dict[str, Any], error: str
) -> None:
    c = fake_cluster
    first = kid(c.caller_token)
    c.rotate_signing_key()
    token = forged(c, {k: first if v == "<first>" else v for k, v in header.items()})
    assert review(c, token) == {"code": 201, "authenticated": False, "error": error}
