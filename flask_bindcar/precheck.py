"""The local pre-check of TokenReview mode (``BIND_TOKEN_PRECHECK``): a token the issuer's published
keys prove invalid is refused with the TokenReview's own answer and never sent
(docs/local-verification.md).

`PreCheck.check` answers one of: ``refused`` (a `LocalRejection`), ``verified`` (the `Claims`: the
TokenReview still decides), ``undecided`` (only the API server can say), ``unavailable`` (the keys
could not be had: ``auto`` sends the token on) or ``off``. With ``on``, keys that cannot be had
raise the TokenReview API-failure `AuthError` instead (fail closed). ``auto`` turns the check off
for the process only when the keys are refused or unreadable (a 403, a document that is not one);
when the API server does not answer, that is an outage: it tries again every `RETRY_INTERVAL`.

The keys are a `KeyStore` built lazily in each process (a forked worker builds its own), fetched
through `ApiServerClient.get` (the review's deadline and answer cap) or, for an https
``BIND_JWKS_URL``, with ``requests`` under the same bounds. jwt mode (`flask_bindcar.jwtmode`)
sets its keys up here too, always failing closed, and with ``BIND_TOKEN_ISSUER`` and no
``BIND_JWKS_URL`` finds them through the issuer URL's own discovery document, over https.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from flask_bindcar.apiserver import ApiServerClient
from flask_bindcar.config import AuthConfig, Precheck
from flask_bindcar.errors import TRANSIENT_REASONS, AuthError
from flask_bindcar.jwks import JWKSError, KeyStore, KeysUnavailable, parse_discovery
from flask_bindcar.jwtcheck import LocalRejection, verify
from flask_bindcar.transport import MAX_RESPONSE_BYTES

logger = logging.getLogger("flask_bindcar")

DISCOVERY = "/.well-known/openid-configuration"
JWKS = "/openid/v1/jwks"
MIN_REFETCH_INTERVAL = 5.0
"""Seconds between two fetches of the keys for a ``kid`` they lack (`KeyStore`)."""
RETRY_INTERVAL = 5.0
"""With ``on``, seconds between two attempts to set the keys up after one failed."""
KEYS_UNAVAILABLE = "keys_unavailable"
UNKNOWN_KID = "a kid the kept keys lack (fetched again at most every few seconds)"
"""Why a token is ``undecided`` when it names a ``kid`` the keys lack and no refetch may run yet."""

Verdict = Literal["refused", "verified", "undecided", "unavailable", "off"]


def _unavailable(path: str) -> Any:
    def failed(why: str, reason: str) -> KeysUnavailable:
        error = KeysUnavailable(f"GET {path}: {why} ({reason})")
        error.outage = reason in TRANSIENT_REASONS  # type: ignore[attr-defined]
        return error

    return failed


class PreCheck:
    """The pre-check of one `Authenticator`: its keys, per process.

    ``mode`` overrides ``BIND_TOKEN_PRECHECK``: jwt mode's keys are set up with ``on``.
    """

    def __init__(self, config: AuthConfig, client: ApiServerClient | None, mode: Precheck | None = None):
        """``client`` None: a cluster without an API server, its keys from an https URL only."""
        self.config = config
        self.client = client
        self.mode: Precheck = mode or config.token_precheck
        self._lock = threading.Lock()
        self._pid: int | None = None
        self.store: KeyStore | None = None
        self.issuers: tuple[str, ...] = ()
        self._off: str | None = None
        self._failed: tuple[float, str] | None = None

    def check(self, token: str, audiences: Sequence[str]) -> tuple[Verdict, Any]:
        """What the keys say about ``token`` (see the module's docstring); the second item is the
        `LocalRejection`, the `Claims`, or why (a text)."""
        if self.mode == "off":
            return "off", f"{self.config.sources['token_precheck'][1]}=off"
        if not audiences:
            return "undecided", "no audiences to check"
        store = self.keys()
        if store is None:
            if self._off is not None:
                return "off", self._off
            return "unavailable", self._failed[1] if self._failed is not None else "no keys yet"
        fetches = store.fetches
        try:
            claims = verify(token, store, self.issuers, audiences)
        except LocalRejection as e:
            if e.reason == "no_key" and store.fetches == fetches:
                # No key of that kid in a set fetched before this token came: the refetch interval
                # held it back, and a key published since would make the API server accept it.
                return "undecided", UNKNOWN_KID
            return "refused", e
        except KeysUnavailable as e:
            return self._no_keys(str(e))
        if claims is None:
            return "undecided", "another issuer, or what only the API server can judge"
        return "verified", claims

    def _no_keys(self, why: str) -> tuple[Verdict, Any]:
        if self.mode == "on":
            raise AuthError.api_call_failed(why, reason=KEYS_UNAVAILABLE)
        return "unavailable", why

    def keys(self) -> KeyStore | None:
        """This process's `KeyStore`, set up on first use; None when ``auto`` turned the pre-check
        off here. With ``on``, a setup that fails raises the API-failure `AuthError`."""
        pid = os.getpid()
        if self._pid == pid and self.store is not None:
            return self.store
        with self._lock:
            if self._pid != pid:
                self._pid, self.store, self._off, self._failed = pid, None, None, None
            if self.store is not None or self._off is not None:
                return self.store
            if self._failed is not None and time.monotonic() - self._failed[0] < RETRY_INTERVAL:
                if self.mode == "on":
                    raise AuthError.api_call_failed(self._failed[1], reason=KEYS_UNAVAILABLE)
                return None
            try:
                self.store = self._setup()
            except (KeysUnavailable, JWKSError) as e:
                if self.mode == "on":
                    self._failed = (time.monotonic(), str(e))
                    raise AuthError.api_call_failed(str(e), reason=KEYS_UNAVAILABLE) from None
                if getattr(e, "outage", False):  # the API server did not answer: try again later
                    self._failed = (time.monotonic(), str(e))
                    logger.warning("local pre-check: no keys yet, tried again in %gs: %s", RETRY_INTERVAL, e)
                    return None
                self._off = str(e)
                logger.warning("local pre-check off: %s", e)
            return self.store

    def _setup(self) -> KeyStore:
        issuers = self.config.token_issuers
        url, source = self.config.jwks_url or JWKS, None
        if issuers is None:
            issuers = (self._discover(),)
        elif self.config.mode == "jwt" and self.config.jwks_url is None:
            url, source = self._discover_at(issuers[0])
        if url.startswith("/"):
            client = self.client
            assert client is not None  # a cluster without an API server has an https jwks_url or discovery
            fetch: Any = lambda: client.get(url, _unavailable(url))  # noqa: E731
        else:
            fetch = lambda: _https_get(url, self.config.review_timeout)  # noqa: E731
        store = KeyStore(
            fetch,
            issuers=issuers,
            source=source or url,
            min_refetch_interval=MIN_REFETCH_INTERVAL,
            wait_timeout=self.config.review_timeout + 1.0,
        )
        store.load()
        self.issuers = issuers
        return store

    def _discover(self) -> str:
        """The API server's own issuer, from its discovery document."""
        assert self.client is not None
        body = self.client.get(DISCOVERY, _unavailable(DISCOVERY))
        try:
            issuer = json.loads(body).get("issuer")
        except (ValueError, AttributeError):
            issuer = None
        if not isinstance(issuer, str) or not issuer:
            raise KeysUnavailable(f"GET {DISCOVERY}: no issuer in the discovery document")
        return issuer

    def _discover_at(self, issuer: str) -> tuple[str, str]:
        """jwt mode with an issuer and no JWKS URL: the ``jwks_uri`` of the issuer's own discovery
        document (an https URL, as `parse_discovery` checks), and how it was found."""
        where = issuer.rstrip("/") + DISCOVERY
        document = parse_discovery(_https_get(where, self.config.review_timeout), issuer)
        return document.jwks_uri, f"{document.jwks_uri} (named by {where})"

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "off": self._off,
            "keys": self.store.describe() if self.store is not None else None,
        }


def _https_get(url: str, timeout: float) -> bytes:
    """GET an https JWKS URL with ``timeout`` and the 1 MiB cap of every answer."""
    import requests  # here: not in a gunicorn master before gevent patches ssl

    try:
        with requests.get(url, timeout=timeout, stream=True, allow_redirects=False) as answer:
            if answer.status_code != 200:
                raise KeysUnavailable(f"GET {url}: HTTP {answer.status_code}")
            body = answer.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
    except requests.RequestException as e:
        raise KeysUnavailable(f"GET {url}: {type(e).__name__}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise KeysUnavailable(f"GET {url}: response larger than 1 MiB")
    return bytes(body)
