"""Every decision, once: its log line, its audit record on ``flask_bindcar.audit``, its counters.

`Recorder` is the one place that knows how a decision is written down, so the admission chain
(`flask_bindcar.authenticator`) only says what was decided. ``review`` uses a quiet one: a
troubleshooting run writes no audit record and counts nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, get_args

from flask_bindcar.errors import AccessDenied, BindcarError, RateLimited
from flask_bindcar.flight import CacheResult
from flask_bindcar.identity import Identity
from flask_bindcar.metrics import Metrics
from flask_bindcar.rbac import Attributes

logger = logging.getLogger("flask_bindcar")
audit_logger = logging.getLogger("flask_bindcar.audit")

Where = tuple[str | None, str | None, str | None]
"""The request a decision is about: remote address, method, path."""


@dataclass
class AuditRecord:
    """One authentication decision, as written to ``flask_bindcar.audit`` (never the token)."""

    time: str
    remote_addr: str | None
    method: str | None
    path: str | None
    result: str
    """``allow``, ``deny`` or ``rate_limited``; for an authorization, ``unavailable`` too."""
    reason: str | None = None
    message: str | None = None
    username: str | None = None
    auth_method: str | None = None
    cache: CacheResult | None = None
    review_latency_ms: float | None = None
    authorization: dict[str, Any] | None = None
    """Set on the record of an RBAC decision: the verb, the attributes, the decision and the
    SubjectAccessReview's ``status.reason``."""
    pod_name: str | None = None
    """The pod the caller's token is bound to, when it is."""
    cluster: str | None = None
    """The trusted cluster the token was routed to, when it was; only with ``BIND_CLUSTERS_FILE``."""


class Recorder:
    """Writes down each decision of one `Authenticator`: a warning line for a refusal, the audit
    record when anyone listens, and the counters when ``metrics`` is given. ``quiet`` writes
    nothing at all (``review``)."""

    def __init__(self, metrics: Metrics | None, *, quiet: bool = False):
        self.metrics = None if quiet else metrics
        self.quiet = quiet
        self.with_cluster = False
        """Whether records carry the ``cluster`` field: set with ``BIND_CLUSTERS_FILE``, so a
        configuration without it writes the records it always wrote."""
        self._cache_labels = {r: ("hit" if r == "shared" else r,) for r in get_args(CacheResult)}

    def cache(self, result: CacheResult) -> None:
        """How the review cache answered (a shared review counts as a hit)."""
        if self.metrics is not None:
            self.metrics.cache.inc(*self._cache_labels[result])

    def allowed(
        self, where: Where, identity: Identity, cache: CacheResult | None = None, latency: float | None = None
    ) -> None:
        """A request admitted by authentication; ``cache`` is how the review cache answered it
        (counted here, in one step with the decision: this is the warm path)."""
        metrics = self.metrics
        if metrics is not None:
            if cache is None:
                metrics.requests.inc("allow", "ok")
            else:  # the decision and the cache lookup, in one increment (`Metrics.admitted`)
                metrics.admitted.inc(*self._cache_labels[cache])
            if identity.cluster is not None:
                metrics.cluster_requests.inc(identity.cluster, "allow")
        if not self.quiet and audit_logger.isEnabledFor(logging.INFO):
            self._decided("allow", where, identity=identity, cache=cache, latency=latency, counted=True)

    def refused(
        self,
        error: BindcarError,
        where: Where,
        identity: Identity | None = None,
        cache: CacheResult | None = None,
        latency: float | None = None,
        cluster: str | None = None,
    ) -> None:
        """A request refused before or during authentication (400, 401, 405, 429); ``cluster``, the
        trusted cluster the token was routed to, when it was."""
        if not self.quiet:
            logger.warning(
                "authentication failed: %s [reason=%s remote_addr=%s method=%s path=%r]",
                error.message,
                error.reason,
                *where,
            )
        result = "rate_limited" if isinstance(error, RateLimited) else "deny"
        cluster = cluster or (identity.cluster if identity is not None else None)
        if cluster is not None and self.metrics is not None:
            self.metrics.cluster_requests.inc(cluster, "deny")
        self._decided(result, where, error=error, identity=identity, cache=cache, latency=latency, cluster=cluster)

    def authorization(
        self,
        where: Where,
        identity: Identity,
        attributes: Attributes | None,
        *,
        error: BindcarError | None = None,
        review_reason: str | None = None,
        cache: CacheResult | None = None,
        latency: float | None = None,
    ) -> None:
        """An RBAC decision: allowed (no ``error``), denied (`AccessDenied`) or unavailable."""
        if error is None:
            outcome, result = "allowed", "allow"
        elif isinstance(error, AccessDenied):
            outcome, result = "denied", "deny"
        else:
            outcome, result = "unavailable", "unavailable"
        if error is not None and identity.cluster is not None and self.metrics is not None:
            self.metrics.cluster_requests.inc(identity.cluster, "forbidden" if outcome == "denied" else outcome)
        if error is not None and not self.quiet:
            logger.warning(
                "authorization %s: %s [reason=%s review_reason=%r remote_addr=%s method=%s path=%r]",
                outcome,
                error.message,
                error.reason,
                review_reason,
                *where,
            )
        self._decided(
            result,
            where,
            error=error,
            identity=identity,
            cache=cache,
            latency=latency,
            authorization=(attributes, outcome, review_reason),
        )

    def _decided(
        self,
        result: str,
        where: Where,
        *,
        error: BindcarError | None = None,
        identity: Identity | None = None,
        cache: CacheResult | None = None,
        latency: float | None = None,
        authorization: tuple[Attributes | None, str, str | None] | None = None,
        counted: bool = False,
        cluster: str | None = None,
    ) -> None:
        """Count the decision (unless ``counted`` already), and write its audit record when anyone listens."""
        reason = error.reason if error is not None else None
        if self.metrics is not None and not counted:
            if authorization is None:
                self.metrics.requests.inc(result, reason or "ok")
            else:
                self.metrics.authorization.inc(authorization[1])
        if self.quiet or not audit_logger.isEnabledFor(logging.INFO):
            return
        remote_addr, method, path = where
        record = AuditRecord(
            _now(),
            remote_addr,
            method,
            path,
            result,
            reason=reason,
            message=error.message if error is not None else None,
            username=identity.username if identity is not None else None,
            auth_method=identity.method if identity is not None else None,
            cache=cache,
            review_latency_ms=latency,
            authorization=_authorization_record(authorization) if authorization is not None else None,
            pod_name=identity.pod_name if identity is not None else None,
            cluster=cluster or (identity.cluster if identity is not None else None),
        )
        fields = asdict(record)
        if not self.with_cluster:
            del fields["cluster"]
        audit_logger.info(json.dumps(fields), extra={"bindcar_audit": fields})


def _authorization_record(authorization: tuple[Attributes | None, str, str | None]) -> dict[str, Any]:
    attributes, decision, reason = authorization
    return {
        "verb": attributes.verb if attributes is not None else None,
        "attributes": attributes.record() if attributes is not None else None,
        "decision": decision,
        "reason": reason,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
