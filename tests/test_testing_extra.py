"""Without the ``testing`` extra, importing the stand-in says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.gunicorn_server import ROOT, base_environment


@pytest.mark.parametrize("missing", ["jwt", "trustme", "cryptography"])
@pytest.mark.parametrize("module", ["flask_bindcar.testing", "flask_bindcar.testing.cluster"])
def test_importing_the_stand_in_without_the_extra_names_it(missing: str, module: str) -> None:
    # An interpreter where the extra's module cannot be imported, as in an install without it.
    code = f"import sys; sys.modules[{missing!r}] = None; import {module}"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=base_environment(), capture_output=True, text=True
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "ModuleNotFoundError: flask_bindcar.testing needs the testing extra: "
        f"pip install 'flask-bindcar[testing]' (no module named {missing!r})"
    )
