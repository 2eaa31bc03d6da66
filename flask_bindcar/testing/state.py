"""What FakeCluster's endpoints need of its state, and the types both sides speak.

`ClusterState` is the part of `FakeCluster` that the request handler and its endpoints
(`flask_bindcar.testing.handler`, `flask_bindcar.testing.reviews`, `flask_bindcar.testing.objects`)
reach through ``self.server.cluster``: the dictionaries and counters under one lock, the faults,
and the checks kube-apiserver makes. Beside it are the `Namespace` those endpoints list, the
`ReviewError` a TokenReview reports, and the faults on demand (`Fault`, `FAULTS`). The cluster
satisfies the protocol; nothing here imports it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from flask_bindcar.testing.authorizer import Rules
from flask_bindcar.testing.interface import Pod, ServiceAccount, now_rfc3339

if TYPE_CHECKING:
    from flask_bindcar.testing.oidc import Issuer

Fault = Literal["error500", "garbage", "reset", "hang", "no_user", "no_audiences"]
FAULTS: tuple[Fault, ...] = ("error500", "garbage", "reset", "hang", "no_user", "no_audiences")
"""Faults on demand: a 500 Status, a non-JSON body, a reset connection, a hang past the client's
timeout; and two misbehaving answers to a TokenReview: authenticated without ``status.user``, and
authenticated without ``status.audiences`` (as an audience-agnostic authenticator might)."""


class ReviewError(Exception):
    """A token the cluster does not accept; ``str()`` is kube-apiserver's ``status.error``."""


@dataclass
class Namespace:
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=now_rfc3339, compare=False)


class ClusterState(Protocol):
    """What the endpoints read, change and ask of the cluster (`FakeCluster` is one)."""

    _lock: threading.RLock
    _stopping: threading.Event
    fault: Fault | None
    hang_seconds: float
    latency: float
    max_token_expiration: int | None
    namespaces: dict[str, Namespace]
    service_accounts: dict[tuple[str, str], ServiceAccount]
    pods: dict[tuple[str, str], Pod]
    rbac: Rules
    requests_seen: int
    reviews_served: int
    access_reviews_served: int
    access_review_requests: int
    access_reviews: list[dict[str, Any]]
    admins: set[str]
    issuer: Issuer
    """The ServiceAccount signing keys (`flask_bindcar.testing.oidc`)."""

    @property
    def port(self) -> int: ...

    @property
    def url(self) -> str: ...

    def create_service_account(self, namespace: str, name: str) -> ServiceAccount: ...

    def delete_service_account(self, namespace: str, name: str) -> None: ...

    def create_pod(self, namespace: str, name: str, service_account: str = "default") -> Pod: ...

    def delete_pod(self, namespace: str, name: str) -> None: ...

    def can_review(self, username: str) -> bool: ...

    def namespace(self, name: str) -> Namespace | None: ...

    def _create_namespace(self, name: str) -> Namespace: ...

    def authorized(
        self,
        username: str,
        verb: str,
        resource: str,
        *,
        group: str = "",
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> bool: ...

    def _mint(
        self,
        sa: ServiceAccount,
        audiences: Iterable[str] | None,
        expires_in: float,
        pod: Pod | None,
        not_before: float | None = None,
    ) -> str: ...

    def authenticate(self, token: str, audiences: list[str] | None) -> tuple[dict[str, Any], list[str]]: ...

    def _caller(self, authorization: str | None) -> str | None: ...

    def _count_review(self, token: str | None) -> None: ...
