"""Serve a test app with a real gunicorn process, configured only by environment variables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TARGETS = {
    "flask": "tests.apps.flask_app:app",
    "wsgi": 'flask_bindcar.middleware:wrap("tests.apps.wsgi_app:app")',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_environment() -> dict[str, str]:
    """The caller's environment without any flask-bindcar or Kubernetes settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("BIND_", "BINDCAR_", "KUBE"))}


@contextmanager
def gunicorn(
    target: str,
    env: Mapping[str, str],
    log_path: Path,
    *,
    threads: int = 4,
    workers: int = 1,
    preload: bool = False,
    worker_class: str | None = None,
    wrapper: Sequence[str] = (),
) -> Iterator[str]:
    """Run ``gunicorn target`` on a free loopback port; yields its base URL.

    ``worker_class`` is gunicorn's ``-k`` (default: sync, or gthread with ``threads`` > 1).
    ``wrapper`` is a command that runs gunicorn's command line (``unshare ...``, say).
    """
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--log-level",
        "debug",
        "--access-logfile",
        "-",
        "--graceful-timeout",
        "2",
    ]
    if preload:
        args.append("--preload")
    if worker_class is not None:
        args += ["--worker-class", worker_class]
    args.append(target)
    args = [*wrapper, *args]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env={**base_environment(), **env}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not listen in time:\n{log_path.read_text()[-3000:]}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
