"""A user's test written once for both clusters, as docs/testing.md shows it: the plugin's
``any_cluster`` runs it on the stand-in, and under ``pytest --cluster`` on a real kube-apiserver
too, an RBAC grant included. Below it, that a user's project gets exactly that from the plugin.
"""

import uuid

from flask import Flask, jsonify

from flask_bindcar import RBAC, BindcarAuth, auth_required

ZONES = RBAC(resource="zones", group="bindcar.firestoned.io", name="{name}")


def create_app(kubeconfig):
    app = Flask(__name__)
    # A denial is cached for 10 s by default; 0 asks RBAC again at once, after the grant.
    BindcarAuth(app, mode="tokenreview", kubeconfig=str(kubeconfig), authz_cache_denied_ttl=0)

    @app.delete("/api/v1/zones/<name>")
    @auth_required(rbac=ZONES)
    def delete_zone(name):
        return jsonify(deleted=name)

    return app


def test_deleting_a_zone_takes_an_rbac_grant(any_cluster, any_kubeconfig):
    namespace = f"dns-{uuid.uuid4().hex[:6]}"  # a fresh one: the real cluster is shared by the session
    user = f"system:serviceaccount:{namespace}:external-dns"
    token = any_cluster.token(namespace, "external-dns", audiences=["bindcar"])
    client = create_app(any_kubeconfig).test_client()
    headers = {"Authorization": f"Bearer {token}"}

    refused = client.delete("/api/v1/zones/example.com", headers=headers)
    assert refused.status_code == 403
    assert refused.json == {"error": f'Forbidden: {user} cannot delete zones.bindcar.firestoned.io "example.com"'}

    any_cluster.allow(user, "delete", "zones", group="bindcar.firestoned.io", name="example.com")

    allowed = client.delete("/api/v1/zones/example.com", headers=headers)
    assert (allowed.status_code, allowed.json) == (200, {"deleted": "example.com"})


def test_a_users_project_runs_it_on_the_stand_in_and_the_real_one_only_with_cluster(tmp_path):
    """This file as a user's own suite, the plugin loaded as installed: one run on FakeCluster, and
    the RealCluster run skipped, saying how to run it."""
    import re
    import subprocess
    import sys

    from tests.gunicorn_server import ROOT, base_environment

    (tmp_path / "test_zones.py").write_text((ROOT / "tests" / "test_any_cluster.py").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "-k", "rbac_grant", "test_zones.py"],
        cwd=tmp_path,
        env={**base_environment(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    runs = re.findall(r"^test_zones\.py::(\S+) (PASSED|SKIPPED)", result.stdout, flags=re.M)
    assert runs == [
        ("test_deleting_a_zone_takes_an_rbac_grant[fake]", "PASSED"),
        ("test_deleting_a_zone_takes_an_rbac_grant[real]", "SKIPPED"),
    ]
    assert (
        "SKIPPED [1] test_zones.py: real kube-apiserver test: run with --cluster "
        "(make test-cluster builds the binaries with Go)"
    ) in result.stdout
