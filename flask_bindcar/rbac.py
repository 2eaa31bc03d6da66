"""What a request needs to be allowed: `RBAC`, the attributes of a SubjectAccessReview.

`RBAC` is what a route declares, once, at import time; `Attributes` is what one request asks for,
built in one place (`RBAC.attributes`) from the HTTP method, the path and the matched route's
view arguments, as kube-rbac-proxy builds its attributes from a request. This module knows
nothing of Flask, the cache or the API server, so the configuration can hold an `RBAC`.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask_bindcar.errors import ConfigError

MEMO_SIZE = 4096
"""`Attributes` kept per `RBAC`, by method, path and view arguments; emptied when full."""

RESOURCE_VERBS: Mapping[str, str] = {
    "GET": "get",
    "HEAD": "get",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
"""The verb of a resource request by HTTP method, as kube-apiserver names them. Any other method
(``OPTIONS``, say) asks for its own name in lower case, which only a ``*`` rule grants."""


def _fields(template: str | None, what: str) -> tuple[str, ...]:
    """The names a template fills in (``"{name}"`` -> ``("name",)``); `ConfigError` for anything else."""
    if template is None:
        return ()
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"RBAC({what}={template!r}) is not a valid template: {e}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise ConfigError(
                f"RBAC({what}={template!r}): {{{field}}} is not valid: a template names a view argument, "
                "such as {name}"
            )
        names.append(field)
    return tuple(names)


@dataclass(frozen=True)
class Attributes:
    """The attributes of one SubjectAccessReview: a resource request, or a path (``path`` set)."""

    verb: str
    resource: str = ""
    group: str = ""
    version: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str | None = None

    def __hash__(self) -> int:
        """Computed once: an `Attributes` is part of every authorization cache key."""
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.verb, self.resource, self.group, self.version, self.subresource))
            cached = hash((cached, self.namespace, self.name, self.path))
            object.__setattr__(self, "_hash", cached)
        return cached

    def spec(self) -> dict[str, Any]:
        """``resourceAttributes`` or ``nonResourceAttributes`` of the review, empty fields left out."""
        if self.path is not None:
            return {"nonResourceAttributes": {"path": self.path, "verb": self.verb}}
        fields = {
            "namespace": self.namespace,
            "verb": self.verb,
            "group": self.group,
            "version": self.version,
            "resource": self.resource,
            "subresource": self.subresource,
            "name": self.name,
        }
        return {"resourceAttributes": {k: v for k, v in fields.items() if v}}

    def describe(self) -> str:
        """``<resource>[.<group>][/<subresource>][ "<name>"][ in namespace <ns>]``, or the path."""
        if self.path is not None:
            return self.path
        what = self.resource + (f".{self.group}" if self.group else "")
        what += f"/{self.subresource}" if self.subresource else ""
        what += f' "{self.name}"' if self.name else ""
        what += f" in namespace {self.namespace}" if self.namespace else ""
        return what

    def record(self) -> dict[str, str]:
        """The attributes for the audit record: the non-empty fields."""
        if self.path is not None:
            return {"verb": self.verb, "path": self.path}
        return dict(self.spec()["resourceAttributes"])


@dataclass(frozen=True)
class RBAC:
    """What a route needs, checked by a SubjectAccessReview of the caller.

    For a resource: ``RBAC(resource="zones", group="bindcar.firestoned.io", name="{name}")``;
    ``namespace`` and ``name`` may name the matched route's view arguments in braces. For the
    request path, as kube-rbac-proxy does when no resource is given: ``RBAC(path=True)``. The
    verb defaults from the HTTP method: `RESOURCE_VERBS` for resources, the method in lower case
    for paths.
    """

    resource: str | None = None
    group: str = ""
    version: str = ""
    subresource: str = ""
    namespace: str | None = None
    name: str | None = None
    verb: str | None = None
    path: bool = False

    def __post_init__(self) -> None:
        if self.path and (self.resource or self.group or self.version or self.subresource):
            raise ConfigError(
                "RBAC(path=True) checks the request path: give no resource, group, version or subresource"
            )
        if self.path and (self.namespace is not None or self.name is not None):
            raise ConfigError("RBAC(path=True) checks the request path: give no namespace or name")
        if not self.path and not self.resource:
            raise ConfigError('RBAC needs a resource, such as RBAC(resource="zones"), or path=True')
        for what in ("resource", "group", "version", "subresource", "verb"):
            value = getattr(self, what)
            if value is not None and ("{" in value or "/" in value or not value == value.strip()):
                raise ConfigError(f"RBAC({what}={value!r}) is not valid: expected a plain name")
        # Not a field: what the templates name, computed once (the attributes of a request are built often).
        object.__setattr__(self, "_args", _fields(self.namespace, "namespace") + _fields(self.name, "name"))
        object.__setattr__(self, "_memo", {})

    @property
    def view_args(self) -> tuple[str, ...]:
        """The view arguments ``namespace`` and ``name`` are filled from."""
        args: tuple[str, ...] = self.__dict__["_args"]
        return args

    def attributes(self, method: str, path: str, view_args: Mapping[str, Any] | None = None) -> Attributes:
        """The attributes of one request; `KeyError` naming a view argument the route does not have.

        Requests that ask the same question share one `Attributes` (a small cache): only the
        method, the path (for ``path=True``) and the view arguments the templates name matter.
        """
        if self.path:
            key: tuple[Any, ...] = (method, path)
        elif self.view_args:
            args = view_args or {}
            key = (method, None, *(str(args[n]) for n in self.view_args))
        else:
            key = (method,)
        memo: dict[tuple[Any, ...], Attributes] = self.__dict__["_memo"]
        found = memo.get(key)
        if found is None:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            found = memo[key] = _resolve(self, key[0], key[1] if len(key) > 1 else None, key[2:])
        return found

    def summary(self) -> dict[str, Any]:
        """The fields that were given, for logs and ``doctor``."""
        if self.path:
            return {"path": True, **({"verb": self.verb} if self.verb else {})}
        fields = ("resource", "group", "version", "subresource", "namespace", "name", "verb")
        return {f: getattr(self, f) for f in fields if getattr(self, f)}


def _resolve(rbac: RBAC, method: str, path: str | None, args: tuple[str, ...]) -> Attributes:
    method = method.upper()
    if rbac.path:
        return Attributes(verb=rbac.verb or method.lower(), path=path)
    values = dict(zip(rbac.view_args, args, strict=True))
    return Attributes(
        verb=rbac.verb or RESOURCE_VERBS.get(method, method.lower()),
        resource=rbac.resource or "",
        group=rbac.group,
        version=rbac.version,
        subresource=rbac.subresource,
        namespace=rbac.namespace.format_map(values) if rbac.namespace else "",
        name=rbac.name.format_map(values) if rbac.name else "",
    )
