"""An RBAC grant as both clusters make it: one rule, its role and its binding.

`new_rule` reads ``allow(...)``'s arguments into a `Rule` (refusing what RBAC cannot express);
`FakeCluster` keeps the rule and matches requests against it (`Rule.matches`, as kube-apiserver's
RBAC authorizer does for ``*``, subresources and ``resourceNames``); `RealCluster` creates the
Role or ClusterRole and the binding the rule stands for (`Rule.objects`) and waits until a
SubjectAccessReview of `Rule.probe` is allowed. A rule with a namespace is a Role and a
RoleBinding there (it matches only requests in that namespace, and never a path); one without is a
ClusterRole and a ClusterRoleBinding. The fake's store of rules and RBAC objects, and its
SubjectAccessReview answer, are in `flask_bindcar.testing.authorizer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from flask_bindcar.identity import SA_PREFIX as _SA_PREFIX
from flask_bindcar.identity import split_service_account

SubjectKind = Literal["User", "Group", "ServiceAccount"]
_GROUP_PREFIXES = ("system:serviceaccounts", "system:authenticated", "system:unauthenticated", "system:masters")

GROUP = "rbac.authorization.k8s.io"
KINDS = {
    "clusterroles": "ClusterRole",
    "clusterrolebindings": "ClusterRoleBinding",
    "roles": "Role",
    "rolebindings": "RoleBinding",
}
"""The RBAC resources and their kinds."""
NAMESPACED = ("roles", "rolebindings")


def subject_kind(subject: str) -> SubjectKind:
    """How `allow` reads a subject: a ServiceAccount's username, a group, or a user."""
    if split_service_account(subject) is not None:
        return "ServiceAccount"
    if subject.startswith(_GROUP_PREFIXES):
        return "Group"
    return "User"


def groups_of(username: str) -> list[str]:
    """The groups kube-apiserver gives an authenticated ``username``: a ServiceAccount's three, or
    ``system:authenticated`` alone."""
    if username.startswith(_SA_PREFIX):
        namespace = username[len(_SA_PREFIX) :].split(":")[0]
        return ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    return ["system:authenticated"]


@dataclass(frozen=True)
class Rule:
    """One rule and its binding: ``subject`` may ``verbs`` what the rest describes."""

    binding: str
    subject: str
    kind: SubjectKind
    verbs: tuple[str, ...]
    resources: tuple[str, ...] = ()
    groups: tuple[str, ...] = ("",)
    namespace: str | None = None
    names: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    role: str = ""
    """The role's name when it is not the binding's (a binding of a role created on its own)."""
    role_kind: str = ""
    """``Role`` or ``ClusterRole`` when not implied by ``namespace`` (a RoleBinding of a ClusterRole)."""

    def binds(self, user: str, groups: Iterable[str]) -> bool:
        if self.kind == "Group":
            return self.subject in groups
        return self.subject == user

    def matches(self, spec: Mapping[str, Any]) -> bool:
        nonresource = spec.get("nonResourceAttributes")
        if isinstance(nonresource, dict):
            return self.namespace is None and _verb(self.verbs, nonresource) and _path(self.paths, nonresource)
        attrs = spec.get("resourceAttributes")
        if not isinstance(attrs, dict) or not self.resources:
            return False
        if self.namespace is not None and attrs.get("namespace", "") != self.namespace:
            return False
        group = attrs.get("group", "")
        if "*" not in self.groups and group not in self.groups:
            return False
        resource, sub = attrs.get("resource", ""), attrs.get("subresource", "")
        wanted = f"{resource}/{sub}" if sub else resource
        if not any(r == "*" or r == wanted or (sub and r == f"*/{sub}") for r in self.resources):
            return False
        if self.names and attrs.get("name", "") not in self.names:
            return False
        return _verb(self.verbs, attrs)

    @property
    def reason(self) -> str:
        """kube-apiserver's ``status.reason`` for a request this rule allows."""
        if self.kind == "ServiceAccount":
            namespace, name = split_service_account(self.subject) or ("", "")
            who = f'ServiceAccount "{name}/{namespace}"'
        else:
            who = f'{self.kind} "{self.subject}"'
        role = self.role or self.binding
        if self.namespace is not None:
            of = f'{self.role_kind or "Role"} "{role}"'
            return f'RBAC: allowed by RoleBinding "{self.binding}/{self.namespace}" of {of} to {who}'
        return f'RBAC: allowed by ClusterRoleBinding "{self.binding}" of ClusterRole "{role}" to {who}'

    def probe(self) -> dict[str, Any]:
        """The ``spec`` of a SubjectAccessReview this rule allows: its subject, first verb, and first
        resource (or path), group and name, in its namespace. What `RealCluster.allow` waits for."""
        spec: dict[str, Any]
        if self.kind == "Group":
            spec = {"groups": [self.subject]}
        else:
            spec = {"user": self.subject, "groups": groups_of(self.subject)}
        if self.paths:
            spec["nonResourceAttributes"] = {"path": self.paths[0], "verb": self.verbs[0]}
            return spec
        resource, _, sub = self.resources[0].partition("/")
        attrs = {"verb": self.verbs[0], "group": self.groups[0], "resource": resource}
        if sub:
            attrs["subresource"] = sub
        if self.names:
            attrs["name"] = self.names[0]
        if self.namespace is not None:
            attrs["namespace"] = self.namespace
        spec["resourceAttributes"] = attrs
        return spec

    def objects(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The role and the binding this rule stands for, as ``rbac.authorization.k8s.io/v1`` JSON:
        a Role and RoleBinding in its namespace, or a ClusterRole and ClusterRoleBinding, both named
        after the binding."""
        rule: dict[str, Any] = {"verbs": list(self.verbs)}
        if self.paths:
            rule["nonResourceURLs"] = list(self.paths)
        else:
            rule.update(apiGroups=list(self.groups), resources=list(self.resources))
            if self.names:
                rule["resourceNames"] = list(self.names)
        subject: dict[str, str]
        if self.kind == "ServiceAccount":
            account = split_service_account(self.subject)
            if account is None:
                raise ValueError(f"{self.subject!r} is not a ServiceAccount's username (system:serviceaccount:NS:NAME)")
            subject = {"kind": "ServiceAccount", "name": account[1], "namespace": account[0]}
        else:
            subject = {"kind": self.kind, "name": self.subject, "apiGroup": GROUP}
        role_kind, binding_kind = ("Role", "RoleBinding") if self.namespace else ("ClusterRole", "ClusterRoleBinding")
        metadata = {"name": self.binding, **({"namespace": self.namespace} if self.namespace else {})}
        role = {"apiVersion": f"{GROUP}/v1", "kind": role_kind, "metadata": metadata, "rules": [rule]}
        binding = {
            "apiVersion": f"{GROUP}/v1",
            "kind": binding_kind,
            "metadata": dict(metadata),
            "roleRef": {"apiGroup": GROUP, "kind": role_kind, "name": self.binding},
            "subjects": [subject],
        }
        return role, binding


def new_rule(
    binding: str,
    subject: str,
    verb: str | Iterable[str],
    resource: str | Iterable[str] | None = None,
    *,
    group: str | Iterable[str] = "",
    namespace: str | None = None,
    name: str | Iterable[str] | None = None,
    path: str | Iterable[str] | None = None,
    kind: SubjectKind | None = None,
) -> Rule:
    """The rule ``allow(...)`` describes; `ValueError` for what RBAC cannot express."""
    if (resource is None) == (path is None):
        raise ValueError("allow() takes a resource or a path, not both")
    if path is not None and namespace is not None:
        raise ValueError("a path (nonResourceURLs) can only be granted cluster-wide")
    return Rule(
        binding=binding,
        subject=subject,
        kind=kind or subject_kind(subject),
        verbs=_tuple(verb),
        resources=_tuple(resource) if resource is not None else (),
        groups=_tuple(group),
        namespace=namespace,
        names=_tuple(name) if name is not None else (),
        paths=_tuple(path) if path is not None else (),
    )


def _verb(verbs: tuple[str, ...], attrs: Mapping[str, Any]) -> bool:
    return "*" in verbs or attrs.get("verb", "") in verbs


def _path(paths: tuple[str, ...], attrs: Mapping[str, Any]) -> bool:
    path = str(attrs.get("path", ""))
    return any(p == "*" or p == path or (p.endswith("*") and path.startswith(p[:-1])) for p in paths)


def _tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)
