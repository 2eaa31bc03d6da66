"""Starting and stopping a real control plane: etcd and kube-apiserver on loopback, as envtest does.

`ControlPlane` finds nothing and asks nothing of the API: it writes the certificates, the
ServiceAccount signing key and the static token file, starts the binaries of an envtest-style
``KUBEBUILDER_ASSETS`` folder (`find_assets`) on free ports of 127.0.0.1, waits until
``/readyz`` answers, and stops them again, naming the binary that exited and the tail of each log
when a start fails. Key rotation (`rotate_signing_key`) restarts kube-apiserver alone, as an
operator does: a new ``--service-account-signing-key-file``, one more
``--service-account-key-file``, etcd and its data untouched; `stop_apiserver` and
`start_apiserver` make an outage of that one process. Each plane has its own working directory,
ports and ``--service-account-issuer``, so several run side by side from the same binaries (one
per cluster of a multi-cluster test). What is done with the running API server is `RealCluster`'s.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_bindcar.testing.interface import ISSUER

ASSETS_ENV = "KUBEBUILDER_ASSETS"
DEFAULT_ASSETS = Path("build/kube-assets")
BINARIES = ("etcd", "kube-apiserver", "kubectl")
ADMIN = "bindcar-admin"


class AssetsMissing(RuntimeError):
    """The control-plane binaries are not where `RealCluster` looks for them."""


def find_assets(assets: str | Path | None = None) -> Path:
    """The folder holding etcd, kube-apiserver and kubectl: ``assets``, ``$KUBEBUILDER_ASSETS`` or
    ``build/kube-assets``; `AssetsMissing` naming ``make cluster-assets`` when one is missing."""
    candidates = [Path(assets)] if assets is not None else []
    if not candidates and os.environ.get(ASSETS_ENV):
        candidates.append(Path(os.environ[ASSETS_ENV]))
    if not candidates:
        here = Path(__file__).resolve().parents[2] / DEFAULT_ASSETS
        candidates += [DEFAULT_ASSETS.resolve(), here]
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in BINARIES):
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise AssetsMissing(
        f"RealCluster needs {', '.join(BINARIES)} in {ASSETS_ENV} (looked in {where}). "
        "Build them with `make cluster-assets` (needs Go), or point KUBEBUILDER_ASSETS at envtest's binaries."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControlPlane:
    """etcd and kube-apiserver from ``assets``, with ``--authorization-mode=RBAC``, a ServiceAccount
    issuer (``--service-account-issuer``, `issuer`) whose signing key it holds (`sign`), a
    cluster-admin (`admin_token`, group ``system:masters``) and ``static_users`` with static tokens
    (`static_tokens`)."""

    def __init__(
        self,
        assets: Path,
        workdir: Path | None,
        static_users: Iterable[str],
        start_timeout: float,
        issuer: str = ISSUER,
    ):
        self.assets = assets
        self.issuer = issuer
        """The ``iss`` of every token this plane mints or signs: ``--service-account-issuer``."""
        self._workdir_arg = workdir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir: Path | None = None
        """The working directory once started: certificates, keys, tokens, logs, etcd's data."""
        self.static_tokens = {name: "static-" + uuid.uuid4().hex for name in static_users}
        self.admin_token = "admin-" + uuid.uuid4().hex
        self._start_timeout = start_timeout
        self._keys: list[rsa.RSAPrivateKey] = [rsa.generate_private_key(public_exponent=65537, key_size=2048)]
        """The ServiceAccount keys, oldest first: every one verifies, the last one signs."""
        self._ca = trustme.CA()
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[BinaryIO] = []
        self.ssl: ssl.SSLContext | None = None
        """A client context trusting the cluster's CA, once started."""
        self.port = 0
        self._etcd_url = ""

    @property
    def running(self) -> bool:
        return bool(self._processes)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return bytes(self._ca.cert_pem.bytes())

    @property
    def kids(self) -> list[str]:
        """The key IDs of the ServiceAccount keys, oldest first; the last one signs."""
        return [_key_id(key.public_key()) for key in self._keys]

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT of ``claims`` signed with the cluster's current ServiceAccount signing key, as
        kube-apiserver signs."""
        key = self._keys[-1]
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": _key_id(key.public_key())})

    def rotate_signing_key(self) -> str:
        """Sign with a new RSA key from now on, still verifying with the old ones: kube-apiserver
        restarted with the new key as ``--service-account-signing-key-file`` and every public key
        as a ``--service-account-key-file`` (its ``/openid/v1/jwks`` publishes them in that order,
        oldest first). etcd keeps running, so the cluster's state survives; returns once
        kube-apiserver is ready again, with the new key's ``kid``."""
        if not self.running or self.dir is None:
            raise RuntimeError("the control plane is not started")
        self._keys.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self._write_keys(self.dir)
        self.restart_apiserver()
        return self.kids[-1]

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port with the current flags (its log
        appended to), and wait until it is ready; etcd is not touched."""
        self.stop_apiserver()
        self.start_apiserver()

    def _apiserver_index(self) -> int:
        if not self.running:
            raise RuntimeError("the control plane is not started")
        return next(i for i, (name, _) in enumerate(self._processes) if name == "kube-apiserver")

    @property
    def apiserver_running(self) -> bool:
        """Whether kube-apiserver's process is alive (started, and not stopped by `stop_apiserver`)."""
        return self.running and self._processes[self._apiserver_index()][1].poll() is None

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone (SIGTERM, SIGKILL after 10 s): its port refuses connections
        until `start_apiserver`; etcd keeps running. Its entry stays, so `stop` and the soak's
        faults still find it."""
        _terminate(self._processes[self._apiserver_index()][1])

    def start_apiserver(self) -> None:
        """Start a stopped kube-apiserver on the same port with the current flags (its log appended
        to) and wait until it is ready; one still running is restarted."""
        index = self._apiserver_index()
        _terminate(self._processes[index][1])
        self._processes[index] = ("kube-apiserver", self._spawn("kube-apiserver", self._apiserver_args(), append=True))
        self._wait_ready()

    def start(self) -> None:
        """Start etcd and kube-apiserver and wait until it is ready; stopped again if that fails."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        if self._workdir_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="real-cluster-")
            self.dir = Path(self._tmp.name)
        else:
            self.dir = self._workdir_arg
            self.dir.mkdir(parents=True, exist_ok=True)
        d = self.dir
        (d / "ca.crt").write_bytes(self._ca.cert_pem.bytes())
        serving = self._ca.issue_cert("127.0.0.1", "localhost")
        serving.private_key_pem.write_to_path(str(d / "apiserver.key"))
        serving.cert_chain_pems[0].write_to_path(str(d / "apiserver.crt"))
        self._write_keys(d)
        rows = [f'{self.admin_token},{ADMIN},{ADMIN},"system:masters"']
        rows += [f"{token},{name},{name}" for name, token in self.static_tokens.items()]
        (d / "tokens.csv").write_text("\n".join(rows) + "\n")
        for name in ("tokens.csv", "apiserver.key"):
            (d / name).chmod(0o600)

        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        self._etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd_args = [
            f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls={self._etcd_url}",
            f"--advertise-client-urls={self._etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        self._processes.append(("etcd", self._spawn("etcd", etcd_args)))
        self._processes.append(("kube-apiserver", self._spawn("kube-apiserver", self._apiserver_args())))
        self.ssl = ssl.create_default_context(cafile=str(d / "ca.crt"))
        self._wait_ready()

    def _key_files(self, d: Path) -> list[tuple[Path, Path]]:
        """``(private, public)`` file of each ServiceAccount key, oldest first: ``sa.key`` and
        ``sa.pub`` for the first, ``sa-2.key`` and ``sa-2.pub`` for the next..."""
        return [
            (d / f"{stem}.key", d / f"{stem}.pub")
            for stem in ["sa"] + [f"sa-{n}" for n in range(2, len(self._keys) + 1)]
        ]

    def _write_keys(self, d: Path) -> None:
        for key, (private, public) in zip(self._keys, self._key_files(d), strict=True):
            private.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            private.chmod(0o600)
            public.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

    def _apiserver_args(self) -> list[str]:
        """kube-apiserver's flags: every ServiceAccount public key verifies, the newest key signs."""
        assert self.dir is not None
        d = self.dir
        key_files = self._key_files(d)
        return [
            f"--etcd-servers={self._etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={d / 'certs'}",
            f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            f"--token-auth-file={d / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={self.issuer}",
            *(f"--service-account-key-file={public}" for _, public in key_files),
            f"--service-account-signing-key-file={key_files[-1][0]}",
            # The issuer, as kube-apiserver's own default (and API_AUDIENCE with the default issuer).
            f"--api-audiences={self.issuer}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=1",
        ]

    def _spawn(self, name: str, args: list[str], *, append: bool = False) -> subprocess.Popen[bytes]:
        assert self.dir is not None
        log = (self.dir / f"{name}.log").open("ab" if append else "wb")
        self._logs.append(log)
        return subprocess.Popen(  # noqa: S603 - our own binaries, fixed arguments
            [str(self.assets / name), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def _ready(self) -> bool:
        request = urllib.request.Request(self.url + "/readyz")  # noqa: S310 - https only
        request.add_header("Authorization", f"Bearer {self.admin_token}")
        with urllib.request.urlopen(request, context=self.ssl, timeout=30) as response:  # noqa: S310
            return bool(response.read() == b"ok")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        last: object = None
        while time.monotonic() < deadline:
            for name, process in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: {self._log_tail()}")
            try:
                if self._ready():
                    return
            except OSError as e:  # refused, reset, or an HTTP error (urllib's are OSErrors too)
                last = e
            time.sleep(0.25)
        raise TimeoutError(f"kube-apiserver not ready in {self._start_timeout:.0f} s ({last}): {self._log_tail()}")

    def _log_tail(self) -> str:
        if self.dir is None:
            return ""
        tails = []
        for name in ("etcd", "kube-apiserver"):
            path = self.dir / f"{name}.log"
            if path.exists():
                tails.append(f"--- {name}.log ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(tails)

    def stop(self) -> None:
        """Stop both processes (killed after 10 s), kube-apiserver before etcd: terminated
        together, kube-apiserver's graceful shutdown waits on the etcd going away and is killed.
        Remove the working directory, or only etcd's data and the generated certificates from one
        given to the constructor."""
        for _, process in reversed(self._processes):
            _terminate(process)
        self._processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        elif self.dir is not None:
            for name in ("etcd", "certs"):
                shutil.rmtree(self.dir / name, ignore_errors=True)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``process`` if it still runs, and reap it (`_reap`)."""
    if process.poll() is None:
        process.terminate()
    _reap(process)


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for ``process`` to exit; SIGKILL after 10 s."""
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _key_id(public_key: rsa.RSAPublicKey) -> str:
    """kube-apiserver's key ID: unpadded base64url of the SHA-256 of the key's DER form."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
