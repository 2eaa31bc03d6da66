"""The TokenReview cache: outcomes reused for a short time, one review per token at a time.

Keys are HMAC-SHA256 digests under a random per-process key, so the cache never holds a token
and a memory dump does not help guess one. Entries live ``min(TTL, exp - now)``, ``exp`` read
from the token's unverified payload only ever to *shorten* a lifetime; definitive "not
authenticated" outcomes live the failure TTL; failures to get an answer are never stored. The
size is bounded, least recently used evicted first. Concurrent requests for one uncached token
share a single review (single flight: a `~flask_bindcar.flight.SingleFlightCache`, as the
authorization cache is). With a stale window (``BIND_TOKEN_CACHE_STALE_TTL``), a successful review
is kept past its TTL and reused, for at most that long after it was made and never past the
token's ``exp``, when the API server is unreachable or fails.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable, Hashable, Sequence

from flask_bindcar.errors import AuthError
from flask_bindcar.flight import CacheResult as CacheResult  # re-exported: what callers of the cache name
from flask_bindcar.flight import Kept, SingleFlightCache
from flask_bindcar.tokenreview import ReviewOutcome

Review = Callable[[str, Sequence[str]], ReviewOutcome]


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


def _failed(why: str, reason: str) -> AuthError:
    return AuthError.api_call_failed(why, reason=reason)


class ReviewCache(SingleFlightCache[tuple[str, Sequence[str], Review], ReviewOutcome, AuthError]):
    """Thread-safe TTL + LRU cache of TokenReview outcomes with single flight and stale-if-error."""

    def __init__(self, *, ttl: float, failure_ttl: float, max_size: int, wait_timeout: float, stale_ttl: float = 0):
        """``wait_timeout`` is how long one review may take (``BIND_TOKEN_REVIEW_TIMEOUT``)."""
        super().__init__(
            max_size=max_size, wait_timeout=wait_timeout, errors=AuthError, failed=_failed, what="a TokenReview"
        )
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.stale_ttl = stale_ttl
        self._mac = HmacSha256(secrets.token_bytes(32))

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
        return self.get_or_lead(self.key(token, audiences), (token, audiences, review))

    def _lead(
        self, key: Hashable, question: tuple[str, Sequence[str], Review], kept: Kept[ReviewOutcome] | None
    ) -> tuple[ReviewOutcome, CacheResult]:
        """One review; when the API server is out (a transient error), the kept outcome if still in its stale window."""
        token, audiences, review = question
        try:
            outcome = review(token, audiences)
        except AuthError as e:
            if not (e.transient and kept is not None and time.monotonic() < kept.stale_until):
                raise
            return kept.value, "stale"
        self._store(key, outcome, token)
        return outcome, "miss"

    def _store(self, key: Hashable, outcome: ReviewOutcome, token: str) -> None:
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
        self.keep(key, outcome, now + fresh, now + max(fresh, stale))
