"""The API server client: TokenReviews and SubjectAccessReviews through the official ``kubernetes`` client.

The client is built lazily, once per process, into a `kubernetes.client.Configuration` of our
own (never the process-wide default, never the host application's), and rebuilt when the process
id changes, so connections opened before gunicorn forks are never shared between workers. Every
call carries ``_request_timeout``, makes no retries, and goes through `call_api` on bounded
connections (`flask_bindcar.transport`): a review ends within ``BIND_TOKEN_REVIEW_TIMEOUT``,
whatever the server does.

Whatever goes wrong ends in an `AuthError` with the seed's message (or the caller's own error, for
a SubjectAccessReview), never in another exception. A text the server supplied is capped and loses
every piece of the token it echoes (`flask_bindcar.scrub`) before it is used.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask_bindcar.config import DEFAULT_KUBECONFIG, AuthConfig
from flask_bindcar.errors import API_UNREACHABLE, CLIENT_FAILED, AuthError
from flask_bindcar.scrub import log_unexpected
from flask_bindcar.tokenreview import ReviewOutcome, api_failed, parse_review
from flask_bindcar.transport import Failed, bound_connections, call_api, call_end

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, AuthenticationV1Api, AuthorizationV1Api, Configuration

logger = logging.getLogger("flask_bindcar")

TOKEN_REVIEW_API_VERSION = "authentication.k8s.io/v1"


class ClientBuildError(Exception):
    """The client could not be built; the message says why, for the operator."""


def _client_failed(why: str) -> AuthError:
    return AuthError.validation_failed(CLIENT_FAILED.format(why=why), reason="client_failed")


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
                    config_file=os.pathsep.join(existing),
                    context=config.kube_context,
                    client_configuration=cfg,
                    persist_config=False,
                )
                source = f"kubeconfig {path}" + (f" context {config.kube_context}" if config.kube_context else "")
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
    bound_connections(api_client.rest_client.pool_manager)
    return api_client, source


class _ClientBuild:
    """One build of the client for one process, in a thread of its own (`ApiServerClient.api`).

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


def _raw_get(client: ApiClient, path: str, timeout: float) -> Any:
    """GET ``path`` with the client's credential: the raw urllib3 response, `ApiException` if not 2xx.

    What the generated methods do with ``_preload_content=False``, for a path no generated method
    has, with the client's current generator (``param_serialize``, then ``call_api``) and with the
    python-legacy one of older releases (one ``call_api``).
    """
    headers = {"Accept": "application/json, application/jwk-set+json"}
    api: Any = client  # the two generators' call_api differ; each is called as it is defined
    serialize = getattr(api, "param_serialize", None)
    if serialize is None:  # pragma: no cover - the python-legacy client, not the one tested
        return api.call_api(
            path,
            "GET",
            header_params=headers,
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
            _request_timeout=timeout,
        )
    from kubernetes.client.exceptions import ApiException

    response = api.call_api(
        *serialize("GET", path, header_params=headers, auth_settings=["BearerToken"]), _request_timeout=timeout
    )
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response


class ApiServerClient:
    """Sends TokenReviews and SubjectAccessReviews with the official client; one client per process."""

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
        timeout = None if deadline is None else max(call_end(deadline) - time.monotonic(), 0.0)
        if not build.done.wait(timeout):
            raise (failed or api_failed)(f"no answer within {self._config.review_timeout:g}s", API_UNREACHABLE)
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
        data = self._post(api, api.create_token_review, body, secret=token, failed=api_failed, started=started)
        return parse_review(data, token)

    def access_review(self, body: Mapping[str, Any], failed: Failed) -> bytes:
        """POST a SubjectAccessReview ``body``: the raw answer, or ``failed(why, reason)`` raised."""
        started = time.monotonic()
        api = self.authorization_api(started + self._config.review_timeout, failed)
        return self._post(api, api.create_subject_access_review, body, secret="", failed=failed, started=started)

    def get(self, path: str, failed: Failed) -> bytes:
        """GET ``path`` of the API server (the issuer's discovery document, its ``/openid/v1/jwks``)
        with the client's credential: the raw body, or ``failed(why, reason)`` raised.

        The same deadline (``review_timeout``, counted before the client is built) and answer cap
        as a TokenReview, so a key fetch can hold a thread no longer than a review can.
        """
        started = time.monotonic()
        client = self.api(started + self._config.review_timeout, failed).api_client
        timeout = self._config.review_timeout
        return call_api(
            lambda: _raw_get(client, path, timeout),
            host=client.configuration.host,
            timeout=timeout,
            secret="",
            failed=failed,
            started=started,
        )

    def _post(
        self,
        api: AuthenticationV1Api | AuthorizationV1Api,
        create: Callable[..., Any],
        body: Mapping[str, Any],
        *,
        secret: str,
        failed: Failed,
        started: float,
    ) -> bytes:
        """One ``create`` of ``api`` within the review's deadline, counted from ``started``.

        A plain dict body and the raw response: no model round trip, and the JSON is ours to check.
        """
        timeout = self._config.review_timeout
        return call_api(
            lambda: create(body=body, _request_timeout=timeout, _preload_content=False),
            host=api.api_client.configuration.host,
            timeout=timeout,
            secret=secret,
            failed=failed,
            started=started,
        )
