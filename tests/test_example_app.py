"""The example app: zone API behaviour, and ``make demo``'s printed commands give their printed outcomes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app.app import create_app
from tests.conftest import keep_log
from tests.gunicorn_server import ROOT, base_environment, free_port


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    """The example app, in Basic mode; pytest-flask's ``client`` fixture is its test client."""
    return create_app(tmp_path / "zones")


AUTH = {"Authorization": "Bearer demo"}


def test_zone_lifecycle_and_persistence(client: FlaskClient, tmp_path: Path) -> None:
    created = client.post("/api/v1/zones", json={"name": "example.com", "records": [{"type": "A"}]}, headers=AUTH)
    assert created.status_code == 201
    assert created.get_json()["zone"] == {"name": "example.com", "records": [{"type": "A"}], "created_by": None}
    assert client.get("/api/v1/zones", headers=AUTH).get_json() == {
        "zones": ["example.com"],
        "caller": {"username": None, "method": "basic"},
    }
    # A new app on the same directory (a restart) still has the zone.
    restarted = create_app(tmp_path / "zones").test_client()
    assert restarted.get("/api/v1/zones/example.com", headers=AUTH).get_json()["zone"]["name"] == "example.com"
    assert restarted.get("/api/v1/server/status", headers=AUTH).get_json()["zones"] == 1


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "error"),
    [
        ("post", "/api/v1/zones", {"data": "{oops", "content_type": "application/json"}, 400, None),
        ("post", "/api/v1/zones", {"json": {"name": "not a zone!"}}, 400, "Invalid zone name: 'not a zone!'"),
        ("post", "/api/v1/zones", {"json": {"name": "example.net", "records": "x"}}, 400, "records must be a list"),
        ("get", "/api/v1/zones/missing.example", {}, 404, "Zone not found: missing.example"),
        ("get", "/api/v1/zones/BAD_NAME", {}, 400, "Invalid zone name: 'BAD_NAME'"),
    ],
)
def test_bad_input_gets_a_4xx_json_error(
    client: FlaskClient, method: str, path: str, kwargs: dict[str, Any], status: int, error: str | None
) -> None:
    response = getattr(client, method)(path, headers=AUTH, **kwargs)
    assert response.status_code == status
    body = response.get_json()
    assert list(body) == ["error"]
    if error is not None:
        assert body["error"] == error


def test_duplicate_zone(client: FlaskClient) -> None:
    assert client.post("/api/v1/zones", json={"name": "example.com"}, headers=AUTH).status_code == 201
    response = client.post("/api/v1/zones", json={"name": "example.com"}, headers=AUTH)
    assert (response.status_code, response.get_json()) == (409, {"error": "Zone already exists: example.com"})


def test_probes_are_exempt_and_the_rest_is_not(client: FlaskClient) -> None:
    assert client.get("/api/v1/health").get_json() == {"status": "healthy"}
    assert client.get("/api/v1/ready").get_json() == {"status": "ready"}
    response = client.get("/api/v1/zones")
    assert (response.status_code, response.get_json()) == (401, {"error": "Missing Authorization header"})


def parse_demo(output: str) -> list[tuple[int, dict[str, Any] | None, str]]:
    steps = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        match = re.fullmatch(r"# Expected: (\d{3})(?: (\{.*\}))?", line)
        if match:
            body = json.loads(match.group(2)) if match.group(2) else None
            steps.append((int(match.group(1)), body, lines[i + 1]))
    return steps


@dataclass
class Demo:
    """A running ``python -m example_app.demo`` and what it printed up to "# Serving."."""

    proc: subprocess.Popen[str]
    port: int
    workdir: Path
    output: str


def start_demo(port: int, workdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "example_app.demo", "--port", str(port), "--workdir", str(workdir)],
        cwd=ROOT,
        env=base_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One demo for the module; stopping it must exit 0 and remove its work folder."""
    port, workdir = free_port(), tmp_path_factory.mktemp("demo") / "work"
    proc = start_demo(port, workdir)
    try:
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:
            output.append(line)
            if line.startswith("# Serving."):
                break
        yield Demo(proc, port, workdir, "".join(output))
    finally:
        server_log = workdir / "gunicorn.log"  # removed with the work folder when the demo stops
        if server_log.exists():
            keep_log("demo-gunicorn", server_log.read_text(errors="replace"))
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    assert not workdir.exists()  # it cleans up after itself


def run_printed(command: str) -> tuple[int, str]:
    """Run a printed command as a user pastes it: the body, then "HTTP <status>" on a line of its own."""
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    assert result.stdout.endswith("\n"), (command[:80], result.stdout)
    body, _, status = result.stdout.rstrip("\n").rpartition("\n")
    assert status.startswith("HTTP "), (command[:80], result.stdout)
    return int(status.removeprefix("HTTP ")), body


@pytest.mark.parametrize("same", ["port", "workdir"])
def test_a_second_demo_refuses_and_leaves_the_first_alone(demo: Demo, tmp_path: Path, same: str) -> None:
    before = sorted(p.relative_to(demo.workdir) for p in demo.workdir.rglob("*"))
    port = demo.port if same == "port" else free_port()
    workdir = demo.workdir if same == "workdir" else tmp_path / "second"
    second = start_demo(port, workdir)
    try:
        stdout, stderr = second.communicate(timeout=30)
    finally:
        if second.poll() is None:  # it went on to serve: stop it as Ctrl-C would
            second.terminate()
            second.wait(timeout=15)

    assert second.returncode != 0
    assert stdout == ""  # no tokens printed as if it were serving
    if same == "port":
        assert f"port {demo.port} is already in use" in stderr
        assert not workdir.exists()
    else:
        assert f"{demo.workdir} is in use by another demo (pid {demo.proc.pid})" in stderr
    assert sorted(p.relative_to(demo.workdir) for p in demo.workdir.rglob("*")) == before
    status, command = next((s, c) for s, _, c in parse_demo(demo.output) if s == 200 and "Bearer" in c)
    assert run_printed(command)[0] == status  # the first demo still serves its tokens


def printed(output: str, prefix: str) -> str:
    """The rest of the header line that starts with ``prefix``."""
    return next(line.removeprefix(prefix) for line in output.splitlines() if line.startswith(prefix))


def test_demo_commands_give_their_printed_outcomes(demo: Demo) -> None:
    assert shutil.which("curl"), "the demo prints curl commands; curl must be installed to check them"
    steps = parse_demo(demo.output)
    assert len(steps) == 18
    stand_in = re.search(r"against a FakeCluster at (https://127\.0\.0\.1:\d+)$", demo.output.splitlines()[0])
    assert stand_in is not None
    app = [c for _, _, c in steps if f"http://127.0.0.1:{demo.port}/" in c]
    grant = [
        c
        for _, _, c in steps
        if c.endswith(f"{stand_in.group(1)}/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")
    ]
    assert (len(app), len(grant)) == (17, 1)
    assert all(command.startswith("curl -s ") for _, _, command in steps)
    # Short lines: every token is read from a file the demo wrote, none is printed.
    assert "eyJ" not in demo.output
    # (a token is some 900 characters; the longest command, the grant, reads CA, credential and body from files)
    assert max(len(command.replace(str(demo.workdir), "")) for _, _, command in steps) < 250
    for status, body, command in steps:
        code, text = run_printed(command)
        assert code == status, (command[:80], text)
        if body is not None:
            assert json.loads(text) == body


def test_demo_rbac_pair_is_403_then_grant_then_200(demo: Demo) -> None:
    """The RBAC steps, in their printed order: refused until the binding exists, then allowed."""
    statuses = [status for status, _, command in parse_demo(demo.output) if "-X DELETE" in command or "@" in command]
    assert statuses == [401, 403, 201, 200]  # the allowlist's 401, then RBAC's pair around the grant
    assert (
        "# Grant it (deploy/rbac-zones.yaml's binding; the ClusterRole exists already): kubectl create "
        "clusterrolebinding bindcar-zones-external-dns --clusterrole=bindcar-zones-editor "
        "--serviceaccount=dns-system:external-dns"
    ) in demo.output.splitlines()


def test_demo_shows_a_forged_token_refused_with_no_tokenreview(demo: Demo) -> None:
    """The forged token's step, and what the demo saw sending it: the stand-in's TokenReview count
    goes up for a genuine token and stays put for the forged one, refused by the local pre-check."""
    lines = demo.output.splitlines()
    start = lines.index(
        "### Testing Forged Tokens (the local pre-check, BIND_TOKEN_PRECHECK=auto: on once the cluster's keys load)"
    )
    section = lines[start : lines.index("### Testing Security Restrictions: audience (BIND_TOKEN_AUDIENCES=bindcar)")]
    [(status, body, command)] = parse_demo("\n".join(section))
    assert (status, body) == (
        401,
        {"error": "Token validation failed: [invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"},
    )
    assert command.endswith(f'$(cat {demo.workdir / "tokens" / "forged"})" http://127.0.0.1:{demo.port}/api/v1/zones')
    seen = section[section.index(command) + 1 :]
    assert seen == [
        "# Sent by the demo as it started, the stand-in's TokenReview count read around each request:",
        "#   external-dns's genuine token: HTTP 200, TokenReviews 0 -> 1 (its signature checked locally, then one "
        "TokenReview)",
        "#   the forged token:             HTTP 401, TokenReviews 1 -> 1 (refused locally: no TokenReview sent)",
        "",
    ]


def test_demo_prints_a_kubeconfig_that_reaches_the_stand_in(demo: Demo) -> None:
    """kubectl (here the official client) pointed at the printed kubeconfig sees the demo's cluster."""
    from kubernetes import client

    from tests.conftest import api_client_for

    kubeconfig = Path(printed(demo.output, "# kubectl against the stand-in: export KUBECONFIG="))
    assert kubeconfig == demo.workdir / "cluster" / "kubeconfig"
    api = api_client_for(kubeconfig, retries=False)
    accounts = client.CoreV1Api(api).list_namespaced_service_account("dns-system").items
    assert "external-dns" in [sa.metadata.name for sa in accounts]
    roles = client.RbacAuthorizationV1Api(api).list_cluster_role().items
    assert "bindcar-zones-editor" in [r.metadata.name for r in roles]
    assert Path(printed(demo.output, "# Tokens: ").removesuffix(" (each command reads its own)")) == (
        demo.workdir / "tokens"
    )


def test_metrics_endpoint_is_exempt_and_counts_decisions(client: FlaskClient) -> None:
    client.get("/api/v1/zones", headers=AUTH)
    client.get("/api/v1/zones")
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert 'bindcar_auth_requests_total{reason="ok",result="allow"}' in text
    assert 'bindcar_auth_requests_total{reason="missing_header",result="deny"}' in text
