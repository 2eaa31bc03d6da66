"""The examples written in the docs pages are true: each fenced block is run, or is the file it names.

The README and every page read as plain Markdown: no include lines, which the repository's own
page would show as they are. A block that names its file in the paragraph before it (a backticked
path such as `example_app/deploy/rbac.yaml`), on any page, must be that file, or be made of
top-level pieces that file contains; the API and client pages' blocks run in a fresh interpreter;
the testing page's tests run under pytest beside ``myservice.py``, the README's Flask example;
shell blocks name only make targets, modules and files that exist.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from flask_bindcar.testing import RealCluster
from tests.gunicorn_server import ROOT, base_environment

PAGES = ["index.md", "kubernetes.md", "testing.md", "api.md", "client.md"]
EVERY_PAGE = ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]
RUN = ["api.md", "client.md"]
"""Pages whose Python blocks run as they are, in a fresh interpreter."""
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.S | re.M)
BACKTICKED = re.compile(r"`([\w./-]+)`")
MAKE_TARGETS = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


@dataclass(frozen=True)
class Block:
    page: str
    language: str
    body: str
    named: Path | None  # the file named in the paragraph just before the block

    def __str__(self) -> str:
        return f"{self.page}:{self.language}:{self.body.splitlines()[0][:40] if self.body else ''}"


def blocks(page: str) -> list[Block]:
    """The fenced blocks of ``page``: a page of docs/ by its name, or a path from the root (``README.md``)."""
    text = (ROOT / page if "/" in page or page == "README.md" else ROOT / "docs" / page).read_text()
    found, end = [], 0
    for match in FENCE.finditer(text):
        paragraph = text[end : match.start()].rstrip().rsplit("\n\n", 1)[-1]
        files = [ROOT / name for name in BACKTICKED.findall(paragraph) if (ROOT / name).is_file()]
        found.append(Block(page, match.group(1), match.group(2), files[-1] if files else None))
        end = match.end()
    return found


ALL = [b for page in PAGES for b in blocks(page)]
CODE = [b for b in ALL if b.language != "sh"]


@pytest.mark.parametrize("page", EVERY_PAGE)
def test_no_page_shows_an_include_line(page: str) -> None:
    """An include line (``--8<-- "file"``) renders on the site, but a reader of the repository sees the line."""
    lines = [line for line in (ROOT / page).read_text().splitlines() if "--8<--" in line]
    assert lines == []


@pytest.mark.parametrize("page", PAGES)
def test_pages_have_examples(page: str) -> None:
    assert blocks(page), f"{page} has no examples"


def checked_otherwise(block: Block) -> bool:
    """Blocks that name no file: run (`RUN`, the testing page's tests), parsed, or compared with a manifest."""
    if block.language == "ini":
        return True  # test_ini_blocks_parse
    if block.language == "python":
        return block.page in (*RUN, "testing.md")
    return (block.page, block.language) == ("client.md", "yaml")  # test_client_page_pod_spec_is_deployed


def test_every_code_block_is_checked_one_way() -> None:
    unchecked = [str(b) for b in CODE if b.named is None and not checked_otherwise(b)]
    assert unchecked == []
    assert {b.language for b in CODE} <= {"python", "yaml", "dockerfile", "ini"}


@pytest.mark.parametrize("block", [b for b in CODE if b.language == "ini"], ids=str)
def test_ini_blocks_parse(block: Block) -> None:
    configparser.ConfigParser().read_string(block.body)


NAMED = [b for page in EVERY_PAGE for b in blocks(page) if b.named is not None and b.language != "sh"]
MIRRORS = {
    ("docs/authorization.md", "example_app/deploy/rbac-zones.yaml"),
    ("docs/configuration.md", "example_app/deploy/configmap.yaml"),
    ("docs/kubernetes.md", "example_app/deploy/rbac-zones.yaml"),
    ("docs/kubernetes.md", "example_app/deploy/rbac.yaml"),
    ("docs/kubernetes.md", "example_app/deploy/deployment.yaml"),
    ("docs/kubernetes.md", "example_app/deploy/configmap.yaml"),
}
"""Manifests shown in the docs, each checked against its file by `test_block_is_the_file_it_names`."""


def test_the_manifests_shown_name_their_files() -> None:
    """Where the docs show a manifest, the paragraph before names it, so the block is compared with it."""
    named = {(b.page if "/" in b.page else f"docs/{b.page}", str(b.named.relative_to(ROOT))) for b in NAMED if b.named}
    assert named >= MIRRORS


@pytest.mark.parametrize("block", NAMED, ids=str)
def test_block_is_the_file_it_names(block: Block) -> None:
    assert block.named is not None
    source = block.named.read_text()
    if block.body == source:
        return
    pieces = [piece for piece in block.body.split("\n\n\n") if piece.strip()]
    missing = [piece for piece in pieces if piece.strip("\n") not in source]
    assert missing == [], f"{block.page}: not in {block.named.relative_to(ROOT)}"


@pytest.mark.parametrize(("page", "at_least"), [("api.md", 6), ("client.md", 2)])
def test_page_examples_run(tmp_path: Path, page: str, at_least: int) -> None:
    """Each Python block of the page, in a fresh interpreter with no BIND_* or KUBE* settings."""
    examples = [b for b in blocks(page) if b.language == "python"]
    assert len(examples) >= at_least
    run = "exec(compile({body!r}, '" + page + " example {i}', 'exec'), {{'__name__': '__main__'}})"
    script = "\n".join(run.format(body=b.body, i=i) for i, b in enumerate(examples, 1))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=base_environment(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-300:] + result.stderr[-3000:]


def test_testing_page_tests_pass_against_the_readme_app(tmp_path: Path) -> None:
    """The testing page's own tests, as a user's suite: ``myservice.py`` is the README's Flask app."""
    tests = [b for b in blocks("testing.md") if b.language == "python" and b.named is None]
    assert len(tests) == 1 and "def test_" in tests[0].body
    (tmp_path / "myservice.py").write_text((ROOT / "example_app" / "readme_flask.py").read_text())
    (tmp_path / "test_from_the_docs.py").write_text(tests[0].body)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_from_the_docs.py"],
        cwd=tmp_path,
        env={**base_environment(), "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed" in result.stdout


@pytest.mark.parametrize("block", [b for b in ALL if b.language == "sh"], ids=str)
def test_shell_blocks_name_what_exists(block: Block) -> None:
    for line in block.body.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["make"]:
            assert words[1] in MAKE_TARGETS, line
        if words[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(words[2]) is not None, line
        for word in words:
            if word.startswith(("example_app/", "tests/", "flask_bindcar/")):
                assert (ROOT / word).exists(), line


def test_the_fixture_scopes_are_the_plugins(tmp_path: Path) -> None:
    """The testing page's fixture table says what ``pytest --fixtures`` says of the plugin."""
    text = (ROOT / "docs" / "testing.md").read_text()
    table = dict(re.findall(r"^\| `(\w+)` \| (function|session|module) \|", text, flags=re.M))
    (tmp_path / "test_nothing.py").write_text("")
    listing = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=base_environment(),
        capture_output=True,
        text=True,
    ).stdout
    plugin = listing.split("fixtures defined from flask_bindcar.pytest_plugin", 1)[1].split(" fixtures defined from ")[
        0
    ]
    scopes = {
        name: scope or "function" for name, scope in re.findall(r"^(\w+)(?: \[(\w+) scope\])? -- ", plugin, flags=re.M)
    }
    assert (
        table
        == scopes
        == {
            "any_cluster": "function",
            "any_kubeconfig": "function",
            "fake_cluster": "function",
            "fake_kubeconfig": "function",
            "real_cluster": "session",
            "real_kubeconfig": "function",
            "two_real_clusters": "session",
        }
    )


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))])
def test_pages_cite_only_files_of_this_repository(page: str) -> None:
    """A Markdown file named in the docs exists here: the guide is cited by its title, not a path."""
    text = (ROOT / page).read_text()
    for name in re.findall(r"[`(]([\w./-]+\.md)[`)#]", text):
        assert (ROOT / name).is_file() or (ROOT / page).parent.joinpath(name).is_file(), f"{page} cites {name}"


def test_client_page_pod_spec_is_deployed() -> None:
    """The client page's Pod spec is what example_app/deploy/client.yaml mounts, where the client reads."""
    from flask_bindcar.client import DEFAULT_TOKEN_PATH

    [block] = [b for b in blocks("client.md") if b.language == "yaml"]
    shown = yaml.safe_load(block.body)["spec"]
    deployment = list(yaml.safe_load_all((ROOT / "example_app" / "deploy" / "client.yaml").read_text()))[-1]
    pod = deployment["spec"]["template"]["spec"]
    assert shown["serviceAccountName"] == pod["serviceAccountName"]
    assert shown["volumes"] == pod["volumes"]
    assert shown["containers"][0]["volumeMounts"] == pod["containers"][0]["volumeMounts"]
    [mount] = [m for m in shown["containers"][0]["volumeMounts"] if m["name"] == shown["volumes"][0]["name"]]
    [source] = shown["volumes"][0]["projected"]["sources"]
    assert f"{mount['mountPath']}/{source['serviceAccountToken']['path']}" == DEFAULT_TOKEN_PATH
    assert f"`{DEFAULT_TOKEN_PATH}`" in (ROOT / "docs" / "client.md").read_text()


@pytest.mark.parametrize("fixture", ["fake_cluster", "real_cluster"])
def test_the_plugin_gives_the_readmes_install_advice(tmp_path: Path, fixture: str) -> None:
    """Without the testing extra, the fixture says how to install it as the README does: not from PyPI."""
    from flask_bindcar.pytest_plugin import TESTING_EXTRA

    (tmp_path / "conftest.py").write_text('import sys\n\nsys.modules["jwt"] = None  # as if PyJWT were missing\n')
    (tmp_path / "test_user.py").write_text(f"def test_it({fixture}):\n    pass\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        env=base_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout[-3000:]
    message = (
        f"{fixture} needs flask-bindcar's testing extra, which is not installed (no module named 'jwt'). "
        "flask-bindcar is not on PyPI yet: from a checkout, pip install './flask-bindcar[testing]'; "
        "from a wheel built there, pip install 'dist/flask_bindcar-<version>-py3-none-any.whl[testing]'"
    )
    assert message == TESTING_EXTRA.format(fixture=fixture, module="jwt")
    failure = result.stdout.split(" ERROR at setup of test_it ", 1)[1].split("\n", 1)[1].split("\n=", 1)[0]
    assert failure == message  # the whole of it: no chained ImportError with other advice
    readme = (ROOT / "README.md").read_text()
    assert "is not on PyPI yet" in readme
    assert "pip install './flask-bindcar[k8s-token-review,testing]'" in readme


# -- kubectl flows against a real kube-apiserver -------------------------------------------------

EXTERNAL_DNS = "system:serviceaccount:dns-system:external-dns"
ZONE_SAR = {  # the question flask-bindcar asks for DELETE /api/v1/zones/example.com
    "apiVersion": "authorization.k8s.io/v1",
    "kind": "SubjectAccessReview",
    "spec": {
        "user": EXTERNAL_DNS,
        "groups": ["system:serviceaccounts", "system:serviceaccounts:dns-system", "system:authenticated"],
        "resourceAttributes": {"group": "bindcar.firestoned.io", "resource": "zones", "verb": "delete"},
    },
}


def kubectl_shell(cluster: RealCluster, cwd: Path) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """Run a documented shell line as a user would: the cluster's kubectl on PATH, its admin kubeconfig."""
    env = {
        **base_environment(),
        "KUBECONFIG": str(cluster.admin_kubeconfig),
        "PATH": f"{cluster.assets}:{os.environ['PATH']}",
    }
    return lambda line: subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def wait_until_rbac_allows(cluster: RealCluster) -> None:
    """RBAC reaches the authorizer through a watch: wait until external-dns may delete zones."""
    deadline = time.monotonic() + 15
    path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    while not cluster.api("POST", path, ZONE_SAR)["status"].get("allowed", False):
        assert time.monotonic() < deadline, "RBAC did not allow external-dns to delete zones in 15 s"
        time.sleep(0.1)


def section(text: str, heading: str) -> str:
    return text.split(f"{heading}\n", 1)[1].split("\n#", 1)[0]


@pytest.mark.cluster
def test_authorization_page_checks_of_a_grant(real_cluster: RealCluster) -> None:
    """The "Checking a grant" section, run as written after the example's rbac-zones.yaml is applied."""
    text = (ROOT / "docs" / "authorization.md").read_text()
    [apply] = [b.body for b in blocks("authorization.md") if b.language == "sh" and "rbac-zones.yaml" in b.body]
    [listing, access_review] = [b.body for b in blocks("authorization.md") if b.language == "sh"][-2:]
    checks = section(text, "### Checking a grant")
    sh = kubectl_shell(real_cluster, ROOT)
    try:
        applied = sh(apply)
        assert applied.returncode == 0, applied.stderr
        wait_until_rbac_allows(real_cluster)

        rules = sh(listing)
        assert rules.returncode == 0, rules.stderr
        shown = re.search(r"grant shows as\s+`([^`]+)`", checks)
        assert shown is not None
        assert [" ".join(line.split()) for line in rules.stdout.splitlines()] == [" ".join(shown.group(1).split())]

        assert "a SubjectAccessReview, which prints `true`" in checks
        answered = sh(access_review)
        assert (answered.returncode, answered.stdout, answered.stderr) == (0, "true", "")

        # What the section warns about, as this kube-apiserver and kubectl do it.
        [create, can_i] = re.findall(r"^\* `(kubectl [^`]+)`", checks, flags=re.M)
        refused = sh(create)
        assert (refused.returncode, refused.stderr) == (1, f"{REFUSED}\n")
        assert f"refused: `{REFUSED}`" in " ".join(checks.split())
        wrong = sh(can_i)
        assert (wrong.returncode, wrong.stdout) == (1, "no\n")
    finally:
        sh("kubectl delete --ignore-not-found -f example_app/deploy/rbac-zones.yaml")


REFUSED = 'the server doesn\'t have a resource type "zones" in group "bindcar.firestoned.io"'
