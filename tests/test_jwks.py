"""The issuer's keys: a JWKS read as kube-apiserver publishes it, a discovery document checked, and
the cache that refetches once for an unknown ``kid``, once for everyone, at most once per interval."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flask_bindcar import jwks
from flask_bindcar.jwks import (
    Discovery,
    JWKSError,
    KeySet,
    KeyStore,
    KeysUnavailable,
    key_id,
    parse_discovery,
    parse_jwks,
    public_jwk,
)

ISSUER = "https://kubernetes.default.svc.cluster.local"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def new_key() -> rsa.RSAPrivateKey:
    """The key the issuer rotates to."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def document(*keys: Any) -> bytes:
    return json.dumps({"keys": [public_jwk(k.public_key()) for k in keys]}).encode()


# -- documents ---------------------------------------------------------------------------------


def test_kid_is_kube_apiservers_key_id(rsa_key: rsa.RSAPrivateKey) -> None:
    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_id(rsa_key.public_key()) == base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert len(key_id(rsa_key.public_key())) == 43


def test_public_jwk_is_what_kube_apiserver_publishes(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    rsa_jwk = public_jwk(rsa_key.public_key())
    assert list(rsa_jwk) == ["use", "kty", "kid", "alg", "n", "e"]
    assert rsa_jwk["use"] == "sig" and rsa_jwk["kty"] == "RSA" and rsa_jwk["alg"] == "RS256"
    assert rsa_jwk["kid"] == key_id(rsa_key.public_key()) and rsa_jwk["e"] == "AQAB" and len(rsa_jwk["n"]) == 342
    ec_jwk = public_jwk(ec_key.public_key())
    assert list(ec_jwk) == ["use", "kty", "kid", "crv", "alg", "x", "y"]
    assert (ec_jwk["crv"], ec_jwk["alg"], len(ec_jwk["x"]), len(ec_jwk["y"])) == ("P-256", "ES256", 43, 43)


def test_rsa_and_ec_keys_by_kid(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    keys = parse_jwks(document(rsa_key, ec_key))
    rsa_kid, ec_kid = key_id(rsa_key.public_key()), key_id(ec_key.public_key())
    assert keys.kids == (rsa_kid, ec_kid) and keys.skipped == 0
    [by_rsa_kid] = keys.get(rsa_kid)
    assert (by_rsa_kid.kid, by_rsa_kid.kty, by_rsa_kid.alg) == (rsa_kid, "RSA", "RS256")
    assert by_rsa_kid.key.public_numbers() == rsa_key.public_key().public_numbers()
    [by_ec_kid] = keys.get(ec_kid)
    assert (by_ec_kid.kty, by_ec_kid.alg) == ("EC", "ES256")
    assert by_ec_kid.key.public_numbers() == ec_key.public_key().public_numbers()
    assert keys.get(None) == keys.get("") == (by_rsa_kid, by_ec_kid)
    assert keys.get("made-up") == ()


def test_keys_of_other_types_and_uses_are_skipped(rsa_key: rsa.RSAPrivateKey) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 - the smallest Go takes
    tiny = public_jwk(small) | {"n": public_jwk(small)["n"][:40]}  # 240 bits: nothing Go verifies with
    others = [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"},
        {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k1"},
        public_jwk(rsa_key.public_key()) | {"use": "enc", "kid": "for-encryption"},
        public_jwk(rsa_key.public_key()) | {"key_ops": ["encrypt"], "kid": "ops"},
        tiny | {"kid": "tiny"},
    ]
    keys = parse_jwks({"keys": [*others, public_jwk(rsa_key.public_key()), public_jwk(small, "1024")]})
    assert keys.kids == (key_id(rsa_key.public_key()), "1024")
    assert keys.skipped == len(others)


NOT_A_KEY_SET = 'the JWKS document is not a JSON object with a "keys" list'
NOT_A_KEY = 'the JWKS document lists a key that is not a JSON object with a "kty"'
NO_USABLE_KEY = "the JWKS document has no RSA or EC signing key ({} of other types, uses or sizes)"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"<html>", "the JWKS document is not JSON"),
        (b'{"keys": NaN}', "the JWKS document is not JSON"),
        (b"[]", NOT_A_KEY_SET),
        (b'{"keys": {}}', NOT_A_KEY_SET),
        (b'{"issuer": "https://kubernetes.default.svc.cluster.local"}', NOT_A_KEY_SET),
        (b'{"keys": [1]}', NOT_A_KEY),
        (b'{"keys": [{"kid": "a"}]}', NOT_A_KEY),
        (
            b'{"keys": [{"kty": "RSA", "kid": 7, "n": "AQAB", "e": "AQAB"}]}',
            'the JWKS document lists a key whose "kid" is not a string',
        ),
        (
            b'{"keys": [{"kty": "RSA", "kid": "a", "n": "not base64!", "e": "AQAB"}]}',
            "RSA key 'a' has no valid n and e",
        ),
        (b'{"keys": [{"kty": "EC", "crv": "P-256", "kid": "a", "x": "AQAB"}]}', "EC key 'a' has no valid x and y"),
        (
            b'{"keys": [{"kty": "EC", "crv": "P-256", "kid": "a", "x": "AQAB", "y": "AQAB"}]}',
            "EC key 'a' is not a point of P-256",
        ),
        (b'{"keys": []}', NO_USABLE_KEY.format(0)),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', NO_USABLE_KEY.format(1)),
    ],
)
def test_a_document_that_is_not_a_key_set_is_refused(doc: bytes, message: str) -> None:
    with pytest.raises(JWKSError) as refused:
        parse_jwks(doc)
    assert str(refused.value) == message


def test_a_key_set_of_more_than_a_hundred_keys_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(JWKSError, match="lists 101 keys, more than 100"):
        parse_jwks({"keys": [public_jwk(rsa_key.public_key())] * 101})


def test_public_jwk_refuses_a_curve_kube_apiserver_does_not_sign_with() -> None:
    with pytest.raises(ValueError, match="secp256k1"):
        public_jwk(ec.generate_private_key(ec.SECP256K1()).public_key())


def test_discovery_names_the_issuer_and_an_https_jwks_uri() -> None:
    doc = {
        "issuer": ISSUER,
        "jwks_uri": "https://10.0.0.1:6443/openid/v1/jwks",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }
    assert parse_discovery(json.dumps(doc).encode(), ISSUER) == Discovery(
        ISSUER, "https://10.0.0.1:6443/openid/v1/jwks"
    )


NOT_HTTPS = "the discovery document's jwks_uri is not an https URL: {}"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"issuer": ISSUER + "/", "jwks_uri": "https://a/jwks"},
            f"the discovery document names '{ISSUER}/', not the issuer '{ISSUER}'",
        ),
        ({"jwks_uri": "https://a/jwks"}, f"the discovery document names no issuer, not the issuer '{ISSUER}'"),
        ({"issuer": ISSUER}, "the discovery document has no jwks_uri"),
        ({"issuer": ISSUER, "jwks_uri": "http://a/jwks"}, NOT_HTTPS.format("'http://a/jwks'")),
        ({"issuer": ISSUER, "jwks_uri": "https:///jwks"}, NOT_HTTPS.format("'https:///jwks'")),
        ([ISSUER], "the discovery document is not a JSON object"),
    ],
)
def test_a_discovery_document_of_another_issuer_or_without_https_is_refused(doc: Any, message: str) -> None:
    with pytest.raises(JWKSError) as refused:
        parse_discovery(json.dumps(doc), ISSUER)
    assert str(refused.value) == message


# -- the cache ---------------------------------------------------------------------------------


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetch:
    """A JWKS endpoint that counts its calls; ``documents`` are served in turn, the last one from then on."""

    def __init__(self, *documents: bytes | Exception) -> None:
        self.documents = list(documents)
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        answer = self.documents[0] if len(self.documents) == 1 else self.documents.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def store(fetch: Callable[[], bytes], clock: Clock, **kwargs: Any) -> KeyStore:
    return KeyStore(
        fetch, issuers=[ISSUER], source="https://kubernetes.default.svc/openid/v1/jwks", clock=clock, **kwargs
    )


def test_a_known_kid_is_answered_from_the_cache(rsa_key: rsa.RSAPrivateKey) -> None:
    fetch, clock = Fetch(document(rsa_key)), Clock()
    keys = store(fetch, clock)
    kid = key_id(rsa_key.public_key())
    assert keys.load().kids == (kid,)
    for _ in range(20):
        assert [k.kid for k in keys.get(kid)] == [kid]
        clock.now += 60
    assert fetch.calls == 1


def test_an_unknown_kid_refetches_once_and_finds_a_rotated_key(
    rsa_key: rsa.RSAPrivateKey, new_key: rsa.RSAPrivateKey
) -> None:
    fetch, clock = Fetch(document(rsa_key), document(rsa_key, new_key)), Clock()
    keys = store(fetch, clock)
    keys.load()
    clock.now += 30
    new_kid = key_id(new_key.public_key())
    assert [k.kid for k in keys.get(new_kid)] == [new_kid]
    assert fetch.calls == 2
    assert keys.get(key_id(rsa_key.public_key()))  # the old key is still accepted
    assert fetch.calls == 2


def test_made_up_kids_cost_one_fetch_per_interval(rsa_key: rsa.RSAPrivateKey) -> None:
    fetch, clock = Fetch(document(rsa_key)), Clock()
    keys = store(fetch, clock, min_refetch_interval=5.0)
    keys.load()
    clock.now += 10
    for n in range(100):
        assert keys.get(f"made-up-{n}") == ()
    assert fetch.calls == 2  # the load, then one refetch for the first made-up kid
    clock.now += 4.9
    assert keys.get("made-up-again") == ()
    assert fetch.calls == 2
    clock.now += 0.1
    assert keys.get("made-up-later") == ()
    assert fetch.calls == 3


def test_concurrent_unknown_kids_share_one_fetch(
    rsa_key: rsa.RSAPrivateKey, new_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one fetch is under way, every other caller with an unknown kid waits for it and asks
    no fetch of its own, even with no interval between fetches."""
    followers = 7
    waiting = threading.Semaphore(0)

    class CountedEvent(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waiting.release()
            return super().wait(timeout)

    class CountedFetch:
        def __init__(self) -> None:
            self.done = CountedEvent()

    monkeypatch.setattr(jwks, "_Fetch", CountedFetch)
    started, calls = threading.Event(), []

    def fetch() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            return document(rsa_key)
        started.set()
        for _ in range(followers):  # every follower is waiting on this fetch before it answers
            assert waiting.acquire(timeout=30)
        return document(rsa_key, new_key)

    keys = store(fetch, Clock(), min_refetch_interval=0.0)
    keys.load()
    new_kid = key_id(new_key.public_key())
    answers: list[tuple[str | None, ...]] = []

    def ask(kid: str) -> None:
        answers.append(tuple(k.kid for k in keys.get(kid)))

    leader = threading.Thread(target=ask, args=(new_kid,))
    leader.start()
    assert started.wait(30)
    threads = [threading.Thread(target=ask, args=(new_kid if n % 2 else f"made-up-{n}",)) for n in range(followers)]
    for t in threads:
        t.start()
    for t in [leader, *threads]:
        t.join(30)
    assert len(calls) == 2
    assert sorted(answers) == sorted([(new_kid,)] * (1 + followers // 2) + [()] * (followers - followers // 2))


def test_a_follower_waits_at_most_wait_timeout(rsa_key: rsa.RSAPrivateKey) -> None:
    release, started = threading.Event(), threading.Event()
    calls = []

    def fetch() -> bytes:
        calls.append(1)
        if len(calls) > 1:
            started.set()
            release.wait(30)
        return document(rsa_key)

    keys = store(fetch, Clock(), min_refetch_interval=0.0, wait_timeout=0.05)
    keys.load()
    leader = threading.Thread(target=keys.get, args=("made-up-1",))
    leader.start()
    try:
        assert started.wait(30)
        with pytest.raises(KeysUnavailable, match=r"not fetched within 0\.05s"):
            keys.get("made-up-2")
    finally:
        release.set()
        leader.join(30)


def test_keys_that_could_not_be_fetched_prove_nothing(rsa_key: rsa.RSAPrivateKey) -> None:
    secret = "a body the server sent back"
    fetch, clock = Fetch(document(rsa_key), RuntimeError(secret)), Clock()
    keys = store(fetch, clock)
    kid = key_id(rsa_key.public_key())
    keys.load()
    clock.now += 10
    with pytest.raises(KeysUnavailable) as unavailable:
        keys.get("made-up")
    assert str(unavailable.value) == "the last fetch of the signing keys failed: RuntimeError while fetching the JWKS"
    assert keys.get(kid)  # a kid the kept set has is still answered
    assert keys.describe()["error"] == "RuntimeError while fetching the JWKS"
    assert secret not in str(keys.describe())


def test_no_key_set_yet(rsa_key: rsa.RSAPrivateKey) -> None:
    keys = store(Fetch(KeysUnavailable("API server unreachable: connection refused")), Clock())
    with pytest.raises(KeysUnavailable, match=r"^API server unreachable: connection refused$"):
        keys.get(key_id(rsa_key.public_key()))
    with pytest.raises(KeysUnavailable, match=r"^API server unreachable: connection refused$"):
        keys.load()
    with pytest.raises(JWKSError, match='not a JSON object with a "keys" list'):
        store(Fetch(b"{}"), Clock()).load()


def test_a_set_past_max_age_is_refreshed_by_the_first_caller(
    rsa_key: rsa.RSAPrivateKey, new_key: rsa.RSAPrivateKey
) -> None:
    fetch, clock = Fetch(document(rsa_key, new_key), document(new_key)), Clock()
    keys = store(fetch, clock, max_age=3600)
    keys.load()
    old_kid = key_id(rsa_key.public_key())
    clock.now += 3599
    assert keys.get(old_kid) and fetch.calls == 1
    clock.now += 1
    assert keys.get(old_kid) == ()  # the issuer dropped the key: its tokens are refused, as kube-apiserver refuses them
    assert fetch.calls == 2


def test_describe_is_what_doctor_shows(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> None:
    clock = Clock()
    keys = store(Fetch(document(rsa_key, ec_key)), clock)
    assert keys.describe() == {
        "issuers": [ISSUER],
        "source": "https://kubernetes.default.svc/openid/v1/jwks",
        "keys": 0,
        "kids": [],
        "skipped": 0,
        "age": None,
        "fetched_at": None,
        "fetches": 0,
        "error": None,
    }
    keys.load()
    clock.now += 42
    described = keys.describe()
    assert described["keys"] == 2 and described["age"] == 42 and described["fetches"] == 1
    assert described["kids"] == [key_id(rsa_key.public_key()), key_id(ec_key.public_key())]
    assert isinstance(described["fetched_at"], float)


def test_a_key_set_is_a_key_source(rsa_key: rsa.RSAPrivateKey) -> None:
    keys: KeySet = parse_jwks(document(rsa_key))
    assert keys.get(key_id(rsa_key.public_key())) == keys.keys


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]
