"""The soak's oracle: what each request should have been answered, around faults and changes."""

from __future__ import annotations

import itertools

import pytest

from soak.oracle import ALLOW, DENY, Change, Oracle, Outage, Request, Windows


def request(
    t0: float,
    status: int,
    *,
    truth: str = ALLOW,
    subject: str = "token:a",
    error: str = "",
    allow: int = 200,
    t1: float | None = None,
) -> Request:
    return Request("kind", subject, truth, allow, t0, t0 + 0.01 if t1 is None else t1, status, error)


OUTAGE_401 = "Token validation failed: TokenReview API call failed: connection refused"


@pytest.fixture
def oracle() -> Oracle:
    return Oracle(
        Windows(
            cache_ttl=10, stale_ttl=30, authz_allowed_ttl=10, authz_denied_ttl=10, review_timeout=5, outage_grace=5
        ),
        outages=[Outage("apiserver-kill", 100.0, 110.0)],
        changes=[
            Change("token:victim", 50.0, 51.0, DENY),
            Change("zone:rot", 200.0, 201.0, ALLOW),
            Change("zone:rot", 300.0, 301.0, DENY),
        ],
    )


@pytest.mark.parametrize(
    ("req", "verdict"),
    [
        (request(10, 200), "ok"),
        (request(10, 401, error="Token validation failed: token not authenticated"), "wrong_deny"),
        (request(10, 401, error=OUTAGE_401), "wrong_deny"),
        (request(105, 401, error=OUTAGE_401), "ok"),
        (request(114, 503), "ok"),
        (request(120, 503), "wrong_deny"),
        (request(120, 500), "undocumented"),
        (request(120, 0, error="ConnectionError"), "undocumented"),
        (request(10, 200, t1=16.5), "hung"),
        (request(10, 200, truth=DENY), "wrong_allow"),
        (request(105, 200, truth=DENY), "wrong_allow"),
        (request(105, 401, truth=DENY, error=OUTAGE_401), "ok"),
        # the deleted account: allowed until kube-apiserver's 10 s + our TTL + the margin have passed
        (request(45, 200, subject="token:victim"), "ok"),
        (request(70, 200, subject="token:victim"), "ok"),
        (request(75, 200, subject="token:victim"), "wrong_allow"),
        (request(75, 401, subject="token:victim", error="Token validation failed: x"), "ok"),
        (request(45, 401, subject="token:victim", error="Token validation failed: x"), "wrong_deny"),
        # the rotating grant: either answer while the authorization caches may lag
        (request(150, 403, subject="zone:rot", truth=DENY, allow=404), "ok"),
        (request(150, 404, subject="zone:rot", truth=DENY, allow=404), "wrong_allow"),
        (request(205, 403, subject="zone:rot", truth=DENY, allow=404), "ok"),
        (request(220, 403, subject="zone:rot", truth=DENY, allow=404), "wrong_deny"),
        (request(220, 404, subject="zone:rot", truth=DENY, allow=404), "ok"),
        (request(310, 404, subject="zone:rot", truth=DENY, allow=404), "ok"),
        (request(320, 404, subject="zone:rot", truth=DENY, allow=404), "wrong_allow"),
    ],
)
def test_oracle(oracle: Oracle, req: Request, verdict: str) -> None:
    assert oracle.judge(req) == verdict


def test_stale_window_extends_a_deleted_accounts_grace_only_in_an_outage() -> None:
    oracle = Oracle(
        Windows(), outages=[Outage("apiserver-kill", 60.0, 100.0)], changes=[Change("token:v", 50.0, 51.0, DENY)]
    )
    assert oracle.judge(request(85, 200, subject="token:v")) == "ok"
    assert oracle.judge(request(95, 200, subject="token:v")) == "wrong_allow"


@pytest.mark.parametrize("seconds", [300, 900, 1800])
def test_the_full_schedule_leaves_each_outage_time_to_end_before_the_next_fault(seconds: int) -> None:
    from soak.run import Plan

    events = Plan.full(seconds, stale_ttl=30).events
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    for (at, _, down), (after, _, _) in itertools.pairwise(events):
        assert at + down + 5 < after  # kube-apiserver is ready 3-4 s after it starts
    assert events[-1][0] + events[-1][2] + 15 < seconds


def test_the_short_schedule_has_one_kill_a_slow_api_a_deleted_account_and_a_rotated_grant() -> None:
    from soak.run import Plan

    names = [name for _, name, _ in Plan.short(150).events]
    assert names.count("apiserver-kill") == 1
    assert {"delete-sa", "grant", "revoke", "slow-api"} <= set(names)


def test_review_rates_leave_out_restarts_and_unanswered_samples() -> None:
    from soak.run import _review_rates

    def sample(t: float, tr: float | None, sar: float = 0.0) -> dict[str, object]:
        return {"t": t, "apiserver_reviews": None if tr is None else {"tokenreviews": tr, "subjectaccessreviews": sar}}

    samples = [sample(0, 0), sample(5, 50, 10), sample(10, None), sample(15, 3), sample(20, 23, 5)]
    phases = [{"phase": "steady", "start": 0.0, "end": 12.0}, {"phase": "apiserver-kill", "start": 12.0, "end": 20.0}]
    rates = _review_rates(samples, phases)  # type: ignore[arg-type]
    # kept: 0-5 s (50 and 10) and 15-20 s (20 and 5); 5-10 and 10-15 have no answer, none went down
    assert rates == {
        "run": {"tokenreviews": 7.0, "subjectaccessreviews": 1.5},
        "phases": [
            {"phase": "steady", "start": 0.0, "rates": {"tokenreviews": 10.0, "subjectaccessreviews": 2.0}},
            {"phase": "apiserver-kill", "start": 12.0, "rates": {"tokenreviews": 4.0, "subjectaccessreviews": 1.0}},
        ],
    }
    restarted = _review_rates([sample(0, 100), sample(5, 4)], phases)  # type: ignore[arg-type]
    assert restarted["run"] is None and [p["rates"] for p in restarted["phases"]] == [None, None]


def test_the_slow_proxy_passes_bytes_both_ways_unchanged() -> None:
    import socket
    import threading

    from soak.proxy import SlowProxy

    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data[::-1])

    threading.Thread(target=echo, daemon=True).start()
    with SlowProxy(server.getsockname()) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as client:
        proxy.delay = 0.05
        client.sendall(b"abc")
        assert client.recv(10) == b"cba"
    assert proxy.url == f"https://127.0.0.1:{proxy.port}"
    server.close()
