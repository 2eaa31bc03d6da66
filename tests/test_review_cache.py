"""The review cache on its own: single flight, the waiters' bound, and ``exp`` read from odd tokens.

The reviews here are plain functions, scripted per test: what the cache does with a slow, failing
or abandoned review does not depend on where the answer comes from.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from flask_bindcar.cache import ReviewCache, token_expiry
from flask_bindcar.errors import API_BAD_RESPONSE, API_UNREACHABLE, AuthError
from flask_bindcar.flight import FOLLOWER_GRACE
from flask_bindcar.tokenreview import ReviewOutcome

PREFIX = "Token validation failed: TokenReview API call failed: "
AUDIENCES = ("bindcar",)
OK = ReviewOutcome(authenticated=True, user={"username": "system:serviceaccount:dns-system:external-dns"})


class Killed(BaseException):
    """Stands for what stops a greenlet or a thread without an `Exception` (gevent's ``GreenletExit``)."""


def new_cache(wait_timeout: float = 0.2) -> ReviewCache:
    return ReviewCache(ttl=10, failure_ttl=10, max_size=10, wait_timeout=wait_timeout)


def together(
    cache: ReviewCache, review: Callable[[str, Sequence[str]], ReviewOutcome], followers: int, started: threading.Event
) -> tuple[list[Any], list[Any], float]:
    """One leader runs ``review``; once it has ``started``, ``followers`` more ask for the same token.

    Returns what the leader got (outcome or exception), what each follower got, and the followers' time.
    """

    def ask(into: list[Any]) -> None:
        try:
            into.append(cache.get_or_review("token-1", AUDIENCES, review))
        except BaseException as e:  # the leader's Killed too
            into.append(e)

    led: list[Any] = []
    leader = threading.Thread(target=ask, args=(led,))
    leader.start()
    assert started.wait(5)
    got: list[Any] = []
    threads = [threading.Thread(target=ask, args=(got,)) for _ in range(followers)]
    begun = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    took = time.monotonic() - begun
    leader.join(30)
    return led, got, took


def test_waiters_get_the_leaders_error_even_a_timeout() -> None:
    """The leader's own timeout, at the review bound, reaches the waiters before their wait ends."""
    started = threading.Event()

    def review(token: str, audiences: Sequence[str]) -> ReviewOutcome:
        started.set()
        time.sleep(0.2)
        raise AuthError.api_call_failed("no answer within 0.2s", reason=API_UNREACHABLE)

    led, got, _ = together(new_cache(0.2), review, 4, started)
    [error] = led
    assert isinstance(error, AuthError)
    assert error.message == PREFIX + "no answer within 0.2s"
    assert len(got) == 4
    assert all(e is error for e in got)


def test_a_waiter_waits_the_review_bound_plus_the_grace_then_gives_up() -> None:
    started, release = threading.Event(), threading.Event()

    def review(token: str, audiences: Sequence[str]) -> ReviewOutcome:
        started.set()
        release.wait(30)  # a leader stuck past its bound, which the review itself should never be
        return OK

    cache = new_cache(0.2)
    try:
        led: list[Any] = []
        leader = threading.Thread(target=lambda: led.append(cache.get_or_review("token-1", AUDIENCES, review)))
        leader.start()
        assert started.wait(5)
        begun = time.monotonic()
        with pytest.raises(AuthError) as info:
            cache.get_or_review("token-1", AUDIENCES, review)
        took = time.monotonic() - begun
    finally:
        release.set()
    leader.join(5)
    assert FOLLOWER_GRACE == 1.0
    assert info.value.message == PREFIX + "no answer within 1.2s"
    assert info.value.reason == API_UNREACHABLE
    assert 1.2 <= took < 3
    assert led == [(OK, "miss")]  # the leader's answer is its own, late or not


def test_waiters_share_the_leaders_answer() -> None:
    started = threading.Event()

    def review(token: str, audiences: Sequence[str]) -> ReviewOutcome:
        started.set()
        time.sleep(0.2)
        return OK

    cache = new_cache()
    led, got, _ = together(cache, review, 4, started)
    assert led == [(OK, "miss")]
    assert got == [(OK, "shared")] * 4
    assert cache.get_or_review("token-1", AUDIENCES, review) == (OK, "hit")


def test_an_abandoned_review_fails_its_waiters() -> None:
    started = threading.Event()

    def review(token: str, audiences: Sequence[str]) -> ReviewOutcome:
        started.set()
        time.sleep(0.2)
        raise Killed

    cache = new_cache()
    led, got, _ = together(cache, review, 3, started)
    assert [type(e) for e in led] == [Killed]
    assert [(type(e), e.message, e.reason) for e in got] == [
        (AuthError, PREFIX + "the review was abandoned", API_UNREACHABLE)
    ] * 3
    assert len(cache) == 0


def test_an_unexpected_exception_of_the_review_is_one_shared_bad_response(caplog: pytest.LogCaptureFixture) -> None:
    started = threading.Event()
    text = "-".join(["quoting", "the", "server"])  # the logged stack shows the lines, not the values

    def review(token: str, audiences: Sequence[str]) -> ReviewOutcome:
        started.set()
        time.sleep(0.2)
        raise KeyError(text)

    cache = new_cache()
    led, got, _ = together(cache, review, 3, started)
    [error] = led
    assert (type(error), error.message, error.reason, error.__cause__) == (
        AuthError,
        PREFIX + "KeyError",
        API_BAD_RESPONSE,
        None,
    )
    assert all(e is error for e in got) and len(got) == 3
    assert len(cache) == 0  # never cached: the next request asks again
    [record] = [r for r in caplog.records if r.name == "flask_bindcar"]
    assert record.getMessage().startswith("unexpected KeyError in a TokenReview\n")
    assert text not in caplog.text


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(payload: bytes) -> str:
    return f"{b64(b'{}')}.{b64(payload)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("token", "exp"),
    [
        (jwt(b'{"exp": 1700000000}'), 1700000000.0),
        (jwt(b'{"exp": 1700000000.5}'), 1700000000.5),
        (jwt(json.dumps({"exp": 1, "sub": "x" * 7}).encode()), 1.0),  # a payload needing padding
        (jwt(b'{"exp": 1700000000.25}'), 1700000000.25),  # 30 characters: two "=" of padding
        ("a.b", None),
        ("a.b.c.d", None),
        ("not-a-jwt", None),
        (f"{b64(b'{}')}.!!!!.sig", None),  # not base64
        (f"{b64(b'{}')}.AAAAA.sig", None),  # base64 of the wrong length
        (jwt(b"not json"), None),
        (jwt(b"[1700000000]"), None),  # JSON, not an object
        (jwt(b"{}"), None),
        (jwt(b'{"exp": "1700000000"}'), None),
        (jwt(b'{"exp": true}'), None),
        (jwt(b'{"exp": null}'), None),
        (jwt(b'{"exp": 1' + b"0" * 400 + b"}"), None),  # too large for a float
        (jwt(b'{"exp": 1e999}'), None),  # infinity
        (jwt(b'{"exp": NaN}'), None),
        (jwt(b'{"a":' * 5000 + b"1" + b"}" * 5000), None),  # nested too deep to parse
    ],
)
def test_token_expiry(token: str, exp: float | None) -> None:
    assert token_expiry(token) == exp


def test_no_two_questions_share_a_key() -> None:
    """The key frames the token and each audience with its length: no token can pose as another
    token's question, whatever bytes it holds (it is keyed before its format is checked)."""
    cache = ReviewCache(ttl=10, failure_ttl=10, max_size=10, wait_timeout=1)
    questions = [
        ("a", ()),
        ("a", ("b",)),
        ("a\x00\x00\x00\x01b", ()),  # the token's bytes spell an audience's frame
        ("a", ("b", "c")),
        ("a", ("bc",)),
        ("a", ("c", "b")),
        ("ab", ()),
        ("", ("a",)),
        ("\x00\x00\x00\x01a", ()),  # the token's bytes spell the frame of the audience above
        ("a", ("",)),
        ("a", ("", "")),
    ]
    keys = {cache.key(token, audiences) for token, audiences in questions}
    assert len(keys) == len(questions)
    assert cache.key("a", ("b",)) == cache.key("a", ["b"])  # a list and a tuple ask the same
    other = ReviewCache(ttl=10, failure_ttl=10, max_size=10, wait_timeout=1)
    assert other.key("a", ("b",)) != cache.key("a", ("b",))  # each cache's MAC has its own random key
    token = "header.payload.signature" * 40
    assert token.encode() not in cache.key(token, ("b",)) and len(cache.key(token, ("b",))) == 32


def test_waiters_share_a_stale_answer_as_stale() -> None:
    """The API server fails while an expired answer is still in its stale window: the leader and every
    request waiting on it get that answer, each told it is stale."""
    cache = ReviewCache(ttl=0.05, failure_ttl=10, max_size=10, wait_timeout=1, stale_ttl=60)
    assert cache.get_or_review("token-1", AUDIENCES, lambda token, audiences: OK) == (OK, "miss")
    time.sleep(0.1)  # past the TTL, within the stale window
    started = threading.Event()

    def review(token: str, audiences: Sequence[str]) -> ReviewOutcome:
        started.set()
        time.sleep(0.2)
        raise AuthError.api_call_failed("HTTP 503 Service Unavailable", reason=API_UNREACHABLE)

    led, got, _ = together(cache, review, 3, started)
    assert led == [(OK, "stale")]
    assert got == [(OK, "stale")] * 3


def test_no_stale_window_unless_asked_for() -> None:
    cache = ReviewCache(ttl=0.05, failure_ttl=10, max_size=10, wait_timeout=1)
    assert cache.get_or_review("token-1", AUDIENCES, lambda token, audiences: OK) == (OK, "miss")
    time.sleep(0.1)

    def review(token: str, audiences: Sequence[str]) -> ReviewOutcome:
        raise AuthError.api_call_failed("HTTP 503 Service Unavailable", reason=API_UNREACHABLE)

    with pytest.raises(AuthError):
        cache.get_or_review("token-1", AUDIENCES, review)


@pytest.mark.parametrize("authenticated", [True, False])
def test_an_outcomes_own_expiry_shortens_its_stay(authenticated: bool) -> None:
    """jwt mode's lifetime cap ends an outcome before the TTL or the token's ``exp`` would."""
    cache = ReviewCache(ttl=30, failure_ttl=30, stale_ttl=60, max_size=10, wait_timeout=1)
    reviews: list[str] = []

    def review(token: str, audiences: Sequence[str]) -> ReviewOutcome:
        reviews.append(token)
        return ReviewOutcome(authenticated=authenticated, expires_at=time.time() + 0.3)

    assert cache.get_or_review("token-1", AUDIENCES, review)[1] == "miss"
    assert cache.get_or_review("token-1", AUDIENCES, review)[1] == "hit"
    time.sleep(0.4)
    assert cache.get_or_review("token-1", AUDIENCES, review)[1] == "miss"
    assert reviews == ["token-1", "token-1"]
    passed = ReviewOutcome(authenticated=authenticated, expires_at=time.time())
    assert cache.get_or_review("token-2", AUDIENCES, lambda t, a: passed)[1] == "miss"
    assert cache.get_or_review("token-2", AUDIENCES, review)[1] == "miss"  # never kept
