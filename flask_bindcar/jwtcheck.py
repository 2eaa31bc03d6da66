"""A ServiceAccount token checked here, as kube-apiserver checks it, with the issuer's published keys.

kube-apiserver 1.37's ServiceAccount authenticator (``pkg/serviceaccount/jwt.go``,
``AuthenticateToken``, and ``claims.go``, ``validator.Validate``, on go-jose v2.6.3) goes in this
order, and so does `verify`:

1. **The issuer**, read from the unverified payload (``hasCorrectIssuer``): a token of another
   issuer, or one that is not a three-part JWT at all, is not its business. It falls through to
   the other authenticators (static tokens, OIDC, a webhook), any of which may know it.
2. **The JWS**, parsed by go-jose: a token it cannot parse falls through as well.
3. **The keys** of the header's ``kid``, every key without one: none is
   ``invalid signature, no keys found``.
4. **The signature**, tried with each key: go-jose answers every failure, a wrong key or an
   algorithm the key cannot verify (``none``, ``HS256``...), with
   ``go-jose/go-jose: error in cryptographic primitive``. There is no other algorithm allowlist:
   RS256/384/512 and PS256/384/512 verify with RSA keys, ES256/384/512 with EC keys.
5. **The audiences**: the token's ``aud`` intersected with the requested ones (the TokenReview's
   ``spec.audiences``), in the requested order; none in common is
   ``token audiences ["a"] is invalid for the target audiences ["b"]``.
6. **The times**, with go-jose's one minute of leeway (``jwt.DefaultLeeway``): ``nbf`` first
   (``service account token is not valid yet``), then ``exp`` (``... has expired``), then ``iat``
   (``... is issued in the future``).
7. Only then **the objects**: the ServiceAccount, its uid, the bound pod, secret or node, which
   only the API server can look up.

A TokenReview reports the authenticator's error behind ``invalid bearer token``, the default
error of the privileged loopback token authenticator that sits first in the request authenticator
union (``AuthorizeClientBearerToken``, ``k8s.io/apiserver/pkg/server/config.go``); the union
aggregates both as ``[invalid bearer token, service account token has expired]``. A token that
no authenticator claims gets ``invalid bearer token`` alone.

`verify` answers what steps 1 to 6 prove: a `LocalRejection` carrying the TokenReview's own
``status.error``, the `Claims` of a token that passed (the API server may still refuse it at step
7), or None when only the API server can say. None is: not a JWT, or one go-jose would not parse;
another issuer, or the legacy Secret-token issuer; a header this module does not follow (``jwk``,
``x5c``, a ``crit`` that is not a list of names, a ``kid`` or ``alg`` that is not a string); a
signed payload whose claims are not of the types kube-apiserver mints; no ``aud`` (the API server's
own audiences then apply); what the API server could never find (no namespace, no ServiceAccount
uid, a bound pod or secret without uid); a token bound to a webhook configuration. Texts are exact for a cluster
whose other token authenticators add no error of their own (a webhook token authenticator that
answers with an error adds it to the list).

Over 500 lines because it holds kube-apiserver's whole order with each of its texts, and the
identity a TokenReview would give: each step is short, and they only mean something together.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from flask_bindcar.identity import BOUND_FIELDS, SA_PREFIX
from flask_bindcar.jwks import KeySource, KeyType, VerificationKey, b64url_decode
from flask_bindcar.scrub import scrub
from flask_bindcar.tokenreview import ReviewOutcome

KUBE_LEEWAY = 60.0
"""Seconds of clock skew kube-apiserver allows on ``nbf``, ``exp`` and ``iat`` (go-jose's
``jwt.DefaultLeeway``, used by ``claims.Validate``)."""
LEGACY_ISSUER = "kubernetes/serviceaccount"
"""The issuer of legacy Secret-based tokens: another authenticator, other rules; never decided here."""

INVALID_BEARER_TOKEN = "invalid bearer token"
NO_KEYS = "invalid signature, no keys found"
CRYPTO_FAILURE = "go-jose/go-jose: error in cryptographic primitive"
AUDIENCES_INVALID = "token audiences {token} is invalid for the target audiences {requested}"
NOT_YET_VALID = "service account token is not valid yet"
EXPIRED = "service account token has expired"
ISSUED_IN_FUTURE = "service account token is issued in the future"

SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
AUTHENTICATED_GROUP = "system:authenticated"

RejectionReason = Literal["no_key", "signature", "audience", "not_yet_valid", "expired", "issued_in_future"]


@dataclass(frozen=True)
class _Algorithm:
    kty: KeyType
    hash: type[hashes.HashAlgorithm]
    pss: bool = False
    size: int = 0
    """Bytes of each of r and s in an ECDSA signature (go-jose's ``keySize``)."""


ALGORITHMS: dict[str, _Algorithm] = {
    "RS256": _Algorithm("RSA", hashes.SHA256),
    "RS384": _Algorithm("RSA", hashes.SHA384),
    "RS512": _Algorithm("RSA", hashes.SHA512),
    "PS256": _Algorithm("RSA", hashes.SHA256, pss=True),
    "PS384": _Algorithm("RSA", hashes.SHA384, pss=True),
    "PS512": _Algorithm("RSA", hashes.SHA512, pss=True),
    "ES256": _Algorithm("EC", hashes.SHA256, size=32),
    "ES384": _Algorithm("EC", hashes.SHA384, size=48),
    "ES512": _Algorithm("EC", hashes.SHA512, size=66),
}
"""The signature algorithms go-jose verifies with an RSA or EC key; any other (``none``, ``HS256``)
fails, as a wrong signature does."""


class LocalRejection(Exception):
    """A token the issuer's keys prove invalid, refused as the TokenReview would refuse it.

    ``why`` is kube-apiserver's ServiceAccount authenticator error, ``error`` the TokenReview's
    ``status.error`` (``[invalid bearer token, <why>]``), ``reason`` a short label for logs and
    metrics.
    """

    def __init__(self, why: str, reason: RejectionReason):
        self.why = why
        self.reason: RejectionReason = reason
        self.error = f"[{INVALID_BEARER_TOKEN}, {why}]"
        super().__init__(self.error)

    def outcome(self, token: str) -> ReviewOutcome:
        """The `ReviewOutcome` `parse_review` would have read from the TokenReview's answer."""
        return ReviewOutcome(authenticated=False, error=scrub(self.error, token))


@dataclass(frozen=True)
class Claims:
    """What a verified ServiceAccount token says, as kube-apiserver reads it.

    Times are whole epoch seconds, as go-jose reads them. ``granted`` is what the TokenReview
    answers as ``status.audiences``: the requested audiences the token has, in the requested order.
    """

    issuer: str
    audiences: tuple[str, ...]
    granted: tuple[str, ...]
    namespace: str
    service_account: str
    service_account_uid: str
    subject: str | None = None
    expires_at: int | None = None
    not_before: int | None = None
    issued_at: int | None = None
    jti: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = None
    node_name: str | None = None
    node_uid: str | None = None
    secret_name: str | None = None
    secret_uid: str | None = None
    kid: str | None = None
    algorithm: str = ""

    @property
    def username(self) -> str:
        return f"{SA_PREFIX}{self.namespace}:{self.service_account}"

    @property
    def lifetime(self) -> int | None:
        """Seconds from ``iat`` (or ``nbf``) to ``exp``; None when the token has no expiry."""
        start = self.issued_at if self.issued_at is not None else self.not_before
        if self.expires_at is None or start is None:
            return None
        return self.expires_at - start


_REFERENCE_CLAIMS = (
    "serviceaccount",
    "pod",
    "secret",
    "node",
    "validatingwebhookconfiguration",
    "mutatingwebhookconfiguration",
)
"""The members of the ``kubernetes.io`` claim that name an object (``{"name": ..., "uid": ...}``)."""
_WHITESPACE = re.compile(r"\s")
"""What ``str.isspace`` calls whitespace (the ``\\s`` of a ``str`` pattern is the same set), found in C."""
_PRIVATE_CLAIMS = ("namespace", *_REFERENCE_CLAIMS, "attestations", "warnafter")
"""The members of the ``kubernetes.io`` claim kube-apiserver 1.37 reads (``claims.go``)."""


class _Undecided(Exception):
    """Only the API server can answer for this token."""


# -- Go's readings of JSON and base64 ------------------------------------------------------------


class _Pairs(list[tuple[str, Any]]):
    """A JSON object with its members in order and duplicates kept, as Go's decoder walks it."""


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _loads(data: bytes, *, pairs: bool) -> Any:
    """JSON as Go's ``encoding/json`` accepts it (UTF-8, no NaN or Infinity); `_Undecided` if not."""
    try:
        return json.loads(
            data.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_Pairs if pairs else None
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Undecided from None


_GO_FOLD = {"\u017f": "S", "\u212a": "K"}
"""The only runes outside ASCII that Go's case folding of JSON names turns into ASCII letters
(the long s to S, the Kelvin sign to K); every other rune folds to a rune outside ASCII."""


def _go_fold(name: str) -> str:
    """``name`` as ``encoding/json`` folds object keys to match struct fields case-insensitively."""
    if name.isascii():  # every claim name kube-apiserver writes: one C call
        return name.upper()
    return "".join(c.upper() if c.isascii() else _GO_FOLD.get(c, c) for c in name)


def _issuer(payload: Any) -> str:
    """The ``iss`` Go reads into ``struct{ Issuer string `json:"iss"` }``: the last member whose
    name folds to ``iss`` wins, null leaves it unset, any other type fails the whole read."""
    if payload is None:
        return ""
    if not isinstance(payload, _Pairs):
        raise _Undecided
    issuer = ""
    for name, value in payload:
        if name == "iss" or _go_fold(name) == "ISS":
            if value is None:
                continue
            if not isinstance(value, str):
                raise _Undecided
            issuer = value
    return issuer


def _members(value: Any, names: Collection[str]) -> dict[str, Any]:
    """The members ``names`` of a signed JSON object, read strictly: a duplicate, or a name that
    differs from one of ``names`` in case only, leaves the reading to the API server (go-jose reads
    claims with its own case-sensitive decoder, the issuer check with Go's case-insensitive one)."""
    if not isinstance(value, _Pairs):
        raise _Undecided
    folded = {_go_fold(n) for n in names}
    found: dict[str, Any] = {}
    for name, member in value:
        if name in names:
            if name in found:
                raise _Undecided
            found[name] = member
        elif _go_fold(name) in folded:
            raise _Undecided
    return found


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _Undecided


def _date(value: Any) -> int | None:
    """A NumericDate as go-jose reads it: a JSON number, as float64, truncated to whole seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Undecided
    try:
        seconds = float(value)
    except OverflowError:
        raise _Undecided from None
    if not -(2.0**63) <= seconds < 2.0**63:
        raise _Undecided
    return int(seconds)


def _ref(value: Any) -> tuple[str, str] | None:
    """A bound object's ``{"name", "uid"}`` (each possibly empty), or None for none."""
    if value is None:
        return None
    ref = _members(value, ("name", "uid"))
    return _text(ref.get("name")) or "", _text(ref.get("uid")) or ""


def go_quote(text: str) -> str:
    """``text`` as Go's ``%q`` (``strconv.Quote``) writes it."""
    out = ['"']
    for char in text:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:  # Go's decoder made a lone surrogate U+FFFD
            char, code = "\ufffd", 0xFFFD
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote_list(items: Sequence[str]) -> str:
    """A list of strings as Go's ``%q`` writes a ``[]string``: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


# -- the check -------------------------------------------------------------------------------------


def _signed_by(key: VerificationKey, algorithm: str, signed: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``signed`` verifies with ``key`` under ``algorithm``, as go-jose
    decides it (PSS with any salt length; ECDSA as r and s of the algorithm's fixed size)."""
    spec = ALGORITHMS.get(algorithm)
    if spec is None or spec.kty != key.kty:
        return False
    try:
        if isinstance(key.key, rsa.RSAPublicKey):
            scheme = (
                padding.PSS(mgf=padding.MGF1(spec.hash()), salt_length=padding.PSS.AUTO)
                if spec.pss
                else padding.PKCS1v15()
            )
            key.key.verify(signature, signed, scheme, spec.hash())
        else:
            if len(signature) != 2 * spec.size:
                return False
            r = int.from_bytes(signature[: spec.size], "big")
            s = int.from_bytes(signature[spec.size :], "big")
            key.key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(spec.hash()))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify(
    token: str,
    keys: KeySource,
    issuers: Collection[str],
    audiences: Sequence[str],
    *,
    now: float | None = None,
    leeway: float = KUBE_LEEWAY,
) -> Claims | None:
    """Check ``token`` as kube-apiserver's ServiceAccount authenticator would, up to the lookups.

    ``issuers`` are the trusted ``--service-account-issuer`` values (all of them during an issuer
    migration), ``audiences`` what the TokenReview would request (never empty: with none, the API
    server's own apply, which only it knows), ``now`` epoch seconds (default: the clock), ``keys``
    where the keys come from (`KeyStore` refetches once for an unknown ``kid``).

    Returns the `Claims` of a token that passed, or None when only the API server can say (see the
    module's docstring; a foreign issuer among them: the caller decides what that means). Raises
    `LocalRejection` with the TokenReview's ``status.error`` for a token the keys prove invalid,
    and lets `KeysUnavailable` through when the keys cannot be had.
    """
    if not audiences:
        raise ValueError("verify needs the audiences the TokenReview would request")
    try:
        return _verify(token, keys, issuers, audiences, time.time() if now is None else now, leeway)
    except _Undecided:
        return None


def _verify(
    token: str, keys: KeySource, issuers: Collection[str], audiences: Sequence[str], now: float, leeway: float
) -> Claims:
    # 1. The issuer, unverified (hasCorrectIssuer). Whitespace: go-jose strips it before parsing,
    # the issuer check does not; no token kube-apiserver mints has any.
    if _WHITESPACE.search(token):
        raise _Undecided
    parts = token.split(".")
    if len(parts) != 3 or token.startswith("{"):
        raise _Undecided
    raw_header, raw_payload, raw_signature = (b64url_decode(p) for p in parts)
    if raw_payload is None:
        raise _Undecided
    payload = _loads(raw_payload, pairs=True)
    issuer = _issuer(payload)
    if issuer not in issuers or issuer == LEGACY_ISSUER:
        raise _Undecided

    # 2. The JWS, as go-jose parses it.
    if raw_header is None or raw_signature is None:
        raise _Undecided
    header = _loads(raw_header, pairs=False)
    if header is None:
        header = {}
    if not isinstance(header, dict):
        raise _Undecided
    kid, algorithm = header.get("kid"), header.get("alg")
    if not all(v is None or isinstance(v, str) for v in (kid, algorithm, header.get("nonce"))):
        raise _Undecided
    if header.get("jwk") is not None or header.get("x5c") is not None:
        raise _Undecided

    # 3. The keys of the kid, or all of them.
    candidates = keys.get(kid or None)
    if not candidates:
        raise LocalRejection(NO_KEYS, "no_key")

    # 4. The signature. go-jose reads "crit" first: a name it does not support (all but "b64") fails
    # every key; a "crit" that is not a list of names fails with a JSON error of its own wording.
    critical = header.get("crit")
    if critical is not None and not (isinstance(critical, list) and all(isinstance(c, str) for c in critical)):
        raise _Undecided
    signed = _b64(raw_header) + b"." + (raw_payload if header.get("b64") is False else _b64(raw_payload))
    if any(c != "b64" for c in critical or ()) or not any(
        _signed_by(k, algorithm or "", signed, raw_signature) for k in candidates
    ):
        raise LocalRejection(CRYPTO_FAILURE, "signature")

    # What go-jose reads into jwt.Claims and the private claims along with the signature: a
    # signed payload of other types is refused there, with an error only the API server words.
    claims = _members(payload, ("iss", "sub", "aud", "exp", "nbf", "iat", "jti", "kubernetes.io"))
    subject, jti = _text(claims.get("sub")), _text(claims.get("jti"))
    expires_at, not_before, issued_at = (_date(claims.get(n)) for n in ("exp", "nbf", "iat"))
    aud = claims.get("aud", [])
    if isinstance(aud, str):
        token_audiences: tuple[str, ...] = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        token_audiences = tuple(aud)
    else:
        raise _Undecided
    kubernetes = claims.get("kubernetes.io")
    private = _members(_Pairs() if kubernetes is None else kubernetes, _PRIVATE_CLAIMS)
    namespace = _text(private.get("namespace")) or ""
    account, pod, secret, node, validating, mutating = (_ref(private.get(n)) for n in _REFERENCE_CLAIMS)
    if private.get("attestations") is not None and not isinstance(private["attestations"], _Pairs):
        raise _Undecided
    _date(private.get("warnafter"))

    # 5. The audiences: the requested ones the token has, in the requested order. A token without
    # any is held to the API server's own audiences, which only it knows.
    if not token_audiences:
        raise _Undecided
    granted = tuple(a for a in audiences if a in token_audiences)
    if not granted:
        why = AUDIENCES_INVALID.format(token=go_quote_list(token_audiences), requested=go_quote_list(audiences))
        raise LocalRejection(why, "audience")

    # 6. The times, with the leeway.
    if not_before is not None and now + leeway < not_before:
        raise LocalRejection(NOT_YET_VALID, "not_yet_valid")
    if expires_at is not None and now - leeway > expires_at:
        raise LocalRejection(EXPIRED, "expired")
    if issued_at is not None and now + leeway < issued_at:
        raise LocalRejection(ISSUED_IN_FUTURE, "issued_in_future")

    # 7. The objects are the API server's to look up; what it could never find, or binds to a
    # webhook configuration (behind feature gates), is left to it as well.
    if not namespace or account is None or not all(account):
        raise _Undecided
    if validating is not None or mutating is not None or private.get("attestations") is not None:
        raise _Undecided
    if any(ref is not None and not all(ref) for ref in (pod, secret)) or (node is not None and not node[0]):
        raise _Undecided
    if secret is not None and (pod is not None or node is not None):
        raise _Undecided
    if node is not None and pod is None and not node[1]:
        raise _Undecided

    return Claims(
        issuer=issuer,
        audiences=token_audiences,
        granted=granted,
        namespace=namespace,
        service_account=account[0],
        service_account_uid=account[1],
        subject=subject,
        expires_at=expires_at,
        not_before=not_before,
        issued_at=issued_at,
        jti=jti or None,
        pod_name=pod[0] if pod else None,
        pod_uid=pod[1] if pod else None,
        node_name=node[0] if node else None,
        node_uid=(node[1] or None) if node else None,
        secret_name=secret[0] if secret else None,
        secret_uid=secret[1] if secret else None,
        kid=kid or None,
        algorithm=algorithm or "",
    )


# -- the identity a TokenReview would give ---------------------------------------------------------


def user_info(claims: Claims) -> dict[str, Any]:
    """The ``status.user`` a TokenReview gives for these claims, read as `parse_review` reads it.

    As kube-apiserver builds it (``ServiceAccountInfo.UserInfo`` in
    ``k8s.io/apiserver/pkg/authentication/serviceaccount/util.go``, then the authenticated group
    adder): the username ``system:serviceaccount:<ns>:<name>``, the account's uid, the groups
    ``system:serviceaccounts``, ``system:serviceaccounts:<ns>`` and ``system:authenticated``, and
    in ``extra``: ``pod-name`` and ``pod-uid`` for a token bound to a pod, ``node-name`` (and
    ``node-uid`` when known) for one that names a node, ``credential-id`` (``JTI=<jti>``) for one
    with a ``jti``. Groups and extra values are tuples, as in `ReviewOutcome.user`.
    """
    extra: dict[str, tuple[str, ...]] = {}
    if claims.pod_name and claims.pod_uid:
        extra[BOUND_FIELDS["pod_name"]] = (claims.pod_name,)
        extra[BOUND_FIELDS["pod_uid"]] = (claims.pod_uid,)
    if claims.jti:
        extra[BOUND_FIELDS["credential_id"]] = (f"JTI={claims.jti}",)
    if claims.node_name:
        extra[BOUND_FIELDS["node_name"]] = (claims.node_name,)
        if claims.node_uid:
            extra[BOUND_FIELDS["node_uid"]] = (claims.node_uid,)
    return {
        "username": claims.username,
        "uid": claims.service_account_uid or None,
        "groups": (SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{claims.namespace}", AUTHENTICATED_GROUP),
        "extra": extra,
    }


def accepted_outcome(claims: Claims) -> ReviewOutcome:
    """The `ReviewOutcome` of a TokenReview that accepted the token these claims come from:
    `flask_bindcar.policy.identity_from_review` builds the same `Identity` from it."""
    return ReviewOutcome(authenticated=True, user=user_info(claims), audiences=claims.granted)
