"""A stand-in for kube-apiserver, for tests and demos that have no cluster.

`FakeCluster` is a real HTTPS server on 127.0.0.1 with its own throwaway CA. It signs RS256
ServiceAccount tokens with the claims kube-apiserver puts in bound tokens and answers the
TokenReview API the way kube-apiserver does for them: same status codes, same Status objects,
same failure strings. The official ``kubernetes`` client talks to it through an ordinary
kubeconfig (`FakeCluster.write_kubeconfig`) or in-cluster files (`FakeCluster.incluster_files`).

It imports neither Flask nor the ``kubernetes`` client, so any test suite can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_bindcar.testing import rbac as _rbac
from flask_bindcar.testing.rbac import Rule, Rules, SubjectKind, validate

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ISSUER = "https://kubernetes.default.svc.cluster.local"
LEGACY_ISSUER = "kubernetes/serviceaccount"
DEFAULT_CALLER = "system:serviceaccount:dns-system:bindcar"
SA_PREFIX = "system:serviceaccount:"

Fault = Literal["error500", "garbage", "reset", "hang", "no_user", "no_audiences"]
FAULTS: tuple[Fault, ...] = ("error500", "garbage", "reset", "hang", "no_user", "no_audiences")
"""Faults on demand: a 500 Status, a non-JSON body, a reset connection, a hang past the client's
timeout; and two misbehaving answers to a TokenReview: authenticated without ``status.user``, and
authenticated without ``status.audiences`` (as an audience-agnostic authenticator might)."""

TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def token_hash(token: str) -> str:
    """The SHA-256 hex digest by which the stand-in records a reviewed token (never the token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def forbidden_status(
    user: str,
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> dict[str, Any]:
    """kube-apiserver's 403 Status for a request RBAC does not allow (its ``ForbiddenStatusError``)."""
    what = f"{resource}/{subresource}" if subresource else resource
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    why = f'User "{user}" cannot {verb} resource "{what}" in API group "{group}" {scope}'
    qualified = f"{resource}.{group}" if group else resource
    message = f'{qualified} "{name}" is forbidden: {why}' if name else f"{qualified} is forbidden: {why}"
    details: dict[str, Any] = {"name": name} if name else {}
    if group:
        details["group"] = group
    details["kind"] = resource
    return _status(403, "Forbidden", message, details)


def _go_quote_list(items: Iterable[str]) -> str:
    """Format a string slice as Go's ``%q`` does: ``["a" "b"]``."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ServiceAccount:
    namespace: str
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=_now_rfc3339, compare=False)

    @property
    def username(self) -> str:
        return f"{SA_PREFIX}{self.namespace}:{self.name}"


@dataclass
class Namespace:
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=_now_rfc3339, compare=False)


BUILTIN_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=_now_rfc3339, compare=False)
    service_account: str = "default"


@dataclass(frozen=True)
class InClusterFiles:
    """The files of a ServiceAccount mount, and the environment kubelet would set beside them."""

    token: Path
    ca_crt: Path
    namespace: Path
    environ: dict[str, str]


def bound_token_claims(
    sa: ServiceAccount,
    audiences: Iterable[str] | None,
    expires_in: float,
    pod: Pod | None = None,
    not_before: float | None = None,
) -> dict[str, Any]:
    """The claims kube-apiserver puts in a bound ServiceAccount token (TokenRequest)."""
    now = int(time.time())
    k8s: dict[str, Any] = {"namespace": sa.namespace, "serviceaccount": {"name": sa.name, "uid": sa.uid}}
    if pod is not None:
        k8s["pod"] = {"name": pod.name, "uid": pod.uid}
    return {
        "aud": list(audiences) if audiences is not None else [API_AUDIENCE],
        "exp": now + int(expires_in),
        "iat": now,
        "iss": ISSUER,
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


class ReviewError(Exception):
    """A token the cluster does not accept; ``str()`` is kube-apiserver's ``status.error``."""


class FakeCluster:
    """A kube-apiserver stand-in serving TokenReview over real TLS on 127.0.0.1.

    Use it as a context manager (or `start` / `stop`). Cluster state may be changed while it
    serves: service accounts, pods, the callers allowed to create TokenReviews, latency and faults.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, workdir: str | Path | None = None):
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_key = self._key.public_key()
        self._ca = trustme.CA()
        self._server_cert = self._ca.issue_cert(host, "localhost")
        self._workdir = Path(workdir).resolve() if workdir is not None else None
        self._tmp: Any = None
        self._server: _TLSServer | None = None
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
        server = _TLSServer((self._host, self._port), _Handler, ctx, self)
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
        """The public half of the ServiceAccount signing key (what ``/openid/v1/jwks`` publishes)."""
        from cryptography.hazmat.primitives import serialization

        return self._public_key.public_bytes(
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
        spec = {"user": username, "groups": _groups_of(username), "resourceAttributes": attrs}
        return bool(self.rbac.decide(spec)["allowed"])

    def namespace(self, name: str) -> Namespace | None:
        """The namespace, if the API would list it: created, built in, or holding an account or a pod."""
        with self._lock:
            found = self.namespaces.get(name)
            if found is None and any(ns == name for ns, _ in itertools.chain(self.service_accounts, self.pods)):
                found = self.namespaces[name] = Namespace(name)
            return found

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
        spec = {"user": username, "groups": _groups_of(username), "resourceAttributes": attrs}
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
        claims = bound_token_claims(sa, audiences, expires_in, pod, not_before)
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
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "fake-cluster"})

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
        if unverified.get("iss") not in (ISSUER, LEGACY_ISSUER):
            raise LookupError("not issued by this cluster")
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise ReviewError("[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]") from None
        except jwt.PyJWTError as e:
            raise ReviewError(f"[invalid bearer token, {e}]") from None

        now = time.time()
        legacy = claims.get("iss") == LEGACY_ISSUER
        if legacy:
            namespace = claims.get("kubernetes.io/serviceaccount/namespace", "")
            name = claims.get("kubernetes.io/serviceaccount/service-account.name", "")
            sa_uid = claims.get("kubernetes.io/serviceaccount/service-account.uid", "")
            token_auds = [API_AUDIENCE]
            pod_ref = None
        else:
            if "exp" in claims and now >= claims["exp"]:
                raise ReviewError("[invalid bearer token, service account token has expired]")
            if "nbf" in claims and now < claims["nbf"] - 60:  # kube-apiserver allows 60 s of skew
                raise ReviewError("[invalid bearer token, service account token is not valid yet]")
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


def _groups_of(username: str) -> list[str]:
    """The groups kube-apiserver gives a caller of this stand-in."""
    if username.startswith(SA_PREFIX):
        namespace = username[len(SA_PREFIX) :].split(":")[0]
        return ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    return ["system:authenticated"]


def _auth_delegator_reason(username: str) -> str:
    """The reason RBAC gives for a review a reviewer may create (bound to ``system:auth-delegator``)."""
    if username.startswith(SA_PREFIX):
        namespace, _, name = username[len(SA_PREFIX) :].partition(":")
        who = f'ServiceAccount "{name}/{namespace}"'
    else:
        who = f'User "{username}"'
    return f'RBAC: allowed by ClusterRoleBinding "bindcar-tokenreview" of ClusterRole "system:auth-delegator" to {who}'


_CORE_ROUTE = re.compile(
    r"/api/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<kind>serviceaccounts|pods)(?:/(?P<name>[^/]+)(?:/(?P<sub>token))?)?"
)


_OBJECT_ROUTE = re.compile(
    r"/api/v1/namespaces(?:/(?P<nsname>[^/]+))?"
    r"|/apis/rbac\.authorization\.k8s\.io/v1(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<kind>clusterroles|clusterrolebindings|roles|rolebindings)(?:/(?P<name>[^/]+))?"
)


PROTOBUF = "application/vnd.kubernetes.protobuf"
_PROTOBUF_MAGIC = b"k8s\x00"


def _proto_fields(data: bytes) -> dict[int, list[Any]]:
    """The fields of one protobuf message: number -> values (ints for varints, bytes otherwise)."""
    fields: dict[int, list[Any]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = varint()
        elif wire == 2:
            length = varint()
            value, i = data[i : i + length], i + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = data[i : i + size], i + size
        else:
            raise ValueError(f"protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _proto_str(fields: dict[int, list[Any]], number: int) -> str | None:
    values = fields.get(number)
    return values[-1].decode() if values else None


def _from_protobuf(raw: bytes, kind: str) -> dict[str, Any]:
    """What this stand-in reads of a ServiceAccount, Pod or TokenRequest that kubectl sent as protobuf
    (kube-apiserver's ``runtime.Unknown`` envelope around the object's own message)."""
    if not raw.startswith(_PROTOBUF_MAGIC):
        raise ValueError("not a Kubernetes protobuf envelope")
    envelope = _proto_fields(raw[len(_PROTOBUF_MAGIC) :])
    obj = _proto_fields(envelope.get(2, [b""])[-1])
    meta = _proto_fields(obj.get(1, [b""])[-1])
    result: dict[str, Any] = {"metadata": {"name": _proto_str(meta, 1)}}
    if kind in ("clusterroles", "roles"):
        result["rules"] = [_proto_policy_rule(_proto_fields(rule)) for rule in obj.get(2, [])]
        return result
    if kind in ("clusterrolebindings", "rolebindings"):
        result["subjects"] = [_proto_subject(_proto_fields(subject)) for subject in obj.get(2, [])]
        ref = _proto_fields(obj.get(3, [b""])[-1])
        result["roleRef"] = {
            "apiGroup": _proto_str(ref, 1) or "",
            "kind": _proto_str(ref, 2) or "",
            "name": _proto_str(ref, 3) or "",
        }
        return result
    spec = _proto_fields(obj.get(2, [b""])[-1])
    if kind == "pods":
        result["spec"] = {"serviceAccountName": _proto_str(spec, 8)}
    elif kind == "token":
        token_spec: dict[str, Any] = {"audiences": [a.decode() for a in spec.get(1, [])]}
        if 4 in spec:
            token_spec["expirationSeconds"] = spec[4][-1]
        if 3 in spec:
            ref = _proto_fields(spec[3][-1])
            token_spec["boundObjectRef"] = {
                "kind": _proto_str(ref, 1),
                "apiVersion": _proto_str(ref, 2),
                "name": _proto_str(ref, 3),
                "uid": _proto_str(ref, 4),
            }
        result["spec"] = token_spec
    return result


def _proto_policy_rule(rule: dict[int, list[Any]]) -> dict[str, Any]:
    """An RBAC ``PolicyRule`` as JSON, from its protobuf fields."""
    keys = {1: "verbs", 2: "apiGroups", 3: "resources", 4: "resourceNames", 5: "nonResourceURLs"}
    return {key: [v.decode() for v in rule[number]] for number, key in keys.items() if number in rule}


def _proto_subject(subject: dict[int, list[Any]]) -> dict[str, Any]:
    """An RBAC ``Subject`` as JSON, from its protobuf fields."""
    keys = {1: "kind", 2: "apiGroup", 3: "name", 4: "namespace"}
    return {key: _proto_str(subject, number) for number, key in keys.items() if number in subject}


def _namespace(ns: Namespace) -> dict[str, Any]:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": ns.name,
            "uid": ns.uid,
            "resourceVersion": "1",
            "creationTimestamp": ns.created,
            "labels": {"kubernetes.io/metadata.name": ns.name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def _object(obj: ServiceAccount | Pod) -> dict[str, Any]:
    """A ServiceAccount or Pod as the Core API returns it."""
    metadata = {
        "name": obj.name,
        "namespace": obj.namespace,
        "uid": obj.uid,
        "resourceVersion": "1",
        "creationTimestamp": obj.created,
    }
    if isinstance(obj, ServiceAccount):
        return {"kind": "ServiceAccount", "apiVersion": "v1", "metadata": metadata}
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {"serviceAccountName": obj.service_account, "containers": []},
    }


def _api_resources(handler: Any) -> dict[str, Any]:
    def resource(name: str, kind: str, verbs: list[str], namespaced: bool = True, **more: Any) -> dict[str, Any]:
        return {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs, **more}

    crud = ["create", "delete", "get", "list"]
    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource("namespaces", "Namespace", crud, namespaced=False, shortNames=["ns"]),
            resource("pods", "Pod", crud, shortNames=["po"]),
            resource("serviceaccounts", "ServiceAccount", crud, shortNames=["sa"]),
            resource("serviceaccounts/token", "TokenRequest", ["create"], group="authentication.k8s.io", version="v1"),
        ],
    }


def _rbac_resources(handler: Any) -> dict[str, Any]:
    crud = ["create", "delete", "get", "list"]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{_rbac.GROUP}/v1",
        "resources": [
            {
                "name": name,
                "singularName": kind.lower(),
                "namespaced": name in _rbac.NAMESPACED,
                "kind": kind,
                "verbs": crud,
            }
            for name, kind in _rbac.KINDS.items()
        ],
    }


_RBAC_VERSION = {"groupVersion": f"{_rbac.GROUP}/v1", "version": "v1"}
_OPENAPI_KINDS = {
    "api/v1": [("", "Namespace"), ("", "Pod"), ("", "ServiceAccount")],
    f"apis/{_rbac.GROUP}/v1": [(_rbac.GROUP, kind) for kind in _rbac.KINDS.values()],
}


def _openapi_v3_root(handler: Any) -> dict[str, Any]:
    """The OpenAPI v3 index: kubectl apply reads it to learn that the server validates fields
    (``fieldValidation``) and so need not validate the objects itself."""
    return {"paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}?hash=fake"} for path in _OPENAPI_KINDS}}


def _openapi_v3(path: str) -> Any:
    """The part of a group version's OpenAPI v3 document kubectl's field-validation check reads:
    a PATCH of each kind, taking a ``fieldValidation`` query parameter."""

    def document(handler: Any) -> dict[str, Any]:
        paths = {
            f"/{path}/{kind.lower()}s/{{name}}": {
                "patch": {
                    "x-kubernetes-group-version-kind": {"group": group, "version": "v1", "kind": kind},
                    "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                    "responses": {},
                }
            }
            for group, kind in _OPENAPI_KINDS[path]
        }
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.31.0-fake"}, "paths": paths}

    return document


_DISCOVERY: dict[str, Any] = {
    "/api": lambda h: {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{h.cluster.port}"}],
    },
    "/apis": lambda h: {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{"name": _rbac.GROUP, "versions": [_RBAC_VERSION], "preferredVersion": _RBAC_VERSION}],
    },
    "/api/v1": _api_resources,
    f"/apis/{_rbac.GROUP}/v1": _rbac_resources,
    "/openapi/v3": _openapi_v3_root,
    **{f"/openapi/v3/{path}": _openapi_v3(path) for path in _OPENAPI_KINDS},
}


def _spec_token(raw: bytes) -> str | None:
    """The token a TokenReview body carries, if it can be found at all (for counting only)."""
    try:
        token = json.loads(raw)["spec"]["token"]
    except (ValueError, TypeError, KeyError):
        return None
    return token if isinstance(token, str) else None


class _TLSServer(ThreadingHTTPServer):
    """Does the TLS handshake in each connection's own thread, so one slow client blocks no one."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], ctx: ssl.SSLContext, cluster: FakeCluster
    ):
        self.ssl_context = ctx
        self.cluster = cluster
        self._connections: set[Any] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with self._connections_lock:
            self._connections.add(conn)
        try:
            super().finish_request(conn, client_address)
        except (ssl.SSLError, OSError):
            return
        finally:
            with self._connections_lock:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        """Drop every open connection, as a stopped API server does; keep-alive ones included."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections dropped by clients are normal here; keep stderr quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _TLSServer
    server_version = "fake-kube-apiserver"

    def log_message(self, format: str, *args: Any) -> None:
        """Request lines are not logged: a stand-in must not print what tests send it."""

    @property
    def cluster(self) -> FakeCluster:
        return self.server.cluster

    def _send_json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _apply_fault(self) -> bool:
        """Answer with the injected fault, if any. True when the request was answered."""
        fault = self.cluster.fault
        if fault is None or fault in ("no_user", "no_audiences"):
            return False
        if fault == "error500":
            self._send_json(
                500, _status(500, "InternalError", "Internal error occurred: etcdserver: request timed out")
            )
        elif fault == "garbage":
            data = b"<html><body>502 Bad Gateway</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
        elif fault == "hang":
            self.cluster._stopping.wait(self.cluster.hang_seconds)
            self.close_connection = True
        return True

    def do_GET(self) -> None:
        if self._core_api("GET") or self._object_api("GET"):
            return
        if self.path.split("?")[0].rstrip("/") == "/version":
            if self._apply_fault():
                return
            self._send_json(
                200,
                {
                    "major": "1",
                    "minor": "31",
                    "gitVersion": "v1.31.0-fake",
                    "gitCommit": "0000000000000000000000000000000000000000",
                    "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.22.5",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                },
            )
            return
        self._send_json(404, _status(404, "NotFound", "the server could not find the requested resource"))

    def do_DELETE(self) -> None:
        if not (self._core_api("DELETE") or self._object_api("DELETE")):
            self._send_json(404, _status(404, "NotFound", "the server could not find the requested resource"))

    def do_POST(self) -> None:
        route = self.path.split("?")[0]
        if self._core_api("POST") or self._object_api("POST"):
            return
        raw = self._read_body()
        if route == TOKENREVIEW_PATH:
            self._token_review(raw)
        elif route == SSAR_PATH:
            self._self_subject_access_review(raw)
        elif route == SAR_PATH:
            self._subject_access_review(raw)
        else:
            self._send_json(404, _status(404, "NotFound", "the server could not find the requested resource"))

    def _decode(self, raw: bytes, kind: str) -> dict[str, Any] | None:
        try:
            body = json.loads(raw)
        except ValueError as e:
            self._send_json(
                400, _status(400, "BadRequest", f"the body of the request could not be decoded: {e.__class__.__name__}")
            )
            return None
        if not isinstance(body, dict) or body.get("kind", kind) != kind or not isinstance(body.get("spec"), dict):
            self._send_json(400, _status(400, "BadRequest", f"the body of the request is not a valid {kind}"))
            return None
        return body

    # -- the Core API calls that kubectl and the official client use for accounts and tokens ------

    def _core_api(self, method: str) -> bool:
        """Serve discovery, ServiceAccounts, Pods and TokenRequest. True when the request was answered.

        Each request is authorized as kube-apiserver's RBAC would (`FakeCluster.authorized`);
        namespaces always exist.
        """
        route = self.path.split("?")[0].rstrip("/")
        if method == "GET" and route in _DISCOVERY:
            self._send_json(200, _DISCOVERY[route](self))
            return True
        match = _CORE_ROUTE.fullmatch(route)
        if match is None:
            return False
        raw = self._read_body()  # DELETE carries DeleteOptions; a body left unread would end the connection
        if self._apply_fault():
            return True
        ns, kind, name, sub = match.group("ns"), match.group("kind"), match.group("name"), match.group("sub")
        verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete" if name else "deletecollection"}
        if not self._authorize(verb[method], kind, namespace=ns, name=name, subresource=sub):
            return True
        cluster = self.cluster
        store: dict[tuple[str, str], Any] = cluster.service_accounts if kind == "serviceaccounts" else cluster.pods
        if name is None:
            if method == "GET":
                with cluster._lock:
                    items = [_object(o) for (n, _), o in sorted(store.items()) if ns is None or n == ns]
                list_kind = "ServiceAccountList" if kind == "serviceaccounts" else "PodList"
                self._send_json(
                    200, {"kind": list_kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
                )
            elif method == "POST" and ns is not None:
                body = self._decode_object(raw, kind)
                new_name = (body or {}).get("metadata", {}).get("name") if isinstance(body, dict) else None
                if not isinstance(new_name, str) or not new_name:
                    self._send_json(400, _status(400, "BadRequest", f"{kind} must have metadata.name"))
                    return True
                with cluster._lock:
                    exists = (ns, new_name) in store
                if exists:
                    self._send_json(
                        409,
                        _status(
                            409,
                            "AlreadyExists",
                            f'{kind} "{new_name}" already exists',
                            {"name": new_name, "kind": kind},
                        ),
                    )
                    return True
                if kind == "serviceaccounts":
                    obj: Any = cluster.create_service_account(ns, new_name)
                else:
                    account = (body.get("spec") or {}).get("serviceAccountName") or "default"
                    obj = cluster.create_pod(ns, new_name, service_account=str(account))
                self._send_json(201, _object(obj))
            else:
                self._send_json(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
            return True
        with cluster._lock:
            found = store.get((ns or "", name))
        if found is None:
            self._send_json(404, _status(404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind}))
            return True
        if sub == "token" and method == "POST" and kind == "serviceaccounts":
            self._token_request(found, raw)
        elif sub is None and method == "GET":
            self._send_json(200, _object(found))
        elif sub is None and method == "DELETE":
            if kind == "serviceaccounts":
                cluster.delete_service_account(found.namespace, found.name)
            else:
                cluster.delete_pod(found.namespace, found.name)
            self._send_json(200, _object(found))
        else:
            self._send_json(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
        return True

    def _object_api(self, method: str) -> bool:
        """Serve Namespaces and the RBAC objects (ClusterRoles, ClusterRoleBindings, Roles,
        RoleBindings): create, get, list, delete. True when the request was answered.

        What a binding grants is what `FakeCluster.allow` grants: see `flask_bindcar.testing.rbac`.
        """
        route = self.path.split("?")[0].rstrip("/")
        match = _OBJECT_ROUTE.fullmatch(route)
        if match is None:
            return False
        raw = self._read_body()
        if self._apply_fault():
            return True
        resource = match.group("kind") or "namespaces"
        group = _rbac.GROUP if match.group("kind") else ""
        ns = match.group("ns")
        name = match.group("name") if match.group("kind") else match.group("nsname")
        if (ns is not None) != (resource in _rbac.NAMESPACED):
            self._send_json(404, _status(404, "NotFound", "the server could not find the requested resource"))
            return True
        verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete" if name else "deletecollection"}
        if not self._authorize(verb[method], resource, group=group, namespace=ns, name=name):
            return True
        qualified = f"{resource}.{group}" if group else resource
        details = {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource}
        not_found = _status(404, "NotFound", f'{qualified} "{name}" not found', details)
        cluster = self.cluster
        if resource == "namespaces":
            self._namespace_api(method, name, raw, not_found)
        elif method == "GET" and name is None:
            items = cluster.rbac.list(resource, ns)
            kind = _rbac.KINDS[resource] + "List"
            body = {"kind": kind, "apiVersion": f"{group}/v1", "metadata": {"resourceVersion": "1"}, "items": items}
            self._send_json(200, body)
        elif method == "POST" and name is None:
            obj = self._decode_object(raw, resource)
            code, answer = cluster.rbac.create(resource, ns, obj)
            if code == 201:
                self._send_json(201, answer)
            elif code == 409:
                message = f'{qualified} "{answer}" already exists'
                self._send_json(409, _status(409, "AlreadyExists", message, {**details, "name": answer}))
            else:
                given = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
                invalid = {"name": given} if given else {}
                invalid.update(group=group, kind=_rbac.KINDS[resource], causes=answer["causes"])
                self._send_json(422, _status(422, "Invalid", answer["message"], invalid))
        elif method == "GET" and name is not None:
            found = cluster.rbac.get(resource, ns, name)
            self._send_json(200, found) if found is not None else self._send_json(404, not_found)
        elif method == "DELETE" and name is not None:
            gone = cluster.rbac.delete(resource, ns, name)
            self._send_json(200, gone) if gone is not None else self._send_json(404, not_found)
        else:
            self._send_json(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))
        return True

    def _namespace_api(self, method: str, name: str | None, raw: bytes, not_found: dict[str, Any]) -> None:
        cluster = self.cluster
        if method == "GET" and name is None:
            with cluster._lock:
                names = set(cluster.namespaces) | {
                    ns for ns, _ in itertools.chain(cluster.service_accounts, cluster.pods)
                }
            items = [_namespace(found) for n in sorted(names) if (found := cluster.namespace(n)) is not None]
            self._send_json(
                200, {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
            )
        elif method == "GET" and name is not None:
            found = cluster.namespace(name)
            self._send_json(200, _namespace(found)) if found is not None else self._send_json(404, not_found)
        elif method == "POST" and name is None:
            body = self._decode_object(raw, "namespaces")
            new = body.get("metadata", {}).get("name") if isinstance(body, dict) else None
            if not isinstance(new, str) or not new:
                message = 'Namespace "" is invalid: metadata.name: Required value: name or generateName is required'
                self._send_json(422, _status(422, "Invalid", message, {"kind": "Namespace"}))
            elif cluster.namespace(new) is not None:
                message = f'namespaces "{new}" already exists'
                self._send_json(409, _status(409, "AlreadyExists", message, {"name": new, "kind": "namespaces"}))
            else:
                with cluster._lock:
                    created = cluster.namespaces.setdefault(new, Namespace(new))
                self._send_json(201, _namespace(created))
        else:
            self._send_json(405, _status(405, "MethodNotAllowed", "the server does not allow this method"))

    def _decode_object(self, raw: bytes, kind: str) -> Any:
        """The JSON body, or the fields this stand-in needs of a protobuf one (kubectl sends those)."""
        try:
            if self.headers.get("Content-Type", "").startswith(PROTOBUF):
                return _from_protobuf(raw, kind)
            return json.loads(raw)
        except (ValueError, IndexError, UnicodeDecodeError):
            return None

    def _token_request(self, sa: ServiceAccount, raw: bytes) -> None:
        """TokenRequest, with kube-apiserver's defaults and checks: 1 h when not given, from 10 min
        to 2^32 s, shortened to `FakeCluster.max_token_expiration` (with its warning), a bound Pod."""
        body = self._decode_object(raw, "token")
        spec = body.get("spec") if isinstance(body, dict) else None
        seconds = spec.get("expirationSeconds") if isinstance(spec, dict) else None
        if seconds is None:  # not given (0 is given, and invalid)
            seconds = 3600
        if not isinstance(spec, dict) or not isinstance(seconds, int) or isinstance(seconds, bool):
            self._send_json(400, _status(400, "BadRequest", "the body of the request is not a valid TokenRequest"))
            return
        why = None
        if seconds < 600:
            why = "may not specify a duration less than 10 minutes"
        elif seconds > 2**32:
            why = "may not specify a duration larger than 2^32 seconds"
        if why is not None:
            message = f"Invalid value: {seconds}: {why}"
            self._send_json(
                422,
                _status(
                    422,
                    "Invalid",
                    f'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: {message}',
                    {
                        "group": "authentication.k8s.io",
                        "kind": "TokenRequest",
                        "causes": [
                            {"reason": "FieldValueInvalid", "message": message, "field": "spec.expirationSeconds"}
                        ],
                    },
                ),
            )
            return
        audiences = spec.get("audiences") or [API_AUDIENCE]
        pod: Pod | None = None
        ref = spec.get("boundObjectRef")
        if isinstance(ref, dict) and ref.get("kind") == "Pod":
            pod_name = str(ref.get("name", ""))
            with self.cluster._lock:
                pod = self.cluster.pods.get((sa.namespace, pod_name))
            if pod is None or (ref.get("uid") and ref["uid"] != pod.uid):
                self._send_json(
                    404, _status(404, "NotFound", f'pods "{pod_name}" not found', {"name": pod_name, "kind": "pods"})
                )
                return
        limit = self.cluster.max_token_expiration
        warning = None
        if limit is not None and seconds > limit:
            warning = f'299 - "requested expiration of {seconds} seconds shortened to {limit} seconds"'
            seconds = limit
        token = self.cluster._mint(sa, audiences, seconds, pod)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
        self._send_json(
            201,
            {
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {
                    "name": sa.name,
                    "namespace": sa.namespace,
                    "uid": sa.uid,
                    "creationTimestamp": sa.created,
                },
                "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": ref},
                "status": {"token": token, "expirationTimestamp": expires},
            },
            headers={"Warning": warning} if warning else None,
        )

    def _may_create(self, resource: str, group: str) -> bool:
        """Whether the caller may create ``resource`` reviews (both need ``system:auth-delegator``);
        if not, the 401 or the 403 Status kube-apiserver sends has been answered."""
        caller = self.cluster._caller(self.headers.get("Authorization"))
        if caller is None:
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return False
        if not self.cluster.can_review(caller):
            self._send_json(403, forbidden_status(caller, "create", resource, group=group))
            return False
        return True

    def _authorize(
        self,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> bool:
        """Authenticate and authorize a request to the stand-in's own API, as kube-apiserver does
        before anything else; if refused, the 401 or the 403 Status has been answered."""
        caller = self.cluster._caller(self.headers.get("Authorization"))
        if caller is None:
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return False
        if not self.cluster.authorized(
            caller, verb, resource, group=group, namespace=namespace, name=name, subresource=subresource
        ):
            status = forbidden_status(
                caller, verb, resource, group=group, namespace=namespace, name=name, subresource=subresource
            )
            self._send_json(403, status)
            return False
        return True

    def _token_review(self, raw: bytes) -> None:
        cluster = self.cluster
        cluster._count_review(_spec_token(raw))
        if self._apply_fault():
            return
        if not self._may_create("tokenreviews", "authentication.k8s.io"):
            return
        review = self._decode(raw, "TokenReview")
        if review is None:
            return
        spec = review["spec"]
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            self._send_json(400, _status(400, "BadRequest", "token is required for TokenReview in authentication"))
            return
        audiences = spec.get("audiences") or []
        if cluster.latency:
            cluster._stopping.wait(cluster.latency)
        status: dict[str, Any]
        try:
            user, granted = cluster.authenticate(token, list(audiences))
            status = {"authenticated": True, "user": user, "audiences": granted}
            if cluster.fault == "no_user":
                del status["user"]
            elif cluster.fault == "no_audiences":
                del status["audiences"]
        except ReviewError as e:
            status = {"user": {}, "error": str(e)}
        except LookupError:  # no authenticator knows the token: kube-apiserver's generic error
            status = {"user": {}, "error": "invalid bearer token"}
        with cluster._lock:
            cluster.reviews_served += 1
        self._send_json(
            201,
            {
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": status,
            },
        )

    def _subject_access_review(self, raw: bytes) -> None:
        """SubjectAccessReview as kube-apiserver answers it: caller RBAC, validation, then the rules."""
        cluster = self.cluster
        with cluster._lock:
            cluster.access_review_requests += 1
        if self._apply_fault():
            return
        if not self._may_create("subjectaccessreviews", "authorization.k8s.io"):
            return
        review = self._decode(raw, "SubjectAccessReview")
        if review is None:
            return
        spec = review["spec"]
        invalid = validate(spec)
        if invalid is not None:
            self._send_json(422, _status(422, "Invalid", invalid, {"group": "authorization.k8s.io"}))
            return
        if cluster.latency:
            cluster._stopping.wait(cluster.latency)
        status = cluster.rbac.decide(spec)
        with cluster._lock:
            cluster.access_reviews_served += 1
            cluster.access_reviews.append(spec)
        self._send_json(
            201,
            {
                "kind": "SubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": status,
            },
        )

    def _self_subject_access_review(self, raw: bytes) -> None:
        if self._apply_fault():
            return
        caller = self.cluster._caller(self.headers.get("Authorization"))
        if caller is None:
            self._send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        review = self._decode(raw, "SelfSubjectAccessReview")
        if review is None:
            return
        attrs = review["spec"].get("resourceAttributes") or {}
        asks_review = attrs.get("verb") == "create" and (attrs.get("group"), attrs.get("resource")) in (
            ("authentication.k8s.io", "tokenreviews"),
            ("authorization.k8s.io", "subjectaccessreviews"),
        )
        status: dict[str, Any]
        if asks_review and self.cluster.can_review(caller):
            status = {"allowed": True, "reason": _auth_delegator_reason(caller)}
        else:
            status = self.cluster.rbac.decide({**review["spec"], "user": caller, "groups": _groups_of(caller)})
        self._send_json(
            201,
            {
                "kind": "SelfSubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": review["spec"],
                "status": status,
            },
        )
