"""Troubleshooting built in: ``doctor`` checks a configuration end to end.

It uses the library's own configuration and client code, so what it reports is what a request
meets; it never prints a token. In jwt mode it fetches the issuer's keys as a request would and
shows where they came from (`keys_check`). Its `Check` and `Report` are ``review``'s too
(`flask_bindcar.review`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flask_bindcar.config import AuthConfig
from flask_bindcar.errors import API_CALL_FAILED, VALIDATION_FAILED, AuthError
from flask_bindcar.identity import split_service_account

Status = Literal["pass", "fail", "warn", "skip"]
SYMBOLS: dict[Status, str] = {"pass": "✔", "fail": "✘", "warn": "⚠", "skip": "-"}
PER_VIEW_RBAC = (
    "BIND_AUTHZ is not set; views with their own @auth_required(rbac=...) are not seen from here: "
    "flask --app <your app> bindcar doctor finds them and checks this permission"
)
PROBE_TOKEN = "bindcar-doctor-probe-not-a-token"

RBAC_TEMPLATE = """\
# TokenReview mode needs permission to create TokenReview objects, and nothing else.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: bindcar-tokenreview
rules:
  - apiGroups: ["authentication.k8s.io"]
    resources: ["tokenreviews"]
    verbs: ["create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: bindcar-tokenreview
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: bindcar-tokenreview
subjects:
  - kind: ServiceAccount
    name: {name}
    namespace: {namespace}
"""


AUTH_DELEGATOR_TEMPLATE = """\
# Authorization by RBAC needs SubjectAccessReviews too: system:auth-delegator covers both reviews.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: bindcar-auth-delegator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:auth-delegator
subjects:
  - kind: ServiceAccount
    name: {name}
    namespace: {namespace}
"""


def auth_delegator_yaml(namespace: str, name: str) -> str:
    """The ClusterRoleBinding to ``system:auth-delegator`` (TokenReviews and SubjectAccessReviews)."""
    return AUTH_DELEGATOR_TEMPLATE.format(namespace=namespace, name=name)


def rbac_yaml(namespace: str, name: str) -> str:
    """The ClusterRole and ClusterRoleBinding that let ServiceAccount ``namespace/name`` review tokens."""
    return RBAC_TEMPLATE.format(namespace=namespace, name=name)


@dataclass
class Check:
    """One line of the report; ``fix`` says what to do when the status is ``fail``."""

    name: str
    status: Status
    detail: str
    fix: str | None = None
    lines: list[str] = field(default_factory=list)

    def render(self) -> str:
        out = [f"{SYMBOLS[self.status]} {self.name}: {self.detail}"]
        out += [f"    {line}" for line in self.lines]
        if self.fix:
            out += [
                f"    fix: {line}" if i == 0 else f"         {line}" for i, line in enumerate(self.fix.splitlines())
            ]
        return "\n".join(out)


@dataclass
class Report:
    title: str
    checks: list[Check]
    verdicts: tuple[str, str] = ("all checks passed", "some checks failed")

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def text(self) -> str:
        verdict = self.verdicts[0] if self.ok else self.verdicts[1]
        return "\n".join([self.title, *(c.render() for c in self.checks), verdict])

    def json(self) -> str:
        return json.dumps({"ok": self.ok, "title": self.title, "checks": [asdict(c) for c in self.checks]}, indent=2)


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - started) * 1000


def _jwt_subject(token: str | None) -> str | None:
    parts = (token or "").split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def configuration_check(config: AuthConfig) -> Check:
    lines = []
    for name, value in config.describe().items():
        source, variable = config.sources[name]
        where = "default" if source == "default" else f"{source} {variable}"
        lines.append(f"{name} = {json.dumps(value)}  ({where})")
    return Check("configuration", "pass", f"{config.mode} mode", lines=lines)


def doctor(
    config: AuthConfig,
    *,
    threads: int | None = None,
    environ: Mapping[str, str] | None = None,
    authorization: bool | None = None,
) -> Report:
    """Check ``config`` end to end: posture, bulkhead, client, API server, permission, a probe review.

    ``threads`` is the server's thread count per worker; without it, it is read from gunicorn's
    ``GUNICORN_CMD_ARGS`` in ``environ`` (default ``os.environ``) when that sets ``--threads``.
    With ``authorization`` (a view has its own ``rbac``) or ``BIND_AUTHZ`` set, the permission to
    create SubjectAccessReviews is checked too. ``authorization=False`` says that no view has its
    own ``rbac`` (the Flask command looked); ``None``, the default, that nobody looked at the
    views, as with ``python -m flask_bindcar doctor``: the report then says where they are seen.
    """
    checks = [configuration_check(config)]
    warnings = config.posture_warnings()
    checks += [Check("posture", "warn", w) for w in warnings] or [Check("posture", "pass", "no warnings")]
    if config.mode == "basic":
        checks.append(Check("kubernetes", "skip", "Basic mode does not call the Kubernetes API"))
        return Report("flask-bindcar doctor", checks)
    if config.clusters is not None:
        checks.append(bulkhead_check(config, threads, os.environ if environ is None else environ))
        return Report("flask-bindcar doctor", checks + _cluster_checks(config, authorization))
    if config.mode == "jwt":
        return Report("flask-bindcar doctor", checks + _jwt_checks(config, threads, environ, authorization))
    checks.append(bulkhead_check(config, threads, os.environ if environ is None else environ))
    kubernetes = _kubernetes_checks(config, authorization)
    after = next((i + 1 for i, c in enumerate(kubernetes) if c.name == "api server"), len(kubernetes))
    kubernetes.insert(after, _precheck_check(config, kubernetes))  # the keys come from the API server
    return Report("flask-bindcar doctor", checks + kubernetes)


def _precheck_check(config: AuthConfig, checks: list[Check]) -> Check:
    """TokenReview mode's local pre-check: its keys as a request would fetch them (`keys_check`).
    With ``auto`` keys that cannot be had are a warning (the pre-check turns itself off and every
    token goes to the TokenReview); with ``on``, a failure (every uncached token is refused)."""
    name = "local pre-check"
    if config.token_precheck == "off":
        return Check(name, "skip", f"{config.sources['token_precheck'][1]}=off: every token goes to the TokenReview")
    if any(c.name == "api server" and c.status == "fail" for c in checks):
        return Check(name, "skip", "the API server did not answer")
    return keys_check(config, name=name, failure="fail" if config.token_precheck == "on" else "warn")


def _jwt_checks(
    config: AuthConfig, threads: int | None, environ: Mapping[str, str] | None, authorization: bool | None
) -> list[Check]:
    """jwt mode: the API server only when its keys or RBAC need it, no TokenReview, then the keys."""
    checks = []
    rbac = bool(authorization) or config.rbac is not None
    if rbac:  # the bulkhead holds SubjectAccessReviews only
        checks.append(bulkhead_check(config, threads, os.environ if environ is None else environ))
    if rbac or config.jwt_keys_from_api_server:
        checks += _kubernetes_checks(config, authorization, token_reviews=False)
    else:
        checks.append(Check("kubernetes", "skip", "jwt mode with BIND_TOKEN_ISSUER and no RBAC does not call it"))
    return [*checks, keys_check(config)]


def _cluster_checks(config: AuthConfig, authorization: bool | None) -> list[Check]:
    """Each trusted cluster (``BIND_CLUSTERS_FILE``) as a configuration of its own would be checked:
    its client, API server, permissions and probe TokenReview, then its keys; every line named
    ``<cluster>: <check>``, so the report shows which cluster fails."""
    from flask_bindcar.clusters import cluster_config

    checks = []
    for entry in config.clusters or ():
        own = cluster_config(config, entry)
        found = (
            _kubernetes_checks(own, authorization, token_reviews=own.mode == "tokenreview")
            if entry.has_api_server
            else [Check("kubernetes", "skip", "no API server: its tokens are verified in jwt mode only")]
        )
        found.append(keys_check(own))
        for check in found:
            check.name = f"{entry.name}: {check.name}"
        checks += found
    return checks


def keys_check(config: AuthConfig, *, name: str = "signing keys", failure: str = "fail") -> Check:
    """The issuer's keys, fetched as a request fetches them: the issuer, where the keys came from,
    how many, their ``kid``\\ s and age (`flask_bindcar.precheck.PreCheck.describe`). ``failure`` is
    the status when they cannot be had (``warn`` for the pre-check's ``auto``)."""
    from flask_bindcar.apiserver import ApiServerClient
    from flask_bindcar.precheck import PreCheck

    precheck = PreCheck(config, ApiServerClient(config), mode="on")
    try:
        precheck.keys()
    except AuthError as e:
        why = e.message.removeprefix(VALIDATION_FAILED.format(reason="")).removeprefix(API_CALL_FAILED.format(why=""))
        if failure == "warn":
            why = f"off in this process: {why}; tokens go to the TokenReview unchecked"
        return Check(
            name,
            failure,  # type: ignore[arg-type]
            why,
            fix="check BIND_TOKEN_ISSUER and BIND_JWKS_URL; through the API server, this service's ServiceAccount "
            "reads them by the default system:service-account-issuer-discovery binding",
        )
    keys = precheck.describe()["keys"]
    source = keys["source"] + (" (through the API server)" if keys["source"].startswith("/") else "")
    lines = [
        f"kid {', '.join(keys['kids']) or '(none)'}",
        f"fetched {keys['age'] or 0:.0f}s ago; again after an hour, or for a token naming a kid they lack",
    ]
    if keys["skipped"]:
        lines.append(f"{keys['skipped']} key(s) of the document skipped: another type, use or curve")
    count = f"{keys['keys']} key{'' if keys['keys'] == 1 else 's'}"
    return Check(name, "pass", f"{count} of {', '.join(keys['issuers'])} from {source}", lines=lines)


def gunicorn_threads(environ: Mapping[str, str]) -> int | None:
    """``--threads`` from ``GUNICORN_CMD_ARGS``, the one place gunicorn's settings show outside it.

    None when it is not there, or when the worker class is not threaded (gevent and eventlet
    serve greenlets, not threads).
    """
    try:
        args = shlex.split(environ.get("GUNICORN_CMD_ARGS", ""))
    except ValueError:
        return None
    threads = None
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if name in ("-k", "--worker-class") and any(g in value for g in ("gevent", "eventlet")):
            return None
        if name == "--threads" and value.isdigit():
            threads = int(value)
    return threads


def bulkhead_check(config: AuthConfig, threads: int | None, environ: Mapping[str, str]) -> Check:
    """The TokenReview bulkhead must stay below the server's threads, or probes can starve."""
    name = config.sources["review_max_inflight"][1]
    limit = config.review_max_inflight
    if threads is None:
        threads = gunicorn_threads(environ)
    if threads is None:
        return Check(
            "bulkhead", "skip", "gunicorn's thread count is unknown here (pass --threads, or set GUNICORN_CMD_ARGS)"
        )
    if limit < threads:
        return Check("bulkhead", "pass", f"{name}={limit} is below gunicorn's {threads} threads")
    return Check(
        "bulkhead",
        "warn",
        f"{name}={limit} is not below gunicorn's {threads} threads: with the API server hanging, every thread "
        f"can wait on a TokenReview and health probes find none free; set it to {max(1, threads // 2)}",
    )


def _kubernetes_checks(config: AuthConfig, authorization: bool | None, *, token_reviews: bool = True) -> list[Check]:
    """The client, the API server, the permissions asked for and a probe TokenReview (``token_reviews``:
    not in jwt mode, which sends none)."""
    from kubernetes.client import VersionApi

    from flask_bindcar.apiserver import ApiServerClient, ClientBuildError, build_api_client, kubeconfig_path

    try:
        api_client, source = build_api_client(config)
    except ClientBuildError as e:
        path, explicit = kubeconfig_path(config)
        return [
            Check(
                "client",
                "fail",
                f"cannot create the Kubernetes client: {e}",
                fix=(
                    f"point KUBECONFIG at a kubeconfig that exists{f' (now {path})' if explicit else ''}, run in a "
                    "pod with a ServiceAccount, or set KUBE_API_SERVER, KUBE_TOKEN_PATH and KUBE_CA_CERT_PATH"
                ),
            )
        ]
    checks = [Check("client", "pass", f"created from {source}{_context(config, source)}")]
    cfg = api_client.configuration
    timeout = config.review_timeout
    unreachable_fix = f"check that {cfg.host} is reachable from here: network policy, proxy, firewall, DNS"

    try:
        response, ms = _timed(lambda: VersionApi(api_client).get_code(_request_timeout=timeout, _preload_content=False))
        version = json.loads(response.data).get("gitVersion", "unknown version")
        checks.append(Check("api server", "pass", f"{cfg.host} answered /version ({version}) in {ms:.1f} ms"))
    except Exception as e:  # any failure to get an answer is this check's finding
        checks.append(
            Check("api server", "fail", f"{cfg.host} did not answer /version: {_why(e)}", fix=unreachable_fix)
        )
        if token_reviews:
            checks.append(Check("permission", "skip", "needs the API server"))
            checks.append(Check("token review", "skip", "needs the API server"))
        return checks

    credential = cfg.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
    scheme, _, rest = credential.partition(" ")
    caller = _jwt_subject(rest if scheme.lower() == "bearer" else credential)
    sa = split_service_account(caller)
    who = caller or "this client"
    allowed: bool | None = None
    try:
        if token_reviews:
            allowed = _may_create(api_client, timeout, "authentication.k8s.io", "tokenreviews")
    except Exception as e:
        checks.append(Check("permission", "fail", f"could not ask whether {who} may create tokenreviews: {_why(e)}"))
    if allowed is True:
        checks.append(Check("permission", "pass", f"{who} may create tokenreviews.authentication.k8s.io"))
    elif allowed is False:
        namespace, name = sa if sa else ("<namespace>", "<serviceaccount>")
        checks.append(
            Check(
                "permission",
                "fail",
                f"{who} may not create tokenreviews.authentication.k8s.io",
                fix="apply this RBAC (kubectl apply -f -):\n" + rbac_yaml(namespace, name),
            )
        )
    if authorization or config.rbac is not None:
        checks.append(_authorization_permission(api_client, timeout, who, sa))
    elif authorization is None:
        checks.append(Check("authorization permission", "skip", PER_VIEW_RBAC))
    if not token_reviews:
        return checks

    reviewer = ApiServerClient(config)
    try:
        outcome, ms = _timed(lambda: reviewer.review(PROBE_TOKEN, config.audiences))
        verdict = "rejected, as it should be" if not outcome.authenticated else "ACCEPTED (unexpected)"
        status: Status = "pass" if not outcome.authenticated else "fail"
        checks.append(Check("token review", status, f"a probe TokenReview of an invalid token: {verdict}, {ms:.1f} ms"))
    except AuthError as e:
        checks.append(Check("token review", "fail", e.message, fix=unreachable_fix if e.transient else None))
    return checks


def _may_create(api_client: Any, timeout: float, group: str, resource: str) -> bool:
    """Whether this client may create ``resource`` of ``group``, as a SelfSubjectAccessReview answers."""
    from kubernetes.client import AuthorizationV1Api

    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"group": group, "resource": resource, "verb": "create"}},
    }
    answer: Any = AuthorizationV1Api(api_client).create_self_subject_access_review(
        body=body,  # type: ignore[arg-type]
        _request_timeout=timeout,
        _preload_content=False,
    )
    return json.loads(answer.data).get("status", {}).get("allowed") is True


def _authorization_permission(api_client: Any, timeout: float, who: str, sa: tuple[str, str] | None) -> Check:
    """May this client create SubjectAccessReviews? Asked with a SelfSubjectAccessReview."""
    name = "authorization permission"
    try:
        allowed = _may_create(api_client, timeout, "authorization.k8s.io", "subjectaccessreviews")
    except Exception as e:
        return Check(name, "fail", f"could not ask whether {who} may create subjectaccessreviews: {_why(e)}")
    if allowed:
        return Check(name, "pass", f"{who} may create subjectaccessreviews.authorization.k8s.io")
    namespace, sa_name = sa if sa else ("<namespace>", "<serviceaccount>")
    return Check(
        name,
        "fail",
        f"{who} may not create subjectaccessreviews.authorization.k8s.io",
        fix="bind it to system:auth-delegator (kubectl apply -f -):\n" + auth_delegator_yaml(namespace, sa_name),
    )


def _context(config: AuthConfig, source: str) -> str:
    if not source.startswith("kubeconfig"):
        return ""
    from kubernetes.config import list_kube_config_contexts

    from flask_bindcar.apiserver import kubeconfig_path

    try:
        _, active = list_kube_config_contexts(config_file=kubeconfig_path(config)[0])  # type: ignore[no-untyped-call]
    except Exception:
        return ""
    return f", context {active['name']}" if active else ""


def _why(e: BaseException) -> str:
    status = getattr(e, "status", None)
    if status:
        return f"HTTP {status} {getattr(e, 'reason', None) or ''}".rstrip()
    return f"{type(e).__name__}: {e}"[:300]
