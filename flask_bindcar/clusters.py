"""The clusters a token may come from, and the one it does come from: routing by issuer.

Without ``BIND_CLUSTERS_FILE`` / ``BINDCAR_CLUSTERS`` there is one `TrustedCluster`, unnamed,
built from the settings as they are, and every token goes to it: today's behaviour, by the same
code. With the setting there is one `TrustedCluster` per entry (`flask_bindcar.config.ClusterEntry`),
each with everything a token's review needs of its own: its API server client, its keys (the
pre-check, or jwt mode's `LocalReview`), its bulkhead and its SubjectAccessReview `Authorizer`.

`Clusters.route` picks the entry by the token's *unverified* ``iss``, among configured issuers
only: a token whose issuer is on no entry gets the answer an unknown token gets, and no host named
by a token is ever contacted. Routing is only a choice among configured clusters; trust comes
after it: the chosen cluster's keys must verify the token's signature before it is sent to that
cluster's TokenReview (the pre-check is ``on`` for a routed cluster), so a token cannot send itself
to a cluster it does not belong to by claiming that cluster's issuer (docs/clusters.md).

Routing happens on the review cache's miss path only (`flask_bindcar.authenticator.Authenticator._review`):
the cache is keyed by the token's text, and the text decides the route, so one key always belongs
to one cluster; the outcome kept carries its cluster's name, and a cache hit does no routing.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from flask_bindcar.apiserver import ApiServerClient
from flask_bindcar.authz import Authorizer
from flask_bindcar.bulkhead import DEFAULT_WAIT, Bulkhead, default_share
from flask_bindcar.config import AuthConfig, ClusterEntry
from flask_bindcar.errors import API_OVERLOADED, OVERLOADED, OVERLOADED_UNVERIFIED, AuthError
from flask_bindcar.jwtcheck import NO_KEYS, LocalRejection
from flask_bindcar.jwtmode import LocalReview
from flask_bindcar.metrics import Metrics
from flask_bindcar.precheck import JWKS, UNKNOWN_KID, PreCheck
from flask_bindcar.tokenreview import ReviewOutcome

if TYPE_CHECKING:
    from flask_bindcar.authenticator import Trace

UNKNOWN_ISSUER = "unknown_issuer"
"""The reason label of a token whose issuer is on no configured cluster."""
UNVERIFIED_SHARE = "tokens the issuer's keys could not vouch for"
"""The bulkhead key every such token's TokenReview holds its slot under: together, one caller's share."""
MAX_PAYLOAD = 16384
"""Characters of a token's payload read for its ``iss``; a longer one routes nowhere."""


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` of a JWT's payload, unverified: only ever used to choose among configured
    clusters, whose keys then verify it. None when there is none to read."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > MAX_PAYLOAD:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    iss = claims.get("iss") if isinstance(claims, dict) else None
    return iss if isinstance(iss, str) else None


def cluster_config(config: AuthConfig, entry: ClusterEntry) -> AuthConfig:
    """The configuration of one entry's reviews: the app's, with the entry's API server, issuer and
    keys, and the pre-check on. An entry without an API server is verified in jwt mode; one with an
    API server gets its keys from it (``/openid/v1/jwks``) unless ``jwks_url`` says otherwise."""
    return replace(
        config,
        clusters=None,
        mode=config.mode if entry.has_api_server else "jwt",
        kubeconfig=entry.kubeconfig,
        kube_context=entry.context,
        kube_api_server=entry.server,
        kube_token_path=entry.token_file,
        kube_ca_cert_path=entry.ca_file,
        token_issuers=(entry.issuer,),
        jwks_url=entry.jwks_url or (JWKS if entry.has_api_server else None),
        token_precheck="on",  # noqa: S106 - not a password: the pre-check's setting
    )


class TrustedCluster:
    """One cluster's reviews: its client, keys, bulkhead and authorizer. ``name`` None: the one
    unnamed cluster of a configuration without ``BIND_CLUSTERS_FILE``."""

    def __init__(self, name: str | None, config: AuthConfig, metrics: Metrics | None, *, has_api_server: bool = True):
        self.name = name
        self.config = config
        self.metrics = metrics
        self.bulkhead = Bulkhead(
            config.review_max_inflight,
            config.review_max_inflight_per_caller or default_share(config.review_max_inflight),
            wait=min(DEFAULT_WAIT, config.review_timeout),
        )
        self.reviewer = ApiServerClient(config) if has_api_server else None
        self.local = LocalReview(config, self.reviewer) if config.mode == "jwt" else None
        """jwt mode: what a cache miss asks instead of a TokenReview."""
        self.precheck = PreCheck(config, self.reviewer) if config.mode == "tokenreview" else None
        self.authorizer = Authorizer(config, self.reviewer, self.bulkhead, metrics) if self.reviewer else None
        self.routed = name is not None
        """A token reaches this cluster's TokenReview only once its keys verified it."""

    def ask(self, token: str, audiences: Sequence[str], trace: Trace | None) -> ReviewOutcome:
        """In jwt mode the keys' answer; else the pre-check, then the TokenReview. Every outcome
        carries this cluster's name; an `AuthError` raised carries it too, for the record."""
        try:
            outcome = self._ask(token, audiences, trace)
        except AuthError as e:
            e.cluster = self.name
            raise
        return outcome if self.name is None else replace(outcome, cluster=self.name)

    def _ask(self, token: str, audiences: Sequence[str], trace: Trace | None) -> ReviewOutcome:
        """A token the keys could not vouch for (``undecided``: a kid they lack, another issuer, no
        JWT at all) shares one caller's share of the review slots with every other such token, so
        a flood of them cannot take the slots real callers need. A routed cluster never sends one:
        it is refused, and judged again once the keys may be fetched again."""
        if self.local is not None:
            if trace is not None:
                trace.enter("local verification")
            outcome, claims = self.local.review(token, audiences)
            if trace is not None and claims is not None:
                trace.found(claims=claims, until=outcome.expires_at)
            return outcome
        assert self.reviewer is not None
        share: str | None = None
        if self.precheck is not None:
            if trace is not None:
                trace.enter("local pre-check")
            verdict, detail = self.precheck.check(token, audiences)
            if verdict == "refused":
                return detail.outcome(token)  # type: ignore[no-any-return]
            if verdict == "undecided":
                if self.routed:  # not sent to a cluster it may not belong to; not kept either
                    refusal = (
                        LocalRejection(NO_KEYS, "no_key").outcome(token)  # what the cluster would say of that kid
                        if detail == UNKNOWN_KID
                        else ReviewOutcome(authenticated=False)
                    )
                    return replace(refusal, expires_at=time.time())
                share = UNVERIFIED_SHARE
            if trace is not None:
                trace.found(verdict=verdict, detail=detail)
        if trace is not None:
            trace.enter("token review")
        bulkhead = self.bulkhead
        if not bulkhead.acquire(share):
            if share is not None and bulkhead.held(share) >= bulkhead.per_key:
                why = OVERLOADED_UNVERIFIED.format(held=bulkhead.held(share))
            else:
                why = OVERLOADED.format(slots=self.config.review_max_inflight)
            raise AuthError.api_call_failed(why, reason=API_OVERLOADED)
        metrics = self.metrics
        started = time.perf_counter()
        if metrics is not None:
            metrics.inflight.inc()
        try:
            return self.reviewer.review(token, audiences)
        finally:
            bulkhead.release(share)
            if metrics is not None:
                metrics.inflight.dec()
                metrics.review_duration.observe(time.perf_counter() - started)


class Clusters:
    """The trusted clusters of one `Authenticator` (TokenReview and jwt modes), and `route`."""

    def __init__(self, config: AuthConfig, metrics: Metrics | None):
        self.default: TrustedCluster | None = None
        """The one unnamed cluster, without ``BIND_CLUSTERS_FILE``: every token goes to it."""
        self._by_issuer: dict[str, TrustedCluster] = {}
        if config.clusters is None:
            self.default = TrustedCluster(None, config, metrics)
            self.members: tuple[TrustedCluster, ...] = (self.default,)
        else:
            self.members = tuple(
                TrustedCluster(e.name, cluster_config(config, e), metrics, has_api_server=e.has_api_server)
                for e in config.clusters
            )
            self._by_issuer = {e.issuer: m for e, m in zip(config.clusters, self.members, strict=True)}
        self._by_name = {m.name: m for m in self.members}

    def __iter__(self) -> Iterator[TrustedCluster]:
        return iter(self.members)

    def route(self, token: str) -> TrustedCluster | None:
        """The cluster ``token`` belongs to by its unverified ``iss``; None when no configured
        cluster has that issuer (nothing is asked of anyone then)."""
        if self.default is not None:
            return self.default
        iss = unverified_issuer(token)
        return self._by_issuer.get(iss) if iss is not None else None

    def authorizer(self, cluster: str | None) -> Authorizer | None:
        """The SubjectAccessReview `Authorizer` of the caller's cluster (None: it has no API server)."""
        member = self._by_name.get(cluster)
        return member.authorizer if member is not None else None
