"""The examples written in the docs pages are true: each fenced block is run, or is the file it names.

The pages read as plain Markdown (no include lines). A block that names its file in the paragraph
before it (a backticked path such as `example_app/deploy/rbac.yaml`) must be that file, or be made
of top-level pieces that file contains; the API page's blocks run in a fresh interpreter; the
testing page's tests run under pytest beside ``myservice.py``, the README's Flask example; shell
blocks name only make targets, modules and files that exist.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gunicorn_server import ROOT, base_environment

PAGES = ["index.md", "kubernetes.md", "testing.md", "api.md"]
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
    text = (ROOT / "docs" / page).read_text()
    found, end = [], 0
    for match in FENCE.finditer(text):
        paragraph = text[end : match.start()].rstrip().rsplit("\n\n", 1)[-1]
        files = [ROOT / name for name in BACKTICKED.findall(paragraph) if (ROOT / name).is_file()]
        found.append(Block(page, match.group(1), match.group(2), files[-1] if files else None))
        end = match.end()
    return found


ALL = [b for page in PAGES for b in blocks(page)]
CODE = [b for b in ALL if b.language != "sh"]


@pytest.mark.parametrize("page", PAGES)
def test_pages_have_no_include_lines(page: str) -> None:
    text = (ROOT / "docs" / page).read_text()
    assert "--8<--" not in text
    assert blocks(page), f"{page} has no examples"


def test_every_code_block_is_checked_one_way() -> None:
    unchecked = [str(b) for b in CODE if b.named is None and b.page not in ("api.md", "testing.md")]
    assert unchecked == []
    assert {b.language for b in CODE} <= {"python", "yaml", "dockerfile", "ini"}


@pytest.mark.parametrize("block", [b for b in CODE if b.language == "ini"], ids=str)
def test_ini_blocks_parse(block: Block) -> None:
    configparser.ConfigParser().read_string(block.body)


@pytest.mark.parametrize("block", [b for b in CODE if b.named is not None], ids=str)
def test_block_is_the_file_it_names(block: Block) -> None:
    assert block.named is not None
    source = block.named.read_text()
    if block.body == source:
        return
    pieces = [piece for piece in block.body.split("\n\n\n") if piece.strip()]
    missing = [piece for piece in pieces if piece.strip("\n") not in source]
    assert missing == [], f"{block.page}: not in {block.named.relative_to(ROOT)}"


def test_api_page_examples_run(tmp_path: Path) -> None:
    """Each block of the API page, in a fresh interpreter with no BIND_* or KUBE* settings."""
    examples = [b for b in blocks("api.md") if b.language == "python"]
    assert len(examples) >= 5
    run = "exec(compile({body!r}, 'api.md example {i}', 'exec'), {{'__name__': '__main__'}})"
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
            "fake_cluster": "function",
            "fake_kubeconfig": "function",
            "real_cluster": "session",
            "real_kubeconfig": "function",
        }
    )


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))])
def test_pages_cite_only_files_of_this_repository(page: str) -> None:
    """A Markdown file named in the docs exists here: the guide is cited by its title, not a path."""
    text = (ROOT / page).read_text()
    for name in re.findall(r"[`(]([\w./-]+\.md)[`)#]", text):
        assert (ROOT / name).is_file() or (ROOT / page).parent.joinpath(name).is_file(), f"{page} cites {name}"
