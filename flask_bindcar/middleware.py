"""WSGI middleware: the same authentication for any WSGI application.

``BindcarMiddleware(app, **overrides)`` answers failures itself, with the same JSON body and
headers as the Flask extension, and hands the caller's `Identity` to the application at
``environ["bindcar.identity"]``, its username at ``environ["REMOTE_USER"]``. The application
runs only for an admitted request or an exempt path: never for a request without valid
credentials, a CORS preflight included.
``gunicorn 'flask_bindcar.middleware:wrap("pkg.module:app")'`` wraps an application without
writing code; configuration then comes from the environment.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask_bindcar.authenticator import Authenticator
from flask_bindcar.config import AuthConfig
from flask_bindcar.credentials import is_cors_preflight
from flask_bindcar.errors import BindcarError, ConfigError
from flask_bindcar.identity import ENVIRON_KEY, clear_remote_user, put_in_environ

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ENVIRON_KEY", "BindcarMiddleware", "load_app", "wrap"]


class BindcarMiddleware:
    """Authenticate every request before it reaches ``app``.

    Keywords are the `AuthConfig` field names and take precedence over the environment. Requests
    to the exempt paths (``BIND_AUTH_EXEMPT_PATHS``) pass unauthenticated, without
    ``bindcar.identity``; every other request, ``OPTIONS`` and CORS preflights included, is
    admitted by `Authenticator.admit` or answered here. With ``cors_preflight="answer"``
    (``BIND_CORS_PREFLIGHT=answer``) a preflight (`is_cors_preflight`) without credentials gets
    ``204 No Content`` from the middleware itself, for a CORS layer in front to complete; the
    application never sees it.
    """

    def __init__(self, app: WSGIApplication, **overrides: Any):
        self.app = app
        self.config = AuthConfig.load(overrides)
        if self.config.rbac is not None and self.config.rbac.view_args:
            raise ConfigError(
                f"RBAC{self.config.rbac.summary()!r} names view arguments, which only a Flask route has: "
                "give the WSGI middleware a fixed namespace and name, or path=True"
            )
        self.authenticator = Authenticator(self.config)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in self.config.exempt_paths:
            clear_remote_user(environ)
            return self.app(environ, start_response)
        header = environ.get("HTTP_AUTHORIZATION")
        if self.config.cors_preflight == "answer" and is_cors_preflight(environ):
            start_response("204 No Content", list(PREFLIGHT_HEADERS))
            return []
        try:
            identity = self.authenticator.admit(
                header,
                method=environ.get("REQUEST_METHOD", "GET"),
                path=path,
                environ=environ,
                remote_addr=environ.get("REMOTE_ADDR"),
            )
        except BindcarError as e:
            clear_remote_user(environ)
            return e(environ, start_response)
        put_in_environ(environ, identity)
        return self.app(environ, start_response)


PREFLIGHT_HEADERS = (("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),)
"""The middleware's own answer to a preflight (``cors_preflight="answer"``): no ``Access-Control-Allow-*``
header, so a browser goes on only if a CORS layer in front adds them."""


def load_app(target: str) -> WSGIApplication:
    """Import ``"pkg.module:attr"`` (``attr`` may be dotted; default ``application``)."""
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in (attr or "application").split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not a WSGI application")
    return obj  # type: ignore[no-any-return]


def wrap(target: str, **overrides: Any) -> BindcarMiddleware:
    """``BindcarMiddleware`` around the application named ``"pkg.module:app"``, for gunicorn."""
    return BindcarMiddleware(load_app(target), **overrides)
