"""What both clusters offer, and what they hand a client in the same form.

`Cluster` is the interface `FakeCluster` and `RealCluster` both satisfy (mypy checks it in
``flask_bindcar.testing``), so a test written against it runs on either; the pytest plugin's
``any_cluster`` fixture gives one of each. Beside it are the objects that interface speaks of
(`ServiceAccount`, `Pod`, `InClusterFiles`) and what both clusters write the same way: the claims
of a bound ServiceAccount token, a kubeconfig, and the files of a ServiceAccount mount.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flask_bindcar.testing.rbac import Rule, SubjectKind

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ISSUER = "https://kubernetes.default.svc.cluster.local"
LEGACY_ISSUER = "kubernetes/serviceaccount"
DEFAULT_CALLER = "system:serviceaccount:dns-system:bindcar"
SA_PREFIX = "system:serviceaccount:"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ServiceAccount:
    namespace: str
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=now_rfc3339, compare=False)

    @property
    def username(self) -> str:
        return f"{SA_PREFIX}{self.namespace}:{self.name}"


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=now_rfc3339, compare=False)
    service_account: str = "default"


@dataclass(frozen=True)
class InClusterFiles:
    """The files of a ServiceAccount mount, and the environment kubelet would set beside them."""

    token: Path
    ca_crt: Path
    namespace: Path
    environ: dict[str, str]


class Cluster(Protocol):
    """The interface `FakeCluster` and `RealCluster` share: one test body for both.

    A running cluster (a context manager, or `start` / `stop`) that mints bound ServiceAccount
    tokens and rotates the key it signs them with (`rotate_signing_key`), holds accounts and pods
    whose deletion invalidates their tokens, grants RBAC (`allow`, `grant_token_review`) and writes
    what the official client reads (`write_kubeconfig`, `incluster_files`). What only one of them
    has stays on its class: faults, latency and counters on `FakeCluster`; ``api``, ``kubectl``
    and ``admin_kubeconfig`` on `RealCluster`.
    """

    caller_token: str
    """A token of the default caller, ``system:serviceaccount:dns-system:bindcar``, which may review."""

    @property
    def url(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def workdir(self) -> Path: ...

    @property
    def ca_path(self) -> Path: ...

    @property
    def ca_pem(self) -> bytes: ...

    def start(self) -> Cluster: ...

    def stop(self) -> None: ...

    def __enter__(self) -> Cluster: ...

    def __exit__(self, *exc: object) -> None: ...

    def token(
        self,
        namespace: str,
        name: str,
        audiences: Iterable[str] | None = None,
        expires_in: float = 3600,
        pod: str | None = None,
        *,
        not_before: float | None = None,
    ) -> str:
        """A bound ServiceAccount token, as ``kubectl create token``; creates the account (and pod)."""
        ...

    def rotate_signing_key(self) -> str:
        """Sign new tokens with a new key, tokens of the old one still accepted (kube-apiserver
        restarted with one more ``--service-account-key-file``); both published at
        ``/openid/v1/jwks``. The new key's ``kid``."""
        ...

    def create_service_account(self, namespace: str, name: str) -> ServiceAccount: ...

    def delete_service_account(self, namespace: str, name: str) -> None: ...

    def create_pod(self, namespace: str, name: str, service_account: str = "default") -> Pod: ...

    def delete_pod(self, namespace: str, name: str) -> None: ...

    def grant_token_review(self, username: str) -> None: ...

    def revoke_token_review(self, username: str) -> None: ...

    def can_review(self, username: str) -> bool: ...

    def add_caller(self, username: str, *, can_review: bool = True) -> str: ...

    def allow(
        self,
        subject: str,
        verb: str | Iterable[str],
        resource: str | Iterable[str] | None = None,
        *,
        group: str | Iterable[str] = "",
        namespace: str | None = None,
        name: str | Iterable[str] | None = None,
        path: str | Iterable[str] | None = None,
        binding: str | None = None,
        kind: SubjectKind | None = None,
    ) -> Rule:
        """Let ``subject`` ``verb`` a resource or a path, as an RBAC role and binding would; returns
        once a SubjectAccessReview says so."""
        ...

    def write_kubeconfig(self, path: str | Path, caller: str | None = None, *, namespace: str = "default") -> Path: ...

    def incluster_files(
        self, directory: str | Path, caller: str | None = None, *, namespace: str = "dns-system"
    ) -> InClusterFiles: ...


def bound_token_claims(
    sa: ServiceAccount,
    audiences: Iterable[str] | None,
    expires_in: float,
    pod: Pod | None = None,
    not_before: float | None = None,
    issuer: str = ISSUER,
) -> dict[str, Any]:
    """The claims kube-apiserver puts in a bound ServiceAccount token (TokenRequest), ``iss`` its ``issuer``."""
    now = int(time.time())
    k8s: dict[str, Any] = {"namespace": sa.namespace, "serviceaccount": {"name": sa.name, "uid": sa.uid}}
    if pod is not None:
        k8s["pod"] = {"name": pod.name, "uid": pod.uid}
    return {
        "aud": list(audiences) if audiences is not None else [API_AUDIENCE],
        "exp": now + int(expires_in),
        "iat": now,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": k8s,
        "nbf": int(not_before) if not_before is not None else now,
        "sub": sa.username,
    }


def write_kubeconfig_file(path: str | Path, name: str, server: str, ca_path: Path, token: str, namespace: str) -> Path:
    """A kubeconfig (JSON, which every YAML loader reads) presenting ``token`` to ``server``; mode 0600."""
    path = Path(path)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca_path)}}],
        "users": [{"name": "caller", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "caller", "namespace": namespace}}],
        "current-context": name,
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def write_incluster_files(
    directory: str | Path, host: str, port: int, ca_pem: bytes, token: str, namespace: str
) -> InClusterFiles:
    """The files of a ServiceAccount mount, and the environment the kubelet sets beside them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = InClusterFiles(
        token=directory / "token",
        ca_crt=directory / "ca.crt",
        namespace=directory / "namespace",
        environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port)},
    )
    files.token.write_text(token)
    files.ca_crt.write_bytes(ca_pem)
    files.namespace.write_text(namespace)
    return files
