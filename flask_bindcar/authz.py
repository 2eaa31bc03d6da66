"""Authorization by Kubernetes RBAC: a SubjectAccessReview of the caller, cached, one call at a time.

Modelled on kube-rbac-proxy and kube-apiserver's delegated authorizer: the attributes come from
the request (`flask_bindcar.rbac`), the question goes to the API server as a SubjectAccessReview
with the caller's username, uid, groups and extra exactly as the TokenReview returned them, and
the answer is cached, allowed and denied answers each for their own TTL. A review that cannot be
made (API down, slow, failing, the bulkhead full) is `AuthzUnavailable`, a 503 that is never
cached: it says nothing of the caller.

The call goes through `ApiServerClient.access_review`, so it has the TokenReview's client, its
whole-call deadline, its answer cap, and its share of the same bulkhead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from flask_bindcar.apiserver import ApiServerClient
from flask_bindcar.bulkhead import Bulkhead
from flask_bindcar.config import AuthConfig
from flask_bindcar.errors import (
    API_BAD_RESPONSE,
    API_OVERLOADED,
    FORBIDDEN,
    OVERLOADED,
    OVERLOADED_CALLER,
    AccessDenied,
    AuthError,
    AuthzUnavailable,
)
from flask_bindcar.flight import CacheResult, Kept, SingleFlightCache
from flask_bindcar.identity import Identity
from flask_bindcar.metrics import Metrics
from flask_bindcar.rbac import Attributes
from flask_bindcar.scrub import MAX_SERVER_TEXT, scrub
from flask_bindcar.transport import end_request_deadline, request_deadline_at

SAR_API_VERSION = "authorization.k8s.io/v1"
NOT_CONFIGURED = "it needs BIND_AUTH_MODE=tokenreview or jwt (Basic mode does not know who the caller is)"


@dataclass(frozen=True)
class Decision:
    """What the API server said: ``status.allowed``, and ``status.reason`` for the log only."""

    allowed: bool
    reason: str | None = None


def _unavailable(why: str, reason: str) -> AuthzUnavailable:
    return AuthzUnavailable(why[: 2 * MAX_SERVER_TEXT], reason=reason)


def parse_access_review(data: bytes) -> Decision:
    """The decision of a SubjectAccessReview answer; `AuthzUnavailable` when it is not one.

    ``allowed`` must be JSON ``true`` and ``denied`` not ``true``; anything else denies.
    ``status.evaluationError`` joins the reason: the authorizer had trouble, and said no.
    """
    try:
        doc = json.loads(data)
    except RecursionError:
        raise _unavailable("response is nested too deeply", API_BAD_RESPONSE) from None
    except ValueError:
        raise _unavailable("response is not JSON", API_BAD_RESPONSE) from None
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, dict):
        raise _unavailable("response is not a SubjectAccessReview with a status", API_BAD_RESPONSE)
    texts = [status.get("reason"), status.get("evaluationError")]
    reason = "; ".join(scrub(t, "") for t in texts if isinstance(t, str) and t) or None
    return Decision(allowed=status.get("allowed") is True and status.get("denied") is not True, reason=reason)


def subject(identity: Identity) -> dict[str, Any]:
    """The caller as a SubjectAccessReview names it: exactly what the TokenReview returned."""
    spec: dict[str, Any] = {"user": identity.username}
    if identity.uid:
        spec["uid"] = identity.uid
    if identity.groups:
        spec["groups"] = list(identity.groups)
    if identity.extra:
        spec["extra"] = {k: list(v) for k, v in identity.extra.items()}
    return spec


class DecisionCache(SingleFlightCache[Callable[[], Decision], Decision, AuthzUnavailable]):
    """Bounded LRU of decisions by (caller, attributes), allowed and denied for their own TTLs,
    with single flight: concurrent identical questions share one review. Outages are not stored.

    A request waiting on another's review waits ``wait_timeout`` (the review's bound) plus
    `FOLLOWER_GRACE`, as the TokenReview cache's waiters do (both are a
    `~flask_bindcar.flight.SingleFlightCache`): every request that shared a review gets its answer
    or its error, even its timeout.
    """

    def __init__(self, *, allowed_ttl: float, denied_ttl: float, max_size: int, wait_timeout: float):
        super().__init__(
            max_size=max_size,
            wait_timeout=wait_timeout,
            errors=AuthzUnavailable,
            failed=_unavailable,
            what="a SubjectAccessReview",
        )
        self.allowed_ttl = allowed_ttl
        self.denied_ttl = denied_ttl

    get_or_review = SingleFlightCache.get_or_lead
    """``get_or_review(key, review)``: the decision kept for ``key``, or ``review()``'s, shared."""

    def _lead(
        self, key: Hashable, question: Callable[[], Decision], kept: Kept[Decision] | None
    ) -> tuple[Decision, CacheResult]:
        """One SubjectAccessReview, its answer kept for its own TTL (allowed or denied; 0 keeps nothing)."""
        decision = question()
        ttl = self.allowed_ttl if decision.allowed else self.denied_ttl
        if ttl > 0:
            self.keep(key, decision, time.monotonic() + ttl)
        return decision, "miss"


class Authorizer:
    """Asks whether an authenticated caller may do what a request needs; raises when not.

    ``bulkhead`` is the one shared with TokenReview: one bound on the calls this process has
    waiting on the API server, of which one caller holds at most its share.
    """

    def __init__(
        self,
        config: AuthConfig,
        reviewer: ApiServerClient,
        bulkhead: Bulkhead,
        metrics: Metrics | None,
    ):
        self.config = config
        self.reviewer = reviewer
        self.bulkhead = bulkhead
        self.metrics = metrics
        self.cache = DecisionCache(
            allowed_ttl=config.authz_cache_allowed_ttl,
            denied_ttl=config.authz_cache_denied_ttl,
            max_size=config.authz_cache_size,
            wait_timeout=config.review_timeout,
        )

    def check(
        self, identity: Identity, attributes: Attributes, deadline: float | None = None
    ) -> tuple[Decision, CacheResult, float | None]:
        """The decision, how the cache answered and the review's latency in ms (None on a hit).
        A review ends by ``deadline`` (`time.monotonic`) when one is given: the request's own.

        Raises `AccessDenied` (with the decision's reason kept apart from the body) or
        `AuthzUnavailable`.
        """
        # The cluster too: each cluster has its own Authorizer, and the key says so as well, so no
        # decision of one cluster's RBAC can ever answer for a caller of another.
        key = (identity.cluster, identity.username, identity.uid, identity.groups, _extra_key(identity), attributes)
        known = self.cache.fresh(key)  # the warm path: no clock, no function made
        cache: CacheResult = "hit"
        latency: float | None = None
        if known is not None:
            decision = known
        else:
            started = time.perf_counter()
            try:
                decision, cache = self.cache.get_or_review(key, lambda: self._review(identity, attributes, deadline))
            except AuthzUnavailable as e:
                e.review_latency_ms = round((time.perf_counter() - started) * 1000, 3)
                raise
            latency = None if cache == "hit" else round((time.perf_counter() - started) * 1000, 3)
        if not decision.allowed:
            denied = AccessDenied(
                FORBIDDEN.format(username=identity.username, verb=attributes.verb, what=attributes.describe())
            )
            denied.review_reason, denied.cache, denied.review_latency_ms = decision.reason, cache, latency
            raise denied
        return decision, cache, latency

    def _review(self, identity: Identity, attributes: Attributes, deadline: float | None = None) -> Decision:
        """One SubjectAccessReview, if a slot of the bulkhead is free, ended by ``deadline``."""
        token = request_deadline_at(deadline) if deadline is not None else None
        try:
            return self._ask(identity, attributes)
        finally:
            end_request_deadline(token)

    def _ask(self, identity: Identity, attributes: Attributes) -> Decision:
        caller = identity.username
        if not self.bulkhead.acquire(caller):
            held = self.bulkhead.held(caller)
            why = (
                OVERLOADED_CALLER.format(held=held)
                if held >= self.bulkhead.per_key
                else OVERLOADED.format(slots=self.config.review_max_inflight)
            )
            raise _unavailable(why, API_OVERLOADED)
        started = time.perf_counter()
        try:
            body = {
                "apiVersion": SAR_API_VERSION,
                "kind": "SubjectAccessReview",
                "spec": {**subject(identity), **attributes.spec()},
            }
            try:
                data = self.reviewer.access_review(body, _unavailable)
            except AuthError as e:  # the client could not be built
                raise _unavailable(e.message.removeprefix("Token validation failed: "), e.reason) from None
            return parse_access_review(data)
        finally:
            self.bulkhead.release(caller)
            if self.metrics is not None:
                self.metrics.access_review_duration.observe(time.perf_counter() - started)


def _extra_key(identity: Identity) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``extra`` as part of a cache key, in the order the TokenReview gave it (no sort: one identity
    always gives the same order, and another order only costs a cache miss)."""
    return tuple(identity.extra.items()) if identity.extra else ()
