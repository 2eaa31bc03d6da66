"""The TokenReview cache: outcomes reused for a short time, one review per token at a time.

Keys are HMAC-SHA256 digests under a random per-process key, so the cache never holds a token
and a memory dump does not help guess one. Entries live ``min(TTL, exp - now)``, ``exp`` read
from the token's unverified payload only ever to *shorten* a lifetime; definitive "not
authenticated" outcomes live the failure TTL; failures to get an answer are never stored. The
size is bounded, least recently used evicted first. Concurrent requests for one uncached token
share a single review (single flight).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

from flask_bindcar.errors import API_CALL_FAILED, AuthError
from flask_bindcar.kube import ReviewOutcome

CacheResult = Literal["hit", "miss", "shared"]
Review = Callable[[str, Sequence[str]], ReviewOutcome]


def token_expiry(token: str) -> float | None:
    """``exp`` of a JWT's payload, unverified; None when there is none to read."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


class _Flight:
    __slots__ = ("done", "error", "outcome")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: ReviewOutcome | None = None
        self.error: AuthError | None = None


class ReviewCache:
    """Thread-safe TTL + LRU cache of TokenReview outcomes with single flight."""

    def __init__(self, *, ttl: float, failure_ttl: float, max_size: int, wait_timeout: float):
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.max_size = max_size
        self.wait_timeout = wait_timeout
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, ReviewOutcome]] = OrderedDict()
        self._flights: dict[bytes, _Flight] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, token: str, audiences: Sequence[str]) -> bytes:
        """HMAC over the token and the audiences, each length-prefixed so no two inputs collide."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (token, *audiences):
            data = part.encode()
            mac.update(len(data).to_bytes(4, "big"))
            mac.update(data)
        return mac.digest()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def get_or_review(self, token: str, audiences: Sequence[str], review: Review) -> tuple[ReviewOutcome, CacheResult]:
        """The cached outcome for ``token``, or the outcome of one ``review`` shared by all who ask now."""
        key = self.key(token, audiences)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry[0] > now:
                    self._entries.move_to_end(key)
                    return entry[1], "hit"
                del self._entries[key]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()

        if not leader:
            if not flight.done.wait(self.wait_timeout):
                raise AuthError.validation_failed(
                    API_CALL_FAILED.format(why=f"no answer within {self.wait_timeout:g}s"), reason="api_failed"
                )
            if flight.error is not None:
                raise flight.error
            assert flight.outcome is not None
            return flight.outcome, "shared"

        try:
            outcome = review(token, audiences)
            flight.outcome = outcome
            self._store(key, outcome, token)
            return outcome, "miss"
        except AuthError as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _store(self, key: bytes, outcome: ReviewOutcome, token: str) -> None:
        lifetime = self.ttl if outcome.authenticated else self.failure_ttl
        if outcome.authenticated:
            exp = token_expiry(token)
            if exp is not None:
                lifetime = min(lifetime, exp - time.time())
        if lifetime <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + lifetime, outcome)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
