"""From a TokenReview outcome to an `Identity`, and the allowlists applied to it.

Applied on every request, cached outcome or not, so a configuration change takes effect at once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from flask_bindcar.errors import (
    AUDIENCE_INVALID,
    NAMESPACE_DENIED,
    NO_USER_INFO,
    NOT_AUTHENTICATED,
    NOT_POD_BOUND,
    NOT_SERVICE_ACCOUNT,
    SERVICE_ACCOUNT_DENIED,
    AuthError,
)
from flask_bindcar.identity import Identity, bound_fields, split_service_account
from flask_bindcar.rbac import RBAC
from flask_bindcar.tokenreview import ReviewOutcome

GENERIC_REJECTION = "invalid bearer token"
"""kube-apiserver's ``status.error`` when no authenticator knows the token: it says no more than
the guide's ``token not authenticated``, which is what the guide's example shows for it."""


def identity_from_review(outcome: ReviewOutcome, audiences: Collection[str]) -> Identity:
    """The caller the API server vouched for, or the seed's `AuthError` for what it did not vouch."""
    if not outcome.authenticated:
        error = outcome.error if outcome.error and outcome.error != GENERIC_REJECTION else NOT_AUTHENTICATED
        raise AuthError.validation_failed(error, reason=outcome.reason or "not_authenticated")
    granted = tuple(a for a in outcome.audiences if a in audiences)
    if not granted:
        raise AuthError.validation_failed(AUDIENCE_INVALID, reason="audience")
    user = outcome.user
    if user is None:
        raise AuthError.validation_failed(NO_USER_INFO, reason="no_user")
    username = str(user["username"])
    sa = split_service_account(username)
    raw = user.get("extra") or {}
    extra = {str(k): tuple(str(v) for v in (vs or ())) for k, vs in raw.items()} if isinstance(raw, dict) else {}
    return Identity(
        method=outcome.method,
        username=username,
        uid=str(user["uid"]) if user.get("uid") else None,
        groups=tuple(str(g) for g in user.get("groups") or ()),
        extra=extra,
        audiences=granted,
        cluster=outcome.cluster,
        namespace=sa[0] if sa else None,
        service_account=sa[1] if sa else None,
        **bound_fields(extra),
    )


def authorize(
    identity: Identity,
    namespaces: Collection[str] | None,
    service_accounts: Collection[str] | None,
    require_pod: bool = False,
) -> None:
    """Apply a namespace and a ServiceAccount allowlist (None allows all), then, with
    ``require_pod``, the pod binding; fail closed."""
    if namespaces is not None:
        if identity.namespace is None:
            raise AuthError.validation_failed(
                NOT_SERVICE_ACCOUNT.format(username=identity.username or "(anonymous)"), reason="not_service_account"
            )
        if not _listed(identity.namespace, namespaces, identity.cluster):
            raise AuthError.validation_failed(NAMESPACE_DENIED.format(namespace=identity.namespace), reason="namespace")
    if service_accounts is not None and not _listed(identity.username, service_accounts, identity.cluster):
        raise AuthError.validation_failed(
            SERVICE_ACCOUNT_DENIED.format(username=identity.username or "(anonymous)"), reason="service_account"
        )
    if require_pod and not identity.is_pod_bound:
        raise AuthError.validation_failed(NOT_POD_BOUND, reason="not_pod_bound")


def _listed(value: str | None, allowlist: Collection[str], cluster: str | None) -> bool:
    """Whether ``value`` is on ``allowlist``, unqualified (any cluster) or as ``<cluster>/<value>``."""
    return value in allowlist or (cluster is not None and f"{cluster}/{value}" in allowlist)


@dataclass(frozen=True)
class ViewPolicy:
    """What one view asks of its callers on top of the app's configuration, as ``@auth_required`` says it.

    ``namespaces`` and ``service_accounts`` narrow the app's allowlists, ``require_pod`` accepts
    only pod-bound tokens, ``rbac`` replaces the app-wide ``BINDCAR_AUTHZ`` for this view. One
    frozen object per view: the admission chain reads it, ``review`` and ``doctor`` describe it.
    """

    namespaces: frozenset[str] | None = None
    service_accounts: frozenset[str] | None = None
    require_pod: bool = False
    rbac: RBAC | None = None

    @property
    def narrows(self) -> bool:
        """Whether the view's own allowlists or pod binding apply (beyond the app's)."""
        return self.namespaces is not None or self.service_accounts is not None or self.require_pod


APP_POLICY = ViewPolicy()
"""A view without ``@auth_required`` arguments: the app's configuration alone."""
