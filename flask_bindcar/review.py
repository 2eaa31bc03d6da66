"""``review``: what the admission chain does to one token, step by step, as a request would meet it.

The steps are `flask_bindcar.authenticator.Authenticator.admit`'s own, read from its `Trace`:
this module only words them. ``python -m flask_bindcar review`` and ``flask bindcar review`` print
its report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from flask_bindcar.config import AuthConfig
from flask_bindcar.doctor import Check, Report
from flask_bindcar.errors import AccessDenied, AuthError, AuthzUnavailable, BindcarError
from flask_bindcar.identity import Identity
from flask_bindcar.policy import ViewPolicy
from flask_bindcar.rbac import RBAC

REVIEW_VERDICTS = ("the token is accepted", "the token is rejected")
FORBIDDEN_VERDICT = "the token is valid; the request is forbidden by RBAC"
UNAVAILABLE_VERDICT = "the token is valid; the request fails: no RBAC decision could be obtained"
NO_TOKEN_VERDICT = "the request needs no token"
REFUSED_VERDICT = "the request is refused before its token is looked at"


@dataclass(frozen=True)
class Route:
    """The view a request would reach (``flask bindcar review --method --path``) and its own policy."""

    method: str
    path: str
    endpoint: str
    exempt: bool = False
    """``@auth_exempt``, an exempt path, or not protected at all (``BINDCAR_PROTECT_ALL`` off, no
    ``@auth_required``): the request needs no token."""
    namespaces: frozenset[str] | None = None
    service_accounts: frozenset[str] | None = None
    rbac: RBAC | None = None
    """What the view needs by RBAC (its own, or the app-wide ``BINDCAR_AUTHZ``), if anything."""
    view_args: Mapping[str, Any] = field(default_factory=dict)
    require_pod: bool = False
    """``@auth_required(require_pod=True)``: only a token bound to a pod."""

    def describe(self) -> str:
        """What the request meets beyond the app's own checks: the view's allowlists, then its RBAC."""
        where = f"{self.method} {self.path} is view {self.endpoint}" if self.endpoint else f"{self.method} {self.path}"
        if self.exempt:
            return f"{where}: exempt from authentication"
        policy = [
            f"{name}={sorted(value)}"
            for name, value in (("namespaces", self.namespaces), ("service_accounts", self.service_accounts))
            if value is not None
        ]
        if self.require_pod:
            policy.append("require_pod=True")
        needs = [f"@auth_required({', '.join(policy)})"] if policy else []
        if self.rbac is not None:
            needs.append(f"RBAC {json.dumps(self.rbac.summary())}")
        return f"{where}: {', then '.join(needs)}" if needs else f"{where}: the app-wide policy"


def authorization_header(text: str) -> str:
    """The header value ``review`` was given: a bare token, ``Bearer <token>``, or the whole header line."""
    name, colon, value = text.partition(":")
    if colon and name.strip().lower() == "authorization":
        return value.strip()
    return text if any(c.isspace() for c in text) else f"Bearer {text}"


def review(
    config: AuthConfig, token: str, route: Route | None = None
) -> tuple[Report, Identity | None, BindcarError | None]:
    """Run the admission chain on ``token`` step by step, as a request would meet it (no cache).

    ``token`` is a bare token or a whole ``Authorization`` header value. With a ``route``, the
    view's own ``@auth_required`` policy applies after the app's, as it does for a request, and
    then its RBAC (a SubjectAccessReview), if it has any. The steps are `Authenticator.admit`'s
    own, read from its `Trace`: ``review`` has no copy of the chain.
    """
    from flask_bindcar.audit import Recorder
    from flask_bindcar.authenticator import Authenticator, Trace

    checks: list[Check] = []
    if route is not None:
        checks.append(Check("route", "pass", route.describe()))
        if route.exempt:
            checks.append(Check("result", "pass", f"allowed: {route.method} {route.path} needs no token"))
            return Report("flask-bindcar review", checks, (NO_TOKEN_VERDICT, NO_TOKEN_VERDICT)), None, None
    # Every answer fresh from the API server, every message in full, nothing written down.
    fresh = replace(
        config,
        cache_ttl=0.0,
        cache_failure_ttl=0.0,
        cache_stale_ttl=0.0,
        authz_cache_allowed_ttl=0.0,
        authz_cache_denied_ttl=0.0,
        failure_limit=None,
        error_detail="full",
        rbac=route.rbac if route is not None else None,
    )
    auth = Authenticator(fresh, recorder=Recorder(None, quiet=True), announce=False)
    policy = ViewPolicy(
        namespaces=route.namespaces if route is not None else None,
        service_accounts=route.service_accounts if route is not None else None,
        require_pod=route.require_pod if route is not None else False,
    )
    trace = Trace()
    try:
        identity = auth.admit(
            authorization_header(token),
            method=route.method if route is not None else "GET",
            path=route.path if route is not None else "/",
            view_args=route.view_args if route is not None else None,
            policy=policy,
            trace=trace,
        )
    except BindcarError as e:
        checks += [_step_check(step, facts) for step, facts in trace.steps if facts is not None]
        message = e.message
        local = trace.failed_step in ("local pre-check", "local verification")
        if local and isinstance(e, AuthError) and e.credential_failure:  # not the keys' or the client's failure
            message = f"refused locally: {message}"
        checks.append(Check(trace.failed_step or "request", "fail", message))
        checks.append(Check("result", "fail", f"{e.code} {json.dumps({'error': e.message})}"))
        if isinstance(e, AccessDenied | AuthzUnavailable):  # every authentication step passed
            verdict = FORBIDDEN_VERDICT if isinstance(e, AccessDenied) else UNAVAILABLE_VERDICT
            return Report("flask-bindcar review", checks, (REVIEW_VERDICTS[0], verdict)), None, e
        if not isinstance(e, AuthError):
            return Report("flask-bindcar review", checks, (REVIEW_VERDICTS[0], REFUSED_VERDICT)), None, e
        return Report("flask-bindcar review", checks, REVIEW_VERDICTS), None, e
    checks += [_step_check(step, facts) for step, facts in trace.steps if facts is not None]
    checks.append(Check("result", "pass", f"allowed as {identity.username or identity.method}"))
    return Report("flask-bindcar review", checks, REVIEW_VERDICTS), identity, None


def _step_check(step: str, facts: dict[str, Any]) -> Check:
    """The line ``review`` prints for one step the chain passed (`Trace`)."""
    if step == "header":
        return Check(step, "pass", f"a well-formed bearer token of {facts['length']} characters")
    if step == "cluster":
        return Check(step, "pass", f"routed by its issuer to the cluster {facts['cluster']}")
    if step == "basic mode":
        return Check(step, "pass", f"accepted ({facts['method']})")
    if step == "local pre-check":
        verdict, detail = facts["verdict"], facts["detail"]
        if verdict == "verified":
            return Check(step, "pass", f"signature and claims verified (kid {detail.kid}): the TokenReview decides")
        if verdict == "undecided":
            return Check(step, "pass", f"cannot decide: {detail}")
        if verdict == "unavailable":
            return Check(step, "pass", f"keys unavailable, the TokenReview decides: {detail}")
        return Check(step, "pass", f"off: {detail}")
    if step == "local verification":
        claims, until = facts["claims"], facts["until"]
        when = f"accepted until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}" if until else "no expiry"
        return Check(
            step, "pass", f"signature and claims verified (kid {claims.kid}), {when}: no TokenReview (jwt mode)"
        )
    if step == "token review":
        outcome = facts["outcome"]
        return Check(
            step,
            "pass",
            f"answered in {facts['latency'] or 0:.1f} ms: authenticated={outcome.authenticated}, "
            f"audiences={list(outcome.audiences)}, error={outcome.error!r}",
        )
    if step == "identity":
        identity = facts["identity"]
        return Check(step, "pass", f"{identity.username} (audiences {list(identity.audiences)})")
    if step in ("namespace allowlist", "serviceaccount allowlist"):
        return _allowlist_check(step, facts["allowlist"], facts["value"])
    if step == "pod binding":
        identity = facts["identity"]
        return Check(step, "pass", f"bound to pod {identity.namespace}/{identity.pod_name}")
    if step == "view policy":
        return Check(step, "pass", f"{facts['username']} is allowed by the view")
    if step == "rbac":
        identity, attributes, decision = facts["identity"], facts["attributes"], facts["decision"]
        return Check(
            step,
            "pass",
            f"{identity.username} may {attributes.verb} {attributes.describe()}: {decision.reason}, "
            f"{facts['latency'] or 0:.1f} ms",
        )
    return Check(step, "pass", "passed")


def _allowlist_check(name: str, allowlist: frozenset[str] | None, value: str | None) -> Check:
    if allowlist is None:
        return Check(name, "pass", "not set: all allowed")
    return Check(name, "pass", f"{value} is allowed")
