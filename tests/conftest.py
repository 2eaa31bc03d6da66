"""Shared fixtures. The cluster is `flask_bindcar.testing.FakeCluster` (``fake_cluster`` fixture)."""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from flask_bindcar import AuthConfig, Identity
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.testing import FakeCluster, RealCluster


def api_client_for(kubeconfig: Path, *, retries: bool = True) -> client.ApiClient:
    """An official client configured only from ``kubeconfig``, never the process-wide default."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg, persist_config=False)
    if not retries:
        cfg.retries = False
    return client.ApiClient(cfg)


MakeAuth = Callable[..., Authenticator]

Who = tuple[str | None, str | None, str | None, tuple[str, ...], tuple[str, ...]]


def who(identity: Identity) -> Who:
    """Who got in: the username, namespace, ServiceAccount, groups and audiences of ``identity``."""
    return (identity.username, identity.namespace, identity.service_account, identity.groups, identity.audiences)


def service_account(namespace: str, name: str, audiences: tuple[str, ...] = ("bindcar",)) -> Who:
    """`who` of the ServiceAccount ``namespace/name``, as kube-apiserver vouches for it."""
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")
    return (f"system:serviceaccount:{namespace}:{name}", namespace, name, groups, audiences)


@pytest.fixture
def make_auth(fake_kubeconfig: Path) -> MakeAuth:
    """``make_auth(**overrides)``: an `Authenticator` in TokenReview mode against ``fake_cluster``."""

    def make(**overrides: Any) -> Authenticator:
        settings: dict[str, Any] = {"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig), **overrides}
        return Authenticator(AuthConfig.load(settings, environ={}))

    return make


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


class LeakWatch:
    """Every token and secret the suite uses, to be found in no log of the run.

    Fed where tests get their tokens: the clusters' fixtures (`RecordingFakeCluster`,
    `RecordingRealCluster`), the tests' own helpers (``WATCH.add(token)``) and `LITERAL_SECRETS`.
    Anything shaped like a JWT or a private key is a leak too, registered or not.
    """

    MIN_LENGTH = 8
    """Shorter strings (``abc``) occur in ordinary text; they are not secrets worth the name."""
    SHAPES = re.compile(
        r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    )

    def __init__(self, *literals: str):
        self._secrets: set[str] = set()
        for literal in literals:
            self.add(literal)

    def __len__(self) -> int:
        return len(self._secrets)

    def add(self, secret: str) -> str:
        """Watch for ``secret`` in the logs; returns it, so a helper can ``return WATCH.add(token)``."""
        if len(secret) >= self.MIN_LENGTH:
            self._secrets.add(secret)
        return secret

    def find(self, text: str) -> list[tuple[int, int]]:
        """The ``(start, end)`` of each secret or secret-shaped string in ``text``."""
        spans = [m.span() for m in self.SHAPES.finditer(text)]
        by_prefix: dict[str, list[str]] = {}
        for secret in self._secrets:
            by_prefix.setdefault(secret[: self.MIN_LENGTH], []).append(secret)
        if by_prefix:
            # One pass over the text for the few distinct prefixes, then the secrets behind each.
            prefixes = re.compile("(?=(" + "|".join(map(re.escape, by_prefix)) + "))")
            for match in prefixes.finditer(text):
                start = match.start()
                spans += [(start, start + len(s)) for s in by_prefix[match.group(1)] if text.startswith(s, start)]
        return sorted(spans)

    def leaks(self, directory: Path) -> list[str]:
        """``file:line: text`` for each leak in the ``*.log`` files of ``directory``, redacted."""
        found = []
        for path in sorted(directory.glob("*.log")):
            text = path.read_text(errors="replace")
            for start, end in self.find(text):
                line = text.count("\n", 0, start) + 1
                begin = text.rfind("\n", 0, start) + 1
                context = text[max(begin, start - 80) : start] + "<SECRET>" + text[end : end + 80].split("\n")[0]
                found.append(f"{path.name}:{line}: {context}")
        return found


LITERAL_SECRETS = (
    "s3cret",
    "not-the-secret-xyz",
    "invalid-token",
    "stale-token",
    "the-service-credential",
)
"""Tokens and shared secrets the tests write out themselves (Basic mode, BIND_API_TOKEN, kubeconfigs)."""

WATCH = LeakWatch(*LITERAL_SECRETS)
_log_dir: list[Path] = []


class RecordingFakeCluster(FakeCluster):
    """`FakeCluster` whose tokens are watched for in the logs; it behaves exactly as its base."""

    def token(self, *args: Any, **kwargs: Any) -> str:
        return WATCH.add(super().token(*args, **kwargs))

    def legacy_token(self, *args: Any, **kwargs: Any) -> str:
        return WATCH.add(super().legacy_token(*args, **kwargs))

    def add_caller(self, *args: Any, **kwargs: Any) -> str:
        return WATCH.add(super().add_caller(*args, **kwargs))


class RecordingRealCluster(RealCluster):
    """`RealCluster` whose tokens are watched for in the logs; it behaves exactly as its base."""

    def token(self, *args: Any, **kwargs: Any) -> str:
        return WATCH.add(super().token(*args, **kwargs))

    def add_caller(self, *args: Any, **kwargs: Any) -> str:
        return WATCH.add(super().add_caller(*args, **kwargs))


@pytest.fixture
def fake_cluster() -> Iterator[FakeCluster]:
    """The plugin's ``fake_cluster``, with its tokens watched."""
    with RecordingFakeCluster() as cluster:
        WATCH.add(cluster.caller_token)
        yield cluster


@pytest.fixture(scope="session")
def real_cluster(log_dir: Path) -> Iterator[RealCluster]:
    """The plugin's ``real_cluster``, with its tokens watched and its etcd and kube-apiserver logs kept."""
    with RecordingRealCluster() as cluster:
        WATCH.add(cluster.caller_token)
        try:
            yield cluster
        finally:
            for path in cluster.workdir.glob("*.log"):
                shutil.copyfile(path, log_dir / f"real-cluster-{path.name}")


def in_forked_child(check: Callable[[], bool]) -> bool:
    """``check()`` run in a forked child of this process; what it returned (False if it raised).

    A child that does not answer within 30 s is killed and fails the calling test, not the run.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, b"1" if check() else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answered, _, _ = select.select([read], [], [], 30)
    if not answered:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert answered, "the forked child did not answer within 30 s"
    return os.read(read, 1) == b"1"


def keep_log(name: str, *texts: str | None) -> None:
    """Add what a process the tests started printed to the run's logs (``<name>.log``), for the leak check."""
    if not _log_dir:
        return
    with (_log_dir[0] / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.log").open("a") as log:
        for text in texts:
            log.write(text or "")


CLUSTER_TIMEOUT = 300
"""Seconds per test marked cluster (setup.cfg's ``timeout`` for the rest): the first one starts the
session's RealCluster, and some wait for kube-apiserver's caches to expire."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CLUSTER_TIMEOUT))


@pytest.fixture(scope="session", autouse=True)
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every log of the run, at DEBUG, in one place; after the run none may hold a token or secret.

    In-process loggers write to ``pytest.log``; each gunicorn process writes its own file; the
    output of the CLI runs is added with `keep_log`; a RealCluster's logs are copied in.
    """
    directory = tmp_path_factory.mktemp("logs")
    _log_dir[:] = [directory]
    handler = logging.FileHandler(directory / "pytest.log")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield directory
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        _log_dir.clear()
    leaks = WATCH.leaks(directory)
    assert not leaks, f"tokens or secrets in the logs ({len(WATCH)} watched):\n" + "\n".join(leaks[:20])


@pytest.fixture
def serve(log_dir: Path, request: pytest.FixtureRequest) -> Callable[..., AbstractContextManager[str]]:
    """``with serve(target, env) as url:`` runs the target under gunicorn, logging into the run's log dir."""
    from tests.gunicorn_server import gunicorn

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)

    def start(target: str, env: dict[str, str], **kw: object) -> AbstractContextManager[str]:
        return gunicorn(target, env, log_dir / f"gunicorn-{name}.log", **kw)  # type: ignore[arg-type]

    return start
