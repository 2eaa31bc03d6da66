"""Errors, and the seed's messages in one place.

Every authentication failure is an `AuthError`: HTTP 401, a JSON body ``{"error": "<message>"}``
and a ``WWW-Authenticate`` header as RFC 6750 section 3 asks. It subclasses werkzeug's
`~werkzeug.exceptions.Unauthorized`, so Flask renders it, ``@app.errorhandler(401)`` overrides
it, and, being itself a WSGI application, the middleware answers with it directly.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

from werkzeug.exceptions import Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized

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
TOO_MANY_FAILURES = "Too many failed authentication attempts"
GENERIC_MESSAGE = "Unauthorized"
"""The one body of every 401 with ``BIND_AUTH_ERROR_DETAIL=generic``, as bindcar's releases answer."""
FORBIDDEN = "Forbidden: {username} cannot {verb} {what}"
GENERIC_FORBIDDEN = "Forbidden"
AUTHZ_UNAVAILABLE = "Authorization unavailable: SubjectAccessReview API call failed: {why}"
GENERIC_AUTHZ_UNAVAILABLE = "Authorization unavailable"
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
    }
)

Challenge = Literal["none", "invalid_request", "invalid_token"]


class ConfigError(ValueError):
    """A configuration value that cannot work, raised at startup; the message names the variable."""


class _JsonError:
    """Answers an HTTP error as ``{"error": message}``, with the headers of its kind (`own_headers`)."""

    message: str

    def own_headers(self) -> list[tuple[str, str]]:
        """The headers of this kind of answer besides ``Content-Type``; each class gives its own."""
        return []

    def get_body(self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None) -> str:
        return json.dumps({"error": self.message})

    def get_headers(
        self, environ: WSGIEnvironment | None = None, scope: dict[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json"), *self.own_headers()]


class AuthError(_JsonError, Unauthorized):
    """A request that failed authentication: 401 with the seed's message as a JSON body.

    ``challenge`` selects the RFC 6750 ``error`` attribute of ``WWW-Authenticate``: ``none`` when
    no credentials came, ``invalid_request`` for a malformed header, ``invalid_token`` otherwise.
    ``reason`` is a short, stable label for logs and metrics.
    """

    cache: str | None = None
    """For the audit log: the review cache's answer when the failure came after a lookup."""
    review_latency_ms: float | None = None

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
        error.cache, error.review_latency_ms = self.cache, self.review_latency_ms
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


class RateLimited(_JsonError, TooManyRequests):
    """429 for a client past ``BIND_AUTH_FAILURE_LIMIT``, with ``Retry-After`` and a JSON body."""

    def __init__(self, retry_after: int):
        super().__init__(description=TOO_MANY_FAILURES, retry_after=retry_after)
        self.message = TOO_MANY_FAILURES
        self.reason = "rate_limited"
        self.seconds = retry_after

    def own_headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.seconds))]


class AccessDenied(_JsonError, Forbidden):
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


class AuthzUnavailable(_JsonError, ServiceUnavailable):
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

    def own_headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(AUTHZ_RETRY_AFTER))]


BindcarError = (AuthError, RateLimited, AccessDenied, AuthzUnavailable)
"""What the adapters answer a request with instead of passing it on."""
