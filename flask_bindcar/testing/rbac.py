"""RBAC for `FakeCluster`: rules, bindings and the SubjectAccessReview answer kube-apiserver gives.

Only allowing rules exist, as in RBAC: a request is allowed when a rule bound to the user, or
to one of its groups, matches it, following RBAC's rules for ``*``, subresources and
``resourceNames``. A rule with a namespace is a Role and a RoleBinding there (it matches only
requests in that namespace, and never a path); one without is a ClusterRole and a
ClusterRoleBinding. The bootstrap roles every kube-apiserver has that matter to a
SubjectAccessReview are there from the start: ``system:discovery`` and
``system:public-info-viewer`` let every authenticated user ``get`` the discovery and health
paths (``/api/*``, ``/apis/*``, ``/healthz``, ...), ``system:basic-user`` lets it create
self-reviews. The answers are kube-apiserver 1.37's: ``{"allowed": true, "reason": "RBAC:
allowed by ..."}`` or ``{"allowed": false}`` with no reason.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from flask_bindcar.identity import split_service_account

SubjectKind = Literal["User", "Group", "ServiceAccount"]
_GROUP_PREFIXES = ("system:serviceaccounts", "system:authenticated", "system:unauthenticated", "system:masters")


def subject_kind(subject: str) -> SubjectKind:
    """How `FakeCluster.allow` reads a subject: a ServiceAccount's username, a group, or a user."""
    if split_service_account(subject) is not None:
        return "ServiceAccount"
    if subject.startswith(_GROUP_PREFIXES):
        return "Group"
    return "User"


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
        if self.namespace is not None:
            return f'RBAC: allowed by RoleBinding "{self.binding}/{self.namespace}" of Role "{self.binding}" to {who}'
        return f'RBAC: allowed by ClusterRoleBinding "{self.binding}" of ClusterRole "{self.binding}" to {who}'


def _verb(verbs: tuple[str, ...], attrs: Mapping[str, Any]) -> bool:
    return "*" in verbs or attrs.get("verb", "") in verbs


def _path(paths: tuple[str, ...], attrs: Mapping[str, Any]) -> bool:
    path = str(attrs.get("path", ""))
    return any(p == "*" or p == path or (p.endswith("*") and path.startswith(p[:-1])) for p in paths)


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


class Rules:
    """The cluster's RBAC: `allow` adds a rule; `decide` answers a SubjectAccessReview spec."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = bootstrap_rules()
        self._ids = itertools.count(1)

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
        if (resource is None) == (path is None):
            raise ValueError("allow() takes a resource or a path, not both")
        if path is not None and namespace is not None:
            raise ValueError("a path (nonResourceURLs) can only be granted cluster-wide")
        rule = Rule(
            binding=binding or f"fake-rbac-{next(self._ids)}",
            subject=subject,
            kind=kind or subject_kind(subject),
            verbs=_tuple(verb),
            resources=_tuple(resource) if resource is not None else (),
            groups=_tuple(group),
            namespace=namespace,
            names=_tuple(name) if name is not None else (),
            paths=_tuple(path) if path is not None else (),
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
        for rule in rules:
            if rule.binds(user, groups) and rule.matches(spec):
                return {"allowed": True, "reason": rule.reason}
        return {"allowed": False}


def _tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


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
