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
    from flask_bindcar.testing import FakeCluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        action="store_true",
        default=False,
        help="run tests marked @pytest.mark.cluster against the real cluster of the current kubeconfig",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs a real Kubernetes cluster (run with --cluster)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--cluster"):
        return
    skip = pytest.mark.skip(reason="needs a real Kubernetes cluster; run with --cluster")
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
