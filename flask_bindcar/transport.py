"""One call of the official client, bounded whatever the server does: a deadline and an answer cap.

The client's own timeout bounds each socket read, not the call, so a server dripping its answer
one byte at a time could hold a review for as long as it likes. The client's connections are
therefore ours (`bound_connections`): every read of a call is given only the time left before its
deadline, and at most `MAX_RESPONSE_BYTES` are read of an answer. `call_api` sets that deadline
and turns whatever goes wrong into the caller's error (``failed(why, reason)``), never another
exception, with every text the server supplied scrubbed of the token under review.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import socket
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from flask_bindcar.errors import API_BAD_RESPONSE, API_REJECTED, API_SERVER_ERROR, API_UNREACHABLE
from flask_bindcar.scrub import log_unexpected, scrub

Failed = Callable[[str, str], Exception]
"""Builds the error raised when a call gets no answer, from the why (for the message) and the reason label."""

MAX_RESPONSE_BYTES = 1 << 20
"""The most read of one answer, status line and headers included; a TokenReview is a few KiB."""


class ResponseRefused(Exception):
    """An answer given up before it was read whole (too large, compressed); the message says why."""


_deadline: ContextVar[float | None] = ContextVar("bindcar_review_deadline", default=None)
"""The `time.monotonic` by which the current review must end. A context variable, not a
thread-local: it stays per greenlet under gevent even when this module was imported before
gevent patched ``threading`` (``gunicorn --preload``)."""

_request_end: ContextVar[float | None] = ContextVar("bindcar_request_deadline", default=None)
"""The `time.monotonic` by which every call made for the current request must end (`request_deadline`)."""


def request_deadline(seconds: float) -> Token[float | None] | None:
    """From now on, every call made for the current request ends within ``seconds`` of now, all of
    them together: a request's key fetch, TokenReview and SubjectAccessReview share one review
    timeout rather than taking one each. Returns the token for `end_request_deadline`, or None
    when an earlier end is already set (it stays)."""
    return request_deadline_at(time.monotonic() + seconds)


def request_deadline_at(end: float) -> Token[float | None] | None:
    """`request_deadline` with its end (`time.monotonic`) given: the one a request started with."""
    current = _request_end.get()
    if current is not None and current <= end:
        return None
    return _request_end.set(end)


def end_request_deadline(token: Token[float | None] | None) -> None:
    """Undo `request_deadline` (a None token: nothing to undo)."""
    if token is not None:
        _request_end.reset(token)


def call_end(end: float) -> float:
    """``end``, or the current request's deadline when that comes first."""
    request_end = _request_end.get()
    return end if request_end is None or end < request_end else request_end


class _BoundedReader(io.RawIOBase):
    """The socket as the HTTP parser reads it: no read past the deadline, no byte past the cap."""

    def __init__(self, sock: socket.socket, deadline: float | None):
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self._left = MAX_RESPONSE_BYTES

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the TokenReview deadline passed")
            self._sock.settimeout(left)
        n = self._raw.readinto(memoryview(buffer)[: self._left + 1]) or 0
        self._left -= n
        if self._left < 0:
            raise ResponseRefused(f"response larger than {MAX_RESPONSE_BYTES >> 20} MiB")
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class _BoundedResponse(http.client.HTTPResponse):
    """An answer read through `_BoundedReader`, and only when not compressed (a small bomb inflates)."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any):
        super().__init__(sock, *args, **kwargs)
        unbounded, self.fp = self.fp, io.BufferedReader(_BoundedReader(sock, _deadline.get()))
        unbounded.close()

    def begin(self) -> None:
        super().begin()
        encoding = self.getheader("Content-Encoding")
        if encoding and encoding.strip().lower() != "identity":
            raise ResponseRefused(f"response is compressed (Content-Encoding: {encoding})")


class _BoundedConnection:
    """Mixed into the client's connection classes: bounded answers, and a TLS handshake within the deadline."""

    response_class = _BoundedResponse

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        deadline = _deadline.get()
        if deadline is not None:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
        return sock


@functools.cache
def _bounded_pool(pool_cls: type[Any]) -> type[Any]:
    connection = type(f"Bounded{pool_cls.ConnectionCls.__name__}", (_BoundedConnection, pool_cls.ConnectionCls), {})
    return type(f"Bounded{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": connection})


def bound_connections(pool_manager: Any) -> None:
    """Make every connection of ``pool_manager`` bounded, keeping its kind (HTTPS, proxied, SOCKS)."""
    pool_manager.pool_classes_by_scheme = {
        scheme: _bounded_pool(pool_cls) for scheme, pool_cls in pool_manager.pool_classes_by_scheme.items()
    }


def _describe_api_exception(e: Any, token: str) -> str:
    why = f"HTTP {e.status} {scrub(str(e.reason or ''), token, limit=64)}".rstrip()
    try:
        message = json.loads(e.body or "{}").get("message")
    except (ValueError, AttributeError, RecursionError):
        message = None
    if isinstance(message, str) and message:
        why += f": {scrub(message, token)}"
    return why


def call_api(
    call: Callable[[], Any],
    *,
    host: str,
    timeout: float,
    secret: str,
    failed: Failed,
    started: float | None = None,
) -> bytes:
    """The body of one call of the client within a whole-call deadline of ``timeout`` seconds.

    The deadline counts from ``started`` (`time.monotonic`, default now): a caller that spent
    time before the call (building the client) has only what is left, and a request's later
    calls only what its earlier ones left (`request_deadline`). Whatever goes wrong raises
    ``failed(why, reason)``, never another exception; ``why`` is scrubbed of ``secret`` (the
    token under review, if any).
    """
    import urllib3
    from kubernetes.client.exceptions import ApiException, OpenApiException

    end = call_end((time.monotonic() if started is None else started) + timeout)
    if time.monotonic() >= end:
        raise failed(f"no answer within {timeout:g}s", API_UNREACHABLE)
    deadline = _deadline.set(end)
    try:
        response: Any = call()
        return bytes(response.data)
    except ResponseRefused as e:
        raise failed(scrub(str(e), secret), API_BAD_RESPONSE) from None
    except ApiException as e:
        status = e.status or 0
        reason = API_SERVER_ERROR if status >= 500 else API_UNREACHABLE if status == 0 else API_REJECTED
        raise failed(_describe_api_exception(e, secret), reason) from None
    except urllib3.exceptions.NewConnectionError as e:  # before TimeoutError: it subclasses it
        raise failed(f"cannot connect to {host}: {scrub(str(e), secret)}", API_UNREACHABLE) from None
    except (urllib3.exceptions.TimeoutError, TimeoutError):
        raise failed(f"no answer within {timeout:g}s", API_UNREACHABLE) from None
    except (urllib3.exceptions.HTTPError, OSError, OpenApiException) as e:
        raise failed(f"{type(e).__name__}: {scrub(str(e), secret)}", API_UNREACHABLE) from None
    except Exception as e:  # a client bug must still end in the documented answer, not a 500
        log_unexpected("the Kubernetes client", e)
        raise failed(type(e).__name__, API_BAD_RESPONSE) from None
    finally:
        _deadline.reset(deadline)
