"""Who made the request, as the view sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

SA_PREFIX = "system:serviceaccount:"

AuthMethod = Literal["basic", "shared-secret", "tokenreview"]


def split_service_account(username: str | None) -> tuple[str, str] | None:
    """``system:serviceaccount:<ns>:<name>`` -> ``(ns, name)``; None for any other username."""
    if not username or not username.startswith(SA_PREFIX):
        return None
    namespace, sep, name = username[len(SA_PREFIX) :].partition(":")
    if not sep or not namespace or not name or ":" in name:
        return None
    return namespace, name


@dataclass(frozen=True)
class Identity:
    """The authenticated caller.

    In Basic mode nothing is known about the caller but that a well-formed token came (``method``
    ``basic``) or that it matched the shared secret (``shared-secret``); ``username`` is None. In
    TokenReview mode every field comes from the API server's ``status.user`` and
    ``status.audiences``; ``namespace`` and ``service_account`` (the short name) are set when the
    caller is a ServiceAccount.
    """

    method: AuthMethod
    username: str | None = None
    uid: str | None = None
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    audiences: tuple[str, ...] = ()
    namespace: str | None = None
    service_account: str | None = None

    @property
    def is_service_account(self) -> bool:
        return self.service_account is not None
