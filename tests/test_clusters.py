"""Callers from several clusters (issue 21): each token routed by its issuer to its own cluster.

Two FakeClusters with different issuers, started here, one app configured with both: each
cluster's tokens are accepted and named; a token of a third issuer is refused without a request to
either; RBAC granted in one does not grant in the other; one stopped leaves the other's callers
served. Real servers through both adapters, exact status codes and bodies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request
from werkzeug.test import Client

from flask_bindcar import RBAC, AuthConfig, BindcarAuth, auth_required, current_identity
from flask_bindcar.config import ConfigError
from flask_bindcar.doctor import doctor
from flask_bindcar.metrics import get_metrics
from flask_bindcar.middleware import BindcarMiddleware
from tests.conftest import WATCH, RecordingFakeCluster

EAST, WEST, NORTH = "https://east.example.test", "https://west.example.test", "https://north.example.test"
NS, SA = "zones", "updater"
USER = f"system:serviceaccount:{NS}:{SA}"
NOT_AUTHENTICATED = {"error": "Token validation failed: token not authenticated"}
GROUP = "dns.example.com"
Answer = tuple[int, Any]


@pytest.fixture
def east() -> Iterator[RecordingFakeCluster]:
    with RecordingFakeCluster(issuer=EAST) as cluster:
        WATCH.add(cluster.caller_token)
        yield cluster


@pytest.fixture
def west() -> Iterator[RecordingFakeCluster]:
    with RecordingFakeCluster(issuer=WEST) as cluster:
        WATCH.add(cluster.caller_token)
        yield cluster


@pytest.fixture
def clusters(east: RecordingFakeCluster, west: RecordingFakeCluster, tmp_path: Path) -> list[dict[str, Any]]:
    return [
        {"name": "east", "issuer": EAST, "kubeconfig": str(east.write_kubeconfig(tmp_path / "east.kubeconfig"))},
        {"name": "west", "issuer": WEST, "kubeconfig": str(west.write_kubeconfig(tmp_path / "west.kubeconfig"))},
    ]


def whoami(identity: Any, environ: dict[str, Any]) -> dict[str, Any]:
    return {
        "username": identity.username,
        "cluster": identity.cluster,
        "environ": environ.get("bindcar.cluster"),
        "method": identity.method,
    }


def flask_client(**settings: Any) -> Client:
    app = Flask("clusters")
    BindcarAuth(app, **{"mode": "tokenreview", **settings})

    @app.get("/zones")
    def zones() -> Any:
        return jsonify(whoami(current_identity, request.environ))

    @app.get("/west-only")
    @auth_required(namespaces="west/zones")
    def west_only() -> Any:
        return jsonify(whoami(current_identity, request.environ))

    @app.get("/zones/<name>")
    @auth_required(rbac=RBAC(resource="zones", group=GROUP, name="{name}"))
    def zone(name: str) -> Any:
        return jsonify(whoami(current_identity, request.environ))

    return app.test_client()


def wsgi_client(**settings: Any) -> Client:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(whoami(environ["bindcar.identity"], environ)).encode()]

    return Client(BindcarMiddleware(app, **{"mode": "tokenreview", **settings}))


ADAPTERS = {"flask": flask_client, "wsgi": wsgi_client}


def call(client: Client, token: str, path: str = "/zones") -> Answer:
    answer = client.get(path, headers={"Authorization": f"Bearer {token}"})
    return answer.status_code, answer.get_json()


def named(cluster: str | None, method: str = "tokenreview") -> dict[str, Any]:
    return {"username": USER, "cluster": cluster, "environ": cluster, "method": method}


# -- routing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_each_clusters_tokens_are_accepted_and_named(
    east: RecordingFakeCluster, west: RecordingFakeCluster, clusters: list[dict[str, Any]], adapter: str
) -> None:
    client = ADAPTERS[adapter](clusters=clusters)
    assert call(client, east.token(NS, SA, audiences=["bindcar"])) == (200, named("east"))
    assert call(client, west.token(NS, SA, audiences=["bindcar"])) == (200, named("west"))
    assert (east.reviews_served, west.reviews_served) == (1, 1)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_a_token_of_another_issuer_is_refused_without_a_call(
    east: RecordingFakeCluster,
    west: RecordingFakeCluster,
    clusters: list[dict[str, Any]],
    adapter: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = ADAPTERS[adapter](clusters=clusters)
    north = RecordingFakeCluster(issuer=NORTH)  # never started: nothing can reach it either
    caplog.set_level(logging.INFO, "flask_bindcar.audit")
    for token in (north.token(NS, SA, audiences=["bindcar"]), north.legacy_token(NS, SA), "not-a-jwt"):
        answer = client.get("/zones", headers={"Authorization": f"Bearer {token}"})
        assert (answer.status_code, answer.get_json()) == (401, NOT_AUTHENTICATED)
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="bindcar", error="invalid_token"'
    assert (east.requests_seen, west.requests_seen) == (0, 0)
    records = [r.bindcar_audit for r in caplog.records if hasattr(r, "bindcar_audit")]
    assert [(r["result"], r["reason"], r["cluster"]) for r in records] == [("deny", "unknown_issuer", None)] * 3


def test_a_token_claiming_a_cluster_it_was_not_signed_by_is_never_sent_there(
    east: RecordingFakeCluster, west: RecordingFakeCluster, clusters: list[dict[str, Any]]
) -> None:
    """West's token with east's ``iss``: east's keys refuse it as east would (a kid it does not
    have), and east never reviews it."""
    client = flask_client(clusters=clusters)
    sa = west.create_service_account(NS, SA)
    from flask_bindcar.testing.interface import bound_token_claims

    token = WATCH.add(west.sign(bound_token_claims(sa, ["bindcar"], 3600, issuer=EAST)))
    no_keys = "Token validation failed: [invalid bearer token, invalid signature, no keys found]"
    assert call(client, token) == (401, {"error": no_keys})
    assert (east.review_requests, west.requests_seen) == (0, 0)


def test_rbac_granted_in_one_cluster_does_not_grant_in_the_other(
    east: RecordingFakeCluster, west: RecordingFakeCluster, clusters: list[dict[str, Any]]
) -> None:
    east.allow(USER, "get", "zones", group=GROUP)
    client = flask_client(clusters=clusters)
    assert call(client, east.token(NS, SA, audiences=["bindcar"]), "/zones/example.com") == (200, named("east"))
    assert call(client, west.token(NS, SA, audiences=["bindcar"]), "/zones/example.com") == (
        403,
        {"error": f'Forbidden: {USER} cannot get zones.{GROUP} "example.com"'},
    )
    assert (east.access_reviews_served, west.access_reviews_served) == (1, 1)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_one_cluster_down_leaves_the_others_callers_served(
    east: RecordingFakeCluster, west: RecordingFakeCluster, clusters: list[dict[str, Any]], adapter: str
) -> None:
    client = ADAPTERS[adapter](clusters=clusters, review_timeout=1)
    west_token = west.token(NS, SA, audiences=["bindcar"])
    east_token = east.token(NS, SA, audiences=["bindcar"])
    west.stop()
    status, body = call(client, west_token)
    assert status == 401
    assert body["error"].startswith("Token validation failed: TokenReview API call failed: ")
    assert call(client, east_token) == (200, named("east"))


def test_a_hanging_cluster_takes_none_of_the_others_review_slots(
    east: RecordingFakeCluster, west: RecordingFakeCluster, clusters: list[dict[str, Any]]
) -> None:
    """Separate bulkheads: west's hung review holds west's only slot, none of east's."""
    import threading
    import time

    client = flask_client(clusters=clusters, review_timeout=3, review_max_inflight=1)
    call(client, west.token(NS, "warm", audiences=["bindcar"]))  # west's keys fetched before the hang
    west_token, east_token = (c.token(NS, SA, audiences=["bindcar"]) for c in (west, east))
    west.hang_seconds = 2.0
    with west.faulty("hang"):
        hung = threading.Thread(target=call, args=(client, west_token))
        hung.start()
        try:
            deadline = time.monotonic() + 5
            while west.review_requests < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert call(client, east_token) == (200, named("east"))
        finally:
            hung.join()


# -- allowlists ------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_allowlists_name_a_cluster(
    east: RecordingFakeCluster, west: RecordingFakeCluster, clusters: list[dict[str, Any]], adapter: str
) -> None:
    client = ADAPTERS[adapter](clusters=clusters, allowed_namespaces="east/zones,dns-system")
    assert call(client, east.token(NS, SA, audiences=["bindcar"])) == (200, named("east"))
    assert call(client, west.token(NS, SA, audiences=["bindcar"])) == (
        401,
        {"error": "Token validation failed: ServiceAccount from unauthorized namespace: zones"},
    )
    assert call(client, west.token("dns-system", "external-dns", audiences=["bindcar"]))[0] == 200

    client = ADAPTERS[adapter](clusters=clusters, allowed_service_accounts=f"west/{USER}")
    assert call(client, west.token(NS, SA, audiences=["bindcar"])) == (200, named("west"))
    assert call(client, east.token(NS, SA, audiences=["bindcar"])) == (
        401,
        {"error": f"Token validation failed: ServiceAccount not authorized: {USER}"},
    )


def test_a_views_allowlist_names_a_cluster(
    east: RecordingFakeCluster, west: RecordingFakeCluster, clusters: list[dict[str, Any]]
) -> None:
    client = flask_client(clusters=clusters)
    assert call(client, west.token(NS, SA, audiences=["bindcar"]), "/west-only") == (200, named("west"))
    assert call(client, east.token(NS, SA, audiences=["bindcar"]), "/west-only") == (
        401,
        {"error": "Token validation failed: ServiceAccount from unauthorized namespace: zones"},
    )


def test_a_views_allowlist_naming_an_unknown_cluster_is_a_config_error(clusters: list[dict[str, Any]]) -> None:
    app = Flask("clusters")
    app.testing = True  # the ConfigError raised, not a 500
    BindcarAuth(app, mode="tokenreview", clusters=clusters)

    @app.get("/x")
    @auth_required(namespaces="south/zones")
    def x() -> str:
        return "x"

    with pytest.raises(ConfigError, match=r"auth_required\(namespaces=...\): 'south/zones' names the cluster south"):
        app.test_client().get("/x", headers={"Authorization": "Bearer abc"})


# -- the record ------------------------------------------------------------------------------------


def test_the_audit_record_and_the_metric_name_the_cluster(
    east: RecordingFakeCluster,
    west: RecordingFakeCluster,
    clusters: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = get_metrics()
    assert metrics is not None
    before = metrics.cluster_requests.values()
    client = wsgi_client(clusters=clusters, allowed_namespaces="east/zones")
    caplog.set_level(logging.INFO, "flask_bindcar.audit")
    call(client, east.token(NS, SA, audiences=["bindcar"]))
    call(client, west.token(NS, SA, audiences=["bindcar"]))
    records = [r.bindcar_audit for r in caplog.records if hasattr(r, "bindcar_audit")]
    assert [(r["result"], r["cluster"], r["username"]) for r in records] == [
        ("allow", "east", USER),
        ("deny", "west", None),
    ]
    after = metrics.cluster_requests.values()
    assert {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)} == {
        ("east", "allow"): 1,
        ("west", "deny"): 1,
    }


def test_without_clusters_nothing_changes(fake_cluster: RecordingFakeCluster, fake_kubeconfig: Path) -> None:
    metrics = get_metrics()
    assert metrics is not None
    before = metrics.cluster_requests.values()
    client = wsgi_client(kubeconfig=str(fake_kubeconfig))
    assert call(client, fake_cluster.token(NS, SA, audiences=["bindcar"])) == (200, named(None))
    assert metrics.cluster_requests.values() == before


# -- configuration ---------------------------------------------------------------------------------


def test_the_yaml_file(
    east: RecordingFakeCluster,
    west: RecordingFakeCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    east_kc = east.write_kubeconfig(tmp_path / "east.kubeconfig")
    west_kc = west.write_kubeconfig(tmp_path / "west.kubeconfig")
    path = tmp_path / "clusters.yaml"
    path.write_text(
        "clusters:\n"
        f"  - name: east\n    issuer: {EAST}\n    kubeconfig: {east_kc}\n"
        f"  - name: west\n    issuer: {WEST}\n    kubeconfig: {west_kc}\n    context: fake-cluster\n"
    )
    monkeypatch.setenv("BIND_CLUSTERS_FILE", str(path))
    client = wsgi_client()
    assert call(client, west.token(NS, SA, audiences=["bindcar"])) == (200, named("west"))
    config = AuthConfig.load({"mode": "tokenreview"})
    assert [(c.name, c.issuer, c.context) for c in config.clusters or ()] == [
        ("east", EAST, None),
        ("west", WEST, "fake-cluster"),
    ]
    assert config.sources["clusters"] == ("environment", "BIND_CLUSTERS_FILE")


def test_a_cluster_verified_in_jwt_mode_only(
    east: RecordingFakeCluster, clusters: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster without an API server: its keys from ``jwks_url`` (here east's own, over https)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(east.ca_path))
    east.allow("system:unauthenticated", "get", path="/openid/v1/jwks")  # as a public issuer's keys are
    jwt_only = [{"name": "east", "issuer": EAST, "jwks_url": east.url + "/openid/v1/jwks"}]
    client = wsgi_client(clusters=jwt_only)
    assert call(client, east.token(NS, SA, audiences=["bindcar"])) == (200, named("east", "jwt"))
    assert east.review_requests == 0


def entry(name: str = "east", issuer: str = EAST, **more: Any) -> dict[str, Any]:
    return {"name": name, "issuer": issuer, **more}


CONFIG_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "duplicate name": (
        {"clusters": [entry(), entry(issuer=WEST)]},
        r"^clusters: clusters\[1\] \(east\): the name east is already clusters\[0\]'s",
    ),
    "duplicate issuer": (
        {"clusters": [entry(), entry("west")]},
        r"^clusters: clusters\[1\] \(west\): the issuer https://east.example.test is already clusters\[0\]'s \(east\)",
    ),
    "http issuer": (
        {"clusters": [entry(issuer="http://east.example.test")]},
        r"^clusters: clusters\[0\] \(east\): issuer='http://east.example.test' is not valid: expected an https:// URL",
    ),
    "unreadable kubeconfig": (
        {"clusters": [entry(kubeconfig="/nonexistent/east.kubeconfig")]},
        r"^clusters: clusters\[0\] \(east\): kubeconfig /nonexistent/east.kubeconfig cannot be read",
    ),
    "unknown key": (
        {"clusters": [entry(kubeconfg="/x")]},
        r"^clusters: clusters\[0\] \(east\): unknown key kubeconfg; known: ",
    ),
    "bad name": (
        {"clusters": [entry(name="East_1")]},
        r"^clusters: clusters\[0\]: name='East_1' is not valid: expected a DNS label",
    ),
    "no issuer": ({"clusters": [{"name": "east"}]}, r"^clusters: clusters\[0\] \(east\): issuer is required"),
    "partial trio": (
        {"clusters": [entry(server="https://10.0.0.1:6443")]},
        r"^clusters: clusters\[0\] \(east\): server set without token_file, ca_file",
    ),
    "both kubeconfig and server": (
        {"clusters": [entry(kubeconfig="/x", server="https://10.0.0.1", token_file="/x", ca_file="/x")]},
        r"^clusters: clusters\[0\] \(east\): kubeconfig and server are two ways to reach one API server",
    ),
    "not a list": ({"clusters": "   "}, r"^clusters="),
    "empty list": ({"clusters": []}, r"^clusters=\[\] lists no clusters"),
    "basic mode": ({"mode": "basic", "clusters": [entry()]}, r"^clusters needs mode=tokenreview or jwt"),
    "unknown cluster in an allowlist": (
        {"clusters": [entry()], "allowed_namespaces": "west/zones"},
        r"^allowed_namespaces: 'west/zones' names the cluster west, which is not in clusters \(east\)",
    ),
    "a cluster in an allowlist without clusters": (
        {"allowed_service_accounts": f"east/{USER}"},
        r"^allowed_service_accounts: 'east/system:serviceaccount:zones:updater' names the cluster east, but "
        r"no clusters are configured",
    ),
    "an issuer beside clusters": (
        {"clusters": [entry()], "token_issuers": EAST},
        r"^token_issuers is set per cluster with clusters",
    ),
}


@pytest.mark.parametrize("settings, message", list(CONFIG_ERRORS.values()), ids=list(CONFIG_ERRORS))
def test_config_errors(settings: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        AuthConfig.load({"mode": "tokenreview", **settings}, environ={"HOME": str(tmp_path)})


def test_the_file_names_itself_in_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "clusters.yaml"
    path.write_text(f"clusters:\n  - name: east\n    issuer: {EAST}\n  - name: west\n    issuer: http://west\n")
    with pytest.raises(ConfigError, match=r"^BIND_CLUSTERS_FILE: clusters\[1\] \(west\): issuer='http://west'"):
        AuthConfig.load(environ={"BIND_AUTH_MODE": "tokenreview", "BIND_CLUSTERS_FILE": str(path)})
    path.write_text("clusters: [")
    with pytest.raises(ConfigError, match=r"^BIND_CLUSTERS_FILE: .*clusters.yaml is not valid YAML"):
        AuthConfig.load(environ={"BIND_AUTH_MODE": "tokenreview", "BIND_CLUSTERS_FILE": str(path)})
    with pytest.raises(ConfigError, match=r"^BIND_CLUSTERS_FILE: .*missing.yaml cannot be read"):
        AuthConfig.load(environ={"BIND_AUTH_MODE": "tokenreview", "BIND_CLUSTERS_FILE": str(tmp_path / "missing.yaml")})


# -- doctor ----------------------------------------------------------------------------------------


def test_doctor_checks_each_cluster(
    east: RecordingFakeCluster, west: RecordingFakeCluster, clusters: list[dict[str, Any]]
) -> None:
    with west.faulty("error500"):
        report = doctor(AuthConfig.load({"mode": "tokenreview", "clusters": clusters, "review_timeout": 1}))
    found = {c.name: c.status for c in report.checks}
    assert not report.ok
    for check in ("client", "api server", "permission", "token review", "signing keys"):
        assert found[f"east: {check}"] == "pass", check
    assert found["west: api server"] == "fail"
    assert found["west: signing keys"] == "fail"


# -- review ----------------------------------------------------------------------------------------


def test_review_shows_the_route(
    east: RecordingFakeCluster, west: RecordingFakeCluster, clusters: list[dict[str, Any]]
) -> None:
    from flask_bindcar.review import review

    config = AuthConfig.load({"mode": "tokenreview", "clusters": clusters})
    report, identity, _ = review(config, west.token(NS, SA, audiences=["bindcar"]))
    assert identity is not None and identity.cluster == "west"
    assert [(c.name, c.status, c.detail) for c in report.checks if c.name == "cluster"] == [
        ("cluster", "pass", "routed by its issuer to the cluster west")
    ]
    report, identity, error = review(config, RecordingFakeCluster(issuer=NORTH).token(NS, SA, audiences=["bindcar"]))
    assert identity is None and error is not None and error.message == NOT_AUTHENTICATED["error"]
    assert [(c.name, c.status) for c in report.checks][-2:] == [("cluster", "fail"), ("result", "fail")]
    assert (east.requests_seen, west.requests_seen) == (0, 2)
