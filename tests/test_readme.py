"""The README's code is real: each snippet is a file here or a test below, and it runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
import yaml
from werkzeug.test import Client

from example_app.app import create_app
from flask_bindcar.testing import FakeCluster, RealCluster
from tests.gunicorn_server import base_environment, free_port

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_snippets_are_the_files_and_tests_that_run() -> None:
    flask_block, wsgi_block, testing_block, real_block = python_blocks()
    assert flask_block == (ROOT / "example_app" / "readme_flask.py").read_text()
    assert wsgi_block == (ROOT / "example_app" / "readme_wsgi.py").read_text()
    source = Path(__file__).read_text()
    assert "\n" + testing_block.split("\n\n\n", 1)[1] in source
    real_source = (ROOT / "tests" / "test_real_cluster.py").read_text()
    assert real_block.startswith("from flask_bindcar.testing import RealCluster\n\n")
    assert textwrap.indent(real_block.split("\n\n", 1)[1], "    ") in real_source  # test_readme_snippet


def test_flask_snippet_in_basic_mode() -> None:
    """Any bearer token passes, there is no caller, and the DELETE view refuses everyone."""
    from example_app.readme_flask import create_app

    client = create_app().test_client()
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/api/v1/zones").json == {"error": "Missing Authorization header"}
    assert client.get("/api/v1/zones", headers={"Authorization": "Bearer t"}).json == {"zones": [], "caller": None}
    response = client.delete("/api/v1/zones/example.com", headers={"Authorization": "Bearer t"})
    assert response.json == {"error": "Token validation failed: ServiceAccount not authorized: (anonymous)"}


def test_flask_snippet_in_tokenreview_mode(
    fake_cluster: FakeCluster, fake_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller is known, and external-dns, only it, may delete."""
    from example_app.readme_flask import create_app

    monkeypatch.setenv("BIND_AUTH_MODE", "tokenreview")
    monkeypatch.setenv("KUBECONFIG", str(fake_kubeconfig))
    client = create_app().test_client()

    def delete(account: str) -> tuple[int, object]:
        token = fake_cluster.token("dns-system", account, audiences=["bindcar"])
        response = client.delete("/api/v1/zones/example.com", headers={"Authorization": f"Bearer {token}"})
        return response.status_code, response.json

    assert delete("external-dns") == (200, {"deleted": "example.com"})
    assert delete("other-app") == (
        401,
        {"error": "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app"},
    )


def test_no_code_gunicorn_lines(tmp_path: Path) -> None:
    """The README's two gunicorn lines, run as written on a ``myservice.wsgi:app`` of one's own."""
    (tmp_path / "myservice").mkdir()
    (tmp_path / "myservice" / "__init__.py").write_text("")
    (tmp_path / "myservice" / "wsgi.py").write_text((ROOT / "example_app" / "readme_wsgi.py").read_text())
    block = re.search(r"Or with no code at all:.*?```sh\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    assert len(lines) == 2 and all('wrap("myservice.wsgi:app"' in line for line in lines)
    venv_bin = Path(sys.executable).parent  # where gunicorn is, as in an activated virtualenv
    env = {**base_environment(), "PYTHONPATH": str(tmp_path), "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    for line in lines:
        port = free_port()
        proc = subprocess.Popen(
            ["bash", "-c", f"{line} --bind 127.0.0.1:{port}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # the shell and gunicorn stop together
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    health = requests.get(url + "/healthz", timeout=2)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert (health.status_code, health.json()) == (200, {"caller": None}), line
            denied = requests.get(url + "/api/v1/zones", timeout=2)
            assert (denied.status_code, denied.json()) == (401, {"error": "Missing Authorization header"}), line
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)


def test_wsgi_snippet() -> None:
    from example_app.readme_wsgi import application

    client = Client(application)
    assert client.get("/api/v1/zones").json == {"error": "Missing Authorization header"}
    assert client.get("/api/v1/zones", headers={"Authorization": "Bearer t"}).json == {"caller": None}
    assert client.get("/healthz").json == {"caller": None}


def test_only_external_dns_may_delete_zones(fake_cluster, fake_kubeconfig, monkeypatch, tmp_path):
    monkeypatch.setenv("BIND_AUTH_MODE", "tokenreview")
    monkeypatch.setenv("KUBECONFIG", str(fake_kubeconfig))
    client = create_app(tmp_path).test_client()
    token = fake_cluster.token("dns-system", "other-app", audiences=["bindcar"])

    response = client.delete("/api/v1/zones/example.com", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert response.json == {
        "error": "Token validation failed: ServiceAccount not authorized: system:serviceaccount:dns-system:other-app"
    }


# -- authorization by RBAC: the YAML and the kubectl lines ------------------------------------------


def rbac_example() -> tuple[str, str, list[str]]:
    """The README's RBAC section, its YAML block and its shell lines."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Authorization by RBAC\n", 1)[1].split("\n## ", 1)[0]
    [manifest] = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    [commands] = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return " ".join(section.split()), manifest, commands.splitlines()


def test_readme_rbac_yaml_grants_what_the_decorator_asks() -> None:
    prose, manifest, commands = rbac_example()
    assert '`@auth_required(rbac=RBAC(resource="zones", group="bindcar.firestoned.io", name="{name}"))`' in prose
    role, binding = yaml.safe_load_all(manifest)
    assert role["kind"] == "ClusterRole"
    assert role["rules"] == [{"apiGroups": ["bindcar.firestoned.io"], "resources": ["zones"], "verbs": ["delete"]}]
    assert binding["kind"] == "ClusterRoleBinding"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "external-dns", "namespace": "dns-system"}]
    assert "here `zones-rbac.yaml`:" in prose  # the file the first command applies
    assert commands == [
        "kubectl apply -f zones-rbac.yaml",
        "kubectl auth can-i --list --as=system:serviceaccount:dns-system:external-dns | grep zones",
    ]


@pytest.mark.cluster
def test_readme_rbac_commands_on_a_real_cluster(real_cluster: RealCluster, tmp_path: Path) -> None:
    """The README's commands as written, and its two warnings, as kubectl and kube-apiserver 1.37 answer."""
    from tests.test_docs_examples import REFUSED, kubectl_shell, wait_until_rbac_allows

    prose, manifest, [apply, listing] = rbac_example()
    (tmp_path / "zones-rbac.yaml").write_text(manifest)
    sh = kubectl_shell(real_cluster, tmp_path)

    one_liner = sh("kubectl create clusterrole zones --verb=delete --resource=zones.bindcar.firestoned.io")
    assert (one_liner.returncode, one_liner.stderr) == (1, f"{REFUSED}\n")
    assert '(`the server doesn\'t have a resource type "zones"`)' in prose
    try:
        applied = sh(apply)
        assert (applied.returncode, applied.stdout) == (
            0,
            "clusterrole.rbac.authorization.k8s.io/zones-deleter created\n"
            "clusterrolebinding.rbac.authorization.k8s.io/zones-deleter-external-dns created\n",
        )
        wait_until_rbac_allows(real_cluster)

        listed = sh(listing)
        assert listed.returncode == 0, listed.stderr
        shown = re.search(r"The last line prints `([^`]+)`", prose)
        assert shown is not None
        assert [" ".join(line.split()) for line in listed.stdout.splitlines()] == [" ".join(shown.group(1).split())]

        can_i = sh(
            "kubectl auth can-i delete zones.bindcar.firestoned.io --as=system:serviceaccount:dns-system:external-dns"
        )
        assert (can_i.returncode, can_i.stdout) == (1, "no\n")  # even after the grant, as the README says
        assert "zones.bindcar.firestoned.io --as=...` answers `no` even after the grant" in prose
    finally:
        sh("kubectl delete --ignore-not-found -f zones-rbac.yaml")
