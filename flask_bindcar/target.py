"""The request target: is this path one that path authorization can judge safely?

Under ``RBAC(path=True)`` the SubjectAccessReview is asked about the path, and what it allows
must be exactly what the application serves. A path that a normaliser further down would rewrite
breaks that: ``/public/../admin`` is allowed by a ``/public/*`` rule, and a router, file server
or proxy that cleans it then serves ``/admin``. kube-rbac-proxy had this bug class; Go's
``ServeMux`` cleans a path before any handler sees it. A WSGI server (gunicorn) does not, so such
a path is refused here, with 400, before any review.

A path is accepted when it is already canonical: no ``.`` or ``..`` segment (``..;`` counts, as
servlet containers read it), no empty segment (``//``) but a trailing slash, no backslash, no
percent-encoded slash or backslash in the raw request line (the server decoded ``%2F`` into a
``/`` the path no longer shows), and no percent-encoded sequence left after the server's one
decoding (``%252e`` would be a dot to whoever decodes twice).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask_bindcar.errors import (
    BAD_PATH_BACKSLASH,
    BAD_PATH_DOT,
    BAD_PATH_DOUBLE,
    BAD_PATH_EMPTY,
    BAD_PATH_ENCODED,
)

_ENCODED_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)
_PERCENT_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")


def raw_path(environ: Mapping[str, Any]) -> str | None:
    """The path as the client wrote it, before the server decoded it, when the server tells.

    gunicorn and werkzeug set ``RAW_URI``; uWSGI, mod_wsgi and werkzeug ``REQUEST_URI``. A
    request line in absolute form (``GET http://host/path``) keeps only its path.
    """
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not isinstance(raw, str) or not raw:
        return None
    if not raw.startswith("/"):
        try:
            return urlsplit(raw).path
        except ValueError:
            return raw
    return raw.partition("?")[0]


def path_problem(path: str, raw: str | None) -> str | None:
    """Why ``path`` (decoded, as ``PATH_INFO``) is not canonical, or None when it is.

    ``raw`` is the undecoded path (`raw_path`), None when the server does not give it.
    """
    if raw is not None and _ENCODED_SEPARATOR.search(raw):
        return BAD_PATH_ENCODED
    if "\\" in path:
        return BAD_PATH_BACKSLASH
    if "%" in path and _PERCENT_ENCODED.search(path):
        return BAD_PATH_DOUBLE
    segments = path.removeprefix("/").split("/")
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if not segment:
            if i != last:
                return BAD_PATH_EMPTY
        elif segment[0] == "." and segment.partition(";")[0] in (".", ".."):
            return BAD_PATH_DOT
    return None
