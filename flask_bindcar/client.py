"""The calling side: present a pod's projected ServiceAccount token to a bindcar-protected API.

``requests.get(url, auth=ServiceAccountTokenAuth())`` reads the token the kubelet projects into
the pod, sends it as ``Authorization: Bearer <token>``, and reads the file again whenever it
changed, so a long-running caller keeps working after the kubelet rotates the token (by default
at 80% of its lifetime; a token kept in memory is refused once it expires). Needs the ``client``
extra (``pip install 'flask-bindcar[client]'``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import requests
from requests.auth import AuthBase

logger = logging.getLogger("flask_bindcar.client")

DEFAULT_TOKEN_PATH = "/var/run/secrets/tokens/bindcar"
"""Where the documented Pod spec projects the token: a ``projected`` volume mounted at
``/var/run/secrets/tokens`` with a ``serviceAccountToken`` source of ``path: bindcar``. Not the
default ServiceAccount mount, whose token is for the Kubernetes API server's audience."""

DEFAULT_AUDIENCE = "bindcar"


class TokenFileError(requests.RequestException):
    """The token file is missing, unreadable or empty. A `requests.RequestException` (and an
    ``OSError``), so it is caught where a caller already handles failed requests."""


class ServiceAccountTokenAuth(AuthBase):
    """``requests`` authentication with the pod's projected ServiceAccount token.

    ``path`` is the token file (default `DEFAULT_TOKEN_PATH`). The file is read on first use and
    again whenever its inode, modification time or size changed, which a kubelet rotation always
    changes (it writes a new file and swaps a symlink); between changes each request costs one
    ``stat``. ``audience_hint`` is the audience the API expects: it goes into the error for a
    missing file, and a warning is logged once when a token read is not for it. The token is never
    logged and never part of ``repr``. Safe to share between threads.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_TOKEN_PATH, audience_hint: str | None = None):
        self.path = Path(path)
        self.audience_hint = audience_hint
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token()}"
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
            if self._token is None or stamp != self._stamp:
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
        token = raw.decode("utf-8", errors="replace").strip()
        if not token:
            raise TokenFileError(f"The ServiceAccount token file {self.path} is empty")
        self._token, self._stamp = token, stamp
        logger.debug("Read the ServiceAccount token from %s (%d bytes)", self.path, len(raw))
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
