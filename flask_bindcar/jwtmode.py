"""jwt mode (``BIND_AUTH_MODE=jwt``): the issuer's published keys answer for the TokenReview.

`LocalReview.review` is what the review cache asks on a miss in jwt mode, instead of a TokenReview
call: the token is verified as kube-apiserver's ServiceAccount authenticator would verify it
(`flask_bindcar.jwtcheck.verify`, with the keys `flask_bindcar.precheck.PreCheck` sets up, failing
closed), and the answer is the `ReviewOutcome` the TokenReview would have given: accepted with the
same ``status.user``, or refused with the same ``status.error``. The rest of the admission chain
(the cache, the allowlists, the pod binding, the view's policy, RBAC) is the same as in TokenReview
mode. What only the API server can judge (another issuer, a legacy Secret token, a token of a shape
it alone reads) is refused as the API server refuses a token no authenticator knows.

What it cannot see: whether the ServiceAccount, its pod, secret or node still exist, so a deleted
one is noticed only when the token expires. A lifetime cap (``BIND_JWT_MAX_TOKEN_LIFETIME``) bounds
that: a token is accepted only until ``min(exp, iat + cap)``, kube-apiserver extending projected
tokens to a year as it does (docs/local-verification.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from flask_bindcar.apiserver import ApiServerClient
from flask_bindcar.config import AuthConfig
from flask_bindcar.errors import LIFETIME_CAP, LIFETIME_CAPPED, NO_ISSUED_AT, AuthError
from flask_bindcar.jwks import KeysUnavailable
from flask_bindcar.jwtcheck import Claims, LocalRejection, accepted_outcome, verify
from flask_bindcar.precheck import KEYS_UNAVAILABLE, PreCheck
from flask_bindcar.tokenreview import ReviewOutcome


class LocalReview:
    """jwt mode's stand-in for the TokenReview call, for one `Authenticator`; keys per process."""

    def __init__(self, config: AuthConfig, client: ApiServerClient | None):
        self.config = config
        self.keys = PreCheck(config, client, mode="on")
        """Where the keys come from and the `KeyStore` of this process (``keys.store``)."""
        self.cap = config.jwt_max_token_lifetime

    def review(
        self, token: str, audiences: Sequence[str], *, now: float | None = None
    ) -> tuple[ReviewOutcome, Claims | None]:
        """The outcome a TokenReview would give ``token``, and the verified `Claims` when accepted.

        Raises the TokenReview's API-failure `AuthError` (reason ``keys_unavailable``) when the
        keys cannot be had: no keys, no answer about the token.
        """
        store = self.keys.keys()
        assert store is not None  # mode "on": set up, or the AuthError raised
        fetches = store.fetches
        now = time.time() if now is None else now
        try:
            claims = verify(token, store, self.keys.issuers, audiences, now=now)
        except LocalRejection as e:
            if e.reason == "no_key" and store.fetches == fetches:
                # Keys fetched before this token came, the refetch interval holding the next fetch
                # back: refused, but not kept, so the token is judged again once a fetch may run.
                return replace(e.outcome(token), expires_at=now), None
            return e.outcome(token), None
        except KeysUnavailable as e:
            raise AuthError.api_call_failed(str(e), reason=KEYS_UNAVAILABLE) from None
        if claims is None:  # as no authenticator knows it: answered ``token not authenticated``
            return ReviewOutcome(authenticated=False), None
        until = claims.expires_at
        if self.cap:
            if claims.issued_at is None:
                return ReviewOutcome(authenticated=False, error=NO_ISSUED_AT, reason=LIFETIME_CAP), None
            capped = claims.issued_at + self.cap
            if now > capped:
                error = LIFETIME_CAPPED.format(cap=self.cap)
                return ReviewOutcome(authenticated=False, error=error, reason=LIFETIME_CAP), None
            until = capped if until is None else min(until, capped)
        return replace(accepted_outcome(claims), method="jwt", expires_at=until), claims
