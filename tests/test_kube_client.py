"""The Kubernetes client's side paths: where its configuration comes from, and answers it cannot use.

Each ends in the seed's 401 with a message saying why, never in a 500 and never quoting the token.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.config import incluster_config

from flask_bindcar import AuthConfig, AuthError
from flask_bindcar.authenticator import Authenticator
from flask_bindcar.errors import API_BAD_RESPONSE
from flask_bindcar.scrub import MAX_SERVER_TEXT, scrub
from flask_bindcar.testing import FakeCluster
from flask_bindcar.tokenreview import parse_review
from flask_bindcar.transport import call_api
from tests.conftest import WATCH, service_account, who
from tests.hostile_api import AUTHENTICATED, HostileAPI, http_reply, token_review

VALIDATION = "Token validation failed: "
API_FAILED = VALIDATION + "TokenReview API call failed: "
CLIENT_FAILED = VALIDATION + "Failed to create Kubernetes client: "
TOKEN = WATCH.add("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLW9mLXRoZS10ZXN0")


@pytest.fixture
def api() -> Iterator[HostileAPI]:
    with HostileAPI() as server:
        yield server


def tokenreview(**settings: Any) -> Authenticator:
    return Authenticator(AuthConfig.load({"mode": "tokenreview", **settings}, environ={}))


def message_of(auth: Authenticator, token: str = TOKEN) -> str:
    with pytest.raises(AuthError) as info:
        auth.authenticate(f"Bearer {token}")
    assert info.value.code == 401
    return info.value.message


# -- where the configuration comes from ----------------------------------------------------------


def test_in_cluster_configuration(cluster: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No kubeconfig, KUBERNETES_SERVICE_HOST set: the ServiceAccount mount, read by the official loader."""
    files = cluster.incluster_files(tmp_path / "serviceaccount")
    # The loader reads fixed paths under /var/run/secrets; point the official module at ours.
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(files.token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(files.ca_crt))
    for name, value in files.environ.items():
        monkeypatch.setenv(name, value)
    auth = tokenreview()
    identity = auth.authenticate(f"Bearer {cluster.token('dns-system', 'external-dns', audiences=['bindcar'])}")
    assert who(identity) == service_account("dns-system", "external-dns")
    assert auth.reviewer is not None and auth.reviewer.source == "in-cluster ServiceAccount"


def test_in_cluster_without_the_mount(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(AuthError) as info:
        tokenreview().authenticate(f"Bearer {TOKEN}")
    assert (info.value.message, info.value.reason) == (
        CLIENT_FAILED + "ConfigException: Service token file does not exist.",
        "client_failed",
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "ConfigException: Invalid kube-config. {path} file is empty"),
        ("{}\n", "ConfigException: Invalid kube-config file. Expected key current-context in {path}"),
        ("- a\n- b\n", "TypeError: list indices must be integers or slices, not str"),
        ("users: 5\n", "TypeError: 'int' object is not iterable"),
        # An exception of a type nobody expected: its text could quote the file, so only its type.
        ("current-context: a\ncontexts:\n- name: a\n  context: 7\n", "AttributeError while loading the configuration"),
    ],
    ids=["empty", "no-context", "a-list", "users-not-a-list", "context-not-a-map"],
)
def test_a_malformed_kubeconfig(tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    assert message_of(tokenreview(kubeconfig=str(path))) == CLIENT_FAILED + why.format(path=path)


# -- answers that are not a usable TokenReview ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>upstream connect error</html>", "HTTP 500 Internal"),
        ({"kind": "Status", "message": 5}, "HTTP 500 Internal"),
        (["a", "list"], "HTTP 500 Internal"),
        ({"kind": "Status", "message": "etcd is down"}, "HTTP 500 Internal: etcd is down"),
    ],
    ids=["html", "message-not-a-string", "not-an-object", "status-message"],
)
def test_an_error_answer_without_a_usable_message(api: HostileAPI, tmp_path: Path, body: Any, why: str) -> None:
    api.responder = lambda token: http_reply(500, body)
    assert message_of(tokenreview(kubeconfig=str(api.write_kubeconfig(tmp_path)))) == API_FAILED + why


@pytest.mark.parametrize(
    ("reason", "why"),
    [
        ("", "HTTP 500"),
        ("Internal Server Error", "HTTP 500 Internal Server Error"),
        ("R" * 100, "HTTP 500 " + "R" * 61 + "..."),  # a reason phrase is cut at 64 characters
    ],
    ids=["empty", "usual", "long"],
)
def test_the_reason_phrase_of_an_error_answer(api: HostileAPI, tmp_path: Path, reason: str, why: str) -> None:
    api.responder = lambda token: http_reply(500, b"", reason=reason)
    assert message_of(tokenreview(kubeconfig=str(api.write_kubeconfig(tmp_path)))) == API_FAILED + why


def test_the_granted_audiences_are_those_both_asked_and_answered(api: HostileAPI, tmp_path: Path) -> None:
    """A server answering with audiences nobody asked for grants none of them."""
    kubeconfig = str(api.write_kubeconfig(tmp_path))
    api.responder = lambda token: http_reply(201, token_review({**AUTHENTICATED, "audiences": ["other", "bindcar"]}))
    identity = tokenreview(kubeconfig=kubeconfig, audiences="bindcar,dns").authenticate(f"Bearer {TOKEN}")
    assert who(identity) == service_account("dns-system", "external-dns", ("bindcar",))
    api.responder = lambda token: http_reply(201, token_review({**AUTHENTICATED, "audiences": ["other"]}))
    with pytest.raises(AuthError) as info:
        tokenreview(kubeconfig=kubeconfig).authenticate(f"Bearer {TOKEN}")
    assert (info.value.message, info.value.reason) == (
        VALIDATION + "Token audience is not valid for bindcar",
        "audience",
    )


def test_who_the_api_server_vouched_for(api: HostileAPI, tmp_path: Path) -> None:
    """A user without a uid has none (not the text "None"); an answer naming nobody is refused."""
    kubeconfig = str(api.write_kubeconfig(tmp_path))
    user = {"username": "jane", "groups": ["devs"]}
    api.responder = lambda token: http_reply(201, token_review({**AUTHENTICATED, "user": user}))
    identity = tokenreview(kubeconfig=kubeconfig).authenticate(f"Bearer {TOKEN}")
    assert (identity.username, identity.uid, identity.groups, identity.extra, identity.namespace) == (
        "jane",
        None,
        ("devs",),
        {},
        None,
    )
    api.responder = lambda token: http_reply(201, token_review({**AUTHENTICATED, "user": {}}))
    with pytest.raises(AuthError) as info:
        tokenreview(kubeconfig=kubeconfig).authenticate(f"Bearer {TOKEN}")
    assert (info.value.message, info.value.reason) == (
        VALIDATION + "No user information in TokenReview response",
        "no_user",
    )


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not json", "response is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "response is nested too deeply"),
        (b"[]", "response is not a TokenReview with a status"),
        (b'{"kind": "TokenReview"}', "response is not a TokenReview with a status"),
        (b'{"status": 5}', "response is not a TokenReview with a status"),
        (b'{"status": {"audiences": "bindcar"}}', "status.audiences is not a list of strings"),
        (b'{"status": {"audiences": ["bindcar", 5]}}', "status.audiences is not a list of strings"),
        (b'{"status": {"audiences": {"bindcar": true}}}', "status.audiences is not a list of strings"),
    ],
)
def test_a_malformed_status(data: bytes, why: str) -> None:
    with pytest.raises(AuthError) as info:
        parse_review(data, TOKEN)
    assert (info.value.message, info.value.reason) == (API_FAILED + why, API_BAD_RESPONSE)


@pytest.mark.parametrize(
    ("status", "authenticated", "error", "audiences"),
    [
        ({}, False, None, ()),
        ({"audiences": None}, False, None, ()),
        ({"authenticated": "true", "error": ""}, False, None, ()),  # only JSON true authenticates
        ({"authenticated": False, "error": 5}, False, None, ()),
        ({"authenticated": False, "error": "[invalid bearer token]"}, False, "[invalid bearer token]", ()),
        ({"authenticated": True, "audiences": ["a", "b"]}, True, None, ("a", "b")),
        # The user of an answer that does not authenticate is neither read nor checked.
        ({"authenticated": False, "user": {"username": "jane", "groups": 5}}, False, None, ()),
    ],
)
def test_a_status_read_field_by_field(
    status: dict[str, Any], authenticated: bool, error: str | None, audiences: tuple[str, ...]
) -> None:
    outcome = parse_review(json.dumps(token_review(status)).encode(), TOKEN)
    assert (outcome.authenticated, outcome.error, outcome.user, outcome.audiences) == (
        authenticated,
        error,
        None,
        audiences,
    )


def failure_of(raised: Exception) -> AuthError:
    """What `call_api` makes of a call of the client that raises ``raised``."""

    def call() -> Any:
        raise raised

    with pytest.raises(AuthError) as info:
        call_api(
            call,
            host="https://127.0.0.1:1",
            timeout=1,
            secret=TOKEN,
            failed=lambda why, reason: AuthError.api_call_failed(why, reason=reason),
        )
    return info.value


def _api_exception(status: int | None) -> Exception:
    from kubernetes.client.exceptions import ApiException

    return ApiException(status=status, reason="Reason")


def _refused() -> Exception:
    from flask_bindcar.transport import ResponseRefused

    return ResponseRefused("response larger than 1 MiB")


def _cannot_connect() -> Exception:
    from urllib3.exceptions import NewConnectionError

    conn = "HTTPSConnection(host='127.0.0.1', port=1)"  # what the client's message starts with
    return NewConnectionError(conn, "Failed to establish a new connection: Connection refused")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raised", "why", "reason"),
    [
        (_refused, "response larger than 1 MiB", API_BAD_RESPONSE),
        (lambda: _api_exception(0), "HTTP 0 Reason", "api_unreachable"),  # the client's own status-less failure
        (lambda: _api_exception(None), "HTTP None Reason", "api_unreachable"),
        (lambda: _api_exception(1), "HTTP 1 Reason", "api_rejected"),
        (lambda: _api_exception(403), "HTTP 403 Reason", "api_rejected"),
        (lambda: _api_exception(499), "HTTP 499 Reason", "api_rejected"),
        (lambda: _api_exception(500), "HTTP 500 Reason", "api_server_error"),
        (
            _cannot_connect,
            "cannot connect to https://127.0.0.1:1: HTTPSConnection(host='127.0.0.1', port=1): "
            "Failed to establish a new connection: Connection refused",
            "api_unreachable",
        ),
        (lambda: TimeoutError("slow"), "no answer within 1s", "api_unreachable"),
        (lambda: OSError("broken pipe"), "OSError: broken pipe", "api_unreachable"),
    ],
)
def test_each_failure_of_the_client_has_its_reason(raised: Callable[[], Exception], why: str, reason: str) -> None:
    error = failure_of(raised())
    assert (error.message, error.reason) == (API_FAILED + why, reason)


def test_an_unexpected_exception_of_the_client(caplog: pytest.LogCaptureFixture) -> None:
    """A bug of the client ends in the documented answer, logged by type and stack, never its text."""

    text = "-".join(["quoting", "the", "server"])  # the logged stack shows the lines, not the values
    with caplog.at_level(logging.ERROR, logger="flask_bindcar"):
        error = failure_of(LookupError(text))
    assert (error.message, error.reason) == (API_FAILED + "LookupError", API_BAD_RESPONSE)
    [record] = caplog.records
    headline, first, *rest, last = record.getMessage().split("\n")
    assert headline == "unexpected LookupError in the Kubernetes client"
    assert all(line.startswith("  ") for line in rest)  # frames as traceback prints them, nothing between
    assert first.startswith('  File "') and os.path.join("flask_bindcar", "transport.py") + '", line ' in first
    assert last == "    raise raised"  # the stack, to the line that raised (in `failure_of`)
    assert text not in caplog.text


@pytest.mark.parametrize("name", ["kubernetes.client.rest", "kubernetes.client.api_client"])
def test_the_clients_loggers_drop_response_bodies(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Versions of the client that log a response body at DEBUG would log the token a TokenReview echoes."""
    client_logger = logging.getLogger(name)
    with caplog.at_level(logging.DEBUG, logger=name):
        client_logger.debug("response body: %s", TOKEN)
        client_logger.debug("Response Body %s", TOKEN)
        client_logger.debug("POST %s 201", "https://127.0.0.1:6443/apis/authentication.k8s.io/v1/tokenreviews")
    assert caplog.messages == ["POST https://127.0.0.1:6443/apis/authentication.k8s.io/v1/tokenreviews 201"]


def test_an_authenticated_answer_naming_nobody_has_no_user() -> None:
    for user in (None, {}, {"username": ""}, {"username": None, "groups": ["a"]}, ["system:anonymous"]):
        outcome = parse_review(json.dumps(token_review({"authenticated": True, "user": user})).encode(), TOKEN)
        assert (outcome.authenticated, outcome.user) == (True, None)


@pytest.mark.parametrize(
    ("length", "kept"),
    [(MAX_SERVER_TEXT, MAX_SERVER_TEXT), (MAX_SERVER_TEXT + 1, MAX_SERVER_TEXT - 3)],
    ids=["at-the-cap", "over-the-cap"],
)
def test_a_server_text_is_cut_only_past_the_cap(length: int, kept: int) -> None:
    text = "x" * length
    assert scrub(text, TOKEN) == ("x" * kept if kept == length else "x" * kept + "...")


@pytest.mark.parametrize(
    ("user", "why"),
    [
        ({"username": "jane", "uid": "u" * 1025}, "status.user holds a text over 1024 characters"),
        ({"username": "jane", "uid": TOKEN[10:30]}, "status.user holds part of the token"),
    ],
    ids=["uid-too-long", "uid-echoing-the-token"],
)
def test_the_uid_is_checked_like_every_text(user: dict[str, Any], why: str) -> None:
    with pytest.raises(AuthError) as info:
        parse_review(json.dumps(token_review({"authenticated": True, "user": user})).encode(), TOKEN)
    assert info.value.message == API_FAILED + why


def test_a_text_of_the_longest_length_is_accepted() -> None:
    user = {"username": "j" * 1024, "uid": "u" * 1024, "groups": ["g" * 1024]}
    outcome = parse_review(json.dumps(token_review({"authenticated": True, "user": user})).encode(), TOKEN)
    assert outcome.user == {"username": "j" * 1024, "uid": "u" * 1024, "groups": ("g" * 1024,), "extra": {}}


def test_echoes_are_found_whole_and_only_whole() -> None:
    # Two pieces of the token side by side are one redaction; a piece shorter than 16 stays.
    assert scrub(f"a {TOKEN[:16]}{TOKEN[30:46]} b", TOKEN) == "a [REDACTED] b"
    assert scrub(f"ends with {TOKEN[:15]}", TOKEN) == f"ends with {TOKEN[:15]}"


def test_without_a_token_to_scrub_the_error_is_kept_whole() -> None:
    outcome = parse_review(json.dumps(token_review({"error": "XXXX: not a token we know"})).encode())
    assert outcome.error == "XXXX: not a token we know"


# -- where the client's configuration comes from ------------------------------------------------


def test_the_kube_trio_configures_the_client(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    from flask_bindcar.apiserver import build_api_client

    files = fake_cluster.incluster_files(tmp_path / "serviceaccount")
    environ = {
        "KUBE_API_SERVER": fake_cluster.url + "/",  # a trailing slash would double the one of each path
        "KUBE_TOKEN_PATH": str(files.token),
        "KUBE_CA_CERT_PATH": str(files.ca_crt),
    }
    api_client, source = build_api_client(AuthConfig.load({"mode": "tokenreview"}, environ=environ))
    assert (api_client.configuration.host, source) == (fake_cluster.url, f"KUBE_API_SERVER {fake_cluster.url}")
    authorization = api_client.configuration.get_api_key_with_prefix("authorization")
    assert authorization == f"Bearer {fake_cluster.caller_token}"  # the scheme as RFC 6750 spells it


@pytest.mark.parametrize("missing", ["KUBE_TOKEN_PATH", "KUBE_CA_CERT_PATH"])
def test_a_missing_file_of_the_kube_trio_is_named(fake_cluster: FakeCluster, tmp_path: Path, missing: str) -> None:
    from flask_bindcar.apiserver import ClientBuildError, build_api_client

    files = fake_cluster.incluster_files(tmp_path / "serviceaccount")
    environ = {
        "KUBE_API_SERVER": fake_cluster.url,
        "KUBE_TOKEN_PATH": str(files.token),
        "KUBE_CA_CERT_PATH": str(files.ca_crt),
        missing: str(tmp_path / "nowhere"),
    }
    with pytest.raises(ClientBuildError) as info:
        build_api_client(AuthConfig.load({"mode": "tokenreview"}, environ=environ))
    assert str(info.value) == f"{missing} {tmp_path / 'nowhere'} does not exist"


def test_a_kubeconfig_list_uses_the_files_that_exist(fake_cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    from flask_bindcar.apiserver import build_api_client

    listed = os.pathsep.join([str(fake_kubeconfig.parent / "absent"), str(fake_kubeconfig)])  # as KUBECONFIG lists
    api_client, source = build_api_client(AuthConfig.load({"mode": "tokenreview"}, environ={"KUBECONFIG": listed}))
    assert (api_client.configuration.host, source) == (fake_cluster.url, f"kubeconfig {listed}")


def test_a_kubeconfig_yaml_cannot_even_read(tmp_path: Path) -> None:
    """A control character stops the YAML reader before any parsing: an error with no line to point at."""
    from flask_bindcar.apiserver import ClientBuildError, build_api_client

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(b"apiVersion: v1\x00\n")
    with pytest.raises(ClientBuildError) as info:
        build_api_client(AuthConfig.load({"mode": "tokenreview", "kubeconfig": str(kubeconfig)}, environ={}))
    assert str(info.value) == f"kubeconfig {kubeconfig} is not valid YAML"


def test_building_the_client_is_logged_with_its_source(
    fake_kubeconfig: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_bindcar.apiserver import ApiServerClient

    absent = tmp_path / "absent"
    settings = {"mode": "tokenreview", "kubeconfig": str(fake_kubeconfig)}
    with caplog.at_level(logging.INFO, logger="flask_bindcar"):
        built = ApiServerClient(AuthConfig.load(settings, environ={}))
        assert built.source is None  # nothing is built before the first review
        built.api()
        built.api()  # built once
        with pytest.raises(AuthError):
            ApiServerClient(AuthConfig.load({**settings, "kubeconfig": str(absent)}, environ={})).api()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"Kubernetes client created from kubeconfig {fake_kubeconfig}"),
        ("ERROR", f"cannot create the Kubernetes client: kubeconfig {absent} does not exist"),
    ]
    assert built.source == f"kubeconfig {fake_kubeconfig}"
