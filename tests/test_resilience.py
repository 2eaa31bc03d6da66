"""Gentle on the API server: stale-if-error, the failure rate limit, the bulkhead, audit log, metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY, generate_latest

from flask_bindcar import AuthConfig, AuthError, ConfigError, Identity
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.errors import RateLimited
from flask_bindcar.policy import ViewPolicy
from flask_bindcar.ratelimit import FailureLimiter, Limit, parse_limit
from flask_bindcar.testing import DEFAULT_CALLER, FakeCluster
from tests.conftest import MakeAuth, keep_log, service_account, who
from tests.gunicorn_server import TARGETS


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "flask_bindcar.audit"]


def message_of(auth: Authenticator, token: str, **kw: Any) -> str:
    with pytest.raises(AuthError) as info:
        auth.authenticate(f"Bearer {token}", **kw)
    return info.value.message


# -- stale-if-error ----------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["error500", "reset", "hang"])
def test_stale_review_is_used_while_the_api_server_is_down(
    cluster: FakeCluster, make_auth: MakeAuth, fault: Any, caplog: pytest.LogCaptureFixture
) -> None:
    auth = make_auth(cache_ttl=0, cache_stale_ttl=60, review_timeout=0.5)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth.authenticate(f"Bearer {token}")
    assert "accepting a stale TokenReview: the API server is unavailable" not in caplog.messages
    caplog.clear()
    with cluster.faulty(fault), caplog.at_level("INFO", logger="flask_bindcar"):
        identity = auth.authenticate(f"Bearer {token}")
    assert identity.username == "system:serviceaccount:dns-system:external-dns"
    assert audit_records(caplog)[-1]["cache"] == "stale"
    assert "accepting a stale TokenReview: the API server is unavailable" in caplog.messages
    assert cluster.review_requests == 2  # it did ask first


def test_stale_review_is_not_used_when_the_api_server_refuses_us(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_ttl=0, cache_stale_ttl=60)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth.authenticate(f"Bearer {token}")
    cluster.revoke_token_review(DEFAULT_CALLER)
    assert message_of(auth, token).startswith("Token validation failed: TokenReview API call failed: HTTP 403")


def test_a_failure_is_never_served_stale(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    """The stale window keeps successful reviews only: an outage never replays a "not authenticated"."""
    auth = make_auth(cache_failure_ttl=0, cache_stale_ttl=60)
    assert message_of(auth, "invalid-token") == "Token validation failed: token not authenticated"
    with cluster.faulty("error500"):
        assert message_of(auth, "invalid-token").startswith(
            "Token validation failed: TokenReview API call failed: HTTP 500"
        )


def test_a_review_cached_for_under_a_second_is_reused(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_ttl=0.9)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth.authenticate(f"Bearer {token}")
    auth.authenticate(f"Bearer {token}")
    assert cluster.reviews_served == 1


def test_a_stale_window_under_a_second_is_used(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_ttl=0, cache_stale_ttl=0.9)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth.authenticate(f"Bearer {token}")
    with cluster.faulty("error500"):
        assert who(auth.authenticate(f"Bearer {token}")) == service_account("dns-system", "external-dns")


def test_stale_is_off_by_default(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_ttl=0)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth.authenticate(f"Bearer {token}")
    with cluster.faulty("error500"):
        assert message_of(auth, token).startswith("Token validation failed: TokenReview API call failed: HTTP 500")


def test_stale_window_ends(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(cache_ttl=0, cache_stale_ttl=0.3)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    auth.authenticate(f"Bearer {token}")
    time.sleep(0.4)
    with cluster.faulty("error500"):
        assert "HTTP 500" in message_of(auth, token)


def test_stale_never_outlives_the_token(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    from flask_bindcar.cache import token_expiry

    auth = make_auth(cache_ttl=0, cache_stale_ttl=600)
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"], expires_in=2)
    auth.authenticate(f"Bearer {token}")
    exp = token_expiry(token)
    assert exp is not None
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with cluster.faulty("error500"):
        assert "HTTP 500" in message_of(auth, token)


# -- failure rate limit ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "limit"),
    [("20/minute", Limit(20, 60)), ("5/second", Limit(5, 1)), ("100/hour", Limit(100, 3600)), ("3/m", Limit(3, 60))],
)
def test_parse_limit(raw: str, limit: Limit) -> None:
    assert parse_limit("BIND_AUTH_FAILURE_LIMIT", raw) == limit


@pytest.mark.parametrize("raw", ["20", "0/minute", "20/fortnight", "x/minute"])
def test_bad_limit(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^BIND_AUTH_FAILURE_LIMIT=.* is not valid: expected attempts per period"):
        AuthConfig.load(environ={"BIND_AUTH_FAILURE_LIMIT": raw})


def test_rate_limit_blocks_before_any_review_and_resets(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(failure_limit="3/second", cache_failure_ttl=0)
    for _ in range(3):
        message_of(auth, "invalid-token", remote_addr="10.1.1.1")
    assert cluster.review_requests == 3
    with pytest.raises(RateLimited) as info:
        auth.authenticate("Bearer invalid-token", remote_addr="10.1.1.1")
    assert info.value.code == 429
    assert info.value.get_body() == '{"error": "Too many failed authentication attempts"}'
    assert dict(info.value.get_headers()) == {"Content-Type": "application/json", "Retry-After": "1"}
    assert cluster.review_requests == 3  # checked before any TokenReview
    # Another client is not affected, and a valid token is blocked like any other while limited.
    good = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    assert who(auth.authenticate(f"Bearer {good}", remote_addr="10.1.1.2")) == service_account(
        "dns-system", "external-dns"
    )
    with pytest.raises(RateLimited):
        auth.authenticate(f"Bearer {good}", remote_addr="10.1.1.1")
    time.sleep(1.05)
    assert who(auth.authenticate(f"Bearer {good}", remote_addr="10.1.1.1")) == service_account(
        "dns-system", "external-dns"
    )


def test_rate_limit_memory_is_bounded() -> None:
    limiter = FailureLimiter(Limit(5, 60), max_clients=100)
    for i in range(1000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100


def test_rate_limit_forgets_the_least_recently_failing_client_first() -> None:
    limiter = FailureLimiter(Limit(1, 60), max_clients=2)
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3"):  # .2 failed least recently
        limiter.record_failure(client)
    assert [limiter.retry_after(c) for c in ("10.0.0.1", "10.0.0.2", "10.0.0.3")] == [60, None, 60]


def test_rate_limit_counts_requests_without_an_address_together() -> None:
    limiter = FailureLimiter(Limit(2, 60))
    limiter.record_failure(None)
    assert limiter.retry_after(None) is None
    limiter.record_failure(None)
    assert (limiter.retry_after(None), limiter.retry_after("10.0.0.1")) == (60, None)


def test_a_per_view_denial_is_audited_with_its_request(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator(AuthConfig.load({"mode": "basic"}, environ={}))
    identity = Identity(
        method="tokenreview", username="system:serviceaccount:default:x", namespace="default", service_account="x"
    )
    assert auth.authorize(identity) is None  # no allowlist and no pod binding unless asked for
    with caplog.at_level("INFO", logger="flask_bindcar.audit"), pytest.raises(AuthError):
        auth.authorize(identity, ViewPolicy(namespaces=frozenset({"dns-system"})), ("10.0.0.7", "DELETE", "/zones/a"))
    record = audit_records(caplog)[-1]
    assert {k: record[k] for k in ("remote_addr", "method", "path", "result", "reason", "username")} == {
        "remote_addr": "10.0.0.7",
        "method": "DELETE",
        "path": "/zones/a",
        "result": "deny",
        "reason": "namespace",
        "username": "system:serviceaccount:default:x",
    }


# -- bulkhead ----------------------------------------------------------------------------------


def test_bulkhead_fails_fast_beyond_the_inflight_limit(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    auth = make_auth(review_max_inflight=2)
    tokens = [cluster.token("dns-system", f"sa-{i}", audiences=["bindcar"]) for i in range(5)]
    cluster.latency = 0.5
    barrier = threading.Barrier(5)

    def call(token: str) -> str:
        barrier.wait()
        try:
            return str(auth.authenticate(f"Bearer {token}").username)
        except AuthError as e:
            return f"{e.message} [{e.reason}]"

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(call, tokens))
    ok = [r for r in results if r.startswith("system:serviceaccount:")]
    refused = [r for r in results if not r.startswith("system:serviceaccount:")]
    assert len(ok) == 2
    assert (
        refused
        == [
            "Token validation failed: TokenReview API call failed: overloaded: every review slot is busy (2 in flight) "
            "[api_overloaded]"
        ]
        * 3
    )
    assert cluster.review_requests == 2


# -- audit log and metrics ---------------------------------------------------------------------


def test_audit_records(cluster: FakeCluster, make_auth: MakeAuth, caplog: pytest.LogCaptureFixture) -> None:
    auth = make_auth(failure_limit="1/minute")
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    request = {"remote_addr": "10.0.0.7", "method": "GET", "path": "/api/v1/zones"}
    with caplog.at_level("INFO", logger="flask_bindcar.audit"):
        auth.authenticate(f"Bearer {token}", **request)
        auth.authenticate(f"Bearer {token}", **request)
        message_of(auth, "invalid-token", **request)
        with pytest.raises(RateLimited):
            auth.authenticate(f"Bearer {token}", **request)
    miss, hit, deny, limited = audit_records(caplog)
    for record in (miss, hit, deny, limited):
        assert {k: record[k] for k in request} == request
        assert record["time"].endswith("+00:00")
    assert miss["result"] == "allow"
    assert miss["username"] == "system:serviceaccount:dns-system:external-dns"
    assert miss["auth_method"] == "tokenreview"
    assert miss["cache"] == "miss"
    assert miss["review_latency_ms"] > 0
    assert isinstance(miss["review_latency_ms"], float)  # milliseconds to the microsecond, not whole
    assert miss["review_latency_ms"] < 5000
    assert (hit["cache"], hit["review_latency_ms"]) == ("hit", None)
    assert (deny["result"], deny["reason"], deny["message"]) == (
        "deny",
        "not_authenticated",
        "Token validation failed: token not authenticated",
    )
    assert deny["cache"] == "miss"  # a denial says whether a review was sent, and how long it took
    assert deny["review_latency_ms"] > 0
    for record in (miss, deny):  # rounded to the microsecond: 0.001 ms
        assert round(record["review_latency_ms"], 3) == record["review_latency_ms"]
    assert (limited["result"], limited["reason"]) == ("rate_limited", "rate_limited")
    assert (limited["cache"], limited["review_latency_ms"]) == (None, None)
    assert token not in caplog.text


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics(cluster: FakeCluster, make_auth: MakeAuth) -> None:
    make_auth()  # a second authenticator in the same process registers nothing twice
    auth = make_auth()
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    before = {
        "allow": sample("bindcar_auth_requests_total", result="allow", reason="ok"),
        "deny": sample("bindcar_auth_requests_total", result="deny", reason="not_authenticated"),
        "hit": sample("bindcar_tokenreview_cache_total", outcome="hit"),
        "miss": sample("bindcar_tokenreview_cache_total", outcome="miss"),
        "reviews": sample("bindcar_tokenreview_duration_seconds_count"),
        "seconds": sample("bindcar_tokenreview_duration_seconds_sum"),
    }
    auth.authenticate(f"Bearer {token}")
    auth.authenticate(f"Bearer {token}")
    message_of(auth, "invalid-token")
    assert sample("bindcar_auth_requests_total", result="allow", reason="ok") == before["allow"] + 2
    assert sample("bindcar_auth_requests_total", result="deny", reason="not_authenticated") == before["deny"] + 1
    assert sample("bindcar_tokenreview_cache_total", outcome="hit") == before["hit"] + 1
    assert sample("bindcar_tokenreview_cache_total", outcome="miss") == before["miss"] + 2
    assert sample("bindcar_tokenreview_duration_seconds_count") == before["reviews"] + 2
    assert 0 < sample("bindcar_tokenreview_duration_seconds_sum") - before["seconds"] < 5  # two quick reviews
    assert sample("bindcar_tokenreview_inflight") == 0
    exposition = generate_latest().decode()
    assert token not in exposition
    assert "system:serviceaccount" not in exposition


# -- under gunicorn ----------------------------------------------------------------------------


def test_without_prometheus_client_requests_are_served_and_nothing_is_counted() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from flask import Flask\n"
        "from flask_bindcar import BindcarAuth\n"
        "from flask_bindcar.metrics import get_metrics\n"
        "app = Flask('app')\n"
        "app.get('/')(lambda: 'ok')\n"
        "BindcarAuth(app, api_token='s3cret')\n"
        "client = app.test_client()\n"
        "print(client.get('/', headers={'Authorization': 'Bearer s3cret'}).status_code,\n"
        "      client.get('/', headers={'Authorization': 'Bearer wrong'}).status_code, get_metrics())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    keep_log("no-prometheus", result.stdout, result.stderr)
    assert result.stdout == "200 401 None\n"


@pytest.mark.parametrize("flavor", sorted(TARGETS))
def test_single_flight_and_rate_limit_under_gunicorn(
    flavor: str, serve: Any, fake_cluster: FakeCluster, fake_kubeconfig: Path
) -> None:
    env = {
        "BIND_AUTH_MODE": "tokenreview",
        "KUBECONFIG": str(fake_kubeconfig),
        "BIND_AUTH_FAILURE_LIMIT": "5/minute",
    }
    token = fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    fake_cluster.latency = 0.3
    with serve(TARGETS[flavor], env, threads=8) as url:
        barrier = threading.Barrier(32)

        def call(_: int) -> int:
            barrier.wait()
            return requests.get(
                url + "/api/v1/zones", headers={"Authorization": f"Bearer {token}"}, timeout=30
            ).status_code

        with ThreadPoolExecutor(32) as pool:
            assert list(pool.map(call, range(32))) == [200] * 32
        assert fake_cluster.reviews_served == 1

        for _ in range(5):
            assert (
                requests.get(url + "/api/v1/zones", headers={"Authorization": "Bearer nope"}, timeout=30).status_code
                == 401
            )
        limited = requests.get(url + "/api/v1/zones", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert limited.status_code == 429
        assert limited.json() == {"error": "Too many failed authentication attempts"}
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert fake_cluster.reviews_served == 2  # "nope" was reviewed once, then cached


def test_sharded_counter_counts_every_increment_across_threads() -> None:
    from flask_bindcar.metrics import ShardedCounter

    counter = ShardedCounter("test_counter", "doc", ("result",))

    def bump() -> None:
        for i in range(10_000):
            counter.inc("allow" if i % 2 else "deny")

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.values() == {("allow",): 40_000, ("deny",): 40_000}
