"""The stand-in answers like kube-apiserver, as seen through the official ``kubernetes`` client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

from flask_bindcar.testing import API_AUDIENCE, DEFAULT_CALLER, FakeCluster, token_hash
from tests.conftest import api_client_for


def review(api: client.AuthenticationV1Api, token: str, audiences: list[str] | None = None, **kw: Any) -> Any:
    spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    return api.create_token_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}, **kw
    )


def status_error(api: client.AuthenticationV1Api, token: str, audiences: list[str] | None = None) -> str:
    status = review(api, token, audiences).status
    assert not status.authenticated
    return str(status.error)


def test_valid_token_is_authenticated_with_user_and_audiences(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar", "dns-api"])
    sa = cluster.service_accounts[("dns-system", "external-dns")]

    status = review(auth_api, token, ["bindcar"]).status

    assert status.authenticated is True
    assert status.error is None
    assert status.audiences == ["bindcar"]
    assert status.user.username == "system:serviceaccount:dns-system:external-dns"
    assert status.user.uid == sa.uid
    assert status.user.groups == ["system:serviceaccounts", "system:serviceaccounts:dns-system", "system:authenticated"]
    assert list(status.user.extra) == ["authentication.kubernetes.io/credential-id"]
    assert status.user.extra["authentication.kubernetes.io/credential-id"][0].startswith("JTI=")


def test_token_claims_are_those_of_a_bound_token(cluster: FakeCluster) -> None:
    import jwt

    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"], expires_in=600, pod="external-dns-0")
    claims = jwt.decode(token, options={"verify_signature": False})
    sa = cluster.service_accounts[("dns-system", "external-dns")]
    pod = cluster.pods[("dns-system", "external-dns-0")]

    assert claims["iss"] == "https://kubernetes.default.svc.cluster.local"
    assert claims["sub"] == "system:serviceaccount:dns-system:external-dns"
    assert claims["aud"] == ["bindcar"]
    assert claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == claims["iat"]
    assert claims["jti"]
    assert claims["kubernetes.io"] == {
        "namespace": "dns-system",
        "serviceaccount": {"name": "external-dns", "uid": sa.uid},
        "pod": {"name": "external-dns-0", "uid": pod.uid},
    }
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


def test_pod_bound_token_carries_pod_extra(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="external-dns-0")
    pod = cluster.pods[("dns-system", "external-dns-0")]

    extra = review(auth_api, token, ["bindcar"]).status.user.extra

    assert extra["authentication.kubernetes.io/pod-name"] == ["external-dns-0"]
    assert extra["authentication.kubernetes.io/pod-uid"] == [pod.uid]


def test_no_requested_audience_means_the_api_servers_own(cluster: FakeCluster, auth_api: Any) -> None:
    default_token = cluster.token("default", "my-app")
    bindcar_token = cluster.token("default", "my-app", audiences=["bindcar"])

    status = review(auth_api, default_token).status
    assert status.authenticated is True
    assert status.audiences == [API_AUDIENCE]

    assert status_error(auth_api, bindcar_token) == (
        '[invalid bearer token, token audiences ["bindcar"] is invalid for the target audiences '
        '["https://kubernetes.default.svc.cluster.local"]]'
    )


def test_wrong_audience(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.token("default", "my-app", audiences=["x"])
    assert status_error(auth_api, token, ["bindcar"]) == (
        '[invalid bearer token, token audiences ["x"] is invalid for the target audiences ["bindcar"]]'
    )


def test_expired_token(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.token("default", "my-app", audiences=["bindcar"], expires_in=-120)  # past the leeway
    assert status_error(auth_api, token, ["bindcar"]) == "[invalid bearer token, service account token has expired]"


def test_not_yet_valid_token(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.token("default", "my-app", audiences=["bindcar"], not_before=time.time() + 3600)
    assert status_error(auth_api, token, ["bindcar"]) == (
        "[invalid bearer token, service account token is not valid yet]"
    )


def test_deleted_service_account(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.token("dns-system", "other-app", audiences=["bindcar"])
    cluster.delete_service_account("dns-system", "other-app")
    assert status_error(auth_api, token, ["bindcar"]) == '[invalid bearer token, serviceaccounts "other-app" not found]'
    # A new account of the same name has a new uid: the old token stays dead.
    new = cluster.create_service_account("dns-system", "other-app")
    old_uid = jwt.decode(token, options={"verify_signature": False})["kubernetes.io"]["serviceaccount"]["uid"]
    assert status_error(auth_api, token, ["bindcar"]) == (
        f"[invalid bearer token, service account UID ({new.uid}) does not match claim ({old_uid})]"
    )


def test_deleted_pod_invalidates_bound_token(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"], pod="external-dns-0")
    cluster.delete_pod("dns-system", "external-dns-0")
    assert status_error(auth_api, token, ["bindcar"]) == (
        "[invalid bearer token, service account token has been invalidated]"
    )


def test_forged_signature(cluster: FakeCluster, auth_api: Any) -> None:
    with FakeCluster() as other:
        forged = other.token("dns-system", "external-dns", audiences=["bindcar"])
    cluster.create_service_account("dns-system", "external-dns")
    # another cluster's key ID is not one of this cluster's keys (tests/test_contract.py)
    assert status_error(auth_api, forged, ["bindcar"]) == "[invalid bearer token, invalid signature, no keys found]"


def test_not_a_jwt_gets_the_generic_error(auth_api: Any) -> None:
    status = review(auth_api, "invalid-token", ["bindcar"]).status
    assert status.authenticated is None  # omitted, as kube-apiserver omits false
    assert status.error == "invalid bearer token"  # as kube-apiserver 1.37 answers (tests/test_contract.py)
    assert status.user.username is None


def test_legacy_token_is_valid_for_the_api_audience_only(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.legacy_token("dns-system", "old-app")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert "aud" not in claims
    assert "exp" not in claims
    assert claims["iss"] == "kubernetes/serviceaccount"

    status = review(auth_api, token).status
    assert status.authenticated is True
    assert status.user.username == "system:serviceaccount:dns-system:old-app"
    assert status.user.extra is None

    assert status_error(auth_api, token, ["bindcar"]) == (
        '[invalid bearer token, token audiences ["https://kubernetes.default.svc.cluster.local"] '
        'is invalid for the target audiences ["bindcar"]]'
    )


def test_unknown_caller_gets_401_status(cluster: FakeCluster, tmp_path: Path) -> None:
    api = client.AuthenticationV1Api(api_client_for(cluster.write_kubeconfig(tmp_path / "kc", caller="nobody")))
    with pytest.raises(ApiException) as info:
        review(api, cluster.token("default", "my-app"))
    assert info.value.status == 401
    assert json.loads(info.value.body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }


def test_caller_without_rbac_gets_403_status(cluster: FakeCluster, auth_api: Any) -> None:
    cluster.revoke_token_review(DEFAULT_CALLER)
    with pytest.raises(ApiException) as info:
        review(auth_api, cluster.token("default", "my-app"))
    assert info.value.status == 403
    body = json.loads(info.value.body)
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:dns-system:bindcar" '
        'cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope'
    )
    cluster.grant_token_review(DEFAULT_CALLER)
    assert review(auth_api, cluster.token("default", "my-app")).status.authenticated is True


def test_static_token_caller(cluster: FakeCluster, tmp_path: Path) -> None:
    token = cluster.add_caller("kube-admin", can_review=True)
    api = client.AuthenticationV1Api(api_client_for(cluster.write_kubeconfig(tmp_path / "kc", caller=token)))
    assert review(api, cluster.token("default", "my-app")).status.authenticated is True


def test_empty_token_is_a_bad_request(auth_api: Any) -> None:
    with pytest.raises(ApiException) as info:
        review(auth_api, "")
    assert info.value.status == 400
    assert json.loads(info.value.body)["message"] == "token is required for TokenReview in authentication"


def test_undecodable_body_is_a_bad_request(cluster: FakeCluster) -> None:
    pool = urllib3.PoolManager(ca_certs=str(cluster.ca_path))
    response = pool.request(
        "POST",
        cluster.url + "/apis/authentication.k8s.io/v1/tokenreviews",
        body=b"{not json",
        headers={"Authorization": f"Bearer {cluster.caller_token}", "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert json.loads(response.data)["reason"] == "BadRequest"


def test_fault_500(cluster: FakeCluster, auth_api: Any) -> None:
    with cluster.faulty("error500"), pytest.raises(ApiException) as info:
        review(auth_api, cluster.token("default", "my-app"))
    assert info.value.status == 500
    assert json.loads(info.value.body)["reason"] == "InternalError"


def test_fault_garbage_body(cluster: FakeCluster, auth_api: Any) -> None:
    with cluster.faulty("garbage"):
        response = review(auth_api, cluster.token("default", "my-app"), _preload_content=False)
    assert response.status == 200
    with pytest.raises(ValueError):
        json.loads(response.data)


def test_fault_reset_connection(cluster: FakeCluster, auth_api: Any) -> None:
    with cluster.faulty("reset"), pytest.raises(urllib3.exceptions.ProtocolError):
        review(auth_api, cluster.token("default", "my-app"))


def test_fault_hang_outlasts_the_client_timeout(cluster: FakeCluster, auth_api: Any) -> None:
    started = time.monotonic()
    with cluster.faulty("hang"), pytest.raises(urllib3.exceptions.ReadTimeoutError):
        review(auth_api, cluster.token("default", "my-app"), _request_timeout=0.5)
    assert time.monotonic() - started < cluster.hang_seconds
    # After the fault the cluster answers again.
    assert review(auth_api, cluster.token("default", "my-app")).status.authenticated is True


def test_latency_is_injected(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.token("default", "my-app")
    cluster.latency = 0.3
    started = time.monotonic()
    review(auth_api, token)
    assert time.monotonic() - started >= 0.3


def test_review_counter_and_token_hashes(cluster: FakeCluster, auth_api: Any) -> None:
    tokens = [cluster.token("default", "my-app"), cluster.token("dns-system", "external-dns")]
    for token in tokens:
        review(auth_api, token)
    with cluster.faulty("error500"), pytest.raises(ApiException):
        review(auth_api, tokens[0])

    assert cluster.reviews_served == 2
    assert cluster.review_requests == 3
    assert cluster.token_hashes_seen == [token_hash(tokens[0]), token_hash(tokens[1]), token_hash(tokens[0])]
    assert all(token not in h for token in tokens for h in cluster.token_hashes_seen)


def test_self_subject_access_review(cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    api = client.AuthorizationV1Api(api_client_for(fake_kubeconfig))
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {"group": "authentication.k8s.io", "resource": "tokenreviews", "verb": "create"}
        },
    }
    assert api.create_self_subject_access_review(body).status.allowed is True

    cluster.revoke_token_review(DEFAULT_CALLER)
    assert api.create_self_subject_access_review(body).status.allowed is False

    cluster.grant_token_review(DEFAULT_CALLER)
    body["spec"]["resourceAttributes"]["verb"] = "delete"
    assert api.create_self_subject_access_review(body).status.allowed is False


def test_version(fake_kubeconfig: Path) -> None:
    info = client.VersionApi(api_client_for(fake_kubeconfig)).get_code()
    assert info.major == "1"
    assert info.git_version.startswith("v1.")


def test_incluster_files_load_with_the_official_loader(cluster: FakeCluster, tmp_path: Path) -> None:
    files = cluster.incluster_files(tmp_path / "serviceaccount")
    assert files.namespace.read_text() == "dns-system"

    cfg = client.Configuration()
    InClusterConfigLoader(
        token_filename=str(files.token), cert_filename=str(files.ca_crt), environ=files.environ
    ).load_and_set(cfg)
    api = client.AuthenticationV1Api(client.ApiClient(cfg))

    assert cfg.host == cluster.url
    assert review(api, cluster.token("default", "my-app")).status.authenticated is True


def test_many_concurrent_clients(cluster: FakeCluster, fake_kubeconfig: Path) -> None:
    tokens = [cluster.token("dns-system", f"sa-{i}", audiences=["bindcar"]) for i in range(8)]
    api = client.AuthenticationV1Api(api_client_for(fake_kubeconfig))
    api.api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
    errors: list[BaseException] = []
    results: list[bool] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            for i in range(50):
                ok = review(api, tokens[(n + i) % len(tokens)], ["bindcar"]).status.authenticated is True
                with lock:
                    results.append(ok)
        except BaseException as e:
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert results == [True] * 32 * 50
    assert cluster.reviews_served == 32 * 50


def test_importing_the_stand_in_does_not_import_flask() -> None:
    code = "import sys, flask_bindcar.testing; sys.exit('flask' in sys.modules or 'kubernetes' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_runs_standalone(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask_bindcar.testing", "--json", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        api = client.AuthenticationV1Api(api_client_for(Path(info["kubeconfig"])))
        status = review(api, info["tokens"]["dns-system/external-dns"], ["bindcar"]).status
        assert status.authenticated is True
        assert status.user.username == "system:serviceaccount:dns-system:external-dns"
        assert info["url"].startswith("https://127.0.0.1:")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_static_token_is_audience_agnostic(cluster: FakeCluster, auth_api: Any) -> None:
    token = cluster.add_caller("kube-admin", can_review=False)
    status = review(auth_api, token, ["bindcar", API_AUDIENCE]).status
    assert status.authenticated is True
    assert status.user.username == "kube-admin"
    assert status.audiences == [API_AUDIENCE]
    assert review(auth_api, token, ["bindcar"]).status.authenticated is None


@pytest.mark.parametrize(("fault", "missing"), [("no_user", "user"), ("no_audiences", "audiences")])
def test_misbehaving_answers(cluster: FakeCluster, auth_api: Any, fault: Any, missing: str) -> None:
    token = cluster.token("default", "my-app", audiences=["bindcar"])
    with cluster.faulty(fault):
        response = review(auth_api, token, ["bindcar"], _preload_content=False)
    status = json.loads(response.data)["status"]
    assert status["authenticated"] is True
    assert missing not in status


# -- the stand-in's edges: what kube-apiserver answers to requests it cannot serve -----------------


def test_requests_the_stand_in_cannot_serve(cluster: FakeCluster) -> None:
    import requests

    def ask(method: str, path: str, body: Any = None, token: str | None = cluster.caller_token, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = requests.request(
            method, cluster.url + path, json=body, headers=headers, verify=str(cluster.ca_path), timeout=10, **kw
        )
        return response.status_code, response.json().get("reason"), response.json().get("message")

    not_found = (404, "NotFound", "the server could not find the requested resource")
    assert ask("GET", "/apis/nothing/here") == not_found
    assert ask("DELETE", "/apis/nothing/here") == not_found
    assert ask("POST", "/apis/nothing/here", {}) == not_found
    assert ask("GET", "/api/v1/namespaces/dns-system/serviceaccounts/nobody") == (
        404,
        "NotFound",
        'serviceaccounts "nobody" not found',
    )
    assert ask("GET", "/api/v1/serviceaccounts", token=None) == (401, "Unauthorized", "Unauthorized")
    assert ask("GET", "/api/v1/serviceaccounts", token="not-a-token-it-knows") == (401, "Unauthorized", "Unauthorized")
    not_allowed = (405, "MethodNotAllowed", "the server does not allow this method")
    assert ask("DELETE", "/api/v1/namespaces/dns-system/serviceaccounts") == not_allowed
    assert ask("POST", "/api/v1/namespaces/dns-system/serviceaccounts/bindcar") == not_allowed
    assert ask("POST", "/api/v1/namespaces/dns-system/serviceaccounts", {"metadata": {}}) == (
        400,
        "BadRequest",
        "serviceaccounts must have metadata.name",
    )
    assert ask("POST", "/api/v1/namespaces/dns-system/serviceaccounts", data=b"{not json") == (
        400,
        "BadRequest",
        "serviceaccounts must have metadata.name",
    )
    assert ask("POST", "/api/v1/namespaces/dns-system/serviceaccounts/bindcar/token", ["a list"]) == (
        400,
        "BadRequest",
        "the body of the request is not a valid TokenRequest",
    )
    sar = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    ssar = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    assert ask("POST", sar, {"spec": {}}, token=None) == (401, "Unauthorized", "Unauthorized")
    assert ask("POST", ssar, {"spec": {}}, token=None) == (401, "Unauthorized", "Unauthorized")
    assert ask("POST", sar, {"kind": "TokenReview", "spec": {}}) == (
        400,
        "BadRequest",
        "the body of the request is not a valid SubjectAccessReview",
    )
    assert ask("POST", ssar, {"spec": "no"}) == (
        400,
        "BadRequest",
        "the body of the request is not a valid SelfSubjectAccessReview",
    )


def test_pods_are_created_listed_and_deleted_through_the_api(cluster: FakeCluster) -> None:
    import requests

    headers = {"Authorization": f"Bearer {cluster.caller_token}"}
    base = cluster.url + "/api/v1/namespaces/apps/pods"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0"}, "spec": {"serviceAccountName": "web"}}
    created = requests.post(base, json=pod, headers=headers, verify=str(cluster.ca_path), timeout=10)
    assert created.status_code == 201
    assert (created.json()["metadata"]["name"], created.json()["spec"]["serviceAccountName"]) == ("web-0", "web")
    listed = requests.get(base, headers=headers, verify=str(cluster.ca_path), timeout=10).json()
    assert (listed["kind"], [p["metadata"]["name"] for p in listed["items"]]) == ("PodList", ["web-0"])
    deleted = requests.delete(f"{base}/web-0", headers=headers, verify=str(cluster.ca_path), timeout=10)
    assert deleted.status_code == 200
    assert ("apps", "web-0") not in cluster.pods


def test_the_stand_in_before_it_starts_and_with_an_unknown_fault() -> None:
    cluster = FakeCluster()
    with pytest.raises(RuntimeError, match=r"^FakeCluster is not started$"):
        cluster.port  # noqa: B018
    with pytest.raises(ValueError, match=r"^unknown fault 'flaky'; one of "), cluster.faulty("flaky"):  # type: ignore[arg-type]
        pass
    assert cluster.fault is None
    assert cluster.start() is cluster.start()  # starting twice is starting once
    cluster.stop()


def test_the_public_key_verifies_the_tokens(cluster: FakeCluster) -> None:
    token = cluster.token("dns-system", "external-dns", audiences=["bindcar"])
    assert cluster.public_key_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    claims = jwt.decode(token, cluster.public_key_pem, algorithms=["RS256"], audience="bindcar")
    assert claims["sub"] == "system:serviceaccount:dns-system:external-dns"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--token", "no-slash"], "--token 'no-slash': expected NS/NAME[:AUD,...]"),
        (["--token", "a/b/c"], "--token 'a/b/c': expected NS/NAME[:AUD,...]"),
        (["--token", "/b"], "--token '/b': expected NS/NAME[:AUD,...]"),
        (["--real", "--port", "6443"], "--port is for the stand-in; --real picks free ports"),
    ],
)
def test_standalone_refuses_bad_arguments(argv: list[str], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    from flask_bindcar.testing.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m flask_bindcar.testing: error: {error}"


def test_standalone_real_without_the_binaries_says_how_to_build_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flask_bindcar.testing.__main__ import main

    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    assert main(["--real"]) == 2
    assert capsys.readouterr().err.startswith("RealCluster needs etcd, kube-apiserver, kubectl in KUBEBUILDER_ASSETS")


def test_standalone_prints_the_kubeconfig_and_each_token(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask_bindcar.testing", "--dir", str(tmp_path), "--token", "apps/web:one,two"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(6)]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    kubeconfig = tmp_path / "kubeconfig"
    assert lines[0].startswith("FakeCluster serving at https://127.0.0.1:")
    assert lines[1:4] == [
        f"kubeconfig: {kubeconfig}",
        f"  export KUBECONFIG={kubeconfig}",
        "token for apps/web (audience one,two):",
    ]
    claims = jwt.decode(lines[4].strip(), options={"verify_signature": False})
    assert (claims["sub"], claims["aud"]) == ("system:serviceaccount:apps:web", ["one", "two"])
    assert lines[5] == "Ctrl-C to stop."


# -- TokenRequest: kube-apiserver's bounds on the lifetime, and RBAC on serviceaccounts/token -------


def token_request(
    cluster: FakeCluster, namespace: str, name: str, spec: dict[str, Any], token: str | None = None
) -> tuple[int, dict[str, Any], str | None]:
    """POST a TokenRequest over HTTP as ``token`` (default: the stand-in's administrator, its
    default caller): ``(status, body, Warning header)``."""
    import requests

    response = requests.post(
        f"{cluster.url}/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        headers={"Authorization": f"Bearer {token or cluster.caller_token}"},
        verify=str(cluster.ca_path),
        timeout=10,
    )
    return response.status_code, response.json(), response.headers.get("Warning")


def invalid_lifetime(seconds: int, why: str) -> dict[str, Any]:
    message = f"Invalid value: {seconds}: {why}"
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: {message}',
        "reason": "Invalid",
        "details": {
            "group": "authentication.k8s.io",
            "kind": "TokenRequest",
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": "spec.expirationSeconds"}],
        },
        "code": 422,
    }


SHORT = "may not specify a duration less than 10 minutes"
LONG = "may not specify a duration larger than 2^32 seconds"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (599, invalid_lifetime(599, SHORT)),
        (0, invalid_lifetime(0, SHORT)),  # given, so not defaulted to an hour
        (-1, invalid_lifetime(-1, SHORT)),
        (2**32 + 1, invalid_lifetime(2**32 + 1, LONG)),
    ],
)
def test_token_request_lifetime_outside_kube_apiservers_bounds_is_invalid(
    cluster: FakeCluster, seconds: int, expected: dict[str, Any]
) -> None:
    cluster.create_service_account("apps", "web")
    assert token_request(cluster, "apps", "web", {"expirationSeconds": seconds})[:2] == (422, expected)


@pytest.mark.parametrize("seconds", [600, 31 * 365 * 86400, 2**32])
def test_token_request_lifetime_inside_the_bounds_is_granted_whole(cluster: FakeCluster, seconds: int) -> None:
    """kube-apiserver without ``--service-account-max-token-expiration`` (RealCluster's flags) grants
    any lifetime from 10 minutes to 2^32 seconds as asked: 31 years included."""
    cluster.create_service_account("apps", "web")
    status, body, warning = token_request(cluster, "apps", "web", {"expirationSeconds": seconds})
    claims = jwt.decode(body["status"]["token"], options={"verify_signature": False})
    assert (status, body["spec"]["expirationSeconds"], claims["exp"] - claims["iat"], warning) == (
        201,
        seconds,
        seconds,
        None,
    )


def test_token_request_is_shortened_to_the_maximum_with_a_warning(cluster: FakeCluster) -> None:
    """``max_token_expiration`` is ``--service-account-max-token-expiration``: longer requests are
    shortened to it, with kube-apiserver's warning; shorter ones are left alone."""
    cluster.create_service_account("apps", "web")
    cluster.max_token_expiration = 86400
    status, body, warning = token_request(cluster, "apps", "web", {"expirationSeconds": 7 * 86400})
    claims = jwt.decode(body["status"]["token"], options={"verify_signature": False})
    assert (status, body["spec"]["expirationSeconds"], claims["exp"] - claims["iat"]) == (201, 86400, 86400)
    assert warning == '299 - "requested expiration of 604800 seconds shortened to 86400 seconds"'
    status, body, warning = token_request(cluster, "apps", "web", {"expirationSeconds": 3600})
    assert (status, body["spec"]["expirationSeconds"], warning) == (201, 3600, None)


def forbidden(user: str, namespace: str, name: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'serviceaccounts "{name}" is forbidden: User "{user}" cannot create resource '
        f'"serviceaccounts/token" in API group "" in the namespace "{namespace}"',
        "reason": "Forbidden",
        "details": {"name": name, "kind": "serviceaccounts"},
        "code": 403,
    }


def test_token_request_needs_rbac_create_on_serviceaccounts_token(cluster: FakeCluster) -> None:
    cluster.create_service_account("apps", "web")
    caller = cluster.token("ci", "deployer")
    user = "system:serviceaccount:ci:deployer"
    assert token_request(cluster, "apps", "web", {}, caller)[:2] == (403, forbidden(user, "apps", "web"))
    # RBAC is asked before the account is looked up: no probing for names without the right.
    assert token_request(cluster, "apps", "nobody", {}, caller)[:2] == (403, forbidden(user, "apps", "nobody"))

    cluster.allow(user, "create", "serviceaccounts/token", namespace="other")  # another namespace: no
    assert token_request(cluster, "apps", "web", {}, caller)[0] == 403
    cluster.allow(user, "create", "serviceaccounts", namespace="apps")  # the resource, not its subresource: no
    assert token_request(cluster, "apps", "web", {}, caller)[0] == 403

    cluster.allow(user, "create", "serviceaccounts/token", namespace="apps", name="web")
    status, body, _ = token_request(cluster, "apps", "web", {"audiences": ["bindcar"]}, caller)
    claims = jwt.decode(body["status"]["token"], options={"verify_signature": False})
    assert (status, claims["sub"], claims["aud"]) == (201, "system:serviceaccount:apps:web", ["bindcar"])
    assert token_request(cluster, "apps", "other", {}, caller)[:2] == (403, forbidden(user, "apps", "other"))


def test_token_request_by_an_unknown_caller_is_unauthorized(cluster: FakeCluster) -> None:
    cluster.create_service_account("apps", "web")
    assert token_request(cluster, "apps", "web", {}, "not-a-token-it-knows")[:2] == (
        401,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        },
    )


def test_the_python_side_still_mints_any_lifetime(cluster: FakeCluster) -> None:
    """Tests mint expired and short-lived tokens directly; only the HTTP API follows kube-apiserver."""
    for seconds in (-60, 30):
        claims = jwt.decode(cluster.token("apps", "web", expires_in=seconds), options={"verify_signature": False})
        assert claims["exp"] - claims["iat"] == seconds
