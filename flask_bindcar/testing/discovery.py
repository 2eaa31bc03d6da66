"""The discovery and OpenAPI documents of FakeCluster: what kubectl reads before it acts.

kubectl asks ``/api``, ``/apis`` and each group version which resources exist and how they are
named, and ``kubectl apply`` reads the OpenAPI v3 index to learn whether the server validates
fields itself. These are the answers for the resources the stand-in serves (Namespaces, Pods,
ServiceAccounts and their tokens, the RBAC objects), each a function of the request handler.
"""

from __future__ import annotations

from typing import Any

from flask_bindcar.testing import rbac


def _api_resources(handler: Any) -> dict[str, Any]:
    def resource(name: str, kind: str, verbs: list[str], namespaced: bool = True, **more: Any) -> dict[str, Any]:
        return {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs, **more}

    crud = ["create", "delete", "get", "list"]
    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource("namespaces", "Namespace", crud, namespaced=False, shortNames=["ns"]),
            resource("pods", "Pod", crud, shortNames=["po"]),
            resource("serviceaccounts", "ServiceAccount", crud, shortNames=["sa"]),
            resource("serviceaccounts/token", "TokenRequest", ["create"], group="authentication.k8s.io", version="v1"),
        ],
    }


def _rbac_resources(handler: Any) -> dict[str, Any]:
    crud = ["create", "delete", "get", "list"]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{rbac.GROUP}/v1",
        "resources": [
            {
                "name": name,
                "singularName": kind.lower(),
                "namespaced": name in rbac.NAMESPACED,
                "kind": kind,
                "verbs": crud,
            }
            for name, kind in rbac.KINDS.items()
        ],
    }


_RBAC_VERSION = {"groupVersion": f"{rbac.GROUP}/v1", "version": "v1"}
_OPENAPI_KINDS = {
    "api/v1": [("", "Namespace"), ("", "Pod"), ("", "ServiceAccount")],
    f"apis/{rbac.GROUP}/v1": [(rbac.GROUP, kind) for kind in rbac.KINDS.values()],
}


def _openapi_v3_root(handler: Any) -> dict[str, Any]:
    """The OpenAPI v3 index: kubectl apply reads it to learn that the server validates fields
    (``fieldValidation``) and so need not validate the objects itself."""
    return {"paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}?hash=fake"} for path in _OPENAPI_KINDS}}


def _openapi_v3(path: str) -> Any:
    """The part of a group version's OpenAPI v3 document kubectl's field-validation check reads:
    a PATCH of each kind, taking a ``fieldValidation`` query parameter."""

    def document(handler: Any) -> dict[str, Any]:
        paths = {
            f"/{path}/{kind.lower()}s/{{name}}": {
                "patch": {
                    "x-kubernetes-group-version-kind": {"group": group, "version": "v1", "kind": kind},
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "responses": {},
                }
            }
            for group, kind in _OPENAPI_KINDS[path]
        }
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.31.0-fake"}, "paths": paths}

    return document


DISCOVERY: dict[str, Any] = {
    "/api": lambda h: {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{h.cluster.port}"}],
    },
    "/apis": lambda h: {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{"name": rbac.GROUP, "versions": [_RBAC_VERSION], "preferredVersion": _RBAC_VERSION}],
    },
    "/api/v1": _api_resources,
    f"/apis/{rbac.GROUP}/v1": _rbac_resources,
    "/openapi/v3": _openapi_v3_root,
    **{f"/openapi/v3/{path}": _openapi_v3(path) for path in _OPENAPI_KINDS},
}
