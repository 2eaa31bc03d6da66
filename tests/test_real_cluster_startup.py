"""RealCluster's start-up failures, with stand-in binaries: no Go build and no --cluster needed.

Scripts named etcd, kube-apiserver and kubectl take the binaries' place; what RealCluster says
when one exits or the API server never gets ready is what a developer reads when a build is broken.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flask_bindcar.testing import RealCluster
from flask_bindcar.testing.real import AssetsMissing, find_assets


def assets(tmp_path: Path, etcd: str, apiserver: str) -> Path:
    folder = tmp_path / "assets"
    folder.mkdir()
    for name, body in (("etcd", etcd), ("kube-apiserver", apiserver), ("kubectl", "exit 0")):
        script = folder / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return folder


def test_a_binary_that_exits_is_named_with_the_tail_of_each_log(tmp_path: Path) -> None:
    folder = assets(tmp_path, 'echo "etcd: bad flag"; exit 3', "exec sleep 30")
    work = tmp_path / "work"
    cluster = RealCluster(assets=folder, workdir=work, start_timeout=30)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        cluster.start()
    assert time.monotonic() - started < 10  # the sleeping kube-apiserver was stopped, not waited for
    assert str(info.value) == ("etcd exited with 3: --- etcd.log ---\netcd: bad flag\n--- kube-apiserver.log ---\n")
    assert not (work / "etcd").exists()  # stopped and cleaned, the workdir kept
    assert (work / "etcd.log").read_text() == "etcd: bad flag\n"


def test_an_api_server_never_ready_times_out(tmp_path: Path) -> None:
    cluster = RealCluster(assets=assets(tmp_path, "exec sleep 30", "exec sleep 30"), start_timeout=1)
    started = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        cluster.start()
    assert 1 <= time.monotonic() - started < 10
    message = str(info.value)
    assert message.startswith("kube-apiserver not ready in 1 s (")
    assert message.endswith("): --- etcd.log ---\n\n--- kube-apiserver.log ---\n")
    never_started = RealCluster(assets=tmp_path / "assets")
    with pytest.raises(RuntimeError, match=r"^RealCluster is not started$"):
        never_started.workdir  # noqa: B018


def test_missing_binaries_name_make_cluster_assets(tmp_path: Path) -> None:
    with pytest.raises(AssetsMissing) as info:
        find_assets(tmp_path)
    assert str(info.value) == (
        f"RealCluster needs etcd, kube-apiserver, kubectl in KUBEBUILDER_ASSETS (looked in {tmp_path}). "
        "Build them with `make cluster-assets` (needs Go), or point KUBEBUILDER_ASSETS at envtest's binaries."
    )
