"""Shared fixtures. The cluster is `flask_bindcar.testing.FakeCluster` (``fake_cluster`` fixture)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from flask_bindcar import AuthConfig
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.testing import FakeCluster


def api_client_for(kubeconfig: Path, *, retries: bool = True) -> client.ApiClient:
    """An official client configured only from ``kubeconfig``, never the process-wide default."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg, persist_config=False)
    if not retries:
        cfg.retries = False
    return client.ApiClient(cfg)


MakeAuth = Callable[..., Authenticator]


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


# Anything shaped like a JWT, and the shared secrets the suite uses.
LEAK = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|s3cret")


@pytest.fixture(scope="session", autouse=True)
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every log of the run, at DEBUG, in one place; after the run none may contain a token.

    In-process loggers write to ``pytest.log``; each gunicorn process writes its own file.
    """
    directory = tmp_path_factory.mktemp("logs")
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
    leaks = []
    for path in sorted(directory.glob("*.log")):
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if LEAK.search(line):
                leaks.append(f"{path.name}:{n}: {LEAK.sub('<TOKEN>', line)[:200]}")
    assert not leaks, "tokens in the logs:\n" + "\n".join(leaks[:20])


@pytest.fixture
def serve(log_dir: Path, request: pytest.FixtureRequest) -> Callable[..., AbstractContextManager[str]]:
    """``with serve(target, env) as url:`` runs the target under gunicorn, logging into the run's log dir."""
    from tests.gunicorn_server import gunicorn

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)

    def start(target: str, env: dict[str, str], **kw: object) -> AbstractContextManager[str]:
        return gunicorn(target, env, log_dir / f"gunicorn-{name}.log", **kw)  # type: ignore[arg-type]

    return start
