"""A stand-in for kube-apiserver, for tests and demos that have no cluster.

`FakeCluster` is a real HTTPS server on 127.0.0.1 with its own throwaway CA. It signs RS256
ServiceAccount tokens with the claims kube-apiserver puts in bound tokens and answers the
TokenReview API the way kube-apiserver does for them: same status codes, same Status objects,
same failure strings. The official ``kubernetes`` client talks to it through an ordinary
kubeconfig (`FakeCluster.write_kubeconfig`) or in-cluster files (`FakeCluster.incluster_files`).

This module holds the cluster's state (accounts, pods, namespaces, callers, RBAC, faults and
counters), the minting of tokens and the ServiceAccount authenticator that reviews them. Its
HTTPS server is `flask_bindcar.testing.tls`, routed by `flask_bindcar.testing.server` to the
endpoints of `flask_bindcar.testing.reviews` and `flask_bindcar.testing.objects`, which reach
this state as `flask_bindcar.testing.state.ClusterState`; its RBAC is
`flask_bindcar.testing.authorizer`. It runs past 400 lines because it is one class whose methods
share one lock over the same dictionaries; the authenticator alone (kube-apiserver's checks, in
its order, with its texts) is a fifth of it.

It imports neither Flask nor the ``kubernetes`` client, so any test suite can use it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import ssl
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import trustme

from flask_bindcar.testing.authorizer import Rules
from flask_bindcar.testing.interface import (
    API_AUDIENCE,
    DEFAULT_CALLER,
    ISSUER,
    LEGACY_ISSUER,
    InClusterFiles,
    Pod,
    ServiceAccount,
    bound_token_claims,
    write_incluster_files,
    write_kubeconfig_file,
)
from flask_bindcar.testing.oidc import Issuer, check_times
from flask_bindcar.testing.rbac import Rule, SubjectKind, groups_of
from flask_bindcar.testing.server import Handler
from flask_bindcar.testing.state import FAULTS, Fault, Namespace, ReviewError
from flask_bindcar.testing.tls import TLSServer


def token_hash(token: str) -> str:
    """The SHA-256 hex digest by which the stand-in records a reviewed token (never the token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _go_quote_list(items: Iterable[str]) -> str:
    """Format a string slice as Go's ``%q`` does: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


BUILTIN_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


class FakeCluster:
    """A kube-apiserver stand-in serving TokenReview over real TLS on 127.0.0.1.

    Use it as a context manager (or `start` / `stop`). Cluster state may be changed while it
    serves: service accounts, pods, the callers allowed to create TokenReviews, latency and faults.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, workdir: str | Path | None = None, issuer: str = ISSUER
    ):
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self.issuer = Issuer(issuer)
        """The ServiceAccount signing keys: the newest signs, all verify (`rotate_signing_key`); its
        ``url`` is ``issuer``, kube-apiserver's ``--service-account-issuer``: the ``iss`` of the tokens
        it mints and accepts, and the issuer its discovery document names. Two FakeClusters with
        different issuers stand for two clusters (docs/clusters.md)."""
        self._ca = trustme.CA()
        self._server_cert = self._ca.issue_cert(host, "localhost")
        self._workdir = Path(workdir).resolve() if workdir is not None else None
        self._tmp: Any = None
        self._server: TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

        self.namespaces: dict[str, Namespace] = {name: Namespace(name) for name in BUILTIN_NAMESPACES}
        """Namespaces created through the API (and the built-in ones). Every namespace exists for
        ServiceAccounts and Pods; the API lists these and those that hold an account or a pod."""
        self.service_accounts: dict[tuple[str, str], ServiceAccount] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self._callers: dict[str, str] = {}  # caller token -> username (non-ServiceAccount callers)
        self._reviewers: set[str] = {DEFAULT_CALLER}

        self.latency = 0.0
        """Seconds every TokenReview waits before it is answered."""
        self.fault: Fault | None = None
        """The fault every API request meets until it is set back to None."""
        self.hang_seconds = 30.0
        """How long the ``hang`` fault holds a request (ended early by `stop`)."""
        self.max_token_expiration: int | None = None
        """kube-apiserver's ``--service-account-max-token-expiration`` in seconds: a TokenRequest for
        longer is shortened to it, with a warning. None (the default, as in RealCluster) is no cap."""
        self.admins: set[str] = {DEFAULT_CALLER}
        """Users the stand-in's own API lets do everything, as ``system:masters`` would: the default
        caller, whose token its kubeconfig carries. Everyone else needs an RBAC rule (`allow`)."""

        self.requests_seen = 0
        """HTTP requests of any kind this cluster's server read (a test of "no call at all" counts them)."""
        self.reviews_served = 0
        """TokenReviews answered with 201."""
        self.review_requests = 0
        """POSTs to the TokenReview endpoint, whatever their answer."""
        self.token_hashes_seen: list[str] = []
        """`token_hash` of each reviewed token, in order."""
        self.rbac = Rules()
        """The RBAC rules SubjectAccessReviews are answered by; add to them with `allow`."""
        self.access_reviews_served = 0
        """SubjectAccessReviews answered with 201."""
        self.access_review_requests = 0
        """POSTs to the SubjectAccessReview endpoint, whatever their answer."""
        self.access_reviews: list[dict[str, Any]] = []
        """The ``spec`` of each SubjectAccessReview answered, in order."""

        self.caller_token = self.token("dns-system", "bindcar", audiences=[API_AUDIENCE], expires_in=10 * 365 * 86400)
        """A token of the default caller, ``system:serviceaccount:dns-system:bindcar``, which may review."""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeCluster:
        if self._server is not None:
            return self
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_cert.configure_cert(ctx)
        server = TLSServer((self._host, self._port), Handler, ctx, self)
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-cluster", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeCluster is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def workdir(self) -> Path:
        """A directory holding the CA file; removed by `stop` unless given to the constructor."""
        if self._workdir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="fake-cluster-")
            self._workdir = Path(self._tmp.name)
        self._workdir.mkdir(parents=True, exist_ok=True)
        return self._workdir

    @property
    def ca_path(self) -> Path:
        path = self.workdir / "ca.crt"
        if not path.exists():
            self._ca.cert_pem.write_to_path(str(path))
        return path

    @property
    def public_key_pem(self) -> bytes:
        """The public half of the ServiceAccount signing key that signs new tokens (``/openid/v1/jwks``
        publishes it, with every older key still accepted)."""
        from cryptography.hazmat.primitives import serialization

        return self.issuer.signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def ca_pem(self) -> bytes:
        return bytes(self._ca.cert_pem.bytes())

    # -- cluster state -----------------------------------------------------------------------

    def create_service_account(self, namespace: str, name: str) -> ServiceAccount:
        with self._lock:
            sa = self.service_accounts.get((namespace, name))
            if sa is None:
                sa = self.service_accounts[(namespace, name)] = ServiceAccount(namespace, name)
            return sa

    def delete_service_account(self, namespace: str, name: str) -> None:
        """Delete the account: its tokens stop authenticating, as in kube-apiserver."""
        with self._lock:
            self.service_accounts.pop((namespace, name), None)

    def create_pod(self, namespace: str, name: str, service_account: str = "default") -> Pod:
        """A pod running as ``service_account`` (created if missing), as `RealCluster.create_pod`."""
        self.create_service_account(namespace, service_account)
        with self._lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                pod = self.pods[(namespace, name)] = Pod(namespace, name, service_account=service_account)
            return pod

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete the pod: tokens bound to it stop authenticating."""
        with self._lock:
            self.pods.pop((namespace, name), None)

    def grant_token_review(self, username: str) -> None:
        """Give a caller RBAC permission to ``create`` ``tokenreviews``."""
        with self._lock:
            self._reviewers.add(username)

    def revoke_token_review(self, username: str) -> None:
        with self._lock:
            self._reviewers.discard(username)

    def add_caller(self, username: str, *, can_review: bool = True) -> str:
        """Register a non-ServiceAccount caller (a user with a static token); returns its token."""
        token = "caller-" + uuid.uuid4().hex
        with self._lock:
            self._callers[token] = username
            if can_review:
                self._reviewers.add(username)
        return token

    def can_review(self, username: str) -> bool:
        """Whether ``username`` may create TokenReviews: `grant_token_review`, or an RBAC binding
        (to ``system:auth-delegator``, say) created through the API or with `allow`."""
        with self._lock:
            if username in self._reviewers:
                return True
        attrs = {"verb": "create", "group": "authentication.k8s.io", "resource": "tokenreviews"}
        spec = {"user": username, "groups": groups_of(username), "resourceAttributes": attrs}
        return bool(self.rbac.decide(spec)["allowed"])

    def namespace(self, name: str) -> Namespace | None:
        """The namespace, if the API would list it: created, built in, or holding an account or a pod."""
        with self._lock:
            found = self.namespaces.get(name)
            if found is None and any(ns == name for ns, _ in itertools.chain(self.service_accounts, self.pods)):
                found = self.namespaces[name] = Namespace(name)
            return found

    def _create_namespace(self, name: str) -> Namespace:
        with self._lock:
            return self.namespaces.setdefault(name, Namespace(name))

    def authorized(
        self,
        username: str,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> bool:
        """Whether ``username`` may make this request of the stand-in's own API: one of `admins`, or
        allowed by the RBAC rules (`allow`), as kube-apiserver's RBAC authorizer decides."""
        if username in self.admins:
            return True
        attrs = {"verb": verb, "group": group, "resource": resource}
        attrs.update({k: v for k, v in (("namespace", namespace), ("name", name), ("subresource", subresource)) if v})
        spec = {"user": username, "groups": groups_of(username), "resourceAttributes": attrs}
        return bool(self.rbac.decide(spec)["allowed"])

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
        """Let ``subject`` (a username or a group) ``verb`` a resource or a path, as an RBAC rule would.

        ``resource`` may be ``"*"``, ``"zones/status"`` or ``"*/status"``; ``group`` and ``verb`` may
        be ``"*"``; ``name`` becomes ``resourceNames``; ``path`` is a ``nonResourceURLs`` entry
        (``"/api/*"`` matches by prefix). With ``namespace`` it is a Role and RoleBinding there,
        without it a ClusterRole and ClusterRoleBinding, both named ``binding`` (generated when not
        given). ``kind`` overrides how the subject is read (`flask_bindcar.testing.rbac.subject_kind`).
        """
        return self.rbac.allow(
            subject,
            verb,
            resource,
            group=group,
            namespace=namespace,
            name=name,
            path=path,
            binding=binding,
            kind=kind,
        )

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
        """Mint a bound ServiceAccount token, as ``kubectl create token`` does.

        The account (and the pod, when given) is created if it does not exist yet. Without
        ``audiences`` the token is for the API server's own audience. A negative ``expires_in``
        gives an already expired token; ``not_before`` a token not valid until then.
        """
        sa = self.create_service_account(namespace, name)
        bound = self.create_pod(namespace, pod, service_account=name) if pod is not None else None
        return self._mint(sa, audiences, expires_in, bound, not_before)

    def _mint(
        self,
        sa: ServiceAccount,
        audiences: Iterable[str] | None,
        expires_in: float,
        pod: Pod | None,
        not_before: float | None = None,
    ) -> str:
        claims = bound_token_claims(sa, audiences, expires_in, pod, not_before, issuer=self.issuer.url)
        return self._sign(claims)

    def legacy_token(self, namespace: str, name: str) -> str:
        """Mint a legacy Secret-based token: no ``aud``, no ``exp``."""
        sa = self.create_service_account(namespace, name)
        claims = {
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": f"{name}-token-{uuid.uuid4().hex[:5]}",
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": sa.uid,
            "sub": sa.username,
        }
        return self._sign(claims)

    def _sign(self, claims: dict[str, Any]) -> str:
        return self.issuer.sign(claims)

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT of any ``claims``, signed as the cluster signs its tokens (for tokens no
        TokenRequest mints: issued in the future, missing claims...)."""
        return self.issuer.sign(claims)

    def rotate_signing_key(self) -> str:
        """Sign new tokens with a new key while the old ones stay valid, as kube-apiserver given a
        second ``--service-account-key-file`` and the new ``--service-account-signing-key-file``
        does. Both keys are published at ``/openid/v1/jwks``. The new key's ``kid``."""
        return self.issuer.rotate()

    def authenticate(self, token: str, audiences: list[str] | None) -> tuple[dict[str, Any], list[str]]:
        """Review a token as kube-apiserver's ServiceAccount authenticator does.

        Returns ``(user, audiences)``; raises `ReviewError` carrying the ``status.error`` text, or
        `LookupError` when the token is not a token of this cluster at all (kube-apiserver then
        reports only ``invalid bearer token``).
        """
        requested = audiences or [API_AUDIENCE]
        with self._lock:
            static_user = self._callers.get(token)
        if static_user is not None:
            # A static token (token-file authenticator) is audience-agnostic: valid for the API
            # server's own audience only.
            if API_AUDIENCE not in requested:
                raise LookupError("audience-agnostic token, other audiences requested")
            return {"username": static_user, "uid": static_user, "groups": ["system:authenticated"]}, [API_AUDIENCE]
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise LookupError("not a JWT") from None
        if unverified.get("iss") not in (self.issuer.url, LEGACY_ISSUER):
            raise LookupError("not issued by this cluster")
        claims = self.issuer.verify(token)
        legacy = claims.get("iss") == LEGACY_ISSUER
        if legacy:
            namespace = claims.get("kubernetes.io/serviceaccount/namespace", "")
            name = claims.get("kubernetes.io/serviceaccount/service-account.name", "")
            sa_uid = claims.get("kubernetes.io/serviceaccount/service-account.uid", "")
            token_auds = [API_AUDIENCE]
            pod_ref = None
        else:
            k8s = claims.get("kubernetes.io", {})
            namespace = k8s.get("namespace", "")
            name = k8s.get("serviceaccount", {}).get("name", "")
            sa_uid = k8s.get("serviceaccount", {}).get("uid", "")
            aud = claims.get("aud", [])
            token_auds = [aud] if isinstance(aud, str) else list(aud)
            pod_ref = k8s.get("pod")

        granted = [a for a in requested if a in token_auds]
        if not granted:
            raise ReviewError(
                "[invalid bearer token, token audiences "
                f"{_go_quote_list(token_auds)} is invalid for the target audiences {_go_quote_list(requested)}]"
            )
        if not legacy:
            check_times(claims)  # after the audiences, as kube-apiserver's validator comes after them
        with self._lock:
            sa = self.service_accounts.get((namespace, name))
            pod = self.pods.get((namespace, pod_ref["name"])) if pod_ref else None
        if sa is None:
            raise ReviewError(f'[invalid bearer token, serviceaccounts "{name}" not found]')
        if sa.uid != sa_uid:
            raise ReviewError(f"[invalid bearer token, service account UID ({sa.uid}) does not match claim ({sa_uid})]")
        if pod_ref is not None and (pod is None or pod.uid != pod_ref.get("uid")):
            raise ReviewError("[invalid bearer token, service account token has been invalidated]")

        user: dict[str, Any] = {
            "username": sa.username,
            "uid": sa.uid,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
        }
        if not legacy:
            extra: dict[str, list[str]] = {"authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"]}
            if pod is not None:
                extra["authentication.kubernetes.io/pod-name"] = [pod.name]
                extra["authentication.kubernetes.io/pod-uid"] = [pod.uid]
            user["extra"] = extra
        return user, granted

    def _caller(self, authorization: str | None) -> str | None:
        """The username of the API caller, or None when its credential is not known here."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            user, _ = self.authenticate(token, [API_AUDIENCE])
        except (ReviewError, LookupError):
            return None
        return str(user["username"])

    # -- files for clients -------------------------------------------------------------------

    def write_kubeconfig(self, path: str | Path, caller: str | None = None, *, namespace: str = "default") -> Path:
        """Write a kubeconfig that ``kubernetes.config.load_kube_config`` accepts.

        ``caller`` is the bearer token the client presents (default: `caller_token`). The file is
        JSON, which every YAML loader reads.
        """
        token = caller if caller is not None else self.caller_token
        return write_kubeconfig_file(path, "fake-cluster", self.url, self.ca_path, token, namespace)

    def incluster_files(
        self, directory: str | Path, caller: str | None = None, *, namespace: str = "dns-system"
    ) -> InClusterFiles:
        """Write the files of a ServiceAccount mount (``token``, ``ca.crt``, ``namespace``)."""
        token = caller if caller is not None else self.caller_token
        return write_incluster_files(directory, self._host, self.port, self.ca_pem, token, namespace)

    # -- faults ------------------------------------------------------------------------------

    @contextmanager
    def faulty(self, fault: Fault) -> Iterator[None]:
        """Every API request meets ``fault`` inside the block."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        self.fault = fault
        try:
            yield
        finally:
            self.fault = None

    def _count_review(self, token: str | None) -> None:
        with self._lock:
            self.review_requests += 1
            if token:
                self.token_hashes_seen.append(token_hash(token))
