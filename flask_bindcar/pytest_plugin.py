"""pytest fixtures for testing services protected by flask-bindcar (registered via ``pytest11``).

``fake_cluster`` and ``fake_kubeconfig`` give the stand-in; ``real_cluster`` and
``real_kubeconfig`` a real kube-apiserver, for tests marked ``cluster`` under ``pytest --cluster``;
``any_cluster`` and ``any_kubeconfig`` run one test body on both: on the stand-in always, and on
the real server too under ``pytest --cluster``; ``two_real_clusters`` gives two real control
planes with different issuers (``east`` and ``west``), for services that trust several clusters.
Imports nothing beyond pytest until a fixture is used, so installing flask-bindcar costs other
test suites nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

if TYPE_CHECKING:
    from flask_bindcar.testing import Cluster, FakeCluster, RealCluster

SKIP_REASON = "real kube-apiserver test: run with --cluster (make test-cluster builds the binaries with Go)"
TESTING_EXTRA = (
    "{fixture} needs flask-bindcar's testing extra, which is not installed (no module named {module!r}). "
    "flask-bindcar is not on PyPI yet: from a checkout, pip install './flask-bindcar[testing]'; "
    "from a wheel built there, pip install 'dist/flask_bindcar-<version>-py3-none-any.whl[testing]'"
)
"""The README's install advice, from a checkout or a wheel: a bare package name is not on PyPI."""
TWO_CLUSTER_ISSUERS = {"east": "https://east.example.com", "west": "https://west.example.com"}
"""The ``--service-account-issuer`` of each of `two_real_clusters`, by cluster name."""


class TwoClusters(NamedTuple):
    """`two_real_clusters`: ``east, west = two_real_clusters``, or by name (``.east``, `by_name`)."""

    east: RealCluster
    west: RealCluster

    def by_name(self) -> dict[str, RealCluster]:
        return {"east": self.east, "west": self.west}

    def entries(self, directory: Path) -> list[dict[str, Any]]:
        """A ``clusters`` setting for both: per cluster its ``name``, ``issuer`` and a
        ``kubeconfig`` written in ``directory`` (``east.kubeconfig``...) presenting the cluster's
        default caller, which may review tokens."""
        return [
            {
                "name": name,
                "issuer": cluster.issuer,
                "kubeconfig": str(cluster.write_kubeconfig(directory / f"{name}.kubeconfig")),
            }
            for name, cluster in self.by_name().items()
        ]


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


def _testing(fixture: str) -> ModuleType:
    """``flask_bindcar.testing``, or the fixture fails saying how to install the extra."""
    try:
        import flask_bindcar.testing
    except ModuleNotFoundError as e:
        missing = e.name
    else:
        return flask_bindcar.testing
    # Outside the except block: the failure then carries no chained ImportError, and its message
    # is the whole advice.
    pytest.fail(TESTING_EXTRA.format(fixture=fixture, module=missing), pytrace=False)


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    """A running `flask_bindcar.testing.FakeCluster`, stopped after the test."""
    with _testing("fake_cluster").FakeCluster() as cluster:
        yield cluster


@pytest.fixture
def fake_kubeconfig(fake_cluster: FakeCluster, tmp_path: Path) -> Path:
    """A kubeconfig for `fake_cluster`, presenting its default caller's token."""
    return fake_cluster.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealCluster]:
    """A `flask_bindcar.testing.RealCluster` (etcd and kube-apiserver) shared by the whole session."""
    with _testing("real_cluster").RealCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def two_real_clusters() -> Iterator[TwoClusters]:
    """Two running `flask_bindcar.testing.RealCluster` objects shared by the session, ``east`` and
    ``west`` (a `TwoClusters`): each its own etcd and kube-apiserver (ports, files, state), with the
    issuer `TWO_CLUSTER_ISSUERS` names. Started side by side (some 10 s on 2 cores) and stopped
    together.

    Like `real_cluster`, for tests marked ``cluster``. Each has the default caller, which may
    review; an account a test creates under the same name in both is two identities, which a
    service trusting both must keep apart. A test that stops one's kube-apiserver
    (`RealCluster.stop_apiserver`) starts it again before it ends.
    """
    testing = _testing("two_real_clusters")
    clusters = [testing.RealCluster(issuer=issuer) for issuer in TWO_CLUSTER_ISSUERS.values()]
    try:
        _each(clusters, "start")  # a cluster whose start fails stops itself
        yield TwoClusters(*clusters)
    finally:
        _each(clusters, "stop")


def _each(clusters: list[RealCluster], method: str) -> None:
    """Call ``method`` of every cluster at once, in threads; the first failure raised once all are done."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(clusters)) as pool:
        done = [pool.submit(getattr(cluster, method)) for cluster in clusters]
    for future in done:
        future.result()


@pytest.fixture
def real_kubeconfig(real_cluster: RealCluster, tmp_path: Path) -> Path:
    """A kubeconfig for `real_cluster`, presenting the app's own ServiceAccount token."""
    return real_cluster.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.cluster)])
def any_cluster(request: pytest.FixtureRequest) -> Cluster:
    """`fake_cluster`, then `real_cluster` (marked ``cluster``: only under ``pytest --cluster``).

    A test that takes it runs once per cluster (``test_x[fake]``, ``test_x[real]``) through the
    interface both share, `flask_bindcar.testing.Cluster`. The fake one is the test's own; the
    real one is the session's, so use fresh namespace or account names on it.
    """
    cluster: Cluster = request.getfixturevalue(f"{request.param}_cluster")
    return cluster


@pytest.fixture
def any_kubeconfig(any_cluster: Cluster, tmp_path: Path) -> Path:
    """A kubeconfig for `any_cluster`, presenting the app's own token (it may review tokens)."""
    return any_cluster.write_kubeconfig(tmp_path / "kubeconfig")
