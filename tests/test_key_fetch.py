"""The issuer's keys fetched through the API server client (issue 20): `ApiServerClient.get` with the
TokenReview's deadline and answer cap, and a `KeyStore` over it that follows a key rotation.

FakeCluster serves ``/openid/v1/jwks`` as kube-apiserver does (tests/test_contract.py); the hostile
server shows the bounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from flask_bindcar.apiserver import ApiServerClient
from flask_bindcar.config import AuthConfig
from flask_bindcar.jwks import KeyStore, KeysUnavailable, parse_jwks
from flask_bindcar.testing import FakeCluster, RealCluster
from tests.hostile_api import HostileAPI, http_reply

JWKS = "/openid/v1/jwks"


def unavailable(why: str, reason: str) -> Exception:
    return KeysUnavailable(f"GET {JWKS}: {why} ({reason})")


def client_for(kubeconfig: Path, **overrides: Any) -> ApiServerClient:
    return ApiServerClient(
        AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(kubeconfig), **overrides}, environ={})
    )


def store_for(client: ApiServerClient, **kw: Any) -> KeyStore:
    return KeyStore(lambda: client.get(JWKS, unavailable), source=JWKS, **kw)


def kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def test_the_keys_come_through_the_client(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    keys = parse_jwks(client_for(fake_kubeconfig).get(JWKS, unavailable))
    assert keys.kids == (kid(fake_cluster.caller_token),)


@pytest.mark.cluster
def test_the_keys_come_through_the_client_from_a_real_kube_apiserver(real_cluster: RealCluster, tmp_path: Path) -> None:
    """The caller's ServiceAccount reads the real ``/openid/v1/jwks`` through the default binding."""
    kubeconfig = real_cluster.write_kubeconfig(tmp_path / "kubeconfig")
    keys = parse_jwks(client_for(kubeconfig).get(JWKS, unavailable))
    assert keys.kids == (kid(real_cluster.caller_token),)


def test_a_rotated_key_is_fetched_once_a_token_names_it(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    """After a rotation the kept set lacks the new kid: the first token naming it costs one fetch,
    and tokens of the old key still find theirs."""
    store = store_for(client_for(fake_kubeconfig), min_refetch_interval=0.0)
    first = kid(fake_cluster.caller_token)
    assert store.load().kids == (first,)
    second = fake_cluster.rotate_signing_key()
    new = fake_cluster.token("zones", "updater", audiences=["bindcar"])
    assert [k.kid for k in store.get(kid(new))] == [second]
    assert [k.kid for k in store.get(first)] == [first]
    assert store.fetches == 2
    assert store.describe()["kids"] == [first, second]


def test_made_up_kids_cost_no_fetch_within_the_interval(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    store = store_for(client_for(fake_kubeconfig), min_refetch_interval=60.0)
    store.load()
    assert [store.get(f"made-up-{i}") for i in range(50)] == [()] * 50
    assert store.fetches == 1  # the load: the interval counts from it


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (
            "error500",
            "GET /openid/v1/jwks: HTTP 500 Internal Server Error: Internal error occurred: etcdserver: request timed "
            "out (api_server_error)",
        ),
        ("hang", "GET /openid/v1/jwks: no answer within 0.5s (api_unreachable)"),
    ],
)
def test_a_failed_fetch_says_why(fake_cluster: FakeCluster, fake_kubeconfig: Path, fault: Any, error: str) -> None:
    client = client_for(fake_kubeconfig, review_timeout=0.5)
    client.api()  # built before the fault: the fault is the fetch's
    store = store_for(client)
    fake_cluster.hang_seconds = 2.0
    with fake_cluster.faulty(fault), pytest.raises(KeysUnavailable) as failed:
        store.load()
    assert str(failed.value) == error
    with pytest.raises(KeysUnavailable) as again:
        store.get("any")  # within the refetch interval: the last error, no new fetch
    assert str(again.value) == error


def test_a_caller_rbac_does_not_let_read_the_keys(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    """A static user is not a ServiceAccount: kube-apiserver's 403, word for word."""
    kubeconfig = fake_cluster.write_kubeconfig(tmp_path / "kubeconfig", fake_cluster.add_caller("jane"))
    with pytest.raises(KeysUnavailable) as failed:
        client_for(kubeconfig).get(JWKS, unavailable)
    assert str(failed.value) == (
        'GET /openid/v1/jwks: HTTP 403 Forbidden: forbidden: User "jane" cannot get path "/openid/v1/jwks" '
        "(api_rejected)"
    )


@pytest.fixture
def api() -> Iterator[HostileAPI]:
    with HostileAPI() as server:
        yield server


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (
            lambda: http_reply(200, b"x" * (1 << 20)),
            "GET /openid/v1/jwks: response larger than 1 MiB (api_bad_response)",
        ),
        (
            lambda: http_reply(200, b'{"keys": [', drip="body", interval=0.3),
            "GET /openid/v1/jwks: no answer within 0.5s (api_unreachable)",
        ),
    ],
    ids=["over the cap", "dripped past the deadline"],
)
def test_the_fetch_is_bounded_as_a_review_is(
    api: HostileAPI, tmp_path: Path, reply: Callable[[], Any], error: str
) -> None:
    api.responder = lambda token: reply()
    client = client_for(api.write_kubeconfig(tmp_path), review_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(KeysUnavailable) as failed:
        client.get(JWKS, unavailable)
    assert str(failed.value) == error
    assert time.monotonic() - started < 2.0
