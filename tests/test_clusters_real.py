"""Callers from several clusters (issue 21) on two real control planes: ``two_real_clusters``.

One app trusts ``east`` and ``west``, two kube-apiservers with their own issuers
(``https://east.example.com``, ``https://west.example.com``), etcd and RBAC, each reached through a
kubeconfig of its own (``clusters=[...]``). A token is reviewed by the cluster its ``iss`` names,
and only by it: kube-apiserver's own request counters (`RealCluster.review_counts`) show which
cluster each review went to, and that a token of an issuer on no list reached neither. An account
of the same name in both clusters is two identities: RBAC granted in one grants nothing in the
other. Stopping one cluster's kube-apiserver leaves the other's callers served. Last, the example
deployment's two-cluster overlay (``example_app/deploy/clusters/``): admitted by a real API server
as a patch of the single-cluster Deployment, and its ``clusters.yaml`` serving the example app.

The tests marked ``cluster`` run under ``make test-cluster``; the overlay's own consistency is
checked in every run.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask, jsonify, request
from werkzeug.test import Client, TestResponse

from flask_bindcar import RBAC, BindcarAuth, BindcarMiddleware, auth_required, current_identity
from flask_bindcar.pytest_plugin import TWO_CLUSTER_ISSUERS, TwoClusters
from flask_bindcar.testing import RealCluster
from flask_bindcar.testing.interface import bound_token_claims

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "example_app" / "deploy"
OVERLAY = DEPLOY / "clusters"
GROUP = "bindcar.firestoned.io"
INVALID_TOKEN = 'Bearer realm="bindcar", error="invalid_token"'
INSUFFICIENT = 'Bearer realm="bindcar", error="insufficient_scope"'
NOT_AUTHENTICATED = {"error": "Token validation failed: token not authenticated"}
UNKNOWN_KEY = "[invalid bearer token, invalid signature, no keys found]"
"""kube-apiserver's TokenReview error for a token signed by a key it does not have."""
ZONE_RBAC = RBAC(resource="zones", group=GROUP, name="{name}")

cluster = pytest.mark.cluster


# -- the app, through both adapters ------------------------------------------------------------


def flask_app(entries: list[dict[str, Any]], **settings: Any) -> Client:
    """A Flask app trusting ``entries``: ``GET /whoami`` says who and from where, ``DELETE
    /zones/<name>`` asks the caller's own cluster's RBAC."""
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", clusters=entries, **settings)

    @app.get("/whoami")
    def whoami() -> Any:
        return jsonify(whoami_body(request.environ, current_identity.username, current_identity.cluster))

    @app.delete("/zones/<name>")
    @auth_required(rbac=ZONE_RBAC)
    def delete_zone(name: str) -> Any:
        return jsonify(zone=name, caller=current_identity.username, cluster=current_identity.cluster)

    return Client(app)


def wsgi_app(entries: list[dict[str, Any]], **settings: Any) -> Client:
    """The same through `BindcarMiddleware`: ``/whoami`` unguarded by RBAC, ``/zones/example.com``
    behind the RBAC rule for that zone."""

    def whoami(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        identity = environ["bindcar.identity"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(whoami_body(environ, identity.username, identity.cluster)).encode()]

    def zones(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        identity = environ["bindcar.identity"]
        body = {"zone": "example.com", "caller": identity.username, "cluster": identity.cluster}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    plain = BindcarMiddleware(whoami, mode="tokenreview", clusters=entries, **settings)
    rbac = RBAC(resource="zones", group=GROUP, name="example.com")
    guarded = BindcarMiddleware(zones, mode="tokenreview", clusters=entries, rbac=rbac, **settings)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return (guarded if environ["PATH_INFO"].startswith("/zones/") else plain)(environ, start_response)

    return Client(app)


def whoami_body(environ: dict[str, Any], username: str | None, cluster: str | None) -> dict[str, Any]:
    return {
        "user": username,
        "cluster": cluster,
        "environ_cluster": environ.get("bindcar.cluster"),
        "remote_user": environ.get("REMOTE_USER"),
    }


ADAPTERS: dict[str, Callable[..., Client]] = {"flask": flask_app, "wsgi": wsgi_app}


def whoami(client: Client, token: str) -> TestResponse:
    return client.get("/whoami", headers={"Authorization": f"Bearer {token}"})


def delete(client: Client, token: str) -> TestResponse:
    return client.delete("/zones/example.com", headers={"Authorization": f"Bearer {token}"})


# -- the scene -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """A fresh namespace and account, the same names in both clusters (two identities)."""

    namespace: str
    account: str = "external-dns"

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account}"

    def token(self, cluster: RealCluster) -> str:
        """A token of the scene's account from ``cluster``'s own TokenRequest, for ``bindcar``."""
        return cluster.token(self.namespace, self.account, audiences=["bindcar"])


@pytest.fixture
def scene() -> Scene:
    return Scene(f"dns-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def entries(two_real_clusters: TwoClusters, tmp_path: Path) -> list[dict[str, Any]]:
    """The ``clusters`` setting: ``east`` and ``west``, each its issuer and a kubeconfig of its own."""
    return two_real_clusters.entries(tmp_path)


def counts(clusters: TwoClusters) -> dict[str, dict[str, int]]:
    """Each cluster's TokenReviews and SubjectAccessReviews served, by its kube-apiserver's counter."""
    return {name: c.review_counts() for name, c in clusters.by_name().items()}


def added(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {name: {r: after[name][r] - before[name][r] for r in after[name]} for name in after}


NONE = {"tokenreviews": 0, "subjectaccessreviews": 0}
ONE_REVIEW = {"tokenreviews": 1, "subjectaccessreviews": 0}


# -- routing -------------------------------------------------------------------------------------


@cluster
def test_the_fixture_runs_two_clusters_with_their_own_issuers(two_real_clusters: TwoClusters) -> None:
    """Two control planes from the same binaries: own ports and files, the issuers asked for."""
    east, west = two_real_clusters
    assert {name: c.issuer for name, c in two_real_clusters.by_name().items()} == TWO_CLUSTER_ISSUERS
    assert east.port != west.port and east.workdir != west.workdir
    for c in two_real_clusters:
        discovery = c.api("GET", "/.well-known/openid-configuration")
        assert discovery["issuer"] == c.issuer
        claims = json.loads(_b64(c.token("default", "probe").split(".")[1]))
        assert (claims["iss"], claims["aud"]) == (c.issuer, [c.issuer])
    # Each one's tokens are its own: the other's API server does not know them.
    status, body = east.review(west.token("default", "probe", audiences=["bindcar"]), ["bindcar"])
    assert (status, body["status"]) == (201, {"user": {}, "error": "invalid bearer token"})


@cluster
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_each_clusters_tokens_are_accepted_and_named(
    two_real_clusters: TwoClusters, entries: list[dict[str, Any]], scene: Scene, adapter: str
) -> None:
    """The same account name in both clusters: each token is reviewed by its own cluster, once,
    and the identity names that cluster (``cluster``, ``bindcar.cluster``)."""
    client = ADAPTERS[adapter](entries)
    tokens = {name: scene.token(c) for name, c in two_real_clusters.by_name().items()}
    for name, token in tokens.items():
        before = counts(two_real_clusters)
        response = whoami(client, token)
        assert response.status_code == 200, response.text
        assert response.json == {
            "user": scene.user,
            "cluster": name,
            "environ_cluster": name,
            "remote_user": scene.user,
        }
        other = "west" if name == "east" else "east"
        assert added(before, counts(two_real_clusters)) == {name: ONE_REVIEW, other: NONE}


@cluster
@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("issuer", ["https://north.example.com", "east's API URL", "west's API URL"])
def test_a_token_of_an_unknown_issuer_is_refused_with_no_request_to_either(
    two_real_clusters: TwoClusters, entries: list[dict[str, Any]], scene: Scene, adapter: str, issuer: str
) -> None:
    """Signed by east's own key, for an existing account, with an ``iss`` on no list (a third
    issuer, or a configured cluster's API server URL, which is not its issuer): the answer an
    unknown token gets, and neither API server hears of it."""
    east, west = two_real_clusters
    iss = {"east's API URL": east.url, "west's API URL": west.url}.get(issuer, issuer)
    account = east.create_service_account(scene.namespace, scene.account)
    token = east.sign({**bound_token_claims(account, ["bindcar"], 3600), "iss": iss})
    client = ADAPTERS[adapter](entries)
    before = counts(two_real_clusters)

    response = whoami(client, token)

    assert response.status_code == 401
    assert response.json == NOT_AUTHENTICATED
    assert response.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert added(before, counts(two_real_clusters)) == {"east": NONE, "west": NONE}


@cluster
def test_a_token_claiming_the_other_clusters_issuer_is_not_accepted(
    two_real_clusters: TwoClusters, entries: list[dict[str, Any]], scene: Scene
) -> None:
    """West's key, east's ``iss``: routed to east, which answers what kube-apiserver answers a
    token signed by a key it does not have; never sent to west, whose key signed it."""
    east, west = two_real_clusters
    account = west.create_service_account(scene.namespace, scene.account)
    token = west.sign({**bound_token_claims(account, ["bindcar"], 3600), "iss": east.issuer})
    client = flask_app(entries)
    before = counts(two_real_clusters)

    response = whoami(client, token)

    assert response.status_code == 401
    assert response.json == {"error": f"Token validation failed: {UNKNOWN_KEY}"}
    assert added(before, counts(two_real_clusters))["west"] == NONE


# -- authorization and allowlists, per cluster ---------------------------------------------------


@cluster
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_rbac_granted_in_one_cluster_grants_nothing_in_the_other(
    two_real_clusters: TwoClusters, entries: list[dict[str, Any]], scene: Scene, adapter: str
) -> None:
    """East lets the account delete the zone; west's account of the same name asks west, which
    says no, even right after east's yes for the same user and attributes was cached."""
    east, west = two_real_clusters
    tokens = {name: scene.token(c) for name, c in two_real_clusters.by_name().items()}
    east.allow(scene.user, "delete", "zones", group=GROUP, name="example.com")
    client = ADAPTERS[adapter](entries)

    before = counts(two_real_clusters)
    allowed = delete(client, tokens["east"])
    assert allowed.status_code == 200, allowed.text
    assert allowed.json == {"zone": "example.com", "caller": scene.user, "cluster": "east"}
    assert added(before, counts(two_real_clusters)) == {
        "east": {"tokenreviews": 1, "subjectaccessreviews": 1},
        "west": NONE,
    }

    before = counts(two_real_clusters)
    denied = delete(client, tokens["west"])
    assert denied.status_code == 403
    assert denied.json == {"error": f'Forbidden: {scene.user} cannot delete zones.{GROUP} "example.com"'}
    assert denied.headers["WWW-Authenticate"] == INSUFFICIENT
    assert added(before, counts(two_real_clusters)) == {
        "east": NONE,
        "west": {"tokenreviews": 1, "subjectaccessreviews": 1},
    }

    # Granted in west too, west's caller gets in: the refusal was west's RBAC, nothing else.
    west.allow(scene.user, "delete", "zones", group=GROUP, name="example.com")
    fresh = delete(flask_app(entries) if adapter == "flask" else wsgi_app(entries), tokens["west"])
    assert fresh.status_code == 200, fresh.text
    assert fresh.json == {"zone": "example.com", "caller": scene.user, "cluster": "west"}


@cluster
def test_allowlists_qualified_by_cluster(
    two_real_clusters: TwoClusters, entries: list[dict[str, Any]], scene: Scene
) -> None:
    """``east/<account>`` admits east's account only; ``west/<namespace>`` west's namespace only;
    the same names in the other cluster are refused as today's allowlists refuse."""
    tokens = {name: scene.token(c) for name, c in two_real_clusters.by_name().items()}

    by_account = flask_app(entries, allowed_service_accounts=[f"east/{scene.user}"])
    assert whoami(by_account, tokens["east"]).json["cluster"] == "east"
    refused = whoami(by_account, tokens["west"])
    assert refused.status_code == 401
    assert refused.json == {"error": f"Token validation failed: ServiceAccount not authorized: {scene.user}"}

    by_namespace = flask_app(entries, allowed_namespaces=[f"west/{scene.namespace}"])
    assert whoami(by_namespace, tokens["west"]).json["cluster"] == "west"
    refused = whoami(by_namespace, tokens["east"])
    assert refused.status_code == 401
    assert refused.json == {
        "error": f"Token validation failed: ServiceAccount from unauthorized namespace: {scene.namespace}"
    }


# -- one cluster's outage ------------------------------------------------------------------------


@pytest.fixture
def west_down(two_real_clusters: TwoClusters) -> Iterator[RealCluster]:
    """West's kube-apiserver stopped for the test (etcd keeps running), started again after it."""
    west = two_real_clusters.west
    west.stop_apiserver()
    try:
        yield west
    finally:
        west.start_apiserver()


@cluster
@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_stopping_one_clusters_api_server_leaves_the_others_callers_served(
    two_real_clusters: TwoClusters,
    entries: list[dict[str, Any]],
    scene: Scene,
    adapter: str,
    request: pytest.FixtureRequest,
) -> None:
    east, west = two_real_clusters
    client = ADAPTERS[adapter](entries)
    known = {name: scene.token(c) for name, c in two_real_clusters.by_name().items()}
    for name, token in known.items():
        assert whoami(client, token).json["cluster"] == name
    unseen_west = scene.token(west)  # minted while west runs, never shown to the app

    request.getfixturevalue("west_down")
    assert not west.apiserver_running

    # West's callers cannot be reviewed: west's own failure, naming west's API server ...
    for _ in range(25):
        refused = whoami(client, unseen_west)
        assert refused.status_code == 401
        error = refused.json["error"]
        assert error.startswith(f"Token validation failed: TokenReview API call failed: cannot connect to {west.url}: ")
        assert "Connection refused" in error
    # ... and east's are served: a known token, and fresh ones east mints during west's outage.
    before = east.review_counts()
    assert whoami(client, known["east"]).json == {
        "user": scene.user,
        "cluster": "east",
        "environ_cluster": "east",
        "remote_user": scene.user,
    }
    for account in ("cert-manager", "ingress-dns"):
        fresh = east.token(scene.namespace, account, audiences=["bindcar"])
        served = whoami(client, fresh)
        assert served.status_code == 200, served.text
        assert served.json["user"] == f"system:serviceaccount:{scene.namespace}:{account}"
        assert served.json["cluster"] == "east"
    assert east.review_counts()["tokenreviews"] - before["tokenreviews"] == 2


@cluster
def test_west_serves_again_after_its_outage(
    two_real_clusters: TwoClusters, entries: list[dict[str, Any]], scene: Scene
) -> None:
    """After `start_apiserver`, the same app (built before the outage) reviews west's tokens again."""
    west = two_real_clusters.west
    client = flask_app(entries)
    assert whoami(client, scene.token(west)).json["cluster"] == "west"
    west.stop_apiserver()
    try:
        assert whoami(client, scene.token(two_real_clusters.east)).json["cluster"] == "east"
    finally:
        west.start_apiserver()
    after = whoami(client, west.token(scene.namespace, "after-outage", audiences=["bindcar"]))
    assert after.status_code == 200, after.text
    assert after.json["cluster"] == "west"


# -- the example deployment's two-cluster overlay ------------------------------------------------

MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}
"""The strategic-merge keys of the lists deployment-patch.yaml touches (as kubectl patch merges them)."""


def strategic_merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """``patch`` merged into ``base`` as ``kubectl patch`` (strategic merge) does for these lists,
    but for the order of their items (kubectl puts new ones first)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for k, v in patch.items():
            merged[k] = strategic_merge(base[k], v, k) if k in base else v
        return merged
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        by = MERGE_KEYS[key]
        merged_list = list(base)
        for item in patch:
            index = next((i for i, b in enumerate(merged_list) if b[by] == item[by]), None)
            if index is None:
                merged_list.append(item)
            else:
                merged_list[index] = strategic_merge(merged_list[index], item)
        return merged_list
    return patch


def overlay() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The single-cluster Deployment, the overlay's ConfigMap and the Deployment patched."""
    deployment = yaml.safe_load((DEPLOY / "deployment.yaml").read_text())
    configmap = yaml.safe_load((OVERLAY / "configmap.yaml").read_text())
    patch = yaml.safe_load((OVERLAY / "deployment-patch.yaml").read_text())
    return deployment, configmap, strategic_merge(copy.deepcopy(deployment), patch)


def test_the_overlay_is_valid_and_wired(tmp_path: Path) -> None:
    """The patched Deployment validates strictly; it mounts clusters.yaml and every kubeconfig it
    names where it names them, read-only, and says where in BIND_CLUSTERS_FILE; the rest of the
    Deployment is the single-cluster one."""
    deployment, configmap, patched = overlay()
    merged = tmp_path / "deployment.yaml"
    merged.write_text(yaml.safe_dump(patched))
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(OVERLAY / "configmap.yaml"), str(merged)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == 2

    [container] = patched["spec"]["template"]["spec"]["containers"]
    [base] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert [e for e in container["env"] if e["name"] != "BIND_CLUSTERS_FILE"] == base["env"]
    [mount] = [m for m in container["volumeMounts"] if m not in base["volumeMounts"]]
    assert mount["readOnly"] is True
    [volume] = [v for v in patched["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    files = {
        f"{mount['mountPath']}/{item['path']}": (kind, source[kind]["name"], item["key"])
        for source in volume["projected"]["sources"]
        for kind in source
        for item in source[kind]["items"]
    }
    assert files[env["BIND_CLUSTERS_FILE"]["value"]] == ("configMap", configmap["metadata"]["name"], "clusters.yaml")
    assert volume["projected"]["defaultMode"] == 0o440

    listed = yaml.safe_load(configmap["data"]["clusters.yaml"])["clusters"]
    assert [(c["name"], c["issuer"]) for c in listed] == list(TWO_CLUSTER_ISSUERS.items())
    for entry in listed:
        assert set(entry) == {"name", "issuer", "kubeconfig"}
        kind, name, key = files[entry["kubeconfig"]]
        assert (kind, name, key) == ("secret", f"bindcar-cluster-{entry['name']}", "kubeconfig")
    assert configmap["metadata"]["namespace"] == deployment["metadata"]["namespace"]


@cluster
def test_the_overlay_patches_the_deployed_example_and_its_clusters_file_serves(
    two_real_clusters: TwoClusters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Applied as its comments say to a real API server: the single-cluster manifests, the
    ConfigMap, then ``kubectl patch`` (the server's strategic merge, admitted by its validation)
    gives the Deployment `strategic_merge` gives. Then the example app, configured by that
    Deployment's environment and the ConfigMap's clusters.yaml (the kubeconfigs where the volume
    puts them, under ``tmp_path``), serves the allowlisted caller of each cluster, named."""
    east = two_real_clusters.east
    for name in ("namespace", "serviceaccount", "configmap", "deployment"):
        east.kubectl("apply", "-f", str(DEPLOY / f"{name}.yaml"))
    east.kubectl("apply", "-f", str(OVERLAY / "configmap.yaml"))
    patch = OVERLAY / "deployment-patch.yaml"
    east.kubectl("patch", "deployment", "bindcar-example", "-n", "dns-system", "--patch-file", str(patch))
    served = east.api("GET", "/apis/apps/v1/namespaces/dns-system/deployments/bindcar-example")
    _, _, patched = overlay()
    [container] = served["spec"]["template"]["spec"]["containers"]
    [expected] = patched["spec"]["template"]["spec"]["containers"]
    # The same items (the server puts the patch's new ones first; order means nothing to either).
    assert {e["name"]: e for e in container["env"]} == {e["name"]: e for e in expected["env"]}
    assert {m["mountPath"]: m for m in container["volumeMounts"]} == {
        m["mountPath"]: m for m in expected["volumeMounts"]
    }
    volumes = {v["name"]: v for v in served["spec"]["template"]["spec"]["volumes"]}
    assert volumes == {v["name"]: v for v in patched["spec"]["template"]["spec"]["volumes"]}

    # The app as that pod runs it: the Deployment's BIND_* settings, the ConfigMaps' values.
    data = east.api("GET", "/api/v1/namespaces/dns-system/configmaps/bindcar-clusters")["data"]["clusters.yaml"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "clusters"]
    mounted = tmp_path / mount["mountPath"].lstrip("/")
    mounted.mkdir(parents=True)
    for entry in yaml.safe_load(data)["clusters"]:
        two_real_clusters.by_name()[entry["name"]].write_kubeconfig(mounted / Path(entry["kubeconfig"]).name)
    (mounted / "clusters.yaml").write_text(data.replace(mount["mountPath"], str(mounted)))
    allowlists = east.api("GET", "/api/v1/namespaces/dns-system/configmaps/bindcar-allowed-accounts")["data"]
    for item in container["env"]:
        if not item["name"].startswith("BIND_"):
            continue
        if "valueFrom" in item:
            monkeypatch.setenv(item["name"], allowlists[item["valueFrom"]["configMapKeyRef"]["key"]])
        elif item["name"] == "BIND_CLUSTERS_FILE":
            monkeypatch.setenv(item["name"], str(mounted / "clusters.yaml"))
        else:
            monkeypatch.setenv(item["name"], item["value"])

    from example_app.app import create_app

    client = create_app(tmp_path / "zones").test_client()
    for name, c in two_real_clusters.by_name().items():
        token = c.token("dns-system", "external-dns", audiences=["bindcar"])
        before = counts(two_real_clusters)
        response = client.get("/api/v1/zones", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert response.json == {
            "zones": [],
            "caller": {"username": "system:serviceaccount:dns-system:external-dns", "method": "tokenreview"},
        }
        other = "west" if name == "east" else "east"
        assert added(before, counts(two_real_clusters)) == {name: ONE_REVIEW, other: NONE}


def _b64(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
