"""The TokenReview cache: outcomes reused for a short time, one review per token at a time.

Keys are keyed BLAKE2b digests (the standard library's ``hashlib.blake2b(key=...)``, a MAC by
design) under a random per-process key, so the cache never holds a token and a memory dump does
not help guess one. Entries live ``min(TTL, exp - now)``, ``exp`` read
from the token's unverified payload only ever to *shorten* a lifetime; definitive "not
authenticated" outcomes live the failure TTL; an outcome's own ``expires_at`` (jwt mode's lifetime
cap) shortens either; failures to get an answer are never stored. The
size is bounded, least recently used evicted first. Concurrent requests for one uncached token
share a single review (single flight: a `~flask_bindcar.flight.SingleFlightCache`, as the
authorization cache is). With a stale window (``BIND_TOKEN_CACHE_STALE_TTL``), a successful review
is kept past its TTL and reused, for at most that long after it was made and never past the
token's ``exp``, when the API server is unreachable or fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

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


def _frames(parts: tuple[str, ...]) -> bytes:
    """``parts`` as one self-delimiting string: their count, then each with its length."""
    encoded = [p.encode("utf-8", "surrogatepass") for p in parts]
    return b"".join([len(encoded).to_bytes(4, "big"), *(len(e).to_bytes(4, "big") + e for e in encoded)])


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
        self._mac = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=32)
        self._macs: dict[tuple[str, ...], Any] = {}
        """The MAC's state with each audience list already hashed: the only part of a key that is
        not the token."""

    def key(self, token: str, audiences: Sequence[str]) -> bytes:
        """The MAC of the audiences (self-delimiting: their count, each length-prefixed), then the
        token, so no two questions share a key.

        Keyed BLAKE2b rather than HMAC-SHA256: on the warm path, measured inside a Flask request
        (``make bench``), OpenSSL's SHA-256 contexts cost about 7 µs more per request. The key is
        computed before the token's format is checked (on a miss only), so any ``str`` must
        encode: ``surrogatepass`` encodes a lone surrogate too, still one-to-one.
        """
        wanted = tuple(audiences)
        prefixed = self._macs.get(wanted)
        if prefixed is None:
            if len(self._macs) >= 64:
                self._macs.clear()
            prefixed = self._mac.copy()
            prefixed.update(_frames(wanted))
            self._macs[wanted] = prefixed
        mac = prefixed.copy()
        mac.update(token.encode("utf-8", "surrogatepass"))
        return mac.digest()

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
        if outcome.expires_at is not None:
            left = outcome.expires_at - time.time()
            fresh, stale = min(fresh, left), min(stale, left)
        if fresh <= 0 and stale <= 0:
            return
        self.keep(key, outcome, now + fresh, now + max(fresh, stale))
