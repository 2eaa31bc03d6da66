"""The allowlists on their own: each denial has the seed's message and its own reason label.

The reason labels the audit record and the ``bindcar_auth_requests_total`` metric, so a denial
counted under the wrong one is a wrong answer too.
"""

from __future__ import annotations

from collections.abc import Collection

import pytest

from flask_bindcar import AuthError, Identity
from flask_bindcar.policy import authorize

SA = Identity(
    method="tokenreview",
    username="system:serviceaccount:dns-system:external-dns",
    namespace="dns-system",
    service_account="external-dns",
)
POD_BOUND = Identity(
    method="tokenreview",
    username="system:serviceaccount:dns-system:external-dns",
    namespace="dns-system",
    service_account="external-dns",
    pod_name="external-dns-0",
    pod_uid="0b8a5a8e-0000-4000-8000-000000000001",
)
USER = Identity(method="tokenreview", username="kube-admin")
ANONYMOUS = Identity(method="tokenreview")
EXTERNAL_DNS = "system:serviceaccount:dns-system:external-dns"


@pytest.mark.parametrize(
    ("identity", "namespaces", "service_accounts", "require_pod", "message", "reason"),
    [
        (SA, {"default"}, None, False, "ServiceAccount from unauthorized namespace: dns-system", "namespace"),
        (USER, {"dns-system"}, None, False, "Not a ServiceAccount: kube-admin", "not_service_account"),
        (ANONYMOUS, {"dns-system"}, None, False, "Not a ServiceAccount: (anonymous)", "not_service_account"),
        (
            SA,
            None,
            {"system:serviceaccount:dns-system:other"},
            False,
            f"ServiceAccount not authorized: {EXTERNAL_DNS}",
            "service_account",
        ),
        (ANONYMOUS, None, {EXTERNAL_DNS}, False, "ServiceAccount not authorized: (anonymous)", "service_account"),
        (SA, None, None, True, "token is not bound to a pod", "not_pod_bound"),
        (SA, {"dns-system"}, {EXTERNAL_DNS}, True, "token is not bound to a pod", "not_pod_bound"),
    ],
)
def test_each_denial(
    identity: Identity,
    namespaces: Collection[str] | None,
    service_accounts: Collection[str] | None,
    require_pod: bool,
    message: str,
    reason: str,
) -> None:
    with pytest.raises(AuthError) as info:
        authorize(identity, namespaces, service_accounts, require_pod)
    assert (info.value.message, info.value.reason, info.value.code) == (
        f"Token validation failed: {message}",
        reason,
        401,
    )


@pytest.mark.parametrize(
    ("identity", "namespaces", "service_accounts", "require_pod"),
    [
        (SA, None, None, False),
        (USER, None, None, False),  # no namespace allowlist: any user the API server vouched for
        (SA, {"dns-system", "kube-system"}, None, False),
        (SA, None, {EXTERNAL_DNS}, False),
        (POD_BOUND, {"dns-system"}, {EXTERNAL_DNS}, True),
    ],
)
def test_allowed(
    identity: Identity, namespaces: Collection[str] | None, service_accounts: Collection[str] | None, require_pod: bool
) -> None:
    assert authorize(identity, namespaces, service_accounts, require_pod) is None


def test_the_pod_binding_is_off_unless_asked_for() -> None:
    assert authorize(SA, None, None) is None
