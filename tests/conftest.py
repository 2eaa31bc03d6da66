"""Shared fixtures. The cluster is `flask_bindcar.testing.FakeCluster` (``fake_cluster`` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client, config

from flask_bindcar.testing import FakeCluster


def api_client_for(kubeconfig: Path, *, retries: bool = True) -> client.ApiClient:
    """An official client configured only from ``kubeconfig``, never the process-wide default."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg, persist_config=False)
    if not retries:
        cfg.retries = False
    return client.ApiClient(cfg)


@pytest.fixture
def auth_api(fake_kubeconfig: Path) -> client.AuthenticationV1Api:
    return client.AuthenticationV1Api(api_client_for(fake_kubeconfig, retries=False))


@pytest.fixture
def cluster(fake_cluster: FakeCluster) -> FakeCluster:
    return fake_cluster


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests see only the configuration they set: no BIND_*/KUBE* from outside, no ~/.kube/config."""
    import os

    for name in list(os.environ):
        if name.startswith(("BIND_", "BINDCAR_", "KUBE")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
