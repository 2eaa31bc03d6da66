"""Errors, and the seed's messages in one place.

Every answer flask-bindcar gives instead of the application's is a `BindcarError`: a werkzeug
`~werkzeug.exceptions.HTTPException` with a JSON body ``{"error": "<message>"}`` and a short
``reason`` label for logs and metrics. Flask renders it, ``@app.errorhandler(BindcarError)`` (or
``401``, ``403``...) overrides it, and, being itself a WSGI application, the middleware answers
with it directly. Each subclass is also its werkzeug class (`AuthError` an
`~werkzeug.exceptions.Unauthorized`, `RateLimited` a ``TooManyRequests``...), which writes the
headers it already knows (``Retry-After``, ``Allow``); ``WWW-Authenticate`` we write ourselves,
quoted as RFC 6750 shows it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    HTTPException,
    MethodNotAllowed,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

REALM = "bindcar"

# The seed's messages (``Error Messages`` table and ``Testing`` examples).
MISSING_HEADER = "Missing Authorization header"
INVALID_FORMAT = "Invalid Authorization header format. Expected: Bearer <token>"
EMPTY_TOKEN = "Empty token"
INVALID_API_TOKEN = "Invalid API token"
VALIDATION_FAILED = "Token validation failed: {reason}"
CLIENT_FAILED = "Failed to create Kubernetes client: {why}"
API_CALL_FAILED = "TokenReview API call failed: {why}"
NOT_AUTHENTICATED = "token not authenticated"
AUDIENCE_INVALID = "Token audience is not valid for bindcar"
NO_USER_INFO = "No user information in TokenReview response"
NAMESPACE_DENIED = "ServiceAccount from unauthorized namespace: {namespace}"
NOT_SERVICE_ACCOUNT = "Not a ServiceAccount: {username}"
SERVICE_ACCOUNT_DENIED = "ServiceAccount not authorized: {username}"
NOT_POD_BOUND = "token is not bound to a pod"
LIFETIME_CAPPED = "token issued more than {cap}s ago (the jwt mode's lifetime cap)"
"""jwt mode, past ``iat + BIND_JWT_MAX_TOKEN_LIFETIME``: revocation is what it cannot see, so no token
lives longer than kube's default projected-token lifetime, whatever its ``exp``."""
NO_ISSUED_AT = "token has no iat claim (the jwt mode's lifetime cap needs one)"
LIFETIME_CAP = "lifetime_cap"
"""The reason label of both refusals of jwt mode's lifetime cap."""
TOO_MANY_FAILURES = "Too many failed authentication attempts"
GENERIC_MESSAGE = "Unauthorized"
"""The one body of every 401 with ``BIND_AUTH_ERROR_DETAIL=generic``, as bindcar's releases answer."""
FORBIDDEN = "Forbidden: {username} cannot {verb} {what}"
GENERIC_FORBIDDEN = "Forbidden"
AUTHZ_UNAVAILABLE = "Authorization unavailable: SubjectAccessReview API call failed: {why}"
GENERIC_AUTHZ_UNAVAILABLE = "Authorization unavailable"
BAD_PATH = "Invalid request path: {why}"
BAD_PATH_DOT = "dot segments are not allowed"
BAD_PATH_EMPTY = "empty segments are not allowed"
BAD_PATH_ENCODED = "encoded slashes and backslashes are not allowed"
BAD_PATH_BACKSLASH = "backslashes are not allowed"
BAD_PATH_DOUBLE = "percent-encoded characters are not allowed after decoding"
METHOD_NOT_ALLOWED = "Method not allowed: {method}"
AUTHZ_RETRY_AFTER = 1
"""Seconds a client is told to wait after a 503: an outage of the authorizer says nothing of the caller."""

# Reasons (short labels for logs and metrics) of failures to get an answer from the API server.
# Those in TRANSIENT_REASONS are outages, during which a recent review may be reused when
# BIND_TOKEN_CACHE_STALE_TTL allows it.
API_UNREACHABLE = "api_unreachable"
API_SERVER_ERROR = "api_server_error"
API_REJECTED = "api_rejected"
API_BAD_RESPONSE = "api_bad_response"
API_OVERLOADED = "api_overloaded"
TRANSIENT_REASONS = frozenset({API_UNREACHABLE, API_SERVER_ERROR})
OVERLOADED = "overloaded: every review slot is busy ({slots} in flight)"
"""Why a review was not sent: this service's bulkhead was full. Says nothing of the caller's token."""
OVERLOADED_CALLER = "overloaded: this caller's share of the review slots is in use ({held} in flight)"
OVERLOADED_UNVERIFIED = (
    "overloaded: the review slots for tokens the issuer's keys cannot vouch for are in use ({held} in flight)"
)
"""Why a SubjectAccessReview was not sent: the caller holds its whole share of the slots."""

# Failures caused by the client's own credential: the only ones BIND_AUTH_FAILURE_LIMIT counts.
# Anything else (the API server down, slow or answering nonsense, the bulkhead full, the client
# not buildable) is this service's failure, and must not lock out a client holding a valid token.
CREDENTIAL_REASONS = frozenset(
    {
        "missing_header",
        "invalid_format",
        "empty_token",
        "invalid_api_token",
        "not_authenticated",
        "audience",
        "not_service_account",
        "namespace",
        "service_account",
        "not_pod_bound",
        LIFETIME_CAP,
    }
)

Challenge = Literal["none", "invalid_request", "invalid_token"]


class ConfigError(ValueError):
    """A configuration value that cannot work, raised at startup; the message names the variable."""


class BindcarError(HTTPException):
    """The base of every answer flask-bindcar gives instead of the application's.

    ``message`` is the body's ``error``, ``reason`` a short, stable label for logs and metrics.
    Catch it with ``@app.errorhandler(BindcarError)`` to render all of them your own way.
    """

    message: str
    reason: str

    def own_headers(self) -> list[tuple[str, str]]:
        """Headers of this kind of answer that werkzeug does not write itself."""
        return []

    def get_body(self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None) -> str:
        return json.dumps({"error": self.message})

    def get_headers(
        self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        werkzeugs = [h for h in super().get_headers(environ, scope) if h[0] != "Content-Type"]
        return [("Content-Type", "application/json"), *werkzeugs, *self.own_headers()]


class AuthError(BindcarError, Unauthorized):
    """A request that failed authentication: 401 with the seed's message as a JSON body.

    ``challenge`` selects the RFC 6750 ``error`` attribute of ``WWW-Authenticate``: ``none`` when
    no credentials came, ``invalid_request`` for a malformed header, ``invalid_token`` otherwise.
    ``reason`` is a short, stable label for logs and metrics.
    """

    cache: str | None = None
    """For the audit log: the review cache's answer when the failure came after a lookup."""
    review_latency_ms: float | None = None
    cluster: str | None = None
    """For the audit log and metrics: the trusted cluster the token was routed to, when it was."""

    def __init__(self, message: str, *, challenge: Challenge = "invalid_token", reason: str = "invalid_token"):
        super().__init__(description=message)
        self.message = message
        self.challenge = challenge
        self.reason = reason

    @classmethod
    def validation_failed(cls, reason_text: str, *, reason: str) -> AuthError:
        return cls(VALIDATION_FAILED.format(reason=reason_text), reason=reason)

    @classmethod
    def api_call_failed(cls, why: str, *, reason: str) -> AuthError:
        """``Token validation failed: TokenReview API call failed: <why>``."""
        return cls.validation_failed(API_CALL_FAILED.format(why=why), reason=reason)

    @property
    def credential_failure(self) -> bool:
        """True when the client's own credential failed; only these count toward the failure limit."""
        return self.reason in CREDENTIAL_REASONS

    def generic(self) -> AuthError:
        """The same failure answered as ``{"error": "Unauthorized"}`` (``BIND_AUTH_ERROR_DETAIL=generic``).

        Status, ``WWW-Authenticate`` challenge and ``reason`` stay; the message, which can name
        namespaces, ServiceAccounts or the API server's words, does not.
        """
        error = AuthError(GENERIC_MESSAGE, challenge=self.challenge, reason=self.reason)
        error.cache, error.review_latency_ms, error.cluster = self.cache, self.review_latency_ms, self.cluster
        return error

    @property
    def transient(self) -> bool:
        """True when the API server could not be reached or failed, rather than the token."""
        return self.reason in TRANSIENT_REASONS

    @property
    def www_authenticate_value(self) -> str:
        value = f'Bearer realm="{REALM}"'
        if self.challenge != "none":
            value += f', error="{self.challenge}"'
        return value

    def own_headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", self.www_authenticate_value)]


class RateLimited(BindcarError, TooManyRequests):
    """429 for a client past ``BIND_AUTH_FAILURE_LIMIT``, with ``Retry-After`` and a JSON body."""

    def __init__(self, retry_after: int):
        super().__init__(description=TOO_MANY_FAILURES, retry_after=retry_after)
        self.message = TOO_MANY_FAILURES
        self.reason = "rate_limited"


class AccessDenied(BindcarError, Forbidden):
    """403 for an authenticated caller that RBAC does not allow: ``Forbidden: <user> cannot <verb> <what>``.

    The SubjectAccessReview's ``status.reason`` is kept in `review_reason` for the log and the
    audit record, never in the body.
    """

    review_reason: str | None = None
    cache: str | None = None
    review_latency_ms: float | None = None

    def __init__(self, message: str, *, reason: str = "rbac_denied"):
        super().__init__(description=message)
        self.message = message
        self.reason = reason

    def generic(self) -> AccessDenied:
        """The same denial as ``{"error": "Forbidden"}`` (``BIND_AUTH_ERROR_DETAIL=generic``)."""
        error = AccessDenied(GENERIC_FORBIDDEN, reason=self.reason)
        error.review_reason, error.cache = self.review_reason, self.cache
        error.review_latency_ms = self.review_latency_ms
        return error

    def own_headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", f'Bearer realm="{REALM}", error="insufficient_scope"')]


class AuthzUnavailable(BindcarError, ServiceUnavailable):
    """503 when no SubjectAccessReview answer can be had: not a verdict on the caller, so ``Retry-After``."""

    cache: str | None = None
    review_latency_ms: float | None = None

    def __init__(self, why: str, *, reason: str):
        message = AUTHZ_UNAVAILABLE.format(why=why)
        super().__init__(description=message, retry_after=AUTHZ_RETRY_AFTER)
        self.message = message
        self.why = why
        self.reason = reason

    def generic(self) -> AuthzUnavailable:
        """The same outage as ``{"error": "Authorization unavailable"}`` (``BIND_AUTH_ERROR_DETAIL=generic``)."""
        error = AuthzUnavailable(self.why, reason=self.reason)
        error.message = GENERIC_AUTHZ_UNAVAILABLE
        return error


class BadRequestPath(BindcarError, BadRequest):
    """400 for a path that path authorization cannot judge safely: one a normaliser would rewrite.

    Under ``RBAC(path=True)`` the path asked about must be exactly the path the application
    serves; dot segments, empty segments and encoded slashes would let the two differ.
    """

    def __init__(self, why: str):
        message = BAD_PATH.format(why=why)
        super().__init__(description=message)
        self.message = message
        self.reason = "bad_path"


class MethodRefused(BindcarError, MethodNotAllowed):
    """405 for a method outside ``BIND_ALLOWED_METHODS``, with ``Allow`` naming the ones that are in it.

    Refused before any review: an unknown method would otherwise choose its own RBAC verb.
    """

    def __init__(self, method: str, allowed: Sequence[str]):
        message = METHOD_NOT_ALLOWED.format(method=method)
        super().__init__(valid_methods=list(allowed), description=message)
        self.message = message
        self.reason = "method_not_allowed"
