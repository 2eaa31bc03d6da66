"""The TokenReview cache: outcomes reused for a short time, one review per token at a time.

Keys are HMAC-SHA256 digests under a random per-process key, so the cache never holds a token
and a memory dump does not help guess one. Entries live ``min(TTL, exp - now)``, ``exp`` read
from the token's unverified payload only ever to *shorten* a lifetime; definitive "not
authenticated" outcomes live the failure TTL; failures to get an answer are never stored. The
size is bounded, least recently used evicted first. Concurrent requests for one uncached token
share a single review (single flight). With a stale window (``BIND_TOKEN_CACHE_STALE_TTL``), a
successful review is kept past its TTL and reused, for at most that long after it was made and
never past the token's ``exp``, when the API server is unreachable or fails.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

from flask_bindcar.errors import API_BAD_RESPONSE, API_UNREACHABLE, AuthError
from flask_bindcar.scrub import log_unexpected
from flask_bindcar.tokenreview import ReviewOutcome

CacheResult = Literal["hit", "miss", "shared", "stale"]
Review = Callable[[str, Sequence[str]], ReviewOutcome]

FOLLOWER_GRACE = 1.0
"""Seconds a request waiting on another's review waits past that review's own bound
(``wait_timeout``): the leader's answer or error, even a timeout, reaches the waiters before
their own wait ends, so every request that shared a review gets the same answer."""


def token_expiry(token: str) -> float | None:
    """``exp`` of a JWT's payload, unverified; None when there is none to read.

    The payload is the caller's to write: nesting too deep to parse, an ``exp`` too large for a
    float or not a number at all (``NaN``) all count as no ``exp``, which never lengthens a lifetime.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        seconds = float(exp)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, with the keyed inner and outer states computed once.

    Per message this costs two SHA-256 state copies. It is written out rather than taken from the
    ``hmac`` module because, measured on the warm request path (``make bench``), both
    ``hmac.digest`` (a new HMAC context per call) and ``hmac.HMAC.copy()`` cost about 2 µs more,
    which is the difference between matching Flask-HTTPAuth's dictionary lookup and not. The
    result is checked against ``hmac.digest`` in the test suite.
    """

    def __init__(self, key: bytes):
        block = key.ljust(64, b"\0") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def digest(self, *parts: bytes) -> bytes:
        """The MAC of the concatenation of ``parts``."""
        inner = self._inner.copy()
        for part in parts:
            inner.update(part)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _length(data: bytes) -> bytes:
    """The 4-byte length prefix that frames each part of a cache key."""
    return len(data).to_bytes(4, "big")


@functools.lru_cache(maxsize=64)
def _frames(parts: tuple[str, ...]) -> bytes:
    return b"".join(_length(data) + data for data in (p.encode() for p in parts))


class _Entry:
    __slots__ = ("fresh_until", "outcome", "stale_until")

    def __init__(self, outcome: ReviewOutcome, fresh_until: float, stale_until: float):
        self.outcome = outcome
        self.fresh_until = fresh_until
        self.stale_until = stale_until


class _Flight:
    __slots__ = ("done", "error", "outcome", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: ReviewOutcome | None = None
        self.result: CacheResult = "shared"
        self.error: AuthError | None = None


class ReviewCache:
    """Thread-safe TTL + LRU cache of TokenReview outcomes with single flight and stale-if-error."""

    def __init__(self, *, ttl: float, failure_ttl: float, max_size: int, wait_timeout: float, stale_ttl: float = 0):
        """``wait_timeout`` is how long one review may take (``BIND_TOKEN_REVIEW_TIMEOUT``)."""
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.stale_ttl = stale_ttl
        self.max_size = max_size
        self.wait_timeout = wait_timeout
        self._mac = HmacSha256(secrets.token_bytes(32))
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._flights: dict[bytes, _Flight] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, token: str, audiences: Sequence[str]) -> bytes:
        """HMAC over the token and the audiences, each length-prefixed so no two inputs collide.

        The key is computed before the token's format is checked (on a miss only), so any ``str``
        must encode: ``surrogatepass`` encodes a lone surrogate too, still one-to-one.
        """
        data = token.encode("utf-8", "surrogatepass")
        return self._mac.digest(_length(data), data, _frames(tuple(audiences)))

    def get_or_review(self, token: str, audiences: Sequence[str], review: Review) -> tuple[ReviewOutcome, CacheResult]:
        """The cached outcome for ``token``, or the outcome of one ``review`` shared by all who ask now.

        Raises the review's `AuthError` (the same one to every request that shared it), or an
        outage-class `AuthError` to a request that waited ``wait_timeout + FOLLOWER_GRACE`` seconds
        for another's review (the review's bound is ``wait_timeout``). Any other
        exception of the review becomes a bad-response `AuthError`, shared the same way: a bug in
        reading an answer is a 401, never a 500, and never an outcome in the cache.
        """
        key = self.key(token, audiences)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if now < entry.fresh_until:
                    self._entries.move_to_end(key)
                    return entry.outcome, "hit"
                if now >= entry.stale_until:
                    del self._entries[key]
                    entry = None
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()

        if not leader:
            wait = self.wait_timeout + FOLLOWER_GRACE
            if not flight.done.wait(wait):
                raise AuthError.api_call_failed(f"no answer within {wait:g}s", reason=API_UNREACHABLE)
            if flight.error is not None:
                raise flight.error
            if flight.outcome is None:  # the leader was stopped by a BaseException (a killed greenlet)
                raise AuthError.api_call_failed("the review was abandoned", reason=API_UNREACHABLE)
            return flight.outcome, flight.result

        try:
            try:
                outcome = review(token, audiences)
            except AuthError as e:
                if not (e.transient and entry is not None and time.monotonic() < entry.stale_until):
                    raise
                flight.outcome, flight.result = entry.outcome, "stale"
                return entry.outcome, "stale"
            flight.outcome, flight.result = outcome, "shared"
            self._store(key, outcome, token)
            return outcome, "miss"
        except AuthError as e:
            flight.error = e
            raise
        except Exception as e:
            log_unexpected("a TokenReview", e)
            flight.error = AuthError.api_call_failed(type(e).__name__, reason=API_BAD_RESPONSE)
            raise flight.error from None
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _store(self, key: bytes, outcome: ReviewOutcome, token: str) -> None:
        now = time.monotonic()
        if outcome.authenticated:
            fresh, stale = self.ttl, self.stale_ttl
            exp = token_expiry(token)
            if exp is not None:
                left = exp - time.time()
                fresh, stale = min(fresh, left), min(stale, left)
        else:
            fresh, stale = self.failure_ttl, 0.0
        if fresh <= 0 and stale <= 0:
            return
        entry = _Entry(outcome, now + fresh, now + max(fresh, stale))
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
