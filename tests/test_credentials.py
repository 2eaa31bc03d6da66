"""The Authorization header: every edge case ends in the seed's message."""

from __future__ import annotations

from typing import Any

import pytest

from flask_bindcar import AuthConfig
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.credentials import MAX_TOKEN_LENGTH, bearer_token
from flask_bindcar.errors import AuthError

MISSING = "Missing Authorization header"
INVALID = "Invalid Authorization header format. Expected: Bearer <token>"
EMPTY = "Empty token"
REASONS = {MISSING: "missing_header", INVALID: "invalid_format", EMPTY: "empty_token"}
"""The reason each message is counted and audited under."""


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        ("bearer abc", "abc"),  # RFC 7235: the scheme is case-insensitive
        ("BEARER abc", "abc"),
        ("Bearer    abc", "abc"),  # extra spaces between scheme and token
        ("Bearer abc   ", "abc"),
        ("Bearer dG9rZW4=", "dG9rZW4="),
        ("Bearer XtokenX", "XtokenX"),  # only spaces and tabs are stripped, nothing of the token
        ("Bearer " + "a" * 8192, "a" * 8192),  # an 8 KiB token
        ("Bearer " + "a" * MAX_TOKEN_LENGTH, "a" * MAX_TOKEN_LENGTH),  # the longest accepted
    ],
)
def test_accepted(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("header", "message", "challenge"),
    [
        (None, MISSING, "none"),
        ("", INVALID, "invalid_request"),
        ("Basic dXNlcjpwYXNz", INVALID, "invalid_request"),
        ("Token abc", INVALID, "invalid_request"),
        ("Bearerabc", INVALID, "invalid_request"),
        ("Bearer", EMPTY, "invalid_request"),  # what "Bearer " becomes once a server strips it
        ("Bearer ", EMPTY, "invalid_request"),
        ("Bearer    ", EMPTY, "invalid_request"),
        ("Bearer abc def", INVALID, "invalid_request"),  # two credentials
        ("Bearer abc,Bearer def", INVALID, "invalid_request"),  # two headers, as WSGI servers join them
        ("Bearer abc, Bearer def", INVALID, "invalid_request"),
        ("Bearer tök\u00e9n", INVALID, "invalid_request"),  # non-ASCII bytes, latin-1 decoded by WSGI
        ("Bearer abc\r\nX-Injected: 1", INVALID, "invalid_request"),
        ("Bearer abc\n", INVALID, "invalid_request"),
        ("Bearer a=b", INVALID, "invalid_request"),
        ("Bearer " + "a" * (MAX_TOKEN_LENGTH + 1), INVALID, "invalid_request"),
    ],
)
def test_rejected(header: str | None, message: str, challenge: str) -> None:
    with pytest.raises(AuthError) as info:
        bearer_token(header)
    assert (info.value.message, info.value.challenge, info.value.reason) == (message, challenge, REASONS[message])
    assert info.value.code == 401


@pytest.mark.parametrize("header", ["Bearer abc,Bearer def", "Bearer tök\u00e9n", "Bearer abc def", "Bearer a=b"])
@pytest.mark.parametrize("settings", [{}, {"api_token": "s3cret"}], ids=["basic", "shared-secret"])
def test_basic_mode_checks_the_format_too(settings: dict[str, Any], header: str) -> None:
    """TokenReview mode checks the format on a cache miss only; Basic mode must check it on every request."""
    auth = Authenticator(AuthConfig.load({"mode": "basic", **settings}, environ={}))
    with pytest.raises(AuthError) as info:
        auth.authenticate(header)
    assert (info.value.message, info.value.challenge, info.value.reason) == (
        INVALID,
        "invalid_request",
        "invalid_format",
    )
