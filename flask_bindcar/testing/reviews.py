"""The review endpoints of FakeCluster: TokenReview, SubjectAccessReview, SelfSubjectAccessReview.

Answered as kube-apiserver answers them: the caller's own RBAC first (both reviews need
``system:auth-delegator``), then the body's validation, then the verdict: a TokenReview from
`FakeCluster.authenticate`, a SubjectAccessReview from the cluster's RBAC rules.
"""

from __future__ import annotations

import json
from typing import Any

from flask_bindcar.testing.authorizer import validate
from flask_bindcar.testing.handler import BaseHandler, failure
from flask_bindcar.testing.interface import SA_PREFIX
from flask_bindcar.testing.rbac import groups_of
from flask_bindcar.testing.state import ReviewError

TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def _auth_delegator_reason(username: str) -> str:
    """The reason RBAC gives for a review a reviewer may create (bound to ``system:auth-delegator``)."""
    if username.startswith(SA_PREFIX):
        namespace, _, name = username[len(SA_PREFIX) :].partition(":")
        who = f'ServiceAccount "{name}/{namespace}"'
    else:
        who = f'User "{username}"'
    return f'RBAC: allowed by ClusterRoleBinding "bindcar-tokenreview" of ClusterRole "system:auth-delegator" to {who}'


def _spec_token(raw: bytes) -> str | None:
    """The token a TokenReview body carries, if it can be found at all (for counting only)."""
    try:
        token = json.loads(raw)["spec"]["token"]
    except (ValueError, TypeError, KeyError):
        return None
    return token if isinstance(token, str) else None


class ReviewEndpoints(BaseHandler):
    """TokenReview, SubjectAccessReview and SelfSubjectAccessReview."""

    def _token_review(self, raw: bytes) -> None:
        cluster = self.cluster
        cluster._count_review(_spec_token(raw))
        if self._apply_fault():
            return
        if not self._may_create("tokenreviews", "authentication.k8s.io"):
            return
        review = self._decode(raw, "TokenReview")
        if review is None:
            return
        spec = review["spec"]
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            self._send_json(400, failure(400, "BadRequest", "token is required for TokenReview in authentication"))
            return
        audiences = spec.get("audiences") or []
        if cluster.latency:
            cluster._stopping.wait(cluster.latency)
        status: dict[str, Any]
        try:
            user, granted = cluster.authenticate(token, list(audiences))
            status = {"authenticated": True, "user": user, "audiences": granted}
            if cluster.fault == "no_user":
                del status["user"]
            elif cluster.fault == "no_audiences":
                del status["audiences"]
        except ReviewError as e:
            status = {"user": {}, "error": str(e)}
        except LookupError:  # no authenticator knows the token: kube-apiserver's generic error
            status = {"user": {}, "error": "invalid bearer token"}
        with cluster._lock:
            cluster.reviews_served += 1
        self._send_json(
            201,
            {
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": status,
            },
        )

    def _subject_access_review(self, raw: bytes) -> None:
        """SubjectAccessReview as kube-apiserver answers it: caller RBAC, validation, then the rules."""
        cluster = self.cluster
        with cluster._lock:
            cluster.access_review_requests += 1
        if self._apply_fault():
            return
        if not self._may_create("subjectaccessreviews", "authorization.k8s.io"):
            return
        review = self._decode(raw, "SubjectAccessReview")
        if review is None:
            return
        spec = review["spec"]
        invalid = validate(spec)
        if invalid is not None:
            self._send_json(422, failure(422, "Invalid", invalid, {"group": "authorization.k8s.io"}))
            return
        if cluster.latency:
            cluster._stopping.wait(cluster.latency)
        status = cluster.rbac.decide(spec)
        with cluster._lock:
            cluster.access_reviews_served += 1
            cluster.access_reviews.append(spec)
        self._send_json(
            201,
            {
                "kind": "SubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": spec,
                "status": status,
            },
        )

    def _self_subject_access_review(self, raw: bytes) -> None:
        if self._apply_fault():
            return
        caller = self.cluster._caller(self.headers.get("Authorization"))
        if caller is None:
            self._send_json(401, failure(401, "Unauthorized", "Unauthorized"))
            return
        review = self._decode(raw, "SelfSubjectAccessReview")
        if review is None:
            return
        attrs = review["spec"].get("resourceAttributes") or {}
        asks_review = attrs.get("verb") == "create" and (attrs.get("group"), attrs.get("resource")) in (
            ("authentication.k8s.io", "tokenreviews"),
            ("authorization.k8s.io", "subjectaccessreviews"),
        )
        status: dict[str, Any]
        if asks_review and self.cluster.can_review(caller):
            status = {"allowed": True, "reason": _auth_delegator_reason(caller)}
        else:
            status = self.cluster.rbac.decide({**review["spec"], "user": caller, "groups": groups_of(caller)})
        self._send_json(
            201,
            {
                "kind": "SelfSubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": review["spec"],
                "status": status,
            },
        )
