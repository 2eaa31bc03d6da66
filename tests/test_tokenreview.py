"""TokenReview mode, core chain against the stand-in: every seed message, every failure mode."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from flask_bindcar import AuthConfig, AuthError, Identity
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.cache import token_expiry
from flask_bindcar.testing import API_AUDIENCE, DEFAULT_CALLER, FakeCluster
from tests.conftest import MakeAuth, in_forked_child, service_account, who


def failure(auth: Authenticator, token: str) -> str:
    with pytest.raises(AuthError) as info:
        auth.authenticate(f"Bearer {token}")
    assert token not in str(info.value)
    assert info.value.code == 401
    return info.value.message


def test_valid_token_gives_identity(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="external-dns-0")
    sa = cluster.service_accounts[("dns-system", "external-dns")]
    pod = cluster.pods[("dns-system", "external-dns-0")]

    identity = make_auth().authenticate(f"Bearer {token}")

    assert identity == Identity(
        method="tokenreview",
        username="system:serviceaccount:dns-system:external-dns",
        uid=sa.uid,
        groups=("system:serviceaccounts", "system:serviceaccounts:dns-system", "system:authenticated"),
        extra=identity.extra,
        audiences=("bindcar",),
        namespace="dns-system",
        service_account="external-dns",
        pod_name="external-dns-0",
        pod_uid=pod.uid,
        credential_id=identity.credential_id,
    )
    assert identity.extra["authentication.kubernetes.io/pod-name"] == ("external-dns-0",)
    assert identity.extra["authentication.kubernetes.io/pod-uid"] == (pod.uid,)


def test_invalid_token(make_auth: MakeAuth) -> None:
    # The seed's "Testing Invalid Tokens" example.
    assert failure(make_auth(), "invalid-token") == "Token validation failed: token not authenticated"


@pytest.mark.parametrize(
    ("mint", "reason"),
    [
        (
            lambda c: c.token("default", "my-app", audiences=["bindcar"], expires_in=-120),
            "[invalid bearer token, service account token has expired]",
        ),
        (
            lambda c: c.token("default", "my-app", audiences=["bindcar"], not_before=time.time() + 3600),
            "[invalid bearer token, service account token is not valid yet]",
        ),
        (
            lambda c: c.token("default", "my-app"),
            '[invalid bearer token, token audiences ["https://kubernetes.default.svc.cluster.local"] is invalid '
            'for the target audiences ["bindcar"]]',
        ),
        (
            lambda c: c.legacy_token("default", "my-app"),
            '[invalid bearer token, token audiences ["https://kubernetes.default.svc.cluster.local"] is invalid '
            'for the target audiences ["bindcar"]]',
        ),
    ],
    ids=["expired", "not-yet-valid", "no-audience", "legacy"],
)
def test_rejected_by_the_api_server(
    cluster: FakeCluster, make_auth: MakeAuth, mint: Callable[[FakeCluster], str], reason: str
) -> None:
    assert failure(make_auth(), mint(cluster)) == f"Token validation failed: {reason}"


def test_deleted_service_account_and_pod(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_ttl=0)
    sa_token = cluster.token("dns-system", "gone", audiences=["bindcar"])
    pod_token = cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="external-dns-0")
    auth.authenticate(f"Bearer {sa_token}")
    auth.authenticate(f"Bearer {pod_token}")
    cluster.delete_service_account("dns-system", "gone")
    cluster.delete_pod("dns-system", "external-dns-0")
    assert failure(auth, sa_token) == (
        'Token validation failed: [invalid bearer token, serviceaccounts "gone" not found]'
    )
    assert failure(auth, pod_token) == (
        "Token validation failed: [invalid bearer token, service account token has been invalidated]"
    )


def test_forged_token(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    with FakeCluster() as other:
        forged = other.token("dns-system", "external-dns", audiences=["bindcar"])
    assert failure(make_auth(), forged) == (  # another cluster's key ID is not one of this cluster's keys
        "Token validation failed: [invalid bearer token, invalid signature, no keys found]"
    )


def test_audience_validation(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(audiences="bindcar,https://bindcar.dns-system.svc.cluster.local")
    for audience in ("bindcar", "https://bindcar.dns-system.svc.cluster.local"):
        token = cluster.token("dns-system", "external-dns", audiences=[audience])
        assert auth.authenticate(f"Bearer {token}").audiences == (audience,)
    assert failure(auth, cluster.token("dns-system", "external-dns", audiences=["dns-api"])) == (
        'Token validation failed: [invalid bearer token, token audiences ["dns-api"] is invalid for the target '
        'audiences ["bindcar" "https://bindcar.dns-system.svc.cluster.local"]]'
    )


def test_audience_missing_from_the_answer(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with cluster.faulty("no_audiences"):
        assert failure(make_auth(), token) == "Token validation failed: Token audience is not valid for bindcar"


def test_no_user_information(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with cluster.faulty("no_user"):
        assert failure(make_auth(), token) == "Token validation failed: No user information in TokenReview response"


def test_namespace_restriction(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(allowed_namespaces="dns-system,kube-system")
    identity = auth.authenticate(f"Bearer {cluster.token('dns-system', 'test-sa', audiences=['bindcar'])}")
    assert who(identity) == service_account("dns-system", "test-sa")
    assert failure(auth, cluster.token("default", "test-sa", audiences=["bindcar"])) == (
        "Token validation failed: ServiceAccount from unauthorized namespace: default"
    )


def test_namespace_restriction_fails_closed_for_non_service_accounts(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    token = cluster.add_caller("kube-admin", can_review=False)
    auth = make_auth(audiences=["bindcar", API_AUDIENCE], allowed_namespaces="dns-system")
    assert failure(auth, token) == "Token validation failed: Not a ServiceAccount: kube-admin"
    # Without a namespace allowlist the user is who the API server says it is.
    identity = make_auth(audiences=["bindcar", API_AUDIENCE]).authenticate(f"Bearer {token}")
    assert (identity.username, identity.namespace, identity.service_account) == ("kube-admin", None, None)


def test_service_account_allowlist(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(allowed_service_accounts="system:serviceaccount:dns-system:external-dns")
    identity = auth.authenticate(f"Bearer {cluster.token('dns-system', 'external-dns', audiences=['bindcar'])}")
    assert who(identity) == service_account("dns-system", "external-dns")
    assert failure(auth, cluster.token("dns-system", "other-app", audiences=["bindcar"])) == (
        "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app"
    )


def test_missing_kubeconfig(cluster: FakeCluster, make_auth: MakeAuth, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config"
    auth = make_auth(kubeconfig=str(missing))
    assert failure(auth, cluster.token("dns-system", "external-dns", audiences=["bindcar"])) == (
        f"Token validation failed: Failed to create Kubernetes client: kubeconfig {missing} does not exist"
    )


def test_no_kubeconfig_and_not_in_a_cluster(cluster: FakeCluster) -> None:
    auth = Authenticator(AuthConfig.load({"mode": "tokenreview"}, environ={}))
    assert failure(auth, cluster.token("dns-system", "external-dns", audiences=["bindcar"])) == (
        "Token validation failed: Failed to create Kubernetes client: no kubeconfig at ~/.kube/config and not "
        "running in a cluster (KUBERNETES_SERVICE_HOST is unset)"
    )


def test_default_kubeconfig_location_is_used(cluster: FakeCluster) -> None:
    cluster.write_kubeconfig(Path(os.environ["HOME"]) / ".kube" / "config")
    auth = Authenticator(AuthConfig.load({"mode": "tokenreview"}, environ={}))
    identity = auth.authenticate(f"Bearer {cluster.token('dns-system', 'external-dns', audiences=['bindcar'])}")
    assert who(identity) == service_account("dns-system", "external-dns")
    assert auth.reviewer is not None and auth.reviewer.source == "kubeconfig ~/.kube/config"


def test_client_is_built_once_and_never_touches_the_global_default(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    from kubernetes import client

    before = client.Configuration.get_default_copy().host
    auth = make_auth(cache_ttl=0)
    assert auth.reviewer is not None
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth.authenticate(f"Bearer {token}")
    api = auth.reviewer.api()
    auth.authenticate(f"Bearer {token}")
    assert auth.reviewer.api() is api
    assert client.Configuration.get_default_copy().host == before != cluster.url


def test_unknown_caller(cluster: FakeCluster, make_auth: MakeAuth, tmp_path: Path) -> None:
    auth = make_auth(kubeconfig=str(cluster.write_kubeconfig(tmp_path / "kc", caller="who-am-i")))
    assert failure(auth, cluster.token("dns-system", "external-dns", audiences=["bindcar"])) == (
        "Token validation failed: TokenReview API call failed: HTTP 401 Unauthorized: Unauthorized"
    )


def test_caller_without_rbac(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    cluster.revoke_token_review(DEFAULT_CALLER)
    assert failure(make_auth(), cluster.token("dns-system", "external-dns", audiences=["bindcar"])) == (
        "Token validation failed: TokenReview API call failed: HTTP 403 Forbidden: "
        'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:dns-system:bindcar" '
        'cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope'
    )


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (
            "error500",
            "Token validation failed: TokenReview API call failed: HTTP 500 Internal Server Error: "
            "Internal error occurred: etcdserver: request timed out",
        ),
        ("garbage", "Token validation failed: TokenReview API call failed: response is not JSON"),
        ("reset", "Token validation failed: TokenReview API call failed: ProtocolError: "),
    ],
)
def test_api_server_faults(cluster: FakeCluster, make_auth: MakeAuth, fault: Any, message: str) -> None:
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with cluster.faulty(fault):
        assert failure(make_auth(), token).startswith(message)


def test_hanging_api_server_ends_at_the_timeout(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth = make_auth(review_timeout=0.5)
    started = time.monotonic()
    with cluster.faulty("hang"):
        assert failure(auth, token) == "Token validation failed: TokenReview API call failed: no answer within 0.5s"
    assert time.monotonic() - started < cluster.hang_seconds / 2


def test_unreachable_api_server(cluster: FakeCluster, make_auth: MakeAuth, fake_kubeconfig: Path) -> None:
    url = cluster.url
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth = make_auth(cache_ttl=0)
    auth.authenticate(f"Bearer {token}")
    cluster.stop()
    message = failure(auth, token)
    assert message.startswith(f"Token validation failed: TokenReview API call failed: cannot connect to {url}: ")
    assert "Connection refused" in message


def test_explicit_api_server_rereads_a_rotated_token(cluster: FakeCluster, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("stale-token")
    auth = Authenticator(
        AuthConfig.load(
            {"mode": "tokenreview", "cache_ttl": 0, "cache_failure_ttl": 0},
            environ={
                "KUBE_API_SERVER": cluster.url,
                "KUBE_TOKEN_PATH": str(token_file),
                "KUBE_CA_CERT_PATH": str(cluster.ca_path),
            },
        )
    )
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    assert "HTTP 401 Unauthorized" in failure(auth, token)

    token_file.write_text(cluster.caller_token + "\n")
    assert auth.authenticate(f"Bearer {token}").username == "system:serviceaccount:dns-system:external-dns"
    assert auth.reviewer is not None and auth.reviewer.source == f"KUBE_API_SERVER {cluster.url}"


def test_explicit_api_server_with_missing_files(cluster: FakeCluster, tmp_path: Path) -> None:
    environ = {
        "KUBE_API_SERVER": cluster.url,
        "KUBE_TOKEN_PATH": str(tmp_path / "token"),
        "KUBE_CA_CERT_PATH": str(cluster.ca_path),
    }
    auth = Authenticator(AuthConfig.load({"mode": "tokenreview"}, environ=environ))
    assert failure(auth, "abc") == (
        f"Token validation failed: Failed to create Kubernetes client: KUBE_TOKEN_PATH {tmp_path / 'token'} "
        "does not exist"
    )


def test_client_is_rebuilt_after_fork(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_ttl=0)
    assert auth.reviewer is not None
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth.authenticate(f"Bearer {token}")
    parent_api = auth.reviewer.api()
    reviewer = auth.reviewer
    assert in_forked_child(
        lambda: auth.authenticate(f"Bearer {token}").username is not None and reviewer.api() is not parent_api
    )
    assert auth.reviewer.api() is parent_api


# -- the review cache --------------------------------------------------------------------------


def test_cache_hit_within_ttl(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth()
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    for _ in range(5):
        auth.authenticate(f"Bearer {token}")
    assert cluster.reviews_served == 1


def test_cache_off_with_zero_ttl(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_ttl=0, cache_failure_ttl=0)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    for _ in range(3):
        auth.authenticate(f"Bearer {token}")
        failure(auth, "invalid-token")
    assert cluster.reviews_served == 6
    assert auth.cache is not None and len(auth.cache) == 0  # nothing is kept, not even expired


def test_failures_are_cached_for_the_failure_ttl_but_api_errors_never(
    cluster: FakeCluster, make_auth: MakeAuth
) -> None:
    auth = make_auth()
    failure(auth, "invalid-token")
    failure(auth, "invalid-token")
    assert cluster.reviews_served == 1
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with cluster.faulty("error500"):
        failure(auth, token)
        failure(auth, token)
    assert cluster.review_requests == 3
    assert who(auth.authenticate(f"Bearer {token}")) == service_account("dns-system", "external-dns")


def test_cache_lifetime_is_capped_by_token_expiry(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_ttl=60)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"], expires_in=2)
    auth.authenticate(f"Bearer {token}")
    exp = token_expiry(token)
    assert exp is not None
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    # Not the cache's answer but a second TokenReview's, which the API server still accepts within
    # its minute of leeway (tests/test_contract.py: "expired within kube's minute of leeway").
    assert who(auth.authenticate(f"Bearer {token}")) == service_account("dns-system", "external-dns")
    assert cluster.reviews_served == 2


def test_allowlists_apply_to_cached_outcomes(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(allowed_service_accounts="system:serviceaccount:dns-system:external-dns")
    other = cluster.token("dns-system", "other-app", audiences=["bindcar"])
    for _ in range(2):
        assert "ServiceAccount not authorized" in failure(auth, other)
    assert cluster.reviews_served == 1


def test_cache_is_bounded_lru(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_size=2)
    assert auth.cache is not None
    a, b, c = (cluster.token("dns-system", f"sa-{i}", audiences=["bindcar"]) for i in range(3))
    for token in (a, b, a, c):  # c evicts b, the least recently used
        auth.authenticate(f"Bearer {token}")
    assert len(auth.cache) == 2
    assert cluster.reviews_served == 3
    auth.authenticate(f"Bearer {a}")
    assert cluster.reviews_served == 3
    auth.authenticate(f"Bearer {b}")
    assert cluster.reviews_served == 4


def test_single_flight(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth()
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    cluster.latency = 0.3
    barrier = threading.Barrier(32)
    results: list[str | None] = []

    def call() -> None:
        barrier.wait()
        results.append(auth.authenticate(f"Bearer {token}").username)

    def counted(outcome: str) -> float | None:
        return REGISTRY.get_sample_value("bindcar_tokenreview_cache_total", {"outcome": outcome})

    before = {outcome: counted(outcome) or 0.0 for outcome in ("hit", "miss")}
    threads = [threading.Thread(target=call) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["system:serviceaccount:dns-system:external-dns"] * 32
    assert cluster.reviews_served == 1
    # A request that waited on another's review counts as a hit: the metric's outcomes stay hit, miss, stale.
    assert {outcome: (counted(outcome) or 0.0) - before[outcome] for outcome in before} == {"hit": 31, "miss": 1}
    assert counted("shared") is None


def test_single_flight_shares_the_leaders_failure(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    # The hang would hold the pre-check's key fetch too: this test is about the TokenReview's single flight.
    auth = make_auth(review_timeout=1, token_precheck="off")
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    errors: list[str] = []

    def call() -> None:
        with pytest.raises(AuthError) as info:
            auth.authenticate(f"Bearer {token}")
        errors.append(info.value.message)

    with cluster.faulty("hang"):
        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == ["Token validation failed: TokenReview API call failed: no answer within 1s"] * 8
    assert cluster.review_requests == 1


@pytest.mark.parametrize("header", ["Bearer tök\u00e9n", "Bearer a,Bearer b", "Bearer abc def", "Bearer a=b"])
def test_malformed_tokens_never_reach_the_api_server(cluster: FakeCluster, make_auth: MakeAuth, header: str) -> None:
    auth = make_auth()
    for _ in range(2):
        with pytest.raises(AuthError) as info:
            auth.authenticate(header)
        assert info.value.message == "Invalid Authorization header format. Expected: Bearer <token>"
        assert info.value.challenge == "invalid_request"
    assert cluster.review_requests == 0
