"""The object endpoints of FakeCluster: ServiceAccounts, Pods, TokenRequest, Namespaces and RBAC.

What kubectl and the official client use to manage accounts and tokens (create, get, list,
delete; TokenRequest with kube-apiserver's defaults and checks) and to grant RBAC (ClusterRoles,
ClusterRoleBindings, Roles, RoleBindings, whose effect is `flask_bindcar.testing.authorizer`'s).
Every request is authorized first, as kube-apiserver's RBAC would (`FakeCluster.authorized`);
bodies come as JSON or as kubectl's protobuf (`flask_bindcar.testing.protobuf`).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import TYPE_CHECKING, Any

from flask_bindcar.testing import rbac
from flask_bindcar.testing.discovery import DISCOVERY
from flask_bindcar.testing.handler import BaseHandler, failure
from flask_bindcar.testing.interface import API_AUDIENCE, Pod, ServiceAccount
from flask_bindcar.testing.protobuf import PROTOBUF, from_protobuf

if TYPE_CHECKING:
    from flask_bindcar.testing.state import Namespace

_CORE_ROUTE = re.compile(
    r"/api/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<kind>serviceaccounts|pods)(?:/(?P<name>[^/]+)(?:/(?P<sub>token))?)?"
)


_OBJECT_ROUTE = re.compile(
    r"/api/v1/namespaces(?:/(?P<nsname>[^/]+))?"
    r"|/apis/rbac\.authorization\.k8s\.io/v1(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<kind>clusterroles|clusterrolebindings|roles|rolebindings)(?:/(?P<name>[^/]+))?"
)


def _namespace(ns: Namespace) -> dict[str, Any]:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": ns.name,
            "uid": ns.uid,
            "resourceVersion": "1",
            "creationTimestamp": ns.created,
            "labels": {"kubernetes.io/metadata.name": ns.name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def _object(obj: ServiceAccount | Pod) -> dict[str, Any]:
    """A ServiceAccount or Pod as the Core API returns it."""
    metadata = {
        "name": obj.name,
        "namespace": obj.namespace,
        "uid": obj.uid,
        "resourceVersion": "1",
        "creationTimestamp": obj.created,
    }
    if isinstance(obj, ServiceAccount):
        return {"kind": "ServiceAccount", "apiVersion": "v1", "metadata": metadata}
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {"serviceAccountName": obj.service_account, "containers": []},
    }


class ObjectEndpoints(BaseHandler):
    """Discovery, ServiceAccounts, Pods, TokenRequest, Namespaces and the RBAC objects."""

    def _core_api(self, method: str) -> bool:
        """Serve discovery, ServiceAccounts, Pods and TokenRequest. True when the request was answered.

        Each request is authorized as kube-apiserver's RBAC would (`FakeCluster.authorized`);
        namespaces always exist.
        """
        route = self.path.split("?")[0].rstrip("/")
        if method == "GET" and route in DISCOVERY:
            self._send_json(200, DISCOVERY[route](self))
            return True
        match = _CORE_ROUTE.fullmatch(route)
        if match is None:
            return False
        raw = self._read_body()  # DELETE carries DeleteOptions; a body left unread would end the connection
        if self._apply_fault():
            return True
        ns, kind, name, sub = match.group("ns"), match.group("kind"), match.group("name"), match.group("sub")
        verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete" if name else "deletecollection"}
        if not self._authorize(verb[method], kind, namespace=ns, name=name, subresource=sub):
            return True
        cluster = self.cluster
        store: dict[tuple[str, str], Any] = cluster.service_accounts if kind == "serviceaccounts" else cluster.pods
        if name is None:
            if method == "GET":
                with cluster._lock:
                    items = [_object(o) for (n, _), o in sorted(store.items()) if ns is None or n == ns]
                list_kind = "ServiceAccountList" if kind == "serviceaccounts" else "PodList"
                self._send_json(
                    200, {"kind": list_kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
                )
            elif method == "POST" and ns is not None:
                body = self._decode_object(raw, kind)
                new_name = (body or {}).get("metadata", {}).get("name") if isinstance(body, dict) else None
                if not isinstance(new_name, str) or not new_name:
                    self._send_json(400, failure(400, "BadRequest", f"{kind} must have metadata.name"))
                    return True
                with cluster._lock:
                    exists = (ns, new_name) in store
                if exists:
                    self._send_json(
                        409,
                        failure(
                            409,
                            "AlreadyExists",
                            f'{kind} "{new_name}" already exists',
                            {"name": new_name, "kind": kind},
                        ),
                    )
                    return True
                if kind == "serviceaccounts":
                    obj: Any = cluster.create_service_account(ns, new_name)
                else:
                    account = (body.get("spec") or {}).get("serviceAccountName") or "default"
                    obj = cluster.create_pod(ns, new_name, service_account=str(account))
                self._send_json(201, _object(obj))
            else:
                self._send_json(405, failure(405, "MethodNotAllowed", "the server does not allow this method"))
            return True
        with cluster._lock:
            found = store.get((ns or "", name))
        if found is None:
            self._send_json(404, failure(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind}))
            return True
        if sub == "token" and method == "POST" and kind == "serviceaccounts":
            self._token_request(found, raw)
        elif sub is None and method == "GET":
            self._send_json(200, _object(found))
        elif sub is None and method == "DELETE":
            if kind == "serviceaccounts":
                cluster.delete_service_account(found.namespace, found.name)
            else:
                cluster.delete_pod(found.namespace, found.name)
            self._send_json(200, _object(found))
        else:
            self._send_json(405, failure(405, "MethodNotAllowed", "the server does not allow this method"))
        return True

    def _object_api(self, method: str) -> bool:
        """Serve Namespaces and the RBAC objects (ClusterRoles, ClusterRoleBindings, Roles,
        RoleBindings): create, get, list, delete. True when the request was answered.

        What a binding grants is what `FakeCluster.allow` grants: see `flask_bindcar.testing.rbac`.
        """
        route = self.path.split("?")[0].rstrip("/")
        match = _OBJECT_ROUTE.fullmatch(route)
        if match is None:
            return False
        raw = self._read_body()
        if self._apply_fault():
            return True
        resource = match.group("kind") or "namespaces"
        group = rbac.GROUP if match.group("kind") else ""
        ns = match.group("ns")
        name = match.group("name") if match.group("kind") else match.group("nsname")
        if (ns is not None) != (resource in rbac.NAMESPACED):
            self._send_json(404, failure(404, "NotFound", "the server could not find the requested resource"))
            return True
        verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete" if name else "deletecollection"}
        if not self._authorize(verb[method], resource, group=group, namespace=ns, name=name):
            return True
        qualified = f"{resource}.{group}" if group else resource
        details = {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource}
        not_found = failure(404, "NotFound", f'{qualified} "{name}" not found', details)
        cluster = self.cluster
        if resource == "namespaces":
            self._namespace_api(method, name, raw, not_found)
        elif method == "GET" and name is None:
            items = cluster.rbac.list(resource, ns)
            kind = rbac.KINDS[resource] + "List"
            body = {"kind": kind, "apiVersion": f"{group}/v1", "metadata": {"resourceVersion": "1"}, "items": items}
            self._send_json(200, body)
        elif method == "POST" and name is None:
            obj = self._decode_object(raw, resource)
            code, answer = cluster.rbac.create(resource, ns, obj)
            if code == 201:
                self._send_json(201, answer)
            elif code == 409:
                message = f'{qualified} "{answer}" already exists'
                self._send_json(409, failure(409, "AlreadyExists", message, {**details, "name": answer}))
            else:
                given = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
                invalid = {"name": given} if given else {}
                invalid.update(group=group, kind=rbac.KINDS[resource], causes=answer["causes"])
                self._send_json(422, failure(422, "Invalid", answer["message"], invalid))
        elif method == "GET" and name is not None:
            found = cluster.rbac.get(resource, ns, name)
            self._send_json(200, found) if found is not None else self._send_json(404, not_found)
        elif method == "DELETE" and name is not None:
            gone = cluster.rbac.delete(resource, ns, name)
            self._send_json(200, gone) if gone is not None else self._send_json(404, not_found)
        else:
            self._send_json(405, failure(405, "MethodNotAllowed", "the server does not allow this method"))
        return True

    def _namespace_api(self, method: str, name: str | None, raw: bytes, not_found: dict[str, Any]) -> None:
        cluster = self.cluster
        if method == "GET" and name is None:
            with cluster._lock:
                names = set(cluster.namespaces) | {
                    ns for ns, _ in itertools.chain(cluster.service_accounts, cluster.pods)
                }
            items = [_namespace(found) for n in sorted(names) if (found := cluster.namespace(n)) is not None]
            self._send_json(
                200, {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
            )
        elif method == "GET" and name is not None:
            found = cluster.namespace(name)
            self._send_json(200, _namespace(found)) if found is not None else self._send_json(404, not_found)
        elif method == "POST" and name is None:
            body = self._decode_object(raw, "namespaces")
            new = body.get("metadata", {}).get("name") if isinstance(body, dict) else None
            if not isinstance(new, str) or not new:
                message = 'Namespace "" is invalid: metadata.name: Required value: name or generateName is required'
                self._send_json(422, failure(422, "Invalid", message, {"kind": "Namespace"}))
            elif cluster.namespace(new) is not None:
                message = f'namespaces "{new}" already exists'
                self._send_json(409, failure(409, "AlreadyExists", message, {"name": new, "kind": "namespaces"}))
            else:
                created = cluster._create_namespace(new)
                self._send_json(201, _namespace(created))
        else:
            self._send_json(405, failure(405, "MethodNotAllowed", "the server does not allow this method"))

    def _decode_object(self, raw: bytes, kind: str) -> Any:
        """The JSON body, or the fields this stand-in needs of a protobuf one (kubectl sends those)."""
        try:
            if self.headers.get("Content-Type", "").startswith(PROTOBUF):
                return from_protobuf(raw, kind)
            return json.loads(raw)
        except (ValueError, IndexError, UnicodeDecodeError):
            return None

    def _token_request(self, sa: ServiceAccount, raw: bytes) -> None:
        """TokenRequest, with kube-apiserver's defaults and checks: 1 h when not given, from 10 min
        to 2^32 s, shortened to `FakeCluster.max_token_expiration` (with its warning), a bound Pod."""
        body = self._decode_object(raw, "token")
        spec = body.get("spec") if isinstance(body, dict) else None
        seconds = spec.get("expirationSeconds") if isinstance(spec, dict) else None
        if seconds is None:  # not given (0 is given, and invalid)
            seconds = 3600
        if not isinstance(spec, dict) or not isinstance(seconds, int) or isinstance(seconds, bool):
            self._send_json(400, failure(400, "BadRequest", "the body of the request is not a valid TokenRequest"))
            return
        why = None
        if seconds < 600:
            why = "may not specify a duration less than 10 minutes"
        elif seconds > 2**32:
            why = "may not specify a duration larger than 2^32 seconds"
        if why is not None:
            message = f"Invalid value: {seconds}: {why}"
            self._send_json(
                422,
                failure(
                    422,
                    "Invalid",
                    f'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: {message}',
                    {
                        "group": "authentication.k8s.io",
                        "kind": "TokenRequest",
                        "causes": [
                            {"reason": "FieldValueInvalid", "message": message, "field": "spec.expirationSeconds"}
                        ],
                    },
                ),
            )
            return
        audiences = spec.get("audiences") or [API_AUDIENCE]
        pod: Pod | None = None
        ref = spec.get("boundObjectRef")
        if isinstance(ref, dict) and ref.get("kind") == "Pod":
            pod_name = str(ref.get("name", ""))
            with self.cluster._lock:
                pod = self.cluster.pods.get((sa.namespace, pod_name))
            if pod is None or (ref.get("uid") and ref["uid"] != pod.uid):
                self._send_json(
                    404, failure(404, "NotFound", f'pods "{pod_name}" not found', {"name": pod_name, "kind": "pods"})
                )
                return
        limit = self.cluster.max_token_expiration
        warning = None
        if limit is not None and seconds > limit:
            warning = f'299 - "requested expiration of {seconds} seconds shortened to {limit} seconds"'
            seconds = limit
        token = self.cluster._mint(sa, audiences, seconds, pod)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
        self._send_json(
            201,
            {
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {
                    "name": sa.name,
                    "namespace": sa.namespace,
                    "uid": sa.uid,
                    "creationTimestamp": sa.created,
                },
                "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": ref},
                "status": {"token": token, "expirationTimestamp": expires},
            },
            headers={"Warning": warning} if warning else None,
        )
