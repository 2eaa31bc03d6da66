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
from flask_bindcar.config import AuthConfig, check_cluster_names, parse_namespaces, parse_service_accounts
from flask_bindcar.credentials import is_cors_preflight
from flask_bindcar.errors import BindcarError, ConfigError
from flask_bindcar.identity import ENVIRON_KEY, Identity, clear_remote_user, put_in_environ
from flask_bindcar.policy import APP_POLICY, ViewPolicy
from flask_bindcar.rbac import RBAC
from flask_bindcar.review import Route

F = TypeVar("F", bound=Callable[..., Any])

EXEMPT_ATTR = "_bindcar_exempt"
POLICY_ATTR = "_bindcar_policy"
"""Set on `auth_required` views: their `ViewPolicy`, which the guard, the view and ``review`` read."""
UNWRAPPED_ATTR = "_bindcar_unwrapped"
"""Set on a function `auth_required` wrapped: registered as a view itself, it would run unprotected."""
ADMITTED_KEY = "bindcar.admitted_by"
"""The environ key naming the `Authenticator` that admitted the request: a view reuses only its own."""


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
    """One app's ``before_request`` hook: admit the request unless it is exempt.

    Bound to its app and `Authenticator`, so the hot path does no lookups through proxies or
    registries; a view's exemption and policy are read from it once. On the first request (and
    whenever views were added since) it checks the views against the configuration
    (`_check_views`): a mistake there is a `ConfigError`, never a silently unprotected view.
    """

    def __init__(self, app: Flask, auth: Authenticator):
        self.app = app
        self.auth = auth
        self.protect_all = auth.config.protect_all
        self.exempt_paths = auth.config.exempt_paths
        self.answer_preflights = auth.config.cors_preflight != "authenticate"
        self._views: dict[str | None, tuple[bool, ViewPolicy | None]] = {}
        self._checked = -1

    def __call__(self) -> Response | None:
        if self._checked != len(self.app.view_functions):
            _check_views(self.app, self.auth.config)
            self._checked = len(self.app.view_functions)
        req = request._get_current_object()  # type: ignore[attr-defined]
        environ = req.environ
        if not self.protect_all:
            clear_remote_user(environ)
            return None
        if req.path in self.exempt_paths:
            clear_remote_user(environ)
            return None
        endpoint = req.endpoint
        found = self._views.get(endpoint)
        if found is None:
            view = self.app.view_functions.get(endpoint) if endpoint is not None else None
            found = self._views[endpoint] = (bool(getattr(view, EXEMPT_ATTR, False)), getattr(view, POLICY_ATTR, None))
        exempt, policy = found
        if exempt:
            clear_remote_user(environ)
            return None
        if self.answer_preflights and req.method == "OPTIONS" and endpoint is not None and is_cors_preflight(environ):
            clear_remote_user(environ)
            return self.app.make_default_options_response()
        _admit(self.auth, req, policy or APP_POLICY)
        return None


def _admit(auth: Authenticator, req: Request, policy: ViewPolicy) -> Identity:
    """Run the admission chain for ``req`` and keep the caller for `current_identity`."""
    environ = req.environ
    try:
        identity = auth.admit(
            environ.get("HTTP_AUTHORIZATION"),
            method=req.method,
            path=environ.get("PATH_INFO", ""),
            environ=environ,
            remote_addr=req.remote_addr,
            view_args=req.view_args,
            policy=policy,
        )
    except BindcarError:
        clear_remote_user(environ)
        raise
    put_in_environ(environ, identity)
    environ[ADMITTED_KEY] = auth
    return identity


def _check_views(app: Flask, config: AuthConfig) -> None:
    """`ConfigError` for views the configuration cannot protect as written.

    * ``@auth_required`` above ``@app.route``: the route registered the function it wrapped, so
      its policy would never run;
    * an app-wide RBAC rule naming view arguments (``name="{name}"``) on a protected route that
      does not have them: every request to it would be a 503;
    * an ``@auth_required`` allowlist naming a cluster (``east/zones``) that is not configured.
    """
    for endpoint, function in sorted(app.view_functions.items()):
        own: ViewPolicy | None = getattr(function, POLICY_ATTR, None)
        if own is not None:
            check_cluster_names(f"{endpoint}: auth_required(namespaces=...)", own.namespaces, config.clusters)
            check_cluster_names(
                f"{endpoint}: auth_required(service_accounts=...)", own.service_accounts, config.clusters
            )
    misordered = sorted(e for e, v in app.view_functions.items() if getattr(v, UNWRAPPED_ATTR, False))
    if misordered:
        raise ConfigError(
            f"@auth_required is written above @app.route for {', '.join(misordered)}: the route registered the "
            "unprotected function. Put @app.route(...) first (outermost), @auth_required(...) below it"
        )
    rules = config.rbac
    if rules is None or not rules.view_args:
        return
    lacking = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        policy: ViewPolicy | None = getattr(view, POLICY_ATTR, None)
        protected = (config.protect_all or policy is not None) and not getattr(view, EXEMPT_ATTR, False)
        if protected and (policy is None or policy.rbac is None) and rule.rule not in config.exempt_paths:
            missing = [a for a in rules.view_args if a not in rule.arguments]
            if missing:
                lacking.append(f"{rule.rule} (no {', '.join(missing)})")
    if lacking:
        raise ConfigError(
            f"{config.sources['rbac'][1]}: RBAC{rules.summary()!r} names view arguments that these routes lack: "
            f"{'; '.join(sorted(lacking))}. Give them their own @auth_required(rbac=...), exempt them, or use "
            "rules without view arguments app-wide"
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
    policy = ViewPolicy(namespaces=allowed_ns, service_accounts=allowed_sa, require_pod=require_pod, rbac=rbac)

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        req = request._get_current_object()  # type: ignore[attr-defined]
        auth = _extension().authenticator()
        environ = req.environ
        if environ.get(ADMITTED_KEY) is not auth:  # the guard is off, or another layer's identity
            # the view runs only for an admitted caller
            if auth.config.cors_preflight != "authenticate" and is_cors_preflight(environ):
                return current_app.make_default_options_response()
            _admit(auth, req, policy)
        return current_app.ensure_sync(view)(*args, **kwargs)

    setattr(wrapper, POLICY_ATTR, policy)
    setattr(view, UNWRAPPED_ATTR, True)
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
    try:
        _check_views(app, _extension().config())
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    views_rbac = any(getattr(view, POLICY_ATTR, APP_POLICY).rbac is not None for view in app.view_functions.values())
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
    policy: ViewPolicy | None = getattr(view, POLICY_ATTR, None)
    exempt = path in config.exempt_paths or getattr(view, EXEMPT_ATTR, False) or (not config.protect_all and not policy)
    own = policy or APP_POLICY
    rbac = own.rbac or config.rbac
    return Route(
        method,
        path,
        rule.endpoint,
        exempt,
        own.namespaces,
        own.service_accounts,
        rbac,
        view_args,
        require_pod=own.require_pod,
    )
