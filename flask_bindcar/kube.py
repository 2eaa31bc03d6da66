"""TokenReview through the official ``kubernetes`` client.

The client is built lazily, once per process, into a `kubernetes.client.Configuration` of our
own (never the process-wide default, never the host application's), and rebuilt when the process
id changes, so connections opened before gunicorn forks are never shared between workers. Every
call carries ``_request_timeout`` and makes no retries: a review ends within the configured
timeout. Whatever goes wrong ends in an `AuthError` with the seed's message, never in another
exception, and no message carries the token.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
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
    redact,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, AuthenticationV1Api, Configuration

logger = logging.getLogger("flask_bindcar")

TOKEN_REVIEW_API_VERSION = "authentication.k8s.io/v1"
DEFAULT_KUBECONFIG = "~/.kube/config"
_MAX_WHY = 300


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
    from kubernetes import client
    from kubernetes.config import ConfigException, load_incluster_config, load_kube_config

    cfg = client.Configuration()
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
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as e:
        raise ClientBuildError(f"{type(e).__name__}: {e}") from None
    cfg.retries = False
    return client.ApiClient(cfg), source


def _describe_api_exception(e: Any) -> str:
    why = f"HTTP {e.status} {e.reason}".rstrip()
    try:
        message = json.loads(e.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str) and message:
        why += f": {message}"
    return why


def parse_review(data: bytes) -> ReviewOutcome:
    """The outcome of a TokenReview response body; `AuthError` if it is not one."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise _api_failed("response is not JSON", API_BAD_RESPONSE) from None
    status = doc.get("status") if isinstance(doc, dict) else None
    if not isinstance(status, dict):
        raise _api_failed("response is not a TokenReview with a status", API_BAD_RESPONSE)
    user = status.get("user")
    error = status.get("error")
    audiences = status.get("audiences") or ()
    if not isinstance(audiences, list | tuple) or not all(isinstance(a, str) for a in audiences):
        raise _api_failed("status.audiences is not a list of strings", API_BAD_RESPONSE)
    return ReviewOutcome(
        authenticated=status.get("authenticated") is True,
        error=error if isinstance(error, str) and error else None,
        user=user if isinstance(user, dict) and user.get("username") else None,
        audiences=tuple(audiences),
    )


class KubeTokenReviewer:
    """Sends TokenReviews with the official client; one client per process."""

    def __init__(self, config: AuthConfig):
        self._config = config
        self._lock = threading.Lock()
        self._api: AuthenticationV1Api | None = None
        self._pid: int | None = None
        self.source: str | None = None
        """Where the client's configuration came from, once built."""

    def api(self) -> AuthenticationV1Api:
        """The per-process client, built on first use; `AuthError` when it cannot be built."""
        api, pid = self._api, os.getpid()
        if api is not None and self._pid == pid:
            return api
        with self._lock:
            if self._api is None or self._pid != pid:
                from kubernetes.client import AuthenticationV1Api

                try:
                    api_client, source = build_api_client(self._config)
                except ClientBuildError as e:
                    logger.error("cannot create the Kubernetes client: %s", e)
                    raise _client_failed(str(e)) from None
                self._api, self._pid, self.source = AuthenticationV1Api(api_client), pid, source
                logger.info("Kubernetes client created from %s", source)
            return self._api

    def review(self, token: str, audiences: Sequence[str]) -> ReviewOutcome:
        """Ask the API server about ``token``. Raises `AuthError` when no answer can be had."""
        import urllib3
        from kubernetes.client.exceptions import ApiException, OpenApiException

        api = self.api()
        body = {
            "apiVersion": TOKEN_REVIEW_API_VERSION,
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)},
        }
        try:
            # A plain dict body and the raw response: no model round trip, and the JSON is ours to check.
            response: Any = api.create_token_review(
                body=body,  # type: ignore[arg-type]
                _request_timeout=self._config.review_timeout,
                _preload_content=False,
            )
            data = response.data
        except ApiException as e:
            status = e.status or 0
            reason = API_SERVER_ERROR if status >= 500 else API_UNREACHABLE if status == 0 else API_REJECTED
            raise _api_failed(redact(_describe_api_exception(e), [token]), reason) from None
        except urllib3.exceptions.NewConnectionError as e:  # before TimeoutError: it subclasses it
            raise _api_failed(f"cannot connect to {api.api_client.configuration.host}: {e}", API_UNREACHABLE) from None
        except urllib3.exceptions.TimeoutError:
            raise _api_failed(f"no answer within {self._config.review_timeout:g}s", API_UNREACHABLE) from None
        except (urllib3.exceptions.HTTPError, OSError, OpenApiException) as e:
            raise _api_failed(redact(f"{type(e).__name__}: {e}", [token]), API_UNREACHABLE) from None
        except Exception as e:  # a client bug must still end in the documented 401, not a 500
            logger.exception("unexpected error from the Kubernetes client")
            raise _api_failed(type(e).__name__, API_BAD_RESPONSE) from None
        return parse_review(data)
