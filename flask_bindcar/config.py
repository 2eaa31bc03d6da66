"""Configuration: one table of settings, read once at startup, validated before the first request.

Precedence, highest first: a constructor keyword, ``app.config`` (``BINDCAR_*``), the environment
(``BIND_*``, the seed's names), the default. A value that cannot work raises `ConfigError` naming
the variable, the value and what is accepted.

Over 500 lines on purpose: the table (`SETTINGS`), the parser of each kind of value and the checks
of combinations are one fact, "what a valid configuration is", and a new setting is a row and at
most one parser beside the others.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit

from flask_bindcar.errors import ConfigError
from flask_bindcar.identity import split_service_account
from flask_bindcar.ratelimit import Limit, parse_limit
from flask_bindcar.rbac import RBAC

logger = logging.getLogger("flask_bindcar")

Mode = Literal["basic", "tokenreview", "jwt"]
ErrorDetail = Literal["full", "generic"]
CorsPreflight = Literal["authenticate", "answer"]
Precheck = Literal["auto", "on", "off"]
Source = Literal["keyword", "app.config", "environment", "default"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# RFC 6750 b64token: what a bearer token may consist of.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

INSTALL_HINT = "pip install 'flask-bindcar[k8s-token-review]'"
JWT_INSTALL_HINT = "pip install 'flask-bindcar[jwt]'"
KUBE_TRIO = ("KUBE_API_SERVER", "KUBE_TOKEN_PATH", "KUBE_CA_CERT_PATH")

MAX_TIMEOUT = 60.0
"""Seconds. A TokenReview holds a worker thread; longer than gunicorn's default 30 s worker timeout
already gets the worker killed, and past a minute a caller has long given up."""
MAX_TTL = 3600.0
"""Seconds, for every cache lifetime: a revoked token or a deleted ServiceAccount is accepted at most
this long after the fact (a projected token lives an hour by default)."""
KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""The methods a request may use unless ``BIND_ALLOWED_METHODS`` says otherwise: those with an RBAC verb
(`flask_bindcar.rbac.RESOURCE_VERBS`), and ``OPTIONS``. Any other is refused with 405 before any review,
so that a made-up method cannot choose its own verb."""
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FAILURE_LIMIT_WARNING = (
    "BIND_AUTH_FAILURE_LIMIT={limit} counts failures per client address (REMOTE_ADDR): behind a proxy, "
    "a sidecar or an ingress every caller shares one address, and one client's bad tokens get every caller "
    "a 429. Turn it on only where REMOTE_ADDR is the caller's own address."
)
JWT_MODE_WARNING = (
    "flask-bindcar is in jwt mode: tokens are verified with the issuer's published keys and no TokenReview is "
    "sent, so a deleted ServiceAccount or pod is noticed only when its token expires{cap}"
)
JWT_MODE_CAP = " or passes the lifetime cap (BIND_JWT_MAX_TOKEN_LIFETIME={cap}s)"
JWT_MODE_NO_CAP = (
    ", up to a year for a projected token kube-apiserver extended (BIND_JWT_MAX_TOKEN_LIFETIME=0: no lifetime cap)"
)
DEFAULT_JWT_MAX_TOKEN_LIFETIME = 3607
"""Seconds from ``iat`` after which jwt mode refuses a token whatever its ``exp``: kube's default
projected-token lifetime (a kubelet replaces a mounted token at 80 % of it). kube-apiserver extends
such tokens to a year unless ``--service-account-extend-token-expiration=false``, and jwt mode
cannot see their revocation."""
DEFAULT_KUBECONFIG = "~/.kube/config"
MODE_NAMES = {"basic": "Basic mode", "tokenreview": "TokenReview mode", "jwt": "jwt mode"}
NO_API_SERVER = "no KUBE_API_SERVER, no KUBECONFIG, no ~/.kube/config, not in a cluster"
DEFAULT_MAX_INFLIGHT = 4
"""TokenReviews in flight per process. Below the thread count of any threaded server worth the name
(the example runs 8), so a hanging API server never takes every thread: cache hits and health probes
still find one."""

# Audiences that are, or look like, the API server's own (``--api-audiences``, which defaults to the
# issuer): kubeadm, kind and k3s defaults, and the managed clusters' issuers. Audience-agnostic
# authenticators (static and bootstrap tokens, OIDC, webhooks) vouch for these, so they let in users
# that are not ServiceAccounts.
_API_SERVER_AUDIENCE = re.compile(
    r"(^|[/.])kubernetes\.default\.svc([./:]|$)|^(https://)?(kubernetes|api|k3s|rke2)$"
    r"|^https://oidc\.eks\.[^/]+\.amazonaws\.com/|^https://container\.googleapis\.com/"
    r"|\.oic\.prod-aks\.azure\.com/"
)


def looks_like_api_server_audience(audience: str) -> bool:
    """Whether ``audience`` is a well-known form of the Kubernetes API server's own audience."""
    return bool(_API_SERVER_AUDIENCE.search(audience))


def _bad(name: str, raw: Any, accepted: str) -> ConfigError:
    return ConfigError(f"{name}={raw!r} is not valid: expected {accepted}")


def split_list(raw: Any) -> list[str]:
    """Items of a list setting: a string split on commas and newlines, or an iterable of strings.

    Blanks are trimmed and empty items skipped, so a ConfigMap's newline-separated value works
    as it is.
    """
    if isinstance(raw, str):
        items: Iterable[Any] = re.split(r"[,\n]", raw)
    elif isinstance(raw, Iterable):
        items = raw
    else:
        raise TypeError
    return [str(item).strip() for item in items if str(item).strip()]


def _parse_list(name: str, raw: Any, *, what: str, valid: Callable[[str], bool]) -> tuple[str, ...]:
    try:
        items = split_list(raw)
    except TypeError:
        raise _bad(name, raw, f"a comma- or newline-separated list of {what}") from None
    if not items:
        raise ConfigError(f"{name}={raw!r} lists no {what}; leave it unset to allow all")
    for item in items:
        if not valid(item):
            raise ConfigError(f"{name}: {item!r} is not valid: expected {what}")
    return tuple(dict.fromkeys(items))


def _mode(name: str, raw: Any) -> Mode:
    value = str(raw).strip().lower()
    if value == "basic":
        return "basic"
    if value == "tokenreview":
        return "tokenreview"
    if value == "jwt":
        return "jwt"
    raise _bad(name, raw, "'basic', 'tokenreview' or 'jwt'")


def _audiences(name: str, raw: Any) -> tuple[str, ...]:
    return _parse_list(name, raw, what="audiences", valid=lambda a: not any(c.isspace() for c in a))


def split_cluster(item: str) -> tuple[str | None, str]:
    """``east/dns-system`` -> ``("east", "dns-system")``; an unqualified item -> ``(None, item)``
    (any cluster). Neither a namespace nor a ServiceAccount username holds a ``/``."""
    cluster, sep, rest = item.partition("/")
    return (cluster, rest) if sep else (None, item)


def _qualified(valid: Callable[[str], bool]) -> Callable[[str], bool]:
    """``valid``, for an item that may name a cluster first (``east/...``, docs/clusters.md); the
    message of an invalid item stays the one it always was."""

    def check(item: str) -> bool:
        cluster, rest = split_cluster(item)
        return (cluster is None or bool(_DNS_LABEL.match(cluster))) and valid(rest)

    return check


def parse_namespaces(name: str, raw: Any) -> frozenset[str]:
    return frozenset(
        _parse_list(
            name,
            raw,
            what="namespaces (DNS labels such as dns-system)",
            valid=_qualified(lambda n: bool(_DNS_LABEL.match(n))),
        )
    )


def _valid_service_account(item: str) -> bool:
    parts = split_service_account(item)
    return parts is not None and bool(_DNS_LABEL.match(parts[0])) and bool(_DNS_SUBDOMAIN.match(parts[1]))


def parse_service_accounts(name: str, raw: Any) -> frozenset[str]:
    what = "service accounts of the form system:serviceaccount:<namespace>:<name>"
    return frozenset(_parse_list(name, raw, what=what, valid=_qualified(_valid_service_account)))


def check_cluster_names(name: str, items: Iterable[str] | None, clusters: tuple[ClusterEntry, ...] | None) -> None:
    """`ConfigError` for an allowlist item naming a cluster that is not configured."""
    known = [c.name for c in clusters or ()]
    for item in sorted(items or ()):
        cluster, _ = split_cluster(item)
        if cluster is None or cluster in known:
            continue
        if not known:
            raise ConfigError(
                f"{name}: {item!r} names the cluster {cluster}, but no clusters are configured (BIND_CLUSTERS_FILE)"
            )
        raise ConfigError(
            f"{name}: {item!r} names the cluster {cluster}, which is not in clusters ({', '.join(known)})"
        )


def _api_token(name: str, raw: Any) -> str:
    value = str(raw).strip()
    if not B64TOKEN.fullmatch(value):
        # Never echo a secret, even a malformed one.
        raise ConfigError(
            f"{name} is not valid: expected a non-empty bearer token (letters, digits, -._~+/ and trailing =)"
        )
    return value


def _seconds(name: str, raw: Any, *, positive: bool, maximum: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    # NaN and infinities fail the range check too.
    if not (0 < value <= maximum if positive else 0 <= value <= maximum):
        accepted = (
            f"a number of seconds greater than 0 and at most {maximum:g}"
            if positive
            else f"a number of seconds from 0 to {maximum:g}"
        )
        raise _bad(name, raw, accepted)
    return value


def _ttl(name: str, raw: Any) -> float:
    return _seconds(name, raw, positive=False, maximum=MAX_TTL)


def _timeout(name: str, raw: Any) -> float:
    return _seconds(name, raw, positive=True, maximum=MAX_TIMEOUT)


def _error_detail(name: str, raw: Any) -> ErrorDetail:
    value = str(raw).strip().lower()
    if value == "full":
        return "full"
    if value == "generic":
        return "generic"
    raise _bad(name, raw, "'full' or 'generic'")


def _cors_preflight(name: str, raw: Any) -> CorsPreflight:
    value = str(raw).strip().lower()
    if value == "authenticate":
        return "authenticate"
    if value == "answer":
        return "answer"
    raise _bad(name, raw, "'authenticate' or 'answer'")


def _methods(name: str, raw: Any) -> tuple[str, ...]:
    """HTTP methods (RFC 9110 tokens), upper-cased: ``get`` in a setting means ``GET``."""
    items = _parse_list(name, raw, what="HTTP methods such as GET", valid=lambda m: bool(_HTTP_TOKEN.fullmatch(m)))
    return tuple(dict.fromkeys(m.upper() for m in items))


def _https_url(name: str, value: str) -> None:
    """`ConfigError` unless ``value`` is an ``https://`` URL with a host: tokens never travel in clear."""
    try:
        parts = urlsplit(value)
        ok = parts.scheme.lower() == "https" and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise _bad(
            name,
            value,
            "an https:// URL such as https://10.0.0.1:6443 (the callers' tokens and our own credential would "
            "travel in clear text)",
        )


def _lifetime(name: str, raw: Any) -> int:
    """Whole seconds, 0 or more (0: no cap)."""
    try:
        value = int(str(raw).strip()) if not isinstance(raw, bool) else -1
    except ValueError:
        value = -1
    if value < 0:
        raise _bad(name, raw, "a whole number of seconds, 0 for no cap")
    return value


def _size(name: str, raw: Any) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise _bad(name, raw, "a whole number, 1 or more") from None
    if value < 1:
        raise _bad(name, raw, "a whole number, 1 or more")
    return value


def _flag(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise _bad(name, raw, "true or false")


def _paths(name: str, raw: Any) -> frozenset[str]:
    return frozenset(_parse_list(name, raw, what="URL paths starting with /", valid=lambda p: p.startswith("/")))


def _authz(name: str, raw: Any) -> RBAC | None:
    """An `RBAC` (keyword or ``app.config``), or ``path`` for the request path, or ``none``."""
    if isinstance(raw, RBAC):
        return raw
    value = str(raw).strip().lower()
    if value == "path":
        return RBAC(path=True)
    if value in ("none", "off"):
        return None
    raise _bad(name, raw, "'path', 'none' or (in code) an RBAC(...)")


def _precheck(name: str, raw: Any) -> Precheck:
    value = str(raw).strip().lower()
    if value == "auto":
        return "auto"
    if value == "on":
        return "on"
    if value == "off":
        return "off"
    raise _bad(name, raw, "'auto', 'on' or 'off'")


def _issuers(name: str, raw: Any) -> tuple[str, ...]:
    return _parse_list(
        name, raw, what="issuers (--service-account-issuer values)", valid=lambda i: not any(c.isspace() for c in i)
    )


def _jwks_url(name: str, raw: Any) -> str:
    """An ``https://`` URL, fetched directly, or a path of the API server (``/openid/v1/jwks``),
    fetched through the client."""
    value = str(raw).strip()
    if value.startswith("/") and not value.startswith("//") and not any(c.isspace() for c in value):
        return value
    _https_url(name, value)
    return value


def _text(name: str, raw: Any) -> str:
    value = str(raw).strip()
    if not value:
        raise _bad(name, raw, "a non-empty value")
    return value


CLUSTER_KEYS = ("name", "issuer", "kubeconfig", "context", "server", "token_file", "ca_file", "jwks_url")
CLUSTER_TRIO = ("server", "token_file", "ca_file")


@dataclass(frozen=True)
class ClusterEntry:
    """One trusted cluster of ``BIND_CLUSTERS_FILE`` / ``BINDCAR_CLUSTERS`` (docs/clusters.md).

    Its API server is reached through ``kubeconfig`` (and ``context``), or ``server`` with
    ``token_file`` and ``ca_file`` (the ``KUBE_*`` trio's fields); with neither, its tokens are
    verified in jwt mode only, the keys from ``jwks_url`` or the issuer's discovery document.
    """

    name: str
    issuer: str
    kubeconfig: str | None = None
    context: str | None = None
    server: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    jwks_url: str | None = None

    @property
    def has_api_server(self) -> bool:
        return self.kubeconfig is not None or self.server is not None

    def describe(self) -> dict[str, str]:
        return {k: v for k, v in ((k, getattr(self, k)) for k in CLUSTER_KEYS) if v is not None}


def _readable(path: str) -> bool:
    path = os.path.expanduser(path)
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _read_clusters_file(name: str, raw: str) -> Any:
    """The ``clusters:`` list of a YAML file (a mounted ConfigMap, say)."""
    path = raw.strip()
    if not path:
        raise _bad(name, raw, "the path of a YAML file with a top-level clusters: list")
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            f"{name} is a YAML file, read with PyYAML, which comes with the Kubernetes client: {INSTALL_HINT}"
        ) from None
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{name}: {path} cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{name}: {path} is not valid YAML{where}") from None
    if not isinstance(document, dict) or "clusters" not in document:
        raise ConfigError(f"{name}: {path} has no top-level clusters: list")
    return document["clusters"]


def _clusters(name: str, raw: Any) -> tuple[ClusterEntry, ...]:
    """The trusted clusters: a list of mappings (``BINDCAR_CLUSTERS``), or the path of a YAML file
    whose top-level ``clusters:`` is that list (``BIND_CLUSTERS_FILE``). Every entry is checked
    here, and the error names it: ``BIND_CLUSTERS_FILE: clusters[1] (west): ...``."""
    items = _read_clusters_file(name, raw) if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise _bad(name, raw, "a list of clusters (mappings with name and issuer), or the path of a YAML file")
    if not items:
        raise ConfigError(f"{name}={list(items)!r} lists no clusters; leave it unset for one cluster")
    entries: list[ClusterEntry] = []
    for i, item in enumerate(items):
        entry = _cluster_entry(f"{name}: clusters[{i}]", item)
        where = f"{name}: clusters[{i}] ({entry.name})"
        for j, other in enumerate(entries):
            if other.name == entry.name:
                raise ConfigError(f"{where}: the name {entry.name} is already clusters[{j}]'s")
            if other.issuer == entry.issuer:
                raise ConfigError(f"{where}: the issuer {entry.issuer} is already clusters[{j}]'s ({other.name})")
        entries.append(entry)
    return tuple(entries)


def _cluster_entry(at: str, item: Any) -> ClusterEntry:
    """One entry, checked: its keys, its name, an https issuer, one readable way to its API server."""
    if not isinstance(item, Mapping):
        raise ConfigError(f"{at}: expected a mapping with name and issuer, not {type(item).__name__}")
    name = item.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name):
        raise ConfigError(f"{at}: name={name!r} is not valid: expected a DNS label such as east (a-z, 0-9, -)")
    at = f"{at} ({name})"
    unknown = sorted(str(k) for k in item if k not in CLUSTER_KEYS)
    if unknown:
        raise ConfigError(f"{at}: unknown key {', '.join(unknown)}; known: {', '.join(CLUSTER_KEYS)}")
    values: dict[str, str] = {}
    for key in CLUSTER_KEYS:
        value = item.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{at}: {key}={value!r} is not valid: expected a non-empty text")
        values[key] = value.strip()
    issuer = values.get("issuer")
    if issuer is None:
        raise ConfigError(f"{at}: issuer is required (the cluster's --service-account-issuer, the iss of its tokens)")
    try:
        _https_url("issuer", issuer)
    except ConfigError:
        raise ConfigError(
            f"{at}: issuer={issuer!r} is not valid: expected an https:// URL (kube-apiserver's "
            "--service-account-issuer; its discovery document and keys are fetched from it when nothing else is given)"
        ) from None
    entry = ClusterEntry(**values)
    _check_cluster_access(at, entry)
    return entry


def _check_cluster_access(at: str, entry: ClusterEntry) -> None:
    trio = [k for k in CLUSTER_TRIO if getattr(entry, k) is not None]
    if entry.kubeconfig is not None and trio:
        raise ConfigError(
            f"{at}: kubeconfig and {trio[0]} are two ways to reach one API server: give a kubeconfig (and context), "
            f"or {', '.join(CLUSTER_TRIO)}"
        )
    if trio and len(trio) != len(CLUSTER_TRIO):
        missing = [k for k in CLUSTER_TRIO if k not in trio]
        raise ConfigError(f"{at}: {', '.join(trio)} set without {', '.join(missing)}: all three or none")
    if entry.context is not None and entry.kubeconfig is None:
        raise ConfigError(f"{at}: context {entry.context} without a kubeconfig")
    if entry.server is not None:
        try:
            _https_url("server", entry.server)
        except ConfigError as e:
            raise ConfigError(f"{at}: {e}") from None
    for key in ("kubeconfig", "token_file", "ca_file"):
        path = getattr(entry, key)
        if path is not None and not _readable(path):
            raise ConfigError(f"{at}: {key} {path} cannot be read")
    if entry.context is not None and entry.kubeconfig is not None:
        contexts = _kubeconfig_contexts(entry.kubeconfig)
        if contexts is not None and entry.context not in contexts:
            raise ConfigError(
                f"{at}: context {entry.context} is not in kubeconfig {entry.kubeconfig} "
                f"(it has: {', '.join(contexts) or 'none'})"
            )
    if entry.jwks_url is not None:
        try:
            _jwks_url("jwks_url", entry.jwks_url)
        except ConfigError as e:
            raise ConfigError(f"{at}: {e}") from None
        if entry.jwks_url.startswith("/") and not entry.has_api_server:
            raise ConfigError(
                f"{at}: jwks_url={entry.jwks_url!r} is a path of the API server, and this cluster has none: give an "
                "https URL"
            )


def _kubeconfig_contexts(path: str) -> list[str] | None:
    """The context names of a kubeconfig; None when they cannot be read here (no PyYAML, not YAML)."""
    try:
        import yaml

        with open(os.path.expanduser(path), encoding="utf-8") as f:
            document = yaml.safe_load(f)
        return [str(c.get("name")) for c in document.get("contexts") or () if isinstance(c, dict)]
    except Exception:  # the client reports a kubeconfig it cannot load, without quoting it
        return None


@dataclass(frozen=True)
class Setting:
    """One row of the configuration table."""

    field: str
    flask_key: str | None
    env_key: str | None
    default: Any
    parse: Callable[[str, Any], Any]
    blank_is_unset: bool = True


SETTINGS: tuple[Setting, ...] = (
    Setting("mode", "BINDCAR_AUTH_MODE", "BIND_AUTH_MODE", "basic", _mode),
    Setting("audiences", "BINDCAR_TOKEN_AUDIENCES", "BIND_TOKEN_AUDIENCES", ("bindcar",), _audiences),
    Setting(
        "allowed_namespaces",
        "BINDCAR_ALLOWED_NAMESPACES",
        "BIND_ALLOWED_NAMESPACES",
        None,
        parse_namespaces,
        blank_is_unset=False,
    ),
    Setting(
        "allowed_service_accounts",
        "BINDCAR_ALLOWED_SERVICE_ACCOUNTS",
        "BIND_ALLOWED_SERVICE_ACCOUNTS",
        None,
        parse_service_accounts,
        blank_is_unset=False,
    ),
    Setting("api_token", "BINDCAR_API_TOKEN", "BIND_API_TOKEN", None, _api_token, blank_is_unset=False),
    Setting("cache_ttl", "BINDCAR_TOKEN_CACHE_TTL", "BIND_TOKEN_CACHE_TTL", 10.0, _ttl),
    Setting("cache_failure_ttl", "BINDCAR_TOKEN_CACHE_FAILURE_TTL", "BIND_TOKEN_CACHE_FAILURE_TTL", 10.0, _ttl),
    Setting("cache_size", "BINDCAR_TOKEN_CACHE_SIZE", "BIND_TOKEN_CACHE_SIZE", 10000, _size),
    Setting("cache_stale_ttl", "BINDCAR_TOKEN_CACHE_STALE_TTL", "BIND_TOKEN_CACHE_STALE_TTL", 0.0, _ttl),
    Setting("review_timeout", "BINDCAR_TOKEN_REVIEW_TIMEOUT", "BIND_TOKEN_REVIEW_TIMEOUT", 5.0, _timeout),
    Setting(
        "review_max_inflight",
        "BINDCAR_TOKEN_REVIEW_MAX_INFLIGHT",
        "BIND_TOKEN_REVIEW_MAX_INFLIGHT",
        DEFAULT_MAX_INFLIGHT,
        _size,
    ),
    Setting(
        "review_max_inflight_per_caller",
        "BINDCAR_TOKEN_REVIEW_MAX_INFLIGHT_PER_CALLER",
        "BIND_TOKEN_REVIEW_MAX_INFLIGHT_PER_CALLER",
        None,
        _size,
    ),
    Setting("failure_limit", "BINDCAR_AUTH_FAILURE_LIMIT", "BIND_AUTH_FAILURE_LIMIT", None, parse_limit),
    Setting("error_detail", "BINDCAR_AUTH_ERROR_DETAIL", "BIND_AUTH_ERROR_DETAIL", "full", _error_detail),
    Setting("rbac", "BINDCAR_AUTHZ", "BIND_AUTHZ", None, _authz),
    Setting("authz_cache_allowed_ttl", "BINDCAR_AUTHZ_CACHE_ALLOWED_TTL", "BIND_AUTHZ_CACHE_ALLOWED_TTL", 10.0, _ttl),
    Setting("authz_cache_denied_ttl", "BINDCAR_AUTHZ_CACHE_DENIED_TTL", "BIND_AUTHZ_CACHE_DENIED_TTL", 10.0, _ttl),
    Setting("authz_cache_size", "BINDCAR_AUTHZ_CACHE_SIZE", "BIND_AUTHZ_CACHE_SIZE", 10000, _size),
    Setting("kubeconfig", "BINDCAR_KUBECONFIG", "KUBECONFIG", None, _text),
    Setting("kube_api_server", None, "KUBE_API_SERVER", None, _text),
    Setting("kube_token_path", None, "KUBE_TOKEN_PATH", None, _text),
    Setting("kube_ca_cert_path", None, "KUBE_CA_CERT_PATH", None, _text),
    Setting("require_allowlist", "BINDCAR_REQUIRE_ALLOWLIST", "BIND_REQUIRE_ALLOWLIST", False, _flag),
    Setting("require_pod", "BINDCAR_REQUIRE_POD_BOUND_TOKEN", "BIND_REQUIRE_POD_BOUND_TOKEN", False, _flag),
    Setting("protect_all", "BINDCAR_PROTECT_ALL", None, True, _flag),
    Setting("exempt_paths", "BINDCAR_EXEMPT_PATHS", "BIND_AUTH_EXEMPT_PATHS", frozenset(), _paths),
    Setting("cors_preflight", "BINDCAR_CORS_PREFLIGHT", "BIND_CORS_PREFLIGHT", None, _cors_preflight),
    Setting("allowed_methods", "BINDCAR_ALLOWED_METHODS", "BIND_ALLOWED_METHODS", KNOWN_METHODS, _methods),
    Setting("token_precheck", "BINDCAR_TOKEN_PRECHECK", "BIND_TOKEN_PRECHECK", "auto", _precheck),
    Setting("token_issuers", "BINDCAR_TOKEN_ISSUER", "BIND_TOKEN_ISSUER", None, _issuers),
    Setting("jwks_url", "BINDCAR_JWKS_URL", "BIND_JWKS_URL", None, _jwks_url),
    Setting("clusters", "BINDCAR_CLUSTERS", "BIND_CLUSTERS_FILE", None, _clusters),
    Setting(
        "jwt_max_token_lifetime",
        "BINDCAR_JWT_MAX_TOKEN_LIFETIME",
        "BIND_JWT_MAX_TOKEN_LIFETIME",
        DEFAULT_JWT_MAX_TOKEN_LIFETIME,
        _lifetime,
    ),
)


_dotenv_loaded = False


def _load_dotenv_once() -> None:
    """Read a ``.env`` file when python-dotenv is installed, never overriding variables already set."""
    global _dotenv_loaded
    if _dotenv_loaded:
        return
    _dotenv_loaded = True
    try:
        import dotenv
    except ImportError:
        return
    path = dotenv.find_dotenv(usecwd=True)
    if path:
        dotenv.load_dotenv(path, override=False)


@dataclass(frozen=True)
class AuthConfig:
    """The resolved configuration. Build it with `AuthConfig.load`."""

    mode: Mode = "basic"
    audiences: tuple[str, ...] = ("bindcar",)
    allowed_namespaces: frozenset[str] | None = None
    allowed_service_accounts: frozenset[str] | None = None
    api_token: str | None = field(default=None, repr=False)
    cache_ttl: float = 10.0
    cache_failure_ttl: float = 10.0
    cache_size: int = 10000
    cache_stale_ttl: float = 0.0
    review_timeout: float = 5.0
    review_max_inflight: int = DEFAULT_MAX_INFLIGHT
    review_max_inflight_per_caller: int | None = None
    """SubjectAccessReviews one caller may have in flight; None: half of `review_max_inflight`."""
    failure_limit: Limit | None = None
    error_detail: ErrorDetail = "full"
    rbac: RBAC | None = None
    """What every protected view needs by RBAC, unless it names its own (``BIND_AUTHZ=path``)."""
    authz_cache_allowed_ttl: float = 10.0
    authz_cache_denied_ttl: float = 10.0
    authz_cache_size: int = 10000
    kubeconfig: str | None = None
    kube_api_server: str | None = None
    kube_token_path: str | None = None
    kube_ca_cert_path: str | None = None
    require_allowlist: bool = False
    require_pod: bool = False
    """Accept only tokens bound to a pod (``user.extra`` names one), app-wide."""
    protect_all: bool = True
    exempt_paths: frozenset[str] = frozenset()
    cors_preflight: CorsPreflight | None = None
    """How a CORS preflight without credentials is met; None: each adapter's default (Flask answers
    it with its own ``OPTIONS`` response, the middleware authenticates it)."""
    allowed_methods: tuple[str, ...] = KNOWN_METHODS
    """Methods a request may use; any other is 405 before any review."""
    token_precheck: Precheck = "auto"
    """TokenReview mode: check tokens locally with the issuer's keys first (docs/local-verification.md)."""
    token_issuers: tuple[str, ...] | None = None
    """The trusted issuers; None: the API server's own, from its discovery document."""
    jwks_url: str | None = None
    """Where the keys are: an https URL or an API server path; None: the API server's /openid/v1/jwks
    (in jwt mode with `token_issuers`, the ``jwks_uri`` of the first issuer's discovery document)."""
    jwt_max_token_lifetime: int = DEFAULT_JWT_MAX_TOKEN_LIFETIME
    """jwt mode: seconds from ``iat`` past which a token is refused whatever its ``exp``; 0: no cap."""
    clusters: tuple[ClusterEntry, ...] | None = None
    """The trusted clusters, tokens routed among them by issuer (docs/clusters.md); None: one cluster,
    unnamed, as the settings above describe it."""
    kube_context: str | None = None
    """Not a setting: the kubeconfig context of one cluster's configuration (`flask_bindcar.clusters`)."""
    sources: Mapping[str, tuple[Source, str]] = field(default_factory=dict, compare=False, repr=False)
    """For each setting: where its value came from, and the name it was given there."""

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        app_config: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> AuthConfig:
        """Resolve every setting by precedence and validate the result.

        ``environ`` defaults to ``os.environ`` (after reading ``.env`` if python-dotenv is there).
        """
        overrides = dict(overrides or {})
        known = {s.field for s in SETTINGS}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if environ is None:
            _load_dotenv_once()
            environ = os.environ
        app_config = app_config or {}

        values: dict[str, Any] = {}
        sources: dict[str, tuple[Source, str]] = {}
        for s in SETTINGS:
            found = _lookup(s, overrides, app_config, environ)
            if found is None:
                values[s.field] = s.default
                sources[s.field] = ("default", s.env_key or s.flask_key or s.field)
            else:
                source, name, raw = found
                values[s.field] = s.parse(name, raw)
                sources[s.field] = (source, name)
        config = cls(**values, sources=sources)
        config._check_combination()
        return config

    def _check_combination(self) -> None:
        mode = self.sources["mode"][1]
        if self.rbac is not None and self.mode == "basic":
            raise ConfigError(
                f"{self.sources['rbac'][1]} asks for a SubjectAccessReview of the caller, which needs "
                f"{mode}=tokenreview or jwt: Basic mode does not know who the caller is"
            )
        if self.require_pod and self.mode == "basic":
            raise ConfigError(
                f"{self.sources['require_pod'][1]}=true needs {mode}=tokenreview or jwt: in Basic mode "
                "nothing says which pod a token is bound to, so every request would be refused"
            )
        check_cluster_names(self.sources["allowed_namespaces"][1], self.allowed_namespaces, self.clusters)
        check_cluster_names(self.sources["allowed_service_accounts"][1], self.allowed_service_accounts, self.clusters)
        share = self.review_max_inflight_per_caller
        if share is not None and share > self.review_max_inflight:
            raise ConfigError(
                f"{self.sources['review_max_inflight_per_caller'][1]}={share} is more than "
                f"{self.sources['review_max_inflight'][1]}={self.review_max_inflight}: one caller's share of the "
                "review slots cannot be more than all of them"
            )
        if self.mode == "basic":
            if self.clusters is not None:
                raise ConfigError(
                    f"{self.sources['clusters'][1]} needs {mode}=tokenreview or jwt: Basic mode verifies nothing a "
                    "cluster could vouch for"
                )
            return
        if self.clusters is not None:
            self._check_clusters()
            return
        # Only whether it is installed: importing it here would import urllib3 and ssl in a gunicorn
        # master with --preload, before a gevent worker patches them (RecursionError on every review).
        if self.uses_api_server and importlib.util.find_spec("kubernetes") is None:
            raise ConfigError(f"{mode}={self.mode} needs the Kubernetes client: {INSTALL_HINT}")
        if self.require_allowlist and not self.has_allowlist:
            raise ConfigError(
                f"{self.sources['require_allowlist'][1]}=true, but {MODE_NAMES[self.mode]} has no allowlist: set "
                "BIND_ALLOWED_NAMESPACES or BIND_ALLOWED_SERVICE_ACCOUNTS, or every ServiceAccount of the cluster "
                "is accepted"
            )
        given = [name for name in KUBE_TRIO if getattr(self, name.lower())]
        if given and len(given) != len(KUBE_TRIO):
            missing = [name for name in KUBE_TRIO if name not in given]
            raise ConfigError(
                f"{', '.join(given)} set without {', '.join(missing)}: an explicit API server needs all of "
                f"{', '.join(KUBE_TRIO)}, or none of them to use a kubeconfig or the in-cluster mount"
            )
        if self.kube_api_server is not None:
            _https_url(self.sources["kube_api_server"][1], self.kube_api_server)
        if self.mode == "jwt":
            self._check_jwt_mode()

    def _check_clusters(self) -> None:
        """Several clusters: each entry names its own issuer, keys and API server, and the pre-check is on."""
        where = self.sources["clusters"][1]
        for setting in ("token_issuers", "jwks_url"):
            if self.sources[setting][0] != "default":
                raise ConfigError(
                    f"{self.sources[setting][1]} is set per cluster with {where}: give each entry its issuer (and "
                    "jwks_url)"
                )
        if self.token_precheck == "off" and self.sources["token_precheck"][0] != "default":
            raise ConfigError(
                f"{self.sources['token_precheck'][1]}=off with {where}: a token is sent to its cluster only after "
                "that cluster's keys verified it, so the pre-check cannot be off"
            )
        assert self.clusters is not None
        if any(c.has_api_server for c in self.clusters) and importlib.util.find_spec("kubernetes") is None:
            raise ConfigError(f"{where} names API servers, which need the Kubernetes client: {INSTALL_HINT}")
        if any(not c.has_api_server for c in self.clusters) and importlib.util.find_spec("requests") is None:
            raise ConfigError(f"{where} has clusters verified in jwt mode only, by https: {JWT_INSTALL_HINT}")
        if self.require_allowlist and not self.has_allowlist:
            raise ConfigError(
                f"{self.sources['require_allowlist'][1]}=true, but {MODE_NAMES[self.mode]} has no allowlist"
            )
        for i, entry in enumerate(self.clusters):
            if self.rbac is not None and not entry.has_api_server:
                raise ConfigError(
                    f"{where}: clusters[{i}] ({entry.name}) has no API server, and {self.sources['rbac'][1]} asks "
                    "every caller's cluster for a SubjectAccessReview"
                )

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters or ())

    def _check_jwt_mode(self) -> None:
        """jwt mode: the issuer URL it fetches from is https, and what needs the API server has one."""
        issuers, jwks_url = self.token_issuers, self.jwks_url
        if issuers is not None and jwks_url is None:
            try:
                _https_url(self.sources["token_issuers"][1], issuers[0])
            except ConfigError:
                raise _bad(
                    self.sources["token_issuers"][1],
                    issuers[0],
                    "an https:// URL: jwt mode without BIND_JWKS_URL fetches the issuer's discovery document and "
                    "keys from it, and keys fetched in clear text could be anyone's",
                ) from None
        direct = (issuers is not None and jwks_url is None) or (jwks_url is not None and not jwks_url.startswith("/"))
        if direct and importlib.util.find_spec("requests") is None:
            raise ConfigError(
                f"{self.sources['mode'][1]}=jwt fetches the issuer's keys over https with requests: {JWT_INSTALL_HINT}"
            )
        if self.api_server_configured:
            return
        needs = "needs the API server, and none is configured"
        if issuers is None:
            raise ConfigError(
                f"{self.sources['mode'][1]}=jwt without BIND_TOKEN_ISSUER {needs} ({NO_API_SERVER}): it names the "
                "issuer and publishes its keys; set BIND_TOKEN_ISSUER to the issuer's https URL to fetch them from "
                "there"
            )
        if jwks_url is not None and jwks_url.startswith("/"):
            raise ConfigError(
                f"{self.sources['jwks_url'][1]}={jwks_url!r} {needs} ({NO_API_SERVER}): it is a path of the API "
                "server; give an https URL"
            )
        if self.rbac is not None:
            raise ConfigError(
                f"{self.sources['rbac'][1]} {needs} ({NO_API_SERVER}): jwt mode verifies tokens without it, but a "
                "SubjectAccessReview is the API server's to answer"
            )

    @property
    def jwt_keys_from_api_server(self) -> bool:
        """jwt mode: whether the issuer or its keys come through the API server (no `token_issuers`,
        or a `jwks_url` that is a path of the API server)."""
        return self.mode == "jwt" and (
            self.token_issuers is None or (self.jwks_url is not None and self.jwks_url.startswith("/"))
        )

    @property
    def uses_api_server(self) -> bool:
        """Whether this configuration calls the API server by design: TokenReview mode always; jwt mode
        for its keys (`jwt_keys_from_api_server`) or for RBAC (``BIND_AUTHZ``)."""
        return (
            self.mode == "tokenreview"
            or self.jwt_keys_from_api_server
            or (self.mode == "jwt" and self.rbac is not None)
        )

    @property
    def api_server_configured(self) -> bool:
        """Whether the client (`flask_bindcar.apiserver.build_api_client`) has anything to be built
        from: the ``KUBE_*`` trio, a kubeconfig setting, an existing ``~/.kube/config``, or the
        in-cluster environment it reads from ``os.environ`` as that does."""
        return bool(
            self.kube_api_server
            or self.kubeconfig
            or os.path.isfile(os.path.expanduser(DEFAULT_KUBECONFIG))
            or os.environ.get("KUBERNETES_SERVICE_HOST")
        )

    @property
    def has_allowlist(self) -> bool:
        return self.allowed_namespaces is not None or self.allowed_service_accounts is not None

    def posture_warnings(self) -> list[str]:
        """What this configuration lets through that production usually should not."""
        warnings = []
        if self.mode == "jwt":
            warnings.append(self.jwt_mode_warning)
        if self.mode == "basic" and not self.api_token:
            warnings.append(
                "Basic mode without BIND_API_TOKEN: any well-formed bearer token is accepted and nothing about it "
                "is verified"
            )
        if self.mode != "basic" and not self.has_allowlist:
            warnings.append(
                f"{MODE_NAMES[self.mode]} without BIND_ALLOWED_NAMESPACES or BIND_ALLOWED_SERVICE_ACCOUNTS: every "
                "ServiceAccount of the cluster is accepted"
            )
        if self.mode == "tokenreview" and not self.has_allowlist:
            warnings += [
                f"BIND_TOKEN_AUDIENCES includes {audience}, which looks like the API server's own audience: "
                "without BIND_ALLOWED_NAMESPACES or BIND_ALLOWED_SERVICE_ACCOUNTS, users that are not "
                "ServiceAccounts (static tokens, bootstrap tokens, OIDC users) are accepted too"
                for audience in self.audiences
                if looks_like_api_server_audience(audience)
            ]
        if self.failure_limit is not None:
            warnings.append(FAILURE_LIMIT_WARNING.format(limit=self.failure_limit))
        if self.mode != "basic" and self.audiences == ("bindcar",) and self.sources["audiences"][0] == "default":
            warnings.append(
                "BIND_TOKEN_AUDIENCES is the default 'bindcar': tokens made for any service that also uses the "
                "default are accepted here"
            )
        return warnings

    @property
    def jwt_mode_warning(self) -> str:
        """What jwt mode gives up, with this lifetime cap: logged once at startup, shown by ``doctor``."""
        cap = self.jwt_max_token_lifetime
        return JWT_MODE_WARNING.format(cap=JWT_MODE_CAP.format(cap=cap) if cap else JWT_MODE_NO_CAP)

    def describe(self) -> dict[str, Any]:
        """The settings as plain values for logs and diagnostics; the shared secret only as set/unset."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("sources", "kube_context"):  # not settings
                continue
            value = getattr(self, f.name)
            if f.name == "clusters" and value is not None:
                value = [c.describe() for c in value]
            elif f.name == "api_token":
                value = "set" if value else "unset"
            elif isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Limit):
                value = str(value)
            elif isinstance(value, RBAC):
                value = value.summary()
            out[f.name] = value
        return out


def _lookup(
    s: Setting, overrides: Mapping[str, Any], app_config: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[Source, str, Any] | None:
    if overrides.get(s.field) is not None:
        return "keyword", s.field, overrides[s.field]
    if s.flask_key and app_config.get(s.flask_key) is not None:
        return "app.config", s.flask_key, app_config[s.flask_key]
    if s.env_key and s.env_key in environ:
        raw = environ[s.env_key]
        if raw.strip() or not s.blank_is_unset:
            return "environment", s.env_key, raw
    return None
