"""Faults on the real control plane: kill, freeze and restart kube-apiserver or etcd.

`RealCluster` starts and stops the whole control plane; a soak needs one process at a time killed
and started again on the same port, with the same flags and the same etcd data. The processes
and their command lines are `ControlPlane`'s (``cluster._plane._processes``, each a
``subprocess.Popen`` whose ``args`` is the command line it was started with); this module reuses
them rather than growing the test kit's API for the soak alone. A restarted process replaces its
entry, so `RealCluster.stop` still stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from flask_bindcar.testing import RealCluster


def _entry(cluster: RealCluster, name: str) -> tuple[int, subprocess.Popen[bytes]]:
    for index, (each, process) in enumerate(cluster._plane._processes):
        if each == name:
            return index, process
    raise RuntimeError(f"{name} is not running")


def kill(cluster: RealCluster, name: str) -> None:
    """SIGKILL ``name`` (``kube-apiserver`` or ``etcd``) and reap it."""
    _, process = _entry(cluster, name)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def freeze(cluster: RealCluster, name: str) -> None:
    """SIGSTOP: the process holds its connections and answers nothing (a hanging API server)."""
    os.kill(_entry(cluster, name)[1].pid, signal.SIGSTOP)


def thaw(cluster: RealCluster, name: str) -> None:
    os.kill(_entry(cluster, name)[1].pid, signal.SIGCONT)


def start(cluster: RealCluster, name: str) -> None:
    """Start ``name`` again with the command line it was first started with, its log appended to."""
    index, old = _entry(cluster, name)
    if old.poll() is None:
        raise RuntimeError(f"{name} is still running")
    log = (cluster.workdir / f"{name}.log").open("ab")
    cluster._plane._logs.append(log)
    args = old.args
    assert isinstance(args, list), "ControlPlane starts its processes with a list of arguments"
    process = subprocess.Popen(  # noqa: S603 - the same binary and flags as before
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    cluster._plane._processes[index] = (name, process)


def ready(cluster: RealCluster) -> bool:
    try:
        return cluster._plane._ready()
    except OSError:
        return False


def wait_ready(cluster: RealCluster, timeout: float = 90.0) -> float:
    """Wait until kube-apiserver's ``/readyz`` says ok; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in cluster._plane._processes:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} while waiting for readiness")
        if ready(cluster):
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"kube-apiserver not ready {timeout:.0f} s after a restart")


REVIEW_RESOURCES = ("tokenreviews", "subjectaccessreviews")


def review_counts(cluster: RealCluster, timeout: float = 2.0) -> dict[str, float] | None:
    """kube-apiserver's own count of the TokenReviews and SubjectAccessReviews it has served
    (``apiserver_request_total``, since it last started); None when it does not answer."""
    import urllib.request

    req = urllib.request.Request(cluster.url + "/metrics")  # noqa: S310 - https only
    req.add_header("Authorization", f"Bearer {cluster._plane.admin_token}")
    try:
        with urllib.request.urlopen(req, context=cluster._plane.ssl, timeout=timeout) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return None
    counts = dict.fromkeys(REVIEW_RESOURCES, 0.0)
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            for resource in REVIEW_RESOURCES:
                if f'resource="{resource}"' in line:
                    counts[resource] += float(line.rsplit(" ", 1)[1])
    return counts
