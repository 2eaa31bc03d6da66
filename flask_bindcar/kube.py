"""TokenReview through the official ``kubernetes`` client.

The client is built lazily, once per process, into a `kubernetes.client.Configuration` of our
own (never the process-wide default, never the host application's), and rebuilt when the process
id changes, so connections opened before gunicorn forks are never shared between workers. Every
call carries ``_request_timeout`` and makes no retries.

The client's own timeout bounds each socket read, not the call, so a server dripping its answer
one byte at a time could hold a review for as long as it likes. The client's connections are
therefore ours (`_BoundedConnection`): every read of a review is given only the time left before
its deadline, and at most `MAX_RESPONSE_BYTES` are read of an answer. A review ends within
``BIND_TOKEN_REVIEW_TIMEOUT``, whatever the server does.

Whatever goes wrong ends in an `AuthError` with the seed's message, never in another exception.
A text the server supplied is capped and loses every piece of the token it echoes (`scrub`)
before it is used, so no message, log line or audit record carries the token or part of it.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask_bindcar.config import AuthConfig
from flask_bindcar.errors import (
    API_BAD_RESPONSE,
    API_REJECTED,
    API_SERVER_ERROR,
    API_UNREACHABLE,
    CLIENT_FAILED,
    AuthError,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, AuthenticationV1Api, AuthorizationV1Api, Configuration

logger = logging.getLogger("flask_bindcar")

TOKEN_REVIEW_API_VERSION = "authentication.k8s.io/v1"
Failed = Callable[[str, str], Exception]
"""Builds the error raised when a call gets no answer, from the why (for the message) and the reason label."""
DEFAULT_KUBECONFIG = "~/.kube/config"

MAX_RESPONSE_BYTES = 1 << 20
"""The most read of one answer, status line and headers included; a TokenReview is a few KiB."""
MAX_SERVER_TEXT = 512
"""Characters kept of a text the server supplied for a message (an error, a Status message)."""
MAX_IDENTITY_TEXT = 1024
"""The longest username, uid, group or extra value accepted in ``status.user``."""
ECHO_MIN = 16
"""Runs of this many characters of the token, or more, are removed from what the server says."""
REDACTED = "[REDACTED]"
_MAX_WHY = 2 * MAX_SERVER_TEXT


class _DropResponseBodies(logging.Filter):
    """Some versions of the client log response bodies at DEBUG; a TokenReview echoes the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "body" not in str(record.msg).lower()


for _name in ("kubernetes.client.rest", "kubernetes.client.api_client"):
    logging.getLogger(_name).addFilter(_DropResponseBodies())


@dataclass(frozen=True)
class ReviewOutcome:
    """What the API server said of a token: ``status`` of the TokenReview, nothing decided yet."""

    authenticated: bool
    error: str | None = None
    user: Mapping[str, Any] | None = None
    audiences: tuple[str, ...] = ()
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """Values derived from this outcome alone (the `Identity` per audience list), computed once."""


class ClientBuildError(Exception):
    """The client could not be built; the message says why, for the operator."""


def _echo_spans(text: str, token: str) -> list[tuple[int, int]]:
    """Where ``text`` holds runs of `ECHO_MIN` or more characters of ``token`` (all of a shorter token)."""
    n = min(ECHO_MIN, len(token))
    spans: list[tuple[int, int]] = []
    if n == 0:
        return spans
    for i in range(len(text) - n + 1):
        if text[i : i + n] in token:
            if spans and i <= spans[-1][1]:
                spans[-1] = (spans[-1][0], i + n)
            else:
                spans.append((i, i + n))
    return spans


def scrub(text: str, token: str, limit: int = MAX_SERVER_TEXT) -> str:
    """A text from the server, fit for a message: at most about ``limit`` characters, no piece of the token.

    A server may echo a token whole, in part or cut short (a message it truncated itself), so
    every run of `ECHO_MIN` or more characters that also occurs in the token becomes
    ``[REDACTED]``. The text is cut first, so the work is bounded whatever the server sent.
    """
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    spans = _echo_spans(text, token)
    for start, end in reversed(spans):
        text = text[:start] + REDACTED + text[end:]
    return text


def log_unexpected(where: str, e: BaseException) -> None:
    """Log an exception nobody expected by its type and stack only: its message may quote the server."""
    stack = "".join(traceback.format_tb(e.__traceback__)).rstrip()
    logger.error("unexpected %s in %s\n%s", type(e).__name__, where, stack)


def _client_failed(why: str) -> AuthError:
    return AuthError.validation_failed(CLIENT_FAILED.format(why=why), reason="client_failed")


def _api_failed(why: str, reason: str) -> AuthError:
    return AuthError.api_call_failed(why[:_MAX_WHY], reason=reason)


class _TokenFile:
    """``refresh_api_key_hook`` re-reading a token file when it changes (projected tokens rotate)."""

    def __init__(self, path: str):
        self.path = path
        self._stamp: tuple[int, int] | None = None

    def __call__(self, configuration: Configuration) -> None:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            configuration.api_key["authorization"] = Path(self.path).read_text().strip()
            self._stamp = stamp


def kubeconfig_path(config: AuthConfig) -> tuple[str, bool]:
    """The kubeconfig to use and whether it was asked for explicitly (``BINDCAR_KUBECONFIG``/``KUBECONFIG``)."""
    if config.kubeconfig:
        return config.kubeconfig, True
    return DEFAULT_KUBECONFIG, False


def build_api_client(config: AuthConfig) -> tuple[ApiClient, str]:
    """A fresh `ApiClient` and a description of where its configuration came from.

    Sources, first that applies: the explicit ``KUBE_*`` trio, a kubeconfig (``KUBECONFIG``,
    ``BINDCAR_KUBECONFIG`` or an existing ``~/.kube/config``), the in-cluster ServiceAccount mount.
    """
    import yaml  # type: ignore[import-untyped]
    from kubernetes import client
    from kubernetes.config import ConfigException, load_incluster_config, load_kube_config

    cfg = client.Configuration()
    path = ""
    try:
        if config.kube_api_server and config.kube_token_path and config.kube_ca_cert_path:
            for name, path in (
                ("KUBE_TOKEN_PATH", config.kube_token_path),
                ("KUBE_CA_CERT_PATH", config.kube_ca_cert_path),
            ):
                if not os.path.isfile(path):
                    raise ClientBuildError(f"{name} {path} does not exist")
            cfg.host = config.kube_api_server.rstrip("/")
            cfg.ssl_ca_cert = config.kube_ca_cert_path
            cfg.api_key_prefix["authorization"] = "Bearer"
            hook = _TokenFile(config.kube_token_path)
            hook(cfg)
            cfg.refresh_api_key_hook = hook  # type: ignore[assignment]
            source = f"KUBE_API_SERVER {cfg.host}"
        else:
            path, explicit = kubeconfig_path(config)
            existing = [p for p in (os.path.expanduser(p) for p in path.split(os.pathsep) if p) if os.path.isfile(p)]
            if explicit or existing:
                if not existing:
                    raise ClientBuildError(f"kubeconfig {path} does not exist")
                load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=os.pathsep.join(existing), client_configuration=cfg, persist_config=False
                )
                source = f"kubeconfig {path}"
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
                source = "in-cluster ServiceAccount"
            else:
                raise ClientBuildError(
                    f"no kubeconfig at {DEFAULT_KUBECONFIG} and not running in a cluster "
                    "(KUBERNETES_SERVICE_HOST is unset)"
                )
    except ClientBuildError:
        raise
    except yaml.YAMLError as e:
        # Not str(e): it quotes the offending line, which may hold the service's own credential.
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ClientBuildError(f"kubeconfig {path} is not valid YAML{where}") from None
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as e:
        raise ClientBuildError(f"{type(e).__name__}: {e}") from None
    except Exception as e:  # a kubeconfig of an unexpected shape; the message may quote it
        raise ClientBuildError(f"{type(e).__name__} while loading the configuration") from None
    cfg.retries = False
    api_client = client.ApiClient(cfg)
    _bound_connections(api_client.rest_client.pool_manager)
    return api_client, source


class ResponseRefused(Exception):
    """An answer given up before it was read whole (too large, compressed); the message says why."""


_deadline: ContextVar[float | None] = ContextVar("bindcar_review_deadline", default=None)
"""The `time.monotonic` by which the current review must end. A context variable, not a
thread-local: it stays per greenlet under gevent even when this module was imported before
gevent patched ``threading`` (``gunicorn --preload``)."""


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


def _bound_connections(pool_manager: Any) -> None:
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


def _bad(why: str) -> AuthError:
    return _api_failed(why, API_BAD_RESPONSE)


def _strings(value: Any) -> tuple[str, ...] | None:
    """``value`` as a tuple when it is a JSON list of strings (null counts as empty), else None."""
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _user(user: Any, token: str) -> dict[str, Any] | None:
    """``status.user`` of an authenticated answer, checked; None when it names nobody.

    Every field has the type the API promises, no text is over-long and none holds a piece of the
    token, or the answer is refused: these values reach views, logs and the cache, so they are
    checked here, before the outcome can be cached, rather than where they are used.
    """
    if not isinstance(user, dict) or user.get("username") in (None, ""):
        return None
    username, uid = user["username"], user.get("uid")
    if not isinstance(username, str):
        raise _bad("status.user.username is not a string")
    if uid is not None and not isinstance(uid, str):
        raise _bad("status.user.uid is not a string")
    groups = _strings(user.get("groups"))
    if groups is None:
        raise _bad("status.user.groups is not a list of strings")
    raw_extra = user.get("extra")
    extra: dict[str, tuple[str, ...]] = {}
    if raw_extra is not None:
        if not isinstance(raw_extra, dict):
            raise _bad("status.user.extra is not a map of string lists")
        for key, values in raw_extra.items():
            strings = _strings(values)
            if strings is None:
                raise _bad("status.user.extra is not a map of string lists")
            extra[key] = strings
    texts = [username, uid or "", *groups, *extra, *(v for vs in extra.values() for v in vs)]
    if any(len(text) > MAX_IDENTITY_TEXT for text in texts):
        raise _bad(f"status.user holds a text over {MAX_IDENTITY_TEXT} characters")
    if any(_echo_spans(text, token) for text in texts):
        raise _bad("status.user holds part of the token")
    return {"username": username, "uid": uid or None, "groups": groups, "extra": extra}


def parse_review(data: bytes, token: str = "") -> ReviewOutcome:
    """The outcome of a TokenReview response body for ``token``; `AuthError` if it is not one."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise _bad("response is nested too deeply") from None
    except ValueError:
        raise _bad("response is not JSON") from None
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, dict):
        raise _bad("response is not a TokenReview with a status")
    audiences = _strings(status.get("audiences"))
    if audiences is None:
        raise _bad("status.audiences is not a list of strings")
    authenticated = status.get("authenticated") is True
    error = status.get("error")
    return ReviewOutcome(
        authenticated=authenticated,
        error=scrub(error, token) if isinstance(error, str) and error else None,
        user=_user(status.get("user"), token) if authenticated else None,
        audiences=audiences,
    )


class _ClientBuild:
    """One build of the client for one process, in a thread of its own (`KubeTokenReviewer.api`).

    Its outcome is kept: the client, or the `AuthError` every review answers while the build
    cannot succeed (a missing kubeconfig stays missing until the process restarts).
    """

    def __init__(self, config: AuthConfig, pid: int):
        self.pid = pid
        self.done = threading.Event()
        self.api: AuthenticationV1Api | None = None
        self.source: str | None = None
        self.error: AuthError | None = None
        self._config = config
        threading.Thread(target=self._run, name="bindcar-client-build", daemon=True).start()

    def _run(self) -> None:
        try:
            from kubernetes.client import AuthenticationV1Api

            api_client, source = build_api_client(self._config)
            self.api, self.source = AuthenticationV1Api(api_client), source
            logger.info("Kubernetes client created from %s", source)
        except ClientBuildError as e:
            logger.error("cannot create the Kubernetes client: %s", e)
            self.error = _client_failed(str(e))
        except BaseException as e:  # never leave the waiters without an answer
            log_unexpected("building the Kubernetes client", e)
            self.error = _client_failed(type(e).__name__)
        finally:
            self.done.set()


class KubeTokenReviewer:
    """Sends TokenReviews with the official client; one client per process."""

    def __init__(self, config: AuthConfig):
        self._config = config
        self._lock = threading.Lock()
        self._api: AuthenticationV1Api | None = None
        self._build: _ClientBuild | None = None
        self._authz: AuthorizationV1Api | None = None
        self._pid: int | None = None
        self.source: str | None = None
        """Where the client's configuration came from, once built."""

    def api(self, deadline: float | None = None, failed: Failed | None = None) -> AuthenticationV1Api:
        """The per-process client, built on first use; `AuthError` when it cannot be built.

        The build (importing the client, reading the kubeconfig, running an ``exec`` credential
        plugin) runs in a thread of its own, and a caller with a ``deadline`` (`time.monotonic`)
        waits for it only until then: the first review of a process ends within its timeout too,
        and the build goes on for the next one. Past the deadline it raises ``failed(why, reason)``
        (default: the TokenReview's `AuthError`). A build that failed is tried again by the next
        caller, as a kubeconfig may appear later.
        """
        api, pid = self._api, os.getpid()
        if api is not None and self._pid == pid:
            return api
        with self._lock:
            build = self._build
            if build is None or build.pid != pid or (build.done.is_set() and build.error is not None):
                build = self._build = _ClientBuild(self._config, pid)
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not build.done.wait(timeout):
            raise (failed or _api_failed)(f"no answer within {self._config.review_timeout:g}s", API_UNREACHABLE)
        if build.error is not None:
            raise build.error
        assert build.api is not None
        with self._lock:
            if self._pid != pid:
                self._api, self._pid, self.source = build.api, pid, build.source
        return build.api

    def authorization_api(self, deadline: float | None = None, failed: Failed | None = None) -> AuthorizationV1Api:
        """The SubjectAccessReview API on the same per-process client."""
        api = self.api(deadline, failed)
        authz = self._authz
        if authz is None or authz.api_client is not api.api_client:
            from kubernetes.client import AuthorizationV1Api

            authz = self._authz = AuthorizationV1Api(api.api_client)
        return authz

    def review(self, token: str, audiences: Sequence[str]) -> ReviewOutcome:
        """Ask the API server about ``token``. Raises `AuthError` when no answer can be had.

        The deadline starts before the client is built: the first review of a process (importing
        the client, an ``exec`` credential plugin) ends within the timeout too.
        """
        started = time.monotonic()
        api = self.api(started + self._config.review_timeout)
        body = {
            "apiVersion": TOKEN_REVIEW_API_VERSION,
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)},
        }
        timeout = self._config.review_timeout
        # A plain dict body and the raw response: no model round trip, and the JSON is ours to check.
        data = call_api(
            lambda: api.create_token_review(
                body=body,  # type: ignore[arg-type]
                _request_timeout=timeout,
                _preload_content=False,
            ),
            host=api.api_client.configuration.host,
            timeout=timeout,
            secret=token,
            failed=_api_failed,
            started=started,
        )
        return parse_review(data, token)

    def access_review(self, body: Mapping[str, Any], failed: Failed) -> bytes:
        """POST a SubjectAccessReview ``body``: the raw answer, or ``failed(why, reason)`` raised."""
        started = time.monotonic()
        api = self.authorization_api(started + self._config.review_timeout, failed)
        timeout = self._config.review_timeout
        return call_api(
            lambda: api.create_subject_access_review(
                body=body,  # type: ignore[arg-type]
                _request_timeout=timeout,
                _preload_content=False,
            ),
            host=api.api_client.configuration.host,
            timeout=timeout,
            secret="",
            failed=failed,
            started=started,
        )


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
    time before the call (building the client) has only what is left. Whatever goes wrong raises
    ``failed(why, reason)``, never another exception; ``why`` is scrubbed of ``secret`` (the
    token under review, if any).
    """
    import urllib3
    from kubernetes.client.exceptions import ApiException, OpenApiException

    end = (time.monotonic() if started is None else started) + timeout
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
