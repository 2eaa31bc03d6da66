"""``review`` as a newcomer uses it: a whole header value piped in, and a view's own policy."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from example_app.app import create_app
from flask_bindcar.testing import FakeCluster
from tests.conftest import keep_log
from tests.gunicorn_server import ROOT, base_environment

DELETERS_ONLY = "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app"


def review(args: list[str], env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *args],
        env={**base_environment(), **env},
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    keep_log("cli-review", result.stdout, result.stderr)  # the leak check reads it
    return result


@pytest.mark.parametrize("form", ["Bearer {}", "bearer  {}\n", "Authorization: Bearer {}"])
def test_review_accepts_a_whole_header_value(fake_cluster: FakeCluster, fake_kubeconfig: Path, form: str) -> None:
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(fake_kubeconfig)}
    result = review(["-m", "flask_bindcar", "review"], env, form.format(token))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == f"✔ header: a well-formed bearer token of {len(token)} characters"
    assert lines[-2:] == ["✔ result: allowed as system:serviceaccount:dns-system:external-dns", "the token is accepted"]
    assert token not in result.stdout + result.stderr


def test_review_of_another_scheme_says_what_a_client_would_get() -> None:
    result = review(["-m", "flask_bindcar", "review"], {}, "Token abc")
    assert result.returncode == 1
    assert "✘ header: Invalid Authorization header format. Expected: Bearer <token>" in result.stdout


def test_flask_review_applies_the_views_own_policy(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, tmp_path: Path
) -> None:
    """The issue's command: the app-wide policy lets other-app in, DELETE's @auth_required does not."""
    token = fake_cluster.token("dns-system", "other-app", audiences=["bindcar"])
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(fake_kubeconfig), "ZONE_DATA_DIR": str(tmp_path)}
    flask = ["-m", "flask", "--app", "example_app.app:create_app", "bindcar", "review"]
    result = review([*flask, "--method", "DELETE", "--path", "/api/v1/zones/x"], env, token)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == (
        "✔ route: DELETE /api/v1/zones/x is view delete_zone: "
        "@auth_required(service_accounts=['system:serviceaccount:dns-system:external-dns'])"
    )
    assert f"✘ view policy: {DELETERS_ONLY}" in lines
    assert lines[-2:] == [f'✘ result: 401 {{"error": "{DELETERS_ONLY}"}}', "the token is rejected"]


Review = Callable[..., Result]


@pytest.fixture
def cli(fake_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Review:
    """``flask bindcar review ARGS`` on the example app, the token on stdin."""
    monkeypatch.setenv("BIND_AUTH_MODE", "tokenreview")
    monkeypatch.setenv("KUBECONFIG", str(fake_kubeconfig))
    runner = create_app(tmp_path).test_cli_runner()
    return lambda token, *args: runner.invoke(args=["bindcar", "review", *args], input=token)


ALLOWED = "✔ result: allowed as system:serviceaccount:dns-system:{}"


@pytest.mark.parametrize(
    ("account", "args", "verdict"),
    [
        ("other-app", [], ALLOWED.format("other-app")),
        ("other-app", ["--path", "/api/v1/zones"], ALLOWED.format("other-app")),
        ("external-dns", ["--method", "delete", "--path", "/api/v1/zones/x"], ALLOWED.format("external-dns")),
        ("other-app", ["--path", "/api/v1/health"], "✔ result: allowed: GET /api/v1/health needs no token"),
    ],
)
def test_flask_review_of_allowed_requests(
    cli: Review, fake_cluster: FakeCluster, account: str, args: list[str], verdict: str
) -> None:
    result = cli(fake_cluster.token("dns-system", account, audiences=["bindcar"]), *args)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2] == verdict


def test_flask_review_of_a_path_no_view_answers(cli: Review) -> None:
    result = cli("abc", "--method", "PUT", "--path", "/api/v1/zones")
    assert result.exit_code == 1
    assert "no view answers PUT /api/v1/zones (405 Method Not Allowed)" in result.output
    result = cli("abc", "--path", "/nowhere")
    assert result.exit_code == 1
    assert "no view answers GET /nowhere (404 Not Found)" in result.output


POD_BOUND_ONLY = "Token validation failed: token is not bound to a pod"


@pytest.mark.parametrize("pod", [None, "external-dns-7d4b9"])
def test_review_applies_the_app_wide_pod_binding(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, pod: str | None
) -> None:
    """BIND_REQUIRE_POD_BOUND_TOKEN=true refuses a token of no pod; review must say so, as a request meets it."""
    from flask_bindcar import AuthConfig
    from flask_bindcar.review import review as review_token

    config = AuthConfig.load(
        {"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig), "require_pod": True}, environ={}
    )
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod=pod)
    report, identity, error = review_token(config, token)
    last = [f"{c.name}: {c.detail}" for c in report.checks][-2:]
    if pod is None:
        assert (identity, error is not None and error.message) == (None, POD_BOUND_ONLY)
        assert last == [f"pod binding: {POD_BOUND_ONLY}", f'result: 401 {{"error": "{POD_BOUND_ONLY}"}}']
    else:
        assert (identity is not None and identity.pod_name, error) == (pod, None)
        assert last == [
            f"pod binding: bound to pod dns-system/{pod}",
            "result: allowed as system:serviceaccount:dns-system:external-dns",
        ]


def test_flask_review_applies_a_views_pod_binding(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    from flask import Flask

    from flask_bindcar import BindcarAuth, auth_required

    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig))
    app.add_url_rule("/pods-only", "pods_only", auth_required(require_pod=True)(lambda: "ok"))
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    result = app.test_cli_runner().invoke(args=["bindcar", "review", "--path", "/pods-only"], input=token)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[1] == "✔ route: GET /pods-only is view pods_only: @auth_required(require_pod=True)"
    assert f"✘ view policy: {POD_BOUND_ONLY}" in lines
    assert lines[-2:] == [f'✘ result: 401 {{"error": "{POD_BOUND_ONLY}"}}', "the token is rejected"]


ZONES = 'RBAC {"resource": "zones", "group": "bindcar.firestoned.io", "name": "{name}"}'
FORBIDDEN = (
    'Forbidden: system:serviceaccount:dns-system:external-dns cannot delete zones.bindcar.firestoned.io "other.org"'
)


def test_flask_review_of_a_view_guarded_by_rbac_alone(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    """The route line names the view's RBAC; a valid token RBAC refuses is not called a rejected token."""
    from flask import Flask

    from flask_bindcar import RBAC, BindcarAuth, auth_required

    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig))
    rbac = RBAC(resource="zones", group="bindcar.firestoned.io", name="{name}")
    app.add_url_rule("/zones/<name>", "zone", auth_required(rbac=rbac)(lambda name: name), methods=["DELETE"])
    user = "system:serviceaccount:dns-system:external-dns"
    fake_cluster.allow(user, "delete", "zones", group="bindcar.firestoned.io", name="example.com")
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    runner = app.test_cli_runner()
    review_delete = ["bindcar", "review", "--method", "DELETE", "--path"]

    denied = runner.invoke(args=[*review_delete, "/zones/other.org"], input=token)

    assert denied.exit_code == 1, denied.output
    lines = denied.output.splitlines()
    assert lines[1] == f"✔ route: DELETE /zones/other.org is view zone: {ZONES}"
    assert lines[-3:] == [
        f"✘ rbac: {FORBIDDEN}",
        f"✘ result: 403 {json.dumps({'error': FORBIDDEN})}",
        "the token is valid; the request is forbidden by RBAC",
    ]
    allowed = runner.invoke(args=[*review_delete, "/zones/example.com"], input=token)
    assert allowed.exit_code == 0, allowed.output
    assert allowed.output.splitlines()[-2:] == [f"✔ result: allowed as {user}", "the token is accepted"]


def test_flask_review_names_the_allowlist_then_the_rbac(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The example app's DELETE under ZONE_AUTHZ=rbac: its allowlist is checked first, then RBAC."""
    monkeypatch.setenv("BIND_AUTH_MODE", "tokenreview")
    monkeypatch.setenv("KUBECONFIG", str(fake_kubeconfig))
    monkeypatch.setenv("ZONE_AUTHZ", "rbac")
    runner = create_app(tmp_path).test_cli_runner()
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    result = runner.invoke(args=["bindcar", "review", "--method", "DELETE", "--path", "/api/v1/zones/x"], input=token)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[1] == (
        "✔ route: DELETE /api/v1/zones/x is view delete_zone: "
        f"@auth_required(service_accounts=['system:serviceaccount:dns-system:external-dns']), then {ZONES}"
    )
    assert lines[-1] == "the token is valid; the request is forbidden by RBAC"


def test_review_of_an_exempt_view_says_no_token_is_needed(cli: Review) -> None:
    result = cli("abc", "--path", "/api/v1/health")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [
        "✔ route: GET /api/v1/health is view health: exempt from authentication",
        "✔ result: allowed: GET /api/v1/health needs no token",
        "the request needs no token",
    ]
