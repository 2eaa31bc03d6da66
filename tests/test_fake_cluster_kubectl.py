"""The standalone stand-in driven as the guide drives a cluster: the real kubectl, and the official
client's ServiceAccount and TokenRequest calls.

The kubectl tests need the kubectl that ``make cluster-assets`` builds, so they are marked
``cluster`` and run with ``make test-cluster``: the guide's account and token commands, and its RBAC
flow (a 403, a grant with ``kubectl apply`` or ``kubectl create ...binding``, a 200).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from example_app.app import create_app
from flask_bindcar import AuthConfig, AuthError
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.testing import API_AUDIENCE, FakeCluster
from flask_bindcar.testing.real import find_assets
from tests.conftest import api_client_for
from tests.gunicorn_server import ROOT, base_environment


@pytest.fixture
def standalone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """``python -m flask_bindcar.testing --dir fc --token ...`` with a relative --dir that does not exist yet."""
    monkeypatch.chdir(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flask_bindcar.testing",
            "--json",
            "--dir",
            "fc/nested",
            "--token",
            "dns-system/external-dns:bindcar,dns-api",
            "--token",
            "team-a/reporter",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**base_environment(), "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_relative_dir_gives_a_kubeconfig_that_loads_anywhere(standalone: dict[str, Any], tmp_path: Path) -> None:
    kubeconfig = Path(standalone["kubeconfig"])
    assert kubeconfig == tmp_path / "fc" / "nested" / "kubeconfig"
    ca = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["certificate-authority"]
    assert ca == str(tmp_path / "fc" / "nested" / "ca.crt")
    assert client.VersionApi(api_client_for(kubeconfig)).get_code().major == "1"


def test_token_flags_mint_tokens_at_start(standalone: dict[str, Any]) -> None:
    tokens = standalone["tokens"]
    assert sorted(tokens) == ["dns-system/external-dns", "team-a/reporter"]
    claims = jwt.decode(tokens["dns-system/external-dns"], options={"verify_signature": False})
    assert (claims["sub"], claims["aud"]) == ("system:serviceaccount:dns-system:external-dns", ["bindcar", "dns-api"])
    claims = jwt.decode(tokens["team-a/reporter"], options={"verify_signature": False})
    assert (claims["sub"], claims["aud"]) == ("system:serviceaccount:team-a:reporter", ["bindcar"])


def test_service_accounts_and_token_requests_through_the_official_client(
    fake_cluster: FakeCluster, fake_kubeconfig: Path
) -> None:
    core = client.CoreV1Api(api_client_for(fake_kubeconfig, retries=False))
    created = core.create_namespaced_service_account("dns-system", {"metadata": {"name": "x"}})
    assert created.metadata.uid == fake_cluster.service_accounts[("dns-system", "x")].uid
    with pytest.raises(ApiException) as info:
        core.create_namespaced_service_account("dns-system", {"metadata": {"name": "x"}})
    assert (info.value.status, json.loads(info.value.body)["message"]) == (409, 'serviceaccounts "x" already exists')
    assert "x" in [sa.metadata.name for sa in core.list_namespaced_service_account("dns-system").items]
    assert core.read_namespaced_service_account("x", "dns-system").metadata.name == "x"

    request: Any = {"spec": {"audiences": ["bindcar"], "expirationSeconds": 600}}
    answer = core.create_namespaced_service_account_token("x", "dns-system", request)
    auth = Authenticator(AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig)}, environ={}))
    assert auth.authenticate(f"Bearer {answer.status.token}").username == "system:serviceaccount:dns-system:x"
    default = core.create_namespaced_service_account_token("x", "dns-system", {"spec": {}})
    assert jwt.decode(default.status.token, options={"verify_signature": False})["aud"] == [API_AUDIENCE]
    assert default.spec.expiration_seconds == 3600

    with pytest.raises(ApiException) as info:
        core.create_namespaced_service_account_token("x", "dns-system", {"spec": {"expirationSeconds": 60}})
    assert info.value.status == 422
    assert json.loads(info.value.body)["message"] == (
        'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: Invalid value: 60: '
        "may not specify a duration less than 10 minutes"
    )

    pod = {"metadata": {"name": "web-0"}, "spec": {"serviceAccountName": "x", "containers": [{"name": "app"}]}}
    core.create_namespaced_pod("dns-system", pod)
    bound: Any = {
        "spec": {"audiences": ["bindcar"], "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-0"}}
    }
    pod_token = core.create_namespaced_service_account_token("x", "dns-system", bound).status.token
    assert auth.authenticate(f"Bearer {pod_token}").extra["authentication.kubernetes.io/pod-name"] == ("web-0",)
    bound["spec"]["boundObjectRef"]["name"] = "nopod"
    with pytest.raises(ApiException) as info:
        core.create_namespaced_service_account_token("x", "dns-system", bound)
    assert (info.value.status, json.loads(info.value.body)["message"]) == (404, 'pods "nopod" not found')

    core.delete_namespaced_service_account("x", "dns-system")
    with pytest.raises(ApiException) as info:
        core.read_namespaced_service_account("x", "dns-system")
    assert (info.value.status, json.loads(info.value.body)["message"]) == (404, 'serviceaccounts "x" not found')
    with pytest.raises(AuthError) as failed:
        Authenticator(
            AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig), "cache_ttl": 0}, environ={})
        ).authenticate(f"Bearer {answer.status.token}")
    assert failed.value.message == 'Token validation failed: [invalid bearer token, serviceaccounts "x" not found]'


def test_unknown_callers_may_not_manage_accounts(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    kubeconfig = fake_cluster.write_kubeconfig(tmp_path / "kubeconfig", "not-a-token-of-this-cluster")
    core = client.CoreV1Api(api_client_for(kubeconfig, retries=False))
    with pytest.raises(ApiException) as info:
        core.create_namespaced_service_account("dns-system", {"metadata": {"name": "x"}})
    assert info.value.status == 401


@pytest.mark.cluster
def test_the_guides_kubectl_commands_against_the_standalone_stand_in(standalone: dict[str, Any]) -> None:
    kubectl = str(find_assets() / "kubectl")

    def run(*args: str) -> str:
        done = subprocess.run(
            [kubectl, f"--kubeconfig={standalone['kubeconfig']}", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run("create", "serviceaccount", "test-sa", "-n", "dns-system") == "serviceaccount/test-sa created"
    token = run("create", "token", "test-sa", "-n", "dns-system", "--audience=bindcar")
    settings = {"mode": "tokenreview", "kubeconfig": standalone["kubeconfig"], "cache_ttl": 0}
    auth = Authenticator(AuthConfig.load(settings, environ={}))
    assert auth.authenticate(f"Bearer {token}").username == "system:serviceaccount:dns-system:test-sa"
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == ["bindcar"]
    assert "test-sa" in run("get", "serviceaccounts", "-n", "dns-system")
    assert run("delete", "serviceaccount", "test-sa", "-n", "dns-system").startswith('serviceaccount "test-sa" deleted')
    with pytest.raises(AuthError) as failed:
        auth.authenticate(f"Bearer {token}")
    assert (
        failed.value.message == 'Token validation failed: [invalid bearer token, serviceaccounts "test-sa" not found]'
    )


@pytest.mark.cluster
def test_the_guides_rbac_flow_with_kubectl_against_the_standalone_stand_in(
    standalone: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """403, grant with kubectl, 200: the example app's DELETE (``ZONE_AUTHZ=rbac``) on the stand-in."""
    kubectl = str(find_assets() / "kubectl")

    def run(*args: str) -> str:
        done = subprocess.run(
            [kubectl, f"--kubeconfig={standalone['kubeconfig']}", *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    for name, value in {
        "BIND_AUTH_MODE": "tokenreview",
        "KUBECONFIG": standalone["kubeconfig"],
        "ZONE_AUTHZ": "rbac",
        "BIND_AUTHZ_CACHE_DENIED_TTL": "0",
    }.items():
        monkeypatch.setenv(name, value)
    zones = tmp_path / "zones"
    zones.mkdir()
    for zone in ("example.com", "example.org"):
        (zones / f"{zone}.json").write_text(json.dumps({"name": zone, "records": []}))
    app = create_app(zones).test_client()
    user = "system:serviceaccount:dns-system:external-dns"
    headers = {"Authorization": f"Bearer {standalone['tokens']['dns-system/external-dns']}"}

    before = app.delete("/api/v1/zones/example.com", headers=headers)
    assert (before.status_code, before.get_json()) == (
        403,
        {"error": f'Forbidden: {user} cannot delete zones.bindcar.firestoned.io "example.com"'},
    )
    assert run("apply", "-f", str(ROOT / "example_app" / "deploy" / "rbac-zones.yaml")).splitlines() == [
        "clusterrole.rbac.authorization.k8s.io/bindcar-zones-editor created",
        "clusterrolebinding.rbac.authorization.k8s.io/bindcar-zones-external-dns created",
        "clusterrolebinding.rbac.authorization.k8s.io/bindcar-auth-delegator created",
    ]
    after = app.delete("/api/v1/zones/example.com", headers=headers)
    assert (after.status_code, after.get_json()) == (
        200,
        {"deleted": "example.com", "caller": {"username": user, "method": "tokenreview"}},
    )
    assert run("apply", "-f", str(ROOT / "example_app" / "deploy" / "rbac-zones.yaml")).splitlines()[0] == (
        "clusterrole.rbac.authorization.k8s.io/bindcar-zones-editor unchanged"
    )

    # Revoked with kubectl delete, granted again with kubectl's typed commands (protobuf bodies).
    assert run("delete", "clusterrolebinding", "bindcar-zones-external-dns").startswith(
        'clusterrolebinding.rbac.authorization.k8s.io "bindcar-zones-external-dns" deleted'
    )
    assert app.delete("/api/v1/zones/example.org", headers=headers).status_code == 403
    assert run("create", "namespace", "team-b") == "namespace/team-b created"
    done = subprocess.run(
        [kubectl, f"--kubeconfig={standalone['kubeconfig']}", "create", "namespace", "team-a"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (
        1,
        'Error from server (AlreadyExists): namespaces "team-a" already exists\n',
    )
    assert (
        run(
            "create",
            "rolebinding",
            "zones",
            "-n",
            "team-b",
            "--clusterrole=bindcar-zones-editor",
            "--serviceaccount=dns-system:external-dns",
        )
        == "rolebinding.rbac.authorization.k8s.io/zones created"
    )
    assert app.delete("/api/v1/zones/example.org", headers=headers).status_code == 403  # zones: cluster-scoped
    assert (
        run(
            "create",
            "clusterrolebinding",
            "zones",
            "--clusterrole=bindcar-zones-editor",
            "--serviceaccount=dns-system:external-dns",
        )
        == "clusterrolebinding.rbac.authorization.k8s.io/zones created"
    )
    assert app.delete("/api/v1/zones/example.org", headers=headers).status_code == 200
    assert "zones" in run("get", "clusterrolebindings")
