"""The signing keys of a ServiceAccount issuer, as its JWKS publishes them, and a cache that follows rotation.

kube-apiserver publishes the public halves of its ServiceAccount signing keys at
``/openid/v1/jwks`` (readable by every ServiceAccount through the default
``system:service-account-issuer-discovery`` binding) and names that URL in its OpenID discovery
document (``/.well-known/openid-configuration``); managed clusters publish the same at a public
issuer URL. Each key is ``{"use": "sig", "kty": "RSA" | "EC", "kid": ..., "alg": "RS256" |
"ES256" | "ES384" | "ES512", ...}``, and its ``kid`` is kube-apiserver's own key ID (`key_id`), the
one its tokens carry in their header (``pkg/serviceaccount/openidmetadata.go``, ``jwt.go``).

`parse_jwks` reads such a document into a `KeySet` (keys of other types or uses are skipped, a
document that is not a key set is refused); `parse_discovery` checks a discovery document against
the issuer it must name; `KeyStore` keeps the current set and fetches it again, once for everyone
who asks at the same time and at most once per ``min_refetch_interval``, when a token names a
``kid`` it does not know: a rotated key is picked up without a restart, and a flood of made-up
``kid``\\ s costs one fetch every few seconds, not one per token.

How the keys are fetched is the caller's: ``fetch`` returns the JWKS document, through the API
server client with its deadline and answer cap, or over HTTPS from the issuer's URL.

What a JWKS cannot show: with an external signer (``--service-account-signing-endpoint``), a key
the signer marks ``ExcludeFromOIDCDiscovery`` still verifies tokens but is not published, so its
tokens find no key here.

About 500 lines because reading a key set and keeping it current are one job here: the parsing
of each key type and the refetch rules (single flight, a floor between fetches, the age limit)
share the state they protect, and split apart each half would explain the other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

logger = logging.getLogger("flask_bindcar")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
KeyType = Literal["RSA", "EC"]

CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
"""The curves kube-apiserver signs with (ES256, ES384, ES512) and the size of their coordinates."""
MIN_RSA_BITS = 1024
"""RSA keys below this size are skipped: kube-apiserver's Go refuses to verify with them."""
MAX_KEYS = 100
"""Keys read from one document at most; a key set is a handful, a longer list is not one."""


class JWKSError(ValueError):
    """A document that is not what it must be: not a key set, no usable key in it, or a discovery
    document that names another issuer or a JWKS URL that is not https. The message says which."""


class KeysUnavailable(Exception):
    """No key set to decide with: none could be fetched yet, or the last fetch failed.

    Raised instead of an answer about a token: the keys could not prove anything, so the caller
    decides (send the token to the TokenReview, or fail closed). The message is fit for a log line.
    """


@dataclass(frozen=True)
class VerificationKey:
    """One public key of the issuer: what tokens name it by (``kid``), and the key itself."""

    kid: str | None
    key: PublicKey = field(repr=False)
    kty: KeyType
    alg: str | None = None
    """The ``alg`` the document gives, if any. For information only: kube-apiserver verifies with
    a key whatever algorithm the token names (RS*, PS* with an RSA key, ES* with an EC key)."""


class KeySource(Protocol):
    """Where verification finds the keys for a token: `KeySet` (fixed) or `KeyStore` (refetching)."""

    def get(self, kid: str | None) -> tuple[VerificationKey, ...]:
        """The keys a token with this ``kid`` may be signed by (all keys for None); empty when none.

        May raise `KeysUnavailable`.
        """
        ...


@dataclass(frozen=True)
class KeySet:
    """The usable keys of one JWKS document, as kube-apiserver looks them up.

    A token naming a ``kid`` is verified with the keys of that ``kid`` only; a token without one
    with every key (``pkg/serviceaccount/jwt.go``, ``staticPublicKeysGetter.GetPublicKeys``).
    """

    keys: tuple[VerificationKey, ...]
    skipped: int = 0
    """Keys of the document left out: another type, use or curve, or too small to verify with."""

    def get(self, kid: str | None) -> tuple[VerificationKey, ...]:
        if not kid:
            return self.keys
        return tuple(k for k in self.keys if k.kid == kid)

    @property
    def kids(self) -> tuple[str, ...]:
        """The ``kid`` of every key that has one, in the document's order, each once."""
        return tuple(dict.fromkeys(k.kid for k in self.keys if k.kid))


# -- documents -------------------------------------------------------------------------------


def _json(data: bytes | str | Mapping[str, Any], what: str) -> Any:
    if isinstance(data, Mapping):
        return data
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise JWKSError(f"the {what} is not JSON") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url_decode(text: str) -> bytes | None:
    """Unpadded base64url, decoded as Go's ``base64.RawURLEncoding`` decodes it; None if it is not.

    Go reads any trailing bits and refuses ``=``, characters outside the alphabet and a length of
    4n+1; so does this (Python's own decoder would skip characters it does not know).
    """
    if len(text) % 4 == 1 or not _URL_ALPHABET.issuperset(text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the checks above leave nothing to refuse
        return None


def _member(jwk: Mapping[str, Any], name: str) -> bytes | None:
    """A JWK member's bytes: base64url, trailing padding tolerated as go-jose tolerates it."""
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        return None
    return b64url_decode(value.rstrip("="))


def _rsa_key(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey | None:
    n, e = _member(jwk, "n"), _member(jwk, "e")
    if n is None or e is None:
        raise JWKSError(f"RSA key {_name(jwk)} has no valid n and e")
    modulus, exponent = int.from_bytes(n, "big"), int.from_bytes(e, "big")
    if modulus.bit_length() < MIN_RSA_BITS:
        return None
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError:
        raise JWKSError(f"RSA key {_name(jwk)} is not a valid key") from None


def _ec_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey | None:
    crv = jwk.get("crv")
    curve = CURVES.get(crv) if isinstance(crv, str) else None
    if curve is None:
        return None
    x, y = _member(jwk, "x"), _member(jwk, "y")
    if x is None or y is None:
        raise JWKSError(f"EC key {_name(jwk)} has no valid x and y")
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve[0]()
        ).public_key()
    except ValueError:
        raise JWKSError(f"EC key {_name(jwk)} is not a point of {jwk.get('crv')}") from None


def _name(jwk: Mapping[str, Any]) -> str:
    kid = jwk.get("kid")
    return repr(kid[:64]) if isinstance(kid, str) else "without kid"


def parse_jwks(data: bytes | str | Mapping[str, Any]) -> KeySet:
    """The usable keys of a JWKS document; `JWKSError` if it is not a key set or has no usable key.

    Usable: RSA keys (1024 bits or more) and EC keys on P-256, P-384 or P-521, meant for
    signatures (``use`` absent or ``sig``; ``key_ops``, when given, including ``verify``). Keys of
    other types, uses or curves are skipped, not refused: an issuer may publish more than
    kube-apiserver signs with. A member that is not a JSON object, a ``kid`` that is not a string,
    or a key of a usable type with broken numbers makes the whole document not a key set.
    """
    doc = _json(data, "JWKS document")
    entries = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list):
        raise JWKSError('the JWKS document is not a JSON object with a "keys" list')
    if len(entries) > MAX_KEYS:
        raise JWKSError(f"the JWKS document lists {len(entries)} keys, more than {MAX_KEYS}")
    keys: list[VerificationKey] = []
    skipped = 0
    for jwk in entries:
        if not isinstance(jwk, Mapping) or not isinstance(jwk.get("kty"), str):
            raise JWKSError('the JWKS document lists a key that is not a JSON object with a "kty"')
        kid, alg, use, ops = jwk.get("kid"), jwk.get("alg"), jwk.get("use"), jwk.get("key_ops")
        if kid is not None and not isinstance(kid, str):
            raise JWKSError('the JWKS document lists a key whose "kid" is not a string')
        if use not in (None, "sig") or (isinstance(ops, list) and "verify" not in ops):
            skipped += 1
            continue
        key: PublicKey | None
        if jwk["kty"] == "RSA":
            key = _rsa_key(jwk)
        elif jwk["kty"] == "EC":
            key = _ec_key(jwk)
        else:
            key = None
        if key is None:
            skipped += 1
            continue
        kty: KeyType = "RSA" if isinstance(key, rsa.RSAPublicKey) else "EC"
        keys.append(VerificationKey(kid or None, key, kty, alg if isinstance(alg, str) else None))
    if not keys:
        raise JWKSError(f"the JWKS document has no RSA or EC signing key ({skipped} of other types, uses or sizes)")
    return KeySet(tuple(keys), skipped)


@dataclass(frozen=True)
class Discovery:
    """The two fields of an OpenID discovery document that matter here."""

    issuer: str
    jwks_uri: str


def parse_discovery(data: bytes | str | Mapping[str, Any], issuer: str) -> Discovery:
    """A discovery document (``/.well-known/openid-configuration``) of ``issuer``, checked.

    ``issuer`` must be the document's ``issuer`` exactly (OpenID Connect Discovery 1.0, section
    4.3: a document naming another issuer is another's), and ``jwks_uri`` an https URL with a
    host, as kube-apiserver requires of it (``NewOpenIDMetadataProvider``). During an issuer
    migration the document names only the first ``--service-account-issuer``: check it against
    that one. `JWKSError` otherwise.
    """
    doc = _json(data, "discovery document")
    if not isinstance(doc, Mapping):
        raise JWKSError("the discovery document is not a JSON object")
    named = doc.get("issuer")
    if named != issuer:
        shown = repr(named[:200]) if isinstance(named, str) else "no issuer"
        raise JWKSError(f"the discovery document names {shown}, not the issuer {issuer!r}")
    uri = doc.get("jwks_uri")
    if not isinstance(uri, str):
        raise JWKSError("the discovery document has no jwks_uri")
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise JWKSError("the discovery document's jwks_uri is not a URL") from None
    if parts.scheme != "https" or not parts.hostname:
        raise JWKSError(f"the discovery document's jwks_uri is not an https URL: {uri[:200]!r}")
    return Discovery(issuer, uri)


# -- kube-apiserver's side, for stand-ins and checks -----------------------------------------


def key_id(key: PublicKey) -> str:
    """kube-apiserver's key ID of a public key: unpadded base64url of the SHA-256 of its DER
    SubjectPublicKeyInfo (``keyIDFromPublicKey`` in ``pkg/serviceaccount/jwt.go``)."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: PublicKey, kid: str | None = None) -> dict[str, str]:
    """The JWK kube-apiserver publishes for ``key`` at ``/openid/v1/jwks``, its members in go-jose's
    order: ``use``, ``kty``, ``kid`` (default: `key_id`), ``crv``, ``alg``, ``x``, ``y``, ``n``, ``e``."""
    kid = kid if kid is not None else key_id(key)
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return {"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256", "n": _b64(n), "e": _b64(e)}
    name = next((crv for crv, (curve, _) in CURVES.items() if isinstance(key.curve, curve)), None)
    if name is None:
        raise ValueError(f"kube-apiserver does not sign with the curve {key.curve.name}")
    size = CURVES[name][1]
    point = key.public_numbers()
    return {
        "use": "sig",
        "kty": "EC",
        "kid": kid,
        "crv": name,
        "alg": {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[name],
        "x": _b64(point.x.to_bytes(size, "big")),
        "y": _b64(point.y.to_bytes(size, "big")),
    }


# -- the cache ---------------------------------------------------------------------------------


class _Fetch:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class KeyStore:
    """The issuer's current `KeySet`, fetched with ``fetch`` and fetched again when it must be.

    `get` answers from the kept set. A ``kid`` the set does not have leads one refetch: callers
    asking meanwhile wait for that one fetch (single flight), and a fetch starts at most once per
    ``min_refetch_interval`` seconds, counted from the start of the last one, success or not; within
    that interval an unknown ``kid`` is answered from the kept set. A set older than ``max_age``
    (kube-apiserver serves its keys with ``max-age=3600``) is refreshed by the first caller that
    notices, while the others go on with it. Thread-safe with `threading` primitives only, which
    gevent patches; nothing polls.

    A ``kid`` is reported unknown (an empty answer) only by a set whose last fetch succeeded: when
    the last fetch failed, or none ever succeeded, `get` raises `KeysUnavailable` instead, because
    keys that could not be fetched prove nothing about a token.

    ``fetch`` returns the JWKS document (bytes, text or parsed JSON). It should raise
    `KeysUnavailable` or `JWKSError` with a message fit for a log line; any other exception is
    recorded by its type only. ``wait_timeout`` bounds how long a caller waits for another's fetch
    (the fetch's own deadline plus a little); ``issuers`` and ``source`` are for `describe`.
    """

    def __init__(
        self,
        fetch: Callable[[], bytes | str | Mapping[str, Any]],
        *,
        issuers: Iterable[str] = (),
        source: str = "",
        min_refetch_interval: float = 5.0,
        max_age: float = 3600.0,
        wait_timeout: float = 11.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._fetch = fetch
        self.issuers = tuple(issuers)
        self.source = source
        self.min_refetch_interval = min_refetch_interval
        self.max_age = max_age
        self.wait_timeout = wait_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._set: KeySet | None = None
        self._fetched_at: float | None = None
        """`clock` time of the last successful fetch."""
        self._fetched_wall: float | None = None
        self._attempted_at: float | None = None
        """`clock` time the last fetch started."""
        self._error: JWKSError | KeysUnavailable | None = None
        """Why the last fetch failed; None when it succeeded."""
        self._flight: _Fetch | None = None
        self.fetches = 0
        """Fetches started, successful or not."""

    @property
    def key_set(self) -> KeySet | None:
        """The kept set, if any (possibly from before a failed fetch)."""
        return self._set

    @property
    def age(self) -> float | None:
        """Seconds since the kept set was fetched; None before the first successful fetch."""
        fetched = self._fetched_at
        return None if fetched is None else max(0.0, self._clock() - fetched)

    def load(self) -> KeySet:
        """Fetch now, whatever the interval (or share a fetch under way): at startup, to know
        whether the keys load. Raises `JWKSError` (a document that is not a key set) or
        `KeysUnavailable` (no document) with the reason if they do not."""
        with self._lock:
            flight, leader = self._join()
        if leader:
            self._lead(flight)
        elif not flight.done.wait(self.wait_timeout):
            raise KeysUnavailable(f"no key set within {self.wait_timeout:g}s")
        with self._lock:
            if self._error is not None:
                raise type(self._error)(str(self._error))
            if self._set is None:  # the fetch was abandoned (a killed greenlet): neither set nor error
                raise KeysUnavailable("no key set")
            return self._set

    def get(self, kid: str | None) -> tuple[VerificationKey, ...]:
        """The keys for a token naming ``kid`` (all keys for None or ``""``), refetching once for
        a ``kid`` the kept set lacks; empty when the issuer has no such key. `KeysUnavailable`
        when the keys cannot say: never fetched, the last fetch failed, or another's fetch did not
        end within ``wait_timeout``."""
        with self._lock:
            kept, fetched_at = self._set, self._fetched_at
        if kept is not None and fetched_at is not None:
            keys = kept.get(kid)
            if keys:
                if self._clock() - fetched_at >= self.max_age:
                    self._refetch(wait=False)
                    return (self._set or kept).get(kid)
                return keys
        if not self._refetch(wait=True):
            raise KeysUnavailable(f"the signing keys were not fetched within {self.wait_timeout:g}s")
        with self._lock:
            kept, error = self._set, self._error
        if kept is None:
            raise KeysUnavailable(str(error) if error else "the signing keys were never fetched")
        keys = kept.get(kid)
        if not keys and error is not None:
            raise KeysUnavailable(f"the last fetch of the signing keys failed: {error}")
        return keys

    def _join(self) -> tuple[_Fetch, bool]:
        """The fetch under way, or a new one this caller leads (the lock is held)."""
        if self._flight is not None:
            return self._flight, False
        self._flight = _Fetch()
        self._attempted_at = self._clock()
        self.fetches += 1
        return self._flight, True

    def _refetch(self, *, wait: bool) -> bool:
        """Lead a fetch if the interval allows one, or wait (``wait``) for the one under way.

        False only when this caller waited for another's fetch and it did not end in time.
        """
        with self._lock:
            if self._flight is None:
                last = self._attempted_at
                if last is not None and self._clock() - last < self.min_refetch_interval:
                    return True
            flight, leader = self._join()
        if leader:
            self._lead(flight)
            return True
        return not wait or flight.done.wait(self.wait_timeout)

    def _lead(self, flight: _Fetch) -> None:
        try:
            try:
                key_set = parse_jwks(self._fetch())
            except (JWKSError, KeysUnavailable) as e:
                self._failed(e)
            except Exception as e:
                self._failed(KeysUnavailable(f"{type(e).__name__} while fetching the JWKS"))
            else:
                with self._lock:
                    changed = self._set is None or self._set.kids != key_set.kids
                    self._set, self._error = key_set, None
                    self._fetched_at, self._fetched_wall = self._clock(), time.time()
                if changed:
                    logger.info(
                        "signing keys of %s from %s: %d key(s), kid %s",
                        ", ".join(self.issuers) or "the issuer",
                        self.source or "the JWKS",
                        len(key_set.keys),
                        ", ".join(key_set.kids) or "(none)",
                    )
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()

    def _failed(self, error: JWKSError | KeysUnavailable) -> None:
        with self._lock:
            self._error = error
        logger.warning(
            "could not fetch the signing keys of %s from %s: %s",
            ", ".join(self.issuers) or "the issuer",
            self.source or "the JWKS",
            error,
        )

    def describe(self) -> dict[str, Any]:
        """What ``doctor`` shows: the issuers, where the keys come from, how many, their ``kid``\\ s,
        the set's age in seconds and when it was fetched (epoch seconds), the fetches made and the
        last fetch's error (None when it succeeded)."""
        with self._lock:
            kept, error, wall = self._set, self._error, self._fetched_wall
        return {
            "issuers": list(self.issuers),
            "source": self.source,
            "keys": len(kept.keys) if kept else 0,
            "kids": list(kept.kids) if kept else [],
            "skipped": kept.skipped if kept else 0,
            "age": self.age,
            "fetched_at": wall,
            "fetches": self.fetches,
            "error": str(error) if error is not None else None,
        }
