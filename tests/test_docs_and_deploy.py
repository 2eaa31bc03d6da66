"""The docs and the deployment manifests say only what is true: every seed section is there,
code is checked (tests/test_docs_examples.py), manifests validate, and every variable named is one we read."""

from __future__ import annotations

import base64
import logging
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from flask_bindcar.config import SETTINGS
from flask_bindcar.testing import FakeCluster, RealCluster

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
MANIFESTS = sorted((ROOT / "example_app" / "deploy").glob("*.yaml"))

READ_BY_LIBRARY = {s.env_key for s in SETTINGS if s.env_key}
READ_BY_EXAMPLE_APP = {
    "ZONE_DATA_DIR",
    "ZONE_AUTHZ",
    "GUNICORN_BIND",
    "GUNICORN_WORKERS",
    "GUNICORN_THREADS",
    "GUNICORN_CERTFILE",
    "GUNICORN_KEYFILE",
}
READ_BY_REQUESTS = {"REQUESTS_CA_BUNDLE"}  # the example client's CA, read by requests itself

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


TLS_SECRET = "bindcar-example-tls"  # made by the commands of docs/kubernetes.md, "The certificate"
CA_CONFIGMAP = "bindcar-example-ca"


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
        assert name in READ_BY_LIBRARY | READ_BY_EXAMPLE_APP | READ_BY_REQUESTS, (
            f"{page.name} sets {name}, which nothing reads"
        )


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
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(volumes) == set(mounts) == {"bindcar-token", "bindcar-ca"}
    [source] = volumes["bindcar-token"]["projected"]["sources"]
    projection = source["serviceAccountToken"]
    assert projection["audience"] in server_env["BIND_TOKEN_AUDIENCES"]["value"].split(",")
    assert 600 <= projection["expirationSeconds"] <= 86400  # the API server's bounds, without an extension
    assert f"{mounts['bindcar-token']['mountPath']}/{projection['path']}" == DEFAULT_TOKEN_PATH
    assert all(m["readOnly"] for m in mounts.values())
    assert "--token-file" not in container["command"]
    assert pod["automountServiceAccountToken"] is False
    # It runs the example client against the example Service.
    assert container["command"][:3] == ["python", "-m", "example_app.client"]
    assert (ROOT / "example_app" / "client.py").is_file()
    service = resources["Service/bindcar-example"]
    [port] = service["spec"]["ports"]
    assert port["name"] == "https"
    assert container["command"][3] == f"https://{service['metadata']['name']}.{namespace}.svc:{port['port']}"
    # ... over HTTPS, checking the certificate against the CA the ConfigMap holds, and that one only.
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) == READ_BY_REQUESTS
    ca = volumes["bindcar-ca"]["configMap"]
    assert ca == {"name": CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert env["REQUESTS_CA_BUNDLE"] == f"{mounts['bindcar-ca']['mountPath']}/ca.crt"
    assert container["image"] == server["image"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_api_serves_https_only() -> None:
    """gunicorn serves TLS with the mounted Secret's pair; probes, Service and NetworkPolicy use that port."""
    resources = load_manifests()
    pod = resources["Deployment/bindcar-example"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    [port] = container["ports"]
    assert port == {"name": "https", "containerPort": 8443}
    assert env["GUNICORN_BIND"] == f"0.0.0.0:{port['containerPort']}"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
        assert container[probe]["httpGet"]["port"] == "https"
    # The certificate and key are the kubernetes.io/tls keys of the Secret mounted read-only.
    secret = tls_mount_path(pod)
    assert env["GUNICORN_CERTFILE"] == f"{secret}/tls.crt"
    assert env["GUNICORN_KEYFILE"] == f"{secret}/tls.key"

    [service_port] = resources["Service/bindcar-example"]["spec"]["ports"]
    assert service_port == {"name": "https", "port": 8443, "targetPort": "https"}
    [ingress] = resources["NetworkPolicy/bindcar-example"]["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": port["containerPort"]}]
    text = "".join(m.read_text() for m in MANIFESTS)
    assert "http://" not in text and "8080" not in text


def tls_mount_path(pod: dict[str, Any]) -> str:
    """Where the pod mounts the TLS Secret, which must be the one the docs create."""
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == TLS_SECRET
    [mount] = [m for c in pod["containers"] for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    return str(mount["mountPath"])


def certificate_commands() -> list[str]:
    """The lines of docs/kubernetes.md's "The certificate": openssl, then the Secret and the ConfigMap."""
    page = (ROOT / "docs" / "kubernetes.md").read_text()
    section = page.split("\n## The certificate\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"^```sh\n(.*?)^```", section, flags=re.S | re.M)
    lines: list[str] = block.splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["openssl", "req", "-x509", "-newkey"],
        ["kubectl", "create", "secret", "tls"],
        ["kubectl", "create", "configmap", CA_CONFIGMAP],
    ]
    return lines


def test_the_example_serves_https_with_the_documented_certificate(
    serve: Callable[..., AbstractContextManager[str]],
    fake_cluster: FakeCluster,
    fake_kubeconfig: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The docs' openssl line makes the pair; laid out where the manifests mount the Secret and the
    ConfigMap, the example client (as client.yaml runs it) calls the example API under gunicorn and
    example_app/gunicorn.conf.py (as deployment.yaml sets it) over verified HTTPS, with no warning."""
    from example_app import client as example_client

    assert shutil.which("openssl"), "docs/kubernetes.md makes the certificate with openssl: install it to check that"
    openssl, secret_line, configmap_line = certificate_commands()
    made = tmp_path / "made"
    made.mkdir()
    done = subprocess.run(["bash", "-c", openssl], cwd=made, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    # What the kubelet mounts: the Secret's tls.crt and tls.key, the ConfigMap's ca.crt (see the kubectl lines).
    assert f"secret tls {TLS_SECRET} -n dns-system --cert=tls.crt --key=tls.key" in secret_line
    assert configmap_line.endswith("--from-file=ca.crt=tls.crt")
    resources = load_manifests()
    server_pod = resources["Deployment/bindcar-example"]["spec"]["template"]["spec"]
    client_pod = resources["Deployment/zone-client"]["spec"]["template"]["spec"]
    root = tmp_path / "root"

    def in_pod(path: str) -> Path:
        return root / path.lstrip("/")

    secret_dir = in_pod(tls_mount_path(server_pod))
    [ca_mount] = [m for m in client_pod["containers"][0]["volumeMounts"] if m["name"] == "bindcar-ca"]
    ca_dir = in_pod(ca_mount["mountPath"])
    for directory, name, source in [
        (secret_dir, "tls.crt", "tls.crt"),
        (secret_dir, "tls.key", "tls.key"),
        (ca_dir, "ca.crt", "tls.crt"),
    ]:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(made / source, directory / name)

    server_env = {e["name"]: e["value"] for e in server_pod["containers"][0]["env"] if "value" in e}
    client_env = {e["name"]: e["value"] for e in client_pod["containers"][0]["env"]}
    env = {
        "GUNICORN_CMD_ARGS": "-c example_app/gunicorn.conf.py",
        "GUNICORN_CERTFILE": str(in_pod(server_env["GUNICORN_CERTFILE"])),
        "GUNICORN_KEYFILE": str(in_pod(server_env["GUNICORN_KEYFILE"])),
        "BIND_AUTH_MODE": "tokenreview",
        "KUBECONFIG": str(fake_kubeconfig),
        "BIND_ALLOWED_NAMESPACES": "dns-system",
        "ZONE_DATA_DIR": str(tmp_path / "zones"),
    }
    token = tmp_path / "token"
    token.write_text(fake_cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="zone-client-0"))
    target = urlsplit(client_pod["containers"][0]["command"][3])
    assert target.scheme == "https"
    loopback = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:  # the Service's name, as cluster DNS would
        return loopback("127.0.0.1" if host == target.hostname else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(in_pod(client_env["REQUESTS_CA_BUNDLE"])))
    with (
        caplog.at_level(logging.WARNING, logger="flask_bindcar.client"),
        serve("example_app.app:create_app()", env) as served,
    ):
        url = f"https://{target.hostname}:{urlsplit(served).port}"
        assert example_client.main([url, "--token-file", str(token)]) == 0
        assert requests.get(f"{url}/api/v1/ready", timeout=10).status_code == 200  # the readiness probe
        with pytest.raises(requests.ConnectionError):  # the port speaks TLS only
            requests.get(f"http://{target.hostname}:{urlsplit(served).port}/api/v1/ready", timeout=10)
        monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # the public CAs only: the certificate is checked
        assert example_client.main([url, "--token-file", str(token)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        '200 {"caller":{"method":"tokenreview","username":"system:serviceaccount:dns-system:external-dns"},"zones":[]}'
    )
    assert lines[1].startswith("error ") and "CERTIFICATE_VERIFY_FAILED" in lines[1], lines[1]
    assert len(lines) == 2
    assert [r.getMessage() for r in caplog.records if r.name == "flask_bindcar.client"] == []


@pytest.mark.cluster
def test_the_documented_certificate_commands_make_what_the_pods_mount(
    real_cluster: RealCluster, tmp_path: Path
) -> None:
    """docs/kubernetes.md's three lines, run as written, then its renewal: the Secret and ConfigMap the pods mount."""
    from tests.test_docs_examples import kubectl_shell

    sh = kubectl_shell(real_cluster, tmp_path)
    real_cluster.kubectl("apply", "-f", str(ROOT / "example_app" / "deploy" / "namespace.yaml"))
    secret_path = f"/api/v1/namespaces/dns-system/secrets/{TLS_SECRET}"
    configmap_path = f"/api/v1/namespaces/dns-system/configmaps/{CA_CONFIGMAP}"
    try:
        lines = certificate_commands()
        for line in lines:
            done = sh(line)
            assert done.returncode == 0, done.stderr
        secret = real_cluster.api("GET", secret_path)
        assert secret["type"] == "kubernetes.io/tls"
        assert set(secret["data"]) == {"tls.crt", "tls.key"}
        configmap = real_cluster.api("GET", configmap_path)
        assert configmap["data"] == {"ca.crt": base64.b64decode(secret["data"]["tls.crt"]).decode()}

        # Renewal as the page says: a new pair, applied over the old objects.
        first = secret["data"]["tls.crt"]
        for line in lines:
            renew = line if line.startswith("openssl") else f"{line} --dry-run=client -o yaml | kubectl apply -f -"
            done = sh(renew)
            assert done.returncode == 0, done.stderr
        secret = real_cluster.api("GET", secret_path)
        assert secret["data"]["tls.crt"] != first
        assert real_cluster.api("GET", configmap_path)["data"] == {
            "ca.crt": base64.b64decode(secret["data"]["tls.crt"]).decode()
        }
    finally:
        sh(f"kubectl delete --ignore-not-found -n dns-system secret/{TLS_SECRET} configmap/{CA_CONFIGMAP}")


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
