"""FakeCluster's RBAC authorizer: its rules and RBAC objects, and the SubjectAccessReview answer.

Only allowing rules exist, as in RBAC: a request is allowed when a rule bound to the user, or
to one of its groups, matches it (`flask_bindcar.testing.rbac.Rule.matches`). The bootstrap roles
every kube-apiserver has that matter to a SubjectAccessReview are there from the start:
``system:discovery`` and ``system:public-info-viewer`` let every authenticated user ``get`` the
discovery and health paths (``/api/*``, ``/apis/*``, ``/healthz``, ...), ``system:basic-user``
lets it create self-reviews. The answers are kube-apiserver 1.37's: ``{"allowed": true, "reason":
"RBAC: allowed by ..."}`` or ``{"allowed": false}`` with no reason.

Rules come from `Rules.allow` (the test kit's shorthand: a role and its binding in one) or from
the RBAC objects kubectl creates (`Rules.create`: ClusterRoles, ClusterRoleBindings, Roles,
RoleBindings, as ``rbac.authorization.k8s.io/v1`` JSON), which grant what RBAC would: a binding
gives its subjects the rules of the role it names, whenever that role exists. Two bootstrap
ClusterRoles exist from the start for bindings to name: ``cluster-admin`` and
``system:auth-delegator``. Not modelled: aggregated ClusterRoles and RBAC's escalation checks
(whoever may create a binding may bind any role).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flask_bindcar.testing.rbac import GROUP, KINDS, Rule, SubjectKind, new_rule

PUBLIC_INFO_PATHS = ("/healthz", "/livez", "/readyz", "/version", "/version/")
DISCOVERY_PATHS = ("/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", *PUBLIC_INFO_PATHS)


def bootstrap_rules() -> list[Rule]:
    """The bootstrap ClusterRoleBindings a SubjectAccessReview meets for any authenticated user."""
    authenticated = "system:authenticated"
    return [
        Rule("system:discovery", authenticated, "Group", ("get",), paths=DISCOVERY_PATHS),
        Rule("system:public-info-viewer", authenticated, "Group", ("get",), paths=PUBLIC_INFO_PATHS),
        Rule(
            "system:basic-user",
            authenticated,
            "Group",
            ("create",),
            resources=("selfsubjectaccessreviews", "selfsubjectrulesreviews"),
            groups=("authorization.k8s.io",),
        ),
        Rule(
            "system:basic-user",
            authenticated,
            "Group",
            ("create",),
            resources=("selfsubjectreviews",),
            groups=("authentication.k8s.io",),
        ),
    ]


def bootstrap_roles() -> list[dict[str, Any]]:
    """The bootstrap ClusterRoles a binding created through the API may name."""
    return [
        {
            "kind": "ClusterRole",
            "apiVersion": f"{GROUP}/v1",
            "metadata": {"name": "cluster-admin"},
            "rules": [
                {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
                {"verbs": ["*"], "nonResourceURLs": ["*"]},
            ],
        },
        {
            "kind": "ClusterRole",
            "apiVersion": f"{GROUP}/v1",
            "metadata": {"name": "system:auth-delegator"},
            "rules": [
                {"verbs": ["create"], "apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"]},
                {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"]},
            ],
        },
    ]


class Rules:
    """The cluster's RBAC: `allow` adds a rule, `create` an RBAC object; `decide` answers a
    SubjectAccessReview spec."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = bootstrap_rules()
        self._ids = itertools.count(1)
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        for role in bootstrap_roles():
            self._objects[("clusterroles", "", role["metadata"]["name"])] = _stamped(role, None)

    # -- the RBAC objects of the API ---------------------------------------------------------

    def create(self, resource: str, namespace: str | None, obj: Any) -> tuple[int, Any]:
        """Create an RBAC object as kube-apiserver would: ``(201, the object)``, ``(409, name)``
        when it exists, or ``(422, {"message", "causes"})`` when it is invalid."""
        invalid = validate_object(resource, obj)
        if invalid is not None:
            return 422, invalid
        name = obj["metadata"]["name"]
        key = (resource, namespace or "", name)
        with self._lock:
            if key in self._objects:
                return 409, name
            stored = self._objects[key] = _stamped({**obj, "kind": KINDS[resource]}, namespace)
        return 201, stored

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((resource, namespace or "", name))

    def list(self, resource: str, namespace: str | None) -> list[dict[str, Any]]:
        """The objects of ``resource``, in ``namespace`` or in all of them (None)."""
        with self._lock:
            return [o for (r, ns, _), o in sorted(self._objects.items()) if r == resource and namespace in (None, ns)]

    def delete(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Delete the object: what its binding granted is revoked at once. The object, or None."""
        with self._lock:
            return self._objects.pop((resource, namespace or "", name), None)

    def _bound(self) -> Iterator[Rule]:
        """The rules the bindings give their subjects: cluster bindings first, as RBAC visits them."""
        with self._lock:
            objects = dict(self._objects)
        for resource in ("clusterrolebindings", "rolebindings"):
            for (r, ns, name), binding in sorted(objects.items()):
                if r != resource:
                    continue
                ref = binding.get("roleRef") or {}
                kind, role_name = ref.get("kind", ""), ref.get("name", "")
                role = objects.get(
                    ("clusterroles", "", role_name) if kind == "ClusterRole" else ("roles", ns, role_name)
                )
                for subject in binding.get("subjects") or ():
                    who, who_kind = _subject(subject, ns)
                    for rule in (role or {}).get("rules") or ():
                        yield Rule(
                            binding=name,
                            subject=who,
                            kind=who_kind,
                            verbs=tuple(rule.get("verbs") or ()),
                            resources=tuple(rule.get("resources") or ()),
                            groups=tuple(rule.get("apiGroups") or ()),
                            namespace=ns or None,
                            names=tuple(rule.get("resourceNames") or ()),
                            paths=tuple(rule.get("nonResourceURLs") or ()),
                            role=role_name,
                            role_kind=kind,
                        )

    def allow(
        self,
        subject: str,
        verb: str | Iterable[str],
        resource: str | Iterable[str] | None = None,
        *,
        group: str | Iterable[str] = "",
        namespace: str | None = None,
        name: str | Iterable[str] | None = None,
        path: str | Iterable[str] | None = None,
        binding: str | None = None,
        kind: SubjectKind | None = None,
    ) -> Rule:
        rule = new_rule(
            binding or f"fake-rbac-{next(self._ids)}",
            subject,
            verb,
            resource,
            group=group,
            namespace=namespace,
            name=name,
            path=path,
            kind=kind,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def decide(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """``status`` of a SubjectAccessReview of ``spec`` (already validated)."""
        user = str(spec.get("user") or "")
        groups = [str(g) for g in spec.get("groups") or ()]
        with self._lock:
            rules = list(self._rules)
        for rule in itertools.chain(rules, self._bound()):
            if rule.binds(user, groups) and rule.matches(spec):
                return {"allowed": True, "reason": rule.reason}
        return {"allowed": False}


def _subject(subject: Mapping[str, Any], namespace: str) -> tuple[str, SubjectKind]:
    """The username or group a binding's subject names; a ServiceAccount without a namespace is
    in the binding's own."""
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        return f"system:serviceaccount:{subject.get('namespace') or namespace}:{subject.get('name', '')}", kind
    return str(subject.get("name", "")), "Group" if kind == "Group" else "User"


def _stamped(obj: Mapping[str, Any], namespace: str | None) -> dict[str, Any]:
    """The object as the API server stores it: apiVersion, uid, resourceVersion, creationTimestamp."""
    metadata = {
        **(obj.get("metadata") or {}),
        "uid": str(uuid.uuid4()),
        "resourceVersion": "1",
        "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if namespace:
        metadata["namespace"] = namespace
    return {**obj, "apiVersion": f"{GROUP}/v1", "metadata": metadata}


def validate_object(resource: str, obj: Any) -> dict[str, Any] | None:
    """kube-apiserver's 422 for an invalid RBAC object, as ``{"message", "causes"}``, or None. The
    checks a hand-written grant meets: a name, the binding's ``roleRef`` and subjects (an empty
    ``apiGroup`` is defaulted, as kube-apiserver does)."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    errors: list[tuple[str, str, str]] = []  # (field, reason, message)
    if not isinstance(name, str) or not name:
        name = ""
        errors.append(("metadata.name", "FieldValueRequired", "Required value: name or generateName is required"))
    if resource in ("clusterrolebindings", "rolebindings"):
        ref: dict[str, Any] = obj["roleRef"] if isinstance(obj, dict) and isinstance(obj.get("roleRef"), dict) else {}
        kinds = ["Role", "ClusterRole"] if resource == "rolebindings" else ["ClusterRole"]
        if ref.get("apiGroup") not in ("", None, GROUP):
            errors.append(("roleRef.apiGroup", *_unsupported(ref["apiGroup"], [GROUP])))
        if ref.get("kind", "") not in kinds:
            errors.append(("roleRef.kind", *_unsupported(ref.get("kind", ""), kinds)))
        if not ref.get("name"):
            errors.append(("roleRef.name", "FieldValueRequired", "Required value"))
        for i, subject in enumerate(obj.get("subjects") or () if isinstance(obj, dict) else ()):
            errors += _subject_errors(subject, f"subjects[{i}]", namespaced=resource == "rolebindings")
    if not errors:
        return None
    texts = [f"{where}: {message}" for where, _, message in errors]
    listed = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return {
        "message": f'{KINDS[resource]}.{GROUP} "{name}" is invalid: {listed}',
        "causes": [{"reason": reason, "message": message, "field": where} for where, reason, message in errors],
    }


def _unsupported(value: object, supported: list[str]) -> tuple[str, str]:
    listed = ", ".join(f'"{v}"' for v in supported)
    return "FieldValueNotSupported", f'Unsupported value: "{value}": supported values: {listed}'


def _subject_errors(subject: Any, where: str, *, namespaced: bool) -> list[tuple[str, str, str]]:
    if not isinstance(subject, dict):
        return [(where, "FieldValueInvalid", "Invalid value: must be an object")]
    kind, group = subject.get("kind", ""), subject.get("apiGroup") or ""
    errors = [] if subject.get("name") else [(f"{where}.name", "FieldValueRequired", "Required value")]
    if kind == "ServiceAccount":
        if group:
            errors.append((f"{where}.apiGroup", *_unsupported(group, [""])))
        if not namespaced and not subject.get("namespace"):
            errors.append((f"{where}.namespace", "FieldValueRequired", "Required value"))
    elif kind in ("User", "Group"):
        if group not in ("", GROUP):
            errors.append((f"{where}.apiGroup", *_unsupported(group, [GROUP])))
    else:
        errors.append((f"{where}.kind", *_unsupported(kind, ["ServiceAccount", "User", "Group"])))
    return errors


def validate(spec: Any) -> str | None:
    """kube-apiserver's 422 message for an invalid SubjectAccessReview spec, or None when it is valid."""
    if not isinstance(spec, dict):
        return '.authorization.k8s.io "" is invalid: spec: Required value'
    resource, nonresource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if (resource is None) == (nonresource is None):
        return (
            '.authorization.k8s.io "" is invalid: spec: Invalid value: '
            f"{nonresource!r}: exactly one of nonResourceAttributes or resourceAttributes must be specified"
        )
    if not spec.get("user") and not spec.get("groups"):
        return (
            '.authorization.k8s.io "" is invalid: spec.user: Invalid value: "": at least one of user or group must '
            "be specified"
        )
    return None
