"""Authorization by RBAC (issue 12): SubjectAccessReview per route, cached, through both adapters.

The RBAC scenarios run on FakeCluster and on a real kube-apiserver (``--cluster``) from one
table, through the plugin's ``any_cluster``: ``cluster.allow`` writes the same permission on both
(a rule in FakeCluster, a real Role or ClusterRole and binding in RealCluster). The real answers
are the truth; FakeCluster follows them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, jsonify
from werkzeug.test import Client

from flask_bindcar import RBAC, AuthConfig, BindcarAuth, BindcarMiddleware, auth_required, current_identity
from flask_bindcar.authz import Decision, DecisionCache
from flask_bindcar.bulkhead import Bulkhead
from flask_bindcar.errors import API_OVERLOADED, API_UNREACHABLE, AuthzUnavailable, ConfigError
from flask_bindcar.flight import FOLLOWER_GRACE
from flask_bindcar.testing import Cluster, FakeCluster, RealCluster
from tests.conftest import WATCH, in_forked_child
from tests.gunicorn_server import TARGETS
from tests.hostile_api import black_hole, pointed_at

GROUP = "bindcar.firestoned.io"
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
INSUFFICIENT = 'Bearer realm="bindcar", error="insufficient_scope"'
UNAVAILABLE = "Authorization unavailable: SubjectAccessReview API call failed: "


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeCluster]:
    """One FakeCluster for the tests that only add state (fresh namespaces, rules): starting one costs."""
    with FakeCluster() as cluster:
        yield cluster


def sar(cluster: Cluster, spec: dict[str, Any], caller: str | None = None) -> dict[str, Any]:
    """POST a SubjectAccessReview as ``caller`` (default: the app's own caller); the decoded answer."""
    response = requests.post(
        cluster.url + SAR_PATH,
        json={"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
        headers={"Authorization": f"Bearer {caller or cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=30,
    )
    body: dict[str, Any] = response.json()
    body["code"] = response.status_code
    return body


# -- the contract: one table, two clusters ---------------------------------------------------


@dataclass
class Scene:
    """A fresh ServiceAccount, and the names in answers made generic."""

    ns: str
    sa: str
    names: dict[str, str] = field(default_factory=dict)

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.ns}:{self.sa}"

    @property
    def groups(self) -> list[str]:
        return ["system:serviceaccounts", f"system:serviceaccounts:{self.ns}", "system:authenticated"]

    def spec(self, **attributes: Any) -> dict[str, Any]:
        key = "nonResourceAttributes" if "path" in attributes else "resourceAttributes"
        return {"user": self.user, "groups": self.groups, key: attributes}

    def generic(self, text: str) -> str:
        for real, placeholder in self.names.items():
            text = text.replace(real, placeholder)
        return text


def scene(cluster: Cluster) -> Scene:
    s = Scene(f"ns-{uuid.uuid4().hex[:6]}", f"sa-{uuid.uuid4().hex[:6]}")
    cluster.create_service_account(s.ns, s.sa)
    s.names = {s.ns: "<ns>", s.sa: "<sa>"}
    return s


Grant = Callable[[Cluster, Scene], str]
ZONE = {"verb": "delete", "group": GROUP, "resource": "zones", "name": "example.com"}


def _none(c: Cluster, s: Scene) -> str:
    return ""


def _zones_delete(c: Cluster, s: Scene) -> str:
    return c.allow(s.user, "delete", "zones", group=GROUP).binding


def _zones_named(c: Cluster, s: Scene) -> str:
    return c.allow(s.user, "delete", "zones", group=GROUP, name="example.com").binding


def _in_namespace(c: Cluster, s: Scene) -> str:
    return c.allow(s.user, "delete", "zones", group=GROUP, namespace=s.ns).binding


def _to_group(c: Cluster, s: Scene) -> str:
    return c.allow(f"system:serviceaccounts:{s.ns}", "delete", "zones", group=GROUP).binding


def _all_resources(c: Cluster, s: Scene) -> str:
    return c.allow(s.user, "delete", "*", group=GROUP).binding


def _any_status(c: Cluster, s: Scene) -> str:
    return c.allow(s.user, "update", "*/status", group=GROUP).binding


def _path_prefix(c: Cluster, s: Scene) -> str:
    return c.allow(s.user, "get", path="/zones/*").binding


def _allowed(reason: str) -> dict[str, Any]:
    return {"code": 201, "status": {"allowed": True, "reason": reason}}


DENIED = {"code": 201, "status": {"allowed": False}}
BY_CRB = 'RBAC: allowed by ClusterRoleBinding "<binding>" of ClusterRole "<binding>" to ServiceAccount "<sa>/<ns>"'
BY_RB = 'RBAC: allowed by RoleBinding "<binding>/<ns>" of Role "<binding>" to ServiceAccount "<sa>/<ns>"'
BY_GROUP = (
    'RBAC: allowed by ClusterRoleBinding "<binding>" of ClusterRole "<binding>" to Group "system:serviceaccounts:<ns>"'
)
DISCOVERY = 'RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole "system:discovery" to Group '
DISCOVERY += '"system:authenticated"'

RBAC_SCENARIOS: dict[str, tuple[Grant, dict[str, Any], dict[str, Any]]] = {
    "no rule: denied, no reason": (_none, ZONE, DENIED),
    "ClusterRole for the verb": (_zones_delete, ZONE, _allowed(BY_CRB)),
    "another verb": (_zones_delete, {**ZONE, "verb": "get"}, DENIED),
    "another group": (_zones_delete, {**ZONE, "group": ""}, DENIED),
    "resourceNames: the name": (_zones_named, ZONE, _allowed(BY_CRB)),
    "resourceNames: another name": (_zones_named, {**ZONE, "name": "other.org"}, DENIED),
    "resourceNames: a request without a name": (_zones_named, {k: v for k, v in ZONE.items() if k != "name"}, DENIED),
    "RoleBinding: in its namespace": (_in_namespace, {**ZONE, "namespace": "<ns>"}, _allowed(BY_RB)),
    "RoleBinding: another namespace": (_in_namespace, {**ZONE, "namespace": "default"}, DENIED),
    "RoleBinding: cluster scope": (_in_namespace, ZONE, DENIED),
    "bound to the caller's group": (_to_group, ZONE, _allowed(BY_GROUP)),
    "resources *: a subresource too": (_all_resources, {**ZONE, "subresource": "status"}, _allowed(BY_CRB)),
    "*/status: the status of any": (
        _any_status,
        {"verb": "update", "group": GROUP, "resource": "records", "subresource": "status"},
        _allowed(BY_CRB),
    ),
    "*/status: not the resource itself": (_any_status, {"verb": "update", "group": GROUP, "resource": "zones"}, DENIED),
    "path prefix": (_path_prefix, {"path": "/zones/example.com", "verb": "get"}, _allowed(BY_CRB)),
    "path prefix, another verb": (_path_prefix, {"path": "/zones/example.com", "verb": "delete"}, DENIED),
    "path outside the prefix": (_path_prefix, {"path": "/records", "verb": "get"}, DENIED),
    "/api/* is everyone's to get (system:discovery)": (
        _none,
        {"path": "/api/v1/zones", "verb": "get"},
        _allowed(DISCOVERY),
    ),
    "/api/* is not everyone's to post": (_none, {"path": "/api/v1/zones", "verb": "post"}, DENIED),
}


@pytest.mark.parametrize("scenario", list(RBAC_SCENARIOS))
def test_subjectaccessreview_contract(any_cluster: Cluster, scenario: str) -> None:
    make, attributes, expected = RBAC_SCENARIOS[scenario]
    s = scene(any_cluster)
    binding = make(any_cluster, s)
    if binding:
        s.names[binding] = "<binding>"
    attributes = {k: s.generic(v).replace("<ns>", s.ns) if k == "namespace" else v for k, v in attributes.items()}
    answer = sar(any_cluster, s.spec(**attributes))
    status = {k: s.generic(v) if isinstance(v, str) else v for k, v in answer["status"].items()}
    assert {"code": answer["code"], "status": status} == expected


def test_caller_without_rbac_may_not_review(any_cluster: Cluster) -> None:
    s = scene(any_cluster)
    answer = sar(any_cluster, s.spec(**ZONE), caller=any_cluster.token(s.ns, s.sa))
    assert (answer["code"], answer["reason"], s.generic(answer["message"])) == (
        403,
        "Forbidden",
        'subjectaccessreviews.authorization.k8s.io is forbidden: User "system:serviceaccount:<ns>:<sa>" cannot '
        'create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope',
    )


def test_invalid_review_is_422(any_cluster: Cluster) -> None:
    s = scene(any_cluster)
    spec = {**s.spec(**ZONE), "nonResourceAttributes": {"path": "/x", "verb": "get"}}
    answer = sar(any_cluster, spec)
    assert (answer["code"], answer["reason"]) == (422, "Invalid")
    assert "exactly one of nonResourceAttributes or resourceAttributes must be specified" in answer["message"]


# -- through both adapters ---------------------------------------------------------------------

ZONE_RBAC = RBAC(resource="zones", group=GROUP, name="{name}")


def flask_app(kubeconfig: Path, rbac: RBAC | None = ZONE_RBAC, **settings: Any) -> Client:
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(kubeconfig), **settings)

    @app.route("/zones/<name>", methods=["GET", "DELETE"])
    @auth_required(rbac=rbac)
    def zone(name: str) -> Any:
        return jsonify(zone=name, caller=current_identity.username)

    @app.get("/zones")
    def zones() -> Any:
        return jsonify(zones=[], caller=current_identity.username)

    return Client(app)


def wsgi_app(kubeconfig: Path, rbac: RBAC | None = None, **settings: Any) -> Client:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok": true}']

    rules = rbac or RBAC(resource="zones", group=GROUP, name="example.com")
    return Client(BindcarMiddleware(app, mode="tokenreview", kubeconfig=str(kubeconfig), rbac=rules, **settings))


ADAPTERS = {"flask": flask_app, "wsgi": wsgi_app}


def call(client: Client, token: str, method: str = "DELETE", path: str = "/zones/example.com") -> Any:
    return client.open(path, method=method, headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_allowed_sends_exactly_the_callers_attributes(any_cluster: Cluster, any_kubeconfig: Path, adapter: str) -> None:
    s = scene(any_cluster)
    pod = f"pod-{uuid.uuid4().hex[:6]}"
    token = any_cluster.token(s.ns, s.sa, audiences=["bindcar"], pod=pod)
    any_cluster.allow(s.user, "delete", "zones", group=GROUP, name="example.com")
    seen = len(any_cluster.access_reviews) if isinstance(any_cluster, FakeCluster) else 0

    response = call(ADAPTERS[adapter](any_kubeconfig), token)

    assert response.status_code == 200
    if isinstance(any_cluster, FakeCluster):
        (spec,) = any_cluster.access_reviews[seen:]
        sa = any_cluster.service_accounts[(s.ns, s.sa)]
        extra = spec.pop("extra")
        assert spec == {
            "user": s.user,
            "uid": sa.uid,
            "groups": s.groups,
            "resourceAttributes": {"verb": "delete", "group": GROUP, "resource": "zones", "name": "example.com"},
        }
        assert sorted(extra) == [
            "authentication.kubernetes.io/credential-id",
            "authentication.kubernetes.io/pod-name",
            "authentication.kubernetes.io/pod-uid",
        ]
        assert extra["authentication.kubernetes.io/pod-name"] == [pod]


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_denied_is_403_with_insufficient_scope(any_cluster: Cluster, any_kubeconfig: Path, adapter: str) -> None:
    s = scene(any_cluster)
    token = any_cluster.token(s.ns, s.sa, audiences=["bindcar"])

    response = call(ADAPTERS[adapter](any_kubeconfig), token)

    assert response.status_code == 403
    assert response.json == {"error": f'Forbidden: {s.user} cannot delete zones.{GROUP} "example.com"'}
    assert response.headers["WWW-Authenticate"] == INSUFFICIENT
    assert response.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_path_authorization(any_cluster: Cluster, any_kubeconfig: Path, adapter: str) -> None:
    s = scene(any_cluster)
    token = any_cluster.token(s.ns, s.sa, audiences=["bindcar"])
    any_cluster.allow(s.user, "delete", path="/zones/*")
    client = ADAPTERS[adapter](any_kubeconfig, rbac=RBAC(path=True))

    assert call(client, token).status_code == 200
    denied = call(client, token, method="GET")
    assert denied.status_code == 403
    assert denied.json == {"error": f"Forbidden: {s.user} cannot get /zones/example.com"}


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "rbac", "verb"),
    [
        ("GET", RBAC(resource="zones"), "get"),
        ("HEAD", RBAC(resource="zones"), "get"),
        ("POST", RBAC(resource="zones"), "create"),
        ("PUT", RBAC(resource="zones"), "update"),
        ("PATCH", RBAC(resource="zones"), "patch"),
        ("DELETE", RBAC(resource="zones"), "delete"),
        ("OPTIONS", RBAC(resource="zones"), "options"),
        ("DELETE", RBAC(resource="zones", verb="deletecollection"), "deletecollection"),
        ("POST", RBAC(path=True), "post"),
        ("HEAD", RBAC(path=True), "head"),
    ],
)
def test_verb_from_the_method(method: str, rbac: RBAC, verb: str) -> None:
    assert rbac.attributes(method, "/zones").verb == verb


def test_templates_and_description() -> None:
    rbac = RBAC(resource="zones", group=GROUP, subresource="status", namespace="{ns}", name="{name}")
    attributes = rbac.attributes("PUT", "/x", {"ns": "dns-system", "name": "example.com"})
    assert attributes.describe() == f'zones.{GROUP}/status "example.com" in namespace dns-system'
    assert RBAC(resource="pods").attributes("GET", "/").describe() == "pods"
    with pytest.raises(KeyError):
        rbac.attributes("PUT", "/x", {"ns": "dns-system"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, 'RBAC needs a resource, such as RBAC(resource="zones"), or path=True'),
        ({"path": True, "resource": "zones"}, "RBAC(path=True) checks the request path"),
        ({"resource": "zones", "name": "{0}"}, "RBAC(name='{0}'): {0} is not valid"),
        ({"resource": "zones", "name": "{name!r}"}, "RBAC(name='{name!r}'): {name} is not valid"),
        ({"resource": "zones/status"}, "RBAC(resource='zones/status') is not valid"),
    ],
)
def test_bad_rbac_is_a_config_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        RBAC(**kwargs)
    assert str(e.value).startswith(message)


def test_authz_needs_tokenreview_mode() -> None:
    with pytest.raises(ConfigError, match=r"^BIND_AUTHZ asks for a SubjectAccessReview of the caller, which needs"):
        AuthConfig.load(environ={"BIND_AUTHZ": "path"})


def test_middleware_refuses_view_argument_templates(fake_kubeconfig: Path) -> None:
    with pytest.raises(ConfigError, match="names view arguments, which only a Flask route has"):
        wsgi_app(fake_kubeconfig, rbac=ZONE_RBAC)


# -- the cache, single flight and outages (FakeCluster: it counts reviews and has faults) --------


@pytest.fixture
def fake(shared_fake: FakeCluster) -> Iterator[FakeCluster]:
    """The module's FakeCluster, its latency and faults put back after the test."""
    yield shared_fake
    shared_fake.latency, shared_fake.fault = 0.0, None


@pytest.fixture
def fake_kc(fake: FakeCluster, tmp_path: Path) -> Path:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def zone_caller(fake: FakeCluster) -> tuple[str, str]:
    """A new caller allowed to delete zones (cluster-wide) but nothing else: (username, token)."""
    ns, sa = "dns-system", f"external-dns-{uuid.uuid4().hex[:6]}"
    user = f"system:serviceaccount:{ns}:{sa}"
    fake.allow(user, "delete", "zones", group=GROUP)
    return user, fake.token(ns, sa, audiences=["bindcar"])


def new_caller(fake: FakeCluster, ns: str = "dns-system") -> tuple[str, str]:
    sa = f"sa-{uuid.uuid4().hex[:6]}"
    return f"system:serviceaccount:{ns}:{sa}", fake.token(ns, sa, audiences=["bindcar"])


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_allowed_answer_is_cached(fake: FakeCluster, fake_kc: Path, zone_caller: tuple[str, str], adapter: str) -> None:
    client = ADAPTERS[adapter](fake_kc, authz_cache_allowed_ttl=60)
    before = fake.access_reviews_served
    assert call(client, zone_caller[1]).status_code == 200
    assert call(client, zone_caller[1]).status_code == 200
    assert fake.access_reviews_served - before == 1


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_denied_answer_expires_on_its_own_ttl(fake: FakeCluster, fake_kc: Path, adapter: str) -> None:
    user, token = new_caller(fake)
    client = ADAPTERS[adapter](fake_kc, authz_cache_allowed_ttl=60, authz_cache_denied_ttl=0.5)
    before = fake.access_reviews_served
    assert call(client, token).status_code == 403
    fake.allow(user, "delete", "zones", group=GROUP)
    assert call(client, token).status_code == 403  # the denial is still cached
    assert fake.access_reviews_served - before == 1
    time.sleep(0.6)
    assert call(client, token).status_code == 200
    assert fake.access_reviews_served - before == 2


def test_denied_ttl_zero_asks_every_time(fake: FakeCluster, fake_kc: Path) -> None:
    _, token = new_caller(fake)
    client = flask_app(fake_kc, authz_cache_denied_ttl=0)
    before = fake.access_reviews_served
    assert [call(client, token).status_code for _ in range(2)] == [403, 403]
    assert fake.access_reviews_served - before == 2


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_concurrent_requests_share_one_review(
    fake: FakeCluster,
    fake_kc: Path,
    zone_caller: tuple[str, str],
    adapter: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = ADAPTERS[adapter](fake_kc)
    assert call(client, zone_caller[1], method="GET", path="/zones/other.org").status_code in (200, 403)
    before = fake.access_review_requests
    fake.latency = 0.5
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(call(client, zone_caller[1]).status_code)) for _ in range(12)
    ]
    caplog.clear()
    with caplog.at_level("INFO", logger="flask_bindcar.audit"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == [200] * 12
    assert fake.access_review_requests - before == 1
    records = [r.bindcar_audit for r in caplog.records if getattr(r, "bindcar_audit", {}).get("authorization")]
    assert sorted(r["cache"] for r in records) == ["miss"] + ["shared"] * 11  # one asked, eleven waited on it


OUTAGES = {
    "500": ("error500", "HTTP 500 Internal Server Error: Internal error occurred: etcdserver: request timed out"),
    "hang": ("hang", "no answer within 1s"),
    "garbage": ("garbage", "response is not JSON"),
}


@pytest.mark.parametrize("adapter", list(ADAPTERS))
@pytest.mark.parametrize("outage", [*OUTAGES, "down"])
def test_outage_is_503_within_the_timeout_and_never_cached(
    request: pytest.FixtureRequest, adapter: str, outage: str
) -> None:
    fake: FakeCluster = request.getfixturevalue("fake_cluster" if outage == "down" else "fake")
    fake_kc = fake.write_kubeconfig(request.getfixturevalue("tmp_path") / "kubeconfig")
    user, token = new_caller(fake)
    fake.allow(user, "delete", "zones", group=GROUP)
    zone_caller = (user, token)
    client = ADAPTERS[adapter](fake_kc, review_timeout=1)
    assert call(client, zone_caller[1], method="GET").status_code == 403  # the TokenReview is cached now
    started = time.monotonic()
    if outage == "down":
        port = fake.port
        fake.stop()
        response = call(client, zone_caller[1])
        expected = f"cannot connect to https://127.0.0.1:{port}: "
    else:
        fault, expected = OUTAGES[outage]
        with fake.faulty(fault):  # type: ignore[arg-type]
            response = call(client, zone_caller[1])
    assert time.monotonic() - started < 2.5
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Content-Type"] == "application/json"
    assert "WWW-Authenticate" not in response.headers
    error = response.json["error"]
    assert error.startswith("Authorization unavailable: SubjectAccessReview API call failed: " + expected)
    if outage != "down":  # never cached: the next request asks again, and is allowed
        assert call(client, zone_caller[1]).status_code == 200


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_one_review_timeout_for_all_the_reviews_of_a_request(fake: FakeCluster, fake_kc: Path, adapter: str) -> None:
    """A request that needs a TokenReview and then a SubjectAccessReview gets one review timeout for
    both, not one each: a slow API server (0.6 s a call, timeout 1 s) cannot hold it for 1.2 s. The
    soak found requests held for two timeouts while kube-apiserver was frozen."""
    user, token = new_caller(fake)
    fake.allow(user, "delete", "zones", group=GROUP)
    client = ADAPTERS[adapter](fake_kc, review_timeout=1)
    fake.latency = 0.6
    response = call(client, token)
    assert (response.status_code, response.json) == (503, {"error": UNAVAILABLE + "no answer within 1s"})
    assert response.headers["Retry-After"] == "1"
    fake.latency = 0.0
    assert call(client, token).status_code == 200  # the TokenReview was cached, the refusal was not


def test_bulkhead_full_is_503(fake: FakeCluster, fake_kc: Path, zone_caller: tuple[str, str]) -> None:
    client = flask_app(fake_kc, review_max_inflight=1, review_timeout=2)
    assert call(client, zone_caller[1], method="GET").status_code == 403
    fake.latency = 1.0
    slow = threading.Thread(target=lambda: call(client, zone_caller[1], path="/zones/a.org"))
    slow.start()
    time.sleep(0.3)
    response = call(client, zone_caller[1])
    slow.join()
    assert (response.status_code, response.json) == (
        503,
        {
            "error": "Authorization unavailable: SubjectAccessReview API call failed: overloaded: this caller's share "
            "of the review slots is in use (1 in flight)"
        },
    )


def test_generic_detail(fake: FakeCluster, fake_kc: Path) -> None:
    _, token = new_caller(fake)
    client = flask_app(fake_kc, error_detail="generic")
    response = call(client, token)
    assert (response.status_code, response.json) == (403, {"error": "Forbidden"})
    assert response.headers["WWW-Authenticate"] == INSUFFICIENT
    with fake.faulty("error500"):
        response = call(client, token, path="/zones/a.org")
    assert (response.status_code, response.json) == (503, {"error": "Authorization unavailable"})


# -- Flask: composition, the app-wide default, templates; audit and metrics -----------------------


def test_allowlist_comes_first_then_rbac(fake: FakeCluster, fake_kc: Path) -> None:
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kc))

    @app.delete("/zones/<name>")
    @auth_required(namespaces=["dns-system"], rbac=ZONE_RBAC)
    def zone(name: str) -> Any:
        return jsonify(zone=name)

    client = Client(app)
    _, outsider = new_caller(fake, "default")
    before = fake.access_reviews_served
    response = call(client, outsider)
    assert (response.status_code, response.json) == (
        401,
        {"error": "Token validation failed: ServiceAccount from unauthorized namespace: default"},
    )
    assert fake.access_reviews_served == before
    _, insider = new_caller(fake)
    assert call(client, insider).status_code == 403


def test_app_wide_default_and_per_view_override(fake: FakeCluster, fake_kc: Path) -> None:
    user, token = new_caller(fake)
    fake.allow(user, "get", path="/zones")
    fake.allow(user, "delete", "zones", group=GROUP, name="example.com")
    seen = len(fake.access_reviews)
    app = Flask(__name__)
    app.config["BINDCAR_AUTHZ"] = RBAC(path=True)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kc))

    @app.get("/zones")
    def zones() -> Any:
        return jsonify(zones=[])

    @app.get("/records")
    def records() -> Any:
        return jsonify(records=[])

    @app.route("/zones/<name>", methods=["GET", "DELETE"])
    @auth_required(rbac=ZONE_RBAC)
    def zone(name: str) -> Any:
        return jsonify(zone=name)

    client = Client(app)
    assert call(client, token, method="GET", path="/zones").status_code == 200
    denied = call(client, token, method="GET", path="/records")
    assert (denied.status_code, denied.json) == (403, {"error": f"Forbidden: {user} cannot get /records"})
    assert call(client, token).status_code == 200  # its own RBAC, not the path
    assert [s.get("resourceAttributes", s.get("nonResourceAttributes")) for s in fake.access_reviews[seen:]] == [
        {"path": "/zones", "verb": "get"},
        {"path": "/records", "verb": "get"},
        {"verb": "delete", "group": GROUP, "resource": "zones", "name": "example.com"},
    ]


def test_missing_view_argument_fails_closed(fake: FakeCluster, fake_kc: Path) -> None:
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kc))

    @app.delete("/zones/<zone>")
    @auth_required(rbac=ZONE_RBAC)
    def zone(zone: str) -> Any:
        return jsonify(zone=zone)

    _, token = new_caller(fake)
    response = call(Client(app), token)
    assert (response.status_code, response.json) == (
        503,
        {"error": UNAVAILABLE + "the route has no view argument 'name'"},
    )


def test_audit_record_and_metrics(
    fake: FakeCluster, fake_kc: Path, zone_caller: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import REGISTRY

    def count(result: str) -> float:
        return REGISTRY.get_sample_value("bindcar_authorization_total", {"result": result}) or 0.0

    def seconds() -> float:
        return REGISTRY.get_sample_value("bindcar_subjectaccessreview_duration_seconds_sum") or 0.0

    before = {r: count(r) for r in ("allowed", "denied", "unavailable")}
    client = flask_app(fake_kc)
    observed, started = seconds(), time.perf_counter()
    with caplog.at_level("INFO", logger="flask_bindcar.audit"):
        assert call(client, zone_caller[1]).status_code == 200
        assert call(client, zone_caller[1], method="GET").status_code == 403
    assert 0 < seconds() - observed <= time.perf_counter() - started  # two reviews, timed inside the requests
    records = [r.bindcar_audit for r in caplog.records if hasattr(r, "bindcar_audit")]
    authz = [r for r in records if r["authorization"] is not None]
    assert [(r["result"], r["authorization"]["decision"]) for r in authz] == [("allow", "allowed"), ("deny", "denied")]
    allowed, denied = (r["authorization"] for r in authz)
    assert allowed == {
        "verb": "delete",
        "attributes": {"verb": "delete", "group": GROUP, "resource": "zones", "name": "example.com"},
        "decision": "allowed",
        "reason": allowed["reason"],
    }
    assert allowed["reason"].startswith('RBAC: allowed by ClusterRoleBinding "fake-rbac-')
    assert (denied["verb"], denied["reason"]) == ("get", None)
    assert authz[1]["message"] == f'Forbidden: {zone_caller[0]} cannot get zones.{GROUP} "example.com"'
    assert (count("allowed") - before["allowed"], count("denied") - before["denied"]) == (1, 1)
    assert REGISTRY.get_sample_value("bindcar_subjectaccessreview_duration_seconds_count") is not None
    assert zone_caller[1] not in caplog.text


# -- gunicorn, no code: BIND_AUTHZ=path ---------------------------------------------------------


@pytest.mark.parametrize("flavor", list(TARGETS))
def test_gunicorn_path_authorization(
    any_cluster: Cluster, any_kubeconfig: Path, serve: Callable[..., Any], flavor: str
) -> None:
    s = scene(any_cluster)
    token = any_cluster.token(s.ns, s.sa, audiences=["bindcar"])
    any_cluster.allow(s.user, "get", path="/zones")
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(any_kubeconfig), "BIND_AUTHZ": "path"}
    with serve(TARGETS[flavor], env) as url:
        headers = {"Authorization": f"Bearer {token}"}
        allowed = requests.get(f"{url}/zones", headers=headers, timeout=10)
        denied = requests.delete(f"{url}/zones", headers=headers, timeout=10)
    assert allowed.status_code == {"flask": 404, "wsgi": 200}[flavor]  # the Flask app routes only /api/v1/...
    assert denied.status_code == 403
    assert denied.json() == {"error": f"Forbidden: {s.user} cannot delete /zones"}
    assert denied.headers["WWW-Authenticate"] == INSUFFICIENT


# -- doctor and review ---------------------------------------------------------------------------


def test_doctor_checks_the_subjectaccessreview_permission(fake: FakeCluster, tmp_path: Path) -> None:
    from flask_bindcar.doctor import auth_delegator_yaml, doctor

    good = fake.write_kubeconfig(tmp_path / "good")
    config = AuthConfig.load({"mode": "tokenreview", "rbac": "path", "kubeconfig": str(good)}, environ={})
    checks = {c.name: c for c in doctor(config).checks}
    assert (checks["authorization permission"].status, checks["authorization permission"].detail) == (
        "pass",
        "system:serviceaccount:dns-system:bindcar may create subjectaccessreviews.authorization.k8s.io",
    )
    caller = fake.token("apps", f"sa-{uuid.uuid4().hex[:6]}")  # a ServiceAccount granted nothing
    bad = fake.write_kubeconfig(tmp_path / "bad", caller)
    config = AuthConfig.load({"mode": "tokenreview", "rbac": "path", "kubeconfig": str(bad)}, environ={})
    check = next(c for c in doctor(config).checks if c.name == "authorization permission")
    username = _subject(caller)
    assert (check.status, check.detail) == (
        "fail",
        f"{username} may not create subjectaccessreviews.authorization.k8s.io",
    )
    namespace, name = username.removeprefix("system:serviceaccount:").split(":")
    assert check.fix == "bind it to system:auth-delegator (kubectl apply -f -):\n" + auth_delegator_yaml(
        namespace, name
    )
    assert "name: system:auth-delegator" in auth_delegator_yaml(namespace, name)


def _subject(token: str) -> str:
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


def test_review_reports_the_rbac_verdict(fake: FakeCluster, fake_kc: Path) -> None:
    from flask_bindcar.review import Route, review

    user, token = new_caller(fake)
    fake.allow(user, "get", path="/zones")
    config = AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kc), "rbac": "path"}, environ={})
    report, identity, error = review(config, token, Route("GET", "/zones", "", rbac=config.rbac))
    assert error is None and identity is not None
    check = next(c for c in report.checks if c.name == "rbac")
    assert check.status == "pass"
    assert check.detail.startswith(f"{user} may get /zones: RBAC: allowed by ClusterRoleBinding")
    report, identity, error = review(config, token, Route("DELETE", "/zones", "", rbac=config.rbac))
    assert identity is None and error is not None
    assert [(c.name, c.status, c.detail) for c in report.checks[-2:]] == [
        ("rbac", "fail", f"Forbidden: {user} cannot delete /zones"),
        ("result", "fail", f'403 {{"error": "Forbidden: {user} cannot delete /zones"}}'),
    ]
    assert report.text().splitlines()[-1] == "the token is valid; the request is forbidden by RBAC"


def test_flask_cli_review_resolves_the_views_rbac(fake: FakeCluster, fake_kc: Path) -> None:
    user, token = new_caller(fake)
    fake.allow(user, "delete", "zones", group=GROUP, name="example.com")
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kc))

    @app.delete("/zones/<name>")
    @auth_required(rbac=ZONE_RBAC)
    def zone(name: str) -> Any:
        return jsonify(zone=name)

    runner = app.test_cli_runner()
    allowed = runner.invoke(
        args=["bindcar", "review", "--method", "DELETE", "--path", "/zones/example.com"], input=token
    )
    assert allowed.exit_code == 0, allowed.output
    assert f'✔ rbac: {user} may delete zones.{GROUP} "example.com": RBAC: allowed by' in allowed.output
    denied = runner.invoke(args=["bindcar", "review", "--method", "DELETE", "--path", "/zones/other.org"], input=token)
    assert denied.exit_code == 1
    assert denied.output.splitlines()[-2:] == [
        f'✘ result: 403 {{"error": "Forbidden: {user} cannot delete zones.{GROUP} \\"other.org\\""}}',
        "the token is valid; the request is forbidden by RBAC",
    ]


# -- the example app: DELETE guarded by RBAC, with the deployed manifest -------------------------


def test_example_delete_is_guarded_by_the_deployed_rbac(
    any_cluster: Cluster, any_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from example_app.app import create_app
    from flask_bindcar.doctor import auth_delegator_yaml

    manifest = (Path(__file__).parent.parent / "example_app" / "deploy" / "rbac-zones.yaml").read_text()
    assert manifest.endswith(auth_delegator_yaml("dns-system", "bindcar"))
    monkeypatch.setenv("BIND_AUTH_MODE", "tokenreview")
    monkeypatch.setenv("KUBECONFIG", str(any_kubeconfig))
    monkeypatch.setenv("ZONE_AUTHZ", "rbac")
    client = Client(create_app(tmp_path / "zones"))
    token = any_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    user = "system:serviceaccount:dns-system:external-dns"
    probe = {"user": user, "resourceAttributes": {**ZONE, "name": "example.org"}}
    if not sar(any_cluster, probe)["status"]["allowed"]:  # before the manifest: RBAC says no
        response = call(client, token, path="/api/v1/zones/example.org")
        assert (response.status_code, response.json) == (
            403,
            {"error": f'Forbidden: {user} cannot delete zones.{GROUP} "example.org"'},
        )
    if isinstance(any_cluster, FakeCluster):
        any_cluster.allow(user, ["get", "list", "create", "delete"], "zones", group=GROUP)
    else:
        any_cluster.kubectl("apply", "-f", "-", input=manifest)
        deadline = time.monotonic() + 10
        while not sar(any_cluster, probe)["status"]["allowed"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    try:
        client = Client(create_app(tmp_path / "zones"))  # a new app: no cached denial
        headers = {"Authorization": f"Bearer {token}"}
        assert client.post("/api/v1/zones", json={"name": "example.org"}, headers=headers).status_code == 201
        response = call(client, token, path="/api/v1/zones/example.org")
        assert (response.status_code, response.json["deleted"]) == (200, "example.org")
    finally:  # the session's cluster is shared: its other tests revoke the caller's review permission
        if isinstance(any_cluster, RealCluster):
            any_cluster.kubectl("delete", "-f", "-", input=manifest)


# -- the decision cache on its own: the waiters' bound ------------------------------------------


def _decision_cache(wait_timeout: float = 0.2) -> DecisionCache:
    return DecisionCache(allowed_ttl=10, denied_ttl=10, max_size=10, wait_timeout=wait_timeout)


def test_authz_waiters_get_the_leaders_error_even_a_timeout() -> None:
    """The leader's own timeout, at the review bound, reaches the waiters before their wait ends."""
    cache, started = _decision_cache(0.2), threading.Event()

    def review() -> Decision:
        started.set()
        time.sleep(0.3)  # the review's deadline (0.2 s), and the way back of its error, a little later
        raise AuthzUnavailable("no answer within 0.2s", reason=API_UNREACHABLE)

    def ask(into: list[Any]) -> None:
        try:
            into.append(cache.get_or_review("key", review))
        except AuthzUnavailable as e:
            into.append(e)

    led: list[Any] = []
    leader = threading.Thread(target=ask, args=(led,))
    leader.start()
    assert started.wait(5)
    got: list[Any] = []
    waiters = [threading.Thread(target=ask, args=(got,)) for _ in range(4)]
    for t in waiters:
        t.start()
    for t in [*waiters, leader]:
        t.join(30)
    [error] = led
    assert isinstance(error, AuthzUnavailable)
    assert len(got) == 4
    assert all(e is error for e in got)


def test_an_authz_waiter_waits_the_review_bound_plus_the_grace_then_gives_up() -> None:
    cache, started, release = _decision_cache(0.2), threading.Event(), threading.Event()
    allowed = Decision(allowed=True, reason="RBAC: allowed")

    def review() -> Decision:
        started.set()
        release.wait(30)  # a leader stuck past its bound, which the review itself should never be
        return allowed

    led: list[Any] = []
    leader = threading.Thread(target=lambda: led.append(cache.get_or_review("key", review)))
    leader.start()
    try:
        assert started.wait(5)
        begun = time.monotonic()
        with pytest.raises(AuthzUnavailable) as info:
            cache.get_or_review("key", review)
        took = time.monotonic() - begun
    finally:
        release.set()
    leader.join(5)
    assert FOLLOWER_GRACE == 1.0
    assert info.value.message == UNAVAILABLE + "no answer within 1.2s"
    assert info.value.reason == API_UNREACHABLE
    assert 1.2 <= took < 3
    assert led == [(allowed, "miss")]  # the leader's answer is its own, late or not
    assert cache.get_or_review("key", review) == (allowed, "hit")


# -- each RBAC decision's log line and audit record ----------------------------------------------


def test_each_decision_has_its_log_line_and_audit_record(
    fake: FakeCluster, fake_kc: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from prometheus_client import REGISTRY

    from flask_bindcar.authenticator import Authenticator
    from flask_bindcar.errors import AccessDenied

    def count(result: str) -> float:
        return REGISTRY.get_sample_value("bindcar_authorization_total", {"result": result}) or 0.0

    sa, pod = f"sa-{uuid.uuid4().hex[:6]}", f"pod-{uuid.uuid4().hex[:6]}"
    user = f"system:serviceaccount:dns-system:{sa}"
    fake.allow(user, "delete", "zones", group=GROUP, binding="zones-deleter")
    token = fake.token("dns-system", sa, audiences=["bindcar"], pod=pod)
    auth = Authenticator(AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kc)}, environ={}))
    identity = auth.authenticate(f"Bearer {token}")
    before = {r: count(r) for r in ("allowed", "denied", "unavailable")}
    zone = {"verb": "delete", "group": GROUP, "resource": "zones", "name": "example.com"}

    walls: list[float] = []  # each ask's own wall time in ms: the review latency it logs is within it

    def ask(method: str, view_args: dict[str, str], name: str = "example.com") -> Exception | None:
        started = time.perf_counter()
        try:
            auth.check_access(
                identity,
                ZONE_RBAC,
                method,
                f"/zones/{name}",
                view_args,
                where=("10.1.2.3", method, f"/zones/{name}"),
            )
        except (AccessDenied, AuthzUnavailable) as e:
            return e
        finally:
            walls.append((time.perf_counter() - started) * 1000)
        return None

    with caplog.at_level("INFO", logger="flask_bindcar"):
        assert ask("DELETE", {"name": "example.com"}) is None
        assert ask("DELETE", {"name": "example.com"}) is None  # from the cache
        denied = ask("GET", {"name": "example.com"})
        no_name = ask("DELETE", {})
        with fake.faulty("error500"):
            outage = ask("DELETE", {"name": "a.org"}, "a.org")
    assert isinstance(denied, AccessDenied) and isinstance(no_name, AuthzUnavailable)
    assert isinstance(outage, AuthzUnavailable)

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("authorization ")]
    forbidden = f'Forbidden: {user} cannot get zones.{GROUP} "example.com"'
    failed = UNAVAILABLE + "HTTP 500 Internal Server Error: Internal error occurred: etcdserver: request timed out"
    assert lines == [
        f"authorization denied: {forbidden} [reason=rbac_denied review_reason=None remote_addr=10.1.2.3 method=GET "
        "path='/zones/example.com']",
        f"authorization unavailable: {UNAVAILABLE}the route has no view argument 'name' [reason=bad_template "
        "review_reason=None remote_addr=10.1.2.3 method=DELETE path='/zones/example.com']",
        f"authorization unavailable: {failed} [reason=api_server_error review_reason=None remote_addr=10.1.2.3 "
        "method=DELETE path='/zones/a.org']",
    ]
    assert all(r.levelname == "WARNING" for r in caplog.records if r.getMessage().startswith("authorization "))
    [error] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.getMessage() == (
        f"RBAC{ZONE_RBAC.summary()!r} names the view argument 'name', which this route does not have"
    )

    records = [r.bindcar_audit for r in caplog.records if getattr(r, "bindcar_audit", {}).get("authorization")]
    for record in records:
        assert record.pop("time").endswith("+00:00")
    latencies = [r.pop("review_latency_ms") for r in records]
    assert latencies[1] is None and latencies[3] is None  # a cache hit, a request that asked nothing
    for i in (0, 2, 4):  # a review that answered, one that denied, one that failed: in ms, to the microsecond
        assert isinstance(latencies[i], float) and 0 < latencies[i] <= walls[i]
        assert latencies[i] == round(latencies[i], 3)
    common = {"remote_addr": "10.1.2.3", "username": user, "auth_method": "tokenreview", "pod_name": pod}
    allowed_by = 'RBAC: allowed by ClusterRoleBinding "zones-deleter" of ClusterRole "zones-deleter" to ServiceAccount '
    allowed_by += f'"{sa}/dns-system"'
    allowed = {
        **common,
        "method": "DELETE",
        "path": "/zones/example.com",
        "result": "allow",
        "reason": None,
        "message": None,
        "authorization": {"verb": "delete", "attributes": zone, "decision": "allowed", "reason": allowed_by},
    }
    assert records == [
        {**allowed, "cache": "miss"},
        {**allowed, "cache": "hit"},
        {
            **common,
            "method": "GET",
            "path": "/zones/example.com",
            "result": "deny",
            "reason": "rbac_denied",
            "message": forbidden,
            "cache": "miss",
            "authorization": {
                "verb": "get",
                "attributes": {**zone, "verb": "get"},
                "decision": "denied",
                "reason": None,
            },
        },
        {
            **common,
            "method": "DELETE",
            "path": "/zones/example.com",
            "result": "unavailable",
            "reason": "bad_template",
            "message": UNAVAILABLE + "the route has no view argument 'name'",
            "cache": None,
            "authorization": {"verb": None, "attributes": None, "decision": "unavailable", "reason": None},
        },
        {
            **common,
            "method": "DELETE",
            "path": "/zones/a.org",
            "result": "unavailable",
            "reason": "api_server_error",
            "message": failed,
            "cache": None,
            "authorization": {
                "verb": "delete",
                "attributes": {**zone, "name": "a.org"},
                "decision": "unavailable",
                "reason": None,
            },
        },
    ]
    assert {r: count(r) - before[r] for r in before} == {"allowed": 2, "denied": 1, "unavailable": 2}
    assert token not in caplog.text


def test_a_denials_review_reason_is_logged_never_answered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.hostile_api import AUTHENTICATED, HostileAPI, http_reply, token_review

    denial = {"allowed": False, "reason": "no RBAC policy matched", "evaluationError": 'role "zones" not found'}

    def answer(token: str) -> Any:
        if token:
            return http_reply(201, token_review(AUTHENTICATED))
        return http_reply(
            201, {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "status": denial}
        )

    user = AUTHENTICATED["user"]["username"]  # type: ignore[index]
    with HostileAPI(answer) as api, caplog.at_level("INFO", logger="flask_bindcar"):
        client = wsgi_app(api.write_kubeconfig(tmp_path), review_timeout=2)
        headers = {"Authorization": "Bearer " + WATCH.add("a-token-the-hostile-server-vouches-for")}
        response = client.delete("/zones/example.com", headers=headers, environ_base={"REMOTE_ADDR": "10.9.8.7"})
    forbidden = f'Forbidden: {user} cannot delete zones.{GROUP} "example.com"'
    assert (response.status_code, response.json) == (403, {"error": forbidden})
    reason = 'no RBAC policy matched; role "zones" not found'
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("authorization ")]
    assert line == (
        f"authorization denied: {forbidden} [reason=rbac_denied review_reason={reason!r} remote_addr=10.9.8.7 "
        "method=DELETE path='/zones/example.com']"
    )
    [record] = [r.bindcar_audit for r in caplog.records if getattr(r, "bindcar_audit", {}).get("authorization")]
    assert record["authorization"]["reason"] == reason
    assert (record["result"], record["reason"], record["message"]) == ("deny", "rbac_denied", forbidden)


# -- the SubjectAccessReview client: the TokenReview's own, bounded the same way ---------------------


def test_the_authorization_api_is_the_per_process_client(fake: FakeCluster, fake_kc: Path) -> None:
    from flask_bindcar.apiserver import ApiServerClient

    reviewer = ApiServerClient(AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kc)}, environ={}))
    authz = reviewer.authorization_api()
    assert authz.api_client is reviewer.api().api_client
    assert reviewer.authorization_api() is authz

    def in_the_child() -> bool:
        child = reviewer.authorization_api()
        return (
            child is not authz
            and child.api_client is reviewer.api().api_client
            and reviewer.authorization_api() is child
        )

    assert in_forked_child(in_the_child)
    assert reviewer.authorization_api() is authz


def test_a_subjectaccessreview_to_a_server_that_never_accepts_ends_at_the_timeout(
    fake: FakeCluster, tmp_path: Path
) -> None:
    """A black hole: only the client's own connect timeout ends that wait; the deadline bounds the rest."""
    from flask_bindcar.apiserver import ApiServerClient
    from flask_bindcar.authz import _unavailable

    with black_hole() as server:
        kubeconfig = pointed_at(fake.write_kubeconfig(tmp_path / "kubeconfig"), server)
        settings = {"mode": "tokenreview", "kubeconfig": str(kubeconfig), "review_timeout": 0.5}
        reviewer = ApiServerClient(AuthConfig.load(settings, environ={}))
        started = time.monotonic()
        with pytest.raises(AuthzUnavailable) as info:
            reviewer.access_review({"spec": {"user": "someone"}}, _unavailable)
        took = time.monotonic() - started
    assert (info.value.message, info.value.reason) == (UNAVAILABLE + "no answer within 0.5s", API_UNREACHABLE)
    assert 0.5 <= took < 2


def test_rbac_on_a_view_in_basic_mode_is_503(caplog: pytest.LogCaptureFixture) -> None:
    from flask_bindcar.authz import NOT_CONFIGURED

    secret = WATCH.add("a-basic-secret-for-the-rbac-test")
    app = Flask(__name__)
    BindcarAuth(app, mode="basic", api_token=secret)

    @app.delete("/zones/<name>")
    @auth_required(rbac=ZONE_RBAC)
    def zone(name: str) -> Any:
        return jsonify(zone=name)

    with caplog.at_level("INFO", logger="flask_bindcar"):
        headers = {"Authorization": f"Bearer {secret}"}
        response = Client(app).delete("/zones/example.com", headers=headers, environ_base={"REMOTE_ADDR": "10.4.4.4"})
    assert (response.status_code, response.json) == (503, {"error": UNAVAILABLE + NOT_CONFIGURED})
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("authorization ")]
    assert line.endswith(
        "[reason=not_configured review_reason=None remote_addr=10.4.4.4 method=DELETE path='/zones/example.com']"
    )
    [record] = [r.bindcar_audit for r in caplog.records if getattr(r, "bindcar_audit", {}).get("authorization")]
    assert (record["result"], record["reason"], record["auth_method"]) == (
        "unavailable",
        "not_configured",
        "shared-secret",
    )
    assert record["authorization"] == {
        "verb": "delete",
        "attributes": {"verb": "delete", "group": GROUP, "resource": "zones", "name": "example.com"},
        "decision": "unavailable",
        "reason": None,
    }


# -- the decision cache, the answer and the subject, on their own --------------------------------


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"[" * 100_000, "response is nested too deeply"),
        (b"not json", "response is not JSON"),
        (b'["a", "list"]', "response is not a SubjectAccessReview with a status"),
        (b'{"status": "yes"}', "response is not a SubjectAccessReview with a status"),
        (b'{"kind": "SubjectAccessReview"}', "response is not a SubjectAccessReview with a status"),
    ],
    ids=["deep", "not-json", "a-list", "status-not-a-map", "no-status"],
)
def test_an_answer_that_is_not_a_subjectaccessreview(data: bytes, why: str) -> None:
    from flask_bindcar.authz import parse_access_review
    from flask_bindcar.errors import API_BAD_RESPONSE

    with pytest.raises(AuthzUnavailable) as info:
        parse_access_review(data)
    assert (info.value.message, info.value.reason) == (UNAVAILABLE + why, API_BAD_RESPONSE)


@pytest.mark.parametrize(
    ("status", "decision"),
    [
        ({"allowed": True}, (True, None)),
        ({"allowed": True, "denied": True, "reason": "r"}, (False, "r")),
        ({"allowed": "true"}, (False, None)),
        ({"allowed": False, "reason": "", "evaluationError": "e"}, (False, "e")),
        ({"allowed": False, "reason": 5, "evaluationError": ["e"]}, (False, None)),
        ({"allowed": False, "reason": "r", "evaluationError": "e"}, (False, "r; e")),
    ],
)
def test_the_decision_of_an_answer(status: dict[str, Any], decision: tuple[bool, str | None]) -> None:
    import json

    from flask_bindcar.authz import parse_access_review

    assert parse_access_review(json.dumps({"status": status}).encode()) == Decision(*decision)


def test_the_subject_is_what_the_tokenreview_said_and_nothing_more() -> None:
    from flask_bindcar.authz import subject
    from flask_bindcar.identity import Identity

    assert subject(Identity(method="tokenreview", username="alice")) == {"user": "alice"}
    full = Identity(method="tokenreview", username="bob", uid="u-1", groups=("g",), extra={"k": ("v", "w")})
    assert subject(full) == {"user": "bob", "uid": "u-1", "groups": ["g"], "extra": {"k": ["v", "w"]}}


def test_the_decision_cache_forgets_expired_and_least_recent_answers() -> None:
    yes, no = Decision(allowed=True), Decision(allowed=False)
    cache = DecisionCache(allowed_ttl=10, denied_ttl=0.2, max_size=2, wait_timeout=1)
    asked: list[str] = []

    def answer(key: str, decision: Decision) -> Callable[[], Decision]:
        def review() -> Decision:
            asked.append(key)
            return decision

        return review

    assert cache.get_or_review("a", answer("a", yes)) == (yes, "miss")
    assert cache.get_or_review("b", answer("b", no)) == (no, "miss")
    assert cache.get_or_review("a", answer("a", yes)) == (yes, "hit")  # a is the most recent now
    assert cache.get_or_review("c", answer("c", yes)) == (yes, "miss")  # b, the least recent, goes
    assert len(cache) == 2
    assert cache.get_or_review("a", answer("a", yes)) == (yes, "hit")
    assert cache.get_or_review("b", answer("b", no)) == (no, "miss")
    time.sleep(0.25)
    assert cache.get_or_review("b", answer("b", no)) == (no, "miss")  # the denial expired
    assert asked == ["a", "b", "c", "b", "b"]


def test_each_answer_is_kept_for_its_own_ttl_and_a_zero_ttl_keeps_nothing() -> None:
    yes, no = Decision(allowed=True), Decision(allowed=False)
    for allowed_ttl, denied_ttl in [(60, 0), (0, 60)]:
        cache = DecisionCache(allowed_ttl=allowed_ttl, denied_ttl=denied_ttl, max_size=8, wait_timeout=1)
        for key, decision, ttl in [("yes", yes, allowed_ttl), ("no", no, denied_ttl)]:
            assert cache.get_or_review(key, lambda d=decision: d) == (decision, "miss")
            assert cache.get_or_review(key, lambda d=decision: d) == (decision, "hit" if ttl else "miss")
        assert len(cache) == 1  # the answer with the zero TTL was never stored


class Killed(BaseException):
    """Stands for what stops a greenlet without an `Exception` (gevent's ``GreenletExit``)."""


@pytest.mark.parametrize(
    ("raised", "why", "reason"),
    [
        (Killed(), "the review was abandoned", API_UNREACHABLE),
        (ZeroDivisionError("a bug"), "ZeroDivisionError", "api_bad_response"),
    ],
)
def test_a_review_that_ends_without_an_answer(
    raised: BaseException, why: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache, started, go = _decision_cache(5), threading.Event(), threading.Event()

    def review() -> Decision:
        started.set()
        go.wait(5)
        raise raised

    led: list[BaseException] = []

    def lead() -> None:
        try:
            cache.get_or_review("key", review)
        except BaseException as e:
            led.append(e)

    leader = threading.Thread(target=lead)
    leader.start()
    assert started.wait(5)
    threading.Timer(0.2, go.set).start()
    with pytest.raises(AuthzUnavailable) as info:
        cache.get_or_review("key", review)
    leader.join(5)
    assert (info.value.message, info.value.reason) == (UNAVAILABLE + why, reason)
    if isinstance(raised, Killed):
        assert led == [raised]
    else:
        assert led == [info.value]  # the same error for the leader and each waiter
        assert "unexpected ZeroDivisionError in a SubjectAccessReview" in caplog.text
    assert len(cache) == 0


def test_a_client_that_cannot_be_built_is_503(fake: FakeCluster, fake_kc: Path, tmp_path: Path) -> None:
    from flask_bindcar.apiserver import ApiServerClient
    from flask_bindcar.authenticator import Authenticator
    from flask_bindcar.authz import Authorizer

    _, token = new_caller(fake)
    identity = Authenticator(AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kc)}, environ={}))
    who = identity.authenticate(f"Bearer {token}")
    broken = tmp_path / "broken-kubeconfig"
    broken.write_text("{}\n")
    config = AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(broken)}, environ={})

    slots = Bulkhead(1, wait=0)
    authorizer = Authorizer(config, ApiServerClient(config), slots, None)
    with pytest.raises(AuthzUnavailable) as info:
        authorizer.check(who, ZONE_RBAC.attributes("DELETE", "/zones/x", {"name": "x"}))
    why = f"Invalid kube-config file. Expected key current-context in {broken}"
    assert info.value.message == UNAVAILABLE + "Failed to create Kubernetes client: ConfigException: " + why
    assert info.value.reason == "client_failed"
    assert slots.acquire(None)  # the slot was given back


def test_an_unavailable_reason_is_cut_at_twice_the_server_text_limit(
    fake: FakeCluster, fake_kc: Path, tmp_path: Path
) -> None:
    """Whatever an outage's text holds (here a client error quoting a long path), the 503 stays bounded."""
    from flask_bindcar.apiserver import ApiServerClient
    from flask_bindcar.authenticator import Authenticator
    from flask_bindcar.authz import Authorizer
    from flask_bindcar.scrub import MAX_SERVER_TEXT

    _, token = new_caller(fake)
    who = Authenticator(AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kc)}, environ={}))
    identity = who.authenticate(f"Bearer {token}")
    deep = tmp_path.joinpath(*["d" * 200] * 8)  # a path of over 1,600 characters, in 200-character names
    deep.mkdir(parents=True)
    broken = deep / "kubeconfig"
    broken.write_text("{}\n")
    config = AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(broken)}, environ={})
    authorizer = Authorizer(config, ApiServerClient(config), Bulkhead(1), None)
    with pytest.raises(AuthzUnavailable) as info:
        authorizer.check(identity, ZONE_RBAC.attributes("DELETE", "/zones/x", {"name": "x"}))
    why = "Failed to create Kubernetes client: ConfigException: "
    why += f"Invalid kube-config file. Expected key current-context in {broken}"
    assert len(why) > 3 * MAX_SERVER_TEXT
    assert info.value.message == UNAVAILABLE + why[: 2 * MAX_SERVER_TEXT]


def test_a_full_bulkhead_asks_nothing_and_is_api_overloaded(fake: FakeCluster, fake_kc: Path) -> None:
    from flask_bindcar.apiserver import ApiServerClient
    from flask_bindcar.authenticator import Authenticator
    from flask_bindcar.authz import Authorizer

    _, token = new_caller(fake)
    config = AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kc), "review_max_inflight": 1}, environ={})
    identity = Authenticator(config).authenticate(f"Bearer {token}")
    bulkhead = Bulkhead(1, wait=0)
    assert bulkhead.acquire(None)  # a TokenReview holds the only slot
    authorizer = Authorizer(config, ApiServerClient(config), bulkhead, None)
    before = fake.access_review_requests
    with pytest.raises(AuthzUnavailable) as info:
        authorizer.check(identity, ZONE_RBAC.attributes("DELETE", "/zones/x", {"name": "x"}))
    expected = UNAVAILABLE + "overloaded: every review slot is busy (1 in flight)"
    assert (info.value.message, info.value.reason) == (expected, API_OVERLOADED)
    assert fake.access_review_requests == before


def test_callers_who_differ_only_in_extra_are_asked_about_apart(fake: FakeCluster, fake_kc: Path) -> None:
    """One ServiceAccount in two Pods: the same user, uid and groups, another ``extra``; an authorizer
    may answer them differently (a webhook reading the Pod), so one's decision is not the other's."""
    from flask_bindcar.authenticator import Authenticator

    sa = f"sa-{uuid.uuid4().hex[:6]}"
    fake.allow(f"system:serviceaccount:dns-system:{sa}", "delete", "zones", group=GROUP)
    auth = Authenticator(AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kc)}, environ={}))
    first, second = (
        auth.authenticate(f"Bearer {fake.token('dns-system', sa, audiences=['bindcar'], pod=f'{sa}-{i}')}")
        for i in range(2)
    )
    assert (first.username, first.uid, first.groups) == (second.username, second.uid, second.groups)
    assert first.extra != second.extra
    before = fake.access_review_requests
    for identity in (first, second, first, second):
        auth.check_access(
            identity, ZONE_RBAC, "DELETE", "/zones/x", {"name": "x"}, where=("10.1.2.3", "DELETE", "/zones/x")
        )
    assert fake.access_review_requests - before == 2  # one each, then each from the cache


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resource": "zones", "name": "{"}, "RBAC(name='{') is not a valid template: "),
        ({"path": True, "name": "{name}"}, "RBAC(path=True) checks the request path: give no namespace or name"),
        ({"path": True, "namespace": "dns"}, "RBAC(path=True) checks the request path: give no namespace or name"),
    ],
)
def test_more_bad_rbac(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        RBAC(**kwargs)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(("value", "path"), [("path", True), (" PATH ", True), ("none", None), ("off", None)])
def test_bind_authz_values(value: str, path: bool | None) -> None:
    config = AuthConfig.load(environ={"BIND_AUTH_MODE": "tokenreview", "BIND_AUTHZ": value})
    assert (config.rbac.path if config.rbac is not None else None) == path


def test_bind_authz_refuses_anything_else() -> None:
    with pytest.raises(ConfigError) as e:
        AuthConfig.load(environ={"BIND_AUTH_MODE": "tokenreview", "BIND_AUTHZ": "rbac"})
    assert str(e.value) == "BIND_AUTHZ='rbac' is not valid: expected 'path', 'none' or (in code) an RBAC(...)"
