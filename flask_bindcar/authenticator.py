"""The admission chain, in one place: `Authenticator.admit`.

Method and path, rate limit, header, Basic or TokenReview, the app's allowlists and pod binding,
the view's policy, RBAC. The Flask extension and the WSGI middleware only hand a request in and
take an `Identity` or a `BindcarError` out. Every decision is logged once on
``flask_bindcar.audit`` and counted in the metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, get_args

from flask_bindcar.apiserver import ApiServerClient
from flask_bindcar.authz import NOT_CONFIGURED, Authorizer
from flask_bindcar.bulkhead import DEFAULT_WAIT, Bulkhead, default_share
from flask_bindcar.cache import CacheResult, ReviewCache
from flask_bindcar.config import FAILURE_LIMIT_WARNING, AuthConfig
from flask_bindcar.credentials import bearer_token, check_token_format
from flask_bindcar.errors import (
    API_OVERLOADED,
    INVALID_API_TOKEN,
    OVERLOADED,
    AccessDenied,
    AuthError,
    AuthzUnavailable,
    BadRequestPath,
    BindcarError,
    MethodRefused,
    RateLimited,
)
from flask_bindcar.identity import Identity
from flask_bindcar.metrics import get_metrics
from flask_bindcar.policy import APP_POLICY, ViewPolicy, authorize, identity_from_review
from flask_bindcar.ratelimit import FailureLimiter
from flask_bindcar.rbac import RBAC, Attributes
from flask_bindcar.target import path_problem
from flask_bindcar.tokenreview import ReviewOutcome

logger = logging.getLogger("flask_bindcar")
audit_logger = logging.getLogger("flask_bindcar.audit")

BASIC_WARNING = (
    "flask-bindcar is in Basic mode without BIND_API_TOKEN: any well-formed bearer token is accepted "
    "and nothing about it is verified. Set BIND_AUTH_MODE=tokenreview, or BIND_API_TOKEN for a shared "
    "secret, unless authentication happens in front of this service."
)


NO_ALLOWLIST_WARNING = (
    "flask-bindcar is in TokenReview mode without BIND_ALLOWED_NAMESPACES or BIND_ALLOWED_SERVICE_ACCOUNTS: "
    "every ServiceAccount of the cluster is accepted. Set an allowlist, and BIND_REQUIRE_ALLOWLIST=true to "
    "refuse to start without one."
)
BASIC_IDENTITY = Identity(method="basic")
SHARED_SECRET_IDENTITY = Identity(method="shared-secret")


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


class Authenticator:
    """Authenticates ``Authorization`` header values according to an `AuthConfig`."""

    def __init__(self, config: AuthConfig):
        self.config = config
        self._secret_digest = _digest(config.api_token) if config.api_token else None
        self.reviewer: ApiServerClient | None = None
        self.cache: ReviewCache | None = None
        self.limiter = FailureLimiter(config.failure_limit) if config.failure_limit else None
        self._generic = config.error_detail == "generic"
        self.metrics = get_metrics()
        self._cache_labels = {r: ("hit" if r == "shared" else r,) for r in get_args(CacheResult)}
        self.bulkhead = Bulkhead(
            config.review_max_inflight,
            config.review_max_inflight_per_caller or default_share(config.review_max_inflight),
            wait=min(DEFAULT_WAIT, config.review_timeout),
        )
        if config.mode == "tokenreview":
            self.reviewer = ApiServerClient(config)
            self.cache = ReviewCache(
                ttl=config.cache_ttl,
                failure_ttl=config.cache_failure_ttl,
                stale_ttl=config.cache_stale_ttl,
                max_size=config.cache_size,
                wait_timeout=config.review_timeout,
            )
        self.authorizer = (
            Authorizer(config, self.reviewer, self.bulkhead, self.metrics) if self.reviewer is not None else None
        )
        logger.info("flask-bindcar configuration: %s", json.dumps(config.describe(), sort_keys=True))
        if config.mode == "basic" and self._secret_digest is None:
            logger.warning(BASIC_WARNING)
        elif config.mode == "tokenreview" and not config.has_allowlist:
            logger.warning(NO_ALLOWLIST_WARNING)
        if config.failure_limit is not None:
            logger.warning(FAILURE_LIMIT_WARNING.format(limit=config.failure_limit))

    def admit(
        self,
        header: str | None,
        *,
        method: str,
        path: str,
        raw_path: str | None = None,
        remote_addr: str | None = None,
        view_args: Mapping[str, Any] | None = None,
        policy: ViewPolicy = APP_POLICY,
    ) -> Identity:
        """The whole admission chain for one request; the caller, or the `BindcarError` to answer.

        In this order: the method (405) and, under path authorization, the path (400); the
        failure limit (429); the header; Basic or TokenReview; the app's allowlists and pod
        binding; the view's own ``policy``; RBAC, the view's rules or the app's (403, 503).
        ``path`` is ``PATH_INFO`` as the application receives it, ``raw_path`` the path as the
        client wrote it (`flask_bindcar.target.raw_path`). ``view_args`` are the matched route's
        (None when no route matched: rules that name view arguments then wait for the 404).
        """
        rules = policy.rbac or self.config.rbac
        self.check_target(method, path, raw_path, rules, remote_addr)
        identity = self.authenticate(header, remote_addr=remote_addr, method=method, path=path)
        if policy.narrows:
            self.authorize(
                identity,
                namespaces=policy.namespaces,
                service_accounts=policy.service_accounts,
                require_pod=policy.require_pod,
                remote_addr=remote_addr,
                method=method,
                path=path,
            )
        if rules is not None and (view_args is not None or not rules.view_args):
            self.check_access(
                identity, rules, method=method, path=path or "/", view_args=view_args, remote_addr=remote_addr
            )
        return identity

    def check_target(
        self, method: str, path: str, raw_path: str | None, rules: RBAC | None, remote_addr: str | None = None
    ) -> None:
        """`MethodRefused` for a method outside ``BIND_ALLOWED_METHODS``; under path authorization,
        `BadRequestPath` for a path it cannot judge safely (`flask_bindcar.target`)."""
        try:
            if method not in self.config.allowed_methods:
                raise MethodRefused(method, self.config.allowed_methods)
            if rules is not None and rules.path:
                why = path_problem(path, raw_path)
                if why is not None:
                    raise BadRequestPath(why)
        except BindcarError as e:
            self._denied(e, remote_addr, method, path)
            raise

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
        try:
            if self.limiter is not None:
                retry_after = self.limiter.retry_after(remote_addr)
                if retry_after is not None:
                    raise RateLimited(retry_after)
            identity, cache, latency = self._chain(header)
        except AuthError as e:
            if self.limiter is not None and e.credential_failure:
                self.limiter.record_failure(remote_addr)
            self._denied(e, remote_addr, method, path)
            if self._generic:
                raise e.generic() from None
            raise
        except RateLimited as e:
            self._denied(e, remote_addr, method, path)
            raise
        self._decided(
            "allow",
            remote_addr,
            method,
            path,
            identity=identity,
            cache=cache,
            latency=latency,
        )
        return identity

    def authorize(
        self,
        identity: Identity,
        *,
        namespaces: Collection[str] | None = None,
        service_accounts: Collection[str] | None = None,
        require_pod: bool = False,
        remote_addr: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Apply a stricter, per-view policy to an already authenticated caller."""
        try:
            authorize(identity, namespaces, service_accounts, require_pod)
        except AuthError as e:
            self._denied(e, remote_addr, method, path, identity)
            if self._generic:
                raise e.generic() from None
            raise

    def check_access(
        self,
        identity: Identity,
        rbac: RBAC,
        *,
        method: str,
        path: str,
        view_args: Mapping[str, Any] | None = None,
        remote_addr: str | None = None,
    ) -> None:
        """Ask RBAC whether ``identity`` may make this request, as ``rbac`` describes it.

        Raises `AccessDenied` (403) when it may not, `AuthzUnavailable` (503) when no answer can
        be had (or ``rbac`` names a view argument the route lacks); either way after logging the
        decision and the review's reason, which never reaches the body.
        """
        attributes: Attributes | None = None
        try:
            try:
                attributes = rbac.attributes(method, path, view_args)
            except KeyError as e:
                logger.error("RBAC%r names the view argument %s, which this route does not have", rbac.summary(), e)
                raise AuthzUnavailable(f"the route has no view argument {e}", reason="bad_template") from None
            if self.authorizer is None:
                raise AuthzUnavailable(NOT_CONFIGURED, reason="not_configured")
            decision, cache, latency = self.authorizer.check(identity, attributes)
        except (AccessDenied, AuthzUnavailable) as e:
            denied = isinstance(e, AccessDenied)
            outcome = "denied" if denied else "unavailable"
            review_reason = e.review_reason if isinstance(e, AccessDenied) else None
            logger.warning(
                "authorization %s: %s [reason=%s review_reason=%r remote_addr=%s method=%s path=%r]",
                outcome,
                e.message,
                e.reason,
                review_reason,
                remote_addr,
                method,
                path,
            )
            self._decided(
                "deny" if denied else "unavailable",
                remote_addr,
                method,
                path,
                error=e,
                identity=identity,
                cache=e.cache,  # type: ignore[arg-type]
                latency=e.review_latency_ms,
                authorization=(attributes, outcome, review_reason),
            )
            if self._generic:
                raise e.generic() from None
            raise
        allowed = (attributes, "allowed", decision.reason)
        self._decided(
            "allow", remote_addr, method, path, identity=identity, cache=cache, latency=latency, authorization=allowed
        )

    def _chain(self, header: str | None) -> tuple[Identity, CacheResult | None, float | None]:
        token = bearer_token(header, check_format=self.cache is None)
        if self.reviewer is None or self.cache is None:
            if self._secret_digest is None:
                return BASIC_IDENTITY, None, None
            if not hmac.compare_digest(_digest(token), self._secret_digest):
                raise AuthError(INVALID_API_TOKEN, reason="invalid_api_token")
            return SHARED_SECRET_IDENTITY, None, None
        audiences = self.config.audiences
        started = time.perf_counter()
        outcome, cache = self.cache.get_or_review(token, audiences, self._review)
        latency = None if cache == "hit" else round((time.perf_counter() - started) * 1000, 3)
        if self.metrics is not None:
            self.metrics.cache.inc(*self._cache_labels[cache])
        if cache == "stale":
            logger.warning("accepting a stale TokenReview: the API server is unavailable")
        try:
            identity: Identity | None = outcome.memo.get(audiences)
            if identity is None:
                identity = outcome.memo[audiences] = identity_from_review(outcome, audiences)
            authorize(
                identity, self.config.allowed_namespaces, self.config.allowed_service_accounts, self.config.require_pod
            )
        except AuthError as e:
            e.cache, e.review_latency_ms = cache, latency
            raise
        return identity, cache, latency

    def _review(self, token: str, audiences: Sequence[str]) -> ReviewOutcome:
        """One TokenReview call for a well-formed token, if a slot is free (the bulkhead)."""
        assert self.reviewer is not None
        check_token_format(token)
        if not self.bulkhead.acquire(None):
            raise AuthError.api_call_failed(
                OVERLOADED.format(slots=self.config.review_max_inflight), reason=API_OVERLOADED
            )
        metrics = self.metrics
        started = time.perf_counter()
        if metrics is not None:
            metrics.inflight.inc()
        try:
            return self.reviewer.review(token, audiences)
        finally:
            self.bulkhead.release(None)
            if metrics is not None:
                metrics.inflight.dec()
                metrics.review_duration.observe(time.perf_counter() - started)

    def _denied(
        self,
        error: BindcarError,
        remote_addr: str | None,
        method: str | None,
        path: str | None,
        identity: Identity | None = None,
    ) -> None:
        logger.warning(
            "authentication failed: %s [reason=%s remote_addr=%s method=%s path=%r]",
            error.message,
            error.reason,
            remote_addr,
            method,
            path,
        )
        self._decided(
            "rate_limited" if isinstance(error, RateLimited) else "deny",
            remote_addr,
            method,
            path,
            error=error,
            identity=identity,
            cache=getattr(error, "cache", None),
            latency=getattr(error, "review_latency_ms", None),
        )

    def _decided(
        self,
        result: str,
        remote_addr: str | None,
        method: str | None,
        path: str | None,
        *,
        error: BindcarError | None = None,
        identity: Identity | None = None,
        cache: CacheResult | None = None,
        latency: float | None = None,
        authorization: tuple[Attributes | None, str, str | None] | None = None,
    ) -> None:
        """Count the decision, and write its audit record when anyone listens.

        ``authorization`` is set for an RBAC decision: the attributes asked about, the decision
        (``allowed``, ``denied``, ``unavailable``) and the review's reason.
        """
        reason = error.reason if error is not None else None
        if self.metrics is not None:
            if authorization is None:
                self.metrics.requests.inc(result, reason or "ok")
            else:
                self.metrics.authorization.inc(authorization[1])
        if not audit_logger.isEnabledFor(logging.INFO):
            return
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
        )
        fields = asdict(record)
        audit_logger.info(json.dumps(fields), extra={"bindcar_audit": fields})


def _authorization_record(authorization: tuple[Attributes | None, str, str | None]) -> dict[str, Any]:
    attributes, decision, reason = authorization
    return {
        "verb": attributes.verb if attributes is not None else None,
        "attributes": attributes.record() if attributes is not None else None,
        "decision": decision,
        "reason": reason,
    }


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
