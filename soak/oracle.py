"""What each soak request should have been answered, given what happened before it.

The oracle knows the documented windows and nothing of the library's internals:

* a token review outcome is reused for ``BIND_TOKEN_CACHE_TTL`` seconds (per worker), and, while
  the API server cannot answer, for up to ``BIND_TOKEN_CACHE_STALE_TTL`` seconds after the review;
* kube-apiserver caches its own successful token authentications for 10 s and learns of deleted
  ServiceAccounts and pods through a watch;
* the authorization cache keeps allowed and denied SubjectAccessReviews for their TTLs;
* while kube-apiserver (or etcd) is down and for a grace period after it is ready again, a 401
  ``TokenReview API call failed`` / ``Failed to create Kubernetes client`` and a 503 are the
  documented answers for a caller no cache can vouch for.

`Oracle.judge` classifies one `Request` as ``ok``, ``wrong_allow`` (a security failure),
``wrong_deny`` (an availability failure), ``undocumented`` (a status the documentation does not
give, a 5xx other than 503 or no answer at all) or ``hung`` (longer than the review timeout + 1 s).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

APISERVER_TOKEN_CACHE = 10.0
"""kube-apiserver's own cache of successful token authentications (its ``TokenSuccessCacheTTL``)."""
MARGIN = 2.0
"""Seconds allowed for watches, clocks and the request in flight around each documented window."""
OUTAGE_MESSAGES = ("TokenReview API call failed", "Failed to create Kubernetes client")

ALLOW = "allow"
DENY = "deny"

VERDICTS = ("ok", "wrong_allow", "wrong_deny", "undocumented", "hung")


@dataclass(frozen=True)
class Windows:
    """The documented windows the soak's app runs with (seconds)."""

    cache_ttl: float = 10.0
    stale_ttl: float = 30.0
    authz_allowed_ttl: float = 10.0
    authz_denied_ttl: float = 10.0
    review_timeout: float = 5.0
    outage_grace: float = 5.0
    """After kube-apiserver is ready again, how long outage answers are still accepted."""

    @property
    def hung_after(self) -> float:
        return self.review_timeout + 1.0


@dataclass(frozen=True)
class Outage:
    """The control plane could not answer from ``start`` (the fault) to ``end`` (ready again)."""

    kind: str
    start: float
    end: float


@dataclass(frozen=True)
class Change:
    """The truth about a subject changed from ``start`` to ``end`` (the action and its confirmation):
    a ServiceAccount or pod deleted (to ``DENY``), a grant added (``ALLOW``) or removed (``DENY``)."""

    subject: str
    start: float
    end: float
    to: str
    what: str = ""


@dataclass(frozen=True)
class Request:
    """One request of the load: who asked (``subject``), what the answer would be with every cache
    up to date (``truth``, or per `Change`), when it was sent and answered, and the answer."""

    kind: str
    subject: str
    truth: str
    allow_status: int
    t0: float
    t1: float
    status: int
    """0 when no HTTP answer came (connection refused, timeout)."""
    error: str = ""


@dataclass
class Oracle:
    windows: Windows = field(default_factory=Windows)
    outages: list[Outage] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def in_outage(self, t0: float, t1: float) -> Outage | None:
        for o in self.outages:
            if t0 <= o.end + self.windows.outage_grace and t1 >= o.start - 0.5:
                return o
        return None

    def _settle(self, change: Change, outage: Outage | None) -> float:
        """How long after ``change.end`` the old answer may still be given."""
        w = self.windows
        if change.to == DENY and change.subject.startswith("token:"):
            late = APISERVER_TOKEN_CACHE + w.cache_ttl
            if outage is not None:
                late = APISERVER_TOKEN_CACHE + max(w.cache_ttl, w.stale_ttl)
            return late + MARGIN
        ttl = w.authz_allowed_ttl if change.to == DENY else w.authz_denied_ttl
        return ttl + MARGIN

    def acceptable(self, r: Request) -> set[str]:
        """The decisions (``allow``/``deny``) acceptable for ``r`` from the changes alone."""
        truth = r.truth
        ok: set[str] = set()
        outage = self.in_outage(r.t0, r.t1)
        for c in sorted((c for c in self.changes if c.subject == r.subject), key=lambda c: c.start):
            if r.t0 >= c.start:
                previous = truth
                truth = c.to
                if r.t0 <= c.end + self._settle(c, outage):
                    ok.add(previous)
            elif r.t1 >= c.start:  # answered after the change began: either answer
                ok.add(c.to)
        ok.add(truth)
        return ok

    def judge(self, r: Request) -> str:
        if r.t1 - r.t0 > self.windows.hung_after:
            return "hung"
        outage = self.in_outage(r.t0, r.t1)
        if r.status == r.allow_status:
            decision = ALLOW
        elif r.status in (401, 403):
            decision = DENY
            if outage is None and r.status == 401 and any(m in r.error for m in OUTAGE_MESSAGES):
                return "wrong_deny" if ALLOW in self.acceptable(r) else "ok"
        elif r.status == 503 and outage is not None:
            return "ok"
        elif r.status == 503:
            return "wrong_deny" if ALLOW in self.acceptable(r) else "undocumented"
        else:
            return "undocumented"
        ok = self.acceptable(r)
        if decision in ok:
            return "ok"
        if decision == ALLOW:
            return "wrong_allow"
        if outage is not None and any(m in r.error for m in OUTAGE_MESSAGES):
            return "ok"
        return "wrong_deny"

    def judge_all(self, requests: Iterable[Request]) -> list[str]:
        return [self.judge(r) for r in requests]
