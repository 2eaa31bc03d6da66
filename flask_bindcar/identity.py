"""Who made the request, as the view sees it."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

SA_PREFIX = "system:serviceaccount:"

ENVIRON_KEY = "bindcar.identity"
"""Where both adapters leave the caller's `Identity` in the WSGI environ."""
CLUSTER_KEY = "bindcar.cluster"
"""Where both adapters leave the name of the caller's cluster, beside ``REMOTE_USER`` (docs/clusters.md)."""

AuthMethod = Literal["basic", "shared-secret", "tokenreview", "jwt"]

EXTRA_PREFIX = "authentication.kubernetes.io/"
BOUND_FIELDS = {
    "pod_name": EXTRA_PREFIX + "pod-name",
    "pod_uid": EXTRA_PREFIX + "pod-uid",
    "node_name": EXTRA_PREFIX + "node-name",
    "node_uid": EXTRA_PREFIX + "node-uid",
    "credential_id": EXTRA_PREFIX + "credential-id",
}
"""`Identity` field -> the ``user.extra`` key kube-apiserver (1.30 and later) fills it from."""


def split_service_account(username: str | None) -> tuple[str, str] | None:
    """``system:serviceaccount:<ns>:<name>`` -> ``(ns, name)``; None for any other username."""
    if not username or not username.startswith(SA_PREFIX):
        return None
    namespace, sep, name = username[len(SA_PREFIX) :].partition(":")
    if not sep or not namespace or not name or ":" in name:
        return None
    return namespace, name


def bound_fields(extra: Mapping[str, tuple[str, ...]]) -> dict[str, str | None]:
    """The `BOUND_FIELDS` found in a TokenReview's ``user.extra``: the first value of each key, or None."""
    return {name: next(iter(extra.get(key) or ()), None) or None for name, key in BOUND_FIELDS.items()}


@dataclass(frozen=True)
class Identity:
    """The authenticated caller.

    In Basic mode nothing is known about the caller but that a well-formed token came (``method``
    ``basic``) or that it matched the shared secret (``shared-secret``); ``username`` is None. In
    TokenReview mode every field comes from the API server's ``status.user`` and
    ``status.audiences``; in jwt mode (``jwt``) from the verified token, as the TokenReview would
    have given them; ``namespace`` and ``service_account`` (the short name) are set when the
    caller is a ServiceAccount.

    A projected token bound to a pod names it: ``pod_name`` and ``pod_uid``, and ``node_name`` and
    ``node_uid`` once the pod is scheduled (and the cluster adds them); ``credential_id`` (``JTI=...``)
    tells one token from another in an audit trail. Each is None when the API server does not say,
    and all stay in ``extra`` as the API server gave them.
    """

    method: AuthMethod
    username: str | None = None
    uid: str | None = None
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    audiences: tuple[str, ...] = ()
    namespace: str | None = None
    service_account: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    node_name: str | None = None
    node_uid: str | None = None
    credential_id: str | None = None
    cluster: str | None = None
    """The name of the trusted cluster whose issuer minted the token (``BIND_CLUSTERS_FILE``); None
    without that setting: one cluster, unnamed."""

    @property
    def is_service_account(self) -> bool:
        return self.service_account is not None

    @property
    def is_pod_bound(self) -> bool:
        """Whether the token is bound to a pod (a projected token in a pod, or one made for it)."""
        return self.pod_name is not None


def put_in_environ(environ: MutableMapping[str, Any], identity: Identity) -> None:
    """Leave ``identity`` with its request: at `ENVIRON_KEY`, its username at ``REMOTE_USER``, its
    cluster's name at `CLUSTER_KEY`.

    ``REMOTE_USER`` is where WSGI servers, loggers and frameworks look for the authenticated user
    (Werkzeug's ``request.remote_user``, gunicorn's ``%({remote_user}e)s``); it is removed when
    the identity has no username (Basic mode), so no value a server or an outer layer set survives
    next to an identity that does not vouch for it.
    """
    environ[ENVIRON_KEY] = identity
    if identity.username is not None:
        environ["REMOTE_USER"] = identity.username
    else:
        environ.pop("REMOTE_USER", None)
    if identity.cluster is not None:
        environ[CLUSTER_KEY] = identity.cluster
    else:
        environ.pop(CLUSTER_KEY, None)


def clear_remote_user(environ: MutableMapping[str, Any]) -> None:
    """Remove a ``REMOTE_USER`` (and ``bindcar.cluster``) that flask-bindcar did not set (an exempt
    path, a refused request)."""
    environ.pop("REMOTE_USER", None)
    environ.pop(CLUSTER_KEY, None)
