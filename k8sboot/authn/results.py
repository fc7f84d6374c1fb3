"""What authentication answers: `UserInfo`, one `Failure` per rejected or ignored credential, and
`AuthResult` with the bodies the API server sends (SelfSubjectReview, the 401 Status).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from k8sboot.authn.names import GROUP_AUTHENTICATED, GROUP_UNAUTHENTICATED, Reason


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The API's `UserInfo` object (empty uid/groups/extra omitted, keys of extra sorted)."""
        out: dict[str, Any] = {"username": self.username}
        if self.uid:
            out["uid"] = self.uid
        if self.groups:
            out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = {k: list(self.extra[k]) for k in sorted(self.extra)}
        return out


@dataclass(frozen=True)
class Failure:
    """One authenticator's verdict on one credential. `is_error` False: merely not recognised."""

    authenticator: str
    reason: Reason
    message: str
    is_error: bool = True


@dataclass(frozen=True)
class AuthResult:
    user: UserInfo | None
    authenticator: str = ""
    failures: tuple[Failure, ...] = ()

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    @property
    def reason(self) -> str:
        """Why the request is a 401, one line (empty when authenticated)."""
        if self.authenticated:
            return ""
        return "; ".join(f.message for f in self.failures) or "Unauthorized"

    @property
    def reason_code(self) -> Reason | None:
        if self.authenticated or not self.failures:
            return None
        errors = [f for f in self.failures if f.is_error]
        return (errors or list(self.failures))[0].reason

    def summary(self) -> str:
        """One line for a log: who, by what; or 401 and why."""
        if self.user is None:
            return f"401 Unauthorized: {self.reason}"
        groups = " ".join(self.user.groups)
        return f'authenticated user="{self.user.username}" groups=[{groups}] by {self.authenticator}'

    def self_subject_review(self, now: datetime | None = None) -> dict[str, Any]:
        """The body of `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` (authenticated)."""
        if self.user is None:
            raise ValueError("a 401 has no SelfSubjectReview; use status()")
        return {
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": _rfc3339(now) if now is not None else None},
            "status": {"userInfo": self.user.to_json()},
        }

    def status(self, include_reason: bool = False) -> dict[str, Any]:
        """The 401 `Status` body. The real server says only "Unauthorized"; the why is logged.

        With `include_reason`, the why is added as details.causes (for `whoami --json`).
        """
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
        if include_reason and self.failures:
            body["details"] = {"causes": [{"reason": f.reason.value, "message": f.message}
                                          for f in self.failures]}
        return body


def _fail(authenticator: str, reason: Reason, message: str, *, is_error: bool = True) -> AuthResult:
    return AuthResult(None, "", (Failure(authenticator, reason, message, is_error),))


def _with_authenticated_group(groups: Sequence[str]) -> tuple[str, ...]:
    """group.AuthenticatedGroupAdder: add system:authenticated unless already (un)authenticated."""
    if GROUP_AUTHENTICATED in groups or GROUP_UNAUTHENTICATED in groups:
        return tuple(groups)
    return (*groups, GROUP_AUTHENTICATED)


# --- time helpers (cryptography 38 has only the naive attributes) -----------------------------


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def _rfc3339(moment: datetime) -> str:
    return _utc(moment).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
