"""Test without a cluster: a kube-apiserver stand-in and pytest fixtures.

Needs the ``testing`` extra (``pip install 'flask-bindcar[testing]'``). Nothing here imports
Flask or the ``kubernetes`` client, so any test suite can use it::

    from flask_bindcar.testing import FakeCluster

    with FakeCluster() as cluster:
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])

With pytest the ``fake_cluster`` and ``fake_kubeconfig`` fixtures are registered automatically.

`RealCluster` has the same interface over a real etcd and kube-apiserver (``make cluster-assets``
builds them); its session-scoped ``real_cluster`` fixture runs tests marked ``cluster`` under
``pytest --cluster``. `Cluster` is that interface, and the ``any_cluster`` fixture runs one test
body on both: on the stand-in always, and on the real server under ``pytest --cluster``.

The rooms: `interface` (the `Cluster` protocol, the objects it names, the claims and files both
clusters write), `rbac` (a grant as a rule, its role and binding); the stand-in's state in
`cluster`, what its endpoints need of that state in `state`, its RBAC in `authorizer`, its
ServiceAccount issuer (keys, discovery, JWKS) in `oidc`, its HTTPS server in `tls`, routed by
`server` to the endpoints of `reviews` and `objects` (on `handler`, with `discovery` and
`protobuf`); the real control plane's processes in `controlplane` and its API helpers in `real`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

EXTRA_MODULES = ("jwt", "trustme", "cryptography")
"""What the ``testing`` extra installs; without one of them the import says which extra to add."""

try:
    from flask_bindcar.testing.cluster import FakeCluster, token_hash
    from flask_bindcar.testing.interface import (
        API_AUDIENCE,
        DEFAULT_CALLER,
        ISSUER,
        Cluster,
        InClusterFiles,
        Pod,
        ServiceAccount,
    )
    from flask_bindcar.testing.rbac import Rule
    from flask_bindcar.testing.real import AssetsMissing, RealCluster
    from flask_bindcar.testing.state import FAULTS, Fault
except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] not in EXTRA_MODULES:
        raise
    raise ModuleNotFoundError(
        f"flask_bindcar.testing needs the testing extra: pip install 'flask-bindcar[testing]' "
        f"(no module named {e.name!r})",
        name=e.name,
    ) from e

__all__ = [
    "API_AUDIENCE",
    "DEFAULT_CALLER",
    "FAULTS",
    "ISSUER",
    "AssetsMissing",
    "Cluster",
    "FakeCluster",
    "Fault",
    "InClusterFiles",
    "Pod",
    "RealCluster",
    "Rule",
    "ServiceAccount",
    "token_hash",
]

if TYPE_CHECKING:

    def _both_are_clusters(fake: FakeCluster, real: RealCluster) -> tuple[Cluster, Cluster]:
        """Never called: mypy checks here that both classes satisfy the `Cluster` protocol."""
        return fake, real
