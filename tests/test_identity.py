"""Who the caller is, where each user looks for it: the pod a token is bound to, the pod-bound
policy, and ``REMOTE_USER``, through both adapters, under gunicorn, and against a real kube-apiserver.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from flask import Flask, jsonify, request
from werkzeug.test import Client

from flask_bindcar import (
    AuthConfig,
    AuthError,
    BindcarAuth,
    BindcarMiddleware,
    ConfigError,
    Identity,
    auth_required,
    current_identity,
)
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.policy import ViewPolicy, identity_from_review
from flask_bindcar.testing import API_AUDIENCE, FakeCluster, RealCluster
from flask_bindcar.tokenreview import ReviewOutcome
from tests.gunicorn_server import TARGETS

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

NOT_BOUND = "Token validation failed: token is not bound to a pod"
WWW_TOKEN = 'Bearer realm="bindcar", error="invalid_token"'
EXTERNAL_DNS = "system:serviceaccount:dns-system:external-dns"
EXTRA = "authentication.kubernetes.io/"


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[FakeCluster]:
    """One FakeCluster for the module: every test makes its own tokens, and stopping one takes a while."""
    with FakeCluster() as cluster:
        yield cluster


@dataclass
class Setup:
    """A cluster, and a kubeconfig through which an app may review its tokens."""

    cluster: FakeCluster | RealCluster
    kubeconfig: Path

    def auth(self, **overrides: Any) -> Authenticator:
        settings = {"mode": "tokenreview", "kubeconfig": str(self.kubeconfig), **overrides}
        return Authenticator(AuthConfig.load(settings, environ={}))


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.cluster)])
def setup(request: pytest.FixtureRequest) -> Setup:
    """FakeCluster, and under ``--cluster`` a real kube-apiserver too: the same expectations hold for both."""
    name = str(request.param)
    return Setup(request.getfixturevalue(f"{name}_cluster"), request.getfixturevalue(f"{name}_kubeconfig"))


def unique(prefix: str) -> str:
    """A fresh name: the real cluster lives for the whole session."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the new Identity fields -----------------------------------------------------------------------


def test_a_pod_bound_token_names_its_pod(setup: Setup) -> None:
    pod = setup.cluster.create_pod("dns-system", unique("external-dns"), service_account="external-dns")
    token = setup.cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod=pod.name)

    identity = setup.auth().authenticate(f"Bearer {token}")

    assert (identity.username, identity.pod_name, identity.pod_uid) == (EXTERNAL_DNS, pod.name, pod.uid)
    assert identity.credential_id is not None
    assert identity.credential_id.startswith("JTI=")
    # A pod nobody scheduled runs on no node: the API server says nothing of one.
    assert (identity.node_name, identity.node_uid) == (None, None)
    assert identity.extra[EXTRA + "pod-name"] == (pod.name,)


def test_a_token_bound_to_no_pod_has_no_pod_fields(setup: Setup) -> None:
    token = setup.cluster.token("dns-system", "external-dns", audiences=["bindcar"])

    identity = setup.auth().authenticate(f"Bearer {token}")

    assert (identity.pod_name, identity.pod_uid, identity.node_name, identity.node_uid) == (None, None, None, None)
    assert identity.credential_id is not None
    assert identity.credential_id.startswith("JTI=")


def test_node_fields_come_from_the_review_when_the_pod_is_scheduled() -> None:
    # What kube-apiserver adds for a pod on a node (ServiceAccountTokenPodNodeInfo); neither test
    # cluster schedules pods, so the answer is written out here.
    extra = {
        EXTRA + "pod-name": ["external-dns-7d4b9"],
        EXTRA + "pod-uid": ["7c1a9f1e-0b7e-4c34-9a53-3f1f6f3d2b10"],
        EXTRA + "node-name": ["worker-1"],
        EXTRA + "node-uid": ["d1f0c7b2-5a8e-4f11-8c2e-0a4b6e1f9c33"],
        EXTRA + "credential-id": ["JTI=2d6c3a3e-7f42-4e3b-9b0a-51c7d0f4a8e1"],
    }
    user = {"username": EXTERNAL_DNS, "uid": "u-1", "groups": ["system:serviceaccounts"], "extra": extra}
    identity = identity_from_review(ReviewOutcome(True, user=user, audiences=("bindcar",)), ["bindcar"])
    assert (identity.pod_name, identity.pod_uid, identity.node_name, identity.node_uid, identity.credential_id) == (
        "external-dns-7d4b9",
        "7c1a9f1e-0b7e-4c34-9a53-3f1f6f3d2b10",
        "worker-1",
        "d1f0c7b2-5a8e-4f11-8c2e-0a4b6e1f9c33",
        "JTI=2d6c3a3e-7f42-4e3b-9b0a-51c7d0f4a8e1",
    )


def test_basic_mode_knows_no_pod() -> None:
    identity = Authenticator(AuthConfig.load(environ={})).authenticate("Bearer t")
    assert identity == Identity(method="basic")
    assert (identity.pod_name, identity.pod_uid, identity.node_name, identity.node_uid, identity.credential_id) == (
        None,
        None,
        None,
        None,
        None,
    )


# -- the pod-bound policy --------------------------------------------------------------------------


def test_the_pod_bound_policy_accepts_only_tokens_bound_to_a_pod(setup: Setup) -> None:
    auth = setup.auth(require_pod=True)
    pod = unique("external-dns")
    bound = setup.cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod=pod)
    unbound = setup.cluster.token("dns-system", "external-dns", audiences=["bindcar"])

    assert auth.authenticate(f"Bearer {bound}").pod_name == pod
    with pytest.raises(AuthError) as denied:
        auth.authenticate(f"Bearer {unbound}")
    assert (denied.value.code, denied.value.message, denied.value.reason) == (401, NOT_BOUND, "not_pod_bound")


def test_a_legacy_secret_token_is_not_pod_bound(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    # Legacy tokens are valid for the API server's own audience only.
    auth = Setup(fake_cluster, fake_kubeconfig).auth(
        require_pod=True, audiences=[API_AUDIENCE], allowed_namespaces=["dns-system"]
    )
    with pytest.raises(AuthError) as denied:
        auth.authenticate(f"Bearer {fake_cluster.legacy_token('dns-system', 'external-dns')}")
    assert denied.value.message == NOT_BOUND


def test_the_allowlists_speak_before_the_pod_binding(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    auth = Setup(fake_cluster, fake_kubeconfig).auth(require_pod=True, allowed_namespaces=["dns-system"])
    with pytest.raises(AuthError) as denied:
        auth.authenticate(f"Bearer {fake_cluster.token('default', 'my-app', audiences=['bindcar'])}")
    assert denied.value.message == "Token validation failed: ServiceAccount from unauthorized namespace: default"


def test_generic_errors_hide_the_reason(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    auth = Setup(fake_cluster, fake_kubeconfig).auth(require_pod=True, error_detail="generic")
    with pytest.raises(AuthError) as denied:
        auth.authenticate(f"Bearer {fake_cluster.token('dns-system', 'external-dns', audiences=['bindcar'])}")
    assert (denied.value.message, denied.value.reason) == ("Unauthorized", "not_pod_bound")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"BIND_REQUIRE_POD_BOUND_TOKEN": "true"}, True),
        ({"BIND_REQUIRE_POD_BOUND_TOKEN": "0"}, False),
    ],
)
def test_bind_require_pod_bound_token(environ: dict[str, str], expected: bool) -> None:
    config = AuthConfig.load(environ={"BIND_AUTH_MODE": "tokenreview", **environ})
    assert config.require_pod is expected


def test_bind_require_pod_bound_token_is_validated() -> None:
    with pytest.raises(ConfigError) as bad:
        AuthConfig.load(environ={"BIND_AUTH_MODE": "tokenreview", "BIND_REQUIRE_POD_BOUND_TOKEN": "maybe"})
    assert str(bad.value) == "BIND_REQUIRE_POD_BOUND_TOKEN='maybe' is not valid: expected true or false"


def test_basic_mode_cannot_require_a_pod() -> None:
    with pytest.raises(ConfigError) as bad:
        AuthConfig.load(environ={"BIND_REQUIRE_POD_BOUND_TOKEN": "true"})
    assert str(bad.value) == (
        "BIND_REQUIRE_POD_BOUND_TOKEN=true needs BIND_AUTH_MODE=tokenreview or jwt: in Basic mode nothing says "
        "which pod a token is bound to, so every request would be refused"
    )


def test_the_audit_record_names_the_pod(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = Setup(fake_cluster, fake_kubeconfig).auth()
    bound = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="external-dns-0")
    unbound = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with caplog.at_level(logging.INFO, logger="flask_bindcar.audit"):
        auth.authenticate(f"Bearer {bound}")
        identity = auth.authenticate(f"Bearer {unbound}")
        with pytest.raises(AuthError):
            auth.authorize(identity, ViewPolicy(require_pod=True))
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "flask_bindcar.audit"]
    assert [(r["result"], r["username"], r["pod_name"]) for r in records] == [
        ("allow", EXTERNAL_DNS, "external-dns-0"),
        ("allow", EXTERNAL_DNS, None),
        ("deny", EXTERNAL_DNS, None),
    ]
    assert records[-1]["message"] == NOT_BOUND


# -- both adapters: the policy and REMOTE_USER -----------------------------------------------------


def flask_app(**overrides: Any) -> Flask:
    app = Flask(__name__)

    @app.get("/api/v1/whoami")
    def whoami() -> Any:
        return jsonify(remote_user=request.remote_user, pod=current_identity.pod_name if current_identity else None)

    @app.get("/api/v1/pod-only")
    @auth_required(require_pod=True)
    def pod_only() -> Any:
        return jsonify(remote_user=request.remote_user, pod=current_identity.pod_name)

    BindcarAuth(app, **overrides)
    return app


def whoami(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    identity = environ.get("bindcar.identity")
    body = json.dumps({"remote_user": environ.get("REMOTE_USER"), "pod": identity.pod_name if identity else None})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]


Get = Callable[..., Any]


@pytest.fixture(params=["flask", "wsgi"])
def adapter(request: pytest.FixtureRequest, fake_kubeconfig: Path) -> Callable[..., Get]:
    """``adapter(**overrides)`` -> ``get(path, token=None)``: one of the two adapters, in process."""

    def build(**overrides: Any) -> Get:
        overrides.setdefault("kubeconfig", str(fake_kubeconfig))
        if request.param == "flask":
            client: Any = flask_app(**overrides).test_client()
        else:
            client = Client(BindcarMiddleware(whoami, **overrides))

        def get(path: str, token: str | None = None) -> Any:
            return client.get(path, headers=bearer(token) if token is not None else {})

        return get

    return build


def test_app_wide_pod_bound_policy_in_both_adapters(adapter: Callable[..., Get], fake_cluster: FakeCluster) -> None:
    get = adapter(mode="tokenreview", require_pod=True)
    bound = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="external-dns-0")
    unbound = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])

    ok = get("/api/v1/whoami", bound)
    assert (ok.status_code, ok.get_json()) == (200, {"remote_user": EXTERNAL_DNS, "pod": "external-dns-0"})
    denied = get("/api/v1/whoami", unbound)
    assert (denied.status_code, denied.get_json()) == (401, {"error": NOT_BOUND})
    assert denied.headers["WWW-Authenticate"] == WWW_TOKEN


def test_per_view_pod_bound_policy(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    client = flask_app(mode="tokenreview", kubeconfig=str(fake_kubeconfig)).test_client()
    bound = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="external-dns-0")
    unbound = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])

    assert client.get("/api/v1/whoami", headers=bearer(unbound)).get_json() == {
        "remote_user": EXTERNAL_DNS,
        "pod": None,
    }
    denied = client.get("/api/v1/pod-only", headers=bearer(unbound))
    assert (denied.status_code, denied.get_json()) == (401, {"error": NOT_BOUND})
    assert denied.headers["WWW-Authenticate"] == WWW_TOKEN
    ok = client.get("/api/v1/pod-only", headers=bearer(bound))
    assert (ok.status_code, ok.get_json()) == (200, {"remote_user": EXTERNAL_DNS, "pod": "external-dns-0"})


def test_per_view_pod_bound_policy_fails_closed_in_basic_mode() -> None:
    denied = flask_app().test_client().get("/api/v1/pod-only", headers=bearer("t"))
    assert (denied.status_code, denied.get_json()) == (401, {"error": NOT_BOUND})


def test_remote_user_is_the_username(adapter: Callable[..., Get], fake_cluster: FakeCluster) -> None:
    get = adapter(mode="tokenreview")
    token = fake_cluster.token("default", "my-app", audiences=["bindcar"])
    assert get("/api/v1/whoami", token).get_json() == {
        "remote_user": "system:serviceaccount:default:my-app",
        "pod": None,
    }


def test_remote_user_is_unset_when_nobody_is_named(adapter: Callable[..., Get]) -> None:
    # Basic mode knows no username; an exempt path knows no caller.
    assert adapter()("/api/v1/whoami", "t").get_json() == {"remote_user": None, "pod": None}
    get = adapter(exempt_paths=["/api/v1/whoami"])
    assert get("/api/v1/whoami").get_json() == {"remote_user": None, "pod": None}


# -- under gunicorn, with the example's configuration ----------------------------------------------

ACCESS = re.compile(r'^127\.0\.0\.1 - (?P<user>\S+) \[[^]]+\] "GET /api/v1/zones HTTP/1\.1" (?P<status>\d{3}) ', re.M)


@pytest.mark.parametrize("flavor", sorted(TARGETS))
def test_gunicorn_access_log_names_the_caller(
    flavor: str,
    serve: Callable[..., Any],
    fake_cluster: FakeCluster,
    fake_kubeconfig: Path,
    log_dir: Path,
    request: pytest.FixtureRequest,
) -> None:
    env = {
        "GUNICORN_CMD_ARGS": "-c example_app/gunicorn.conf.py",
        "GUNICORN_THREADS": "4",
        "PYTHONUNBUFFERED": "1",
        "BIND_AUTH_MODE": "tokenreview",
        "KUBECONFIG": str(fake_kubeconfig),
        "BIND_REQUIRE_POD_BOUND_TOKEN": "true",
    }
    bound = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="external-dns-0")
    unbound = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with serve(TARGETS[flavor], env) as url:
        ok = requests.get(f"{url}/api/v1/zones", headers=bearer(bound), timeout=10)
        assert (ok.status_code, ok.json()["caller"]) == (200, EXTERNAL_DNS)
        denied = requests.get(f"{url}/api/v1/zones", headers=bearer(unbound), timeout=10)
        assert (denied.status_code, denied.json()) == (401, {"error": NOT_BOUND})
    log = (log_dir / f"gunicorn-{re.sub(r'[^A-Za-z0-9_.-]', '_', request.node.name)}.log").read_text()
    assert [(m["user"], m["status"]) for m in ACCESS.finditer(log)] == [(EXTERNAL_DNS, "200"), ("-", "401")]
