"""FakeCluster's ServiceAccount issuer: its signing keys, what it publishes of them, and the checks
kube-apiserver makes of a token's signature and times before it looks anything up.

kube-apiserver signs with one key (``--service-account-signing-key-file``) and verifies with every
key it is given (``--service-account-key-file``, repeatable): rotating is adding a key and signing
with it, while tokens of the old key stay valid until it is removed. It publishes the public halves
at ``/openid/v1/jwks``, each with its key ID (`flask_bindcar.jwks.key_id`, which its tokens carry
as ``kid``), and names that URL in its OpenID discovery document. Both are readable by every
ServiceAccount (the default ``system:service-account-issuer-discovery`` binding is to the group
``system:serviceaccounts``), not by other users, not anonymously. `Issuer` holds the keys the
stand-in signs and verifies with; `serve_documents` answers the two paths as kube-apiserver does.

The checks follow ``pkg/serviceaccount/jwt.go`` and go-jose (held to a real kube-apiserver by
tests/test_contract.py): the keys of the header's ``kid`` (every key without one; none is
``invalid signature, no keys found``), the signature with each of them, then, after the audiences
(the caller's), ``nbf``, ``exp`` and ``iat`` with go-jose's minute of leeway. This is written apart
from `flask_bindcar.jwtcheck` on purpose: the stand-in is what the pre-check is tested against.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flask_bindcar.jwks import key_id, public_jwk
from flask_bindcar.testing.handler import failure
from flask_bindcar.testing.interface import ISSUER
from flask_bindcar.testing.rbac import groups_of
from flask_bindcar.testing.state import ReviewError

if TYPE_CHECKING:
    from flask_bindcar.testing.handler import BaseHandler

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"
LEEWAY = 60
"""Seconds of clock skew kube-apiserver allows on ``nbf``, ``exp`` and ``iat`` (go-jose's ``DefaultLeeway``)."""
CACHE_CONTROL = "public, max-age=3600"
"""What kube-apiserver sends with both documents."""

_RSA_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
_EC_ALGORITHMS = ["ES256", "ES384", "ES512"]
_SIGNATURE_ONLY: Any = {
    "verify_signature": True,
    "verify_aud": False,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_iss": False,
}
"""The signature alone: the audiences and times are checked afterwards, in kube-apiserver's order."""
_EC_SIGNING = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def _algorithm(key: SigningKey) -> str:
    return "RS256" if isinstance(key, rsa.RSAPrivateKey) else _EC_SIGNING[key.curve.name]


class Issuer:
    """The stand-in's signing keys: the newest signs, all of them verify."""

    def __init__(self, url: str = ISSUER) -> None:
        self.url = url
        """The ``iss`` of its tokens and of its discovery document (``--service-account-issuer``)."""
        self._lock = threading.Lock()
        self.keys: tuple[SigningKey, ...] = (rsa.generate_private_key(public_exponent=65537, key_size=2048),)
        """Every key tokens are verified with, oldest first; the last one signs."""

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self, key: SigningKey | None = None) -> str:
        """Sign with ``key`` (default: a new RSA key) from now on, still verifying with the old
        ones, as kube-apiserver restarted with one more ``--service-account-key-file`` does. The
        new key's ``kid``."""
        new = key if key is not None else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self._lock:
            self.keys = (*self.keys, new)
        return key_id(new.public_key())

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT of ``claims`` signed with the newest key, its ``kid`` in the header."""
        key = self.signing_key
        return jwt.encode(claims, key, algorithm=_algorithm(key), headers={"kid": key_id(key.public_key())})

    def jwks(self) -> dict[str, Any]:
        """The document kube-apiserver serves at ``/openid/v1/jwks``."""
        return {"keys": [public_jwk(k.public_key()) for k in self.keys]}

    def discovery(self, url: str) -> dict[str, Any]:
        """The document kube-apiserver serves at ``/.well-known/openid-configuration``; ``url`` is
        its own address (kube-apiserver's external address when no ``--service-account-jwks-uri``)."""
        algorithms = sorted({_algorithm(k) for k in self.keys})
        return {
            "issuer": self.url,
            "jwks_uri": url + JWKS_PATH,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algorithms,
        }

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` once its signature verifies with a key of its ``kid``; `ReviewError`
        with kube-apiserver's text when no key has that ``kid`` or none verifies, `LookupError`
        when the token is not a JWS at all (kube-apiserver then tries its other authenticators)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise LookupError("not a JWS") from None
        keys = [k.public_key() for k in self.keys if not kid or key_id(k.public_key()) == kid]
        if not keys:
            raise ReviewError("[invalid bearer token, invalid signature, no keys found]")
        for key in keys:
            algorithms = _RSA_ALGORITHMS if isinstance(key, rsa.RSAPublicKey) else _EC_ALGORITHMS
            try:
                return jwt.decode(token, key, algorithms=algorithms, options=_SIGNATURE_ONLY)
            except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
                continue
            except jwt.PyJWTError as e:
                raise ReviewError(f"[invalid bearer token, {e}]") from None
        raise ReviewError("[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]")


def check_times(claims: dict[str, Any], now: float | None = None) -> None:
    """go-jose's ``Claims.ValidateWithLeeway`` as kube-apiserver calls it, after the audiences:
    ``nbf``, then ``exp``, then ``iat``, each with `LEEWAY`; `ReviewError` with its text."""
    now = time.time() if now is None else now
    if isinstance(claims.get("nbf"), int | float) and now + LEEWAY < claims["nbf"]:
        raise ReviewError("[invalid bearer token, service account token is not valid yet]")
    if isinstance(claims.get("exp"), int | float) and now - LEEWAY > claims["exp"]:
        raise ReviewError("[invalid bearer token, service account token has expired]")
    if isinstance(claims.get("iat"), int | float) and now + LEEWAY < claims["iat"]:
        raise ReviewError("[invalid bearer token, service account token is issued in the future]")


def _may_read(handler: BaseHandler, user: str, path: str) -> bool:
    """kube-apiserver's default ``system:service-account-issuer-discovery`` binding (the group
    ``system:serviceaccounts``), the stand-in's `admins`, or a rule given with ``allow(path=...)``."""
    cluster = handler.cluster
    groups = ["system:unauthenticated"] if user == "system:anonymous" else groups_of(user)
    if user in cluster.admins or "system:serviceaccounts" in groups:
        return True
    spec = {"user": user, "groups": groups, "nonResourceAttributes": {"path": path, "verb": "get"}}
    return bool(cluster.rbac.decide(spec)["allowed"])


def serve_documents(handler: BaseHandler) -> bool:
    """Answer a GET of the discovery document or the JWKS (with or without a trailing slash) as
    kube-apiserver does; False for any other path."""
    path = handler.path.split("?")[0]
    if path.rstrip("/") not in (DISCOVERY_PATH, JWKS_PATH):
        return False
    if handler._apply_fault():
        return True
    cluster = handler.cluster
    authorization = handler.headers.get("Authorization")
    user = "system:anonymous" if authorization is None else cluster._caller(authorization)
    if user is None:
        handler._send_json(401, failure(401, "Unauthorized", "Unauthorized"))
        return True
    if not _may_read(handler, user, path):
        message = f'forbidden: User "{user}" cannot get path "{path}"'
        handler._send_json(403, failure(403, "Forbidden", message, {}))
        return True
    if path.rstrip("/") == DISCOVERY_PATH:
        document, kind = cluster.issuer.discovery(cluster.url), "application/json"
    else:
        document, kind = cluster.issuer.jwks(), "application/jwk-set+json"
    data = json.dumps(document, separators=(",", ":")).encode()
    handler.send_response(200)
    handler.send_header("Cache-Control", CACHE_CONTROL)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    return True
