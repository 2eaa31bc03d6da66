"""pytest fixtures for testing services protected by flask-bindcar (registered via ``pytest11``).

Imports nothing beyond pytest until a fixture is used, so installing flask-bindcar costs other
test suites nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from flask_bindcar.testing import FakeCluster, RealCluster

SKIP_REASON = "real kube-apiserver test: run with --cluster (make test-cluster builds the binaries with Go)"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        action="store_true",
        default=False,
        help="run tests marked @pytest.mark.cluster against a RealCluster (etcd and kube-apiserver from "
        "KUBEBUILDER_ASSETS; a missing binary fails them instead of skipping)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs a real kube-apiserver (RealCluster); run with --cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--cluster"):
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "cluster" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    """A running `flask_bindcar.testing.FakeCluster`, stopped after the test."""
    try:
        from flask_bindcar.testing import FakeCluster
    except ImportError as e:  # pragma: no cover - depends on the user's environment
        pytest.fail(f"fake_cluster needs the testing extra: pip install 'flask-bindcar[testing]' ({e})")
    with FakeCluster() as cluster:
        yield cluster


@pytest.fixture
def fake_kubeconfig(fake_cluster: FakeCluster, tmp_path: Path) -> Path:
    """A kubeconfig for `fake_cluster`, presenting its default caller's token."""
    return fake_cluster.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealCluster]:
    """A `flask_bindcar.testing.RealCluster` (etcd and kube-apiserver) shared by the whole session."""
    try:
        from flask_bindcar.testing.real import RealCluster
    except ImportError as e:  # pragma: no cover - depends on the user's environment
        pytest.fail(f"real_cluster needs the testing extra: pip install 'flask-bindcar[testing]' ({e})")
    with RealCluster() as cluster:
        yield cluster


@pytest.fixture
def real_kubeconfig(real_cluster: RealCluster, tmp_path: Path) -> Path:
    """A kubeconfig for `real_cluster`, presenting the app's own ServiceAccount token."""
    return real_cluster.write_kubeconfig(tmp_path / "kubeconfig")
