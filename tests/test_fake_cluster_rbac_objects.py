"""Granting RBAC on the stand-in as on a cluster: Namespaces and the RBAC objects kubectl creates.

A ClusterRole, Role and their bindings created through the API grant what RBAC grants (the
SubjectAccessReview answers and their reasons are kube-apiserver's); a deleted binding revokes at
once. The official client sends JSON, kubectl's typed commands protobuf: both are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from example_app.app import create_app
from flask_bindcar.testing import FakeCluster
from flask_bindcar.testing.authorizer import Rules
from flask_bindcar.testing.rbac import new_rule
from tests.conftest import api_client_for

RBAC = "rbac.authorization.k8s.io"
ZONES = "bindcar.firestoned.io"
EXTERNAL_DNS = "system:serviceaccount:dns-system:external-dns"


def may_delete_zone(cluster: FakeCluster, user: str, zone: str = "example.com", namespace: str = "") -> dict[str, Any]:
    """The stand-in's SubjectAccessReview answer for ``user`` deleting ``zone``."""
    namespace_ = user.split(":")[2] if user.startswith("system:serviceaccount:") else ""
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace_}", "system:authenticated"]
    attrs = {"verb": "delete", "group": ZONES, "resource": "zones", "name": zone, "namespace": namespace}
    return cluster.rbac.decide({"user": user, "groups": groups, "resourceAttributes": attrs})


def zone_editor(name: str = "zones-editor", *, kind: str = "ClusterRole", names: list[str] | None = None) -> Any:
    rule: dict[str, Any] = {"apiGroups": [ZONES], "resources": ["zones"], "verbs": ["delete"]}
    if names is not None:
        rule["resourceNames"] = names
    return {"apiVersion": f"{RBAC}/v1", "kind": kind, "metadata": {"name": name}, "rules": [rule]}


def binding(
    binding_name: str, role: str, *, kind: str = "ClusterRoleBinding", role_kind: str = "ClusterRole", **who: str
) -> Any:
    """A binding of ``role`` to ``who`` (a subject's fields; default: external-dns's account)."""
    subject = {"kind": "ServiceAccount", "name": "external-dns", "namespace": "dns-system", **who}
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": kind,
        "metadata": {"name": binding_name},
        "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": role},
        "subjects": [{k: v for k, v in subject.items() if v}],
    }


@pytest.fixture
def rbac_api(fake_kubeconfig: Path) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(api_client_for(fake_kubeconfig, retries=False))


def test_a_cluster_role_and_its_binding_grant_and_deleting_the_binding_revokes(
    cluster: FakeCluster, rbac_api: client.RbacAuthorizationV1Api
) -> None:
    assert may_delete_zone(cluster, EXTERNAL_DNS) == {"allowed": False}
    created = rbac_api.create_cluster_role(zone_editor())
    assert (created.kind, created.metadata.name, created.rules[0].resources) == (
        "ClusterRole",
        "zones-editor",
        ["zones"],
    )
    assert may_delete_zone(cluster, EXTERNAL_DNS) == {"allowed": False}  # a role alone grants nothing

    rbac_api.create_cluster_role_binding(binding("zones-external-dns", "zones-editor"))
    assert may_delete_zone(cluster, EXTERNAL_DNS) == {
        "allowed": True,
        "reason": 'RBAC: allowed by ClusterRoleBinding "zones-external-dns" of ClusterRole "zones-editor" to '
        'ServiceAccount "external-dns/dns-system"',
    }
    assert may_delete_zone(cluster, "system:serviceaccount:dns-system:other-app") == {"allowed": False}
    assert [b.metadata.name for b in rbac_api.list_cluster_role_binding().items] == ["zones-external-dns"]
    assert rbac_api.read_cluster_role_binding("zones-external-dns").role_ref.name == "zones-editor"

    rbac_api.delete_cluster_role_binding("zones-external-dns")
    assert may_delete_zone(cluster, EXTERNAL_DNS) == {"allowed": False}
    with pytest.raises(ApiException) as info:
        rbac_api.read_cluster_role_binding("zones-external-dns")
    assert (info.value.status, json.loads(info.value.body)) == (
        404,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f'clusterrolebindings.{RBAC} "zones-external-dns" not found',
            "reason": "NotFound",
            "details": {"name": "zones-external-dns", "group": RBAC, "kind": "clusterrolebindings"},
            "code": 404,
        },
    )


def test_a_binding_made_before_its_role_grants_once_the_role_exists(
    cluster: FakeCluster, rbac_api: client.RbacAuthorizationV1Api
) -> None:
    rbac_api.create_cluster_role_binding(binding("early", "zones-editor"))
    assert may_delete_zone(cluster, EXTERNAL_DNS) == {"allowed": False}
    rbac_api.create_cluster_role(zone_editor(names=["example.com"]))
    assert may_delete_zone(cluster, EXTERNAL_DNS)["allowed"] is True
    assert may_delete_zone(cluster, EXTERNAL_DNS, "other.org") == {"allowed": False}  # resourceNames


def test_role_bindings_grant_in_their_namespace_only(
    cluster: FakeCluster, rbac_api: client.RbacAuthorizationV1Api
) -> None:
    rbac_api.create_namespaced_role("dns-system", zone_editor("zones-here", kind="Role"))
    rbac_api.create_namespaced_role_binding(
        "dns-system", binding("by-role", "zones-here", kind="RoleBinding", role_kind="Role", namespace="")
    )
    assert may_delete_zone(cluster, EXTERNAL_DNS, namespace="dns-system") == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "by-role/dns-system" of Role "zones-here" to '
        'ServiceAccount "external-dns/dns-system"',  # a subject without namespace is in the binding's
    }
    assert may_delete_zone(cluster, EXTERNAL_DNS, namespace="other") == {"allowed": False}
    assert may_delete_zone(cluster, EXTERNAL_DNS) == {"allowed": False}  # cluster scope

    rbac_api.create_cluster_role(zone_editor())
    rbac_api.create_namespaced_role_binding("team-a", binding("by-cluster-role", "zones-editor", kind="RoleBinding"))
    assert may_delete_zone(cluster, EXTERNAL_DNS, namespace="team-a")["reason"] == (
        'RBAC: allowed by RoleBinding "by-cluster-role/team-a" of ClusterRole "zones-editor" to '
        'ServiceAccount "external-dns/dns-system"'
    )
    names = [r.metadata.name for r in rbac_api.list_namespaced_role_binding("team-a").items]
    assert names == ["by-cluster-role"]


def test_binding_the_auth_delegator_role_lets_an_account_review_tokens(cluster: FakeCluster, tmp_path: Path) -> None:
    reviewer = "system:serviceaccount:apps:gateway"
    caller = cluster.token("apps", "gateway")
    assert not cluster.can_review(reviewer)
    body = binding("gateway-reviews", "system:auth-delegator", name="gateway", namespace="apps")
    response = requests.post(
        f"{cluster.url}/apis/{RBAC}/v1/clusterrolebindings",
        json=body,
        headers={"Authorization": f"Bearer {cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=10,
    )
    assert response.status_code == 201
    assert cluster.can_review(reviewer)
    api = client.AuthenticationV1Api(api_client_for(cluster.write_kubeconfig(tmp_path / "kc", caller)))
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    answer = api.create_token_review({"spec": {"token": token, "audiences": ["bindcar"]}})  # type: ignore[arg-type]
    assert answer.status.user.username == EXTERNAL_DNS


def test_namespaces_are_created_listed_and_read(cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    core = client.CoreV1Api(api_client_for(fake_kubeconfig, retries=False))
    created = core.create_namespace({"metadata": {"name": "team-a"}})  # type: ignore[arg-type]
    assert (created.metadata.name, created.status.phase) == ("team-a", "Active")
    cluster.create_service_account("dns-system", "bindcar")
    assert [n.metadata.name for n in core.list_namespace().items] == [
        "default",
        "dns-system",  # it holds an account: on a cluster it would have to exist
        "kube-node-lease",
        "kube-public",
        "kube-system",
        "team-a",
    ]
    assert core.read_namespace("team-a").metadata.uid == created.metadata.uid
    for existing in ("team-a", "dns-system", "default"):
        with pytest.raises(ApiException) as info:
            core.create_namespace({"metadata": {"name": existing}})  # type: ignore[arg-type]
        assert (info.value.status, json.loads(info.value.body)["message"]) == (
            409,
            f'namespaces "{existing}" already exists',
        )
    with pytest.raises(ApiException) as info:
        core.read_namespace("nowhere")
    assert (info.value.status, json.loads(info.value.body)["message"]) == (404, 'namespaces "nowhere" not found')


def post(cluster: FakeCluster, path: str, body: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
    response = requests.post(
        cluster.url + path,
        json=body,
        headers={"Authorization": f"Bearer {token or cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=10,
    )
    return response.status_code, response.json()


def status(code: int, reason: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
        "details": details,
    }


def test_invalid_and_duplicate_objects_are_refused_as_kube_apiserver_does(cluster: FakeCluster) -> None:
    bindings = f"/apis/{RBAC}/v1/clusterrolebindings"
    required = {"reason": "FieldValueRequired", "message": "Required value"}
    assert post(cluster, bindings, {"metadata": {}}) == (
        422,
        status(
            422,
            "Invalid",
            f'ClusterRoleBinding.{RBAC} "" is invalid: [metadata.name: Required value: name or generateName is '
            'required, roleRef.kind: Unsupported value: "": supported values: "ClusterRole", roleRef.name: Required '
            "value]",
            {
                "group": RBAC,
                "kind": "ClusterRoleBinding",
                "causes": [
                    {
                        "reason": "FieldValueRequired",
                        "message": "Required value: name or generateName is required",
                        "field": "metadata.name",
                    },
                    {
                        "reason": "FieldValueNotSupported",
                        "message": 'Unsupported value: "": supported values: "ClusterRole"',
                        "field": "roleRef.kind",
                    },
                    {**required, "field": "roleRef.name"},
                ],
            },
        ),
    )
    bad = {
        "metadata": {"name": "bad"},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "zones-editor"},
        "subjects": [{"kind": "ServiceAccount", "name": "external-dns"}],
    }
    assert post(cluster, bindings, bad) == (
        422,
        status(
            422,
            "Invalid",
            f'ClusterRoleBinding.{RBAC} "bad" is invalid: [roleRef.kind: Unsupported value: "Role": supported values: '
            '"ClusterRole", subjects[0].namespace: Required value]',
            {
                "name": "bad",
                "group": RBAC,
                "kind": "ClusterRoleBinding",
                "causes": [
                    {
                        "reason": "FieldValueNotSupported",
                        "message": 'Unsupported value: "Role": supported values: "ClusterRole"',
                        "field": "roleRef.kind",
                    },
                    {**required, "field": "subjects[0].namespace"},
                ],
            },
        ),
    )
    assert cluster.rbac.get("clusterrolebindings", None, "bad") is None
    assert post(cluster, bindings, binding("once", "zones-editor"))[0] == 201
    assert post(cluster, bindings, binding("once", "zones-editor")) == (
        409,
        status(
            409,
            "AlreadyExists",
            f'clusterrolebindings.{RBAC} "once" already exists',
            {"name": "once", "group": RBAC, "kind": "clusterrolebindings"},
        ),
    )
    # A Role lives in a namespace, a ClusterRole does not: the other paths do not exist.
    assert post(cluster, f"/apis/{RBAC}/v1/roles", zone_editor(kind="Role"))[0] == 404
    assert post(cluster, f"/apis/{RBAC}/v1/namespaces/x/clusterroles", zone_editor())[0] == 404


def test_only_callers_rbac_allows_may_grant(cluster: FakeCluster) -> None:
    user = "system:serviceaccount:ci:deployer"
    caller = cluster.token("ci", "deployer")
    bindings = f"/apis/{RBAC}/v1/clusterrolebindings"
    assert post(cluster, bindings, binding("self-service", "cluster-admin"), caller) == (
        403,
        status(
            403,
            "Forbidden",
            f'clusterrolebindings.{RBAC} is forbidden: User "{user}" cannot create resource "clusterrolebindings" '
            f'in API group "{RBAC}" at the cluster scope',
            {"group": RBAC, "kind": "clusterrolebindings"},
        ),
    )
    assert post(cluster, "/api/v1/namespaces", {"metadata": {"name": "mine"}}, caller)[1]["message"] == (
        f'namespaces is forbidden: User "{user}" cannot create resource "namespaces" in API group "" '
        "at the cluster scope"
    )
    assert post(cluster, bindings, binding("x", "y"), "not-a-token-it-knows")[0] == 401
    cluster.allow(user, "create", "clusterrolebindings", group=RBAC)
    assert post(cluster, bindings, binding("self-service", "cluster-admin"), caller)[0] == 201


# -- kubectl's typed commands (create namespace, create clusterrolebinding, ...) send protobuf ------


def _varint(value: int) -> bytes:
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _field(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def protobuf(api_version: str, kind: str, *fields: bytes) -> bytes:
    """An object in kube-apiserver's protobuf envelope (``runtime.Unknown``), as kubectl sends it."""
    type_meta = _field(1, api_version) + _field(2, kind)
    return (
        b"k8s\x00"
        + _field(1, type_meta)
        + _field(2, b"".join(fields))
        + _field(4, "application/vnd.kubernetes.protobuf")
    )


def test_kubectls_protobuf_bodies_are_read(cluster: FakeCluster) -> None:
    def send(path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        response = requests.post(
            cluster.url + path,
            data=body,
            headers={
                "Authorization": f"Bearer {cluster.caller_token}",
                "Content-Type": "application/vnd.kubernetes.protobuf",
                "Accept": "application/json",
            },
            verify=str(cluster.ca_path),
            timeout=10,
        )
        return response.status_code, response.json()

    meta = _field(1, _field(1, "team-b"))
    code, namespace = send("/api/v1/namespaces", protobuf("v1", "Namespace", meta))
    assert (code, namespace["metadata"]["name"]) == (201, "team-b")

    rule = _field(1, "delete") + _field(2, ZONES) + _field(3, "zones") + _field(4, "example.com")
    role = protobuf(f"{RBAC}/v1", "ClusterRole", _field(1, _field(1, "zones-editor")), _field(2, rule))
    code, created = send(f"/apis/{RBAC}/v1/clusterroles", role)
    assert (code, created["rules"]) == (
        201,
        [{"verbs": ["delete"], "apiGroups": [ZONES], "resources": ["zones"], "resourceNames": ["example.com"]}],
    )
    subject = _field(1, "ServiceAccount") + _field(3, "external-dns") + _field(4, "dns-system")
    ref = _field(1, RBAC) + _field(2, "ClusterRole") + _field(3, "zones-editor")
    crb = protobuf(
        f"{RBAC}/v1",
        "ClusterRoleBinding",
        _field(1, _field(1, "zones-external-dns")),
        _field(2, subject),
        _field(3, ref),
    )
    code, created = send(f"/apis/{RBAC}/v1/clusterrolebindings", crb)
    assert (code, created["subjects"], created["roleRef"]) == (
        201,
        [{"kind": "ServiceAccount", "name": "external-dns", "namespace": "dns-system"}],
        {"apiGroup": RBAC, "kind": "ClusterRole", "name": "zones-editor"},
    )
    assert may_delete_zone(cluster, EXTERNAL_DNS)["allowed"] is True


def test_discovery_names_what_is_served(cluster: FakeCluster) -> None:
    def get(path: str) -> Any:
        headers = {"Authorization": f"Bearer {cluster.caller_token}"}
        return requests.get(cluster.url + path, headers=headers, verify=str(cluster.ca_path), timeout=10).json()

    assert [g["name"] for g in get("/apis")["groups"]] == [RBAC]
    resources = {r["name"]: (r["kind"], r["namespaced"]) for r in get(f"/apis/{RBAC}/v1")["resources"]}
    assert resources == {
        "clusterroles": ("ClusterRole", False),
        "clusterrolebindings": ("ClusterRoleBinding", False),
        "roles": ("Role", True),
        "rolebindings": ("RoleBinding", True),
    }
    assert ("namespaces", False) in {(r["name"], r["namespaced"]) for r in get("/api/v1")["resources"]}
    # kubectl apply asks OpenAPI v3 whether the server validates fields (so it need not itself)
    paths = get("/openapi/v3")["paths"]
    assert sorted(paths) == ["api/v1", f"apis/{RBAC}/v1"]
    document = get(paths[f"apis/{RBAC}/v1"]["serverRelativeURL"])
    patch = document["paths"][f"/apis/{RBAC}/v1/clusterrolebindings/{{name}}"]["patch"]
    assert patch["x-kubernetes-group-version-kind"] == {"group": RBAC, "version": "v1", "kind": "ClusterRoleBinding"}
    assert patch["parameters"][0]["name"] == "fieldValidation"


# -- the guide's flow on the stand-in: 403, grant, 200 ---------------------------------------------


@pytest.fixture
def zone_app(
    cluster: FakeCluster, fake_kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> FlaskClient:
    """The example app with ``ZONE_AUTHZ=rbac`` against the stand-in; denials are not cached."""
    for name, value in {
        "BIND_AUTH_MODE": "tokenreview",
        "KUBECONFIG": str(fake_kubeconfig),
        "ZONE_AUTHZ": "rbac",
        "BIND_AUTHZ_CACHE_DENIED_TTL": "0",
    }.items():
        monkeypatch.setenv(name, value)
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "example.com.json").write_text(json.dumps({"name": "example.com", "records": []}))
    return create_app(zones).test_client()


def test_the_example_app_answers_403_then_200_after_a_grant_through_the_api(
    cluster: FakeCluster, zone_app: FlaskClient, rbac_api: client.RbacAuthorizationV1Api
) -> None:
    headers = {"Authorization": f"Bearer {cluster.token('dns-system', 'external-dns', audiences=['bindcar'])}"}
    before = zone_app.delete("/api/v1/zones/example.com", headers=headers)
    assert (before.status_code, before.get_json()) == (
        403,
        {"error": f'Forbidden: {EXTERNAL_DNS} cannot delete zones.{ZONES} "example.com"'},
    )
    rbac_api.create_cluster_role(zone_editor("bindcar-zones-editor"))
    rbac_api.create_cluster_role_binding(binding("bindcar-zones-external-dns", "bindcar-zones-editor"))
    after = zone_app.delete("/api/v1/zones/example.com", headers=headers)
    assert (after.status_code, after.get_json()) == (
        200,
        {"deleted": "example.com", "caller": {"username": EXTERNAL_DNS, "method": "tokenreview"}},
    )


# -- what allow() stands for: the role and binding RealCluster.allow creates ---------------------


def allow_shapes(namespace: str) -> dict[str, dict[str, Any]]:
    """``allow(...)``'s arguments, one of each kind of grant, for subjects of ``namespace``."""
    account = f"system:serviceaccount:{namespace}:external-dns"
    return {
        "a resource, cluster-wide": {"subject": account, "verb": "delete", "resource": "zones", "group": ZONES},
        "named resources": {
            "subject": account,
            "verb": "delete",
            "resource": "zones",
            "group": ZONES,
            "name": ["example.com", "example.org"],
        },
        "in a namespace": {
            "subject": account,
            "verb": ["get", "delete"],
            "resource": "zones",
            "group": ZONES,
            "namespace": namespace,
        },
        "to a group": {"subject": f"system:serviceaccounts:{namespace}", "verb": "delete", "resource": "zones"},
        "to a user, everything": {"subject": f"user-{namespace}", "verb": "*", "resource": "*", "group": "*"},
        "a subresource": {"subject": account, "verb": "update", "resource": "zones/status", "group": ZONES},
        "a subresource of any": {"subject": account, "verb": "update", "resource": "*/status", "group": ZONES},
        "a path prefix": {"subject": account, "verb": "get", "path": "/zones/*"},
    }


ALLOW_SHAPES = list(allow_shapes("-"))


@pytest.mark.parametrize("shape", ALLOW_SHAPES)
def test_a_rules_role_and_binding_grant_what_allow_grants(cluster: FakeCluster, shape: str) -> None:
    """`Rule.objects` (what RealCluster.allow creates), created through the stand-in's API, allow
    the rule's `Rule.probe` with the rule's own reason, as the rule added by `allow` does."""
    arguments = allow_shapes("team-a")[shape]
    subject, verb = arguments.pop("subject"), arguments.pop("verb")
    rule = new_rule("granted", subject, verb, **arguments)
    assert cluster.rbac.decide(rule.probe()) == {"allowed": False}

    where = f"/apis/{RBAC}/v1" + (f"/namespaces/{rule.namespace}" if rule.namespace else "")
    for obj in rule.objects():
        response = requests.post(
            f"{cluster.url}{where}/{obj['kind'].lower()}s",
            json=obj,
            headers={"Authorization": f"Bearer {cluster.caller_token}"},
            verify=str(cluster.ca_path),
            timeout=10,
        )
        assert response.status_code == 201, response.text

    assert cluster.rbac.decide(rule.probe()) == {"allowed": True, "reason": rule.reason}
    rules = Rules()
    assert rules.allow(subject, verb, **arguments, binding="granted") == rule
    assert rules.decide(rule.probe()) == {"allowed": True, "reason": rule.reason}


def test_allow_refuses_what_rbac_cannot_express(cluster: FakeCluster) -> None:
    with pytest.raises(ValueError, match=r"^allow\(\) takes a resource or a path, not both$"):
        cluster.allow(EXTERNAL_DNS, "get", "zones", path="/zones")
    with pytest.raises(ValueError, match=r"^allow\(\) takes a resource or a path, not both$"):
        cluster.allow(EXTERNAL_DNS, "get")
    with pytest.raises(ValueError, match=r"^a path \(nonResourceURLs\) can only be granted cluster-wide$"):
        cluster.allow(EXTERNAL_DNS, "get", path="/zones", namespace="dns-system")
