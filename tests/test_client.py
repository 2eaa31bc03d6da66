"""The calling side: `ServiceAccountTokenAuth` sends the projected token and follows its rotation.

With ``responses`` faking the API, then end to end: the example client against the example app
under gunicorn, with tokens from FakeCluster.
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import responses
import yaml

from example_app import client as example_client
from flask_bindcar.client import DEFAULT_TOKEN_PATH, REREAD_AFTER, ServiceAccountTokenAuth, TokenFileError
from flask_bindcar.testing import FakeCluster

URL = "https://bindcar.dns-system.svc:8080/api/v1/zones"
HTTP_URL = "http://bindcar.dns-system.svc:8080/api/v1/zones"


def make_token(subject: str, audiences: list[str] | None = None) -> str:
    """A JWT shaped like a projected ServiceAccount token (only the API side would verify it)."""
    claims = {"aud": audiences or ["bindcar"], "sub": f"system:serviceaccount:dns-system:{subject}"}
    return jwt.encode(claims, "a signing key that nobody checks here", algorithm="HS256")


class ProjectedVolume:
    """A token file laid out as the kubelet writes a projected volume, and rotated as it does.

    The kubelet writes each version into a fresh timestamped folder, points ``..data`` at it with
    an atomic rename, and ``<path>`` is a symlink through ``..data``.
    """

    def __init__(self, directory: Path, name: str = "bindcar"):
        self.directory = directory
        self.name = name
        self.versions = 0
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).symlink_to(Path("..data") / name)

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def write(self, token: str) -> None:
        self.versions += 1
        version = self.directory / f"..2026_01_01_00_00_{self.versions:02d}"
        version.mkdir()
        (version / self.name).write_text(token)
        link = self.directory / "..data_tmp"
        link.symlink_to(version.name)
        link.replace(self.directory / "..data")


@pytest.fixture
def volume(tmp_path: Path) -> ProjectedVolume:
    return ProjectedVolume(tmp_path / "tokens")


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        mock.get(URL, json={"zones": []})
        yield mock


def sent(api: responses.RequestsMock) -> list[str | None]:
    return [call.request.headers.get("Authorization") for call in api.calls]


def test_the_default_path_is_the_documented_projected_volume() -> None:
    assert DEFAULT_TOKEN_PATH == "/var/run/secrets/tokens/bindcar"
    assert ServiceAccountTokenAuth().path == Path(DEFAULT_TOKEN_PATH)


def test_sends_the_token_as_a_bearer_credential(api: responses.RequestsMock, volume: ProjectedVolume) -> None:
    token = make_token("external-dns")
    volume.write(token + "\n")  # the kubelet writes no newline, but a hand-made file often ends with one

    response = requests.get(URL, auth=ServiceAccountTokenAuth(volume.path), timeout=5)

    assert response.status_code == 200
    assert sent(api) == [f"Bearer {token}"]


def test_a_rotation_mid_session_is_picked_up(api: responses.RequestsMock, volume: ProjectedVolume) -> None:
    first, second = make_token("external-dns"), make_token("external-dns")
    volume.write(first)
    session = requests.Session()
    session.auth = ServiceAccountTokenAuth(volume.path)

    session.get(URL, timeout=5)
    session.get(URL, timeout=5)
    volume.write(second)  # the kubelet rotates the token
    session.get(URL, timeout=5)

    assert sent(api) == [f"Bearer {first}", f"Bearer {first}", f"Bearer {second}"]


def test_a_file_rewritten_in_place_is_read_again_when_its_mtime_or_size_changes(
    api: responses.RequestsMock, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    path.write_text("A" * 40)
    stat = path.stat()
    auth = ServiceAccountTokenAuth(path)
    requests.get(URL, auth=auth, timeout=5)

    path.write_text("B" * 40)  # same inode, same size, a newer mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    requests.get(URL, auth=auth, timeout=5)
    path.write_text("C" * 41)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # only the size changed
    requests.get(URL, auth=auth, timeout=5)

    assert sent(api) == ["Bearer " + "A" * 40, "Bearer " + "B" * 40, "Bearer " + "C" * 41]


def test_a_rewrite_that_keeps_inode_mtime_and_size_is_read_after_reread_after_seconds(
    api: responses.RequestsMock, tmp_path: Path
) -> None:
    """A writer that rewrites in place within the filesystem's mtime granularity (or restores the
    mtime, as ``cp -p`` and ``rsync -t`` do) with a token of the same length changes nothing the
    stamp sees; the file is read again anyway once REREAD_AFTER seconds passed since the last read."""
    assert REREAD_AFTER == 1.0
    path = tmp_path / "token"
    path.write_text("A" * 40)
    before = path.stat()
    auth = ServiceAccountTokenAuth(path)
    requests.get(URL, auth=auth, timeout=5)

    path.write_text("B" * 40)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    time.sleep(REREAD_AFTER + 0.05)
    requests.get(URL, auth=auth, timeout=5)

    assert sent(api) == ["Bearer " + "A" * 40, "Bearer " + "B" * 40]


def test_an_unchanged_file_read_again_warns_and_logs_only_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading the same content again (after REREAD_AFTER) is not a new token: no second debug line
    and no second audience warning."""
    path = tmp_path / "token"
    token = make_token("external-dns", ["vault"])
    path.write_text(token)
    auth = ServiceAccountTokenAuth(path, audience_hint="bindcar")
    with caplog.at_level(logging.DEBUG, logger="flask_bindcar.client"):
        assert auth.token() == token
        time.sleep(REREAD_AFTER + 0.05)
        assert auth.token() == token
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", f"Read the ServiceAccount token from {path} ({len(token)} bytes)"),
        (
            "WARNING",
            f"The token in {path} is for vault, not bindcar: the API will refuse it. Set audience: bindcar in the "
            "pod's serviceAccountToken projection.",
        ),
    ]


def test_a_missing_file_is_a_clear_error_before_any_request(tmp_path: Path) -> None:
    path = tmp_path / "tokens" / "bindcar"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        api.get(URL, json={"zones": []})
        with pytest.raises(TokenFileError) as missing:
            requests.get(URL, auth=ServiceAccountTokenAuth(path), timeout=5)
        assert len(api.calls) == 0
    assert str(missing.value) == (
        f"No ServiceAccount token at {path}: mount a projected serviceAccountToken volume there "
        "(audience: bindcar), or pass ServiceAccountTokenAuth(path=...)"
    )
    assert isinstance(missing.value, requests.RequestException)  # caught where other request errors are


def test_the_missing_file_error_names_the_audience_hint(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match=r"\(audience: dns-api\)"):
        ServiceAccountTokenAuth(tmp_path / "nothing", audience_hint="dns-api").token()


def test_an_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n")
    with pytest.raises(TokenFileError) as empty:
        ServiceAccountTokenAuth(path).token()
    assert str(empty.value) == f"The ServiceAccount token file {path} is empty"


def test_a_token_for_another_audience_is_named_in_a_warning(
    volume: ProjectedVolume, caplog: pytest.LogCaptureFixture
) -> None:
    volume.write(make_token("external-dns", ["https://kubernetes.default.svc"]))
    auth = ServiceAccountTokenAuth(volume.path, audience_hint="bindcar")
    with caplog.at_level(logging.WARNING, logger="flask_bindcar.client"):
        auth.token()
        auth.token()  # once per token, not per request
    assert [r.getMessage() for r in caplog.records] == [
        f"The token in {volume.path} is for https://kubernetes.default.svc, not bindcar: the API will refuse it. "
        "Set audience: bindcar in the pod's serviceAccountToken projection."
    ]


def test_the_token_never_reaches_a_log_or_a_repr(
    api: responses.RequestsMock, volume: ProjectedVolume, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = [make_token("external-dns"), make_token("external-dns", ["other"])]
    auth = ServiceAccountTokenAuth(volume.path, audience_hint="bindcar")
    with caplog.at_level(logging.DEBUG):
        for token in tokens:
            volume.write(token)
            requests.get(URL, auth=auth, timeout=5)
    assert f"Read the ServiceAccount token from {volume.path}" in caplog.text
    for token in tokens:
        assert token not in caplog.text
        assert token not in repr(auth)
    assert repr(auth) == f"ServiceAccountTokenAuth(path={str(volume.path)!r}, audience_hint='bindcar')"


SECRET = "s3cr3t"
"""In every malformed file below; none of it may appear in what the error carries."""


def multiline(path: Path) -> str:
    return f"The ServiceAccount token file {path} holds more than one line: it must hold a single bearer token"


def not_a_token(path: Path) -> str:
    return (
        f"The ServiceAccount token file {path} is not one bearer token: expected letters, digits, -._~+/ and "
        "trailing = only"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"tokA-s3cr3t-1\r\ntokB-s3cr3t-2", multiline),  # two tokens pasted together by an editor with CRLF
        (b"tokA-s3cr3t-1\ntokB-s3cr3t-2\n", multiline),
        (b"tokA-s3cr3t-1\rtokB-s3cr3t-2", multiline),
        (b"\ntokA-s3cr3t-1\n\ntokB-s3cr3t-2\n\n", multiline),
        (b"tokA-s3cr3t-1 tokB-s3cr3t-2", not_a_token),
        (b"tokA-s3cr3t-1\ttokB-s3cr3t-2", not_a_token),
        (b"tokA-s3cr3t-1\x0btokB-s3cr3t-2", not_a_token),
        (b"tokA-s3cr3t-1\x00", not_a_token),
        ("tokA-s3cr3t-\u00e9".encode(), not_a_token),
        (b"\xef\xbb\xbftokA-s3cr3t-1", not_a_token),  # a UTF-8 byte order mark
        (b"\xfftokA-s3cr3t-1", not_a_token),  # not UTF-8 at all
        (b"tokA=s3cr3t", not_a_token),  # "=" only at the end
        (b"Bearer tokA-s3cr3t-1", not_a_token),  # the scheme is the helper's to add
    ],
)
def test_a_file_that_is_not_one_bearer_token_raises_without_its_content(
    tmp_path: Path, content: bytes, message: Callable[[Path], str]
) -> None:
    """Sent as it was, http.client raised ``ValueError("Invalid header value b'Bearer <the file>'")``
    (no mock here: requests' own transport); a logged traceback carried the whole token."""
    path = tmp_path / "token"
    path.write_bytes(content)

    with pytest.raises(TokenFileError) as info:
        requests.get("http://127.0.0.1:9/api/v1/zones", auth=ServiceAccountTokenAuth(path), timeout=5)

    e = info.value
    assert str(e) == message(path)
    assert e.args == (message(path),)
    assert repr(e) == f"TokenFileError({message(path)!r})"
    assert isinstance(e, requests.RequestException)
    assert e.__cause__ is None
    assert e.__context__ is None
    assert SECRET not in "".join(traceback.format_exception(e))
    # Nor in any frame's locals below the test, where an error reporter that records locals looks.
    tb = e.__traceback__.tb_next if e.__traceback__ else None
    frames = 0
    while tb is not None:
        for name, value in tb.tb_frame.f_locals.items():
            assert SECRET not in repr(value), (tb.tb_frame.f_code.co_name, name)
        tb, frames = tb.tb_next, frames + 1
    assert frames >= 2  # through requests and into the helper


def test_a_malformed_rotation_raises_and_the_next_good_file_is_used(
    api: responses.RequestsMock, volume: ProjectedVolume
) -> None:
    first, second = make_token("external-dns"), make_token("cert-manager")
    auth = ServiceAccountTokenAuth(volume.path)
    volume.write(first)
    requests.get(URL, auth=auth, timeout=5)
    volume.write(f"{first}\r\n{second}")  # never the old token, never the pasted pair

    for _ in range(2):
        with pytest.raises(TokenFileError) as info:
            requests.get(URL, auth=auth, timeout=5)
        assert str(info.value) == multiline(volume.path)
    volume.write(second)
    requests.get(URL, auth=auth, timeout=5)

    assert sent(api) == [f"Bearer {first}", f"Bearer {second}"]


@pytest.mark.parametrize("content", ["  tok-1.2_3~4+5/6==  ", "\ttok-1.2_3~4+5/6==\r\n", "tok-1.2_3~4+5/6==\n\n"])
def test_whitespace_around_the_token_is_not_part_of_it(
    api: responses.RequestsMock, tmp_path: Path, content: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content.encode())
    requests.get(URL, auth=ServiceAccountTokenAuth(path), timeout=5)
    assert sent(api) == ["Bearer tok-1.2_3~4+5/6=="]


def test_sending_over_plain_http_warns_once_per_auth_object(
    volume: ProjectedVolume, caplog: pytest.LogCaptureFixture
) -> None:
    token = make_token("external-dns")
    volume.write(token)
    auth = ServiceAccountTokenAuth(volume.path)
    with responses.RequestsMock() as api, caplog.at_level(logging.DEBUG, logger="flask_bindcar.client"):
        api.get(HTTP_URL, json={"zones": []})
        api.get("http://user:pa55word@[fd00::7]:8081/zones", json={"zones": []})
        requests.get(HTTP_URL, auth=auth, timeout=5)
        requests.get(HTTP_URL, auth=auth, timeout=5)
        requests.get("http://user:pa55word@[fd00::7]:8081/zones", auth=auth, timeout=5)  # same object: no second
        requests.get("http://user:pa55word@[fd00::7]:8081/zones", auth=ServiceAccountTokenAuth(volume.path), timeout=5)
        assert sent(api) == [f"Bearer {token}"] * 4  # a warning, not a refusal
    warnings = [(r.name, r.getMessage()) for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        (
            "flask_bindcar.client",
            f"Sending the ServiceAccount token from {volume.path} to http://bindcar.dns-system.svc:8080 over plain "
            "HTTP: anyone on the network path can read it and call the API as this pod until it expires. Call the "
            "API over https.",
        ),
        (
            "flask_bindcar.client",
            f"Sending the ServiceAccount token from {volume.path} to http://[fd00::7]:8081 over plain "
            "HTTP: anyone on the network path can read it and call the API as this pod until it expires. Call the "
            "API over https.",
        ),
    ]
    assert token not in caplog.text
    assert "pa55word" not in caplog.text


def test_sending_over_https_does_not_warn(
    api: responses.RequestsMock, volume: ProjectedVolume, caplog: pytest.LogCaptureFixture
) -> None:
    volume.write(make_token("external-dns"))
    with caplog.at_level(logging.DEBUG, logger="flask_bindcar.client"):
        requests.get(URL, auth=ServiceAccountTokenAuth(volume.path), timeout=5)
    assert [r.levelname for r in caplog.records] == ["DEBUG"]


# -- end to end ------------------------------------------------------------------------------------


def test_the_example_client_against_the_example_app_under_gunicorn(
    serve: Callable[..., Any],
    fake_cluster: FakeCluster,
    fake_kubeconfig: Path,
    volume: ProjectedVolume,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {
        "BIND_AUTH_MODE": "tokenreview",
        "KUBECONFIG": str(fake_kubeconfig),
        "BIND_ALLOWED_NAMESPACES": "dns-system",
        "ZONE_DATA_DIR": str(tmp_path / "zones"),
    }
    volume.write(fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="zone-client-0"))
    with serve("example_app.app:create_app()", env) as url:
        assert example_client.main([url, "--token-file", str(volume.path)]) == 0
        # Rotated to another account's token: the next call presents it.
        volume.write(fake_cluster.token("dns-system", "cert-manager", audiences=["bindcar"]))
        assert example_client.main([url, "--token-file", str(volume.path)]) == 0
        volume.write(fake_cluster.token("default", "intruder", audiences=["bindcar"]))
        assert example_client.main([url, "--token-file", str(volume.path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        '200 {"caller":{"method":"tokenreview","username":"system:serviceaccount:dns-system:external-dns"},"zones":[]}',
        '200 {"caller":{"method":"tokenreview","username":"system:serviceaccount:dns-system:cert-manager"},"zones":[]}',
        '401 {"error": "Token validation failed: ServiceAccount from unauthorized namespace: default"}',
    ]


def test_the_readme_pod_spec_is_the_client_deployments() -> None:
    """README's "Calling a protected API" shows what example_app/deploy/client.yaml deploys."""
    root = Path(__file__).resolve().parent.parent
    section = (root / "README.md").read_text().split("## Calling a protected API\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    shown = yaml.safe_load(block)["spec"]
    deployment = list(yaml.safe_load_all((root / "example_app/deploy/client.yaml").read_text()))[-1]
    pod = deployment["spec"]["template"]["spec"]
    assert shown["serviceAccountName"] == pod["serviceAccountName"]
    assert shown["volumes"] == pod["volumes"]
    assert shown["containers"][0]["volumeMounts"] == pod["containers"][0]["volumeMounts"]
    assert "ServiceAccountTokenAuth()" in section
    assert DEFAULT_TOKEN_PATH in section


def test_a_token_path_that_is_not_a_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError) as info:
        ServiceAccountTokenAuth(tmp_path).token()
    assert str(info.value) == f"Cannot read the ServiceAccount token file {tmp_path}: Is a directory"


@pytest.mark.parametrize(
    ("claims", "warning"),
    [
        ({"aud": "bindcar"}, None),
        ({"aud": "vault"}, "is for vault, not bindcar"),
        ({"aud": ["vault", "sts"]}, "is for vault, sts, not bindcar"),
        ({"sub": "no aud at all"}, "is for no audience, not bindcar"),
        ({"aud": 7}, "is for no audience, not bindcar"),
        (None, None),  # not a JWT: nothing to advise on
        ("[1]", "is for no audience, not bindcar"),  # a payload that is not a map
    ],
)
def test_the_audience_hint_reads_any_aud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, claims: Any, warning: str | None
) -> None:
    import base64
    import json

    if claims is None:
        token = "an-opaque-token-not-a-jwt"
    else:
        payload = claims if isinstance(claims, str) else json.dumps(claims)
        token = "e30." + base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=") + ".c2ln"
    path = tmp_path / "token"
    path.write_text(token)
    with caplog.at_level(logging.WARNING, logger="flask_bindcar"):
        assert ServiceAccountTokenAuth(path, audience_hint="bindcar").token() == token
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warning is None:
        assert warnings == []
    else:
        assert warnings == [
            f"The token in {path} {warning}: the API will refuse it. Set audience: bindcar in the pod's "
            "serviceAccountToken projection."
        ]
