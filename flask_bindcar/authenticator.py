"""The admission chain, in one place: `Authenticator.admit`.

Method and path, rate limit, header, Basic or TokenReview (or jwt mode's local verification in its
place), the app's allowlists and pod binding, the view's policy, RBAC. The Flask guard,
``@auth_required``, the WSGI middleware, ``review`` and the CLI all call `Authenticator.admit`:
they hand a request in and take an `Identity` or a `BindcarError` out. Every decision is written
down once by the `Recorder` (`flask_bindcar.audit`): its log line, its audit record, its counters.
An optional `Trace` collects each step and what it found, for ``review``; without one the hot path
makes no per-step objects.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flask_bindcar.apiserver import ApiServerClient
from flask_bindcar.audit import Recorder, Where
from flask_bindcar.authz import NOT_CONFIGURED, Authorizer
from flask_bindcar.bulkhead import DEFAULT_WAIT, Bulkhead, default_share
from flask_bindcar.cache import ReviewCache
from flask_bindcar.clusters import UNKNOWN_ISSUER, Clusters, TrustedCluster
from flask_bindcar.config import FAILURE_LIMIT_WARNING, MODE_NAMES, AuthConfig
from flask_bindcar.credentials import bearer_token, check_token_format
from flask_bindcar.errors import (
    INVALID_API_TOKEN,
    AccessDenied,
    AuthError,
    AuthzUnavailable,
    BadRequestPath,
    BindcarError,
    MethodRefused,
    RateLimited,
)
from flask_bindcar.identity import Identity
from flask_bindcar.jwtmode import LocalReview
from flask_bindcar.metrics import get_metrics
from flask_bindcar.policy import APP_POLICY, ViewPolicy, authorize, identity_from_review
from flask_bindcar.precheck import PreCheck
from flask_bindcar.ratelimit import FailureLimiter
from flask_bindcar.rbac import RBAC, Attributes
from flask_bindcar.target import path_problem, raw_path
from flask_bindcar.tokenreview import ReviewOutcome
from flask_bindcar.transport import end_request_deadline, request_deadline

logger = logging.getLogger("flask_bindcar")

BASIC_WARNING = (
    "flask-bindcar is in Basic mode without BIND_API_TOKEN: any well-formed bearer token is accepted "
    "and nothing about it is verified. Set BIND_AUTH_MODE=tokenreview, or BIND_API_TOKEN for a shared "
    "secret, unless authentication happens in front of this service."
)


NO_ALLOWLIST_TEMPLATE = (
    "flask-bindcar is in {mode} without BIND_ALLOWED_NAMESPACES or BIND_ALLOWED_SERVICE_ACCOUNTS: "
    "every ServiceAccount of the cluster is accepted. Set an allowlist, and BIND_REQUIRE_ALLOWLIST=true to "
    "refuse to start without one."
)
NO_ALLOWLIST_WARNING = NO_ALLOWLIST_TEMPLATE.format(mode="TokenReview mode")
BASIC_IDENTITY = Identity(method="basic")
SHARED_SECRET_IDENTITY = Identity(method="shared-secret")


class Trace:
    """The steps one admission went through, in order, and what each found: for ``review``.

    `enter` names the step about to run; `found` records what it found. A step entered and not
    found is the one that refused (the `BindcarError` raised says why).
    """

    def __init__(self) -> None:
        self.steps: list[tuple[str, dict[str, Any] | None]] = []

    def enter(self, step: str) -> None:
        self.steps.append((step, None))

    def found(self, **facts: Any) -> None:
        step, _ = self.steps[-1]
        self.steps[-1] = (step, facts)

    @property
    def failed_step(self) -> str | None:
        """The step that refused, when the last one entered found nothing."""
        if self.steps and self.steps[-1][1] is None:
            return self.steps[-1][0]
        return None


class Authenticator:
    """Admits requests according to an `AuthConfig`: `admit` runs the whole chain.

    ``recorder`` writes each decision down (default: logs, audit records and the process's
    metrics); ``announce`` logs the configuration and its posture warnings once, at startup.
    """

    def __init__(self, config: AuthConfig, *, recorder: Recorder | None = None, announce: bool = True):
        self.config = config
        self._secret_digest = _digest(config.api_token) if config.api_token else None
        self.reviewer: ApiServerClient | None = None
        self.cache: ReviewCache | None = None
        self.precheck: PreCheck | None = None
        self.local: LocalReview | None = None
        """jwt mode: what a cache miss asks instead of a TokenReview."""
        self.clusters: Clusters | None = None
        """TokenReview and jwt modes: the trusted clusters, one unnamed without ``BIND_CLUSTERS_FILE``."""
        self.limiter = FailureLimiter(config.failure_limit) if config.failure_limit else None
        self._generic = config.error_detail == "generic"
        self.recorder = recorder if recorder is not None else Recorder(get_metrics())
        self.metrics = self.recorder.metrics
        if config.clusters is not None:
            self.recorder.with_cluster = True
        self.bulkhead = Bulkhead(
            config.review_max_inflight,
            config.review_max_inflight_per_caller or default_share(config.review_max_inflight),
            wait=min(DEFAULT_WAIT, config.review_timeout),
        )
        self.authorizer: Authorizer | None = None
        if config.mode != "basic":
            self.clusters = Clusters(config, self.metrics)
            if self.clusters.default is not None:  # one cluster: its parts, as they always were here
                default = self.clusters.default
                self.reviewer, self.local, self.precheck = default.reviewer, default.local, default.precheck
                self.bulkhead, self.authorizer = default.bulkhead, default.authorizer
            self.cache = ReviewCache(
                ttl=config.cache_ttl,
                failure_ttl=config.cache_failure_ttl,
                stale_ttl=config.cache_stale_ttl,
                max_size=config.cache_size,
                wait_timeout=config.review_timeout,
            )
        self._check_header_format = self.cache is None  # with a cache, only a miss checks it (`_review`)
        self._review_once = self._review  # bound once: the warm path makes no method object per request
        if announce:
            self._announce()

    def _announce(self) -> None:
        config = self.config
        logger.info("flask-bindcar configuration: %s", json.dumps(config.describe(), sort_keys=True))
        if config.mode == "basic" and self._secret_digest is None:
            logger.warning(BASIC_WARNING)
        if config.mode == "jwt":
            logger.warning(config.jwt_mode_warning)
        if config.mode != "basic" and not config.has_allowlist:
            logger.warning(NO_ALLOWLIST_TEMPLATE.format(mode=MODE_NAMES[config.mode]))
        if config.failure_limit is not None:
            logger.warning(FAILURE_LIMIT_WARNING.format(limit=config.failure_limit))

    def admit(
        self,
        header: str | None,
        *,
        method: str,
        path: str,
        environ: Mapping[str, Any] | None = None,
        remote_addr: str | None = None,
        view_args: Mapping[str, Any] | None = None,
        policy: ViewPolicy = APP_POLICY,
        trace: Trace | None = None,
    ) -> Identity:
        """The whole admission chain for one request; the caller, or the `BindcarError` to answer.

        In this order, each step a line:

        1. the method (405) and, under path authorization, the path (400): `check_target`;
        2. the failure limit (429), the header, Basic or TokenReview, the app's allowlists and
           pod binding (401): `authenticate`;
        3. the view's own ``policy``: its allowlists and pod binding (401): `authorize`;
        4. RBAC, the view's rules or the app's (403, 503): `check_access`.

        ``path`` is ``PATH_INFO`` as the application receives it; ``environ``, the WSGI environ,
        gives the path as the client wrote it when path authorization needs it
        (`flask_bindcar.target.raw_path`). ``view_args`` are the matched route's
        (None when no route matched: rules that name view arguments then leave the URL to its
        404). ``trace`` collects each step for ``review``.
        """
        where: Where = (remote_addr, method, path)
        rules = policy.rbac or self.config.rbac
        if method not in self.config.allowed_methods or (rules is not None and rules.path):
            self.check_target(method, path, environ, rules, where)
        asks_rbac = rules is not None and (view_args is not None or not rules.view_args)
        started = time.monotonic() if asks_rbac else 0.0  # a SubjectAccessReview gets what the TokenReview left
        identity = self.authenticate(header, where=where, trace=trace)
        if policy.narrows:
            self.authorize(identity, policy, where, trace)
        if asks_rbac:
            end = started + self.config.review_timeout
            self.check_access(identity, rules, method, path or "/", view_args, where, trace, end)  # type: ignore[arg-type]
        return identity

    def check_target(
        self,
        method: str,
        path: str,
        environ: Mapping[str, Any] | None,
        rules: RBAC | None,
        where: Where = (None, None, None),
    ) -> None:
        """`MethodRefused` for a method outside ``BIND_ALLOWED_METHODS``; under path authorization,
        `BadRequestPath` for a path it cannot judge safely (`flask_bindcar.target`)."""
        try:
            if method not in self.config.allowed_methods:
                raise MethodRefused(method, self.config.allowed_methods)
            if rules is not None and rules.path:
                why = path_problem(path, raw_path(environ) if environ is not None else None)
                if why is not None:
                    raise BadRequestPath(why)
        except BindcarError as e:
            self.recorder.refused(e, where)
            raise

    def authenticate(
        self,
        header: str | None,
        *,
        remote_addr: str | None = None,
        method: str | None = None,
        path: str | None = None,
        where: Where | None = None,
        trace: Trace | None = None,
    ) -> Identity:
        """The caller behind ``header`` (the ``Authorization`` value, None when absent): the
        failure limit, the header, Basic or TokenReview, the app's allowlists and pod binding.

        Raises `AuthError` with the seed's message, or `RateLimited` for a client past the failure
        limit, after logging the decision, never the token.
        """
        if where is None:
            where = (remote_addr, method, path)
        found: list[Any] = [None, None, None]  # the review cache's answer, latency and cluster, once asked
        try:
            if self.limiter is not None:
                if trace is not None:
                    trace.enter("failure limit")
                retry_after = self.limiter.retry_after(where[0])
                if retry_after is not None:
                    raise RateLimited(retry_after)
                if trace is not None:
                    trace.found()
            identity = self._chain(header, found, trace)
        except AuthError as e:
            if self.limiter is not None and e.credential_failure:
                self.limiter.record_failure(where[0])
            if found[0] is not None:
                self.recorder.cache(found[0])
            cache = found[0] or e.cache
            latency = found[1] or e.review_latency_ms
            self.recorder.refused(e, where, cache=cache, latency=latency, cluster=found[2] or e.cluster)  # type: ignore[arg-type]
            if self._generic:
                raise e.generic() from None
            raise
        except RateLimited as e:
            self.recorder.refused(e, where)
            raise
        self.recorder.allowed(where, identity, cache=found[0], latency=found[1])
        return identity

    def authorize(
        self,
        identity: Identity,
        policy: ViewPolicy = APP_POLICY,
        where: Where = (None, None, None),
        trace: Trace | None = None,
    ) -> None:
        """Apply a view's stricter policy (its allowlists, its pod binding) to an authenticated caller."""
        if trace is not None:
            trace.enter("view policy")
        try:
            authorize(identity, policy.namespaces, policy.service_accounts, policy.require_pod)
        except AuthError as e:
            self.recorder.refused(e, where, identity)
            if self._generic:
                raise e.generic() from None
            raise
        if trace is not None:
            trace.found(username=identity.username)

    def check_access(
        self,
        identity: Identity,
        rbac: RBAC,
        method: str,
        path: str,
        view_args: Mapping[str, Any] | None = None,
        where: Where = (None, None, None),
        trace: Trace | None = None,
        deadline: float | None = None,
    ) -> None:
        """Ask RBAC whether ``identity`` may make this request, as ``rbac`` describes it; a review
        ends by ``deadline`` (`time.monotonic`; the request's, when `admit` asks).

        Raises `AccessDenied` (403) when it may not, `AuthzUnavailable` (503) when no answer can
        be had (or ``rbac`` names a view argument the route lacks); either way after logging the
        decision and the review's reason, which never reaches the body.
        """
        if trace is not None:
            trace.enter("rbac")
        attributes: Attributes | None = None
        try:
            authorizer = self.authorizer if identity.cluster is None else self._authorizer(identity.cluster)
            try:
                attributes = rbac.attributes(method, path, view_args)
            except KeyError as e:
                if authorizer is None:  # Basic mode: no rule could be asked about, whatever the route
                    raise AuthzUnavailable(NOT_CONFIGURED, reason="not_configured") from None
                logger.error("RBAC%r names the view argument %s, which this route does not have", rbac.summary(), e)
                raise AuthzUnavailable(f"the route has no view argument {e}", reason="bad_template") from None
            if authorizer is None:
                raise AuthzUnavailable(NOT_CONFIGURED, reason="not_configured")
            decision, cache, latency = authorizer.check(identity, attributes, deadline)
        except (AccessDenied, AuthzUnavailable) as e:
            self.recorder.authorization(
                where,
                identity,
                attributes,
                error=e,
                review_reason=e.review_reason if isinstance(e, AccessDenied) else None,
                cache=e.cache,  # type: ignore[arg-type]
                latency=e.review_latency_ms,
            )
            if self._generic:
                raise e.generic() from None
            raise
        self.recorder.authorization(
            where, identity, attributes, review_reason=decision.reason, cache=cache, latency=latency
        )
        if trace is not None:
            trace.found(identity=identity, attributes=attributes, decision=decision, latency=latency)

    def _authorizer(self, cluster: str) -> Authorizer | None:
        """The SubjectAccessReview `Authorizer` of a routed caller's cluster: each cluster's RBAC
        answers for its own callers only."""
        assert self.clusters is not None
        return self.clusters.authorizer(cluster)

    def _chain(self, header: str | None, found: list[Any], trace: Trace | None) -> Identity:
        """The header, then Basic or TokenReview, then the app's allowlists and pod binding.

        ``found`` receives the review cache's answer and latency as soon as they are known, for
        the decision's record.
        """
        if trace is not None:
            trace.enter("header")
        token = bearer_token(header, check_format=self._check_header_format or trace is not None)
        if trace is not None:
            trace.found(length=len(token))
        if self.cache is None:
            if trace is not None:
                trace.enter("basic mode")
            identity = BASIC_IDENTITY
            if self._secret_digest is not None:
                if not hmac.compare_digest(_digest(token), self._secret_digest):
                    raise AuthError(INVALID_API_TOKEN, reason="invalid_api_token")
                identity = SHARED_SECRET_IDENTITY
            if trace is not None:
                trace.found(method=identity.method)
            return identity
        audiences = self.config.audiences
        started = time.perf_counter()
        review = self._review_once if trace is None else lambda t, a: self._review(t, a, trace)
        outcome, cache = self.cache.get_or_review(token, audiences, review)
        latency = None if cache == "hit" else round((time.perf_counter() - started) * 1000, 3)
        found[0], found[1], found[2] = cache, latency, outcome.cluster
        if cache == "stale":
            logger.warning("accepting a stale TokenReview: the API server is unavailable")
        if trace is None:
            admitted: Identity | None = outcome.memo.get(self)
            if admitted is not None:  # this outcome passed this app's allowlists and pod binding before
                return admitted
            identity = identity_from_review(outcome, audiences)
            authorize(
                identity, self.config.allowed_namespaces, self.config.allowed_service_accounts, self.config.require_pod
            )
            outcome.memo[self] = identity
            return identity
        step, facts = trace.steps[-1]
        if facts is None and step in ("cluster", "local pre-check", "local verification"):
            identity_from_review(outcome, audiences)  # refused locally: the TokenReview's own refusal
        if step != "local verification":
            if step != "token review":
                trace.enter("token review")
            trace.found(outcome=outcome, latency=latency)
        trace.enter("identity")
        identity = identity_from_review(outcome, audiences)
        trace.found(identity=identity)
        trace.enter("namespace allowlist")
        authorize(identity, self.config.allowed_namespaces, None)
        trace.found(allowlist=self.config.allowed_namespaces, value=identity.namespace)
        trace.enter("serviceaccount allowlist")
        authorize(identity, None, self.config.allowed_service_accounts)
        trace.found(allowlist=self.config.allowed_service_accounts, value=identity.username)
        if self.config.require_pod:
            trace.enter("pod binding")
            authorize(identity, None, None, require_pod=True)
            trace.found(identity=identity)
        return identity

    def _review(self, token: str, audiences: Sequence[str], trace: Trace | None = None) -> ReviewOutcome:
        """What the review cache asks for a token it does not hold: the local pre-check, then one
        TokenReview call for a well-formed token, if a slot is free (the bulkhead).

        A token the issuer's keys prove invalid gets the TokenReview's own answer without a call
        (`flask_bindcar.precheck`); the cache keeps it as it keeps the API server's refusals. In
        jwt mode the keys answer instead of the TokenReview (`flask_bindcar.jwtmode`).
        """
        check_token_format(token)
        deadline = request_deadline(self.config.review_timeout)  # the keys and the TokenReview: one timeout
        try:
            return self._ask(token, audiences, trace)
        finally:
            end_request_deadline(deadline)

    def _ask(self, token: str, audiences: Sequence[str], trace: Trace | None) -> ReviewOutcome:
        """Route the token to its cluster (`flask_bindcar.clusters`) and ask it: jwt mode's keys, or
        the pre-check and the TokenReview. A token whose issuer is on no configured cluster is refused
        as an unknown token, with no call to anyone."""
        assert self.clusters is not None
        cluster: TrustedCluster | None = self.clusters.route(token)
        if self.clusters.default is None and trace is not None:
            trace.enter("cluster")
        if cluster is None:
            return ReviewOutcome(authenticated=False, reason=UNKNOWN_ISSUER)
        if cluster.name is not None and trace is not None:
            trace.found(cluster=cluster.name)
        return cluster.ask(token, audiences, trace)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
