"""A real control plane for tests: etcd and kube-apiserver on loopback, with FakeCluster's interface.

`RealCluster` starts the binaries of an envtest-style ``KUBEBUILDER_ASSETS`` folder (``etcd``,
``kube-apiserver``, ``kubectl``; this repository builds them with ``make cluster-assets``) on free
ports of 127.0.0.1, with generated certificates, ``--authorization-mode=RBAC`` and a
ServiceAccount issuer whose signing key it holds. Tokens come from the real TokenRequest API;
the ones it refuses to mint (expired, not yet valid) are signed with the cluster's own key.

Only the standard library, ``trustme`` and ``PyJWT`` are used: no Flask, no ``kubernetes`` client.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_bindcar.testing.cluster import (
    API_AUDIENCE,
    DEFAULT_CALLER,
    ISSUER,
    SA_PREFIX,
    InClusterFiles,
    Pod,
    ServiceAccount,
    bound_token_claims,
    write_incluster_files,
    write_kubeconfig_file,
)

ASSETS_ENV = "KUBEBUILDER_ASSETS"
DEFAULT_ASSETS = Path("build/kube-assets")
BINARIES = ("etcd", "kube-apiserver", "kubectl")
ADMIN = "bindcar-admin"
REVIEW_BINDING = "flask-bindcar-test-reviewer"
"""The ClusterRoleBinding that lets the default caller create TokenReviews (``system:auth-delegator``)."""
STATIC_USERS = ("jane",)
"""Non-ServiceAccount users with static tokens (``--token-auth-file``), fixed when the cluster starts."""


class AssetsMissing(RuntimeError):
    """The control-plane binaries are not where `RealCluster` looks for them."""


class ApiError(Exception):
    """A non-2xx answer of the API server; ``status`` is the code, ``body`` the decoded Status."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {message or body}")


def find_assets(assets: str | Path | None = None) -> Path:
    """The folder holding etcd, kube-apiserver and kubectl: ``assets``, ``$KUBEBUILDER_ASSETS`` or
    ``build/kube-assets``; `AssetsMissing` naming ``make cluster-assets`` when one is missing."""
    candidates = [Path(assets)] if assets is not None else []
    if not candidates and os.environ.get(ASSETS_ENV):
        candidates.append(Path(os.environ[ASSETS_ENV]))
    if not candidates:
        here = Path(__file__).resolve().parents[2] / DEFAULT_ASSETS
        candidates += [DEFAULT_ASSETS.resolve(), here]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in BINARIES):
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise AssetsMissing(
        f"RealCluster needs {', '.join(BINARIES)} in {ASSETS_ENV} (looked in {where}). "
        "Build them with `make cluster-assets` (needs Go), or point KUBEBUILDER_ASSETS at envtest's binaries."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RealCluster:
    """etcd and kube-apiserver, started for tests; a context manager like `FakeCluster`.

    ``api_audiences`` become ``--api-audiences`` (default: the issuer). ``static_users`` are the
    non-ServiceAccount users with static tokens; `add_caller` hands out their tokens.
    """

    def __init__(
        self,
        *,
        assets: str | Path | None = None,
        workdir: str | Path | None = None,
        static_users: Iterable[str] = STATIC_USERS,
        start_timeout: float = 60.0,
    ):
        self.assets = find_assets(assets)
        self._workdir_arg = Path(workdir).resolve() if workdir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._dir: Path | None = None
        self._static_users = {name: "static-" + uuid.uuid4().hex for name in static_users}
        self._admin_token = "admin-" + uuid.uuid4().hex
        self._start_timeout = start_timeout
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = _key_id(self._key.public_key())
        self._ca = trustme.CA()
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[BinaryIO] = []
        self._ssl: ssl.SSLContext | None = None
        self.port = 0
        self.caller_token = ""
        """A token of the default caller, ``system:serviceaccount:dns-system:bindcar``, which may review."""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RealCluster:
        if self._processes:
            return self
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self._workdir_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="real-cluster-")
            self._dir = Path(self._tmp.name)
        else:
            self._dir = self._workdir_arg
            self._dir.mkdir(parents=True, exist_ok=True)
        d = self._dir
        (d / "ca.crt").write_bytes(self._ca.cert_pem.bytes())
        serving = self._ca.issue_cert("127.0.0.1", "localhost")
        serving.private_key_pem.write_to_path(str(d / "apiserver.key"))
        serving.cert_chain_pems[0].write_to_path(str(d / "apiserver.crt"))
        (d / "sa.key").write_bytes(
            self._key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (d / "sa.pub").write_bytes(
            self._key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        rows = [f'{self._admin_token},{ADMIN},{ADMIN},"system:masters"']
        rows += [f"{token},{name},{name}" for name, token in self._static_users.items()]
        (d / "tokens.csv").write_text("\n".join(rows) + "\n")
        for name in ("tokens.csv", "sa.key", "apiserver.key"):
            (d / name).chmod(0o600)

        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={d / 'certs'}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                f"--api-audiences={API_AUDIENCE}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._ssl = ssl.create_default_context(cafile=str(d / "ca.crt"))
        self._wait_ready()
        self._setup_default_caller()

    def _spawn(self, name: str, args: list[str]) -> None:
        assert self._dir is not None
        log = (self._dir / f"{name}.log").open("wb")
        self._logs.append(log)
        process = subprocess.Popen(  # noqa: S603 - our own binaries, fixed arguments
            [str(self.assets / name), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._processes.append((name, process))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        last: object = None
        while time.monotonic() < deadline:
            for name, process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: {self._log_tail()}")
            try:
                if self._request("GET", "/readyz") == "ok":
                    return
            except (ApiError, OSError) as e:
                last = e
            time.sleep(0.25)
        raise TimeoutError(f"kube-apiserver not ready in {self._start_timeout:.0f} s ({last}): {self._log_tail()}")

    def _log_tail(self) -> str:
        if self._dir is None:
            return ""
        tails = []
        for name in ("etcd", "kube-apiserver"):
            path = self._dir / f"{name}.log"
            if path.exists():
                tails.append(f"--- {name}.log ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(tails)

    def _setup_default_caller(self) -> None:
        namespace, name = DEFAULT_CALLER.removeprefix(SA_PREFIX).split(":")
        self.create_service_account(namespace, name)
        self.grant_token_review(DEFAULT_CALLER)
        self.caller_token = self._token_request(namespace, name, None, 24 * 3600, None)

    def stop(self) -> None:
        for _, process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
        for _, process in reversed(self._processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        elif self._dir is not None:
            for name in ("etcd", "certs"):
                shutil.rmtree(self._dir / name, ignore_errors=True)

    def __enter__(self) -> RealCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def workdir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("RealCluster is not started")
        return self._dir

    @property
    def ca_path(self) -> Path:
        return self.workdir / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        return bytes(self._ca.cert_pem.bytes())

    @property
    def admin_kubeconfig(self) -> Path:
        """A kubeconfig for cluster-admin (group ``system:masters``), for kubectl."""
        path = self.workdir / "admin.kubeconfig"
        if not path.exists():
            self.write_kubeconfig(path, self._admin_token)
        return path

    # -- the REST API ------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - https only
        req.add_header("Authorization", f"Bearer {token or self._admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=30) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = raw.decode(errors="replace")
            raise ApiError(e.code, decoded) from None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode()

    def api(self, method: str, path: str, body: Any = None, *, token: str | None = None) -> Any:
        """Call the API server as cluster-admin (or with ``token``); `ApiError` on a non-2xx answer."""
        return self._request(method, path, body, token)

    def review(self, token: str, audiences: list[str] | None = None, *, caller: str | None = None) -> tuple[int, Any]:
        """POST a TokenReview as ``caller`` (default: `caller_token`): ``(HTTP status, body)``."""
        spec: dict[str, Any] = {"token": token}
        if audiences is not None:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        try:
            return 201, self._request(
                "POST", "/apis/authentication.k8s.io/v1/tokenreviews", body, caller or self.caller_token
            )
        except ApiError as e:
            return e.status, e.body

    def _ensure(self, path: str, body: dict[str, Any]) -> Any:
        try:
            return self._request("POST", path, body)
        except ApiError as e:
            if e.status != 409:
                raise
            return self._request("GET", f"{path}/{body['metadata']['name']}")

    def _ensure_namespace(self, namespace: str) -> None:
        self._ensure("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # -- cluster state -----------------------------------------------------------------------

    def create_service_account(self, namespace: str, name: str) -> ServiceAccount:
        self._ensure_namespace(namespace)
        sa = self._ensure(
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        )
        return ServiceAccount(namespace, name, sa["metadata"]["uid"])

    def delete_service_account(self, namespace: str, name: str) -> None:
        """Delete the account: its tokens stop authenticating."""
        with contextlib.suppress(ApiError):
            self._request("DELETE", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
        self._wait_gone(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")

    def create_pod(self, namespace: str, name: str, service_account: str = "default") -> Pod:
        """An unscheduled Pod running as ``service_account`` (created if missing); nothing runs it."""
        self.create_service_account(namespace, service_account)
        pod = self._ensure(
            f"/api/v1/namespaces/{namespace}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "serviceAccountName": service_account,
                    "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
                },
            },
        )
        return Pod(namespace, name, pod["metadata"]["uid"])

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete the pod at once (nothing runs it): tokens bound to it stop authenticating."""
        with contextlib.suppress(ApiError):
            self._request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}?gracePeriodSeconds=0")
        self._wait_gone(f"/api/v1/namespaces/{namespace}/pods/{name}")

    def _wait_gone(self, path: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._request("GET", path)
            except ApiError as e:
                if e.status == 404:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{path} still exists after {timeout:.0f} s")

    def grant_token_review(self, username: str) -> None:
        """Bind ``username`` to ``system:auth-delegator`` (create TokenReviews and SubjectAccessReviews)."""
        subject: dict[str, str]
        if username.startswith(SA_PREFIX):
            namespace, name = username.removeprefix(SA_PREFIX).split(":")
            subject = {"kind": "ServiceAccount", "name": name, "namespace": namespace}
        else:
            subject = {"kind": "User", "name": username, "apiGroup": "rbac.authorization.k8s.io"}
        self._ensure(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": _binding_name(username)},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:auth-delegator",
                },
                "subjects": [subject],
            },
        )
        self._wait_can_review(username, True)

    def revoke_token_review(self, username: str) -> None:
        with contextlib.suppress(ApiError):
            self._request("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{_binding_name(username)}")
        self._wait_can_review(username, False)

    def can_review(self, username: str) -> bool:
        """Whether RBAC lets ``username`` create TokenReviews (a SubjectAccessReview, as admin)."""
        groups = ["system:authenticated"]
        if username.startswith(SA_PREFIX):
            namespace = username.removeprefix(SA_PREFIX).split(":")[0]
            groups += ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
        review = self._request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": username,
                    "groups": groups,
                    "resourceAttributes": {
                        "group": "authentication.k8s.io",
                        "resource": "tokenreviews",
                        "verb": "create",
                    },
                },
            },
        )
        return bool(review["status"].get("allowed"))

    def _wait_can_review(self, username: str, allowed: bool, timeout: float = 10.0) -> None:
        """RBAC reaches the authorizer through a watch: wait until the decision has changed."""
        deadline = time.monotonic() + timeout
        while self.can_review(username) != allowed:
            if time.monotonic() > deadline:
                raise TimeoutError(f"RBAC did not {'grant' if allowed else 'revoke'} {username} in {timeout:.0f} s")
            time.sleep(0.05)

    def add_caller(self, username: str, *, can_review: bool = True) -> str:
        """The static token of ``username``, one of the `static_users` fixed at start."""
        token = self._static_users.get(username)
        if token is None:
            raise ValueError(
                f"{username!r} is not a static user of this RealCluster; static users are fixed at start: "
                f"RealCluster(static_users={sorted(self._static_users)!r} + [...])"
            )
        if can_review:
            self.grant_token_review(username)
        else:
            self.revoke_token_review(username)
        return token

    # -- tokens ------------------------------------------------------------------------------

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
        """A bound ServiceAccount token from the TokenRequest API, as ``kubectl create token`` gets.

        The account (and the pod, when given) is created if it does not exist yet. TokenRequest
        refuses lifetimes under 10 minutes, so a shorter or negative ``expires_in``, or a
        ``not_before``, gives a token signed here with the cluster's own signing key instead.
        """
        sa = self.create_service_account(namespace, name)
        bound = self.create_pod(namespace, pod, service_account=name) if pod is not None else None
        auds = list(audiences) if audiences is not None else None
        if expires_in >= 600 and not_before is None:
            return self._token_request(namespace, name, auds, int(expires_in), bound)
        claims = bound_token_claims(sa, auds, expires_in, bound, not_before)
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})

    def _token_request(
        self, namespace: str, name: str, audiences: list[str] | None, seconds: int, pod: Pod | None
    ) -> str:
        spec: dict[str, Any] = {"expirationSeconds": seconds}
        if audiences is not None:
            spec["audiences"] = audiences
        if pod is not None:
            spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": pod.uid}
        answer = self._request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(answer["status"]["token"])

    # -- files for clients -------------------------------------------------------------------

    def write_kubeconfig(self, path: str | Path, caller: str | None = None, *, namespace: str = "default") -> Path:
        """Write a kubeconfig presenting ``caller`` (default: `caller_token`, the app's own identity)."""
        token = caller if caller is not None else self.caller_token
        return write_kubeconfig_file(path, "real-cluster", self.url, self.ca_path, token, namespace)

    def incluster_files(
        self, directory: str | Path, caller: str | None = None, *, namespace: str = "dns-system"
    ) -> InClusterFiles:
        """Write the files of a ServiceAccount mount (``token``, ``ca.crt``, ``namespace``)."""
        token = caller if caller is not None else self.caller_token
        return write_incluster_files(directory, "127.0.0.1", self.port, self.ca_pem, token, namespace)

    def kubectl(self, *args: str, kubeconfig: Path | None = None, input: str | None = None) -> str:
        """Run the real kubectl against this cluster (as cluster-admin by default); its stdout."""
        done = subprocess.run(  # noqa: S603 - our own binary
            [str(self.assets / "kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout


def _binding_name(username: str) -> str:
    if username == DEFAULT_CALLER:
        return REVIEW_BINDING
    return f"{REVIEW_BINDING}-{hashlib.sha256(username.encode()).hexdigest()[:10]}"


def _key_id(public_key: rsa.RSAPublicKey) -> str:
    """kube-apiserver's key ID: unpadded base64url of the SHA-256 of the key's DER form."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
