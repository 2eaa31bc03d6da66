"""One contract, two clusters: every TokenReview scenario against FakeCluster and a real kube-apiserver.

Each scenario builds its token (and the cluster state around it) through the interface both
clusters share, POSTs a TokenReview over HTTPS, and reduces the answer to what flask-bindcar reads:
the HTTP status, ``status.authenticated``, ``status.error``, the user (username, uid, groups, the
keys of ``extra``) and ``status.audiences``. The expected rows are what kube-apiserver answers; the
``real`` half (``pytest --cluster``, ``make test-cluster``) proves them, the ``fake`` half holds
FakeCluster to them. Known differences are listed in docs/testing.md.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_bindcar.jwks import key_id, parse_jwks, public_jwk
from flask_bindcar.jwtcheck import LocalRejection, accepted_outcome, verify
from flask_bindcar.testing import API_AUDIENCE, DEFAULT_CALLER, ISSUER, AssetsMissing, FakeCluster, RealCluster

Cluster = FakeCluster | RealCluster
SA_GROUPS = ["system:serviceaccounts", "system:serviceaccounts:{ns}", "system:authenticated"]
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"
POD_KEYS = [CREDENTIAL_ID, "authentication.kubernetes.io/pod-name", "authentication.kubernetes.io/pod-uid"]
FORBIDDEN = (
    'tokenreviews.authentication.k8s.io is forbidden: User "{user}" cannot create resource "tokenreviews" '
    'in API group "authentication.k8s.io" at the cluster scope'
)


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.cluster)])
def any_cluster(request: pytest.FixtureRequest) -> Cluster:
    if request.param == "fake":
        return request.getfixturevalue("fake_cluster")  # type: ignore[no-any-return]
    return request.getfixturevalue("real_cluster")  # type: ignore[no-any-return]


@dataclass
class Case:
    """What one scenario sends: the token, the requested audiences, and as whom."""

    token: str
    audiences: list[str] | None = None
    caller: str | None = None
    names: dict[str, str] = field(default_factory=dict)
    """Real names and uids in the answer -> the placeholders the expected rows use."""

    def real(self, placeholder: str) -> str:
        return next(name for name, p in self.names.items() if p == placeholder)


def review(cluster: Cluster, case: Case) -> dict[str, Any]:
    """POST the TokenReview and keep the fields flask-bindcar reads, with the names made generic."""
    spec: dict[str, Any] = {"token": case.token}
    if case.audiences is not None:
        spec["audiences"] = case.audiences
    response = requests.post(
        cluster.url + "/apis/authentication.k8s.io/v1/tokenreviews",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec},
        headers={"Authorization": f"Bearer {case.caller or cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=30,
    )
    body = response.json()
    if response.status_code != 201:
        return {"code": response.status_code, "reason": body["reason"], "message": _generic(body["message"], case)}
    status = body["status"]
    user = status.get("user") or {}
    seen: dict[str, Any] = {"code": 201, "authenticated": status.get("authenticated", False)}
    if "error" in status:
        seen["error"] = _generic(status["error"], case)
    if user:
        seen["user"] = {
            "username": _generic(user.get("username", ""), case),
            "uid": _generic(user.get("uid", ""), case),
            "groups": [_generic(g, case) for g in user.get("groups", [])],
            "extra": sorted(user.get("extra", {})),
        }
    if "audiences" in status:
        seen["audiences"] = status["audiences"]
    return seen


def _generic(text: str, case: Case) -> str:
    for real, placeholder in case.names.items():
        text = text.replace(real, placeholder)
    return text


def fresh(cluster: Cluster) -> tuple[str, str, dict[str, str]]:
    """A new namespace and account for one scenario, so scenarios never see each other's state."""
    ns, name = f"ns-{uuid.uuid4().hex[:6]}", f"sa-{uuid.uuid4().hex[:6]}"
    sa = cluster.create_service_account(ns, name)
    return ns, name, {sa.uid: "<sa-uid>", ns: "<ns>", name: "<sa>"}


def sa_case(cluster: Cluster, audiences: list[str] | None, requested: list[str] | None, **token: Any) -> Case:
    ns, name, names = fresh(cluster)
    return Case(cluster.token(ns, name, audiences=audiences, **token), requested, names=names)


def _valid(c: Cluster) -> Case:
    return sa_case(c, ["bindcar"], ["bindcar"])


def _other_audience(c: Cluster) -> Case:
    return sa_case(c, ["other-service"], ["bindcar"])


def _several_audiences(c: Cluster) -> Case:
    return sa_case(c, ["bindcar", "vault"], ["vault", "bindcar", "elsewhere"])


def _api_audience(c: Cluster) -> Case:
    return sa_case(c, None, None)


def _api_token_for_bindcar(c: Cluster) -> Case:
    return sa_case(c, None, ["bindcar"])


def _expired(c: Cluster) -> Case:
    return sa_case(c, ["bindcar"], ["bindcar"], expires_in=-120)


def _not_yet_valid(c: Cluster) -> Case:
    return sa_case(c, ["bindcar"], ["bindcar"], not_before=time.time() + 3600)


def _forged(c: Cluster) -> Case:
    ns, name, names = fresh(c)
    genuine = jwt.decode(c.token(ns, name, audiences=["bindcar"]), options={"verify_signature": False})
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Case(jwt.encode(genuine, key, algorithm="RS256"), ["bindcar"], names=names)


def _forged_with(kid: str | None) -> Callable[[Cluster], Case]:
    """A token signed by another key, naming ``kid`` ("<issuer>": the kid of the cluster's own key)."""

    def make(c: Cluster) -> Case:
        ns, name, names = fresh(c)
        genuine = c.token(ns, name, audiences=["bindcar"])
        claims = jwt.decode(genuine, options={"verify_signature": False})
        header = {"kid": jwt.get_unverified_header(genuine)["kid"] if kid == "<issuer>" else kid}
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return Case(jwt.encode(claims, key, algorithm="RS256", headers=header), ["bindcar"], names=names)

    return make


def _signed(claims: Callable[[dict[str, Any]], None]) -> Callable[[Cluster], Case]:
    """A token of the cluster's own key with claims no TokenRequest mints: a fresh token's claims,
    changed by ``claims``."""

    def make(c: Cluster) -> Case:
        ns, name, names = fresh(c)
        token = jwt.decode(c.token(ns, name, audiences=["bindcar"]), options={"verify_signature": False})
        claims(token)
        return Case(c.sign(token), ["bindcar"], names=names)

    return make


def _issued_in(seconds: int) -> Callable[[dict[str, Any]], None]:
    def change(claims: dict[str, Any]) -> None:
        claims["iat"] = int(time.time()) + seconds

    return change


def _not_a_jwt(c: Cluster) -> Case:
    return Case("invalid-token", ["bindcar"])


def _other_issuer(c: Cluster) -> Case:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"iss": "https://issuer.invalid", "sub": "someone", "aud": ["bindcar"], "exp": now + 600, "iat": now}
    return Case(jwt.encode(claims, key, algorithm="RS256"), ["bindcar"])


def _deleted_service_account(c: Cluster) -> Case:
    case = _valid(c)  # never reviewed before: kube-apiserver caches successful reviews for 10 s
    c.delete_service_account(case.real("<ns>"), case.real("<sa>"))
    return case


def _recreated_service_account(c: Cluster) -> Case:
    case = _valid(c)
    c.delete_service_account(case.real("<ns>"), case.real("<sa>"))
    new = c.create_service_account(case.real("<ns>"), case.real("<sa>"))
    case.names[new.uid] = "<new-uid>"
    return case


def _bound_pod(c: Cluster) -> Case:
    ns, name, names = fresh(c)
    pod = f"pod-{uuid.uuid4().hex[:6]}"
    case = Case(c.token(ns, name, audiences=["bindcar"], pod=pod), ["bindcar"], names=names)
    case.names[pod] = "<pod>"
    return case


def _deleted_bound_pod(c: Cluster) -> Case:
    case = _bound_pod(c)
    c.delete_pod(case.real("<ns>"), case.real("<pod>"))
    return case


def _static_user(c: Cluster) -> Case:
    return Case(c.add_caller("jane", can_review=False), None)


def _static_user_for_bindcar(c: Cluster) -> Case:
    return Case(c.add_caller("jane", can_review=False), ["bindcar"])


def _caller_without_rbac(c: Cluster) -> Case:
    ns, name, names = fresh(c)
    caller = c.token(ns, name)  # a ServiceAccount nobody granted tokenreviews
    return Case(_valid(c).token, ["bindcar"], caller=caller, names=names)


def _unknown_caller(c: Cluster) -> Case:
    return Case(_valid(c).token, ["bindcar"], caller="not-a-credential-of-this-cluster")


def _ok(audiences: list[str], extra: list[str] | None = None) -> dict[str, Any]:
    return {
        "code": 201,
        "authenticated": True,
        "user": {
            "username": "system:serviceaccount:<ns>:<sa>",
            "uid": "<sa-uid>",
            "groups": [g.format(ns="<ns>") for g in SA_GROUPS],
            "extra": extra or [CREDENTIAL_ID],
        },
        "audiences": audiences,
    }


def _rejected(error: str) -> dict[str, Any]:
    return {"code": 201, "authenticated": False, "error": error}


INVALID = "invalid bearer token"
SCENARIOS: dict[str, tuple[Callable[[Cluster], Case], dict[str, Any]]] = {
    "valid token": (_valid, _ok(["bindcar"])),
    "token for another audience": (
        _other_audience,
        _rejected(f'[{INVALID}, token audiences ["other-service"] is invalid for the target audiences ["bindcar"]]'),
    ),
    "several audiences: the intersection, in the requested order": (_several_audiences, _ok(["vault", "bindcar"])),
    "no audience requested: the API server's own": (_api_audience, _ok([API_AUDIENCE])),
    "API-audience token where bindcar is required": (
        _api_token_for_bindcar,
        _rejected(f'[{INVALID}, token audiences ["{API_AUDIENCE}"] is invalid for the target audiences ["bindcar"]]'),
    ),
    "expired": (_expired, _rejected(f"[{INVALID}, service account token has expired]")),
    "not yet valid": (_not_yet_valid, _rejected(f"[{INVALID}, service account token is not valid yet]")),
    "forged signature": (_forged, _rejected(f"[{INVALID}, go-jose/go-jose: error in cryptographic primitive]")),
    "forged, naming the issuer's kid": (
        _forged_with("<issuer>"),
        _rejected(f"[{INVALID}, go-jose/go-jose: error in cryptographic primitive]"),
    ),
    "forged, naming a kid the issuer does not have": (
        _forged_with("made-up"),
        _rejected(f"[{INVALID}, invalid signature, no keys found]"),
    ),
    "expired within kube's minute of leeway": (
        lambda c: sa_case(c, ["bindcar"], ["bindcar"], expires_in=-30),
        _ok(["bindcar"]),
    ),
    "not yet valid within the leeway": (
        lambda c: sa_case(c, ["bindcar"], ["bindcar"], not_before=time.time() + 30),
        _ok(["bindcar"]),
    ),
    "expired and for another audience: the audiences come first": (
        lambda c: sa_case(c, ["other-service"], ["bindcar"], expires_in=-120),
        _rejected(f'[{INVALID}, token audiences ["other-service"] is invalid for the target audiences ["bindcar"]]'),
    ),
    "expired and not yet valid: nbf comes first": (
        lambda c: sa_case(c, ["bindcar"], ["bindcar"], expires_in=-120, not_before=time.time() + 3600),
        _rejected(f"[{INVALID}, service account token is not valid yet]"),
    ),
    "issued in the future": (
        _signed(_issued_in(3600)),
        _rejected(f"[{INVALID}, service account token is issued in the future]"),
    ),
    "issued in the future, within the leeway": (_signed(_issued_in(30)), _ok(["bindcar"])),
    "not a JWT": (_not_a_jwt, _rejected(INVALID)),
    "a JWT of another issuer": (_other_issuer, _rejected(INVALID)),
    "deleted ServiceAccount": (
        _deleted_service_account,
        _rejected(f'[{INVALID}, serviceaccounts "<sa>" not found]'),
    ),
    "ServiceAccount deleted and created again": (
        _recreated_service_account,
        _rejected(f"[{INVALID}, service account UID (<new-uid>) does not match claim (<sa-uid>)]"),
    ),
    "token bound to a pod": (_bound_pod, _ok(["bindcar"], POD_KEYS)),
    "deleted bound pod": (_deleted_bound_pod, _rejected(f"[{INVALID}, service account token has been invalidated]")),
    "non-ServiceAccount user": (
        _static_user,
        {
            "code": 201,
            "authenticated": True,
            "user": {"username": "jane", "uid": "jane", "groups": ["system:authenticated"], "extra": []},
            "audiences": [API_AUDIENCE],
        },
    ),
    "non-ServiceAccount user, bindcar audience": (_static_user_for_bindcar, _rejected(INVALID)),
    "caller without RBAC": (
        _caller_without_rbac,
        {
            "code": 403,
            "reason": "Forbidden",
            "message": FORBIDDEN.format(user="system:serviceaccount:<ns>:<sa>"),
        },
    ),
    "caller the API server does not know": (
        _unknown_caller,
        {"code": 401, "reason": "Unauthorized", "message": "Unauthorized"},
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_tokenreview_contract(any_cluster: Cluster, scenario: str) -> None:
    make, expected = SCENARIOS[scenario]
    assert review(any_cluster, make(any_cluster)) == expected


# -- The local check's column: what the issuer's published keys alone decide ----------------------

LOCAL: dict[str, str | None] = {
    "valid token": "accepted",
    "token for another audience": "audience",
    "several audiences: the intersection, in the requested order": "accepted",
    "no audience requested: the API server's own": None,
    "API-audience token where bindcar is required": "audience",
    "expired": "expired",
    "not yet valid": "not_yet_valid",
    "forged signature": "signature",
    "forged, naming the issuer's kid": "signature",
    "forged, naming a kid the issuer does not have": "no_key",
    "expired within kube's minute of leeway": "accepted",
    "not yet valid within the leeway": "accepted",
    "expired and for another audience: the audiences come first": "audience",
    "expired and not yet valid: nbf comes first": "not_yet_valid",
    "issued in the future": "issued_in_future",
    "issued in the future, within the leeway": "accepted",
    "not a JWT": "undecided",
    "a JWT of another issuer": "undecided",
    "deleted ServiceAccount": "accepted",
    "ServiceAccount deleted and created again": "accepted",
    "token bound to a pod": "accepted",
    "deleted bound pod": "accepted",
    "non-ServiceAccount user": None,
    "non-ServiceAccount user, bindcar audience": "undecided",
    "caller without RBAC": "accepted",
    "caller the API server does not know": "accepted",
}
"""For each TokenReview scenario, what `flask_bindcar.jwtcheck.verify` answers with the keys the
cluster publishes: the `LocalRejection` reason, "accepted" (the TokenReview still has the last
word: the objects, the caller), "undecided" (only the API server can say), or None where no
audience is requested (flask-bindcar always requests its own)."""


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_local_check_answers_as_the_tokenreview(any_cluster: Cluster, scenario: str) -> None:
    """Where the published keys refuse a token, the refusal is the row's TokenReview answer, text
    for text; where they accept one that the TokenReview accepts, the user and audiences are its."""
    make, expected = SCENARIOS[scenario]
    c = any_cluster
    case = make(c)
    keys = parse_jwks(get(c, "/openid/v1/jwks", c.caller_token)[3])
    if case.audiences is None:
        assert LOCAL[scenario] is None
        return
    try:
        claims = verify(case.token, keys, [ISSUER], case.audiences)
    except LocalRejection as refused:
        assert refused.reason == LOCAL[scenario]
        assert _rejected(_generic(refused.error, case)) == expected
        return
    assert ("undecided" if claims is None else "accepted") == LOCAL[scenario]
    if claims is not None and expected.get("authenticated"):
        user = accepted_outcome(claims).user or {}
        assert {
            "code": 201,
            "authenticated": True,
            "user": {
                "username": _generic(user["username"], case),
                "uid": _generic(user["uid"], case),
                "groups": [_generic(g, case) for g in user["groups"]],
                "extra": sorted(user.get("extra", {})),
            },
            "audiences": list(claims.granted),
        } == expected


# -- The issuer's documents: OpenID discovery and the signing keys ---------------------------------

ISSUER_PATHS = ["/.well-known/openid-configuration", "/.well-known/openid-configuration/", "/openid/v1/jwks"]


def get(cluster: Cluster, path: str, token: str | None) -> tuple[int, str | None, str | None, Any]:
    """GET ``path`` as the holder of ``token`` (None: anonymously): the status, the content type,
    the Cache-Control of a 200, and the decoded body."""
    response = requests.get(
        cluster.url + path,
        headers={"Authorization": f"Bearer {token}"} if token is not None else {},
        verify=str(cluster.ca_path),
        timeout=30,
    )
    cache = response.headers.get("Cache-Control") if response.status_code == 200 else None
    return response.status_code, response.headers.get("Content-Type"), cache, response.json()


def _forbidden_path(user: str, path: str) -> tuple[int, str, None, dict[str, Any]]:
    message = f'forbidden: User "{user}" cannot get path "{path}"'
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    return 403, "application/json", None, status | {"reason": "Forbidden", "details": {}, "code": 403}


@pytest.mark.parametrize("path", ISSUER_PATHS)
def test_issuer_documents_contract(any_cluster: Cluster, path: str) -> None:
    """Every ServiceAccount may read the discovery document and the keys (the default
    ``system:service-account-issuer-discovery`` binding); other users and anonymous callers may not."""
    c = any_cluster
    ns, name, _ = fresh(c)
    answers = {
        who: get(c, path, token)
        for who, token in {
            "a ServiceAccount": c.token(ns, name),
            "jane": c.add_caller("jane", can_review=False),
            "anonymous": None,
            "unknown": "not-a-credential-of-this-cluster",
        }.items()
    }
    document: Any
    if path.startswith("/.well-known"):
        kind = "application/json"
        document = {
            "issuer": ISSUER,
            "jwks_uri": c.url + "/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
    else:
        kind, document = "application/jwk-set+json", answers["a ServiceAccount"][3]
    assert answers == {
        "a ServiceAccount": (200, kind, "public, max-age=3600", document),
        "jane": _forbidden_path("jane", path),
        "anonymous": _forbidden_path("system:anonymous", path),
        "unknown": (
            401,
            "application/json",
            None,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            },
        ),
    }


def test_a_user_granted_the_path_may_read_the_keys(any_cluster: Cluster) -> None:
    """Beyond the default binding, RBAC decides: a user given ``get`` on a path reads that path, and
    that path alone (``/openid/v1/jwks/``, which no other test reads as jane: the grant outlives
    the test on the shared RealCluster)."""
    c = any_cluster
    jane = c.add_caller("jane", can_review=False)
    c.allow("jane", "get", path="/openid/v1/jwks/")
    assert get(c, "/openid/v1/jwks/", jane)[:3] == (200, "application/jwk-set+json", "public, max-age=3600")
    assert get(c, "/openid/v1/jwks", jane) == _forbidden_path("jane", "/openid/v1/jwks")


def test_the_published_key_is_the_one_tokens_name(any_cluster: Cluster) -> None:
    """The JWKS has one RSA key; its kid is kube-apiserver's key ID of it, tokens carry that kid,
    and it verifies them."""
    c = any_cluster
    ns, name, _ = fresh(c)
    token = c.token(ns, name, audiences=["bindcar"])
    _, _, _, document = get(c, "/openid/v1/jwks", c.token(ns, name))  # an API-audience token reads it
    [published] = document["keys"]
    assert sorted(published) == ["alg", "e", "kid", "kty", "n", "use"]
    assert (published["use"], published["kty"], published["alg"]) == ("sig", "RSA", "RS256")
    [key] = parse_jwks(document).keys
    assert published["kid"] == key_id(key.key) == jwt.get_unverified_header(token)["kid"]
    assert public_jwk(key.key) == published
    claims = jwt.decode(token, cast(Any, key.key), algorithms=["RS256"], audience="bindcar")
    assert claims["sub"] == f"system:serviceaccount:{ns}:{name}"


# -- TokenRequest: the lifetimes kube-apiserver accepts, and who may ask -----------------------------


def admin_token(cluster: Cluster) -> str:
    """A credential allowed everything: FakeCluster's default caller (one of its ``admins``), or
    RealCluster's cluster-admin (``system:masters``)."""
    if isinstance(cluster, FakeCluster):
        return cluster.caller_token
    return str(json.loads(cluster.admin_kubeconfig.read_text())["users"][0]["user"]["token"])


def grant_token_requests(cluster: Cluster, user: str, namespace: str) -> None:
    """Let ``user`` create ``serviceaccounts/token`` in ``namespace``: a Role and a RoleBinding."""
    if isinstance(cluster, FakeCluster):
        cluster.allow(user, "create", "serviceaccounts/token", namespace=namespace)
        return
    ns, name = user.removeprefix("system:serviceaccount:").split(":")
    rbac, role = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}", f"tokens-{uuid.uuid4().hex[:6]}"
    cluster.create_service_account(namespace, "default")  # the namespace exists
    rule = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}
    cluster.api("POST", f"{rbac}/roles", {"kind": "Role", "metadata": {"name": role}, "rules": [rule]})
    binding = {
        "kind": "RoleBinding",
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }
    cluster.api("POST", f"{rbac}/rolebindings", binding)
    spec = {
        "user": user,
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
        "resourceAttributes": {
            "verb": "create",
            "resource": "serviceaccounts",
            "subresource": "token",
            "namespace": namespace,
        },
    }
    deadline = time.monotonic() + 10
    while not cluster.api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {"spec": spec})["status"].get(
        "allowed"
    ):  # RBAC reaches the authorizer through a watch
        assert time.monotonic() < deadline, "the RoleBinding never took effect"
        time.sleep(0.05)


@dataclass
class TokenAsk:
    """One TokenRequest: for which account, with what spec, by whom (None: an administrator)."""

    namespace: str
    name: str
    spec: dict[str, Any]
    caller: str | None = None
    names: dict[str, str] = field(default_factory=dict)


def request_token(cluster: Cluster, ask: TokenAsk) -> dict[str, Any]:
    """POST the TokenRequest and keep what a client reads: the status, the lifetime granted and the
    token's subject, or the Status of a refusal; the names made generic."""
    response = requests.post(
        f"{cluster.url}/api/v1/namespaces/{ask.namespace}/serviceaccounts/{ask.name}/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": ask.spec},
        headers={"Authorization": f"Bearer {ask.caller or admin_token(cluster)}"},
        verify=str(cluster.ca_path),
        timeout=30,
    )
    body = response.json()
    case = Case("", names=ask.names)
    if response.status_code != 201:
        details = json.loads(_generic(json.dumps(body.get("details", {})), case))
        return {"code": response.status_code, "reason": body["reason"], "message": _generic(body["message"], case)} | (
            {"details": details} if details else {}
        )
    claims = jwt.decode(body["status"]["token"], options={"verify_signature": False})
    return {
        "code": 201,
        "expirationSeconds": body["spec"]["expirationSeconds"],
        "lifetime": claims["exp"] - claims["iat"],
        "sub": _generic(claims["sub"], case),
        "aud": claims["aud"],
        "warning": response.headers.get("Warning"),
    }


def _lifetime(seconds: int | None) -> Callable[[Cluster], TokenAsk]:
    def make(c: Cluster) -> TokenAsk:
        ns, name, names = fresh(c)
        return TokenAsk(ns, name, {} if seconds is None else {"expirationSeconds": seconds}, names=names)

    return make


def _asked_by_an_account(*, granted_in: str | None = None, account: bool = True) -> Callable[[Cluster], TokenAsk]:
    """An account of another namespace asks; ``granted_in``: "same" (the target's) or "other"."""

    def make(c: Cluster) -> TokenAsk:
        ns, name, names = fresh(c)
        caller_ns, caller, caller_names = fresh(c)
        names.update({k: v.replace("<", "<caller-") for k, v in caller_names.items()})
        user = f"system:serviceaccount:{caller_ns}:{caller}"
        if granted_in is not None:
            grant_token_requests(c, user, ns if granted_in == "same" else caller_ns)
        if not account:
            c.delete_service_account(ns, name)
        return TokenAsk(ns, name, {}, caller=c.token(caller_ns, caller), names=names)

    return make


def _no_such_account(c: Cluster) -> TokenAsk:
    ns, name, names = fresh(c)
    c.delete_service_account(ns, name)
    return TokenAsk(ns, name, {}, names=names)


def _unknown_token_caller(c: Cluster) -> TokenAsk:
    ns, name, names = fresh(c)
    return TokenAsk(ns, name, {}, caller="not-a-credential-of-this-cluster", names=names)


def _granted(seconds: int) -> dict[str, Any]:
    return {
        "code": 201,
        "expirationSeconds": seconds,
        "lifetime": seconds,
        "sub": "system:serviceaccount:<ns>:<sa>",
        "aud": [API_AUDIENCE],
        "warning": None,
    }


def _invalid_lifetime(seconds: int, why: str) -> dict[str, Any]:
    message = f"Invalid value: {seconds}: {why}"
    return {
        "code": 422,
        "reason": "Invalid",
        "message": f'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: {message}',
        "details": {
            "group": "authentication.k8s.io",
            "kind": "TokenRequest",
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": "spec.expirationSeconds"}],
        },
    }


TOKEN_FORBIDDEN = {
    "code": 403,
    "reason": "Forbidden",
    "message": 'serviceaccounts "<sa>" is forbidden: User "system:serviceaccount:<caller-ns>:<caller-sa>" cannot '
    'create resource "serviceaccounts/token" in API group "" in the namespace "<ns>"',
    "details": {"name": "<sa>", "kind": "serviceaccounts"},
}
SHORT = "may not specify a duration less than 10 minutes"
LONG = "may not specify a duration larger than 2^32 seconds"
YEARS_31 = 31 * 365 * 86400
TOKEN_REQUESTS: dict[str, tuple[Callable[[Cluster], TokenAsk], dict[str, Any]]] = {
    "no lifetime given: an hour": (_lifetime(None), _granted(3600)),
    "10 minutes, the shortest": (_lifetime(600), _granted(600)),
    "under 10 minutes": (_lifetime(599), _invalid_lifetime(599, SHORT)),
    "0 given is not 'not given'": (_lifetime(0), _invalid_lifetime(0, SHORT)),
    "31 years: no --service-account-max-token-expiration, no cap": (_lifetime(YEARS_31), _granted(YEARS_31)),
    "2^32 seconds, the longest": (_lifetime(2**32), _granted(2**32)),
    "over 2^32 seconds": (_lifetime(2**32 + 1), _invalid_lifetime(2**32 + 1, LONG)),
    "an account without RBAC asks": (_asked_by_an_account(), TOKEN_FORBIDDEN),
    "an account granted serviceaccounts/token in another namespace asks": (
        _asked_by_an_account(granted_in="other"),
        TOKEN_FORBIDDEN,
    ),
    "an account granted serviceaccounts/token in the namespace asks": (
        _asked_by_an_account(granted_in="same"),
        _granted(3600),
    ),
    "RBAC comes before the lookup: no such account, no right": (
        _asked_by_an_account(account=False),
        TOKEN_FORBIDDEN,
    ),
    "no such account": (
        _no_such_account,
        {
            "code": 404,
            "reason": "NotFound",
            "message": 'serviceaccounts "<sa>" not found',
            "details": {"name": "<sa>", "kind": "serviceaccounts"},
        },
    ),
    "a caller the API server does not know": (
        _unknown_token_caller,
        {"code": 401, "reason": "Unauthorized", "message": "Unauthorized"},
    ),
}


@pytest.mark.parametrize("scenario", list(TOKEN_REQUESTS))
def test_token_request_contract(any_cluster: Cluster, scenario: str) -> None:
    make, expected = TOKEN_REQUESTS[scenario]
    assert request_token(any_cluster, make(any_cluster)) == expected


# -- RBAC objects: what a grant made through the API looks like and does ------------------------------

RBAC_API = "/apis/rbac.authorization.k8s.io/v1"


def test_rbac_objects_contract(any_cluster: Cluster) -> None:
    """The RBAC objects kubectl creates: refused, created and bound as kube-apiserver does, and a
    RoleBinding of a ClusterRole grants in its namespace only, with RBAC's reason."""
    c, tag = any_cluster, uuid.uuid4().hex[:6]
    ns, sa, names = fresh(c)
    names[tag] = "<tag>"
    user = f"system:serviceaccount:{ns}:{sa}"
    case = Case("", names=names)

    def post(path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        response = requests.post(
            c.url + path,
            json=body,
            headers={"Authorization": f"Bearer {token or admin_token(c)}"},
            verify=str(c.ca_path),
            timeout=30,
        )
        answer = response.json()
        if response.status_code >= 400:
            return response.status_code, _generic(answer["message"], case)
        return response.status_code, answer.get("kind")

    role = {
        "metadata": {"name": f"zones-{tag}"},
        "rules": [{"apiGroups": ["bindcar.firestoned.io"], "resources": ["zones"], "verbs": ["delete"]}],
    }
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"zones-{tag}"}
    bound = {"metadata": {"name": f"zones-{tag}"}, "roleRef": ref, "subjects": [{"kind": "ServiceAccount", "name": sa}]}
    assert post(f"{RBAC_API}/clusterrolebindings", bound) == (
        422,
        'ClusterRoleBinding.rbac.authorization.k8s.io "zones-<tag>" is invalid: subjects[0].namespace: Required value',
    )
    assert post(f"{RBAC_API}/clusterroles", role, c.token(ns, sa)) == (
        403,
        'clusterroles.rbac.authorization.k8s.io is forbidden: User "system:serviceaccount:<ns>:<sa>" cannot create '
        'resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope',
    )
    assert post(f"{RBAC_API}/clusterroles", role) == (201, "ClusterRole")
    assert post(f"{RBAC_API}/clusterroles", role) == (
        409,
        'clusterroles.rbac.authorization.k8s.io "zones-<tag>" already exists',
    )
    assert post(f"{RBAC_API}/namespaces/{ns}/rolebindings", bound) == (201, "RoleBinding")

    def may_delete_zone(namespace: str) -> dict[str, Any]:
        attrs = {"verb": "delete", "group": "bindcar.firestoned.io", "resource": "zones", "namespace": namespace}
        spec = {"user": user, "groups": ["system:authenticated"], "resourceAttributes": attrs}
        deadline = time.monotonic() + 10
        while True:  # RBAC reaches kube-apiserver's authorizer through a watch
            answer = requests.post(
                c.url + "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                json={"spec": spec},
                headers={"Authorization": f"Bearer {admin_token(c)}"},
                verify=str(c.ca_path),
                timeout=30,
            ).json()["status"]
            if answer.get("allowed") or time.monotonic() > deadline or namespace != ns:
                return {k: _generic(v, case) if isinstance(v, str) else v for k, v in answer.items()}
            time.sleep(0.05)

    assert may_delete_zone(ns) == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "zones-<tag>/<ns>" of ClusterRole "zones-<tag>" to '
        'ServiceAccount "<sa>/<ns>"',
    }
    assert may_delete_zone("default") == {"allowed": False}


def test_default_caller_is_the_same_on_both(any_cluster: Cluster) -> None:
    assert DEFAULT_CALLER == "system:serviceaccount:dns-system:bindcar"
    claims = jwt.decode(any_cluster.caller_token, options={"verify_signature": False})
    assert claims["iss"] == ISSUER
    assert claims["sub"] == DEFAULT_CALLER
    assert claims["aud"] == [API_AUDIENCE]
    assert any_cluster.can_review(DEFAULT_CALLER)


def test_real_cluster_without_its_binaries_names_the_make_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(AssetsMissing) as info:
        RealCluster()
    assert str(info.value) == (
        f"RealCluster needs etcd, kube-apiserver, kubectl in KUBEBUILDER_ASSETS (looked in {tmp_path}). Build them "
        "with `make cluster-assets` (needs Go), or point KUBEBUILDER_ASSETS at envtest's binaries."
    )
