"""Troubleshooting: ``doctor`` and ``review`` against the stand-in, and the startup posture check."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_bindcar import AuthConfig, BindcarAuth, ConfigError
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.doctor import SYMBOLS, doctor, rbac_yaml
from flask_bindcar.testing import DEFAULT_CALLER, FakeCluster
from tests.conftest import keep_log
from tests.gunicorn_server import ROOT, base_environment


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "flask_bindcar", *args],
        env={**base_environment(), **env},
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    keep_log("cli-" + args[0], result.stdout, result.stderr)  # the leak check reads it
    return result


def tokenreview_env(kubeconfig: Path, **extra: str) -> dict[str, str]:
    return {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(kubeconfig), **extra}


def checks_of(output: str) -> list[dict[str, Any]]:
    return list(json.loads(output)["checks"])


def without_timings(text: str) -> str:
    return re.sub(r"\d+\.\d ms", "_ ms", text)


def assert_json_matches_text(env: dict[str, str]) -> list[dict[str, Any]]:
    """Two runs, one text and one JSON, say the same (but for the latencies they measured)."""
    text = without_timings(run(["doctor"], env).stdout)
    checks = checks_of(run(["doctor", "--json"], env).stdout)
    for check in checks:
        assert without_timings(f"{SYMBOLS[check['status']]} {check['name']}: {check['detail']}") in text
    return checks


def test_doctor_all_good(fake_kubeconfig: Path) -> None:
    env = tokenreview_env(
        fake_kubeconfig,
        BIND_ALLOWED_NAMESPACES="dns-system",
        BIND_TOKEN_AUDIENCES="bindcar,dns-api",
        GUNICORN_CMD_ARGS="--threads 8",
    )
    result = run(["doctor"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "all checks passed"
    assert f"✔ client: created from kubeconfig {fake_kubeconfig}, context fake-cluster" in result.stdout
    assert '    mode = "tokenreview"  (environment BIND_AUTH_MODE)' in result.stdout
    assert "    cache_ttl = 10.0  (default)" in result.stdout
    checks = assert_json_matches_text(env)
    assert [(c["name"], c["status"]) for c in checks] == [
        ("configuration", "pass"),
        ("posture", "pass"),
        ("bulkhead", "pass"),
        ("client", "pass"),
        ("api server", "pass"),
        ("local pre-check", "pass"),
        ("permission", "pass"),
        ("authorization permission", "skip"),
        ("token review", "pass"),
    ]
    assert checks[5]["detail"] == (
        "1 key of https://kubernetes.default.svc.cluster.local from /openid/v1/jwks (through the API server)"
    )
    assert checks[5]["lines"][0].startswith("kid ")
    assert checks[4]["detail"].startswith("https://127.0.0.1:")
    assert "answered /version (v1.31.0-fake) in " in checks[4]["detail"]


PER_VIEW_POINTER = (
    "- authorization permission: BIND_AUTHZ is not set; views with their own @auth_required(rbac=...) are not "
    "seen from here: flask --app <your app> bindcar doctor finds them and checks this permission"
)
MAY_CREATE_SARS = (
    "✔ authorization permission: system:serviceaccount:dns-system:bindcar may create "
    "subjectaccessreviews.authorization.k8s.io"
)


def test_doctor_without_the_app_points_to_the_flask_command_for_per_view_rbac(fake_kubeconfig: Path) -> None:
    """The plain command sees no views: without BIND_AUTHZ it names the command that checks them."""
    env = tokenreview_env(fake_kubeconfig, BIND_ALLOWED_NAMESPACES="dns-system")
    result = run(["doctor"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert without_timings(result.stdout).splitlines()[-4:] == [
        "✔ permission: system:serviceaccount:dns-system:bindcar may create tokenreviews.authentication.k8s.io",
        PER_VIEW_POINTER,
        "✔ token review: a probe TokenReview of an invalid token: rejected, as it should be, _ ms",
        "all checks passed",
    ]


def test_doctor_with_app_wide_rbac_checks_the_permission_itself(fake_kubeconfig: Path) -> None:
    env = tokenreview_env(fake_kubeconfig, BIND_ALLOWED_NAMESPACES="dns-system", BIND_AUTHZ="path")
    result = run(["doctor"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert without_timings(result.stdout).splitlines()[-3:] == [
        MAY_CREATE_SARS,
        "✔ token review: a probe TokenReview of an invalid token: rejected, as it should be, _ ms",
        "all checks passed",
    ]


def test_doctor_caller_without_rbac_prints_the_rbac_to_apply(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    fake_cluster.revoke_token_review(DEFAULT_CALLER)
    env = tokenreview_env(fake_kubeconfig, BIND_ALLOWED_NAMESPACES="dns-system")
    result = run(["doctor"], env)
    assert result.returncode == 1
    assert "✘ permission: system:serviceaccount:dns-system:bindcar may not create tokenreviews" in result.stdout
    assert "    fix: apply this RBAC (kubectl apply -f -):" in result.stdout
    checks = {c["name"]: c for c in assert_json_matches_text(env)}
    assert checks["permission"]["fix"] == "apply this RBAC (kubectl apply -f -):\n" + rbac_yaml("dns-system", "bindcar")
    assert checks["token review"]["status"] == "fail"
    assert "HTTP 403 Forbidden" in checks["token review"]["detail"]


def test_rbac_yaml_is_the_deployed_one() -> None:
    assert rbac_yaml("dns-system", "bindcar") == (ROOT / "example_app" / "deploy" / "rbac.yaml").read_text()


@pytest.mark.parametrize("how", ["stopped", "hanging"])
def test_doctor_unreachable_api_server_fails_fast(tmp_path: Path, how: str) -> None:
    with FakeCluster(workdir=tmp_path) as cluster:  # its CA file outlives it
        kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
        config = AuthConfig.load(
            {"mode": "tokenreview", "kubeconfig": str(kubeconfig), "review_timeout": 1}, environ={}
        )
        url = cluster.url
        started = time.monotonic()
        if how == "hanging":
            with cluster.faulty("hang"):
                report = doctor(config)
    if how == "stopped":
        report = doctor(config)
    assert time.monotonic() - started < cluster.hang_seconds / 2  # one timeout, not a hang
    assert not report.ok
    checks = {c.name: c for c in report.checks}
    assert checks["api server"].status == "fail"
    assert checks["api server"].detail.startswith(f"{url} did not answer /version: ")
    assert checks["api server"].fix == f"check that {url} is reachable from here: network policy, proxy, firewall, DNS"
    assert (checks["permission"].status, checks["token review"].status) == ("skip", "skip")


def test_doctor_missing_kubeconfig_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "kubeconfig"
    result = run(["doctor"], tokenreview_env(missing))
    assert result.returncode == 1
    assert f"✘ client: cannot create the Kubernetes client: kubeconfig {missing} does not exist" in result.stdout
    assert f"point KUBECONFIG at a kubeconfig that exists (now {missing})" in result.stdout


def test_doctor_basic_mode_warns(tmp_path: Path) -> None:
    result = run(["doctor"], {})
    assert result.returncode == 0
    assert "⚠ posture: Basic mode without BIND_API_TOKEN: any well-formed bearer token is accepted" in result.stdout
    assert "- kubernetes: Basic mode does not call the Kubernetes API" in result.stdout
    assert [c["status"] for c in checks_of(run(["doctor", "--json"], {}).stdout)] == ["pass", "warn", "skip"]


def test_doctor_warns_without_allowlist_and_with_the_default_audience(fake_kubeconfig: Path) -> None:
    checks = assert_json_matches_text(tokenreview_env(fake_kubeconfig))
    warnings = [c["detail"] for c in checks if c["status"] == "warn"]
    assert warnings == [
        "TokenReview mode without BIND_ALLOWED_NAMESPACES or BIND_ALLOWED_SERVICE_ACCOUNTS: every ServiceAccount "
        "of the cluster is accepted",
        "BIND_TOKEN_AUDIENCES is the default 'bindcar': tokens made for any service that also uses the default "
        "are accepted here",
    ]


def test_flask_cli_doctor_uses_the_apps_configuration(fake_kubeconfig: Path) -> None:
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig), allowed_namespaces="dns-system")
    result = app.test_cli_runner().invoke(args=["bindcar", "doctor", "--json"])
    assert result.exit_code == 0, result.output
    checks = checks_of(result.output)
    assert checks[0]["lines"][0] == 'mode = "tokenreview"  (keyword mode)'
    assert all(c["status"] != "fail" for c in checks)
    assert "authorization permission" not in [c["name"] for c in checks]  # it looked: no view needs RBAC


def test_flask_cli_doctor_finds_a_views_own_rbac(fake_kubeconfig: Path) -> None:
    from flask_bindcar import RBAC, auth_required

    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(fake_kubeconfig), allowed_namespaces="dns-system")
    app.add_url_rule(
        "/zones/<name>",
        "delete_zone",
        auth_required(rbac=RBAC(resource="zones", group="bindcar.firestoned.io", name="{name}"))(lambda name: name),
        methods=["DELETE"],
    )
    result = app.test_cli_runner().invoke(args=["bindcar", "doctor"])
    assert result.exit_code == 0, result.output
    assert without_timings(result.output).splitlines()[-3:] == [
        MAY_CREATE_SARS,
        "✔ token review: a probe TokenReview of an invalid token: rejected, as it should be, _ ms",
        "all checks passed",
    ]


# -- review ------------------------------------------------------------------------------------


def test_review_accepted_token(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    result = run(["review"], tokenreview_env(fake_kubeconfig, BIND_ALLOWED_NAMESPACES="dns-system"), stdin=token)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[1] == f"✔ header: a well-formed bearer token of {len(token)} characters"
    assert "✔ identity: system:serviceaccount:dns-system:external-dns (audiences ['bindcar'])" in lines
    assert "✔ namespace allowlist: dns-system is allowed" in lines
    assert "✔ serviceaccount allowlist: not set: all allowed" in lines
    assert lines[-2:] == ["✔ result: allowed as system:serviceaccount:dns-system:external-dns", "the token is accepted"]
    assert token not in result.stdout + result.stderr


def test_review_expired_token(fake_cluster: FakeCluster, fake_kubeconfig: Path, tmp_path: Path) -> None:
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"], expires_in=-120)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    result = run(["review", "--token-file", str(token_file)], tokenreview_env(fake_kubeconfig))
    assert result.returncode == 1
    message = "Token validation failed: [invalid bearer token, service account token has expired]"
    assert f"✘ local pre-check: refused locally: {message}" in result.stdout  # never sent to the TokenReview
    assert f"✘ result: 401 {json.dumps({'error': message})}" in result.stdout
    assert token not in result.stdout + result.stderr


def test_review_wrong_namespace(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    token = fake_cluster.token("default", "test-sa", audiences=["bindcar"])
    env = tokenreview_env(fake_kubeconfig, BIND_ALLOWED_NAMESPACES="dns-system")
    result = run(["review", "--json"], env, stdin=token)
    assert result.returncode == 1
    checks = checks_of(result.stdout)
    assert checks[-1] == {
        "name": "result",
        "status": "fail",
        "detail": '401 {"error": "Token validation failed: ServiceAccount from unauthorized namespace: default"}',
        "fix": None,
        "lines": [],
    }
    assert token not in result.stdout + result.stderr


def test_review_says_what_a_client_would_get(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    from flask_bindcar.review import review

    config = AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig)}, environ={})
    for token in ("invalid-token", fake_cluster.token("default", "x", audiences=["other"])):
        _, _, error = review(config, token)
        with pytest.raises(Exception) as info:
            Authenticator(config).authenticate(f"Bearer {token}")
        assert error is not None and error.message == info.value.message  # type: ignore[attr-defined]


# -- startup posture ---------------------------------------------------------------------------


def test_require_allowlist_refuses_to_start_without_one(fake_kubeconfig: Path) -> None:
    with pytest.raises(ConfigError, match=r"^BIND_REQUIRE_ALLOWLIST=true, but TokenReview mode has no allowlist"):
        AuthConfig.load(environ=tokenreview_env(fake_kubeconfig, BIND_REQUIRE_ALLOWLIST="true"))
    app = Flask(__name__)
    app.config["BINDCAR_REQUIRE_ALLOWLIST"] = True
    with pytest.raises(ConfigError):
        BindcarAuth(app, mode="tokenreview")
    AuthConfig.load(
        environ=tokenreview_env(fake_kubeconfig, BIND_REQUIRE_ALLOWLIST="true", BIND_ALLOWED_NAMESPACES="a")
    )


def test_no_allowlist_is_one_warning_at_startup(fake_kubeconfig: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="flask_bindcar"):
        Authenticator(AuthConfig.load(environ=tokenreview_env(fake_kubeconfig)))
    [warning] = caplog.records
    assert warning.getMessage().startswith(
        "flask-bindcar is in TokenReview mode without BIND_ALLOWED_NAMESPACES or BIND_ALLOWED_SERVICE_ACCOUNTS: "
        "every ServiceAccount of the cluster is accepted."
    )


# -- in process: the side paths of doctor and review ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "threads"),
    [
        ("", None),
        ("--threads 8", 8),
        ("--threads=4 --workers 2", 4),
        ("--threads", None),
        ("--threads many", None),
        ("-k gevent --threads 8", None),
        ("--worker-class=eventlet --threads=8", None),
        ("--threads 8 -k gthread", 8),
        ("--bind 'unclosed", None),
    ],
)
def test_gunicorn_threads_from_gunicorn_cmd_args(args: str, threads: int | None) -> None:
    from flask_bindcar.doctor import gunicorn_threads

    assert gunicorn_threads({"GUNICORN_CMD_ARGS": args}) == threads


@pytest.mark.parametrize(
    ("token", "subject"),
    [
        (None, None),
        ("not-a-jwt", None),
        ("a.b", None),
        ("a.!!!.c", None),
        ("a." + "bm90IGpzb24" + ".c", None),  # "not json"
        ("a." + "WzFd" + ".c", None),  # [1]
        ("a." + "eyJzdWIiOiJhbGljZSJ9" + ".c", "alice"),  # {"sub":"alice"}
    ],
)
def test_the_subject_of_the_callers_own_token(token: str | None, subject: str | None) -> None:
    from flask_bindcar.doctor import _jwt_subject

    assert _jwt_subject(token) == subject


def test_why_a_call_failed() -> None:
    from kubernetes.client.exceptions import ApiException

    from flask_bindcar.doctor import _why

    assert _why(ApiException(status=403, reason="Forbidden")) == "HTTP 403 Forbidden"
    assert _why(ApiException(status=500, reason=None)) == "HTTP 500"  # not "HTTP 500 None"
    assert _why(ValueError("x" * 400)) == ("ValueError: " + "x" * 400)[:300]


def test_review_in_basic_mode() -> None:
    from flask_bindcar.review import review

    config = AuthConfig.load({"mode": "basic", "api_token": "the-doctor-basic-secret"}, environ={})
    report, identity, error = review(config, "the-doctor-basic-secret")
    assert error is None and identity is not None and identity.method == "shared-secret"
    assert [(c.name, c.status, c.detail) for c in report.checks] == [
        ("header", "pass", "a well-formed bearer token of 23 characters"),
        ("basic mode", "pass", "accepted (shared-secret)"),
        ("result", "pass", report.checks[-1].detail),
    ]
    report, identity, error = review(config, "Bearer another-token")
    assert identity is None and error is not None
    assert [(c.name, c.status) for c in report.checks[:2]] == [("header", "pass"), ("basic mode", "fail")]
    assert report.checks[1].detail == error.message
    open_config = AuthConfig.load({"mode": "basic"}, environ={})
    report, identity, error = review(open_config, "anything-well-formed")
    assert error is None and identity is not None and identity.method == "basic"
    assert report.checks[1].detail == "accepted (basic)"


def test_review_of_a_route_whose_rbac_cannot_be_asked(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    from flask_bindcar import RBAC
    from flask_bindcar.review import Route, review

    rbac = RBAC(resource="zones", name="{name}")
    basic = AuthConfig.load({"mode": "basic"}, environ={})
    report, identity, error = review(basic, "a-well-formed-token", Route("DELETE", "/zones/x", "zone", rbac=rbac))
    assert identity is None and error is not None and error.reason == "not_configured"
    assert [c.name for c in report.checks][-2:] == ["rbac", "result"]
    assert report.text().splitlines()[-1] == "the token is valid; the request fails: no RBAC decision could be obtained"
    config = AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig)}, environ={})
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    report, identity, error = review(config, token, Route("DELETE", "/zones/x", "zone", rbac=rbac))
    assert identity is None and error is not None and error.reason == "bad_template"
    [rbac_check] = [c for c in report.checks if c.name == "rbac"]
    assert (rbac_check.status, rbac_check.detail) == (
        "fail",
        "Authorization unavailable: SubjectAccessReview API call failed: the route has no view argument 'name'",
    )


def test_doctor_when_the_permission_cannot_be_asked(tmp_path: Path) -> None:
    """The API server answers /version, but not the permission questions: each check says so."""
    from tests.hostile_api import HostileAPI, http_reply

    odd = http_reply(200, {"gitVersion": "v1.99.0", "status": "not a map"})
    with HostileAPI(lambda token: odd) as api:
        settings = {"mode": "tokenreview", "kubeconfig": str(api.write_kubeconfig(tmp_path)), "rbac": "path"}
        checks = {c.name: c for c in doctor(AuthConfig.load(settings, environ={})).checks}
    assert (checks["api server"].status, checks["client"].detail) == (
        "pass",
        "created from kubeconfig " + f"{tmp_path / 'hostile-kubeconfig'}, context hostile",
    )
    assert (checks["permission"].status, checks["permission"].detail) == (
        "fail",
        "could not ask whether this client may create tokenreviews: AttributeError: 'str' object has no attribute "
        "'get'",
    )
    assert (checks["authorization permission"].status, checks["authorization permission"].detail) == (
        "fail",
        "could not ask whether this client may create subjectaccessreviews: AttributeError: 'str' object has no "
        "attribute 'get'",
    )


@pytest.mark.parametrize(("precheck", "status"), [("auto", "warn"), ("on", "fail")])
def test_doctor_when_the_pre_check_cannot_read_the_keys(
    fake_cluster: FakeCluster, tmp_path: Path, precheck: str, status: str
) -> None:
    """A caller that is no ServiceAccount cannot read the issuer's documents: with auto the
    pre-check turns itself off (a warning), with on every uncached token would be refused."""
    kubeconfig = fake_cluster.write_kubeconfig(tmp_path / "jane", fake_cluster.add_caller("jane"))
    config = AuthConfig.load(
        {"mode": "tokenreview", "kubeconfig": str(kubeconfig), "token_precheck": precheck}, environ={}
    )
    check = {c.name: c for c in doctor(config).checks}["local pre-check"]
    why = (
        'GET /.well-known/openid-configuration: HTTP 403 Forbidden: forbidden: User "jane" cannot get path '
        '"/.well-known/openid-configuration" (api_rejected)'
    )
    expected = f"off in this process: {why}; tokens go to the TokenReview unchecked" if precheck == "auto" else why
    assert (check.status, check.detail) == (status, expected)


def test_doctor_pre_check_off_is_skipped(fake_kubeconfig: Path) -> None:
    config = AuthConfig.load(
        {"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig), "token_precheck": "off"}, environ={}
    )
    check = {c.name: c for c in doctor(config).checks}["local pre-check"]
    assert (check.status, check.detail) == ("skip", "token_precheck=off: every token goes to the TokenReview")
