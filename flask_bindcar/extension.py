"""The Flask extension: ``BindcarAuth(app)``, ``@auth_required``, ``@auth_exempt``, ``current_identity``."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

import click
from flask import Flask, Request, Response, current_app, has_request_context, request
from flask.cli import with_appcontext
from werkzeug.exceptions import HTTPException
from werkzeug.local import LocalProxy

from flask_bindcar.authenticator import Authenticator
from flask_bindcar.config import AuthConfig, parse_namespaces, parse_service_accounts
from flask_bindcar.credentials import is_cors_preflight
from flask_bindcar.doctor import Route
from flask_bindcar.identity import ENVIRON_KEY, Identity, put_in_environ
from flask_bindcar.rbac import RBAC

F = TypeVar("F", bound=Callable[..., Any])

EXEMPT_ATTR = "_bindcar_exempt"
POLICY_ATTR = "_bindcar_policy"
"""Set on `auth_required` views: their own (namespaces, service_accounts), for ``flask bindcar review``."""
REQUIRED_ATTR = "_bindcar_required"
"""Set on `auth_required` views: they make their own RBAC check, so the hook leaves it to them."""
RBAC_ATTR = "_bindcar_rbac"
"""Set on `auth_required` views: their own ``rbac``, or None, for ``flask bindcar review``."""


def _get_identity() -> Identity | None:
    # Kept in the request's environ, not on ``g``: one app context can serve several requests (a
    # test client inside a pushed request context, as pytest-flask's fixtures have it).
    if not has_request_context():
        return None
    identity: Identity | None = request.environ.get(ENVIRON_KEY)
    return identity


current_identity: Identity | None = LocalProxy(_get_identity)  # type: ignore[assignment]
"""The `Identity` of the current request, None-like (falsy) when it was not authenticated."""


class BindcarAuth:
    """Protects a Flask app with Kubernetes ServiceAccount bearer tokens.

    ``BindcarAuth(app, **overrides)`` or ``BindcarAuth(**overrides).init_app(app)``. Keywords are
    the `AuthConfig` field names and take precedence over ``app.config`` and the environment.
    Unless ``BINDCAR_PROTECT_ALL`` is False, every view is protected but those marked
    `auth_exempt` and the exempt paths. A CORS preflight to a protected view gets Flask's default
    ``OPTIONS`` answer without running the view; any other ``OPTIONS`` is authenticated.
    """

    def __init__(self, app: Flask | None = None, **overrides: Any):
        self._overrides = overrides
        self._authenticators: weakref.WeakKeyDictionary[Flask, Authenticator] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Load and validate the configuration (`ConfigError` if it cannot work) and guard ``app``."""
        auth = Authenticator(AuthConfig.load(self._overrides, app.config))
        self._authenticators[app] = auth
        app.extensions["bindcar"] = self
        app.cli.add_command(cli)
        if auth.config.protect_all:
            app.before_request(_Guard(app, auth))

    def authenticator(self, app: Flask | None = None) -> Authenticator:
        """The `Authenticator` serving ``app`` (default: the current app)."""
        target = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            return self._authenticators[target]
        except KeyError:
            raise RuntimeError("BindcarAuth.init_app() was not called for this app") from None

    def config(self, app: Flask | None = None) -> AuthConfig:
        """The resolved configuration of ``app`` (default: the current app)."""
        return self.authenticator(app).config


class _Guard:
    """One app's ``before_request`` hook: authenticate unless the request is exempt.

    Bound to its app and `Authenticator`, so the hot path does no lookups through proxies or
    registries; whether an endpoint is exempt is read from its view once.
    """

    def __init__(self, app: Flask, auth: Authenticator):
        self.app = app
        self.auth = auth
        self.exempt_paths = auth.config.exempt_paths
        self._exempt_endpoints: dict[str, bool] = {}
        self._own_rbac: dict[str | None, bool] = {}

    def __call__(self) -> Response | None:
        req = request._get_current_object()  # type: ignore[attr-defined]
        if req.path in self.exempt_paths:
            return None
        endpoint = req.endpoint
        if endpoint is not None:
            exempt = self._exempt_endpoints.get(endpoint)
            if exempt is None:
                view = self.app.view_functions.get(endpoint)
                exempt = self._exempt_endpoints[endpoint] = bool(getattr(view, EXEMPT_ATTR, False))
            if exempt:
                return None
            if is_cors_preflight(req.environ):
                return self.app.make_default_options_response()
        identity = _authenticate(self.auth, req)
        rbac = self.auth.config.rbac
        if rbac is not None:
            own = self._own_rbac.get(endpoint)
            if own is None:
                view = self.app.view_functions.get(endpoint) if endpoint is not None else None
                own = self._own_rbac[endpoint] = bool(getattr(view, REQUIRED_ATTR, False))
            if not own:
                _check_rbac(self.auth, identity, rbac, req)
        return None


def _request_info(req: Request) -> dict[str, Any]:
    return {"remote_addr": req.remote_addr, "method": req.method, "path": req.path}


def _authenticate(auth: Authenticator, req: Request) -> Identity:
    """Authenticate the request and keep the caller for `current_identity`."""
    identity = auth.authenticate(
        req.environ.get("HTTP_AUTHORIZATION"), remote_addr=req.remote_addr, method=req.method, path=req.path
    )
    put_in_environ(req.environ, identity)
    return identity


def _check_rbac(auth: Authenticator, identity: Identity, rbac: RBAC, req: Request) -> None:
    auth.check_access(
        identity, rbac, method=req.method, path=req.path, view_args=req.view_args, remote_addr=req.remote_addr
    )


def _extension() -> BindcarAuth:
    ext = current_app.extensions.get("bindcar")
    if not isinstance(ext, BindcarAuth):
        raise RuntimeError("@auth_required needs BindcarAuth(app) or BindcarAuth().init_app(app) first")
    return ext


@overload
def auth_required(view: F) -> F: ...


@overload
def auth_required(
    *,
    namespaces: Iterable[str] | str | None = None,
    service_accounts: Iterable[str] | str | None = None,
    rbac: RBAC | None = None,
    require_pod: bool = False,
) -> Callable[[F], F]: ...


def auth_required(
    view: F | None = None,
    *,
    namespaces: Iterable[str] | str | None = None,
    service_accounts: Iterable[str] | str | None = None,
    rbac: RBAC | None = None,
    require_pod: bool = False,
) -> F | Callable[[F], F]:
    """Require an authenticated caller for this view, even with ``BINDCAR_PROTECT_ALL = False``.

    With arguments it adds a stricter policy on top of the app's: the caller's namespace must be
    in ``namespaces`` and its username in ``service_accounts``
    (``system:serviceaccount:<ns>:<name>``), with the seed's messages when not. ``rbac``
    asks the API server whether the caller may do what it describes (a SubjectAccessReview,
    403 when not); without it the app-wide ``BINDCAR_AUTHZ``, if any, applies. ``require_pod``
    accepts only a token bound to a pod (``Token validation failed: token is not bound to a pod``
    when not). Works on async views too.
    """
    allowed_ns = parse_namespaces("auth_required(namespaces=...)", namespaces) if namespaces is not None else None
    allowed_sa = (
        parse_service_accounts("auth_required(service_accounts=...)", service_accounts)
        if service_accounts is not None
        else None
    )
    if view is None:
        return functools.partial(
            auth_required, namespaces=allowed_ns, service_accounts=allowed_sa, rbac=rbac, require_pod=require_pod
        )

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        req = request._get_current_object()  # type: ignore[attr-defined]
        if is_cors_preflight(req.environ):  # the view runs only for an authenticated caller
            return current_app.make_default_options_response()
        auth = _extension().authenticator()
        identity = req.environ.get(ENVIRON_KEY) or _authenticate(auth, req)
        if allowed_ns is not None or allowed_sa is not None or require_pod:
            auth.authorize(
                identity,
                namespaces=allowed_ns,
                service_accounts=allowed_sa,
                require_pod=require_pod,
                **_request_info(req),
            )
        rules = rbac if rbac is not None else auth.config.rbac
        if rules is not None:
            _check_rbac(auth, identity, rules, req)
        return current_app.ensure_sync(view)(*args, **kwargs)

    setattr(wrapper, POLICY_ATTR, (allowed_ns, allowed_sa, require_pod))
    setattr(wrapper, REQUIRED_ATTR, True)
    setattr(wrapper, RBAC_ATTR, rbac)
    return wrapper


def auth_exempt(view: F) -> F:
    """Let this view through without authentication (health and readiness probes, say)."""
    setattr(view, EXEMPT_ATTR, True)
    return view


@click.group("bindcar", help="flask-bindcar troubleshooting, with this app's configuration.")
def cli() -> None:
    pass


@cli.command("doctor", help="Check the configuration, the client, the API server and the RBAC permission.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@with_appcontext
def doctor_command(as_json: bool) -> None:
    from flask_bindcar.__main__ import run_doctor

    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    views_rbac = any(getattr(view, RBAC_ATTR, None) is not None for view in app.view_functions.values())
    raise SystemExit(run_doctor(_extension().config(), as_json, authorization=views_rbac))


@cli.command(
    "review",
    help="Explain what happens to a token or a whole 'Bearer <token>' header value, read from stdin or "
    "--token-file (never argv). With --path, as a request to that view: its own @auth_required applies.",
)
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--method", default="GET", show_default=True, help="The request's method, with --path.")
@click.option("--path", default=None, help="The request's path, resolved through the app's URL map.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@with_appcontext
def review_command(token_file: Path | None, method: str, path: str | None, as_json: bool) -> None:
    from flask_bindcar.__main__ import read_token, run_review

    route = _route(method.upper(), path) if path is not None else None
    raise SystemExit(run_review(_extension().config(), read_token(token_file), as_json, route))


def _route(method: str, path: str) -> Route:
    """The view ``method path`` reaches in the current app, and what protects it."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        rule, view_args = app.url_map.bind("localhost").match(path, method=method, return_rule=True)
    except HTTPException as e:
        raise click.ClickException(f"no view answers {method} {path} ({e.code} {e.name})") from None
    view = app.view_functions[rule.endpoint]
    config = _extension().config()
    policy = getattr(view, POLICY_ATTR, None)
    exempt = path in config.exempt_paths or getattr(view, EXEMPT_ATTR, False) or (not config.protect_all and not policy)
    namespaces, service_accounts, require_pod = policy or (None, None, False)
    rbac = getattr(view, RBAC_ATTR, None) or config.rbac
    return Route(
        method, path, rule.endpoint, exempt, namespaces, service_accounts, rbac, view_args, require_pod=require_pod
    )
