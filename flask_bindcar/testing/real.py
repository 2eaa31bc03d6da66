"""A real control plane for tests: etcd and kube-apiserver on loopback, with FakeCluster's interface.

`RealCluster` starts the binaries of an envtest-style ``KUBEBUILDER_ASSETS`` folder (``etcd``,
``kube-apiserver``, ``kubectl``; this repository builds them with ``make cluster-assets``) on free
ports of 127.0.0.1, with generated certificates, ``--authorization-mode=RBAC`` and a
ServiceAccount issuer (``issuer=``, `ISSUER` by default) whose signing keys it holds, rotated by
restarting kube-apiserver (the processes are `flask_bindcar.testing.controlplane`'s). Several run
at once from the same binaries, each with its own ports, files and etcd: two of them with
different issuers are the two clusters of a multi-cluster test. Everything else goes through the real API: accounts,
pods and tokens from TokenRequest, RBAC grants as Roles and bindings that count once a
SubjectAccessReview says so. The tokens TokenRequest refuses to mint (expired, not yet valid) are
signed with the cluster's own key.

Only the standard library, ``trustme`` and ``PyJWT`` are used: no Flask, no ``kubernetes`` client.
It runs past 500 lines because each helper of the interface both clusters share is here once, in
REST calls, with the waits RBAC and deletions need before a test may rely on them.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flask_bindcar.testing.controlplane import AssetsMissing, ControlPlane, find_assets
from flask_bindcar.testing.interface import (
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
from flask_bindcar.testing.rbac import GROUP, Rule, SubjectKind, groups_of, new_rule

__all__ = ["REVIEW_RESOURCES", "STATIC_USERS", "ApiError", "AssetsMissing", "RealCluster", "find_assets"]

REVIEW_BINDING = "flask-bindcar-test-reviewer"
"""The ClusterRoleBinding that lets the default caller create TokenReviews (``system:auth-delegator``)."""
STATIC_USERS = ("jane",)
"""Non-ServiceAccount users with static tokens (``--token-auth-file``), fixed when the cluster starts."""
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
RBAC_WAIT = 10.0
"""Seconds a grant or a revocation may take to reach the RBAC authorizer (it learns them by a watch)."""
REVIEW_RESOURCES = ("tokenreviews", "subjectaccessreviews")
"""What `RealCluster.review_counts` counts: the reviews a service protected by flask-bindcar sends."""


class ApiError(Exception):
    """A non-2xx answer of the API server; ``status`` is the code, ``body`` the decoded Status."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {message or body}")


class RealCluster:
    """etcd and kube-apiserver, started for tests; a context manager like `FakeCluster`.

    ``static_users`` are the non-ServiceAccount users with static tokens; `add_caller` hands out
    their tokens. ``issuer`` is kube-apiserver's ``--service-account-issuer``, the ``iss`` of its
    tokens (`ISSUER`, the in-cluster default, unless given), and its ``--api-audiences``, the
    audience of a token minted without one: two clusters with different issuers are two clusters a
    token's ``iss`` tells apart.
    """

    def __init__(
        self,
        *,
        assets: str | Path | None = None,
        workdir: str | Path | None = None,
        static_users: Iterable[str] = STATIC_USERS,
        start_timeout: float = 60.0,
        issuer: str = ISSUER,
    ):
        self.assets = find_assets(assets)
        self._plane = ControlPlane(
            self.assets,
            Path(workdir).resolve() if workdir is not None else None,
            static_users,
            start_timeout,
            issuer,
        )
        self._bindings = itertools.count(1)
        self.caller_token = ""
        """A token of the default caller, ``system:serviceaccount:dns-system:bindcar``, which may review."""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RealCluster:
        if self._plane.running:
            return self
        self._plane.start()
        try:
            self._setup_default_caller()
        except BaseException:
            self.stop()
            raise
        return self

    def _setup_default_caller(self) -> None:
        namespace, name = DEFAULT_CALLER.removeprefix(SA_PREFIX).split(":")
        self.create_service_account(namespace, name)
        self.grant_token_review(DEFAULT_CALLER)
        self.caller_token = self._token_request(namespace, name, None, 24 * 3600, None)

    def stop(self) -> None:
        self._plane.stop()

    def __enter__(self) -> RealCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def issuer(self) -> str:
        """kube-apiserver's ``--service-account-issuer``: the ``iss`` of this cluster's tokens."""
        return self._plane.issuer

    @property
    def port(self) -> int:
        return self._plane.port

    @property
    def url(self) -> str:
        return self._plane.url

    @property
    def workdir(self) -> Path:
        if self._plane.dir is None:
            raise RuntimeError("RealCluster is not started")
        return self._plane.dir

    @property
    def ca_path(self) -> Path:
        return self.workdir / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        return self._plane.ca_pem

    @property
    def admin_kubeconfig(self) -> Path:
        """A kubeconfig for cluster-admin (group ``system:masters``), for kubectl."""
        path = self.workdir / "admin.kubeconfig"
        if not path.exists():
            self.write_kubeconfig(path, self._plane.admin_token)
        return path

    # -- the REST API ------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310 - https only
        req.add_header("Authorization", f"Bearer {token or self._plane.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._plane.ssl, timeout=30) as response:  # noqa: S310
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
        return Pod(namespace, name, pod["metadata"]["uid"], service_account=service_account)

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
        attributes = {"group": "authentication.k8s.io", "resource": "tokenreviews", "verb": "create"}
        return self.access_allowed({"user": username, "groups": groups_of(username), "resourceAttributes": attributes})

    def _wait_can_review(self, username: str, allowed: bool, timeout: float = RBAC_WAIT) -> None:
        """RBAC reaches the authorizer through a watch: wait until the decision has changed."""
        deadline = time.monotonic() + timeout
        while self.can_review(username) != allowed:
            if time.monotonic() > deadline:
                raise TimeoutError(f"RBAC did not {'grant' if allowed else 'revoke'} {username} in {timeout:.0f} s")
            time.sleep(0.05)

    def access_allowed(self, spec: dict[str, Any]) -> bool:
        """Whether RBAC allows the SubjectAccessReview ``spec`` (asked as cluster-admin)."""
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        return bool(self._request("POST", SAR_PATH, body)["status"].get("allowed"))

    def add_caller(self, username: str, *, can_review: bool = True) -> str:
        """The static token of ``username``, one of the `static_users` fixed at start."""
        token = self._plane.static_tokens.get(username)
        if token is None:
            raise ValueError(
                f"{username!r} is not a static user of this RealCluster; static users are fixed at start: "
                f"RealCluster(static_users={sorted(self._plane.static_tokens)!r} + [...])"
            )
        if can_review:
            self.grant_token_review(username)
        else:
            self.revoke_token_review(username)
        return token

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
        """Let ``subject`` (a username or a group) ``verb`` a resource or a path: `FakeCluster.allow`
        made real, with the same arguments and the same `Rule` returned.

        Creates a Role and RoleBinding in ``namespace`` (the namespace too, when missing), or a
        ClusterRole and ClusterRoleBinding, both named ``binding`` (generated when not given), and
        returns once a SubjectAccessReview of the rule's first verb on its first resource or path
        (`Rule.probe`) is allowed: RBAC learns of new objects through a watch, so the grant is in
        force when this returns. A ``binding`` that exists already is kube-apiserver's 409
        (`ApiError`). `TimeoutError` if RBAC has not agreed in 10 s.
        """
        rule = new_rule(
            binding or f"real-rbac-{next(self._bindings)}",
            subject,
            verb,
            resource,
            group=group,
            namespace=namespace,
            name=name,
            path=path,
            kind=kind,
        )
        role, bound = rule.objects()
        where = f"/apis/{GROUP}/v1" + (f"/namespaces/{namespace}" if namespace else "")
        if namespace:
            self._ensure_namespace(namespace)
        self._request("POST", f"{where}/{role['kind'].lower()}s", role)
        self._request("POST", f"{where}/{bound['kind'].lower()}s", bound)
        probe, deadline = rule.probe(), time.monotonic() + RBAC_WAIT
        while not self.access_allowed(probe):
            if time.monotonic() > deadline:
                raise TimeoutError(f"RBAC did not grant {probe} in {RBAC_WAIT:.0f} s")
            time.sleep(0.05)
        return rule

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
        claims = bound_token_claims(sa, auds if auds is not None else [self.issuer], expires_in, bound, not_before)
        claims["iss"] = self.issuer
        return self._plane.sign(claims)

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT of any ``claims``, signed with the cluster's own ServiceAccount key (for tokens no
        TokenRequest mints: issued in the future, missing claims...)."""
        return self._plane.sign(claims)

    def rotate_signing_key(self) -> str:
        """Sign new tokens with a new key while the old ones stay valid: kube-apiserver restarted
        with the new key as ``--service-account-signing-key-file`` and one more
        ``--service-account-key-file``, as `FakeCluster.rotate_signing_key`. etcd keeps running,
        so accounts, pods and grants survive; ``/openid/v1/jwks`` publishes every key, oldest
        first. Returns the new key's ``kid`` once kube-apiserver is ready again and RBAC answers
        (its authorizer learns the grants anew by a watch after the restart)."""
        kid = self._plane.rotate_signing_key()
        self._wait_can_review(DEFAULT_CALLER, True)
        return kid

    # -- outages and counters ----------------------------------------------------------------

    @property
    def apiserver_running(self) -> bool:
        """Whether kube-apiserver runs (False after `stop_apiserver`, until `start_apiserver`)."""
        return self._plane.apiserver_running

    def stop_apiserver(self) -> None:
        """Stop this cluster's kube-apiserver alone: its port refuses connections (an outage of
        this cluster; etcd and its data stay) until `start_apiserver`."""
        self._plane.stop_apiserver()

    def start_apiserver(self) -> None:
        """Start kube-apiserver again after `stop_apiserver`, on the same port with the same flags;
        returns once it is ready and RBAC answers (its authorizer learns the grants anew by a
        watch), with accounts, pods and grants as they were. Its tokens minted before still
        authenticate; its `review_counts` start again from zero."""
        self._plane.start_apiserver()
        self._wait_can_review(DEFAULT_CALLER, True)

    def review_counts(self) -> dict[str, int]:
        """How many TokenReviews and SubjectAccessReviews kube-apiserver has served since it last
        started, whoever asked and whatever the answer: its own ``apiserver_request_total``
        counter (``GET /metrics`` as cluster-admin), by resource (`REVIEW_RESOURCES`). The
        reviews `access_allowed`, `can_review` and the grants' waits send count too."""
        text = self._request("GET", "/metrics")
        counts = dict.fromkeys(REVIEW_RESOURCES, 0)
        for line in str(text).splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels, value = line.rsplit(" ", 1)
            for resource in REVIEW_RESOURCES:
                if f'resource="{resource}"' in labels:
                    counts[resource] += int(float(value))
        return counts

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
