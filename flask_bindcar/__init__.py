"""flask-bindcar: Kubernetes ServiceAccount token authentication for Flask and any WSGI app.

The Python home of the authentication layer bindcar documents in "Kubernetes TokenReview
Validation": Basic mode and TokenReview mode, audience, namespace and ServiceAccount allowlists,
the same environment variables and the same error messages.

Names are imported on first use, so ``flask_bindcar.testing`` can be used without Flask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask_bindcar.config import AuthConfig
    from flask_bindcar.errors import AuthError, ConfigError
    from flask_bindcar.extension import BindcarAuth, auth_exempt, auth_required, current_identity
    from flask_bindcar.identity import Identity
    from flask_bindcar.middleware import BindcarMiddleware
    from flask_bindcar.rbac import RBAC

__version__ = "0.1.0"

_EXPORTS = {
    "AuthConfig": "flask_bindcar.config",
    "AuthError": "flask_bindcar.errors",
    "ConfigError": "flask_bindcar.errors",
    "BindcarAuth": "flask_bindcar.extension",
    "auth_exempt": "flask_bindcar.extension",
    "auth_required": "flask_bindcar.extension",
    "current_identity": "flask_bindcar.extension",
    "Identity": "flask_bindcar.identity",
    "BindcarMiddleware": "flask_bindcar.middleware",
    "RBAC": "flask_bindcar.rbac",
}

__all__ = [
    "RBAC",
    "AuthConfig",
    "AuthError",
    "BindcarAuth",
    "BindcarMiddleware",
    "ConfigError",
    "Identity",
    "auth_exempt",
    "auth_required",
    "current_identity",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flask_bindcar' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
