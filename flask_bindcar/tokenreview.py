"""A TokenReview answer, read: its ``status`` as a `ReviewOutcome`, or the reason it is not one.

The answer is the raw JSON of the API server, so every field is checked here, before the outcome
can be cached or reach a view: the types the API promises, the length of every text, and no piece
of the token in any of them (a server may echo it). What cannot be read is the TokenReview's
`AuthError` with the reason ``api_bad_response``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask_bindcar.errors import API_BAD_RESPONSE, AuthError
from flask_bindcar.identity import AuthMethod
from flask_bindcar.scrub import MAX_SERVER_TEXT, echo_spans, scrub

MAX_IDENTITY_TEXT = 1024
"""The longest username, uid, group or extra value accepted in ``status.user``."""
_MAX_WHY = 2 * MAX_SERVER_TEXT


@dataclass(frozen=True)
class ReviewOutcome:
    """What the API server said of a token: ``status`` of the TokenReview, nothing decided yet.

    jwt mode answers with the same outcome from the verified claims (`flask_bindcar.jwtmode`):
    ``method`` says who vouched, ``reason`` labels a refusal of its own (the lifetime cap), and
    ``expires_at`` bounds how long the outcome may be reused.
    """

    authenticated: bool
    error: str | None = None
    user: Mapping[str, Any] | None = None
    audiences: tuple[str, ...] = ()
    method: AuthMethod = "tokenreview"
    """The `Identity.method` of the caller this outcome vouches for."""
    reason: str | None = None
    """The reason label of a refusal decided here rather than by the API server; None: ``not_authenticated``."""
    expires_at: float | None = None
    """Epoch seconds after which the review cache must not reuse this outcome, besides the token's ``exp``."""
    cluster: str | None = None
    """The trusted cluster that answered (`flask_bindcar.clusters`), so a cached outcome carries it:
    a cache hit does no routing."""
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """Values derived from this outcome alone (the `Identity` per audience list), computed once."""


def api_failed(why: str, reason: str) -> AuthError:
    """The TokenReview's error when no answer could be had or read: the seed's "API call failed"."""
    return AuthError.api_call_failed(why[:_MAX_WHY], reason=reason)


def _bad(why: str) -> AuthError:
    return api_failed(why, API_BAD_RESPONSE)


def _strings(value: Any) -> tuple[str, ...] | None:
    """``value`` as a tuple when it is a JSON list of strings (null counts as empty), else None."""
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _user(user: Any, token: str) -> dict[str, Any] | None:
    """``status.user`` of an authenticated answer, checked; None when it names nobody.

    Every field has the type the API promises, no text is over-long and none holds a piece of the
    token, or the answer is refused: these values reach views, logs and the cache, so they are
    checked here, before the outcome can be cached, rather than where they are used.
    """
    if not isinstance(user, dict) or user.get("username") in (None, ""):
        return None
    username, uid = user["username"], user.get("uid")
    if not isinstance(username, str):
        raise _bad("status.user.username is not a string")
    if uid is not None and not isinstance(uid, str):
        raise _bad("status.user.uid is not a string")
    groups = _strings(user.get("groups"))
    if groups is None:
        raise _bad("status.user.groups is not a list of strings")
    raw_extra = user.get("extra")
    extra: dict[str, tuple[str, ...]] = {}
    if raw_extra is not None:
        if not isinstance(raw_extra, dict):
            raise _bad("status.user.extra is not a map of string lists")
        for key, values in raw_extra.items():
            strings = _strings(values)
            if strings is None:
                raise _bad("status.user.extra is not a map of string lists")
            extra[key] = strings
    texts = [username, uid or "", *groups, *extra, *(v for vs in extra.values() for v in vs)]
    if any(len(text) > MAX_IDENTITY_TEXT for text in texts):
        raise _bad(f"status.user holds a text over {MAX_IDENTITY_TEXT} characters")
    if any(echo_spans(text, token) for text in texts):
        raise _bad("status.user holds part of the token")
    return {"username": username, "uid": uid or None, "groups": groups, "extra": extra}


def parse_review(data: bytes, token: str = "") -> ReviewOutcome:
    """The outcome of a TokenReview response body for ``token``; `AuthError` if it is not one."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise _bad("response is nested too deeply") from None
    except ValueError:
        raise _bad("response is not JSON") from None
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, dict):
        raise _bad("response is not a TokenReview with a status")
    audiences = _strings(status.get("audiences"))
    if audiences is None:
        raise _bad("status.audiences is not a list of strings")
    authenticated = status.get("authenticated") is True
    error = status.get("error")
    return ReviewOutcome(
        authenticated=authenticated,
        error=scrub(error, token) if isinstance(error, str) and error else None,
        user=_user(status.get("user"), token) if authenticated else None,
        audiences=audiences,
    )
