"""The docs and the deployment manifests say only what is true: every seed section is there,
code is checked (tests/test_docs_examples.py), manifests validate, and every variable named is one we read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flask_bindcar.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
MANIFESTS = sorted((ROOT / "example_app" / "deploy").glob("*.yaml"))

READ_BY_LIBRARY = {s.env_key for s in SETTINGS if s.env_key}
READ_BY_EXAMPLE_APP = {"ZONE_DATA_DIR", "ZONE_AUTHZ", "GUNICORN_BIND", "GUNICORN_WORKERS", "GUNICORN_THREADS"}

# The sections of the guide, "Kubernetes TokenReview Validation", each of which must have its page or section here.
SEED_SECTIONS = [
    "Overview",
    "Basic mode",
    "TokenReview mode",
    "Enabling TokenReview validation",
    "Requirements",
    "Environment variables",
    "Audience validation",
    "Namespace restriction",
    "ServiceAccount allowlist",
    "Configuration best practices",
    "ConfigMap alternative",
    "RBAC configuration",
    "How TokenReview works",
    "TokenReview request",
    "TokenReview response",
    "Error messages",
    "Testing",
    "Unit tests",
    "Integration testing",
    "Testing invalid tokens",
    "Testing security restrictions",
    "Performance",
    "When to use each mode",
    "Troubleshooting",
    "Security best practices",
    "Migration from Basic to TokenReview",
    "API reference",
]


def blocks(language: str) -> list[tuple[Path, str]]:
    found = []
    for page in DOCS:
        for body in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M):
            found.append((page, body))
    return found


def test_every_seed_section_is_documented() -> None:
    headings = {h.strip().lower() for page in DOCS for h in re.findall(r"^#{1,4} (.+)$", page.read_text(), flags=re.M)}
    missing = [s for s in SEED_SECTIONS if not any(h.startswith(s.lower()) for h in headings)]
    assert missing == []


def test_python_in_the_docs_is_checked() -> None:
    """Pages with Python examples are among those whose every block tests/test_docs_examples.py checks."""
    from tests.test_docs_examples import PAGES

    python = blocks("python")
    assert python
    assert {page.name for page, _ in python} <= set(PAGES)


@pytest.mark.parametrize("page_body", blocks("yaml"), ids=lambda pb: pb[0].name)
def test_yaml_in_the_docs_parses_and_names_only_variables_we_read(page_body: tuple[Path, str]) -> None:
    page, body = page_body
    documents = list(yaml.safe_load_all(body))
    assert documents
    for name in env_names(documents):
        assert name in READ_BY_LIBRARY | READ_BY_EXAMPLE_APP, f"{page.name} sets {name}, which nothing reads"


def env_names(node: Any) -> list[str]:
    """Names of environment variables set anywhere in parsed YAML (``env:`` lists)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                found += [item["name"] for item in value if isinstance(item, dict) and "name" in item]
            else:
                found += env_names(value)
    elif isinstance(node, list):
        if node and all(isinstance(i, dict) and "name" in i and ("value" in i or "valueFrom" in i) for i in node):
            found += [i["name"] for i in node]  # a bare env list, as the docs show them
        else:
            for item in node:
                found += env_names(item)
    return found


def test_manifests_validate_strictly() -> None:
    assert {m.name for m in MANIFESTS} >= {
        "namespace.yaml",
        "serviceaccount.yaml",
        "rbac.yaml",
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "networkpolicy.yaml",
        "client.yaml",
    }
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, MANIFESTS)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == 13


def load_manifests() -> dict[str, Any]:
    resources = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            resources[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return resources


def test_deployment_is_wired_as_the_guide_says() -> None:
    resources = load_manifests()
    deployment = resources["Deployment/bindcar-example"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}

    assert set(env) <= READ_BY_LIBRARY | READ_BY_EXAMPLE_APP
    assert env["BIND_AUTH_MODE"]["value"] == "tokenreview"
    ref = env["BIND_ALLOWED_SERVICE_ACCOUNTS"]["valueFrom"]["configMapKeyRef"]
    configmap = resources[f"ConfigMap/{ref['name']}"]
    assert ref["key"] in configmap["data"]
    assert pod["serviceAccountName"] == "bindcar"

    binding = resources["ClusterRoleBinding/bindcar-tokenreview"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "bindcar", "namespace": "dns-system"}]
    assert resources["ClusterRole/bindcar-tokenreview"]["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    ]

    exempt = set(env["BIND_AUTH_EXEMPT_PATHS"]["value"].split(","))
    assert {container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]} <= exempt
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]


def test_the_configmap_value_is_accepted_as_written() -> None:
    from flask_bindcar import AuthConfig

    value = load_manifests()["ConfigMap/bindcar-allowed-accounts"]["data"]["allowed-service-accounts"]
    config = AuthConfig.load(environ={"BIND_ALLOWED_SERVICE_ACCOUNTS": value})
    assert config.allowed_service_accounts == {
        "system:serviceaccount:dns-system:external-dns",
        "system:serviceaccount:dns-system:cert-manager",
        "system:serviceaccount:dns-system:ingress-dns",
    }


def test_the_client_deployment_calls_the_api_as_the_guide_allows() -> None:
    from flask_bindcar.client import DEFAULT_TOKEN_PATH

    resources = load_manifests()
    server = resources["Deployment/bindcar-example"]["spec"]["template"]["spec"]["containers"][0]
    server_env = {e["name"]: e for e in server["env"]}
    allowlist = resources["ConfigMap/bindcar-allowed-accounts"]["data"]["allowed-service-accounts"].split()
    client = resources["Deployment/zone-client"]
    pod = client["spec"]["template"]["spec"]
    [container] = pod["containers"]

    # Its identity is an existing ServiceAccount the server's allowlists accept.
    namespace, account = client["metadata"]["namespace"], pod["serviceAccountName"]
    assert f"ServiceAccount/{account}" in resources
    assert namespace in server_env["BIND_ALLOWED_NAMESPACES"]["value"].split(",")
    assert f"system:serviceaccount:{namespace}:{account}" in allowlist
    # Its token is projected for an audience the server accepts, where the client reads it by default.
    [volume] = pod["volumes"]
    [source] = volume["projected"]["sources"]
    projection = source["serviceAccountToken"]
    assert projection["audience"] in server_env["BIND_TOKEN_AUDIENCES"]["value"].split(",")
    assert 600 <= projection["expirationSeconds"] <= 86400  # the API server's bounds, without an extension
    [mount] = container["volumeMounts"]
    assert mount["name"] == volume["name"]
    assert f"{mount['mountPath']}/{projection['path']}" == DEFAULT_TOKEN_PATH
    assert "--token-file" not in container["command"]
    assert pod["automountServiceAccountToken"] is False
    # It runs the example client against the example Service.
    assert container["command"][:3] == ["python", "-m", "example_app.client"]
    assert (ROOT / "example_app" / "client.py").is_file()
    service = resources["Service/bindcar-example"]
    [port] = service["spec"]["ports"]
    assert container["command"][3] == f"http://{service['metadata']['name']}.{namespace}.svc:{port['port']}"
    assert container["image"] == server["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_image_installs_the_client_extra() -> None:
    dockerfile = (ROOT / "example_app" / "Dockerfile").read_text()
    [install] = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    extras = re.search(r"'\.\[([\w,-]+)\]'", install)
    assert extras is not None
    assert "client" in extras.group(1).split(",")


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (ROOT / "example_app" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
