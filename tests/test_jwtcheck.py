"""A ServiceAccount token checked here as kube-apiserver 1.37 checks it, with the issuer's keys.

Each refusal carries the TokenReview's own ``status.error``, word for word; what only the API
server can say is left to it (None). The texts and the order of the checks are kube-apiserver's
(``pkg/serviceaccount/jwt.go`` and ``claims.go`` on go-jose v2.6.3); the last tests hold them to
FakeCluster and, with ``--cluster``, to a real kube-apiserver.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from flask_bindcar.errors import AuthError
from flask_bindcar.jwks import KeySet, KeysUnavailable, VerificationKey, key_id, parse_jwks, public_jwk
from flask_bindcar.jwtcheck import (
    CRYPTO_FAILURE,
    EXPIRED,
    ISSUED_IN_FUTURE,
    NO_KEYS,
    NOT_YET_VALID,
    Claims,
    LocalRejection,
    accepted_outcome,
    go_quote_list,
    user_info,
    verify,
)
from flask_bindcar.policy import identity_from_review
from flask_bindcar.testing import FakeCluster, RealCluster
from flask_bindcar.tokenreview import parse_review

ISSUER = "https://kubernetes.default.svc.cluster.local"
NOW = 1_800_000_000
AUDIENCES = ["bindcar"]
DELETE = object()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    """A key the issuer never published: what a forger signs with."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keys(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, p384_key: ec.EllipticCurvePrivateKey
) -> KeySet:
    return parse_jwks({"keys": [public_jwk(k.public_key()) for k in (rsa_key, ec_key, p384_key)]})


def claims(**changes: Any) -> dict[str, Any]:
    """What kube-apiserver puts in a token from the TokenRequest API, at `NOW`; ``DELETE`` drops a claim."""
    base: dict[str, Any] = {
        "aud": ["bindcar"],
        "exp": NOW + 3600,
        "iat": NOW,
        "iss": ISSUER,
        "jti": "6b3d5e1c-2f0a-4f6e-9c1d-1a2b3c4d5e6f",
        "kubernetes.io": {"namespace": "zones", "serviceaccount": {"name": "updater", "uid": "sa-uid-1"}},
        "nbf": NOW,
        "sub": "system:serviceaccount:zones:updater",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DELETE}


def bound(**refs: dict[str, str]) -> dict[str, Any]:
    """The ``kubernetes.io`` claim of a token bound to ``refs`` (``pod=``, ``node=``, ``secret=``)."""
    return {"namespace": "zones", "serviceaccount": {"name": "updater", "uid": "sa-uid-1"}, **refs}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(payload: dict[str, Any], key: Any, alg: str = "RS256", kid: str | None = "", **headers: Any) -> str:
    """A JWT signed with PyJWT; ``kid`` defaults to kube-apiserver's key ID of ``key``, None leaves it out."""
    if kid == "":
        kid = key_id(key.public_key())
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, **headers} if kid is not None else headers)


def signed_by_hand(
    header: dict[str, Any], payload: bytes, sign: Callable[[bytes], bytes], *, b64_payload: bool = True
) -> str:
    """A JWS whose signing input and signature are built here, for what PyJWT refuses to write."""
    raw_header = json.dumps(header).encode()
    signing_input = b64(raw_header).encode() + b"." + (b64(payload).encode() if b64_payload else payload)
    return f"{b64(raw_header)}.{b64(payload)}.{b64(sign(signing_input))}"


def check(token: str, keys: KeySet, audiences: list[str] = AUDIENCES, now: float = NOW) -> Claims | None:
    return verify(token, keys, [ISSUER], audiences, now=now)


def refusal(token: str, keys: KeySet, audiences: list[str] = AUDIENCES, now: float = NOW) -> str:
    """The TokenReview ``status.error`` the check answers ``token`` with."""
    with pytest.raises(LocalRejection) as refused:
        check(token, keys, audiences, now)
    return refused.value.error


# -- tokens that pass ------------------------------------------------------------------------------


def test_a_valid_token_gives_its_claims(rsa_key: rsa.RSAPrivateKey, keys: KeySet) -> None:
    token = mint(claims(aud=["vault", "bindcar"]), rsa_key)
    assert check(token, keys, ["elsewhere", "bindcar", "vault"]) == Claims(
        issuer=ISSUER,
        audiences=("vault", "bindcar"),
        granted=("bindcar", "vault"),
        namespace="zones",
        service_account="updater",
        service_account_uid="sa-uid-1",
        subject="system:serviceaccount:zones:updater",
        expires_at=NOW + 3600,
        not_before=NOW,
        issued_at=NOW,
        jti="6b3d5e1c-2f0a-4f6e-9c1d-1a2b3c4d5e6f",
        kid=key_id(rsa_key.public_key()),
        algorithm="RS256",
    )


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"])
def test_every_algorithm_go_jose_verifies(
    alg: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, p384_key: Any, keys: KeySet
) -> None:
    key = {"RS": rsa_key, "PS": rsa_key, "ES": p384_key if alg == "ES384" else ec_key}[alg[:2]]
    verified = check(mint(claims(), key, alg), keys)
    assert verified is not None and verified.algorithm == alg


def test_pss_with_any_salt_length(rsa_key: rsa.RSAPrivateKey, keys: KeySet) -> None:
    """Go's rsa.VerifyPSS, as go-jose calls it, takes any salt length; PyJWT writes only one."""
    scheme = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    token = signed_by_hand(
        {"alg": "PS256", "kid": key_id(rsa_key.public_key())},
        json.dumps(claims()).encode(),
        lambda data: rsa_key.sign(data, scheme, hashes.SHA256()),
    )
    assert check(token, keys) is not None


def test_a_token_without_kid_is_tried_with_every_key(ec_key: ec.EllipticCurvePrivateKey, keys: KeySet) -> None:
    assert check(mint(claims(), ec_key, "ES256", kid=None), keys) is not None


@pytest.mark.parametrize("part", [0, 1, 2])
def test_base64_with_stray_trailing_bits_reads_as_go_reads_it(
    part: int, rsa_key: rsa.RSAPrivateKey, keys: KeySet
) -> None:
    """Go decodes a last character with stray bits set and verifies over the canonical encoding."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    parts = mint(claims(), rsa_key).split(".")
    while len(parts[part]) % 4 not in (2, 3):  # pad the claims until the part has spare bits
        parts = mint(claims(pad="x" * len(parts[1])), rsa_key).split(".")
    spare = 4 if len(parts[part]) % 4 == 2 else 2
    last = alphabet.index(parts[part][-1])
    parts[part] = parts[part][:-1] + alphabet[last | ((1 << spare) - 1)]
    assert check(".".join(parts), keys) is not None


def test_an_unencoded_payload_b64_false(rsa_key: rsa.RSAPrivateKey, keys: KeySet) -> None:
    payload = json.dumps(claims()).encode()
    token = signed_by_hand(
        {"alg": "RS256", "kid": key_id(rsa_key.public_key()), "b64": False},
        payload,
        lambda data: rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
        b64_payload=False,
    )
    assert check(token, keys) is not None


@pytest.mark.parametrize(
    ("changes", "now"),
    [
        ({"exp": NOW - 60}, NOW),  # expired a minute ago: within go-jose's leeway
        ({"nbf": NOW + 60}, NOW),
        ({"iat": NOW + 60, "nbf": DELETE}, NOW),
        ({"exp": NOW - 61}, NOW - 1),  # exactly a minute past exp: go-jose refuses only after
    ],
)
def test_the_minute_of_leeway(changes: dict[str, Any], now: float, rsa_key: rsa.RSAPrivateKey, keys: KeySet) -> None:
    assert check(mint(claims(**changes), rsa_key), keys, now=now) is not None


def test_times_are_whole_seconds(rsa_key: rsa.RSAPrivateKey, keys: KeySet) -> None:
    """go-jose reads a NumericDate as float64 and truncates it: an exp of NOW + 0.9 is NOW."""
    assert refusal(mint(claims(exp=NOW + 0.9), rsa_key), keys, now=NOW + 60.5) == _rejected(EXPIRED)


# -- tokens the keys prove invalid -----------------------------------------------------------------


def _rejected(why: str) -> str:
    return f"[invalid bearer token, {why}]"


Case = Callable[[Any, Any, Any], str]
"""(rsa_key, ec_key, other_key) -> token"""

REFUSALS: dict[str, tuple[Case, str]] = {
    "forged: another key, no kid": (lambda r, e, o: mint(claims(), o, kid=None), CRYPTO_FAILURE),
    "forged: another key under the issuer's kid": (
        lambda r, e, o: mint(claims(), o, kid=key_id(r.public_key())),
        CRYPTO_FAILURE,
    ),
    "forged: a made-up kid": (lambda r, e, o: mint(claims(), o, kid="made-up"), NO_KEYS),
    "alg none": (
        lambda r, e, o: signed_by_hand(
            {"alg": "none", "kid": key_id(r.public_key())}, json.dumps(claims()).encode(), lambda d: b""
        ),
        CRYPTO_FAILURE,
    ),
    "HS256 keyed with the published RSA key": (
        lambda r, e, o: signed_by_hand(
            {"alg": "HS256", "kid": key_id(r.public_key())},
            json.dumps(claims()).encode(),
            lambda d: hmac.new(
                r.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
                d,
                hashlib.sha256,
            ).digest(),
        ),
        CRYPTO_FAILURE,
    ),
    "an EC signature under an RSA kid": (
        lambda r, e, o: mint(claims(), e, "ES256", kid=key_id(r.public_key())),
        CRYPTO_FAILURE,
    ),
    "a critical header go-jose does not know, validly signed": (
        lambda r, e, o: mint(claims(), r, crit=["exp"]),
        CRYPTO_FAILURE,
    ),
    "expired": (lambda r, e, o: mint(claims(exp=NOW - 61), r), EXPIRED),
    "not yet valid": (lambda r, e, o: mint(claims(nbf=NOW + 61), r), NOT_YET_VALID),
    "issued in the future": (lambda r, e, o: mint(claims(iat=NOW + 61, nbf=DELETE), r), ISSUED_IN_FUTURE),
    "another audience": (
        lambda r, e, o: mint(claims(aud=["other-service"]), r),
        'token audiences ["other-service"] is invalid for the target audiences ["bindcar"]',
    ),
    "the API server's audience": (
        lambda r, e, o: mint(claims(aud=ISSUER), r),
        f'token audiences ["{ISSUER}"] is invalid for the target audiences ["bindcar"]',
    ),
    "audiences quoted as Go quotes them": (
        lambda r, e, o: mint(claims(aud=['a"b', "tab\there", "é"]), r),
        'token audiences ["a\\"b" "tab\\there" "é"] is invalid for the target audiences ["bindcar"]',
    ),
    "audiences before times: expired, for another audience": (
        lambda r, e, o: mint(claims(exp=NOW - 3600, aud=["other"]), r),
        'token audiences ["other"] is invalid for the target audiences ["bindcar"]',
    ),
    "nbf before exp": (lambda r, e, o: mint(claims(nbf=NOW + 120, exp=NOW - 120), r), NOT_YET_VALID),
    "the signature before the times": (lambda r, e, o: mint(claims(exp=NOW - 3600), o, kid=None), CRYPTO_FAILURE),
    "an ISS claim is Go's iss": (
        lambda r, e, o: mint({k: v for k, v in claims(ISS=ISSUER).items() if k != "iss"}, o, kid=None),
        CRYPTO_FAILURE,
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_the_keys_prove_invalid_is_refused_with_the_tokenreviews_text(
    case: str, rsa_key: Any, ec_key: Any, other_key: Any, keys: KeySet
) -> None:
    make, why = REFUSALS[case]
    assert refusal(make(rsa_key, ec_key, other_key), keys) == _rejected(why)


def test_a_rejection_reads_as_the_tokenreview_would(rsa_key: rsa.RSAPrivateKey, keys: KeySet) -> None:
    token = mint(claims(exp=NOW - 3600), rsa_key)
    with pytest.raises(LocalRejection) as refused:
        check(token, keys)
    assert (refused.value.why, refused.value.reason) == (EXPIRED, "expired")
    outcome = refused.value.outcome(token)
    assert (outcome.authenticated, outcome.error, outcome.user, outcome.audiences) == (
        False,
        "[invalid bearer token, service account token has expired]",
        None,
        (),
    )


# -- what only the API server can say ---------------------------------------------------------------


def _token(r: Any, payload: dict[str, Any] | bytes, **headers: Any) -> str:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    header = {"alg": "RS256", "kid": key_id(r.public_key()), **headers}
    return signed_by_hand(header, raw, lambda d: r.sign(d, padding.PKCS1v15(), hashes.SHA256()))


UNDECIDED: dict[str, Callable[[Any], str]] = {
    "not a JWT": lambda r: "invalid-token",
    "two parts": lambda r: "a.b",
    "four parts": lambda r: mint(claims(), r) + ".x",
    "another issuer": lambda r: mint(claims(iss="https://issuer.invalid"), r),
    "no issuer": lambda r: mint(claims(iss=DELETE), r),
    "the legacy Secret-token issuer": lambda r: mint(claims(iss="kubernetes/serviceaccount"), r),
    "an issuer that is not a string": lambda r: _token(r, claims(iss=[ISSUER])),
    "a later ISS naming another issuer (Go keeps the last)": lambda r: _token(
        r, b'{"iss": "%s", "ISS": "https://issuer.invalid"}' % ISSUER.encode()
    ),
    "a payload that is not JSON": lambda r: _token(r, b"{not json"),
    "a payload with NaN": lambda r: _token(r, b'{"iss": "%s", "exp": NaN}' % ISSUER.encode()),
    "a payload that is not an object": lambda r: _token(r, b'["%s"]' % ISSUER.encode()),
    "padding in a part": lambda r: mint(claims(), r) + "==",
    "whitespace": lambda r: mint(claims(), r).replace(".", ". ", 1),
    "an embedded jwk": lambda r: _token(r, claims(), jwk=public_jwk(r.public_key())),
    "an x5c chain": lambda r: _token(r, claims(), x5c=["MIIB"]),
    "a kid that is not a string": lambda r: _token(r, claims(), kid=7),
    "a crit that is not a list of names": lambda r: _token(r, claims(), crit="exp"),
    "no aud: the API server's own audiences": lambda r: mint(claims(aud=DELETE), r),
    "an empty aud": lambda r: mint(claims(aud=[]), r),
    "aud null": lambda r: mint(claims(aud=None), r),
    "exp not a number": lambda r: mint(claims(exp="soon"), r),
    "exp past int64": lambda r: mint(claims(exp=1e30), r),
    "a claim named in another case": lambda r: mint({**claims(), "Sub": "x"}, r),
    "no kubernetes.io claim": lambda r: mint(claims(**{"kubernetes.io": DELETE}), r),
    "no ServiceAccount uid": lambda r: mint(
        claims(**{"kubernetes.io": {"namespace": "zones", "serviceaccount": {"name": "u"}}}), r
    ),
    "bound to a webhook configuration": lambda r: mint(
        claims(**{"kubernetes.io": bound(validatingwebhookconfiguration={"name": "w", "uid": "w-uid"})}), r
    ),
    "bound to a pod without uid": lambda r: mint(claims(**{"kubernetes.io": bound(pod={"name": "p"})}), r),
}


@pytest.mark.parametrize("case", list(UNDECIDED))
def test_what_only_the_api_server_can_say_is_left_to_it(case: str, rsa_key: rsa.RSAPrivateKey, keys: KeySet) -> None:
    assert check(UNDECIDED[case](rsa_key), keys) is None


def test_keys_that_cannot_be_had_are_not_an_answer(rsa_key: rsa.RSAPrivateKey) -> None:
    class Down:
        def get(self, kid: str | None) -> tuple[VerificationKey, ...]:
            raise KeysUnavailable("the API server is unreachable")

    with pytest.raises(KeysUnavailable, match="unreachable"):
        verify(mint(claims(), rsa_key), Down(), [ISSUER], AUDIENCES, now=NOW)
    with pytest.raises(ValueError, match="audiences"):
        verify(mint(claims(), rsa_key), Down(), [ISSUER], [], now=NOW)


def test_every_trusted_issuer_is_accepted(rsa_key: rsa.RSAPrivateKey, keys: KeySet) -> None:
    """kube-apiserver accepts every --service-account-issuer during an issuer migration."""
    new = "https://oidc.example.com/cluster-1"
    token = mint(claims(iss=new), rsa_key)
    assert verify(token, keys, [ISSUER, new], AUDIENCES, now=NOW) is not None
    assert verify(token, keys, [ISSUER], AUDIENCES, now=NOW) is None


def test_go_quote_list_is_gos_percent_q() -> None:
    """Expected strings printed by Go 1.26's fmt.Printf("%q", []string{...})."""
    texts = [
        "bindcar",
        'a"b\\c',
        "tab\there",
        "nl\n",
        "\x00\x1b\x7f",
        "é ü 日本",
        "\u200b\u00a0\u2028",
        "\U0001f600",
        "\U000e0001",
        " ",
    ]
    expected = (
        r'["bindcar" "a\"b\\c" "tab\there" "nl\n" "\x00\x1b\x7f" "é ü 日本" "\u200b\u00a0\u2028" "😀" "\U000e0001" " "]'
    )
    assert go_quote_list(texts) == expected
    assert go_quote_list([]) == "[]"


# -- the identity a TokenReview would give ----------------------------------------------------------

CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"
GROUPS = ("system:serviceaccounts", "system:serviceaccounts:zones", "system:authenticated")


@pytest.mark.parametrize(
    ("private", "jti", "extra"),
    [
        (bound(), "j-1", {CREDENTIAL_ID: ("JTI=j-1",)}),
        (bound(), DELETE, {}),
        (
            bound(pod={"name": "web-0", "uid": "pod-uid"}, node={"name": "node-a", "uid": "node-uid"}),
            "j-1",
            {
                "authentication.kubernetes.io/pod-name": ("web-0",),
                "authentication.kubernetes.io/pod-uid": ("pod-uid",),
                CREDENTIAL_ID: ("JTI=j-1",),
                "authentication.kubernetes.io/node-name": ("node-a",),
                "authentication.kubernetes.io/node-uid": ("node-uid",),
            },
        ),
        (
            bound(pod={"name": "web-0", "uid": "pod-uid"}, node={"name": "node-a"}),
            DELETE,
            {
                "authentication.kubernetes.io/pod-name": ("web-0",),
                "authentication.kubernetes.io/pod-uid": ("pod-uid",),
                "authentication.kubernetes.io/node-name": ("node-a",),
            },
        ),
        (
            bound(node={"name": "node-a", "uid": "node-uid"}),
            DELETE,
            {
                "authentication.kubernetes.io/node-name": ("node-a",),
                "authentication.kubernetes.io/node-uid": ("node-uid",),
            },
        ),
        (bound(secret={"name": "s", "uid": "secret-uid"}), "j-1", {CREDENTIAL_ID: ("JTI=j-1",)}),
    ],
    ids=["plain", "no jti", "pod and node", "node without uid", "node-bound", "secret-bound"],
)
def test_user_info_is_kube_apiservers(
    private: dict[str, Any], jti: Any, extra: dict[str, tuple[str, ...]], rsa_key: rsa.RSAPrivateKey, keys: KeySet
) -> None:
    verified = check(mint(claims(jti=jti, **{"kubernetes.io": private}), rsa_key), keys)
    assert verified is not None
    assert user_info(verified) == {
        "username": "system:serviceaccount:zones:updater",
        "uid": "sa-uid-1",
        "groups": GROUPS,
        "extra": extra,
    }


def _fake_keys(cluster: FakeCluster) -> KeySet:
    """FakeCluster's signing keys, from its ``/openid/v1/jwks`` as kube-apiserver publishes them."""
    response = requests.get(
        cluster.url + "/openid/v1/jwks",
        headers={"Authorization": f"Bearer {cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/jwk-set+json"
    return parse_jwks(response.content)


def _review(cluster: FakeCluster | RealCluster, token: str, audiences: list[str]) -> bytes:
    """The TokenReview's raw answer, as flask-bindcar's client reads it."""
    response = requests.post(
        cluster.url + "/apis/authentication.k8s.io/v1/tokenreviews",
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        },
        headers={"Authorization": f"Bearer {cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.content


@pytest.mark.parametrize("pod", [None, "web-0"])
def test_the_identity_is_the_one_fakeclusters_tokenreview_gives(fake_cluster: FakeCluster, pod: str | None) -> None:
    token = fake_cluster.token("zones", "updater", audiences=["vault", "bindcar"], pod=pod)
    requested = ["bindcar", "vault"]
    verified = verify(token, _fake_keys(fake_cluster), [ISSUER], requested)
    assert verified is not None
    reviewed = parse_review(_review(fake_cluster, token, requested), token)
    assert reviewed.authenticated and verified.granted == reviewed.audiences == ("bindcar", "vault")
    assert user_info(verified) == reviewed.user
    mine, theirs = (identity_from_review(o, tuple(requested)) for o in (accepted_outcome(verified), reviewed))
    for name in mine.__dataclass_fields__:
        assert getattr(mine, name) == getattr(theirs, name), name
    assert mine == theirs


@pytest.mark.parametrize(
    "make",
    [
        lambda c: c.token("zones", "updater", audiences=["bindcar"], expires_in=-120),
        lambda c: c.token("zones", "updater", audiences=["other-service"]),
        lambda c: jwt.encode(
            jwt.decode(c.token("zones", "updater", audiences=["bindcar"]), options={"verify_signature": False}),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
        ),
    ],
    ids=["expired", "another audience", "forged"],
)
def test_a_local_refusal_is_the_refusal_fakeclusters_tokenreview_gives(
    fake_cluster: FakeCluster, make: Callable[[FakeCluster], str]
) -> None:
    token = make(fake_cluster)
    with pytest.raises(LocalRejection) as refused:
        verify(token, _fake_keys(fake_cluster), [ISSUER], AUDIENCES)
    reviewed = parse_review(_review(fake_cluster, token, AUDIENCES), token)
    assert refused.value.outcome(token) == reviewed
    errors = []
    for outcome in (refused.value.outcome(token), reviewed):
        with pytest.raises(AuthError) as failed:
            identity_from_review(outcome, tuple(AUDIENCES))
        errors.append((failed.value.message, failed.value.reason, failed.value.code))
    assert errors[0] == errors[1]


# -- against a real kube-apiserver (pytest --cluster) ------------------------------------------------


REAL_CASES: dict[str, Callable[[RealCluster, dict[str, Any]], str]] = {
    "valid": lambda c, jwks: c.token("zones", "updater", audiences=["bindcar"]),
    "bound to a pod": lambda c, jwks: c.token("zones", "updater", audiences=["vault", "bindcar"], pod="web-0"),
    "expired": lambda c, jwks: c.token("zones", "updater", audiences=["bindcar"], expires_in=-120),
    "expired within the leeway": lambda c, jwks: c.token("zones", "updater", audiences=["bindcar"], expires_in=-30),
    "not yet valid": lambda c, jwks: c.token("zones", "updater", audiences=["bindcar"], not_before=time.time() + 3600),
    "not yet valid within the leeway": lambda c, jwks: c.token(
        "zones", "updater", audiences=["bindcar"], not_before=time.time() + 30
    ),
    "another audience": lambda c, jwks: c.token("zones", "updater", audiences=["other-service"]),
    "expired, for another audience": lambda c, jwks: c.token("zones", "updater", audiences=["other"], expires_in=-120),
    "forged without kid": lambda c, jwks: _forge(c, None),
    "forged under the cluster's kid": lambda c, jwks: _forge(c, jwks["keys"][0]["kid"]),
    "forged under a made-up kid": lambda c, jwks: _forge(c, "made-up"),
    "alg none": lambda c, jwks: signed_by_hand(
        {"alg": "none", "kid": jwks["keys"][0]["kid"]}, _genuine_payload(c), lambda d: b""
    ),
    "another issuer": lambda c, jwks: mint(
        claims(iss="https://issuer.invalid"), rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ),
}


def _genuine_payload(cluster: RealCluster) -> bytes:
    return base64.urlsafe_b64decode(cluster.token("zones", "updater", audiences=["bindcar"]).split(".")[1] + "==")


def _forge(cluster: RealCluster, kid: str | None) -> str:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return mint(json.loads(_genuine_payload(cluster)), forger, kid=kid)


@pytest.mark.cluster
def test_the_check_answers_as_a_real_kube_apiserver(real_cluster: RealCluster) -> None:
    """Every answer the check gives is the real TokenReview's: the same refusal text, or (for a
    token that passes) the same user and audiences. The keys come from the API server's own JWKS,
    read with the caller's ServiceAccount token, as flask-bindcar reads them."""
    response = requests.get(
        real_cluster.url + "/openid/v1/jwks",
        headers={"Authorization": f"Bearer {real_cluster.caller_token}"},
        verify=str(real_cluster.ca_path),
        timeout=30,
    )
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/jwk-set+json"
    published = response.json()
    keys = parse_jwks(published)
    requested = ["bindcar", "vault"]
    seen: dict[str, str] = {}
    for name, make in REAL_CASES.items():
        token = make(real_cluster, published)
        reviewed = parse_review(_review(real_cluster, token, requested), token)
        try:
            verified = verify(token, keys, [ISSUER], requested)
        except LocalRejection as e:
            assert e.outcome(token) == reviewed, name
            seen[name] = e.reason
            continue
        if verified is None:
            assert not reviewed.authenticated, name
            seen[name] = "undecided"
            continue
        assert reviewed.authenticated and accepted_outcome(verified) == reviewed, name
        seen[name] = "accepted"
    assert seen == {
        "valid": "accepted",
        "bound to a pod": "accepted",
        "expired": "expired",
        "expired within the leeway": "accepted",
        "not yet valid": "not_yet_valid",
        "not yet valid within the leeway": "accepted",
        "another audience": "audience",
        "expired, for another audience": "audience",
        "forged without kid": "signature",
        "forged under the cluster's kid": "signature",
        "forged under a made-up kid": "no_key",
        "alg none": "signature",
        "another issuer": "undecided",
    }


def test_the_whitespace_check_is_str_isspace() -> None:
    """The issuer step leaves a token with any whitespace to the API server; the check runs in C
    (a regular expression) and must mean exactly what ``str.isspace`` means, over all of Unicode."""
    import sys

    from flask_bindcar.jwtcheck import _WHITESPACE

    assert [c for c in map(chr, range(sys.maxunicode + 1)) if bool(_WHITESPACE.search(c)) != c.isspace()] == []
