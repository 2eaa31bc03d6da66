"""Issue 10: the failure limit counts only the client's own failures; configuration that cannot work
is refused; metrics and the client load stay sane under gevent; the bulkhead leaves threads free;
generic error bodies; and the smaller items (example app's 429, gunicorn's 431, the API server's
own audience)."""

from __future__ import annotations

import contextlib
import json
import runpy
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, jsonify
from werkzeug.test import Client

from flask_bindcar import AuthConfig, AuthError, BindcarAuth, BindcarMiddleware, ConfigError, auth_required
from flask_bindcar.doctor import doctor
from flask_bindcar.errors import RateLimited
from flask_bindcar.testing import FakeCluster
from tests.conftest import MakeAuth
from tests.gunicorn_server import ROOT, TARGETS, base_environment

API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def deny(auth: Any, header: str | None, addr: str = "10.0.0.1") -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.authenticate(header, remote_addr=addr)
    return info.value


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "flask_bindcar.audit"]


# -- 4. the failure limit counts only failures of the client's own credential ------------------


def test_api_outage_does_not_put_valid_clients_into_429(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(failure_limit="3/minute")
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with cluster.faulty("error500"):
        for _ in range(5):
            assert deny(auth, f"Bearer {token}").reason == "api_server_error"
    assert auth.authenticate(f"Bearer {token}", remote_addr="10.0.0.1").username == (
        "system:serviceaccount:dns-system:external-dns"
    )


def test_bulkhead_rejections_do_not_count_against_the_client(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(failure_limit="2/minute", review_max_inflight=1)
    attacker = cluster.token("dns-system", "attacker", audiences=["bindcar"])
    cluster.latency = 3.0  # longer than the four refusals below, each after the bulkhead's 0.25 s wait
    held = threading.Thread(target=lambda: auth.authenticate(f"Bearer {attacker}", remote_addr="10.9.9.9"))
    held.start()
    while cluster.review_requests < 1:  # the attacker's review holds the only slot
        threading.Event().wait(0.01)
    for i in range(4):
        fresh = cluster.token("dns-system", f"victim-{i}", audiences=["bindcar"])
        assert deny(auth, f"Bearer {fresh}").reason == "api_overloaded"
    held.join()
    cluster.latency = 0
    good = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    assert auth.authenticate(f"Bearer {good}", remote_addr="10.0.0.1").username


def test_client_build_failures_do_not_count(tmp_path: Path) -> None:
    from flask_bindcar.authenticator import Authenticator

    config = AuthConfig.load(
        {"mode": "tokenreview", "kubeconfig": str(tmp_path / "missing"), "failure_limit": "2/minute"}, environ={}
    )
    auth = Authenticator(config)
    for _ in range(4):
        assert deny(auth, "Bearer abc.def.ghi").reason == "client_failed"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_header"),
        ("Basic dXNlcjpwYXNz", "invalid_format"),
        ("Bearer not-a-token", "not_authenticated"),
    ],
)
def test_the_clients_own_failures_still_count(make_auth: MakeAuth, header: str | None, reason: str) -> None:
    auth = make_auth(failure_limit="2/minute")
    for _ in range(2):
        assert deny(auth, header).reason == reason
    with pytest.raises(RateLimited):
        auth.authenticate(header, remote_addr="10.0.0.1")


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({}, "audience"),  # authenticated, but status.audiences grants none of ours
        ({"allowed_namespaces": "kube-system"}, "namespace"),
        ({"allowed_service_accounts": "system:serviceaccount:dns-system:cert-manager"}, "service_account"),
    ],
)
def test_policy_denials_count(cluster: FakeCluster, make_auth: MakeAuth, settings: dict[str, str], reason: str) -> None:
    auth = make_auth(failure_limit="2/minute", **settings)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with cluster.faulty("no_audiences") if reason == "audience" else contextlib.nullcontext():
        for _ in range(2):
            assert deny(auth, f"Bearer {token}").reason == reason
    with pytest.raises(RateLimited):
        auth.authenticate(f"Bearer {token}", remote_addr="10.0.0.1")


# -- 5. configuration that cannot work ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "accepted"),
    [
        ("BIND_TOKEN_REVIEW_TIMEOUT", "1e10", "a number of seconds greater than 0 and at most 60"),
        ("BIND_TOKEN_REVIEW_TIMEOUT", "61", "a number of seconds greater than 0 and at most 60"),
        ("BIND_TOKEN_CACHE_TTL", "1e10", "a number of seconds from 0 to 3600"),
        ("BIND_TOKEN_CACHE_FAILURE_TTL", "86400", "a number of seconds from 0 to 3600"),
        ("BIND_TOKEN_CACHE_STALE_TTL", "1e300", "a number of seconds from 0 to 3600"),
    ],
)
def test_durations_have_upper_bounds(name: str, raw: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        AuthConfig.load(environ={name: raw})
    assert str(info.value) == f"{name}={raw!r} is not valid: expected {accepted}"


def test_the_bounds_themselves_are_accepted() -> None:
    config = AuthConfig.load(
        environ={
            "BIND_TOKEN_REVIEW_TIMEOUT": "60",
            "BIND_TOKEN_CACHE_TTL": "3600",
            "BIND_TOKEN_CACHE_FAILURE_TTL": "3600",
            "BIND_TOKEN_CACHE_STALE_TTL": "3600",
        }
    )
    assert (config.review_timeout, config.cache_ttl, config.cache_failure_ttl, config.cache_stale_ttl) == (
        60,
        3600,
        3600,
        3600,
    )


@pytest.mark.parametrize(
    "server",
    ["http://10.0.0.1:6443", "10.0.0.1:6443", "kubernetes.default.svc", "https://", "ftp://10.0.0.1", "HTTP://x"],
)
def test_kube_api_server_must_be_https(server: str, tmp_path: Path) -> None:
    env = {
        "BIND_AUTH_MODE": "tokenreview",
        "KUBE_API_SERVER": server,
        "KUBE_TOKEN_PATH": str(tmp_path / "token"),
        "KUBE_CA_CERT_PATH": str(tmp_path / "ca.crt"),
    }
    with pytest.raises(ConfigError) as info:
        AuthConfig.load(environ=env)
    assert str(info.value) == (
        f"KUBE_API_SERVER={server!r} is not valid: expected an https:// URL such as https://10.0.0.1:6443 "
        "(the callers' tokens and our own credential would travel in clear text)"
    )


def test_kube_api_server_https_is_accepted(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(fake_cluster.caller_token)
    env = {
        "BIND_AUTH_MODE": "tokenreview",
        "KUBE_API_SERVER": fake_cluster.url,
        "KUBE_TOKEN_PATH": str(token),
        "KUBE_CA_CERT_PATH": str(fake_cluster.ca_path),
    }
    assert AuthConfig.load(environ=env).kube_api_server


# -- 6. metrics shards do not outlive their thread or greenlet ---------------------------------


def test_metric_shards_of_finished_threads_are_folded_in() -> None:
    from flask_bindcar.metrics import ShardedCounter

    counter = ShardedCounter("test_counter", "doc", ("result",))
    for _ in range(50):
        threads = [threading.Thread(target=counter.inc, args=("allow",)) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert counter.values() == {("allow",): 500}
    assert counter.shard_count() <= 10
    counter.inc("deny")
    assert counter.values() == {("allow",): 500, ("deny",): 1}


GREENLET_SCRIPT = """
from gevent import monkey

monkey.patch_all()

import gc
import gevent
from flask_bindcar.metrics import ShardedCounter

counter = ShardedCounter("test_counter", "doc", ("result",))
for _ in range(20):
    gevent.joinall([gevent.spawn(counter.inc, "allow") for _ in range(500)])
    gc.collect()
print(counter.values()[("allow",)], counter.shard_count())
"""


def test_metric_shards_do_not_grow_with_greenlets() -> None:
    out = subprocess.run(
        [sys.executable, "-c", GREENLET_SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120, check=True
    ).stdout.split()
    total, shards = int(out[0]), int(out[1])
    assert total == 10_000
    assert shards <= 500  # at most the greenlets alive at once, not one per greenlet ever run


# -- 7. gevent with --preload -------------------------------------------------------------------


def test_loading_the_configuration_does_not_import_the_kubernetes_client() -> None:
    code = (
        "import sys\n"
        "from flask import Flask\n"
        "from flask_bindcar import BindcarAuth, BindcarMiddleware\n"
        "BindcarAuth(Flask(__name__), mode='tokenreview')\n"
        "BindcarMiddleware(lambda e, s: [], mode='tokenreview')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'urllib3'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=base_environment(), check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("flavor", sorted(TARGETS))
def test_tokenreview_under_gevent_with_preload(
    flavor: str, serve: Any, fake_cluster: FakeCluster, fake_kubeconfig: Path
) -> None:
    env = {"BIND_AUTH_MODE": "tokenreview", "KUBECONFIG": str(fake_kubeconfig)}
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    with serve(TARGETS[flavor], env, worker_class="gevent", preload=True) as url:
        ok = requests.get(url + "/api/v1/zones", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert ok.status_code == 200, ok.text
        assert ok.json()["caller"] == "system:serviceaccount:dns-system:external-dns"
        # Greenlets sharing one review (single flight) while the API server takes its time.
        fresh = fake_cluster.token("dns-system", "cert-manager", audiences=["bindcar"])
        fake_cluster.latency = 0.3
        with ThreadPoolExecutor(16) as pool:
            statuses = list(
                pool.map(
                    lambda _: (
                        requests.get(
                            url + "/api/v1/zones", headers={"Authorization": f"Bearer {fresh}"}, timeout=30
                        ).status_code
                    ),
                    range(16),
                )
            )
        fake_cluster.latency = 0
        assert statuses == [200] * 16
        bad = requests.get(url + "/api/v1/zones", headers={"Authorization": "Bearer invalid-token"}, timeout=30)
        assert bad.status_code == 401
        assert bad.json()["error"].startswith("Token validation failed: ")
        assert "RecursionError" not in bad.text


# -- 8. the bulkhead leaves threads free --------------------------------------------------------


def example_gunicorn_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in ("GUNICORN_THREADS", "BIND_TOKEN_REVIEW_MAX_INFLIGHT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = runpy.run_path(str(ROOT / "example_app" / "gunicorn.conf.py"))
    import os

    settings["bulkhead"] = AuthConfig.load(environ=dict(os.environ)).review_max_inflight
    return settings


def test_default_bulkhead_is_below_the_example_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = example_gunicorn_settings(monkeypatch)["threads"]
    assert AuthConfig.load(environ={}).review_max_inflight < threads


@pytest.mark.parametrize("threads", ["2", "4", "8", "32"])
def test_example_gunicorn_config_keeps_the_bulkhead_below_its_threads(
    monkeypatch: pytest.MonkeyPatch, threads: str
) -> None:
    settings = example_gunicorn_settings(monkeypatch, GUNICORN_THREADS=threads)
    assert settings["threads"] == int(threads)
    assert 1 <= settings["bulkhead"] < settings["threads"]


def test_example_gunicorn_config_respects_an_explicit_bulkhead(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = example_gunicorn_settings(monkeypatch, BIND_TOKEN_REVIEW_MAX_INFLIGHT="3")
    assert settings["bulkhead"] == 3


def bulkhead_checks(config: AuthConfig, **kw: Any) -> list[tuple[str, str]]:
    return [(c.status, c.detail) for c in doctor(config, **kw).checks if c.name == "bulkhead"]


def test_doctor_warns_when_the_bulkhead_is_not_below_the_threads() -> None:
    config = AuthConfig.load(environ={"BIND_AUTH_MODE": "tokenreview", "BIND_TOKEN_REVIEW_MAX_INFLIGHT": "8"})
    assert bulkhead_checks(config, environ={"GUNICORN_CMD_ARGS": "--workers 2 --threads 8"}) == [
        (
            "warn",
            "BIND_TOKEN_REVIEW_MAX_INFLIGHT=8 is not below gunicorn's 8 threads: with the API server hanging, "
            "every thread can wait on a TokenReview and health probes find none free; set it to 4",
        )
    ]
    assert bulkhead_checks(config, threads=16) == [
        ("pass", "BIND_TOKEN_REVIEW_MAX_INFLIGHT=8 is below gunicorn's 16 threads")
    ]
    assert bulkhead_checks(config, environ={"GUNICORN_CMD_ARGS": "--threads=4"})[0][0] == "warn"
    assert bulkhead_checks(config, environ={}) == [
        ("skip", "gunicorn's thread count is unknown here (pass --threads, or set GUNICORN_CMD_ARGS)")
    ]


def test_doctor_command_takes_the_thread_count(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flask_bindcar", "doctor", "--threads", "2"],
        env={
            **base_environment(),
            "BIND_AUTH_MODE": "tokenreview",
            "KUBECONFIG": str(tmp_path / "missing"),
            "BIND_TOKEN_REVIEW_MAX_INFLIGHT": "2",
        },
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert "⚠ bulkhead: BIND_TOKEN_REVIEW_MAX_INFLIGHT=2 is not below gunicorn's 2 threads" in result.stdout


# -- 10. BIND_AUTH_ERROR_DETAIL=generic ---------------------------------------------------------


def test_error_detail_is_validated() -> None:
    assert AuthConfig.load(environ={}).error_detail == "full"
    assert AuthConfig.load(environ={"BIND_AUTH_ERROR_DETAIL": " Generic "}).error_detail == "generic"
    with pytest.raises(ConfigError) as info:
        AuthConfig.load(environ={"BIND_AUTH_ERROR_DETAIL": "none"})
    assert str(info.value) == "BIND_AUTH_ERROR_DETAIL='none' is not valid: expected 'full' or 'generic'"


def generic_apps(fake_kubeconfig: Path) -> dict[str, Client]:
    settings = {
        "mode": "tokenreview",
        "kubeconfig": str(fake_kubeconfig),
        "allowed_namespaces": "dns-system",
        "error_detail": "generic",
    }
    app = Flask(__name__)
    BindcarAuth(app, **settings)

    @app.get("/api/v1/zones")
    def zones() -> Any:
        return jsonify(zones=[])

    @app.delete("/api/v1/zones/<name>")
    @auth_required(service_accounts=["system:serviceaccount:dns-system:external-dns"])
    def delete(name: str) -> Any:
        return jsonify(deleted=name)

    def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"zones": []}']

    return {"flask": app.test_client(), "wsgi": Client(BindcarMiddleware(wsgi_app, **settings))}


@pytest.mark.parametrize("flavor", ["flask", "wsgi"])
def test_generic_error_detail_hides_every_reason(
    flavor: str, fake_cluster: FakeCluster, fake_kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = generic_apps(fake_kubeconfig)[flavor]
    caplog.set_level("INFO", logger="flask_bindcar.audit")
    other_ns = fake_cluster.token("default", "app", audiences=["bindcar"])
    good = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    cases = [
        (None, 'Bearer realm="bindcar"', "missing_header", "Missing Authorization header"),
        ("Token abc", 'Bearer realm="bindcar", error="invalid_request"', "invalid_format", "Invalid Authorization"),
        ("Bearer invalid-token", 'Bearer realm="bindcar", error="invalid_token"', "not_authenticated", "Token "),
        (
            f"Bearer {other_ns}",
            'Bearer realm="bindcar", error="invalid_token"',
            "namespace",
            "Token validation failed: ServiceAccount from unauthorized namespace: default",
        ),
    ]
    for header, challenge, reason, real in cases:
        headers = {"Authorization": header} if header else {}
        response = client.get("/api/v1/zones", headers=headers)
        assert response.status_code == 401
        assert response.get_json() == {"error": "Unauthorized"}
        assert response.headers["WWW-Authenticate"] == challenge
        record = audit_records(caplog)[-1]
        assert record["reason"] == reason
        assert record["message"].startswith(real)
    assert client.get("/api/v1/zones", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    with fake_cluster.faulty("error500"):
        fresh = fake_cluster.token("dns-system", "cert-manager", audiences=["bindcar"])
        response = client.get("/api/v1/zones", headers={"Authorization": f"Bearer {fresh}"})
    assert (response.status_code, response.get_json()) == (401, {"error": "Unauthorized"})
    assert "TokenReview API call failed: HTTP 500" in audit_records(caplog)[-1]["message"]
    assert any("TokenReview API call failed: HTTP 500" in r.getMessage() for r in caplog.records)


def test_generic_error_detail_covers_per_view_policies(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = generic_apps(fake_kubeconfig)["flask"]
    caplog.set_level("INFO", logger="flask_bindcar.audit")
    other = fake_cluster.token("dns-system", "other-app", audiences=["bindcar"])
    response = client.delete("/api/v1/zones/example.com", headers={"Authorization": f"Bearer {other}"})
    assert (response.status_code, response.get_json()) == (401, {"error": "Unauthorized"})
    assert audit_records(caplog)[-1]["message"] == (
        "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app"
    )


# -- 11. smaller items --------------------------------------------------------------------------


def test_example_app_429_keeps_retry_after(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from example_app.app import create_app

    monkeypatch.setenv("BIND_AUTH_FAILURE_LIMIT", "2/minute")
    client = create_app(tmp_path / "zones").test_client()
    for _ in range(2):
        assert client.get("/api/v1/zones").status_code == 401
    limited = client.get("/api/v1/zones", headers={"Authorization": "Bearer demo"})
    assert limited.status_code == 429
    assert limited.get_json() == {"error": "Too many failed authentication attempts"}
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


def test_example_app_keeps_the_headers_of_other_http_errors(tmp_path: Path) -> None:
    from example_app.app import create_app

    client = create_app(tmp_path / "zones").test_client()
    response = client.put("/api/v1/health", headers={"Authorization": "Bearer demo"})
    assert response.status_code == 405
    assert response.get_json() == {"error": "The method is not allowed for the requested URL."}
    assert "GET" in response.headers["Allow"]


def test_gunicorn_answers_431_to_an_oversized_header_as_the_docs_say(serve: Any) -> None:
    with serve(TARGETS["flask"], {}) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"GET /api/v1/zones HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 9000 + b"\r\n\r\n")
            status_line = s.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 431 ")
    decisions = (ROOT / "docs" / "decisions.md").read_text()
    assert "with its own `431 Request Header Fields Too Large`" in decisions
    assert "answers 431 itself" in (ROOT / "example_app" / "gunicorn.conf.py").read_text()


def test_without_an_allowlist_the_api_servers_own_audience_lets_users_in(
    fake_cluster: FakeCluster, make_auth: MakeAuth
) -> None:
    """Documented behaviour: audience-agnostic authenticators (static tokens, OIDC, ...) vouch for the
    API server's own audience, so listing it lets in users that are not ServiceAccounts."""
    user = fake_cluster.add_caller("alice", can_review=False)
    open_auth = make_auth(audiences=f"bindcar,{API_SERVER_AUDIENCE}")
    assert open_auth.authenticate(f"Bearer {user}").username == "alice"
    closed = make_auth(audiences=f"bindcar,{API_SERVER_AUDIENCE}", allowed_namespaces="dns-system")
    assert deny(closed, f"Bearer {user}").message == "Token validation failed: Not a ServiceAccount: alice"


API_SERVER_WARNING = (
    "BIND_TOKEN_AUDIENCES includes {audience}, which looks like the API server's own audience: without "
    "BIND_ALLOWED_NAMESPACES or BIND_ALLOWED_SERVICE_ACCOUNTS, users that are not ServiceAccounts (static "
    "tokens, bootstrap tokens, OIDC users) are accepted too"
)


@pytest.mark.parametrize(
    "audience",
    [
        API_SERVER_AUDIENCE,
        "https://kubernetes.default.svc",
        "kubernetes.default.svc",
        "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC",
        "https://container.googleapis.com/v1/projects/p/locations/l/clusters/c",
        "k3s",
    ],
)
def test_posture_warns_about_the_api_servers_own_audience(audience: str) -> None:
    config = AuthConfig.load({"mode": "tokenreview", "audiences": f"bindcar,{audience}"}, environ={})
    assert API_SERVER_WARNING.format(audience=audience) in config.posture_warnings()
    allowlisted = AuthConfig.load(
        {"mode": "tokenreview", "audiences": f"bindcar,{audience}", "allowed_namespaces": "dns-system"}, environ={}
    )
    assert allowlisted.posture_warnings() == []


def test_doctor_warns_about_the_api_servers_own_audience(fake_kubeconfig: Path) -> None:
    config = AuthConfig.load(
        {"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig), "audiences": f"dns-api,{API_SERVER_AUDIENCE}"},
        environ={},
    )
    warnings = [c.detail for c in doctor(config, environ={}).checks if c.status == "warn"]
    assert API_SERVER_WARNING.format(audience=API_SERVER_AUDIENCE) in warnings
