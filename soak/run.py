"""One soak run: the cluster, the server, the load, the faults on their schedule, the result."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_bindcar.testing import RealCluster
from soak import faults
from soak.load import Caller, Load
from soak.oracle import ALLOW, DENY, Change, Oracle, Outage, Windows
from soak.proxy import SlowProxy

ROOT = Path(__file__).resolve().parent.parent
NS = "soak"
DELETER = "system:serviceaccount:dns-system:external-dns"
ZONE_GROUP = "bindcar.firestoned.io"
FRESH_ACCOUNTS = 8
SLOW_API_DELAY = 0.5
"""Seconds the slow-API fault adds to each chunk the app sends kube-apiserver: a TokenReview or
SubjectAccessReview on a kept connection takes about that much longer, a new connection's TLS
handshake about twice that, all within the review timeout."""
TARGETS = {
    "flask": "example_app.app:create_app()",
    "wsgi": 'flask_bindcar.middleware:wrap("soak.wsgi_app:app")',
}
"""The two adapters: the example app (BindcarAuth, RBAC on DELETE) and the WSGI middleware around a
plain app (authentication only: the RBAC kinds of request and the grant changes are left out)."""
RBAC_KINDS = ("rbac-allowed", "rbac-denied", "rbac-rotating", "not-permitted")

WEIGHTS: dict[str, float] = {
    "valid": 60,
    "fresh": 8,
    "forged": 3,
    "expired": 3,
    "garbage": 3,
    "foreign-ns": 2,
    "deleted-sa": 4,
    "deleted-pod": 3,
    "rbac-allowed": 5,
    "rbac-denied": 3,
    "rbac-rotating": 5,
    "not-permitted": 1,
}


@dataclass
class Plan:
    """The schedule: (seconds after the load starts, action name, argument)."""

    seconds: float
    events: list[tuple[float, str, float]]

    @classmethod
    def short(cls, seconds: float) -> Plan:
        s = seconds
        return cls(
            s,
            [
                (0.12 * s, "delete-sa", 0),
                (0.18 * s, "delete-pod", 0),
                (0.25 * s, "grant", 0),
                (0.40 * s, "revoke", 0),
                (0.55 * s, "apiserver-kill", 8),
                (0.75 * s, "slow-api", 0.08 * s),
            ],
        )

    @classmethod
    def full(cls, seconds: float, stale_ttl: float) -> Plan:
        s = seconds
        return cls(
            s,
            [
                (0.04 * s, "delete-sa", 0),
                (0.08 * s, "grant", 0),
                (0.13 * s, "revoke", 0),
                (0.18 * s, "apiserver-kill", 8),
                (0.28 * s, "apiserver-freeze", 8),
                (0.38 * s, "apiserver-kill", stale_ttl + 15),
                (0.55 * s, "etcd-restart", 5),
                (0.60 * s, "key-rotation", 0),
                (0.65 * s, "grant", 0),
                (0.70 * s, "revoke", 0),
                (0.75 * s, "delete-pod", 0),
                (0.85 * s, "apiserver-kill", 8),
                (0.90 * s, "slow-api", 0.04 * s),
            ],
        )


@dataclass
class Soak:
    seconds: float
    out: Path
    full: bool = False
    adapter: str = "flask"
    rate: float = 150.0
    max_requests: int = 2_000_000
    windows: Windows = field(default_factory=Windows)
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    def __post_init__(self) -> None:
        self.plan = Plan.full(self.seconds, self.windows.stale_ttl) if self.full else Plan.short(self.seconds)
        if self.adapter == "wsgi":
            self.plan.events = [e for e in self.plan.events if e[1] not in ("grant", "revoke")]
            self.weights = {k: w for k, w in WEIGHTS.items() if k not in RBAC_KINDS}
        else:
            self.weights = dict(WEIGHTS)
        self.oracle = Oracle(self.windows)
        self.phases: list[tuple[str, float]] = []
        self.recoveries: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self._grants = 0
        self._stop = threading.Event()

    # -- setup -------------------------------------------------------------------------------

    def _token(self, cluster: RealCluster, namespace: str, name: str, pod: str | None = None) -> str:
        return cluster.token(namespace, name, ["bindcar"], expires_in=max(3600, self.seconds + 1200), pod=pod)

    def _callers(self, cluster: RealCluster) -> dict[str, list[Caller]]:
        valid = [Caller("valid", f"token:app-{i}", self._token(cluster, NS, f"app-{i}")) for i in range(4)]
        for i in range(FRESH_ACCOUNTS):
            cluster.create_service_account(NS, f"fresh-{i}")
        deleter = self._token(cluster, "dns-system", "external-dns")
        cluster.allow(DELETER, "delete", "zones", group=ZONE_GROUP, name="allowed.example.com", binding="soak-allowed")
        claims = jwt.decode(valid[0].token, options={"verify_signature": False})
        header = jwt.get_unverified_header(valid[0].token)
        forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": header.get("kid", "")})
        expired = cluster.token(NS, "app-0", ["bindcar"], expires_in=-120)

        def zone(kind: str, subject: str, name: str, truth: str, token: str = deleter) -> Caller:
            return Caller(kind, subject, token, "DELETE", f"/api/v1/zones/{name}", truth, 404)

        return {
            "valid": valid,
            "forged": [Caller("forged", "token:forged", forged, truth=DENY)],
            "expired": [Caller("expired", "token:expired", expired, truth=DENY)],
            "garbage": [
                Caller("garbage", "token:garbage", "garbage-" + uuid.uuid4().hex, truth=DENY),
                Caller("garbage", "token:garbage", "a.b.c", truth=DENY),
                Caller("garbage", "token:garbage", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", truth=DENY),
            ],
            "foreign-ns": [
                Caller("foreign-ns", "token:foreign-ns", self._token(cluster, "other", "intruder"), truth=DENY)
            ],
            "deleted-sa": [Caller("deleted-sa", "token:victim-sa", self._token(cluster, NS, "victim-sa"))],
            "deleted-pod": [
                Caller("deleted-pod", "token:victim-pod", self._token(cluster, NS, "victim-pod-sa", pod="victim-pod"))
            ],
            "rbac-allowed": [zone("rbac-allowed", "zone:allowed", "allowed.example.com", ALLOW)],
            "rbac-denied": [zone("rbac-denied", "zone:denied", "denied.example.com", DENY)],
            "rbac-rotating": [zone("rbac-rotating", "zone:rotating", "rotating.example.com", DENY)],
            "not-permitted": [zone("not-permitted", "zone:not-permitted", "allowed.example.com", DENY, valid[1].token)],
        }

    @contextlib.contextmanager
    def _gunicorn(self, cluster: RealCluster) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
        port = faults_free_port()
        kubeconfig = cluster.write_kubeconfig(self.out / "app.kubeconfig")
        kubeconfig.write_text(kubeconfig.read_text().replace(cluster.url, self.proxy.url))  # through the proxy
        w = self.windows
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BIND_", "BINDCAR_", "KUBE", "GUNICORN_"))}
        env.update(
            BIND_AUTH_MODE="tokenreview",
            BIND_TOKEN_AUDIENCES="bindcar",  # noqa: S106 - an audience, not a password
            BIND_ALLOWED_NAMESPACES=f"{NS},dns-system",
            BIND_TOKEN_CACHE_TTL=str(w.cache_ttl),
            BIND_TOKEN_CACHE_STALE_TTL=str(w.stale_ttl),
            BIND_TOKEN_REVIEW_TIMEOUT=str(w.review_timeout),
            BIND_AUTHZ_CACHE_ALLOWED_TTL=str(w.authz_allowed_ttl),
            BIND_AUTHZ_CACHE_DENIED_TTL=str(w.authz_denied_ttl),
            BIND_AUTH_EXEMPT_PATHS="/api/v1/health,/api/v1/ready",  # the middleware's probes, as a Deployment sets them
            KUBECONFIG=str(kubeconfig),
            ZONE_AUTHZ="rbac",
            ZONE_DATA_DIR=str(self.out / "zones"),
            GUNICORN_BIND=f"127.0.0.1:{port}",
            GUNICORN_WORKERS="2",
            GUNICORN_THREADS="8",
        )
        args = [sys.executable, "-m", "gunicorn", "-c", "example_app/gunicorn.conf.py", TARGETS[self.adapter]]
        with (self.out / "gunicorn.log").open("wb") as log:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"gunicorn exited with {proc.returncode}, see {self.out / 'gunicorn.log'}")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(url + "/api/v1/ready", timeout=1).ok and len(_children(proc.pid)) >= 2:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not answer in 60 s")
                time.sleep(0.1)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        wall_start = time.time()
        self.log(
            f"soak: starting RealCluster ({'full' if self.full else 'short'}, {self.adapter}, "
            f"{self.seconds:.0f} s of load)"
        )
        with RealCluster(workdir=self.out / "cluster") as cluster, SlowProxy(_address(cluster.url)) as proxy:
            self.proxy = proxy
            callers = self._callers(cluster)
            with self._gunicorn(cluster) as (url, server):
                _warm_up(url, callers, self.adapter == "flask")
                self.t_start = time.monotonic()
                load = Load(url, callers, self.weights, self.t_start + self.seconds, self.max_requests, self.rate)
                self.phases.append(("steady", 0.0))
                threads = load.run()
                helpers = [
                    threading.Thread(target=self._mint, args=(cluster, load), daemon=True),
                    threading.Thread(target=self._sample, args=(cluster, server.pid), daemon=True),
                ]
                self._sample_once(cluster, server.pid)
                for t in helpers:
                    t.start()
                try:
                    self._schedule(cluster, load)
                    for t in threads:
                        t.join(timeout=max(0.0, self.t_start + self.seconds - time.monotonic()) + 30)
                finally:
                    self._stop.set()
                    for t in helpers:
                        t.join(timeout=40)
                    self._sample_once(cluster, server.pid)
                    with contextlib.suppress(Exception):
                        for name in ("kube-apiserver", "etcd"):
                            with contextlib.suppress(OSError, RuntimeError):
                                faults.thaw(cluster, name)
        result = self._result(load, wall_start)
        (self.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    def _at(self, offset: float) -> None:
        while not self._stop.is_set():
            left = self.t_start + offset - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 1.0))

    def _schedule(self, cluster: RealCluster, load: Load) -> None:
        for offset, name, arg in self.plan.events:
            self._at(offset)
            if self._stop.is_set() or time.monotonic() > self.t_start + self.seconds - 5:
                return
            self.log(f"soak: t={time.monotonic() - self.t_start:6.1f} s {name} {arg or ''}")
            self.phases.append((name, time.monotonic() - self.t_start))
            getattr(self, "_do_" + name.replace("-", "_"))(cluster, load, arg)

    def _do_delete_sa(self, cluster: RealCluster, load: Load, _: float) -> None:
        start = time.monotonic()
        cluster.delete_service_account(NS, "victim-sa")
        self.oracle.changes.append(Change("token:victim-sa", start, time.monotonic(), DENY, "ServiceAccount deleted"))

    def _do_delete_pod(self, cluster: RealCluster, load: Load, _: float) -> None:
        start = time.monotonic()
        cluster.delete_pod(NS, "victim-pod")
        self.oracle.changes.append(Change("token:victim-pod", start, time.monotonic(), DENY, "bound pod deleted"))

    def _do_grant(self, cluster: RealCluster, load: Load, _: float) -> None:
        self._grants += 1
        start = time.monotonic()
        cluster.allow(
            DELETER, "delete", "zones", group=ZONE_GROUP, name="rotating.example.com", binding=self._binding()
        )
        self.oracle.changes.append(Change("zone:rotating", start, time.monotonic(), ALLOW, "grant added"))

    def _binding(self) -> str:
        return f"soak-rotating-{self._grants}"

    def _do_revoke(self, cluster: RealCluster, load: Load, _: float) -> None:
        start = time.monotonic()
        base = "/apis/rbac.authorization.k8s.io/v1"
        cluster.api("DELETE", f"{base}/clusterrolebindings/{self._binding()}")
        cluster.api("DELETE", f"{base}/clusterroles/{self._binding()}")
        probe = {
            "user": DELETER,
            "groups": ["system:serviceaccounts", "system:serviceaccounts:dns-system", "system:authenticated"],
            "resourceAttributes": {
                "verb": "delete",
                "group": ZONE_GROUP,
                "resource": "zones",
                "name": "rotating.example.com",
            },
        }
        deadline = time.monotonic() + 15
        while cluster.access_allowed(probe):
            if time.monotonic() > deadline:
                raise TimeoutError("RBAC did not revoke the rotating grant in 15 s")
            time.sleep(0.05)
        self.oracle.changes.append(Change("zone:rotating", start, time.monotonic(), DENY, "grant removed"))

    def _outage(
        self,
        cluster: RealCluster,
        load: Load,
        kind: str,
        begin: Callable[[], None],
        end: Callable[[], None],
        down: float,
    ) -> None:
        start = time.monotonic()
        begin()
        time.sleep(down)
        end()
        back = faults.wait_ready(cluster)
        self.oracle.outages.append(Outage(kind, start, back))
        self._recover(cluster, load, kind, start, back)

    def _do_apiserver_kill(self, cluster: RealCluster, load: Load, down: float) -> None:
        self._outage(
            cluster,
            load,
            "apiserver-kill",
            lambda: faults.kill(cluster, "kube-apiserver"),
            lambda: faults.start(cluster, "kube-apiserver"),
            down,
        )

    def _do_apiserver_freeze(self, cluster: RealCluster, load: Load, down: float) -> None:
        self._outage(
            cluster,
            load,
            "apiserver-freeze",
            lambda: faults.freeze(cluster, "kube-apiserver"),
            lambda: faults.thaw(cluster, "kube-apiserver"),
            down,
        )

    def _do_etcd_restart(self, cluster: RealCluster, load: Load, down: float) -> None:
        self._outage(
            cluster,
            load,
            "etcd-restart",
            lambda: faults.kill(cluster, "etcd"),
            lambda: faults.start(cluster, "etcd"),
            down,
        )

    def _do_key_rotation(self, cluster: RealCluster, load: Load, _: float) -> None:
        """A new signing key: kube-apiserver restarted with it (the old key still accepted). Old
        tokens must stay valid; fresh tokens, signed by the new key, must be accepted once it is
        back, which the app's pre-check learns by one refetch of the keys."""

        def rotate() -> None:
            self.log(f"soak: new signing key {cluster.rotate_signing_key()}")

        self._outage(cluster, load, "key-rotation", rotate, lambda: None, 0)

    def _do_slow_api(self, cluster: RealCluster, load: Load, seconds: float) -> None:
        """Every call of the app to kube-apiserver slowed by `SLOW_API_DELAY` per chunk sent, for ``seconds``."""

        def slow() -> None:
            self.proxy.delay = SLOW_API_DELAY

        def fast() -> None:
            self.proxy.delay = 0.0

        self._outage(cluster, load, "slow-api", slow, fast, seconds)

    def _recover(self, cluster: RealCluster, load: Load, kind: str, start: float, back: float) -> None:
        """Time from /readyz ok to the first fresh token (never seen by the app) being accepted."""
        session = requests.Session()
        token = ""
        for _ in range(100):
            with contextlib.suppress(Exception):
                token = self._token(cluster, NS, "fresh-0")
                break
            time.sleep(0.05)
        minted = time.monotonic()
        accepted = None
        while token and time.monotonic() < back + 30:
            record = load.send(session, Caller("fresh", "token:fresh-0", token))
            if record.status == 200:
                accepted = record.t1
                break
            time.sleep(0.05)
        session.close()
        self.recoveries.append(
            {
                "fault": kind,
                "start": round(start - self.t_start, 3),
                "ready": round(back - self.t_start, 3),
                "down_s": round(back - start, 3),
                "token_minted_after_s": round(minted - back, 3),
                "recovery_s": None if accepted is None else round(accepted - back, 3),
            }
        )
        self.log(
            f"soak: {kind}: down {back - start:.1f} s, fresh token accepted "
            f"{'never' if accepted is None else f'{accepted - back:.2f} s'} after ready"
        )

    def _mint(self, cluster: RealCluster, load: Load) -> None:
        i = 0
        while not self._stop.wait(1.0):
            i += 1
            name = f"fresh-{i % FRESH_ACCOUNTS}"
            try:
                load.add_fresh(Caller("fresh", f"token:{name}", self._token(cluster, NS, name)))
            except Exception:  # noqa: S112 - the API server is down: no token this second
                continue

    def _sample(self, cluster: RealCluster, master: int) -> None:
        while not self._stop.wait(5.0):
            self._sample_once(cluster, master)

    def _sample_once(self, cluster: RealCluster, master: int) -> None:
        sample: dict[str, Any] = {"t": round(time.monotonic() - self.t_start, 3)}
        sample["rss_mib"] = {str(pid): _rss_mib(pid) for pid in _children(master)}
        sample["apiserver_reviews"] = faults.review_counts(cluster)
        self.samples.append(sample)

    # -- the result --------------------------------------------------------------------------

    def _result(self, load: Load, wall_start: float) -> dict[str, Any]:
        records = sorted(load.records, key=lambda r: r.t0)
        verdicts = self.oracle.judge_all(records)
        t0 = self.t_start
        phases = []
        bounds = [*self.phases, ("end", max((r.t1 - t0 for r in records), default=0.0))]
        for (name, start), (_, end) in itertools.pairwise(bounds):
            chosen = [(r, v) for r, v in zip(records, verdicts, strict=True) if start <= r.t0 - t0 < end]
            phases.append({"phase": name, "start": round(start, 3), "end": round(end, 3), **_stats(chosen)})
        failures = [
            {**asdict(r), "t0": round(r.t0 - t0, 3), "t1": round(r.t1 - t0, 3), "verdict": v}
            for r, v in zip(records, verdicts, strict=True)
            if v != "ok"
        ]
        by_kind: dict[str, dict[str, int]] = {}
        for r in records:
            row = by_kind.setdefault(r.kind, {})
            row[str(r.status)] = row.get(str(r.status), 0) + 1
        totals = _stats(list(zip(records, verdicts, strict=True)))
        rss = _rss_growth(self.samples, self.seconds)
        passed = all(totals["verdicts"].get(k, 0) == 0 for k in ("wrong_allow", "wrong_deny", "undocumented", "hung"))
        # recovered within the grace the oracle allows after /readyz (else its wrong denies show it too)
        grace = self.windows.outage_grace
        passed = passed and all(r["recovery_s"] is not None and r["recovery_s"] <= grace for r in self.recoveries)
        return {
            "passed": passed,
            "mode": "full" if self.full else "short",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_start)),
            "load_seconds": round(self.seconds, 1),
            "wall_seconds": round(time.time() - wall_start, 1),
            "windows": asdict(self.windows),
            "adapter": self.adapter,
            "weights": self.weights,
            "totals": totals,
            "by_kind": by_kind,
            "phases": phases,
            "outages": [
                {**asdict(o), "start": round(o.start - t0, 3), "end": round(o.end - t0, 3)} for o in self.oracle.outages
            ],
            "changes": [
                {
                    **asdict(c),
                    "start": round(c.start - t0, 3),
                    "end": round(c.end - t0, 3),
                    "old_answer_until_s": _old_answer_until(c, records, self.oracle.changes),
                }
                for c in self.oracle.changes
            ],
            "recoveries": self.recoveries,
            "worker_rss_mib": rss,
            "reviews_per_second": _review_rates(self.samples, phases),
            "rss_samples": self.samples,
            "failures": failures[:200],
            "failure_count": len(failures),
            "timeline": _timeline(records, verdicts, t0),
        }


def _warm_up(url: str, callers: dict[str, list[Caller]], rbac: bool) -> None:
    """Before the clock starts: each worker builds its Kubernetes client and reviews the steady callers.

    A new connection each time, so both workers see them; not judged (a cold start sheds load:
    see docs/reliability.md)."""
    steady = [*callers["valid"], *callers["deleted-sa"], *callers["deleted-pod"]]
    steady += callers["rbac-allowed"] if rbac else []
    for _ in range(6):
        for caller in steady:
            with contextlib.suppress(requests.RequestException):
                requests.request(
                    caller.method, url + caller.path, headers={"Authorization": f"Bearer {caller.token}"}, timeout=20
                )


def _old_answer_until(change: Change, records: list[Any], changes: list[Change]) -> float | None:
    """Seconds after ``change`` was confirmed that its subject last got the answer from before it
    (before the subject's next change; 401s of an outage count as denials)."""
    until = min((c.start for c in changes if c.subject == change.subject and c.start > change.start), default=1e18)
    last = None
    for r in records:
        if r.subject == change.subject and change.start <= r.t0 < until:
            allowed = r.status == r.allow_status
            if allowed != (change.to == ALLOW) and r.status in (r.allow_status, 401, 403):
                last = r.t0
    return None if last is None else round(last - change.end, 3)


def _stats(chosen: list[tuple[Any, str]]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    latencies = sorted(r.t1 - r.t0 for r, _ in chosen)
    for r, v in chosen:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        verdicts[v] = verdicts.get(v, 0) + 1
    return {
        "requests": len(chosen),
        "statuses": dict(sorted(statuses.items())),
        "verdicts": verdicts,
        "p50_ms": round(1000 * _quantile(latencies, 0.50), 2),
        "p99_ms": round(1000 * _quantile(latencies, 0.99), 2),
        "max_ms": round(1000 * latencies[-1], 2) if latencies else 0.0,
    }


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _timeline(records: list[Any], verdicts: list[str], t0: float) -> dict[str, list[Any]]:
    """Compact columns for the picture: send time, latency (ms), status, verdict."""
    return {
        "t": [round(r.t0 - t0, 3) for r in records],
        "ms": [round(1000 * (r.t1 - r.t0), 2) for r in records],
        "status": [r.status for r in records],
        "bad": [i for i, v in enumerate(verdicts) if v != "ok"],
    }


def _rss_growth(samples: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Mean worker RSS in the first and the last 10 % of the run, per worker PID seen in both."""
    early = [s for s in samples if s["t"] <= 0.1 * seconds + 5] or samples[:1]
    late = [s for s in samples if s["t"] >= 0.9 * seconds] or samples[-1:]

    def mean(chosen: list[dict[str, Any]]) -> dict[str, float]:
        sums: dict[str, list[float]] = {}
        for s in chosen:
            for pid, mib in s["rss_mib"].items():
                if mib:
                    sums.setdefault(pid, []).append(mib)
        return {pid: round(sum(v) / len(v), 1) for pid, v in sums.items()}

    first, last = mean(early), mean(late)
    return {
        "start": first,
        "end": last,
        "growth": {pid: round(last[pid] - first[pid], 1) for pid in first if pid in last},
    }


def _review_rates(samples: list[dict[str, Any]], phases: list[dict[str, Any]]) -> dict[str, Any]:
    """TokenReviews and SubjectAccessReviews per second that kube-apiserver served, from its own
    counters sampled every 5 s: over the run and per phase. A counter that went down (the server
    restarted) or a sample it did not answer leaves that interval out."""
    intervals: list[tuple[float, float, dict[str, float]]] = []
    for a, b in itertools.pairwise(samples):
        ca, cb = a.get("apiserver_reviews"), b.get("apiserver_reviews")
        if ca is None or cb is None or b["t"] <= a["t"]:
            continue
        deltas = {k: cb[k] - ca[k] for k in faults.REVIEW_RESOURCES}
        if all(d >= 0 for d in deltas.values()):
            intervals.append((a["t"], b["t"], deltas))

    def rate(start: float, end: float) -> dict[str, float] | None:
        chosen = [(t0, t1, d) for t0, t1, d in intervals if start <= t0 and t1 <= end]
        seconds = sum(t1 - t0 for t0, t1, _ in chosen)
        if not seconds:
            return None
        return {k: round(sum(d[k] for _, _, d in chosen) / seconds, 2) for k in faults.REVIEW_RESOURCES}

    return {
        "run": rate(float("-inf"), float("inf")),
        "phases": [{"phase": p["phase"], "start": p["start"], "rates": rate(p["start"], p["end"])} for p in phases],
    }


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _rss_mib(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return round(int(found.group(1)) / 1024, 1) if found else 0.0


def faults_free_port() -> int:
    from flask_bindcar.testing.controlplane import free_port

    return free_port()
