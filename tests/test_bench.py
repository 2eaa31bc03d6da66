"""``make bench`` leaves the tracked tree alone; publishing a run is ``make bench-docs``'s job."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

from tests.gunicorn_server import ROOT, base_environment

PUBLISHED = ["docs/performance.md", "docs/performance.png", "benchmarks/results.json"]


def digests() -> dict[str, str]:
    return {name: hashlib.sha256((ROOT / name).read_bytes()).hexdigest() for name in PUBLISHED}


def make_n(target: str, **variables: str) -> list[str]:
    """The commands ``make TARGET`` would run (``make -n``), the venv set-up left out."""
    args = ["make", "-n", target, *(f"{k}={v}" for k, v in variables.items())]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "benchmarks." in line]


def test_make_bench_writes_only_to_its_results_file(tmp_path: Path) -> None:
    results = tmp_path / "bench" / "results.json"
    [command] = make_n("bench", BENCH_RESULTS=str(results))
    before = digests()
    argv = [sys.executable, *shlex.split(command)[1:], "--quick", "--only", "3"]  # what make bench runs, quick
    subprocess.run(argv, cwd=ROOT, env=base_environment(), capture_output=True, check=True, timeout=120)
    assert digests() == before
    assert "3_reviews_sent" in json.loads(results.read_text())
    ignored = subprocess.run(["git", "check-ignore", "-q", "build/bench/results.json"], cwd=ROOT)
    assert ignored.returncode == 0  # the default place is ignored by git


def test_bench_docs_publishes_only_a_full_run(tmp_path: Path) -> None:
    partial = tmp_path / "results.json"
    partial.write_text(json.dumps({"machine": {}, "3_reviews_sent": {}}))
    assert make_n("bench-docs", BENCH_RESULTS=str(partial))[-1].endswith(f"-m benchmarks.report {partial}")
    before = digests()
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", str(partial)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    missing = "1_warm, 2_cold, 4_garbage, 5_gunicorn, 6_authz_warm, 7_flood, 8_local, 9_clusters"
    assert f"is not a full run (missing {missing}): run make bench first" in result.stderr
    assert digests() == before
