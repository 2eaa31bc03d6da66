"""Against a real cluster (``pytest --cluster``): the current kubeconfig, a real ServiceAccount token.

Skipped unless asked for. Needs permission to create ServiceAccounts and tokens in the namespace
``BINDCAR_TEST_NAMESPACE`` (default ``default``) and to create TokenReviews.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flask_bindcar import AuthConfig, AuthError
from flask_bindcar.authenticator import Authenticator

pytestmark = pytest.mark.cluster


@pytest.fixture
def real_token() -> Iterator[tuple[str, str, str]]:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(client_configuration=cfg, persist_config=False)
    core = client.CoreV1Api(client.ApiClient(cfg))
    namespace = os.environ.get("BINDCAR_TEST_NAMESPACE", "default")
    name = f"bindcar-test-{uuid.uuid4().hex[:8]}"
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    try:
        request: Any = {"spec": {"audiences": ["bindcar"], "expirationSeconds": 600}}
        token = core.create_namespaced_service_account_token(name, namespace, request).status.token
        yield namespace, name, token
    finally:
        core.delete_namespaced_service_account(name, namespace)


def test_real_token_is_accepted_and_the_allowlists_apply(real_token: tuple[str, str, str]) -> None:
    namespace, name, token = real_token
    environ = {k: v for k, v in os.environ.items() if k == "KUBECONFIG"}
    identity = Authenticator(AuthConfig.load({"mode": "tokenreview"}, environ=environ)).authenticate(f"Bearer {token}")
    assert identity.username == f"system:serviceaccount:{namespace}:{name}"
    assert identity.audiences == ("bindcar",)

    other = "bindcar-test-elsewhere" if namespace != "bindcar-test-elsewhere" else "default"
    strict = Authenticator(AuthConfig.load({"mode": "tokenreview", "allowed_namespaces": other}, environ=environ))
    with pytest.raises(AuthError) as info:
        strict.authenticate(f"Bearer {token}")
    assert info.value.message == f"Token validation failed: ServiceAccount from unauthorized namespace: {namespace}"


def test_real_cluster_rejects_an_invalid_token() -> None:
    environ = {k: v for k, v in os.environ.items() if k == "KUBECONFIG"}
    with pytest.raises(AuthError) as info:
        Authenticator(AuthConfig.load({"mode": "tokenreview"}, environ=environ)).authenticate("Bearer invalid-token")
    # The guide's "Testing Invalid Tokens" example, as a real kube-apiserver answers it.
    assert info.value.message == "Token validation failed: token not authenticated"
