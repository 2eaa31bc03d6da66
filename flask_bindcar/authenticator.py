"""The validator chain, in one place: rate limit, header, Basic or TokenReview, allowlists.

The Flask extension and the WSGI middleware only hand a header in and take an `Identity` or an
error out. Every decision is logged once on ``flask_bindcar.audit`` and counted in the metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from flask_bindcar.cache import CacheResult, ReviewCache
from flask_bindcar.config import AuthConfig
from flask_bindcar.credentials import bearer_token
from flask_bindcar.errors import API_OVERLOADED, INVALID_API_TOKEN, AuthError, RateLimited
from flask_bindcar.identity import Identity
from flask_bindcar.kube import KubeTokenReviewer, ReviewOutcome
from flask_bindcar.metrics import get_metrics
from flask_bindcar.policy import authorize, identity_from_review
from flask_bindcar.ratelimit import FailureLimiter

logger = logging.getLogger("flask_bindcar")
audit_logger = logging.getLogger("flask_bindcar.audit")

BASIC_WARNING = (
    "flask-bindcar is in Basic mode without BIND_API_TOKEN: any well-formed bearer token is accepted "
    "and nothing about it is verified. Set BIND_AUTH_MODE=tokenreview, or BIND_API_TOKEN for a shared "
    "secret, unless authentication happens in front of this service."
)


@dataclass
class AuditRecord:
    """One authentication decision, as written to ``flask_bindcar.audit`` (never the token)."""

    time: str
    remote_addr: str | None
    method: str | None
    path: str | None
    result: str  # "allow", "deny" or "rate_limited"
    reason: str | None = None
    message: str | None = None
    username: str | None = None
    auth_method: str | None = None
    cache: CacheResult | None = None
    review_latency_ms: float | None = None


class Authenticator:
    """Authenticates ``Authorization`` header values according to an `AuthConfig`."""

    def __init__(self, config: AuthConfig):
        self.config = config
        self._secret_digest = _digest(config.api_token) if config.api_token else None
        self.reviewer: KubeTokenReviewer | None = None
        self.cache: ReviewCache | None = None
        self.limiter = FailureLimiter(config.failure_limit) if config.failure_limit else None
        self.metrics = get_metrics()
        self._slots = threading.BoundedSemaphore(config.review_max_inflight)
        if config.mode == "tokenreview":
            self.reviewer = KubeTokenReviewer(config)
            self.cache = ReviewCache(
                ttl=config.cache_ttl,
                failure_ttl=config.cache_failure_ttl,
                stale_ttl=config.cache_stale_ttl,
                max_size=config.cache_size,
                wait_timeout=config.review_timeout,
            )
        logger.info("flask-bindcar configuration: %s", json.dumps(config.describe(), sort_keys=True))
        if config.mode == "basic" and self._secret_digest is None:
            logger.warning(BASIC_WARNING)

    def authenticate(
        self,
        header: str | None,
        *,
        remote_addr: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> Identity:
        """The caller behind ``header`` (the ``Authorization`` value, None when absent).

        Raises `AuthError` with the seed's message, or `RateLimited` for a client past the failure
        limit, after logging the decision, never the token.
        """
        record = AuditRecord(_now(), remote_addr, method, path, result="allow")
        try:
            if self.limiter is not None:
                retry_after = self.limiter.retry_after(remote_addr)
                if retry_after is not None:
                    raise RateLimited(retry_after)
            identity = self._chain(header, record)
        except AuthError as e:
            if self.limiter is not None:
                self.limiter.record_failure(remote_addr)
            self._decided(record, e)
            raise
        except RateLimited as e:
            self._decided(record, e)
            raise
        record.username, record.auth_method = identity.username, identity.method
        self._decided(record)
        return identity

    def authorize(
        self,
        identity: Identity,
        *,
        namespaces: Collection[str] | None = None,
        service_accounts: Collection[str] | None = None,
        remote_addr: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Apply a stricter, per-view policy to an already authenticated caller."""
        try:
            authorize(identity, namespaces, service_accounts)
        except AuthError as e:
            record = AuditRecord(_now(), remote_addr, method, path, result="allow")
            record.username, record.auth_method = identity.username, identity.method
            self._decided(record, e)
            raise

    def _chain(self, header: str | None, record: AuditRecord) -> Identity:
        token = bearer_token(header)
        if self.reviewer is None or self.cache is None:
            if self._secret_digest is None:
                return Identity(method="basic")
            if not hmac.compare_digest(_digest(token), self._secret_digest):
                raise AuthError(INVALID_API_TOKEN, reason="invalid_api_token")
            return Identity(method="shared-secret")
        started = time.perf_counter()
        try:
            outcome, record.cache = self.cache.get_or_review(token, self.config.audiences, self._review)
        finally:
            if record.cache != "hit":
                record.review_latency_ms = round((time.perf_counter() - started) * 1000, 3)
        if self.metrics is not None and record.cache is not None:
            self.metrics.cache.labels(outcome="hit" if record.cache == "shared" else record.cache).inc()
        if record.cache == "stale":
            logger.warning("accepting a stale TokenReview: the API server is unavailable")
        identity = identity_from_review(outcome, self.config.audiences)
        authorize(identity, self.config.allowed_namespaces, self.config.allowed_service_accounts)
        return identity

    def _review(self, token: str, audiences: Sequence[str]) -> ReviewOutcome:
        """One TokenReview call, if a slot is free (the bulkhead)."""
        assert self.reviewer is not None
        if not self._slots.acquire(blocking=False):
            raise AuthError.api_call_failed(
                f"{self.config.review_max_inflight} TokenReviews already in flight", reason=API_OVERLOADED
            )
        metrics = self.metrics
        started = time.perf_counter()
        if metrics is not None:
            metrics.inflight.inc()
        try:
            return self.reviewer.review(token, audiences)
        finally:
            self._slots.release()
            if metrics is not None:
                metrics.inflight.dec()
                metrics.review_duration.observe(time.perf_counter() - started)

    def _decided(self, record: AuditRecord, error: AuthError | RateLimited | None = None) -> None:
        if error is not None:
            record.result = "rate_limited" if isinstance(error, RateLimited) else "deny"
            record.reason, record.message = error.reason, error.message
            logger.warning(
                "authentication failed: %s [reason=%s remote_addr=%s method=%s path=%r]",
                error.message,
                error.reason,
                record.remote_addr,
                record.method,
                record.path,
            )
        if self.metrics is not None:
            self.metrics.requests.labels(result=record.result, reason=record.reason or "ok").inc()
        if audit_logger.isEnabledFor(logging.INFO):
            fields = asdict(record)
            audit_logger.info(json.dumps(fields), extra={"bindcar_audit": fields})


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
