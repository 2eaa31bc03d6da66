"""The validator chain, in one place: header, then Basic or TokenReview, then the allowlists.

The Flask extension and the WSGI middleware only hand a header in and take an `Identity` or an
`AuthError` out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Collection

from flask_bindcar.cache import ReviewCache
from flask_bindcar.config import AuthConfig
from flask_bindcar.credentials import bearer_token
from flask_bindcar.errors import INVALID_API_TOKEN, AuthError
from flask_bindcar.identity import Identity
from flask_bindcar.kube import KubeTokenReviewer
from flask_bindcar.policy import authorize, identity_from_review

logger = logging.getLogger("flask_bindcar")

BASIC_WARNING = (
    "flask-bindcar is in Basic mode without BIND_API_TOKEN: any well-formed bearer token is accepted "
    "and nothing about it is verified. Set BIND_AUTH_MODE=tokenreview, or BIND_API_TOKEN for a shared "
    "secret, unless authentication happens in front of this service."
)


class Authenticator:
    """Authenticates ``Authorization`` header values according to an `AuthConfig`."""

    def __init__(self, config: AuthConfig):
        self.config = config
        self._secret_digest = hashlib.sha256(config.api_token.encode()).digest() if config.api_token else None
        self.reviewer: KubeTokenReviewer | None = None
        self.cache: ReviewCache | None = None
        if config.mode == "tokenreview":
            self.reviewer = KubeTokenReviewer(config)
            self.cache = ReviewCache(
                ttl=config.cache_ttl,
                failure_ttl=config.cache_failure_ttl,
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

        Raises `AuthError` with the seed's message, after logging one line that names the reason
        and the request, never the token.
        """
        try:
            return self._chain(header)
        except AuthError as e:
            self._log_failure(e, remote_addr, method, path)
            raise

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
            self._log_failure(e, remote_addr, method, path)
            raise

    def _chain(self, header: str | None) -> Identity:
        token = bearer_token(header)
        if self.reviewer is None or self.cache is None:
            if self._secret_digest is None:
                return Identity(method="basic")
            if not hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._secret_digest):
                raise AuthError(INVALID_API_TOKEN, reason="invalid_api_token")
            return Identity(method="shared-secret")
        outcome, _ = self.cache.get_or_review(token, self.config.audiences, self.reviewer.review)
        identity = identity_from_review(outcome, self.config.audiences)
        authorize(identity, self.config.allowed_namespaces, self.config.allowed_service_accounts)
        return identity

    @staticmethod
    def _log_failure(e: AuthError, remote_addr: str | None, method: str | None, path: str | None) -> None:
        logger.warning(
            "authentication failed: %s [reason=%s remote_addr=%s method=%s path=%r]",
            e.message,
            e.reason,
            remote_addr,
            method,
            path,
        )
