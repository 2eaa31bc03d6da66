"""Reading the bearer token out of an ``Authorization`` header, with the seed's messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_bindcar.config import B64TOKEN
from flask_bindcar.errors import EMPTY_TOKEN, INVALID_FORMAT, MISSING_HEADER, AuthError

MAX_TOKEN_LENGTH = 16384
"""Longer tokens are rejected unread. Real ServiceAccount tokens are 1-2 KiB."""


def bearer_token(header: str | None, *, check_format: bool = True) -> str:
    """The token of ``Authorization: Bearer <token>``, or an `AuthError` with the seed's message.

    The scheme compares case-insensitively (RFC 7235) and one or more spaces may follow it. The
    token must be one RFC 6750 ``b64token``: exactly one credential, printable ASCII only. Two
    ``Authorization`` headers reach a WSGI app joined by a comma, which no token contains, so
    they are rejected too. A bare ``Bearer`` counts as an empty token, since servers strip the
    trailing space of ``Bearer ``.

    ``check_format=False`` leaves the character check to the caller (`check_token_format`): the
    TokenReview path runs it only on a cache miss, as a token found in the cache passed it before.
    """
    if header is None:
        raise AuthError(MISSING_HEADER, challenge="none", reason="missing_header")
    scheme, _, token = header.strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(INVALID_FORMAT, challenge="invalid_request", reason="invalid_format")
    token = token.strip(" ")
    if not token:
        raise AuthError(EMPTY_TOKEN, challenge="invalid_request", reason="empty_token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError(INVALID_FORMAT, challenge="invalid_request", reason="invalid_format")
    if check_format:
        check_token_format(token)
    return token


def check_token_format(token: str) -> None:
    """`AuthError` unless ``token`` is one RFC 6750 ``b64token``."""
    if not B64TOKEN.fullmatch(token):
        raise AuthError(INVALID_FORMAT, challenge="invalid_request", reason="invalid_format")


def is_cors_preflight(environ: Mapping[str, Any]) -> bool:
    """Whether the WSGI request is a CORS preflight without credentials, the one request an adapter
    may answer without authenticating it (``BIND_CORS_PREFLIGHT``).

    A preflight is ``OPTIONS`` with both ``Origin`` and ``Access-Control-Request-Method`` (the Fetch
    standard); browsers never attach credentials to it, so one that carries an ``Authorization``
    header is authenticated like any request. Any other ``OPTIONS`` is authenticated like every
    other method.
    """
    return (
        environ.get("REQUEST_METHOD") == "OPTIONS"
        and "HTTP_ORIGIN" in environ
        and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
        and "HTTP_AUTHORIZATION" not in environ
    )
