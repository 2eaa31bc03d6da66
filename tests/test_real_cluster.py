"""End to end against a real kube-apiserver (`RealCluster`; ``make test-cluster``).

The guide's Testing section run as written — ``kubectl create serviceaccount``, ``kubectl create
token ... --audience=bindcar`` — then each request to an app under gunicorn, through both adapters;
``doctor`` and ``review``; the explicit in-cluster files with a rotated token; the deployment
manifests as the real API server admits them; ``allow``, FakeCluster's RBAC grant made real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from flask_bindcar import AuthConfig, AuthError
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.doctor import rbac_yaml
from flask_bindcar.testing import API_AUDIENCE, DEFAULT_CALLER, RealCluster
from flask_bindcar.testing.real import ApiError
from tests.gunicorn_server import ROOT, TARGETS, base_environment
from tests.test_doctor import run
from tests.test_fake_cluster_rbac_objects import ALLOW_SHAPES, allow_shapes

pytestmark = pytest.mark.cluster

ZONES = "/api/v1/zones"
Serve = Callable[..., AbstractContextManager[str]]


@pytest.fixture(params=sorted(TARGETS))
def app_on(
    request: pytest.FixtureRequest, serve: Serve, real_kubeconfig: Path
) -> Callable[..., AbstractContextManager[str]]:
    """``with app_on(**env) as url:`` — a test app under gunicorn, TokenReview against the real cluster."""
    flavor = str(request.param)

    @contextmanager
    def start(**env: str) -> Iterator[str]:
        settings = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(real_kubeconfig), **env}
        if flavor == "wsgi":
            settings["BIND_AUTH_EXEMPT_PATHS"] = "/api/v1/health"
        with serve(TARGETS[flavor], settings) as url:
            yield url

    return start


def kubectl(cluster: RealCluster, *args: str) -> str:
    return cluster.kubectl(*args).strip()


def create_serviceaccount(cluster: RealCluster, name: str, namespace: str) -> None:
    """``kubectl create serviceaccount NAME -n NAMESPACE``, as the guide does; one left by an earlier test is fine."""
    try:
        kubectl(cluster, "create", "serviceaccount", name, "-n", namespace)
    except RuntimeError as e:
        if "already exists" not in str(e):
            raise


def get(url: str, token: str) -> requests.Response:
    return requests.get(url + ZONES, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def assert_ok(response: requests.Response, caller: str) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"zones": [], "caller": caller, "method": "tokenreview"}


def assert_401(response: requests.Response, error: str) -> None:
    assert response.status_code == 401
    assert response.json() == {"error": error}
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="bindcar"')


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# -- the guide's Testing section -----------------------------------------------------------------


def test_guide_integration_invalid_token_and_audiences(real_cluster: RealCluster, app_on: Any) -> None:
    ns = unique("guide")
    kubectl(real_cluster, "create", "namespace", ns)
    create_serviceaccount(real_cluster, "my-app", ns)
    with app_on() as url:
        # "Test with a real Kubernetes cluster" and "Create token without audience": the API
        # server's own audience, refused while BIND_TOKEN_AUDIENCES is the default "bindcar".
        token = kubectl(real_cluster, "create", "token", "my-app", "-n", ns)
        assert_401(
            get(url, token),
            f'Token validation failed: [invalid bearer token, token audiences ["{API_AUDIENCE}"] is invalid for '
            'the target audiences ["bindcar"]]',
        )
        # "Testing Invalid Tokens"
        assert_401(get(url, "invalid-token"), "Token validation failed: token not authenticated")
        # "Create token with correct audience"
        token = kubectl(real_cluster, "create", "token", "my-app", "-n", ns, "--audience=bindcar")
        assert_ok(get(url, token), f"system:serviceaccount:{ns}:my-app")


def test_guide_namespace_restriction(real_cluster: RealCluster, app_on: Any) -> None:
    blocked = unique("blocked")
    kubectl(real_cluster, "create", "namespace", blocked)
    create_serviceaccount(real_cluster, "test-sa", "dns-system")
    create_serviceaccount(real_cluster, "test-sa", blocked)
    with app_on(BIND_ALLOWED_NAMESPACES="dns-system") as url:
        token = kubectl(real_cluster, "create", "token", "test-sa", "-n", "dns-system", "--audience=bindcar")
        assert_ok(get(url, token), "system:serviceaccount:dns-system:test-sa")
        token = kubectl(real_cluster, "create", "token", "test-sa", "-n", blocked, "--audience=bindcar")
        assert_401(get(url, token), f"Token validation failed: ServiceAccount from unauthorized namespace: {blocked}")


def test_guide_service_account_allowlist(real_cluster: RealCluster, app_on: Any) -> None:
    for name in ("external-dns", "other-app"):
        create_serviceaccount(real_cluster, name, "dns-system")
    with app_on(BIND_ALLOWED_SERVICE_ACCOUNTS="system:serviceaccount:dns-system:external-dns") as url:
        token = kubectl(real_cluster, "create", "token", "external-dns", "-n", "dns-system", "--audience=bindcar")
        assert_ok(get(url, token), "system:serviceaccount:dns-system:external-dns")
        token = kubectl(real_cluster, "create", "token", "other-app", "-n", "dns-system", "--audience=bindcar")
        assert_401(
            get(url, token),
            "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app",
        )


def test_a_caller_without_rbac_gets_the_api_servers_403(real_cluster: RealCluster, app_on: Any, tmp_path: Path) -> None:
    ns, name = "dns-system", unique("no-rbac")
    caller = real_cluster.token(ns, name)
    kubeconfig = real_cluster.write_kubeconfig(tmp_path / "no-rbac.kubeconfig", caller)
    token = real_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with app_on(KUBECONFIG=str(kubeconfig)) as url:
        assert_401(
            get(url, token),
            "Token validation failed: TokenReview API call failed: HTTP 403 Forbidden: "
            f'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:{ns}:{name}" cannot '
            'create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope',
        )


# -- what the real API server does that a stand-in might not ------------------------------------


def test_revocation_waits_for_the_api_servers_own_cache(real_cluster: RealCluster) -> None:
    """kube-apiserver caches a successful authentication for 10 s: a deleted account's token that was
    just reviewed still passes until then. flask-bindcar's own cache is off here."""
    ns, name = "dns-system", unique("revoked")
    token = real_cluster.token(ns, name, audiences=["bindcar"])
    auth = Authenticator(
        AuthConfig.load(
            {
                "mode": "tokenreview",
                "kubeconfig": str(real_cluster.write_kubeconfig(real_cluster.workdir / f"{name}.kc")),
            },
            environ={"BIND_TOKEN_CACHE_TTL": "0", "BIND_TOKEN_CACHE_FAILURE_TTL": "0"},
        )
    )
    assert auth.authenticate(f"Bearer {token}").username == f"system:serviceaccount:{ns}:{name}"
    real_cluster.delete_service_account(ns, name)
    deadline = time.monotonic() + 30
    while True:
        try:
            auth.authenticate(f"Bearer {token}")
        except AuthError as e:
            assert e.message == f'Token validation failed: [invalid bearer token, serviceaccounts "{name}" not found]'
            break
        assert time.monotonic() < deadline, "the deleted account's token was still accepted after 30 s"
        time.sleep(0.5)


def test_pod_bound_token_carries_the_pod_and_dies_with_it(real_cluster: RealCluster) -> None:
    ns, name, pod = "dns-system", unique("bound"), unique("pod")
    token = real_cluster.token(ns, name, audiences=["bindcar"], pod=pod)
    auth = Authenticator(
        AuthConfig.load(
            {
                "mode": "tokenreview",
                "kubeconfig": str(real_cluster.write_kubeconfig(real_cluster.workdir / f"{name}.kc")),
            },
            environ={},
        )
    )
    real_cluster.delete_pod(ns, pod)  # before any review, so the API server has nothing cached
    with pytest.raises(AuthError) as info:
        auth.authenticate(f"Bearer {token}")
    assert (
        info.value.message
        == "Token validation failed: [invalid bearer token, service account token has been invalidated]"
    )
    token = real_cluster.token(ns, name, audiences=["bindcar"], pod=unique("pod"))
    identity = auth.authenticate(f"Bearer {token}")
    assert identity.username == f"system:serviceaccount:{ns}:{name}"
    assert sorted(identity.extra) == [
        "authentication.kubernetes.io/credential-id",
        "authentication.kubernetes.io/pod-name",
        "authentication.kubernetes.io/pod-uid",
    ]


# -- doctor and review -----------------------------------------------------------------------------


def checks(output: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(output)["checks"]}


def test_doctor_healthy(real_kubeconfig: Path) -> None:
    env = {
        "BIND_AUTH_MODE": "tokenreview",
        "KUBECONFIG": str(real_kubeconfig),
        "BIND_ALLOWED_NAMESPACES": "dns-system",
        "BIND_TOKEN_AUDIENCES": "bindcar,dns-api",
        "GUNICORN_CMD_ARGS": "--threads 8",
    }
    result = run(["doctor"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "all checks passed"
    found = checks(run(["doctor", "--json"], env).stdout)
    assert "answered /version (v1.37.2) in " in found["api server"]["detail"]
    assert found["permission"]["status"] == "pass"
    assert found["token review"]["status"] == "pass"


def test_doctor_without_rbac_shows_the_yaml_that_fixes_it(real_cluster: RealCluster, tmp_path: Path) -> None:
    ns, name = "dns-system", unique("doctor")
    kubeconfig = real_cluster.write_kubeconfig(tmp_path / "kubeconfig", real_cluster.token(ns, name))
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(kubeconfig), "BIND_ALLOWED_NAMESPACES": ns}
    result = run(["doctor", "--json"], env)
    assert result.returncode == 1
    found = checks(result.stdout)
    assert found["permission"]["status"] == "fail"
    assert found["permission"]["detail"].startswith(f"system:serviceaccount:{ns}:{name} may not create tokenreviews")
    assert found["permission"]["fix"] == "apply this RBAC (kubectl apply -f -):\n" + rbac_yaml(ns, name)
    assert found["token review"]["status"] == "fail"
    assert "HTTP 403 Forbidden" in found["token review"]["detail"]

    # The YAML doctor prints is what the real API server needs: applied, doctor passes.
    yaml = rbac_yaml(ns, name).replace("name: bindcar-tokenreview", f"name: {name}-tokenreview")
    real_cluster.kubectl("apply", "-f", "-", input=yaml)
    try:
        deadline = time.monotonic() + 15
        while (result := run(["doctor"], env)).returncode != 0:
            assert time.monotonic() < deadline, result.stdout
            time.sleep(0.5)
        assert result.stdout.splitlines()[-1] == "all checks passed"
    finally:
        real_cluster.kubectl("delete", "-f", "-", input=yaml)


def test_doctor_with_the_api_server_stopped(tmp_path: Path) -> None:
    with RealCluster(workdir=tmp_path / "cluster") as cluster:  # its CA file outlives it
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        url = cluster.url
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(kubeconfig), "BIND_TOKEN_REVIEW_TIMEOUT": "2"}
    result = run(["doctor", "--json"], env)
    assert result.returncode == 1
    found = checks(result.stdout)
    assert found["api server"]["status"] == "fail"
    assert found["api server"]["detail"].startswith(f"{url} did not answer /version: ")
    assert (found["permission"]["status"], found["token review"]["status"]) == ("skip", "skip")


def test_review_of_a_good_and_a_wrong_namespace_token(real_cluster: RealCluster, real_kubeconfig: Path) -> None:
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(real_kubeconfig), "BIND_ALLOWED_NAMESPACES": "dns-system"}
    good = real_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    result = run(["review"], env, stdin=good)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "✔ identity: system:serviceaccount:dns-system:external-dns (audiences ['bindcar'])" in result.stdout
    assert result.stdout.splitlines()[-1] == "the token is accepted"

    wrong = real_cluster.token("default", "test-sa", audiences=["bindcar"])
    result = run(["review", "--json"], env, stdin=wrong)
    assert result.returncode == 1
    assert checks(result.stdout)["result"]["detail"] == (
        '401 {"error": "Token validation failed: ServiceAccount from unauthorized namespace: default"}'
    )
    assert good not in result.stdout + result.stderr and wrong not in result.stdout + result.stderr


# -- in-cluster files ------------------------------------------------------------------------------


def test_in_cluster_files_and_a_rotated_token(real_cluster: RealCluster, tmp_path: Path) -> None:
    """The ServiceAccount mount in a folder, as the guide's KUBE_* variables name it; the kubelet's
    rotation (a new token in the same file) is picked up without a restart."""
    ns, name = "dns-system", unique("rotating")
    files = real_cluster.incluster_files(tmp_path / "serviceaccount", real_cluster.token(ns, name))
    environ = {
        **files.environ,
        "KUBE_API_SERVER": real_cluster.url,
        "KUBE_TOKEN_PATH": str(files.token),
        "KUBE_CA_CERT_PATH": str(files.ca_crt),
        "BIND_TOKEN_CACHE_TTL": "0",
        "BIND_TOKEN_CACHE_FAILURE_TTL": "0",
    }
    auth = Authenticator(AuthConfig.load({"mode": "tokenreview"}, environ=environ))
    token = real_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with pytest.raises(AuthError) as info:  # the mounted account may not review yet
        auth.authenticate(f"Bearer {token}")
    assert f'User \\"system:serviceaccount:{ns}:{name}\\" cannot create resource' in json.dumps(info.value.message)

    files.token.write_text(real_cluster.caller_token)  # the kubelet swaps in a new token
    assert auth.authenticate(f"Bearer {token}").username == "system:serviceaccount:dns-system:external-dns"
    assert auth.reviewer is not None and auth.reviewer.source == f"KUBE_API_SERVER {real_cluster.url}"


IN_CLUSTER_MOUNT = "/run/secrets/kubernetes.io/serviceaccount"
"""Where the official client's in-cluster loader reads the ServiceAccount (``/var/run`` is ``/run``)."""


def in_a_pod(mount: Path) -> list[str]:
    """A command prefix running a command as in a Pod: in a mount namespace of its own, with ``mount``
    where the kubelet puts the ServiceAccount. Needs root (unshare and mount), as CI has."""
    script = 'mount -t tmpfs tmpfs /run && mkdir -p "$0" && mount --bind "$1" "$0" && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, IN_CLUSTER_MOUNT, str(mount)]


def test_in_cluster_mode_under_gunicorn_picks_up_a_rotated_token(
    real_cluster: RealCluster, serve: Serve, tmp_path: Path
) -> None:
    """No kubeconfig, only KUBERNETES_SERVICE_HOST/PORT and the mount at its real path: the official
    in-cluster loader, as in a Pod. The kubelet rotates the token; the client re-reads it (it checks
    the file about once a minute), without a restart."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"], check=False).returncode:
        pytest.fail("this test needs unshare --mount (util-linux, run as root)")
    ns, name = "dns-system", unique("in-pod")
    files = real_cluster.incluster_files(tmp_path / "serviceaccount", real_cluster.token(ns, name))
    env = {**files.environ, "BIND_AUTH_MODE": "tokenreview", "BIND_TOKEN_CACHE_FAILURE_TTL": "0"}
    token = real_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with serve(TARGETS["flask"], env, wrapper=in_a_pod(files.token.parent)) as url:
        assert_401(
            get(url, token),
            "Token validation failed: TokenReview API call failed: HTTP 403 Forbidden: "
            f'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:{ns}:{name}" cannot '
            'create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope',
        )
        files.token.write_text(real_cluster.caller_token)  # the kubelet swaps in a token that may review
        deadline = time.monotonic() + 120
        while (response := get(url, token)).status_code != 200:
            assert time.monotonic() < deadline, f"the rotated token was not picked up: {response.text}"
            time.sleep(2)
        assert_ok(response, "system:serviceaccount:dns-system:external-dns")


# -- the deployment manifests ----------------------------------------------------------------------


def test_manifests_are_admitted_and_grant_exactly_tokenreviews(real_cluster: RealCluster) -> None:
    deploy = ROOT / "example_app" / "deploy"
    dry_run = real_cluster.kubectl("apply", "--dry-run=server", "-f", str(deploy))
    assert "deployment.apps/bindcar-example created (server dry run)" in dry_run

    def can_i(verb: str, resource: str) -> str:
        done = subprocess.run(
            [
                str(real_cluster.assets / "kubectl"),
                f"--kubeconfig={real_cluster.admin_kubeconfig}",
                "auth",
                "can-i",
                verb,
                resource,
                f"--as={DEFAULT_CALLER}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout.strip()

    real_cluster.revoke_token_review(DEFAULT_CALLER)
    try:
        assert can_i("create", "tokenreviews") == "no"
        real_cluster.kubectl("apply", "-f", str(deploy / "namespace.yaml"), "-f", str(deploy / "serviceaccount.yaml"))
        real_cluster.kubectl("apply", "-f", str(deploy / "rbac.yaml"))
        deadline = time.monotonic() + 15
        while can_i("create", "tokenreviews") != "yes":
            assert time.monotonic() < deadline, "the deployed RBAC did not allow tokenreviews"
            time.sleep(0.2)
        assert can_i("create", "subjectaccessreviews") == "no"
        assert can_i("get", "secrets") == "no"
    finally:
        real_cluster.kubectl("delete", "--ignore-not-found", "-f", str(deploy / "rbac.yaml"))
        real_cluster.grant_token_review(DEFAULT_CALLER)


# -- the command line and the README ---------------------------------------------------------------


def test_readme_snippet(tmp_path: Path) -> None:
    """The README's RealCluster example (tests/test_readme.py checks the text is this one)."""
    with RealCluster() as cluster:  # ready in a few seconds
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")  # the app's own identity
        token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])  # TokenRequest
        auth = Authenticator(AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(kubeconfig)}, environ={}))
        assert auth.authenticate(f"Bearer {token}").username == "system:serviceaccount:dns-system:external-dns"


def test_standalone_real_cluster_command(tmp_path: Path) -> None:
    folder = tmp_path / "rc"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask_bindcar.testing", "--real", "--dir", str(folder), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=base_environment(),
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["kubeconfig"] == str(folder / "kubeconfig")
        token = info["tokens"]["dns-system/external-dns"]
        auth = Authenticator(AuthConfig.load({"mode": "tokenreview", "kubeconfig": info["kubeconfig"]}, environ={}))
        assert auth.authenticate(f"Bearer {token}").username == "system:serviceaccount:dns-system:external-dns"
        version = subprocess.run(
            [info["kubectl"], f"--kubeconfig={info['admin_kubeconfig']}", "version", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(version.stdout)["serverVersion"]["gitVersion"] == "v1.37.2"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert not (folder / "etcd").exists()


@pytest.mark.parametrize("shape", ALLOW_SHAPES)
def test_allow_returns_once_rbac_agrees_with_the_rules_reason(real_cluster: RealCluster, shape: str) -> None:
    """Each kind of grant FakeCluster.allow makes, made real: in force when allow returns, and
    allowed for the reason the returned `Rule` gives (the stand-in's reason for the same rule)."""
    arguments = allow_shapes(f"allow-{uuid.uuid4().hex[:6]}")[shape]
    rule = real_cluster.allow(arguments.pop("subject"), arguments.pop("verb"), **arguments)
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": rule.probe()}
    answer = real_cluster.api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    assert answer["status"] == {"allowed": True, "reason": rule.reason}
    assert rule.binding.startswith("real-rbac-")


def test_allow_refuses_a_binding_that_exists_and_what_rbac_cannot_express(real_cluster: RealCluster) -> None:
    namespace = f"allow-{uuid.uuid4().hex[:6]}"
    user = f"system:serviceaccount:{namespace}:external-dns"
    first = real_cluster.allow(user, "get", "zones", namespace=namespace, binding="zones")
    assert first.reason == f'RBAC: allowed by RoleBinding "zones/{namespace}" of Role "zones" to ServiceAccount ' + (
        f'"external-dns/{namespace}"'
    )
    with pytest.raises(ApiError) as info:
        real_cluster.allow(user, "delete", "zones", namespace=namespace, binding="zones")
    assert (info.value.status, info.value.body["reason"]) == (409, "AlreadyExists")
    with pytest.raises(ValueError, match=r"^allow\(\) takes a resource or a path, not both$"):
        real_cluster.allow(user, "get", "zones", path="/zones", binding="never-made")
    with pytest.raises(ValueError, match=r"^a path \(nonResourceURLs\) can only be granted cluster-wide$"):
        real_cluster.allow(user, "get", path="/zones", namespace=namespace, binding="never-made")
    with pytest.raises(ApiError) as info:
        real_cluster.api("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/never-made")
    assert info.value.status == 404
