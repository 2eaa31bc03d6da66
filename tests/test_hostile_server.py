"""A hostile or broken Kubernetes API server: slow, huge, wrongly typed, echoing the token.

Whatever the server does, a request ends within the review timeout in the documented 401 (or a
200 for a well-formed answer), never a 500, and no part of the token reaches a body, a log line
or the audit record. The server is `tests.hostile_api.HostileAPI`, a real TLS server on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_bindcar import AuthConfig, AuthError, BindcarAuth, current_identity
from flask_bindcar.authenticator import Authenticator
from tests.hostile_api import (
    AUTHENTICATED,
    HostileAPI,
    Reply,
    black_hole,
    http_reply,
    pointed_at,
    slow_handshake,
    token_review,
)

PREFIX = "Token validation failed: TokenReview API call failed: "


@pytest.fixture
def api() -> Iterator[HostileAPI]:
    with HostileAPI() as server:
        yield server


def new_token() -> str:
    """A JWT-shaped token (so the session's log check would see a whole one) with a random tail."""
    return "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0." + secrets.token_urlsafe(64)


def make_app(api: HostileAPI, tmp_path: Path, **overrides: Any) -> Flask:
    app = Flask(__name__)

    @app.get("/zones")
    def zones() -> Any:
        return {"user": current_identity.username}

    # The hostile server stands in for the TokenReview API only, answering every request with the
    # scripted reply: these tests are about the TokenReview path, so no local pre-check asks it for keys.
    settings: dict[str, Any] = {
        "mode": "tokenreview",
        "kubeconfig": str(api.write_kubeconfig(tmp_path)),
        "token_precheck": "off",
        **overrides,
    }
    BindcarAuth(app, **settings)
    return app


def call(app: Flask, token: str) -> tuple[int, Any]:
    response = app.test_client().get("/zones", headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="bindcar", error="invalid_token"'
    return response.status_code, response.get_json()


def fragments(token: str) -> list[str]:
    return [token[i : i + 16] for i in range(len(token) - 15)]


def assert_no_fragment(text: str, token: str) -> None:
    leaked = [f for f in fragments(token) if f in text]
    assert not leaked, f"{len(leaked)} pieces of the token in {text[:300]!r}"


def in_time(limit: float, fn: Callable[[], Any]) -> Any:
    """``fn()``, which must return within ``limit`` seconds (run in a thread, so a hang fails fast)."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), f"still waiting after {limit}s"
    assert result, "the call raised"
    return result[0], time.monotonic() - started


# -- 2. a slow server does not outlast the timeout ----------------------------------------------


@pytest.mark.parametrize("drip", ["head", "body"])
def test_a_dripping_server_ends_at_the_timeout(api: HostileAPI, tmp_path: Path, drip: str) -> None:
    # One byte every 0.5 s: each read is quick, the whole answer would take a minute or more.
    api.responder = lambda token: http_reply(201, token_review(AUTHENTICATED), drip=drip)
    app = make_app(api, tmp_path, review_timeout=1)
    (status, body), _ = in_time(4, lambda: call(app, new_token()))
    assert (status, body) == (401, {"error": PREFIX + "no answer within 1s"})


def test_the_bulkhead_slot_is_free_at_the_deadline(api: HostileAPI, tmp_path: Path) -> None:
    api.responder = lambda token: http_reply(201, token_review(AUTHENTICATED), drip="body")
    app = make_app(api, tmp_path, review_timeout=1, review_max_inflight=1)
    (status, _), _ = in_time(4, lambda: call(app, new_token()))
    assert status == 401
    api.responder = lambda token: http_reply(201, token_review(AUTHENTICATED))
    assert call(app, new_token()) == (200, {"user": "system:serviceaccount:dns-system:external-dns"})


def padded(status: Any, size: int = 2 << 20) -> dict[str, Any]:
    return {**token_review(status), "metadata": {"annotations": {"pad": "x" * size}}}


def chunked(body: bytes) -> Reply:
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536]) for i in range(0, len(body), 65536)
    )
    return Reply(head + chunks + b"0\r\n\r\n")


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(lambda: http_reply(201, padded(AUTHENTICATED)), id="2MiB-answer"),
        pytest.param(lambda: chunked(json.dumps(padded(AUTHENTICATED)).encode()), id="2MiB-chunked"),
        pytest.param(lambda: http_reply(500, {"kind": "Status", "message": "x" * (2 << 20)}), id="2MiB-error"),
    ],
)
def test_an_answer_over_one_mebibyte_is_a_bad_response(
    api: HostileAPI, tmp_path: Path, reply: Callable[[], Reply]
) -> None:
    api.responder = lambda token: reply()
    app = make_app(api, tmp_path)
    assert call(app, new_token()) == (401, {"error": PREFIX + "response larger than 1 MiB"})


def test_a_compressed_answer_is_a_bad_response(api: HostileAPI, tmp_path: Path) -> None:
    # 2 KiB on the wire, 20 MiB once inflated: the cap holds for what is read, not what is sent.
    bomb = gzip.compress(json.dumps(padded(AUTHENTICATED, 20 << 20)).encode())
    api.responder = lambda token: http_reply(201, bomb, headers={"Content-Encoding": "gzip"})
    app = make_app(api, tmp_path)
    assert call(app, new_token()) == (401, {"error": PREFIX + "response is compressed (Content-Encoding: gzip)"})


def test_an_answer_under_the_cap_is_read_whole(api: HostileAPI, tmp_path: Path) -> None:
    api.responder = lambda token: http_reply(201, padded(AUTHENTICATED, 900 << 10))
    app = make_app(api, tmp_path)
    assert call(app, new_token()) == (200, {"user": "system:serviceaccount:dns-system:external-dns"})


def of_size(total: int) -> Reply:
    """A well-formed answer of exactly ``total`` bytes on the wire: status line, headers and body."""
    pad = total - len(http_reply(201, padded(AUTHENTICATED, 0)).raw)
    pad -= len(http_reply(201, padded(AUTHENTICATED, pad)).raw) - total  # the Content-Length grew a few digits
    return http_reply(201, padded(AUTHENTICATED, pad))


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        (0, (200, {"user": "system:serviceaccount:dns-system:external-dns"})),
        (1, (401, {"error": PREFIX + "response larger than 1 MiB"})),
    ],
)
def test_the_cap_is_one_mebibyte_of_the_whole_answer_to_the_byte(
    api: HostileAPI, tmp_path: Path, over: int, expected: tuple[int, Any]
) -> None:
    from flask_bindcar.transport import MAX_RESPONSE_BYTES

    reply = of_size(MAX_RESPONSE_BYTES + over)
    assert len(reply.raw) == MAX_RESPONSE_BYTES + over
    api.responder = lambda token: reply
    assert call(make_app(api, tmp_path), new_token()) == expected


def test_an_answer_that_ends_when_the_server_hangs_up_is_read_whole(api: HostileAPI, tmp_path: Path) -> None:
    """No Content-Length, not chunked: the body runs to the end of the connection (RFC 9112 6.3)."""
    body = json.dumps(token_review(AUTHENTICATED)).encode()
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\r\n"
    api.responder = lambda token: Reply(head + body, close=True)
    assert call(make_app(api, tmp_path), new_token()) == (
        200,
        {"user": "system:serviceaccount:dns-system:external-dns"},
    )


@pytest.mark.parametrize("encoding", ["identity", "Identity"])
def test_an_identity_encoded_answer_is_read(api: HostileAPI, tmp_path: Path, encoding: str) -> None:
    """``identity`` means "not encoded" (RFC 9110 8.4.1), in any case: only a real encoding is refused."""
    api.responder = lambda token: http_reply(201, token_review(AUTHENTICATED), headers={"Content-Encoding": encoding})
    assert call(make_app(api, tmp_path), new_token()) == (
        200,
        {"user": "system:serviceaccount:dns-system:external-dns"},
    )


@pytest.mark.parametrize(
    "server",
    [
        # only the client's own connect timeout ends that wait; the deadline bounds the rest
        pytest.param(black_hole, id="never-accepts"),
        # the TLS handshake reads under the time left before the deadline, not a timeout of its own
        pytest.param(slow_handshake, id="drips-the-handshake"),
    ],
)
def test_a_tokenreview_to_a_server_that_never_connects_ends_at_the_timeout(
    fake_kubeconfig: Path, server: Callable[[], contextlib.AbstractContextManager[str]]
) -> None:
    with server() as url:
        kubeconfig = pointed_at(fake_kubeconfig, url)
        auth = Authenticator(
            AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(kubeconfig), "review_timeout": 0.5}, environ={})
        )

        def review() -> AuthError:
            with pytest.raises(AuthError) as info:
                auth.authenticate(f"Bearer {new_token()}")
            return info.value

        error, took = in_time(4, review)
    assert (error.message, error.reason) == (PREFIX + "no answer within 0.5s", "api_unreachable")
    assert 0.5 <= took < 2


# -- 3. no 500 where the guide promises 401 -----------------------------------------------------


def user_with(**fields: Any) -> dict[str, Any]:
    return {**AUTHENTICATED, "user": {**AUTHENTICATED["user"], **fields}}


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (user_with(groups=5), "status.user.groups is not a list of strings"),
        (user_with(groups=True), "status.user.groups is not a list of strings"),
        (user_with(groups=["a", 5]), "status.user.groups is not a list of strings"),
        (user_with(extra={"k": [1]}), "status.user.extra is not a map of string lists"),
        (user_with(extra={"k": 1}), "status.user.extra is not a map of string lists"),
        (user_with(extra=["k"]), "status.user.extra is not a map of string lists"),
        (user_with(uid=5), "status.user.uid is not a string"),
        (user_with(username=5), "status.user.username is not a string"),
        ({**AUTHENTICATED, "audiences": "bindcar"}, "status.audiences is not a list of strings"),
        ({**AUTHENTICATED, "audiences": {"bindcar": True}}, "status.audiences is not a list of strings"),
        ({**AUTHENTICATED, "audiences": [["bindcar"]]}, "status.audiences is not a list of strings"),
    ],
)
def test_a_wrongly_typed_answer_is_a_bad_response_and_not_cached(
    api: HostileAPI, tmp_path: Path, status: dict[str, Any], why: str
) -> None:
    api.responder = lambda token: http_reply(201, token_review(status))
    app = make_app(api, tmp_path)
    token = new_token()
    assert call(app, token) == (401, {"error": PREFIX + why})
    assert call(app, token) == (401, {"error": PREFIX + why})
    assert api.requests == 2


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (lambda: http_reply(201, "[" * 100_000 + "]" * 100_000), "response is nested too deeply"),
        (lambda: http_reply(201, token_review({"error": "[" * 100_000})), None),
        (lambda: http_reply(500, '{"message": ' + "[" * 100_000 + "]" * 100_000 + "}"), "HTTP 500 Internal"),
    ],
    ids=["answer", "long-error", "error-status"],
)
def test_deeply_nested_json(api: HostileAPI, tmp_path: Path, reply: Callable[[], Reply], why: str | None) -> None:
    api.responder = lambda token: reply()
    status, body = call(make_app(api, tmp_path), new_token())
    assert status == 401
    if why is not None:
        assert body == {"error": PREFIX + why}
    else:  # a long status.error is cut short
        assert body == {"error": "Token validation failed: " + "[" * 509 + "..."}


def test_single_flight_waiters_share_the_leaders_error(api: HostileAPI, tmp_path: Path) -> None:
    # The last byte comes 1.5 s late, so all eight requests join the leader's flight.
    raw = http_reply(201, "[" * 100_000 + "]" * 100_000).raw
    api.responder = lambda token: Reply(raw, drip_from=len(raw) - 1, interval=1.5)
    app = make_app(api, tmp_path)
    token = new_token()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: call(app, token), range(8)))
    assert answers == [(401, {"error": PREFIX + "response is nested too deeply"})] * 8
    assert api.requests == 1


def test_a_kubeconfig_that_is_not_yaml(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users:\n- name: caller\n  user: {token: the-service-credential-1234 : : [\n")
    app = Flask(__name__)
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(kubeconfig))
    response = app.test_client().get("/", headers={"Authorization": f"Bearer {new_token()}"})
    assert response.status_code == 401
    assert response.get_json() == {
        "error": f"Token validation failed: Failed to create Kubernetes client: kubeconfig {kubeconfig} "
        "is not valid YAML (line 3, column 45)"
    }
    assert b"the-service-credential" not in response.data


def test_a_token_with_a_lone_surrogate(api: HostileAPI, tmp_path: Path) -> None:
    # Not from a WSGI server (headers are latin-1 there), but the core takes any str.
    config = AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(api.write_kubeconfig(tmp_path))}, environ={})
    with pytest.raises(AuthError) as info:
        Authenticator(config).authenticate("Bearer abc\ud800def")
    assert info.value.message == "Invalid Authorization header format. Expected: Bearer <token>"
    assert api.requests == 0


def jwt_with_payload(payload: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(b'{"alg":"RS256"}')
    return f"{header}.{b64(payload)}.{secrets.token_urlsafe(32)}"


@pytest.mark.parametrize(
    "payload",
    [b'{"exp": 1' + b"0" * 400 + b"}", b'{"exp": NaN}', b'{"exp": 1e999}', b'{"a":' * 2000 + b"1" + b"}" * 2000],
    ids=["exp-10**400", "exp-NaN", "exp-inf", "nested-payload"],
)
def test_an_odd_exp_claim_is_no_reason_to_fail(api: HostileAPI, tmp_path: Path, payload: bytes) -> None:
    app = make_app(api, tmp_path)
    token = jwt_with_payload(payload)
    assert call(app, token) == (200, {"user": "system:serviceaccount:dns-system:external-dns"})
    assert call(app, token) == (200, {"user": "system:serviceaccount:dns-system:external-dns"})
    assert api.requests == 1  # cached as usual


# -- 9. the token echoed back ------------------------------------------------------------------


def audit_and_logs(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            lambda t: http_reply(201, token_review({"error": f"[invalid bearer token, {t[-60:]} is not ours]"})),
            "Token validation failed: [invalid bearer token, [REDACTED] is not ours]",
        ),
        (
            lambda t: http_reply(400, {"kind": "Status", "message": f"bad token {t[10:40]}"}),
            PREFIX + "HTTP 400 Bad Request: bad token [REDACTED]",
        ),
        (
            lambda t: http_reply(403, {"kind": "Status", "message": "no"}, reason=f"Forbidden {t[-20:]}"),
            PREFIX + "HTTP 403 Forbidden [REDACTED]: no",
        ),
        (
            lambda t: Reply(f"HTTP/1.1 {t[5:50]}\r\n\r\n".encode()),
            PREFIX + "ProtocolError: ('Connection aborted.', BadStatusLine('HTTP/1.1 [REDACTED]\\r\\n'))",
        ),
    ],
    ids=["status.error", "status-message", "reason-phrase", "status-line"],
)
def test_echoed_parts_of_the_token_are_removed(
    api: HostileAPI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    reply: Callable[[str], Reply],
    message: str,
) -> None:
    api.responder = reply
    app = make_app(api, tmp_path)
    token = new_token()
    with caplog.at_level("DEBUG"):
        assert call(app, token) == (401, {"error": message})
    assert json.loads([r for r in caplog.records if r.name == "flask_bindcar.audit"][-1].getMessage())["message"] == (
        message
    )
    assert_no_fragment(audit_and_logs(caplog), token)


def test_an_identity_holding_part_of_the_token_is_refused(
    api: HostileAPI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.responder = lambda t: http_reply(201, token_review(user_with(username=f"system:serviceaccount:ns:{t[-30:]}")))
    token = new_token()
    with caplog.at_level("DEBUG"):
        assert call(make_app(api, tmp_path), token) == (401, {"error": PREFIX + "status.user holds part of the token"})
    assert_no_fragment(audit_and_logs(caplog), token)


def test_a_missing_uid_is_no_text_to_check(api: HostileAPI, tmp_path: Path) -> None:
    """The echo check reads the texts the server sent: an answer without a uid is accepted even for
    a token short enough to be found whole in any stand-in text."""
    user = {k: v for k, v in AUTHENTICATED["user"].items() if k != "uid"}
    api.responder = lambda t: http_reply(201, token_review({**AUTHENTICATED, "user": user}))
    assert call(make_app(api, tmp_path), "XX") == (200, {"user": "system:serviceaccount:dns-system:external-dns"})


def test_server_texts_are_capped(api: HostileAPI, tmp_path: Path) -> None:
    api.responder = lambda t: http_reply(201, token_review({"error": "e" * 100_000}))
    assert call(make_app(api, tmp_path), new_token()) == (
        401,
        {"error": "Token validation failed: " + "e" * 509 + "..."},
    )
    api.responder = lambda t: http_reply(403, {"kind": "Status", "message": "m" * 100_000})
    assert call(make_app(api, tmp_path), new_token()) == (
        401,
        {"error": PREFIX + "HTTP 403 Forbidden: " + "m" * 509 + "..."},
    )


# -- 3. any answer at all: a documented 401 or a 200 -------------------------------------------

ECHO = "@@TOKEN@@"
"""Where the generated answer echoes a piece of the token; the server fills it in."""

leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.just(ECHO)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
texts = st.sampled_from(["", "bindcar", "system:serviceaccount:dns-system:external-dns", ECHO]) | st.text(max_size=16)
users = st.fixed_dictionaries(
    {},
    optional={
        "username": texts | json_values,
        "uid": texts | json_values,
        "groups": st.lists(texts, max_size=3) | json_values,
        "extra": st.dictionaries(texts, st.lists(texts, max_size=2) | json_values, max_size=2) | json_values,
    },
)
statuses = st.fixed_dictionaries(
    {},
    optional={
        "authenticated": st.booleans() | json_values,
        "user": users | json_values,
        "audiences": st.lists(texts, max_size=3) | json_values,
        "error": texts | json_values,
    },
)
answers = st.one_of(
    st.builds(token_review, statuses),
    st.builds(lambda status: {"kind": "Status", "message": status}, texts),
    json_values,
    st.binary(max_size=40),
)
exps = st.none() | st.integers() | st.floats() | st.just(10**400)


def test_any_answer_is_a_documented_401_or_a_200(tmp_path: Path) -> None:
    unexpected: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lambda record: unexpected.append(record) if "unexpected" in record.getMessage() else None  # type: ignore[method-assign]
    logging.getLogger("flask_bindcar").addHandler(handler)
    try:
        with HostileAPI() as api:
            app = make_app(api, tmp_path)

            @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
            @given(code=st.sampled_from([200, 201, 201, 201, 400, 401, 403, 500, 503]), answer=answers, exp=exps)
            def check(code: int, answer: Any, exp: Any) -> None:
                token = jwt_with_payload(json.dumps({"exp": exp}).encode())
                raw = answer if isinstance(answer, bytes) else json.dumps(answer).replace(ECHO, token[5:60])
                api.responder = lambda t: http_reply(code, raw)
                status, body = call(app, token)
                assert status in (200, 401)
                if status == 200:
                    granted = answer["status"]
                    assert code < 300 and granted["authenticated"] is True and "bindcar" in granted["audiences"]
                    assert body == {"user": granted["user"]["username"]}
                else:
                    assert list(body) == ["error"] and body["error"].startswith("Token validation failed: ")
                    if code >= 300:
                        assert body["error"].startswith(f"{PREFIX}HTTP {code}")
                    assert_no_fragment(body["error"], token)

            check()
    finally:
        logging.getLogger("flask_bindcar").removeHandler(handler)
    assert not unexpected, unexpected[0].getMessage()
