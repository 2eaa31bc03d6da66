"""Configuration: precedence, list parsing, and a clear ConfigError for every value that cannot work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flask_bindcar import AuthConfig, ConfigError


def test_defaults() -> None:
    config = AuthConfig.load(environ={})
    assert config.mode == "basic"
    assert config.audiences == ("bindcar",)
    assert config.allowed_namespaces is None
    assert config.allowed_service_accounts is None
    assert config.api_token is None
    assert (config.cache_ttl, config.cache_failure_ttl, config.cache_size) == (10.0, 10.0, 10000)
    assert config.review_timeout == 5.0
    assert config.review_max_inflight == 4
    assert config.error_detail == "full"
    assert config.protect_all is True
    assert config.exempt_paths == frozenset()
    assert config.sources["audiences"] == ("default", "BIND_TOKEN_AUDIENCES")


@pytest.mark.parametrize(
    ("overrides", "app_config", "environ", "expected", "source"),
    [
        ({"audiences": "kw"}, {"BINDCAR_TOKEN_AUDIENCES": "app"}, {"BIND_TOKEN_AUDIENCES": "env"}, ("kw",), "keyword"),
        ({}, {"BINDCAR_TOKEN_AUDIENCES": "app"}, {"BIND_TOKEN_AUDIENCES": "env"}, ("app",), "app.config"),
        ({}, {}, {"BIND_TOKEN_AUDIENCES": "env"}, ("env",), "environment"),
        ({}, {}, {}, ("bindcar",), "default"),
    ],
)
def test_precedence(
    overrides: dict[str, Any], app_config: dict[str, Any], environ: dict[str, str], expected: Any, source: str
) -> None:
    config = AuthConfig.load(overrides, app_config, environ)
    assert config.audiences == expected
    assert config.sources["audiences"][0] == source


def test_seed_production_profile() -> None:
    config = AuthConfig.load(
        environ={
            "BIND_TOKEN_AUDIENCES": "bindcar,https://bindcar.dns-system.svc.cluster.local",
            "BIND_ALLOWED_NAMESPACES": "dns-system",
            "BIND_ALLOWED_SERVICE_ACCOUNTS": "system:serviceaccount:dns-system:external-dns",
        }
    )
    assert config.audiences == ("bindcar", "https://bindcar.dns-system.svc.cluster.local")
    assert config.allowed_namespaces == {"dns-system"}
    assert config.allowed_service_accounts == {"system:serviceaccount:dns-system:external-dns"}


def test_configmap_newline_separated_list_works_as_written() -> None:
    # The seed's ConfigMap `allowed-service-accounts: |` value, trailing newline included.
    value = (
        "system:serviceaccount:dns-system:external-dns\n"
        "system:serviceaccount:dns-system:cert-manager\n"
        "system:serviceaccount:dns-system:ingress-dns\n"
    )
    config = AuthConfig.load(environ={"BIND_ALLOWED_SERVICE_ACCOUNTS": value})
    assert config.allowed_service_accounts == {
        "system:serviceaccount:dns-system:external-dns",
        "system:serviceaccount:dns-system:cert-manager",
        "system:serviceaccount:dns-system:ingress-dns",
    }


def test_lists_trim_blanks_skip_empties_and_take_python_lists() -> None:
    config = AuthConfig.load(
        {"allowed_namespaces": ["dns-system", " kube-system "]},
        environ={"BIND_TOKEN_AUDIENCES": " bindcar , ,dns-api,\n\n"},
    )
    assert config.audiences == ("bindcar", "dns-api")
    assert config.allowed_namespaces == {"dns-system", "kube-system"}


def test_blank_non_list_variable_counts_as_unset() -> None:
    config = AuthConfig.load(environ={"BIND_TOKEN_CACHE_TTL": " ", "BIND_AUTH_MODE": ""})
    assert config.cache_ttl == 10.0
    assert config.mode == "basic"


@pytest.mark.parametrize(
    ("environ", "field", "value"),
    [
        *[({"BIND_REQUIRE_ALLOWLIST": raw}, "require_allowlist", True) for raw in ("1", "true", " Yes ", "ON")],
        *[({"BIND_REQUIRE_ALLOWLIST": raw}, "require_allowlist", False) for raw in ("0", "false", "No", "off")],
        ({"BIND_REQUIRE_ALLOWLIST": ""}, "require_allowlist", False),  # blank: unset, the default
        ({"BIND_TOKEN_CACHE_SIZE": " 25 "}, "cache_size", 25),
        ({"BIND_TOKEN_CACHE_SIZE": "1"}, "cache_size", 1),
        ({"BIND_TOKEN_CACHE_SIZE": "  "}, "cache_size", 10000),
        ({"BIND_AUTH_ERROR_DETAIL": " Generic "}, "error_detail", "generic"),
        ({"BIND_AUTH_ERROR_DETAIL": "FULL"}, "error_detail", "full"),
        ({"BIND_AUTH_MODE": " TokenReview "}, "mode", "tokenreview"),
        ({"BIND_TOKEN_CACHE_TTL": "0"}, "cache_ttl", 0.0),
        ({"BIND_TOKEN_CACHE_TTL": "3600"}, "cache_ttl", 3600.0),
    ],
)
def test_flags_sizes_and_words(environ: dict[str, str], field: str, value: object) -> None:
    assert getattr(AuthConfig.load(environ=environ), field) == value


def test_keyword_flags_and_sizes_take_python_values() -> None:
    config = AuthConfig.load({"require_allowlist": False, "protect_all": False, "cache_size": 7}, environ={})
    assert (config.require_allowlist, config.protect_all, config.cache_size) == (False, False, 7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"allowed_namespaces": 5},
            "allowed_namespaces=5 is not valid: expected a comma- or newline-separated list of namespaces",
        ),
        ({"kubeconfig": "  "}, "kubeconfig='  ' is not valid: expected a non-empty value"),
    ],
)
def test_keyword_values_of_the_wrong_shape(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        AuthConfig.load(overrides, environ={})
    assert str(info.value).startswith(message)


def test_an_api_server_url_that_does_not_parse() -> None:
    environ = {"BIND_AUTH_MODE": "tokenreview", "KUBE_API_SERVER": "https://[::1", "KUBE_TOKEN_PATH": "/t"}
    with pytest.raises(ConfigError) as info:
        AuthConfig.load(environ={**environ, "KUBE_CA_CERT_PATH": "/c"})
    assert str(info.value).startswith("KUBE_API_SERVER='https://[::1' is not valid: expected an https:// URL")


def test_a_blank_shared_secret_is_refused_not_ignored() -> None:
    """Blank counts as unset for most variables, but a blank BIND_API_TOKEN would silently mean Basic mode."""
    with pytest.raises(ConfigError) as info:
        AuthConfig.load(environ={"BIND_API_TOKEN": " "})
    assert str(info.value) == (
        "BIND_API_TOKEN is not valid: expected a non-empty bearer token (letters, digits, -._~+/ and trailing =)"
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"BIND_AUTH_MODE": "kerberos"},
            "BIND_AUTH_MODE='kerberos' is not valid: expected 'basic', 'tokenreview' or 'jwt'",
        ),
        (
            {"BIND_TOKEN_CACHE_TTL": "ten"},
            "BIND_TOKEN_CACHE_TTL='ten' is not valid: expected a number of seconds from 0 to 3600",
        ),
        (
            {"BIND_TOKEN_CACHE_FAILURE_TTL": "-1"},
            "BIND_TOKEN_CACHE_FAILURE_TTL='-1' is not valid: expected a number of seconds from 0 to 3600",
        ),
        (
            {"BIND_TOKEN_REVIEW_TIMEOUT": "0"},
            "BIND_TOKEN_REVIEW_TIMEOUT='0' is not valid: expected a number of seconds greater than 0",
        ),
        (
            {"BIND_TOKEN_REVIEW_TIMEOUT": "nan"},
            "BIND_TOKEN_REVIEW_TIMEOUT='nan' is not valid: expected a number of seconds greater than 0",
        ),
        (
            {"BIND_TOKEN_CACHE_SIZE": "0"},
            "BIND_TOKEN_CACHE_SIZE='0' is not valid: expected a whole number, 1 or more",
        ),
        (
            {"BIND_TOKEN_CACHE_SIZE": "ten"},
            "BIND_TOKEN_CACHE_SIZE='ten' is not valid: expected a whole number, 1 or more",
        ),
        (
            {"BIND_TOKEN_CACHE_SIZE": "2.5"},
            "BIND_TOKEN_CACHE_SIZE='2.5' is not valid: expected a whole number, 1 or more",
        ),
        ({"BIND_REQUIRE_ALLOWLIST": "maybe"}, "BIND_REQUIRE_ALLOWLIST='maybe' is not valid: expected true or false"),
        (
            {"BIND_AUTH_ERROR_DETAIL": "some"},
            "BIND_AUTH_ERROR_DETAIL='some' is not valid: expected 'full' or 'generic'",
        ),
        (
            {"BIND_ALLOWED_SERVICE_ACCOUNTS": "external-dns"},
            "BIND_ALLOWED_SERVICE_ACCOUNTS: 'external-dns' is not valid: expected service accounts of the form "
            "system:serviceaccount:<namespace>:<name>",
        ),
        (
            {"BIND_ALLOWED_SERVICE_ACCOUNTS": "system:serviceaccount:dns-system"},
            "BIND_ALLOWED_SERVICE_ACCOUNTS: 'system:serviceaccount:dns-system' is not valid",
        ),
        (
            {"BIND_ALLOWED_NAMESPACES": "DNS_System"},
            "BIND_ALLOWED_NAMESPACES: 'DNS_System' is not valid: expected namespaces (DNS labels such as dns-system)",
        ),
        (
            {"BIND_ALLOWED_NAMESPACES": ""},
            "BIND_ALLOWED_NAMESPACES='' lists no namespaces (DNS labels such as dns-system); leave it unset",
        ),
        ({"BIND_ALLOWED_SERVICE_ACCOUNTS": " \n"}, "BIND_ALLOWED_SERVICE_ACCOUNTS=' \\n' lists no service accounts"),
        ({"BIND_AUTH_EXEMPT_PATHS": "healthz"}, "BIND_AUTH_EXEMPT_PATHS: 'healthz' is not valid: expected URL paths"),
        (
            {"BIND_AUTH_MODE": "tokenreview", "KUBE_API_SERVER": "https://10.0.0.1"},
            "KUBE_API_SERVER set without KUBE_TOKEN_PATH, KUBE_CA_CERT_PATH",
        ),
        (
            {"BIND_AUTH_MODE": "tokenreview", "KUBE_TOKEN_PATH": "/t", "KUBE_CA_CERT_PATH": "/c"},
            "KUBE_TOKEN_PATH, KUBE_CA_CERT_PATH set without KUBE_API_SERVER",
        ),
    ],
)
def test_config_errors_name_the_variable_the_value_and_what_is_accepted(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        AuthConfig.load(environ=environ)
    assert str(info.value).startswith(message)


def test_app_config_errors_name_the_flask_key() -> None:
    with pytest.raises(ConfigError, match=r"^BINDCAR_PROTECT_ALL='maybe' is not valid: expected true or false$"):
        AuthConfig.load(app_config={"BINDCAR_PROTECT_ALL": "maybe"}, environ={})


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^unknown setting\(s\) audience; known: "):
        AuthConfig.load({"audience": "bindcar"}, environ={})


def test_partial_kube_trio_is_ignored_in_basic_mode() -> None:
    assert AuthConfig.load(environ={"KUBE_API_SERVER": "https://10.0.0.1"}).mode == "basic"


def test_shared_secret_never_shows() -> None:
    config = AuthConfig.load(environ={"BIND_API_TOKEN": "s3cret-value"})
    assert "s3cret-value" not in repr(config)
    assert config.describe()["api_token"] == "set"
    with pytest.raises(ConfigError) as info:
        AuthConfig.load(environ={"BIND_API_TOKEN": "s3cret value with spaces"})
    assert "s3cret" not in str(info.value)
    assert str(info.value).startswith("BIND_API_TOKEN is not valid")


def test_tokenreview_without_the_kubernetes_client_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['kubernetes'] = None\n"
        "from flask_bindcar import AuthConfig, ConfigError\n"
        "try:\n"
        "    AuthConfig.load(environ={'BIND_AUTH_MODE': 'tokenreview'})\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == (
        "BIND_AUTH_MODE=tokenreview needs the Kubernetes client: pip install 'flask-bindcar[k8s-token-review]'"
    )


def test_dotenv_file_is_read_without_overriding_the_environment(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BIND_TOKEN_AUDIENCES=from-dotenv\nBIND_ALLOWED_NAMESPACES=from-dotenv\n")
    code = "from flask_bindcar import AuthConfig; c = AuthConfig.load(); print(c.audiences[0], *c.allowed_namespaces)"
    env = {"PATH": "/usr/bin:/bin", "BIND_ALLOWED_NAMESPACES": "from-env"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path, env=env
    )
    assert out.stdout.split() == ["from-dotenv", "from-env"]


def test_the_cli_reports_a_bad_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flask_bindcar.__main__ import main

    monkeypatch.setenv("BIND_AUTH_MODE", "kerberos")
    assert main(["doctor"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("✘ configuration: BIND_AUTH_MODE='kerberos' is not valid")


def test_an_unknown_name_of_the_package_is_an_attribute_error() -> None:
    import flask_bindcar

    with pytest.raises(AttributeError, match=r"^module 'flask_bindcar' has no attribute 'Nothing'$"):
        flask_bindcar.Nothing  # noqa: B018


def test_a_wsgi_target_that_is_not_callable() -> None:
    from flask_bindcar.middleware import load_app

    with pytest.raises(TypeError, match=r"^flask_bindcar.config:INSTALL_HINT is not a WSGI application$"):
        load_app("flask_bindcar.config:INSTALL_HINT")
