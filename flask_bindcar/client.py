"""The calling side: present a pod's projected ServiceAccount token to a bindcar-protected API.

``requests.get(url, auth=ServiceAccountTokenAuth())`` reads the token the kubelet projects into
the pod, sends it as ``Authorization: Bearer <token>``, and reads the file again whenever it
changed, so a long-running caller keeps working after the kubelet rotates the token (by default
at 80% of its lifetime; a token kept in memory is refused once it expires). Needs the ``client``
extra (``pip install 'flask-bindcar[client]'``).

What the file holds is checked before it becomes a header: sent as it is, a file with two tokens
on two lines made ``http.client`` raise a bare ``ValueError`` quoting the whole header, token
included, into whatever logs the traceback.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from flask_bindcar.config import B64TOKEN

logger = logging.getLogger("flask_bindcar.client")

DEFAULT_TOKEN_PATH = "/var/run/secrets/tokens/bindcar"
"""Where the documented Pod spec projects the token: a ``projected`` volume mounted at
``/var/run/secrets/tokens`` with a ``serviceAccountToken`` source of ``path: bindcar``. Not the
default ServiceAccount mount, whose token is for the Kubernetes API server's audience."""

DEFAULT_AUDIENCE = "bindcar"

REREAD_AFTER = 1.0
"""Seconds after which the file is read again even though its inode, mtime and size look the same.
A writer that rewrites the file in place with a token of the same length inside the filesystem's
mtime granularity (or restores the mtime, as ``cp -p`` and ``rsync -t`` do) changes none of them.
Reading a ~1 KiB file once a second costs nothing next to a request; hashing it on a timer would
cost the same read."""


class TokenFileError(requests.RequestException):
    """The token file is missing, unreadable, empty, or not one bearer token. A
    `requests.RequestException` (and an ``OSError``), so it is caught where a caller already handles
    failed requests. Its message names the file and what is wrong, never what the file holds, and
    it chains no other exception: the token cannot reach a log through it."""


class ServiceAccountTokenAuth(AuthBase):
    """``requests`` authentication with the pod's projected ServiceAccount token.

    ``path`` is the token file (default `DEFAULT_TOKEN_PATH`). The file is read on first use and
    again whenever its inode, modification time or size changed, which a kubelet rotation always
    changes (it writes a new file and swaps a symlink), or when `REREAD_AFTER` seconds passed since
    the last read, for a writer that rewrites in place without changing any of the three. Between
    reads each request costs one ``stat``. What the file holds, stripped of surrounding whitespace,
    must be one RFC 6750 bearer token (the grammar the API side checks); anything else (two lines,
    a space, a NUL, a byte order mark) raises `TokenFileError` before any request is sent.

    ``audience_hint`` is the audience the API expects: it goes into the error for a missing file,
    and a warning is logged once per token when a token read is not for it. The first request over
    plain ``http://`` logs one warning per instance (not per host or per request: the fix is one
    setting, and a caller polling every few seconds would otherwise flood its log). The token is
    never logged and never part of ``repr``. Safe to share between threads.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_TOKEN_PATH, audience_hint: str | None = None):
        self.path = Path(path)
        self.audience_hint = audience_hint
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None
        self._read_at = 0.0
        self._warned_http = False

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token()}"
        parts = urlsplit(r.url or "")
        if parts.scheme.lower() == "http" and not self._warned_http:
            with self._lock:
                warn, self._warned_http = not self._warned_http, True
            if warn:
                logger.warning(
                    "Sending the ServiceAccount token from %s to %s over plain HTTP: anyone on the network path "
                    "can read it and call the API as this pod until it expires. Call the API over https.",
                    self.path,
                    _origin(parts.hostname, parts.port),
                )
        return r

    def __repr__(self) -> str:
        return f"ServiceAccountTokenAuth(path={str(self.path)!r}, audience_hint={self.audience_hint!r})"

    def token(self) -> str:
        """The current token: the one read last, or the file's new content if it changed since."""
        try:
            stamp = _stamp(os.stat(self.path))
        except OSError as e:
            raise self._unreadable(e) from None
        with self._lock:
            if self._token is None or stamp != self._stamp or time.monotonic() - self._read_at >= REREAD_AFTER:
                self._read()
            assert self._token is not None
            return self._token

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                stamp = _stamp(os.fstat(f.fileno()))
                raw = f.read()
        except OSError as e:
            raise self._unreadable(e) from None
        size = len(raw)
        token, problem = _bearer_token(raw)
        del raw  # nor in this frame's locals, where an error reporter that records them would look
        if token is None:
            raise TokenFileError(f"The ServiceAccount token file {self.path} {problem}") from None
        self._read_at = time.monotonic()
        self._stamp = stamp
        if token == self._token:
            return  # read again after REREAD_AFTER, unchanged: not a new token to log or advise on
        self._token = token
        logger.debug("Read the ServiceAccount token from %s (%d bytes)", self.path, size)
        if self.audience_hint is not None:
            audiences = _audiences(token)
            if audiences is not None and self.audience_hint not in audiences:
                logger.warning(
                    "The token in %s is for %s, not %s: the API will refuse it. Set audience: %s in the pod's "
                    "serviceAccountToken projection.",
                    self.path,
                    ", ".join(audiences) or "no audience",
                    self.audience_hint,
                    self.audience_hint,
                )

    def _unreadable(self, e: OSError) -> TokenFileError:
        if isinstance(e, FileNotFoundError):
            return TokenFileError(
                f"No ServiceAccount token at {self.path}: mount a projected serviceAccountToken volume there "
                f"(audience: {self.audience_hint or DEFAULT_AUDIENCE}), or pass ServiceAccountTokenAuth(path=...)"
            )
        return TokenFileError(f"Cannot read the ServiceAccount token file {self.path}: {e.strerror or e}")


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_size


def _bearer_token(raw: bytes) -> tuple[str, None] | tuple[None, str]:
    """The token a file holds, or what is wrong with it: a message that never quotes the content,
    since the content is a credential even when it is malformed (two tokens pasted together)."""
    content = raw.strip()  # ASCII whitespace only: a trailing newline, an editor's CRLF
    if not content:
        return None, "is empty"
    if b"\n" in content or b"\r" in content:
        return None, "holds more than one line: it must hold a single bearer token"
    token = content.decode("ascii") if content.isascii() else ""
    if not B64TOKEN.fullmatch(token):
        return None, "is not one bearer token: expected letters, digits, -._~+/ and trailing = only"
    return token, None


def _origin(host: str | None, port: int | None) -> str:
    """``http://host:port`` for the warning: never the URL's user:password, path or query."""
    host = host or ""
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}" + (f":{port}" if port is not None else "")


def _audiences(token: str) -> list[str] | None:
    """The ``aud`` claim of a JWT, unverified (only to advise); None when it is not a JWT."""
    try:
        payload = token.split(".")[1]
        claims: Any = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    aud = claims.get("aud") if isinstance(claims, dict) else None
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [str(a) for a in aud]
    return []
