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
``pytest --cluster``.
"""

from __future__ import annotations

EXTRA_MODULES = ("jwt", "trustme", "cryptography")
"""What the ``testing`` extra installs; without one of them the import says which extra to add."""

try:
    from flask_bindcar.testing.cluster import (
        API_AUDIENCE,
        DEFAULT_CALLER,
        FAULTS,
        ISSUER,
        FakeCluster,
        Fault,
        InClusterFiles,
        Pod,
        ServiceAccount,
        token_hash,
    )
    from flask_bindcar.testing.real import AssetsMissing, RealCluster
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
    "FakeCluster",
    "Fault",
    "InClusterFiles",
    "Pod",
    "RealCluster",
    "ServiceAccount",
    "token_hash",
]
