"""``make demo``: the example app in TokenReview mode against the built-in cluster stand-in.

Starts `flask_bindcar.testing.FakeCluster`, serves ``example_app`` under gunicorn on
127.0.0.1:8080 with the seed's Staging profile and ``ZONE_AUTHZ=rbac``, and prints the seed's
"Testing" section as ready-to-paste ``curl`` commands, each preceded by the outcome it gives; each
command prints the response body, then ``HTTP <status>`` on a line of its own. The live tokens are
in files the demo writes (``<workdir>/tokens/``), which each command reads, so the lines stay
short. The RBAC steps show a DELETE refused (403) until a ClusterRoleBinding is created in the
stand-in, then allowed (200); the stand-in's kubeconfig is printed for kubectl. A forged token
(external-dns's claims signed by a key the cluster does not have) is refused by the app's local
pre-check: the demo sends it once as it starts, beside a genuine token, and prints the stand-in's
TokenReview count around each request, so the output shows that no TokenReview was sent for it.
Serves until Ctrl-C.

A second demo on a port that is taken, or on the work folder of a running demo, stops with a
message and exit status 1 before it touches anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_bindcar.testing import FakeCluster

ROOT = Path(__file__).resolve().parent.parent
STAGING = {"BIND_TOKEN_AUDIENCES": "bindcar", "BIND_ALLOWED_NAMESPACES": "dns-system,test-system"}
AUTHZ = {"ZONE_AUTHZ": "rbac", "BIND_AUTHZ_CACHE_DENIED_TTL": "0"}
"""DELETE also asks Kubernetes RBAC; a refusal is not cached, so a grant counts at the next request."""
RBAC_ZONES = ROOT / "example_app" / "deploy" / "rbac-zones.yaml"
EXTERNAL_DNS = "system:serviceaccount:dns-system:external-dns"
DEMO_TOKEN_LIFETIME = 12 * 3600
CURL = "curl -s -w '\\nHTTP %{http_code}\\n'"
"""Prints the body, then the status on a line of its own (a 401 body has no newline of its own)."""
PID_FILE = "demo.pid"


@dataclass(frozen=True)
class Step:
    """One command of the printed script and the outcome it gives."""

    comment: str
    status: int
    command: str
    body: dict[str, object] | None = None
    seen: str | None = None
    """What the demo saw when it sent the request itself (comment lines after the command)."""

    def render(self) -> str:
        expected = f"# Expected: {self.status}"
        if self.body is not None:
            expected += " " + json.dumps(self.body)
        seen = f"{self.seen}\n" if self.seen else ""
        return f"{self.comment}\n{expected}\n{self.command}\n{seen}"


def curl(url: str, path: str, token: Path | str | None = None, *, method: str = "GET", data: str | None = None) -> str:
    """The command, reading a token from its file (a `Path`) or giving a literal one (a `str`)."""
    parts = [CURL]
    if method != "GET":
        parts.append(f"-X {method}")
    if isinstance(token, Path):
        parts.append(f'-H "Authorization: Bearer $(cat {token})"')
    elif token is not None:
        parts.append(f'-H "Authorization: Bearer {token}"')
    if data is not None:
        parts.append(f"-H 'Content-Type: application/json' -d {data}")
    parts.append(url + path)
    return " ".join(parts)


def denied(reason: str) -> dict[str, object]:
    return {"error": f"Token validation failed: {reason}"}


def rbac_manifest() -> tuple[dict[str, Any], dict[str, Any]]:
    """The ClusterRole and external-dns's ClusterRoleBinding of ``deploy/rbac-zones.yaml``."""
    documents = list(yaml.safe_load_all(RBAC_ZONES.read_text()))
    role = next(d for d in documents if d["kind"] == "ClusterRole")
    grant = next(
        d for d in documents if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == role["metadata"]["name"]
    )
    return role, grant


def forge(genuine: str) -> str:
    """``genuine``'s header (the cluster's ``kid``) and claims, signed by a key the cluster does not have."""
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, foreign, algorithm="RS256", headers={"kid": header["kid"]})


def status_of(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310 - loopback URL
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def send_counting_reviews(cluster: FakeCluster, url: str, genuine: str, forged: str) -> str:
    """Send ``genuine`` then ``forged`` to the app once, reading the stand-in's TokenReview count
    around each: what the forged token's step prints under its command."""
    lines = ["# Sent by the demo as it started, the stand-in's TokenReview count read around each request:"]
    for label, token in (("external-dns's genuine token:", genuine), ("the forged token:", forged)):
        before = cluster.review_requests
        status = status_of(url, token)
        after = cluster.review_requests
        if token is genuine:
            why = "its signature checked locally, then one TokenReview" if after == before + 1 else "reviewed"
        elif after == before:
            why = "refused locally: no TokenReview sent"
        else:
            why = "sent to the TokenReview: is the local pre-check off? see the server log"
        lines.append(f"#   {label:<29} HTTP {status}, TokenReviews {before} -> {after} ({why})")
    return "\n".join(lines)


def script(cluster: FakeCluster, url: str, workdir: Path) -> list[tuple[str, list[Step]]]:
    """The seed's Testing section for this server, section by section. Tokens, the stand-in's
    administrator credential and the grant's JSON are written under ``workdir`` for the commands."""
    tokens = workdir / "tokens"
    tokens.mkdir(exist_ok=True)

    def token(
        namespace: str,
        name: str,
        audience: str | None = "bindcar",
        *,
        file: str | None = None,
        expires_in: float = DEMO_TOKEN_LIFETIME,
    ) -> Path:
        """The file holding a token of ``namespace/name`` (minted on first use), as the user's
        ``TOKEN=$(kubectl create token ...)`` would hold it."""
        path = tokens / (file or f"{namespace}.{name}")
        if not path.exists():
            audiences = [audience] if audience else None
            path.write_text(cluster.token(namespace, name, audiences=audiences, expires_in=expires_in))
            path.chmod(0o600)
        return path

    role, grant = rbac_manifest()
    cluster.rbac.create("clusterroles", None, role)  # as `kubectl apply -f deploy/rbac-zones.yaml` would, binding aside
    (workdir / "grant.json").write_text(json.dumps(grant))
    admin = workdir / "cluster" / "admin-token"
    admin.write_text(cluster.caller_token)
    admin.chmod(0o600)
    kubectl_grant = (
        f"kubectl create clusterrolebinding {grant['metadata']['name']} --clusterrole={role['metadata']['name']} "
        "--serviceaccount=dns-system:external-dns"
    )
    zones = "/api/v1/zones"
    genuine = cluster.token("dns-system", "external-dns", audiences=["bindcar"], expires_in=DEMO_TOKEN_LIFETIME)
    forged = tokens / "forged"
    forged.write_text(forge(genuine))
    forged.chmod(0o600)
    return [
        (
            "Basic validation (every mode)",
            [
                Step("# No Authorization header", 401, curl(url, zones), {"error": "Missing Authorization header"}),
                Step(
                    "# Not a Bearer token",
                    401,
                    curl(url, zones).replace(CURL, CURL + " -H 'Authorization: Token abc'"),
                    {"error": "Invalid Authorization header format. Expected: Bearer <token>"},
                ),
            ],
        ),
        (
            "Integration Testing",
            [
                Step(
                    "# TOKEN=$(kubectl create token external-dns -n dns-system --audience=bindcar)",
                    200,
                    curl(url, zones, token("dns-system", "external-dns")),
                ),
            ],
        ),
        (
            "Testing Invalid Tokens",
            [
                Step(
                    "# Test with an invalid token",
                    401,
                    curl(url, zones, "invalid-token"),
                    denied("token not authenticated"),
                ),
                Step(
                    "# Test with an expired token",
                    401,
                    curl(url, zones, token("dns-system", "external-dns", file="expired", expires_in=-120)),
                    denied("[invalid bearer token, service account token has expired]"),
                ),
            ],
        ),
        (
            "Testing Forged Tokens (the local pre-check, BIND_TOKEN_PRECHECK=auto: on once the cluster's keys load)",
            [
                Step(
                    "# external-dns's claims and the cluster's kid, signed by a key the cluster does not have:\n"
                    "# the app checks the signature with the keys the cluster publishes (/openid/v1/jwks) and\n"
                    "# refuses the token itself, with the TokenReview's own answer, sending no TokenReview",
                    401,
                    curl(url, zones, forged),
                    denied("[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"),
                    seen=send_counting_reviews(cluster, url + zones, genuine, forged.read_text()),
                ),
            ],
        ),
        (
            "Testing Security Restrictions: audience (BIND_TOKEN_AUDIENCES=bindcar)",
            [
                Step(
                    "# Create token without audience: TOKEN=$(kubectl create token my-app -n dns-system)",
                    401,
                    curl(
                        url, zones, token("dns-system", "my-app", audience=None, file="dns-system.my-app.no-audience")
                    ),
                    denied(
                        '[invalid bearer token, token audiences ["https://kubernetes.default.svc.cluster.local"] '
                        'is invalid for the target audiences ["bindcar"]]'
                    ),
                ),
                Step(
                    "# Create token with correct audience: TOKEN=$(kubectl create token my-app -n dns-system "
                    "--audience=bindcar)",
                    200,
                    curl(url, zones, token("dns-system", "my-app")),
                ),
            ],
        ),
        (
            "Testing Security Restrictions: namespace (BIND_ALLOWED_NAMESPACES=dns-system,test-system)",
            [
                Step(
                    "# Create token from allowed namespace: TOKEN=$(kubectl create token test-sa -n dns-system "
                    "--audience=bindcar)",
                    200,
                    curl(url, zones, token("dns-system", "test-sa")),
                ),
                Step(
                    "# Create token from blocked namespace: TOKEN=$(kubectl create token test-sa -n default "
                    "--audience=bindcar)",
                    401,
                    curl(url, zones, token("default", "test-sa")),
                    denied("ServiceAccount from unauthorized namespace: default"),
                ),
            ],
        ),
        (
            "Testing Security Restrictions: ServiceAccount allowlist "
            "(DELETE is reserved to system:serviceaccount:dns-system:external-dns)",
            [
                Step(
                    "# Blocked service account: TOKEN=$(kubectl create token other-app -n dns-system "
                    "--audience=bindcar)",
                    401,
                    curl(url, zones + "/example.com", token("dns-system", "other-app"), method="DELETE"),
                    denied("ServiceAccount not authorized: system:serviceaccount:dns-system:other-app"),
                ),
            ],
        ),
        (
            "Authorization by RBAC (ZONE_AUTHZ=rbac: DELETE also asks Kubernetes RBAC)",
            [
                Step(
                    "# Allowed service account, but no RBAC binding lets it delete zones yet: TOKEN=$(kubectl create "
                    "token external-dns -n dns-system --audience=bindcar)",
                    403,
                    curl(url, zones + "/example.com", token("dns-system", "external-dns"), method="DELETE"),
                    {"error": f'Forbidden: {EXTERNAL_DNS} cannot delete zones.bindcar.firestoned.io "example.com"'},
                ),
                Step(
                    f"# Grant it (deploy/rbac-zones.yaml's binding; the ClusterRole exists already): {kubectl_grant}\n"
                    "# Here the same ClusterRoleBinding, created in the stand-in with curl",
                    201,
                    " ".join(
                        [
                            CURL,
                            f"--cacert {cluster.ca_path}",
                            f'-H "Authorization: Bearer $(cat {admin})"',
                            f"-H 'Content-Type: application/json' -d @{workdir / 'grant.json'}",
                            cluster.url + "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                        ]
                    ),
                ),
                Step(
                    "# The same DELETE again",
                    200,
                    curl(url, zones + "/example.com", token("dns-system", "external-dns"), method="DELETE"),
                    {"deleted": "example.com", "caller": {"username": EXTERNAL_DNS, "method": "tokenreview"}},
                ),
            ],
        ),
        (
            "The zone API",
            [
                Step(
                    "# Create a zone",
                    201,
                    curl(
                        url,
                        zones,
                        token("dns-system", "external-dns"),
                        method="POST",
                        data="""'{"name": "example.org", "records": []}'""",
                    ),
                ),
                Step("# Read it back", 200, curl(url, zones + "/example.org", token("test-system", "reader"))),
                Step("# Server status", 200, curl(url, "/api/v1/server/status", token("test-system", "reader"))),
                Step("# Health probe (exempt from authentication)", 200, curl(url, "/api/v1/health")),
            ],
        ),
    ]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/v1/health", timeout=1):  # noqa: S310 - loopback URL
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the example app did not answer at {url} within {timeout:g}s")


def check_port_free(port: int) -> None:
    """Stop before anything is touched when another server (a running demo, say) holds the port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise SystemExit(
                f"make demo: port {port} is already in use ({e.strerror}); is a demo running already? "
                f"Stop it with Ctrl-C, or pick another port: make demo DEMO_PORT={port + 1}"
            ) from None


def check_workdir_free(workdir: Path) -> None:
    """Stop when a running demo owns the work folder (its pid file names a live process)."""
    try:
        pid = int((workdir / PID_FILE).read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return  # no demo, or a stale folder from one that was killed: reuse it
    raise SystemExit(f"make demo: {workdir} is in use by another demo (pid {pid}); stop it first, or pass --workdir")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    args = parser.parse_args(argv)

    check_port_free(args.port)
    check_workdir_free(args.workdir)
    shutil.rmtree(args.workdir, ignore_errors=True)
    (args.workdir / "cluster").mkdir(parents=True)
    (args.workdir / PID_FILE).write_text(str(os.getpid()))
    zone_dir = args.workdir / "zones"
    zone_dir.mkdir()
    (zone_dir / "example.com.json").write_text(json.dumps({"name": "example.com", "records": []}))
    url = f"http://127.0.0.1:{args.port}"

    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with FakeCluster(workdir=args.workdir / "cluster") as cluster:
        kubeconfig = cluster.write_kubeconfig(args.workdir / "cluster" / "kubeconfig")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BIND_", "BINDCAR_", "KUBE"))}
        env.update(STAGING, **AUTHZ)
        env.update(BIND_AUTH_MODE="tokenreview", KUBECONFIG=str(kubeconfig), ZONE_DATA_DIR=str(zone_dir))
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "example_app" / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{args.port}",
            "example_app.app:create_app()",
        ]
        log = (args.workdir / "gunicorn.log").open("wb")
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(url, proc)
            print(
                f"# flask-bindcar demo: example_app at {url}, TokenReview mode against a FakeCluster at {cluster.url}"
            )
            steps_by_section = script(cluster, url, args.workdir)
            print("# Profile (the seed's Staging): " + " ".join(f"{k}={v}" for k, v in STAGING.items()))
            print("# Authorization: " + " ".join(f"{k}={v}" for k, v in AUTHZ.items()))
            print(f"# kubectl against the stand-in: export KUBECONFIG={kubeconfig}")
            print(f"# Tokens: {args.workdir / 'tokens'} (each command reads its own)")
            print(f"# Server log: {args.workdir / 'gunicorn.log'} (all removed on exit). Ctrl-C to stop.\n")
            for title, steps in steps_by_section:
                print(f"### {title}\n")
                for step in steps:
                    print(step.render())
            print("# Serving. Ctrl-C to stop.", flush=True)
            while not stop and proc.poll() is None:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
